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

/// Now plus `d`, formatted.
pub fn after(d: Duration) -> String {
    format(SystemTime::now() + d)
}
