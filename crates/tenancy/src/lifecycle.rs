//! The tenant lifecycle, a crash-safe state machine:
//! `provisioning → active ⇄ suspended`, `active → maintenance → active`,
//! `→ deleted → purged`.
//!
//! Provisioning is split into steps so that the caller (the operator service)
//! can seed the new tenant in between, and so that a run killed after any step
//! is finished by running it again:
//!
//! 1. [`Kernel::reserve`] — the registry row, `provisioning` (never served);
//! 2. [`Kernel::build`] — the tenant's database, created and migrated;
//! 3. the caller seeds it through [`Kernel::begin_write`];
//! 4. [`Kernel::activate`] — `active`: now it is served.

use crate::error::{Error, Result};
use crate::id::{Slug, TenantId};
use crate::kernel::Kernel;
use crate::registry::Change;
use crate::tenant::{Isolation, Plan, Tenant, TenantStatus};

use std::time::Duration;

/// How many times a build that lost a race with concurrent work
/// ([`Error::Conflict`]) is run again before its error is returned.
const BUILD_RETRIES: u32 = 3;

/// What to provision.
#[derive(Debug, Clone)]
pub struct ProvisionSpec {
    pub slug: Slug,
    pub name: String,
    /// `None`: the data plane's default (`database` embedded, `schema` on PostgreSQL).
    pub isolation: Option<Isolation>,
    pub placement: Option<String>,
    pub plan: Plan,
}

/// A tenant being provisioned (its registry row exists, status `provisioning`).
#[derive(Debug, Clone)]
pub struct Reservation {
    pub tenant: Tenant,
    /// True when an earlier, interrupted run had already reserved it.
    pub resumed: bool,
}

/// What a purge checked is gone ([`Kernel::verify_purged`]).
#[derive(Debug, Clone, serde::Serialize)]
pub struct PurgeReport {
    pub checks: Vec<PurgeCheck>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct PurgeCheck {
    /// What was looked for.
    pub what: String,
    pub gone: bool,
}

impl PurgeReport {
    /// Whether everything checked is gone.
    pub fn clean(&self) -> bool {
        self.checks.iter().all(|c| c.gone)
    }

    /// What is left, if anything.
    pub fn remaining(&self) -> Vec<&str> {
        self.checks
            .iter()
            .filter(|c| !c.gone)
            .map(|c| c.what.as_str())
            .collect()
    }
}

/// A tenant's display name: 1 to 200 characters after trimming.
pub fn validate_name(name: &str) -> Result<String> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 200 || name.chars().any(char::is_control) {
        return Err(Error::Invalid(
            "name must be 1 to 200 characters, without control characters".into(),
        ));
    }
    Ok(name.to_owned())
}

impl Kernel {
    /// Step 1: reserve the slug. Resumes an interrupted provisioning of the
    /// same slug; a live tenant with it → [`Error::SlugTaken`].
    pub async fn reserve(&self, spec: &ProvisionSpec) -> Result<Reservation> {
        let name = validate_name(&spec.name)?;
        let isolation = spec.isolation.unwrap_or(self.default_isolation());
        let placement = self
            .inner()
            .data
            .check(isolation, spec.placement.as_deref())?;
        let registry = &self.inner().registry;
        for _ in 0..2 {
            if let Some(t) = registry.by_slug(&spec.slug).await? {
                if t.status != TenantStatus::Provisioning {
                    return Err(Error::SlugTaken);
                }
                registry
                    .update(
                        t.id,
                        Change::Details {
                            name: Some(&name),
                            plan: Some(spec.plan),
                        },
                    )
                    .await?;
                let tenant = registry.by_id(t.id).await?.ok_or(Error::NotFound)?;
                return Ok(Reservation {
                    tenant,
                    resumed: true,
                });
            }
            let now = crate::clock::now();
            let tenant = Tenant {
                id: TenantId::new(),
                slug: spec.slug.clone(),
                name: name.clone(),
                status: TenantStatus::Provisioning,
                isolation,
                placement: placement.clone(),
                plan: spec.plan,
                schema_version: 0,
                created_at: now.clone(),
                updated_at: now,
                deleted_at: None,
            };
            match registry.insert(&tenant).await {
                Ok(()) => {
                    return Ok(Reservation {
                        tenant,
                        resumed: false,
                    });
                }
                // Someone reserved it between our read and our insert: look again.
                Err(Error::SlugTaken) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Error::SlugTaken)
    }

    /// Step 2: create and migrate the tenant's database, and make its data
    /// key (so that no request ever has to). Idempotent.
    pub async fn build(&self, r: &Reservation) -> Result<()> {
        let inner = self.inner();
        // A build is idempotent, each of its transactions whole: one that lost
        // a race with concurrent DDL (other tenants' roles and grants made at
        // the same moment) rolled back whole and is simply run again.
        let mut attempt = 0;
        let applied = loop {
            match inner.data.build(&r.tenant, &inner.tenant_migrations).await {
                Err(Error::Conflict(why)) if attempt < BUILD_RETRIES => {
                    attempt += 1;
                    tracing::warn!(tenant = %r.tenant.id, attempt, reason = %why,
                        "tenant build conflicted with concurrent work; retrying");
                    tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
                }
                built => break built?,
            }
        };
        inner
            .storage
            .ensure_data_key(&inner.registry, r.tenant.id)
            .await?;
        if r.tenant.schema_version != applied.to {
            inner
                .registry
                .update(r.tenant.id, Change::SchemaVersion(applied.to))
                .await?;
            self.refresh().await?;
        }
        Ok(())
    }

    /// Step 4: `provisioning → active`. Idempotent.
    pub async fn activate(&self, r: &Reservation) -> Result<Tenant> {
        let registry = &self.inner().registry;
        let t = registry.by_id(r.tenant.id).await?.ok_or(Error::NotFound)?;
        match t.status {
            TenantStatus::Active => return Ok(t),
            TenantStatus::Provisioning => {}
            other => return Err(Error::InvalidTransition(other.as_str(), "activated")),
        }
        if !self.inner().data.exists(&t).await? || t.schema_version != self.latest_version() {
            return Err(Error::InvalidTransition("incomplete", "activated"));
        }
        self.set_status(&t, TenantStatus::Active).await
    }

    pub(crate) async fn set_status(&self, t: &Tenant, status: TenantStatus) -> Result<Tenant> {
        let registry = &self.inner().registry;
        if t.status != status {
            registry.update(t.id, Change::Status(status)).await?;
            self.refresh().await?;
        }
        registry.by_id(t.id).await?.ok_or(Error::NotFound)
    }

    /// `active → suspended` (idempotent).
    pub async fn suspend(&self, slug: &Slug) -> Result<Tenant> {
        let t = self.find(slug).await?;
        match t.status {
            TenantStatus::Active | TenantStatus::Suspended => {
                self.set_status(&t, TenantStatus::Suspended).await
            }
            other => Err(Error::InvalidTransition(other.as_str(), "suspended")),
        }
    }

    /// `suspended → active` (idempotent).
    pub async fn resume(&self, slug: &Slug) -> Result<Tenant> {
        let t = self.find(slug).await?;
        match t.status {
            TenantStatus::Active | TenantStatus::Suspended => {
                self.set_status(&t, TenantStatus::Active).await
            }
            other => Err(Error::InvalidTransition(other.as_str(), "resumed")),
        }
    }

    /// `active → maintenance`: reads go on, writes answer 503 until
    /// [`end_maintenance`](Self::end_maintenance). Used while a tenant is
    /// moved, restored or migrated.
    pub async fn begin_maintenance(&self, slug: &Slug) -> Result<Tenant> {
        let t = self.find(slug).await?;
        match t.status {
            TenantStatus::Active | TenantStatus::Maintenance => {
                self.set_status(&t, TenantStatus::Maintenance).await
            }
            other => Err(Error::InvalidTransition(
                other.as_str(),
                "put in maintenance",
            )),
        }
    }

    /// `maintenance → active` (idempotent).
    pub async fn end_maintenance(&self, slug: &Slug) -> Result<Tenant> {
        let t = self.find(slug).await?;
        match t.status {
            TenantStatus::Active | TenantStatus::Maintenance => {
                self.set_status(&t, TenantStatus::Active).await
            }
            other => Err(Error::InvalidTransition(
                other.as_str(),
                "taken out of maintenance",
            )),
        }
    }

    /// Marks the tenant deleted: it is no longer served, its data is kept.
    /// With `purge`, also destroys its data; a deleted tenant may be purged later.
    pub async fn delete(&self, slug: &Slug, purge: bool) -> Result<Tenant> {
        let t = self.find(slug).await?;
        let t = self.set_status(&t, TenantStatus::Deleted).await?;
        if !purge {
            return Ok(t);
        }
        // Caught mid-move: both copies go.
        self.drop_move(&t).await?;
        self.inner().data.destroy(&t).await?;
        // Its files, then its data key: whatever copy of a file survives
        // (a backup, a lagging replica) is unreadable without it.
        self.inner()
            .storage
            .purge(&self.inner().registry, t.id)
            .await?;
        self.inner().cache.purge(t.id).await;
        self.set_status(&t, TenantStatus::Purged).await
    }

    /// Checks that nothing of a purged tenant remains: its database (schema,
    /// role, database or shared rows — in every mode's place on its
    /// placement), its files under its prefix, its data key, its quota
    /// reservations, its cache entries (Redis keys, or this process's).
    pub async fn verify_purged(&self, t: &Tenant) -> Result<PurgeReport> {
        let inner = self.inner();
        let mut checks: Vec<PurgeCheck> = inner
            .data
            .remains(t)
            .await?
            .into_iter()
            .map(|(what, found)| PurgeCheck { what, gone: !found })
            .collect();
        let prefix = crate::storage::tenant_prefix(t.id);
        let listed = {
            use futures_util::StreamExt;
            let path = object_store::path::Path::from(prefix.trim_end_matches('/'));
            let mut list = inner.storage.store.list(Some(&path));
            match list.next().await {
                None => false,
                Some(Ok(_)) => true,
                Some(Err(e)) => return Err(e.into()),
            }
        };
        checks.push(PurgeCheck {
            what: format!("objects under {prefix} in the store"),
            gone: !listed,
        });
        checks.push(PurgeCheck {
            what: "its data key (wrapped, in the registry)".into(),
            gone: !crate::storage::has_key(&inner.registry, t.id).await?,
        });
        checks.push(PurgeCheck {
            what: "its upload reservations (in the registry)".into(),
            gone: crate::storage::reservations(&inner.registry, t.id).await? == 0,
        });
        let (what, found) = inner.cache.remains(t.id).await?;
        checks.push(PurgeCheck { what, gone: !found });
        Ok(PurgeReport { checks })
    }

    /// Changes a tenant's name and/or plan.
    pub async fn update(
        &self,
        slug: &Slug,
        name: Option<&str>,
        plan: Option<Plan>,
    ) -> Result<Tenant> {
        let name = name.map(validate_name).transpose()?;
        let t = self.find(slug).await?;
        if matches!(t.status, TenantStatus::Deleted | TenantStatus::Purged) {
            return Err(Error::InvalidTransition(t.status.as_str(), "changed"));
        }
        self.inner()
            .registry
            .update(
                t.id,
                Change::Details {
                    name: name.as_deref(),
                    plan,
                },
            )
            .await?;
        self.refresh().await?;
        self.inner()
            .registry
            .by_id(t.id)
            .await?
            .ok_or(Error::NotFound)
    }
}
