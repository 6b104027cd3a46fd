//! `herald import`: bad rows are named by line and reason, good rows are
//! kept, exit 1; imported goal events convert the messages whose window
//! holds them, and importing them again changes nothing.

use herald_domain::assign::unit_hash;
use herald_storage::Db;
use herald_tests::{Backend, Project};
use sea_orm::{ConnectionTrait, Statement};

use crate::send::start_sink;
use crate::setup;

async fn scalar(db: &Db, sql: &str) -> Vec<Vec<String>> {
    let rows = herald_storage::test_support::conn(db)
        .query_all_raw(Statement::from_string(db.backend(), sql.to_string()))
        .await
        .expect("query");
    rows.iter()
        .map(|r| {
            (0..)
                .map_while(|i| {
                    r.try_get_by_index::<Option<String>>(i)
                        .map(|v| v.unwrap_or_default())
                        .or_else(|_| {
                            r.try_get_by_index::<Option<i64>>(i)
                                .map(|v| v.map_or(String::new(), |n| n.to_string()))
                        })
                        .or_else(|_| {
                            r.try_get_by_index::<Option<bool>>(i)
                                .map(|v| v.map_or(String::new(), |b| b.to_string()))
                        })
                        .ok()
                })
                .collect()
        })
        .collect()
}

async fn contacts_with_bad_rows(backend: Backend) {
    let Some((p, db)) = setup(backend).await else {
        return;
    };
    p.write(
        "contacts.csv",
        "external_id,email,phone,consent_sms,tags,region,orders\n\
         c1,ann@example.com,+8613800138000,true,vip;app,guangdong,3\n\
         c2,not-an-email,,,,,\n\
         c3,cat@example.com,12345,,,,\n\
         c4,dan@example.com,,maybe,,,\n\
         ,eve@example.com,,,,,\n\
         c6,fay@example.com,,,,zhejiang,02134\n",
    );
    let run = p.herald(&db, &["import", "contacts", "contacts.csv"]);
    run.expect_code(1);
    let err = run.stderr();
    assert!(err.contains("contacts.csv:3: column `email`"), "{err}");
    assert!(err.contains("contacts.csv:4: column `phone`"), "{err}");
    assert!(
        err.contains("contacts.csv:5: column `consent_sms`"),
        "{err}"
    );
    assert!(
        err.contains("contacts.csv:6: `external_id` is missing"),
        "{err}"
    );
    assert!(
        run.stdout().contains("imported 2 contacts"),
        "{}",
        run.stdout()
    );

    let store = Db::connect(&db.url).await.expect("connect");
    let rows = scalar(
        &store,
        "SELECT external_id, email, phone FROM contacts ORDER BY external_id",
    )
    .await;
    assert_eq!(
        rows,
        vec![
            vec!["c1", "ann@example.com", "+8613800138000"],
            vec!["c6", "fay@example.com", ""]
        ]
    );

    // An empty cell keeps the stored value; attrs merge shallowly; tags are replaced when given.
    p.write("more.ndjson", "{\"external_id\":\"c1\",\"attrs\":{\"tier\":\"gold\"},\"tags\":[\"app\"]}\n{\"external_id\":\"c1\",\"locale\":\"zh-CN\"}\nnot json\n");
    let run = p.herald(&db, &["import", "contacts", "more.ndjson"]);
    run.expect_code(1);
    assert!(
        run.stderr().contains("more.ndjson:3: invalid JSON"),
        "{}",
        run.stderr()
    );
    let attrs = scalar(
        &store,
        if backend == Backend::Postgres {
            "SELECT attrs::text, tags::text, locale, email FROM contacts WHERE external_id = 'c1'"
        } else {
            "SELECT attrs, tags, locale, email FROM contacts WHERE external_id = 'c1'"
        },
    )
    .await;
    let parsed: serde_json::Value = serde_json::from_str(&attrs[0][0]).expect("attrs json");
    assert_eq!(
        parsed,
        serde_json::json!({"region": "guangdong", "orders": 3, "tier": "gold"})
    );
    let tags: serde_json::Value = serde_json::from_str(&attrs[0][1]).expect("tags json");
    assert_eq!(tags, serde_json::json!(["app"]));
    assert_eq!(attrs[0][2], "zh-CN");
    assert_eq!(attrs[0][3], "ann@example.com");
    // A ZIP-like cell stays text; canonical numbers become numbers.
    let zip = scalar(
        &store,
        if backend == Backend::Postgres {
            "SELECT attrs->>'orders' FROM contacts WHERE external_id = 'c6'"
        } else {
            "SELECT json_extract(attrs, '$.orders') FROM contacts WHERE external_id = 'c6'"
        },
    )
    .await;
    assert_eq!(zip[0][0], "02134");
    db.drop_db().await;
}

async fn events_are_idempotent_and_create_bare_contacts(backend: Backend) {
    let Some((p, db)) = setup(backend).await else {
        return;
    };
    p.write(
        "events.csv",
        "external_id,name,at,value,event_id,sku\n\
         u1,order_placed,2026-11-01T10:00:00+08:00,99.5,e1,tea\n\
         u1,order_placed,2026-11-02,,e2,\n\
         u2,app_open,yesterday,,e3,\n\
         u2,order_placed,2026-11-03T00:00:00Z,abc,e4,\n",
    );
    let run = p.herald(&db, &["import", "events", "events.csv"]);
    run.expect_code(1);
    assert!(
        run.stderr().contains("events.csv:4: column `at`"),
        "{}",
        run.stderr()
    );
    assert!(
        run.stderr().contains("events.csv:5: column `value`"),
        "{}",
        run.stderr()
    );
    // Importing the same file again adds nothing: event ids deduplicate.
    p.herald(&db, &["import", "events", "events.csv"])
        .expect_code(1);
    let store = Db::connect(&db.url).await.expect("connect");
    let rows = scalar(&store, "SELECT c.external_id, COUNT(*), MIN(e.at) FROM events e JOIN contacts c ON c.id = e.contact_id GROUP BY c.external_id").await;
    assert_eq!(
        rows,
        vec![vec!["u1".to_string(), "2".into(), "1793498400000".into()]]
    );
    let first_seen = scalar(
        &store,
        "SELECT first_seen_at FROM contacts WHERE external_id = 'u1'",
    )
    .await;
    assert_eq!(first_seen[0][0], "1793498400000");
    db.drop_db().await;
}

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;
/// The `promo` campaign's holdout.
const HOLDOUT: f64 = 0.3;

/// SMTP to `port`; `promo` reaches Guangdong by email, with a 3-day
/// `order_placed` goal and a holdout; twelve contacts there, one elsewhere.
fn promo_project(p: &Project, port: u16) {
    p.write(
        "config/herald.toml",
        &format!(
            "[channels.email]\nprovider = \"smtp\"\nhost = \"127.0.0.1\"\nport = {port}\nconcurrency = 2\n"
        ),
    );
    p.write(
        "config/campaigns/promo.toml",
        &format!(
            "name = \"promo\"\nwhere = 'attrs.region == \"guangdong\"'\nchannels = [\"email\"]\ngoal = {{ event = \"order_placed\", within = \"3d\" }}\nholdout = {HOLDOUT}\n\n[[variants]]\nname = \"a\"\nemail = {{ subject = \"Hi\", template = \"promo.email.hbs\" }}\n"
        ),
    );
    p.write("templates/promo.email.hbs", "<p>New in store.</p>\n");
    let mut csv = String::from("external_id,email,region\n");
    for i in 1..=12 {
        csv.push_str(&format!("k{i},k{i}@example.com,guangdong\n"));
    }
    csv.push_str("far,far@example.com,beijing\n");
    p.write("contacts.csv", &csv);
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .expect("instant")
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

/// (external_id, status, send_at, converted_at, revenue) of every message, by external_id.
async fn outcomes(db: &Db) -> Vec<(String, String, i64, Option<i64>, f64)> {
    let rows = herald_storage::test_support::conn(db)
        .query_all_raw(Statement::from_string(
            db.backend(),
            "SELECT c.external_id, m.status, m.send_at, m.converted_at, m.revenue FROM messages m JOIN contacts c ON c.id = m.contact_id ORDER BY c.external_id".to_string(),
        ))
        .await
        .expect("query");
    rows.iter()
        .map(|r| {
            (
                r.try_get_by_index(0).expect("eid"),
                r.try_get_by_index(1).expect("status"),
                r.try_get_by_index(2).expect("send_at"),
                r.try_get_by_index(3).expect("converted_at"),
                r.try_get_by_index(4).expect("revenue"),
            )
        })
        .collect()
}

async fn count(db: &Db, sql: &str) -> i64 {
    let rows = herald_storage::test_support::conn(db)
        .query_all_raw(Statement::from_string(db.backend(), sql.to_string()))
        .await
        .expect("query");
    rows[0].try_get_by_index(0).expect("count")
}

async fn imported_goal_events_convert_messages_once(backend: Backend) {
    let Some((p, db)) = setup(backend).await else {
        return;
    };
    let sink = start_sink().await;
    promo_project(&p, sink.addr().port());
    p.herald(&db, &["import", "contacts", "contacts.csv"])
        .expect_code(0);
    p.herald(&db, &["send", "promo"]).expect_code(0);

    let store = Db::connect(&db.url).await.expect("connect");
    let before = outcomes(&store).await;
    assert_eq!(before.len(), 12, "one message per Guangdong contact");
    let held: Vec<&str> = before
        .iter()
        .filter(|m| m.1 == "held_out")
        .map(|m| m.0.as_str())
        .collect();
    let sent: Vec<&str> = before
        .iter()
        .filter(|m| m.1 == "delivered")
        .map(|m| m.0.as_str())
        .collect();
    // The arms follow SPEC section 5's formula, so the test knows them too.
    for m in &before {
        assert_eq!(
            m.1 == "held_out",
            unit_hash("promo", &m.0) < HOLDOUT,
            "{m:?}"
        );
    }
    assert!(
        !held.is_empty() && sent.len() >= 5,
        "held out {held:?}, sent {sent:?}"
    );
    assert!(before.iter().all(|m| m.3.is_none() && m.4 == 0.0));
    let send_at = |eid: &str| before.iter().find(|m| m.0 == eid).expect("message").2;

    let (s1, s2, s3, s4, s5, h) = (sent[0], sent[1], sent[2], sent[3], sent[4], held[0]);
    let ev = |eid: &str, name: &str, at: i64, value: f64, id: &str| {
        format!(
            "{{\"external_id\":\"{eid}\",\"name\":\"{name}\",\"at\":\"{}\",\"value\":{value},\"event_id\":\"{id}\"}}\n",
            rfc3339(at)
        )
    };
    let mut file = String::new();
    // s1: two orders in the window: converted at the first, revenue of both.
    file += &ev(s1, "order_placed", send_at(s1) + 2 * HOUR, 5.5, "e1");
    file += &ev(s1, "order_placed", send_at(s1) + HOUR, 10.0, "e2");
    // s2: before the send and at the very instant of it: the window is (send_at, send_at + 3d].
    file += &ev(s2, "order_placed", send_at(s2) - HOUR, 7.0, "e3");
    file += &ev(s2, "order_placed", send_at(s2), 8.0, "e4");
    // s3: after the window; an app open inside it is not the goal.
    file += &ev(s3, "order_placed", send_at(s3) + 4 * DAY, 9.0, "e5");
    file += &ev(s3, "app_open", send_at(s3) + HOUR, 0.0, "e6");
    // s4: exactly at the window's end still counts.
    file += &ev(s4, "order_placed", send_at(s4) + 3 * DAY, 3.0, "e7");
    // The held-out contact converts too: intention to treat.
    file += &ev(h, "order_placed", send_at(h) + 30 * 60_000, 20.0, "e8");
    // Someone herald never messaged: a bare contact, no conversion anywhere.
    file += &ev("walk-in", "order_placed", send_at(s1) + HOUR, 50.0, "e9");
    p.write("events.ndjson", &file);
    let run = p.herald(&db, &["import", "events", "events.ndjson"]);
    run.expect_code(0);
    assert!(
        run.stdout().contains("imported 9 events"),
        "{}",
        run.stdout()
    );

    let after = outcomes(&store).await;
    let outcome = |eid: &str| {
        let m = after.iter().find(|m| m.0 == eid).expect("message");
        (m.3.map(|t| t - m.2), m.4)
    };
    assert_eq!(outcome(s1), (Some(HOUR), 15.5));
    assert_eq!(outcome(s2), (None, 0.0));
    assert_eq!(outcome(s3), (None, 0.0));
    assert_eq!(outcome(s4), (Some(3 * DAY), 3.0));
    assert_eq!(outcome(h), (Some(30 * 60_000), 20.0));
    assert_eq!(outcome(s5), (None, 0.0));
    let converted: Vec<&str> = after
        .iter()
        .filter(|m| m.3.is_some())
        .map(|m| m.0.as_str())
        .collect();
    assert_eq!(converted.len(), 3, "{converted:?}");

    // The same file again: event ids deduplicate, so nothing changes.
    p.herald(&db, &["import", "events", "events.ndjson"])
        .expect_code(0);
    assert_eq!(outcomes(&store).await, after);
    assert_eq!(count(&store, "SELECT COUNT(*) FROM events").await, 9);

    // Without event ids a second import stores the events twice, and
    // attribution counts what is stored: revenue follows the events table.
    p.write(
        "late.csv",
        &format!(
            "external_id,name,at,value\n{s5},order_placed,{},4\n",
            rfc3339(send_at(s5) + DAY)
        ),
    );
    p.herald(&db, &["import", "events", "late.csv"])
        .expect_code(0);
    assert_eq!(outcome_of(&store, s5).await, (Some(DAY), 4.0));
    p.herald(&db, &["import", "events", "late.csv"])
        .expect_code(0);
    assert_eq!(outcome_of(&store, s5).await, (Some(DAY), 8.0));
    assert_eq!(count(&store, "SELECT COUNT(*) FROM events").await, 11);
    let others: Vec<_> = outcomes(&store)
        .await
        .into_iter()
        .filter(|m| m.0 != s5)
        .collect();
    let expected: Vec<_> = after.into_iter().filter(|m| m.0 != s5).collect();
    assert_eq!(others, expected, "only s5's message changed");
    db.drop_db().await;
}

/// The conversion (time after send_at) and revenue of `eid`'s message.
async fn outcome_of(db: &Db, eid: &str) -> (Option<i64>, f64) {
    let m = outcomes(db)
        .await
        .into_iter()
        .find(|m| m.0 == eid)
        .expect("message");
    (m.3.map(|t| t - m.2), m.4)
}

/// A second import that mixes stored and new contacts, moves a push token to
/// another contact and adds one: the same rows on both databases, whichever
/// way PostgreSQL writes the batch (plain inserts until a contact is already
/// stored, then upserts).
async fn push_tokens_follow_their_latest_contact(backend: Backend) {
    let Some((p, db)) = setup(backend).await else {
        return;
    };
    p.write(
        "first.csv",
        "external_id,email,push_token,push_platform,tier\n\
         c1,a@example.com,tok-1,android,gold\n\
         c2,b@example.com,tok-2,ios,\n",
    );
    p.herald(&db, &["import", "contacts", "first.csv"])
        .expect_code(0);
    p.write(
        "second.ndjson",
        "{\"external_id\":\"c3\",\"push_token\":\"tok-1\"}\n\
         {\"external_id\":\"c2\",\"push_token\":\"tok-3\",\"attrs\":{\"tier\":\"silver\"}}\n\
         {\"external_id\":\"c1\",\"attrs\":{\"seen\":true}}\n",
    );
    p.herald(&db, &["import", "contacts", "second.ndjson"])
        .expect_code(0);
    // Only new contacts, but one takes a stored token: PostgreSQL's plain
    // insert meets the token's unique key and the batch is upserted instead.
    p.write(
        "third.csv",
        "external_id,push_token,push_platform\nc4,tok-2,android\nc5,tok-5,ios\n",
    );
    p.herald(&db, &["import", "contacts", "third.csv"])
        .expect_code(0);
    let store = Db::connect(&db.url).await.expect("connect");
    let tokens = scalar(
        &store,
        "SELECT t.token, c.external_id, COALESCE(t.platform, '') FROM push_tokens t JOIN contacts c ON c.id = t.contact_id ORDER BY t.token",
    )
    .await;
    assert_eq!(
        tokens,
        vec![
            vec!["tok-1", "c3", "android"],
            vec!["tok-2", "c4", "android"],
            vec!["tok-3", "c2", ""],
            vec!["tok-5", "c5", "ios"]
        ]
    );
    let attrs = scalar(
        &store,
        if backend == Backend::Postgres {
            "SELECT external_id, attrs::text, COALESCE(email, '') FROM contacts ORDER BY external_id"
        } else {
            "SELECT external_id, attrs, COALESCE(email, '') FROM contacts ORDER BY external_id"
        },
    )
    .await;
    let parsed: Vec<(String, serde_json::Value, String)> = attrs
        .into_iter()
        .map(|r| {
            (
                r[0].clone(),
                serde_json::from_str(&r[1]).expect("attrs"),
                r[2].clone(),
            )
        })
        .collect();
    assert_eq!(
        parsed,
        vec![
            (
                "c1".into(),
                serde_json::json!({"tier": "gold", "seen": true}),
                "a@example.com".into()
            ),
            (
                "c2".into(),
                serde_json::json!({"tier": "silver"}),
                "b@example.com".into()
            ),
            ("c3".into(), serde_json::json!({}), String::new()),
            ("c4".into(), serde_json::json!({}), String::new()),
            ("c5".into(), serde_json::json!({}), String::new()),
        ]
    );
    db.drop_db().await;
}

/// A file that repeats an external id: both rows are merged as before (the
/// later row's values win, its empty cells keep the earlier row's), the
/// import succeeds, and stderr says so with both line numbers, in CSV and
/// NDJSON alike.
async fn a_repeated_external_id_is_warned_of_with_both_lines(backend: Backend) {
    let Some((p, db)) = setup(backend).await else {
        return;
    };
    p.write(
        "contacts.csv",
        "external_id,email,region\n\
         c1,ann@example.com,guangdong\n\
         c2,bob@example.com,\n\
         c3,cat@example.com,\n\
         c1,ann@work.example.com,\n\
         c1,,zhejiang\n",
    );
    let run = p.herald(&db, &["import", "contacts", "contacts.csv"]);
    run.expect_code(0);
    let err = run.stderr();
    assert!(
        err.contains(
            "contacts.csv:5: warning: external_id `c1` is also on line 2: line 5 is kept (its empty cells keep line 2's values)"
        ),
        "{err}"
    );
    assert!(
        err.contains("contacts.csv:6: warning: external_id `c1` is also on line 5: line 6 is kept"),
        "{err}"
    );
    assert_eq!(err.matches("warning:").count(), 2, "{err}");
    assert!(run.stdout().contains("; 2 warning(s)"), "{}", run.stdout());
    let store = Db::connect(&db.url).await.expect("connect");
    let rows = scalar(
        &store,
        if backend == Backend::Postgres {
            "SELECT external_id, email, attrs->>'region' FROM contacts ORDER BY external_id"
        } else {
            "SELECT external_id, email, json_extract(attrs, '$.region') FROM contacts ORDER BY external_id"
        },
    )
    .await;
    assert_eq!(
        rows,
        vec![
            vec!["c1", "ann@work.example.com", "zhejiang"],
            vec!["c2", "bob@example.com", ""],
            vec!["c3", "cat@example.com", ""],
        ]
    );

    p.write(
        "more.ndjson",
        "{\"external_id\":\"c9\"}\n\n{\"external_id\":\"c8\"}\n{\"external_id\":\"c9\",\"locale\":\"en\"}\n",
    );
    let run = p.herald(&db, &["import", "contacts", "more.ndjson"]);
    run.expect_code(0);
    assert!(
        run.stderr()
            .contains("more.ndjson:4: warning: external_id `c9` is also on line 1: line 4 is kept"),
        "{}",
        run.stderr()
    );
    // A contact already stored is no repeat: only the file's own rows count.
    p.write("again.csv", "external_id,email\nc1,ann@example.com\n");
    let run = p.herald(&db, &["import", "contacts", "again.csv"]);
    run.expect_code(0);
    assert!(!run.stderr().contains("warning"), "{}", run.stderr());
    db.drop_db().await;
}

on_both_databases!(
    a_repeated_external_id_is_warned_of_with_both_lines,
    push_tokens_follow_their_latest_contact,
    contacts_with_bad_rows,
    events_are_idempotent_and_create_bare_contacts,
    imported_goal_events_convert_messages_once
);
