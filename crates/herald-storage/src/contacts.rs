//! Data rights (SPEC section 3, `herald contacts export|forget ID`):
//! [`export_contact`] gathers everything herald keeps about one contact as
//! JSON; [`forget_contact`] erases the personal part in one transaction and
//! keeps the messages, anonymised, so reports keep their counts.
//!
//! A forgotten contact's row stays as a tombstone (`forgotten_at` set,
//! external id `forgotten:ROW_ID`), so a later import of the old id creates a
//! fresh contact. Its suppressions outlive it as SHA-256 digests of the
//! address ([`address_digest`]): the import turns a digest back into a
//! suppression when the same address comes in again (see `crate::import`).

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, SecondsFormat};
use sea_orm::{ConnectionTrait, DbBackend, QueryResult, TransactionTrait};
use serde_json::{Value as Json, json};
use sha2::{Digest, Sha256};

use crate::db::Db;
use crate::sql::Sql;

/// What a forgotten contact's external id starts with; the rest is its row id.
pub const FORGOTTEN_PREFIX: &str = "forgotten:";

/// What a digested suppression address starts with; lowercase hex follows.
pub const DIGEST_PREFIX: &str = "sha256:";

/// What `messages.reason` says instead of a forgotten address, and the
/// reason of messages still planned when their contact was forgotten.
const ERASED: &str = "[forgotten]";
const CANCEL_REASON: &str = "forgotten";

/// Why an export or a forget failed.
#[derive(Debug, thiserror::Error)]
pub enum ContactsError {
    /// The database refused or failed.
    #[error("database error: {0}")]
    Db(#[from] sea_orm::DbErr),
}

/// Shorthand for this module's results.
pub type ContactsResult<T> = Result<T, ContactsError>;

/// The digest a suppression keeps of a forgotten address: `sha256:` and the
/// hex SHA-256 of the address exactly as stored. It recognises the address
/// when it is imported again; it does not give it back (though, unkeyed, it
/// confirms a guess).
pub fn address_digest(address: &str) -> String {
    let digest = Sha256::digest(address.as_bytes());
    let mut out = String::with_capacity(DIGEST_PREFIX.len() + 64);
    out.push_str(DIGEST_PREFIX);
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

fn get<T: sea_orm::TryGetable>(row: &QueryResult, i: usize) -> ContactsResult<T> {
    Ok(row.try_get_by_index(i)?)
}

/// An instant (ms) as RFC 3339 UTC, or null.
fn instant(ms: Option<i64>) -> Json {
    ms.and_then(DateTime::from_timestamp_millis)
        .map_or(Json::Null, |t| {
            Json::String(t.to_rfc3339_opts(SecondsFormat::Millis, true))
        })
}

fn in_list<V: Into<sea_orm::Value> + Clone>(q: &mut Sql, items: &[V]) {
    q.push("(");
    for (i, v) in items.iter().enumerate() {
        if i > 0 {
            q.push(",");
        }
        q.bind(v.clone());
    }
    q.push(")");
}

async fn all(
    conn: &impl ConnectionTrait,
    b: DbBackend,
    q: Sql,
) -> ContactsResult<Vec<QueryResult>> {
    Ok(conn.query_all_raw(q.build(b)).await?)
}

async fn exec(conn: &impl ConnectionTrait, b: DbBackend, q: Sql) -> ContactsResult<u64> {
    Ok(conn.execute_raw(q.build(b)).await?.rows_affected())
}

/// Locks contact `external_id` for the rest of the transaction and returns
/// its row id, email and phone. A write comes first on purpose: SQLite then
/// holds the write lock from the start, instead of failing to upgrade a read
/// when another writer got in between; PostgreSQL locks the row.
async fn lock_contact(
    conn: &impl ConnectionTrait,
    b: DbBackend,
    external_id: &str,
    now: i64,
) -> ContactsResult<Option<(i64, Option<String>, Option<String>)>> {
    let mut q = Sql::new();
    q.push("UPDATE contacts SET updated_at = ")
        .bind(now)
        .push(" WHERE external_id = ")
        .bind(external_id.to_string())
        .push(" RETURNING id, email, phone");
    let rows = all(conn, b, q).await?;
    rows.first()
        .map(|r| Ok((get(r, 0)?, get(r, 1)?, get(r, 2)?)))
        .transpose()
}

async fn push_tokens(
    conn: &impl ConnectionTrait,
    b: DbBackend,
    id: i64,
) -> ContactsResult<Vec<String>> {
    let mut q = Sql::new();
    q.push("SELECT token FROM push_tokens WHERE contact_id = ")
        .bind(id)
        .push(" ORDER BY token");
    all(conn, b, q).await?.iter().map(|r| get(r, 0)).collect()
}

/// Everything herald keeps about the contact `external_id`, or `None` when
/// there is no such contact. Instants are RFC 3339 UTC; the shape is
/// documented in the README ("Data rights").
pub async fn export_contact(db: &Db, external_id: &str) -> ContactsResult<Option<Json>> {
    let b = db.backend();
    let conn = &db.conn;
    let mut q = Sql::new();
    q.push("SELECT id, external_id, email, phone, timezone, locale, attrs, tags, consent_email, consent_sms, consent_push, first_seen_at, created_at, updated_at, forgotten_at FROM contacts WHERE external_id = ")
        .bind(external_id.to_string());
    let rows = all(conn, b, q).await?;
    let Some(r) = rows.first() else {
        return Ok(None);
    };
    let id: i64 = get(r, 0)?;
    let email: Option<String> = get(r, 2)?;
    let phone: Option<String> = get(r, 3)?;
    let mut doc = json!({
        "external_id": get::<String>(r, 1)?,
        "email": email,
        "phone": phone,
        "timezone": get::<Option<String>>(r, 4)?,
        "locale": get::<Option<String>>(r, 5)?,
        "attrs": get::<Option<Json>>(r, 6)?.unwrap_or_else(|| json!({})),
        "tags": get::<Option<Json>>(r, 7)?,
        "consent": {
            "email": get::<Option<bool>>(r, 8)?,
            "sms": get::<Option<bool>>(r, 9)?,
            "push": get::<Option<bool>>(r, 10)?,
        },
        "first_seen_at": instant(get(r, 11)?),
        "created_at": instant(get(r, 12)?),
        "updated_at": instant(get(r, 13)?),
        "forgotten_at": instant(get(r, 14)?),
    });

    let mut q = Sql::new();
    q.push("SELECT topic, subscribed, updated_at FROM topic_subscriptions WHERE contact_id = ")
        .bind(id)
        .push(" ORDER BY topic");
    doc["topic_subscriptions"] = all(conn, b, q)
        .await?
        .iter()
        .map(|r| {
            Ok(json!({
                "topic": get::<String>(r, 0)?,
                "subscribed": get::<bool>(r, 1)?,
                "updated_at": instant(get(r, 2)?),
            }))
        })
        .collect::<ContactsResult<Json>>()?;

    let mut q = Sql::new();
    q.push("SELECT token, platform, created_at, invalid_at FROM push_tokens WHERE contact_id = ")
        .bind(id)
        .push(" ORDER BY id");
    let token_rows = all(conn, b, q).await?;
    let mut addresses: Vec<String> = email.iter().chain(phone.iter()).cloned().collect();
    let mut tokens = Vec::new();
    for r in &token_rows {
        let token: String = get(r, 0)?;
        addresses.push(token.clone());
        tokens.push(json!({
            "token": token,
            "platform": get::<Option<String>>(r, 1)?,
            "created_at": instant(get(r, 2)?),
            "invalid_at": instant(get(r, 3)?),
        }));
    }
    doc["push_tokens"] = Json::Array(tokens);

    // The contact's own suppressions, those of its addresses (whoever set
    // them), and digests an earlier forget left of the same addresses.
    let mut q = Sql::new();
    q.push("SELECT channel, address, topic, reason, source, created_at FROM suppressions WHERE contact_id = ")
        .bind(id);
    if !addresses.is_empty() {
        let digests: Vec<String> = addresses.iter().map(|a| address_digest(a)).collect();
        q.push(" OR address IN ");
        in_list(&mut q, &[addresses.clone(), digests].concat());
    }
    q.push(" ORDER BY id");
    doc["suppressions"] = all(conn, b, q)
        .await?
        .iter()
        .map(|r| {
            Ok(json!({
                "channel": get::<String>(r, 0)?,
                "address": get::<Option<String>>(r, 1)?,
                "topic": get::<Option<String>>(r, 2)?,
                "reason": get::<String>(r, 3)?,
                "source": get::<String>(r, 4)?,
                "created_at": instant(get(r, 5)?),
            }))
        })
        .collect::<ContactsResult<Json>>()?;

    let mut q = Sql::new();
    q.push(
        "SELECT name, at, value, event_id, properties, received_at FROM events WHERE contact_id = ",
    )
    .bind(id)
    .push(" ORDER BY at, id");
    doc["events"] = all(conn, b, q)
        .await?
        .iter()
        .map(|r| {
            Ok(json!({
                "name": get::<String>(r, 0)?,
                "at": instant(get(r, 1)?),
                "value": get::<Option<f64>>(r, 2)?,
                "event_id": get::<Option<String>>(r, 3)?,
                "properties": get::<Option<Json>>(r, 4)?,
                "received_at": instant(get(r, 5)?),
            }))
        })
        .collect::<ContactsResult<Json>>()?;

    doc["messages"] = export_messages(db, id).await?;
    Ok(Some(doc))
}

/// The contact's messages with their outcomes, attempts, links, activity log
/// and outbox copy, in send order.
async fn export_messages(db: &Db, contact_id: i64) -> ContactsResult<Json> {
    let b = db.backend();
    let conn = &db.conn;
    let of_contact = |q: &mut Sql, table: &str| {
        q.push(" FROM ")
            .push(table)
            .push(" x JOIN messages m ON m.id = x.message_id WHERE m.contact_id = ")
            .bind(contact_id)
            .push(" ORDER BY x.message_id, x.id");
    };
    let mut attempts: BTreeMap<i64, Vec<Json>> = BTreeMap::new();
    let mut q = Sql::new();
    q.push("SELECT x.message_id, x.at, x.result, x.provider_code, x.detail, x.duration_ms");
    of_contact(&mut q, "attempts");
    for r in all(conn, b, q).await? {
        attempts.entry(get(&r, 0)?).or_default().push(json!({
            "at": instant(get(&r, 1)?),
            "result": get::<String>(&r, 2)?,
            "provider_code": get::<Option<String>>(&r, 3)?,
            "detail": get::<Option<String>>(&r, 4)?,
            "duration_ms": get::<i64>(&r, 5)?,
        }));
    }
    let mut links: BTreeMap<i64, Vec<Json>> = BTreeMap::new();
    let mut q = Sql::new();
    q.push("SELECT x.message_id, x.idx, x.url, x.short_code");
    of_contact(&mut q, "links");
    for r in all(conn, b, q).await? {
        links.entry(get(&r, 0)?).or_default().push(json!({
            "idx": get::<i32>(&r, 1)?,
            "url": get::<String>(&r, 2)?,
            "short_code": get::<Option<String>>(&r, 3)?,
        }));
    }
    let mut activity: BTreeMap<i64, Vec<Json>> = BTreeMap::new();
    let mut q = Sql::new();
    q.push("SELECT x.message_id, x.kind, x.at, x.detail");
    of_contact(&mut q, "message_events");
    for r in all(conn, b, q).await? {
        activity.entry(get(&r, 0)?).or_default().push(json!({
            "kind": get::<String>(&r, 1)?,
            "at": instant(get(&r, 2)?),
            "detail": get::<Option<Json>>(&r, 3)?,
        }));
    }
    let mut outbox: BTreeMap<i64, Json> = BTreeMap::new();
    let mut q = Sql::new();
    q.push(
        "SELECT x.message_id, x.channel, x.address, x.subject, x.body, x.body_text, x.created_at",
    );
    of_contact(&mut q, "outbox");
    for r in all(conn, b, q).await? {
        outbox.insert(
            get(&r, 0)?,
            json!({
                "channel": get::<String>(&r, 1)?,
                "address": get::<String>(&r, 2)?,
                "subject": get::<Option<String>>(&r, 3)?,
                "body": get::<String>(&r, 4)?,
                "body_text": get::<Option<String>>(&r, 5)?,
                "created_at": instant(get(&r, 6)?),
            }),
        );
    }

    let mut q = Sql::new();
    q.push("SELECT m.id, c.name, m.run_id, m.step, m.arm, m.channel, m.address, m.send_at, m.status, m.reason, m.provider_id, m.sent_at, m.delivered_at, m.bounced_at, m.complained_at, m.opened_at, m.machine_opened_at, m.open_count, m.clicked_at, m.click_count, m.unsubscribed_at, m.converted_at, m.revenue, m.secondary \
        FROM messages m JOIN campaigns c ON c.id = m.campaign_id WHERE m.contact_id = ")
        .bind(contact_id)
        .push(" ORDER BY m.send_at, m.id");
    all(conn, b, q)
        .await?
        .iter()
        .map(|r| {
            let id: i64 = get(r, 0)?;
            Ok(json!({
                "id": id,
                "campaign": get::<String>(r, 1)?,
                "run_id": get::<i64>(r, 2)?,
                "step": get::<i32>(r, 3)?,
                "arm": get::<String>(r, 4)?,
                "channel": get::<Option<String>>(r, 5)?,
                "address": get::<Option<String>>(r, 6)?,
                "send_at": instant(get(r, 7)?),
                "status": get::<String>(r, 8)?,
                "reason": get::<Option<String>>(r, 9)?,
                "provider_id": get::<Option<String>>(r, 10)?,
                "outcome": {
                    "sent_at": instant(get(r, 11)?),
                    "delivered_at": instant(get(r, 12)?),
                    "bounced_at": instant(get(r, 13)?),
                    "complained_at": instant(get(r, 14)?),
                    "opened_at": instant(get(r, 15)?),
                    "machine_opened_at": instant(get(r, 16)?),
                    "open_count": get::<i32>(r, 17)?,
                    "clicked_at": instant(get(r, 18)?),
                    "click_count": get::<i32>(r, 19)?,
                    "unsubscribed_at": instant(get(r, 20)?),
                    "converted_at": instant(get(r, 21)?),
                    "revenue": get::<f64>(r, 22)?,
                    "secondary": get::<Option<Json>>(r, 23)?,
                },
                "attempts": attempts.remove(&id).unwrap_or_default(),
                "links": links.remove(&id).unwrap_or_default(),
                "activity": activity.remove(&id).unwrap_or_default(),
                "outbox": outbox.remove(&id),
            }))
        })
        .collect()
}

/// What [`forget_contact`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForgetReport {
    /// The external id the tombstone carries now (`forgotten:ROW_ID`).
    pub tombstone: String,
    /// Messages anonymised (all of the contact's).
    pub messages: u64,
    /// Of them, still planned and now cancelled (reason `forgotten`).
    pub cancelled: u64,
    /// Events kept without properties and event ids.
    pub events: u64,
    /// Push tokens deleted.
    pub push_tokens: u64,
    /// Tracked links and short codes deleted (their clicks now answer 404).
    pub links: u64,
    /// Outbox copies deleted.
    pub outbox: u64,
    /// Suppressions (and topic opt-outs) now kept as address digests.
    pub digested: u64,
}

/// A suppression row that names the contact or one of its addresses.
struct Suppression {
    id: i64,
    channel: String,
    address: Option<String>,
    topic: Option<String>,
    reason: String,
    source: String,
    created_at: i64,
}

/// Erases the personal data of contact `external_id` in one transaction;
/// `None` when there is no such contact. Forgetting a tombstone again
/// changes nothing.
///
/// - The contact row keeps only its id and instants: email, phone, zone,
///   locale, attrs, tags and consent are cleared, `forgotten_at` is set and
///   the external id becomes `forgotten:ROW_ID`, so segments never select it
///   and an import of the old id creates a new contact.
/// - Push tokens are deleted; events keep name, time and value (aggregates)
///   but lose properties and event ids (an app replaying them for a new
///   contact of the same id is not deduplicated against the tombstone).
/// - Messages stay, with arm, status, instants, counts and revenue, so every
///   report count is unchanged; their address and provider id are cleared,
///   the address is cut out of their reason, attempts and activity lose
///   their provider text, and their links, short codes and outbox copies are
///   deleted. Messages still `planned` are `cancelled` (reason `forgotten`).
/// - Suppressions of the contact's addresses become digests
///   ([`address_digest`]) unless another live contact has the same address
///   (then the row protects that contact and stays as it is); suppressions
///   and topic opt-outs kept by contact id get a digest copy per address,
///   so the person stays suppressed if imported again.
pub async fn forget_contact(
    db: &Db,
    external_id: &str,
    now: i64,
) -> ContactsResult<Option<ForgetReport>> {
    let b = db.backend();
    let txn = db.conn.begin().await?;
    let Some((id, email, phone)) = lock_contact(&txn, b, external_id, now).await? else {
        return Ok(None);
    };
    let tokens = push_tokens(&txn, b, id).await?;
    let mut report = ForgetReport {
        tombstone: format!("{FORGOTTEN_PREFIX}{id}"),
        ..ForgetReport::default()
    };

    // Every address the contact had: current ones and those its messages went to.
    let mut q = Sql::new();
    q.push("SELECT DISTINCT address FROM messages WHERE address IS NOT NULL AND contact_id = ")
        .bind(id);
    let mut addresses: BTreeSet<String> = all(&txn, b, q)
        .await?
        .iter()
        .map(|r| get(r, 0))
        .collect::<ContactsResult<_>>()?;
    addresses.extend(
        email
            .iter()
            .chain(phone.iter())
            .chain(tokens.iter())
            .cloned(),
    );
    let addresses: Vec<String> = addresses.into_iter().collect();
    let shared = shared_addresses(&txn, b, id, &addresses).await?;
    report.digested = digest_suppressions(
        &txn,
        b,
        id,
        &addresses,
        &shared,
        [&email, &phone],
        &tokens,
        now,
    )
    .await?;

    let mut q = Sql::new();
    q.push("UPDATE messages SET status = 'cancelled', reason = ")
        .bind(CANCEL_REASON)
        .push(", lease_owner = NULL, lease_until = NULL, updated_at = ")
        .bind(now)
        .push(" WHERE status = 'planned' AND contact_id = ")
        .bind(id);
    report.cancelled = exec(&txn, b, q).await?;
    let mut q = Sql::new();
    q.push("UPDATE messages SET address = NULL, provider_id = NULL, reason = ");
    // Provider text (a bounce, a refusal) may quote the address: cut every one out.
    for _ in &addresses {
        q.push("REPLACE(");
    }
    q.push("reason");
    for a in &addresses {
        q.push(", ")
            .bind(a.clone())
            .push(", '")
            .push(ERASED)
            .push("')");
    }
    q.push(", updated_at = ")
        .bind(now)
        .push(" WHERE contact_id = ")
        .bind(id);
    report.messages = exec(&txn, b, q).await?;

    let of_messages = |q: &mut Sql| {
        q.push(" WHERE message_id IN (SELECT id FROM messages WHERE contact_id = ")
            .bind(id)
            .push(")");
    };
    let mut q = Sql::new();
    q.push("UPDATE attempts SET detail = NULL");
    of_messages(&mut q);
    exec(&txn, b, q).await?;
    let mut q = Sql::new();
    // A click's detail is the link's index; the rest may quote provider payloads.
    q.push("UPDATE message_events SET detail = NULL");
    of_messages(&mut q);
    q.push(" AND kind <> 'click'");
    exec(&txn, b, q).await?;
    let mut q = Sql::new();
    q.push("DELETE FROM links");
    of_messages(&mut q);
    report.links = exec(&txn, b, q).await?;
    let mut q = Sql::new();
    q.push("DELETE FROM outbox");
    of_messages(&mut q);
    report.outbox = exec(&txn, b, q).await?;

    let mut q = Sql::new();
    q.push("UPDATE events SET properties = NULL, event_id = NULL WHERE contact_id = ")
        .bind(id);
    report.events = exec(&txn, b, q).await?;
    let mut q = Sql::new();
    q.push("DELETE FROM push_tokens WHERE contact_id = ")
        .bind(id);
    report.push_tokens = exec(&txn, b, q).await?;

    let mut q = Sql::new();
    q.push("UPDATE contacts SET external_id = ")
        .bind(report.tombstone.clone())
        .push(", email = NULL, phone = NULL, timezone = NULL, locale = NULL, attrs = ");
    match b {
        DbBackend::Postgres => q.push("'{}'::jsonb"),
        _ => q.push("'{}'"),
    };
    q.push(", tags = NULL, consent_email = NULL, consent_sms = NULL, consent_push = NULL, first_seen_at = NULL, updated_at = ")
        .bind(now)
        .push(", forgotten_at = COALESCE(forgotten_at, ")
        .bind(now)
        .push(") WHERE id = ")
        .bind(id);
    exec(&txn, b, q).await?;
    txn.commit().await?;
    Ok(Some(report))
}

/// Those of `addresses` that a live contact other than `id` also has.
async fn shared_addresses(
    conn: &impl ConnectionTrait,
    b: DbBackend,
    id: i64,
    addresses: &[String],
) -> ContactsResult<BTreeSet<String>> {
    if addresses.is_empty() {
        return Ok(BTreeSet::new());
    }
    let mut out = BTreeSet::new();
    for col in ["email", "phone"] {
        let mut q = Sql::new();
        q.push("SELECT DISTINCT ")
            .push(col)
            .push(" FROM contacts WHERE forgotten_at IS NULL AND id <> ")
            .bind(id)
            .push(" AND ")
            .push(col)
            .push(" IN ");
        in_list(&mut q, addresses);
        for r in all(conn, b, q).await? {
            out.insert(get(&r, 0)?);
        }
    }
    Ok(out)
}

/// Turns the suppressions of a contact being forgotten into digests (see
/// [`forget_contact`]); returns how many digest rows were written.
#[allow(clippy::too_many_arguments)]
async fn digest_suppressions(
    conn: &impl ConnectionTrait,
    b: DbBackend,
    id: i64,
    addresses: &[String],
    shared: &BTreeSet<String>,
    [email, phone]: [&Option<String>; 2],
    tokens: &[String],
    now: i64,
) -> ContactsResult<u64> {
    let mut q = Sql::new();
    q.push("SELECT id, channel, address, topic, reason, source, created_at FROM suppressions WHERE contact_id = ")
        .bind(id);
    if !addresses.is_empty() {
        q.push(" OR address IN ");
        in_list(&mut q, addresses);
    }
    q.push(" ORDER BY id");
    let rows: Vec<Suppression> = all(conn, b, q)
        .await?
        .iter()
        .map(|r| {
            Ok(Suppression {
                id: get(r, 0)?,
                channel: get(r, 1)?,
                address: get(r, 2)?,
                topic: get(r, 3)?,
                reason: get(r, 4)?,
                source: get(r, 5)?,
                created_at: get(r, 6)?,
            })
        })
        .collect::<ContactsResult<_>>()?;
    // Topic opt-outs live in topic_subscriptions, keyed by contact: they too
    // need a digest to survive a fresh import.
    let mut q = Sql::new();
    q.push("SELECT topic, updated_at FROM topic_subscriptions WHERE subscribed = FALSE AND contact_id = ")
        .bind(id);
    let mut rows = rows;
    for r in all(conn, b, q).await? {
        rows.push(Suppression {
            id: 0,
            channel: "any".into(),
            address: None,
            topic: Some(get(&r, 0)?),
            reason: "unsubscribe".into(),
            source: "topic_subscription".into(),
            created_at: get(&r, 1)?,
        });
    }
    let current = |channel: &str| -> Vec<String> {
        match channel {
            "email" => email.iter().cloned().collect(),
            "sms" => phone.iter().cloned().collect(),
            "push" => tokens.to_vec(),
            _ => email
                .iter()
                .chain(phone.iter())
                .chain(tokens.iter())
                .cloned()
                .collect(),
        }
    };
    let mut written = 0;
    for s in rows {
        let targets = match &s.address {
            Some(a) if shared.contains(a) => continue,
            Some(a) => vec![a.clone()],
            None => current(&s.channel),
        };
        for a in targets.iter().filter(|a| !shared.contains(*a)) {
            let digest = address_digest(a);
            let mut q = Sql::new();
            q.push("INSERT INTO suppressions (channel, address, contact_id, topic, reason, source, created_at) SELECT ")
                .bind(s.channel.clone())
                .push(", ")
                .bind(digest.clone())
                .push(", NULL, ")
                .bind_as(b, s.topic.clone(), "text")
                .push(", ")
                .bind(s.reason.clone())
                .push(", ")
                .bind(s.source.clone())
                .push(", ")
                .bind(s.created_at.min(now))
                .push(" WHERE NOT EXISTS (SELECT 1 FROM suppressions t WHERE t.channel = ")
                .bind(s.channel.clone())
                .push(" AND t.address = ")
                .bind(digest)
                .push(" AND t.reason = ")
                .bind(s.reason.clone());
            match &s.topic {
                Some(t) => q.push(" AND t.topic = ").bind(t.clone()),
                None => q.push(" AND t.topic IS NULL"),
            };
            q.push(")");
            written += exec(conn, b, q).await?;
        }
        // A row with an address is personal data: the digest replaces it. A
        // row kept by contact id only names the tombstone, and stays.
        if s.address.is_some() {
            let mut q = Sql::new();
            q.push("DELETE FROM suppressions WHERE id = ").bind(s.id);
            exec(conn, b, q).await?;
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_sha256_hex_of_the_stored_address() {
        // printf 'ann@example.com' | sha256sum
        assert_eq!(
            address_digest("ann@example.com"),
            "sha256:71d4f55f72fa128dfb468a1a3901507c804b74316488744d769d7f4b16696476"
        );
        assert_ne!(
            address_digest("Ann@example.com"),
            address_digest("ann@example.com")
        );
    }

    #[test]
    fn instants_are_rfc3339_utc_with_millis() {
        assert_eq!(
            instant(Some(1_767_312_000_123)),
            json!("2026-01-02T00:00:00.123Z")
        );
        assert_eq!(instant(None), Json::Null);
    }
}
