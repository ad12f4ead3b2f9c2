//! Timestamps as stored and served: RFC 3339, UTC, millisecond precision.
//!
//! Stored as text of fixed width, so that text order is time order in every
//! backend.

use std::time::{Duration, SystemTime};

/// Now, as an RFC 3339 UTC string with milliseconds.
pub fn now() -> String {
    format(SystemTime::now())
}

/// `at` as an RFC 3339 UTC string with milliseconds.
pub fn format(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

/// Now, in whole seconds since the Unix epoch (leases, link expiries,
/// upload reservations).
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Now plus `d`, formatted.
pub fn after(d: Duration) -> String {
    format(SystemTime::now() + d)
}
