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
pub mod ops;
pub mod page;
pub mod progress;
pub mod users;
mod validate;

pub use cx::Cx;
pub use error::{Error, Result};

use tenancy::Migration;

/// The tenant schema, oldest first (one folder per backend dialect).
pub const TENANT_MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "init",
    sql: include_str!("../../../migrations/tenant/sqlite/0001_init.sql"),
}];

/// Decodes a row column or fails the request with an internal error.
pub(crate) fn col<'r, T>(row: &'r sqlx::sqlite::SqliteRow, name: &str) -> Result<T>
where
    T: sqlx::Decode<'r, tenancy::Db> + sqlx::Type<tenancy::Db>,
{
    use sqlx::Row;
    Ok(row.try_get(name)?)
}
