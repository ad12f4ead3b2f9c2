//! The tenant as a value: what the registry knows of one organisation.

use serde::{Deserialize, Serialize};

use crate::id::{Slug, TenantId};

/// Where a tenant is in its lifecycle.
///
/// `provisioning → active ⇄ suspended`, `active → maintenance → active`,
/// `→ deleted → purged`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TenantStatus {
    Provisioning,
    Active,
    Suspended,
    Maintenance,
    Deleted,
    Purged,
}

impl TenantStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Provisioning => "provisioning",
            Self::Active => "active",
            Self::Suspended => "suspended",
            Self::Maintenance => "maintenance",
            Self::Deleted => "deleted",
            Self::Purged => "purged",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "provisioning" => Self::Provisioning,
            "active" => Self::Active,
            "suspended" => Self::Suspended,
            "maintenance" => Self::Maintenance,
            "deleted" => Self::Deleted,
            "purged" => Self::Purged,
            _ => return None,
        })
    }
}

/// How a tenant's data is kept apart from the others'.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Isolation {
    /// A database of its own (a SQLite file in the embedded setup).
    Database,
    /// A PostgreSQL schema and role of its own.
    Schema,
    /// Shared PostgreSQL tables under row-level security.
    Pool,
}

impl Isolation {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Database => "database",
            Self::Schema => "schema",
            Self::Pool => "pool",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "database" => Self::Database,
            "schema" => Self::Schema,
            "pool" => Self::Pool,
            _ => return None,
        })
    }
}

/// A tenant's commercial plan. Quotas and rate limits hang off it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Plan {
    Free,
    Standard,
    Enterprise,
}

impl Plan {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Free => "free",
            Self::Standard => "standard",
            Self::Enterprise => "enterprise",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "free" => Self::Free,
            "standard" => Self::Standard,
            "enterprise" => Self::Enterprise,
            _ => return None,
        })
    }
}

/// One value per plan: what a tenant gets (a quota, a rate) by its plan.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PerPlan<T> {
    pub free: T,
    pub standard: T,
    pub enterprise: T,
}

impl<T> PerPlan<T> {
    pub fn get(&self, plan: Plan) -> &T {
        match plan {
            Plan::Free => &self.free,
            Plan::Standard => &self.standard,
            Plan::Enterprise => &self.enterprise,
        }
    }

    pub fn get_mut(&mut self, plan: Plan) -> &mut T {
        match plan {
            Plan::Free => &mut self.free,
            Plan::Standard => &mut self.standard,
            Plan::Enterprise => &mut self.enterprise,
        }
    }

    /// The same for every plan, each value made from that plan's.
    pub fn map<U>(&self, f: impl Fn(&T) -> U) -> PerPlan<U> {
        PerPlan {
            free: f(&self.free),
            standard: f(&self.standard),
            enterprise: f(&self.enterprise),
        }
    }
}

/// One tenant, as the registry knows it. A plain value: it is resolved once at
/// the edge and passed along; there is no ambient "current tenant".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tenant {
    pub id: TenantId,
    pub slug: Slug,
    pub name: String,
    pub status: TenantStatus,
    pub isolation: Isolation,
    pub placement: String,
    pub plan: Plan,
    pub schema_version: i64,
    pub created_at: String,
    pub updated_at: String,
    pub deleted_at: Option<String>,
}
