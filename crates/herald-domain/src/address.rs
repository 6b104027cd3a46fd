//! Addresses that passed parsing: a value of these types is known to be
//! well-formed, so code deeper in never re-checks a raw string.

use std::fmt;

/// An email address with a local part, one `@`, and a dotted domain.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EmailAddress(String);

impl EmailAddress {
    /// Parses a bare address (`ann@example.com`), trimming white space and
    /// lower-casing the domain (local parts are case-sensitive by RFC 5321).
    pub fn parse(raw: &str) -> Result<Self, String> {
        let s = raw.trim();
        let bad = |why: &str| Err(format!("`{raw}` is not an email address: {why}"));
        let Some((local, domain)) = s.rsplit_once('@') else {
            return bad("it has no `@`");
        };
        if local.is_empty() || local.len() > 64 {
            return bad("the part before `@` is empty or too long");
        }
        if s.chars()
            .any(|c| c.is_whitespace() || c.is_control() || "<>,;\"()[]\\".contains(c))
        {
            return bad("it contains a space or a character that cannot stand in an address");
        }
        if !domain.contains('.')
            || domain.starts_with('.')
            || domain.ends_with('.')
            || domain.contains("..")
            || domain.contains('@')
        {
            return bad("the domain after `@` must be like example.com");
        }
        Ok(Self(format!("{local}@{}", domain.to_ascii_lowercase())))
    }

    /// The address as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A phone number in E.164: `+`, a country code not starting with 0, 8 to 15 digits in all.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct E164Phone(String);

impl E164Phone {
    /// Parses `+8613800138000`; spaces, dashes, dots and parentheses are dropped first.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let s: String = raw
            .trim()
            .chars()
            .filter(|c| !matches!(c, ' ' | '-' | '.' | '(' | ')'))
            .collect();
        let Some(digits) = s.strip_prefix('+') else {
            return Err(format!(
                "`{raw}` is not an E.164 phone number: it must start with + and the country code, like +8613800138000"
            ));
        };
        let ok = (8..=15).contains(&digits.len())
            && digits.bytes().all(|b| b.is_ascii_digit())
            && !digits.starts_with('0');
        if !ok {
            return Err(format!(
                "`{raw}` is not an E.164 phone number: + then 8 to 15 digits, not starting with 0"
            ));
        }
        Ok(Self(s))
    }

    /// The number as text, with its `+`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for E164Phone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails() {
        assert_eq!(
            EmailAddress::parse(" Ann@Example.COM ").unwrap().as_str(),
            "Ann@example.com"
        );
        for bad in [
            "",
            "ann",
            "ann@",
            "@x.com",
            "ann@localhost",
            "a b@x.com",
            "ann@x..com",
            "<a@x.com>",
        ] {
            assert!(EmailAddress::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn phones() {
        assert_eq!(
            E164Phone::parse("+86 138-0013-8000").unwrap().as_str(),
            "+8613800138000"
        );
        for bad in [
            "13800138000",
            "+0123456789",
            "+12",
            "+1234567890123456",
            "+1415abc1234",
        ] {
            assert!(E164Phone::parse(bad).is_err(), "{bad}");
        }
    }
}
