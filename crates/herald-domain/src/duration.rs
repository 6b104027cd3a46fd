//! Durations as marketers write them: `"90d"`, `"12h"`, `"30m"`, `"45s"`, `"2w"`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer};

/// A positive span of time, in whole seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Span {
    secs: i64,
}

impl Span {
    /// A span of `secs` seconds.
    pub const fn from_secs(secs: i64) -> Self {
        Self { secs }
    }
    /// A span of `days` days.
    pub const fn from_days(days: i64) -> Self {
        Self {
            secs: days * 86_400,
        }
    }
    /// Length in seconds.
    pub const fn secs(self) -> i64 {
        self.secs
    }
    /// Length in milliseconds.
    pub const fn millis(self) -> i64 {
        self.secs * 1000
    }
}

/// Why a duration did not parse.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "`{0}` is not a duration; write a whole number and a unit, like \"90d\", \"12h\", \"30m\", \"45s\" or \"2w\""
)]
pub struct SpanError(pub String);

impl FromStr for Span {
    type Err = SpanError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let err = || SpanError(s.to_string());
        let unit = t.chars().last().ok_or_else(err)?;
        let n: i64 = t[..t.len() - unit.len_utf8()].parse().map_err(|_| err())?;
        if n < 0 {
            return Err(err());
        }
        let mult = match unit {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 7 * 86_400,
            _ => return Err(err()),
        };
        n.checked_mul(mult).map(Span::from_secs).ok_or_else(err)
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.secs;
        for (unit, len) in [("w", 7 * 86_400), ("d", 86_400), ("h", 3600), ("m", 60)] {
            if s != 0 && s % len == 0 {
                return write!(f, "{}{unit}", s / len);
            }
        }
        write!(f, "{s}s")
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!("90d".parse::<Span>().unwrap().secs(), 90 * 86_400);
        assert_eq!("12h".parse::<Span>().unwrap().secs(), 12 * 3600);
        assert_eq!("2w".parse::<Span>().unwrap(), Span::from_days(14));
        assert_eq!("10m".parse::<Span>().unwrap().secs(), 600);
        assert!("12".parse::<Span>().is_err());
        assert!("d".parse::<Span>().is_err());
        assert!("-3d".parse::<Span>().is_err());
        assert!("3y".parse::<Span>().is_err());
    }

    #[test]
    fn displays_in_the_largest_whole_unit() {
        assert_eq!(Span::from_days(14).to_string(), "2w");
        assert_eq!(Span::from_secs(3600 * 36).to_string(), "36h");
        assert_eq!(Span::from_secs(0).to_string(), "0s");
    }
}
