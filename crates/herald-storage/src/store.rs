//! The engine's `Store` on SQLite and PostgreSQL: campaigns and runs, the
//! audience snapshot in keyset pages, the message queue (claimed with one
//! `UPDATE ... RETURNING` under a lease; `FOR UPDATE SKIP LOCKED` on
//! PostgreSQL), outcomes written in one transaction per batch, and the outbox.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use herald_channels::RenderedMessage;
use herald_channels::outbox::OutboxSink;
use herald_domain::config::{LifecycleConfig, RfmConfig};
use herald_domain::segment::Expr;
use herald_domain::types::{Channel, MessageStatus};
use herald_engine::plan::AddressKey;
use herald_engine::platform::{PlatformFilter, PushPlatform};
use herald_engine::store::*;
use sea_orm::{ConnectionTrait, DbBackend, QueryResult, TransactionTrait, Value};
use serde_json::Value as Json;

use crate::attribute;
use crate::audience::{AudiencePager, PagerStep};
use crate::db::Db;
use crate::personalise::{Subject, personalise};
use crate::segment_sql::SegmentContext;
use crate::sql::{Sql, stmt};

pub(crate) mod pg_bulk;
mod triggers;

/// The engine's store over a [`Db`].
#[derive(Clone, Debug)]
pub struct SqlStore {
    db: Db,
    /// `[rfm]` and `[lifecycle]`, which segment queries need.
    segments: Arc<(RfmConfig, LifecycleConfig)>,
}

impl SqlStore {
    /// A store over `db` with the default `[rfm]` and `[lifecycle]` settings.
    pub fn new(db: Db) -> Self {
        Self::with_segment_config(db, RfmConfig::default(), LifecycleConfig::default())
    }

    /// A store over `db` whose segment queries use these `[rfm]` and `[lifecycle]` settings.
    pub fn with_segment_config(db: Db, rfm: RfmConfig, lifecycle: LifecycleConfig) -> Self {
        Self {
            db,
            segments: Arc::new((rfm, lifecycle)),
        }
    }

    /// The segment compiler's context for this database at `now`.
    pub fn segment_context(&self, now: i64) -> SegmentContext<'_> {
        SegmentContext::new(self.b(), now, &self.segments.0, &self.segments.1)
    }

    /// The database.
    pub fn db(&self) -> &Db {
        &self.db
    }

    fn b(&self) -> DbBackend {
        self.db.backend()
    }

    async fn exec(&self, q: Sql) -> StoreResult<u64> {
        Ok(self
            .db
            .conn
            .execute_raw(q.build(self.b()))
            .await
            .map_err(err)?
            .rows_affected())
    }

    async fn all(&self, q: Sql) -> StoreResult<Vec<QueryResult>> {
        self.db
            .conn
            .query_all_raw(q.build(self.b()))
            .await
            .map_err(err)
    }

    /// Claims due messages under a lease after the cursor `after`; with
    /// `sending`, marks them `sending` in the same statement.
    #[allow(clippy::too_many_arguments)]
    async fn claim(
        &self,
        owner: &str,
        run_id: Option<i64>,
        now: i64,
        lease_until: i64,
        limit: u32,
        after: Option<(i64, i64)>,
        sending: bool,
        channel: Option<Channel>,
        runs: Option<&[i64]>,
        platforms: &PlatformFilter,
    ) -> StoreResult<Vec<ClaimedMessage>> {
        let mut q = Sql::new();
        q.push("UPDATE messages SET lease_owner = ")
            .bind(owner.to_string())
            .push(", lease_until = ")
            .bind(lease_until);
        if sending {
            q.push(", status = 'sending', updated_at = ").bind(now);
        }
        q.push(" WHERE id IN (SELECT m.id FROM messages m JOIN runs r ON r.id = m.run_id WHERE m.status = 'planned' AND m.arm <> 'rollout:*' AND r.state IN ('planning', 'running') AND m.send_at <= ")
            .bind(now)
            .push(" AND (m.not_before IS NULL OR m.not_before <= ")
            .bind(now)
            .push(") AND (m.lease_until IS NULL OR m.lease_until < ")
            .bind(now)
            .push(")");
        if let Some(r) = run_id {
            q.push(" AND m.run_id = ").bind(r);
        }
        if let Some(c) = channel {
            // A lane's claim: the (status, channel, send_at, id) index leads to its queue.
            q.push(" AND m.channel = ").bind(c.as_str().to_string());
        }
        match platforms {
            PlatformFilter::Any => {}
            // A platform sub-route is blocked (or probed): each candidate's
            // token is looked up by the unique token index, only while so.
            PlatformFilter::Except(out) => {
                q.push(" AND ").push(PLATFORM_CLASS).push(" NOT IN (");
                platform_list(&mut q, out);
                q.push(")");
            }
            PlatformFilter::Only(p) | PlatformFilter::Refused(p) => {
                q.push(" AND ").push(PLATFORM_CLASS).push(" IN (");
                platform_list(&mut q, std::slice::from_ref(p));
                q.push(")");
                // A probe's first choice: a message refused for the
                // credential before (its attempt logged `account_fault`), by
                // the attempts index; the oldest due is usually the one that
                // blocked.
                if matches!(platforms, PlatformFilter::Refused(_)) {
                    q.push(" AND EXISTS (SELECT 1 FROM attempts a WHERE a.message_id = m.id AND a.result = 'account_fault')");
                }
            }
        }
        if let Some(runs) = runs {
            // The transactional runs' messages, claimed ahead of the route's queue.
            q.push(" AND m.run_id IN ");
            id_set(&mut q, self.b(), runs);
        }
        if let Some((send_at, id)) = after {
            // A row value: both databases seek the (status, send_at, id) index to it.
            q.push(" AND (m.send_at, m.id) > (")
                .bind(send_at)
                .push(", ")
                .bind(id)
                .push(")");
        }
        q.push(" ORDER BY m.send_at, m.id LIMIT ")
            .bind(i64::from(limit));
        if self.b() == DbBackend::Postgres {
            q.push(" FOR UPDATE OF m SKIP LOCKED");
        }
        q.push(
            ") RETURNING id, run_id, contact_id, arm, channel, address, attempts, send_at, step",
        );
        let rows = self.all(q).await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let channel: String = get(r, 4)?;
            out.push(ClaimedMessage {
                id: get(r, 0)?,
                run_id: get(r, 1)?,
                contact_id: get(r, 2)?,
                arm: get(r, 3)?,
                channel: channel.parse().map_err(err)?,
                address: get(r, 5)?,
                attempts: get(r, 6)?,
                send_at: get(r, 7)?,
                step: get(r, 8)?,
                written: None,
                first: runs.is_some(),
            });
        }
        out.sort_by_key(|m| (m.send_at, m.id));
        Ok(out)
    }

    /// Fills each member's `history`: their messages planned after `since`
    /// in statuses that `reentry` and frequency caps count, in one query.
    async fn attach_history(&self, members: &mut [AudienceMember], since: i64) -> StoreResult<()> {
        if members.is_empty() {
            return Ok(());
        }
        let (lo, hi) = (members[0].contact_id, members[members.len() - 1].contact_id);
        // The page is an id range: one range scan instead of thousands of bound ids.
        let mut q = Sql::new();
        q.push("SELECT m.contact_id, c.name, m.run_id, m.channel, m.send_at, m.status, c.kind FROM messages m JOIN campaigns c ON c.id = m.campaign_id WHERE m.contact_id BETWEEN ")
            .bind(lo)
            .push(" AND ")
            .bind(hi)
            .push(" AND m.send_at > ")
            .bind(since)
            .push(" AND m.status IN ('planned', 'sending', 'sent', 'delivered', 'bounced', 'unknown', 'held_out') ORDER BY m.contact_id, m.send_at DESC");
        let rows = self.all(q).await?;
        let index: std::collections::HashMap<i64, usize> = members
            .iter()
            .enumerate()
            .map(|(i, m)| (m.contact_id, i))
            .collect();
        for r in &rows {
            let Some(&i) = index.get(&get::<i64>(r, 0)?) else {
                continue;
            };
            let channel: Option<String> = get(r, 3)?;
            let status: String = get(r, 5)?;
            let kind: String = get(r, 6)?;
            members[i].history.push(PastMessage {
                campaign: get(r, 1)?,
                run_id: get(r, 2)?,
                channel: channel.map(|c| c.parse()).transpose().map_err(err)?,
                send_at: get(r, 4)?,
                status: status.parse().map_err(err)?,
                marketing: kind == "marketing",
            });
        }
        Ok(())
    }
}

/// A push message's platform class (`herald_engine::platform::class`, in
/// SQL): its token's imported platform as `apns`, `web` or `android`, else
/// (no platform, one herald does not know, no token row) `unlabelled`.
const PLATFORM_CLASS: &str = "COALESCE((SELECT CASE LOWER(TRIM(t.platform)) WHEN 'ios' THEN 'apns' WHEN 'web' THEN 'web' WHEN 'android' THEN 'android' END FROM push_tokens t WHERE t.token = m.address), 'unlabelled')";

/// The class names of `platforms`, comma-separated literals (a fixed set of
/// words, not input).
fn platform_list(q: &mut Sql, platforms: &[PushPlatform]) {
    for (i, p) in platforms.iter().enumerate() {
        if i > 0 {
            q.push(", ");
        }
        q.push("'").push(p.class()).push("'");
    }
}

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

fn get<T: sea_orm::TryGetable>(row: &QueryResult, i: usize) -> StoreResult<T> {
    row.try_get_by_index(i).map_err(err)
}

/// A set of ids as one bound value (`IN` this): the statement text is the same
/// whatever the number of ids, so each database prepares and caches it once
/// instead of once per list length, and PostgreSQL plans one parameter, not 1,000.
fn id_set(q: &mut Sql, b: DbBackend, ids: &[i64]) {
    id_list_set(q, b, &id_list(ids));
}

/// Ids comma-separated, as [`id_set`] binds them and a flight stores them.
fn id_list(ids: &[i64]) -> String {
    ids.iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// [`id_set`] of ids already in an [`id_list`].
pub(crate) fn id_list_set(q: &mut Sql, b: DbBackend, list: &str) {
    if b == DbBackend::Postgres {
        q.push("(SELECT unnest(")
            .bind(format!("{{{list}}}"))
            .push("::text::int8[]))");
    } else {
        q.push("(SELECT value FROM json_each(")
            .bind(format!("[{list}]"))
            .push("))");
    }
}

/// Messages per multi-row INSERT when planning (13 values each).
const INSERT_CHUNK: usize = 1000;

/// The run states that still take new messages: a page of a plan, or a
/// triggered campaign's messages. A cancelled (or finished) run takes none,
/// or its planned rows would never be sent nor settled.
const OPEN_RUN: &str = "state IN ('planning', 'running', 'paused')";

/// The portable multi-row INSERT of planned messages (each with its
/// triggering event's id and instant, if triggered, and the status it is
/// written with if it is handed to a worker), written only while the run is
/// open ([`OPEN_RUN`]; on PostgreSQL `FOR SHARE` waits for a `herald runs
/// cancel` in progress and sees its outcome); a message already planned for
/// its (run, contact, step, trigger) is left as it is. A handed row is
/// written as sent ([`Written`]: its status, `sent_at`, one attempt) while
/// the run is planning or running, and `planned` when it was paused in
/// between: a paused run sends nothing.
fn insert_messages_sql<'a>(
    b: DbBackend,
    run_id: i64,
    campaign_id: i64,
    rows: impl Iterator<
        Item = (
            &'a PlannedMessage,
            Option<(i64, i64)>,
            Option<MessageStatus>,
        ),
    >,
    now: i64,
) -> Sql {
    let mut q = Sql::new();
    // column11 is a handed row's written status (`sent`, `delivered`): no
    // planned row has either.
    q.push("INSERT INTO messages (run_id, campaign_id, contact_id, step, trigger_id, trigger_at, arm, channel, address, send_at, status, reason, pre_converted, pre_revenue, pre_goal_revenue, attempts, open_count, click_count, revenue, created_at, updated_at, sent_at, delivered_at) SELECT v.column1, v.column2, v.column3, v.column4, v.column5, v.column6, v.column7, v.column8, v.column9, v.column10, CASE WHEN v.column11 IN ('sent', 'delivered') AND NOT r.live THEN 'planned' ELSE v.column11 END, v.column12, v.column13, v.column14, v.column15, CASE WHEN v.column11 IN ('sent', 'delivered') AND r.live THEN 1 ELSE 0 END, 0, 0, 0, ")
        .bind(now)
        .push(", ")
        .bind(now)
        .push(", CASE WHEN v.column11 IN ('sent', 'delivered') AND r.live THEN ")
        .bind(now)
        .push(" END, CASE WHEN v.column11 = 'delivered' AND r.live THEN ")
        .bind(now)
        .push(" END");
    q.push(" FROM (VALUES ");
    for (i, (m, trigger, handed)) in rows.enumerate() {
        if i > 0 {
            q.push(",");
        }
        let status = handed.unwrap_or(m.status);
        q.push("(")
            .bind(run_id)
            .push(",")
            .bind(campaign_id)
            .push(",")
            .bind(m.contact_id)
            .push(",")
            .bind(m.step)
            .push(",")
            .bind(trigger.map_or(0, |(id, _)| id))
            .push(",");
        q.bind_as(b, trigger.map(|(_, at)| at), "int8").push(",");
        q.bind(m.arm.clone()).push(",");
        q.bind_as(b, m.channel.map(|c| c.as_str().to_string()), "text")
            .push(",");
        q.bind_as(b, m.address.clone(), "text")
            .push(",")
            .bind(m.send_at)
            .push(",");
        q.bind(status.as_str().to_string())
            .push(",")
            .bind_as(b, m.reason.clone(), "text")
            .push(",")
            .bind_as(b, m.pre.converted.map(i32::from), "int4")
            .push(",")
            .bind_as(b, m.pre.revenue, "float8")
            .push(",")
            .bind_as(b, m.pre.goal_revenue, "float8");
        q.push(")");
    }
    // `r` has a row only while the run is open; `live`: it may send now.
    q.push(") AS v, (SELECT state IN ('planning', 'running') AS live FROM runs WHERE id = ")
        .bind(run_id)
        .push(" AND ")
        .push(OPEN_RUN);
    if b == DbBackend::Postgres {
        q.push(" FOR SHARE");
    }
    // `WHERE true`: SQLite reads `ON CONFLICT` after a bare join as a join constraint.
    q.push(") AS r WHERE true ON CONFLICT (run_id, contact_id, step, trigger_id) DO NOTHING");
    q
}

/// The status a handed message on `channel` is written with: `delivered`
/// where the channel's acceptance is delivery, `sent` elsewhere.
pub(crate) fn written_status(
    channel: Option<Channel>,
    delivered_on_accept: &[Channel],
) -> MessageStatus {
    match channel {
        Some(c) if delivered_on_accept.contains(&c) => MessageStatus::Delivered,
        _ => MessageStatus::Sent,
    }
}

/// The handed rows of a page as the insert returned them: (id, contact,
/// step) of the rows written in `flight`, matched to the page's rows.
fn handed_claims(
    run_id: i64,
    rows: &[PlannedMessage],
    handed: Handed<'_>,
    flight: i64,
    written: impl IntoIterator<Item = (i64, i64, i32)>,
) -> Vec<ClaimedMessage> {
    let by_key: std::collections::HashMap<(i64, i32), &PlannedMessage> = rows
        .iter()
        .zip(handed.rows)
        .filter(|(_, h)| **h)
        .map(|(m, _)| ((m.contact_id, m.step), m))
        .collect();
    let mut out: Vec<ClaimedMessage> = written
        .into_iter()
        .filter_map(|(id, contact_id, step)| {
            let m = by_key.get(&(contact_id, step))?;
            Some(ClaimedMessage {
                id,
                run_id,
                contact_id,
                arm: m.arm.clone(),
                channel: m.channel?,
                address: m.address.clone()?,
                step,
                attempts: 0,
                send_at: m.send_at,
                written: Some(Written {
                    flight,
                    status: written_status(m.channel, handed.delivered_on_accept),
                }),
                first: false,
            })
        })
        .collect();
    out.sort_by_key(|m| (m.send_at, m.id));
    out
}

/// A recipient as `contacts` reads it: id, external id, email, phone, time
/// zone, locale, attributes, tags.
type ContactRow = (
    i64,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Json,
    Option<Json>,
);

/// The [`ContactRow`] of a result row (PostgreSQL).
fn contact_row(r: &QueryResult) -> StoreResult<ContactRow> {
    Ok((
        get(r, 0)?,
        get(r, 1)?,
        get(r, 2)?,
        get(r, 3)?,
        get(r, 4)?,
        get(r, 5)?,
        get(r, 6)?,
        get(r, 7)?,
    ))
}

fn contact_view(
    (id, external_id, email, phone, timezone, locale, attrs, tags): ContactRow,
) -> ContactView {
    ContactView {
        id,
        external_id,
        email,
        phone,
        timezone,
        locale,
        attrs,
        tags: tags
            .and_then(|t| serde_json::from_value(t).ok())
            .unwrap_or_default(),
        personal: Personalisation::default(),
    }
}

/// An audience page's columns a0..a12, booleans as 0 and 1 (as SQLite's JSON
/// writes them): contact id, external id, email, phone, consent (email, sms,
/// push), push token, suppressed (email, sms, push: 2 for everything, 1 for
/// marketing only, 0 for not), topic opt-out, time zone.
type AudienceRow = (
    i64,
    String,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<String>,
    i64,
    i64,
    i64,
    i64,
    Option<String>,
);

/// The [`AudienceRow`] of a result row (PostgreSQL).
fn audience_row(r: &QueryResult) -> StoreResult<AudienceRow> {
    let bit = |i| get::<bool>(r, i).map(i64::from);
    let maybe = |i| get::<Option<bool>>(r, i).map(|v| v.map(i64::from));
    Ok((
        get(r, 0)?,
        get(r, 1)?,
        get(r, 2)?,
        get(r, 3)?,
        maybe(4)?,
        maybe(5)?,
        maybe(6)?,
        get(r, 7)?,
        get(r, 8)?,
        get(r, 9)?,
        get(r, 10)?,
        bit(11)?,
        get(r, 12)?,
    ))
}

/// An audience row's suppression level of a channel: everything (bounce, complaint, opt-out).
const SUPPRESSED_FOR_ALL: i64 = 2;
/// ... or marketing alone (an unsubscribe).
const SUPPRESSED_FOR_MARKETING: i64 = 1;

/// The channels suppressed at exactly `level` in `r`.
fn suppressed_at(r: &AudienceRow, level: i64) -> Vec<Channel> {
    [
        (r.8, Channel::Email),
        (r.9, Channel::Sms),
        (r.10, Channel::Push),
    ]
    .into_iter()
    .filter(|(l, _)| *l == level)
    .map(|(_, ch)| ch)
    .collect()
}

fn audience_member(r: AudienceRow) -> AudienceMember {
    let flag = |v: Option<i64>| v.map(|v| v != 0);
    let (suppressed, marketing_suppressed) = (
        suppressed_at(&r, SUPPRESSED_FOR_ALL),
        suppressed_at(&r, SUPPRESSED_FOR_MARKETING),
    );
    AudienceMember {
        contact_id: r.0,
        external_id: r.1,
        email: r.2,
        phone: r.3,
        consent_email: flag(r.4),
        consent_sms: flag(r.5),
        consent_push: flag(r.6),
        push_token: r.7,
        suppressed,
        marketing_suppressed,
        topic_opt_out: r.11 != 0,
        timezone: r.12,
        best_hour: None,
        history: Vec::new(),
    }
}

/// The rows of `q`, run on `conn`, as `T`s. On SQLite, SQLite folds them
/// into one JSON array, each row `json_array(items)` over `q`'s columns, and
/// serde reads it: sqlx hands each result row from SQLite's connection
/// thread to the caller separately, with a copy of each value, and for a
/// batch of a thousand rows that cost more than reading them. PostgreSQL
/// streams rows over its protocol, read by `row`.
async fn rows_of<T: serde::de::DeserializeOwned>(
    conn: &impl ConnectionTrait,
    mut q: Sql,
    items: &str,
    row: impl Fn(&QueryResult) -> StoreResult<T>,
) -> StoreResult<Vec<T>> {
    let b = conn.get_database_backend();
    if b != DbBackend::Sqlite {
        let rows = conn.query_all_raw(q.build(b)).await.map_err(err)?;
        return rows.iter().map(row).collect();
    }
    q.text = format!(
        "SELECT json_group_array(json_array({items})) FROM ({}) AS p",
        q.text
    );
    match conn.query_one_raw(q.build(b)).await.map_err(err)? {
        Some(r) => serde_json::from_str(&get::<String>(&r, 0)?).map_err(err),
        None => Ok(Vec::new()),
    }
}

impl SqlStore {
    /// Writes one page of planned messages of `run_id`; those `handed` marks
    /// are written as sent ([`Written`]), in one flight under its lease,
    /// in the same transaction. Returns the flight and (id, contact, step)
    /// of the rows in it (none without `handed`, or when the run was paused).
    async fn insert_page(
        &self,
        run_id: i64,
        campaign_id: i64,
        rows: &[PlannedMessage],
        handed: Option<Handed<'_>>,
        now: i64,
    ) -> StoreResult<(i64, Vec<(i64, i64, i32)>)> {
        let b = self.b();
        if b == DbBackend::Postgres {
            return pg_bulk::insert_planned(&self.db, run_id, campaign_id, rows, handed, now).await;
        }
        let Some(h) = handed else {
            for chunk in rows.chunks(INSERT_CHUNK) {
                let q = insert_messages_sql(
                    b,
                    run_id,
                    campaign_id,
                    chunk.iter().map(|m| (m, None, None)),
                    now,
                );
                self.exec(q).await?;
            }
            return Ok((0, Vec::new()));
        };
        let txn = self.db.conn.begin().await.map_err(err)?;
        let mut written = Vec::new();
        for (i, chunk) in rows.chunks(INSERT_CHUNK).enumerate() {
            let first = i * INSERT_CHUNK;
            let q = insert_messages_sql(
                b,
                run_id,
                campaign_id,
                chunk.iter().enumerate().map(|(j, m)| {
                    let status = (h.rows.get(first + j) == Some(&true))
                        .then(|| written_status(m.channel, h.delivered_on_accept));
                    (m, None, status)
                }),
                now,
            );
            // The rows this insert wrote have the ids just below the last
            // one (the writer holds the lock; a row left as it was takes
            // none): read back the handed ones as one JSON value, not row
            // by row through `RETURNING` (a thread hand-off a row in sqlx).
            let res = txn.execute_raw(q.build(b)).await.map_err(err)?;
            let n = res.rows_affected() as i64;
            if n == 0 {
                continue;
            }
            let last = res.last_insert_id() as i64;
            let mut q = Sql::new();
            q.push("SELECT id, contact_id, step FROM messages WHERE id BETWEEN ")
                .bind(last - n + 1)
                .push(" AND ")
                .bind(last)
                // `+status`: read by the id range, not through an index on status.
                .push(" AND +status IN ('sent', 'delivered')");
            let handed = rows_of(&txn, q, "id, contact_id, step", |r| {
                Ok((get(r, 0)?, get(r, 1)?, get(r, 2)?))
            });
            written.extend(handed.await?);
        }
        let mut flight = 0;
        if !written.is_empty() {
            let ids: Vec<i64> = written.iter().map(|w| w.0).collect();
            let mut q = Sql::new();
            q.push(
                "INSERT INTO flights (run_id, owner, lease_until, written_at, size, ids) VALUES (",
            )
            .bind(run_id)
            .push(", ")
            .bind(h.owner.to_string())
            .push(", ")
            .bind(h.until)
            .push(", ")
            .bind(now)
            .push(", ")
            .bind(ids.len() as i64)
            .push(", ")
            .bind(id_list(&ids))
            .push(") RETURNING id");
            let r = txn.query_one_raw(q.build(b)).await.map_err(err)?;
            flight = get(&r.ok_or_else(|| err("no flight row"))?, 0)?;
        }
        txn.commit().await.map_err(err)?;
        Ok((flight, written))
    }
}

impl SqlStore {
    /// Attributes the goal events already stored to a page of `run_id` just
    /// written (SPEC section 5; [`crate::attribute`]), after its commit: an
    /// event stored before that is seen here, one stored after it finds the
    /// rows when it is attributed on arrival, so none is missed. Usually one
    /// probe of the events index that finds nothing.
    async fn attribute_page(
        &self,
        run_id: i64,
        campaign_id: i64,
        rows: &[PlannedMessage],
    ) -> StoreResult<()> {
        let first: Vec<&PlannedMessage> = rows.iter().filter(|m| m.step == 0).collect();
        let (Some(lo), Some(hi)) = (
            first.iter().map(|m| m.contact_id).min(),
            first.iter().map(|m| m.contact_id).max(),
        ) else {
            return Ok(());
        };
        let Some(goals) = attribute::goals_of(&self.db.conn, campaign_id)
            .await
            .map_err(err)?
        else {
            return Ok(());
        };
        let earliest = first.iter().map(|m| m.send_at).min().unwrap_or(0);
        let latest = first.iter().map(|m| m.send_at).max().unwrap_or(0);
        let contacts = attribute::contacts_with_goal_events(
            &self.db.conn,
            &goals,
            (lo, hi),
            earliest,
            latest.saturating_add(goals.within_ms),
        )
        .await
        .map_err(err)?;
        if contacts.is_empty() {
            return Ok(());
        }
        attribute::recompute(
            &self.db.conn,
            campaign_id,
            &goals,
            attribute::Messages::Contacts(run_id, &contacts),
        )
        .await
        .map_err(err)?;
        Ok(())
    }
}

/// Deletes the flights of `outcomes`' written messages as the worker
/// records them; true when every one was still there. A flight that is gone
/// lapsed and its messages went `unknown`: then every outcome is written.
async fn land_flights(
    txn: &impl ConnectionTrait,
    b: DbBackend,
    outcomes: &[Outcome],
) -> StoreResult<bool> {
    let flights = Outcome::flights(outcomes);
    if flights.is_empty() {
        return Ok(true);
    }
    let mut q = Sql::new();
    q.push("DELETE FROM flights WHERE id IN ");
    id_set(&mut q, b, &flights);
    let deleted = txn.execute_raw(q.build(b)).await.map_err(err)?;
    Ok(deleted.rows_affected() == flights.len() as u64)
}

#[async_trait]
impl Store for SqlStore {
    async fn upsert_campaign(&self, c: &CampaignRecord, now: i64) -> StoreResult<i64> {
        let mut q = Sql::new();
        let b = self.b();
        q.push("INSERT INTO campaigns (name, kind, topic, fingerprint, goal_event, goal_within_ms, secondary_goals, created_at, updated_at) VALUES (")
            .bind(c.name.clone())
            .push(",")
            .bind(c.kind.clone())
            .push(",")
            .bind(c.topic.clone())
            .push(",")
            .bind(c.fingerprint.clone())
            .push(",");
        // The goals, for attribution when messages are written (`crate::attribute`).
        let goal = c.goal.as_ref();
        q.bind_as(b, goal.map(|g| g.event.clone()), "text")
            .push(",")
            .bind_as(b, goal.map(|g| g.within_ms), "int8")
            .push(",")
            .bind_as(
                b,
                goal.map(|g| Json::from(g.secondary.clone()).to_string()),
                "text",
            )
            .push(",")
            .bind(now)
            .push(",")
            .bind(now)
            .push(") ON CONFLICT (name) DO UPDATE SET kind = excluded.kind, topic = excluded.topic, fingerprint = excluded.fingerprint, goal_event = excluded.goal_event, goal_within_ms = excluded.goal_within_ms, secondary_goals = excluded.secondary_goals, updated_at = excluded.updated_at RETURNING id");
        let rows = self.all(q).await?;
        rows.first()
            .map(|r| get(r, 0))
            .ok_or_else(|| err("campaign upsert returned nothing"))?
    }

    async fn create_run(
        &self,
        campaign_id: i64,
        scheduled_at: i64,
        now_at: i64,
        origin: &str,
        fingerprint: &str,
    ) -> StoreResult<RunRecord> {
        let mut q = Sql::new();
        q.push("INSERT INTO runs (campaign_id, scheduled_at, now_at, state, origin, fingerprint, created_at) VALUES (")
            .bind(campaign_id)
            .push(",")
            .bind(scheduled_at)
            .push(",")
            .bind(now_at)
            .push(", 'planning', ")
            .bind(origin.to_string())
            .push(",")
            .bind(fingerprint.to_string())
            .push(",")
            .bind(now_at)
            .push(") ON CONFLICT (campaign_id, scheduled_at) DO NOTHING RETURNING id, now_at, state");
        let created = self.all(q).await?;
        let (row, was_created) = match created.into_iter().next() {
            Some(r) => (r, true),
            None => {
                let mut q = Sql::new();
                q.push("SELECT id, now_at, state FROM runs WHERE campaign_id = ")
                    .bind(campaign_id)
                    .push(" AND scheduled_at = ")
                    .bind(scheduled_at);
                let r = self
                    .all(q)
                    .await?
                    .into_iter()
                    .next()
                    .ok_or_else(|| err("run vanished"))?;
                (r, false)
            }
        };
        Ok(RunRecord {
            id: get(&row, 0)?,
            campaign_id,
            now_at: get(&row, 1)?,
            state: get(&row, 2)?,
            created: was_created,
        })
    }

    async fn audience_in(
        &self,
        filter: &Expr,
        now: i64,
        topic: Option<&str>,
        scope: &Scope,
        after: i64,
        limit: u32,
        history_since: Option<i64>,
    ) -> StoreResult<Vec<AudienceMember>> {
        let ctx = self.segment_context(now);
        let mut pager =
            AudiencePager::new(filter, &ctx, topic, scope, after, limit).map_err(err)?;
        let mut members = Vec::new();
        while let Some(q) = pager.next_query(members.len()) {
            let q = match q {
                PagerStep::MaxId(q) => {
                    let rows = self.all(q).await?;
                    pager.set_max_id(rows.first().map_or(Ok(0), |r| get(r, 0))?);
                    continue;
                }
                PagerStep::Ids(q) => {
                    let rows = self.all(q).await?;
                    let ids = rows.iter().map(|r| get(r, 0)).collect::<StoreResult<_>>()?;
                    pager.set_ids(ids);
                    continue;
                }
                PagerStep::Page(q) => q,
            };
            let page = rows_of(
                &self.db.conn,
                q,
                "a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12",
                audience_row,
            )
            .await?;
            pager.done(page.len());
            let first = members.len();
            members.extend(page.into_iter().map(audience_member));
            // In contact order, whatever order SQLite's aggregate saw the rows in.
            members[first..].sort_by_key(|m| m.contact_id);
        }
        if let Some(since) = history_since {
            self.attach_history(&mut members, since).await?;
        }
        Ok(members)
    }

    async fn claim_planning(
        &self,
        run_id: i64,
        owner: &str,
        until: i64,
        now: i64,
    ) -> StoreResult<bool> {
        let mut q = Sql::new();
        q.push("UPDATE runs SET planner = ")
            .bind(owner.to_string())
            .push(", planner_until = ")
            .bind(until)
            .push(" WHERE id = ")
            .bind(run_id)
            .push(" AND state = 'planning' AND (planner IS NULL OR planner = ")
            .bind(owner.to_string())
            .push(" OR planner_until < ")
            .bind(now)
            .push(")");
        Ok(self.exec(q).await? == 1)
    }

    async fn last_scheduled(&self, campaign: &str) -> StoreResult<Option<i64>> {
        let mut q = Sql::new();
        q.push("SELECT MAX(r.scheduled_at) FROM runs r JOIN campaigns c ON c.id = r.campaign_id WHERE c.name = ")
            .bind(campaign.to_string())
            .push(" AND r.origin = 'schedule'");
        let rows = self.all(q).await?;
        match rows.first() {
            Some(r) => get(r, 0),
            None => Ok(None),
        }
    }

    async fn run_campaign(&self, run_id: i64) -> StoreResult<Option<String>> {
        let mut q = Sql::new();
        q.push("SELECT c.name FROM runs r JOIN campaigns c ON c.id = r.campaign_id WHERE r.id = ")
            .bind(run_id);
        let rows = self.all(q).await?;
        rows.first().map(|r| get(r, 0)).transpose()
    }

    async fn unfinished_plans(&self, campaign: &str) -> StoreResult<Vec<RunRecord>> {
        let mut q = Sql::new();
        q.push("SELECT r.id, r.campaign_id, r.now_at, r.state FROM runs r JOIN campaigns c ON c.id = r.campaign_id WHERE r.state = 'planning' AND c.name = ")
            .bind(campaign.to_string())
            .push(" ORDER BY r.id");
        self.all(q)
            .await?
            .iter()
            .map(|r| {
                Ok(RunRecord {
                    id: get(r, 0)?,
                    campaign_id: get(r, 1)?,
                    now_at: get(r, 2)?,
                    state: get(r, 3)?,
                    created: false,
                })
            })
            .collect()
    }

    async fn last_planned_contact(&self, run_id: i64) -> StoreResult<i64> {
        let mut q = Sql::new();
        q.push("SELECT COALESCE(MAX(contact_id), 0) FROM messages WHERE run_id = ")
            .bind(run_id);
        let rows = self.all(q).await?;
        rows.first().map_or(Ok(0), |r| get(r, 0))
    }

    async fn insert_planned(
        &self,
        run_id: i64,
        campaign_id: i64,
        rows: &[PlannedMessage],
        now: i64,
    ) -> StoreResult<()> {
        self.insert_page(run_id, campaign_id, rows, None, now)
            .await?;
        self.attribute_page(run_id, campaign_id, rows).await
    }

    async fn insert_handed(
        &self,
        run_id: i64,
        campaign_id: i64,
        rows: &[PlannedMessage],
        handed: Handed<'_>,
        now: i64,
    ) -> StoreResult<Vec<ClaimedMessage>> {
        let (flight, written) = self
            .insert_page(run_id, campaign_id, rows, Some(handed), now)
            .await?;
        self.attribute_page(run_id, campaign_id, rows).await?;
        Ok(handed_claims(run_id, rows, handed, flight, written))
    }

    async fn addresses_taken(
        &self,
        run_id: i64,
        before_contact: i64,
        keys: &[(i32, Channel, &str)],
    ) -> StoreResult<HashSet<AddressKey>> {
        let wanted: HashSet<(i32, Channel, &str)> = keys.iter().copied().collect();
        let mut by_channel: BTreeMap<Channel, BTreeSet<&str>> = BTreeMap::new();
        for &(_, channel, address) in keys {
            by_channel.entry(channel).or_default().insert(address);
        }
        let mut taken = HashSet::new();
        for (channel, addresses) in by_channel {
            let addresses: Vec<&str> = addresses.into_iter().collect();
            let found = if self.b() == DbBackend::Postgres {
                pg_bulk::addresses_taken(&self.db, run_id, before_contact, channel, &addresses)
                    .await?
            } else {
                // One probe of `messages_run_address` per address. Named:
                // SQLite otherwise reads every earlier contact of the run
                // through `messages_run_contact_step` (`contact_id <`) each page.
                let mut q = Sql::new();
                q.push("SELECT step, address FROM messages INDEXED BY messages_run_address WHERE run_id = ")
                    .bind(run_id)
                    .push(" AND channel = ")
                    .bind(channel.as_str().to_string())
                    .push(" AND address IN (SELECT value FROM json_each(")
                    .bind(Json::from(addresses).to_string())
                    .push(")) AND contact_id < ")
                    .bind(before_contact)
                    .push(" AND status NOT IN ('suppressed', 'held_out')");
                let mut found = Vec::new();
                for r in self.all(q).await? {
                    found.push((get::<i32>(&r, 0)?, get::<String>(&r, 1)?));
                }
                found
            };
            for (step, address) in found {
                if wanted.contains(&(step, channel, address.as_str())) {
                    taken.insert((step, channel, address));
                }
            }
        }
        Ok(taken)
    }

    async fn finish_planning(&self, run_id: i64) -> StoreResult<()> {
        let mut q = Sql::new();
        q.push("UPDATE runs SET state = 'running' WHERE state = 'planning' AND id = ")
            .bind(run_id);
        self.exec(q).await?;
        Ok(())
    }

    async fn refresh_message_statistics(&self) -> StoreResult<()> {
        // PostgreSQL: without statistics (a new database, a first large run)
        // it guesses a run has a few dozen planned rows, reads them all through
        // `messages_run_status` and sorts them for every claim: each claim of a
        // 1,000,000-message run read the whole remaining queue (3,000 sent/s).
        // SQLite plans from its indexes' shape and needs nothing.
        if self.b() == DbBackend::Postgres {
            let mut q = Sql::new();
            q.push("ANALYZE messages");
            self.exec(q).await?;
        }
        Ok(())
    }

    async fn expire_leases(&self, now: i64) -> StoreResult<u64> {
        // A claim that expired before its request was written simply becomes claimable
        // again (see claim_due); one that expired while `sending` may have reached the
        // provider, which cannot deduplicate: it ends `unknown`, never resent.
        const WHY: &str = "the worker stopped while sending; not resent, to avoid a duplicate";
        let b = self.b();
        let txn = self.db.conn.begin().await.map_err(err)?;
        let mut q = Sql::new();
        q.push("UPDATE messages SET status = 'unknown', reason = ")
            .bind(WHY)
            .push(", lease_owner = NULL, lease_until = NULL, updated_at = ")
            .bind(now)
            .push(" WHERE status = 'sending' AND lease_until < ")
            .bind(now);
        let mut ended = txn
            .execute_raw(q.build(b))
            .await
            .map_err(err)?
            .rows_affected();
        // So did a lapsed flight's messages, but those a receipt, an open or
        // a click touched since they were written: they did go out.
        let mut q = Sql::new();
        q.push("DELETE FROM flights WHERE lease_until < ")
            .bind(now)
            .push(" RETURNING written_at, ids");
        for r in txn.query_all_raw(q.build(b)).await.map_err(err)? {
            let written_at: i64 = get(&r, 0)?;
            let ids: String = get(&r, 1)?;
            let mut q = Sql::new();
            q.push("UPDATE messages SET status = 'unknown', reason = ")
                .bind(WHY)
                .push(", sent_at = NULL, delivered_at = NULL, updated_at = ")
                .bind(now)
                .push(" WHERE status IN ('sent', 'delivered') AND updated_at = ")
                .bind(written_at)
                .push(" AND id IN ");
            id_list_set(&mut q, b, &ids);
            ended += txn
                .execute_raw(q.build(b))
                .await
                .map_err(err)?
                .rows_affected();
        }
        txn.commit().await.map_err(err)?;
        Ok(ended)
    }

    async fn claim_due(
        &self,
        owner: &str,
        run_id: Option<i64>,
        now: i64,
        lease_until: i64,
        limit: u32,
    ) -> StoreResult<Vec<ClaimedMessage>> {
        self.claim_due_after(owner, run_id, now, lease_until, limit, None)
            .await
    }

    async fn claim_due_after(
        &self,
        owner: &str,
        run_id: Option<i64>,
        now: i64,
        lease_until: i64,
        limit: u32,
        after: Option<(i64, i64)>,
    ) -> StoreResult<Vec<ClaimedMessage>> {
        self.claim(
            owner,
            run_id,
            now,
            lease_until,
            limit,
            after,
            false,
            None,
            None,
            &PlatformFilter::Any,
        )
        .await
    }

    async fn claim_sending_after(
        &self,
        owner: &str,
        run_id: Option<i64>,
        now: i64,
        lease_until: i64,
        limit: u32,
        after: Option<(i64, i64)>,
    ) -> StoreResult<Vec<ClaimedMessage>> {
        self.claim(
            owner,
            run_id,
            now,
            lease_until,
            limit,
            after,
            true,
            None,
            None,
            &PlatformFilter::Any,
        )
        .await
    }

    async fn claim_lane(
        &self,
        owner: &str,
        run_id: Option<i64>,
        channel: Channel,
        first: &[i64],
        now: i64,
        lease_until: i64,
        limit: u32,
        after: Option<(i64, i64)>,
        platforms: &PlatformFilter,
    ) -> StoreResult<Vec<ClaimedMessage>> {
        // Transactional messages first (from the start: they are few), then
        // the route's queue from the cursor with what room is left. With no
        // transactional run open (of `run_id`, when draining one), the
        // first claim would find nothing: it is not made.
        let first: Vec<i64> = first
            .iter()
            .copied()
            .filter(|r| run_id.is_none_or(|id| id == *r))
            .collect();
        let mut out = if first.is_empty() {
            Vec::new()
        } else {
            self.claim(
                owner,
                run_id,
                now,
                lease_until,
                limit,
                None,
                true,
                Some(channel),
                Some(first.as_slice()),
                platforms,
            )
            .await?
        };
        let room = limit.saturating_sub(out.len() as u32);
        if room > 0 {
            out.extend(
                self.claim(
                    owner,
                    run_id,
                    now,
                    lease_until,
                    room,
                    after,
                    true,
                    Some(channel),
                    None,
                    platforms,
                )
                .await?,
            );
        }
        Ok(out)
    }

    async fn push_platforms(
        &self,
        tokens: &[String],
    ) -> StoreResult<Vec<(String, Option<String>)>> {
        let mut out = Vec::new();
        // A few at a time: this runs only around a sub-route's block.
        for chunk in tokens.chunks(500) {
            let mut q = Sql::new();
            q.push("SELECT token, platform FROM push_tokens WHERE token IN (");
            for (i, t) in chunk.iter().enumerate() {
                if i > 0 {
                    q.push(", ");
                }
                q.bind(t.clone());
            }
            q.push(")");
            for r in &self.all(q).await? {
                out.push((get(r, 0)?, get(r, 1)?));
            }
        }
        Ok(out)
    }

    async fn transactional_runs(&self) -> StoreResult<Vec<i64>> {
        let mut q = Sql::new();
        q.push("SELECT r.id FROM runs r JOIN campaigns c ON c.id = r.campaign_id WHERE c.kind = 'transactional' AND r.state IN ('planning', 'running')");
        self.all(q).await?.iter().map(|r| get(r, 0)).collect()
    }

    async fn set_route_block(
        &self,
        route: &str,
        owner: &str,
        block: Option<&herald_engine::health::Block>,
        now: i64,
    ) -> StoreResult<()> {
        match block {
            Some(b) => {
                let row = crate::routes::RouteBlock {
                    route: route.to_string(),
                    owner: owner.to_string(),
                    reason: b.reason.clone(),
                    since: b.since,
                    probe_at: b.next_probe,
                };
                crate::routes::block(&self.db, &row, now).await
            }
            None => crate::routes::unblock(&self.db, route).await,
        }
        .map_err(err)
    }

    async fn route_block_reported(&self, route: &str, since: i64) -> StoreResult<Option<String>> {
        crate::routes::reported_block(&self.db, route, since)
            .await
            .map_err(err)
    }

    async fn route_probe_requested(&self, route: &str, since: i64) -> StoreResult<bool> {
        crate::routes::probe_requested(&self.db, route, since)
            .await
            .map_err(err)
    }

    async fn mark_sending(&self, owner: &str, ids: &[i64], now: i64) -> StoreResult<Vec<i64>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        // Only under this owner's live lease: a claim that expired may already
        // belong to another worker, and sending it here too would be a duplicate.
        let mut q = Sql::new();
        q.push("UPDATE messages SET status = 'sending', updated_at = ")
            .bind(now)
            .push(" WHERE status = 'planned' AND lease_owner = ")
            .bind(owner.to_string())
            .push(" AND lease_until >= ")
            .bind(now)
            .push(" AND id IN ");
        id_set(&mut q, self.b(), ids);
        q.push(" RETURNING id");
        self.all(q).await?.iter().map(|r| get(r, 0)).collect()
    }

    async fn contacts(
        &self,
        ids: &[i64],
        want: &PersonalisationRequest,
    ) -> StoreResult<Vec<ContactView>> {
        let ids: Vec<i64> = ids
            .iter()
            .copied()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if ids.is_empty() {
            return Ok(vec![]);
        }
        let mut q = Sql::new();
        q.push("SELECT id, external_id, email, phone, timezone, locale, attrs, tags FROM contacts WHERE id IN ");
        id_set(&mut q, self.b(), &ids);
        let items = "id, external_id, email, phone, timezone, locale, json(attrs), json(tags)";
        let mut contacts: Vec<ContactView> = rows_of(&self.db.conn, q, items, contact_row)
            .await?
            .into_iter()
            .map(contact_view)
            .collect();
        let subjects: Vec<Subject<'_>> = contacts
            .iter()
            .map(|c| Subject {
                id: c.id,
                timezone: c.timezone.as_deref(),
            })
            .collect();
        let (rfm, lifecycle) = &*self.segments;
        let mut personal = personalise(&self.db, rfm, lifecycle, &subjects, want)
            .await
            .map_err(err)?;
        for c in &mut contacts {
            if let Some(p) = personal.remove(&c.id) {
                c.personal = p;
            }
        }
        Ok(contacts)
    }

    async fn record_outcomes(&self, outcomes: &[Outcome], now: i64) -> StoreResult<()> {
        if outcomes.is_empty() {
            return Ok(());
        }
        let b = self.b();
        // PostgreSQL takes a batch as arrays in one statement; reroutes and
        // suppressed addresses (rare) take the portable path below.
        if b == DbBackend::Postgres
            && outcomes
                .iter()
                .all(|o| o.reroute.is_none() && o.suppress_address.is_none())
        {
            return pg_bulk::record_outcomes(&self.db, outcomes, now).await;
        }
        let txn = self.db.conn.begin().await.map_err(err)?;
        let landed = land_flights(&txn, b, outcomes).await?;
        // A provider receipt (Twilio's status callback) can outrun this write:
        // `sent` never overwrites the later `delivered`, `bounced` or `failed`.
        // A row written as sent whose send did not succeed loses its `sent_at`
        // and `delivered_at`, and its attempt is not counted twice.
        for chunk in outcomes.chunks(INSERT_CHUNK) {
            let mut q = Sql::new();
            q.push("UPDATE messages SET status = CASE WHEN x.column2 = 'sent' AND messages.status IN ('delivered', 'bounced', 'failed') THEN messages.status ELSE x.column2 END, reason = x.column3, provider_id = COALESCE(x.column4, messages.provider_id), attempts = messages.attempts + x.column5 - x.column9, not_before = x.column6, sent_at = CASE WHEN x.column9 = 1 AND x.column7 IS NULL THEN NULL ELSE COALESCE(messages.sent_at, x.column7) END, delivered_at = CASE WHEN x.column9 = 1 AND x.column7 IS NULL THEN NULL ELSE COALESCE(messages.delivered_at, x.column8) END, lease_owner = NULL, lease_until = NULL, updated_at = ")
                .bind(now)
                .push(" FROM (VALUES ");
            let mut rows = 0;
            for o in chunk.iter().filter(|o| !(landed && o.ends_as_written())) {
                if rows > 0 {
                    q.push(",");
                }
                rows += 1;
                let accepted = matches!(o.status, MessageStatus::Sent | MessageStatus::Delivered);
                q.push("(").bind_as(b, o.message_id, "int8").push(",");
                q.bind_as(b, o.status.as_str().to_string(), "text")
                    .push(",");
                q.bind_as(b, o.reason.clone(), "text").push(",");
                q.bind_as(b, o.provider_id.clone(), "text").push(",");
                q.bind_as(
                    b,
                    i32::from(o.attempt.as_ref().is_some_and(AttemptRecord::counts)),
                    "int4",
                )
                .push(",");
                q.bind_as(b, o.retry_at, "int8").push(",");
                q.bind_as(b, accepted.then_some(now), "int8").push(",");
                q.bind_as(
                    b,
                    (o.status == MessageStatus::Delivered).then_some(now),
                    "int8",
                )
                .push(",");
                q.bind_as(b, i32::from(o.written.is_some()), "int4")
                    .push(")");
            }
            q.push(") AS x WHERE messages.id = x.column1");
            if rows > 0 {
                txn.execute_raw(q.build(b)).await.map_err(err)?;
            }
            // A send that ended as written but for its provider id (SMTP's
            // queue id) sets that alone: SQLite rewrites the index entries of
            // every column a SET names, changed or not.
            let mut q = Sql::new();
            q.push("UPDATE messages SET provider_id = x.column2, updated_at = ")
                .bind(now)
                .push(" FROM (VALUES ");
            let mut rows = 0;
            for o in chunk.iter().filter(|o| landed && o.ends_as_written()) {
                let Some(id) = &o.provider_id else { continue };
                if rows > 0 {
                    q.push(",");
                }
                rows += 1;
                q.push("(")
                    .bind(o.message_id)
                    .push(",")
                    .bind(id.clone())
                    .push(")");
            }
            q.push(") AS x WHERE messages.id = x.column1");
            if rows > 0 {
                txn.execute_raw(q.build(b)).await.map_err(err)?;
            }

            // Fallbacks (rare): the message moves to its next channel, once, due now.
            for o in chunk.iter().filter(|o| o.reroute.is_some()) {
                let Some((channel, address)) = &o.reroute else {
                    continue;
                };
                let mut q = Sql::new();
                q.push("UPDATE messages SET fallback_from = channel, channel = ")
                    .bind(channel.as_str().to_string())
                    .push(", address = ")
                    .bind(address.clone())
                    .push(", send_at = ")
                    .bind(now)
                    .push(", not_before = NULL WHERE fallback_from IS NULL AND id = ")
                    .bind(o.message_id);
                txn.execute_raw(q.build(b)).await.map_err(err)?;
                let mut q = Sql::new();
                q.push("DELETE FROM links WHERE message_id = ")
                    .bind(o.message_id);
                txn.execute_raw(q.build(b)).await.map_err(err)?;
            }

            let attempts: Vec<(i64, &AttemptRecord)> = chunk
                .iter()
                .filter_map(|o| o.attempt.as_ref().map(|a| (o.message_id, a)))
                .collect();
            if !attempts.is_empty() {
                let mut q = Sql::new();
                q.push("INSERT INTO attempts (message_id, at, result, provider_code, detail, duration_ms) VALUES ");
                for (i, (id, a)) in attempts.iter().enumerate() {
                    if i > 0 {
                        q.push(",");
                    }
                    q.push("(")
                        .bind(*id)
                        .push(",")
                        .bind(a.at)
                        .push(",")
                        .bind(a.result.clone())
                        .push(",");
                    q.bind_as(b, a.code.clone(), "text")
                        .push(",")
                        .bind_as(b, a.detail.clone(), "text")
                        .push(",");
                    q.bind(a.duration_ms).push(")");
                }
                txn.execute_raw(q.build(b)).await.map_err(err)?;
            }

            let links: Vec<(i64, &LinkRecord)> = chunk
                .iter()
                .flat_map(|o| o.links.iter().map(move |l| (o.message_id, l)))
                .collect();
            if !links.is_empty() {
                let mut q = Sql::new();
                q.push("INSERT INTO links (message_id, idx, url, short_code) VALUES ");
                for (i, (id, l)) in links.iter().enumerate() {
                    if i > 0 {
                        q.push(",");
                    }
                    q.push("(")
                        .bind(*id)
                        .push(",")
                        .bind(l.idx)
                        .push(",")
                        .bind(l.url.clone())
                        .push(",");
                    q.bind_as(b, l.short_code.clone(), "text").push(")");
                }
                q.push(" ON CONFLICT (message_id, idx) DO NOTHING");
                txn.execute_raw(q.build(b)).await.map_err(err)?;
            }

            for o in chunk {
                if let Some((Channel::Push, token, _)) = &o.suppress_address {
                    txn.execute_raw(invalidate_push_token(token, now).build(b))
                        .await
                        .map_err(err)?;
                    continue;
                }
                if let Some((channel, address, reason)) = &o.suppress_address {
                    let mut q = Sql::new();
                    q.push("INSERT INTO suppressions (channel, address, contact_id, reason, source, created_at) SELECT ")
                        .bind(channel.as_str().to_string())
                        .push(", ")
                        .bind(address.clone())
                        .push(", contact_id, ")
                        .bind(reason.clone())
                        .push(", 'provider', ")
                        .bind(now)
                        .push(" FROM messages WHERE id = ")
                        .bind(o.message_id);
                    txn.execute_raw(q.build(b)).await.map_err(err)?;
                }
            }
        }
        txn.commit().await.map_err(err)
    }

    async fn finish_run_if_drained(&self, run_id: i64, now: i64) -> StoreResult<RunDrain> {
        let mut q = Sql::new();
        // Workers ask this whenever they find nothing to claim, often while the
        // run is still planned: the look at its messages is made only once the
        // plan is over (CASE is evaluated lazily on both databases), and stops at
        // the first one left. A count walked the index entries of every message
        // sent so far, live or not: 50 ms a call at 800,000 messages on
        // PostgreSQL, a quarter of the server's time in a whole run.
        q.push("SELECT state, CASE WHEN state = 'running' THEN (CASE WHEN EXISTS (SELECT 1 FROM messages WHERE run_id = runs.id AND status IN ('planned', 'sending')) OR EXISTS (SELECT 1 FROM flights WHERE run_id = runs.id) THEN 1 ELSE 0 END) ELSE 0 END FROM runs WHERE id = ")
            .bind(run_id);
        let rows = self.all(q).await?;
        let Some(r) = rows.first() else {
            return Ok(RunDrain::Over);
        };
        let state: String = get(r, 0)?;
        let pending: i32 = get(r, 1)?;
        match state.as_str() {
            "planning" => return Ok(RunDrain::Planning),
            "running" if pending > 0 => return Ok(RunDrain::Pending),
            "running" => {}
            _ => return Ok(RunDrain::Over),
        }
        let mut q = Sql::new();
        q.push("UPDATE runs SET state = 'done', finished_at = ")
            .bind(now)
            .push(" WHERE state = 'running' AND origin <> 'trigger' AND id = ")
            .bind(run_id);
        self.exec(q).await?;
        Ok(RunDrain::Over)
    }

    async fn run_pending(&self, run_id: i64, now: i64) -> StoreResult<(i64, i64)> {
        let mut q = Sql::new();
        // Messages waiting for a rollout decision are the daemon's, due or not.
        // A flight in the air counts as its messages, due.
        q.push("SELECT COALESCE(SUM(CASE WHEN status = 'sending' OR (send_at <= ")
            .bind(now)
            .push(
                " AND arm <> 'rollout:*') THEN 1 ELSE 0 END), 0) + (SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM flights WHERE run_id = ",
            )
            .bind(run_id)
            .push("), COALESCE(SUM(CASE WHEN status = 'planned' AND (arm = 'rollout:*' OR send_at > ")
            .bind(now)
            .push(") THEN 1 ELSE 0 END), 0) FROM messages WHERE run_id = ")
            .bind(run_id)
            .push(" AND status IN ('planned', 'sending')");
        let rows = self.all(q).await?;
        let r = rows.first().ok_or_else(|| err("no row"))?;
        Ok((get(r, 0)?, get(r, 1)?))
    }

    async fn finish_drained_runs(&self, now: i64) -> StoreResult<Vec<i64>> {
        let mut q = Sql::new();
        q.push("UPDATE runs SET state = 'done', finished_at = ")
            .bind(now)
            // A triggered campaign's run never ends: its next event adds to it.
            .push(" WHERE state = 'running' AND origin <> 'trigger' AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.run_id = runs.id AND m.status IN ('planned', 'sending')) AND NOT EXISTS (SELECT 1 FROM flights f WHERE f.run_id = runs.id) RETURNING id");
        self.all(q).await?.iter().map(|r| get(r, 0)).collect()
    }

    async fn run_counts(&self, run_id: i64) -> StoreResult<RunCounts> {
        let mut q = Sql::new();
        q.push("SELECT arm, status, reason, COUNT(*) FROM messages WHERE run_id = ")
            .bind(run_id)
            .push(" GROUP BY arm, status, reason ORDER BY arm, status, reason");
        let rows = self.all(q).await?;
        Ok(RunCounts {
            rows: rows
                .iter()
                .map(|r| Ok((get(r, 0)?, get(r, 1)?, get(r, 2)?, get(r, 3)?)))
                .collect::<StoreResult<_>>()?,
        })
    }

    async fn trigger_run(
        &self,
        campaign_id: i64,
        fingerprint: &str,
        now: i64,
    ) -> StoreResult<RunRecord> {
        self.trigger_run_impl(campaign_id, fingerprint, now).await
    }

    async fn events_after(
        &self,
        names: &[String],
        after: i64,
        limit: u32,
    ) -> StoreResult<Vec<TriggerEvent>> {
        self.events_after_impl(names, after, limit).await
    }

    async fn trigger_cursor(&self, campaign_id: i64, now: i64) -> StoreResult<i64> {
        self.trigger_cursor_impl(campaign_id, now).await
    }

    async fn insert_triggered(
        &self,
        run_id: i64,
        campaign_id: i64,
        rows: &[TriggeredMessage],
        cursor: i64,
        now: i64,
    ) -> StoreResult<u64> {
        self.insert_triggered_impl(run_id, campaign_id, rows, cursor, now)
            .await
    }

    async fn exited(&self, event: &str, pairs: &[(i64, i64)]) -> StoreResult<Vec<(i64, i64)>> {
        self.exited_impl(event, pairs).await
    }

    async fn exited_messages(&self, event: &str, ids: &[i64]) -> StoreResult<Vec<i64>> {
        self.exited_messages_impl(event, ids).await
    }

    async fn matching(&self, filter: &Expr, ids: &[i64], now: i64) -> StoreResult<Vec<i64>> {
        self.matching_impl(filter, ids, now).await
    }

    async fn fell_back(&self, ids: &[i64]) -> StoreResult<Vec<i64>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut q = Sql::new();
        q.push("SELECT id FROM messages WHERE fallback_from IS NOT NULL AND id IN ");
        id_set(&mut q, self.b(), ids);
        self.all(q).await?.iter().map(|r| get(r, 0)).collect()
    }

    async fn entry_pass(
        &self,
        campaign_id: i64,
        run_id: i64,
        filter: &Expr,
        now: i64,
    ) -> StoreResult<EntryPass> {
        self.db
            .entry_pass(campaign_id, run_id, filter, &self.segment_context(now))
            .await
            .map_err(err)
    }

    async fn pre_period(
        &self,
        contacts: &[i64],
        spec: &PrePeriodSpec,
    ) -> StoreResult<std::collections::HashMap<i64, (bool, f64, f64)>> {
        let names: Vec<&String> = spec.goal.iter().chain(spec.revenue.iter()).collect();
        if contacts.is_empty() || names.is_empty() {
            return Ok(Default::default());
        }
        let b = self.b();
        // One probe of `events_name_contact_at` (name, contact_id, at, value)
        // a contact and event name: the whole page in one statement.
        let mut q = Sql::new();
        q.push("SELECT e.contact_id, CAST(MAX(CASE WHEN e.name = ")
            .bind_as(b, spec.goal.clone(), "text")
            .push(" THEN 1 ELSE 0 END) AS BIGINT), CAST(COALESCE(SUM(CASE WHEN e.name = ")
            .bind_as(b, spec.revenue.clone(), "text")
            .push(" THEN e.value END), 0) AS DOUBLE PRECISION), CAST(COALESCE(SUM(CASE WHEN e.name = ")
            .bind_as(b, spec.goal.clone(), "text")
            .push(" THEN e.value END), 0) AS DOUBLE PRECISION) FROM events e WHERE e.name IN (");
        for (i, name) in names.iter().enumerate() {
            if i > 0 {
                q.push(", ");
            }
            q.bind((*name).clone());
        }
        q.push(") AND e.contact_id IN ");
        id_set(&mut q, b, contacts);
        q.push(" AND e.at >= ")
            .bind(spec.since)
            .push(" AND e.at < ")
            .bind(spec.until)
            .push(" GROUP BY e.contact_id");
        let mut out = std::collections::HashMap::new();
        for r in self.all(q).await? {
            let converted: i64 = get(&r, 1)?;
            out.insert(get(&r, 0)?, (converted > 0, get(&r, 2)?, get(&r, 3)?));
        }
        Ok(out)
    }
}

#[async_trait]
impl OutboxSink for SqlStore {
    async fn put(&self, m: &RenderedMessage) -> Result<(), String> {
        let b = self.b();
        let headers = m
            .unsubscribe_url
            .as_ref()
            .map(|u| serde_json::json!({ "List-Unsubscribe": format!("<{u}>") }));
        let now = chrono::Utc::now().timestamp_millis();
        let st = stmt(
            b,
            "INSERT INTO outbox (message_id, channel, address, subject, body, body_text, headers, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (message_id) DO NOTHING",
            vec![
                m.message_id.into(),
                m.channel.as_str().into(),
                m.to.clone().into(),
                m.subject.clone().into(),
                m.body.clone().into(),
                m.text.clone().into(),
                Value::Json(headers.map(Box::new)),
                now.into(),
            ],
        );
        self.db
            .conn
            .execute_raw(st)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// A push token FCM called dead (`UNREGISTERED`, or a `message.token` violation) is
/// marked invalid rather than the contact suppressed: their other tokens still reach
/// them, with none left they stop counting as push-reachable, and registering the
/// token again (an import) makes it valid again.
fn invalidate_push_token(token: &str, now: i64) -> Sql {
    let mut q = Sql::new();
    q.push("UPDATE push_tokens SET invalid_at = COALESCE(invalid_at, ")
        .bind(now)
        .push(") WHERE token = ")
        .bind(token.to_string());
    q
}

#[cfg(test)]
mod tests {
    //! The dispatch paths of the store driven by the real dispatcher, to the
    //! outbox, on both databases.

    use std::collections::HashMap;
    use std::time::Duration;

    use herald_channels::outbox::OutboxChannel;
    use herald_channels::pacer::Pacer;
    use herald_engine::dispatch::{DispatchStats, Dispatcher, Gate, Route};
    use herald_engine::handoff::Handoff;
    use herald_engine::platform::PlatformHealth;
    use herald_engine::render::{Deferral, MessageRenderer, RenderOutput};
    use herald_engine::{Clock, SystemClock};

    use super::*;
    use crate::test_db::on_both_databases;

    /// Renders every message as a one-line email.
    struct Plain;

    impl MessageRenderer for Plain {
        fn render(&self, msg: &ClaimedMessage, c: &ContactView) -> Result<RenderOutput, String> {
            Ok(RenderOutput {
                message: RenderedMessage {
                    message_id: msg.id,
                    channel: msg.channel,
                    to: msg.address.clone(),
                    subject: Some(format!("hello {}", c.external_id)),
                    body: "hello".into(),
                    text: None,
                    unsubscribe_url: None,
                    return_path: None,
                    status_callback: None,
                    callback_token: None,
                },
                links: vec![],
            })
        }

        fn personalisation(&self, now: i64) -> PersonalisationRequest {
            PersonalisationRequest::new(
                now,
                &herald_domain::config::HeraldConfig::default(),
                vec![],
            )
        }
    }

    /// Cancels the messages of contacts with an odd id.
    struct OddContactsLeft;

    #[async_trait]
    impl Gate for OddContactsLeft {
        async fn check(
            &self,
            claimed: &[ClaimedMessage],
            _now: i64,
        ) -> StoreResult<Vec<(i64, String)>> {
            Ok(claimed
                .iter()
                .filter(|m| m.contact_id % 2 == 1)
                .map(|m| (m.id, "left the audience".to_string()))
                .collect())
        }
    }

    /// A running run of `n` contacts with one planned email each, due now.
    async fn planned_run(store: &SqlStore, n: i64) -> i64 {
        let (run, campaign, rows) = planning_run(store, n).await;
        let now = SystemClock.now_ms();
        store
            .insert_planned(run, campaign, &rows, now)
            .await
            .unwrap();
        store.finish_planning(run).await.unwrap();
        run
    }

    /// A run still planning, of `n` contacts: (run, campaign, the messages to plan).
    async fn planning_run(store: &SqlStore, n: i64) -> (i64, i64, Vec<PlannedMessage>) {
        let now = SystemClock.now_ms();
        let mut q = Sql::new();
        q.push("INSERT INTO contacts (external_id, email, attrs, consent_email, created_at, updated_at) VALUES ");
        for i in 1..=n {
            if i > 1 {
                q.push(",");
            }
            q.push("(")
                .bind(format!("c{i}"))
                .push(",")
                .bind(format!("c{i}@example.com"))
                .push(",'{}',")
                .bind(true)
                .push(",")
                .bind(now)
                .push(",")
                .bind(now)
                .push(")");
        }
        store.exec(q).await.unwrap();
        let campaign = store
            .upsert_campaign(
                &CampaignRecord {
                    name: "c".into(),
                    kind: "marketing".into(),
                    topic: None,
                    fingerprint: "f".into(),
                    goal: None,
                },
                now,
            )
            .await
            .unwrap();
        let run = store
            .create_run(campaign, now, now, "manual", "f")
            .await
            .unwrap();
        let rows: Vec<PlannedMessage> = (1..=n)
            .map(|i| PlannedMessage {
                contact_id: i,
                step: 0,
                arm: "a".into(),
                channel: Some(Channel::Email),
                address: Some(format!("c{i}@example.com")),
                send_at: now - 1000,
                status: MessageStatus::Planned,
                reason: None,
                pre: Default::default(),
            })
            .collect();
        (run.id, campaign, rows)
    }

    fn dispatcher(store: &SqlStore, batch: u32) -> Dispatcher {
        let route = Route::new(
            Arc::new(OutboxChannel::new(Arc::new(store.clone()))),
            Arc::new(Pacer::new(None)),
            8,
        );
        let mut d = Dispatcher::new(
            Arc::new(store.clone()),
            Arc::new(SystemClock),
            HashMap::from([(Channel::Email, route)]),
            "test".into(),
        );
        d.batch = batch;
        d.poll = Duration::from_millis(10);
        d
    }

    async fn outbox_ids(store: &SqlStore) -> Vec<i64> {
        let mut q = Sql::new();
        q.push("SELECT message_id FROM outbox ORDER BY message_id");
        store
            .all(q)
            .await
            .unwrap()
            .iter()
            .map(|r| get(r, 0).unwrap())
            .collect()
    }

    /// A run of 10 contacts still planning, its first page of 5 written:
    /// (run, campaign, the second page, now).
    async fn half_planned_run(store: &SqlStore) -> (i64, i64, Vec<PlannedMessage>, i64) {
        let (run, campaign, mut rows) = planning_run(store, 10).await;
        let now = SystemClock.now_ms();
        let rest = rows.split_off(5);
        store
            .insert_planned(run, campaign, &rows, now)
            .await
            .unwrap();
        (run, campaign, rest, now)
    }

    /// Workers send each page as soon as the planner wrote it, and a drain
    /// waits for the rest of the plan instead of ending with the first page.
    async fn workers_send_pages_while_the_plan_goes_on(db: &Db) {
        let store = SqlStore::new(db.clone());
        let (run, campaign, rest, now) = half_planned_run(&store).await;
        let d = dispatcher(&store, 3);
        let drain = tokio::spawn(async move { d.drain_run(run, &Plain).await });
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while outbox_ids(&store).await.len() < 5 {
            assert!(
                std::time::Instant::now() < deadline,
                "the first page was not sent while planning"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!drain.is_finished(), "the drain ended before the plan did");
        let stats = last_page(&store, (run, campaign), &rest, now, drain).await;
        assert_eq!(stats.accepted, 10);
        assert_eq!(outbox_ids(&store).await, (1..=10).collect::<Vec<i64>>());
        assert_eq!(
            store.finish_run_if_drained(run, now).await.unwrap(),
            RunDrain::Over
        );
    }

    /// A page the planner writes after `herald runs cancel` (it passed its
    /// lease check just before) is not written: no planned row is left in a
    /// cancelled run, where nothing would ever send or settle it.
    async fn a_cancelled_run_takes_no_more_pages(db: &Db) {
        let store = SqlStore::new(db.clone());
        let (run, campaign, rest, now) = half_planned_run(&store).await;
        assert_eq!(crate::runs::cancel(db, run, now).await.unwrap(), 5);
        store
            .insert_planned(run, campaign, &rest, now)
            .await
            .unwrap();
        let counts = store.run_counts(run).await.unwrap();
        assert_eq!(counts.count(None, "cancelled"), 5);
        assert_eq!(counts.count(None, "planned"), 0);
    }

    /// `herald runs pause` on a run still being planned stops its planner (its
    /// lease can no longer be renewed) and its workers; `resume` returns it to
    /// planning, so a planner finishes the plan; a run paused once planned
    /// resumes sending.
    async fn a_run_paused_while_planned_resumes_planning(db: &Db) {
        let store = SqlStore::new(db.clone());
        let (run, campaign, rest, now) = half_planned_run(&store).await;
        let state = |db: Db| async move { crate::runs::state_of(&db, run).await.unwrap() };
        assert!(
            store
                .claim_planning(run, "planner", now + 60_000, now)
                .await
                .unwrap()
        );
        crate::runs::pause(db, run).await.unwrap();
        assert_eq!(state(db.clone()).await, "paused");
        assert!(
            !store
                .claim_planning(run, "planner", now + 60_000, now)
                .await
                .unwrap(),
            "the planner stops at its next page"
        );
        let claimed = store
            .claim_sending_after("w", Some(run), now, now + 60_000, 100, None)
            .await
            .unwrap();
        assert!(claimed.is_empty(), "nothing is claimed while paused");
        assert!(crate::runs::pause(db, run).await.is_err(), "paused already");

        crate::runs::resume(db, run).await.unwrap();
        assert_eq!(
            state(db.clone()).await,
            "planning",
            "the plan is not finished"
        );
        assert_eq!(
            store
                .unfinished_plans("c")
                .await
                .unwrap()
                .iter()
                .map(|r| r.id)
                .collect::<Vec<_>>(),
            [run],
            "the scheduler finds it again"
        );
        assert!(
            store
                .claim_planning(run, "planner", now + 60_000, now)
                .await
                .unwrap()
        );
        store
            .insert_planned(run, campaign, &rest, now)
            .await
            .unwrap();
        store.finish_planning(run).await.unwrap();
        assert_eq!(state(db.clone()).await, "running");

        crate::runs::pause(db, run).await.unwrap();
        crate::runs::resume(db, run).await.unwrap();
        assert_eq!(
            state(db.clone()).await,
            "running",
            "a planned run resumes sending"
        );
        let counts = store.run_counts(run).await.unwrap();
        assert_eq!(counts.count(None, "planned"), 10);
    }

    /// The same for a triggered campaign's one run: once cancelled, the
    /// trigger planner's messages are not written (the cursor still moves).
    async fn a_cancelled_trigger_run_takes_no_more_messages(db: &Db) {
        let store = SqlStore::new(db.clone());
        let (_, campaign, rows) = planning_run(&store, 4).await;
        let now = SystemClock.now_ms();
        let run = store.trigger_run(campaign, "f", now).await.unwrap().id;
        let triggered = |range: std::ops::Range<usize>| -> Vec<TriggeredMessage> {
            rows[range]
                .iter()
                .map(|m| TriggeredMessage {
                    message: m.clone(),
                    trigger_id: m.contact_id,
                    trigger_at: now,
                })
                .collect()
        };
        let first = store
            .insert_triggered(run, campaign, &triggered(0..2), 2, now)
            .await
            .unwrap();
        assert_eq!(first, 2);
        assert_eq!(crate::runs::cancel(db, run, now).await.unwrap(), 2);
        let after = store
            .insert_triggered(run, campaign, &triggered(2..4), 4, now)
            .await
            .unwrap();
        assert_eq!(after, 0);
        let counts = store.run_counts(run).await.unwrap();
        assert_eq!(counts.count(None, "cancelled"), 2);
        assert_eq!(counts.count(None, "planned"), 0);
        assert_eq!(store.trigger_cursor(campaign, now).await.unwrap(), 4);
    }

    async fn gate_cancels_claimed_messages(db: &Db) {
        let store = SqlStore::new(db.clone());
        let run = planned_run(&store, 10).await;
        let d = dispatcher(&store, 3).with_gate(Arc::new(OddContactsLeft));
        let stats = d.drain_run(run, &Plain).await.unwrap();
        assert_eq!((stats.accepted, stats.cancelled), (5, 5));
        let counts = store.run_counts(run).await.unwrap();
        assert_eq!(counts.count(None, "cancelled"), 5);
        assert_eq!(counts.count(None, "delivered"), 5);
        assert!(
            counts
                .rows
                .iter()
                .filter(|r| r.1 == "cancelled")
                .all(|r| r.2.as_deref() == Some("left the audience"))
        );
        // Nothing cancelled reached the outbox: message ids follow contact ids here.
        let mut q = Sql::new();
        q.push("SELECT COUNT(*) FROM outbox o JOIN messages m ON m.id = o.message_id WHERE m.contact_id % 2 = 1");
        let rows = store.all(q).await.unwrap();
        assert_eq!(get::<i64>(&rows[0], 0).unwrap(), 0);
        assert_eq!(outbox_ids(&store).await.len(), 5);
    }

    /// A handed message the gate cancels was written as sent: it ends
    /// `cancelled` with no `sent_at`, `delivered_at` or attempt, while the
    /// rest of its flight stays as written.
    async fn the_gate_cancels_handed_messages_as_never_sent(db: &Db) {
        let store = SqlStore::new(db.clone());
        let (run, campaign, rows) = planning_run(&store, 4).await;
        let now = SystemClock.now_ms();
        let handoff = Arc::new(
            Handoff::new("planner".into(), 4, Duration::from_secs(60))
                .with_delivered_on_accept(vec![Channel::Email]),
        );
        let d = dispatcher(&store, 4)
            .with_handoff(handoff.clone())
            .with_gate(Arc::new(OddContactsLeft));
        let drain = tokio::spawn(async move { d.drain_run(run, &Plain).await });
        let permit = handoff.reserve().await.expect("the slot is free");
        permit.send(hand(&store, &handoff, (run, campaign), &rows, now).await);
        let stats = last_page(&store, (run, campaign), &[], now, drain).await;
        assert_eq!((stats.handed, stats.accepted, stats.cancelled), (4, 2, 2));
        let mut q = Sql::new();
        q.push("SELECT contact_id, status, sent_at, delivered_at, attempts FROM messages WHERE run_id = ")
            .bind(run)
            .push(" ORDER BY contact_id");
        type Got = (i64, String, Option<i64>, Option<i64>, i32);
        let got: Vec<Got> = store
            .all(q)
            .await
            .unwrap()
            .iter()
            .map(|r| r.try_get_many_by_index().unwrap())
            .collect();
        let cancelled = |c| (c, "cancelled".to_string(), None, None, 0);
        let delivered = |c| (c, "delivered".to_string(), Some(now), Some(now), 1);
        assert_eq!(
            got,
            [cancelled(1), delivered(2), cancelled(3), delivered(4)]
        );
        assert!(flights(&store).await.is_empty(), "the flight landed");
    }

    /// A lane claims a transactional campaign's message before the
    /// marketing backlog of its route, though the backlog was due earlier;
    /// then the backlog in order, from where the queue was.
    async fn a_lane_claims_transactional_messages_first(db: &Db) {
        let store = SqlStore::new(db.clone());
        let backlog = planned_run(&store, 6).await;
        let now = SystemClock.now_ms();
        let campaign = store
            .upsert_campaign(
                &CampaignRecord {
                    name: "receipt".into(),
                    kind: "transactional".into(),
                    topic: None,
                    fingerprint: "t".into(),
                    goal: None,
                },
                now,
            )
            .await
            .unwrap();
        let receipt = store
            .create_run(campaign, now, now, "manual", "t")
            .await
            .unwrap()
            .id;
        let row = PlannedMessage {
            contact_id: 1,
            step: 0,
            arm: "a".into(),
            channel: Some(Channel::Email),
            address: Some("c1@example.com".into()),
            // Due after the whole backlog.
            send_at: now - 10,
            status: MessageStatus::Planned,
            reason: None,
            pre: Default::default(),
        };
        store
            .insert_planned(receipt, campaign, &[row], now)
            .await
            .unwrap();
        store.finish_planning(receipt).await.unwrap();
        let d = dispatcher(&store, 2).with_lane(Channel::Email, 1);
        let mut stats = DispatchStats::default();
        let first = d.claim(None, &mut stats).await.unwrap();
        let runs: Vec<(i64, i64)> = first.iter().map(|m| (m.run_id, m.contact_id)).collect();
        assert_eq!(runs, [(receipt, 1), (backlog, 1)], "the receipt first");
        let mut rest: Vec<i64> = Vec::new();
        loop {
            let c = d.claim(None, &mut stats).await.unwrap();
            if c.is_empty() {
                break;
            }
            assert!(c.iter().all(|m| m.run_id == backlog));
            rest.extend(c.iter().map(|m| m.contact_id));
        }
        assert_eq!(rest, [2, 3, 4, 5, 6], "the backlog in order, once");
    }

    /// A block a Twilio status callback reported (30034) stops an open
    /// lane: it claims nothing, its health is blocked with the callback's
    /// words, and it takes the `route_blocks` row over as its own.
    async fn a_lane_takes_a_block_reported_by_a_status_callback(db: &Db) {
        let store = SqlStore::new(db.clone());
        planned_run(&store, 3).await;
        let now = SystemClock.now_ms();
        let reason = "the sending number is not registered for A2P 10DLC (Twilio 30034)";
        crate::routes::report_block(db, "email", reason, now)
            .await
            .unwrap();
        let d = dispatcher(&store, 2).with_lane(Channel::Email, 1);
        let mut stats = DispatchStats::default();
        assert!(d.claim(None, &mut stats).await.unwrap().is_empty());
        let blocks = crate::routes::blocks(db, now).await.unwrap();
        assert_eq!(blocks.len(), 1);
        assert_eq!(
            (blocks[0].owner.as_str(), blocks[0].reason.as_str()),
            ("test", reason)
        );
    }

    /// FCM whose APNs credential is wrong while `refusing`: tokens that
    /// begin `i-` are refused `THIRD_PARTY_AUTH_ERROR`, the rest delivered.
    struct ApnsRefused {
        refusing: std::sync::atomic::AtomicBool,
        /// Every message refused as malformed, whatever its platform.
        malformed: std::sync::atomic::AtomicBool,
        sent: std::sync::Mutex<Vec<String>>,
    }

    #[async_trait]
    impl herald_channels::Channel for ApnsRefused {
        async fn send(
            &self,
            m: &RenderedMessage,
        ) -> Result<herald_channels::ProviderReceipt, herald_channels::DeliveryError> {
            if self.malformed.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(herald_channels::DeliveryError::Permanent {
                    code: "INVALID_ARGUMENT".into(),
                    detail: "FCM INVALID_ARGUMENT: HTTP 400".into(),
                    suppress_address: false,
                });
            }
            if m.to.starts_with("i-") && self.refusing.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(herald_channels::DeliveryError::PlatformFault {
                    code: "THIRD_PARTY_AUTH_ERROR".into(),
                    detail: "FCM THIRD_PARTY_AUTH_ERROR: HTTP 401".into(),
                });
            }
            self.sent.lock().unwrap().push(m.to.clone());
            Ok(herald_channels::ProviderReceipt::default())
        }

        fn delivered_on_accept(&self) -> bool {
            true
        }
    }

    /// FCM refusing the APNs credential blocks only the iOS tokens'
    /// sub-route: Android, web and unlabelled pushes go at once, the iOS
    /// one stays planned (its attempt not counted) and is left out of the
    /// lane's claims, `push:apns` is in `route_blocks`; once the credential
    /// works, the sub-route's probe sends it and the block goes.
    /// A running push run, one message per token of `tokens` (token,
    /// platform), due now, and a push lane over [`ApnsRefused`] (refusing):
    /// (run, the adapter, the route's sub-route healths, the lane's worker).
    async fn push_lane(
        store: &SqlStore,
        tokens: &[(&str, Option<&str>)],
    ) -> (i64, Arc<ApnsRefused>, Arc<PlatformHealth>, Dispatcher) {
        let (run, campaign, mut rows) = planning_run(store, tokens.len() as i64).await;
        let now = SystemClock.now_ms();
        let mut q = Sql::new();
        q.push("INSERT INTO push_tokens (contact_id, token, platform, created_at) VALUES ");
        for (i, (token, platform)) in tokens.iter().enumerate() {
            if i > 0 {
                q.push(", ");
            }
            q.push("(")
                .bind(i as i64 + 1)
                .push(", ")
                .bind(token.to_string())
                .push(", ")
                .bind_as(store.b(), platform.map(str::to_string), "text")
                .push(", ")
                .bind(now)
                .push(")");
        }
        store.exec(q).await.unwrap();
        for (row, (token, _)) in rows.iter_mut().zip(tokens) {
            row.channel = Some(Channel::Push);
            row.address = Some(token.to_string());
        }
        store
            .insert_planned(run, campaign, &rows, now)
            .await
            .unwrap();
        store.finish_planning(run).await.unwrap();
        let fcm = Arc::new(ApnsRefused {
            refusing: true.into(),
            malformed: false.into(),
            sent: Default::default(),
        });
        let route = Route::new(fcm.clone(), Arc::new(Pacer::new(None)), 8);
        let platforms = route.platforms.clone();
        let mut d = Dispatcher::new(
            Arc::new(store.clone()),
            Arc::new(SystemClock),
            HashMap::from([(Channel::Push, route)]),
            "test".into(),
        )
        .with_lane(Channel::Push, 1);
        d.poll = Duration::from_millis(10);
        (run, fcm, platforms, d)
    }

    /// (status, attempts) of the message to `token`.
    async fn status_of(store: &SqlStore, token: &str) -> (String, i32) {
        let mut q = Sql::new();
        q.push("SELECT status, attempts FROM messages WHERE address = ")
            .bind(token.to_string());
        store.all(q).await.unwrap()[0]
            .try_get_many_by_index()
            .unwrap()
    }

    async fn a_refused_platform_blocks_only_its_tokens(db: &Db) {
        let store = SqlStore::new(db.clone());
        let (run, fcm, platforms, mut d) = push_lane(
            &store,
            &[
                ("a-1", Some("android")),
                // Case and blanks as an import may give them.
                ("i-2", Some(" iOS ")),
                ("w-3", Some("web")),
                ("u-4", None),
                ("m-5", Some("macos")),
            ],
        )
        .await;
        let now = SystemClock.now_ms();
        // `herald send` with no patience: the drain ends on the block.
        d.blocked_wait = Some(Duration::ZERO);
        let stats = d.drain_run(run, &Plain).await.unwrap();
        // `herald send`'s words name the sub-route and its platform.
        let (route, platform) = stats
            .blocked
            .as_ref()
            .map(|b| (b.route.as_str(), b.platform))
            .unwrap_or_default();
        assert_eq!((route, platform), ("push:apns", Some(PushPlatform::Apns)));
        let blocked = stats.blocked.map(|b| b.to_string()).unwrap_or_default();
        assert!(
            blocked.starts_with("push:apns: authentication failed for iOS tokens: the APNs credential in the Firebase project was refused (FCM THIRD_PARTY_AUTH_ERROR: HTTP 401)"),
            "{blocked}"
        );
        let mut sent = fcm.sent.lock().unwrap().clone();
        sent.sort();
        assert_eq!(
            sent,
            ["a-1", "m-5", "u-4", "w-3"],
            "the others went at once"
        );
        assert_eq!(status_of(&store, "i-2").await, ("planned".to_string(), 0));
        assert!(platforms.get(PushPlatform::Apns).is_blocked());
        assert!(!platforms.get(PushPlatform::Unlabelled).is_blocked());
        let blocks = crate::routes::blocks(db, now).await.unwrap();
        assert_eq!(
            blocks.iter().map(|b| b.route.as_str()).collect::<Vec<_>>(),
            ["push:apns"]
        );
        // The lane's claim leaves the blocked platform's message where it is.
        let mut s = DispatchStats::default();
        assert!(d.claim(Some(run), &mut s).await.unwrap().is_empty());
        assert_eq!(status_of(&store, "i-2").await, ("planned".to_string(), 0));

        // The credential fixed: the probe (a second after the block) sends it.
        fcm.refusing
            .store(false, std::sync::atomic::Ordering::SeqCst);
        tokio::time::sleep(herald_engine::health::PROBE_FIRST + Duration::from_millis(100)).await;
        d.blocked_wait = None;
        d.drain_run(run, &Plain).await.unwrap();
        assert_eq!(status_of(&store, "i-2").await, ("delivered".to_string(), 1));
        assert!(!platforms.get(PushPlatform::Apns).is_blocked());
        assert!(crate::routes::blocks(db, now).await.unwrap().is_empty());
        assert_eq!(fcm.sent.lock().unwrap().len(), 5, "each sent once");
    }

    /// A sub-route's probe refused for the message's own reason (a bad
    /// payload) says nothing of the platform's credential: the sub-route
    /// stays blocked, and the next blocked message is not sent to be
    /// refused again.
    async fn a_probe_failing_for_its_own_reason_keeps_the_sub_route_blocked(db: &Db) {
        let store = SqlStore::new(db.clone());
        let (run, fcm, platforms, mut d) =
            push_lane(&store, &[("i-1", Some("ios")), ("i-2", Some("ios"))]).await;
        d.blocked_wait = Some(Duration::ZERO);
        d.drain_run(run, &Plain).await.unwrap();
        assert!(platforms.get(PushPlatform::Apns).is_blocked());
        // The probe's message is refused as malformed.
        fcm.malformed
            .store(true, std::sync::atomic::Ordering::SeqCst);
        tokio::time::sleep(herald_engine::health::PROBE_FIRST + Duration::from_millis(100)).await;
        // Each blocked message goes out alone as a probe, a second apart,
        // and fails for its own reason; none reopens the sub-route.
        d.blocked_wait = None;
        d.drain_run(run, &Plain).await.unwrap();
        assert!(
            platforms.get(PushPlatform::Apns).is_blocked(),
            "a malformed probe reopened push:apns"
        );
        assert_eq!(
            [
                status_of(&store, "i-1").await,
                status_of(&store, "i-2").await
            ],
            [("failed".to_string(), 1), ("failed".to_string(), 1)]
        );
    }

    /// `push:unlabelled` mixes Android tokens with iOS and web ones: its
    /// probe takes a message FCM refused for the credential, not the oldest
    /// due one, which may be an Android token that passes whatever the APNs
    /// key and would reopen the sub-route for nothing.
    async fn a_sub_routes_probe_tests_the_credential_not_an_android_token(db: &Db) {
        let store = SqlStore::new(db.clone());
        let (run, fcm, platforms, mut d) = push_lane(&store, &[("i-1", None), ("u-2", None)]).await;
        d.blocked_wait = Some(Duration::ZERO);
        d.drain_run(run, &Plain).await.unwrap();
        assert!(platforms.get(PushPlatform::Unlabelled).is_blocked());
        assert_eq!(fcm.sent.lock().unwrap().clone(), ["u-2"]);
        // Another unlabelled Android push, due before the refused one.
        let mut q = Sql::new();
        q.push("UPDATE messages SET status = 'planned', attempts = 0, lease_owner = NULL, lease_until = NULL, send_at = send_at - 60000 WHERE address = 'u-2'");
        store.exec(q).await.unwrap();
        tokio::time::sleep(herald_engine::health::PROBE_FIRST + Duration::from_millis(100)).await;
        // `herald send`'s patience counts from the block (1.1 s ago): one
        // probe is due at once, the next (doubled) would come after 2 s.
        d.blocked_wait = Some(Duration::from_secs(2));
        d.drain_run(run, &Plain).await.unwrap();
        assert!(
            platforms.get(PushPlatform::Unlabelled).is_blocked(),
            "the probe passed on an Android token"
        );
        assert_eq!(
            fcm.sent.lock().unwrap().clone(),
            ["u-2"],
            "the Android push waits with its sub-route"
        );
        assert_eq!(status_of(&store, "u-2").await, ("planned".to_string(), 0));
    }

    /// A token without a platform that FCM refuses so blocks
    /// `push:unlabelled` (tokens of a platform herald does not know wait
    /// with it, Android ones go); one imported as `android` is its
    /// message's temporary failure (counted, retried later). `herald runs
    /// resume` makes the blocked sub-route probe at once.
    async fn unlabelled_tokens_wait_together_and_resume_probes_them_at_once(db: &Db) {
        let store = SqlStore::new(db.clone());
        let (run, fcm, platforms, mut d) = push_lane(
            &store,
            &[
                ("a-1", Some("android")),
                ("i-2", None),
                ("i-3", Some("android")),
            ],
        )
        .await;
        d.blocked_wait = Some(Duration::ZERO);
        let stats = d.drain_run(run, &Plain).await.unwrap();
        let blocked = stats.blocked.map(|b| b.to_string()).unwrap_or_default();
        assert!(
            blocked.starts_with(
                "push:unlabelled: authentication failed for tokens imported without a platform"
            ),
            "{blocked}"
        );
        assert!(platforms.get(PushPlatform::Unlabelled).is_blocked());
        assert!(!platforms.get(PushPlatform::Apns).is_blocked());
        assert_eq!(status_of(&store, "a-1").await, ("delivered".to_string(), 1));
        assert_eq!(status_of(&store, "i-2").await, ("planned".to_string(), 0));
        // The label contradicts FCM: a failure of this message, counted.
        assert_eq!(status_of(&store, "i-3").await, ("planned".to_string(), 1));
        let mut q = Sql::new();
        q.push("SELECT a.result, a.detail FROM attempts a JOIN messages m ON m.id = a.message_id WHERE m.address = 'i-3'");
        let (result, detail): (String, Option<String>) = store.all(q).await.unwrap()[0]
            .try_get_many_by_index()
            .unwrap();
        assert_eq!(result, "transient");
        assert!(
            detail.unwrap_or_default().contains("imported as android"),
            "says why"
        );

        // Fixed, and `herald runs resume` (stamped after the lane's last
        // look): the probe goes now, not a second after the block.
        fcm.refusing
            .store(false, std::sync::atomic::Ordering::SeqCst);
        crate::routes::request_probes(db, SystemClock.now_ms() + 1000)
            .await
            .unwrap();
        let mut s = DispatchStats::default();
        let probe = d.claim(Some(run), &mut s).await.unwrap();
        assert_eq!(
            probe.iter().map(|m| m.address.as_str()).collect::<Vec<_>>(),
            ["i-2"],
            "the unlabelled sub-route's probe, at once"
        );
    }

    /// While `push:apns` is blocked, a lane's claims (cursor and all, as a
    /// worker makes them) take every Android message once and no iOS one,
    /// tokens interleaved; prints what the filter costs against the same
    /// claims unfiltered. `HERALD_PLATFORM_CLAIM_N` sets the size (2,000).
    async fn a_blocked_platforms_claims_take_every_other_message_once(db: &Db) {
        let n: i64 = std::env::var("HERALD_PLATFORM_CLAIM_N")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2_000);
        let store = SqlStore::new(db.clone());
        let now = SystemClock.now_ms();
        let series = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ";
        let mut q = Sql::new();
        q.push(series).bind(n).push(") INSERT INTO contacts (external_id, email, attrs, consent_email, created_at, updated_at) SELECT 'c' || i, 'c' || i || '@example.com', '{}', ")
            .bind(true)
            .push(", ")
            .bind(now)
            .push(", ")
            .bind(now)
            .push(" FROM n");
        store.exec(q).await.unwrap();
        // Odd contacts on iOS, even ones on Android.
        let mut q = Sql::new();
        q.push(series).bind(n).push(") INSERT INTO push_tokens (contact_id, token, platform, created_at) SELECT i, CASE WHEN i % 2 = 1 THEN 'i-' ELSE 'a-' END || i, CASE WHEN i % 2 = 1 THEN 'ios' ELSE 'android' END, ")
            .bind(now)
            .push(" FROM n");
        store.exec(q).await.unwrap();
        let campaign = store
            .upsert_campaign(
                &CampaignRecord {
                    name: "c".into(),
                    kind: "marketing".into(),
                    topic: None,
                    fingerprint: "f".into(),
                    goal: None,
                },
                now,
            )
            .await
            .unwrap();
        let run = store
            .create_run(campaign, now, now, "manual", "f")
            .await
            .unwrap()
            .id;
        let rows: Vec<PlannedMessage> = (1..=n)
            .map(|i| PlannedMessage {
                contact_id: i,
                step: 0,
                arm: "a".into(),
                channel: Some(Channel::Push),
                address: Some(format!("{}-{i}", if i % 2 == 1 { "i" } else { "a" })),
                send_at: now - 1000,
                status: MessageStatus::Planned,
                reason: None,
                pre: Default::default(),
            })
            .collect();
        for page in rows.chunks(1000) {
            store
                .insert_planned(run, campaign, page, now)
                .await
                .unwrap();
        }
        store.finish_planning(run).await.unwrap();
        store.refresh_message_statistics().await.unwrap();
        // Claims of 500 from a cursor until none is left, as a lane makes them.
        let drain = |filter: PlatformFilter| {
            let store = store.clone();
            async move {
                let t = std::time::Instant::now();
                let mut after = None;
                let mut got = Vec::new();
                loop {
                    let now = SystemClock.now_ms();
                    let c = store
                        .claim_lane(
                            "w",
                            None,
                            Channel::Push,
                            &[],
                            now,
                            now + 60_000,
                            500,
                            after,
                            &filter,
                        )
                        .await
                        .unwrap();
                    if c.is_empty() {
                        break;
                    }
                    after = c.last().map(|m| (m.send_at, m.id));
                    got.extend(c.into_iter().map(|m| m.address));
                }
                (got, t.elapsed())
            }
        };
        let (android, blocked) = drain(PlatformFilter::Except(vec![PushPlatform::Apns])).await;
        assert_eq!(android.len() as i64, n / 2);
        assert!(android.iter().all(|a| a.starts_with("a-")));
        let unique: HashSet<&String> = android.iter().collect();
        assert_eq!(unique.len(), android.len(), "each once");
        let (ios, open) = drain(PlatformFilter::Any).await;
        assert_eq!(ios.len() as i64, n - n / 2);
        assert!(ios.iter().all(|a| a.starts_with("i-")));
        eprintln!(
            "{:?}: {n} push messages, half iOS: the Android half claimed with push:apns blocked in {blocked:?} ({:.1} us each); the iOS half unfiltered in {open:?} ({:.1} us each)",
            db.backend(),
            blocked.as_secs_f64() * 1e6 / android.len().max(1) as f64,
            open.as_secs_f64() * 1e6 / ios.len().max(1) as f64,
        );
    }

    /// A provider that answers every send "try again later".
    struct Busy;

    #[async_trait]
    impl herald_channels::Channel for Busy {
        async fn send(
            &self,
            _: &RenderedMessage,
        ) -> Result<herald_channels::ProviderReceipt, herald_channels::DeliveryError> {
            Err(herald_channels::DeliveryError::Transient {
                code: "421".into(),
                detail: "try again later".into(),
                retry_after: None,
            })
        }

        fn delivered_on_accept(&self) -> bool {
            true
        }
    }

    /// `max_age` does not run while the route is blocked: a message due 25 h
    /// ago whose route was blocked for 24 of them is 1 h old, so a transient
    /// failure is retried (until its attempts run out), not expired.
    async fn max_age_leaves_out_the_time_the_route_was_blocked(db: &Db) {
        const H: i64 = 3_600_000;
        let store = SqlStore::new(db.clone());
        let (run, campaign, mut rows) = planning_run(&store, 1).await;
        let now = SystemClock.now_ms();
        rows[0].send_at = now - 25 * H;
        store
            .insert_planned(run, campaign, &rows, now)
            .await
            .unwrap();
        store.finish_planning(run).await.unwrap();
        let route = Route::new(Arc::new(Busy), Arc::new(Pacer::new(None)), 8);
        route
            .health
            .answer(Some("authentication failed"), now - 24 * H - 1000);
        route.health.answer(None, now - 1000);
        let mut d = Dispatcher::new(
            Arc::new(store.clone()),
            Arc::new(SystemClock),
            HashMap::from([(Channel::Email, route)]),
            "test".into(),
        );
        d.poll = Duration::from_millis(10);
        d.retry.max_attempts = 2;
        d.retry.base = Duration::from_millis(10);
        d.retry.max_wait = Duration::from_millis(10);
        d.drain_run(run, &Plain).await.unwrap();
        let mut q = Sql::new();
        q.push("SELECT status, reason, attempts FROM messages WHERE run_id = ")
            .bind(run);
        let got: (String, Option<String>, i32) = store.all(q).await.unwrap()[0]
            .try_get_many_by_index()
            .unwrap();
        assert_eq!(got.0, "failed");
        assert!(
            got.1
                .as_deref()
                .unwrap_or("")
                .starts_with("attempts exhausted"),
            "{got:?}"
        );
        assert_eq!(got.2, 2);
    }

    /// [`Plain`], for a campaign whose recipients are in quiet hours for another hour.
    struct QuietForAnHour(i64);

    impl MessageRenderer for QuietForAnHour {
        fn render(&self, msg: &ClaimedMessage, c: &ContactView) -> Result<RenderOutput, String> {
            Plain.render(msg, c)
        }

        fn personalisation(&self, now: i64) -> PersonalisationRequest {
            Plain.personalisation(now)
        }

        fn released_at(&self, _: &ClaimedMessage, _: &ContactView, _: i64) -> Option<Deferral> {
            Some(Deferral {
                at: self.0,
                reason: "deferred (quiet hours)".into(),
            })
        }
    }

    /// A message its route held (blocked) and released into the recipient's
    /// quiet hours is deferred to their end, not sent; one whose route was
    /// never blocked since it was due goes as planned (the planner already
    /// placed it outside quiet hours).
    async fn a_released_message_meets_quiet_hours_again(db: &Db) {
        const MIN: i64 = 60_000;
        let store = SqlStore::new(db.clone());
        let (run, campaign, mut rows) = planning_run(&store, 2).await;
        let now = SystemClock.now_ms();
        rows[0].send_at = now - 120 * MIN;
        rows[1].send_at = now - MIN / 2;
        store
            .insert_planned(run, campaign, &rows, now)
            .await
            .unwrap();
        store.finish_planning(run).await.unwrap();
        let route = Route::new(
            Arc::new(OutboxChannel::new(Arc::new(store.clone()))),
            Arc::new(Pacer::new(None)),
            8,
        );
        route
            .health
            .answer(Some("authentication failed"), now - 90 * MIN);
        route.health.answer(None, now - MIN);
        let mut d = Dispatcher::new(
            Arc::new(store.clone()),
            Arc::new(SystemClock),
            HashMap::from([(Channel::Email, route)]),
            "test".into(),
        );
        d.poll = Duration::from_millis(10);
        let later = now + 60 * MIN;
        d.drain_run(run, &QuietForAnHour(later)).await.unwrap();
        let mut q = Sql::new();
        q.push("SELECT contact_id, status, not_before, attempts FROM messages WHERE run_id = ")
            .bind(run)
            .push(" ORDER BY contact_id");
        type Got = (i64, String, Option<i64>, i32);
        let got: Vec<Got> = store
            .all(q)
            .await
            .unwrap()
            .iter()
            .map(|r| r.try_get_many_by_index().unwrap())
            .collect();
        assert_eq!(
            got,
            [
                (1, "planned".to_string(), Some(later), 0),
                (2, "delivered".to_string(), None, 1)
            ]
        );
        assert_eq!(outbox_ids(&store).await.len(), 1);
    }

    /// [`Plain`] for a best-hour campaign whose templates read no best hour:
    /// a held message waits `.0 + best hour` ms, when the contact has one.
    struct BestHourOnRelease(i64);

    impl MessageRenderer for BestHourOnRelease {
        fn render(&self, msg: &ClaimedMessage, c: &ContactView) -> Result<RenderOutput, String> {
            Plain.render(msg, c)
        }

        fn personalisation(&self, now: i64) -> PersonalisationRequest {
            PersonalisationRequest {
                best_hour: false,
                ..Plain.personalisation(now)
            }
        }

        fn released_at(&self, _: &ClaimedMessage, c: &ContactView, _: i64) -> Option<Deferral> {
            c.personal.best_hour.map(|h| Deferral {
                at: self.0 + i64::from(h),
                reason: "best_hour".into(),
            })
        }

        fn release_personalisation(&self, now: i64) -> Option<PersonalisationRequest> {
            Some(PersonalisationRequest::best_hour(
                now,
                &herald_domain::config::HeraldConfig::default(),
            ))
        }
    }

    /// The dispatcher fetches what a release reads beyond the templates
    /// (each held contact's best hour) before it asks where to move a held
    /// message: contact 1, active at 07:00 UTC, waits for that hour; contact
    /// 2, with no events and so no best hour, goes.
    async fn a_released_message_reads_its_contacts_best_hour(db: &Db) {
        const MIN: i64 = 60_000;
        const DAY: i64 = 86_400_000;
        let store = SqlStore::new(db.clone());
        let (run, campaign, mut rows) = planning_run(&store, 2).await;
        let now = SystemClock.now_ms();
        let midnight = now - now.rem_euclid(DAY);
        for d in 1..=3 {
            let at = midnight - d * DAY + 7 * 60 * MIN + 5 * MIN;
            let mut q = Sql::new();
            q.push(
                "INSERT INTO events (contact_id, name, at, received_at) VALUES (1, 'app_open', ",
            )
            .bind(at)
            .push(", ")
            .bind(at)
            .push(")");
            store.exec(q).await.unwrap();
        }
        for r in rows.iter_mut() {
            r.send_at = now - 120 * MIN;
        }
        store
            .insert_planned(run, campaign, &rows, now)
            .await
            .unwrap();
        store.finish_planning(run).await.unwrap();
        let route = Route::new(
            Arc::new(OutboxChannel::new(Arc::new(store.clone()))),
            Arc::new(Pacer::new(None)),
            8,
        );
        route
            .health
            .answer(Some("authentication failed"), now - 90 * MIN);
        route.health.answer(None, now - MIN);
        let mut d = Dispatcher::new(
            Arc::new(store.clone()),
            Arc::new(SystemClock),
            HashMap::from([(Channel::Email, route)]),
            "test".into(),
        );
        d.poll = Duration::from_millis(10);
        let later = now + 60 * MIN;
        d.drain_run(run, &BestHourOnRelease(later)).await.unwrap();
        let mut q = Sql::new();
        q.push("SELECT contact_id, status, not_before, reason FROM messages WHERE run_id = ")
            .bind(run)
            .push(" ORDER BY contact_id");
        type Got = (i64, String, Option<i64>, Option<String>);
        let got: Vec<Got> = store
            .all(q)
            .await
            .unwrap()
            .iter()
            .map(|r| r.try_get_many_by_index().unwrap())
            .collect();
        assert_eq!(
            got[0],
            (
                1,
                "planned".to_string(),
                Some(later + 7),
                Some("best_hour after its route's block".to_string())
            )
        );
        assert_eq!((got[1].0, got[1].1.as_str()), (2, "delivered"));
    }

    /// A message that comes due again behind a worker's cursor (a retry
    /// whose wait ended) is still claimed and sent, exactly once.
    async fn claims_find_messages_behind_the_cursor(db: &Db) {
        let store = SqlStore::new(db.clone());
        let run = planned_run(&store, 7).await;
        let now = SystemClock.now_ms();
        // Message 2 is a retry, not due until later; everything else is due.
        let mut q = Sql::new();
        q.push("UPDATE messages SET not_before = ")
            .bind(now + 3_600_000)
            .push(" WHERE contact_id = 2");
        store.exec(q).await.unwrap();
        let d = dispatcher(&store, 2);
        let mut stats = DispatchStats::default();
        let claimed = d.claim(Some(run), &mut stats).await.unwrap();
        assert_eq!(claimed.len(), 2, "1 and 3");
        let mut sent: Vec<i64> = claimed.iter().map(|m| m.contact_id).collect();
        // Its wait is over now, behind the cursor.
        let mut q = Sql::new();
        q.push("UPDATE messages SET not_before = NULL WHERE contact_id = 2");
        store.exec(q).await.unwrap();
        loop {
            let c = d.claim(Some(run), &mut stats).await.unwrap();
            if c.is_empty() {
                break;
            }
            sent.extend(c.iter().map(|m| m.contact_id));
            let ids: Vec<i64> = c.iter().map(|m| m.id).collect();
            store.mark_sending("test", &ids, now).await.unwrap();
        }
        sent.sort();
        assert_eq!(sent, vec![1, 2, 3, 4, 5, 6, 7]);
    }

    /// `n` contacts with `attrs.x = 1`, `c{i}@example.com` each but those of
    /// `shared`, who all have `home@example.com`.
    async fn many_contacts(store: &SqlStore, n: i64, shared: &[i64], now: i64) {
        let mut q = Sql::new();
        q.push("WITH RECURSIVE s(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM s WHERE g < ")
            .push(&n.to_string())
            .push(") INSERT INTO contacts (id, external_id, email, timezone, attrs, first_seen_at, created_at, updated_at) SELECT g, 'c' || g, CASE WHEN g IN (")
            // 0 is no contact: `IN ()` is no SQL.
            .push(
                &std::iter::once(0)
                    .chain(shared.iter().copied())
                    .map(|i| i.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
            )
            .push(") THEN 'home@example.com' ELSE 'c' || g || '@example.com' END, 'UTC', '{\"x\": 1}', ")
            .bind(now)
            .push(", ")
            .bind(now)
            .push(", ")
            .bind(now)
            .push(" FROM s");
        store.exec(q).await.unwrap();
    }

    /// Plans campaign `toml` (named `all`) now, fully.
    async fn plan_now(store: &Arc<SqlStore>, toml: &str, now: i64) -> (i64, u64) {
        let campaign = herald_domain::config::Campaign::parse("all.toml", toml).unwrap();
        let config = Arc::new(herald_domain::config::ConfigSet {
            herald: herald_domain::config::HeraldConfig::parse("herald.toml", "").unwrap(),
            segments: Default::default(),
            campaigns: [("all".to_string(), campaign.clone())].into(),
        });
        let engine = herald_engine::Engine::new(store.clone(), Arc::new(SystemClock), config);
        let (run, plan) = engine.start_run(&campaign, now, "manual").await.unwrap();
        assert!(plan.finished);
        (run.id, plan.members)
    }

    const ONE_EMAIL: &str = "name = \"all\"\nwhere = 'attrs.x == 1'\nchannels = [\"email\"]\n\n[[variants]]\nname = \"a\"\nemail = { subject = \"s\", template = \"a.email.hbs\" }\n";

    /// A plan of more than `herald_engine::run::REFRESH_STATISTICS_AFTER` messages
    /// leaves PostgreSQL statistics that know the run's size, so its claims read
    /// the queue index in order instead of every planned row of the run.
    async fn a_large_plan_refreshes_the_statistics(db: &Db) {
        let n = 12_000;
        let now = SystemClock.now_ms();
        let store = Arc::new(SqlStore::new(db.clone()));
        many_contacts(&store, n, &[], now).await;
        let (run, members) = plan_now(&store, ONE_EMAIL, now).await;
        assert_eq!(members, n as u64);
        let counts = store.run_counts(run).await.unwrap();
        assert_eq!(counts.count(None, "planned"), n);
        if db.backend() == DbBackend::Postgres {
            // A table never analysed has reltuples -1 (PostgreSQL 14+).
            let rows = store
                .all({
                    let mut q = Sql::new();
                    q.push(
                        "SELECT CAST(reltuples AS BIGINT) FROM pg_class WHERE relname = 'messages'",
                    );
                    q
                })
                .await
                .unwrap();
            let reltuples: i64 = get(&rows[0], 0).unwrap();
            assert!(
                reltuples >= n,
                "messages has {reltuples} rows in its statistics"
            );
        }
    }

    /// The planner renews its lease every few pages, not every page: a run
    /// paused while planned stops at the next renewal, its pages since then
    /// written `planned` (a paused run sends nothing), and a resumed plan
    /// writes the rest, each contact once. The clock stands still, so only the
    /// page count renews the lease.
    async fn a_paused_plan_stops_at_its_next_lease_renewal(db: &Db) {
        use herald_engine::run::RENEW_PAGES;
        const BATCH: i64 = 250; // pages of MIN_HANDOFF_PAGE with this hand-off
        let now = SystemClock.now_ms();
        let store = Arc::new(SqlStore::new(db.clone()));
        let n = BATCH * (2 * RENEW_PAGES as i64 + 2);
        many_contacts(&store, n, &[], now).await;
        let campaign = herald_domain::config::Campaign::parse("all.toml", ONE_EMAIL).unwrap();
        let config = Arc::new(herald_domain::config::ConfigSet {
            herald: herald_domain::config::HeraldConfig::parse("herald.toml", "").unwrap(),
            segments: Default::default(),
            campaigns: [("all".to_string(), campaign.clone())].into(),
        });
        let clock = Arc::new(herald_engine::clock::FixedClock::new(
            chrono::DateTime::from_timestamp_millis(now).unwrap(),
        ));
        let handoff = Arc::new(Handoff::new(
            "planner".into(),
            BATCH as usize,
            Duration::from_secs(60),
        ));
        let mut engine = herald_engine::Engine::new(store.clone(), clock, config);
        // A lease whose heartbeat (a fifth of it, in real time) never comes
        // within the test: only the page count renews it here.
        engine.plan_lease_ms = 600_000;
        let engine = Arc::new(engine.with_handoff(handoff.clone()));
        let run = engine.create_run(&campaign, now, "manual").await.unwrap();
        let plan = {
            let (engine, campaign, run) = (engine.clone(), campaign.clone(), run.clone());
            tokio::spawn(async move { engine.plan(&campaign, &run).await })
        };
        // Page 1 is handed over; page 2 may be too (the slot is free again);
        // page 3 waits for the slot, and the pause lands meanwhile.
        let first = handoff.take_within(Duration::from_secs(20)).await;
        assert_eq!(first.map(|b| b.len()), Some(BATCH as usize));
        crate::runs::pause(db, run.id).await.unwrap();
        let stats = tokio::time::timeout(Duration::from_secs(30), plan)
            .await
            .expect("the planner stopped after the pause")
            .unwrap()
            .unwrap();
        assert!(!stats.finished, "a paused plan does not finish");
        let counts = store.run_counts(run.id).await.unwrap();
        let written = BATCH * (RENEW_PAGES as i64 - 1);
        // Handed batches are written as sent (in flights).
        let sending = counts.count(None, "sent");
        assert_eq!(
            sending + counts.count(None, "planned"),
            written,
            "pages written before the renewal at page {RENEW_PAGES}"
        );
        assert!(
            (BATCH..=2 * BATCH).contains(&sending),
            "{sending} handed: pages 1 and perhaps 2"
        );

        crate::runs::resume(db, run.id).await.unwrap();
        handoff.close_and_take().await; // what was handed; nothing more is
        let stats = engine.plan(&campaign, &run).await.unwrap();
        assert!(stats.finished);
        let counts = store.run_counts(run.id).await.unwrap();
        assert_eq!(counts.count(None, "planned"), n - sending);
        let (_, ids) = rows_by_contact(&store, run.id).await;
        assert_eq!(ids.len() as i64, n, "each contact once");
    }

    /// Contacts 2, 1,500 and 2,600 share an inbox; planning pages are 2,000
    /// contacts, so the third is on the second page: the lowest contact keeps
    /// the address at every step of the series, the others are suppressed
    /// `duplicate_address` (each page decided before workers can claim it).
    async fn a_shared_address_is_kept_once_per_step_across_pages(db: &Db) {
        let now = SystemClock.now_ms();
        let store = Arc::new(SqlStore::new(db.clone()));
        many_contacts(&store, 3_000, &[1_500, 2, 2_600], now).await;
        let series = format!(
            "{ONE_EMAIL}\n[[steps]]\ndelay = \"1d\"\nemail = {{ subject = \"t\", template = \"b.email.hbs\" }}\n"
        );
        let (run, _) = plan_now(&store, &series, now).await;
        let rows = store
            .all({
                let mut q = Sql::new();
                q.push("SELECT contact_id, step, status, reason FROM messages WHERE run_id = ")
                    .bind(run)
                    .push(" AND (status <> 'planned' OR address = 'home@example.com') ORDER BY contact_id, step");
                q
            })
            .await
            .unwrap();
        let got: Vec<(i64, i32, String, Option<String>)> = rows.iter().map(first_four).collect();
        let dup = || Some("duplicate_address".to_string());
        assert_eq!(
            got,
            vec![
                (2, 0, "planned".into(), None),
                (2, 1, "planned".into(), None),
                (1_500, 0, "suppressed".into(), dup()),
                (1_500, 1, "suppressed".into(), dup()),
                (2_600, 0, "suppressed".into(), dup()),
                (2_600, 1, "suppressed".into(), dup()),
            ]
        );
    }

    /// A result row's first four columns.
    fn first_four<A, B, C, D>(r: &QueryResult) -> (A, B, C, D)
    where
        A: sea_orm::TryGetable,
        B: sea_orm::TryGetable,
        C: sea_orm::TryGetable,
        D: sea_orm::TryGetable,
    {
        (
            get(r, 0).unwrap(),
            get(r, 1).unwrap(),
            get(r, 2).unwrap(),
            get(r, 3).unwrap(),
        )
    }

    /// Writes the plan's last page, `rest`, ends the plan and returns what `drain` did.
    async fn last_page(
        store: &SqlStore,
        (run, campaign): (i64, i64),
        rest: &[PlannedMessage],
        now: i64,
        drain: tokio::task::JoinHandle<StoreResult<DispatchStats>>,
    ) -> DispatchStats {
        store
            .insert_planned(run, campaign, rest, now)
            .await
            .unwrap();
        store.finish_planning(run).await.unwrap();
        drain.await.unwrap().unwrap()
    }

    /// A message's contact, status, `sent_at` and attempts.
    type Row = (i64, String, Option<i64>, i32);

    /// The [`Row`] of each message of `run` by contact, and the message ids by contact.
    async fn rows_by_contact(store: &SqlStore, run: i64) -> (Vec<Row>, HashMap<i64, i64>) {
        let mut q = Sql::new();
        q.push("SELECT contact_id, status, sent_at, attempts, id FROM messages WHERE run_id = ")
            .bind(run)
            .push(" ORDER BY contact_id");
        let rows = store.all(q).await.unwrap();
        let by_contact = rows.iter().map(first_four).collect();
        let ids = rows
            .iter()
            .map(|r| (get(r, 0).unwrap(), get(r, 4).unwrap()))
            .collect();
        (by_contact, ids)
    }

    /// The flights in the air: (run, owner, lease end, size, ids).
    async fn flights(store: &SqlStore) -> Vec<(i64, String, i64, i64, String)> {
        let mut q = Sql::new();
        q.push("SELECT run_id, owner, lease_until, size, ids FROM flights ORDER BY id");
        let rows = store.all(q).await.unwrap();
        rows.iter()
            .map(|r| r.try_get_many_by_index().unwrap())
            .collect()
    }

    /// Writes `rows` of `run`, handing what `handoff` picks at `now` under its lease.
    async fn hand(
        store: &SqlStore,
        handoff: &Handoff,
        (run, campaign): (i64, i64),
        rows: &[PlannedMessage],
        now: i64,
    ) -> Vec<ClaimedMessage> {
        let picked = handoff.pick(rows, now);
        let handed = Handed {
            rows: &picked,
            delivered_on_accept: &handoff.delivered_on_accept,
            owner: &handoff.owner,
            until: now + handoff.lease.as_millis() as i64,
        };
        store
            .insert_handed(run, campaign, rows, handed, now)
            .await
            .unwrap()
    }

    /// A planner that lost its lease may write a page the next one wrote
    /// too: the rows already there are kept as they are, the new ones added.
    async fn a_page_written_twice_keeps_its_first_rows(db: &Db) {
        let store = SqlStore::new(db.clone());
        let (run, campaign, rows) = planning_run(&store, 4).await;
        let now = SystemClock.now_ms();
        store
            .insert_planned(run, campaign, &rows[..2], now)
            .await
            .unwrap();
        let (first, ids) = rows_by_contact(&store, run).await;
        store
            .insert_planned(run, campaign, &rows, now + 1)
            .await
            .expect("an overlapping page is written, not refused");
        let (written, again) = rows_by_contact(&store, run).await;
        assert_eq!(written.len(), 4, "{written:?}");
        assert_eq!(written[..2], first[..], "the first rows are untouched");
        for (contact, id) in ids {
            assert_eq!(again[&contact], id, "no second row for contact {contact}");
        }
    }

    async fn handed_rows_are_written_sent_in_a_flight(db: &Db) {
        let store = SqlStore::new(db.clone());
        let (run, campaign, mut rows) = planning_run(&store, 8).await;
        let now = SystemClock.now_ms();
        let later = rows.split_off(6);
        let picked = [true, true, false, true, false, false];
        let handed = Handed {
            rows: &picked,
            delivered_on_accept: &[Channel::Sms],
            owner: "planner",
            until: now + 5_000,
        };
        let claimed = store
            .insert_handed(run, campaign, &rows, handed, now)
            .await
            .unwrap();
        let got: Vec<(i64, &str, i32)> = claimed
            .iter()
            .map(|m| (m.contact_id, m.address.as_str(), m.attempts))
            .collect();
        assert_eq!(
            got,
            [
                (1, "c1@example.com", 0),
                (2, "c2@example.com", 0),
                (4, "c4@example.com", 0)
            ]
        );
        let flight = claimed[0].written.expect("written in a flight").flight;
        assert!(
            claimed.iter().all(|m| m.written
                == Some(Written {
                    flight,
                    status: MessageStatus::Sent
                })),
            "email is not among the channels delivered on acceptance: {claimed:?}"
        );
        // Written as the send is expected to end: one attempt, sent now.
        let sent = |c: i64| (c, "sent".to_string(), Some(now), 1);
        let planned = |c: i64| (c, "planned".to_string(), None, 0);
        let expected = vec![
            sent(1),
            sent(2),
            planned(3),
            sent(4),
            planned(5),
            planned(6),
        ];
        let (written, by_contact) = rows_by_contact(&store, run).await;
        assert_eq!(written, expected);
        for m in &claimed {
            assert_eq!(
                by_contact[&m.contact_id], m.id,
                "the claimed id is the row's"
            );
        }
        let ids: Vec<String> = claimed.iter().map(|m| m.id.to_string()).collect();
        assert_eq!(
            flights(&store).await,
            [(run, "planner".to_string(), now + 5_000, 3, ids.join(","))],
            "one flight holds the batch's lease"
        );
        // Written again (a resumed plan): nothing is handed twice, nothing changes.
        let again = store
            .insert_handed(run, campaign, &rows, handed, now)
            .await
            .unwrap();
        assert!(again.is_empty(), "already written: {again:?}");
        assert_eq!(rows_by_contact(&store, run).await.0, expected);
        assert_eq!(flights(&store).await.len(), 1, "no flight for nothing");

        // Paused between the planner's page lease and its write: written, not handed.
        crate::runs::pause(db, run).await.unwrap();
        let paused = store
            .insert_handed(
                run,
                campaign,
                &later,
                Handed {
                    rows: &[true, true],
                    ..handed
                },
                now,
            )
            .await
            .unwrap();
        assert!(paused.is_empty(), "a paused run sends nothing: {paused:?}");
        let (all, _) = rows_by_contact(&store, run).await;
        assert_eq!(all[6..], [planned(7), planned(8)]);
        assert_eq!(flights(&store).await.len(), 1);
    }

    /// An outcome of a handed message.
    fn outcome(m: &ClaimedMessage, status: MessageStatus, now: i64) -> Outcome {
        Outcome {
            message_id: m.id,
            status,
            reason: (status != MessageStatus::Delivered).then(|| "refused".to_string()),
            retry_at: (status == MessageStatus::Planned).then_some(now + 60_000),
            provider_id: None,
            attempt: Some(AttemptRecord {
                at: now,
                result: if status == MessageStatus::Delivered {
                    "accepted".into()
                } else {
                    "transient".into()
                },
                code: None,
                detail: None,
                duration_ms: 1,
            }),
            links: vec![],
            suppress_address: None,
            reroute: None,
            written: m.written,
        }
    }

    /// FCM calling a token dead marks that token invalid and suppresses nobody: a
    /// contact with no valid token left stops counting as push-reachable, one with
    /// another token still counts.
    async fn a_dead_push_token_is_marked_invalid(db: &Db) {
        let store = SqlStore::new(db.clone());
        let (run, campaign, mut rows) = planning_run(&store, 2).await;
        let now = SystemClock.now_ms();
        let mut q = Sql::new();
        q.push("INSERT INTO push_tokens (contact_id, token, platform, created_at) VALUES (1, 'tok-1a', 'android', ")
            .bind(now)
            .push("), (2, 'tok-2a', 'android', ")
            .bind(now)
            .push("), (2, 'tok-2b', 'ios', ")
            .bind(now)
            .push(")");
        store.exec(q).await.unwrap();
        for (row, token) in rows.iter_mut().zip(["tok-1a", "tok-2a"]) {
            row.channel = Some(Channel::Push);
            row.address = Some(token.to_string());
        }
        let handoff = Handoff::new("planner".into(), 2, Duration::from_secs(60))
            .with_delivered_on_accept(vec![Channel::Push]);
        let claimed = hand(&store, &handoff, (run, campaign), &rows, now).await;
        assert_eq!(claimed.len(), 2);
        let later = now + 1_000;
        let outcomes: Vec<Outcome> = claimed
            .iter()
            .map(|m| Outcome {
                suppress_address: Some((Channel::Push, m.address.clone(), "unregistered".into())),
                ..outcome(m, MessageStatus::Failed, later)
            })
            .collect();
        store.record_outcomes(&outcomes, later).await.unwrap();
        let mut q = Sql::new();
        q.push("SELECT token FROM push_tokens WHERE invalid_at = ")
            .bind(later)
            .push(" ORDER BY token");
        let invalid: Vec<String> = store
            .all(q)
            .await
            .unwrap()
            .iter()
            .map(|r| r.try_get_by_index(0).unwrap())
            .collect();
        assert_eq!(invalid, ["tok-1a", "tok-2a"]);
        let mut q = Sql::new();
        q.push("SELECT COUNT(*) FROM suppressions");
        let n: i64 = store.all(q).await.unwrap()[0].try_get_by_index(0).unwrap();
        assert_eq!(n, 0, "a dead token suppresses no contact");
        let mut q = Sql::new();
        q.push("SELECT c.id FROM contacts c WHERE ")
            .push(&crate::segment_sql::channel_ok_sql(
                Channel::Push,
                db.backend(),
            ))
            .push(" ORDER BY c.id");
        let reachable: Vec<i64> = store
            .all(q)
            .await
            .unwrap()
            .iter()
            .map(|r| r.try_get_by_index(0).unwrap())
            .collect();
        assert_eq!(reachable, [2], "contact 1 has no valid token left");
    }

    /// Recording a flight writes only the messages whose send did not end as
    /// written: a refusal loses its `sent_at`, a retry is planned again, and no
    /// attempt is counted twice; every attempt is logged; the flight lands.
    async fn a_flight_records_only_what_differs(db: &Db) {
        let store = SqlStore::new(db.clone());
        let (run, campaign, rows) = planning_run(&store, 4).await;
        let now = SystemClock.now_ms();
        let handoff = Handoff::new("planner".into(), 4, Duration::from_secs(60))
            .with_delivered_on_accept(vec![Channel::Email]);
        let claimed = hand(&store, &handoff, (run, campaign), &rows, now).await;
        assert_eq!(claimed.len(), 4);
        let later = now + 1_000;
        let outcomes = vec![
            outcome(&claimed[0], MessageStatus::Delivered, later),
            outcome(&claimed[1], MessageStatus::Failed, later),
            outcome(&claimed[2], MessageStatus::Planned, later),
            Outcome {
                provider_id: Some("queue-7".into()),
                ..outcome(&claimed[3], MessageStatus::Delivered, later)
            },
        ];
        assert!(outcomes[0].already_written() && !outcomes[3].already_written());
        store.record_outcomes(&outcomes, later).await.unwrap();
        let mut q = Sql::new();
        q.push("SELECT contact_id, status, sent_at, delivered_at, attempts, not_before, provider_id, updated_at FROM messages WHERE run_id = ")
            .bind(run)
            .push(" ORDER BY contact_id");
        type Got = (
            i64,
            String,
            Option<i64>,
            Option<i64>,
            i32,
            Option<i64>,
            Option<String>,
            i64,
        );
        let rows = store.all(q).await.unwrap();
        let got: Vec<Got> = rows
            .iter()
            .map(|r| r.try_get_many_by_index().unwrap())
            .collect();
        let s = |x: &str| x.to_string();
        assert_eq!(
            got,
            [
                // As written: not touched (its `updated_at` is the plan's).
                (1, s("delivered"), Some(now), Some(now), 1, None, None, now),
                (2, s("failed"), None, None, 1, None, None, later),
                (
                    3,
                    s("planned"),
                    None,
                    None,
                    1,
                    Some(later + 60_000),
                    None,
                    later
                ),
                (
                    4,
                    s("delivered"),
                    Some(now),
                    Some(now),
                    1,
                    None,
                    Some(s("queue-7")),
                    later
                ),
            ]
        );
        assert!(flights(&store).await.is_empty(), "the flight landed");
        let mut q = Sql::new();
        q.push("SELECT COUNT(*) FROM attempts");
        let attempts: i64 = get(&store.all(q).await.unwrap()[0], 0).unwrap();
        assert_eq!(attempts, 4, "every attempt is logged");
    }

    /// A flight whose worker died: the run is not over while it is in the
    /// air; when its lease lapses, its untouched messages end `unknown` and a
    /// message a receipt touched keeps what the receipt said; a worker that
    /// records it after all (it was only slow) writes every outcome.
    async fn a_lapsed_flight_ends_unknown(db: &Db) {
        let store = SqlStore::new(db.clone());
        let (run, campaign, rows) = planning_run(&store, 3).await;
        let now = SystemClock.now_ms();
        let handoff = Handoff::new("planner".into(), 3, Duration::from_secs(60));
        let claimed = hand(&store, &handoff, (run, campaign), &rows, now).await;
        assert_eq!(claimed.len(), 3);
        store.finish_planning(run).await.unwrap();
        assert_eq!(
            store.finish_run_if_drained(run, now).await.unwrap(),
            RunDrain::Pending,
            "a flight in the air keeps the run open"
        );
        assert_eq!(store.run_pending(run, now).await.unwrap(), (3, 0));
        let status = crate::runs::status(db, now, 10).await.unwrap();
        let sending: Vec<(&str, i64)> = status
            .channels
            .iter()
            .map(|c| (c.channel.as_str(), c.sending))
            .collect();
        assert_eq!(
            sending,
            [("email", 3)],
            "herald status counts a flight as sending"
        );
        // A receipt for the third message arrives before the crash.
        let mut q = Sql::new();
        q.push("UPDATE messages SET status = 'delivered', delivered_at = ")
            .bind(now + 10)
            .push(", updated_at = ")
            .bind(now + 10)
            .push(" WHERE id = ")
            .bind(claimed[2].id);
        store.exec(q).await.unwrap();
        let lapsed = now + handoff.lease.as_millis() as i64 + 1;
        assert_eq!(store.expire_leases(now).await.unwrap(), 0, "not yet");
        assert_eq!(store.expire_leases(lapsed).await.unwrap(), 2);
        assert!(flights(&store).await.is_empty());
        let (got, _) = rows_by_contact(&store, run).await;
        assert_eq!(
            got,
            [
                (1, "unknown".to_string(), None, 1),
                (2, "unknown".to_string(), None, 1),
                (3, "delivered".to_string(), Some(now), 1),
            ]
        );
        assert_eq!(
            store.finish_run_if_drained(run, lapsed).await.unwrap(),
            RunDrain::Over
        );
        // The worker was only slow: its outcomes win, its attempt counted once.
        let outcomes: Vec<Outcome> = claimed
            .iter()
            .map(|m| outcome(m, MessageStatus::Sent, lapsed))
            .collect();
        store.record_outcomes(&outcomes, lapsed + 1).await.unwrap();
        let (got, _) = rows_by_contact(&store, run).await;
        assert_eq!(
            got,
            [
                (1, "sent".to_string(), Some(lapsed + 1), 1),
                (2, "sent".to_string(), Some(lapsed + 1), 1),
                (3, "delivered".to_string(), Some(now), 1),
            ]
        );
    }

    async fn workers_send_what_the_planner_hands_over_once(db: &Db) {
        let store = SqlStore::new(db.clone());
        let (run, campaign, mut rows) = planning_run(&store, 10).await;
        let now = SystemClock.now_ms();
        let rest = rows.split_off(4);
        let handoff = Arc::new(Handoff::new("planner".into(), 3, Duration::from_secs(60)));
        let d = dispatcher(&store, 3).with_handoff(handoff.clone());
        let drain = tokio::spawn(async move { d.drain_run(run, &Plain).await });
        // The first page: three handed, one planned for a claim.
        let permit = handoff.reserve().await.expect("the slot is free");
        let claimed = hand(&store, &handoff, (run, campaign), &rows, now).await;
        let contacts: Vec<i64> = claimed.iter().map(|m| m.contact_id).collect();
        assert_eq!(contacts, [1, 2, 3], "a batch of the page");
        permit.send(claimed);
        let stats = last_page(&store, (run, campaign), &rest, now, drain).await;
        assert_eq!(stats.handed, 3);
        assert_eq!(stats.accepted, 10);
        assert_eq!(outbox_ids(&store).await.len(), 10, "each message once");
        let counts = store.run_counts(run).await.unwrap();
        assert_eq!(counts.count(None, "delivered"), 10);
        assert!(flights(&store).await.is_empty(), "no flight left");
    }

    async fn a_batch_handed_to_another_runs_workers_is_refused(db: &Db) {
        let store = SqlStore::new(db.clone());
        let (run, campaign, rows) = planning_run(&store, 2).await;
        let now = SystemClock.now_ms();
        let handoff = Arc::new(Handoff::new("planner".into(), 5, Duration::from_secs(60)));
        let claimed = hand(&store, &handoff, (run, campaign), &rows, now).await;
        assert_eq!(claimed.len(), 2);
        handoff.reserve().await.expect("free").send(claimed);
        let d = dispatcher(&store, 5).with_handoff(handoff);
        let err = d.drain_run(run + 1, &Plain).await.unwrap_err();
        assert!(
            err.to_string().contains(&format!("a batch of run {run}")),
            "{err}"
        );
        assert!(
            outbox_ids(&store).await.is_empty(),
            "nothing sent with another run's renderer"
        );
    }

    /// Recipients read for rendering keep every field as stored: nested and
    /// unicode attributes, tags, missing values (SQLite reads them as one JSON
    /// array, PostgreSQL row by row).
    async fn contacts_for_rendering_keep_every_field(db: &Db) {
        let store = SqlStore::new(db.clone());
        let mut q = Sql::new();
        q.push("INSERT INTO contacts (id, external_id, email, phone, timezone, locale, attrs, tags, created_at, updated_at) VALUES ")
            .push("(1, 'ann', 'ann@example.com', '+8613800138000', 'Asia/Shanghai', 'zh-CN', ")
            .bind_as(db.backend(), r#"{"name":"安 \"Ann\"","cart":{"items":[1,2.5,null],"vip":true}}"#, "jsonb")
            .push(", ")
            .bind_as(db.backend(), r#"["vip","beta"]"#, "jsonb")
            .push(", 0, 0), (2, 'bob', NULL, NULL, NULL, NULL, ")
            .bind_as(db.backend(), "{}", "jsonb")
            .push(", NULL, 0, 0)");
        store.exec(q).await.unwrap();
        let want = PersonalisationRequest {
            rfm_lifecycle: false,
            best_hour: false,
            ..PersonalisationRequest::new(
                0,
                &herald_domain::config::HeraldConfig::default(),
                vec![],
            )
        };
        let mut got = store.contacts(&[2, 1, 99, 1], &want).await.unwrap();
        got.sort_by_key(|c| c.id);
        let fields: Vec<_> = got
            .iter()
            .map(|c| {
                (
                    c.id,
                    c.external_id.as_str(),
                    c.email.as_deref(),
                    c.phone.as_deref(),
                    c.timezone.as_deref(),
                    c.locale.as_deref(),
                    c.attrs.clone(),
                    c.tags.clone(),
                )
            })
            .collect();
        assert_eq!(
            fields,
            [
                (
                    1,
                    "ann",
                    Some("ann@example.com"),
                    Some("+8613800138000"),
                    Some("Asia/Shanghai"),
                    Some("zh-CN"),
                    serde_json::json!({"name": "安 \"Ann\"", "cart": {"items": [1, 2.5, null], "vip": true}}),
                    vec!["vip".to_string(), "beta".to_string()]
                ),
                (
                    2,
                    "bob",
                    None,
                    None,
                    None,
                    None,
                    serde_json::json!({}),
                    vec![]
                )
            ]
        );
    }

    /// Workers of a plan that stopped early (another process plans the run)
    /// send what was handed to them, then end instead of waiting for pages.
    async fn a_stopped_drain_sends_what_was_handed_then_ends(db: &Db) {
        let store = SqlStore::new(db.clone());
        let (run, campaign, mut rows) = planning_run(&store, 6).await;
        let now = SystemClock.now_ms();
        let second = rows.split_off(3);
        let handoff = Arc::new(Handoff::new("planner".into(), 3, Duration::from_secs(60)));
        let d = dispatcher(&store, 3).with_handoff(handoff.clone());
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let drain =
            tokio::spawn(async move { d.drain_run_until(run, &Plain, Some(&stopped)).await });
        for page in [&rows, &second] {
            let permit = loop {
                if let Some(p) = handoff.reserve().await {
                    break p;
                }
            };
            permit.send(hand(&store, &handoff, (run, campaign), page, now).await);
        }
        // The run is still planning: without the stop, the drain waits for ever.
        stop.send(true).unwrap();
        let stats = tokio::time::timeout(Duration::from_secs(20), drain)
            .await
            .expect("the drain ends once stopped")
            .unwrap()
            .unwrap();
        assert_eq!((stats.handed, stats.accepted), (6, 6));
        assert_eq!(
            outbox_ids(&store).await.len(),
            6,
            "each handed message once"
        );
        assert!(flights(&store).await.is_empty(), "no flight left");
    }

    on_both_databases!(
        gate_cancels_claimed_messages,
        the_gate_cancels_handed_messages_as_never_sent,
        contacts_for_rendering_keep_every_field,
        a_stopped_drain_sends_what_was_handed_then_ends,
        handed_rows_are_written_sent_in_a_flight,
        a_page_written_twice_keeps_its_first_rows,
        a_flight_records_only_what_differs,
        a_dead_push_token_is_marked_invalid,
        a_lapsed_flight_ends_unknown,
        workers_send_what_the_planner_hands_over_once,
        a_batch_handed_to_another_runs_workers_is_refused,
        a_paused_plan_stops_at_its_next_lease_renewal,
        claims_find_messages_behind_the_cursor,
        a_lane_claims_transactional_messages_first,
        a_lane_takes_a_block_reported_by_a_status_callback,
        a_refused_platform_blocks_only_its_tokens,
        a_probe_failing_for_its_own_reason_keeps_the_sub_route_blocked,
        a_sub_routes_probe_tests_the_credential_not_an_android_token,
        unlabelled_tokens_wait_together_and_resume_probes_them_at_once,
        a_blocked_platforms_claims_take_every_other_message_once,
        max_age_leaves_out_the_time_the_route_was_blocked,
        a_released_message_meets_quiet_hours_again,
        a_released_message_reads_its_contacts_best_hour,
        a_large_plan_refreshes_the_statistics,
        a_shared_address_is_kept_once_per_step_across_pages,
        workers_send_pages_while_the_plan_goes_on,
        a_cancelled_run_takes_no_more_pages,
        a_run_paused_while_planned_resumes_planning,
        a_cancelled_trigger_run_takes_no_more_messages
    );
}
