//! Small config values that parse themselves, so a typo is reported at the
//! value's own line and column by the TOML deserializer.

use std::fmt;

use chrono::NaiveTime;
use serde::{Deserialize, Deserializer};

use crate::duration::Span;

/// An IANA time zone such as `Asia/Shanghai`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timezone(pub chrono_tz::Tz);

impl<'de> Deserialize<'de> for Timezone {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse::<chrono_tz::Tz>()
            .map(Timezone)
            .map_err(|_| serde::de::Error::custom(unknown_timezone(&s)))
    }
}

/// The message for a time zone that is not an IANA name, with the closest one.
pub fn unknown_timezone(s: &str) -> String {
    let names = chrono_tz::TZ_VARIANTS.iter().map(|tz| tz.name());
    let near = super::did_you_mean(s, names)
        .map(|n| format!("did you mean \"{n}\"? "))
        .unwrap_or_default();
    format!(
        "unknown time zone `{s}`; {near}use an IANA name like \"Asia/Shanghai\" or \"America/New_York\""
    )
}

/// A wall-clock time of day, `"21:00"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct LocalTime(pub NaiveTime);

impl<'de> Deserialize<'de> for LocalTime {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        NaiveTime::parse_from_str(&s, "%H:%M")
            .map(LocalTime)
            .map_err(|_| {
                serde::de::Error::custom(format!(
                    "`{s}` is not a time of day; write it as \"HH:MM\", like \"21:00\""
                ))
            })
    }
}

/// Hours in the recipient's local time when marketing messages wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuietHours {
    /// When quiet starts (local).
    pub start: LocalTime,
    /// When sending may resume (local); may be earlier than `start` (over midnight).
    pub end: LocalTime,
}

/// Which channel a frequency cap counts: one, or all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapChannel {
    /// Messages on every channel count.
    Any,
    /// Only this channel's messages count.
    One(crate::types::Channel),
}

impl<'de> Deserialize<'de> for CapChannel {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s == "any" {
            return Ok(CapChannel::Any);
        }
        s.parse().map(CapChannel::One).map_err(|_| {
            serde::de::Error::custom(format!(
                "unknown channel `{s}`; expected one of: email, sms, push, any"
            ))
        })
    }
}

/// At most `max` marketing messages per `per` on `channel`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrequencyCap {
    /// Which messages count.
    pub channel: CapChannel,
    /// How many are allowed in the window.
    pub max: u32,
    /// The sliding window.
    pub per: Span,
}

/// A send rate: `{ per_second = 50, burst = 10 }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateSpec {
    /// Sustained messages per second.
    pub per_second: std::num::NonZeroU32,
    /// How many may go at once after a pause.
    pub burst: Option<std::num::NonZeroU32>,
}

/// A number in [0, 1).
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Default)]
pub struct Fraction(f64);

impl Fraction {
    /// The value.
    pub fn get(self) -> f64 {
        self.0
    }
    /// A fraction, if `v` is in [0, 1).
    pub fn new(v: f64) -> Option<Self> {
        (0.0..1.0).contains(&v).then_some(Self(v))
    }
}

impl<'de> Deserialize<'de> for Fraction {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = f64::deserialize(d)?;
        Fraction::new(v).ok_or_else(|| {
            serde::de::Error::custom(format!("{v} is not a fraction; use a number from 0 up to (not including) 1, like 0.10 for 10%"))
        })
    }
}

/// A name that can appear in a file name, URL and report: letters, digits, `-`, `_`, `.`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(String);

impl Name {
    /// Checks `s`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let ok = !s.is_empty()
            && s.len() <= 100
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            && !s.starts_with("__");
        if ok {
            Ok(Name(s.to_string()))
        } else {
            Err(format!(
                "`{s}` is not a valid name: use 1 to 100 letters, digits, `-`, `_` or `.` (not starting with `__`)"
            ))
        }
    }
    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Name::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// The content span of a TOML string value whose whole span (quotes included) is `span`.
///
/// Used to point a filter error at the right column inside `where = '''...'''`.
/// Exact for literal strings and for basic strings without escapes.
pub fn string_content_offset(source: &str, span: &std::ops::Range<usize>) -> usize {
    let raw = &source[span.start.min(source.len())..span.end.min(source.len())];
    let mut offset = span.start;
    for delim in ["'''", "\"\"\"", "'", "\""] {
        if let Some(rest) = raw.strip_prefix(delim) {
            offset += delim.len();
            if delim.len() == 3 {
                if rest.starts_with("\r\n") {
                    offset += 2;
                } else if rest.starts_with('\n') {
                    offset += 1;
                }
            }
            break;
        }
    }
    offset
}
