//! Builds the [`Report`] from the scan's groups, with no IO: per arm counts
//! and SPEC's rates, each variant against its control, the sample-ratio check
//! against the weights each run was planned with, the global holdout, the
//! recorded rollouts, and the sentences that say it all in words.
//!
//! The unit is a message: one contact in one run. Messages of contacts in the
//! global holdout (`suppressed (global_holdout)`) are outside the campaign's
//! experiment: each arm counts them apart, and they are the control of the
//! global holdout report.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, SecondsFormat};
use herald_domain::config::Campaign;
use herald_domain::stats::{
    self, ArmCounts, Comparison, Correction, Measure, MetricArm, MetricComparison, Srm, TestKind,
};
use herald_domain::types::SuppressReason;
use herald_engine::plan::HOLDOUT_ARM;
use herald_engine::rollout::{self, WAITING_ARM, is_rollout_arm};
use serde::Serialize;
use serde_json::Value as Json;

use super::words;
use super::{
    ARPU_DAYS, RatioCupedTally, ReportData, ReportFilter, ResultsTally, RolloutRecord, RunRow,
    Tally,
};

/// The metric every comparison is on (SPEC section 5: converted / assigned).
const METRIC: &str = "conversion";
/// Retention in days 1-7 after the message (`[results] retention_event`).
const RETENTION_D1_7: &str = "retention_d1_7";
/// Retention in days 8-30 after the message.
const RETENTION_D8_30: &str = "retention_d8_30";
/// Revenue in the 30 days after the message per assigned contact (a mean metric).
const ARPU: &str = "arpu";
/// Revenue within the LTV horizon per assigned contact (a mean metric).
const LTV: &str = "ltv";
/// The goal's revenue per converting contact (a ratio metric).
const REVENUE_PER_CONVERTER: &str = "revenue_per_converter";
/// Clicks per delivered message (a ratio metric).
const CLICKS_PER_DELIVERED: &str = "clicks_per_delivered";

/// What the scan counted for one (run, arm, status, reason).
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    /// The run.
    pub run_id: i64,
    /// Variant name or `holdout`.
    pub arm: String,
    /// The message status.
    pub status: String,
    /// The reason of a suppression or cancellation.
    pub reason: Option<String>,
    /// The counts.
    pub tally: Tally,
}

impl Group {
    fn in_global_holdout(&self) -> bool {
        self.status == "suppressed"
            && self.reason.as_deref() == Some(SuppressReason::GlobalHoldout.as_str())
    }
}

/// What the report takes from the config and the clock.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportSettings {
    /// The campaign's name.
    pub campaign: String,
    /// `marketing` or `transactional`, from the config (the database's word wins).
    pub kind: Option<String>,
    /// The conversion goal; without one there is nothing to compare.
    pub goal: Option<GoalEcho>,
    /// Variant names in file order.
    pub variants: Vec<String>,
    /// Each arm's share of the audience under the current config (holdout included),
    /// for runs whose own weights are unknown.
    pub shares: Option<Vec<(String, f64)>>,
    /// `[defaults].global_holdout`.
    pub global_holdout: f64,
    /// `[results]`: the seeds' metrics asked for.
    pub results: Option<ResultsEcho>,
    /// `[results] sequential`: which intervals and p-values the report shows.
    pub test: TestKind,
    /// `[results] correction`: for the number of comparisons.
    pub correction: Correction,
    /// `[results] cuped`: the pre-period window in days; `None` without CUPED.
    pub cuped: Option<u32>,
    /// The report's instant (ms).
    pub now: i64,
}

impl ReportSettings {
    /// Settings for `name`, from its config if it has one.
    pub fn new(name: &str, campaign: Option<&Campaign>, global_holdout: f64, now: i64) -> Self {
        let shares = campaign.map(|c| {
            let weights: Vec<(String, f64)> = c
                .variants
                .iter()
                .map(|v| (v.name.get_ref().as_str().to_string(), v.weight))
                .collect();
            shares_of(c.holdout.get(), &weights)
        });
        Self {
            campaign: name.to_string(),
            kind: campaign.map(|c| {
                match c.kind {
                    herald_domain::types::CampaignKind::Marketing => "marketing",
                    herald_domain::types::CampaignKind::Transactional => "transactional",
                }
                .to_string()
            }),
            goal: campaign.and_then(|c| {
                let g = c.goal.as_ref()?;
                Some(GoalEcho {
                    event: g.event.clone(),
                    within: g.within.to_string(),
                    within_ms: c.goal_window_ms()?,
                })
            }),
            variants: campaign
                .map(|c| c.variant_names().into_iter().map(str::to_string).collect())
                .unwrap_or_default(),
            shares,
            global_holdout,
            results: campaign.and_then(|c| {
                let r = c.results.as_ref()?;
                Some(ResultsEcho {
                    retention_event: r.retention_event.clone(),
                    revenue_event: r.revenue_event.clone(),
                    arpu_days: ARPU_DAYS,
                    ltv_horizon: r.ltv_horizon.to_string(),
                    ltv_horizon_ms: r.ltv_horizon.millis(),
                })
            }),
            test: campaign
                .and_then(|c| c.results.as_ref())
                .map_or(TestKind::FixedHorizon, |r| r.test()),
            correction: campaign
                .and_then(|c| c.results.as_ref())
                .map_or(Correction::None, |r| r.correction.get()),
            cuped: campaign
                .and_then(|c| c.results.as_ref())
                .and_then(|r| r.cuped)
                .map(|c| c.days),
            now,
        }
    }
}

/// Which intervals and p-values the report shows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatisticsEcho {
    /// `fixed_horizon` (valid read once, at the end) or `sequential`
    /// (always valid: read every day).
    pub test: &'static str,
    /// The sequential test's tuning; `null` for fixed horizon.
    pub tuning: Option<f64>,
    /// `none`, `holm` (Holm-Bonferroni) or `bh` (Benjamini-Hochberg), over
    /// each scope's comparisons: every variant-vs-control pair times every metric.
    pub correction: &'static str,
    /// `[results] cuped`: the days before each message whose goal events and
    /// revenue adjust conversion, ARPU and LTV; `null` without CUPED.
    pub cuped_days: Option<u32>,
    /// In words.
    pub sentence: String,
}

impl StatisticsEcho {
    fn of(settings: &ReportSettings) -> Self {
        let (test, tuning) = match settings.test {
            TestKind::FixedHorizon => ("fixed_horizon", None),
            TestKind::Sequential { tuning } => ("sequential", Some(tuning)),
        };
        Self {
            test,
            tuning,
            correction: match settings.correction {
                Correction::None => "none",
                Correction::Holm => "holm",
                Correction::BenjaminiHochberg => "bh",
            },
            cuped_days: settings.cuped,
            sentence: match settings.cuped {
                Some(days) => format!(
                    "{}; {}",
                    words::test_sentence(settings.test),
                    words::cuped_sentence(days)
                ),
                None => words::test_sentence(settings.test),
            },
        }
    }
}

/// `[results]` as the report applied it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResultsEcho {
    /// The activity event of retention.
    pub retention_event: Option<String>,
    /// The revenue event of ARPU and LTV.
    pub revenue_event: Option<String>,
    /// ARPU's span after the message, in days.
    pub arpu_days: i64,
    /// LTV's horizon after the message, as written (`90d`).
    pub ltv_horizon: String,
    /// The same in milliseconds.
    pub ltv_horizon_ms: i64,
}

/// Shares of the audience: `holdout`, then the rest split by weight.
fn shares_of(holdout: f64, weights: &[(String, f64)]) -> Vec<(String, f64)> {
    let total: f64 = weights.iter().map(|(_, w)| w).sum();
    let mut out: Vec<(String, f64)> = weights
        .iter()
        .map(|(name, w)| (name.clone(), (1.0 - holdout) * w / total))
        .collect();
    if holdout > 0.0 {
        out.push((HOLDOUT_ARM.to_string(), holdout));
    }
    out
}

/// The shares a run was planned with, read back from its assignment
/// fingerprint (`NAME;holdout=H;V1=W1,V2=W2`, see `Campaign::assignment_fingerprint`).
pub fn shares_from_fingerprint(fingerprint: &str) -> Option<Vec<(String, f64)>> {
    let mut parts = fingerprint.splitn(3, ';');
    let (_name, holdout, weights) = (parts.next()?, parts.next()?, parts.next()?);
    let holdout: f64 = holdout.strip_prefix("holdout=")?.parse().ok()?;
    if !(0.0..1.0).contains(&holdout) {
        return None;
    }
    let weights: Vec<(String, f64)> = weights
        .split(',')
        .map(|pair| {
            let (name, weight) = pair.rsplit_once('=')?;
            let weight: f64 = weight.parse().ok()?;
            (weight.is_finite() && weight > 0.0 && !name.is_empty())
                .then(|| (name.to_string(), weight))
        })
        .collect::<Option<_>>()?;
    (!weights.is_empty()).then(|| shares_of(holdout, &weights))
}

/// The report; `--format json` prints it as is (README: "The report's JSON").
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// The campaign's name.
    pub campaign: String,
    /// `marketing` or `transactional`.
    pub kind: String,
    /// When the report was made (RFC 3339, UTC).
    pub generated_at: String,
    /// Which runs it covers.
    pub filter: FilterEcho,
    /// The conversion goal.
    pub goal: Option<GoalEcho>,
    /// Secondary goals counted per arm.
    pub secondary_goals: Vec<String>,
    /// `[results]`: the seeds' metrics counted per arm; `null` without it.
    pub results: Option<ResultsEcho>,
    /// Which intervals and p-values the comparisons show.
    pub statistics: StatisticsEcho,
    /// Over every selected run.
    pub total: Scope,
    /// Each selected run, oldest first.
    pub runs: Vec<RunScope>,
    /// All of this campaign's marketing against the global holdout.
    pub global_holdout: Option<GlobalHoldoutReport>,
    /// Rollout decisions of the selected runs.
    pub rollouts: Vec<RolloutEcho>,
    /// Words about the whole report.
    pub notes: Vec<String>,
}

/// The filter, as applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FilterEcho {
    /// `--run`.
    pub run: Option<i64>,
    /// `--since`, as the instant used (RFC 3339).
    pub since: Option<String>,
    /// `--until`, as the instant used (exclusive).
    pub until: Option<String>,
    /// What the range selects runs by: always `started_at`.
    pub runs_by: &'static str,
}

/// The conversion goal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GoalEcho {
    /// The event that counts.
    pub event: String,
    /// The window after the planned send time, as written (`3d`).
    pub within: String,
    /// The window in milliseconds from a contact's first message: `within`,
    /// plus a series' step delays (`Campaign::goal_window_ms`).
    pub within_ms: i64,
}

/// One run's part of the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunScope {
    /// The run.
    pub run: RunEcho,
    /// Its numbers.
    #[serde(flatten)]
    pub scope: Scope,
}

/// A run, as the report names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunEcho {
    /// Its id.
    pub id: i64,
    /// When it started: its audience snapshot (RFC 3339).
    pub started_at: String,
    /// The instant it was scheduled for.
    pub scheduled_at: String,
    /// `planning`, `running`, `paused`, `done`, `cancelled`.
    pub state: String,
    /// What started it.
    pub origin: String,
    /// When its last message was sent, once done.
    pub finished_at: Option<String>,
}

/// The numbers of one scope: the total, or one run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Scope {
    /// Messages in the scope, the global holdout's included.
    pub messages: u64,
    /// The arm every variant is compared with: `holdout`, or the first variant.
    pub control: Option<String>,
    /// Per arm: variants in file order, then the holdout.
    pub arms: Vec<ArmReport>,
    /// Each variant against the control, then (with a holdout and two or
    /// more variants) each variant against the first.
    pub comparisons: Vec<ComparisonReport>,
    /// The same pairs on retention (`retention_d1_7`, then `retention_d8_30`),
    /// with `[results] retention_event`.
    pub results_comparisons: Vec<ComparisonReport>,
    /// The same pairs on mean and ratio metrics, with `[results]`: `arpu` and
    /// `ltv` (with `revenue_event`), `revenue_per_converter` (with a goal),
    /// `clicks_per_delivered`.
    pub metric_comparisons: Vec<MetricComparisonReport>,
    /// How many comparisons the p-values were corrected for (0 without a correction).
    pub corrected_for: usize,
    /// Do the arms' sizes fit the weights? `None` when there is nothing to test.
    pub srm: Option<SrmReport>,
    /// When the goal window of the latest message closes (RFC 3339).
    pub goal_window_closes_at: Option<String>,
    /// Conversions may still come in.
    pub goal_window_open: bool,
    /// The scope in words.
    pub summary: Vec<String>,
}

/// One arm of a scope. Everything but `global_holdout` leaves out the
/// global holdout's messages.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ArmReport {
    /// Variant name, or `holdout`.
    pub arm: String,
    /// The control group.
    pub holdout: bool,
    /// Its share of the audience under the weights (of the global holdout's rest).
    pub expected_share: Option<f64>,
    /// Messages: one per contact per run.
    pub assigned: u64,
    /// Accepted by a provider, whatever came after (`sent_at` recorded).
    pub sent: u64,
    /// Status `delivered`.
    pub delivered: u64,
    /// Status `bounced`.
    pub bounced: u64,
    /// Status `failed`.
    pub failed: u64,
    /// Status `unknown`: may have reached the provider; never resent.
    pub unknown: u64,
    /// Status `planned` or `sending`: not sent yet.
    pub pending: u64,
    /// Status `held_out`: the control group, measured and never sent.
    pub held_out: u64,
    /// Status `suppressed`.
    pub suppressed: u64,
    /// `suppressed` by reason.
    pub suppressed_by_reason: BTreeMap<String, u64>,
    /// Status `cancelled`.
    pub cancelled: u64,
    /// `cancelled` by reason.
    pub cancelled_by_reason: BTreeMap<String, u64>,
    /// Every status, as stored.
    pub by_status: BTreeMap<String, u64>,
    /// Messages of contacts in the global holdout: not in `assigned`.
    pub global_holdout: u64,
    /// Opened by a person.
    pub opened: u64,
    /// Fetched by a privacy proxy or scanner (a message may also be in `opened`).
    pub machine_opened: u64,
    /// Clicked.
    pub clicked: u64,
    /// Unsubscribed from.
    pub unsubscribed: u64,
    /// Marked as spam.
    pub complained: u64,
    /// Had a goal event within the window (whatever the status: intention to treat).
    pub converted: u64,
    /// Sum of the goal events' values.
    pub revenue: f64,
    /// `revenue / assigned`.
    pub revenue_per_assigned: Option<f64>,
    /// SPEC's rates.
    pub rates: Rates,
    /// Each secondary goal, in config order.
    pub secondary: Vec<SecondaryReport>,
    /// The seeds' metrics (`[results]`); `null` without it.
    pub results: Option<ArmResults>,
    /// For a rollout's messages outside the test: waiting for the decision,
    /// or released to the winner; `null` for a tested variant or the holdout.
    pub rollout: Option<RolloutArm>,
}

/// A rollout's arm: the rest of the audience, in no tested variant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RolloutArm {
    /// `waiting` (for the decision) or `released` (to the winner).
    pub state: &'static str,
    /// The winner they got, once released.
    pub variant: Option<String>,
}

impl RolloutArm {
    fn of(arm: &str) -> Option<Self> {
        if arm == WAITING_ARM {
            return Some(Self {
                state: "waiting",
                variant: None,
            });
        }
        is_rollout_arm(arm).then(|| Self {
            state: "released",
            variant: Some(rollout::variant_of(arm).to_string()),
        })
    }
}

/// SPEC section 5's rates; `None` where the denominator is 0.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Rates {
    /// `delivered / sent`.
    pub delivery: Option<f64>,
    /// `opened / delivered`.
    pub open: Option<f64>,
    /// `clicked / delivered`.
    pub click: Option<f64>,
    /// `converted / assigned`.
    pub conversion: Option<f64>,
}

/// The seeds' metrics of an arm: every window counts from a message's
/// planned send time, over the arm's contacts whatever their status
/// (intention to treat, like conversion); a metric whose event `[results]`
/// does not name is `null`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ArmResults {
    /// Contacts counted: the denominator.
    pub contacts: u64,
    /// Contacts with the retention event in days 1-7 after the message.
    pub retained_d1_7: Option<u64>,
    /// `retained_d1_7 / contacts`.
    pub retention_d1_7: Option<f64>,
    /// Contacts with the retention event in days 8-30 after the message.
    pub retained_d8_30: Option<u64>,
    /// `retained_d8_30 / contacts`.
    pub retention_d8_30: Option<f64>,
    /// The revenue event's values in the 30 days after the message.
    pub revenue_30d: Option<f64>,
    /// `revenue_30d / contacts`.
    pub arpu: Option<f64>,
    /// The revenue event's values within `ltv_horizon` after the message.
    pub revenue_ltv: Option<f64>,
    /// `revenue_ltv / contacts`.
    pub ltv: Option<f64>,
}

impl ArmResults {
    fn of(t: &ResultsTally, spec: &ResultsEcho) -> Self {
        let per = |x: f64| (t.messages > 0).then(|| x / t.messages as f64);
        let retention = spec.retention_event.is_some();
        let revenue = spec.revenue_event.is_some();
        Self {
            contacts: t.messages,
            retained_d1_7: retention.then_some(t.retained_d1_7),
            retention_d1_7: ratio(t.retained_d1_7, t.messages).filter(|_| retention),
            retained_d8_30: retention.then_some(t.retained_d8_30),
            retention_d8_30: ratio(t.retained_d8_30, t.messages).filter(|_| retention),
            revenue_30d: revenue.then_some(t.revenue_30d),
            arpu: per(t.revenue_30d).filter(|_| revenue),
            revenue_ltv: revenue.then_some(t.revenue_ltv),
            ltv: per(t.revenue_ltv).filter(|_| revenue),
        }
    }
}

/// One secondary goal of an arm, counted like the goal.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SecondaryReport {
    /// The event.
    pub event: String,
    /// Messages whose window holds the event.
    pub reached: u64,
    /// `reached / assigned`.
    pub rate: Option<f64>,
    /// Sum of those events' values.
    pub revenue: f64,
}

/// A variant against a control, on conversions.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ComparisonReport {
    /// The variant.
    pub variant: String,
    /// The arm it is measured against.
    pub control: String,
    /// `conversion` (converted / assigned), or in `results_comparisons`
    /// `retention_d1_7` or `retention_d8_30` (retained / contacts).
    pub metric: &'static str,
    /// The variant's (assigned, converted).
    pub variant_counts: ArmCounts,
    /// The control's (assigned, converted).
    pub control_counts: ArmCounts,
    /// The statistics (gbstats 0.8's), or why there are none; with
    /// `[results] sequential` the interval and p-value are the sequential ones.
    pub result: Comparison,
    /// With `[results] cuped`, on conversion: the same comparison
    /// regression-adjusted by each contact's goal events before the message
    /// (gbstats' `RegressionAdjustedStatistic`), with its variance reduction;
    /// the verdict, `p_value_adjusted` and the correction are then this one's.
    pub cuped: Option<MetricComparison>,
    /// The p-value corrected for the number of comparisons (`[results]
    /// correction`; the p-value itself without one); `null` without an estimate.
    pub p_value_adjusted: Option<f64>,
    /// `p_value_adjusted` below 0.05.
    pub significant: bool,
    /// The verdict in words.
    pub sentence: String,
}

/// A variant against a control on a mean or ratio metric (gbstats'
/// `SampleMeanStatistic` and `RatioStatistic`, delta method).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricComparisonReport {
    /// The variant.
    pub variant: String,
    /// The arm it is measured against.
    pub control: String,
    /// `arpu`, `ltv`, `revenue_per_converter` or `clicks_per_delivered`.
    pub metric: &'static str,
    /// `mean` (per assigned contact) or `ratio` (numerator over denominator, per arm).
    pub kind: &'static str,
    /// The variant's value of the metric; `null` for an empty arm.
    pub variant_value: Option<f64>,
    /// The control's.
    pub control_value: Option<f64>,
    /// The variant's sums the statistics come from.
    pub variant_sums: MetricArm,
    /// The control's.
    pub control_sums: MetricArm,
    /// Lift, interval, p-value and chance to beat, or why there are none.
    pub result: MetricComparison,
    /// As in [`ComparisonReport`].
    pub p_value_adjusted: Option<f64>,
    /// `p_value_adjusted` below 0.05.
    pub significant: bool,
    /// The verdict in words.
    pub sentence: String,
}

/// The sample-ratio check of a scope.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SrmReport {
    /// The chi-squared test.
    #[serde(flatten)]
    pub test: Srm,
    /// Each arm's expected size under the weights.
    pub expected: BTreeMap<String, f64>,
    /// `run` (the weights each run was planned with) or `config` (today's).
    pub weights_from: &'static str,
    /// The verdict in words.
    pub sentence: String,
}

/// This campaign's marketing against the global holdout: the contacts it
/// reached or measured (its own holdout included: they still get other
/// marketing) against those no marketing reaches.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GlobalHoldoutReport {
    /// `[defaults].global_holdout` now.
    pub fraction: f64,
    /// Everyone outside the global holdout.
    pub marketing: HoldoutSide,
    /// The global holdout's messages.
    pub global_holdout: HoldoutSide,
    /// Marketing against the global holdout, on conversions.
    pub comparison: Option<ComparisonReport>,
    /// Does the global holdout's size fit its fraction?
    pub srm: Option<SrmReport>,
    /// In words.
    pub summary: Vec<String>,
}

/// One side of the global holdout report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HoldoutSide {
    /// Messages.
    pub messages: u64,
    /// Converted.
    pub converted: u64,
    /// Revenue.
    pub revenue: f64,
    /// `converted / messages`.
    pub conversion_rate: Option<f64>,
    /// `revenue / messages`.
    pub revenue_per_message: Option<f64>,
}

/// A recorded rollout decision.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RolloutEcho {
    /// The run.
    pub run_id: i64,
    /// When it decided (RFC 3339).
    pub decided_at: String,
    /// `conversion`, `click` or `open`.
    pub metric: String,
    /// The variant sent to the rest.
    pub chosen: String,
    /// The variant with the best rate.
    pub leader: String,
    /// The leader won outright.
    pub clear_winner: bool,
    /// Decided before every tested message's goal window had closed.
    pub window_cut_short: bool,
    /// The decision's own words.
    pub reason: String,
    /// The numbers it was made on.
    pub detail: Json,
    /// In words.
    pub sentence: String,
}

/// An instant as RFC 3339 (UTC, seconds).
pub(crate) fn rfc3339(ms: i64) -> String {
    DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
        .unwrap_or_else(|| ms.to_string())
}

/// (messages, converted) of a tally; a message converts at most once, so
/// this is always `Some`.
fn arm_counts(t: &Tally) -> Option<ArmCounts> {
    ArmCounts::new(t.messages, t.converted).ok()
}

fn ratio(numerator: u64, denominator: u64) -> Option<f64> {
    (denominator > 0).then(|| numerator as f64 / denominator as f64)
}

/// Everything counted for one arm of one scope.
#[derive(Debug, Clone, Default)]
struct ArmAcc {
    /// Outside the global holdout.
    tally: Tally,
    by_status: BTreeMap<String, u64>,
    suppressed_by_reason: BTreeMap<String, u64>,
    cancelled_by_reason: BTreeMap<String, u64>,
    /// The global holdout's messages.
    global: Tally,
    /// The seeds' metrics (the global holdout left out).
    results: ResultsTally,
    /// Clicked among the `delivered` messages: clicks per delivered's sum of products.
    clicked_delivered: u64,
    /// CUPED's sums of revenue per converting contact (`[results] cuped`).
    ratio_cuped: RatioCupedTally,
}

impl ArmAcc {
    fn add(&mut self, g: &Group) {
        if g.in_global_holdout() {
            self.global.add(&g.tally);
            return;
        }
        self.tally.add(&g.tally);
        if g.status == "delivered" {
            self.clicked_delivered += g.tally.clicked;
        }
        let n = g.tally.messages;
        *self.by_status.entry(g.status.clone()).or_default() += n;
        let reason = || g.reason.clone().unwrap_or_else(|| "unknown".to_string());
        match g.status.as_str() {
            "suppressed" => *self.suppressed_by_reason.entry(reason()).or_default() += n,
            "cancelled" => *self.cancelled_by_reason.entry(reason()).or_default() += n,
            _ => {}
        }
    }

    fn merge(&mut self, other: &ArmAcc) {
        self.tally.add(&other.tally);
        self.results.add(&other.results);
        self.ratio_cuped.add(&other.ratio_cuped);
        self.global.add(&other.global);
        self.clicked_delivered += other.clicked_delivered;
        for (mine, theirs) in [
            (&mut self.by_status, &other.by_status),
            (&mut self.suppressed_by_reason, &other.suppressed_by_reason),
            (&mut self.cancelled_by_reason, &other.cancelled_by_reason),
        ] {
            for (k, v) in theirs {
                *mine.entry(k.clone()).or_default() += v;
            }
        }
    }

    fn status(&self, s: &str) -> u64 {
        self.by_status.get(s).copied().unwrap_or(0)
    }

    fn counts(&self) -> Option<ArmCounts> {
        arm_counts(&self.tally)
    }

    /// (contacts, retained) on retention in days 1-7 or 8-30.
    fn retention_counts(&self, late: bool) -> Option<ArmCounts> {
        let r = &self.results;
        let k = if late {
            r.retained_d8_30
        } else {
            r.retained_d1_7
        };
        ArmCounts::new(r.messages, k).ok()
    }

    /// Conversion's sums for CUPED: converted against the goal event in the
    /// window before the message, over the `[results]` scan's contacts.
    fn cuped_conversion(&self) -> MetricArm {
        let (n, c) = (self.results.messages, &self.results.cuped);
        MetricArm::Adjusted {
            n,
            post: Measure::Proportion {
                n,
                sum: c.converted as f64,
            },
            pre: Measure::Proportion {
                n,
                sum: c.pre_converted as f64,
            },
            sum_of_products: c.both_converted as f64,
        }
    }

    /// The sums of a mean or ratio metric (`ARPU`, `LTV`,
    /// `REVENUE_PER_CONVERTER`, else clicks per delivered); with `cuped`,
    /// ARPU and LTV are adjusted by the revenue before the message, and with
    /// `ratio_cuped` revenue per converting contact by the goal's revenue and
    /// conversions before it.
    fn metric_arm(&self, metric: &str, cuped: bool, ratio_cuped: bool) -> MetricArm {
        let r = &self.results;
        let t = &self.tally;
        let c = &r.cuped;
        let revenue = |sum: f64, sum_squares: f64| Measure::Mean {
            n: r.messages,
            sum,
            sum_squares,
        };
        // ARPU and LTV: the revenue after the message, and its product with
        // the revenue before it (CUPED's covariate).
        let after = match metric {
            ARPU => Some((
                revenue(r.revenue_30d, r.revenue_30d_squares),
                c.pre_revenue_x_30d,
            )),
            LTV => Some((
                revenue(r.revenue_ltv, r.revenue_ltv_squares),
                c.pre_revenue_x_ltv,
            )),
            _ => None,
        };
        if let Some((post, products)) = after {
            return if cuped {
                MetricArm::Adjusted {
                    n: r.messages,
                    post,
                    pre: revenue(c.pre_revenue, c.pre_revenue_squares),
                    sum_of_products: products,
                }
            } else {
                MetricArm::Plain { measure: post }
            };
        }
        let share = |n: u64, k: u64| Measure::Proportion { n, sum: k as f64 };
        if metric == REVENUE_PER_CONVERTER && ratio_cuped {
            let c = &self.ratio_cuped;
            let n = c.contacts;
            let spend = |sum: f64, sum_squares: f64| Measure::Mean {
                n,
                sum,
                sum_squares,
            };
            return MetricArm::AdjustedRatio {
                n,
                numerator: spend(c.revenue, c.revenue_squares),
                denominator: share(n, c.converted),
                pre_numerator: spend(c.pre_revenue, c.pre_revenue_squares),
                pre_denominator: share(n, c.pre_converted),
                products: c.products,
            };
        }
        match metric {
            // A message has revenue only when it converted (attribution sets
            // both together), so revenue x converted sums to the revenue.
            REVENUE_PER_CONVERTER => MetricArm::Ratio {
                n: t.messages,
                numerator: Measure::Mean {
                    n: t.messages,
                    sum: t.revenue,
                    sum_squares: t.revenue_squares,
                },
                denominator: share(t.messages, t.converted),
                sum_of_products: t.revenue,
            },
            _ => MetricArm::Ratio {
                n: t.messages,
                numerator: share(t.messages, t.clicked),
                denominator: share(t.messages, self.status("delivered")),
                sum_of_products: self.clicked_delivered as f64,
            },
        }
    }

    fn report(
        &self,
        arm: &str,
        expected_share: Option<f64>,
        goals: &[String],
        results: Option<&ResultsEcho>,
    ) -> ArmReport {
        let t = &self.tally;
        let delivered = self.status("delivered");
        ArmReport {
            arm: arm.to_string(),
            holdout: arm == HOLDOUT_ARM,
            expected_share,
            assigned: t.messages,
            sent: t.sent,
            delivered,
            bounced: self.status("bounced"),
            failed: self.status("failed"),
            unknown: self.status("unknown"),
            pending: self.status("planned") + self.status("sending"),
            held_out: self.status("held_out"),
            suppressed: self.status("suppressed"),
            suppressed_by_reason: self.suppressed_by_reason.clone(),
            cancelled: self.status("cancelled"),
            cancelled_by_reason: self.cancelled_by_reason.clone(),
            by_status: self.by_status.clone(),
            global_holdout: self.global.messages,
            opened: t.opened,
            machine_opened: t.machine_opened,
            clicked: t.clicked,
            unsubscribed: t.unsubscribed,
            complained: t.complained,
            converted: t.converted,
            revenue: t.revenue,
            revenue_per_assigned: (t.messages > 0).then(|| t.revenue / t.messages as f64),
            rates: Rates {
                delivery: ratio(delivered, t.sent),
                open: ratio(t.opened, delivered),
                click: ratio(t.clicked, delivered),
                conversion: ratio(t.converted, t.messages),
            },
            secondary: goals
                .iter()
                .enumerate()
                .map(|(i, event)| {
                    let (reached, revenue) = t.secondary.get(i).copied().unwrap_or((0, 0.0));
                    SecondaryReport {
                        event: event.clone(),
                        reached,
                        rate: ratio(reached, t.messages),
                        revenue,
                    }
                })
                .collect(),
            results: results.map(|spec| ArmResults::of(&self.results, spec)),
            rollout: RolloutArm::of(arm),
        }
    }
}

/// The arms of one scope, by name.
type Arms = BTreeMap<String, ArmAcc>;

/// A scope's arms and what their sizes should be.
struct ScopeInput<'a> {
    arms: &'a Arms,
    /// Expected share of each arm (sums to 1), if known.
    shares: Option<BTreeMap<String, f64>>,
    /// Expected sizes for the sample-ratio check, if known.
    expected: Option<BTreeMap<String, f64>>,
    weights_from: &'static str,
    /// A rollout's run: the sample-ratio check is over the tested variants
    /// only (the holdout is whole, the variants a test fraction of the rest).
    variants_only: bool,
}

fn comparison(
    variant: &str,
    control: &str,
    variant_counts: ArmCounts,
    control_counts: ArmCounts,
    test: TestKind,
) -> ComparisonReport {
    comparison_on(
        METRIC,
        variant,
        control,
        variant_counts,
        control_counts,
        test,
    )
}

/// The comparison on `metric`, a proportion: `conversion` or a retention window.
fn comparison_on(
    metric: &'static str,
    variant: &str,
    control: &str,
    variant_counts: ArmCounts,
    control_counts: ArmCounts,
    test: TestKind,
) -> ComparisonReport {
    let result = stats::compare_with(control_counts, variant_counts, test);
    let mut c = ComparisonReport {
        variant: variant.to_string(),
        control: control.to_string(),
        metric,
        variant_counts,
        control_counts,
        result,
        cuped: None,
        p_value_adjusted: None,
        significant: false,
        sentence: String::new(),
    };
    c.judge(result.estimate().map(|e| e.p_value), false);
    c
}

impl ComparisonReport {
    /// The numbers shown and judged: relative lift, its interval, p-value
    /// and chance to beat; CUPED's when adjusted, else the comparison's own;
    /// `None` without an estimate.
    pub fn numbers(&self) -> Option<(f64, herald_domain::stats::Interval, f64, f64)> {
        match &self.cuped {
            Some(c) => c
                .estimate()
                .map(|e| (e.rel_lift, e.rel_ci, e.p_value, e.chance_to_beat)),
            None => self
                .result
                .estimate()
                .map(|e| (e.rel_lift, e.rel_ci, e.p_value, e.chance_to_beat)),
        }
    }

    /// The p-value the verdict is on: CUPED's when adjusted.
    pub fn p_value(&self) -> Option<f64> {
        self.numbers().map(|(_, _, p, _)| p)
    }

    /// Adds CUPED's adjustment of this conversion comparison and judges on it.
    fn adjust(&mut self, control: &MetricArm, variant: &MetricArm, test: TestKind) {
        // Both arms' sums are built alike, so the domain never refuses them.
        self.cuped = stats::compare_metric(control, variant, test).ok();
        self.judge(self.p_value(), false);
    }

    /// Sets the verdict on `adjusted` (the p-value, corrected if `corrected`).
    fn judge(&mut self, adjusted: Option<f64>, corrected: bool) {
        self.p_value_adjusted = adjusted;
        self.significant = adjusted.is_some_and(|p| p < words::SIGNIFICANCE);
        let what = match self.metric {
            RETENTION_D1_7 => "retention in days 1-7",
            RETENTION_D8_30 => "retention in days 8-30",
            _ => "conversions",
        };
        let (variant, control) = (
            words::arm_name(&self.variant, self.variant == HOLDOUT_ARM),
            words::arm_name(&self.control, self.control == HOLDOUT_ARM),
        );
        self.sentence = match &self.cuped {
            Some(cuped) => words::metric_sentence(
                &variant,
                &control,
                cuped,
                "conversions (CUPED-adjusted)",
                adjusted.filter(|_| corrected),
            ),
            None => words::comparison_sentence_adjusted(
                &variant,
                &control,
                &self.result,
                what,
                adjusted.filter(|_| corrected),
            ),
        };
        if let Some(e) = self.cuped.as_ref().and_then(|c| c.estimate()) {
            self.sentence.push_str(&words::variance_reduction_clause(e));
        }
    }
}

/// The value of a metric from its sums: a mean, or a ratio of sums.
fn metric_value(arm: &MetricArm) -> Option<f64> {
    match arm {
        MetricArm::Plain { measure } => (measure.n() > 0).then(|| measure.mean()),
        MetricArm::Ratio {
            numerator,
            denominator,
            ..
        } => (denominator.sum() > 0.0).then(|| numerator.sum() / denominator.sum()),
        MetricArm::Adjusted { post, .. } => (post.n() > 0).then(|| post.mean()),
        MetricArm::AdjustedRatio {
            numerator,
            denominator,
            ..
        } => (denominator.sum() > 0.0).then(|| numerator.sum() / denominator.sum()),
    }
}

/// A variant against a control on a mean or ratio `metric`.
fn metric_comparison(
    metric: &'static str,
    variant: (&str, MetricArm),
    control: (&str, MetricArm),
    test: TestKind,
) -> Option<MetricComparisonReport> {
    // Both arms' sums are built alike, so the domain never refuses them.
    let result = stats::compare_metric(&control.1, &variant.1, test).ok()?;
    let mut c = MetricComparisonReport {
        variant: variant.0.to_string(),
        control: control.0.to_string(),
        metric,
        kind: match metric {
            ARPU | LTV => "mean",
            _ => "ratio",
        },
        variant_value: metric_value(&variant.1),
        control_value: metric_value(&control.1),
        variant_sums: variant.1,
        control_sums: control.1,
        result,
        p_value_adjusted: None,
        significant: false,
        sentence: String::new(),
    };
    c.judge(result.estimate().map(|e| e.p_value), false);
    Some(c)
}

impl MetricComparisonReport {
    /// As [`ComparisonReport::judge`].
    fn judge(&mut self, adjusted: Option<f64>, corrected: bool) {
        self.p_value_adjusted = adjusted;
        self.significant = adjusted.is_some_and(|p| p < words::SIGNIFICANCE);
        let what = match self.metric {
            ARPU => "ARPU",
            LTV => "LTV",
            REVENUE_PER_CONVERTER => "revenue per converting contact",
            _ => "clicks per delivered message",
        };
        self.sentence = words::metric_sentence(
            &words::arm_name(&self.variant, self.variant == HOLDOUT_ARM),
            &words::arm_name(&self.control, self.control == HOLDOUT_ARM),
            &self.result,
            what,
            adjusted.filter(|_| corrected),
        );
        if let Some(e) = self.result.estimate() {
            self.sentence.push_str(&words::variance_reduction_clause(e));
        }
    }
}

/// Corrects the p-values of a scope's comparisons for their number (the
/// family: every pair times every metric) and judges each on its corrected
/// p-value; returns the family's size (0 without a correction).
fn correct(
    comparisons: &mut [ComparisonReport],
    results: &mut [ComparisonReport],
    metrics: &mut [MetricComparisonReport],
    correction: Correction,
) -> usize {
    if correction == Correction::None {
        return 0;
    }
    let p = |e: Option<f64>| e.unwrap_or(f64::NAN);
    let mut ps: Vec<f64> = comparisons
        .iter()
        .chain(results.iter())
        .map(|c| p(c.p_value()))
        .collect();
    ps.extend(
        metrics
            .iter()
            .map(|c| p(c.result.estimate().map(|e| e.p_value))),
    );
    let family = ps.iter().filter(|p| !p.is_nan()).count();
    let adjusted = stats::adjust_p_values(&ps, correction);
    let mut adjusted = adjusted.into_iter().map(|p| (!p.is_nan()).then_some(p));
    for c in comparisons.iter_mut().chain(results.iter_mut()) {
        c.judge(adjusted.next().flatten(), true);
    }
    for c in metrics.iter_mut() {
        c.judge(adjusted.next().flatten(), true);
    }
    family
}

fn srm_report(
    observed: &[(String, u64)],
    expected: &BTreeMap<String, f64>,
    weights_from: &'static str,
) -> Option<SrmReport> {
    let arms: Vec<(u64, f64)> = observed
        .iter()
        .map(|(arm, n)| (*n, expected.get(arm).copied().unwrap_or(0.0)))
        .collect();
    if arms.len() < 2 || arms.iter().all(|(n, _)| *n == 0) {
        return None;
    }
    let test = stats::srm(&arms);
    Some(SrmReport {
        sentence: words::srm_sentence(&test),
        test,
        expected: expected.clone(),
        weights_from,
    })
}

fn scope(
    input: ScopeInput<'_>,
    order: &[String],
    settings: &ReportSettings,
    goals: &[String],
) -> Scope {
    let empty = ArmAcc::default();
    let shown: Vec<&String> = order
        .iter()
        .filter(|arm| {
            let acc = input.arms.get(*arm).unwrap_or(&empty);
            let expected = input
                .shares
                .as_ref()
                .and_then(|s| s.get(*arm))
                .is_some_and(|s| *s > 0.0);
            acc.tally.messages > 0 || acc.global.messages > 0 || expected
        })
        .collect();
    let acc = |arm: &str| input.arms.get(arm).unwrap_or(&empty);
    let arms: Vec<ArmReport> = shown
        .iter()
        .map(|arm| {
            let share = input.shares.as_ref().and_then(|s| s.get(*arm)).copied();
            acc(arm).report(arm, share, goals, settings.results.as_ref())
        })
        .collect();
    let messages = arms.iter().map(|a| a.assigned + a.global_holdout).sum();

    // A rollout's waiting and released messages were not randomised against
    // the variants: they are shown, never compared.
    let variants: Vec<&str> = shown
        .iter()
        .map(|a| a.as_str())
        .filter(|a| *a != HOLDOUT_ARM && !is_rollout_arm(a))
        .collect();
    let has_holdout = shown.iter().any(|a| *a == HOLDOUT_ARM);
    let control = if has_holdout {
        Some(HOLDOUT_ARM.to_string())
    } else {
        variants.first().map(|v| v.to_string())
    };
    let mut pairs: Vec<(&str, &str)> = Vec::new();
    if has_holdout {
        pairs.extend(variants.iter().map(|v| (*v, HOLDOUT_ARM)));
    }
    if let Some((first, rest)) = variants.split_first()
        && (!has_holdout || !rest.is_empty())
    {
        pairs.extend(rest.iter().map(|v| (*v, *first)));
    }
    // CUPED only where every contact shown has its history stored. Those
    // planned before `cuped` was set have none; counting them as zero would
    // move the arms holding more of them (run 1 split 90/10, run 2 50/50):
    // a biased lift, not merely a noisier one.
    let (cuped_contacts, cuped_recorded) = shown.iter().fold((0, 0), |(n, k), arm| {
        let r = &acc(arm).results;
        (n + r.messages, k + r.cuped.recorded)
    });
    let cuped = settings.cuped.is_some() && cuped_recorded == cuped_contacts;
    // Revenue per converting contact also needs the goal's revenue before the
    // message, stored since migration m20261208_000130: the same rule.
    let (ratio_contacts, ratio_recorded) = shown.iter().fold((0, 0), |(n, k), arm| {
        let r = &acc(arm).ratio_cuped;
        (n + r.contacts, k + r.recorded)
    });
    let ratio_cuped = cuped && ratio_recorded == ratio_contacts;
    let mut comparisons = Vec::new();
    if settings.goal.is_some() {
        for (variant, control) in &pairs {
            if let (Some(v), Some(c)) = (acc(variant).counts(), acc(control).counts()) {
                let mut compared = comparison(variant, control, v, c, settings.test);
                if cuped {
                    compared.adjust(
                        &acc(control).cuped_conversion(),
                        &acc(variant).cuped_conversion(),
                        settings.test,
                    );
                }
                comparisons.push(compared);
            }
        }
    }
    // Retention is a proportion like conversion: the same statistics.
    let mut results_comparisons = Vec::new();
    if settings
        .results
        .as_ref()
        .is_some_and(|r| r.retention_event.is_some())
    {
        for (metric, late) in [(RETENTION_D1_7, false), (RETENTION_D8_30, true)] {
            for (variant, control) in &pairs {
                if let (Some(v), Some(c)) = (
                    acc(variant).retention_counts(late),
                    acc(control).retention_counts(late),
                ) {
                    results_comparisons.push(comparison_on(
                        metric,
                        variant,
                        control,
                        v,
                        c,
                        settings.test,
                    ));
                }
            }
        }
    }
    // Mean and ratio metrics come with `[results]`: ARPU and LTV need its
    // revenue event, revenue per converting contact a goal.
    let mut metric_comparisons = Vec::new();
    if let Some(r) = &settings.results {
        let mut metrics = Vec::new();
        if r.revenue_event.is_some() {
            metrics.extend([ARPU, LTV]);
        }
        if settings.goal.is_some() {
            metrics.push(REVENUE_PER_CONVERTER);
        }
        metrics.push(CLICKS_PER_DELIVERED);
        for metric in metrics {
            for (variant, control) in &pairs {
                // The holdout is never delivered anything: no clicks per delivered.
                if metric == CLICKS_PER_DELIVERED && *control == HOLDOUT_ARM {
                    continue;
                }
                let compare = |ratio_cuped: bool| {
                    metric_comparison(
                        metric,
                        (
                            *variant,
                            acc(variant).metric_arm(metric, cuped, ratio_cuped),
                        ),
                        (
                            *control,
                            acc(control).metric_arm(metric, cuped, ratio_cuped),
                        ),
                        settings.test,
                    )
                };
                let mut compared = compare(ratio_cuped);
                // Where gbstats has no adjusted estimate of the ratio (mostly
                // an arm without a converter in the window before: its
                // pre-period ratio is undefined), the plain ratio is shown,
                // marked unadjusted, as the report's CUPED sentence says.
                if ratio_cuped
                    && metric == REVENUE_PER_CONVERTER
                    && compared
                        .as_ref()
                        .is_some_and(|c| c.result.estimate().is_none())
                {
                    compared = compare(false);
                }
                metric_comparisons.extend(compared);
            }
        }
    }
    let corrected_for = correct(
        &mut comparisons,
        &mut results_comparisons,
        &mut metric_comparisons,
        settings.correction,
    );

    let observed: Vec<(String, u64)> = shown
        .iter()
        .filter(|arm| !(is_rollout_arm(arm) || input.variants_only && **arm == HOLDOUT_ARM))
        .map(|arm| ((*arm).clone(), acc(arm).tally.messages))
        .collect();
    let srm = input
        .expected
        .as_ref()
        .and_then(|expected| srm_report(&observed, expected, input.weights_from));

    let last_send = shown
        .iter()
        .filter_map(|arm| {
            let a = acc(arm);
            a.tally.last_send_at.max(a.global.last_send_at)
        })
        .max();
    let closes = settings
        .goal
        .as_ref()
        .zip(last_send)
        .map(|(g, last)| last.saturating_add(g.within_ms));
    let goal_window_open = closes.is_some_and(|c| c > settings.now);

    let mut summary = Vec::new();
    if let Some(s) = &srm {
        summary.push(s.sentence.clone());
    }
    summary.extend(comparisons.iter().map(|c| c.sentence.clone()));
    summary.extend(results_comparisons.iter().map(|c| c.sentence.clone()));
    summary.extend(metric_comparisons.iter().map(|c| c.sentence.clone()));
    if corrected_for > 0 {
        summary.extend(words::correction_sentence(
            settings.correction,
            corrected_for,
        ));
    }
    for a in arms.iter().filter(|a| a.assigned > 0) {
        match &a.rollout {
            Some(RolloutArm { variant: None, .. }) => summary.push(format!(
                "{} message(s) wait for the rollout decision: in no variant until then",
                a.assigned
            )),
            Some(RolloutArm {
                variant: Some(v), ..
            }) => summary.push(format!(
                "the rest of the audience, {} message(s), got {v} after the test (arm `{}`): \
                 shown apart and not compared, as only the test was randomised",
                a.assigned, a.arm
            )),
            None => {}
        }
    }
    if settings.goal.is_none() && messages > 0 {
        summary.push(
            "no goal is configured, so there are no conversions to compare (set goal = { event, within })"
                .to_string(),
        );
    }
    if let (true, Some(c), Some(g)) = (goal_window_open, closes, &settings.goal) {
        summary.push(format!(
            "conversions are still coming in: the {} goal window of the latest message closes at {}",
            g.within,
            rfc3339(c)
        ));
    }
    if let Some(r) = &settings.results {
        let last = shown
            .iter()
            .filter_map(|arm| acc(arm).results.last_send_at)
            .max();
        let span = [
            r.retention_event.as_ref().map(|_| 31 * super::DAY_MS),
            r.revenue_event
                .as_ref()
                .map(|_| r.ltv_horizon_ms.max(ARPU_DAYS * super::DAY_MS)),
        ]
        .into_iter()
        .flatten()
        .max();
        if let (Some(last), Some(span)) = (last, span)
            && last.saturating_add(span) > settings.now
        {
            summary.push(format!(
                "retention, ARPU and LTV are still coming in: their windows close at {}",
                rfc3339(last.saturating_add(span))
            ));
        }
    }
    if settings.cuped.is_some() && !cuped {
        summary.push(format!(
            "CUPED is not applied: {} of {cuped_contacts} contact(s) have no history recorded \
             (planned before `cuped` was set), and counting them as having none would bias the \
             lift; `--run` or `--since` runs planned with `cuped` show the adjusted figures",
            cuped_contacts - cuped_recorded
        ));
    } else if cuped && !ratio_cuped {
        summary.push(format!(
            "CUPED is not applied to revenue per converting contact: {} of {ratio_contacts} \
             contact(s) were planned before herald stored the goal's revenue before the message",
            ratio_contacts - ratio_recorded
        ));
    }
    let pending: u64 = arms.iter().map(|a| a.pending).sum();
    if pending > 0 {
        summary.push(format!("{pending} message(s) are not sent yet"));
    }

    Scope {
        messages,
        control,
        arms,
        comparisons,
        results_comparisons,
        metric_comparisons,
        corrected_for,
        srm,
        goal_window_closes_at: closes.map(rfc3339),
        goal_window_open,
        summary,
    }
}

/// The arms in the order the report shows them: the config's variants, then
/// variants the runs were planned with, the holdout, and any other arm seen.
fn arm_order(
    data: &ReportData,
    settings: &ReportSettings,
    run_shares: &[Option<Vec<(String, f64)>>],
) -> Vec<String> {
    let mut order: Vec<String> = settings.variants.clone();
    let push = |arm: &str, order: &mut Vec<String>| {
        if arm != HOLDOUT_ARM && !order.iter().any(|a| a == arm) {
            order.push(arm.to_string());
        }
    };
    for shares in run_shares.iter().flatten() {
        for (arm, _) in shares {
            push(arm, &mut order);
        }
    }
    let seen: BTreeSet<&str> = data.groups.iter().map(|g| g.arm.as_str()).collect();
    let known: BTreeSet<&str> = order.iter().map(String::as_str).collect();
    let extra: Vec<String> = seen
        .iter()
        .filter(|a| **a != HOLDOUT_ARM && !known.contains(*a))
        .map(|a| a.to_string())
        .collect();
    order.push(HOLDOUT_ARM.to_string());
    order.extend(extra);
    order
}

fn side(t: &Tally) -> HoldoutSide {
    HoldoutSide {
        messages: t.messages,
        converted: t.converted,
        revenue: t.revenue,
        conversion_rate: ratio(t.converted, t.messages),
        revenue_per_message: (t.messages > 0).then(|| t.revenue / t.messages as f64),
    }
}

fn global_holdout_report(total: &Arms, settings: &ReportSettings) -> GlobalHoldoutReport {
    let mut reached = Tally::default();
    let mut held = Tally::default();
    for acc in total.values() {
        reached.add(&acc.tally);
        held.add(&acc.global);
    }
    let counts = arm_counts(&reached).zip(arm_counts(&held));
    let comparison = settings.goal.as_ref().zip(counts).map(|(_, (r, h))| {
        let mut c = comparison("marketing", "global holdout", r, h, settings.test);
        c.sentence = words::comparison_sentence(
            "marketing (everyone outside the global holdout)",
            "the global holdout",
            &c.result,
        );
        c
    });
    let g = settings.global_holdout;
    let srm = (g > 0.0)
        .then(|| {
            let total = (reached.messages + held.messages) as f64;
            let expected = BTreeMap::from([
                ("marketing".to_string(), total * (1.0 - g)),
                ("global holdout".to_string(), total * g),
            ]);
            srm_report(
                &[
                    ("marketing".to_string(), reached.messages),
                    ("global holdout".to_string(), held.messages),
                ],
                &expected,
                "config",
            )
        })
        .flatten();
    let mut summary = Vec::new();
    if let Some(s) = &srm {
        summary.push(s.sentence.clone());
    }
    if g == 0.0 && held.messages > 0 {
        summary.push(
            "[defaults].global_holdout is 0 now, but these runs held contacts out: the fraction \
             changed, so their number is not checked"
                .to_string(),
        );
    }
    if let Some(c) = &comparison {
        summary.push(c.sentence.clone());
    }
    GlobalHoldoutReport {
        fraction: g,
        marketing: side(&reached),
        global_holdout: side(&held),
        comparison,
        srm,
        summary,
    }
}

fn rollout_echo(r: &RolloutRecord) -> RolloutEcho {
    let mut sentence = format!(
        "run {}: {} went to the rest of the audience on {} ({}",
        r.run_id, r.chosen, r.metric, r.reason
    );
    if r.window_cut_short {
        sentence.push_str(
            "; decided before every tested message's goal window had closed, on the outcomes so far",
        );
    }
    sentence.push(')');
    RolloutEcho {
        run_id: r.run_id,
        decided_at: rfc3339(r.decided_at),
        metric: r.metric.clone(),
        chosen: r.chosen.clone(),
        leader: r.leader.clone(),
        clear_winner: r.clear_winner,
        window_cut_short: r.window_cut_short,
        reason: r.reason.clone(),
        detail: r.detail.clone(),
        sentence,
    }
}

fn run_echo(r: &RunRow) -> RunEcho {
    RunEcho {
        id: r.id,
        started_at: rfc3339(r.started_at),
        scheduled_at: rfc3339(r.scheduled_at),
        state: r.state.clone(),
        origin: r.origin.clone(),
        finished_at: r.finished_at.map(rfc3339),
    }
}

/// Builds the report of `data` (read with `filter`) under `settings`.
pub fn build(data: &ReportData, settings: &ReportSettings, filter: &ReportFilter) -> Report {
    let goals = &data.secondary_goals;
    let run_shares: Vec<Option<Vec<(String, f64)>>> = data
        .runs
        .iter()
        .map(|r| shares_from_fingerprint(&r.fingerprint))
        .collect();
    let order = arm_order(data, settings, &run_shares);

    let mut per_run: BTreeMap<i64, Arms> = BTreeMap::new();
    for g in &data.groups {
        per_run
            .entry(g.run_id)
            .or_default()
            .entry(g.arm.clone())
            .or_default()
            .add(g);
    }
    for r in &data.results {
        per_run
            .entry(r.run_id)
            .or_default()
            .entry(r.arm.clone())
            .or_default()
            .results
            .add(&r.tally);
    }
    for r in &data.ratio_cuped {
        per_run
            .entry(r.run_id)
            .or_default()
            .entry(r.arm.clone())
            .or_default()
            .ratio_cuped
            .add(&r.tally);
    }
    let empty = Arms::new();
    let mut total = Arms::new();
    let mut total_expected: Option<BTreeMap<String, f64>> = Some(BTreeMap::new());
    let mut total_from_config = false;
    let mut runs = Vec::with_capacity(data.runs.len());
    let decided: BTreeSet<i64> = data.rollouts.iter().map(|r| r.run_id).collect();
    let with_rollout: BTreeSet<i64> = data
        .groups
        .iter()
        .filter(|g| is_rollout_arm(&g.arm))
        .map(|g| g.run_id)
        .collect();
    for (run, own) in data.runs.iter().zip(&run_shares) {
        let arms = per_run.get(&run.id).unwrap_or(&empty);
        for (arm, acc) in arms {
            total.entry(arm.clone()).or_default().merge(acc);
        }
        let (shares, weights_from) = match (own, &settings.shares) {
            (Some(s), _) => (Some(s), "run"),
            (None, Some(s)) => (Some(s), "config"),
            (None, None) => (None, "config"),
        };
        let shares: Option<BTreeMap<String, f64>> = shares.map(|s| s.iter().cloned().collect());
        let variants_only = with_rollout.contains(&run.id);
        let expected: Option<BTreeMap<String, f64>> = shares.as_ref().map(|s| {
            if variants_only {
                // The test split by weight: sizes over the tested variants.
                let tested: Vec<(&String, &f64)> =
                    s.iter().filter(|(arm, _)| *arm != HOLDOUT_ARM).collect();
                let share: f64 = tested.iter().map(|(_, w)| **w).sum();
                let n: u64 = tested
                    .iter()
                    .filter_map(|(arm, _)| arms.get(*arm))
                    .map(|a| a.tally.messages)
                    .sum();
                return tested
                    .into_iter()
                    .map(|(arm, w)| (arm.clone(), w / share * n as f64))
                    .collect();
            }
            let assigned: u64 = arms.values().map(|a| a.tally.messages).sum();
            s.iter()
                .map(|(arm, share)| (arm.clone(), share * assigned as f64))
                .collect()
        });
        // A run that rolled out before the winner's messages were kept apart
        // sent the winner to more than its weight's share.
        let expected = expected.filter(|_| variants_only || !decided.contains(&run.id));
        match (&mut total_expected, &expected) {
            (Some(t), Some(e)) => {
                for (arm, n) in e {
                    *t.entry(arm.clone()).or_default() += n;
                }
                total_from_config |= weights_from == "config";
            }
            _ => total_expected = None,
        }
        let numbers = scope(
            ScopeInput {
                arms,
                shares,
                expected,
                weights_from,
                variants_only,
            },
            &order,
            settings,
            goals,
        );
        runs.push(RunScope {
            run: run_echo(run),
            scope: numbers,
        });
    }
    let total_assigned: f64 = total.values().map(|a| a.tally.messages as f64).sum();
    let total_shares = total_expected
        .as_ref()
        .filter(|_| total_assigned > 0.0)
        .map(|e| {
            e.iter()
                .map(|(arm, n)| (arm.clone(), n / total_assigned))
                .collect()
        });
    let total_scope = scope(
        ScopeInput {
            arms: &total,
            shares: total_shares.or_else(|| {
                settings
                    .shares
                    .as_ref()
                    .map(|s| s.iter().cloned().collect())
            }),
            expected: total_expected.filter(|_| !data.runs.is_empty()),
            weights_from: if total_from_config { "config" } else { "run" },
            variants_only: !with_rollout.is_empty(),
        },
        &order,
        settings,
        goals,
    );

    let kind = data
        .campaign
        .as_ref()
        .map(|c| c.kind.clone())
        .or_else(|| settings.kind.clone())
        .unwrap_or_else(|| "marketing".to_string());
    let global_messages: u64 = total.values().map(|a| a.global.messages).sum();
    let global_holdout = (kind == "marketing"
        && !data.runs.is_empty()
        && (settings.global_holdout > 0.0 || global_messages > 0))
        .then(|| global_holdout_report(&total, settings));

    let mut notes = Vec::new();
    if data.runs.is_empty() {
        notes.push(if data.campaign.is_none() {
            format!("`{}` has not run yet", settings.campaign)
        } else {
            "no run of this campaign matches the filter".to_string()
        });
    }
    if data
        .runs
        .iter()
        .any(|r| decided.contains(&r.id) && !with_rollout.contains(&r.id))
    {
        notes.push(
            "runs that rolled out a winner are not checked against their weights: after the test, \
             the winner went to more than its share"
                .to_string(),
        );
    }
    if settings.shares.is_none() && run_shares.iter().any(Option::is_none) {
        notes.push(
            "some runs' weights are unknown (the campaign is no longer configured), so their split is not checked"
                .to_string(),
        );
    }

    Report {
        campaign: settings.campaign.clone(),
        kind,
        generated_at: rfc3339(settings.now),
        filter: FilterEcho {
            run: filter.run,
            since: filter.since.map(rfc3339),
            until: filter.until.map(rfc3339),
            runs_by: "started_at",
        },
        goal: settings.goal.clone(),
        secondary_goals: goals.clone(),
        results: settings.results.clone(),
        statistics: StatisticsEcho::of(settings),
        total: total_scope,
        runs,
        global_holdout,
        rollouts: data.rollouts.iter().map(rollout_echo).collect(),
        notes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{CampaignRow, RolloutRecord};

    const NOW: i64 = 1_800_000_000_000;
    const DAY: i64 = 86_400_000;
    const FP: &str = "winback;holdout=0.1;discount=1,reminder=1";

    fn settings() -> ReportSettings {
        ReportSettings {
            campaign: "winback".into(),
            kind: Some("marketing".into()),
            goal: Some(GoalEcho {
                event: "order_placed".into(),
                within: "3d".into(),
                within_ms: 3 * DAY,
            }),
            variants: vec!["discount".into(), "reminder".into()],
            shares: Some(shares_of(
                0.1,
                &[("discount".into(), 1.0), ("reminder".into(), 1.0)],
            )),
            global_holdout: 0.0,
            results: None,
            test: TestKind::FixedHorizon,
            correction: Correction::None,
            cuped: None,
            now: NOW,
        }
    }

    fn run(id: i64, fingerprint: &str) -> RunRow {
        RunRow {
            id,
            scheduled_at: NOW - 10 * DAY + id,
            started_at: NOW - 10 * DAY + id,
            state: "done".into(),
            origin: "manual".into(),
            fingerprint: fingerprint.into(),
            finished_at: None,
        }
    }

    /// `n` messages of `arm` in `status`, `converted` of them converted.
    fn group(run_id: i64, arm: &str, status: &str, n: u64, converted: u64) -> Group {
        Group {
            run_id,
            arm: arm.into(),
            status: status.into(),
            reason: None,
            tally: Tally {
                messages: n,
                sent: if status == "delivered" { n } else { 0 },
                converted,
                revenue: converted as f64 * 10.0,
                last_send_at: Some(NOW - 10 * DAY),
                secondary: vec![],
                ..Tally::default()
            },
        }
    }

    fn data(runs: Vec<RunRow>, groups: Vec<Group>) -> ReportData {
        ReportData {
            campaign: Some(CampaignRow {
                id: 1,
                name: "winback".into(),
                kind: "marketing".into(),
                fingerprint: FP.into(),
            }),
            runs,
            groups,
            secondary_goals: vec![],
            rollouts: vec![],
            results: vec![],
            ratio_cuped: vec![],
        }
    }

    fn one_run(holdout: (u64, u64), discount: (u64, u64), reminder: (u64, u64)) -> ReportData {
        data(
            vec![run(1, FP)],
            vec![
                group(1, "holdout", "held_out", holdout.0, holdout.1),
                group(1, "discount", "delivered", discount.0, discount.1),
                group(1, "reminder", "delivered", reminder.0, reminder.1),
            ],
        )
    }

    fn build_default(d: &ReportData) -> Report {
        build(d, &settings(), &ReportFilter::default())
    }

    #[test]
    fn shares_are_read_back_from_the_run_fingerprint() {
        let shares = shares_from_fingerprint("winback;holdout=0.2;discount=1,reminder=3").unwrap();
        assert_eq!(
            shares,
            [
                ("discount".to_string(), 0.2),
                ("reminder".to_string(), 0.6000000000000001),
                ("holdout".to_string(), 0.2)
            ]
        );
        let no_holdout = shares_from_fingerprint("w;holdout=0;a=2").unwrap();
        assert_eq!(no_holdout, [("a".to_string(), 1.0)]);
        for bad in [
            "f",
            "w;holdout=1.5;a=1",
            "w;holdout=0.1;a=0",
            "w;holdout=0.1;",
            "w;weights;a=1",
        ] {
            assert_eq!(shares_from_fingerprint(bad), None, "{bad}");
        }
    }

    #[test]
    fn sequential_reports_show_the_sequential_interval_and_say_so() {
        let d = one_run((1_000, 40), (4_500, 300), (4_500, 230));
        let fixed = build_default(&d);
        assert_eq!(fixed.statistics.test, "fixed_horizon");
        assert!(fixed.statistics.sentence.contains("fixed-horizon"));
        let test = TestKind::Sequential { tuning: 5000.0 };
        let r = build(
            &d,
            &ReportSettings { test, ..settings() },
            &ReportFilter::default(),
        );
        assert_eq!(
            (r.statistics.test, r.statistics.tuning),
            ("sequential", Some(5000.0))
        );
        assert!(r.statistics.sentence.contains("every day"));
        let (c, f) = (&r.total.comparisons[0], &fixed.total.comparisons[0]);
        let want = stats::compare_with(
            ArmCounts::new(1_000, 40).unwrap(),
            ArmCounts::new(4_500, 300).unwrap(),
            test,
        );
        assert_eq!(c.result, want);
        let (e, fe) = (c.result.estimate().unwrap(), f.result.estimate().unwrap());
        assert!(e.rel_ci.upper - e.rel_ci.lower > fe.rel_ci.upper - fe.rel_ci.lower);
        assert!(e.p_value > fe.p_value);
        assert_eq!(c.p_value_adjusted, Some(e.p_value));
    }

    #[test]
    fn corrections_count_every_pair_and_metric_and_judge_on_the_corrected_p() {
        // discount vs holdout: p = 0.031 alone; Holm over the three
        // comparisons makes it 0.061 (second smallest, times two), no longer a win.
        let d = one_run((2_000, 100), (2_000, 138), (2_000, 101));
        let plain = build_default(&d);
        let alone = &plain.total.comparisons[0];
        let p = alone.result.estimate().unwrap().p_value;
        assert!(alone.significant && (0.01..0.05).contains(&p), "{p}");
        assert_eq!(plain.total.corrected_for, 0);
        let r = build(
            &d,
            &ReportSettings {
                correction: Correction::Holm,
                ..settings()
            },
            &ReportFilter::default(),
        );
        assert_eq!(r.statistics.correction, "holm");
        let s = &r.total;
        assert_eq!(
            s.corrected_for, 3,
            "two variants vs holdout, reminder vs discount"
        );
        let ps: Vec<f64> = s
            .comparisons
            .iter()
            .map(|c| c.result.estimate().unwrap().p_value)
            .collect();
        let want = stats::adjust_p_values(&ps, Correction::Holm);
        let got: Vec<f64> = s
            .comparisons
            .iter()
            .map(|c| c.p_value_adjusted.unwrap())
            .collect();
        assert_eq!(got, want);
        let c = &s.comparisons[0];
        assert!(!c.significant, "{:?}", c.p_value_adjusted);
        assert!(
            c.sentence.contains("no clear difference yet"),
            "{}",
            c.sentence
        );
        assert!(c.sentence.contains(", corrected p = 0."), "{}", c.sentence);
        assert!(
            s.summary
                .iter()
                .any(|l| l.contains("Holm-Bonferroni") && l.contains("3 comparison(s)")),
            "{:?}",
            s.summary
        );
    }

    /// gbstats 0.8.0's numbers for the fixed data set of
    /// `crates/herald-domain/tests/gbstats_cuped_report_reference.py`.
    struct Ref {
        rel_lift: f64,
        ci: (f64, f64),
        p: f64,
        seq_ci: (f64, f64),
        seq_p: f64,
        chance: f64,
        reduction: f64,
    }

    // Printed by the script (theta 0.5083857442348008, 0.5658839915667133, 0.5600321849364662).
    const CONVERSION: Ref = Ref {
        rel_lift: 0.22580645161290314,
        ci: (-0.15078192903549514, 0.6023948322613014),
        p: 0.23802602722238286,
        seq_ci: (-0.8304336325333622, 1.2820465357591684),
        seq_p: 0.9714804176502411,
        chance: 0.8819016703948113,
        reduction: 0.2796837712980085,
    };
    const ARPU_REF: Ref = Ref {
        rel_lift: 0.16005374087736415,
        ci: (-0.0956151162210023, 0.41572259797573063),
        p: 0.2181027499807704,
        seq_ci: (-0.5571134157671562, 0.8772208975218845),
        seq_p: 0.9591648493979896,
        chance: 0.8918794075811325,
        reduction: 0.39617883196627446,
    };
    const LTV_REF: Ref = Ref {
        rel_lift: 0.12301767749086509,
        ci: (-0.07876495728324309, 0.3248003122649733),
        p: 0.2303075820871452,
        seq_ci: (-0.44297292548986034, 0.6890082804715906),
        seq_p: 0.9668480683587464,
        chance: 0.8857643337912982,
        reduction: 0.37011229297010706,
    };

    /// Contact `i` of arm `g` (0: `a`, the control; 1: `b`): (pre converted,
    /// pre revenue, converted, 30-day revenue, LTV revenue), as the script has it.
    fn cuped_contact(g: u64, i: u64) -> (u64, u64, u64, u64, u64) {
        let pre_rev = if !i.is_multiple_of(3) {
            (i * 37 + 11 + 5 * g) % 53
        } else {
            0
        };
        let pre_conv = u64::from((i * 7 + g) % 5 < 2);
        let r30 = if !(i + g).is_multiple_of(4) {
            (pre_rev * 3) / 4 + (i * 13 + 7 * g) % 19 + 4 * g
        } else {
            0
        };
        let rltv = r30 + (i * 5) % 11;
        let conv = u64::from(
            (pre_conv == 1 && i % 3 != 1)
                || (i * 11 + 3 * g).is_multiple_of(7)
                || (g == 1 && i % 10 == 3),
        );
        (pre_conv, pre_rev, conv, r30, rltv)
    }

    /// The fixed data set summed as the report's scan sums it.
    fn cuped_data() -> ReportData {
        let mut groups = Vec::new();
        let mut results = Vec::new();
        for (g, arm) in [(0, "a"), (1, "b")] {
            let mut t = ResultsTally::default();
            for i in 0..80 {
                let (pc, pr, cv, r30, rl) = cuped_contact(g, i);
                let f = |x: u64| x as f64;
                t.messages += 1;
                t.revenue_30d += f(r30);
                t.revenue_ltv += f(rl);
                t.revenue_30d_squares += f(r30 * r30);
                t.revenue_ltv_squares += f(rl * rl);
                let c = &mut t.cuped;
                c.recorded += 1;
                c.converted += cv;
                c.pre_converted += pc;
                c.both_converted += pc * cv;
                c.pre_revenue += f(pr);
                c.pre_revenue_squares += f(pr * pr);
                c.pre_revenue_x_30d += f(pr * r30);
                c.pre_revenue_x_ltv += f(pr * rl);
            }
            groups.push(group(1, arm, "delivered", t.messages, t.cuped.converted));
            results.push(super::super::ResultsGroup {
                run_id: 1,
                arm: arm.to_string(),
                tally: t,
            });
        }
        let mut d = data(vec![run(1, "c;holdout=0;a=1,b=1")], groups);
        d.results = results;
        d
    }

    fn cuped_settings(test: TestKind) -> ReportSettings {
        ReportSettings {
            variants: vec!["a".into(), "b".into()],
            shares: Some(shares_of(0.0, &[("a".into(), 1.0), ("b".into(), 1.0)])),
            results: Some(ResultsEcho {
                retention_event: None,
                revenue_event: Some("order_placed".into()),
                arpu_days: 30,
                ltv_horizon: "90d".into(),
                ltv_horizon_ms: 90 * DAY,
            }),
            test,
            cuped: Some(30),
            ..settings()
        }
    }

    #[test]
    fn cuped_report_equals_gbstats_on_a_fixed_data_set() {
        let rel = |got: f64, want: f64| (got - want).abs() <= 1e-6 * want.abs().max(1e-12);
        let abs = |got: f64, want: f64| (got - want).abs() <= 1e-6;
        for sequential in [false, true] {
            let test = if sequential {
                TestKind::Sequential { tuning: 5000.0 }
            } else {
                TestKind::FixedHorizon
            };
            let r = build(
                &cuped_data(),
                &cuped_settings(test),
                &ReportFilter::default(),
            );
            assert_eq!(r.statistics.cuped_days, Some(30));
            assert!(
                r.statistics.sentence.contains("CUPED is applied"),
                "{}",
                r.statistics.sentence
            );
            let s = &r.total;
            let conversion = s.comparisons.first().expect("a conversion comparison");
            let conversion = conversion
                .cuped
                .as_ref()
                .and_then(|c| c.estimate())
                .copied();
            let arpu = s
                .metric_comparisons
                .iter()
                .find(|c| c.metric == ARPU)
                .unwrap();
            let ltv = s
                .metric_comparisons
                .iter()
                .find(|c| c.metric == LTV)
                .unwrap();
            for (name, got, want) in [
                ("conversion", conversion, &CONVERSION),
                ("arpu", arpu.result.estimate().copied(), &ARPU_REF),
                ("ltv", ltv.result.estimate().copied(), &LTV_REF),
            ] {
                let e = got.unwrap_or_else(|| panic!("{name}: no estimate"));
                let (ci, p) = if sequential {
                    (want.seq_ci, want.seq_p)
                } else {
                    (want.ci, want.p)
                };
                assert!(rel(e.rel_lift, want.rel_lift), "{name}: {e:?}");
                assert!(
                    rel(e.rel_ci.lower, ci.0) && rel(e.rel_ci.upper, ci.1),
                    "{name}: {e:?}"
                );
                assert!(abs(e.p_value, p), "{name} p {} vs {p}", e.p_value);
                assert!(abs(e.chance_to_beat, want.chance), "{name}: {e:?}");
                let reduction = e.variance_reduction.expect("adjusted");
                assert!(
                    rel(reduction, want.reduction),
                    "{name}: {reduction} vs {}",
                    want.reduction
                );
            }
            // The sentences say how much variance CUPED removed.
            assert!(
                s.summary
                    .iter()
                    .any(|l| l.contains("CUPED removed 28% of its variance")),
                "{:?}",
                s.summary
            );
            // Every contact has its history recorded: no note about missing ones.
            assert!(
                !s.summary.iter().any(|l| l.contains("no history recorded")),
                "{:?}",
                s.summary
            );
        }
        // Without CUPED the same data is compared unadjusted.
        let plain = build(
            &cuped_data(),
            &ReportSettings {
                cuped: None,
                ..cuped_settings(TestKind::FixedHorizon)
            },
            &ReportFilter::default(),
        );
        assert!(plain.total.comparisons[0].cuped.is_none());
        let arpu = plain
            .total
            .metric_comparisons
            .iter()
            .find(|c| c.metric == ARPU)
            .unwrap();
        assert_eq!(arpu.result.estimate().unwrap().variance_reduction, None);
        assert!(
            !(arpu.result.estimate().unwrap().rel_lift - ARPU_REF.rel_lift)
                .abs()
                .lt(&1e-6)
        );
    }

    #[test]
    fn cuped_is_not_applied_where_some_history_is_missing() {
        let mut d = cuped_data();
        d.results[0].tally.cuped.recorded -= 30;
        let r = build(
            &d,
            &cuped_settings(TestKind::FixedHorizon),
            &ReportFilter::default(),
        );
        assert!(
            r.total.summary.iter().any(|l| l
                .contains("CUPED is not applied: 30 of 160 contact(s) have no history recorded")),
            "{:?}",
            r.total.summary
        );
        // Nothing is adjusted where some history is missing: the figures are
        // the unadjusted ones.
        let unadjusted = build(
            &cuped_data(),
            &ReportSettings {
                cuped: None,
                ..cuped_settings(TestKind::FixedHorizon)
            },
            &ReportFilter::default(),
        );
        assert!(r.total.comparisons.iter().all(|c| c.cuped.is_none()));
        assert_eq!(
            serde_json::to_value(&r.total.metric_comparisons).unwrap(),
            serde_json::to_value(&unadjusted.total.metric_comparisons).unwrap()
        );
    }

    #[test]
    fn mean_and_ratio_metrics_are_compared_by_the_domain() {
        let mut d = one_run((1_000, 40), (4_500, 300), (4_500, 230));
        // Clicks among the delivered; the holdout has none (no delivery).
        for g in d.groups.iter_mut().filter(|g| g.arm != "holdout") {
            g.tally.clicked = g.tally.messages / 5;
            g.tally.revenue_squares = g.tally.converted as f64 * 100.0 + 5_000.0;
        }
        d.results = ["holdout", "discount", "reminder"]
            .iter()
            .zip([(1_000, 900.0), (4_500, 5_000.0), (4_500, 4_000.0)])
            .map(|(arm, (n, revenue))| super::super::ResultsGroup {
                run_id: 1,
                arm: arm.to_string(),
                tally: ResultsTally {
                    messages: n,
                    revenue_30d: revenue,
                    revenue_30d_squares: revenue * 40.0,
                    revenue_ltv: revenue * 2.0,
                    revenue_ltv_squares: revenue * 160.0,
                    ..ResultsTally::default()
                },
            })
            .collect();
        let with_results = ReportSettings {
            results: Some(ResultsEcho {
                retention_event: None,
                revenue_event: Some("order_placed".into()),
                arpu_days: 30,
                ltv_horizon: "90d".into(),
                ltv_horizon_ms: 90 * DAY,
            }),
            ..settings()
        };
        assert!(build_default(&d).total.metric_comparisons.is_empty());
        let r = build(&d, &with_results, &ReportFilter::default());
        let s = &r.total;
        let metrics: Vec<(&str, &str, &str)> = s
            .metric_comparisons
            .iter()
            .map(|c| (c.metric, c.variant.as_str(), c.control.as_str()))
            .collect();
        // Three metrics over three pairs, and clicks per delivered between
        // the variants only (the holdout is delivered nothing).
        assert_eq!(metrics.len(), 3 * 3 + 1, "{metrics:?}");
        assert_eq!(metrics[0], ("arpu", "discount", "holdout"));
        let arpu = &s.metric_comparisons[0];
        assert_eq!(arpu.kind, "mean");
        assert_eq!(arpu.control_value, Some(0.9));
        let want = stats::compare_metric(
            &MetricArm::Plain {
                measure: Measure::Mean {
                    n: 1_000,
                    sum: 900.0,
                    sum_squares: 36_000.0,
                },
            },
            &MetricArm::Plain {
                measure: Measure::Mean {
                    n: 4_500,
                    sum: 5_000.0,
                    sum_squares: 200_000.0,
                },
            },
            TestKind::FixedHorizon,
        )
        .unwrap();
        assert_eq!(arpu.result, want);
        assert!(arpu.sentence.contains("ARPU"), "{}", arpu.sentence);
        let per_converter = s
            .metric_comparisons
            .iter()
            .find(|c| c.metric == "revenue_per_converter" && c.control == "discount")
            .unwrap();
        assert_eq!(per_converter.kind, "ratio");
        assert_eq!(per_converter.variant_value, Some(10.0));
        assert!(per_converter.result.estimate().is_some());
        let clicks = s
            .metric_comparisons
            .iter()
            .find(|c| c.metric == "clicks_per_delivered" && c.control == "discount")
            .unwrap();
        assert_eq!(clicks.variant_value, Some(0.2));
        let MetricArm::Ratio {
            sum_of_products, ..
        } = clicks.variant_sums
        else {
            panic!("a ratio")
        };
        assert_eq!(sum_of_products, 900.0);
        assert!(
            !metrics.contains(&("clicks_per_delivered", "discount", "holdout")),
            "{metrics:?}"
        );
    }

    #[test]
    fn a_variant_that_converts_better_is_named_with_its_numbers() {
        let r = build_default(&one_run((1_000, 40), (4_500, 300), (4_500, 230)));
        let s = &r.total;
        assert_eq!(s.control.as_deref(), Some("holdout"));
        assert_eq!(
            s.arms.iter().map(|a| a.arm.as_str()).collect::<Vec<_>>(),
            ["discount", "reminder", "holdout"]
        );
        let c = &s.comparisons[0];
        assert_eq!(
            (c.variant.as_str(), c.control.as_str()),
            ("discount", "holdout")
        );
        let e = c.result.estimate().expect("an estimate");
        // The same numbers as herald_domain::stats::compare, which matches gbstats.
        let direct = stats::compare(
            ArmCounts::new(1_000, 40).unwrap(),
            ArmCounts::new(4_500, 300).unwrap(),
        );
        assert_eq!(Some(e), direct.estimate());
        assert!(c.significant && e.p_value < 0.05 && e.rel_lift > 0.0);
        assert!(
            c.sentence
                .starts_with("discount beat the holdout: +67% conversions (95% CI +"),
            "{}",
            c.sentence
        );
        assert_eq!(s.comparisons[2].variant, "reminder");
        assert_eq!(s.comparisons[2].control, "discount");
        assert!(
            s.comparisons[2]
                .sentence
                .starts_with("reminder did worse than discount")
        );
        let srm = s.srm.as_ref().unwrap();
        assert!(!srm.test.mismatch);
        assert_eq!(srm.weights_from, "run");
        assert_eq!(srm.expected["holdout"], 1_000.0);
        // The split's verdict comes first, then each comparison.
        assert_eq!(s.summary[0], srm.sentence);
        assert_eq!(s.summary[1], c.sentence);
        assert_eq!(s.summary.len(), 4);
        assert!(!s.goal_window_open);
        let d = &s.arms[0];
        assert_eq!(d.rates.conversion, Some(300.0 / 4_500.0));
        assert_eq!(d.revenue_per_assigned, Some(3_000.0 / 4_500.0));
        assert_eq!(d.expected_share, Some(0.45));
        assert_eq!(r.runs.len(), 1);
        assert_eq!(r.runs[0].scope, r.total, "one run: the total is that run");
    }

    #[test]
    fn a_skewed_split_fails_the_sample_ratio_check_first() {
        let r = build_default(&one_run((1_000, 40), (4_800, 300), (4_200, 230)));
        let srm = r.total.srm.as_ref().unwrap();
        assert!(srm.test.mismatch, "{srm:?}");
        assert!(
            r.total.summary[0].starts_with("sample ratio mismatch (p < 0.0001, below 0.001)"),
            "{:?}",
            r.total.summary
        );
    }

    #[test]
    fn each_run_is_checked_against_its_own_weights() {
        // Run 2 was planned 1:3 after the weights changed; today's config says 1:1.
        let d = data(
            vec![
                run(1, FP),
                run(2, "winback;holdout=0.1;discount=1,reminder=3"),
            ],
            vec![
                group(1, "holdout", "held_out", 1_000, 40),
                group(1, "discount", "delivered", 4_500, 270),
                group(1, "reminder", "delivered", 4_500, 225),
                group(2, "holdout", "held_out", 1_000, 40),
                group(2, "discount", "delivered", 2_250, 135),
                group(2, "reminder", "delivered", 6_750, 340),
            ],
        );
        let r = build_default(&d);
        for run in &r.runs {
            assert!(!run.scope.srm.as_ref().unwrap().test.mismatch);
        }
        let total = r.total.srm.as_ref().unwrap();
        assert!(!total.test.mismatch, "{total:?}");
        assert_eq!(total.expected["reminder"], 4_500.0 + 6_750.0);
        let reminder = r.total.arms.iter().find(|a| a.arm == "reminder").unwrap();
        assert_eq!(reminder.expected_share, Some(11_250.0 / 20_000.0));
        // Under today's weights alone the same counts would look broken.
        let today = stats::srm(&[(2_000, 0.1), (6_750, 0.45), (11_250, 0.45)]);
        assert!(today.mismatch);
    }

    #[test]
    fn without_a_holdout_the_first_variant_is_the_control() {
        let fp = "winback;holdout=0;discount=1,reminder=1,third=1";
        let d = data(
            vec![run(1, fp)],
            vec![
                group(1, "discount", "delivered", 3_000, 150),
                group(1, "reminder", "delivered", 3_000, 180),
                group(1, "third", "delivered", 3_000, 0),
            ],
        );
        let r = build_default(&d);
        assert_eq!(r.total.control.as_deref(), Some("discount"));
        let pairs: Vec<(&str, &str)> = r
            .total
            .comparisons
            .iter()
            .map(|c| (c.variant.as_str(), c.control.as_str()))
            .collect();
        assert_eq!(pairs, [("reminder", "discount"), ("third", "discount")]);
        assert_eq!(
            r.total.comparisons[1].sentence,
            "third vs discount: not enough conversions to compare: the variant has no conversions"
        );
        assert!(!r.total.comparisons[1].significant);
        assert!(r.total.arms.iter().all(|a| !a.holdout));
    }

    #[test]
    fn the_global_holdout_is_kept_apart_and_compared() {
        let mut d = one_run((1_000, 40), (4_500, 300), (4_500, 230));
        for (arm, n, k) in [
            ("holdout", 60, 1),
            ("discount", 270, 5),
            ("reminder", 270, 6),
        ] {
            let mut g = group(1, arm, "suppressed", n, k);
            g.reason = Some("global_holdout".into());
            d.groups.push(g);
        }
        let mut s = settings();
        s.global_holdout = 0.06;
        let r = build(&d, &s, &ReportFilter::default());
        let discount = &r.total.arms[0];
        assert_eq!((discount.assigned, discount.global_holdout), (4_500, 270));
        assert_eq!(
            discount.suppressed, 0,
            "the global holdout is not a suppression here"
        );
        assert_eq!(r.total.messages, 10_600);
        let g = r.global_holdout.as_ref().unwrap();
        assert_eq!((g.marketing.messages, g.marketing.converted), (10_000, 570));
        assert_eq!(
            (g.global_holdout.messages, g.global_holdout.converted),
            (600, 12)
        );
        assert!(!g.srm.as_ref().unwrap().test.mismatch);
        let c = g.comparison.as_ref().unwrap();
        assert_eq!(c.variant_counts, ArmCounts::new(10_000, 570).unwrap());
        assert!(
            c.sentence.starts_with(
                "marketing (everyone outside the global holdout) beat the global holdout: +185%"
            ),
            "{}",
            c.sentence
        );
        // Transactional campaigns ignore the global holdout.
        let mut t = d.clone();
        if let Some(c) = t.campaign.as_mut() {
            c.kind = "transactional".into();
        }
        assert!(
            build(&t, &s, &ReportFilter::default())
                .global_holdout
                .is_none()
        );
    }

    #[test]
    fn open_windows_pending_messages_and_missing_goals_are_said() {
        let mut d = one_run((100, 4), (450, 30), (450, 23));
        for g in &mut d.groups {
            g.tally.last_send_at = Some(NOW - DAY);
        }
        d.groups.push(group(1, "reminder", "planned", 7, 0));
        let r = build_default(&d);
        assert!(r.total.goal_window_open);
        assert_eq!(
            r.total.goal_window_closes_at.as_deref(),
            Some(rfc3339(NOW + 2 * DAY).as_str())
        );
        let tail = &r.total.summary[r.total.summary.len() - 2..];
        assert!(tail[0].starts_with("conversions are still coming in: the 3d goal window"));
        assert_eq!(tail[1], "7 message(s) are not sent yet");
        assert_eq!(r.total.arms[1].pending, 7);

        let mut s = settings();
        s.goal = None;
        let r = build(&d, &s, &ReportFilter::default());
        assert!(r.total.comparisons.is_empty());
        assert!(
            r.total
                .summary
                .iter()
                .any(|l| l.starts_with("no goal is configured"))
        );
    }

    #[test]
    fn a_rolled_out_run_is_not_held_to_its_weights() {
        let mut d = one_run((1_000, 40), (8_000, 500), (1_000, 50));
        d.rollouts.push(RolloutRecord {
            run_id: 1,
            decided_at: NOW - 9 * DAY,
            metric: "conversion".into(),
            chosen: "discount".into(),
            leader: "discount".into(),
            clear_winner: true,
            window_cut_short: false,
            reason: "discount converted best".into(),
            detail: Json::Null,
        });
        let r = build_default(&d);
        assert!(r.total.srm.is_none() && r.runs[0].scope.srm.is_none());
        assert_eq!(
            r.rollouts[0].sentence,
            "run 1: discount went to the rest of the audience on conversion (discount converted best)"
        );
        assert!(r.notes[0].starts_with("runs that rolled out a winner"));
    }

    #[test]
    fn a_rollouts_rest_is_shown_apart_and_the_test_is_checked_by_weight() {
        // Holdout 1,000 (10%); a 20% test: 900 per variant; the rest, 7,200, released to discount.
        let mut d = one_run((1_000, 40), (900, 90), (900, 45));
        d.groups
            .push(group(1, "rollout:discount", "delivered", 7_200, 700));
        let r = build_default(&d);
        let arms: Vec<(&str, Option<&str>)> = r
            .total
            .arms
            .iter()
            .map(|a| (a.arm.as_str(), a.rollout.as_ref().map(|x| x.state)))
            .collect();
        assert_eq!(
            arms,
            [
                ("discount", None),
                ("reminder", None),
                ("holdout", None),
                ("rollout:discount", Some("released"))
            ]
        );
        assert_eq!(
            r.total.arms[3].rollout.as_ref().unwrap().variant.as_deref(),
            Some("discount")
        );
        // Only the test's randomised messages are compared.
        assert!(
            r.total
                .comparisons
                .iter()
                .all(|c| !c.variant.starts_with("rollout") && !c.control.starts_with("rollout"))
        );
        assert_eq!(r.total.comparisons.len(), 3);
        // The test's split is checked over the variants (an even split here).
        let srm = r.runs[0].scope.srm.as_ref().unwrap();
        assert!(!srm.test.mismatch);
        assert_eq!(srm.expected.len(), 2);
        assert_eq!(srm.expected["discount"], 900.0);
        assert!(!r.total.srm.as_ref().unwrap().test.mismatch);
        assert!(
            r.total
                .summary
                .iter()
                .any(|l| l.starts_with("the rest of the audience, 7200 message(s), got discount")),
            "{:?}",
            r.total.summary
        );
        // A skewed test is still caught.
        let skewed = {
            let mut d = one_run((1_000, 40), (1_200, 90), (900, 45));
            d.groups.push(group(1, WAITING_ARM, "planned", 7_200, 0));
            d
        };
        let r = build_default(&skewed);
        assert!(r.runs[0].scope.srm.as_ref().unwrap().test.mismatch);
        assert!(r.total.summary.iter().any(
            |l| l == "7200 message(s) wait for the rollout decision: in no variant until then"
        ));
    }

    #[test]
    fn the_json_shape_is_stable() {
        let r = build_default(&one_run((1_000, 40), (4_500, 300), (4_500, 230)));
        let json = serde_json::to_value(&r).unwrap();
        let keys = |v: &Json| {
            let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
            k.sort();
            k
        };
        assert_eq!(
            keys(&json),
            [
                "campaign",
                "filter",
                "generated_at",
                "global_holdout",
                "goal",
                "kind",
                "notes",
                "results",
                "rollouts",
                "runs",
                "secondary_goals",
                "statistics",
                "total"
            ]
        );
        assert_eq!(
            keys(&json["total"]),
            [
                "arms",
                "comparisons",
                "control",
                "corrected_for",
                "goal_window_closes_at",
                "goal_window_open",
                "messages",
                "metric_comparisons",
                "results_comparisons",
                "srm",
                "summary"
            ]
        );
        let mut run_keys = keys(&json["total"]);
        run_keys.push("run".into());
        run_keys.sort();
        assert_eq!(keys(&json["runs"][0]), run_keys);
        assert_eq!(
            keys(&json["total"]["arms"][0]),
            [
                "arm",
                "assigned",
                "bounced",
                "by_status",
                "cancelled",
                "cancelled_by_reason",
                "clicked",
                "complained",
                "converted",
                "delivered",
                "expected_share",
                "failed",
                "global_holdout",
                "held_out",
                "holdout",
                "machine_opened",
                "opened",
                "pending",
                "rates",
                "results",
                "revenue",
                "revenue_per_assigned",
                "rollout",
                "secondary",
                "sent",
                "suppressed",
                "suppressed_by_reason",
                "unknown",
                "unsubscribed"
            ]
        );
        assert_eq!(
            keys(&json["total"]["comparisons"][0]),
            [
                "control",
                "control_counts",
                "cuped",
                "metric",
                "p_value_adjusted",
                "result",
                "sentence",
                "significant",
                "variant",
                "variant_counts"
            ]
        );
        assert_eq!(
            json["total"]["comparisons"][0]["result"]["outcome"],
            "estimate"
        );
        // Without `[results] cuped`: no adjustment, and the echo says so.
        assert_eq!(json["total"]["comparisons"][0]["cuped"], Json::Null);
        assert_eq!(json["statistics"]["cuped_days"], Json::Null);
        assert_eq!(
            keys(&json["total"]["srm"]),
            [
                "chi2",
                "df",
                "expected",
                "mismatch",
                "p_value",
                "sentence",
                "weights_from"
            ]
        );
        assert_eq!(
            keys(&json["total"]["arms"][0]["rates"]),
            ["click", "conversion", "delivery", "open"]
        );
        assert_eq!(json["filter"]["runs_by"], "started_at");
    }
}
