//! Operating runs and daemons: `herald runs pause|resume|cancel`, the
//! figures of `herald status`, and the heartbeats by which daemons on one
//! database count each other to split every channel's rate limit.

use sea_orm::{ConnectionTrait, QueryResult};

use crate::db::Db;
use crate::flights::{self, InTheAir};
use crate::sql::Sql;

/// A daemon whose heartbeat is older than this is gone.
pub const HEARTBEAT_STALE_MS: i64 = 10_000;

/// Why a run operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RunsError {
    /// The database failed.
    #[error("database: {0}")]
    Db(String),
    /// No run has that id.
    #[error("there is no run {0}; `herald status` lists them")]
    NoSuchRun(i64),
    /// The run is in a state the operation does not apply to.
    #[error("run {id} is {state}: {what}")]
    WrongState {
        /// The run.
        id: i64,
        /// Its state.
        state: String,
        /// What could not be done.
        what: &'static str,
    },
}

fn db_err(e: impl std::fmt::Display) -> RunsError {
    RunsError::Db(e.to_string())
}

fn get<T: sea_orm::TryGetable>(row: &QueryResult, i: usize) -> Result<T, RunsError> {
    row.try_get_by_index(i).map_err(db_err)
}

async fn all(db: &impl ConnectionTrait, q: Sql) -> Result<Vec<QueryResult>, RunsError> {
    db.query_all_raw(q.build(db.get_database_backend()))
        .await
        .map_err(db_err)
}

async fn exec(db: &Db, q: Sql) -> Result<u64, RunsError> {
    Ok(db
        .conn
        .execute_raw(q.build(db.backend()))
        .await
        .map_err(db_err)?
        .rows_affected())
}

pub(crate) async fn state_of(db: &Db, run: i64) -> Result<String, RunsError> {
    let mut q = Sql::new();
    q.push("SELECT state FROM runs WHERE id = ").bind(run);
    let rows = all(&db.conn, q).await?;
    rows.first()
        .map(|r| get(r, 0))
        .transpose()?
        .ok_or(RunsError::NoSuchRun(run))
}

/// Every campaign with runs: its name, the assignment fingerprint its runs
/// were planned under, and how many runs it has. `herald check` compares the
/// fingerprints with the config's to warn before arms reshuffle.
pub async fn campaign_fingerprints(db: &Db) -> Result<Vec<(String, String, i64)>, RunsError> {
    let mut q = Sql::new();
    q.push("SELECT c.name, c.fingerprint, COUNT(r.id) FROM campaigns c JOIN runs r ON r.campaign_id = c.id GROUP BY c.name, c.fingerprint");
    all(&db.conn, q)
        .await?
        .iter()
        .map(|r| Ok((get(r, 0)?, get(r, 1)?, get(r, 2)?)))
        .collect()
}

/// The external ids of the contacts of run `run`'s messages, in message order
/// (the demo picks who comes back to the app among them).
pub async fn recipients(db: &Db, run: i64) -> Result<Vec<String>, RunsError> {
    let mut q = Sql::new();
    q.push("SELECT c.external_id FROM messages m JOIN contacts c ON c.id = m.contact_id WHERE m.run_id = ")
        .bind(run)
        .push(" ORDER BY m.id");
    all(&db.conn, q).await?.iter().map(|r| get(r, 0)).collect()
}

/// One message of a run, with its contact's purchase history before it was
/// planned: what the demo's simulated customers act on.
#[derive(Debug, Clone, PartialEq)]
pub struct MessageHistory {
    /// Message id.
    pub id: i64,
    /// The contact's external id.
    pub external_id: String,
    /// Arm.
    pub arm: String,
    /// Channel, if the message had one.
    pub channel: Option<String>,
    /// Status.
    pub status: String,
    /// Planned send time (ms).
    pub send_at: i64,
    /// When it reached the contact, as near as known: delivered, else sent,
    /// else planned (ms).
    pub reached_at: i64,
    /// `event`s in the long window before `send_at`.
    pub long_count: i64,
    /// `event`s in the short window before `send_at`.
    pub short_count: i64,
    /// The sum of the `event`s' values in the long window.
    pub long_value: f64,
}

/// Every message of run `run` in id order, with how often its contact did
/// `event` in the `long_ms` and `short_ms` before its send time, and the
/// value of those in the long window.
pub async fn message_histories(
    db: &Db,
    run: i64,
    event: &str,
    long_ms: i64,
    short_ms: i64,
) -> Result<Vec<MessageHistory>, RunsError> {
    let mut q = Sql::new();
    let window = |q: &mut Sql, what: &str, ms: i64| {
        q.push("(SELECT ")
            .push(what)
            .push(" FROM events e WHERE e.name = ")
            .bind(event.to_string())
            .push(" AND e.contact_id = m.contact_id AND e.at >= m.send_at - ")
            .bind(ms)
            .push(" AND e.at < m.send_at)");
    };
    q.push("SELECT m.id, c.external_id, m.arm, m.channel, m.status, m.send_at, COALESCE(m.delivered_at, m.sent_at, m.send_at), ");
    window(&mut q, "COUNT(*)", long_ms);
    q.push(", ");
    window(&mut q, "COUNT(*)", short_ms);
    q.push(", CAST(COALESCE(");
    window(&mut q, "SUM(e.value)", long_ms);
    q.push(", 0) AS DOUBLE PRECISION) FROM messages m JOIN contacts c ON c.id = m.contact_id WHERE m.run_id = ")
        .bind(run)
        .push(" ORDER BY m.id");
    all(&db.conn, q)
        .await?
        .iter()
        .map(|r| {
            Ok(MessageHistory {
                id: get(r, 0)?,
                external_id: get(r, 1)?,
                arm: get(r, 2)?,
                channel: get(r, 3)?,
                status: get(r, 4)?,
                send_at: get(r, 5)?,
                reached_at: get(r, 6)?,
                long_count: get(r, 7)?,
                short_count: get(r, 8)?,
                long_value: get(r, 9)?,
            })
        })
        .collect()
}

/// How many messages run `run` has, whatever their status.
pub async fn message_count(db: &Db, run: i64) -> Result<i64, RunsError> {
    let mut q = Sql::new();
    q.push("SELECT COUNT(*) FROM messages WHERE run_id = ")
        .bind(run);
    let rows = all(&db.conn, q).await?;
    rows.first()
        .map(|r| get(r, 0))
        .transpose()
        .map(|n| n.unwrap_or(0))
}

/// Stops claiming a run's messages; what is in flight finishes. A run still
/// being planned also stops planning at its next page (`resume_to` keeps
/// that its plan is unfinished).
pub async fn pause(db: &Db, run: i64) -> Result<(), RunsError> {
    let state = state_of(db, run).await?;
    if !matches!(state.as_str(), "planning" | "running") {
        return Err(RunsError::WrongState {
            id: run,
            state,
            what: "only a run being planned or sent can be paused",
        });
    }
    let mut q = Sql::new();
    q.push("UPDATE runs SET state = 'paused', resume_to = state WHERE state IN ('planning', 'running') AND id = ")
        .bind(run);
    exec(db, q).await?;
    Ok(())
}

/// Goes on with a paused run: sending, and planning if its plan was not
/// finished (the daemon's scheduler picks the plan up where it stopped).
pub async fn resume(db: &Db, run: i64) -> Result<(), RunsError> {
    let state = state_of(db, run).await?;
    if state != "paused" {
        return Err(RunsError::WrongState {
            id: run,
            state,
            what: "only a paused run can be resumed",
        });
    }
    let mut q = Sql::new();
    q.push("UPDATE runs SET state = COALESCE(resume_to, 'running'), resume_to = NULL WHERE state = 'paused' AND id = ")
        .bind(run);
    exec(db, q).await?;
    Ok(())
}

/// Cancels what is still planned (`cancelled (run_cancelled)`); returns how many.
/// Messages already `sending` finish and are recorded as they end.
pub async fn cancel(db: &Db, run: i64, now: i64) -> Result<u64, RunsError> {
    let state = state_of(db, run).await?;
    if matches!(state.as_str(), "done" | "cancelled") {
        return Err(RunsError::WrongState {
            id: run,
            state,
            what: "there is nothing left to cancel",
        });
    }
    let txn = {
        use sea_orm::TransactionTrait;
        db.conn.begin().await.map_err(db_err)?
    };
    let b = db.backend();
    let mut q = Sql::new();
    q.push("UPDATE runs SET state = 'cancelled', finished_at = ")
        .bind(now)
        .push(" WHERE id = ")
        .bind(run);
    txn.execute_raw(q.build(b)).await.map_err(db_err)?;
    let mut q = Sql::new();
    q.push("UPDATE messages SET status = 'cancelled', reason = 'run_cancelled', lease_owner = NULL, lease_until = NULL, updated_at = ")
        .bind(now)
        .push(" WHERE status = 'planned' AND run_id = ")
        .bind(run);
    let n = txn
        .execute_raw(q.build(b))
        .await
        .map_err(db_err)?
        .rows_affected();
    txn.commit().await.map_err(db_err)?;
    Ok(n)
}

/// Records that daemon `owner` is alive at `now`; returns how many daemons are alive.
pub async fn heartbeat(db: &Db, owner: &str, now: i64) -> Result<u64, RunsError> {
    let mut q = Sql::new();
    q.push("INSERT INTO daemons (owner, started_at, heartbeat_at) VALUES (")
        .bind(owner.to_string())
        .push(", ")
        .bind(now)
        .push(", ")
        .bind(now)
        .push(") ON CONFLICT (owner) DO UPDATE SET heartbeat_at = excluded.heartbeat_at");
    exec(db, q).await?;
    let mut q = Sql::new();
    q.push("SELECT COUNT(*) FROM daemons WHERE heartbeat_at > ")
        .bind(now - HEARTBEAT_STALE_MS);
    let rows = all(&db.conn, q).await?;
    let n: i64 = rows.first().map(|r| get(r, 0)).transpose()?.unwrap_or(1);
    Ok(n.max(1) as u64)
}

/// Removes daemon `owner` (a clean exit), and every stale one.
pub async fn leave(db: &Db, owner: &str, now: i64) -> Result<(), RunsError> {
    let mut q = Sql::new();
    q.push("DELETE FROM daemons WHERE owner = ")
        .bind(owner.to_string())
        .push(" OR heartbeat_at < ")
        .bind(now - HEARTBEAT_STALE_MS);
    exec(db, q).await?;
    Ok(())
}

/// One run, as `herald status` lists it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunStatus {
    /// Run id.
    pub id: i64,
    /// Campaign name.
    pub campaign: String,
    /// Run state.
    pub state: String,
    /// Scheduled instant (ms); for a triggered campaign's open-ended run,
    /// which has no schedule, the instant it started.
    pub scheduled_at: i64,
    /// `trigger` for a triggered campaign's run; `schedule`, `manual`... otherwise.
    pub origin: String,
    /// The instant its audience was taken and its rules judged (ms): a
    /// catch-up run planned late judges at the time it was planned, not
    /// at its schedule.
    pub planned_at: i64,
    /// (status, count) of its messages.
    pub counts: Vec<(String, i64)>,
    /// For a segment-entry campaign (`trigger = { enters = .. }`) in a list
    /// of recent runs: its passes folded into this one row, which is the
    /// latest pass (its id and state), counting the messages of them all.
    pub passes: Option<Passes>,
}

/// A segment-entry campaign's passes, as one row of `herald status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Passes {
    /// How many passes it has made.
    pub count: i64,
    /// When the first ran (ms).
    pub since: i64,
}

/// Queue depth and pace of one channel.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct ChannelStatus {
    /// The channel.
    pub channel: String,
    /// Planned and due now (in running runs).
    pub due: i64,
    /// Planned for later.
    pub later: i64,
    /// Being sent.
    pub sending: i64,
    /// Accepted by the provider in the last minute.
    pub sent_last_minute: i64,
    /// Failed attempts in the last hour.
    pub failed_last_hour: i64,
}

/// The status of `channel` in `channels`, added if it is not there yet.
fn channel_mut(channels: &mut Vec<ChannelStatus>, channel: String) -> &mut ChannelStatus {
    let idx = match channels.iter().position(|c| c.channel == channel) {
        Some(i) => i,
        None => {
            channels.push(ChannelStatus {
                channel,
                ..ChannelStatus::default()
            });
            channels.len() - 1
        }
    };
    &mut channels[idx]
}

/// What `herald status` shows.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct Status {
    /// The most recent runs, newest first.
    pub runs: Vec<RunStatus>,
    /// Per channel.
    pub channels: Vec<ChannelStatus>,
    /// Live daemons: (owner, started_at, heartbeat_at).
    pub daemons: Vec<(String, i64, i64)>,
    /// The most frequent failure reasons of the last day: (reason, count).
    pub failures: Vec<(String, i64)>,
}

/// Which runs a status lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    /// The most recent ones, at most this many.
    Recent(u32),
    /// This run alone.
    One(i64),
    /// The latest run of every campaign.
    LatestPerCampaign,
}

/// The figures of `herald status` at `now`, over the `limit` most recent runs.
pub async fn status(db: &Db, now: i64, limit: u32) -> Result<Status, RunsError> {
    status_of(db, now, Which::Recent(limit)).await
}

/// The figures of `herald status` at `now` over the runs `which` names:
/// the console reads runs exactly as the CLI does.
pub async fn status_of(db: &Db, now: i64, which: Which) -> Result<Status, RunsError> {
    let mut out = Status::default();
    // One snapshot: the flights in the air are taken out of the counts that
    // include them, so both are read at the same instant.
    let txn = flights::snapshot(&db.conn).await.map_err(db_err)?;
    let db = &txn;
    let mut q = Sql::new();
    // A triggered campaign's run has no scheduled instant (it is stored as 0,
    // which printed as 1970-01-01): show when it started.
    q.push("SELECT r.id, c.name, r.state, CASE WHEN r.origin = 'trigger' THEN r.now_at ELSE r.scheduled_at END, r.origin, r.campaign_id, ");
    if matches!(which, Which::Recent(_)) {
        q.push("p.n, p.since");
    } else {
        q.push("CAST(NULL AS BIGINT), CAST(NULL AS BIGINT)");
    }
    q.push(", r.now_at");
    q.push(" FROM runs r JOIN campaigns c ON c.id = r.campaign_id");
    match which {
        Which::Recent(limit) => {
            // A segment-entry campaign makes a run a pass (every minute,
            // say): its passes are one row, the latest pass standing for
            // them all, so they do not push every other run off the list.
            q.push(" LEFT JOIN (SELECT campaign_id, COUNT(*) AS n, MIN(at) AS since, MAX(run_id) AS latest FROM entry_passes GROUP BY campaign_id) p ON p.latest = r.id WHERE p.latest IS NOT NULL OR NOT EXISTS (SELECT 1 FROM entry_passes e WHERE e.run_id = r.id) ORDER BY r.id DESC LIMIT ")
                .bind(i64::from(limit));
        }
        Which::One(id) => {
            q.push(" WHERE r.id = ").bind(id);
        }
        Which::LatestPerCampaign => {
            q.push(" WHERE r.id = (SELECT MAX(l.id) FROM runs l WHERE l.campaign_id = r.campaign_id) ORDER BY r.id DESC");
        }
    }
    // The campaign of each row that stands for its campaign's passes.
    let mut folded: Vec<(usize, i64)> = Vec::new();
    for r in all(db, q).await? {
        let passes = match (get::<Option<i64>>(&r, 6)?, get::<Option<i64>>(&r, 7)?) {
            (Some(count), Some(since)) => Some(Passes { count, since }),
            _ => None,
        };
        if passes.is_some() {
            folded.push((out.runs.len(), get(&r, 5)?));
        }
        out.runs.push(RunStatus {
            id: get(&r, 0)?,
            campaign: get(&r, 1)?,
            state: get(&r, 2)?,
            scheduled_at: get(&r, 3)?,
            origin: get(&r, 4)?,
            planned_at: get(&r, 8)?,
            counts: Vec::new(),
            passes,
        });
    }
    let single: Vec<i64> = out
        .runs
        .iter()
        .filter(|r| r.passes.is_none())
        .map(|r| r.id)
        .collect();
    if !single.is_empty() {
        let mut q = Sql::new();
        // The runs listed, by id: the latest of each campaign are far apart.
        q.push("SELECT run_id, status, COUNT(*) FROM messages WHERE run_id IN (");
        for (i, id) in single.iter().enumerate() {
            if i > 0 {
                q.push(", ");
            }
            q.bind(*id);
        }
        q.push(") GROUP BY run_id, status ORDER BY run_id, status");
        for r in all(db, q).await? {
            let id: i64 = get(&r, 0)?;
            if let Some(run) = out.runs.iter_mut().find(|x| x.id == id) {
                run.counts.push((get(&r, 1)?, get(&r, 2)?));
            }
        }
    }
    if !folded.is_empty() {
        // Every pass's messages, by campaign: one scan of their runs.
        let mut q = Sql::new();
        q.push("SELECT e.campaign_id, m.status, COUNT(*) FROM entry_passes e JOIN messages m ON m.run_id = e.run_id WHERE e.campaign_id IN (");
        for (i, (_, campaign)) in folded.iter().enumerate() {
            if i > 0 {
                q.push(", ");
            }
            q.bind(*campaign);
        }
        q.push(") GROUP BY e.campaign_id, m.status ORDER BY e.campaign_id, m.status");
        for r in all(db, q).await? {
            let campaign: i64 = get(&r, 0)?;
            if let Some((i, _)) = folded.iter().find(|(_, c)| *c == campaign) {
                out.runs[*i].counts.push((get(&r, 1)?, get(&r, 2)?));
            }
        }
    }
    // A flight's untouched rows say how its sends are expected to end: they
    // are in the air (`sending`), or `unknown` once the lease lapsed (its
    // worker died; `expire_leases` will write so).
    let in_air = flights::in_the_air(db, now, None).await.map_err(db_err)?;
    // The campaign of each pass in the air, for the rows that fold passes.
    let mut pass_of: std::collections::HashMap<i64, i64> = std::collections::HashMap::new();
    if !folded.is_empty() && !in_air.is_empty() {
        let mut q = Sql::new();
        q.push("SELECT run_id, campaign_id FROM entry_passes WHERE run_id IN (");
        for (i, f) in in_air.iter().enumerate() {
            if i > 0 {
                q.push(", ");
            }
            q.bind(f.run_id);
        }
        q.push(")");
        for r in all(db, q).await? {
            pass_of.insert(get(&r, 0)?, get(&r, 1)?);
        }
    }
    for f in &in_air {
        let row = match pass_of.get(&f.run_id) {
            Some(campaign) => folded.iter().find(|(_, c)| c == campaign).map(|(i, _)| *i),
            None => out
                .runs
                .iter()
                .position(|x| x.id == f.run_id && x.passes.is_none()),
        };
        let Some(i) = row else {
            continue;
        };
        let run = &mut out.runs[i];
        for (s, count) in run.counts.iter_mut() {
            if *s == f.written {
                *count -= f.n;
            }
        }
        match run.counts.iter_mut().find(|(s, _)| s == f.air.status()) {
            Some((_, count)) => *count += f.n,
            None => run.counts.push((f.air.status().to_string(), f.n)),
        }
        run.counts.retain(|(_, count)| *count > 0);
        run.counts.sort();
    }
    queue_and_daemons(db, now, &in_air, &mut out).await?;
    pace_into(db, now, &mut out.channels).await?;
    let mut q = Sql::new();
    q.push("SELECT COALESCE(reason, status), COUNT(*) FROM messages WHERE status IN ('failed', 'unknown') AND updated_at > ")
        .bind(now - 86_400_000)
        .push(" GROUP BY COALESCE(reason, status) ORDER BY COUNT(*) DESC LIMIT 10");
    for r in all(db, q).await? {
        out.failures.push((get(&r, 0)?, get(&r, 1)?));
    }
    txn.commit().await.map_err(db_err)?;
    Ok(out)
}

/// The channels' queue depth and the live daemons, at `now`, into `out`;
/// `in_air` are the flights in the air, counted as being sent. Each
/// statement reads through an index (`messages_lane` by status, the small
/// `daemons`), so its cost follows the queue, not the history.
async fn queue_and_daemons(
    db: &impl ConnectionTrait,
    now: i64,
    in_air: &[flights::InTheAirCount],
    out: &mut Status,
) -> Result<(), RunsError> {
    let mut q = Sql::new();
    q.push("SELECT m.channel, SUM(CASE WHEN m.status = 'planned' AND m.send_at <= ")
        .bind(now)
        .push(" THEN 1 ELSE 0 END), SUM(CASE WHEN m.status = 'planned' AND m.send_at > ")
        .bind(now)
        .push(" THEN 1 ELSE 0 END), SUM(CASE WHEN m.status = 'sending' THEN 1 ELSE 0 END) FROM messages m JOIN runs r ON r.id = m.run_id WHERE r.state IN ('planning', 'running', 'paused') AND m.channel IS NOT NULL AND m.status IN ('planned', 'sending') GROUP BY m.channel ORDER BY m.channel");
    for r in all(db, q).await? {
        out.channels.push(ChannelStatus {
            channel: get(&r, 0)?,
            due: get::<Option<i64>>(&r, 1)?.unwrap_or(0),
            later: get::<Option<i64>>(&r, 2)?.unwrap_or(0),
            sending: get::<Option<i64>>(&r, 3)?.unwrap_or(0),
            ..ChannelStatus::default()
        });
    }
    // The messages of flights in the air (handed batches) are being sent.
    for f in in_air {
        if let (Some(channel), InTheAir::Sending) = (&f.channel, f.air) {
            channel_mut(&mut out.channels, channel.clone()).sending += f.n;
        }
    }
    out.channels.sort_by(|a, b| a.channel.cmp(&b.channel));
    let mut q = Sql::new();
    q.push("SELECT owner, started_at, heartbeat_at FROM daemons WHERE heartbeat_at > ")
        .bind(now - HEARTBEAT_STALE_MS)
        .push(" ORDER BY owner");
    for r in all(db, q).await? {
        out.daemons.push((get(&r, 0)?, get(&r, 1)?, get(&r, 2)?));
    }
    Ok(())
}

/// Each route's achieved pace at `now`, into `out`: accepted in the last
/// minute, failed attempts in the last hour. It reads the last hour's
/// attempts (through `attempts_at`) joined to their messages, so it costs
/// what a busy hour sent: the console keeps it with its stored figures.
async fn pace_into(
    db: &impl ConnectionTrait,
    now: i64,
    out: &mut Vec<ChannelStatus>,
) -> Result<(), RunsError> {
    let mut q = Sql::new();
    q.push("SELECT m.channel, SUM(CASE WHEN a.result = 'accepted' AND a.at > ")
        .bind(now - 60_000)
        .push(" THEN 1 ELSE 0 END), SUM(CASE WHEN a.result <> 'accepted' THEN 1 ELSE 0 END) FROM attempts a JOIN messages m ON m.id = a.message_id WHERE a.at > ")
        .bind(now - 3_600_000)
        .push(" GROUP BY m.channel");
    for r in all(db, q).await? {
        let channel: Option<String> = get(&r, 0)?;
        let Some(channel) = channel else { continue };
        let c = channel_mut(out, channel);
        c.sent_last_minute = get::<Option<i64>>(&r, 1)?.unwrap_or(0);
        c.failed_last_hour = get::<Option<i64>>(&r, 2)?.unwrap_or(0);
    }
    out.sort_by(|a, b| a.channel.cmp(&b.channel));
    Ok(())
}

/// Each route's achieved pace at `now` (only `sent_last_minute` and
/// `failed_last_hour` are set): what the console stores beside its figures.
pub async fn route_pace(db: &Db, now: i64) -> Result<Vec<ChannelStatus>, RunsError> {
    let mut out = Vec::new();
    pace_into(&db.conn, now, &mut out).await?;
    Ok(out)
}

/// `channels` (read live: the queue) with the achieved pace of `pace`
/// (stored), a route of either added.
pub fn with_pace(mut channels: Vec<ChannelStatus>, pace: &[ChannelStatus]) -> Vec<ChannelStatus> {
    for p in pace {
        let c = channel_mut(&mut channels, p.channel.clone());
        c.sent_last_minute = p.sent_last_minute;
        c.failed_last_hour = p.failed_last_hour;
    }
    channels.sort_by(|a, b| a.channel.cmp(&b.channel));
    channels
}

/// What changes by the second on `herald status`, read live by the
/// console beside stored figures: each channel's queue depth and the live
/// daemons (no runs, no failures, no pace: see [`route_pace`]).
pub async fn live_status(db: &Db, now: i64) -> Result<Status, RunsError> {
    let mut out = Status::default();
    let txn = flights::snapshot(&db.conn).await.map_err(db_err)?;
    let in_air = flights::in_the_air(&txn, now, None).await.map_err(db_err)?;
    queue_and_daemons(&txn, now, &in_air, &mut out).await?;
    txn.commit().await.map_err(db_err)?;
    Ok(out)
}

/// The runs `which` names without their message counts: one lookup of the
/// runs table (the console adds stored counts, or counts live).
pub async fn runs_of(db: &Db, which: Which) -> Result<Vec<RunStatus>, RunsError> {
    let mut q = Sql::new();
    q.push("SELECT r.id, c.name, r.state, CASE WHEN r.origin = 'trigger' THEN r.now_at ELSE r.scheduled_at END, r.origin, r.now_at FROM runs r JOIN campaigns c ON c.id = r.campaign_id");
    match which {
        Which::Recent(limit) => {
            q.push(" ORDER BY r.id DESC LIMIT ").bind(i64::from(limit));
        }
        Which::One(id) => {
            q.push(" WHERE r.id = ").bind(id);
        }
        Which::LatestPerCampaign => {
            q.push(" WHERE r.id = (SELECT MAX(l.id) FROM runs l WHERE l.campaign_id = r.campaign_id) ORDER BY r.id DESC");
        }
    }
    let mut out = Vec::new();
    for r in all(&db.conn, q).await? {
        out.push(RunStatus {
            id: get(&r, 0)?,
            campaign: get(&r, 1)?,
            state: get(&r, 2)?,
            scheduled_at: get(&r, 3)?,
            origin: get(&r, 4)?,
            planned_at: get(&r, 5)?,
            counts: Vec::new(),
            passes: None,
        });
    }
    Ok(out)
}

/// One run in detail, for the console's run page.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct RunDetail {
    /// (channel, status, count) of its messages; flights in the air counted
    /// as `herald status` counts them (`sending`, or `unknown` once lapsed).
    pub by_channel: Vec<(Option<String>, String, i64)>,
    /// Its failures by reason, most frequent first.
    pub failures: Vec<(String, i64)>,
    /// Sends accepted by providers per time bucket: (bucket start ms, count), oldest first.
    pub sends: Vec<(i64, i64)>,
}

/// The figures of run `run` at `now`; sends in buckets of `bucket_ms` over
/// the last `span_ms`.
pub async fn run_detail(
    db: &Db,
    now: i64,
    run: i64,
    bucket_ms: i64,
    span_ms: i64,
) -> Result<RunDetail, RunsError> {
    let mut out = RunDetail::default();
    let bucket_ms = bucket_ms.max(1);
    let mut q = Sql::new();
    q.push("SELECT channel, status, COUNT(*) FROM messages WHERE run_id = ")
        .bind(run)
        .push(" GROUP BY channel, status ORDER BY channel, status");
    for r in all(&db.conn, q).await? {
        out.by_channel.push((get(&r, 0)?, get(&r, 1)?, get(&r, 2)?));
    }
    // The same correction for flights in the air as `status`.
    let mut q = Sql::new();
    q.push("SELECT m.channel, m.status, CASE WHEN f.lease_until < ")
        .bind(now)
        .push(" THEN 1 ELSE 0 END, COUNT(*) FROM ")
        .push(flights::untouched_join(db.backend()))
        .push(" WHERE m.run_id = ")
        .bind(run)
        .push(" GROUP BY 1, 2, 3");
    for r in all(&db.conn, q).await? {
        let channel: Option<String> = get(&r, 0)?;
        let status: String = get(&r, 1)?;
        let lapsed: i32 = get(&r, 2)?;
        let n: i64 = get(&r, 3)?;
        let air = if lapsed == 1 {
            InTheAir::Unknown
        } else {
            InTheAir::Sending
        };
        for (c, s, count) in out.by_channel.iter_mut() {
            if *c == channel && *s == status {
                *count -= n;
            }
        }
        match out
            .by_channel
            .iter_mut()
            .find(|(c, s, _)| *c == channel && s == air.status())
        {
            Some((_, _, count)) => *count += n,
            None => out.by_channel.push((channel, air.status().to_string(), n)),
        }
    }
    out.by_channel.retain(|(_, _, n)| *n > 0);
    out.by_channel.sort();
    let mut q = Sql::new();
    q.push("SELECT COALESCE(reason, status), COUNT(*) FROM messages WHERE run_id = ")
        .bind(run)
        .push(" AND status IN ('failed', 'unknown') GROUP BY COALESCE(reason, status) ORDER BY COUNT(*) DESC LIMIT 20");
    for r in all(&db.conn, q).await? {
        out.failures.push((get(&r, 0)?, get(&r, 1)?));
    }
    let from = now - span_ms;
    let mut q = Sql::new();
    q.push("SELECT (a.at - ")
        .bind(from)
        .push(") / ")
        .bind(bucket_ms)
        .push(", COUNT(*) FROM attempts a JOIN messages m ON m.id = a.message_id WHERE m.run_id = ")
        .bind(run)
        .push(" AND a.result = 'accepted' AND a.at > ")
        .bind(from)
        .push(" GROUP BY 1 ORDER BY 1");
    for r in all(&db.conn, q).await? {
        let b: i64 = get(&r, 0)?;
        out.sends.push((from + b * bucket_ms, get(&r, 1)?));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use herald_engine::store::{CampaignRecord, Store};
    use sea_orm::ConnectionTrait;

    use crate::Db;
    use crate::store::SqlStore;
    use crate::test_db::on_both_databases;

    /// 2026-11-01T10:00:00Z.
    const T0: i64 = 1_793_527_200_000;

    /// A triggered campaign's run shows when it started, not 1970-01-01.
    async fn a_triggered_run_shows_its_real_start(db: &Db) {
        let store = SqlStore::new(db.clone());
        let campaign = CampaignRecord {
            name: "welcome".into(),
            kind: "marketing".into(),
            topic: None,
            fingerprint: "welcome;x".into(),
            goal: None,
        };
        let id = store.upsert_campaign(&campaign, T0).await.unwrap();
        let run = store.trigger_run(id, "welcome;x", T0).await.unwrap();
        let status = super::status(db, T0 + 1_000, 10).await.unwrap();
        let shown = status.runs.iter().find(|r| r.id == run.id).unwrap();
        assert_eq!((shown.scheduled_at, shown.origin.as_str()), (T0, "trigger"));
    }

    async fn exec(db: &Db, sql: String) {
        db.conn
            .execute_raw(sea_orm::Statement::from_string(db.backend(), sql))
            .await
            .unwrap();
    }

    /// A segment-entry campaign's passes are one row of the recent runs,
    /// under its latest pass, counting every pass's messages; the runs of
    /// other campaigns keep a row each, in order.
    async fn segment_entry_passes_are_one_row(db: &Db) {
        let store = SqlStore::new(db.clone());
        let record = |name: &str| CampaignRecord {
            name: name.into(),
            kind: "marketing".into(),
            topic: None,
            fingerprint: format!("{name};x"),
            goal: None,
        };
        let welcome = store
            .upsert_campaign(&record("pro-welcome"), T0)
            .await
            .unwrap();
        let news = store.upsert_campaign(&record("news"), T0).await.unwrap();
        let filter = herald_domain::segment::parse(r#"attrs.plan == "pro""#).unwrap();
        for id in 1..=4 {
            exec(db, format!("INSERT INTO contacts (id, external_id, email, attrs, consent_email, created_at, updated_at) VALUES ({id}, 'x{id}', 'x{id}@example.com', '{{}}', TRUE, {T0}, {T0})")).await;
        }
        let message = |run: i64, campaign: i64, contact: i64, status: &str| {
            format!(
                "INSERT INTO messages (run_id, campaign_id, contact_id, step, arm, channel, address, send_at, status, attempts, created_at, updated_at) VALUES ({run}, {campaign}, {contact}, 0, 'a', 'email', 'x{contact}@example.com', {T0}, '{status}', 0, {T0}, {T0})"
            )
        };
        let mut passes = Vec::new();
        for i in 0..3 {
            let at = T0 + i * 60_000;
            let run = store
                .create_run(welcome, at, at, "schedule", "pro-welcome;x")
                .await
                .unwrap();
            store
                .entry_pass(welcome, run.id, &filter, at)
                .await
                .unwrap();
            passes.push(run.id);
            if i == 1 {
                let run = store
                    .create_run(news, at, at, "schedule", "news;x")
                    .await
                    .unwrap();
                exec(db, message(run.id, news, 1, "sent")).await;
            }
        }
        // Pass 2 sent to contact 2, pass 3 to contacts 3 and 4 (one still planned).
        exec(db, message(passes[1], welcome, 2, "delivered")).await;
        exec(db, message(passes[2], welcome, 3, "delivered")).await;
        exec(db, message(passes[2], welcome, 4, "planned")).await;

        let status = super::status(db, T0 + 200_000, 10).await.unwrap();
        let rows: Vec<(&str, i64, Option<super::Passes>)> = status
            .runs
            .iter()
            .map(|r| (r.campaign.as_str(), r.id, r.passes))
            .collect();
        assert_eq!(
            rows.iter().map(|r| (r.0, r.1)).collect::<Vec<_>>(),
            vec![("pro-welcome", passes[2]), ("news", passes[1] + 1)],
            "{status:?}"
        );
        assert_eq!(
            rows[0].2,
            Some(super::Passes {
                count: 3,
                since: T0
            })
        );
        assert_eq!(rows[1].2, None);
        assert_eq!(
            status.runs[0].counts,
            vec![("delivered".to_string(), 2), ("planned".to_string(), 1)]
        );
        assert_eq!(status.runs[1].counts, vec![("sent".to_string(), 1)]);
        // A run asked for by id is that run alone.
        let one = super::status_of(db, T0 + 200_000, super::Which::One(passes[1]))
            .await
            .unwrap();
        assert_eq!(one.runs[0].passes, None);
        assert_eq!(one.runs[0].counts, vec![("delivered".to_string(), 1)]);
    }

    /// What the CLI reads of a run through named functions: its
    /// recipients in message order, each message with its contact's
    /// purchases in two windows before its send time (events at or after
    /// it do not count), its message count, and each campaign's
    /// fingerprint with its runs.
    async fn a_runs_messages_and_histories_read_back(db: &Db) {
        let store = SqlStore::new(db.clone());
        let campaign = CampaignRecord {
            name: "winback".into(),
            kind: "marketing".into(),
            topic: None,
            fingerprint: "winback;a".into(),
            goal: None,
        };
        let id = store.upsert_campaign(&campaign, T0).await.unwrap();
        let run = store
            .create_run(id, T0, T0, "manual", "winback;a")
            .await
            .unwrap();
        for c in 1..=2 {
            exec(db, format!("INSERT INTO contacts (id, external_id, email, attrs, created_at, updated_at) VALUES ({c}, 'u{c}', 'u{c}@example.com', '{{}}', {T0}, {T0})")).await;
        }
        // u2's message first: message order, not contact order.
        for (m, c, status) in [(1, 2, "delivered"), (2, 1, "failed")] {
            exec(db, format!("INSERT INTO messages (id, run_id, campaign_id, contact_id, step, arm, channel, address, send_at, status, attempts, delivered_at, created_at, updated_at) VALUES ({m}, {}, {id}, {c}, 0, 'a', 'email', 'u{c}@example.com', {T0}, '{status}', 1, {}, {T0}, {T0})", run.id, if status == "delivered" { (T0 + 5).to_string() } else { "NULL".into() })).await;
        }
        let day = 86_400_000;
        // u2: 40 and 3 days before (value 10 and 5), one at the send, one another event.
        for (c, name, at, value) in [
            (2, "order_placed", T0 - 40 * day, 10.0),
            (2, "order_placed", T0 - 3 * day, 5.0),
            (2, "order_placed", T0, 99.0),
            (2, "app_open", T0 - day, 1.0),
        ] {
            exec(db, format!("INSERT INTO events (contact_id, name, at, value, received_at) VALUES ({c}, '{name}', {at}, {value}, {at})")).await;
        }
        assert_eq!(
            super::recipients(db, run.id).await.unwrap(),
            vec!["u2".to_string(), "u1".into()]
        );
        assert_eq!(super::message_count(db, run.id).await.unwrap(), 2);
        let h = super::message_histories(db, run.id, "order_placed", 365 * day, 30 * day)
            .await
            .unwrap();
        let seen: Vec<(i64, &str, i64, i64, i64, f64)> = h
            .iter()
            .map(|m| {
                (
                    m.id,
                    m.external_id.as_str(),
                    m.reached_at,
                    m.long_count,
                    m.short_count,
                    m.long_value,
                )
            })
            .collect();
        assert_eq!(
            seen,
            vec![(1, "u2", T0 + 5, 2, 1, 15.0), (2, "u1", T0, 0, 0, 0.0)]
        );
        assert_eq!(
            super::campaign_fingerprints(db).await.unwrap(),
            vec![("winback".to_string(), "winback;a".to_string(), 1)]
        );
    }

    on_both_databases!(
        a_triggered_run_shows_its_real_start,
        segment_entry_passes_are_one_row,
        a_runs_messages_and_histories_read_back
    );
}
