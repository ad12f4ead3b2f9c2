//! The PostgreSQL backend: placements (servers), each reached through two
//! bounded pools — the serving role's, shared by every `schema` and `pool`
//! tenant of the placement, and the owner role's, used only for DDL,
//! migrations and the registry — plus a bounded LRU of small pools for the
//! tenants that have a `database` of their own.
//!
//! How a transaction is scoped to its tenant, by isolation mode:
//!
//! * `schema` — `set_config('role', 't_<uuid>', true)` and
//!   `set_config('search_path', '"t_<uuid>"', true)`: transaction-local, bound
//!   as parameters. The serving role is `NOINHERIT`, so outside that
//!   `SET ROLE` it has no right on any tenant schema.
//! * `pool` — `set_config('app.tenant_id', '<uuid>', true)` and the search path
//!   set to `campus_pool_api`, whose views add an explicit tenant predicate
//!   over tables under forced row-level security (no setting, no rows).
//! * `database` — a connection to the tenant's own database.
//!
//! Nothing is ever `SET` at session level on a pooled connection, so a
//! connection returned to the pool (also by a cancelled request, whose
//! transaction is rolled back) carries nothing of its last tenant.

use std::borrow::Cow;
use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lru::LruCache;
use sqlx::Connection;
use sqlx::any::AnyPoolOptions;

use super::health::Health;
use super::{Db, TenantTx, quote, sql_name};
use crate::error::{Error, Result};
use crate::id::TenantId;
use crate::migrate::{self, Applied, Migration, MigrationSet, Target};
use crate::tenant::{Isolation, Tenant};

type Pool = sqlx::Pool<Db>;

/// The shared schema of `pool` tenants (tables under forced RLS).
pub const POOL_SCHEMA: &str = "campus_pool";
/// The schema of views that `pool` transactions see (explicit tenant predicate).
pub const POOL_API_SCHEMA: &str = "campus_pool_api";
/// Tables of the pool schema, children first (the order to delete a tenant in).
pub const POOL_TABLES: &[&str] = &[
    "audit_events",
    "progress",
    "enrollments",
    "lessons",
    "courses",
    "api_keys",
    "sessions",
    "users",
];
/// The advisory lock that serialises migrations of the pool schema.
const POOL_LOCK: i64 = 0x6361_6d70_706f_6f6c; // "camppool"

/// One PostgreSQL server (or cluster) tenants can be placed on.
#[derive(Debug, Clone)]
pub struct PlacementConfig {
    pub name: String,
    /// The serving role: no superuser, no `BYPASSRLS`, `NOINHERIT`, owns nothing.
    pub url: String,
    /// The owner role: owns schemas and tables, creates tenant roles and
    /// databases (`CREATEROLE`, `CREATEDB`). Used for DDL and migrations only.
    pub owner_url: String,
    /// Connections of the serving pool, shared by all its schema/pool tenants.
    pub pool_size: u32,
}

#[derive(Debug, Clone)]
pub struct PgConfig {
    /// The first one is the default placement, and holds the registry.
    pub placements: Vec<PlacementConfig>,
    /// How many `database` tenants' pools may be open at once, per placement.
    pub max_open_databases: NonZeroUsize,
    /// Connections per open `database` tenant.
    pub database_pool_size: u32,
    /// How many transactions may hold connections to `database` tenants'
    /// databases at once, per placement; more wait their turn. With the
    /// LRU's idle connections, this bounds the connections to tenant
    /// databases whatever the number of tenants served.
    pub database_transactions: usize,
    /// Connections of the owner role, per placement: builds, migrations and
    /// registry writes. `campus migrate --concurrency N` needs more than N.
    pub owner_pool_size: u32,
}

pub(crate) struct Placement {
    pub(crate) name: String,
    pub(crate) app: Pool,
    pub(crate) owner: Pool,
    pub(crate) app_role: String,
    app_url: url::Url,
    owner_url: url::Url,
    databases: Mutex<LruCache<TenantId, Pool>>,
    database_pool_size: u32,
    /// Transactions open on `database` tenants' pools
    /// ([`PgConfig::database_transactions`]): with evicted pools closed,
    /// the connections to tenant databases stay within this plus the LRU's
    /// idle ones, however many tenants are served at once.
    database_slots: Arc<tokio::sync::Semaphore>,
    /// Whether the server answered when last tried.
    health: Health,
}

/// Every placement of this deployment.
pub struct Placements {
    default: String,
    by_name: HashMap<String, Placement>,
}

fn parse_url(s: &str) -> Result<url::Url> {
    url::Url::parse(s).map_err(|e| Error::Invalid(format!("database URL: {e}")))
}

fn with_database(url: &url::Url, database: &str) -> url::Url {
    let mut u = url.clone();
    u.set_path(&format!("/{database}"));
    u
}

fn lock_key(id: TenantId) -> i64 {
    let b = id.as_uuid().into_bytes();
    i64::from_be_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]])
}

/// How long a transaction waits for a connection before giving up.
const ACQUIRE_TIMEOUT: Duration = crate::bulkhead::WAIT;

async fn pool(url: &url::Url, size: u32) -> Result<Pool> {
    Ok(AnyPoolOptions::new()
        .max_connections(size)
        .min_connections(0)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .idle_timeout(Duration::from_secs(300))
        .after_release(super::after_release)
        .connect(url.as_str())
        .await?)
}

/// SQLSTATE of `set_config('role', ..)` naming a role that does not exist.
const ROLE_MISSING: &str = "22023";
/// SQLSTATE of `set_config('role', ..)` naming a role the session may not
/// become (`permission denied to set role`).
const SET_ROLE_DENIED: &str = "42501";
/// SQLSTATE of `ALTER ROLE` naming a role that does not exist.
const ROLE_UNKNOWN: &str = "42704";
/// SQLSTATE of a connection to a database that does not exist.
const DATABASE_MISSING: &str = "3D000";

/// Serving never creates a tenant's database: a tenant whose role or database
/// is missing is [`Error::NotFound`], as on the embedded backend.
fn not_found_if(e: sqlx::Error, code: &str) -> Error {
    match &e {
        sqlx::Error::Database(d) if d.code().as_deref() == Some(code) => Error::NotFound,
        _ => e.into(),
    }
}

fn is_code(e: &sqlx::Error, code: &str) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some(code))
}

/// [`not_found_if`], on an error already the kernel's.
fn not_found_if_err(e: Error, code: &str) -> Error {
    match e {
        Error::Db(e) => not_found_if(e, code),
        other => other,
    }
}

fn is_err_code(e: &Error, code: &str) -> bool {
    matches!(e, Error::Db(d) if is_code(d, code))
}

const SCHEMA_NAMED: &str = "SELECT count(*) FROM pg_namespace WHERE nspname = $1";
const ROLE_NAMED: &str = "SELECT count(*) FROM pg_roles WHERE rolname = $1";
const DATABASE_NAMED: &str = "SELECT count(*) FROM pg_database WHERE datname = $1";

/// Whether the placement's catalog `sql` (one of the `…_NAMED` counts)
/// finds `name`.
async fn catalog_has(p: &Placement, sql: &'static str, name: &str) -> Result<bool> {
    let n: i64 = sqlx::query_scalar(sql)
        .bind(name)
        .fetch_one(&p.owner)
        .await?;
    Ok(n > 0)
}

/// Whether each shared table holds rows of tenant `id`, read as the owner
/// under forced row-level security: the tenant's setting and an explicit
/// predicate both name it.
async fn pool_rows(p: &Placement, id: TenantId) -> Result<Vec<(&'static str, bool)>> {
    let mut tx = p.owner.begin().await?;
    sqlx::query("SELECT set_config('app.tenant_id', $1, true)")
        .bind(id.to_string())
        .execute(&mut *tx)
        .await?;
    let mut out = Vec::with_capacity(POOL_TABLES.len());
    for table in POOL_TABLES {
        let n: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM {POOL_SCHEMA}.{table} WHERE tenant_id = $1"
        ))
        .bind(id.to_string())
        .fetch_one(&mut *tx)
        .await?;
        out.push((*table, n > 0));
    }
    Ok(out)
}

async fn current_user(pool: &Pool) -> Result<String> {
    Ok(sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(pool)
        .await?)
}

/// Migrates a `database` tenant's database on `conn` (the owner, on it), then
/// closes the connection.
async fn migrate_database(
    mut conn: sqlx::AnyConnection,
    id: TenantId,
    set: &MigrationSet,
) -> Result<Applied> {
    let target = Target::Postgres {
        schema: "public".into(),
        lock: lock_key(id),
    };
    let applied = migrate::apply(&mut conn, &target, set.postgres).await;
    conn.close().await?;
    applied
}

impl Placements {
    /// Closes every placement's pools, for a clean stop.
    pub(crate) async fn close(&self) {
        for p in self.by_name.values() {
            super::close_all(&p.databases).await;
            p.app.close().await;
            p.owner.close().await;
        }
    }

    /// Connects to every placement (failing fast if one does not answer).
    pub async fn connect(cfg: &PgConfig) -> Result<Self> {
        let mut by_name = HashMap::new();
        for pc in &cfg.placements {
            let app_url = parse_url(&pc.url)?;
            let owner_url = parse_url(&pc.owner_url)?;
            let app = pool(&app_url, pc.pool_size.max(1)).await?;
            let owner = pool(&owner_url, cfg.owner_pool_size.max(1)).await?;
            let app_role = current_user(&app).await?;
            by_name.insert(
                pc.name.clone(),
                Placement {
                    name: pc.name.clone(),
                    app,
                    owner,
                    app_role,
                    health: Health::new(&pc.name, app_url.clone()),
                    app_url,
                    owner_url,
                    databases: Mutex::new(LruCache::new(cfg.max_open_databases)),
                    database_pool_size: cfg.database_pool_size.max(1),
                    database_slots: Arc::new(tokio::sync::Semaphore::new(
                        cfg.database_transactions.max(1),
                    )),
                },
            );
        }
        let default = cfg
            .placements
            .first()
            .map(|p| p.name.clone())
            .ok_or_else(|| Error::Invalid("no PostgreSQL placement configured".into()))?;
        Ok(Self { default, by_name })
    }

    /// The default placement (holds the registry).
    pub(crate) fn default_placement(&self) -> &Placement {
        &self.by_name[&self.default]
    }

    pub(crate) fn all(&self) -> impl Iterator<Item = &Placement> {
        self.by_name.values()
    }

    fn placement(&self, name: &str) -> Result<&Placement> {
        self.by_name
            .get(name)
            .ok_or_else(|| Error::UnknownPlacement(name.to_owned()))
    }

    pub(crate) fn unused_root(&self) -> std::path::PathBuf {
        std::path::PathBuf::from("/nonexistent/campus-postgres")
    }

    pub(crate) fn check(&self, _isolation: Isolation, placement: Option<&str>) -> Result<String> {
        let name = placement.unwrap_or(&self.default);
        Ok(self.placement(name)?.name.clone())
    }

    /// The pool of a `database` tenant (serving role, the tenant's database).
    fn database_pool(&self, p: &Placement, id: TenantId) -> Result<Pool> {
        let mut pools = p.databases.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pool) = pools.get(&id) {
            return Ok(pool.clone());
        }
        let url = with_database(&p.app_url, &sql_name(id));
        let pool = AnyPoolOptions::new()
            .max_connections(p.database_pool_size)
            .min_connections(0)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .idle_timeout(Duration::from_secs(60))
            .after_release(super::after_release)
            .connect_lazy(url.as_str())?;
        // An evicted pool is closed: its idle connections at once, those in
        // use when their transactions end. A caller about to begin on it
        // gets `PoolClosed` and opens a fresh one (`begin_database`).
        if let Some((_, evicted)) = pools.push(id, pool.clone())
            && !evicted.is_closed()
        {
            tokio::spawn(async move { evicted.close().await });
        }
        Ok(pool)
    }

    /// Whether the default placement (the registry's) answered when last tried.
    pub(crate) fn registry_reachable(&self) -> bool {
        !self.default_placement().health.is_down()
    }

    /// Whether every placement answered when last tried.
    pub(crate) fn each_reachable(&self) -> Vec<(String, bool)> {
        let mut out: Vec<(String, bool)> = self
            .by_name
            .values()
            .map(|p| (p.name.clone(), !p.health.is_down()))
            .collect();
        out.sort();
        out
    }

    pub(crate) fn reachable(&self) -> bool {
        self.by_name.values().all(|p| !p.health.is_down())
    }

    /// A transaction on the tenant's data. A connection lost before any of
    /// the caller's statements went out (the server restarted since the
    /// pool last used it) is retried once, on a fresh connection; a second
    /// loss marks the placement down.
    ///
    /// `statement` opens it (`None`: a plain `BEGIN`), such as
    /// [`SNAPSHOT`](super::SNAPSHOT) for one consistent view of every table.
    pub(crate) async fn begin(
        &self,
        t: &Tenant,
        statement: Option<&'static str>,
    ) -> Result<TenantTx> {
        let p = self.placement(&t.placement)?;
        match self.begin_once(p, t, statement).await {
            Err(Error::Unavailable(why)) if !p.health.is_down() => {
                tracing::warn!(placement = %p.name, error = %why,
                    "connection lost while beginning a transaction; retrying once on a fresh connection");
                metrics::counter!("campus_db_begin_retries_total", "placement" => p.name.clone())
                    .increment(1);
                let again = self.begin_once(p, t, statement).await;
                if let Err(Error::Unavailable(why)) = &again {
                    p.health.failed(why);
                }
                again
            }
            begun => begun,
        }
    }

    async fn begin_once(
        &self,
        p: &Placement,
        t: &Tenant,
        statement: Option<&'static str>,
    ) -> Result<TenantTx> {
        let name = sql_name(t.id);
        let tx = match t.isolation {
            Isolation::Schema => match self.begin_schema(p, &name, statement).await {
                Err(e) if is_err_code(&e, SET_ROLE_DENIED) => {
                    // PostgreSQL caches, per session, the roles the login
                    // role is a member of, and loses an invalidation that
                    // arrives while it rebuilds that cache (acl.c,
                    // `roles_is_member_of`): a session that was rebuilding it
                    // when this tenant's GRANT committed may keep a list
                    // without the tenant, and refuse its role until the next
                    // role change in the cluster. Touching the tenant's role
                    // (no change) invalidates every session's cache, and the
                    // retry sees the grant. A role the serving role really is
                    // not a member of is refused again: nothing is widened.
                    tracing::warn!(tenant = %t.id, "SET ROLE refused; refreshing role memberships and retrying once");
                    let touch = format!("ALTER ROLE {} NOLOGIN", quote(&name));
                    sqlx::Executor::execute(&p.owner, touch.as_str())
                        .await
                        .map_err(|e| not_found_if(e, ROLE_UNKNOWN))?;
                    self.begin_schema(p, &name, statement)
                        .await
                        .map_err(|e| not_found_if_err(e, ROLE_MISSING))?
                }
                scoped => scoped.map_err(|e| not_found_if_err(e, ROLE_MISSING))?,
            },
            Isolation::Pool => {
                let mut tx = sqlx::Transaction::begin(
                    p.health.acquire(&p.app).await?,
                    statement.map(Cow::Borrowed),
                )
                .await?;
                sqlx::query(
                    "SELECT set_config('app.tenant_id', $1, true), set_config('search_path', $2, true)",
                )
                .bind(t.id.to_string())
                .bind(POOL_API_SCHEMA)
                .execute(&mut *tx)
                .await?;
                tx
            }
            Isolation::Database => {
                // A slot first, so that however many tenants are busy, no
                // more transactions hold tenant-database connections than
                // the budget allows; the others wait their turn.
                let slot = crate::bulkhead::permit(
                    p.database_slots.clone(),
                    ACQUIRE_TIMEOUT,
                    "database_slot",
                )
                .await?;
                let tx = self.begin_database(p, t.id, statement).await?;
                return Ok(TenantTx::new(t.id, tx).holding(slot));
            }
        };
        Ok(TenantTx::new(t.id, tx))
    }

    /// A transaction of the serving pool as the tenant's role, on its schema.
    async fn begin_schema(
        &self,
        p: &Placement,
        name: &str,
        statement: Option<&'static str>,
    ) -> Result<sqlx::Transaction<'static, Db>> {
        let mut tx = sqlx::Transaction::begin(
            p.health.acquire(&p.app).await?,
            statement.map(Cow::Borrowed),
        )
        .await?;
        sqlx::query("SELECT set_config('role', $1, true), set_config('search_path', $2, true)")
            .bind(name)
            .bind(quote(name))
            .execute(&mut *tx)
            .await?;
        Ok(tx)
    }

    async fn begin_database(
        &self,
        p: &Placement,
        id: TenantId,
        statement: Option<&'static str>,
    ) -> Result<sqlx::Transaction<'static, Db>> {
        // A pool evicted (and closed) between `database_pool` and `begin` —
        // the registry moved, say the tenant was just activated: the retry
        // opens a fresh one.
        for _ in 0..3 {
            match p.health.acquire(&self.database_pool(p, id)?).await {
                Ok(conn) => {
                    return Ok(sqlx::Transaction::begin(conn, statement.map(Cow::Borrowed)).await?);
                }
                Err(Error::Db(sqlx::Error::PoolClosed)) => continue,
                Err(e) => return Err(not_found_if_err(e, DATABASE_MISSING)),
            }
        }
        Err(Error::Db(sqlx::Error::PoolClosed))
    }

    /// Creates what the tenant needs on its placement and migrates it.
    pub(crate) async fn build(&self, t: &Tenant, set: &MigrationSet) -> Result<Applied> {
        let p = self.placement(&t.placement)?;
        let name = quote(&sql_name(t.id));
        let app = quote(&p.app_role);
        match t.isolation {
            Isolation::Schema => {
                // One transaction: the role, the schema, its grants and every
                // migration, so a build cut short leaves nothing half made
                // and a re-run starts clean. Names come from the tenant's
                // UUID only (`sql_name`), quoted.
                let role = sql_name(t.id);
                let mut tx = p.owner.begin().await?;
                let target = Target::Postgres {
                    schema: role.clone(),
                    lock: lock_key(t.id),
                };
                // The lock before the role: concurrent builds of one tenant
                // (a retried request, another node) take turns.
                migrate::enter(&mut tx, &target).await?;
                let ddl = format!(
                    "DO $$ BEGIN
                        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN
                            CREATE ROLE {name} NOLOGIN;
                        END IF;
                     END $$;
                     CREATE SCHEMA IF NOT EXISTS {name};
                     REVOKE ALL ON SCHEMA {name} FROM PUBLIC;
                     GRANT USAGE ON SCHEMA {name} TO {name};
                     ALTER DEFAULT PRIVILEGES IN SCHEMA {name} GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {name};
                     GRANT {name} TO {app};"
                );
                sqlx::Executor::execute(&mut *tx, ddl.as_str()).await?;
                let applied = migrate::apply_in(&mut tx, set.postgres).await?;
                tx.commit().await?;
                Ok(applied)
            }
            Isolation::Pool => self.migrate(t, set).await,
            Isolation::Database => {
                // CREATE DATABASE cannot run in a transaction, so concurrent
                // builds of one tenant (retried or duplicate requests, other
                // nodes) serialise on a session-level advisory lock — held on
                // a connection of its own, never a pooled one, so that a build
                // cancelled half-way releases it by closing the connection.
                let mut lock = sqlx::AnyConnection::connect(p.owner_url.as_str()).await?;
                sqlx::query("SELECT pg_advisory_lock($1)")
                    .bind(lock_key(t.id))
                    .execute(&mut lock)
                    .await?;
                let applied = self.build_database(p, t, set, &mut lock).await;
                // Closing releases the lock (so would dropping it): a failure
                // to close must not hide how the build went.
                let _ = lock.close().await;
                applied
            }
        }
    }

    /// Creates (if missing) and migrates a `database` tenant's database; the
    /// caller holds the tenant's lock on `conn` (the owner, on the placement).
    async fn build_database(
        &self,
        p: &Placement,
        t: &Tenant,
        set: &MigrationSet,
        conn: &mut sqlx::AnyConnection,
    ) -> Result<Applied> {
        let name = quote(&sql_name(t.id));
        let app = quote(&p.app_role);
        let exists: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname = $1")
            .bind(sql_name(t.id))
            .fetch_one(&mut *conn)
            .await?;
        if exists == 0 {
            sqlx::Executor::execute(&mut *conn, format!("CREATE DATABASE {name}").as_str()).await?;
            let grants = format!(
                "REVOKE ALL ON DATABASE {name} FROM PUBLIC; GRANT CONNECT, TEMPORARY ON DATABASE {name} TO {app};"
            );
            sqlx::Executor::execute(&mut *conn, grants.as_str()).await?;
        }
        let mut conn = self.owner_database_conn(p, t.id).await?;
        let grants = format!(
            "REVOKE ALL ON SCHEMA public FROM PUBLIC;
             GRANT USAGE ON SCHEMA public TO {app};
             ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {app};"
        );
        sqlx::Executor::execute(&mut conn, grants.as_str()).await?;
        migrate_database(conn, t.id, set).await
    }

    async fn owner_database_conn(
        &self,
        p: &Placement,
        id: TenantId,
    ) -> Result<sqlx::AnyConnection> {
        let url = with_database(&p.owner_url, &sql_name(id));
        Ok(sqlx::AnyConnection::connect(url.as_str()).await?)
    }

    async fn database_exists(&self, p: &Placement, id: TenantId) -> Result<bool> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname = $1")
            .bind(sql_name(id))
            .fetch_one(&p.owner)
            .await?;
        Ok(n > 0)
    }

    /// Migrates the shared pool schema of a placement (once for all its
    /// `pool` tenants) and grants the serving role its rights on it.
    pub(crate) async fn migrate_pool(&self, p: &Placement, set: &[Migration]) -> Result<Applied> {
        let mut conn = p.owner.acquire().await?;
        sqlx::Executor::execute(
            &mut *conn,
            format!("CREATE SCHEMA IF NOT EXISTS {POOL_SCHEMA}").as_str(),
        )
        .await
        .or_else(|e| match &e {
            // Two first runs racing on the schema: the other one made it.
            sqlx::Error::Database(d) if d.is_unique_violation() => Ok(Default::default()),
            _ => Err(e),
        })?;
        let applied = migrate::apply(
            &mut conn,
            &Target::Postgres {
                schema: POOL_SCHEMA.into(),
                lock: POOL_LOCK,
            },
            set,
        )
        .await?;
        // The tables and views only: never the ledger.
        let app = quote(&p.app_role);
        let objects: Vec<String> = POOL_TABLES
            .iter()
            .flat_map(|t| {
                [
                    format!("{POOL_SCHEMA}.{t}"),
                    format!("{POOL_API_SCHEMA}.{t}"),
                ]
            })
            .collect();
        let grants = format!(
            "GRANT USAGE ON SCHEMA {POOL_SCHEMA}, {POOL_API_SCHEMA} TO {app};
             GRANT SELECT, INSERT, UPDATE, DELETE ON {} TO {app};",
            objects.join(", ")
        );
        // This runs for every `pool` tenant provisioned or migrated, and a
        // GRANT rewrites the object's catalog row even when it changes nothing
        // (a dead catalog tuple and a cache invalidation in every backend, under
        // a lock all of them queue on): grant only when something is missing.
        // The names checked are constants, never input.
        let checks: Vec<String> = [POOL_SCHEMA, POOL_API_SCHEMA]
            .iter()
            .map(|s| format!("has_schema_privilege($1, '{s}', 'USAGE')"))
            .chain(objects.iter().flat_map(|o| {
                ["SELECT", "INSERT", "UPDATE", "DELETE"]
                    .map(|right| format!("has_table_privilege($1, '{o}', '{right}')"))
            }))
            .collect();
        let granted: bool = sqlx::query_scalar(&format!("SELECT {}", checks.join(" AND ")))
            .bind(&p.app_role)
            .fetch_one(&mut *conn)
            .await?;
        if granted {
            return Ok(applied);
        }
        // Under the pool's lock: two GRANTs on one object at once fail with
        // "tuple concurrently updated" (two tenants provisioned at once).
        let mut tx = conn.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(POOL_LOCK)
            .execute(&mut *tx)
            .await?;
        sqlx::Executor::execute(&mut *tx, grants.as_str()).await?;
        tx.commit().await?;
        Ok(applied)
    }

    pub(crate) async fn migrate(&self, t: &Tenant, set: &MigrationSet) -> Result<Applied> {
        let p = self.placement(&t.placement)?;
        match t.isolation {
            Isolation::Schema => {
                let mut conn = p.owner.acquire().await?;
                migrate::apply(
                    &mut conn,
                    &Target::Postgres {
                        schema: sql_name(t.id),
                        lock: lock_key(t.id),
                    },
                    set.postgres,
                )
                .await
            }
            Isolation::Pool => {
                // The shared tables may have been migrated for another tenant
                // (or at start-up) already: this tenant moves from the version
                // recorded for it.
                let applied = self.migrate_pool(p, set.pool).await?;
                Ok(Applied {
                    from: applied.from.min(t.schema_version),
                    to: applied.to,
                })
            }
            Isolation::Database => {
                let conn = self.owner_database_conn(p, t.id).await?;
                migrate_database(conn, t.id, set).await
            }
        }
    }

    pub(crate) async fn destroy(&self, t: &Tenant) -> Result<()> {
        let p = self.placement(&t.placement)?;
        let name = quote(&sql_name(t.id));
        match t.isolation {
            Isolation::Schema => {
                let mut tx = p.owner.begin().await?;
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(lock_key(t.id))
                    .execute(&mut *tx)
                    .await?;
                let ddl = format!("DROP SCHEMA IF EXISTS {name} CASCADE");
                sqlx::Executor::execute(&mut *tx, ddl.as_str()).await?;
                tx.commit().await?;
                // Roles are the cluster's: another database of it (the
                // tenant moved to a placement on the same cluster) may
                // still grant this one rights, and then it stays.
                let drop_role = format!("DROP ROLE IF EXISTS {name}");
                match sqlx::Executor::execute(&p.owner, drop_role.as_str()).await {
                    Err(e) if is_code(&e, "2BP01") => {
                        tracing::info!(tenant = %t.id, "the tenant's role is still used in another database of the cluster; kept");
                    }
                    other => {
                        other?;
                    }
                }
            }
            Isolation::Pool => {
                // As the owner, still under forced RLS: the tenant's setting
                // and an explicit predicate both name the tenant.
                let mut tx = p.owner.begin().await?;
                sqlx::query("SELECT set_config('app.tenant_id', $1, true)")
                    .bind(t.id.to_string())
                    .execute(&mut *tx)
                    .await?;
                for table in POOL_TABLES {
                    sqlx::query(&format!(
                        "DELETE FROM {POOL_SCHEMA}.{table} WHERE tenant_id = $1"
                    ))
                    .bind(t.id.to_string())
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
            }
            Isolation::Database => {
                // `WITH (FORCE)` ends the owner's own sessions only: ending
                // the serving role's needs membership in it. So no new
                // serving connection, this node's pool closed, and a short
                // wait for the sessions to end — also those of other nodes,
                // which close their pools as they see the tenant deleted.
                let mut conn = p.owner.acquire().await?;
                let exists: i64 =
                    sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname = $1")
                        .bind(sql_name(t.id))
                        .fetch_one(&mut *conn)
                        .await?;
                if exists > 0 {
                    let app = quote(&p.app_role);
                    let revoke = format!("REVOKE CONNECT, TEMPORARY ON DATABASE {name} FROM {app}");
                    sqlx::Executor::execute(&mut *conn, revoke.as_str()).await?;
                }
                self.evict(t.id).await;
                for _ in 0..50 {
                    let others: i64 = sqlx::query_scalar(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND usename <> current_user",
                    )
                    .bind(sql_name(t.id))
                    .fetch_one(&mut *conn)
                    .await?;
                    if others == 0 {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                sqlx::Executor::execute(
                    &mut *conn,
                    format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str(),
                )
                .await?;
            }
        }
        Ok(())
    }

    /// Whether `t`'s place already holds something of it: its schema (and,
    /// with `roles`, its cluster-wide role), its database, or its rows of
    /// the shared tables — in its own mode only.
    pub(crate) async fn holds(&self, t: &Tenant, roles: bool) -> Result<bool> {
        let p = self.placement(&t.placement)?;
        let name = sql_name(t.id);
        Ok(match t.isolation {
            Isolation::Schema => {
                catalog_has(p, SCHEMA_NAMED, &name).await?
                    || (roles && catalog_has(p, ROLE_NAMED, &name).await?)
            }
            Isolation::Database => catalog_has(p, DATABASE_NAMED, &name).await?,
            Isolation::Pool => pool_rows(p, t.id).await?.iter().any(|(_, found)| *found),
        })
    }

    /// What of `t`'s data is still on its placement, each thing named and
    /// found or not: after a purge, everything must be gone. Looks in every
    /// mode's place (a tenant moved between modes leaves none behind either).
    pub(crate) async fn remains(&self, t: &Tenant) -> Result<Vec<(String, bool)>> {
        let p = self.placement(&t.placement)?;
        let name = sql_name(t.id);
        let mut out = vec![
            (
                format!("schema {name} on placement {}", p.name),
                catalog_has(p, SCHEMA_NAMED, &name).await?,
            ),
            (
                format!("role {name}"),
                catalog_has(p, ROLE_NAMED, &name).await?,
            ),
            (
                format!("database {name} on placement {}", p.name),
                catalog_has(p, DATABASE_NAMED, &name).await?,
            ),
        ];
        for (table, found) in pool_rows(p, t.id).await? {
            out.push((
                format!("rows of {POOL_SCHEMA}.{table} on placement {}", p.name),
                found,
            ));
        }
        Ok(out)
    }

    pub(crate) async fn evict(&self, id: TenantId) {
        for p in self.by_name.values() {
            let pool = p
                .databases
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop(&id);
            if let Some(pool) = pool {
                pool.close().await;
            }
        }
    }

    pub(crate) async fn exists(&self, t: &Tenant) -> Result<bool> {
        let p = self.placement(&t.placement)?;
        match t.isolation {
            Isolation::Schema => {
                let n: i64 =
                    sqlx::query_scalar("SELECT count(*) FROM pg_namespace WHERE nspname = $1")
                        .bind(sql_name(t.id))
                        .fetch_one(&p.owner)
                        .await?;
                Ok(n > 0)
            }
            Isolation::Pool => Ok(true),
            Isolation::Database => self.database_exists(p, t.id).await,
        }
    }

    /// What a connection of a placement's serving pool carries outside any
    /// tenant transaction — `(current_user, search_path, app.tenant_id)` — as
    /// the next tenant to borrow it would find it. For checks and tests.
    pub async fn idle_session_state(
        &self,
        placement: &str,
    ) -> Result<(String, String, Option<String>)> {
        let p = self.placement(placement)?;
        let mut conn = p.app.acquire().await?;
        Ok(sqlx::query_as(
            "SELECT current_user::text, current_setting('search_path'), current_setting('app.tenant_id', true)",
        )
        .fetch_one(&mut *conn)
        .await?)
    }

    /// The serving role of a placement.
    pub fn serving_role(&self, placement: &str) -> Result<&str> {
        Ok(&self.placement(placement)?.app_role)
    }

    /// Each placement's serving pool: connections open and idle.
    pub(crate) fn pool_stats(&self) -> Vec<(String, u32, usize)> {
        let mut out: Vec<_> = self
            .by_name
            .values()
            .map(|p| (p.name.clone(), p.app.size(), p.app.num_idle()))
            .collect();
        out.sort();
        out
    }

    pub(crate) fn open_stats(&self) -> (usize, u32) {
        let mut pools = 0;
        let mut conns = 0;
        for p in self.by_name.values() {
            pools += 1;
            conns += p.app.size();
            let dbs = p.databases.lock().unwrap_or_else(|e| e.into_inner());
            pools += dbs.len();
            conns += dbs.iter().map(|(_, pool)| pool.size()).sum::<u32>();
        }
        (pools, conns)
    }
}
