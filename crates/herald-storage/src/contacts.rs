//! Data rights (SPEC section 3, `herald contacts export|forget ID`):
//! [`export_contact`] gathers everything herald keeps about one contact as
//! JSON; [`forget_contact`] erases the personal part in one transaction and
//! keeps the messages, anonymised, so reports keep their counts.
//!
//! A forgotten contact's row stays as a tombstone (`forgotten_at` set,
//! external id `forgotten:ROW_ID`), so a later import of the old id creates a
//! fresh contact. Its suppressions outlive it as keyed digests of the
//! address, HMAC-SHA256 under a key derived from the tracking secret over
//! the address's SHA-256 ([`DigestKeys`]): without the secret nobody can
//! test guesses against them (a phone number's space is small enough to
//! try whole). The import recognises a digest, under the current key or a
//! previous one, and turns it back into a suppression when the same address
//! comes in again (see `crate::import`). Plain SHA-256 digests left by
//! earlier versions are wrapped under the key on the first start that has
//! the secret ([`wrap_plain_digests`]); that is why the HMAC is over the
//! SHA-256 and not the address itself.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, SecondsFormat};
use sea_orm::{ConnectionTrait, DbBackend, QueryResult, TransactionTrait};
use serde_json::{Value as Json, json};
use sha2::{Digest, Sha256};

use crate::db::Db;
use crate::sql::Sql;

/// What a forgotten contact's external id starts with; the rest is its row id.
pub const FORGOTTEN_PREFIX: &str = "forgotten:";

/// What a plain (unkeyed, legacy) digested suppression address starts with; lowercase hex follows.
pub const DIGEST_PREFIX: &str = "sha256:";
/// What a keyed digest starts with: `hmac:KEY_ID:` and lowercase hex follow.
pub const KEYED_DIGEST_PREFIX: &str = "hmac:";
/// What the digest key is derived from the secret for (domain separation).
const DIGEST_KEY_LABEL: &[u8] = b"herald forgotten identifier digest key v1";
/// Bytes of a key's id (a hash of the key) written before each digest.
const KEY_ID_LEN: usize = 4;

/// The keys forgotten identifiers are digested under: the current one,
/// which writes, and previous ones (`[tracking] secret_previous_env`), which
/// are still recognised after the secret is rotated.
#[derive(Clone)]
pub struct DigestKeys {
    /// (key id in hex, key); the first is current.
    keys: Vec<(String, ring::hmac::Key)>,
}

impl std::fmt::Debug for DigestKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("DigestKeys").field("ids", &ids).finish()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl DigestKeys {
    /// Keys derived from the tracking secret and, after a rotation, the previous ones.
    pub fn from_secrets(current: &[u8], previous: &[&[u8]]) -> Self {
        let derive = |secret: &[u8]| {
            let master = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
            let key = ring::hmac::sign(&master, DIGEST_KEY_LABEL);
            let id = hex(
                &ring::digest::digest(&ring::digest::SHA256, key.as_ref()).as_ref()[..KEY_ID_LEN],
            );
            (
                id,
                ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key.as_ref()),
            )
        };
        let mut keys = vec![derive(current)];
        for p in previous {
            let k = derive(p);
            if keys.iter().all(|(id, _)| *id != k.0) {
                keys.push(k);
            }
        }
        Self { keys }
    }

    fn keyed((id, key): &(String, ring::hmac::Key), sha: &[u8]) -> String {
        format!(
            "{KEYED_DIGEST_PREFIX}{id}:{}",
            hex(ring::hmac::sign(key, sha).as_ref())
        )
    }

    /// The digest a suppression keeps of a forgotten address, under the current key.
    pub fn digest(&self, address: &str) -> String {
        let sha = ring::digest::digest(&ring::digest::SHA256, address.as_bytes());
        Self::keyed(&self.keys[0], sha.as_ref())
    }

    /// Every digest `address` may be stored under: each key's, and the plain
    /// one of versions before keyed digests.
    pub fn candidates(&self, address: &str) -> Vec<String> {
        let sha = ring::digest::digest(&ring::digest::SHA256, address.as_bytes());
        let mut out: Vec<String> = self
            .keys
            .iter()
            .map(|k| Self::keyed(k, sha.as_ref()))
            .collect();
        out.push(address_digest(address));
        out
    }

    /// The current-key digest of a plain `sha256:HEX` digest, if it is one.
    fn wrap(&self, plain: &str) -> Option<String> {
        let h = plain.strip_prefix(DIGEST_PREFIX)?;
        if h.len() != 64 {
            return None;
        }
        let sha: Vec<u8> = (0..32)
            .map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16))
            .collect::<Result<_, _>>()
            .ok()?;
        Some(Self::keyed(&self.keys[0], &sha))
    }
}

/// Rewrites every plain `sha256:` digest (written before keyed digests) as
/// its keyed digest under the current key; returns how many rows changed.
/// Cheap when there are none; run it where the secret is known.
pub async fn wrap_plain_digests(db: &Db, keys: &DigestKeys) -> ContactsResult<u64> {
    let b = db.backend();
    let mut q = Sql::new();
    q.push("SELECT id, address FROM suppressions WHERE address LIKE ")
        .bind(format!("{DIGEST_PREFIX}%"));
    let rows = all(&db.conn, b, q).await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let txn = db.conn.begin().await?;
    let mut n = 0;
    for r in rows {
        let (id, plain): (i64, String) = (get(&r, 0)?, get(&r, 1)?);
        let Some(keyed) = keys.wrap(&plain) else {
            continue;
        };
        let mut q = Sql::new();
        q.push("UPDATE suppressions SET address = ")
            .bind(keyed)
            .push(" WHERE id = ")
            .bind(id);
        n += exec(&txn, b, q).await?;
    }
    txn.commit().await?;
    Ok(n)
}

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
    /// Forgetting needs the digest key, derived from the tracking secret.
    #[error(
        "forgetting a contact needs the tracking secret: its suppressions are kept as keyed digests (set [tracking] secret_env)"
    )]
    NoDigestKey,
}

/// Shorthand for this module's results.
pub type ContactsResult<T> = Result<T, ContactsError>;

/// The plain digest earlier versions kept of a forgotten address: `sha256:`
/// and the hex SHA-256 of the address exactly as stored. Unkeyed, it confirms
/// a guess: only recognised now, never written (see [`DigestKeys`]).
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

/// The contact id and creation instant (ms) of `external_id`, or `None`
/// when there is no such contact: what the console needs to replay the
/// planner for one contact (the export leaves internal ids out).
pub async fn contact_key(db: &Db, external_id: &str) -> ContactsResult<Option<(i64, i64)>> {
    let mut q = Sql::new();
    q.push("SELECT id, created_at FROM contacts WHERE external_id = ")
        .bind(external_id.to_string());
    let rows = all(&db.conn, db.backend(), q).await?;
    rows.first()
        .map(|r| Ok((get(r, 0)?, get(r, 1)?)))
        .transpose()
}

/// The id of the contact `external_id`, unless there is none or it was
/// forgotten: whom `herald preview --contact` renders for.
pub async fn live_contact_id(db: &Db, external_id: &str) -> ContactsResult<Option<i64>> {
    let mut q = Sql::new();
    q.push("SELECT id FROM contacts WHERE forgotten_at IS NULL AND external_id = ")
        .bind(external_id.to_string());
    let rows = all(&db.conn, db.backend(), q).await?;
    rows.first().map(|r| get(r, 0)).transpose()
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
        let digests: Vec<String> = addresses
            .iter()
            .flat_map(|a| match db.digest_keys() {
                Some(k) => k.candidates(a),
                None => vec![address_digest(a)],
            })
            .collect();
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
/// - Suppressions of the contact's addresses become keyed digests
///   ([`DigestKeys::digest`]) unless another live contact has the same address
///   (then the row protects that contact and stays as it is); suppressions
///   and topic opt-outs kept by contact id get a digest copy per address,
///   so the person stays suppressed if imported again.
pub async fn forget_contact(
    db: &Db,
    external_id: &str,
    now: i64,
) -> ContactsResult<Option<ForgetReport>> {
    let b = db.backend();
    let keys = db.digest_keys().ok_or(ContactsError::NoDigestKey)?.clone();
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
        &keys,
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
    // The console's stored figures may quote them (a failure's reason, a
    // report's counts): gone with the rest, in the same transaction.
    crate::console_figures::forget_all(&txn, b, now).await?;
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
    keys: &DigestKeys,
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
            let digest = keys.digest(a);
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
mod db_tests {
    //! Keyed digests of forgotten identifiers, on SQLite and on PostgreSQL.

    use std::collections::HashSet;

    use super::*;
    use crate::test_db::on_both_databases;

    const NOW: i64 = 1_767_225_600_000;
    const PHONE: &str = "+15005550123";
    const EMAIL: &str = "pat@example.com";

    on_both_databases!(
        a_forgotten_phone_cannot_be_brute_forced_and_import_still_finds_it,
        plain_digests_are_wrapped_and_a_rotated_key_is_still_recognised,
    );

    async fn exec_sql(db: &Db, sql: &str) {
        db.conn.execute_unprepared(sql).await.unwrap();
    }

    /// Contact `eid` with both addresses, opted out of SMS and hard-bounced on email.
    async fn suppressed_contact(db: &Db, id: i64, eid: &str) {
        exec_sql(db, &format!(
            "INSERT INTO contacts (id, external_id, email, phone, attrs, created_at, updated_at) VALUES ({id}, '{eid}', '{EMAIL}', '{PHONE}', '{{}}', {NOW}, {NOW})"
        )).await;
        exec_sql(db, &format!(
            "INSERT INTO suppressions (channel, address, contact_id, topic, reason, source, created_at) VALUES \
            ('sms', '{PHONE}', {id}, NULL, 'opt_out', 'twilio', {NOW}), \
            ('email', '{EMAIL}', {id}, NULL, 'hard_bounce', 'smtp', {NOW})"
        )).await;
    }

    async fn stored_addresses(db: &Db) -> HashSet<String> {
        let q = Sql::new()
            .push("SELECT address FROM suppressions WHERE address IS NOT NULL")
            .clone();
        all(&db.conn, db.backend(), q)
            .await
            .unwrap()
            .iter()
            .map(|r| get::<String>(r, 0).unwrap())
            .collect()
    }

    /// Imports `eid` with the same addresses again; the suppressions it gets back.
    async fn reimport(db: &Db, eid: &str) -> i64 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.csv");
        std::fs::write(
            &path,
            format!("external_id,email,phone\n{eid},{EMAIL},{PHONE}\n"),
        )
        .unwrap();
        crate::import::import_contacts(db, &path, &|_| {})
            .await
            .unwrap();
        let q = Sql::new()
            .push("SELECT COUNT(*) FROM suppressions s JOIN contacts c ON c.id = s.contact_id WHERE c.external_id = ")
            .bind(eid.to_string())
            .push(" AND ((s.channel = 'sms' AND s.address = ")
            .bind(PHONE)
            .push(") OR (s.channel = 'email' AND s.address = ")
            .bind(EMAIL)
            .push("))")
            .clone();
        get::<i64>(&all(&db.conn, db.backend(), q).await.unwrap()[0], 0).unwrap()
    }

    async fn a_forgotten_phone_cannot_be_brute_forced_and_import_still_finds_it(db: &Db) {
        suppressed_contact(db, 1, "p1").await;
        // Without the key, forgetting refuses rather than keep plain digests.
        assert!(matches!(
            forget_contact(db, "p1", NOW).await,
            Err(ContactsError::NoDigestKey)
        ));
        let keys = DigestKeys::from_secrets(b"contacts-test-secret-0123", &[]);
        let db = &db.clone().with_digest_keys(keys.clone());
        let failures = serde_json::json!({"failures": [[PHONE, 1]]});
        crate::console_figures::put(db, "status", &failures, NOW - 1, 1)
            .await
            .unwrap();
        let r = forget_contact(db, "p1", NOW).await.unwrap().unwrap();
        assert_eq!(r.digested, 2);
        assert_eq!(
            crate::console_figures::get_figures(db, "status")
                .await
                .unwrap(),
            None,
            "the console's stored figures go with the contact"
        );
        let stored = stored_addresses(db).await;
        assert_eq!(stored.len(), 2, "{stored:?}");
        // An attacker with the database: every number of the range, hashed
        // as before (plain SHA-256) and as the stored form's HMAC under a
        // guessed key, matches nothing.
        let guessed = DigestKeys::from_secrets(b"", &[]);
        let mut tried = 0;
        for n in 0..10_000 {
            let phone = format!("+1500555{n:04}");
            for d in [
                address_digest(&phone),
                guessed.digest(&phone),
                phone.clone(),
            ] {
                assert!(!stored.contains(&d), "{phone} recovered");
            }
            tried += 1;
        }
        assert_eq!(tried, 10_000);
        // The secret's holder recognises it, and so does a re-import.
        assert!(stored.contains(&keys.digest(PHONE)));
        assert!(stored.iter().all(|a| a.starts_with(KEYED_DIGEST_PREFIX)));
        assert_eq!(reimport(db, "p1").await, 2);
    }

    async fn plain_digests_are_wrapped_and_a_rotated_key_is_still_recognised(db: &Db) {
        // A plain digest as earlier versions kept it.
        exec_sql(db, &format!(
            "INSERT INTO suppressions (channel, address, contact_id, topic, reason, source, created_at) VALUES ('sms', '{}', NULL, NULL, 'opt_out', 'twilio', {NOW})",
            address_digest(PHONE)
        )).await;
        let old = DigestKeys::from_secrets(b"the-old-secret-0123456", &[]);
        assert_eq!(wrap_plain_digests(db, &old).await.unwrap(), 1);
        assert_eq!(wrap_plain_digests(db, &old).await.unwrap(), 0, "once");
        let stored = stored_addresses(db).await;
        assert_eq!(stored, HashSet::from([old.digest(PHONE)]));
        // The secret is rotated: the old key still recognises what it keyed.
        let rotated =
            DigestKeys::from_secrets(b"the-new-secret-6543210", &[b"the-old-secret-0123456"]);
        let db = &db.clone().with_digest_keys(rotated);
        let q = Sql::new()
            .push("SELECT COUNT(*) FROM suppressions WHERE channel = 'sms' AND address = ")
            .bind(PHONE)
            .clone();
        reimport(db, "p9").await;
        assert_eq!(
            get::<i64>(&all(&db.conn, db.backend(), q).await.unwrap()[0], 0).unwrap(),
            1
        );
        // Under the new key alone, it would be lost: the rotation list matters.
        let only_new = DigestKeys::from_secrets(b"the-new-secret-6543210", &[]);
        assert!(!only_new.candidates(PHONE).contains(&old.digest(PHONE)));
    }
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
