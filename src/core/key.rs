//! Lease keys and validation of every name and duration that crosses the API.

use std::fmt;
use std::time::Duration;

use crate::core::error::{Error, Result};

/// The longest namespace, name, holder or pin entity accepted, in bytes.
pub const MAX_NAME_LEN: usize = 256;

/// The longest pin reason accepted, in bytes.
pub const MAX_REASON_LEN: usize = 1024;

/// The longest duration accepted for a claim or a pin: 366 days.
///
/// Leases are meant to be renewed; a hold that must outlast this is a pin's
/// job (a pin without expiry holds until it is removed).
pub const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 60 * 60);

/// Identifies one lease: a namespace and a name within it.
///
/// Leadership of an application uses the namespace
/// [`leadership::NAMESPACE`](crate::leadership::NAMESPACE) and the
/// application's name.
///
/// Both parts are validated on construction: they must be non-empty, at most
/// [`MAX_NAME_LEN`] bytes, free of control characters and of leading or
/// trailing whitespace; the namespace must not contain `/` (keys print as
/// `namespace/name`).
///
/// ```
/// let key = leasehold::Key::new("ops", "schema-migration")?;
/// assert_eq!(key.to_string(), "ops/schema-migration");
/// assert!(leasehold::Key::new("ops", "").is_err());
/// # Ok::<(), leasehold::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    namespace: String,
    name: String,
}

impl Key {
    /// Builds a key after validating both parts.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] naming the part that is empty, too long, or
    /// contains a control character (or an invisible formatting one: zero
    /// width, line separators, bidirectional controls) or surrounding
    /// whitespace, or a
    /// namespace that contains `/`.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Result<Key> {
        let namespace = namespace.into();
        let name = name.into();
        validate_name("namespace", &namespace)?;
        if namespace.contains('/') {
            // Keys print as namespace/name; a slash here would make two keys
            // look alike.
            return Err(Error::invalid(
                "namespace",
                &namespace,
                "must not contain '/'",
            ));
        }
        validate_name("name", &name)?;
        Ok(Key { namespace, name })
    }

    /// The namespace part.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The name part.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Checks a namespace, name, holder or entity.
pub(crate) fn validate_name(what: &'static str, value: &str) -> Result<()> {
    validate_text(what, value, MAX_NAME_LEN)?;
    if value.is_empty() {
        return Err(Error::invalid(what, value, "must not be empty"));
    }
    if value.starts_with(char::is_whitespace) || value.ends_with(char::is_whitespace) {
        return Err(Error::invalid(
            what,
            value,
            "must not start or end with whitespace",
        ));
    }
    Ok(())
}

/// Checks free text (a pin's reason): length and control characters only.
pub(crate) fn validate_text(what: &'static str, value: &str, max: usize) -> Result<()> {
    if value.len() > max {
        return Err(Error::invalid(
            what,
            value,
            format!("is {} bytes long; at most {max} are allowed", value.len()),
        ));
    }
    if let Some((at, c)) = value
        .char_indices()
        .find(|(_, c)| c.is_control() || is_invisible_format(*c))
    {
        return Err(Error::invalid(
            what,
            value,
            format!(
                "contains the control character U+{:04X} at byte {at}",
                c as u32
            ),
        ));
    }
    Ok(())
}

/// Line and paragraph separators, zero-width characters and bidirectional
/// controls: invisible, or able to make a name print as another.
fn is_invisible_format(c: char) -> bool {
    matches!(c,
        '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
}

/// Converts a claim or pin duration to whole milliseconds, rounding up so that
/// a guarantee is never shortened.
pub(crate) fn duration_ms(what: &'static str, duration: Duration) -> Result<i64> {
    if duration.is_zero() {
        return Err(Error::invalid(what, "0s", "must be greater than zero"));
    }
    if duration > MAX_DURATION {
        return Err(Error::invalid(
            what,
            &format!("{duration:?}"),
            format!(
                "exceeds the maximum of {} days",
                MAX_DURATION.as_secs() / 86_400
            ),
        ));
    }
    let ms = duration.as_nanos().div_ceil(1_000_000);
    // MAX_DURATION keeps this far inside i64.
    Ok(ms as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() -> Result<()> {
        let key = Key::new("application-leadership", "mysql")?;
        assert_eq!(key.namespace(), "application-leadership");
        assert_eq!(key.name(), "mysql");
        Key::new("ns", "ünïcödé name/with slash")?;
        Key::new("ns", "x".repeat(MAX_NAME_LEN))?;
        Ok(())
    }

    #[test]
    fn rejects_bad_names() {
        for (ns, name) in [
            ("", "a"),
            ("a", ""),
            ("a", " padded"),
            ("a", "padded\u{a0}"),
            ("a", "bell\u{7}"),
            ("a", "new\nline"),
            ("a", "del\u{7f}"),
            ("a/b", "c"),
        ] {
            let err = Key::new(ns, name).unwrap_err();
            assert!(
                matches!(err, Error::InvalidArgument { .. }),
                "{ns:?}/{name:?}"
            );
        }
        let err = Key::new("a", "x".repeat(MAX_NAME_LEN + 1)).unwrap_err();
        assert!(err.to_string().contains("257 bytes long"), "{err}");
    }

    #[test]
    fn durations_round_up_and_are_bounded() -> Result<()> {
        assert_eq!(duration_ms("duration", Duration::from_nanos(1))?, 1);
        assert_eq!(duration_ms("duration", Duration::from_micros(1500))?, 2);
        assert_eq!(duration_ms("duration", Duration::from_secs(30))?, 30_000);
        assert!(duration_ms("duration", Duration::ZERO).is_err());
        assert!(duration_ms("duration", MAX_DURATION + Duration::from_nanos(1)).is_err());
        assert!(duration_ms("duration", Duration::MAX).is_err());
        Ok(())
    }
}
