//! Field rules shared by the services.

use crate::error::{Error, Result};

/// At most this many bytes may a text of `max` characters take (UTF-8):
/// anything longer is refused before it is looked at further.
fn too_long(value: &str, max: usize) -> bool {
    value.len() > max.saturating_mul(4)
}

/// A trimmed, non-empty text of at most `max` characters, without control characters.
pub fn text(field: &str, value: &str, max: usize) -> Result<String> {
    if too_long(value.trim(), max) {
        return Err(Error::Validation(format!(
            "{field} must be 1 to {max} characters, without control characters"
        )));
    }
    let v = value.trim();
    if v.is_empty() || v.chars().count() > max || v.chars().any(char::is_control) {
        return Err(Error::Validation(format!(
            "{field} must be 1 to {max} characters, without control characters"
        )));
    }
    Ok(v.to_owned())
}

/// A longer free text (may be empty; newlines and tabs allowed).
pub fn long_text(field: &str, value: &str, max: usize) -> Result<String> {
    if too_long(value, max) || value.chars().count() > max {
        return Err(Error::Validation(format!(
            "{field} must be at most {max} characters"
        )));
    }
    if value
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t' && c != '\r')
    {
        return Err(Error::Validation(format!(
            "{field} may hold no control characters but tabs and line breaks"
        )));
    }
    Ok(value.to_owned())
}

/// An optional whole number, as JSON Schema has it: `42` and `42.0` alike
/// (a client that sends every number as a float is not refused); `42.5`,
/// or a number past `i64`, is.
pub fn whole_number<'de, D>(d: D) -> std::result::Result<Option<i64>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    use serde::Deserialize;
    use serde::de::Error as _;
    match Option::<serde_json::Number>::deserialize(d)? {
        None => Ok(None),
        Some(n) => {
            if let Some(i) = n.as_i64() {
                return Ok(Some(i));
            }
            match n.as_f64() {
                Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(Some(f as i64)),
                _ => Err(D::Error::custom(format!(
                    "{n} is not a whole number in range"
                ))),
            }
        }
    }
}

/// An email address, normalised to lower case. Deliberately loose: one `@`,
/// something on each side, a dot in the domain, no spaces.
pub fn email(value: &str) -> Result<String> {
    // Bounded before it is copied: a megabyte of "email" is refused as is.
    if value.trim().len() > MAX_EMAIL {
        return Err(Error::Validation("email is not a valid address".into()));
    }
    let v = value.trim().to_lowercase();
    let ok = v.len() <= 254
        && v.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !domain.contains('@')
        })
        && !v.chars().any(|c| c.is_whitespace() || c.is_control());
    if !ok {
        return Err(Error::Validation("email is not a valid address".into()));
    }
    Ok(v)
}

/// The longest email accepted (RFC 5321's path limit).
pub const MAX_EMAIL: usize = 254;

/// The longest password accepted, in characters.
pub const MAX_PASSWORD: usize = 1024;

/// A password offered at login (or as the current one): at most
/// [`MAX_PASSWORD`] characters, so that no more is ever hashed.
pub fn password_to_check(value: &str) -> Result<()> {
    if too_long(value, MAX_PASSWORD) || value.chars().count() > MAX_PASSWORD {
        return Err(Error::Validation(format!(
            "password must be at most {MAX_PASSWORD} characters"
        )));
    }
    Ok(())
}

/// A password: 8 to 1024 characters.
pub fn password(value: &str) -> Result<()> {
    if too_long(value, MAX_PASSWORD) {
        return Err(Error::Validation(
            "password must be 8 to 1024 characters".into(),
        ));
    }
    let n = value.chars().count();
    if !(8..=1024).contains(&n) {
        return Err(Error::Validation(
            "password must be 8 to 1024 characters".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails() {
        assert_eq!(email(" Ada@Example.COM ").unwrap(), "ada@example.com");
        for bad in ["", "a", "a@b", "@b.c", "a@.c", "a@c.", "a b@c.d", "a@b@c.d"] {
            assert!(email(bad).is_err(), "{bad}");
        }
    }
}
