//! The edge: everything a request passes before a handler.
//!
//! request id → trace span → metrics → [`guard`] (methods, declared
//! lengths, slow bodies: [`body`]) → [`tenant`] (resolve and gate; the
//! credential looked up) → [`limits`] (the tenant's rate limit for signed-in
//! callers, the anonymous allowance per [`client`] address and tenant for
//! the others) → [`auth`] (the `Caller` extractor) → handler.

pub mod auth;
pub mod body;
pub mod client;
pub mod extract;
pub mod guard;
pub mod limits;
pub mod metrics;
pub mod request;
pub mod tenant;
