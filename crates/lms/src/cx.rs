//! The context of one call: one tenant, one caller, one request.

use tenancy::{Kernel, Tenant, TenantTx};

use crate::audit::Origin;
use crate::auth::{Principal, Role};
use crate::error::{Error, Result};

/// Everything a service needs to act for one caller in one tenant. Built by
/// the edge after the tenant is resolved and the caller authenticated.
#[derive(Clone)]
pub struct Cx {
    pub kernel: Kernel,
    pub tenant: Tenant,
    pub actor: Principal,
    /// The request: its id, client address and user agent (audited).
    pub origin: Origin,
}

impl Cx {
    /// A read transaction on this tenant.
    pub async fn read(&self) -> Result<TenantTx> {
        Ok(self.kernel.begin(&self.tenant).await?)
    }

    /// A write transaction on this tenant.
    pub async fn write(&self) -> Result<TenantTx> {
        Ok(self.kernel.begin_write(&self.tenant).await?)
    }

    /// Drops the tenant's cache entries on every node. Call it after a write
    /// that could make a cached answer stale has committed (see
    /// [`tenancy::cache`]).
    pub async fn flush_cache(&self) {
        self.kernel.cache(&self.tenant).flush().await;
    }

    /// Fails with `forbidden` unless the caller has one of `roles`.
    pub fn require(&self, roles: &[Role]) -> Result<()> {
        if roles.contains(&self.actor.role()) {
            Ok(())
        } else {
            Err(Error::Forbidden("your role may not do this"))
        }
    }

    pub fn is_staff(&self) -> bool {
        matches!(self.actor.role(), Role::Admin | Role::Instructor)
    }

    /// The caller's user id; API keys have none.
    pub fn user_id(&self) -> Result<&str> {
        self.actor
            .user_id()
            .ok_or(Error::Forbidden("an API key acts for no user; name one"))
    }

    /// Records an audit event in `tx` (so it commits with the change it describes).
    pub async fn audit(
        &self,
        tx: &mut TenantTx,
        action: &str,
        target: Option<(&str, &str)>,
        details: Option<serde_json::Value>,
    ) -> Result<()> {
        crate::audit::record(tx, &self.actor, &self.origin, action, target, details).await
    }
}
