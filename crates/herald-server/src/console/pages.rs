//! The console's pages: campaigns, a run (with pause, resume and cancel),
//! and status. Figures come from the storage queries `herald status` and
//! `herald runs` use, so the page and the command line agree: the counts
//! over messages as stored by the refresh job ([`super::figures`], their
//! age shown), the queue, the daemons and a run's state read live.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use axum::Extension;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, Utc};
use herald_domain::config::{Campaign, Schedule};
use herald_storage::runs::{self, RunStatus, RunsError, Which};

use super::figures::{self, BUCKET_MS, CHART_MINUTES, Key};
use super::html::{csrf_field, esc, page, table};
use super::{ConsoleSettings, Form, Signed, csrf_of, html, see_other, settings};
use crate::AppState;

/// `ms` as a time in the console's zone.
pub(crate) fn when(tz: chrono_tz::Tz, ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|t| t.with_timezone(&tz).format("%Y-%m-%d %H:%M %Z").to_string())
        .unwrap_or_default()
}

fn fail(e: impl std::fmt::Display) -> Response {
    crate::internal_error(e)
}

fn num(n: i64) -> String {
    format!("<span class=\"n\">{n}</span>")
}

/// "delivered 3, failed 1" for `counts`, and their total.
fn summary(counts: &[(String, i64)]) -> String {
    if counts.is_empty() {
        return "no messages".into();
    }
    let total: i64 = counts.iter().map(|c| c.1).sum();
    let parts: Vec<String> = counts
        .iter()
        .map(|(s, n)| format!("{} {n}", esc(s)))
        .collect();
    format!("{total} messages: {}", parts.join(", "))
}

fn kind_of(c: &Campaign) -> String {
    let how = if c.trigger.is_some() {
        "triggered"
    } else {
        match c.schedule {
            Schedule::Manual => "manual",
            _ => "scheduled",
        }
    };
    format!("{}, {how}", c.kind.as_str())
}

fn schedule_of(c: &Campaign) -> String {
    if let Some(herald_domain::config::Trigger::Event { event, .. }) = &c.trigger {
        return format!("on event <code>{}</code>", esc(event));
    }
    match &c.schedule {
        Schedule::Manual => "by <code>herald send</code>".into(),
        Schedule::At(t) => esc(&t.to_rfc3339()),
        Schedule::Cron { text, timezone, .. } => {
            format!("<code>{}</code> ({})", esc(text), esc(timezone.name()))
        }
    }
}

/// What the campaigns page shows of each configured campaign.
#[derive(Debug, Clone)]
pub struct CampaignEntry {
    /// The campaign as configured.
    pub campaign: Campaign,
    /// What `herald check` says is wrong with it.
    pub problems: Vec<String>,
}

/// `GET /console/`: every campaign, its schedule, last run and problems.
pub(crate) async fn campaigns(
    State(st): State<AppState>,
    Extension(Signed(session)): Extension<Signed>,
) -> Response {
    let Some(s) = settings(&st) else {
        return crate::not_found();
    };
    let now = crate::now_ms();
    let latest = match figures::stored_or_live(&st, &Key::Campaigns, now, || {
        figures::count_campaigns(&st, now)
    })
    .await
    {
        Ok(v) => v,
        Err(e) => return fail(e),
    };
    let mut body = figures::age_note(s.timezone, latest.counted_at, now);
    let latest: BTreeMap<&str, &RunStatus> = latest
        .value
        .iter()
        .map(|r| (r.campaign.as_str(), r))
        .collect();
    if !s.problems.is_empty() {
        body.push_str("<section aria-labelledby=\"problems\"><h2 id=\"problems\">Problems found by <code>herald check</code></h2><ul class=\"error\">");
        for p in s.problems.iter() {
            let _ = write!(body, "<li>{}</li>", esc(p));
        }
        body.push_str("</ul></section>");
    }
    let mut rows = Vec::new();
    for e in s.campaigns.iter() {
        let c = &e.campaign;
        let next = if c.trigger.is_some() {
            "when the event comes".to_string()
        } else {
            herald_engine::schedule::next_fire(&c.schedule, now)
                .map_or_else(|| "none".to_string(), |t| esc(&when(s.timezone, t)))
        };
        let (last, result) = match latest.get(c.name.as_str()) {
            Some(r) => (
                format!(
                    "<a href=\"/console/runs/{}\">run {}</a>, {} ({})",
                    r.id,
                    r.id,
                    esc(&r.state),
                    esc(&when(s.timezone, r.scheduled_at))
                ),
                summary(&r.counts),
            ),
            None => ("never run".into(), String::new()),
        };
        let problems = if e.problems.is_empty() {
            "<span class=\"ok\">none</span>".to_string()
        } else {
            let items: Vec<String> = e
                .problems
                .iter()
                .map(|p| format!("<li>{}</li>", esc(p)))
                .collect();
            format!("<ul class=\"error\">{}</ul>", items.join(""))
        };
        let channels: Vec<&str> = c.channels.iter().map(|ch| ch.as_str()).collect();
        rows.push(vec![
            format!(
                "{} <a href=\"/console/campaigns/{}/report\">report</a>",
                esc(&c.name),
                super::report::segment(&c.name)
            ),
            esc(&kind_of(c)),
            esc(&channels.join(", ")),
            schedule_of(c),
            next,
            last,
            result,
            problems,
        ]);
    }
    body.push_str(&table(
        &format!("Campaigns (times in {})", s.timezone.name()),
        &[
            "campaign",
            "kind",
            "channels",
            "schedule",
            "next fire",
            "last run",
            "result",
            "problems",
        ],
        &rows,
    ));
    if s.campaigns.is_empty() {
        body.push_str("<p>No campaigns are configured (config/campaigns/*.toml).</p>");
    }
    html(
        StatusCode::OK,
        page("Campaigns", Some(&csrf_of(&st, &session)), &body),
    )
}

/// The channels' queue depth and rates, configured and achieved.
fn channel_table(s: &ConsoleSettings, status: &runs::Status) -> String {
    let mut rows = Vec::new();
    // Every configured route, idle ones too, and any other with messages.
    let mut channels = status.channels.clone();
    for (ch, _) in &s.rates {
        if !channels.iter().any(|c| c.channel == *ch) {
            channels.push(runs::ChannelStatus {
                channel: ch.clone(),
                ..runs::ChannelStatus::default()
            });
        }
    }
    channels.sort_by(|a, b| a.channel.cmp(&b.channel));
    for c in &channels {
        let configured = s
            .rates
            .iter()
            .find(|(ch, _)| *ch == c.channel)
            .and_then(|(_, r)| *r)
            .map_or_else(|| "unlimited".into(), |r| format!("{r}/s"));
        rows.push(vec![
            esc(&c.channel),
            configured,
            format!("{:.1}/s", c.sent_last_minute as f64 / 60.0),
            num(c.due),
            num(c.later),
            num(c.sending),
            num(c.failed_last_hour),
        ]);
    }
    table(
        "Routes: rate and queue",
        &[
            "route",
            "configured rate",
            "achieved (last minute)",
            "due now",
            "planned later",
            "sending",
            "failed attempts last hour",
        ],
        &rows,
    )
}

/// Blocked routes with the provider's words.
async fn blocks_html(st: &AppState, s: &ConsoleSettings, now: i64) -> Result<String, String> {
    let blocks = herald_storage::routes::blocks(st.db(), now)
        .await
        .map_err(|e| e.to_string())?;
    if blocks.is_empty() {
        return Ok("<p class=\"ok\">No route is blocked.</p>".into());
    }
    let rows: Vec<Vec<String>> = blocks
        .iter()
        .map(|b| {
            vec![
                esc(&b.route),
                esc(&b.reason),
                esc(&when(s.timezone, b.since)),
                format!("{:.0} s", (b.probe_at - now).max(0) as f64 / 1000.0),
                esc(&b.owner),
            ]
        })
        .collect();
    Ok(table(
        "Blocked routes (their messages wait, planned)",
        &[
            "route",
            "the provider said",
            "since",
            "next probe in",
            "seen by",
        ],
        &rows,
    ))
}

fn failures_table(caption: &str, failures: &[(String, i64)]) -> String {
    if failures.is_empty() {
        return format!("<p>{}: none.</p>", esc(caption));
    }
    let rows: Vec<Vec<String>> = failures
        .iter()
        .map(|(r, n)| vec![esc(r), num(*n)])
        .collect();
    table(caption, &["reason", "messages"], &rows)
}

fn run_error(e: RunsError) -> Response {
    match e {
        RunsError::NoSuchRun(_) => crate::not_found(),
        e => fail(e),
    }
}

/// The message shown after an action, from the redirect's query.
fn done_message(query: Option<&str>) -> Option<&'static str> {
    let q = query?;
    form_urlencoded::parse(q.as_bytes()).find_map(|(k, v)| {
        (k == "done").then(|| match v.as_ref() {
            "pause" => Some("Paused: no new messages are claimed; those in flight finish."),
            "resume" => Some("Resumed; blocked routes probe now."),
            "cancel" => Some("Cancelled: what was still planned will not be sent."),
            _ => None,
        })?
    })
}

/// `GET /console/runs/{id}`: one run, live.
pub(crate) async fn run_page(
    State(st): State<AppState>,
    Extension(Signed(session)): Extension<Signed>,
    Path(id): Path<i64>,
    RawQuery(query): RawQuery,
) -> Response {
    let Some(s) = settings(&st) else {
        return crate::not_found();
    };
    let now = crate::now_ms();
    // The run's state live (it changes by a click), its counts stored.
    let run = match runs::runs_of(st.db(), Which::One(id)).await {
        Ok(v) => v,
        Err(e) => return run_error(e),
    };
    let Some(run) = run.first() else {
        return crate::not_found();
    };
    let detail =
        match figures::stored_or_live(&st, &Key::Run(id), now, || figures::count_run(&st, now, id))
            .await
        {
            Ok(d) => d,
            Err(e) => return fail(e),
        };
    // The queue live (through its index), the routes' pace stored.
    let mut status = match runs::live_status(st.db(), now).await {
        Ok(v) => v,
        Err(e) => return fail(e),
    };
    let pace = match figures::stored_or_live(&st, &Key::Pace, now, || figures::count_pace(&st, now))
        .await
    {
        Ok(v) => v,
        Err(e) => return fail(e),
    };
    status.channels = runs::with_pace(status.channels, &pace.value);
    let counted_at = detail.counted_at;
    let age = figures::oldest(counted_at, pace.counted_at);
    let detail = detail.value;
    let counts = figures::counts_by_status(&detail);
    let csrf = csrf_of(&st, &session);
    let mut body = String::new();
    if let Some(m) = done_message(query.as_deref()) {
        let _ = write!(body, "<p class=\"ok\" role=\"status\">{}</p>", esc(m));
    }
    let _ = write!(
        body,
        "<p>Campaign <strong>{}</strong>, {} {}, state <strong>{}</strong>. <a href=\"/console/runs/{id}\">Refresh</a></p>",
        esc(&run.campaign),
        if run.origin == "trigger" {
            "triggered, since"
        } else {
            "scheduled"
        },
        esc(&when(s.timezone, run.scheduled_at)),
        esc(&run.state)
    );
    body.push_str("<p>");
    for (action, label) in [
        ("pause", "Pause"),
        ("resume", "Resume"),
        ("cancel", "Cancel"),
    ] {
        let _ = write!(
            body,
            "<a class=\"button\" href=\"/console/runs/{id}/{action}\">{label}…</a> "
        );
    }
    body.push_str("</p>");
    body.push_str(&figures::age_note(s.timezone, age, now));
    let rows: Vec<Vec<String>> = counts
        .iter()
        .map(|(st, n)| vec![esc(st), num(*n)])
        .collect();
    body.push_str(&table("Messages by status", &["status", "messages"], &rows));
    // Channel x status.
    let mut statuses: Vec<&str> = detail.by_channel.iter().map(|c| c.1.as_str()).collect();
    statuses.sort_unstable();
    statuses.dedup();
    let mut channels: Vec<Option<&str>> =
        detail.by_channel.iter().map(|c| c.0.as_deref()).collect();
    channels.dedup();
    let rows: Vec<Vec<String>> = channels
        .iter()
        .map(|ch| {
            let mut r = vec![esc(ch.unwrap_or("(none)"))];
            for s in &statuses {
                let n = detail
                    .by_channel
                    .iter()
                    .find(|c| c.0.as_deref() == *ch && c.1 == *s)
                    .map_or(0, |c| c.2);
                r.push(num(n));
            }
            r
        })
        .collect();
    let mut head = vec!["channel"];
    head.extend(statuses.iter().copied());
    body.push_str(&table("Messages by channel", &head, &rows));
    body.push_str(&channel_table(s, &status));
    match blocks_html(&st, s, now).await {
        Ok(b) => body.push_str(&b),
        Err(e) => return fail(e),
    }
    body.push_str(&failures_table(
        "Failures of this run by reason",
        &detail.failures,
    ));
    // Every minute of the hour before the count, empty ones too.
    let (bucket, span) = (BUCKET_MS, CHART_MINUTES * BUCKET_MS);
    let end = counted_at.unwrap_or(now);
    let from = end - span;
    let bars: Vec<(String, i64)> = (0..CHART_MINUTES)
        .map(|i| {
            let start = from + i * bucket;
            let n = detail
                .sends
                .iter()
                .find(|(b, _)| *b == start)
                .map_or(0, |b| b.1);
            (when(s.timezone, start), n)
        })
        .collect();
    let total: i64 = bars.iter().map(|b| b.1).sum();
    let _ = write!(
        body,
        "<h2>Sends per minute, last hour</h2><figure>{}<figcaption>{total} sends accepted by providers in the hour to {}.</figcaption></figure>",
        super::chart::bars(
            "Sends accepted per minute over the last hour",
            &bars,
            &when(s.timezone, from),
            &when(s.timezone, end)
        ),
        esc(&when(s.timezone, end))
    );
    html(
        StatusCode::OK,
        page(&format!("Run {id}"), Some(&csrf), &body),
    )
}

/// What an action does, in words for its confirmation page.
fn action_words(action: &str) -> Option<(&'static str, &'static str)> {
    match action {
        "pause" => Some((
            "Pause",
            "No new messages of this run are claimed; those in flight finish. Resume goes on where it stopped.",
        )),
        "resume" => Some((
            "Resume",
            "The run goes on; routes blocked by an account fault probe at once.",
        )),
        "cancel" => Some((
            "Cancel",
            "Every message still planned is cancelled and will not be sent. This cannot be undone.",
        )),
        _ => None,
    }
}

/// `GET /console/runs/{id}/{action}`: the confirmation page.
pub(crate) async fn confirm(
    State(st): State<AppState>,
    Extension(Signed(session)): Extension<Signed>,
    Path((id, action)): Path<(i64, String)>,
) -> Response {
    let Some((label, words)) = action_words(&action) else {
        return crate::not_found();
    };
    if let Err(e) = runs::runs_of(st.db(), Which::One(id))
        .await
        .and_then(|r| r.first().map(|_| ()).ok_or(RunsError::NoSuchRun(id)))
    {
        return run_error(e);
    }
    let csrf = csrf_of(&st, &session);
    let body = format!(
        "<p>{}</p><form method=\"post\" action=\"/console/runs/{id}/{action}\">{}<button type=\"submit\">{label} run {id}</button> \
         <a href=\"/console/runs/{id}\">Back, do nothing</a></form>",
        esc(words),
        csrf_field(&csrf)
    );
    html(
        StatusCode::OK,
        page(&format!("{label} run {id}?"), Some(&csrf), &body),
    )
}

/// `POST /console/runs/{id}/{action}`: what `herald runs` does.
pub(crate) async fn act(
    State(st): State<AppState>,
    Extension(Signed(session)): Extension<Signed>,
    Extension(_form): Extension<Form>,
    Path((id, action)): Path<(i64, String)>,
) -> Response {
    let db = st.db();
    let now = crate::now_ms();
    let done = match action.as_str() {
        "pause" => runs::pause(db, id).await,
        "resume" => {
            let probed = match herald_storage::routes::request_probes(db, now).await {
                Ok(n) => n,
                Err(e) => return fail(e),
            };
            match runs::resume(db, id).await {
                // Not paused, but blocked: the probe is what was asked for.
                Err(RunsError::WrongState { .. }) if probed > 0 => Ok(()),
                r => r,
            }
        }
        "cancel" => runs::cancel(db, id, now).await.map(|_| ()),
        _ => return crate::not_found(),
    };
    match done {
        Ok(()) => {
            // The run's stored counts were counted before the action: the
            // page would show "cancelled" beside "planned 500". Counted
            // live on the next view, and stored again.
            for key in [Key::Run(id), Key::Campaigns, Key::Status] {
                if let Err(e) = herald_storage::console_figures::delete(db, &key.text()).await {
                    tracing::warn!(error = %e, key = %key.text(), "dropping stored console figures failed");
                }
            }
            see_other(&format!("/console/runs/{id}?done={action}"))
        }
        Err(RunsError::NoSuchRun(_)) => crate::not_found(),
        Err(e @ RunsError::WrongState { .. }) => html(
            StatusCode::CONFLICT,
            page(
                "Not done",
                Some(&csrf_of(&st, &session)),
                &format!(
                    "<p class=\"error\" role=\"alert\">{}</p><p><a href=\"/console/runs/{id}\">Back to run {id}</a></p>",
                    esc(&e.to_string())
                ),
            ),
        ),
        Err(e) => fail(e),
    }
}

/// `GET /console/status`: routes, rates, queues, daemons, recent errors.
pub(crate) async fn status_page(
    State(st): State<AppState>,
    Extension(Signed(session)): Extension<Signed>,
) -> Response {
    let Some(s) = settings(&st) else {
        return crate::not_found();
    };
    let now = crate::now_ms();
    // The queue and daemons live, through their indexes; the recent runs'
    // counts, the day's failures and the routes' pace stored.
    let live = match runs::live_status(st.db(), now).await {
        Ok(v) => v,
        Err(e) => return fail(e),
    };
    let stored =
        match figures::stored_or_live(&st, &Key::Status, now, || figures::count_status(&st, now))
            .await
        {
            Ok(v) => v,
            Err(e) => return fail(e),
        };
    let pace = match figures::stored_or_live(&st, &Key::Pace, now, || figures::count_pace(&st, now))
        .await
    {
        Ok(v) => v,
        Err(e) => return fail(e),
    };
    let status = runs::Status {
        runs: stored.value.runs,
        failures: stored.value.failures,
        channels: runs::with_pace(live.channels, &pace.value),
        daemons: live.daemons,
    };
    let mut body = String::new();
    body.push_str(&channel_table(s, &status));
    match blocks_html(&st, s, now).await {
        Ok(b) => body.push_str(&b),
        Err(e) => return fail(e),
    }
    match herald_storage::reputation::paused_by_guard(st.db()).await {
        Ok(paused) => {
            for (run, reason) in paused {
                let _ = write!(
                    body,
                    "<p class=\"error\"><a href=\"/console/runs/{run}\">Run {run}</a> paused by the reputation guard: {}</p>",
                    esc(&reason)
                );
            }
        }
        Err(e) => return fail(e),
    }
    if status.daemons.is_empty() {
        body.push_str(
            "<p class=\"error\">No daemon is running (start one with <code>herald run</code>).</p>",
        );
    } else {
        let rows: Vec<Vec<String>> = status
            .daemons
            .iter()
            .map(|(owner, started, beat)| {
                vec![
                    esc(owner),
                    esc(&when(s.timezone, *started)),
                    format!("{:.0} s ago", (now - beat) as f64 / 1000.0),
                ]
            })
            .collect();
        body.push_str(&table(
            "Daemons seen",
            &["daemon", "up since", "last heartbeat"],
            &rows,
        ));
    }
    body.push_str(&figures::age_note(
        s.timezone,
        figures::oldest(stored.counted_at, pace.counted_at),
        now,
    ));
    body.push_str(&failures_table(
        "Recent errors: failures of the last day by reason",
        &status.failures,
    ));
    let rows: Vec<Vec<String>> = status
        .runs
        .iter()
        .map(|r| {
            vec![
                format!("<a href=\"/console/runs/{}\">{}</a>", r.id, r.id),
                esc(&r.campaign),
                esc(&when(s.timezone, r.scheduled_at)),
                esc(&r.state),
                summary(&r.counts),
            ]
        })
        .collect();
    body.push_str(&table(
        "Recent runs",
        &[
            "run",
            "campaign",
            "scheduled (started)",
            "state",
            "messages",
        ],
        &rows,
    ));
    html(
        StatusCode::OK,
        page("Status", Some(&csrf_of(&st, &session)), &body),
    )
}
