//! What the tracking server writes and reads (SPEC sections 4 and 5): opens
//! and clicks in batches, link lookups, unsubscribes, SMS receipts and
//! keywords, email bounces and complaints, and conversion attribution.
//! Every write is set-based: one statement per batch, never one per message.

use std::collections::{BTreeMap, BTreeSet};

use sea_orm::{ConnectionTrait, DbBackend, QueryResult, TransactionTrait, Value};
use serde_json::Value as Json;

use crate::db::Db;
use crate::import::EventRow;
use crate::sql::Sql;

/// Rows per multi-row statement (at most 7 values each: far below SQLite's parameter limit).
const CHUNK: usize = 1000;

/// Why a tracking write or read failed.
#[derive(Debug, thiserror::Error)]
pub enum TrackingError {
    /// The database refused or failed.
    #[error("database error: {0}")]
    Db(#[from] sea_orm::DbErr),
}

/// Shorthand for tracking results.
pub type TrackingResult<T> = Result<T, TrackingError>;

/// A campaign's goal (or one of its secondary goals), as attribution needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoalSpec {
    /// The campaign, by name.
    pub campaign_name: String,
    /// The event that counts.
    pub event: String,
    /// The window after the planned `send_at` of a contact's first message
    /// (step 0), in milliseconds (`Campaign::goal_window_ms`).
    pub within_ms: i64,
    /// A secondary goal (counted into `messages.secondary`), not the conversion.
    pub secondary: bool,
}

/// What a tracked request was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HitKind {
    /// An open pixel; `machine_agent` when the user agent is a known prefetcher or scanner.
    Open {
        /// The user agent alone marks it as a machine open.
        machine_agent: bool,
    },
    /// A click on link number `link` of the message.
    Click {
        /// The link's index in the rendered message.
        link: i32,
    },
}

/// One open or click the server answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hit {
    /// The message named by the token.
    pub message_id: i64,
    /// When it was answered (ms).
    pub at: i64,
    /// Open or click.
    pub kind: HitKind,
}

/// What one [`record_hits`] call wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HitReport {
    /// Opens counted (human and machine).
    pub opens: u64,
    /// Of them, flagged as machine opens.
    pub machine_opens: u64,
    /// Clicks counted.
    pub clicks: u64,
}

#[derive(Default)]
struct Agg {
    opens: i64,
    human_first: Option<i64>,
    machine_first: Option<i64>,
    clicks: i64,
    click_first: Option<i64>,
}

fn first(slot: &mut Option<i64>, at: i64) {
    *slot = Some(slot.map_or(at, |s| s.min(at)));
}

fn get<T: sea_orm::TryGetable>(row: &QueryResult, i: usize) -> TrackingResult<T> {
    Ok(row.try_get_by_index(i)?)
}

fn json(v: Json) -> Value {
    Value::Json(Some(Box::new(v)))
}

fn in_list(q: &mut Sql, ids: impl IntoIterator<Item = i64>) {
    q.push("(");
    for (i, id) in ids.into_iter().enumerate() {
        if i > 0 {
            q.push(",");
        }
        q.bind(id);
    }
    q.push(")");
}

/// Writes a batch of opens and clicks in one transaction: `open_count` and
/// `click_count` grow by the number of requests, first instants are kept.
///
/// An open is a machine open when its user agent says so, or when it came
/// less than `machine_window_ms` after the message was delivered (or sent),
/// or before herald had recorded the send at all: mail privacy proxies and
/// security scanners fetch every image within seconds of delivery, people
/// rarely do.
pub async fn record_hits(
    db: &Db,
    hits: &[Hit],
    machine_window_ms: i64,
) -> TrackingResult<HitReport> {
    let open_ids: BTreeSet<i64> = hits
        .iter()
        .filter(|h| matches!(h.kind, HitKind::Open { .. }))
        .map(|h| h.message_id)
        .collect();
    let delivered = delivery_times(db, &open_ids.into_iter().collect::<Vec<_>>()).await?;
    let mut agg: BTreeMap<i64, Agg> = BTreeMap::new();
    let mut clicks: Vec<(i64, i64, i32)> = Vec::new();
    let mut report = HitReport::default();
    for h in hits {
        let a = agg.entry(h.message_id).or_default();
        match h.kind {
            HitKind::Open { machine_agent } => {
                let reference = delivered.get(&h.message_id).copied().flatten();
                let machine =
                    machine_agent || reference.is_none_or(|t| h.at - t < machine_window_ms);
                a.opens += 1;
                report.opens += 1;
                if machine {
                    report.machine_opens += 1;
                    first(&mut a.machine_first, h.at);
                } else {
                    first(&mut a.human_first, h.at);
                }
            }
            HitKind::Click { link } => {
                a.clicks += 1;
                report.clicks += 1;
                first(&mut a.click_first, h.at);
                clicks.push((h.message_id, h.at, link));
            }
        }
    }
    // Rows in id order: concurrent writers of the same rows lock them in one order.
    let rows: Vec<(i64, Agg)> = agg.into_iter().collect();
    match db.backend() {
        DbBackend::Postgres => write_hits_pg(db, &rows, &clicks).await?,
        _ => write_hits(db, &rows, &clicks).await?,
    }
    Ok(report)
}

/// `COALESCE(delivered_at, sent_at)` of messages `ids`. Read before the
/// write transaction: on SQLite a read that later upgrades to a write can
/// fail with SQLITE_BUSY when another writer got in between.
async fn delivery_times(db: &Db, ids: &[i64]) -> TrackingResult<BTreeMap<i64, Option<i64>>> {
    let mut out = BTreeMap::new();
    if ids.is_empty() {
        return Ok(out);
    }
    if db.backend() == DbBackend::Postgres {
        let rows: Vec<(i64, Option<i64>)> = sea_orm::sqlx::query_as(
            "SELECT id, COALESCE(delivered_at, sent_at) FROM messages WHERE id = ANY($1::int8[])",
        )
        .bind(ids)
        .fetch_all(db.conn.get_postgres_connection_pool())
        .await
        .map_err(sqlx_err)?;
        out.extend(rows);
        return Ok(out);
    }
    for chunk in ids.chunks(CHUNK) {
        let mut q = Sql::new();
        q.push("SELECT id, COALESCE(delivered_at, sent_at) FROM messages WHERE id IN ");
        in_list(&mut q, chunk.iter().copied());
        for r in db.conn.query_all_raw(q.build(db.backend())).await? {
            out.insert(get(&r, 0)?, get(&r, 1)?);
        }
    }
    Ok(out)
}

fn sqlx_err(e: sea_orm::sqlx::Error) -> TrackingError {
    TrackingError::Db(sea_orm::DbErr::Custom(e.to_string()))
}

/// PostgreSQL: the whole batch as arrays (`UNNEST`), one UPDATE and one
/// INSERT whatever its size: nothing to parse or plan per row, and no limit
/// on parameters.
async fn write_hits_pg(
    db: &Db,
    rows: &[(i64, Agg)],
    clicks: &[(i64, i64, i32)],
) -> TrackingResult<()> {
    let mut tx = db
        .conn
        .get_postgres_connection_pool()
        .begin()
        .await
        .map_err(sqlx_err)?;
    sea_orm::sqlx::query(
        "UPDATE messages AS m SET open_count = m.open_count + x.opens, opened_at = COALESCE(m.opened_at, x.human), machine_opened_at = COALESCE(m.machine_opened_at, x.machine), click_count = m.click_count + x.clicks, clicked_at = COALESCE(m.clicked_at, x.click_first) \
         FROM UNNEST($1::int8[], $2::int8[], $3::int8[], $4::int8[], $5::int8[], $6::int8[]) AS x(id, opens, human, machine, clicks, click_first) WHERE m.id = x.id",
    )
    .bind(rows.iter().map(|(id, _)| *id).collect::<Vec<i64>>())
    .bind(rows.iter().map(|(_, a)| a.opens).collect::<Vec<i64>>())
    .bind(rows.iter().map(|(_, a)| a.human_first).collect::<Vec<Option<i64>>>())
    .bind(rows.iter().map(|(_, a)| a.machine_first).collect::<Vec<Option<i64>>>())
    .bind(rows.iter().map(|(_, a)| a.clicks).collect::<Vec<i64>>())
    .bind(rows.iter().map(|(_, a)| a.click_first).collect::<Vec<Option<i64>>>())
    .execute(&mut *tx)
    .await
    .map_err(sqlx_err)?;
    if !clicks.is_empty() {
        // The message may be gone (a forgotten contact's): log only what exists.
        sea_orm::sqlx::query(
            "INSERT INTO message_events (message_id, kind, at, detail) SELECT x.id, 'click', x.at, jsonb_build_object('link', x.link) \
             FROM UNNEST($1::int8[], $2::int8[], $3::int4[]) AS x(id, at, link) WHERE EXISTS (SELECT 1 FROM messages m WHERE m.id = x.id)",
        )
        .bind(clicks.iter().map(|c| c.0).collect::<Vec<i64>>())
        .bind(clicks.iter().map(|c| c.1).collect::<Vec<i64>>())
        .bind(clicks.iter().map(|c| c.2).collect::<Vec<i32>>())
        .execute(&mut *tx)
        .await
        .map_err(sqlx_err)?;
    }
    tx.commit().await.map_err(sqlx_err)
}

/// SQLite: multi-row `VALUES` of at most [`CHUNK`] rows in one transaction.
async fn write_hits(
    db: &Db,
    rows: &[(i64, Agg)],
    clicks: &[(i64, i64, i32)],
) -> TrackingResult<()> {
    let b = db.backend();
    let txn = db.conn.begin().await?;
    for chunk in rows.chunks(CHUNK) {
        let mut q = Sql::new();
        q.push("UPDATE messages SET open_count = messages.open_count + x.column2, opened_at = COALESCE(messages.opened_at, x.column3), machine_opened_at = COALESCE(messages.machine_opened_at, x.column4), click_count = messages.click_count + x.column5, clicked_at = COALESCE(messages.clicked_at, x.column6) FROM (VALUES ");
        for (i, (id, a)) in chunk.iter().enumerate() {
            if i > 0 {
                q.push(",");
            }
            q.push("(").bind(*id).push(",");
            q.bind(a.opens).push(",");
            q.bind(a.human_first).push(",");
            q.bind(a.machine_first).push(",");
            q.bind(a.clicks).push(",");
            q.bind(a.click_first).push(")");
        }
        q.push(") AS x WHERE messages.id = x.column1");
        txn.execute_raw(q.build(b)).await?;
    }
    for chunk in clicks.chunks(CHUNK) {
        let mut q = Sql::new();
        q.push("INSERT INTO message_events (message_id, kind, at, detail) SELECT x.column1, 'click', x.column2, json_object('link', x.column3) FROM (VALUES ");
        for (i, (id, at, link)) in chunk.iter().enumerate() {
            if i > 0 {
                q.push(",");
            }
            q.push("(").bind(*id).push(",");
            q.bind(*at).push(",").bind(*link).push(")");
        }
        q.push(") AS x WHERE EXISTS (SELECT 1 FROM messages m WHERE m.id = x.column1)");
        txn.execute_raw(q.build(b)).await?;
    }
    txn.commit().await?;
    Ok(())
}

/// The URL of link `idx` of message `message_id`, if the message had it.
pub async fn link_url(db: &Db, message_id: i64, idx: i32) -> TrackingResult<Option<String>> {
    let mut q = Sql::new();
    q.push("SELECT url FROM links WHERE message_id = ")
        .bind(message_id)
        .push(" AND idx = ")
        .bind(idx);
    let rows = db.conn.query_all_raw(q.build(db.backend())).await?;
    rows.first().map(|r| get(r, 0)).transpose()
}

/// A short link found by its code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShortLink {
    /// The message it was rendered into.
    pub message_id: i64,
    /// Its index in that message.
    pub idx: i32,
    /// Where it leads.
    pub url: String,
}

/// The link stored under short code `code`, if any.
pub async fn short_link(db: &Db, code: &str) -> TrackingResult<Option<ShortLink>> {
    let mut q = Sql::new();
    q.push("SELECT message_id, idx, url FROM links WHERE short_code = ")
        .bind(code.to_string());
    let rows = db.conn.query_all_raw(q.build(db.backend())).await?;
    rows.first()
        .map(|r| {
            Ok(ShortLink {
                message_id: get(r, 0)?,
                idx: get(r, 1)?,
                url: get(r, 2)?,
            })
        })
        .transpose()
}

/// What the server needs to know about a message named by a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageInfo {
    /// Its id.
    pub id: i64,
    /// Its contact.
    pub contact_id: i64,
    /// `email`, `sms` or `push`; none for a message that was never to be sent.
    pub channel: Option<String>,
    /// The address it went to.
    pub address: Option<String>,
    /// Its status.
    pub status: String,
    /// Its campaign's name.
    pub campaign: String,
    /// Its campaign's topic.
    pub topic: Option<String>,
    /// `marketing` or `transactional`.
    pub kind: String,
}

/// The message `id` and its campaign, if it exists.
pub async fn message_info(db: &Db, id: i64) -> TrackingResult<Option<MessageInfo>> {
    let mut q = Sql::new();
    q.push("SELECT m.id, m.contact_id, m.channel, m.address, m.status, c.name, c.topic, c.kind FROM messages m JOIN campaigns c ON c.id = m.campaign_id WHERE m.id = ")
        .bind(id);
    let rows = db.conn.query_all_raw(q.build(db.backend())).await?;
    rows.first()
        .map(|r| {
            Ok(MessageInfo {
                id: get(r, 0)?,
                contact_id: get(r, 1)?,
                channel: get(r, 2)?,
                address: get(r, 3)?,
                status: get(r, 4)?,
                campaign: get(r, 5)?,
                topic: get(r, 6)?,
                kind: get(r, 7)?,
            })
        })
        .transpose()
}

/// The email message the relay knows as `provider_id` (the id of its `250 Ok <id>` reply,
/// stored as the message's provider id), if exactly one has it.
pub async fn message_by_provider_id(
    db: &Db,
    provider_id: &str,
) -> TrackingResult<Option<MessageInfo>> {
    let mut q = Sql::new();
    // Two rows with one id would mean the id is not the relay's own: trust neither.
    q.push("SELECT m.id FROM messages m WHERE m.channel = 'email' AND m.provider_id = ")
        .bind(provider_id.to_string())
        .push(" LIMIT 2");
    let rows = db.conn.query_all_raw(q.build(db.backend())).await?;
    match rows.as_slice() {
        [row] => message_info(db, get(row, 0)?).await,
        _ => Ok(None),
    }
}

/// What an unsubscribe stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnsubscribeScope {
    /// Marketing on the message's channel; transactional messages still go.
    Channel,
    /// Only the campaign's topic, on every channel.
    Topic,
}

/// The suppression reason of an unsubscribe: it stops marketing on its
/// channel, not transactional messages (SPEC section 4); every other reason
/// (bounce, complaint, opt-out) stops everything.
pub const MARKETING_UNSUBSCRIBE: &str = "unsubscribe";

/// Appends one audit row to `message_events` inside `conn`.
async fn log_event(
    conn: &impl ConnectionTrait,
    b: DbBackend,
    message_id: i64,
    kind: &str,
    at: i64,
    detail: Json,
) -> TrackingResult<()> {
    let mut q = Sql::new();
    q.push("INSERT INTO message_events (message_id, kind, at, detail) VALUES (")
        .bind(message_id)
        .push(",")
        .bind(kind.to_string())
        .push(",")
        .bind(at)
        .push(",")
        .bind(json(detail))
        .push(")");
    conn.execute_raw(q.build(b)).await?;
    Ok(())
}

/// Inserts a suppression unless the same one is already there.
#[allow(clippy::too_many_arguments)]
async fn suppress(
    conn: &impl ConnectionTrait,
    b: DbBackend,
    channel: &str,
    address: Option<&str>,
    contact_id: Option<i64>,
    reason: &str,
    source: &str,
    now: i64,
) -> TrackingResult<()> {
    let mut q = Sql::new();
    q.push("INSERT INTO suppressions (channel, address, contact_id, topic, reason, source, created_at) SELECT ")
        .bind(channel.to_string())
        .push(", ")
        .bind_as(b, address.map(str::to_string), "text")
        .push(", ")
        .bind_as(b, contact_id, "int8")
        .push(", NULL, ")
        .bind(reason.to_string())
        .push(", ")
        .bind(source.to_string())
        .push(", ")
        .bind(now)
        .push(" WHERE NOT EXISTS (SELECT 1 FROM suppressions s WHERE s.topic IS NULL AND s.channel = ")
        .bind(channel.to_string())
        .push(" AND s.reason = ")
        .bind(reason.to_string());
    match address {
        Some(a) => q.push(" AND s.address = ").bind(a.to_string()),
        None => q.push(" AND s.address IS NULL"),
    };
    match contact_id {
        Some(c) => q.push(" AND s.contact_id = ").bind(c),
        None => q.push(" AND s.contact_id IS NULL"),
    };
    q.push(")");
    conn.execute_raw(q.build(b)).await?;
    Ok(())
}

/// Unsubscribes the message's contact: from marketing on its channel (the
/// address and the contact are suppressed there with reason
/// [`MARKETING_UNSUBSCRIBE`], which transactional messages pass) or from
/// its campaign's topic; marks the
/// message `unsubscribed_at`. Returns the scope applied (a topic request for
/// a campaign without a topic stops the channel).
pub async fn unsubscribe(
    db: &Db,
    msg: &MessageInfo,
    scope: UnsubscribeScope,
    source: &str,
    now: i64,
) -> TrackingResult<UnsubscribeScope> {
    let b = db.backend();
    let txn = db.conn.begin().await?;
    let applied = match (&msg.topic, scope, &msg.channel) {
        (Some(topic), UnsubscribeScope::Topic, _) => {
            let mut q = Sql::new();
            q.push("INSERT INTO topic_subscriptions (contact_id, topic, subscribed, updated_at) VALUES (")
                .bind(msg.contact_id)
                .push(",")
                .bind(topic.clone())
                .push(", FALSE, ")
                .bind(now)
                .push(") ON CONFLICT (contact_id, topic) DO UPDATE SET subscribed = FALSE, updated_at = excluded.updated_at");
            txn.execute_raw(q.build(b)).await?;
            UnsubscribeScope::Topic
        }
        (_, _, channel) => {
            let channel = channel.as_deref().unwrap_or("any");
            suppress(
                &txn,
                b,
                channel,
                msg.address.as_deref(),
                Some(msg.contact_id),
                MARKETING_UNSUBSCRIBE,
                source,
                now,
            )
            .await?;
            UnsubscribeScope::Channel
        }
    };
    let mut q = Sql::new();
    q.push("UPDATE messages SET unsubscribed_at = COALESCE(unsubscribed_at, ")
        .bind(now)
        .push(") WHERE id = ")
        .bind(msg.id);
    txn.execute_raw(q.build(b)).await?;
    let scope_name = match applied {
        UnsubscribeScope::Channel => "channel",
        UnsubscribeScope::Topic => "topic",
    };
    log_event(
        &txn,
        b,
        msg.id,
        "unsubscribe",
        now,
        serde_json::json!({ "scope": scope_name, "source": source }),
    )
    .await?;
    txn.commit().await?;
    Ok(applied)
}

/// A Twilio delivery receipt, mapped onto herald's statuses (SPEC section 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmsReceipt {
    /// Handed to the carrier: `sent` (never a step back from a later status).
    Sent,
    /// `delivered`.
    Delivered,
    /// The carrier could not deliver it: `bounced`.
    Undelivered,
    /// Twilio could not send it: `failed`.
    Failed,
}

/// Applies a status callback to message `msg`. `suppress_reason`, when
/// given, also suppresses the number (an unreachable or opted-out phone).
pub async fn apply_sms_receipt(
    db: &Db,
    msg: &MessageInfo,
    receipt: SmsReceipt,
    sid: Option<&str>,
    error_code: Option<&str>,
    suppress_reason: Option<&str>,
    now: i64,
) -> TrackingResult<()> {
    let b = db.backend();
    let reason = error_code.map(|c| format!("twilio error {c}"));
    let mut q = Sql::new();
    // A callback can outrun the dispatcher's own bookkeeping (`sending`) or
    // prove that an `unknown` message did go out; it never moves a message back.
    match receipt {
        SmsReceipt::Sent => {
            q.push("UPDATE messages SET status = CASE WHEN status IN ('sending', 'unknown') THEN 'sent' ELSE status END, sent_at = COALESCE(sent_at, ")
                .bind(now)
                .push(")");
        }
        SmsReceipt::Delivered => {
            q.push("UPDATE messages SET status = CASE WHEN status IN ('sending', 'sent', 'unknown') THEN 'delivered' ELSE status END, sent_at = COALESCE(sent_at, ")
                .bind(now)
                .push("), delivered_at = COALESCE(delivered_at, ")
                .bind(now)
                .push(")");
        }
        SmsReceipt::Undelivered => {
            q.push("UPDATE messages SET status = CASE WHEN status IN ('sending', 'sent', 'unknown') THEN 'bounced' ELSE status END, reason = CASE WHEN status IN ('sending', 'sent', 'unknown') THEN ")
                .bind_as(b, reason.clone(), "text")
                .push(" ELSE reason END, bounced_at = COALESCE(bounced_at, ")
                .bind(now)
                .push(")");
        }
        SmsReceipt::Failed => {
            q.push("UPDATE messages SET status = CASE WHEN status IN ('sending', 'sent', 'unknown') THEN 'failed' ELSE status END, reason = CASE WHEN status IN ('sending', 'sent', 'unknown') THEN ")
                .bind_as(b, reason.clone(), "text")
                .push(" ELSE reason END");
        }
    }
    q.push(", provider_id = COALESCE(provider_id, ")
        .bind_as(b, sid.map(str::to_string), "text")
        .push("), updated_at = ")
        .bind(now)
        .push(" WHERE id = ")
        .bind(msg.id);
    let txn = db.conn.begin().await?;
    txn.execute_raw(q.build(b)).await?;
    let status = match receipt {
        SmsReceipt::Sent => "sent",
        SmsReceipt::Delivered => "delivered",
        SmsReceipt::Undelivered => "undelivered",
        SmsReceipt::Failed => "failed",
    };
    log_event(
        &txn,
        b,
        msg.id,
        "sms_status",
        now,
        serde_json::json!({ "status": status, "sid": sid, "error_code": error_code }),
    )
    .await?;
    if let (Some(why), Some(address)) = (suppress_reason, msg.address.as_deref()) {
        suppress(
            &txn,
            b,
            "sms",
            Some(address),
            Some(msg.contact_id),
            why,
            "twilio",
            now,
        )
        .await?;
    }
    txn.commit().await?;
    Ok(())
}

/// A status callback says the sender's account, not the message, was
/// refused (Twilio 30034 unregistered A2P 10DLC, 30007 carrier filtering):
/// the message goes back to `planned` (no `failed`, no fallback, its attempt
/// not counted) to go out again once the route works, and the route is
/// blocked with `reason` ([`crate::routes::report_block`]). A message that
/// already has a final outcome is left as it is. Returns whether it was
/// planned again.
pub async fn apply_sms_account_fault(
    db: &Db,
    msg: &MessageInfo,
    sid: Option<&str>,
    error_code: &str,
    reason: &str,
    now: i64,
) -> TrackingResult<bool> {
    let b = db.backend();
    let mut q = Sql::new();
    q.push("UPDATE messages SET status = 'planned', sent_at = NULL, provider_id = NULL, lease_owner = NULL, lease_until = NULL, not_before = NULL, attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END, reason = ")
        .bind(format!("held: the route is blocked ({reason})"))
        .push(", updated_at = ")
        .bind(now)
        .push(" WHERE status IN ('sending', 'sent', 'unknown') AND id = ")
        .bind(msg.id);
    let txn = db.conn.begin().await?;
    let planned = txn.execute_raw(q.build(b)).await?.rows_affected() > 0;
    log_event(
        &txn,
        b,
        msg.id,
        "sms_status",
        now,
        serde_json::json!({ "status": "account_fault", "sid": sid, "error_code": error_code }),
    )
    .await?;
    txn.commit().await?;
    crate::routes::report_block(db, "sms", reason, now)
        .await
        .map_err(|e| TrackingError::from(sea_orm::DbErr::Custom(e.to_string())))?;
    Ok(planned)
}

/// What a mailbox provider reported about an email.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmailFeedback {
    /// It arrived.
    Delivered,
    /// A permanent failure: the message is `bounced` and the address suppressed.
    HardBounce,
    /// A temporary failure: only logged.
    SoftBounce,
    /// The recipient marked it as spam: `complained_at`, and the address suppressed.
    Complaint,
}

impl EmailFeedback {
    /// The name in `message_events.kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            EmailFeedback::Delivered => "delivered",
            EmailFeedback::HardBounce => "hard_bounce",
            EmailFeedback::SoftBounce => "soft_bounce",
            EmailFeedback::Complaint => "complaint",
        }
    }
}

/// Applies a bounce, complaint or delivery report from `source` to message `msg`.
pub async fn apply_email_feedback(
    db: &Db,
    msg: &MessageInfo,
    feedback: EmailFeedback,
    source: &str,
    detail: Json,
    now: i64,
) -> TrackingResult<()> {
    let b = db.backend();
    let txn = db.conn.begin().await?;
    let mut q = Sql::new();
    match feedback {
        EmailFeedback::Delivered => {
            q.push("UPDATE messages SET status = CASE WHEN status IN ('sending', 'sent', 'unknown') THEN 'delivered' ELSE status END, delivered_at = COALESCE(delivered_at, ")
                .bind(now)
                .push(")");
        }
        EmailFeedback::HardBounce => {
            q.push("UPDATE messages SET status = CASE WHEN status IN ('sending', 'sent', 'delivered', 'unknown') THEN 'bounced' ELSE status END, bounced_at = COALESCE(bounced_at, ")
                .bind(now)
                .push(")");
        }
        EmailFeedback::Complaint => {
            q.push("UPDATE messages SET complained_at = COALESCE(complained_at, ")
                .bind(now)
                .push(")");
        }
        EmailFeedback::SoftBounce => {}
    }
    if !q.text.is_empty() {
        q.push(", updated_at = ")
            .bind(now)
            .push(" WHERE id = ")
            .bind(msg.id);
        txn.execute_raw(q.build(b)).await?;
    }
    log_event(&txn, b, msg.id, feedback.as_str(), now, detail).await?;
    let reason = match feedback {
        EmailFeedback::HardBounce => Some("hard_bounce"),
        EmailFeedback::Complaint => Some("complaint"),
        _ => None,
    };
    if let (Some(reason), Some(address)) = (reason, msg.address.as_deref()) {
        suppress(
            &txn,
            b,
            "email",
            Some(address),
            Some(msg.contact_id),
            reason,
            source,
            now,
        )
        .await?;
    }
    txn.commit().await?;
    Ok(())
}

/// Suppresses SMS to `phone` (E.164) after an opt-out keyword; whoever has the number is covered.
pub async fn sms_opt_out(db: &Db, phone: &str, keyword: &str, now: i64) -> TrackingResult<()> {
    let source = format!("sms_keyword:{keyword}");
    suppress(
        &db.conn,
        db.backend(),
        "sms",
        Some(phone),
        None,
        "opt_out",
        &source,
        now,
    )
    .await
}

/// Lifts the opt-outs (keywords and unsubscribe links, not bounces) of SMS to
/// `phone` and of the contacts who have it; returns how many were lifted.
pub async fn sms_opt_in(db: &Db, phone: &str) -> TrackingResult<u64> {
    let mut q = Sql::new();
    q.push("DELETE FROM suppressions WHERE channel = 'sms' AND topic IS NULL AND reason IN ('opt_out', 'unsubscribe') AND (address = ")
        .bind(phone.to_string())
        .push(" OR contact_id IN (SELECT id FROM contacts WHERE phone = ")
        .bind(phone.to_string())
        .push("))");
    Ok(db
        .conn
        .execute_raw(q.build(db.backend()))
        .await?
        .rows_affected())
}

/// The condition "event `e` is in the goal window of `messages` for goal row `g`".
const IN_WINDOW: &str = "e.contact_id = messages.contact_id AND e.name = g.column2 AND e.at > messages.send_at AND e.at <= messages.send_at + g.column3";

/// `VALUES` of (campaign name, event, within ms) for `goals`.
fn goal_values(q: &mut Sql, b: DbBackend, goals: &[&GoalSpec]) {
    q.push("(VALUES ");
    for (i, g) in goals.iter().enumerate() {
        if i > 0 {
            q.push(",");
        }
        q.push("(")
            .bind_as(b, g.campaign_name.clone(), "text")
            .push(",");
        q.bind_as(b, g.event.clone(), "text").push(",");
        q.bind_as(b, g.within_ms, "int8").push(")");
    }
    q.push(") AS g JOIN campaigns c ON c.name = g.column1");
}

/// Recomputes the conversions (and secondary goals) of the messages that the
/// contacts of `events` may have converted on, from the events table: every
/// first message (step 0) whose window `(send_at, send_at + within]` holds a
/// goal event converts, whatever its status (intention to treat), at the first
/// such event, with revenue the sum of their values (SPEC section 5). A
/// series' later steps never convert: its window spans them instead.
///
/// Call it after the events are stored. Recomputing (rather than adding) makes
/// it idempotent: a duplicate `event_id` or a replayed batch changes nothing.
/// One UPDATE for the primary goals and one per secondary event name in the
/// batch; returns the number of message rows written.
pub async fn attribute_events(
    db: &Db,
    goals: &[GoalSpec],
    events: &[EventRow],
) -> TrackingResult<u64> {
    let names: BTreeSet<&str> = events.iter().map(|e| e.name.as_str()).collect();
    let relevant: Vec<&GoalSpec> = goals
        .iter()
        .filter(|g| names.contains(g.event.as_str()))
        .collect();
    if relevant.is_empty() {
        return Ok(0);
    }
    let goal_names: BTreeSet<&str> = relevant.iter().map(|g| g.event.as_str()).collect();
    let contacts: BTreeSet<&str> = events
        .iter()
        .filter(|e| goal_names.contains(e.name.as_str()))
        .map(|e| e.external_id.as_str())
        .collect();
    let contacts: Vec<&str> = contacts.into_iter().collect();
    let b = db.backend();
    let primary: Vec<&GoalSpec> = relevant.iter().copied().filter(|g| !g.secondary).collect();
    let mut secondary: BTreeMap<&str, Vec<&GoalSpec>> = BTreeMap::new();
    for g in relevant.iter().filter(|g| g.secondary) {
        secondary.entry(g.event.as_str()).or_default().push(g);
    }
    let mut written = 0;
    let txn = db.conn.begin().await?;
    for chunk in contacts.chunks(CHUNK) {
        let contact_filter = |q: &mut Sql| {
            q.push(" WHERE messages.campaign_id = c.id AND messages.contact_id IN (SELECT id FROM contacts WHERE external_id IN (");
            for (i, eid) in chunk.iter().enumerate() {
                if i > 0 {
                    q.push(",");
                }
                q.bind(eid.to_string());
            }
            // A series converts on its first message only: the contact, not
            // each step, is what an A/B test counts.
            q.push(")) AND messages.step = 0 AND EXISTS (SELECT 1 FROM events e WHERE ")
                .push(IN_WINDOW)
                .push(")");
        };
        if !primary.is_empty() {
            // A campaign has one primary goal, so each message meets one goal row.
            let mut q = Sql::new();
            q.push("UPDATE messages SET converted_at = (SELECT MIN(e.at) FROM events e WHERE ")
                .push(IN_WINDOW)
                .push("), revenue = (SELECT COALESCE(SUM(e.value), 0) FROM events e WHERE ")
                .push(IN_WINDOW)
                .push(") FROM ");
            goal_values(&mut q, b, &primary);
            contact_filter(&mut q);
            written += txn.execute_raw(q.build(b)).await?.rows_affected();
        }
        for (event, goals) in &secondary {
            // One statement per event name: a message meets at most one row of
            // `goals` (its campaign's), and its other secondary goals stay as they are.
            let stats = |q: &mut Sql| {
                for (i, (key, agg)) in [
                    ("at", "MIN(e.at)"),
                    ("count", "COUNT(*)"),
                    ("revenue", "COALESCE(SUM(e.value), 0)"),
                ]
                .into_iter()
                .enumerate()
                {
                    if i > 0 {
                        q.push(", ");
                    }
                    q.push("'")
                        .push(key)
                        .push("', (SELECT ")
                        .push(agg)
                        .push(" FROM events e WHERE ")
                        .push(IN_WINDOW)
                        .push(")");
                }
            };
            let mut q = Sql::new();
            match b {
                DbBackend::Postgres => {
                    q.push("UPDATE messages SET secondary = COALESCE(messages.secondary, '{}'::jsonb) || jsonb_build_object(")
                        .bind_as(b, event.to_string(), "text")
                        .push(", jsonb_build_object(");
                    stats(&mut q);
                    q.push(")) FROM ");
                }
                _ => {
                    q.push("UPDATE messages SET secondary = json_patch(COALESCE(messages.secondary, '{}'), json_object(")
                        .bind(event.to_string())
                        .push(", json_object(");
                    stats(&mut q);
                    q.push("))) FROM ");
                }
            }
            goal_values(&mut q, b, goals);
            contact_filter(&mut q);
            written += txn.execute_raw(q.build(b)).await?.rows_affected();
        }
    }
    txn.commit().await?;
    Ok(written)
}

/// Messages by channel and status, and the due queue by channel: cheap gauges for `/metrics`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MessageGauges {
    /// (channel or empty, status, count).
    pub by_status: Vec<(String, String, i64)>,
    /// (channel, planned messages whose `send_at` has come).
    pub due: Vec<(String, i64)>,
}

/// Counts messages by channel and status, and the due queue, at `now`. A
/// flight's untouched rows count as `sending` while it is in the air and
/// `unknown` once its lease lapsed, as in the report and `herald status`
/// ([`crate::flights`]): the gauges never say sent or delivered before the
/// provider has the message.
pub async fn message_gauges(db: &Db, now: i64) -> TrackingResult<MessageGauges> {
    let b = db.backend();
    let txn = crate::flights::snapshot(&db.conn).await?;
    let mut q = Sql::new();
    q.push("SELECT COALESCE(channel, ''), status, COUNT(*) FROM messages GROUP BY channel, status ORDER BY 1, 2");
    let mut by_status: Vec<(String, String, i64)> = txn
        .query_all_raw(q.build(b))
        .await?
        .iter()
        .map(|r| Ok((get(r, 0)?, get(r, 1)?, get(r, 2)?)))
        .collect::<TrackingResult<_>>()?;
    for f in crate::flights::in_the_air(&txn, now, None).await? {
        let channel = f.channel.unwrap_or_default();
        let mut moved = |status: &str, n: i64| match by_status
            .iter_mut()
            .find(|(c, s, _)| *c == channel && s == status)
        {
            Some((_, _, count)) => *count += n,
            None => by_status.push((channel.clone(), status.to_string(), n)),
        };
        moved(&f.written, -f.n);
        moved(f.air.status(), f.n);
    }
    by_status.retain(|(_, _, n)| *n > 0);
    by_status.sort();
    let mut q = Sql::new();
    q.push("SELECT COALESCE(channel, ''), COUNT(*) FROM messages WHERE status = 'planned' AND send_at <= ")
        .bind(now)
        .push(" GROUP BY channel ORDER BY 1");
    let due = txn
        .query_all_raw(q.build(b))
        .await?
        .iter()
        .map(|r| Ok((get(r, 0)?, get(r, 1)?)))
        .collect::<TrackingResult<_>>()?;
    txn.commit().await?;
    Ok(MessageGauges { by_status, due })
}
