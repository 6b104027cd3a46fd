//! `config/campaigns/NAME.toml`: audience, schedule or trigger, channel order,
//! goal, variants, holdout and policies (SPEC section 2).

use std::collections::BTreeMap;
use std::ops::Range;
use std::str::FromStr;

use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Deserializer};
use toml::Spanned;

use super::herald::HeraldConfig;
use super::segment::{Segment, parse_filter};
use super::values::{Fraction, FrequencyCap, Name, QuietHours};
use crate::assign::Arms;
use crate::diagnostic::Diagnostic;
use crate::duration::Span;
use crate::segment::Expr;
use crate::types::{CampaignKind, Channel};

/// When a campaign fires.
#[derive(Debug, Clone)]
pub enum Schedule {
    /// Only by `herald send`.
    Manual,
    /// Once, at this instant.
    At(DateTime<FixedOffset>),
    /// On a cron schedule (seconds first) in a time zone.
    Cron {
        /// The expression as written.
        text: String,
        /// The parsed schedule.
        schedule: Box<cron::Schedule>,
        /// Zone the expression is read in.
        timezone: chrono_tz::Tz,
    },
}

impl<'de> Deserialize<'de> for Schedule {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Not an untagged enum: its only error is "data did not match any
        // variant", which hides the mistake (a misspelt time zone, say).
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct RawTable {
            cron: Option<String>,
            timezone: Option<String>,
            at: Option<String>,
        }
        use serde::de::Error;
        let help = "write \"manual\", { cron = \"0 0 10 * * Tue\", timezone = \"Asia/Shanghai\" } or { at = \"2026-12-01T10:00:00+08:00\" }";
        let raw = match toml::Value::deserialize(d)? {
            toml::Value::String(w) if w == "manual" => return Ok(Schedule::Manual),
            toml::Value::String(w) => {
                return Err(D::Error::custom(format!("unknown schedule `{w}`; {help}")));
            }
            toml::Value::Table(t) => toml::Value::Table(t)
                .try_into::<RawTable>()
                .map_err(|e| D::Error::custom(format!("in `schedule`: {}", e.message())))?,
            other => {
                return Err(D::Error::custom(format!(
                    "`schedule` is a string or a table, not {}; {help}",
                    other.type_str()
                )));
            }
        };
        match raw {
            RawTable { cron: Some(text), timezone, at: None } => {
                let timezone = match timezone {
                    None => chrono_tz::Tz::UTC,
                    Some(tz) => tz.parse::<chrono_tz::Tz>().map_err(|_| {
                        D::Error::custom(format!("in `schedule`: {}", super::values::unknown_timezone(&tz)))
                    })?,
                };
                check_cron_fields(&text).map_err(D::Error::custom)?;
                let schedule = cron::Schedule::from_str(&text).map_err(|e| {
                    D::Error::custom(format!(
                        "`{text}` is not a cron expression ({e}); herald's cron has seconds first and 6 or 7 fields, like \"0 0 10 * * Tue\" (10:00 every Tuesday); use day names, not numbers"
                    ))
                })?;
                Ok(Schedule::Cron {
                    text,
                    schedule: Box::new(schedule),
                    timezone,
                })
            }
            RawTable { cron: None, timezone: None, at: Some(at) } => {
                DateTime::parse_from_rfc3339(&at).map(Schedule::At).map_err(|_| {
                    D::Error::custom(format!(
                        "`{at}` is not an RFC 3339 instant; write it like \"2026-12-01T10:00:00+08:00\""
                    ))
                })
            }
            RawTable { cron: None, timezone: Some(_), at: Some(_) } => Err(D::Error::custom(
                "a schedule's `timezone` goes with `cron`; an `at` instant carries its own offset, like \"2026-12-01T10:00:00+08:00\"",
            )),
            RawTable { cron: None, at: None, .. } => Err(D::Error::custom(format!(
                "a schedule table needs `cron` or `at`; {help}"
            ))),
            RawTable { .. } => Err(D::Error::custom(
                "a schedule has either `cron` (with an optional `timezone`) or `at`, not both",
            )),
        }
    }
}

/// The numeric fields of a cron expression (seconds first) and their ranges:
/// checked here because the cron crate's own message for an hour of 24 says
/// "must be less than 23", which is wrong (23 is valid).
const CRON_FIELDS: [(&str, u32, u32); 5] = [
    ("seconds", 0, 59),
    ("minutes", 0, 59),
    ("hours", 0, 23),
    ("day of month", 1, 31),
    ("month", 1, 12),
];

/// Checks each number in the seconds..month fields of `text` against its range.
fn check_cron_fields(text: &str) -> Result<(), String> {
    let fields: Vec<&str> = text.split_whitespace().collect();
    for (i, field) in fields.iter().enumerate().take(CRON_FIELDS.len()) {
        let (name, low, high) = CRON_FIELDS[i];
        for part in field.split(',') {
            // `a-b/step`: the step is a count, not a value of the field.
            let values = part.split('/').next().unwrap_or(part);
            for value in values.split('-') {
                if let Ok(n) = value.parse::<u32>()
                    && !(low..=high).contains(&n)
                {
                    return Err(format!(
                        "`{text}`: {name} `{n}` is out of range; {name} are {low} to {high} (field {} of seconds, minutes, hours, day of month, month, day of week)",
                        i + 1
                    ));
                }
            }
        }
    }
    Ok(())
}

/// How the send time of a message is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SendTime {
    /// At the run's instant.
    #[default]
    Immediate,
    /// The contact's most active local hour, within 24 hours.
    BestHour,
}

/// A variant's own send hour, for A/B tests of timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VariantSendTime {
    /// The contact's local hour, 0..23.
    pub hour: u8,
}

/// The goal that counts as a conversion.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Goal {
    /// Event name.
    pub event: String,
    /// Window after the planned send time.
    pub within: Span,
}

/// `[results]`: the seeds' metrics per arm in the report (issue 26): retention
/// on an activity event, and ARPU and LTV on a revenue event; and how the
/// report compares arms (issue 33): sequential or fixed-horizon tests, a
/// correction for many comparisons, the lift the holdout should be able to show.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResultsConfig {
    /// The activity that counts as coming back (`app_open`): retention is
    /// the share of an arm with it in days 1-7 and days 8-30 after the message.
    pub retention_event: Option<String>,
    /// The event whose values are revenue (`order_placed`): ARPU sums them
    /// over 30 days after the message, LTV over `ltv_horizon`, per assigned contact.
    pub revenue_event: Option<String>,
    /// LTV's horizon after the message (default 90 days).
    #[serde(default = "ResultsConfig::default_ltv_horizon")]
    pub ltv_horizon: Span,
    /// Always-valid (sequential) intervals and p-values, for a report read
    /// every day; `false`: fixed-horizon ones, valid read once at the end.
    #[serde(default)]
    pub sequential: bool,
    /// The sequential test's tuning (gbstats' `sequential_tuning_parameter`):
    /// the sample size at which its intervals are narrowest relative to the
    /// fixed-horizon ones.
    #[serde(
        default = "ResultsConfig::default_tuning",
        deserialize_with = "positive_tuning"
    )]
    pub tuning: f64,
    /// Correction of the p-values for the number of comparisons.
    #[serde(default)]
    pub correction: CorrectionSetting,
    /// The relative lift the marketer expects (0.1 for +10%): `herald send
    /// --dry-run` warns when the holdout is too small to detect it.
    #[serde(default, deserialize_with = "positive_lift")]
    pub expected_lift: Option<f64>,
    /// CUPED: adjust each metric by the same metric before the message.
    pub cuped: Option<Cuped>,
}

impl ResultsConfig {
    fn default_ltv_horizon() -> Span {
        Span::from_days(90)
    }

    fn default_tuning() -> f64 {
        crate::stats::DEFAULT_SEQUENTIAL_TUNING
    }

    /// The test the report's intervals and p-values come from.
    pub fn test(&self) -> crate::stats::TestKind {
        if self.sequential {
            crate::stats::TestKind::Sequential {
                tuning: self.tuning,
            }
        } else {
            crate::stats::TestKind::FixedHorizon
        }
    }
}

fn positive_tuning<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let v = f64::deserialize(d)?;
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err(serde::de::Error::custom(format!(
            "tuning {v} is not a positive number: it is the audience size (both arms) at which \
             the sequential intervals are tightest; about the size you expect, 5000 by default"
        )))
    }
}

fn positive_lift<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    let v = f64::deserialize(d)?;
    if v.is_finite() && v > 0.0 {
        Ok(Some(v))
    } else {
        Err(serde::de::Error::custom(format!(
            "expected_lift {v} is not a positive relative lift: write 0.1 for +10%"
        )))
    }
}

/// `[results] correction`: how p-values are corrected for the number of
/// comparisons (every variant-vs-control pair times every metric).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CorrectionSetting {
    /// `"none"`: each p-value as computed.
    #[default]
    None,
    /// `"holm"`: Holm-Bonferroni, bounding the chance of any false win.
    Holm,
    /// `"bh"`: Benjamini-Hochberg, bounding the share of false wins.
    BenjaminiHochberg,
}

impl CorrectionSetting {
    /// The domain's procedure.
    pub fn get(self) -> crate::stats::Correction {
        match self {
            Self::None => crate::stats::Correction::None,
            Self::Holm => crate::stats::Correction::Holm,
            Self::BenjaminiHochberg => crate::stats::Correction::BenjaminiHochberg,
        }
    }

    /// As written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Holm => "holm",
            Self::BenjaminiHochberg => "bh",
        }
    }
}

impl<'de> Deserialize<'de> for CorrectionSetting {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = String::deserialize(d)?;
        match v.as_str() {
            "none" => Ok(Self::None),
            "holm" => Ok(Self::Holm),
            "bh" => Ok(Self::BenjaminiHochberg),
            other => Err(serde::de::Error::custom(format!(
                "correction `{other}` is not one herald knows: use \"none\", \"holm\" \
                 (Holm-Bonferroni) or \"bh\" (Benjamini-Hochberg)"
            ))),
        }
    }
}

/// `[results] cuped = { days = 30 }`: the pre-period window of CUPED.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cuped {
    /// Days before the message whose events are the covariate (1 to 365).
    #[serde(deserialize_with = "cuped_days")]
    pub days: u32,
}

fn cuped_days<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let v = i64::deserialize(d)?;
    match u32::try_from(v) {
        Ok(days @ 1..=365) => Ok(days),
        _ => Err(serde::de::Error::custom(format!(
            "cuped days {v} is out of range: the window before the message, 1 to 365 days"
        ))),
    }
}

/// Email content of a variant.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailContent {
    /// Subject line (a handlebars string).
    pub subject: String,
    /// HTML body template, a path below `templates/`.
    pub template: String,
}

/// SMS content of a variant.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmsContent {
    /// Body template, a path below `templates/`.
    pub template: String,
}

/// Push content of a variant.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushContent {
    /// Title (a handlebars string).
    pub title: String,
    /// Body template, a path below `templates/`.
    pub template: String,
}

/// One arm of an A/B test.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Variant {
    /// Its name in reports.
    pub name: Spanned<Name>,
    /// Relative share of the non-held-out audience.
    #[serde(default = "one")]
    pub weight: f64,
    /// Its own send hour, if it tests timing.
    pub send_time: Option<VariantSendTime>,
    /// Email content.
    pub email: Option<EmailContent>,
    /// SMS content.
    pub sms: Option<SmsContent>,
    /// Push content.
    pub push: Option<PushContent>,
}

fn one() -> f64 {
    1.0
}

impl Variant {
    /// Whether this variant has content for `channel`.
    pub fn has(&self, channel: Channel) -> bool {
        match channel {
            Channel::Email => self.email.is_some(),
            Channel::Sms => self.sms.is_some(),
            Channel::Push => self.push.is_some(),
        }
    }
}

/// Which outcome a rollout decides on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RolloutMetric {
    /// Goal conversions per assigned contact.
    Conversion,
    /// Clicks per delivered message.
    Click,
    /// Opens per delivered message.
    Open,
}

/// `[rollout]`: test on a fraction, then send the winner to the rest.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rollout {
    /// Share of the non-held-out audience in the test.
    pub test_fraction: Fraction,
    /// When to pick the winner.
    pub decide_after: Span,
    /// What the winner is best at.
    pub metric: RolloutMetric,
    /// The last decision time: without a clear winner the decision is
    /// retried hourly until then, when the leader goes. Default: twice `decide_after`.
    #[serde(default)]
    pub decide_by: Option<Span>,
}

impl Rollout {
    /// `decide_by`, or twice `decide_after`.
    pub fn decide_by(&self) -> Span {
        self.decide_by
            .unwrap_or(Span::from_secs(self.decide_after.secs().saturating_mul(2)))
    }
}

/// A campaign that reacts instead of waiting for a schedule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTrigger {
    event: Option<String>,
    delay: Option<Span>,
    #[serde(rename = "where")]
    filter: Option<Spanned<String>>,
    enters: Option<String>,
    every: Option<Span>,
}

/// A trigger, checked.
#[derive(Debug, Clone)]
pub enum Trigger {
    /// When the contact does `event`, after `delay`, if they match `filter`.
    Event {
        /// Event name.
        event: String,
        /// Wait before sending.
        delay: Span,
        /// Extra condition at trigger time.
        filter: Option<Expr>,
    },
    /// When the contact enters `segment` (checked every `every`).
    Enters {
        /// Segment name.
        segment: String,
        /// How often membership is checked.
        every: Span,
    },
}

/// What cancels pending messages.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Exit {
    /// The event that ends the series for a contact.
    pub event: String,
}

/// One step of a series, after the previous one.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Wait after the previous step.
    pub delay: Span,
    /// Channel order for this step (default: the campaign's).
    pub channels: Option<Vec<Channel>>,
    /// Content for this step's email.
    pub email: Option<EmailContent>,
    /// Content for this step's SMS.
    pub sms: Option<SmsContent>,
    /// Content for this step's push.
    pub push: Option<PushContent>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CampaignFile {
    name: Name,
    #[serde(default)]
    kind: CampaignKind,
    topic: Option<String>,
    segment: Option<Spanned<String>>,
    #[serde(rename = "where")]
    filter: Option<Spanned<String>>,
    schedule: Option<Schedule>,
    catch_up: Option<Span>,
    reentry: Option<Span>,
    spread: Option<Span>,
    channels: Spanned<Vec<Channel>>,
    #[serde(default)]
    send_time: SendTime,
    goal: Option<Goal>,
    #[serde(default)]
    secondary_goals: Vec<String>,
    results: Option<ResultsConfig>,
    #[serde(default)]
    holdout: Fraction,
    quiet_hours: Option<QuietHours>,
    frequency_caps: Option<Vec<FrequencyCap>>,
    variants: Spanned<Vec<Variant>>,
    rollout: Option<Rollout>,
    trigger: Option<Spanned<RawTrigger>>,
    exit: Option<Exit>,
    #[serde(default)]
    steps: Vec<Step>,
}

/// Who a campaign targets.
#[derive(Debug, Clone)]
pub enum Audience {
    /// A segment by name.
    Segment(String),
    /// An inline filter.
    Inline(Expr),
}

/// A campaign, parsed and checked on its own (see [`Campaign::check_references`]).
#[derive(Debug, Clone)]
pub struct Campaign {
    /// Its name (arm assignment hashes it).
    pub name: String,
    /// The file it came from.
    pub file: String,
    /// Marketing or transactional.
    pub kind: CampaignKind,
    /// Unsubscribing from a topic stops only that topic.
    pub topic: Option<String>,
    /// Who it targets.
    pub audience: Audience,
    segment_span: Range<usize>,
    /// Byte offset of an inline `where` filter's text in the file.
    filter_offset: usize,
    /// When it fires.
    pub schedule: Schedule,
    /// A fire missed while down runs if at most this late.
    pub catch_up: Option<Span>,
    /// Skip contacts who got it within this window.
    pub reentry: Option<Span>,
    /// Spread send times over this long.
    pub spread: Option<Span>,
    /// Channel order: each contact gets the first they can receive.
    pub channels: Vec<Channel>,
    /// How send times are chosen.
    pub send_time: SendTime,
    /// The conversion goal.
    pub goal: Option<Goal>,
    /// Other events counted per arm.
    pub secondary_goals: Vec<String>,
    /// `[results]`: retention, ARPU and LTV per arm.
    pub results: Option<ResultsConfig>,
    /// Control-group fraction.
    pub holdout: Fraction,
    /// Overrides `[defaults].quiet_hours`.
    pub quiet_hours: Option<QuietHours>,
    /// Overrides `[defaults].frequency_caps`.
    pub frequency_caps: Option<Vec<FrequencyCap>>,
    /// The arms, in file order.
    pub variants: Vec<Variant>,
    /// Assignment over holdout and variant weights.
    pub arms: Arms,
    /// Test-then-roll-out settings.
    pub rollout: Option<Rollout>,
    /// Reactive start.
    pub trigger: Option<Trigger>,
    /// What cancels pending messages.
    pub exit: Option<Exit>,
    /// Later steps of a series.
    pub steps: Vec<Step>,
}

fn diag(file: &str, source: &str, span: Range<usize>, msg: impl Into<String>) -> Diagnostic {
    Diagnostic::new(file, source, span, msg)
}

impl Campaign {
    /// Parses the text of a campaign file.
    pub fn parse(file: &str, source: &str) -> Result<Self, Diagnostic> {
        let raw: CampaignFile = super::parse_toml(file, source)?;
        let (audience, segment_span) = match (&raw.segment, &raw.filter) {
            (Some(seg), None) => (Audience::Segment(seg.get_ref().clone()), seg.span()),
            (None, Some(w)) => (Audience::Inline(parse_filter(file, source, w)?), w.span()),
            _ => {
                let at = raw.segment.as_ref().map_or(0..0, |s| s.span());
                return Err(diag(
                    file,
                    source,
                    at,
                    "a campaign needs exactly one of `segment = \"NAME\"` or `where = '''...'''`",
                ));
            }
        };
        let raw_trigger_span = raw.trigger.as_ref().map(|t| t.span());
        let trigger = match raw.trigger {
            None => None,
            Some(t) => {
                let span = t.span();
                let t = t.into_inner();
                Some(match (t.event, t.enters) {
                    (Some(event), None) => Trigger::Event {
                        event,
                        delay: t.delay.unwrap_or(Span::from_secs(0)),
                        filter: t
                            .filter
                            .as_ref()
                            .map(|w| parse_filter(file, source, w))
                            .transpose()?,
                    },
                    (None, Some(segment)) => Trigger::Enters {
                        segment,
                        every: t.every.unwrap_or(Span::from_secs(3600)),
                    },
                    _ => {
                        return Err(diag(file, source, span, "a trigger has either `event = \"...\"` or `enters = \"SEGMENT\"`")
                            .with_help("trigger = { event = \"app_open\", delay = \"10m\" } or trigger = { enters = \"churn_risk\", every = \"1h\" }"));
                    }
                })
            }
        };
        if let (Some(t), Some(_)) = (&raw_trigger_span, &raw.rollout) {
            return Err(diag(
                file,
                source,
                t.clone(),
                "`[rollout]` needs a run that ends: a triggered campaign never does",
            )
            .with_help(
                "test the variants with a scheduled campaign first, then trigger the winner",
            ));
        }
        if let Some(r) = &raw.rollout
            && let Some(by) = r.decide_by
            && by.secs() < r.decide_after.secs()
        {
            return Err(diag(
                file,
                source,
                0..0,
                format!(
                    "`[rollout]` decide_by = \"{by}\" is before decide_after = \"{}\"",
                    r.decide_after
                ),
            )
            .with_help(
                "decide_by is the last decision time: at least decide_after (default: twice it)",
            ));
        }
        let schedule = match (raw.schedule, &trigger) {
            (Some(s), _) => s,
            (None, Some(_)) => Schedule::Manual,
            (None, None) => Schedule::Manual,
        };
        if raw.channels.get_ref().is_empty() {
            return Err(diag(
                file,
                source,
                raw.channels.span(),
                "`channels` is empty; list at least one of \"email\", \"sms\", \"push\"",
            ));
        }
        let variants_span = raw.variants.span();
        let variants = raw.variants.into_inner();
        if variants.is_empty() {
            return Err(diag(
                file,
                source,
                variants_span,
                "a campaign needs at least one [[variants]]",
            ));
        }
        let mut seen = BTreeMap::new();
        for v in &variants {
            if let Some(prev) = seen.insert(v.name.get_ref().as_str().to_string(), v.name.span()) {
                let _ = prev;
                return Err(diag(
                    file,
                    source,
                    v.name.span(),
                    format!("variant `{}` is named twice", v.name.get_ref()),
                ));
            }
            if !(v.weight.is_finite() && v.weight > 0.0) {
                return Err(diag(
                    file,
                    source,
                    v.name.span(),
                    format!("variant `{}` needs a positive weight", v.name.get_ref()),
                ));
            }
            for ch in raw.channels.get_ref() {
                if !v.has(*ch) {
                    return Err(diag(
                        file,
                        source,
                        v.name.span(),
                        format!(
                            "variant `{}` has no {ch} content, but the campaign sends on {ch}",
                            v.name.get_ref()
                        ),
                    )
                    .with_help(match ch {
                        Channel::Email => {
                            "add email = { subject = \"...\", template = \"path.email.hbs\" }"
                        }
                        Channel::Sms => "add sms = { template = \"path.sms.hbs\" }",
                        Channel::Push => {
                            "add push = { title = \"...\", template = \"path.push.hbs\" }"
                        }
                    }));
                }
            }
            if let Some(st) = v.send_time
                && st.hour > 23
            {
                return Err(diag(
                    file,
                    source,
                    v.name.span(),
                    format!(
                        "variant `{}`: send_time hour must be 0..23",
                        v.name.get_ref()
                    ),
                ));
            }
        }
        // CUPED adjusts by the goal events and revenue before the message:
        // with neither, nothing would be stored and every report would say
        // the history is missing.
        if raw.results.as_ref().is_some_and(|r| r.cuped.is_some())
            && raw.goal.is_none()
            && raw
                .results
                .as_ref()
                .is_some_and(|r| r.revenue_event.is_none())
        {
            let at = source
                .match_indices("cuped")
                .find(|(i, _)| source[..*i].ends_with('\n'))
                .map_or(0..0, |(i, k)| i..i + k.len());
            return Err(diag(
                file,
                source,
                at,
                "cuped adjusts by the goal events and revenue before each message, and this \
                 campaign has neither: add `goal = { event = \"...\", within = \"3d\" }` or \
                 `revenue_event = \"...\"` under [results], or remove cuped",
            ));
        }
        let weights: Vec<f64> = variants.iter().map(|v| v.weight).collect();
        let arms = Arms::new(raw.holdout.get(), &weights)
            .map_err(|e| diag(file, source, variants_span.clone(), e))?;
        Ok(Campaign {
            name: raw.name.as_str().to_string(),
            file: file.to_string(),
            kind: raw.kind,
            topic: raw.topic,
            audience,
            filter_offset: super::values::string_content_offset(source, &segment_span),
            segment_span,
            schedule,
            catch_up: raw.catch_up,
            reentry: raw.reentry,
            spread: raw.spread,
            channels: raw.channels.into_inner(),
            send_time: raw.send_time,
            goal: raw.goal,
            secondary_goals: raw.secondary_goals,
            results: raw.results,
            holdout: raw.holdout,
            quiet_hours: raw.quiet_hours,
            frequency_caps: raw.frequency_caps,
            variants,
            arms,
            rollout: raw.rollout,
            trigger,
            exit: raw.exit,
            steps: raw.steps,
        })
    }

    /// Checks what the campaign names in other files. Errors carry a span in this file.
    #[allow(clippy::type_complexity)]
    pub fn check_references(
        &self,
        segments: &BTreeMap<String, Segment>,
        _herald: &HeraldConfig,
    ) -> Result<(), (Range<usize>, String, Option<String>)> {
        if let Audience::Segment(name) = &self.audience
            && !segments.contains_key(name)
        {
            let hint = super::did_you_mean(name, segments.keys().map(String::as_str))
                .map(|m| format!("did you mean `{m}`?"))
                .or_else(|| {
                    (!segments.is_empty()).then(|| {
                        format!(
                            "known segments: {}",
                            segments
                                .keys()
                                .map(String::as_str)
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    })
                });
            return Err((
                self.segment_span.clone(),
                format!("unknown segment `{name}`: no config/segments/*.toml has this name"),
                hint,
            ));
        }
        if let Some(Trigger::Enters { segment, .. }) = &self.trigger
            && !segments.contains_key(segment)
        {
            let hint = super::did_you_mean(segment, segments.keys().map(String::as_str))
                .map(|m| format!("did you mean `{m}`?"));
            return Err((
                self.segment_span.clone(),
                format!(
                    "`trigger = {{ enters = \"{segment}\" }}` names an unknown segment: no config/segments/*.toml has this name"
                ),
                hint,
            ));
        }
        Ok(())
    }

    /// The segments this campaign names: its audience and its `enters` trigger.
    pub fn segments_named(&self) -> Vec<&str> {
        let mut names = Vec::new();
        if let Audience::Segment(name) = &self.audience {
            names.push(name.as_str());
        }
        if let Some(Trigger::Enters { segment, .. }) = &self.trigger {
            names.push(segment.as_str());
        }
        names
    }

    /// Byte offset of the inline `where` filter's text in the campaign file
    /// (meaningless for a campaign that names a segment).
    pub fn filter_offset(&self) -> usize {
        self.filter_offset
    }

    /// The goal's window in ms, counted from a contact's first message: the
    /// goal's `within`, plus, for a series, every later step's delay, so the
    /// window ends `within` after the last step's planned send. A contact is the
    /// unit of an A/B test, so a series converts once, on its first message.
    pub fn goal_window_ms(&self) -> Option<i64> {
        let goal = self.goal.as_ref()?;
        let steps: i64 = self.steps.iter().map(|s| s.delay.millis()).sum();
        Some(goal.within.millis().saturating_add(steps))
    }

    /// The variant names, in file order.
    pub fn variant_names(&self) -> Vec<&str> {
        self.variants
            .iter()
            .map(|v| v.name.get_ref().as_str())
            .collect()
    }

    /// A fingerprint of what decides arms (name, holdout, weights): a change reshuffles arms.
    pub fn assignment_fingerprint(&self) -> String {
        format!("{};{}", self.name, self.arms_fingerprint())
    }

    /// The holdout and the variant weights, without the name: equal for a renamed campaign.
    pub fn arms_fingerprint(&self) -> String {
        let weights: Vec<String> = self
            .variants
            .iter()
            .map(|v| format!("{}={}", v.name.get_ref(), v.weight))
            .collect();
        format!("holdout={};{}", self.holdout.get(), weights.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINBACK: &str = r#"
name = "winback-q4"
kind = "marketing"
topic = "promotions"
segment = "lapsed_buyers"
schedule = { cron = "0 0 10 * * Tue", timezone = "Asia/Shanghai" }
catch_up = "1h"
reentry = "30d"
spread = "2h"
channels = ["push", "sms", "email"]
send_time = "best_hour"
goal = { event = "order_placed", within = "3d" }
secondary_goals = ["app_open"]
holdout = 0.10

[[variants]]
name = "discount"
weight = 1
email = { subject = "{{contact.attrs.first_name}}, 15% off", template = "winback/discount.email.hbs" }
sms   = { template = "winback/discount.sms.hbs" }
push  = { title = "15% off for you", template = "winback/discount.push.hbs" }

[[variants]]
name = "reminder"
weight = 1
email = { subject = "We kept your favourites", template = "winback/reminder.email.hbs" }
sms   = { template = "winback/reminder.sms.hbs" }
push  = { title = "Still there?", template = "winback/reminder.push.hbs" }

[rollout]
test_fraction = 0.2
decide_after = "24h"
metric = "conversion"
"#;

    #[test]
    fn a_triggered_campaign_cannot_roll_out() {
        let src = WINBACK
            .replace(
                "catch_up = \"1h\"",
                "trigger = { event = \"app_open\" }\ncatch_up = \"1h\"",
            )
            .replace(
                "schedule = { cron = \"0 0 10 * * Tue\", timezone = \"Asia/Shanghai\" }\n",
                "",
            );
        let e = Campaign::parse("c.toml", &src).unwrap_err();
        assert!(
            e.to_string().contains("triggered campaign never does"),
            "{e}"
        );
        // Without [rollout] the same trigger is fine.
        let ok = src.split("[rollout]").next().unwrap().to_string();
        assert!(Campaign::parse("c.toml", &ok).is_ok());
    }

    #[test]
    fn results_statistics_default_to_a_fixed_horizon_without_correction() {
        let src = format!("{WINBACK}\n[results]\nrevenue_event = \"order_placed\"\n");
        let c = Campaign::parse("c.toml", &src).unwrap();
        let r = c.results.unwrap();
        assert!(!r.sequential);
        assert_eq!(r.tuning, 5000.0);
        assert_eq!(r.test(), crate::stats::TestKind::FixedHorizon);
        assert_eq!(r.correction, CorrectionSetting::None);
        assert_eq!((r.expected_lift, r.cuped), (None, None));
    }

    #[test]
    fn results_statistics_parse() {
        let src = format!(
            "{WINBACK}\n[results]\nsequential = true\ntuning = 20000\ncorrection = \"bh\"\n\
             expected_lift = 0.1\ncuped = {{ days = 30 }}\n"
        );
        let r = Campaign::parse("c.toml", &src).unwrap().results.unwrap();
        assert_eq!(
            r.test(),
            crate::stats::TestKind::Sequential { tuning: 20000.0 }
        );
        assert_eq!(
            r.correction.get(),
            crate::stats::Correction::BenjaminiHochberg
        );
        assert_eq!(r.expected_lift, Some(0.1));
        assert_eq!(r.cuped, Some(Cuped { days: 30 }));
    }

    #[test]
    fn cuped_without_a_goal_or_a_revenue_event_is_refused_at_its_line() {
        let goal = WINBACK
            .lines()
            .find(|l| l.starts_with("goal"))
            .expect("the example has a goal");
        let src = format!(
            "{}\n[results]\ncuped = {{ days = 30 }}\n",
            WINBACK.replace(goal, "")
        );
        let e = Campaign::parse("c.toml", &src).unwrap_err();
        assert!(e.to_string().contains("add `goal = "), "{e}");
        let at = src.lines().position(|l| l.starts_with("cuped")).unwrap() + 1;
        assert_eq!(e.line_col().0, at, "{e}");
        // A revenue event is enough.
        let ok = src.replace(
            "[results]\n",
            "[results]\nrevenue_event = \"order_placed\"\n",
        );
        assert!(Campaign::parse("c.toml", &ok).is_ok());
    }

    #[test]
    fn bad_results_statistics_say_what_to_write() {
        for (line, says) in [
            ("correction = \"bonferroni\"", "use \"none\", \"holm\""),
            ("tuning = 0", "not a positive number"),
            ("tuning = -5", "not a positive number"),
            ("expected_lift = 0", "write 0.1 for +10%"),
            ("expected_lift = -0.2", "write 0.1 for +10%"),
            ("cuped = { days = 0 }", "1 to 365 days"),
            ("cuped = { days = 366 }", "1 to 365 days"),
            ("cuped = { weeks = 2 }", "unknown field `weeks`"),
            ("sequential = \"yes\"", "sequential"),
        ] {
            let src = format!("{WINBACK}\n[results]\n{line}\n");
            let e = Campaign::parse("c.toml", &src).unwrap_err();
            assert!(e.to_string().contains(says), "{line}: {e}");
            let at = src.lines().position(|l| l == line).unwrap() + 1;
            assert_eq!(e.line_col().0, at, "{line}: {e}");
        }
    }

    #[test]
    fn the_spec_example_parses() {
        let c = Campaign::parse("winback.toml", WINBACK).unwrap();
        assert_eq!(c.name, "winback-q4");
        assert_eq!(
            c.channels,
            vec![Channel::Push, Channel::Sms, Channel::Email]
        );
        assert_eq!(c.variant_names(), vec!["discount", "reminder"]);
        assert!(matches!(
            c.schedule,
            Schedule::Cron {
                timezone: chrono_tz::Tz::Asia__Shanghai,
                ..
            }
        ));
        assert_eq!(c.goal.as_ref().unwrap().within, Span::from_days(3));
        assert!((c.holdout.get() - 0.1).abs() < 1e-12);
    }

    #[test]
    fn a_variant_without_content_for_a_channel_is_refused_at_its_name() {
        let src = WINBACK.replace("sms   = { template = \"winback/reminder.sms.hbs\" }\n", "");
        let e = Campaign::parse("winback.toml", &src).unwrap_err();
        assert!(
            e.message.contains("variant `reminder` has no sms content"),
            "{e}"
        );
        assert_eq!(
            e.line_col().0,
            src.lines()
                .position(|l| l.contains("\"reminder\""))
                .unwrap()
                + 1
        );
    }

    #[test]
    fn a_bad_cron_says_how_to_write_one() {
        let src = WINBACK.replace("0 0 10 * * Tue", "0 10 * * 2");
        let e = Campaign::parse("winback.toml", &src).unwrap_err();
        assert!(e.message.contains("seconds first"), "{e}");
        assert_eq!(e.line_col().0, 6);
    }

    #[test]
    fn a_misspelt_schedule_time_zone_is_named_with_the_close_one() {
        let src = WINBACK.replace(
            "timezone = \"Asia/Shanghai\" }",
            "timezone = \"Asia/Shanghi\" }",
        );
        assert_ne!(src, WINBACK);
        let e = Campaign::parse("winback.toml", &src).unwrap_err();
        assert!(
            e.message.contains("unknown time zone `Asia/Shanghi`"),
            "{e}"
        );
        assert!(e.message.contains("did you mean \"Asia/Shanghai\"?"), "{e}");
        assert!(e.message.contains("IANA name"), "{e}");
        assert!(!e.message.contains("untagged"), "{e}");
        assert_eq!(e.line_col().0, 6);
    }

    #[test]
    fn a_cron_hour_out_of_range_says_what_is_valid() {
        let src = WINBACK.replace("0 0 10 * * Tue", "0 0 24 * * Tue");
        let e = Campaign::parse("winback.toml", &src).unwrap_err();
        assert!(e.message.contains("hours `24` is out of range"), "{e}");
        assert!(e.message.contains("hours are 0 to 23"), "{e}");
        assert!(!e.message.contains("less than 23"), "{e}");
        // 23 is an hour; a range and a step are checked by value, not by step.
        let ok = WINBACK.replace("0 0 10 * * Tue", "0 0 9-23/2 * * Tue");
        Campaign::parse("winback.toml", &ok).unwrap();
        let month = WINBACK.replace("0 0 10 * * Tue", "0 0 10 1 13 *");
        let e = Campaign::parse("winback.toml", &month).unwrap_err();
        assert!(e.message.contains("month `13` is out of range"), "{e}");
    }

    #[test]
    fn decide_by_defaults_to_twice_decide_after_and_is_not_earlier() {
        let c = Campaign::parse("winback.toml", WINBACK).unwrap();
        assert_eq!(
            c.rollout.as_ref().unwrap().decide_by(),
            Span::from_secs(48 * 3600)
        );
        let src = WINBACK.replace(
            "decide_after = \"24h\"",
            "decide_after = \"24h\"\ndecide_by = \"30h\"",
        );
        let c = Campaign::parse("winback.toml", &src).unwrap();
        assert_eq!(
            c.rollout.as_ref().unwrap().decide_by(),
            Span::from_secs(30 * 3600)
        );
        let src = WINBACK.replace(
            "decide_after = \"24h\"",
            "decide_after = \"24h\"\ndecide_by = \"2h\"",
        );
        let e = Campaign::parse("winback.toml", &src).unwrap_err();
        assert!(e.message.contains("before decide_after"), "{e}");
    }

    #[test]
    fn fingerprints_change_with_weights_and_name() {
        let c = Campaign::parse("winback.toml", WINBACK).unwrap();
        assert_eq!(
            c.assignment_fingerprint(),
            "winback-q4;holdout=0.1;discount=1,reminder=1"
        );
        let heavier =
            Campaign::parse("w.toml", &WINBACK.replacen("weight = 1", "weight = 3", 1)).unwrap();
        assert_ne!(heavier.arms_fingerprint(), c.arms_fingerprint());
        let renamed =
            Campaign::parse("w.toml", &WINBACK.replace("winback-q4", "winback-q1")).unwrap();
        assert_eq!(renamed.arms_fingerprint(), c.arms_fingerprint());
        assert_ne!(renamed.assignment_fingerprint(), c.assignment_fingerprint());
    }

    #[test]
    fn holdout_must_be_a_fraction() {
        let src = WINBACK.replace("holdout = 0.10", "holdout = 10");
        let e = Campaign::parse("winback.toml", &src).unwrap_err();
        assert!(e.message.contains("not a fraction"), "{e}");
    }

    #[test]
    fn unknown_segment_suggests_the_close_one() {
        let c = Campaign::parse(
            "winback.toml",
            &WINBACK.replace("lapsed_buyers", "lapsed_buyer"),
        )
        .unwrap();
        let seg = Segment::parse(
            "s.toml",
            "name = \"lapsed_buyers\"\nwhere = 'attrs.x == 1'\n",
        );
        let mut segs = BTreeMap::new();
        if let Ok(seg) = seg {
            segs.insert(seg.name.clone(), seg);
        }
        let (_, msg, help) = c
            .check_references(&segs, &HeraldConfig::default())
            .unwrap_err();
        assert!(msg.contains("unknown segment `lapsed_buyer`"));
        assert_eq!(help.as_deref(), Some("did you mean `lapsed_buyers`?"));
    }
}
