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

use tenancy::dataplane::DbRow;
use tenancy::{Migration, MigrationSet};

/// The tenant schema, oldest first, one folder per backend dialect. The
/// versions match across dialects.
pub const TENANT_MIGRATIONS: MigrationSet = MigrationSet {
    sqlite: &[Migration {
        version: 1,
        name: "init",
        sql: include_str!("../../../migrations/tenant/sqlite/0001_init.sql"),
    }],
    postgres: &[Migration {
        version: 1,
        name: "init",
        sql: include_str!("../../../migrations/tenant/postgres/0001_init.sql"),
    }],
    pool: &[Migration {
        version: 1,
        name: "init",
        sql: include_str!("../../../migrations/pool/postgres/0001_init.sql"),
    }],
};

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
