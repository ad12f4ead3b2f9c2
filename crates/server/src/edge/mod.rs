//! The edge: everything a request passes before a handler.
//!
//! request id → trace span → metrics → [`guard`] (methods, declared
//! lengths, slow bodies: [`body`]) → [`tenant`] (resolve and gate) →
//! [`limits`] (the tenant's rate limit) → [`auth`] (the `Caller` extractor)
//! → handler.

pub mod auth;
pub mod body;
pub mod extract;
pub mod guard;
pub mod limits;
pub mod metrics;
pub mod request;
pub mod tenant;
