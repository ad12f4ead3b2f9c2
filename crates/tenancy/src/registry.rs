//! The registry: the control plane's record of every tenant.
//!
//! This is the one cross-tenant store, and it holds no tenant data: names,
//! statuses, placements, versions. Every change bumps a generation counter,
//! which servers poll to drop what they cached about the changed tenants
//! (so a change made by the CLI is seen by a running server within a second).

use sqlx::{Connection, Row};

use crate::dataplane::DbRow;
use crate::error::{Error, Result};
use crate::id::{Slug, TenantId};
use crate::migrate::{self, Migration, Target};
use crate::tenant::{Isolation, Plan, Tenant, TenantStatus};

type Pool = sqlx::Pool<crate::dataplane::Db>;

pub const CONTROL_MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "registry",
        sql: include_str!("../../../migrations/control/sqlite/0001_registry.sql"),
    },
    Migration {
        version: 2,
        name: "tenant_storage",
        sql: include_str!("../../../migrations/control/sqlite/0002_tenant_storage.sql"),
    },
    Migration {
        version: 3,
        name: "deployment",
        sql: include_str!("../../../migrations/control/sqlite/0003_deployment.sql"),
    },
    Migration {
        version: 4,
        name: "tenant_moves",
        sql: include_str!("../../../migrations/control/sqlite/0004_tenant_moves.sql"),
    },
    Migration {
        version: 5,
        name: "console",
        sql: include_str!("../../../migrations/control/sqlite/0005_console.sql"),
    },
];

pub const CONTROL_MIGRATIONS_PG: &[Migration] = &[
    Migration {
        version: 1,
        name: "registry",
        sql: include_str!("../../../migrations/control/postgres/0001_registry.sql"),
    },
    Migration {
        version: 2,
        name: "tenant_storage",
        sql: include_str!("../../../migrations/control/postgres/0002_tenant_storage.sql"),
    },
    Migration {
        version: 3,
        name: "deployment",
        sql: include_str!("../../../migrations/control/postgres/0003_deployment.sql"),
    },
    Migration {
        version: 4,
        name: "tenant_moves",
        sql: include_str!("../../../migrations/control/postgres/0004_tenant_moves.sql"),
    },
    Migration {
        version: 5,
        name: "console",
        sql: include_str!("../../../migrations/control/postgres/0005_console.sql"),
    },
];

/// The schema of the registry on PostgreSQL.
pub const CONTROL_SCHEMA: &str = "campus_control";
const CONTROL_LOCK: i64 = 0x6361_6d70_6374_726c; // "campctrl"

const COLUMNS: &str = "id, slug, name, status, isolation, placement, plan, schema_version, created_at, updated_at, deleted_at";

pub struct Registry {
    pool: Pool,
    /// `""` on SQLite, `"campus_control."` on PostgreSQL.
    prefix: &'static str,
    /// The statement that opens a write transaction.
    begin_write: &'static str,
}

fn decode(row: &DbRow) -> Result<Tenant> {
    let bad = |what: &str| Error::Invalid(format!("registry row has a bad {what}"));
    let id: String = row.try_get("id")?;
    let slug: String = row.try_get("slug")?;
    let status: String = row.try_get("status")?;
    let isolation: String = row.try_get("isolation")?;
    let plan: String = row.try_get("plan")?;
    Ok(Tenant {
        id: TenantId::parse(&id).ok_or_else(|| bad("id"))?,
        slug: Slug::parse(&slug).map_err(|_| bad("slug"))?,
        name: row.try_get("name")?,
        status: TenantStatus::parse(&status).ok_or_else(|| bad("status"))?,
        isolation: Isolation::parse(&isolation).ok_or_else(|| bad("isolation"))?,
        placement: row.try_get("placement")?,
        plan: Plan::parse(&plan).ok_or_else(|| bad("plan"))?,
        schema_version: row.try_get("schema_version")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        deleted_at: row.try_get("deleted_at")?,
    })
}

impl Registry {
    /// The registry in a SQLite file (created if needed), migrated.
    pub async fn open_sqlite(path: &std::path::Path) -> Result<Self> {
        let pool = crate::dataplane::embedded::sqlite_pool(
            path,
            true,
            4,
            crate::dataplane::embedded::CACHE_KIB,
        )?;
        let mut conn = pool.acquire().await?;
        migrate::apply(&mut conn, &Target::Sqlite, CONTROL_MIGRATIONS).await?;
        drop(conn);
        Ok(Self {
            pool,
            prefix: "",
            begin_write: "BEGIN IMMEDIATE",
        })
    }

    /// The registry in PostgreSQL (schema `campus_control`, through the owner
    /// role's pool of the default placement), migrated.
    pub async fn open_postgres(pool: Pool) -> Result<Self> {
        let mut conn = pool.acquire().await?;
        let mut tx = Connection::begin(&mut *conn).await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(CONTROL_LOCK)
            .execute(&mut *tx)
            .await?;
        sqlx::Executor::execute(
            &mut *tx,
            format!("CREATE SCHEMA IF NOT EXISTS {CONTROL_SCHEMA}").as_str(),
        )
        .await?;
        tx.commit().await?;
        migrate::apply(
            &mut conn,
            &Target::Postgres {
                schema: CONTROL_SCHEMA.into(),
                lock: CONTROL_LOCK,
            },
            CONTROL_MIGRATIONS_PG,
        )
        .await?;
        drop(conn);
        Ok(Self {
            pool,
            prefix: "campus_control.",
            begin_write: "BEGIN",
        })
    }

    /// Whether the registry is in PostgreSQL (shared by several nodes).
    pub fn is_postgres(&self) -> bool {
        !self.prefix.is_empty()
    }

    /// The registry's pool, for the kernel's own bookkeeping (storage keys and usage).
    pub(crate) fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Opens a transaction that writes (`BEGIN IMMEDIATE` on SQLite).
    pub(crate) async fn begin_write(
        &self,
    ) -> Result<sqlx::Transaction<'static, crate::dataplane::Db>> {
        Ok(self.pool.begin_with(self.begin_write).await?)
    }

    /// A registry table's name, qualified for the backend.
    pub(crate) fn t(&self, table: &str) -> String {
        format!("{}{table}", self.prefix)
    }

    /// The live (not purged) tenant with this slug, whatever its status.
    pub async fn by_slug(&self, slug: &Slug) -> Result<Option<Tenant>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM {} WHERE slug = $1 AND status <> 'purged'",
            self.t("tenants")
        );
        let row = sqlx::query(&sql)
            .bind(slug.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(decode).transpose()
    }

    pub async fn by_id(&self, id: TenantId) -> Result<Option<Tenant>> {
        let sql = format!("SELECT {COLUMNS} FROM {} WHERE id = $1", self.t("tenants"));
        let row = sqlx::query(&sql)
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(decode).transpose()
    }

    /// Every tenant that is not purged, oldest first.
    pub async fn list(&self) -> Result<Vec<Tenant>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM {} WHERE status <> 'purged' ORDER BY id",
            self.t("tenants")
        );
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
        rows.iter().map(decode).collect()
    }

    /// How many served tenants (active, suspended, maintenance) are at each
    /// schema version.
    pub async fn schema_versions(&self) -> Result<Vec<(i64, i64)>> {
        let sql = format!(
            "SELECT schema_version, COUNT(*) FROM {}
             WHERE status IN ('active', 'suspended', 'maintenance')
             GROUP BY schema_version",
            self.t("tenants")
        );
        Ok(sqlx::query_as(&sql).fetch_all(&self.pool).await?)
    }

    /// The `top` tenants by bytes their files take, largest first, and the
    /// bytes every tenant's files take together.
    pub async fn storage_figures(&self, top: i64) -> Result<(Vec<(TenantId, i64)>, i64)> {
        let table = self.t("tenant_storage");
        let rows: Vec<(String, i64)> = sqlx::query_as(&format!(
            "SELECT tenant_id, stored_bytes FROM {table}
             WHERE stored_bytes > 0 ORDER BY stored_bytes DESC, tenant_id LIMIT $1"
        ))
        .bind(top)
        .fetch_all(&self.pool)
        .await?;
        let total: Option<i64> = sqlx::query_scalar(&format!(
            "SELECT CAST(SUM(stored_bytes) AS BIGINT) FROM {table}"
        ))
        .fetch_one(&self.pool)
        .await?;
        let top = rows
            .into_iter()
            .filter_map(|(id, n)| TenantId::parse(&id).map(|id| (id, n)))
            .collect();
        Ok((top, total.unwrap_or(0)))
    }

    /// The slug of every tenant that is not purged.
    pub async fn live_slugs(&self) -> Result<Vec<String>> {
        let sql = format!(
            "SELECT slug FROM {} WHERE status <> 'purged'",
            self.t("tenants")
        );
        Ok(sqlx::query_scalar(&sql).fetch_all(&self.pool).await?)
    }

    /// Inserts a new tenant row; a live tenant with the same slug → [`Error::SlugTaken`].
    pub(crate) async fn insert(&self, t: &Tenant) -> Result<()> {
        let mut tx = self.pool.begin_with(self.begin_write).await?;
        let g = self.bump(&mut tx).await?;
        let sql = format!(
            "INSERT INTO {} (id, slug, name, status, isolation, placement, plan, schema_version, change_gen, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10)",
            self.t("tenants")
        );
        let res = sqlx::query(&sql)
            .bind(t.id.to_string())
            .bind(t.slug.as_str())
            .bind(&t.name)
            .bind(t.status.as_str())
            .bind(t.isolation.as_str())
            .bind(&t.placement)
            .bind(t.plan.as_str())
            .bind(t.schema_version)
            .bind(g)
            .bind(&t.created_at)
            .execute(&mut *tx)
            .await
            .map_err(Error::from);
        match res {
            Err(e) if e.is_unique_violation() => return Err(Error::SlugTaken),
            other => other?,
        };
        tx.commit().await?;
        Ok(())
    }

    /// Makes a purged tenant's row (or an unfinished one's) `provisioning`
    /// again, as `t` describes it: an import brings a tenant back under its
    /// own id. A live tenant with the slug → [`Error::SlugTaken`].
    pub(crate) async fn revive(&self, t: &Tenant) -> Result<()> {
        let mut tx = self.pool.begin_with(self.begin_write).await?;
        let g = self.bump(&mut tx).await?;
        let sql = format!(
            "UPDATE {} SET slug = $2, name = $3, status = 'provisioning', isolation = $4,
                placement = $5, plan = $6, schema_version = 0, change_gen = $7,
                updated_at = $8, deleted_at = NULL
             WHERE id = $1 AND status IN ('purged', 'provisioning')",
            self.t("tenants")
        );
        let done = sqlx::query(&sql)
            .bind(t.id.to_string())
            .bind(t.slug.as_str())
            .bind(&t.name)
            .bind(t.isolation.as_str())
            .bind(&t.placement)
            .bind(t.plan.as_str())
            .bind(g)
            .bind(crate::clock::now())
            .execute(&mut *tx)
            .await
            .map_err(Error::from);
        match done {
            Err(e) if e.is_unique_violation() => return Err(Error::SlugTaken),
            Err(e) => return Err(e),
            Ok(d) if d.rows_affected() != 1 => return Err(Error::NotFound),
            Ok(_) => {}
        }
        tx.commit().await?;
        Ok(())
    }

    /// Sets a tenant's status to `to` only if it is `from` now, bumping the
    /// generation: whether it was (a status someone else changed meanwhile
    /// is never overwritten).
    pub(crate) async fn swap_status(
        &self,
        id: TenantId,
        from: TenantStatus,
        to: TenantStatus,
    ) -> Result<bool> {
        let mut tx = self.pool.begin_with(self.begin_write).await?;
        let g = self.bump(&mut tx).await?;
        let done = sqlx::query(&format!(
            "UPDATE {} SET change_gen = $2, updated_at = $3, status = $4 WHERE id = $1 AND status = $5",
            self.t("tenants")
        ))
        .bind(id.to_string())
        .bind(g)
        .bind(crate::clock::now())
        .bind(to.as_str())
        .bind(from.as_str())
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Ok(false);
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Takes the lease `name` for `owner` until `until` (Unix seconds) if it
    /// is free, lapsed, or already `owner`'s: whether `owner` holds it now.
    pub(crate) async fn take_lease(
        &self,
        name: &str,
        owner: &str,
        until: i64,
        now: i64,
    ) -> Result<bool> {
        let table = self.t("leases");
        sqlx::query(&format!(
            "INSERT INTO {table} (name, owner, until) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO UPDATE SET owner = $2, until = $3
             WHERE {table}.until < $4 OR {table}.owner = $2"
        ))
        .bind(name)
        .bind(owner)
        .bind(until)
        .bind(now)
        .execute(&self.pool)
        .await?;
        let holder: Option<String> =
            sqlx::query_scalar(&format!("SELECT owner FROM {table} WHERE name = $1"))
                .bind(name)
                .fetch_optional(&self.pool)
                .await?;
        Ok(holder.as_deref() == Some(owner))
    }

    /// Gives the lease back, if `owner` still holds it.
    pub(crate) async fn release_lease(&self, name: &str, owner: &str) -> Result<()> {
        sqlx::query(&format!(
            "DELETE FROM {} WHERE name = $1 AND owner = $2",
            self.t("leases")
        ))
        .bind(name)
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The move of a tenant in progress, if any.
    pub(crate) async fn move_of(&self, id: TenantId) -> Result<Option<MoveRecord>> {
        let sql = format!(
            "SELECT from_isolation, from_placement, to_isolation, to_placement, phase, prior_status
             FROM {} WHERE tenant_id = $1",
            self.t("tenant_moves")
        );
        let row = sqlx::query(&sql)
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        let Some(r) = row else { return Ok(None) };
        let bad = || Error::Invalid("a tenant move record is damaged".into());
        let iso = |c: &str| -> Result<Isolation> {
            let s: String = r.try_get(c)?;
            Isolation::parse(&s).ok_or_else(bad)
        };
        let status: String = r.try_get("prior_status")?;
        let phase: String = r.try_get("phase")?;
        Ok(Some(MoveRecord {
            from: (iso("from_isolation")?, r.try_get("from_placement")?),
            to: (iso("to_isolation")?, r.try_get("to_placement")?),
            switched: phase == "switched",
            prior_status: TenantStatus::parse(&status).ok_or_else(bad)?,
        }))
    }

    /// Records the start of a move (phase `copying`).
    pub(crate) async fn start_move(&self, id: TenantId, m: &MoveRecord) -> Result<()> {
        let sql = format!(
            "INSERT INTO {} (tenant_id, from_isolation, from_placement, to_isolation, to_placement,
                phase, prior_status, started_at)
             VALUES ($1, $2, $3, $4, $5, 'copying', $6, $7)",
            self.t("tenant_moves")
        );
        sqlx::query(&sql)
            .bind(id.to_string())
            .bind(m.from.0.as_str())
            .bind(&m.from.1)
            .bind(m.to.0.as_str())
            .bind(&m.to.1)
            .bind(m.prior_status.as_str())
            .bind(crate::clock::now())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Points the tenant at its new place and marks its move `switched`, in
    /// one transaction: never one without the other.
    pub(crate) async fn switch_move(&self, id: TenantId, to: &(Isolation, String)) -> Result<()> {
        let mut tx = self.pool.begin_with(self.begin_write).await?;
        let g = self.bump(&mut tx).await?;
        let done = sqlx::query(&format!(
            "UPDATE {} SET change_gen = $2, updated_at = $3, isolation = $4, placement = $5
             WHERE id = $1",
            self.t("tenants")
        ))
        .bind(id.to_string())
        .bind(g)
        .bind(crate::clock::now())
        .bind(to.0.as_str())
        .bind(&to.1)
        .execute(&mut *tx)
        .await?;
        let moved = sqlx::query(&format!(
            "UPDATE {} SET phase = 'switched' WHERE tenant_id = $1 AND phase = 'copying'",
            self.t("tenant_moves")
        ))
        .bind(id.to_string())
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 || moved.rows_affected() != 1 {
            return Err(Error::InvalidTransition("not being moved", "switched"));
        }
        tx.commit().await?;
        Ok(())
    }

    /// Forgets a tenant's move (over, or rolled back).
    pub(crate) async fn end_move(&self, id: TenantId) -> Result<()> {
        sqlx::query(&format!(
            "DELETE FROM {} WHERE tenant_id = $1",
            self.t("tenant_moves")
        ))
        .bind(id.to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Applies `change` to one tenant's row, bumping the generation.
    pub(crate) async fn update(&self, id: TenantId, change: Change<'_>) -> Result<()> {
        let mut tx = self.pool.begin_with(self.begin_write).await?;
        let g = self.bump(&mut tx).await?;
        let now = crate::clock::now();
        let tenants = self.t("tenants");
        let id = id.to_string();
        let sql = match change {
            Change::Status(_) => format!(
                "UPDATE {tenants} SET change_gen = $2, updated_at = $3, status = $4,
                    deleted_at = CASE WHEN $4 IN ('deleted', 'purged') THEN COALESCE(deleted_at, $3) ELSE NULL END
                 WHERE id = $1"
            ),
            Change::Details { .. } => format!(
                "UPDATE {tenants} SET change_gen = $2, updated_at = $3,
                    name = COALESCE($4, name), plan = COALESCE($5, plan)
                 WHERE id = $1"
            ),
            Change::SchemaVersion(_) => format!(
                "UPDATE {tenants} SET change_gen = $2, updated_at = $3, schema_version = $4 WHERE id = $1"
            ),
        };
        let q = sqlx::query(&sql).bind(id).bind(g).bind(now);
        let q = match change {
            Change::Status(status) => q.bind(status.as_str()),
            Change::Details { name, plan } => q.bind(name).bind(plan.map(Plan::as_str)),
            Change::SchemaVersion(v) => q.bind(v),
        };
        let done = q.execute(&mut *tx).await?;
        if done.rows_affected() != 1 {
            return Err(Error::NotFound);
        }
        tx.commit().await?;
        Ok(())
    }

    /// The current generation: it changes whenever any tenant's row does.
    pub async fn generation(&self) -> Result<i64> {
        let sql = format!(
            "SELECT value FROM {} WHERE id = 1",
            self.t("registry_generation")
        );
        Ok(sqlx::query_scalar(&sql).fetch_one(&self.pool).await?)
    }

    /// The tenants changed after generation `since`: id, slug, and whether
    /// it is gone (deleted or purged).
    pub async fn changed_since(&self, since: i64) -> Result<Vec<(TenantId, String, bool)>> {
        let sql = format!(
            "SELECT id, slug, status FROM {} WHERE change_gen > $1",
            self.t("tenants")
        );
        let rows = sqlx::query(&sql).bind(since).fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                let id: String = r.try_get("id")?;
                let id = TenantId::parse(&id).ok_or_else(|| Error::Invalid("tenant id".into()))?;
                let status: String = r.try_get("status")?;
                let gone = matches!(status.as_str(), "deleted" | "purged");
                Ok((id, r.try_get("slug")?, gone))
            })
            .collect()
    }

    /// The tenant recorded under an idempotency key, with the fingerprint of
    /// the request that first used it.
    pub async fn idempotency(&self, key: &str) -> Result<Option<(String, TenantId)>> {
        let sql = format!(
            "SELECT fingerprint, tenant_id FROM {} WHERE key = $1",
            self.t("idempotency_keys")
        );
        let row = sqlx::query(&sql)
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            let id: String = r.try_get("tenant_id")?;
            let id = TenantId::parse(&id).ok_or_else(|| Error::Invalid("tenant id".into()))?;
            Ok((r.try_get("fingerprint")?, id))
        })
        .transpose()
    }

    pub async fn remember_idempotency(
        &self,
        key: &str,
        fingerprint: &str,
        id: TenantId,
    ) -> Result<()> {
        let sql = format!(
            "INSERT INTO {} (key, fingerprint, tenant_id, created_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (key) DO NOTHING",
            self.t("idempotency_keys")
        );
        sqlx::query(&sql)
            .bind(key)
            .bind(fingerprint)
            .bind(id.to_string())
            .bind(crate::clock::now())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn bump(&self, conn: &mut crate::dataplane::DbConn) -> Result<i64> {
        let sql = format!(
            "UPDATE {} SET value = value + 1 WHERE id = 1 RETURNING value",
            self.t("registry_generation")
        );
        Ok(sqlx::query_scalar(&sql).fetch_one(conn).await?)
    }

    /// A deployment-wide setting and where it came from (`generated`,
    /// `configured`…), if recorded.
    pub async fn setting(&self, name: &str) -> Result<Option<(String, String)>> {
        let sql = format!(
            "SELECT value, source FROM {} WHERE name = $1",
            self.t("deployment")
        );
        let row = sqlx::query(&sql)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| Ok((r.try_get("value")?, r.try_get("source")?)))
            .transpose()
    }

    /// Records a setting unless one is recorded already, in one statement,
    /// and answers the one that holds: ours, or whoever's came first.
    pub async fn setting_or_insert(
        &self,
        name: &str,
        value: &str,
        source: &str,
    ) -> Result<(String, String)> {
        let sql = format!(
            "INSERT INTO {} (name, value, source, updated_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (name) DO NOTHING",
            self.t("deployment")
        );
        sqlx::query(&sql)
            .bind(name)
            .bind(value)
            .bind(source)
            .bind(crate::clock::now())
            .execute(&self.pool)
            .await?;
        self.setting(name)
            .await?
            .ok_or_else(|| Error::Invalid(format!("the deployment setting {name} vanished")))
    }

    /// Replaces a setting, bumping the generation so that every node's
    /// next refresh sees it.
    pub async fn replace_setting(&self, name: &str, value: &str, source: &str) -> Result<()> {
        let mut tx = self.pool.begin_with(self.begin_write).await?;
        self.bump(&mut tx).await?;
        let sql = format!(
            "INSERT INTO {} (name, value, source, updated_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (name) DO UPDATE SET value = $2, source = $3, updated_at = $4",
            self.t("deployment")
        );
        sqlx::query(&sql)
            .bind(name)
            .bind(value)
            .bind(source)
            .bind(crate::clock::now())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// One tenant's wrapped data key, if any: what a key check of an
    /// install older than the check is made against.
    pub(crate) async fn any_wrapped_key(&self) -> Result<Option<(TenantId, String)>> {
        let sql = format!(
            "SELECT tenant_id, wrapped_key FROM {} ORDER BY tenant_id LIMIT 1",
            self.t("tenant_storage")
        );
        let row = sqlx::query(&sql).fetch_optional(&self.pool).await?;
        row.map(|r| {
            let id: String = r.try_get("tenant_id")?;
            let id = TenantId::parse(&id).ok_or_else(|| Error::Invalid("tenant id".into()))?;
            Ok((id, r.try_get("wrapped_key")?))
        })
        .transpose()
    }

    /// Closes the registry's connections: every later query fails (what a
    /// registry that cannot be reached looks like, for tests; and shutdown).
    /// On SQLite the write-ahead log is first checkpointed as far as it can
    /// be without waiting for anyone (a running server's readers, when this
    /// is the CLI), and SQLite checkpoints the rest when the file's last
    /// connection closes: after a clean stop `registry.db` alone holds
    /// everything — tenants' wrapped data keys included.
    pub async fn close(&self) {
        if self.prefix.is_empty()
            && let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                .execute(&self.pool)
                .await
        {
            tracing::debug!(error = %e, "the registry's write-ahead log was not checkpointed");
        }
        self.pool.close().await;
    }

    /// Whether the registry answers.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

/// A tenant's move in progress: where from, where to, and whether the
/// registry already names the new place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MoveRecord {
    pub(crate) from: (Isolation, String),
    pub(crate) to: (Isolation, String),
    pub(crate) switched: bool,
    pub(crate) prior_status: TenantStatus,
}

/// A change to one tenant's registry row.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Change<'a> {
    Status(TenantStatus),
    Details {
        name: Option<&'a str>,
        plan: Option<Plan>,
    },
    SchemaVersion(i64),
}
