//! The Campus learning domain: users and roles, authentication, courses,
//! lessons, enrollments, progress and the audit log.
//!
//! Written against the isolation kernel's scoped handles: every service takes a
//! [`Cx`] (one tenant, one caller) and every repository a `&mut TenantTx`.
//! Nothing here knows HTTP.

pub mod audit;
pub mod auth;
pub mod courses;
pub mod cx;
pub mod enrollments;
pub mod error;
pub mod files;
pub mod hashing;
pub mod ops;
pub mod page;
pub mod progress;
pub mod throttle;
pub mod users;
pub mod validate;

pub use cx::Cx;
pub use error::{Error, Result};

use tenancy::archive::Kind::{Bool, Int, Real, Text};
use tenancy::archive::{Column, Table};
use tenancy::dataplane::DbRow;
use tenancy::{Migration, MigrationSet};

/// The tenant schema, oldest first, one folder per backend dialect. The
/// versions match across dialects.
pub const TENANT_MIGRATIONS: MigrationSet = MigrationSet {
    sqlite: &[
        Migration {
            version: 1,
            name: "init",
            sql: include_str!("../../../migrations/tenant/sqlite/0001_init.sql"),
        },
        Migration {
            version: 2,
            name: "audit_origin",
            sql: include_str!("../../../migrations/tenant/sqlite/0002_audit_origin.sql"),
        },
    ],
    postgres: &[
        Migration {
            version: 1,
            name: "init",
            sql: include_str!("../../../migrations/tenant/postgres/0001_init.sql"),
        },
        Migration {
            version: 2,
            name: "audit_origin",
            sql: include_str!("../../../migrations/tenant/postgres/0002_audit_origin.sql"),
        },
    ],
    pool: &[
        Migration {
            version: 1,
            name: "init",
            sql: include_str!("../../../migrations/pool/postgres/0001_init.sql"),
        },
        Migration {
            version: 2,
            name: "audit_origin",
            sql: include_str!("../../../migrations/pool/postgres/0002_audit_origin.sql"),
        },
    ],
};

/// The tenant tables, as an archive holds them (`tenancy::archive`), in
/// the order rows are restored (referenced tables first). They must match
/// the latest migration: a test compares them with the schema.
pub const TENANT_TABLES: &[Table] = &[
    Table {
        name: "users",
        columns: &[
            Column::new("id", Text),
            Column::new("email", Text),
            Column::new("name", Text),
            Column::new("role", Text),
            Column::nullable("password_hash", Text),
            Column::new("created_at", Text),
            Column::new("updated_at", Text),
        ],
        key: &["id"],
    },
    Table {
        name: "sessions",
        columns: &[
            Column::new("id", Text),
            Column::new("user_id", Text),
            Column::new("token_hash", Text),
            Column::new("created_at", Text),
            Column::new("expires_at", Text),
        ],
        key: &["id"],
    },
    Table {
        name: "api_keys",
        columns: &[
            Column::new("id", Text),
            Column::new("name", Text),
            Column::new("role", Text),
            Column::new("key_hash", Text),
            Column::nullable("created_by", Text),
            Column::new("created_at", Text),
            Column::nullable("revoked_at", Text),
        ],
        key: &["id"],
    },
    Table {
        name: "courses",
        columns: &[
            Column::new("id", Text),
            Column::new("title", Text),
            Column::new("description", Text),
            Column::new("published", Bool),
            Column::new("created_at", Text),
            Column::new("updated_at", Text),
        ],
        key: &["id"],
    },
    Table {
        name: "lessons",
        columns: &[
            Column::new("id", Text),
            Column::new("course_id", Text),
            Column::new("title", Text),
            Column::new("position", Int),
            Column::new("created_at", Text),
            Column::new("updated_at", Text),
        ],
        key: &["id"],
    },
    Table {
        name: "enrollments",
        columns: &[
            Column::new("course_id", Text),
            Column::new("user_id", Text),
            Column::new("created_at", Text),
        ],
        key: &["course_id", "user_id"],
    },
    Table {
        name: "progress",
        columns: &[
            Column::new("user_id", Text),
            Column::new("lesson_id", Text),
            Column::new("course_id", Text),
            Column::new("position_s", Real),
            Column::new("completed", Bool),
            Column::nullable("completed_at", Text),
            Column::new("updated_at", Text),
        ],
        key: &["user_id", "lesson_id"],
    },
    Table {
        name: "audit_events",
        columns: &[
            Column::new("id", Text),
            Column::nullable("actor_id", Text),
            Column::new("actor_kind", Text),
            Column::new("action", Text),
            Column::nullable("target_type", Text),
            Column::nullable("target_id", Text),
            Column::nullable("request_id", Text),
            Column::nullable("details", Text),
            Column::new("created_at", Text),
            Column::nullable("client", Text),
            Column::nullable("user_agent", Text),
        ],
        key: &["id"],
    },
];

/// Decodes a row column or fails the request with an internal error.
pub(crate) fn col<'r, T>(row: &'r DbRow, name: &str) -> Result<T>
where
    T: sqlx::Decode<'r, tenancy::Db> + sqlx::Type<tenancy::Db>,
{
    use sqlx::Row;
    Ok(row.try_get(name)?)
}

/// Decodes a boolean column: a `BOOLEAN` on PostgreSQL, a 0/1 integer on SQLite.
pub(crate) fn col_bool(row: &DbRow, name: &str) -> Result<Option<bool>> {
    use sqlx::Row;
    match row.try_get::<Option<bool>, _>(name) {
        Ok(b) => Ok(b),
        Err(_) => Ok(row.try_get::<Option<i64>, _>(name)?.map(|v| v != 0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::{Connection, Row};

    /// An archive holds every tenant table and every column, with the
    /// types and keys the schema gives them: a migration that adds a table
    /// or a column fails here until `TENANT_TABLES` says how to carry it.
    #[tokio::test]
    async fn the_archived_tables_are_the_whole_tenant_schema() {
        let mut c = sqlx::SqliteConnection::connect("sqlite::memory:")
            .await
            .expect("sqlite");
        for m in TENANT_MIGRATIONS.sqlite {
            sqlx::raw_sql(m.sql).execute(&mut c).await.expect("migrate");
        }
        let mut tables: Vec<String> =
            sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table'")
                .fetch_all(&mut c)
                .await
                .expect("tables");
        tables.sort();
        let mut ours: Vec<&str> = TENANT_TABLES.iter().map(|t| t.name).collect();
        ours.sort();
        assert_eq!(tables, ours);
        for t in TENANT_TABLES {
            let cols = sqlx::query(&format!("PRAGMA table_info({})", t.name))
                .fetch_all(&mut c)
                .await
                .expect("columns");
            let names: Vec<String> = cols.iter().map(|r| r.get("name")).collect();
            let ours: Vec<&str> = t.columns.iter().map(|c| c.name).collect();
            assert_eq!(names, ours, "{}", t.name);
            let mut key: Vec<(i64, String)> = cols
                .iter()
                .filter(|r| r.get::<i64, _>("pk") > 0)
                .map(|r| (r.get("pk"), r.get("name")))
                .collect();
            key.sort();
            let key: Vec<String> = key.into_iter().map(|(_, n)| n).collect();
            assert_eq!(key, t.key, "the key of {}", t.name);
            for (r, col) in cols.iter().zip(t.columns) {
                let declared: String = r.get("type");
                let kind = match declared.as_str() {
                    "TEXT" => vec![Text],
                    "REAL" => vec![Real],
                    "INTEGER" => vec![Int, Bool],
                    other => panic!("{}.{} is {other}", t.name, col.name),
                };
                assert!(kind.contains(&col.kind), "{}.{}", t.name, col.name);
                let not_null = r.get::<i64, _>("notnull") == 1 || r.get::<i64, _>("pk") > 0;
                assert_eq!(
                    col.nullable, !not_null,
                    "{}.{} nullability",
                    t.name, col.name
                );
            }
        }
    }
}
