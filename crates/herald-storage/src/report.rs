//! The A/B report of SPEC section 5. [`load`] reads a campaign's runs and one
//! grouped scan of its messages (per run, arm, status and suppression
//! reason: counts of every outcome flag, revenue, and each secondary goal),
//! so the database does the aggregation and only groups come back; on SQLite
//! the scan is two statements over covering indexes. [`build`] turns the
//! groups into the [`Report`] with plain words, and [`campaign_report`] does
//! both. Rollout decisions are kept in `rollouts` ([`record_rollout`]).
//!
//! A date range selects runs by the instant they started (their audience
//! snapshot), never messages by send time: variants may send at different
//! hours, and cutting a run by send time would cut its arms unevenly.

mod build;
mod ratio_cuped;
mod words;

use std::collections::BTreeSet;

use chrono::{DateTime, NaiveDate};
use herald_domain::config::Campaign;
use sea_orm::{ConnectionTrait, DbBackend, QueryResult, TransactionTrait};
use serde_json::Value as Json;

pub use build::{
    ArmReport, ArmResults, ComparisonReport, FilterEcho, GlobalHoldoutReport, GoalEcho, Group,
    HoldoutSide, MetricComparisonReport, Rates, Report, ReportSettings, ResultsEcho, RolloutEcho,
    RunEcho, RunScope, Scope, SecondaryReport, SrmReport, StatisticsEcho, build,
};

use herald_domain::types::SuppressReason;

pub use ratio_cuped::{RatioCupedGroup, RatioCupedTally};

use crate::db::Db;
use crate::flights::{self, Flight, InTheAir};
use crate::sql::Sql;

/// Why a report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The database refused or failed.
    #[error("database error: {0}")]
    Db(#[from] sea_orm::DbErr),
    /// `--since` or `--until` is not an instant.
    #[error("{0}")]
    BadInstant(String),
}

/// Shorthand for report results.
pub type ReportResult<T> = Result<T, ReportError>;

/// Above this many selected runs the scan selects them with a subquery
/// instead of a list of bound ids (SQLite allows 32,766 parameters).
const MAX_LISTED_RUNS: usize = 5_000;

/// Which runs a report covers; every bound optional.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReportFilter {
    /// Only this run.
    pub run: Option<i64>,
    /// Runs that started at or after this instant (ms).
    pub since: Option<i64>,
    /// Runs that started before this instant (ms).
    pub until: Option<i64>,
}

/// Which end of a range an instant bounds: a date alone means the start of
/// that day (UTC) for `since`, and the end of it for `until`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// `--since`: inclusive.
    Since,
    /// `--until`: exclusive.
    Until,
}

/// Parses `--since`/`--until`: RFC 3339 (`2026-11-20T10:00:00+08:00`) or a
/// date (`2026-11-20`, UTC), into milliseconds since the epoch.
pub fn parse_instant(text: &str, bound: Bound) -> ReportResult<i64> {
    let text = text.trim();
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Ok(at.timestamp_millis());
    }
    if let Ok(day) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        let day = match bound {
            Bound::Since => Some(day),
            Bound::Until => day.succ_opt(),
        };
        if let Some(midnight) = day.and_then(|d| d.and_hms_opt(0, 0, 0)) {
            return Ok(midnight.and_utc().timestamp_millis());
        }
    }
    Err(ReportError::BadInstant(format!(
        "`{text}` is not an instant: use RFC 3339 (2026-11-20T10:00:00Z) or a date (2026-11-20)"
    )))
}

/// A campaign as the database keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CampaignRow {
    /// Its id.
    pub id: i64,
    /// Its name.
    pub name: String,
    /// `marketing` or `transactional`.
    pub kind: String,
    /// What decides arms, as of its latest run.
    pub fingerprint: String,
}

/// One run of the campaign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRow {
    /// Its id.
    pub id: i64,
    /// The instant it was scheduled for (ms).
    pub scheduled_at: i64,
    /// The instant it started: its audience snapshot (ms).
    pub started_at: i64,
    /// `planning`, `running`, `paused`, `done`, `cancelled`.
    pub state: String,
    /// What started it (`manual`, `schedule`, ...).
    pub origin: String,
    /// The campaign's assignment fingerprint when it ran: its arms' weights.
    pub fingerprint: String,
    /// When its last message was sent, if it is done (ms).
    pub finished_at: Option<i64>,
}

/// A recorded rollout decision (SPEC section 5).
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutRecord {
    /// The run that tested and then rolled out.
    pub run_id: i64,
    /// When it decided (ms).
    pub decided_at: i64,
    /// `conversion`, `click` or `open`.
    pub metric: String,
    /// The variant sent to the rest of the audience.
    pub chosen: String,
    /// The variant with the best rate.
    pub leader: String,
    /// The leader won outright (otherwise no variant did by `decide_by`, and the leader went).
    pub clear_winner: bool,
    /// Decided before every tested message's goal window had closed.
    pub window_cut_short: bool,
    /// The decision in words.
    pub reason: String,
    /// The numbers it was made on.
    pub detail: Json,
}

impl RolloutRecord {
    /// The record of `decision`, made by [`herald_domain::stats::pick_winner`] over
    /// `variants` (name and counts on `metric`, in file order).
    pub fn from_decision(
        run_id: i64,
        decided_at: i64,
        metric: &str,
        variants: &[(&str, herald_domain::stats::ArmCounts)],
        decision: &herald_domain::stats::Rollout,
        window_cut_short: bool,
    ) -> Self {
        let name = |i: usize| variants.get(i).map_or("", |v| v.0).to_string();
        let detail = serde_json::json!({
            "arms": variants
                .iter()
                .map(|(arm, counts)| serde_json::json!({"arm": arm, "n": counts.n(), "k": counts.k()}))
                .collect::<Vec<_>>(),
            "rivals": decision
                .rivals
                .iter()
                .map(|r| serde_json::json!({"arm": name(r.variant), "leader_chance_to_beat": r.chance_to_beat, "fisher_p": r.fisher_p, "sequential_p": r.sequential_p}))
                .collect::<Vec<_>>(),
        });
        Self {
            run_id,
            decided_at,
            metric: metric.to_string(),
            chosen: name(decision.chosen),
            leader: name(decision.leader),
            clear_winner: decision.clear_winner,
            window_cut_short,
            reason: decision.reason.clone(),
            detail,
        }
    }
}

/// Counts over the messages of one group (or a sum of groups).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tally {
    /// Messages.
    pub messages: u64,
    /// Accepted by a provider (`sent_at` recorded), whatever came after.
    pub sent: u64,
    /// Opened by a person.
    pub opened: u64,
    /// Fetched by a privacy proxy or scanner (a message may also be opened by a person).
    pub machine_opened: u64,
    /// Clicked.
    pub clicked: u64,
    /// Unsubscribed from.
    pub unsubscribed: u64,
    /// Marked as spam.
    pub complained: u64,
    /// Converted on the campaign's goal.
    pub converted: u64,
    /// Revenue of the goal events.
    pub revenue: f64,
    /// Sum of each message's revenue squared: the spread of revenue per
    /// converting contact (a message has revenue only when it converted).
    pub revenue_squares: f64,
    /// The latest planned send time (ms).
    pub last_send_at: Option<i64>,
    /// Per secondary goal, in the order asked for: (messages that reached it, its revenue).
    pub secondary: Vec<(u64, f64)>,
}

impl Tally {
    /// Adds `other` to this tally.
    pub fn add(&mut self, other: &Tally) {
        self.messages += other.messages;
        self.sent += other.sent;
        self.opened += other.opened;
        self.machine_opened += other.machine_opened;
        self.clicked += other.clicked;
        self.unsubscribed += other.unsubscribed;
        self.complained += other.complained;
        self.converted += other.converted;
        self.revenue += other.revenue;
        self.revenue_squares += other.revenue_squares;
        self.last_send_at = self.last_send_at.max(other.last_send_at);
        if self.secondary.len() < other.secondary.len() {
            self.secondary.resize(other.secondary.len(), (0, 0.0));
        }
        for (mine, theirs) in self.secondary.iter_mut().zip(&other.secondary) {
            mine.0 += theirs.0;
            mine.1 += theirs.1;
        }
    }
}

impl Tally {
    /// Takes `other` (a part of this tally) out of it; the latest send time stays.
    pub fn subtract(&mut self, other: &Tally) {
        self.messages = self.messages.saturating_sub(other.messages);
        self.sent = self.sent.saturating_sub(other.sent);
        self.opened = self.opened.saturating_sub(other.opened);
        self.machine_opened = self.machine_opened.saturating_sub(other.machine_opened);
        self.clicked = self.clicked.saturating_sub(other.clicked);
        self.unsubscribed = self.unsubscribed.saturating_sub(other.unsubscribed);
        self.complained = self.complained.saturating_sub(other.complained);
        self.converted = self.converted.saturating_sub(other.converted);
        self.revenue -= other.revenue;
        self.revenue_squares -= other.revenue_squares;
        for (mine, theirs) in self.secondary.iter_mut().zip(&other.secondary) {
            mine.0 = mine.0.saturating_sub(theirs.0);
            mine.1 -= theirs.1;
        }
    }
}

/// What `[results]` asks the report to count per arm (issue 26: the seeds' metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultsSpec {
    /// The activity event of retention.
    pub retention_event: Option<String>,
    /// The event whose values are revenue (ARPU and LTV).
    pub revenue_event: Option<String>,
    /// LTV's horizon after the message (ms).
    pub ltv_horizon_ms: i64,
    /// `[results] cuped`: read the covariates stored on the messages.
    pub cuped: bool,
}

impl ResultsSpec {
    /// The spec of a campaign's `[results]`; `None` without one.
    pub fn of(campaign: &Campaign) -> Option<Self> {
        let r = campaign.results.as_ref()?;
        Some(Self {
            retention_event: r.retention_event.clone(),
            revenue_event: r.revenue_event.clone(),
            ltv_horizon_ms: r.ltv_horizon.millis(),
            cuped: r.cuped.is_some(),
        })
    }
}

/// A day, in ms: retention's windows are whole days after the message.
pub const DAY_MS: i64 = 86_400_000;

/// ARPU's span after the message: a month, as ARPU is usually told.
pub const ARPU_DAYS: i64 = 30;

/// The seeds' metrics over the messages of one (run, arm), global holdout
/// left out. Each message is one contact's first message of the run, and
/// every window counts from its planned send time (`send_at`), as the goal's does.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResultsTally {
    /// Messages counted: the denominator of every metric.
    pub messages: u64,
    /// Contacts with the retention event in days 1-7: `[send_at + 1d, send_at + 8d)`.
    pub retained_d1_7: u64,
    /// Contacts with it in days 8-30: `[send_at + 8d, send_at + 31d)`.
    pub retained_d8_30: u64,
    /// The revenue event's values in `(send_at, send_at + 30d]`.
    pub revenue_30d: f64,
    /// The revenue event's values in `(send_at, send_at + ltv_horizon]`.
    pub revenue_ltv: f64,
    /// Sum over contacts of each one's 30-day revenue squared (ARPU's spread).
    pub revenue_30d_squares: f64,
    /// Sum over contacts of each one's LTV revenue squared.
    pub revenue_ltv_squares: f64,
    /// The latest planned send time (ms).
    pub last_send_at: Option<i64>,
    /// CUPED's sums (`[results] cuped`); zero without it.
    pub cuped: CupedTally,
}

/// CUPED's sums over an arm's contacts: each message's covariates stored when
/// it was planned (NULL, planned before CUPED was asked for, counts as zero)
/// against its outcomes.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CupedTally {
    /// Messages with their covariates recorded.
    pub recorded: u64,
    /// Converted on the goal (the same count as the scan's).
    pub converted: u64,
    /// Had the goal event in the window before.
    pub pre_converted: u64,
    /// Converted and had it before: conversion's sum of products.
    pub both_converted: u64,
    /// The revenue event's values in the window before.
    pub pre_revenue: f64,
    /// Sum of each contact's squared pre-period revenue.
    pub pre_revenue_squares: f64,
    /// Sum of pre-period revenue x 30-day revenue (ARPU's products).
    pub pre_revenue_x_30d: f64,
    /// Sum of pre-period revenue x LTV revenue.
    pub pre_revenue_x_ltv: f64,
}

impl CupedTally {
    fn add(&mut self, o: &CupedTally) {
        self.recorded += o.recorded;
        self.converted += o.converted;
        self.pre_converted += o.pre_converted;
        self.both_converted += o.both_converted;
        self.pre_revenue += o.pre_revenue;
        self.pre_revenue_squares += o.pre_revenue_squares;
        self.pre_revenue_x_30d += o.pre_revenue_x_30d;
        self.pre_revenue_x_ltv += o.pre_revenue_x_ltv;
    }
}

impl ResultsTally {
    /// Adds `other` to this tally.
    pub fn add(&mut self, other: &ResultsTally) {
        self.cuped.add(&other.cuped);
        self.messages += other.messages;
        self.retained_d1_7 += other.retained_d1_7;
        self.retained_d8_30 += other.retained_d8_30;
        self.revenue_30d += other.revenue_30d;
        self.revenue_ltv += other.revenue_ltv;
        self.revenue_30d_squares += other.revenue_30d_squares;
        self.revenue_ltv_squares += other.revenue_ltv_squares;
        self.last_send_at = self.last_send_at.max(other.last_send_at);
    }
}

/// The seeds' metrics of one (run, arm).
#[derive(Debug, Clone, PartialEq)]
pub struct ResultsGroup {
    /// The run.
    pub run_id: i64,
    /// The arm.
    pub arm: String,
    /// The counts.
    pub tally: ResultsTally,
}

/// Everything the report is built from.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportData {
    /// The campaign; `None` when it has never run.
    pub campaign: Option<CampaignRow>,
    /// The selected runs, oldest first.
    pub runs: Vec<RunRow>,
    /// The scan's groups.
    pub groups: Vec<Group>,
    /// Secondary goals counted, in the order of [`Tally::secondary`].
    pub secondary_goals: Vec<String>,
    /// Rollout decisions of the selected runs.
    pub rollouts: Vec<RolloutRecord>,
    /// The seeds' metrics per (run, arm), when `[results]` asked for them.
    pub results: Vec<ResultsGroup>,
    /// CUPED's sums of revenue per converting contact per (run, arm), with
    /// `[results] cuped`.
    pub ratio_cuped: Vec<RatioCupedGroup>,
}

fn get<T: sea_orm::TryGetable>(row: &QueryResult, i: usize) -> ReportResult<T> {
    Ok(row.try_get_by_index(i)?)
}

fn count(row: &QueryResult, i: usize) -> ReportResult<u64> {
    let n: i64 = get(row, i)?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// The names of every campaign that has run.
pub async fn campaign_names(db: &Db) -> ReportResult<Vec<String>> {
    let mut q = Sql::new();
    q.push("SELECT name FROM campaigns ORDER BY name");
    let rows = db.conn.query_all_raw(q.build(db.backend())).await?;
    rows.iter().map(|r| get(r, 0)).collect()
}

async fn campaign_row(db: &Db, name: &str) -> ReportResult<Option<CampaignRow>> {
    let mut q = Sql::new();
    q.push("SELECT id, name, kind, fingerprint FROM campaigns WHERE name = ")
        .bind(name.to_string());
    let rows = db.conn.query_all_raw(q.build(db.backend())).await?;
    rows.first()
        .map(|r| {
            Ok(CampaignRow {
                id: get(r, 0)?,
                name: get(r, 1)?,
                kind: get(r, 2)?,
                fingerprint: get(r, 3)?,
            })
        })
        .transpose()
}

/// The campaign's runs that `filter` selects, oldest first.
pub async fn runs(db: &Db, campaign_id: i64, filter: &ReportFilter) -> ReportResult<Vec<RunRow>> {
    let mut q = Sql::new();
    q.push("SELECT id, scheduled_at, now_at, state, origin, fingerprint, finished_at FROM runs");
    run_conditions(&mut q, campaign_id, filter);
    q.push(" ORDER BY now_at, id");
    let rows = db.conn.query_all_raw(q.build(db.backend())).await?;
    rows.iter()
        .map(|r| {
            Ok(RunRow {
                id: get(r, 0)?,
                scheduled_at: get(r, 1)?,
                started_at: get(r, 2)?,
                state: get(r, 3)?,
                origin: get(r, 4)?,
                fingerprint: get(r, 5)?,
                finished_at: get(r, 6)?,
            })
        })
        .collect()
}

/// ` WHERE ...` selecting the campaign's runs by `filter`, over table `runs`.
fn run_conditions(q: &mut Sql, campaign_id: i64, filter: &ReportFilter) {
    q.push(" WHERE campaign_id = ").bind(campaign_id);
    if let Some(run) = filter.run {
        q.push(" AND id = ").bind(run);
    }
    // A triggered campaign's one open-ended run is cut by its messages' trigger
    // instants instead (see `Runs::Triggered`).
    if let Some(since) = filter.since {
        q.push(" AND (origin = 'trigger' OR now_at >= ")
            .bind(since)
            .push(")");
    }
    if let Some(until) = filter.until {
        q.push(" AND (origin = 'trigger' OR now_at < ")
            .bind(until)
            .push(")");
    }
}

/// The outcome columns the scan counts, in [`Tally`] order.
const FLAGS: [&str; 7] = [
    "sent_at",
    "opened_at",
    "machine_opened_at",
    "clicked_at",
    "unsubscribed_at",
    "complained_at",
    "converted_at",
];

/// Which of the campaign's runs a scan statement reads.
#[derive(Debug, Clone, Copy)]
enum Runs<'a> {
    /// Every run: no condition at all.
    All,
    /// These runs, as a list of at most [`MAX_LISTED_RUNS`] bound ids.
    Listed(&'a [i64]),
    /// The runs the filter selects, by a subquery (triggered runs apart).
    Filtered(&'a ReportFilter),
    /// Triggered runs, their messages cut by trigger instant: `[since, until)`.
    Triggered(&'a [i64], Option<i64>, Option<i64>),
}

impl<'a> Runs<'a> {
    /// How to select `ids`, the runs `filter` selected.
    fn of(filter: &'a ReportFilter, ids: &'a [i64]) -> Self {
        if *filter == ReportFilter::default() {
            Runs::All
        } else if ids.len() <= MAX_LISTED_RUNS {
            Runs::Listed(ids)
        } else {
            Runs::Filtered(filter)
        }
    }
}

/// Which groups a scan statement makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    /// (run, arm, status, reason of a suppression or cancellation): PostgreSQL
    /// aggregates by hash, so one statement does it all.
    Whole,
    /// (run, arm, status): SQLite reads the covering index `messages_report`
    /// in this order and never sorts.
    ByStatus,
    /// (run, arm, status, reason) of suppressed and cancelled messages only:
    /// SQLite reads the partial covering index `messages_report_reasons`.
    Reasons,
}

/// A grouped scan statement. Reasons are kept only where they name a kind of
/// suppression or cancellation: a failure's reason is provider text, one
/// group per distinct message. On SQLite each expression is written as the
/// covering indexes of migration `m20261126_000001_rollout` have it, and a
/// computed reason (a CASE) would defeat them: hence two statements there.
fn scan_sql(
    b: DbBackend,
    campaign_id: i64,
    runs: Runs<'_>,
    secondary: &[String],
    part: Part,
    only: Option<&Flight>,
) -> Sql {
    let mut q = Sql::new();
    q.push("SELECT m.run_id, m.arm, m.status, ");
    q.push(match part {
        // Most messages have no reason: that test is cheaper than two on the status.
        Part::Whole => {
            "CASE WHEN m.reason IS NULL THEN NULL \
             WHEN m.status IN ('suppressed', 'cancelled') THEN m.reason END"
        }
        Part::ByStatus => "NULL",
        Part::Reasons => "m.reason",
    });
    q.push(", COUNT(*)");
    for flag in FLAGS {
        match b {
            DbBackend::Postgres => q.push(", COUNT(m.").push(flag).push(")"),
            _ => q.push(", SUM(m.").push(flag).push(" IS NOT NULL)"),
        };
    }
    q.push(
        ", CAST(COALESCE(SUM(m.revenue), 0) AS DOUBLE PRECISION), \
         CAST(COALESCE(SUM(m.revenue * m.revenue), 0) AS DOUBLE PRECISION), MAX(m.send_at)",
    );
    // Secondary goals are read from the same rows: `secondary` holds
    // {"EVENT": {"at", "count", "revenue"}} for each goal a message reached.
    for goal in secondary {
        match b {
            // A key test and one path lookup: no intermediate jsonb is built.
            DbBackend::Postgres => {
                q.push(", COUNT(*) FILTER (WHERE jsonb_exists(m.secondary, ")
                    .bind_as(b, goal.clone(), "text")
                    .push(")), CAST(COALESCE(SUM(CAST(m.secondary #>> ARRAY[")
                    .bind_as(b, goal.clone(), "text")
                    .push(", 'revenue'] AS DOUBLE PRECISION)), 0) AS DOUBLE PRECISION)");
            }
            // SQLite's JSON paths have no escape for a double quote in a key.
            _ if goal.contains('"') => {
                q.push(", 0, 0.0");
            }
            _ => {
                q.push(", COUNT(json_extract(m.secondary, ")
                    .bind(sqlite_json_path(goal, None))
                    .push(")), CAST(COALESCE(SUM(json_extract(m.secondary, ")
                    .bind(sqlite_json_path(goal, Some("revenue")))
                    .push(")), 0) AS DOUBLE PRECISION)");
            }
        }
    }
    // A contact is the unit: a series counts on its first message, whose goal
    // window spans the later steps (`Campaign::goal_window_ms`). SQLite's
    // covering indexes are partial on exactly this condition.
    q.push(" FROM messages m WHERE m.campaign_id = ")
        .bind(campaign_id)
        .push(" AND m.step = 0");
    if part == Part::Reasons {
        q.push(" AND m.status IN ('suppressed', 'cancelled')");
    }
    push_runs(&mut q, campaign_id, runs);
    if let Some(flight) = only {
        flights::push_untouched(&mut q, b, flight);
    }
    q.push(match part {
        Part::ByStatus => " GROUP BY 1, 2, 3",
        Part::Whole | Part::Reasons => " GROUP BY 1, 2, 3, 4",
    });
    q
}

/// The seeds' metrics of the messages `runs` selects, per (run, arm), in
/// one statement that joins the named events to the messages by contact
/// (every event between the send and the last instant of the longest
/// window) and sums each message's windows at once by conditional
/// aggregates (retained: any event in the window; revenue: the sum of the
/// values), so the sums of squares (the spread of ARPU and LTV) cost a
/// multiplication. CUPED's covariates were stored on each message when it
/// was planned: read with it, no look at the history.
///
/// This replaced four correlated probes of the events index a message
/// (issue 33), and was chosen over keeping the values on the message: it
/// keeps nothing that an event arriving late, out of order or through an
/// import could make stale, or that a change of `[results]` could leave
/// answering another question; the numbers are always the events' as they
/// are now. Each database gets the form it runs fastest (measured, see
/// docs/benchmarks.md): PostgreSQL a hash join, SQLite one pass over the
/// messages. Kept apart from the grouped scan so that a campaign without
/// `[results]` pays nothing, and SQLite's covering indexes of that scan stay
/// covering.
fn results_sql(b: DbBackend, campaign_id: i64, runs: Runs<'_>, spec: &ResultsSpec) -> Sql {
    match b {
        DbBackend::Postgres => results_sql_hash(campaign_id, runs, spec),
        _ => results_sql_one_pass(campaign_id, runs, spec),
    }
}

const ZERO: &str = "CAST(0 AS DOUBLE PRECISION)";

/// The event names `[results]` reads, each once.
fn results_events(spec: &ResultsSpec) -> Vec<&String> {
    let mut names: Vec<&String> = [&spec.retention_event, &spec.revenue_event]
        .into_iter()
        .flatten()
        .collect();
    names.dedup();
    names
}

/// ` AND e.name IN (...) AND e.at > m.send_at AND e.at <= ...`: the events
/// that can fall in a window of message `m`. Retention's windows end before
/// day 31, ARPU's and LTV's at their ends.
fn push_event_window(q: &mut Sql, spec: &ResultsSpec, names: &[&String]) {
    let mut last = 0;
    if spec.retention_event.is_some() {
        last = 31 * DAY_MS - 1;
    }
    if spec.revenue_event.is_some() {
        last = last.max(ARPU_DAYS * DAY_MS).max(spec.ltv_horizon_ms);
    }
    q.push(" AND e.name IN (");
    for (i, name) in names.iter().enumerate() {
        if i > 0 {
            q.push(", ");
        }
        q.bind((*name).clone());
    }
    q.push(") AND e.at > m.send_at AND e.at <= m.send_at + ")
        .bind(last);
}

/// `, ... AS d1, ... AS d8, ... AS r30, ... AS rl`: one message's windows
/// over its joined events `e` (constants for a metric without its event).
/// `e.at > m.send_at` is the join's.
fn push_windows(q: &mut Sql, spec: &ResultsSpec) {
    for (from_day, to_day, name) in [(1, 8, "d1"), (8, 31, "d8")] {
        match &spec.retention_event {
            Some(event) => {
                q.push(", MAX(CASE WHEN e.name = ")
                    .bind(event.clone())
                    .push(" AND e.at >= m.send_at + ")
                    .bind(from_day * DAY_MS)
                    .push(" AND e.at < m.send_at + ")
                    .bind(to_day * DAY_MS)
                    .push(" THEN 1 ELSE 0 END) AS ");
            }
            None => {
                q.push(", 0 AS ");
            }
        }
        q.push(name);
    }
    for (span_ms, name) in [(ARPU_DAYS * DAY_MS, "r30"), (spec.ltv_horizon_ms, "rl")] {
        match &spec.revenue_event {
            Some(event) => {
                q.push(", CAST(COALESCE(SUM(CASE WHEN e.name = ")
                    .bind(event.clone())
                    .push(" AND e.at <= m.send_at + ")
                    .bind(span_ms)
                    .push(" THEN e.value END), 0) AS DOUBLE PRECISION) AS ");
            }
            None => {
                q.push(", ").push(ZERO).push(" AS ");
            }
        }
        q.push(name);
    }
}

/// SQLite's form: one pass over the messages, each message left-joined to
/// its events in the windows (one seek of the covering index
/// `events_name_contact_at` per event name) and grouped by its id, which
/// the scan already delivers in order, so nothing is sorted. Reading the
/// messages a second time for those without events (PostgreSQL's form) cost
/// SQLite more than the join.
fn results_sql_one_pass(campaign_id: i64, runs: Runs<'_>, spec: &ResultsSpec) -> Sql {
    let mut q = Sql::new();
    q.push(
        "SELECT t.run_id, t.arm, COUNT(*), CAST(COALESCE(SUM(t.d1), 0) AS BIGINT), \
         CAST(COALESCE(SUM(t.d8), 0) AS BIGINT), \
         CAST(COALESCE(SUM(t.r30), 0) AS DOUBLE PRECISION), \
         CAST(COALESCE(SUM(t.rl), 0) AS DOUBLE PRECISION), MAX(t.send_at), \
         CAST(COALESCE(SUM(t.r30 * t.r30), 0) AS DOUBLE PRECISION), \
         CAST(COALESCE(SUM(t.rl * t.rl), 0) AS DOUBLE PRECISION), \
         CAST(COALESCE(SUM(t.ph), 0) AS BIGINT), CAST(COALESCE(SUM(t.cv), 0) AS BIGINT), \
         CAST(COALESCE(SUM(t.pc), 0) AS BIGINT), CAST(COALESCE(SUM(t.pc * t.cv), 0) AS BIGINT), \
         CAST(COALESCE(SUM(t.pr), 0) AS DOUBLE PRECISION), \
         CAST(COALESCE(SUM(t.pr * t.pr), 0) AS DOUBLE PRECISION), \
         CAST(COALESCE(SUM(t.pr * t.r30), 0) AS DOUBLE PRECISION), \
         CAST(COALESCE(SUM(t.pr * t.rl), 0) AS DOUBLE PRECISION) \
         FROM (SELECT m.run_id, m.arm, m.send_at",
    );
    // A message without covariates (planned before CUPED was asked for)
    // counts as a contact without history.
    q.push(if spec.cuped {
        ", CASE WHEN m.converted_at IS NULL THEN 0 ELSE 1 END AS cv, \
         COALESCE(m.pre_converted, 0) AS pc, \
         CAST(COALESCE(m.pre_revenue, 0) AS DOUBLE PRECISION) AS pr, \
         CASE WHEN m.pre_converted IS NULL AND m.pre_revenue IS NULL THEN 0 ELSE 1 END AS ph"
    } else {
        ", 0 AS cv, 0 AS pc, CAST(0 AS DOUBLE PRECISION) AS pr, 0 AS ph"
    });
    let names = results_events(spec);
    if names.is_empty() {
        q.push(", 0 AS d1, 0 AS d8, ")
            .push(ZERO)
            .push(" AS r30, ")
            .push(ZERO)
            .push(" AS rl FROM messages m");
        push_results_messages(&mut q, campaign_id, runs);
    } else {
        push_windows(&mut q, spec);
        q.push(" FROM messages m LEFT JOIN events e ON e.contact_id = m.contact_id");
        push_event_window(&mut q, spec, &names);
        push_results_messages(&mut q, campaign_id, runs);
        q.push(" GROUP BY m.id");
    }
    q.push(") t GROUP BY t.run_id, t.arm");
    q
}

/// PostgreSQL's form: two parts added up in one statement (one snapshot).
/// The first reads the messages alone: how many, the latest send, CUPED's
/// covariates. The second hash-joins the events to the messages and groups
/// by message; a message none of whose events fall in a window never
/// reaches it, its zeros are the first part's. Grouping every message
/// instead (SQLite's form) cost PostgreSQL half as much again.
fn results_sql_hash(campaign_id: i64, runs: Runs<'_>, spec: &ResultsSpec) -> Sql {
    let mut q = Sql::new();
    q.push(
        "SELECT u.run_id, u.arm, CAST(SUM(u.n) AS BIGINT), CAST(SUM(u.d1) AS BIGINT), \
         CAST(SUM(u.d8) AS BIGINT), CAST(SUM(u.r30) AS DOUBLE PRECISION), \
         CAST(SUM(u.rl) AS DOUBLE PRECISION), MAX(u.last), \
         CAST(SUM(u.r30sq) AS DOUBLE PRECISION), CAST(SUM(u.rlsq) AS DOUBLE PRECISION), \
         CAST(SUM(u.ph) AS BIGINT), CAST(SUM(u.cv) AS BIGINT), CAST(SUM(u.pc) AS BIGINT), \
         CAST(SUM(u.pcv) AS BIGINT), CAST(SUM(u.pr) AS DOUBLE PRECISION), \
         CAST(SUM(u.prsq) AS DOUBLE PRECISION), CAST(SUM(u.prx30) AS DOUBLE PRECISION), \
         CAST(SUM(u.prxl) AS DOUBLE PRECISION) FROM (",
    );
    q.push("SELECT m.run_id, m.arm, COUNT(*) AS n, 0 AS d1, 0 AS d8, ")
        .push(ZERO)
        .push(" AS r30, ")
        .push(ZERO)
        .push(" AS rl, MAX(m.send_at) AS last, ")
        .push(ZERO)
        .push(" AS r30sq, ")
        .push(ZERO)
        .push(" AS rlsq, ");
    q.push(if spec.cuped {
        "SUM(CASE WHEN m.pre_converted IS NULL AND m.pre_revenue IS NULL THEN 0 ELSE 1 END) AS ph, \
         SUM(CASE WHEN m.converted_at IS NULL THEN 0 ELSE 1 END) AS cv, \
         SUM(COALESCE(m.pre_converted, 0)) AS pc, \
         SUM(CASE WHEN m.converted_at IS NULL THEN 0 ELSE COALESCE(m.pre_converted, 0) END) AS pcv, \
         CAST(SUM(COALESCE(m.pre_revenue, 0)) AS DOUBLE PRECISION) AS pr, \
         CAST(SUM(COALESCE(m.pre_revenue, 0) * COALESCE(m.pre_revenue, 0)) AS DOUBLE PRECISION) AS prsq, "
    } else {
        "0 AS ph, 0 AS cv, 0 AS pc, 0 AS pcv, CAST(0 AS DOUBLE PRECISION) AS pr, \
         CAST(0 AS DOUBLE PRECISION) AS prsq, "
    })
    .push(ZERO)
    .push(" AS prx30, ")
    .push(ZERO)
    .push(" AS prxl FROM messages m");
    push_results_messages(&mut q, campaign_id, runs);
    q.push(" GROUP BY m.run_id, m.arm");
    let names = results_events(spec);
    if !names.is_empty() {
        q.push(
            " UNION ALL SELECT p.run_id, p.arm, 0, SUM(p.d1), SUM(p.d8), SUM(p.r30), SUM(p.rl), NULL, \
             SUM(p.r30 * p.r30), SUM(p.rl * p.rl), 0, 0, 0, 0, ",
        )
        .push(ZERO)
        .push(", ")
        .push(ZERO)
        .push(", SUM(p.pr * p.r30), SUM(p.pr * p.rl) FROM (SELECT m.id, m.run_id, m.arm, ")
        .push(if spec.cuped {
            "CAST(COALESCE(m.pre_revenue, 0) AS DOUBLE PRECISION)"
        } else {
            ZERO
        })
        .push(" AS pr");
        push_windows(&mut q, spec);
        q.push(" FROM messages m JOIN events e ON e.contact_id = m.contact_id");
        push_results_messages(&mut q, campaign_id, runs);
        push_event_window(&mut q, spec, &names);
        q.push(" GROUP BY m.id, m.run_id, m.arm");
        if spec.cuped {
            q.push(", m.pre_revenue");
        }
        q.push(") p GROUP BY p.run_id, p.arm");
    }
    q.push(") u GROUP BY u.run_id, u.arm");
    q
}

/// ` WHERE ...` selecting, as `m`, the messages of `runs` that `[results]`
/// counts: each contact's first message, the global holdout left out (it is
/// outside the campaign's experiment, as in the scan).
fn push_results_messages(q: &mut Sql, campaign_id: i64, runs: Runs<'_>) {
    q.push(" WHERE m.campaign_id = ")
        .bind(campaign_id)
        .push(" AND m.step = 0")
        .push(" AND (m.status <> 'suppressed' OR m.reason IS NULL OR m.reason <> ")
        .bind(SuppressReason::GlobalHoldout.as_str().to_string())
        .push(")");
    push_runs(q, campaign_id, runs);
}

/// Runs the statement `sql` makes for each part of a report's selection
/// (the scheduled runs, then the triggered ones cut by trigger instant under
/// `filter`) and keeps the rows (run id in column 0) of that part's runs:
/// the per-(run, arm) statements beside the grouped scan share it.
async fn rows_of_runs(
    db: &Db,
    filter: &ReportFilter,
    scheduled: &[i64],
    triggered: &[i64],
    sql: impl Fn(Runs<'_>) -> Sql,
) -> ReportResult<Vec<(i64, QueryResult)>> {
    let mut parts = Vec::new();
    if !scheduled.is_empty() {
        parts.push(Runs::of(filter, scheduled));
    }
    if !triggered.is_empty() {
        parts.push(Runs::Triggered(triggered, filter.since, filter.until));
    }
    let mut out = Vec::new();
    for runs in parts {
        let wanted: BTreeSet<i64> = match runs {
            Runs::Triggered(ids, ..) => ids.iter().copied().collect(),
            _ => scheduled.iter().copied().collect(),
        };
        let q = sql(runs);
        for r in db.conn.query_all_raw(q.build(db.backend())).await? {
            let run_id: i64 = get(&r, 0)?;
            if wanted.contains(&run_id) {
                out.push((run_id, r));
            }
        }
    }
    Ok(out)
}

/// The seeds' metrics of the runs `run_ids` (of which `triggered` are cut
/// by trigger instant under `filter`).
async fn results_scan(
    db: &Db,
    campaign_id: i64,
    filter: &ReportFilter,
    scheduled: &[i64],
    triggered: &[i64],
    spec: &ResultsSpec,
) -> ReportResult<Vec<ResultsGroup>> {
    let b = db.backend();
    let rows = rows_of_runs(db, filter, scheduled, triggered, |runs| {
        results_sql(b, campaign_id, runs, spec)
    })
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for (run_id, r) in rows {
        out.push(ResultsGroup {
            run_id,
            arm: get(&r, 1)?,
            tally: ResultsTally {
                messages: count(&r, 2)?,
                retained_d1_7: count(&r, 3)?,
                retained_d8_30: count(&r, 4)?,
                revenue_30d: get(&r, 5)?,
                revenue_ltv: get(&r, 6)?,
                last_send_at: get(&r, 7)?,
                revenue_30d_squares: get(&r, 8)?,
                revenue_ltv_squares: get(&r, 9)?,
                cuped: CupedTally {
                    recorded: count(&r, 10)?,
                    converted: count(&r, 11)?,
                    pre_converted: count(&r, 12)?,
                    both_converted: count(&r, 13)?,
                    pre_revenue: get(&r, 14)?,
                    pre_revenue_squares: get(&r, 15)?,
                    pre_revenue_x_30d: get(&r, 16)?,
                    pre_revenue_x_ltv: get(&r, 17)?,
                },
            },
        });
    }
    Ok(out)
}

/// ` AND ...` selecting the messages of `runs`.
fn push_runs(q: &mut Sql, campaign_id: i64, runs: Runs<'_>) {
    match runs {
        Runs::All => {}
        Runs::Listed(ids) => {
            // A list, not a join: PostgreSQL then estimates the rows from the
            // column's statistics and aggregates by hash, not by sorting 10M rows.
            q.push(" AND m.run_id IN (");
            for (i, id) in ids.iter().enumerate() {
                if i > 0 {
                    q.push(",");
                }
                q.bind(*id);
            }
            q.push(")");
        }
        Runs::Filtered(filter) => {
            q.push(" AND m.run_id IN (SELECT id FROM runs");
            run_conditions(q, campaign_id, filter);
            q.push(" AND origin <> 'trigger')");
        }
        Runs::Triggered(ids, since, until) => {
            q.push(" AND m.run_id IN (");
            for (i, id) in ids.iter().enumerate() {
                if i > 0 {
                    q.push(",");
                }
                q.bind(*id);
            }
            q.push(")");
            if let Some(since) = since {
                q.push(" AND m.trigger_at >= ").bind(since);
            }
            if let Some(until) = until {
                q.push(" AND m.trigger_at < ").bind(until);
            }
        }
    }
}

/// A SQLite JSON path to key `key` (and then `field`), the key quoted so
/// that dots or brackets in an event name stay part of the name.
fn sqlite_json_path(key: &str, field: Option<&str>) -> String {
    match field {
        Some(f) => format!("$.\"{key}\".{f}"),
        None => format!("$.\"{key}\""),
    }
}

/// Statements of the grouped scan running at once on SQLite, at most: one
/// statement runs on one core, and the pool holds four connections.
const MAX_SQLITE_PARTS: usize = 4;

async fn scan(
    db: &Db,
    campaign_id: i64,
    filter: &ReportFilter,
    run_ids: &[i64],
    secondary: &[String],
    triggered: bool,
) -> ReportResult<Vec<Group>> {
    let b = db.backend();
    let rows: Vec<(Part, QueryResult)> = if b == DbBackend::Postgres || triggered {
        // PostgreSQL spreads one statement over its parallel workers; a
        // triggered run cut by date is one statement on SQLite too.
        let runs = if triggered {
            Runs::Triggered(run_ids, filter.since, filter.until)
        } else {
            Runs::of(filter, run_ids)
        };
        let q = scan_sql(b, campaign_id, runs, secondary, Part::Whole, None);
        let rows = db.conn.query_all_raw(q.build(b)).await?;
        rows.into_iter().map(|r| (Part::Whole, r)).collect()
    } else {
        // SQLite runs a statement on one core: the runs are split among a
        // few connections, each reading its runs in one read transaction,
        // so every run is counted from one snapshot.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let parts = cores
            .clamp(1, MAX_SQLITE_PARTS)
            .max(run_ids.len().div_ceil(MAX_LISTED_RUNS))
            .min(run_ids.len().max(1));
        let mut chunks: Vec<Vec<i64>> = vec![Vec::new(); parts];
        for (i, id) in run_ids.iter().enumerate() {
            chunks[i % parts].push(*id);
        }
        let scans = chunks.iter().map(|ids| {
            let runs = if parts == 1 {
                Runs::of(filter, run_ids)
            } else {
                Runs::Listed(ids)
            };
            sqlite_scan(db, campaign_id, runs, secondary)
        });
        futures::future::try_join_all(scans)
            .await?
            .into_iter()
            .flatten()
            .collect()
    };
    let wanted: BTreeSet<i64> = run_ids.iter().copied().collect();
    let mut groups = Vec::with_capacity(rows.len());
    for (part, r) in &rows {
        let run_id: i64 = get(r, 0)?;
        let status: String = get(r, 2)?;
        // With no filter the scan reads the whole campaign, which may have
        // gained a run since the run list was read.
        if !wanted.contains(&run_id) {
            continue;
        }
        // Suppressed and cancelled messages come again, by reason.
        if *part == Part::ByStatus && matches!(status.as_str(), "suppressed" | "cancelled") {
            continue;
        }
        groups.push(group_of(r, secondary)?);
    }
    Ok(groups)
}

/// The [`Group`] of one row of a scan statement.
fn group_of(r: &QueryResult, secondary: &[String]) -> ReportResult<Group> {
    {
        let run_id: i64 = get(r, 0)?;
        let status: String = get(r, 2)?;
        let reason: Option<String> = get(r, 3)?;
        let mut tally = Tally {
            messages: count(r, 4)?,
            sent: count(r, 5)?,
            opened: count(r, 6)?,
            machine_opened: count(r, 7)?,
            clicked: count(r, 8)?,
            unsubscribed: count(r, 9)?,
            complained: count(r, 10)?,
            converted: count(r, 11)?,
            revenue: get(r, 12)?,
            revenue_squares: get(r, 13)?,
            last_send_at: get(r, 14)?,
            secondary: Vec::with_capacity(secondary.len()),
        };
        for i in 0..secondary.len() {
            tally
                .secondary
                .push((count(r, 15 + 2 * i)?, get(r, 16 + 2 * i)?));
        }
        Ok(Group {
            run_id,
            arm: get(r, 1)?,
            status,
            reason,
            tally,
        })
    }
}

/// The flights of `run_ids` in the air, read before the scan: only a flight
/// written before the scan began can have its rows counted by it.
async fn flights_before_scan(db: &Db, run_ids: &[i64]) -> ReportResult<Vec<Flight>> {
    let (Some(lo), Some(hi)) = (run_ids.iter().min(), run_ids.iter().max()) else {
        return Ok(Vec::new());
    };
    let wanted: BTreeSet<i64> = run_ids.iter().copied().collect();
    Ok(flights::flights_of_runs(&db.conn, *lo, *hi)
        .await?
        .into_iter()
        .filter(|f| wanted.contains(&f.run_id))
        .collect())
}

/// Moves the untouched rows of `flights` (read before the scan) out of the
/// `sent`/`delivered` groups the scan put them in, into `sending` (the
/// flight's lease holds) or `unknown` (it lapsed: its worker died), as of
/// `now`. A flight that landed since it was read is left as the scan counted
/// it: its rows then say what happened. Triggered runs cut by date keep
/// their cut (`trigger`).
async fn count_flights_in_the_air(
    db: &Db,
    campaign_id: i64,
    flights: &[Flight],
    secondary: &[String],
    trigger: Option<(Option<i64>, Option<i64>)>,
    groups: &mut Vec<Group>,
    now: i64,
) -> ReportResult<()> {
    let b = db.backend();
    for flight in flights {
        let run = [flight.run_id];
        let runs = match trigger {
            Some((since, until)) => Runs::Triggered(&run, since, until),
            None => Runs::Listed(&run),
        };
        let q = scan_sql(b, campaign_id, runs, secondary, Part::Whole, Some(flight));
        let air = InTheAir::at(flight.lease_until, now).status();
        for r in db.conn.query_all_raw(q.build(b)).await? {
            let moved = group_of(&r, secondary)?;
            if let Some(g) = groups.iter_mut().find(|g| {
                g.run_id == moved.run_id
                    && g.arm == moved.arm
                    && g.status == moved.status
                    && g.reason == moved.reason
            }) {
                g.tally.subtract(&moved.tally);
            }
            let mut tally = moved.tally;
            tally.sent = 0;
            match groups.iter_mut().find(|g| {
                g.run_id == moved.run_id
                    && g.arm == moved.arm
                    && g.status == air
                    && g.reason.is_none()
            }) {
                Some(g) => g.tally.add(&tally),
                None => groups.push(Group {
                    run_id: moved.run_id,
                    arm: moved.arm,
                    status: air.to_string(),
                    reason: None,
                    tally,
                }),
            }
        }
    }
    groups.retain(|g| g.tally.messages > 0);
    Ok(())
}

/// SQLite's two statements over `runs`, in one read transaction.
async fn sqlite_scan(
    db: &Db,
    campaign_id: i64,
    runs: Runs<'_>,
    secondary: &[String],
) -> ReportResult<Vec<(Part, QueryResult)>> {
    let b = db.backend();
    let txn = db.conn.begin().await?;
    let mut rows = Vec::new();
    for part in [Part::ByStatus, Part::Reasons] {
        let q = scan_sql(b, campaign_id, runs, secondary, part, None);
        rows.extend(
            txn.query_all_raw(q.build(b))
                .await?
                .into_iter()
                .map(|r| (part, r)),
        );
    }
    txn.commit().await?;
    Ok(rows)
}

/// Reads what the report of `campaign` over the runs `filter` selects is
/// built from, counting `secondary` goals and the seeds' metrics of
/// `results`; `None` when it has never run.
pub async fn load(
    db: &Db,
    campaign: &str,
    filter: &ReportFilter,
    secondary: &[String],
    results: Option<&ResultsSpec>,
    now: i64,
) -> ReportResult<Option<ReportData>> {
    let Some(row) = campaign_row(db, campaign).await? else {
        return Ok(None);
    };
    let runs = runs(db, row.id, filter).await?;
    let run_ids: Vec<i64> = runs.iter().map(|r| r.id).collect();
    let cut = filter.since.is_some() || filter.until.is_some();
    let (triggered, scheduled): (Vec<&RunRow>, Vec<&RunRow>) =
        runs.iter().partition(|r| cut && r.origin == "trigger");
    let ids = |rs: Vec<&RunRow>| rs.iter().map(|r| r.id).collect::<Vec<i64>>();
    let (triggered, scheduled) = (ids(triggered), ids(scheduled));
    // Handed batches are written as their sends are expected to end: read
    // which are still in the air first, and count them as such after.
    let in_air = flights_before_scan(db, &run_ids).await?;
    let mut groups = Vec::new();
    if !scheduled.is_empty() {
        groups = scan(db, row.id, filter, &scheduled, secondary, false).await?;
    }
    if !triggered.is_empty() {
        groups.extend(scan(db, row.id, filter, &triggered, secondary, true).await?);
    }
    if !in_air.is_empty() {
        let (of_triggered, of_scheduled): (Vec<Flight>, Vec<Flight>) = in_air
            .into_iter()
            .partition(|f| triggered.contains(&f.run_id));
        let cut = Some((filter.since, filter.until));
        for (flights, trigger) in [(of_scheduled, None), (of_triggered, cut)] {
            count_flights_in_the_air(db, row.id, &flights, secondary, trigger, &mut groups, now)
                .await?;
        }
    }
    let ratio_cuped = match results {
        Some(spec) if spec.cuped => {
            ratio_cuped::ratio_cuped_scan(db, row.id, filter, &scheduled, &triggered).await?
        }
        _ => Vec::new(),
    };
    let results = match results {
        Some(spec) => results_scan(db, row.id, filter, &scheduled, &triggered, spec).await?,
        None => Vec::new(),
    };
    let rollouts = rollouts(db, row.id)
        .await?
        .into_iter()
        .filter(|r| run_ids.contains(&r.run_id))
        .collect();
    Ok(Some(ReportData {
        campaign: Some(row),
        runs,
        groups,
        secondary_goals: secondary.to_vec(),
        rollouts,
        results,
        ratio_cuped,
    }))
}

/// The report of `name`: its runs that `filter` selects, with the goal,
/// secondary goals and current weights of `campaign` (its config, if it still
/// has one) and the configured global holdout fraction. `None` when the
/// campaign is neither configured nor has ever run.
pub async fn campaign_report(
    db: &Db,
    name: &str,
    campaign: Option<&Campaign>,
    global_holdout: f64,
    filter: &ReportFilter,
    now: i64,
) -> ReportResult<Option<Report>> {
    // Secondary goals share the goal's window: without a goal none is attributed.
    let secondary: Vec<String> = campaign
        .filter(|c| c.goal.is_some())
        .map(|c| c.secondary_goals.clone())
        .unwrap_or_default();
    let spec = campaign.and_then(ResultsSpec::of);
    let data = match load(db, name, filter, &secondary, spec.as_ref(), now).await? {
        Some(data) => data,
        None if campaign.is_some() => ReportData {
            campaign: None,
            runs: Vec::new(),
            groups: Vec::new(),
            secondary_goals: secondary,
            rollouts: Vec::new(),
            results: Vec::new(),
            ratio_cuped: Vec::new(),
        },
        None => return Ok(None),
    };
    let settings = ReportSettings::new(name, campaign, global_holdout, now);
    Ok(Some(build(&data, &settings, filter)))
}

/// A goal's conversion rate before a send, for its power (`herald send --dry-run`).
#[derive(Debug, Clone, PartialEq)]
pub struct Baseline {
    /// Converted / contacts.
    pub rate: f64,
    /// Contacts it was measured on.
    pub contacts: u64,
    /// Where it comes from, in words.
    pub from: String,
}

/// Longest span of events the fallback baseline reads.
const BASELINE_DAYS: i64 = 30;

/// The conversion rate the campaign's next run can expect on its goal
/// (`event` within `window_ms`): over the previous runs' messages whose
/// goal window has closed (intention to treat, every arm, the global holdout
/// and a rollout's rest left out); without any, the share of all contacts
/// with the event in the last `window_ms` (at most 30 days) before `now`.
/// `None` when neither has a conversion. Reads the campaign's messages once.
pub async fn baseline_rate(
    db: &Db,
    campaign: &str,
    event: &str,
    window_ms: i64,
    now: i64,
) -> ReportResult<Option<Baseline>> {
    let b = db.backend();
    let mut q = Sql::new();
    q.push(
        "SELECT COUNT(*), COUNT(m.converted_at) FROM messages m JOIN campaigns c ON c.id = m.campaign_id WHERE c.name = ",
    )
    .bind(campaign.to_string())
    .push(" AND m.step = 0 AND m.arm NOT LIKE 'rollout:%' AND m.send_at <= ")
    .bind(now.saturating_sub(window_ms))
    .push(" AND (m.status <> 'suppressed' OR m.reason IS NULL OR m.reason <> ")
    .bind(SuppressReason::GlobalHoldout.as_str().to_string())
    .push(")");
    if let Some(r) = db.conn.query_one_raw(q.build(b)).await? {
        let (n, k) = (count(&r, 0)?, count(&r, 1)?);
        if n > 0 && k > 0 {
            return Ok(Some(Baseline {
                rate: k as f64 / n as f64,
                contacts: n,
                from: format!("{k} of {n} contacts of its previous runs converted"),
            }));
        }
    }
    let span = window_ms.clamp(1, BASELINE_DAYS * DAY_MS);
    let mut q = Sql::new();
    q.push("SELECT (SELECT COUNT(DISTINCT e.contact_id) FROM events e WHERE e.name = ")
        .bind(event.to_string())
        .push(" AND e.at > ")
        .bind(now - span)
        .push(" AND e.at <= ")
        .bind(now)
        .push("), (SELECT COUNT(*) FROM contacts)");
    let Some(r) = db.conn.query_one_raw(q.build(b)).await? else {
        return Ok(None);
    };
    let (k, n) = (count(&r, 0)?, count(&r, 1)?);
    Ok((n > 0 && k > 0).then(|| Baseline {
        rate: k.min(n) as f64 / n as f64,
        contacts: n,
        from: format!(
            "no previous run: {k} of {n} contacts had `{event}` in the last {} day(s)",
            (span + DAY_MS - 1) / DAY_MS
        ),
    }))
}

/// Records a rollout decision; `false` when the run had already decided
/// (a decision is final, so a second one is refused, not merged).
pub async fn record_rollout(db: &Db, r: &RolloutRecord) -> ReportResult<bool> {
    let b = db.backend();
    let mut q = Sql::new();
    q.push("INSERT INTO rollouts (run_id, decided_at, metric, chosen, leader, clear_winner, window_cut_short, reason, detail) VALUES (")
        .bind(r.run_id)
        .push(",")
        .bind(r.decided_at)
        .push(",")
        .bind(r.metric.clone())
        .push(",")
        .bind(r.chosen.clone())
        .push(",")
        .bind(r.leader.clone())
        .push(",")
        .bind(r.clear_winner)
        .push(",")
        .bind(r.window_cut_short)
        .push(",")
        .bind(r.reason.clone())
        .push(",")
        .bind(sea_orm::Value::Json(Some(Box::new(r.detail.clone()))))
        .push(") ON CONFLICT (run_id) DO NOTHING");
    let written = db.conn.execute_raw(q.build(b)).await?.rows_affected();
    Ok(written == 1)
}

/// The rollout decisions of the campaign's runs.
pub async fn rollouts(db: &Db, campaign_id: i64) -> ReportResult<Vec<RolloutRecord>> {
    let mut q = Sql::new();
    q.push("SELECT o.run_id, o.decided_at, o.metric, o.chosen, o.leader, o.clear_winner, o.window_cut_short, o.reason, o.detail FROM rollouts o JOIN runs r ON r.id = o.run_id WHERE r.campaign_id = ")
        .bind(campaign_id)
        .push(" ORDER BY o.run_id");
    let rows = db.conn.query_all_raw(q.build(db.backend())).await?;
    rows.iter()
        .map(|r| {
            let detail: Option<Json> = get(r, 8)?;
            Ok(RolloutRecord {
                run_id: get(r, 0)?,
                decided_at: get(r, 1)?,
                metric: get(r, 2)?,
                chosen: get(r, 3)?,
                leader: get(r, 4)?,
                clear_winner: get(r, 5)?,
                window_cut_short: get(r, 6)?,
                reason: get(r, 7)?,
                detail: detail.unwrap_or(Json::Null),
            })
        })
        .collect()
}

#[cfg(test)]
mod cuped_tests;
#[cfg(test)]
mod db_tests;
#[cfg(test)]
mod probing;
#[cfg(test)]
mod results_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_are_rfc3339_or_dates() {
        assert_eq!(
            parse_instant("2026-11-20T10:00:00+08:00", Bound::Since).unwrap(),
            parse_instant("2026-11-20T02:00:00Z", Bound::Until).unwrap()
        );
        let day = parse_instant("2026-11-20", Bound::Since).unwrap();
        assert_eq!(
            day,
            parse_instant("2026-11-20T00:00:00Z", Bound::Since).unwrap()
        );
        // `--until 2026-11-20` includes that whole day.
        assert_eq!(
            parse_instant("2026-11-20", Bound::Until).unwrap(),
            day + 86_400_000
        );
        let err = parse_instant("last tuesday", Bound::Since).unwrap_err();
        assert!(err.to_string().contains("RFC 3339"), "{err}");
    }

    #[test]
    fn secondary_goal_paths_quote_the_event_name() {
        assert_eq!(sqlite_json_path("app_open", None), "$.\"app_open\"");
        assert_eq!(
            sqlite_json_path("a.b", Some("revenue")),
            "$.\"a.b\".revenue"
        );
    }

    #[test]
    fn tallies_add_up() {
        let mut a = Tally {
            messages: 2,
            converted: 1,
            revenue: 10.0,
            last_send_at: Some(5),
            secondary: vec![(1, 2.0)],
            ..Tally::default()
        };
        a.add(&Tally {
            messages: 3,
            sent: 3,
            revenue: 2.5,
            last_send_at: Some(9),
            secondary: vec![(2, 1.0), (4, 0.0)],
            ..Tally::default()
        });
        assert_eq!(
            (a.messages, a.sent, a.converted, a.revenue, a.last_send_at),
            (5, 3, 1, 12.5, Some(9))
        );
        assert_eq!(a.secondary, vec![(3, 3.0), (4, 0.0)]);
    }
}
