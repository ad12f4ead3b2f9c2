//! The Campus isolation kernel.
//!
//! Everything that separates one tenant from another lives here and nothing
//! else does: this crate knows tenants, their registry, their databases and
//! their migrations, but not what a course is.
//!
//! * [`id`] — [`TenantId`] and [`Slug`], the only ways to name a tenant.
//! * [`registry`] — the control plane: which tenants exist, their status.
//! * [`dataplane`] — where SQL meets the tenant: [`TenantTx`] is the only way
//!   to run a statement against a tenant's data, and only this crate opens one.
//! * [`lifecycle`] — provisioning and the rest of the state machine.
//! * [`moves`] — a tenant moved online to another mode or placement.
//! * [`migrate`] — per-tenant (and control-plane) migrations with a ledger.
//! * [`cache`] — where the cache meets the tenant: [`TenantCache`], keys
//!   `<environment>:<uuid>:<generation>:<key>`, in process or in Redis.
//! * [`shared`] — Redis, shared by every node: cache generations and the
//!   GCRA state of limits, with a fallback when Redis fails.
//! * [`archive`] — a tenant in one file: export, import (backups, restores,
//!   copies between deployments and backends).
//! * [`storage`] — where files meet the tenant: [`TenantStorage`], keys under
//!   `tenants/<uuid>/`, every object sealed with the tenant's data key.

pub mod archive;
pub mod audit;
pub mod backup;
mod bulkhead;
pub mod cache;
pub mod clock;
pub mod dataplane;
pub mod error;
pub mod id;
pub mod kernel;
pub mod lifecycle;
pub mod migrate;
pub mod moves;
pub mod operators;
pub mod private;
pub mod registry;
pub mod shared;
pub mod storage;
pub mod tenant;

pub use cache::{CacheConfig, Lookup, TenantCache};
pub use dataplane::{Db, DbConn, TenantTx};
pub use error::{Error, Result};
pub use id::{Slug, SlugError, TenantId};
pub use kernel::{Kernel, KernelConfig};
pub use lifecycle::{ProvisionSpec, Reservation};
pub use migrate::{Migration, MigrationSet};
pub use shared::{Rate, Redis};
pub use storage::{MasterKey, MediaKind, ObjectKey, PlanQuotas, StorageConfig, TenantStorage};
pub use tenant::{Isolation, PerPlan, Plan, Tenant, TenantStatus};
