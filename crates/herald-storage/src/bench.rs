//! The benchmarks' own reads and writes (`herald-bench`, the server's
//! `opens` bench): bulk loading of generated contacts and events (COPY on
//! PostgreSQL, multi-row inserts on SQLite), statistics, the hand-written
//! reference queries that herald's segment SQL is timed against, clearing a
//! bench campaign's state between passes, and the counts the benches wait
//! on. The generators themselves stay in the benches; only SQL lives here.

use std::fmt;

use sea_orm::{ConnectionTrait, DbBackend, DbErr, QueryResult, TransactionTrait};

use crate::Db;
use crate::segment_sql::DAY_MS;
use crate::sql::{Sql, stmt};

/// Rows per multi-row INSERT on SQLite (6 values each).
const SQLITE_ROWS: usize = 500;

/// A generated contact row.
#[derive(Debug, Clone)]
pub struct BenchContact {
    /// Id (also its external id, `c{id}`).
    pub id: i64,
    /// Email address.
    pub email: Option<String>,
    /// Phone number.
    pub phone: Option<String>,
    /// IANA time zone.
    pub timezone: &'static str,
    /// Locale.
    pub locale: &'static str,
    /// Attributes, JSON text.
    pub attrs: String,
    /// Tags, JSON array text.
    pub tags: Option<&'static str>,
    /// SMS consent.
    pub consent_sms: bool,
    /// First seen (ms).
    pub first_seen_at: Option<i64>,
    /// Created (ms).
    pub created_at: i64,
}

/// A generated event row.
#[derive(Debug, Clone)]
pub struct BenchEvent {
    /// Its contact.
    pub contact_id: i64,
    /// Event name.
    pub name: &'static str,
    /// When (ms; also when it was received).
    pub at: i64,
    /// Value.
    pub value: Option<f64>,
    /// The product bought (`properties.sku = "SKU-n"`).
    pub sku: Option<u32>,
}

fn custom(e: impl fmt::Display) -> DbErr {
    DbErr::Custom(e.to_string())
}

async fn exec(db: &Db, sql: &str) -> Result<(), DbErr> {
    db.conn.execute_raw(stmt(db.backend(), sql, vec![])).await?;
    Ok(())
}

async fn count(db: &Db, q: Sql) -> Result<i64, DbErr> {
    let rows = db.conn.query_all_raw(q.build(db.backend())).await?;
    Ok(rows
        .first()
        .map(|r| r.try_get_by_index::<Option<i64>>(0))
        .transpose()?
        .flatten()
        .unwrap_or(0))
}

fn text(sql: &str) -> Sql {
    let mut q = Sql::new();
    q.push(sql);
    q
}

/// Writes a chunk of generated rows, contacts first (their ids are the
/// events' contact ids): COPY on PostgreSQL, one transaction of multi-row
/// inserts on SQLite.
pub async fn load_rows(
    db: &Db,
    contacts: &[BenchContact],
    events: &[BenchEvent],
) -> Result<(), DbErr> {
    if db.backend() == DbBackend::Postgres {
        copy_pg(db, contacts, events).await
    } else {
        insert_sqlite(db, contacts, events).await
    }
}

/// Moves PostgreSQL's contact id sequence past the ids [`load_rows`] wrote
/// explicitly, so later inserts (imports) get fresh ids; nothing on SQLite.
pub async fn reset_contact_ids(db: &Db) -> Result<(), DbErr> {
    if db.backend() == DbBackend::Postgres {
        exec(
            db,
            "SELECT setval(pg_get_serial_sequence('contacts', 'id'), GREATEST((SELECT MAX(id) FROM contacts), 1))",
        )
        .await?;
    }
    Ok(())
}

async fn copy_pg(db: &Db, contacts: &[BenchContact], events: &[BenchEvent]) -> Result<(), DbErr> {
    use sea_orm::sqlx::postgres::PgPoolCopyExt;
    use std::fmt::Write;
    let pool = db.conn.get_postgres_connection_pool();
    let opt = |v: Option<String>| v.unwrap_or_else(|| "\\N".into());
    let mut buf = String::with_capacity(contacts.len() * 160);
    for c in contacts {
        let _ = writeln!(
            buf,
            "{}\tc{}\t{}\t{}\t{}\t{}\t{}\t{}\t\\N\t{}\t\\N\t{}\t{}\t{}",
            c.id,
            c.id,
            opt(c.email.clone()),
            opt(c.phone.clone()),
            c.timezone,
            c.locale,
            c.attrs,
            c.tags.unwrap_or("\\N"),
            c.consent_sms,
            opt(c.first_seen_at.map(|v| v.to_string())),
            c.created_at,
            c.created_at
        );
    }
    let mut copy = pool
        .copy_in_raw("COPY contacts (id, external_id, email, phone, timezone, locale, attrs, tags, consent_email, consent_sms, consent_push, first_seen_at, created_at, updated_at) FROM STDIN")
        .await
        .map_err(custom)?;
    copy.send(buf.as_bytes()).await.map_err(custom)?;
    copy.finish().await.map_err(custom)?;

    let mut buf = String::with_capacity(events.len() * 80);
    for e in events {
        let _ = writeln!(
            buf,
            "{}\t{}\t{}\t{}\t{}\t{}",
            e.contact_id,
            e.name,
            e.at,
            opt(e.value.map(|v| v.to_string())),
            opt(e.sku.map(|s| format!("{{\"sku\": \"SKU-{s}\"}}"))),
            e.at
        );
    }
    let mut copy = pool
        .copy_in_raw(
            "COPY events (contact_id, name, at, value, properties, received_at) FROM STDIN",
        )
        .await
        .map_err(custom)?;
    copy.send(buf.as_bytes()).await.map_err(custom)?;
    copy.finish().await.map_err(custom)?;
    Ok(())
}

async fn insert_sqlite(
    db: &Db,
    contacts: &[BenchContact],
    events: &[BenchEvent],
) -> Result<(), DbErr> {
    let b = DbBackend::Sqlite;
    let txn = db.conn.begin().await?;
    for chunk in contacts.chunks(SQLITE_ROWS / 2) {
        let mut q = Sql::new();
        q.push("INSERT INTO contacts (id, external_id, email, phone, timezone, locale, attrs, tags, consent_sms, first_seen_at, created_at, updated_at) VALUES ");
        for (i, c) in chunk.iter().enumerate() {
            if i > 0 {
                q.push(",");
            }
            q.push("(").bind(c.id).push(",").bind(format!("c{}", c.id));
            q.push(",")
                .bind(c.email.clone())
                .push(",")
                .bind(c.phone.clone());
            q.push(",").bind(c.timezone).push(",").bind(c.locale);
            q.push(",")
                .bind(c.attrs.clone())
                .push(",")
                .bind(c.tags.map(str::to_string));
            q.push(",")
                .bind(c.consent_sms)
                .push(",")
                .bind(c.first_seen_at);
            q.push(",")
                .bind(c.created_at)
                .push(",")
                .bind(c.created_at)
                .push(")");
        }
        txn.execute_raw(q.build(b)).await?;
    }
    for chunk in events.chunks(SQLITE_ROWS) {
        let mut q = Sql::new();
        q.push("INSERT INTO events (contact_id, name, at, value, properties, received_at) VALUES ");
        for (i, e) in chunk.iter().enumerate() {
            if i > 0 {
                q.push(",");
            }
            q.push("(").bind(e.contact_id).push(",").bind(e.name);
            q.push(",").bind(e.at).push(",").bind(e.value).push(",");
            q.bind(e.sku.map(|s| format!("{{\"sku\": \"SKU-{s}\"}}")));
            q.push(",").bind(e.at).push(")");
        }
        txn.execute_raw(q.build(b)).await?;
    }
    txn.commit().await
}

/// Statistics for the planners (and, on PostgreSQL, the visibility map for index-only scans).
pub async fn analyze(db: &Db) -> Result<(), DbErr> {
    if db.backend() == DbBackend::Postgres {
        exec(db, "VACUUM ANALYZE contacts").await?;
        exec(db, "VACUUM ANALYZE events").await
    } else {
        exec(db, "ANALYZE").await
    }
}

/// Hand-written SQL for the bench's questions at `now` (`lapsed_buyers`,
/// `rfm`, `overdue`, anything else: the RFM grid), as a DBA would write them
/// for this schema (literals inline, each database's own idioms).
pub fn hand_written(b: DbBackend, name: &str, now: i64) -> String {
    let day = DAY_MS;
    let pg = b == DbBackend::Postgres;
    let region = if pg {
        "c.attrs->>'region' = 'guangdong'"
    } else {
        "c.attrs->>'$.region' = 'guangdong'"
    };
    let not_wholesale = if pg {
        "NOT COALESCE(c.tags @> '[\"wholesale\"]'::jsonb, FALSE)"
    } else {
        "NOT EXISTS (SELECT 1 FROM json_each(c.tags) WHERE value = 'wholesale')"
    };
    let in_window = |w: i64| {
        if pg {
            format!("COUNT(*) FILTER (WHERE at > {})", now - w * day)
        } else {
            format!("SUM(at > {})", now - w * day)
        }
    };
    match name {
        // Only purchases of the last year matter: the last one must be 90-150 days old.
        "lapsed_buyers" => format!(
            "SELECT COUNT(*) FROM contacts c JOIN (SELECT contact_id FROM events WHERE name = 'order_placed' AND at > {y} AND at <= {now} GROUP BY contact_id HAVING COUNT(*) >= 2 AND MAX(at) > {lo} AND MAX(at) <= {hi}) p ON p.contact_id = c.id WHERE c.forgotten_at IS NULL AND {region} AND {not_wholesale}",
            y = now - 365 * day,
            lo = now - 151 * day,
            hi = now - 90 * day,
        ),
        // r >= 4: bought in the last 90 days; f >= 4: more than 4 purchases in the year.
        "rfm" => format!(
            "SELECT COUNT(*) FROM contacts c JOIN (SELECT contact_id FROM events WHERE name = 'order_placed' AND at > {y} AND at <= {now} GROUP BY contact_id HAVING COUNT(*) > 4 AND MAX(at) > {r}) p ON p.contact_id = c.id WHERE c.forgotten_at IS NULL",
            y = now - 365 * day,
            r = now - 91 * day,
        ),
        "overdue" if pg => format!(
            "SELECT COUNT(*) FROM contacts c JOIN (SELECT contact_id, MAX(last_at) AS last_at, percentile_cont(0.5) WITHIN GROUP (ORDER BY gap) AS median FROM (SELECT contact_id, MAX(at) OVER w AS last_at, at - LAG(at) OVER w AS gap FROM events WHERE name = 'order_placed' AND at <= {now} WINDOW w AS (PARTITION BY contact_id ORDER BY at ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)) g WHERE gap IS NOT NULL GROUP BY contact_id) m ON m.contact_id = c.id WHERE c.forgotten_at IS NULL AND m.median > 0 AND ({now} - m.last_at) > 2 * m.median"
        ),
        // SQLite has no percentile: each contact's gaps sorted into a JSON array, the middle read.
        "overdue" => format!(
            "SELECT COUNT(*) FROM contacts c JOIN (SELECT contact_id, last_at, json_extract(g, '$[' || ((n - 1) / 2) || ']') + json_extract(g, '$[' || (n / 2) || ']') AS two_medians FROM (SELECT contact_id, MAX(at) AS last_at, json_group_array(gap ORDER BY gap) FILTER (WHERE gap IS NOT NULL) AS g, COUNT(gap) AS n FROM (SELECT contact_id, at, at - LAG(at) OVER (PARTITION BY contact_id ORDER BY at) AS gap FROM events WHERE name = 'order_placed' AND at <= {now}) GROUP BY contact_id HAVING COUNT(gap) > 0)) m ON m.contact_id = c.id WHERE c.forgotten_at IS NULL AND m.two_medians > 0 AND ({now} - m.last_at) > m.two_medians"
        ),
        _ => {
            let r = "CASE WHEN d <= 30 THEN 5 WHEN d <= 90 THEN 4 WHEN d <= 150 THEN 3 WHEN d <= 270 THEN 2 ELSE 1 END";
            let f = "CASE WHEN n <= 1 THEN 1 WHEN n <= 2 THEN 2 WHEN n <= 4 THEN 3 WHEN n <= 8 THEN 4 ELSE 5 END";
            let m = "CASE WHEN s <= 100 THEN 1 WHEN s <= 500 THEN 2 WHEN s <= 1000 THEN 3 WHEN s <= 5000 THEN 4 ELSE 5 END";
            let spend = if pg {
                format!(
                    "COALESCE(SUM(value) FILTER (WHERE at > {}), 0)",
                    now - 365 * day
                )
            } else {
                format!("TOTAL(CASE WHEN at > {} THEN value END)", now - 365 * day)
            };
            format!(
                "SELECT {r} AS r, {f} AS f, {m} AS m, COUNT(*) FROM (SELECT ({now} - p.last_at) / {day} AS d, p.n, p.s FROM (SELECT contact_id, MAX(at) AS last_at, {cnt} AS n, {spend} AS s FROM events WHERE name = 'order_placed' AND at <= {now} GROUP BY contact_id) p JOIN contacts c ON c.id = p.contact_id WHERE c.forgotten_at IS NULL) x GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
                cnt = in_window(365),
            )
        }
    }
}

/// Runs `q` (herald's compiled SQL or [`hand_written`]) and returns its rows
/// as text, so two answers compare.
pub async fn answer(db: &Db, q: Sql) -> Result<Vec<String>, DbErr> {
    let rows = db.conn.query_all_raw(q.build(db.backend())).await?;
    Ok(rows.iter().map(row_text).collect())
}

fn row_text(r: &QueryResult) -> String {
    (0..)
        .map_while(|i| {
            r.try_get_by_index::<Option<i64>>(i)
                .map(|v| v.map_or("-".to_string(), |n| n.to_string()))
                .or_else(|_| {
                    r.try_get_by_index::<Option<i32>>(i)
                        .map(|v| v.map_or("-".to_string(), |n| n.to_string()))
                })
                .ok()
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Contacts not forgotten.
pub async fn live_contacts(db: &Db) -> Result<i64, DbErr> {
    count(
        db,
        text("SELECT COUNT(*) FROM contacts WHERE forgotten_at IS NULL"),
    )
    .await
}

/// Forgets every segment-entry membership and pass, so the next pass is a
/// baseline (and, on PostgreSQL, vacuums the emptied table).
pub async fn clear_entry_state(db: &Db) -> Result<(), DbErr> {
    exec(db, "DELETE FROM entry_members").await?;
    exec(db, "DELETE FROM entry_passes").await?;
    if db.backend() == DbBackend::Postgres {
        exec(db, "VACUUM ANALYZE entry_members").await?;
    }
    Ok(())
}

/// Deletes the runs of the campaign `campaign` and all they left (messages,
/// entry state, trigger cursors), so a bench plans it afresh.
pub async fn clear_campaign_runs(db: &Db, campaign: &str) -> Result<(), DbErr> {
    for table in [
        "messages",
        "entry_members",
        "entry_passes",
        "trigger_cursors",
        "runs",
    ] {
        let mut q = Sql::new();
        q.push("DELETE FROM ")
            .push(table)
            .push(" WHERE campaign_id IN (SELECT id FROM campaigns WHERE name = ")
            .bind(campaign.to_string())
            .push(")");
        db.conn.execute_raw(q.build(db.backend())).await?;
    }
    Ok(())
}

/// Trigger cursors: a daemon writes one per triggered campaign it has seen.
pub async fn trigger_cursors(db: &Db) -> Result<i64, DbErr> {
    count(db, text("SELECT COUNT(*) FROM trigger_cursors")).await
}

/// Messages in all, and those still `planned` or `sending`.
pub async fn message_counts(db: &Db) -> Result<(i64, i64), DbErr> {
    let total = count(db, text("SELECT COUNT(*) FROM messages")).await?;
    let pending = count(
        db,
        text("SELECT COUNT(*) FROM messages WHERE status IN ('planned', 'sending')"),
    )
    .await?;
    Ok((total, pending))
}

/// For each triggered message sent: from its event's arrival to the
/// provider's acceptance (ms), in no order.
pub async fn event_to_send_ms(db: &Db) -> Result<Vec<i64>, DbErr> {
    let q = text(
        "SELECT m.sent_at - e.received_at FROM messages m JOIN events e ON e.id = m.trigger_id WHERE m.sent_at IS NOT NULL",
    );
    let rows = db.conn.query_all_raw(q.build(db.backend())).await?;
    Ok(rows
        .iter()
        .filter_map(|r| r.try_get_by_index::<i64>(0).ok())
        .collect())
}

/// `n` contacts (ids 1..=n, `b{i}@example.com`), each with one email
/// delivered a day before `now` by run 1 of campaign 1 (`bench`), message
/// id = contact id: what the tracking server's opens bench opens.
pub async fn delivered_messages(db: &Db, n: i64, now: i64) -> Result<(), DbErr> {
    let day_ago = now - 86_400_000;
    exec(db, &format!("INSERT INTO campaigns (id, name, kind, topic, fingerprint, created_at, updated_at) VALUES (1, 'bench', 'marketing', NULL, 'f', {now}, {now})")).await?;
    exec(db, &format!("INSERT INTO runs (id, campaign_id, scheduled_at, now_at, state, origin, fingerprint, created_at) VALUES (1, 1, {day_ago}, {day_ago}, 'done', 'manual', 'f', {now})")).await?;
    for start in (1..=n).step_by(1000) {
        let end = (start + 999).min(n);
        let contacts: Vec<String> = (start..=end)
            .map(|i| format!("({i}, 'b{i}', 'b{i}@example.com', '{{}}', {now}, {now})"))
            .collect();
        exec(db, &format!("INSERT INTO contacts (id, external_id, email, attrs, created_at, updated_at) VALUES {}", contacts.join(","))).await?;
        let msgs: Vec<String> = (start..=end)
            .map(|i| format!("({i}, 1, 1, {i}, 0, 'a', 'email', 'b{i}@example.com', {day_ago}, 'delivered', 1, {day_ago}, {day_ago}, 0, 0, 0, {now}, {now})"))
            .collect();
        exec(db, &format!("INSERT INTO messages (id, run_id, campaign_id, contact_id, step, arm, channel, address, send_at, status, attempts, sent_at, delivered_at, open_count, click_count, revenue, created_at, updated_at) VALUES {}", msgs.join(","))).await?;
    }
    Ok(())
}

/// Opens recorded on all messages.
pub async fn total_opens(db: &Db) -> Result<i64, DbErr> {
    count(
        db,
        text("SELECT CAST(SUM(open_count) AS BIGINT) FROM messages"),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_db::on_both_databases;

    /// 2026-11-30T00:00:00Z.
    const NOW: i64 = 1_795_996_800_000;

    fn contact(id: i64) -> BenchContact {
        BenchContact {
            id,
            email: Some(format!("c{id}@example.com")),
            phone: None,
            timezone: "Asia/Shanghai",
            locale: "zh-CN",
            attrs: "{\"region\": \"guangdong\"}".into(),
            tags: None,
            consent_sms: false,
            first_seen_at: None,
            created_at: NOW - 400 * DAY_MS,
        }
    }

    fn purchase(contact_id: i64, days_ago: i64) -> BenchEvent {
        BenchEvent {
            contact_id,
            name: "order_placed",
            at: NOW - days_ago * DAY_MS,
            value: Some(20.0),
            sku: Some(7),
        }
    }

    /// The loader writes what the generator made (COPY or INSERTs), the
    /// reference query reads it, and the counts the benches wait on see it.
    async fn generated_rows_load_and_read_back(db: &Db) {
        let contacts: Vec<BenchContact> = (1..=3).map(contact).collect();
        // Contact 1 bought 100 and 120 days ago: a lapsed buyer; contact 3
        // bought before the year the question looks at.
        let events = vec![
            purchase(1, 100),
            purchase(1, 120),
            purchase(2, 10),
            purchase(3, 500),
        ];
        load_rows(db, &contacts, &events).await.unwrap();
        reset_contact_ids(db).await.unwrap();
        analyze(db).await.unwrap();
        assert_eq!(live_contacts(db).await.unwrap(), 3);
        let mut q = Sql::new();
        q.push(&hand_written(db.backend(), "lapsed_buyers", NOW));
        assert_eq!(answer(db, q).await.unwrap(), vec!["1".to_string()]);
        assert_eq!(message_counts(db).await.unwrap(), (0, 0));
        assert_eq!(trigger_cursors(db).await.unwrap(), 0);
    }

    /// The opens bench's fixture: n delivered messages of campaign `bench`,
    /// no opens yet; clearing the campaign's runs removes its messages.
    async fn the_opens_fixture_and_clearing_a_campaign(db: &Db) {
        delivered_messages(db, 3, NOW).await.unwrap();
        assert_eq!(message_counts(db).await.unwrap(), (3, 0));
        assert_eq!(total_opens(db).await.unwrap(), 0);
        clear_entry_state(db).await.unwrap();
        clear_campaign_runs(db, "bench").await.unwrap();
        assert_eq!(message_counts(db).await.unwrap(), (0, 0));
        assert_eq!(live_contacts(db).await.unwrap(), 3);
    }

    on_both_databases!(
        generated_rows_load_and_read_back,
        the_opens_fixture_and_clearing_a_campaign
    );
}
