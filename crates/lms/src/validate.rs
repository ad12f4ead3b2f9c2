//! Field rules shared by the services.

use crate::error::{Error, Result};

/// A trimmed, non-empty text of at most `max` characters, without control characters.
pub fn text(field: &str, value: &str, max: usize) -> Result<String> {
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
    if value.chars().count() > max
        || value
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\t' && c != '\r')
    {
        return Err(Error::Validation(format!(
            "{field} must be at most {max} characters"
        )));
    }
    Ok(value.to_owned())
}

/// An email address, normalised to lower case. Deliberately loose: one `@`,
/// something on each side, a dot in the domain, no spaces.
pub fn email(value: &str) -> Result<String> {
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

/// A password: 8 to 1024 characters.
pub fn password(value: &str) -> Result<()> {
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
