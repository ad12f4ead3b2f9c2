//! The registry: the control plane's record of every tenant.
//!
//! This is the one cross-tenant store, and it holds no tenant data: names,
//! statuses, placements, versions. Every change bumps a generation counter,
//! which servers poll to drop what they cached about the changed tenants
//! (so a change made by the CLI is seen by a running server within a second).

use std::path::Path;
use std::time::Duration;

use sqlx::Row;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};

use crate::error::{Error, Result};
use crate::id::{Slug, TenantId};
use crate::migrate::{self, Migration};
use crate::tenant::{Isolation, Plan, Tenant, TenantStatus};

type Pool = sqlx::Pool<sqlx::Sqlite>;

pub const CONTROL_MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "registry",
    sql: include_str!("../../../migrations/control/sqlite/0001_registry.sql"),
}];

const COLUMNS: &str = "id, slug, name, status, isolation, placement, plan, schema_version, created_at, updated_at, deleted_at";

pub struct Registry {
    pool: Pool,
}

fn decode(row: &SqliteRow) -> Result<Tenant> {
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
    /// Opens (creating if needed) the registry file and migrates it.
    pub async fn open(path: &Path) -> Result<Self> {
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await?;
        let mut conn = pool.acquire().await?;
        migrate::apply(&mut conn, CONTROL_MIGRATIONS).await?;
        drop(conn);
        Ok(Self { pool })
    }

    /// The live (not purged) tenant with this slug, whatever its status.
    pub async fn by_slug(&self, slug: &Slug) -> Result<Option<Tenant>> {
        let sql = format!("SELECT {COLUMNS} FROM tenants WHERE slug = $1 AND status <> 'purged'");
        let row = sqlx::query(&sql)
            .bind(slug.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(decode).transpose()
    }

    pub async fn by_id(&self, id: TenantId) -> Result<Option<Tenant>> {
        let sql = format!("SELECT {COLUMNS} FROM tenants WHERE id = $1");
        let row = sqlx::query(&sql)
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(decode).transpose()
    }

    /// Every tenant that is not purged, oldest first.
    pub async fn list(&self) -> Result<Vec<Tenant>> {
        let sql = format!("SELECT {COLUMNS} FROM tenants WHERE status <> 'purged' ORDER BY id");
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
        rows.iter().map(decode).collect()
    }

    /// Inserts a new tenant row; a live tenant with the same slug → [`Error::SlugTaken`].
    pub(crate) async fn insert(&self, t: &Tenant) -> Result<()> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let g = bump(&mut tx).await?;
        let res = sqlx::query(
            "INSERT INTO tenants (id, slug, name, status, isolation, placement, plan, schema_version, change_gen, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10)",
        )
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

    /// Applies `change` to one tenant's row, bumping the generation.
    pub(crate) async fn update(&self, id: TenantId, change: Change<'_>) -> Result<()> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let g = bump(&mut tx).await?;
        let now = crate::clock::now();
        let id = id.to_string();
        let q = match change {
            Change::Status(status) => sqlx::query(
                "UPDATE tenants SET change_gen = $2, updated_at = $3, status = $4,
                    deleted_at = CASE WHEN $4 IN ('deleted', 'purged') THEN COALESCE(deleted_at, $3) ELSE NULL END
                 WHERE id = $1",
            )
            .bind(id)
            .bind(g)
            .bind(now)
            .bind(status.as_str()),
            Change::Details { name, plan } => sqlx::query(
                "UPDATE tenants SET change_gen = $2, updated_at = $3,
                    name = COALESCE($4, name), plan = COALESCE($5, plan)
                 WHERE id = $1",
            )
            .bind(id)
            .bind(g)
            .bind(now)
            .bind(name)
            .bind(plan.map(Plan::as_str)),
            Change::SchemaVersion(v) => sqlx::query(
                "UPDATE tenants SET change_gen = $2, updated_at = $3, schema_version = $4 WHERE id = $1",
            )
            .bind(id)
            .bind(g)
            .bind(now)
            .bind(v),
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
        Ok(
            sqlx::query_scalar("SELECT value FROM registry_generation WHERE id = 1")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// The tenants changed after generation `since`.
    pub async fn changed_since(&self, since: i64) -> Result<Vec<(TenantId, String)>> {
        let rows = sqlx::query("SELECT id, slug FROM tenants WHERE change_gen > $1")
            .bind(since)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let id: String = r.try_get("id")?;
                let id = TenantId::parse(&id).ok_or_else(|| Error::Invalid("tenant id".into()))?;
                Ok((id, r.try_get("slug")?))
            })
            .collect()
    }

    /// The tenant recorded under an idempotency key, with the fingerprint of
    /// the request that first used it.
    pub async fn idempotency(&self, key: &str) -> Result<Option<(String, TenantId)>> {
        let row = sqlx::query("SELECT fingerprint, tenant_id FROM idempotency_keys WHERE key = $1")
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
        sqlx::query(
            "INSERT INTO idempotency_keys (key, fingerprint, tenant_id, created_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (key) DO NOTHING",
        )
        .bind(key)
        .bind(fingerprint)
        .bind(id.to_string())
        .bind(crate::clock::now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Whether the registry answers.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
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

async fn bump(conn: &mut sqlx::SqliteConnection) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "UPDATE registry_generation SET value = value + 1 WHERE id = 1 RETURNING value",
    )
    .fetch_one(conn)
    .await?)
}
