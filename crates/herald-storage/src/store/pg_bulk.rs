//! PostgreSQL's dispatch writes (planned messages, outcomes with their
//! attempts and links, outbox rows) as array parameters (`UNNEST`): a batch
//! of a thousand messages is one statement with one bound value a column, not a
//! `VALUES` list of eight thousand. The backend parses and plans a short
//! statement once (sqlx prepares it once a connection), and herald encodes
//! the arrays straight from the rows instead of building a `Value` per cell.
//! The SQL is the same as the portable statements in `store.rs`; SQLite keeps
//! those (its anonymous placeholders are cheap, and it has no arrays).

use herald_channels::RenderedMessage;
use herald_domain::types::{Channel, MessageStatus};
use herald_engine::store::{
    AttemptRecord, Handed, Outcome, PlannedMessage, StoreError, StoreResult,
};
use sea_orm::sqlx::postgres::{PgArguments, PgBindIterExt};
use sea_orm::sqlx::{Arguments, Postgres};

use crate::db::Db;
use crate::store::written_status;

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

/// Adds one array parameter.
fn add<'q, T>(args: &mut PgArguments, value: T) -> StoreResult<()>
where
    T: sea_orm::sqlx::Encode<'q, Postgres> + sea_orm::sqlx::Type<Postgres> + 'q,
{
    args.add(value).map_err(err)
}

async fn execute(db: &Db, sql: &'static str, args: PgArguments) -> StoreResult<()> {
    sea_orm::sqlx::query_with(sql, args)
        .execute(db.conn.get_postgres_connection_pool())
        .await
        .map(|_| ())
        .map_err(err)
}

/// The planned-message insert of one page; a row given as `sent` or
/// `delivered` is handed to a worker as written (see `Written`: one
/// attempt, `sent_at`, `delivered_at` where acceptance is delivery) while
/// the run is planning or running (a run paused in between gets it `planned`).
macro_rules! insert_planned {
    ($on_conflict:literal) => {
        concat!(
            "INSERT INTO messages (run_id, campaign_id, contact_id, step, arm, channel, address, send_at, status, reason, pre_converted, pre_revenue, pre_goal_revenue, attempts, open_count, click_count, revenue, created_at, updated_at, sent_at, delivered_at) \
         SELECT $1, $2, u.contact_id, u.step, u.arm, u.channel, u.address, u.send_at, \
           CASE WHEN u.status IN ('sent', 'delivered') AND NOT r.live THEN 'planned' ELSE u.status END, \
           u.reason, u.pre_converted, u.pre_revenue, u.pre_goal_revenue, CASE WHEN u.status IN ('sent', 'delivered') AND r.live THEN 1 ELSE 0 END, 0, 0, 0, $3, $3, \
           CASE WHEN u.status IN ('sent', 'delivered') AND r.live THEN $3 END, \
           CASE WHEN u.status = 'delivered' AND r.live THEN $3 END \
         FROM UNNEST($4::int8[], $5::int4[], $6::text[], $7::text[], $8::text[], $9::int8[], $10::text[], $11::text[], $12::int4[], $13::float8[], $14::float8[]) \
         AS u(contact_id, step, arm, channel, address, send_at, status, reason, pre_converted, pre_revenue, pre_goal_revenue), \
         (SELECT state IN ('planning', 'running') AS live FROM runs WHERE id = $1 AND state IN ('planning', 'running', 'paused') FOR SHARE) AS r",
            $on_conflict
        )
    };
}

/// A page's rows are new unless a planner that lost its lease wrote them
/// too: the first try skips `ON CONFLICT`, whose speculative insertion probes
/// the unique index once more a row (a tenth of the statement's time), and
/// only a unique violation takes the second, which skips the rows written.
const INSERT_PLANNED: [&str; 2] = [
    insert_planned!(""),
    insert_planned!(" ON CONFLICT (run_id, contact_id, step, trigger_id) DO NOTHING"),
];

/// [`INSERT_PLANNED`] and, in the same statement, the flight of the rows
/// handed (lease owner $15, until $16); returns each handed row with the flight's id.
macro_rules! insert_handed {
    ($on_conflict:literal) => {
        concat!(
            "WITH written AS (",
            insert_planned!($on_conflict),
            " RETURNING id, contact_id, step, status), \
     handed AS (SELECT id, contact_id, step FROM written WHERE status IN ('sent', 'delivered')), \
     flight AS (INSERT INTO flights (run_id, owner, lease_until, written_at, size, ids) \
       SELECT $1, $15, $16, $3, COUNT(*), string_agg(id::text, ',') FROM handed HAVING COUNT(*) > 0 RETURNING id) \
     SELECT handed.id, handed.contact_id, handed.step, flight.id FROM handed, flight"
        )
    };
}

const INSERT_HANDED: [&str; 2] = [
    insert_handed!(""),
    insert_handed!(" ON CONFLICT (run_id, contact_id, step, trigger_id) DO NOTHING"),
];

/// Runs `sql[0]`, an insert of rows expected to be new; if one is not (a
/// unique violation), `sql[1]`, the same with `ON CONFLICT DO NOTHING`.
async fn execute_new_rows(db: &Db, sql: [&'static str; 2], args: PgArguments) -> StoreResult<()> {
    let first = sea_orm::sqlx::query_with(sql[0], args.clone())
        .execute(db.conn.get_postgres_connection_pool())
        .await;
    if is_unique_violation(&first) {
        return execute(db, sql[1], args).await;
    }
    first.map(|_| ()).map_err(err)
}

/// Whether a statement failed on a unique index (SQLSTATE 23505).
fn is_unique_violation<T>(result: &Result<T, sea_orm::sqlx::Error>) -> bool {
    matches!(result, Err(sea_orm::sqlx::Error::Database(e)) if e.code().as_deref() == Some("23505"))
}

/// `Store::insert_planned` (and, with `handed`, `Store::insert_handed`) on
/// PostgreSQL: one statement for the whole page, written only while the run
/// is open (the states of `OPEN_RUN` in store.rs). `FOR SHARE` waits for a
/// `herald runs cancel` in progress (it holds the run's row) and then sees
/// its outcome; a cancel that comes after waits for this page and cancels it.
/// Returns the flight and (id, contact, step) of the rows handed in it.
pub async fn insert_planned(
    db: &Db,
    run_id: i64,
    campaign_id: i64,
    rows: &[PlannedMessage],
    handed: Option<Handed<'_>>,
    now: i64,
) -> StoreResult<(i64, Vec<(i64, i64, i32)>)> {
    if rows.is_empty() {
        return Ok((0, Vec::new()));
    }
    let is_handed = |i: usize| handed.is_some_and(|h| h.rows.get(i).copied().unwrap_or(false));
    let mut args = PgArguments::default();
    add(&mut args, run_id)?;
    add(&mut args, campaign_id)?;
    add(&mut args, now)?;
    add(&mut args, rows.iter().map(|m| m.contact_id).bind_iter())?;
    add(&mut args, rows.iter().map(|m| m.step).bind_iter())?;
    add(&mut args, rows.iter().map(|m| m.arm.as_str()).bind_iter())?;
    add(
        &mut args,
        rows.iter()
            .map(|m| m.channel.map(|c| c.as_str()))
            .bind_iter(),
    )?;
    add(
        &mut args,
        rows.iter().map(|m| m.address.as_deref()).bind_iter(),
    )?;
    add(&mut args, rows.iter().map(|m| m.send_at).bind_iter())?;
    add(
        &mut args,
        rows.iter()
            .enumerate()
            .map(|(i, m)| match handed {
                Some(h) if is_handed(i) => {
                    written_status(m.channel, h.delivered_on_accept).as_str()
                }
                _ => m.status.as_str(),
            })
            .bind_iter(),
    )?;
    add(
        &mut args,
        rows.iter().map(|m| m.reason.as_deref()).bind_iter(),
    )?;
    add(
        &mut args,
        rows.iter()
            .map(|m| m.pre.converted.map(i32::from))
            .bind_iter(),
    )?;
    add(&mut args, rows.iter().map(|m| m.pre.revenue).bind_iter())?;
    add(
        &mut args,
        rows.iter().map(|m| m.pre.goal_revenue).bind_iter(),
    )?;
    let pool = db.conn.get_postgres_connection_pool();
    let Some(h) = handed else {
        execute_new_rows(db, INSERT_PLANNED, args).await?;
        return Ok((0, Vec::new()));
    };
    add(&mut args, h.owner)?;
    add(&mut args, h.until)?;
    let handed =
        |sql| sea_orm::sqlx::query_as_with::<_, (i64, i64, i32, i64), _>(sql, args.clone());
    let mut rows = handed(INSERT_HANDED[0]).fetch_all(pool).await;
    if is_unique_violation(&rows) {
        rows = handed(INSERT_HANDED[1]).fetch_all(pool).await;
    }
    let rows = rows.map_err(err)?;
    let flight = rows.first().map_or(0, |r| r.3);
    Ok((
        flight,
        rows.into_iter()
            .map(|(id, c, step, _)| (id, c, step))
            .collect(),
    ))
}

/// The outcomes, their attempts and their links in one statement (one
/// transaction, one round trip). A provider receipt (Twilio's status
/// callback) can outrun this write: `sent` never overwrites the later
/// `delivered`, `bounced` or `failed`. The flights of written messages
/// ($22) are landed; a message whose row already says its outcome ($21) is
/// not written again, unless a flight was gone (see `Store::record_outcomes`).
/// A row written as sent ($20) whose send did not succeed loses its
/// `sent_at` and `delivered_at`, and its attempt is not counted twice.
const RECORD: &str = "WITH landed AS (DELETE FROM flights WHERE id = ANY($22::int8[]) RETURNING 1), \
     x AS (\
       SELECT * FROM UNNEST($2::int8[], $3::text[], $4::text[], $5::text[], $6::int4[], $7::int8[], $8::bool[], $9::bool[], $20::bool[], $21::bool[]) \
       AS x(id, status, reason, provider_id, tried, not_before, accepted, delivered, written, settled) \
       WHERE NOT (x.settled AND (SELECT COUNT(*) FROM landed) = cardinality($22::int8[]))), \
     updated AS (UPDATE messages SET \
       status = CASE WHEN x.status = 'sent' AND messages.status IN ('delivered', 'bounced', 'failed') THEN messages.status ELSE x.status END, \
       reason = x.reason, provider_id = COALESCE(x.provider_id, messages.provider_id), \
       attempts = messages.attempts + x.tried - CASE WHEN x.written THEN 1 ELSE 0 END, not_before = x.not_before, \
       sent_at = CASE WHEN x.written AND NOT x.accepted THEN NULL ELSE COALESCE(messages.sent_at, CASE WHEN x.accepted THEN $1 END) END, \
       delivered_at = CASE WHEN x.written AND NOT x.accepted THEN NULL ELSE COALESCE(messages.delivered_at, CASE WHEN x.delivered THEN $1 END) END, \
       lease_owner = NULL, lease_until = NULL, updated_at = $1 \
       FROM x WHERE messages.id = x.id RETURNING 1), \
     tried AS (INSERT INTO attempts (message_id, at, result, provider_code, detail, duration_ms) \
       SELECT * FROM UNNEST($10::int8[], $11::int8[], $12::text[], $13::text[], $14::text[], $15::int8[]) RETURNING 1) \
     INSERT INTO links (message_id, idx, url, short_code) \
     SELECT * FROM UNNEST($16::int8[], $17::int4[], $18::text[], $19::text[]) \
     ON CONFLICT (message_id, idx) DO NOTHING";

/// Binds [`RECORD`]'s parameters: messages, attempts, links.
fn record_args(outcomes: &[Outcome], now: i64) -> StoreResult<PgArguments> {
    let mut args = PgArguments::default();
    add(&mut args, now)?;
    add(&mut args, outcomes.iter().map(|o| o.message_id).bind_iter())?;
    add(
        &mut args,
        outcomes.iter().map(|o| o.status.as_str()).bind_iter(),
    )?;
    add(
        &mut args,
        outcomes.iter().map(|o| o.reason.as_deref()).bind_iter(),
    )?;
    add(
        &mut args,
        outcomes
            .iter()
            .map(|o| o.provider_id.as_deref())
            .bind_iter(),
    )?;
    // A render error never reached the provider: no attempt counted.
    add(
        &mut args,
        outcomes
            .iter()
            .map(|o| i32::from(o.attempt.as_ref().is_some_and(AttemptRecord::counts)))
            .bind_iter(),
    )?;
    add(&mut args, outcomes.iter().map(|o| o.retry_at).bind_iter())?;
    add(
        &mut args,
        outcomes
            .iter()
            .map(|o| matches!(o.status, MessageStatus::Sent | MessageStatus::Delivered))
            .bind_iter(),
    )?;
    add(
        &mut args,
        outcomes
            .iter()
            .map(|o| o.status == MessageStatus::Delivered)
            .bind_iter(),
    )?;
    let attempts = || {
        outcomes
            .iter()
            .filter_map(|o| o.attempt.as_ref().map(|a| (o.message_id, a)))
    };
    add(&mut args, attempts().map(|(id, _)| id).bind_iter())?;
    add(&mut args, attempts().map(|(_, a)| a.at).bind_iter())?;
    add(
        &mut args,
        attempts().map(|(_, a)| a.result.as_str()).bind_iter(),
    )?;
    add(
        &mut args,
        attempts().map(|(_, a)| a.code.as_deref()).bind_iter(),
    )?;
    add(
        &mut args,
        attempts().map(|(_, a)| a.detail.as_deref()).bind_iter(),
    )?;
    add(
        &mut args,
        attempts().map(|(_, a)| a.duration_ms).bind_iter(),
    )?;
    let links = || {
        outcomes
            .iter()
            .flat_map(|o| o.links.iter().map(move |l| (o.message_id, l)))
    };
    add(&mut args, links().map(|(id, _)| id).bind_iter())?;
    add(&mut args, links().map(|(_, l)| l.idx).bind_iter())?;
    add(&mut args, links().map(|(_, l)| l.url.as_str()).bind_iter())?;
    add(
        &mut args,
        links().map(|(_, l)| l.short_code.as_deref()).bind_iter(),
    )?;
    add(
        &mut args,
        outcomes.iter().map(|o| o.written.is_some()).bind_iter(),
    )?;
    add(
        &mut args,
        outcomes.iter().map(|o| o.already_written()).bind_iter(),
    )?;
    add(&mut args, Outcome::flights(outcomes))?;
    Ok(args)
}

/// Records `outcomes` (none rerouted, none suppressing an address) in one statement.
pub async fn record_outcomes(db: &Db, outcomes: &[Outcome], now: i64) -> StoreResult<()> {
    execute(db, RECORD, record_args(outcomes, now)?).await
}

macro_rules! insert_outbox {
    ($on_conflict:literal) => {
        concat!(
            "INSERT INTO outbox (message_id, channel, address, subject, body, body_text, headers, created_at) \
     SELECT u.message_id, u.channel, u.address, u.subject, u.body, u.body_text, u.headers::jsonb, $1 \
     FROM UNNEST($2::int8[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[]) \
     AS u(message_id, channel, address, subject, body, body_text, headers)",
            $on_conflict
        )
    };
}

/// A message reaches the outbox once unless its send is retried after a
/// write whose answer was lost: as with a page, `ON CONFLICT` (a quarter of
/// the statement's time) only on the second try.
const INSERT_OUTBOX: [&str; 2] = [
    insert_outbox!(""),
    insert_outbox!(" ON CONFLICT (message_id) DO NOTHING"),
];

/// The outbox's rows in one statement; a message already there is left as it is.
pub async fn insert_outbox<'a>(
    db: &Db,
    messages: impl Iterator<Item = &'a RenderedMessage> + Clone,
    now: i64,
) -> StoreResult<()> {
    let m = || messages.clone();
    let mut args = PgArguments::default();
    add(&mut args, now)?;
    add(&mut args, m().map(|m| m.message_id).bind_iter())?;
    add(&mut args, m().map(|m| m.channel.as_str()).bind_iter())?;
    add(&mut args, m().map(|m| m.to.as_str()).bind_iter())?;
    add(&mut args, m().map(|m| m.subject.as_deref()).bind_iter())?;
    add(&mut args, m().map(|m| m.body.as_str()).bind_iter())?;
    add(&mut args, m().map(|m| m.text.as_deref()).bind_iter())?;
    add(&mut args, m().map(crate::outbox::headers).bind_iter())?;
    execute_new_rows(db, INSERT_OUTBOX, args).await
}

/// `address = ANY(array)` keeps the whole test an index condition of
/// `messages_run_address`, whatever the statistics: one probe an address.
const ADDRESSES_TAKEN: &str = "SELECT step, address FROM messages \
     WHERE run_id = $1 AND channel = $2 AND address = ANY($3::text[]) AND contact_id < $4 \
     AND status NOT IN ('suppressed', 'held_out')";

/// (step, address) of the messages of `run_id` on `channel` to one of
/// `addresses`, to contacts before `before_contact`, that hold their address.
pub async fn addresses_taken(
    db: &Db,
    run_id: i64,
    before_contact: i64,
    channel: Channel,
    addresses: &[&str],
) -> StoreResult<Vec<(i32, String)>> {
    let mut args = PgArguments::default();
    add(&mut args, run_id)?;
    add(&mut args, channel.as_str())?;
    add(&mut args, addresses)?;
    add(&mut args, before_contact)?;
    sea_orm::sqlx::query_as_with::<_, (i32, String), _>(ADDRESSES_TAKEN, args)
        .fetch_all(db.conn.get_postgres_connection_pool())
        .await
        .map_err(err)
}
