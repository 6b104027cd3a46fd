//! The console's stored figures: what a page would otherwise count over
//! every message or contact on each request (a run's counts and sends, a
//! campaign's report, a segment's grid and stages, the campaigns' and the
//! status page's run counts) is counted by a refresh job and kept in
//! `console_figures` ([`herald_storage::console_figures`]); a page reads
//! them by key and says how old they are. With nothing stored yet a page
//! counts live, says so, and stores what it counted, which the job then
//! keeps fresh. What stays live on a page is bounded: a contact's own rows,
//! the queue through its index, the runs table.
//!
//! One process refreshes at a time: [`refresher`] takes a lease in the
//! database before each pass, so several `herald serve` and `herald run`
//! on one PostgreSQL database do not all count the same figures.

use std::time::{Duration, Instant};

use herald_storage::console_figures::{self as stored, FiguresError};
use herald_storage::conversions::ArmConversions;
use herald_storage::runs::{self, ChannelStatus, RunDetail, RunStatus, Status, Which};
use herald_storage::segment_preview;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::watch;

use super::settings;
use crate::AppState;

/// How often the refresh job counts the figures again, by default.
pub const REFRESH_EVERY: Duration = Duration::from_secs(30);
/// The lease's name in `console_lease`.
const LEASE: &str = "console_figures";
/// How long a lease lasts unless renewed: longer than one pass takes at
/// 10,000,000 messages, so a busy holder keeps it; a dead one's lapses.
const LEASE_MS: i64 = 5 * 60_000;
/// The run page's chart: buckets of a minute over the last hour.
pub(crate) const BUCKET_MS: i64 = 60_000;
/// Minutes of sends the run page's chart shows.
pub(crate) const CHART_MINUTES: i64 = 60;
/// Figures no page has read for this long are no longer counted, and are
/// deleted (each report selection visited once would otherwise be counted
/// every 30 s forever); the next visit counts them live again.
pub const UNREAD_FOR_MS: i64 = 24 * 3_600_000;
/// Runs the status page lists.
pub(crate) const STATUS_RUNS: u32 = 20;
/// The report's conversions chart counts in minutes since the send.
pub(crate) const MINUTE_MS: i64 = 60_000;

/// What a stored document holds, by kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Key {
    /// The latest run of each campaign with its counts (the campaigns page).
    Campaigns,
    /// `herald status`'s recent runs and failures (the status page).
    Status,
    /// Each route's achieved pace (the status and run pages): it reads the
    /// last hour's attempts, too many to count on each view.
    Pace,
    /// One run's counts by channel and status, failures and sends.
    Run(i64),
    /// A campaign's report for a query (run, since, until).
    Report(String, Vec<(String, String)>),
    /// A configured segment's count, grid and stages.
    Segment(String),
}

impl Key {
    /// The key's text in `console_figures`.
    pub(crate) fn text(&self) -> String {
        match self {
            Key::Campaigns => "campaigns".into(),
            Key::Status => "status".into(),
            Key::Pace => "pace".into(),
            Key::Run(id) => format!("run:{id}"),
            Key::Report(name, query) => {
                let mut s = form_urlencoded::Serializer::new(String::new());
                s.append_pair("campaign", name);
                s.extend_pairs(query);
                format!("report:{}", s.finish())
            }
            Key::Segment(name) => format!("segment:{name}"),
        }
    }

    /// The key of `text`, if it is one of ours.
    pub(crate) fn parse(text: &str) -> Option<Key> {
        if text == "campaigns" {
            return Some(Key::Campaigns);
        }
        if text == "status" {
            return Some(Key::Status);
        }
        if text == "pace" {
            return Some(Key::Pace);
        }
        if let Some(id) = text.strip_prefix("run:") {
            return id.parse().ok().map(Key::Run);
        }
        if let Some(name) = text.strip_prefix("segment:") {
            return Some(Key::Segment(name.to_string()));
        }
        let q = text.strip_prefix("report:")?;
        let mut pairs = form_urlencoded::parse(q.as_bytes()).into_owned();
        let (k, name) = pairs.next()?;
        (k == "campaign").then(|| Key::Report(name, pairs.collect()))
    }
}

/// A campaign's report as stored: the report's JSON and each arm's
/// conversions by minute since the send (`None`: the campaign never ran).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ReportFigures {
    pub report: Value,
    pub conversions: Option<Vec<ArmConversions>>,
}

/// A segment as stored: the filter counted (figures of another filter are
/// not this one's), its count, R x F grid, members without a score, stages.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SegmentFigures {
    pub source: String,
    pub members: i64,
    pub grid: Vec<(i64, i64, i64)>,
    pub without_rfm: i64,
    pub stages: Vec<(String, i64)>,
}

/// Figures for a page, and from when.
#[derive(Debug, Clone)]
pub(crate) struct Figures<T> {
    pub value: T,
    /// When they were counted; `None`: just now, live, nothing was stored.
    pub counted_at: Option<i64>,
}

/// `d` milliseconds in words ("12 s", "5 min", "3 h", "2 days").
fn span_words(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..=119 => format!("{s} s"),
        120..=7_199 => format!("{} min", s / 60),
        7_200..=172_799 => format!("{} h", s / 3600),
        _ => format!("{} days", s / 86_400),
    }
}

/// When the oldest of a page's figures were counted (`None` when all were
/// counted just now): what its age line says.
pub(crate) fn oldest(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The line a page shows under its title: how old its figures are.
pub(crate) fn age_note(tz: chrono_tz::Tz, counted_at: Option<i64>, now: i64) -> String {
    match counted_at {
        Some(at) => format!(
            "<p class=\"age\">Figures as of <time datetime=\"{}\">{} ago</time> ({}); herald counts them again every {} s.</p>",
            chrono::DateTime::<chrono::Utc>::from_timestamp_millis(at)
                .map(|t| t.to_rfc3339())
                .unwrap_or_default(),
            span_words(now - at),
            super::pages::when(tz, at),
            REFRESH_EVERY.as_secs()
        ),
        None => "<p class=\"age\">Figures counted just now: none were stored yet (the refresh job of <code>herald serve</code> or <code>herald run</code> keeps them from now on).</p>".to_string(),
    }
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// The stored figures of `key`, decoded; `None` when none are stored (or
/// they are of an older shape, which the next refresh replaces). Notes
/// the read, so the refresh job keeps counting them.
pub(crate) async fn read<T: DeserializeOwned>(
    st: &AppState,
    key: &Key,
) -> Result<Option<Figures<T>>, FiguresError> {
    let Some(s) = stored::get_figures(st.db(), &key.text()).await? else {
        return Ok(None);
    };
    stored::mark_read(st.db(), &key.text(), crate::now_ms()).await?;
    Ok(serde_json::from_value(s.figures).ok().map(|value| Figures {
        value,
        counted_at: Some(s.counted_at),
    }))
}

/// Stores `value` as `key`'s figures counted at `at` in `took`; a failure
/// is logged, not shown: the page has its figures already.
pub(crate) async fn keep<T: Serialize>(
    st: &AppState,
    key: &Key,
    value: &T,
    at: i64,
    took: Duration,
) {
    let doc = match serde_json::to_value(value) {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(error = %e, "console figures are not JSON");
            return;
        }
    };
    let took = i64::try_from(took.as_millis()).unwrap_or(i64::MAX);
    if let Err(e) = stored::put(st.db(), &key.text(), &doc, at, took).await {
        tracing::warn!(error = %e, key = %key.text(), "storing console figures failed");
    }
}

/// `key`'s stored figures, or, with none stored, `live()` counted now and
/// stored for the next request (and the refresh job to keep fresh).
pub(crate) async fn stored_or_live<T, F, Fut>(
    st: &AppState,
    key: &Key,
    now: i64,
    live: F,
) -> Result<Figures<T>, String>
where
    T: Serialize + DeserializeOwned,
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    if let Some(f) = read::<T>(st, key).await.map_err(err)? {
        return Ok(f);
    }
    let t = Instant::now();
    let value = live().await?;
    keep(st, key, &value, now, t.elapsed()).await;
    Ok(Figures {
        value,
        counted_at: None,
    })
}

/// The latest run of each campaign with its counts, counted now.
pub(crate) async fn count_campaigns(st: &AppState, now: i64) -> Result<Vec<RunStatus>, String> {
    Ok(runs::status_of(st.db(), now, Which::LatestPerCampaign)
        .await
        .map_err(err)?
        .runs)
}

/// The status page's recent runs and failures, counted now (its queue and
/// daemons are read live by the page).
pub(crate) async fn count_status(st: &AppState, now: i64) -> Result<Status, String> {
    let mut s = runs::status_of(st.db(), now, Which::Recent(STATUS_RUNS))
        .await
        .map_err(err)?;
    s.channels.clear();
    s.daemons.clear();
    Ok(s)
}

/// Each route's achieved pace, counted now (the pages add the queue live).
pub(crate) async fn count_pace(st: &AppState, now: i64) -> Result<Vec<ChannelStatus>, String> {
    runs::route_pace(st.db(), now).await.map_err(err)
}

/// One run's figures, counted now.
pub(crate) async fn count_run(st: &AppState, now: i64, id: i64) -> Result<RunDetail, String> {
    runs::run_detail(st.db(), now, id, BUCKET_MS, CHART_MINUTES * BUCKET_MS)
        .await
        .map_err(err)
}

/// A run's counts by status: its counts by channel and status, summed.
pub(crate) fn counts_by_status(detail: &RunDetail) -> Vec<(String, i64)> {
    let mut out: Vec<(String, i64)> = Vec::new();
    for (_, status, n) in &detail.by_channel {
        match out.iter_mut().find(|(s, _)| s == status) {
            Some((_, total)) => *total += n,
            None => out.push((status.clone(), *n)),
        }
    }
    out.sort();
    out
}

/// A configured segment's figures, counted now; `None` when it is not
/// configured (or the server has no config).
pub(crate) async fn count_segment(
    st: &AppState,
    name: &str,
    now: i64,
) -> Result<Option<SegmentFigures>, String> {
    let Some(cfg) = settings(st).and_then(|s| s.config.clone()) else {
        return Ok(None);
    };
    let Some(seg) = cfg.segments.get(name) else {
        return Ok(None);
    };
    let store = super::segments::store(st, &cfg);
    // No sample: the page reads it live, so a forgotten contact never
    // shows from a stored copy.
    let p = segment_preview::preview(&store, &seg.filter, now, 0)
        .await
        .map_err(err)?;
    Ok(Some(super::segments::figures_of(seg.source.clone(), &p)))
}

/// A campaign's report for `query`, counted now; `Ok(None)` when there is
/// no such campaign. The outer error is for the page to answer (a bad
/// selection, no report source).
pub(crate) async fn count_report(
    st: &AppState,
    name: &str,
    query: &[(String, String)],
) -> Result<Option<ReportFigures>, axum::response::Response> {
    let report = match super::report::fetch(st, name, query).await {
        Ok(r) => r,
        Err(r) if r.status() == axum::http::StatusCode::NOT_FOUND => return Ok(None),
        Err(r) => return Err(r),
    };
    let conversions = match super::report::storage_filter(query) {
        None => None,
        Some(filter) => {
            match herald_storage::conversions::by_time_since_send(st.db(), name, &filter, MINUTE_MS)
                .await
            {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "counting conversions over time failed");
                    None
                }
            }
        }
    };
    Ok(Some(ReportFigures {
        report,
        conversions,
    }))
}

/// Counts `key`'s figures now; `None` when what they count is gone.
async fn count(st: &AppState, key: &Key, now: i64) -> Result<Option<Value>, String> {
    let v = match key {
        Key::Campaigns => serde_json::to_value(count_campaigns(st, now).await?),
        Key::Status => serde_json::to_value(count_status(st, now).await?),
        Key::Pace => serde_json::to_value(count_pace(st, now).await?),
        Key::Run(id) => {
            if runs::runs_of(st.db(), Which::One(*id))
                .await
                .map_err(err)?
                .is_empty()
            {
                return Ok(None);
            }
            serde_json::to_value(count_run(st, now, *id).await?)
        }
        Key::Report(name, query) => match count_report(st, name, query).await {
            Ok(Some(r)) => serde_json::to_value(r),
            Ok(None) => return Ok(None),
            Err(r) => return Err(format!("the report of {name} failed ({})", r.status())),
        },
        Key::Segment(name) => match count_segment(st, name, now).await? {
            Some(s) => serde_json::to_value(s),
            None => return Ok(None),
        },
    };
    v.map(Some).map_err(err)
}

/// The keys a refresh counts: the campaigns and status pages, the routes'
/// pace, the runs they list, each configured campaign's report and
/// segment (a bounded set, always kept), and every other key stored and
/// read by a page within [`UNREAD_FOR_MS`] of `now`; the other keys not
/// read since then are returned apart, to delete.
async fn keys_to_count(st: &AppState, now: i64) -> Result<(Vec<Key>, Vec<String>), String> {
    let mut keys = vec![Key::Campaigns, Key::Status, Key::Pace];
    let mut ids: Vec<i64> = runs::runs_of(st.db(), Which::LatestPerCampaign)
        .await
        .map_err(err)?
        .iter()
        .chain(
            runs::runs_of(st.db(), Which::Recent(STATUS_RUNS))
                .await
                .map_err(err)?
                .iter(),
        )
        .map(|r| r.id)
        .collect();
    ids.sort_unstable();
    ids.dedup();
    keys.extend(ids.into_iter().map(Key::Run));
    if let Some(s) = settings(st) {
        keys.extend(
            s.campaigns
                .iter()
                .map(|c| Key::Report(c.campaign.name.clone(), Vec::new())),
        );
        if let Some(cfg) = &s.config {
            keys.extend(cfg.segments.keys().map(|n| Key::Segment(n.clone())));
        }
    }
    let mut seen: std::collections::HashSet<String> = keys.iter().map(Key::text).collect();
    let unread: std::collections::HashSet<String> =
        stored::unread_since(st.db(), now - UNREAD_FOR_MS)
            .await
            .map_err(err)?
            .into_iter()
            .filter(|k| !seen.contains(k))
            .collect();
    for (text, _) in stored::keys(st.db()).await.map_err(err)? {
        if unread.contains(&text) {
            continue;
        }
        if let Some(k) = Key::parse(&text) {
            keys.push(k);
        }
    }
    seen.clear();
    keys.retain(|k| seen.insert(k.text()));
    let mut unread: Vec<String> = unread.into_iter().collect();
    unread.sort();
    Ok((keys, unread))
}

/// What one refresh did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Refreshed {
    /// Figures counted and stored.
    pub stored: usize,
    /// Figures whose subject is gone, deleted.
    pub deleted: usize,
    /// Figures that failed to count (logged).
    pub failed: usize,
    /// Figures no page read for [`UNREAD_FOR_MS`], deleted uncounted.
    pub pruned: usize,
}

/// Counts every figure the console shows again and stores it, counted at
/// the instant each count starts. Called by [`refresher`] under its lease;
/// callable directly (tests, a one-off refresh).
pub async fn refresh(st: &AppState) -> Result<Refreshed, String> {
    let mut done = Refreshed::default();
    let (keys, unread) = keys_to_count(st, crate::now_ms()).await?;
    for key in unread {
        stored::delete(st.db(), &key).await.map_err(err)?;
        done.pruned += 1;
    }
    for key in keys {
        let at = crate::now_ms();
        let t = Instant::now();
        match count(st, &key, at).await {
            Ok(Some(v)) => {
                keep(st, &key, &v, at, t.elapsed()).await;
                done.stored += 1;
            }
            Ok(None) => {
                stored::delete(st.db(), &key.text()).await.map_err(err)?;
                done.deleted += 1;
            }
            Err(e) => {
                tracing::warn!(error = %e, key = %key.text(), "counting console figures failed");
                done.failed += 1;
            }
        }
    }
    Ok(done)
}

/// How long the refresher rests after a pass that took `took`: `every`, or
/// twice the pass when that is longer, so on a database where counting
/// takes minutes the console's figures cost it at most a third of its time
/// rather than all of it.
fn pause_after(every: Duration, took: Duration) -> Duration {
    every.max(took * 2)
}

/// The refresh job: every `every`, if this process holds the lease (or
/// takes it), counts the figures again; gives the lease up when `stop`
/// turns true. `owner` names this process in the lease.
pub async fn refresher(
    st: AppState,
    owner: String,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut last_pass = Duration::ZERO;
    loop {
        let now = crate::now_ms();
        match stored::take_lease(st.db(), LEASE, &owner, now, LEASE_MS).await {
            Ok(true) => {
                let t = Instant::now();
                // A pass over a large database takes a while: stopping does
                // not wait for it (what it stored so far stays good).
                let done = tokio::select! {
                    r = refresh(&st) => r,
                    _ = stop.wait_for(|s| *s) => break,
                };
                last_pass = t.elapsed();
                match done {
                    Ok(r) => tracing::debug!(
                        stored = r.stored,
                        pruned = r.pruned,
                        failed = r.failed,
                        took_ms = t.elapsed().as_millis() as u64,
                        "console figures refreshed"
                    ),
                    Err(e) => tracing::warn!(error = %e, "refreshing console figures failed"),
                }
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "the console figures' lease could not be read"),
        }
        tokio::select! {
            _ = tokio::time::sleep(pause_after(every, last_pass)) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    if let Err(e) = stored::release_lease(st.db(), LEASE, &owner).await {
        tracing::warn!(error = %e, "the console figures' lease was not given up");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_pass_rests_twice_as_long() {
        let every = Duration::from_secs(30);
        assert_eq!(pause_after(every, Duration::from_secs(2)), every);
        assert_eq!(
            pause_after(every, Duration::from_secs(127)),
            Duration::from_secs(254)
        );
    }

    #[test]
    fn keys_read_back_as_written() {
        for k in [
            Key::Campaigns,
            Key::Status,
            Key::Pace,
            Key::Run(42),
            Key::Segment("a:b c".into()),
            Key::Report("win&back".into(), Vec::new()),
            Key::Report(
                "x".into(),
                vec![
                    ("run".into(), "3".into()),
                    ("since".into(), "2026-12-01".into()),
                ],
            ),
        ] {
            assert_eq!(Key::parse(&k.text()), Some(k.clone()), "{}", k.text());
        }
        assert_eq!(Key::parse("run:x"), None);
        assert_eq!(Key::parse("other"), None);
    }

    #[test]
    fn ages_read_as_words() {
        assert_eq!(span_words(12_400), "12 s");
        assert_eq!(span_words(5 * 60_000), "5 min");
        assert_eq!(span_words(3 * 3_600_000), "3 h");
        assert_eq!(span_words(3 * 86_400_000), "3 days");
        let tz = chrono_tz::Tz::UTC;
        assert!(
            age_note(tz, Some(1_000), 13_000)
                .contains("as of <time datetime=\"1970-01-01T00:00:01+00:00\">12 s ago</time>")
        );
        assert!(age_note(tz, None, 0).contains("counted just now"));
    }
}
