//! Synthetic data for benchmarks (`herald-bench console`): contacts,
//! purchases, runs and messages made inside the database
//! (`generate_series` on PostgreSQL, a recursive CTE on SQLite), so nothing
//! crosses the wire and both databases get the very same rows. Mixes come
//! from Weyl sequences of the row number: deterministic, spread evenly.

use sea_orm::{ConnectionTrait, DbBackend};

use crate::db::Db;
use crate::sql::Sql;

const DAY: i64 = 86_400_000;
/// Rows a generating statement inserts at most (SQLite's recursive CTE
/// and PostgreSQL's WAL both like bounded statements).
const CHUNK: i64 = 1_000_000;

/// Why the data could not be made.
#[derive(Debug, thiserror::Error)]
#[error("generating benchmark data: {0}")]
pub struct SyntheticError(String);

fn db_err(e: impl std::fmt::Display) -> SyntheticError {
    SyntheticError(e.to_string())
}

/// What [`console_data`] makes.
#[derive(Debug, Clone, Copy)]
pub struct ConsoleData {
    /// Contacts `c1..cN`; nine in ten have an email address.
    pub contacts: i64,
    /// Purchases (`order_placed`) spread over them and the last 400 days.
    pub purchases: i64,
    /// Messages of campaign `bench` (id 1), spread over runs of at most
    /// `contacts` messages each, one a day; the last run is `running`,
    /// with a tenth of its messages still planned and one accepted attempt
    /// for each of its sends, over the last two hours.
    pub messages: i64,
    /// The instant the data is made at (ms).
    pub now: i64,
}

impl ConsoleData {
    /// How many runs the messages take.
    pub fn runs(&self) -> i64 {
        let c = self.contacts.max(1);
        ((self.messages + c - 1) / c).max(1)
    }
}

/// `g` in `first..=last` as the FROM of a SELECT: `$2` and `$3` bound.
fn series(b: DbBackend) -> (&'static str, &'static str) {
    match b {
        DbBackend::Postgres => ("", "generate_series($2::bigint, $3::bigint) AS s(g)"),
        _ => (
            "WITH RECURSIVE s(g) AS (SELECT $2 UNION ALL SELECT g + 1 FROM s WHERE g < $3) ",
            "s",
        ),
    }
}

/// A fraction in 0..1 from `g`: `(g * mult) % modulus / modulus`.
fn frac(mult: u64, modulus: u64) -> String {
    format!("(CAST((g * {mult}) % {modulus} AS DOUBLE PRECISION) / {modulus})")
}

async fn exec(db: &Db, q: Sql) -> Result<u64, SyntheticError> {
    Ok(db
        .conn
        .execute_raw(q.build(db.backend()))
        .await
        .map_err(db_err)?
        .rows_affected())
}

/// Runs `text` over `g` in `from..=to`, a chunk at a time: `$1` is
/// `param`, `$2..$3` the chunk. The rows inserted.
async fn over_series(
    db: &Db,
    text: &str,
    param: i64,
    from: i64,
    to: i64,
    log: &(dyn Fn(&str) + Sync),
    what: &str,
) -> Result<u64, SyntheticError> {
    let (with, _) = series(db.backend());
    let mut n = 0;
    let mut first = from;
    while first <= to {
        let last = (first + CHUNK - 1).min(to);
        let t = std::time::Instant::now();
        let mut q = Sql::new();
        q.push(with).push(text);
        q.values = vec![param.into(), first.into(), last.into()];
        n += exec(db, q).await?;
        log(&format!(
            "{what}: {} rows in {:.1} s",
            last - first + 1,
            t.elapsed().as_secs_f64()
        ));
        first = last + 1;
    }
    Ok(n)
}

/// Empties the database and fills it with `d`'s contacts, purchases, runs
/// and messages, then refreshes the planner's statistics. `log` hears of
/// each chunk.
pub async fn console_data(
    db: &Db,
    d: ConsoleData,
    log: &(dyn Fn(&str) + Sync),
) -> Result<(), SyntheticError> {
    let b = db.backend();
    db.truncate_all().await.map_err(db_err)?;
    let (_, from) = series(b);
    let now = d.now;
    // Contacts: every tenth without an email.
    let empty = match b {
        DbBackend::Postgres => "CAST('{}' AS jsonb)",
        _ => "'{}'",
    };
    let contacts = format!(
        "INSERT INTO contacts (id, external_id, email, attrs, created_at, updated_at) \
         SELECT g, 'c' || g, CASE WHEN g % 10 = 0 THEN NULL ELSE 'user' || g || '@example.com' END, {empty}, $1 - {since}, $1 FROM {from}",
        since = 500 * DAY
    );
    over_series(db, &contacts, now, 1, d.contacts, log, "contacts").await?;
    // Purchases: a third of the contacts buy, some often.
    let purchases = format!(
        "INSERT INTO events (contact_id, name, at, value, received_at) \
         SELECT 1 + (g * 7919) % ({c} - {c} / 3 * 2), 'order_placed', $1 - CAST({f} * 400 * {DAY} AS BIGINT), 10 + g % 300, $1 FROM {from}",
        c = d.contacts.max(3),
        f = frac(104_729, 999_983),
    );
    over_series(db, &purchases, now, 1, d.purchases, log, "purchases").await?;
    let mut q = Sql::new();
    q.push("INSERT INTO campaigns (id, name, kind, topic, fingerprint, created_at, updated_at) VALUES (1, 'bench', 'marketing', NULL, 'bench', ")
        .bind(now)
        .push(", ")
        .bind(now)
        .push(")");
    exec(db, q).await?;
    let runs = d.runs();
    let per_run = (d.messages + runs - 1) / runs;
    let (u, s, o) = (
        frac(2_654_435_761, 4_294_967_291),
        frac(7_919, 1_000_003),
        frac(15_485_863, 1_000_033),
    );
    for run in 1..=runs {
        let first = (run - 1) * per_run + 1;
        let last = (run * per_run).min(d.messages);
        if first > last {
            break;
        }
        let latest = run == runs;
        let at = if latest {
            now - 2 * 3_600_000
        } else {
            now - (runs - run + 1) * DAY
        };
        let mut q = Sql::new();
        q.push("INSERT INTO runs (id, campaign_id, scheduled_at, now_at, state, origin, fingerprint, created_at) VALUES (")
            .bind(run)
            .push(", 1, ")
            .bind(at)
            .push(", ")
            .bind(at)
            .push(", ")
            .bind(if latest { "running" } else { "done" })
            .push(", 'schedule', 'bench', ")
            .bind(at)
            .push(")");
        exec(db, q).await?;
        // The latest run's sends spread over the two hours since it
        // started; a tenth of it still planned (half due, half later).
        let sent = if latest {
            format!("{at} + (g * 7919) % 7200000")
        } else {
            format!("{at} + g % 3600000")
        };
        let planned = if latest { "0.10" } else { "0" };
        let messages = format!(
            "INSERT INTO messages (run_id, campaign_id, contact_id, step, arm, channel, address, send_at, status, reason, attempts, sent_at, delivered_at, opened_at, open_count, clicked_at, click_count, converted_at, revenue, created_at, updated_at) \
             SELECT $1, 1, 1 + (g - 1) % {c}, 0, arm, \
               CASE WHEN st IN ('held_out', 'suppressed') THEN NULL ELSE 'email' END, \
               CASE WHEN st IN ('held_out', 'suppressed') THEN NULL ELSE 'user' || g || '@example.com' END, \
               CASE WHEN st = 'planned' AND g % 2 = 0 THEN {now} + 3600000 ELSE {at} END, st, \
               CASE WHEN st = 'suppressed' THEN 'no_consent' WHEN st = 'failed' THEN 'smtp 550 5.1.1 mailbox unavailable' END, \
               CASE WHEN st IN ('held_out', 'suppressed', 'planned') THEN 0 ELSE 1 END, \
               CASE WHEN st IN ('sent', 'delivered', 'bounced') THEN t END, \
               CASE WHEN st = 'delivered' THEN t + 2000 END, \
               CASE WHEN st = 'delivered' AND o < 0.3 THEN t + 600000 END, \
               CASE WHEN st = 'delivered' AND o < 0.3 THEN 1 ELSE 0 END, \
               CASE WHEN st = 'delivered' AND o < 0.05 THEN t + 700000 END, \
               CASE WHEN st = 'delivered' AND o < 0.05 THEN 1 ELSE 0 END, \
               CASE WHEN o < CASE arm WHEN 'holdout' THEN 0.02 WHEN 'discount' THEN 0.04 ELSE 0.03 END AND st IN ('delivered', 'held_out') THEN t + 7200000 END, \
               CASE WHEN o < 0.03 THEN 20 + g % 380 ELSE 0 END, \
               {at}, {at} \
             FROM (SELECT g, t, arm, o, \
                     CASE WHEN arm = 'holdout' THEN 'held_out' WHEN s < {planned} THEN 'planned' \
                          WHEN s < {planned} + 0.03 THEN 'suppressed' WHEN s < {planned} + 0.04 THEN 'failed' \
                          WHEN s < {planned} + 0.06 THEN 'bounced' WHEN s < {planned} + 0.11 THEN 'sent' ELSE 'delivered' END AS st \
                   FROM (SELECT g, {sent} AS t, \
                           CASE WHEN {u} < 0.1 THEN 'holdout' WHEN {u} < 0.55 THEN 'discount' ELSE 'reminder' END AS arm, \
                           {s} AS s, {o} AS o \
                         FROM {from}) a) m",
            c = d.contacts.max(1),
        );
        over_series(
            db,
            &messages,
            run,
            first,
            last,
            log,
            &format!("run {run} messages"),
        )
        .await?;
        if latest {
            let mut q = Sql::new();
            q.push("INSERT INTO attempts (message_id, at, result, duration_ms) SELECT id, sent_at, 'accepted', 50 FROM messages WHERE run_id = ")
                .bind(run)
                .push(" AND sent_at IS NOT NULL");
            let n = exec(db, q).await?;
            log(&format!("run {run}: {n} attempts"));
        }
    }
    if b == DbBackend::Postgres {
        // Fresh statistics and a visibility map, as autovacuum would leave them.
        for t in [
            "VACUUM ANALYZE messages",
            "VACUUM ANALYZE contacts",
            "VACUUM ANALYZE events",
            "ANALYZE",
        ] {
            db.conn.execute_unprepared(t).await.map_err(db_err)?;
        }
    } else {
        for t in ["ANALYZE", "PRAGMA wal_checkpoint(TRUNCATE)"] {
            db.conn.execute_unprepared(t).await.map_err(db_err)?;
        }
    }
    if b == DbBackend::Postgres {
        // Explicit ids leave the sequences behind.
        for t in ["contacts", "campaigns", "runs"] {
            db.conn
                .execute_unprepared(&format!(
                    "SELECT setval(pg_get_serial_sequence('{t}', 'id'), (SELECT MAX(id) FROM {t}))"
                ))
                .await
                .map_err(db_err)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_db::on_both_databases;

    /// The same rows on both databases: the mixes add up.
    async fn console_data_makes_what_it_says(db: &Db) {
        let d = ConsoleData {
            contacts: 1_000,
            purchases: 500,
            messages: 2_500,
            now: 1_800_000_000_000,
        };
        console_data(db, d, &|_| {}).await.unwrap();
        let count = |sql: &'static str| async move {
            let rows = db
                .conn
                .query_all_raw(sea_orm::Statement::from_string(db.backend(), sql))
                .await
                .unwrap();
            rows[0].try_get_by_index::<i64>(0).unwrap()
        };
        assert_eq!(count("SELECT COUNT(*) FROM contacts").await, 1_000);
        assert_eq!(
            count("SELECT COUNT(*) FROM contacts WHERE email IS NULL").await,
            100
        );
        assert_eq!(count("SELECT COUNT(*) FROM events").await, 500);
        assert_eq!(count("SELECT COUNT(*) FROM runs").await, 3);
        assert_eq!(count("SELECT COUNT(*) FROM messages").await, 2_500);
        assert_eq!(
            count("SELECT COUNT(*) FROM runs WHERE state = 'running'").await,
            1
        );
        assert!(
            count("SELECT COUNT(*) FROM messages WHERE status = 'planned' AND run_id = 3").await
                > 0
        );
        assert!(count("SELECT COUNT(*) FROM attempts").await > 0);
        assert!(count("SELECT COUNT(*) FROM messages WHERE converted_at IS NOT NULL").await > 0);
    }

    on_both_databases!(console_data_makes_what_it_says);
}
