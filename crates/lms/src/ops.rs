//! The operator's service: provisioning with a first admin, the lifecycle,
//! usage and migrations across tenants. The CLI and the control-plane API
//! both call these, so they do the same things through the same code.

use std::sync::Arc;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tenancy::{Isolation, Kernel, Plan, ProvisionSpec, Slug, Tenant, TenantStatus};
use utoipa::ToSchema;

use crate::auth::{self, Role};
use crate::error::{Error, Result};
use crate::users::{self, NewUser};

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTenant {
    /// `^[a-z][a-z0-9-]{1,61}[a-z0-9]$`
    pub slug: String,
    pub name: String,
    /// `database` (default in the embedded setup), `schema` or `pool`.
    pub isolation: Option<String>,
    pub placement: Option<String>,
    /// `free`, `standard` (default) or `enterprise`.
    pub plan: Option<String>,
    pub admin: NewAdmin,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewAdmin {
    pub email: String,
    pub name: String,
    /// Generated (and returned once) when absent.
    pub password: Option<String>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantPatch {
    pub name: Option<String>,
    pub plan: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Usage {
    pub users: i64,
    pub courses: i64,
    pub stored_bytes: i64,
}

/// A tenant as operators see it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TenantView {
    pub id: String,
    pub slug: String,
    pub name: String,
    /// `provisioning`, `active`, `suspended`, `maintenance`, `deleted` or `purged`.
    pub status: String,
    pub isolation: String,
    pub placement: String,
    pub plan: String,
    pub schema_version: i64,
    /// Whether the tenant's schema is behind this build (it is not served until migrated).
    pub migration_pending: bool,
    pub created_at: String,
    pub updated_at: String,
    pub deleted_at: Option<String>,
    /// Absent when the tenant's data cannot be read (purged, or not yet built).
    pub usage: Option<Usage>,
    /// The rate limits its plan gives it on this server (the control-plane
    /// API shows them; change them by changing the plan).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
}

/// A plan's rate limits: requests per second sustained and burst, for the
/// whole tenant and for each of its users (or API keys).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Limits {
    pub requests_per_second: u32,
    pub burst: u32,
    pub user_requests_per_second: u32,
    pub user_burst: u32,
}

/// A freshly provisioned tenant.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Provisioned {
    #[serde(flatten)]
    pub tenant: TenantView,
    /// The first admin's generated password, when none was given. Shown once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_password: Option<String>,
}

fn parse_slug(s: &str) -> Result<Slug> {
    Slug::parse(s).map_err(|e| Error::Validation(e.to_string()))
}

/// Maps the kernel's lifecycle errors to domain errors.
fn lifecycle(e: tenancy::Error) -> Error {
    use tenancy::Error as K;
    match e {
        K::NotFound => Error::NotFound,
        K::SlugTaken => Error::Conflict("a tenant with this slug already exists".into()),
        K::InvalidTransition(..) | K::Busy(_) => Error::Conflict(e.to_string()),
        K::InvalidSlug(_) | K::UnsupportedIsolation(_) | K::UnknownPlacement(_) | K::Invalid(_) => {
            Error::Validation(e.to_string())
        }
        other => Error::Kernel(other),
    }
}

pub(crate) fn parse_plan(s: &str) -> Result<Plan> {
    Plan::parse(s)
        .ok_or_else(|| Error::Validation("plan must be free, standard or enterprise".into()))
}

impl NewTenant {
    fn spec(&self) -> Result<ProvisionSpec> {
        let isolation = self.isolation.as_deref().map(parse_isolation).transpose()?;
        Ok(ProvisionSpec {
            slug: parse_slug(&self.slug)?,
            name: tenancy::lifecycle::validate_name(&self.name).map_err(lifecycle)?,
            isolation,
            placement: match &self.placement {
                // A placement is a name from the configuration: anything
                // longer is no such name (and is not echoed back whole).
                Some(p) if p.len() > 64 => {
                    return Err(Error::Validation(
                        "placement must be a configured placement's name".into(),
                    ));
                }
                other => other.clone(),
            },
            plan: self
                .plan
                .as_deref()
                .map(parse_plan)
                .transpose()?
                .unwrap_or(Plan::Standard),
        })
    }

    /// What identifies the request behind an idempotency key. The password is
    /// left out: the fingerprint is stored, and a fast hash of a password
    /// would be a password at rest.
    fn fingerprint(&self) -> String {
        let mut same = self.clone();
        same.admin.password = None;
        let json = serde_json::to_vec(&same).unwrap_or_default();
        Sha256::digest(&json)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// Provisions a tenant and its first admin. Safe to run again after a crash
/// at any point: it finishes what an interrupted run started.
#[tracing::instrument(skip_all, fields(tenant = %req.slug))]
pub async fn create_tenant(kernel: &Kernel, req: NewTenant) -> Result<Provisioned> {
    create_tenant_with(kernel, crate::hashing::global(), req).await
}

/// [`create_tenant`], hashing the first admin's password on `hasher`.
pub async fn create_tenant_with(
    kernel: &Kernel,
    hasher: &crate::hashing::Hasher,
    req: NewTenant,
) -> Result<Provisioned> {
    // Everything the client sent is checked before anything changes.
    let spec = req.spec()?;
    let generated = req.admin.password.is_none().then(auth::generate_password);
    let admin = NewUser {
        name: req.admin.name.clone(),
        email: req.admin.email.clone(),
        role: Role::Admin,
        password: req.admin.password.clone().or_else(|| generated.clone()),
    };
    crate::validate::text("admin name", &admin.name, 200)?;
    crate::validate::email(&admin.email)?;
    if let Some(p) = &admin.password {
        crate::validate::password(p)?;
    }
    // Hashed before any transaction is open; provisionings share one turn.
    let admin = users::check(admin, hasher, uuid::Uuid::nil().into()).await?;

    let reservation = kernel.reserve(&spec).await.map_err(lifecycle)?;
    if reservation.resumed {
        tracing::info!("resuming an interrupted provisioning");
    }
    kernel.build(&reservation).await?;
    let mut tx = kernel.begin_write(&reservation.tenant).await?;
    let user = users::upsert_admin(&mut tx, admin).await?;
    crate::audit::record_operator(&mut tx, "tenant.provisioned", Some(("user", &user.id))).await?;
    tx.commit().await?;
    let tenant = kernel.activate(&reservation).await.map_err(lifecycle)?;
    tracing::info!(tenant_id = %tenant.id, "tenant provisioned");
    Ok(Provisioned {
        tenant: view(kernel, tenant).await,
        admin_password: generated,
    })
}

/// [`create_tenant`] behind an idempotency key: a retry with the same key and
/// the same request answers the tenant the first call made.
pub async fn create_tenant_idempotent(
    kernel: &Kernel,
    hasher: &crate::hashing::Hasher,
    key: Option<&str>,
    req: NewTenant,
) -> Result<Provisioned> {
    let Some(key) = key else {
        return create_tenant_with(kernel, hasher, req).await;
    };
    if key.is_empty() || key.len() > 200 || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::Validation(
            "Idempotency-Key must be 1 to 200 visible ASCII characters".into(),
        ));
    }
    let fingerprint = req.fingerprint();
    if let Some((seen, id)) = kernel.registry().idempotency(key).await? {
        if seen != fingerprint {
            return Err(Error::Conflict(
                "this Idempotency-Key was used with another request".into(),
            ));
        }
        let tenant = kernel.registry().by_id(id).await?.ok_or(Error::NotFound)?;
        return Ok(Provisioned {
            tenant: view(kernel, tenant).await,
            admin_password: None,
        });
    }
    let done = create_tenant_with(kernel, hasher, req).await?;
    let id = tenancy::TenantId::parse(&done.tenant.id)
        .ok_or_else(|| Error::Internal("tenant id".into()))?;
    kernel
        .registry()
        .remember_idempotency(key, &fingerprint, id)
        .await?;
    Ok(done)
}

/// A tenant's users, courses and stored bytes, read from its own
/// database; `None` (logged) when it cannot be read.
pub async fn usage(kernel: &Kernel, t: &Tenant) -> Option<Usage> {
    if matches!(t.status, TenantStatus::Purged | TenantStatus::Provisioning)
        || t.schema_version == 0
    {
        return None;
    }
    let count = async {
        let mut tx = kernel.begin(t).await?;
        let users: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users")
            .fetch_one(tx.conn())
            .await?;
        let courses: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM courses")
            .fetch_one(tx.conn())
            .await?;
        drop(tx);
        Ok::<_, Error>(Usage {
            users,
            courses,
            stored_bytes: kernel.stored_bytes(t).await?,
        })
    };
    match count.await {
        Ok(u) => Some(u),
        Err(e) => {
            tracing::warn!(tenant = %t.slug, error = %e, "usage unavailable");
            None
        }
    }
}

/// The operator's view of a tenant, with its usage.
pub async fn view(kernel: &Kernel, t: Tenant) -> TenantView {
    let usage = usage(kernel, &t).await;
    TenantView {
        id: t.id.to_string(),
        slug: t.slug.to_string(),
        name: t.name,
        status: t.status.as_str().to_owned(),
        isolation: t.isolation.as_str().to_owned(),
        placement: t.placement,
        plan: t.plan.as_str().to_owned(),
        schema_version: t.schema_version,
        migration_pending: t.schema_version < kernel.latest_version(),
        created_at: t.created_at,
        updated_at: t.updated_at,
        deleted_at: t.deleted_at,
        usage,
        limits: None,
    }
}

pub async fn list_tenants(kernel: &Kernel) -> Result<Vec<TenantView>> {
    let tenants = kernel.list().await?;
    let views = futures_util::stream::iter(tenants)
        .map(|t| view(kernel, t))
        .buffered(8)
        .collect()
        .await;
    Ok(views)
}

pub async fn show_tenant(kernel: &Kernel, slug: &str) -> Result<TenantView> {
    let t = kernel
        .find(&parse_slug(slug).map_err(|_| Error::NotFound)?)
        .await
        .map_err(lifecycle)?;
    Ok(view(kernel, t).await)
}

pub async fn update_tenant(kernel: &Kernel, slug: &str, patch: TenantPatch) -> Result<TenantView> {
    let slug = parse_slug(slug).map_err(|_| Error::NotFound)?;
    let plan = patch.plan.as_deref().map(parse_plan).transpose()?;
    let t = kernel
        .update(&slug, patch.name.as_deref(), plan)
        .await
        .map_err(lifecycle)?;
    Ok(view(kernel, t).await)
}

pub async fn suspend_tenant(kernel: &Kernel, slug: &str) -> Result<TenantView> {
    let slug = parse_slug(slug).map_err(|_| Error::NotFound)?;
    let t = kernel.suspend(&slug).await.map_err(lifecycle)?;
    Ok(view(kernel, t).await)
}

pub async fn resume_tenant(kernel: &Kernel, slug: &str) -> Result<TenantView> {
    let slug = parse_slug(slug).map_err(|_| Error::NotFound)?;
    let t = kernel.resume(&slug).await.map_err(lifecycle)?;
    Ok(view(kernel, t).await)
}

/// A deleted tenant and, when purged, what the purge checked is gone.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Deleted {
    #[serde(flatten)]
    pub tenant: TenantView,
    /// Present after a purge: every place the tenant's data could be, and
    /// whether it is gone. The purge failed if any is not.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub purge: Option<tenancy::lifecycle::PurgeReport>,
}

/// Deletes a tenant; with `purge`, destroys its data and then checks that
/// nothing remains ([`Deleted::purge`]), failing loudly if anything does.
pub async fn delete_tenant(kernel: &Kernel, slug: &str, purge: bool) -> Result<Deleted> {
    let slug = parse_slug(slug).map_err(|_| Error::NotFound)?;
    let t = kernel.delete(&slug, purge).await.map_err(lifecycle)?;
    let report = match purge {
        true => Some(kernel.verify_purged(&t).await?),
        false => None,
    };
    if let Some(r) = &report {
        if r.clean() {
            tracing::info!(tenant = %t.id, checks = r.checks.len(), "tenant purged; nothing of it remains");
        } else {
            tracing::error!(tenant = %t.id, remaining = ?r.remaining(), "tenant purged, but some of it remains");
        }
    }
    Ok(Deleted {
        tenant: view(kernel, t).await,
        purge: report,
    })
}

// ---------------------------------------------------------------------------
// Export and import

/// The tenant `slug`, if it can be exported now (checked before an
/// archive's first byte goes out).
pub async fn exportable(kernel: &Kernel, slug: &str) -> Result<Tenant> {
    let slug = parse_slug(slug).map_err(|_| Error::NotFound)?;
    let t = kernel.find(&slug).await.map_err(lifecycle)?;
    kernel.exportable(&t).map_err(lifecycle)?;
    Ok(t)
}

/// Writes the tenant `slug` as an archive into `out` (see `tenancy::archive`).
pub async fn export_tenant<W: tokio::io::AsyncWrite + Unpin + Send>(
    kernel: &Kernel,
    slug: &str,
    key: &tenancy::archive::ArchiveKey,
    out: W,
    progress: &tenancy::archive::Progress,
) -> Result<tenancy::archive::ExportSummary> {
    let slug = parse_slug(slug).map_err(|_| Error::NotFound)?;
    let t = kernel.find(&slug).await.map_err(lifecycle)?;
    kernel
        .export(&t, crate::TENANT_TABLES, key, out, progress)
        .await
        .map_err(lifecycle)
}

/// Where and as what an archive is imported.
#[derive(Debug, Default, Clone, Deserialize, ToSchema, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ImportRequest {
    /// A copy under this slug (a new tenant); absent: a restore under the
    /// archive's own slug and id.
    pub slug: Option<String>,
    /// `database`, `schema` or `pool`; absent: the archive's when this
    /// deployment offers it, else the default.
    pub isolation: Option<String>,
    pub placement: Option<String>,
    /// `free`, `standard` or `enterprise`; absent: the archive's.
    pub plan: Option<String>,
}

/// What an import made.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Imported {
    #[serde(flatten)]
    pub tenant: TenantView,
    pub archive_id: String,
    /// The archived tenant's id and slug.
    pub source_id: String,
    pub source_slug: String,
    /// `true`: restored under its own id; `false`: a copy.
    pub restored: bool,
    /// An interrupted import of it was cleared first.
    pub resumed: bool,
    pub rows: u64,
    pub files: u64,
    pub file_bytes: u64,
}

fn parse_isolation(s: &str) -> Result<Isolation> {
    Isolation::parse(s)
        .ok_or_else(|| Error::Validation("isolation must be database, schema or pool".into()))
}

/// Imports an archive read from `input`: all or nothing.
pub async fn import_tenant<R: tokio::io::AsyncRead + Unpin + Send>(
    kernel: &Kernel,
    input: R,
    req: ImportRequest,
    key: &tenancy::archive::ArchiveKey,
    progress: &tenancy::archive::Progress,
) -> Result<Imported> {
    let opts = tenancy::archive::ImportOptions {
        tables: crate::TENANT_TABLES,
        key,
        slug: req.slug.as_deref().map(parse_slug).transpose()?,
        isolation: req.isolation.as_deref().map(parse_isolation).transpose()?,
        placement: req.placement.clone(),
        plan: req.plan.as_deref().map(parse_plan).transpose()?,
    };
    let done = kernel
        .import(input, opts, progress)
        .await
        .map_err(lifecycle)?;
    Ok(Imported {
        tenant: view(kernel, done.tenant).await,
        archive_id: done.archive_id,
        source_id: done.source_id,
        source_slug: done.source_slug,
        restored: done.restored,
        resumed: done.resumed,
        rows: done.rows,
        files: done.files,
        file_bytes: done.file_bytes,
    })
}

// ---------------------------------------------------------------------------
// Migrations across tenants

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TenantMigration {
    pub slug: String,
    pub id: String,
    pub status: String,
    pub schema_version: i64,
    pub pending: bool,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct MigrationStatus {
    /// The schema version this build serves.
    pub latest: i64,
    pub tenants: Vec<TenantMigration>,
}

pub async fn migration_status(kernel: &Kernel) -> Result<MigrationStatus> {
    let latest = kernel.latest_version();
    let tenants = kernel
        .list()
        .await?
        .into_iter()
        .map(|t| TenantMigration {
            slug: t.slug.to_string(),
            id: t.id.to_string(),
            status: t.status.as_str().to_owned(),
            schema_version: t.schema_version,
            pending: t.schema_version < latest,
        })
        .collect();
    Ok(MigrationStatus { latest, tenants })
}

/// What one `migrate` run did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct MigrateSummary {
    pub migrated: Vec<String>,
    pub up_to_date: usize,
    pub failed: Vec<(String, String)>,
}

/// The tenants `migrate` works on: all with a database (not provisioning, not purged).
pub async fn migratable(kernel: &Kernel, only: Option<&str>) -> Result<Vec<Tenant>> {
    let all = kernel.list().await?;
    let mut out: Vec<Tenant> = all
        .into_iter()
        .filter(|t| !matches!(t.status, TenantStatus::Provisioning | TenantStatus::Purged))
        .collect();
    if let Some(slug) = only {
        out.retain(|t| t.slug.as_str() == slug);
        if out.is_empty() {
            return Err(Error::NotFound);
        }
    }
    Ok(out)
}

/// Called after each tenant's migration: `Ok(true)` if it moved, `Ok(false)` if
/// it was already up to date.
pub type OnMigrated = Arc<dyn Fn(&Tenant, &Result<bool>) + Send + Sync>;

/// Migrates `tenants` with at most `concurrency` at once. One tenant's
/// failure does not stop the others; `on_done` is called after each.
pub async fn migrate_tenants(
    kernel: &Kernel,
    tenants: Vec<Tenant>,
    concurrency: usize,
    on_done: OnMigrated,
) -> MigrateSummary {
    let results: Vec<(Tenant, Result<bool>)> = futures_util::stream::iter(tenants)
        .map(|t| {
            let on_done = on_done.clone();
            async move {
                let r = kernel
                    .migrate_tenant(&t)
                    .await
                    .map(|a| a.from != a.to)
                    .map_err(Error::from);
                on_done(&t, &r);
                (t, r)
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let mut summary = MigrateSummary::default();
    for (t, r) in results {
        match r {
            Ok(true) => summary.migrated.push(t.slug.to_string()),
            Ok(false) => summary.up_to_date += 1,
            Err(e) => summary.failed.push((t.slug.to_string(), e.to_string())),
        }
    }
    summary.failed.sort();
    summary
}

// ---------------------------------------------------------------------------
// Moves

/// Where to move a tenant: another isolation mode, another placement, or both.
#[derive(Debug, Default, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MoveRequest {
    /// `database`, `schema` or `pool`; absent: the current one.
    pub isolation: Option<String>,
    /// A configured placement; absent: the current one.
    pub placement: Option<String>,
}

/// What a move did.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Moved {
    pub slug: String,
    pub tenant_id: String,
    pub from_isolation: String,
    pub from_placement: String,
    pub to_isolation: String,
    pub to_placement: String,
    pub rows: u64,
    /// How long writes were refused (503 `tenant_maintenance`), in ms.
    pub freeze_ms: u64,
    pub total_ms: u64,
    /// How many times rows were copied (more than once: a write slipped in).
    pub copies: u32,
    /// An interrupted move was finished or rolled back first.
    pub resumed: bool,
}

/// Moves a tenant online (see `tenancy::moves`); `freeze_wait` is how long
/// every node takes to see a registry change.
pub async fn move_tenant(
    kernel: &Kernel,
    slug: &str,
    req: MoveRequest,
    freeze_wait: std::time::Duration,
    progress: &tenancy::archive::Progress,
) -> Result<Moved> {
    let slug = parse_slug(slug).map_err(|_| Error::NotFound)?;
    if req.isolation.is_none() && req.placement.is_none() {
        return Err(Error::Validation(
            "say where to: an isolation mode, a placement, or both".into(),
        ));
    }
    let to = tenancy::moves::MoveTo {
        isolation: req.isolation.as_deref().map(parse_isolation).transpose()?,
        placement: req.placement.clone(),
    };
    let m = kernel
        .move_tenant(&slug, crate::TENANT_TABLES, &to, freeze_wait, progress)
        .await
        .map_err(lifecycle)?;
    Ok(Moved {
        slug: m.slug,
        tenant_id: m.tenant_id,
        from_isolation: m.from_isolation,
        from_placement: m.from_placement,
        to_isolation: m.to_isolation,
        to_placement: m.to_placement,
        rows: m.rows,
        freeze_ms: m.freeze_ms,
        total_ms: m.total_ms,
        copies: m.copies,
        resumed: m.resumed,
    })
}
