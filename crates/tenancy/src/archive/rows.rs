//! Tables as portable lines: each row one JSON array, its values in the
//! table's column order, rows in the primary key's bytewise order (SQLite's
//! `BINARY`, PostgreSQL's `"C"`), so that a table reads the same lines — and
//! the same SHA-256 — on every backend.

use futures_util::TryStreamExt;
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::Row;

use super::{Kind, Table, invalid};
use crate::dataplane::{DbRow, TenantTx};
use crate::error::{Error, Result};

/// Rows of one statement at most (11 columns, the widest table, × 100 rows stays far below
/// SQLite's and PostgreSQL's bind limits).
pub(crate) const BATCH: usize = 100;

pub(crate) fn is_postgres(tx: &mut TenantTx) -> bool {
    tx.conn().backend_name() == "PostgreSQL"
}

pub(crate) fn select_sql(t: &Table, postgres: bool) -> String {
    let cols: Vec<&str> = t.columns.iter().map(|c| c.name).collect();
    let order: Vec<String> = t
        .key
        .iter()
        .map(|k| {
            if postgres {
                format!("{k} COLLATE \"C\"")
            } else {
                (*k).to_owned()
            }
        })
        .collect();
    format!(
        "SELECT {} FROM {} ORDER BY {}",
        cols.join(", "),
        t.name,
        order.join(", ")
    )
}

/// One row as its line (with the final `\n`).
pub(crate) fn encode(t: &Table, row: &DbRow) -> Result<Vec<u8>> {
    let mut values = Vec::with_capacity(t.columns.len());
    for (i, c) in t.columns.iter().enumerate() {
        let v = match c.kind {
            Kind::Text => row.try_get::<Option<String>, _>(i)?.map(Value::String),
            Kind::Int => row.try_get::<Option<i64>, _>(i)?.map(Value::from),
            Kind::Real => match row.try_get::<Option<f64>, _>(i)? {
                None => None,
                Some(f) => Some(
                    serde_json::Number::from_f64(f)
                        .map(Value::Number)
                        .ok_or_else(|| {
                            Error::Invalid(format!(
                                "{}.{} holds {f}, which has no JSON form",
                                t.name, c.name
                            ))
                        })?,
                ),
            },
            Kind::Bool => match row.try_get::<Option<bool>, _>(i) {
                Ok(b) => b.map(Value::Bool),
                // SQLite keeps booleans as 0/1.
                Err(_) => row
                    .try_get::<Option<i64>, _>(i)?
                    .map(|n| Value::Bool(n != 0)),
            },
        };
        values.push(v.unwrap_or(Value::Null));
    }
    let mut line = serde_json::to_vec(&values).map_err(|e| Error::Invalid(e.to_string()))?;
    line.push(b'\n');
    Ok(line)
}

/// Streams every row of `t` as lines into `each`, in key order.
pub(crate) async fn read_table(
    tx: &mut TenantTx,
    t: &Table,
    mut each: impl FnMut(&[u8]) -> Result<()>,
) -> Result<()> {
    let sql = select_sql(t, is_postgres(tx));
    let mut rows = sqlx::query(&sql).fetch(tx.conn());
    while let Some(row) = rows.try_next().await? {
        each(&encode(t, &row)?)?;
    }
    Ok(())
}

/// Counts, bytes and SHA-256 of a table's lines.
#[derive(Default, Clone)]
pub(crate) struct TableDigest {
    pub(crate) rows: u64,
    pub(crate) bytes: u64,
    sha: Sha256,
}

impl TableDigest {
    pub(crate) fn add(&mut self, line: &[u8]) {
        self.rows += 1;
        self.bytes += line.len() as u64;
        self.sha.update(line);
    }

    pub(crate) fn hex(&self) -> String {
        super::hex(&self.sha.clone().finalize())
    }
}

/// The digest of what `t` holds now.
pub(crate) async fn digest_table(tx: &mut TenantTx, t: &Table) -> Result<TableDigest> {
    let mut d = TableDigest::default();
    read_table(tx, t, |line| {
        d.add(line);
        Ok(())
    })
    .await?;
    Ok(d)
}

/// One line as a row of `t`: exactly its columns, each of its type, `null`
/// only where the column allows it. Nothing else is accepted — notably no
/// tenant id: a row belongs to whichever tenant imports it.
pub(crate) fn decode(t: &Table, line: &[u8]) -> Result<Vec<Value>> {
    let bad = |why: String| invalid(format!("a row of {}: {why}", t.name));
    let values: Vec<Value> = serde_json::from_slice(line)
        .map_err(|e| bad(format!("not a JSON array of values ({e})")))?;
    if values.len() != t.columns.len() {
        return Err(bad(format!(
            "{} values for {} columns",
            values.len(),
            t.columns.len()
        )));
    }
    for (v, c) in values.iter().zip(t.columns) {
        let ok = match (v, c.kind) {
            (Value::Null, _) => c.nullable,
            (Value::String(_), Kind::Text) => true,
            (Value::Number(n), Kind::Int) => n.is_i64(),
            (Value::Number(n), Kind::Real) => n.as_f64().is_some_and(f64::is_finite),
            (Value::Bool(_), Kind::Bool) => true,
            _ => false,
        };
        if !ok {
            return Err(bad(format!(
                "{} is not a valid {}",
                c.name,
                kind_name(c.kind, c.nullable)
            )));
        }
    }
    Ok(values)
}

fn kind_name(k: Kind, nullable: bool) -> String {
    let n = match k {
        Kind::Text => "string",
        Kind::Int => "integer",
        Kind::Real => "number",
        Kind::Bool => "boolean",
    };
    if nullable {
        format!("{n} or null")
    } else {
        n.to_owned()
    }
}

/// Inserts decoded rows of `t` in one statement.
pub(crate) async fn insert(tx: &mut TenantTx, t: &Table, rows: &[Vec<Value>]) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let n = t.columns.len();
    let cols: Vec<&str> = t.columns.iter().map(|c| c.name).collect();
    let mut sql = format!("INSERT INTO {} ({}) VALUES ", t.name, cols.join(", "));
    for r in 0..rows.len() {
        if r > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for c in 0..n {
            if c > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("${}", r * n + c + 1));
        }
        sql.push(')');
    }
    let mut q = sqlx::query(&sql);
    for row in rows {
        for (v, c) in row.iter().zip(t.columns) {
            q = match c.kind {
                Kind::Text => q.bind(v.as_str().map(str::to_owned)),
                Kind::Int => q.bind(v.as_i64()),
                Kind::Real => q.bind(v.as_f64()),
                Kind::Bool => q.bind(v.as_bool()),
            };
        }
    }
    q.execute(tx.conn())
        .await
        .map_err(|e| match Error::from(e) {
            e if e.is_unique_violation() => invalid(format!(
                "rows of {} repeat a key, or one already held in this placement's shared tables \
             (a copy of a `pool` tenant needs another placement or isolation mode)",
                t.name
            )),
            // Integrity (23…: foreign keys, checks, not null) and data
            // (22…: a NUL byte, a number out of range) errors are the rows'.
            Error::Db(sqlx::Error::Database(d))
                if d.is_foreign_key_violation()
                    || d.is_check_violation()
                    || (d
                        .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                        .is_some()
                        && d.code()
                            .is_some_and(|c| c.starts_with("22") || c.starts_with("23"))) =>
            {
                invalid(format!(
                    "rows of {} break the schema: {}",
                    t.name,
                    d.message()
                ))
            }
            e => e,
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::Column;

    const T: Table = Table {
        name: "things",
        columns: &[
            Column::new("id", Kind::Text),
            Column::new("n", Kind::Int),
            Column::nullable("x", Kind::Real),
            Column::new("b", Kind::Bool),
        ],
        key: &["id"],
    };

    #[test]
    fn lines_must_match_the_columns_exactly() {
        assert!(decode(&T, br#"["a", 1, 2.5, true]"#).is_ok());
        assert!(decode(&T, br#"["a", 1, null, false]"#).is_ok());
        for bad in [
            &br#"["a", 1, 2.5]"#[..],
            br#"["a", 1, 2.5, true, "t_other"]"#,
            br#"{"id": "a"}"#,
            br#"["a", 1.5, 2.5, true]"#,
            br#"["a", "1", 2.5, true]"#,
            br#"[null, 1, 2.5, true]"#,
            br#"["a", 1, 2.5, 1]"#,
            br#"["a", 1, [2.5], true]"#,
            br#"["a", 1, 2.5, true"#,
            b"",
        ] {
            assert!(decode(&T, bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn ordering_is_bytewise_on_postgres() {
        assert_eq!(
            select_sql(&T, true),
            "SELECT id, n, x, b FROM things ORDER BY id COLLATE \"C\""
        );
        assert_eq!(
            select_sql(&T, false),
            "SELECT id, n, x, b FROM things ORDER BY id"
        );
    }
}
