//! Data for `herald-bench report`, and nothing else: this module exists for
//! the benchmark, so that the SQL that fills a database with a large
//! campaign stays in herald-storage with the rest of herald's SQL (the bench
//! crate only calls named functions). It generates the rows inside the
//! database (`generate_series` on PostgreSQL, a recursive CTE on SQLite:
//! nothing crosses the wire); both databases get the very same rows.
//!
//! Never call it on a database you want to keep: [`generate_report_data`]
//! empties it first.

use sea_orm::{ConnectionTrait, DbBackend};

use crate::db::{Db, DbError};
use crate::sql::Sql;

/// 2026-01-01T00:00:00Z: the first run starts; one run a day.
pub const FIRST_RUN: i64 = 1_767_225_600_000;
const DAY: i64 = 86_400_000;
const HOUR: i64 = 3_600_000;

/// The generator's SELECT: one message per `g` of run `$1`, contacts
/// `$2..=$3`. Every second message has outcomes (an app open at least);
/// arms, statuses and outcomes come from Weyl sequences of `g`, so both
/// databases get the very same rows. As in planning, the global holdout
/// (0.75%) takes contacts of every arm alike.
fn messages_select(b: DbBackend) -> String {
    let frac = |mult: u64, modulus: u64| {
        format!("(CAST((g * {mult}) % {modulus} AS DOUBLE PRECISION) / {modulus})")
    };
    let (u, s, ch, o, o2, cv) = (
        frac(2_654_435_761, 4_294_967_291),
        frac(7_919, 1_000_003),
        frac(104_729, 999_983),
        frac(15_485_863, 1_000_033),
        frac(32_452_843, 999_979),
        frac(49_979_687, 1_000_037),
    );
    let app_open = match b {
        DbBackend::Postgres => {
            "jsonb_build_object('app_open', jsonb_build_object('at', t + 600000, 'count', 1 + g % 3, 'revenue', 0))"
        }
        _ => {
            "json_object('app_open', json_object('at', t + 600000, 'count', 1 + g % 3, 'revenue', 0))"
        }
    };
    format!(
        "SELECT run, 1, g, 0, arm, \
           CASE WHEN st IN ('held_out', 'suppressed') THEN NULL WHEN ch < 0.6 THEN 'email' WHEN ch < 0.8 THEN 'sms' ELSE 'push' END, \
           CASE WHEN st IN ('held_out', 'suppressed') THEN NULL ELSE 'user' || g || '@example.com' END, \
           t, st, \
           CASE WHEN s < 0.0075 THEN 'global_holdout' \
                WHEN st = 'suppressed' THEN CASE g % 3 WHEN 0 THEN 'no_address' WHEN 1 THEN 'no_consent' ELSE 'opt_out' END \
                WHEN st = 'failed' THEN 'smtp 550 5.1.1 mailbox unavailable' WHEN st = 'unknown' THEN 'timeout after the request was written' END, \
           CASE WHEN st IN ('held_out', 'suppressed') THEN 0 ELSE 1 END, \
           CASE WHEN st IN ('delivered', 'sent', 'bounced') THEN 'p-' || g END, \
           CASE WHEN st IN ('delivered', 'sent', 'bounced') THEN t + 1000 END, \
           CASE WHEN st = 'delivered' THEN t + 2000 END, \
           CASE WHEN hit AND st = 'delivered' AND o < 0.7 THEN t + 3600000 END, \
           CASE WHEN hit AND st = 'delivered' AND o2 < 0.3 THEN t + 3000 END, \
           CASE WHEN hit AND st = 'delivered' AND o < 0.7 THEN 1 ELSE 0 END, \
           CASE WHEN hit AND st = 'delivered' AND o < 0.16 THEN t + 3700000 END, \
           CASE WHEN hit AND st = 'delivered' AND o < 0.16 THEN 1 ELSE 0 END, \
           CASE WHEN hit AND st = 'delivered' AND o2 > 0.994 THEN t + 4000000 END, \
           CASE WHEN hit AND cv < goal THEN t + 7200000 END, \
           CASE WHEN hit AND cv < goal THEN 20 + g % 380 ELSE 0 END, \
           CASE WHEN hit THEN {app_open} END, \
           t, t, \
           CASE WHEN o2 < 0.25 THEN 1 ELSE 0 END, \
           CAST(CASE WHEN o2 < 0.25 THEN 10 + g % 200 ELSE 0 END AS DOUBLE PRECISION), \
           CAST(CASE WHEN o2 < 0.25 THEN 10 + g % 200 ELSE 0 END AS DOUBLE PRECISION) \
         FROM (SELECT g, run, t, arm, s, ch, o, o2, cv, hit, \
                 CASE arm WHEN 'holdout' THEN 0.08 WHEN 'discount' THEN 0.12 ELSE 0.10 END AS goal, \
                 CASE WHEN s < 0.0075 THEN 'suppressed' WHEN arm = 'holdout' THEN 'held_out' \
                      WHEN s < 0.03 THEN 'suppressed' WHEN s < 0.04 THEN 'failed' \
                      WHEN s < 0.045 THEN 'unknown' WHEN s < 0.065 THEN 'bounced' WHEN s < 0.115 THEN 'sent' ELSE 'delivered' END AS st \
               FROM (SELECT g, $1 AS run, {FIRST_RUN} + ($1 - 1) * {DAY} AS t, g % 2 = 0 AS hit, \
                       CASE WHEN {u} < 0.1 THEN 'holdout' WHEN {u} < 0.55 THEN 'discount' ELSE 'reminder' END AS arm, \
                       {s} AS s, {ch} AS ch, {o} AS o, {o2} AS o2, {cv} AS cv \
                     FROM {series}) a) b",
        series = match b {
            DbBackend::Postgres => "generate_series($2::bigint, $3::bigint) AS s(g)",
            _ => "s",
        },
    )
}

const INSERT_COLUMNS: &str = "INSERT INTO messages (run_id, campaign_id, contact_id, step, arm, channel, address, send_at, status, reason, attempts, provider_id, sent_at, delivered_at, opened_at, machine_opened_at, open_count, clicked_at, click_count, unsubscribed_at, converted_at, revenue, secondary, created_at, updated_at, pre_converted, pre_revenue, pre_goal_revenue) ";

/// The events of run `$1`'s contacts, read from its messages (every contact
/// has one message), as `[results]` counts them: the goal's purchase of each
/// converted message (its value the message's revenue), a later purchase of
/// every fifth contact on day `g % 100` after the send (inside ARPU's 30
/// days for some, LTV's 90 for more, past both for the rest), an app open of
/// every fourth on day `g % 35` (retention's two windows and past them), and
/// an app open two days before the send of every tenth (before the message:
/// never counted). About 0.6 events a message.
fn events_insert() -> String {
    format!(
        "INSERT INTO events (contact_id, name, at, value, received_at) \
         SELECT contact_id, 'order_placed', converted_at, revenue, converted_at FROM messages \
           WHERE run_id = $1 AND converted_at IS NOT NULL \
         UNION ALL SELECT contact_id, 'order_placed', send_at + (contact_id % 100) * {DAY} + {HOUR}, \
           CAST(10 + contact_id % 90 AS DOUBLE PRECISION), send_at + (contact_id % 100) * {DAY} + {HOUR} FROM messages \
           WHERE run_id = $1 AND contact_id % 5 = 0 \
         UNION ALL SELECT contact_id, 'app_open', send_at + (contact_id % 35) * {DAY} + 5 * {HOUR}, NULL, \
           send_at + (contact_id % 35) * {DAY} + 5 * {HOUR} FROM messages \
           WHERE run_id = $1 AND contact_id % 4 = 1 \
         UNION ALL SELECT contact_id, 'app_open', send_at - 2 * {DAY}, NULL, send_at - 2 * {DAY} FROM messages \
           WHERE run_id = $1 AND contact_id % 10 = 0"
    )
}

async fn exec(db: &Db, q: Sql) -> Result<u64, DbError> {
    Ok(db
        .conn
        .execute_raw(q.build(db.backend()))
        .await?
        .rows_affected())
}

/// What one run of the generator wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GeneratedRun {
    /// The run's id (1, 2, ...).
    pub run: u64,
    /// Its messages.
    pub messages: u64,
    /// Its contacts' events.
    pub events: u64,
}

/// EMPTIES the database, then fills it with campaign 1, `bench`
/// (`fingerprint` its arms), of `messages` messages spread over `runs` runs
/// a day apart, each contact one message, every second message with
/// outcomes; with `events`, the contacts' purchases and app opens too.
/// Statistics are refreshed after, as autovacuum would leave them.
/// `progress` hears of each run as it is written.
pub async fn generate_report_data(
    db: &Db,
    fingerprint: &str,
    messages: u64,
    runs: u64,
    events: bool,
    mut progress: impl FnMut(GeneratedRun),
) -> Result<(), DbError> {
    let b = db.backend();
    db.truncate_all().await?;
    let mut q = Sql::new();
    q.push("INSERT INTO campaigns (id, name, kind, topic, fingerprint, created_at, updated_at) VALUES (1, 'bench', 'marketing', NULL, ")
        .bind(fingerprint.to_string())
        .push(", 0, 0)");
    exec(db, q).await?;
    let per_run = messages.div_ceil(runs.max(1));
    let select = messages_select(b);
    for run in 1..=runs.max(1) {
        let first = (run - 1) * per_run + 1;
        let last = (run * per_run).min(messages);
        if first > last {
            break;
        }
        let at = FIRST_RUN + (run as i64 - 1) * DAY;
        let mut q = Sql::new();
        q.push("INSERT INTO runs (id, campaign_id, scheduled_at, now_at, state, origin, fingerprint, created_at, finished_at) VALUES (")
            .bind(run as i64)
            .push(", 1, ")
            .bind(at)
            .push(", ")
            .bind(at)
            .push(", 'done', 'schedule', ")
            .bind(fingerprint.to_string())
            .push(", ")
            .bind(at)
            .push(", ")
            .bind(at + 3_600_000)
            .push(")");
        exec(db, q).await?;
        let mut q = Sql::new();
        if b == DbBackend::Postgres {
            q.push(INSERT_COLUMNS);
        } else {
            q.push(
                "WITH RECURSIVE s(g) AS (SELECT $2 UNION ALL SELECT g + 1 FROM s WHERE g < $3) ",
            )
            .push(INSERT_COLUMNS);
        }
        q.push(&select);
        // `$1` is the run, `$2..$3` the contacts, in both texts.
        q.values = vec![
            (run as i64).into(),
            (first as i64).into(),
            (last as i64).into(),
        ];
        let written = exec(db, q).await?;
        let mut events_written = 0;
        if events {
            let mut q = Sql::new();
            q.push(&events_insert());
            q.values = vec![(run as i64).into()];
            events_written = exec(db, q).await?;
        }
        progress(GeneratedRun {
            run,
            messages: written,
            events: events_written,
        });
    }
    let refresh: &[&str] = if b == DbBackend::Postgres {
        // Fresh statistics and a visibility map, as autovacuum would leave them.
        &[
            "VACUUM ANALYZE messages",
            "VACUUM ANALYZE events",
            "ANALYZE runs",
        ]
    } else {
        &["ANALYZE", "PRAGMA wal_checkpoint(TRUNCATE)"]
    };
    for text in refresh {
        db.conn.execute_unprepared(text).await?;
    }
    Ok(())
}

/// Campaign 1's messages, and how many outcomes they hold in all: the
/// cheapest pass over the report's rows, the benchmark's yardstick.
pub async fn count_messages(db: &Db) -> Result<(i64, i64), DbError> {
    let rows = db
        .conn
        .query_all_raw(sea_orm::Statement::from_string(
            db.backend(),
            "SELECT COUNT(*), COUNT(opened_at) + COUNT(machine_opened_at) + COUNT(clicked_at) + COUNT(converted_at) + COUNT(secondary) FROM messages WHERE campaign_id = 1",
        ))
        .await?;
    let Some(row) = rows.first() else {
        return Ok((0, 0));
    };
    Ok((row.try_get_by_index(0)?, row.try_get_by_index(1)?))
}

/// Campaign 1's messages with any outcome.
pub async fn count_with_outcome(db: &Db) -> Result<i64, DbError> {
    let rows = db
        .conn
        .query_all_raw(sea_orm::Statement::from_string(
            db.backend(),
            "SELECT COUNT(*) FROM messages WHERE campaign_id = 1 AND (opened_at IS NOT NULL OR machine_opened_at IS NOT NULL OR clicked_at IS NOT NULL OR unsubscribed_at IS NOT NULL OR converted_at IS NOT NULL OR secondary IS NOT NULL)",
        ))
        .await?;
    match rows.first() {
        Some(row) => Ok(row.try_get_by_index(0)?),
        None => Ok(0),
    }
}

/// Events in the database (the benchmark prints how many the report read against).
pub async fn count_events(db: &Db) -> Result<i64, DbError> {
    let rows = db
        .conn
        .query_all_raw(sea_orm::Statement::from_string(
            db.backend(),
            "SELECT COUNT(*) FROM events",
        ))
        .await?;
    match rows.first() {
        Some(row) => Ok(row.try_get_by_index(0)?),
        None => Ok(0),
    }
}
