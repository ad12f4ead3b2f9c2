//! The two names of a tenant: its internal [`TenantId`] and its public [`Slug`].
//!
//! Parse, don't validate: a `Slug` exists only if its text matched the rule
//! of the API contract, and a `TenantId` is a UUID. Everything that builds a
//! schema name, a file path or a cache key builds it from a `TenantId`, never
//! from a slug or anything else a client sent.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The internal, immutable id of a tenant (UUIDv7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TenantId(Uuid);

impl TenantId {
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }

    /// The 32 lowercase hex digits of the id, with no separators: safe in
    /// file names, SQL identifiers and key prefixes.
    pub fn simple(&self) -> String {
        self.0.simple().to_string()
    }

    pub fn parse(s: &str) -> Option<Self> {
        Uuid::parse_str(s).ok().map(Self)
    }
}

impl Default for TenantId {
    fn default() -> Self {
        Self::new()
    }
}

impl From<Uuid> for TenantId {
    fn from(u: Uuid) -> Self {
        Self(u)
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// A tenant's public name: `^[a-z][a-z0-9-]{1,61}[a-z0-9]$`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Slug(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "a tenant slug is 3 to 63 characters of a-z, 0-9 and '-', starting with a letter and not ending with '-'"
)]
pub struct SlugError;

impl Slug {
    pub fn parse(s: &str) -> Result<Self, SlugError> {
        let b = s.as_bytes();
        let ok = (3..=63).contains(&b.len())
            && b[0].is_ascii_lowercase()
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
            && b[b.len() - 1] != b'-';
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(SlugError)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Slug {
    type Err = SlugError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl<'de> Deserialize<'de> for Slug {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Slug::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Slug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Slug {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn reference(s: &str) -> bool {
        // The contract's regular expression, spelled out independently.
        let chars: Vec<char> = s.chars().collect();
        let n = chars.len();
        if !(3..=63).contains(&n) {
            return false;
        }
        let first = chars[0].is_ascii_lowercase();
        let mid = chars[1..n - 1]
            .iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-');
        let last = chars[n - 1].is_ascii_lowercase() || chars[n - 1].is_ascii_digit();
        first && mid && last
    }

    #[test]
    fn examples() {
        for ok in ["acme", "a-1", "abc", "x9z", &"a".repeat(63)] {
            assert!(Slug::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "ab",
            "ACME",
            "Acme",
            "1abc",
            "-abc",
            "abc-",
            "ab_c",
            "ab.c",
            "a b",
            "acme\0",
            "../etc",
            "a/b",
            "tenant'; drop",
            "public;",
            &"a".repeat(64),
            "acmé",
        ] {
            assert!(Slug::parse(bad).is_err(), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn parse_agrees_with_the_contract(s in "\\PC{0,70}") {
            prop_assert_eq!(Slug::parse(&s).is_ok(), reference(&s));
        }

        #[test]
        fn near_misses_agree_with_the_contract(s in "[a-zA-Z0-9_./ -]{0,66}") {
            prop_assert_eq!(Slug::parse(&s).is_ok(), reference(&s));
        }

        #[test]
        fn valid_slugs_round_trip(s in "[a-z][a-z0-9-]{1,61}[a-z0-9]") {
            let slug = Slug::parse(&s).unwrap();
            prop_assert_eq!(slug.as_str(), s.as_str());
        }

        #[test]
        fn simple_ids_are_plain_hex(_x in 0u8..8) {
            let id = TenantId::new();
            let s = id.simple();
            prop_assert_eq!(s.len(), 32);
            prop_assert!(s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        }
    }
}
