//! Segment filters on both databases: every operator and field against a
//! small data set with answers worked out by hand, and a property test that
//! draws random data, filters and `[rfm]`/`[lifecycle]` settings and checks
//! that `audience_page` returns exactly the contacts the in-memory evaluator
//! accepts. The reference facts (lifecycle, RFM, channels) are computed here
//! from SPEC's rules, independently of the SQL.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};

use herald_domain::config::{LifecycleConfig, RfmConfig};
use herald_domain::duration::Span;
use herald_domain::segment::{EventFact, Facts, Lifecycle, MS_PER_DAY, Rfm, evaluate, parse};
use herald_domain::types::Channel;
use herald_engine::store::Store;
use herald_storage::Db;
use herald_storage::segment_sql::{SegmentContext, count_sql};
use herald_storage::sql::Sql;
use herald_storage::store::SqlStore;
use herald_tests::{Backend, TestDb};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use sea_orm::{ConnectionTrait, Value};
use serde_json::{Value as Json, json};

/// 2026-01-01T00:00:00Z: the snapshot instant of every query here.
const NOW: i64 = 1_767_225_600_000;
const DAY: i64 = MS_PER_DAY;
/// Random data sets per database; each is checked against several filters.
const CASES: u32 = 500;
/// Filters checked against each random data set.
const FILTERS_PER_CASE: usize = 3;
/// The SQL injection attempt every text field and tag is tried with.
const INJECTION: &str = "'; DROP TABLE contacts; --";

on_both_databases!(
    every_operator_and_field,
    injection_matches_literally,
    rfm_lifecycle_and_overdue_by_hand,
    sql_agrees_with_the_evaluator,
);

// ---------------------------------------------------------------------------
// Test data and the reference semantics.

#[derive(Debug, Clone)]
struct TEvent {
    name: String,
    at: i64,
    value: Option<f64>,
}

#[derive(Debug, Clone)]
struct TContact {
    email: Option<String>,
    phone: Option<String>,
    timezone: Option<String>,
    locale: Option<String>,
    attrs: Json,
    tags: Option<Vec<String>>,
    consent_email: Option<bool>,
    consent_sms: Option<bool>,
    consent_push: Option<bool>,
    /// A push token, valid or invalidated.
    push: Option<bool>,
    created_at: i64,
    forgotten: bool,
    events: Vec<TEvent>,
}

impl Default for TContact {
    fn default() -> Self {
        Self {
            email: None,
            phone: None,
            timezone: None,
            locale: None,
            attrs: json!({}),
            tags: None,
            consent_email: None,
            consent_sms: None,
            consent_push: None,
            push: None,
            created_at: NOW - 1000 * DAY,
            forgotten: false,
            events: vec![],
        }
    }
}

#[derive(Debug, Clone)]
struct TSuppression {
    channel: &'static str,
    /// Contact index.
    contact: Option<usize>,
    address: Option<String>,
    topic: Option<String>,
}

#[derive(Debug, Clone, Default)]
struct Dataset {
    contacts: Vec<TContact>,
    suppressions: Vec<TSuppression>,
}

fn ev(name: &str, days_ago: f64, value: Option<f64>) -> TEvent {
    TEvent {
        name: name.into(),
        at: NOW - (days_ago * DAY as f64) as i64,
        value,
    }
}

/// Events named `name` at or before `now`.
fn past<'a>(c: &'a TContact, name: &'a str, now: i64) -> impl Iterator<Item = &'a TEvent> + 'a {
    c.events
        .iter()
        .filter(move |e| e.name == name && e.at <= now)
}

/// Whole days since the first event (at or before now) or creation, whichever came first.
fn first_seen_days(c: &TContact, now: i64) -> i64 {
    let first_event = c.events.iter().filter(|e| e.at <= now).map(|e| e.at).min();
    let first = first_event.map_or(c.created_at, |f| f.min(c.created_at));
    (now - first).div_euclid(DAY)
}

/// SPEC's lifecycle: new first (first seen less than `new` days ago), then the days since the
/// last activity event in half-open ranges; never active is churned.
fn lifecycle(c: &TContact, cfg: &LifecycleConfig, now: i64) -> Lifecycle {
    if first_seen_days(c, now) < i64::from(cfg.new) {
        return Lifecycle::New;
    }
    let last = c
        .events
        .iter()
        .filter(|e| e.at <= now && cfg.activity_events.contains(&e.name))
        .map(|e| e.at)
        .max();
    let Some(last) = last else {
        return Lifecycle::Churned;
    };
    let days = (now - last).div_euclid(DAY);
    if days < i64::from(cfg.active) {
        Lifecycle::Active
    } else if days < i64::from(cfg.silent) {
        Lifecycle::Silent
    } else if days < i64::from(cfg.dormant) {
        Lifecycle::Dormant
    } else {
        Lifecycle::Churned
    }
}

/// Score 1..5 of `v` on ascending edges that are inclusive upper bounds.
fn score_up(v: f64, edges: &[f64; 4]) -> u8 {
    edges
        .iter()
        .position(|e| v <= *e)
        .map_or(5, |i| i as u8 + 1)
}

/// A composite measure's value for contact `c` (None: missing, ranked lowest).
fn measure(key: &str, c: &TContact, cfg: &RfmConfig, now: i64) -> Option<f64> {
    let since = now.saturating_sub(cfg.window.millis());
    let in_window = |e: &str| {
        c.events
            .iter()
            .filter(|x| x.name == e && x.at <= now && x.at > since)
            .collect::<Vec<_>>()
    };
    if let Some(e) = key.strip_prefix("sum:") {
        Some(in_window(e).iter().filter_map(|x| x.value).sum())
    } else if let Some(e) = key.strip_prefix("count:") {
        Some(in_window(e).len() as f64)
    } else {
        let path = key.strip_prefix("attrs.")?;
        let mut cur = &c.attrs;
        for k in path.split('.') {
            cur = cur.as_object()?.get(k)?;
        }
        cur.as_f64().filter(|_| cur.is_number())
    }
}

/// RFM of every contact, per SPEC: R on all history, F and M in the window, no purchase
/// means no RFM; the composite M ranks each measure among the (not forgotten) buyers:
/// rank = 100 * (buyers with a lower value) / (buyers - 1), missing lowest, 0 for one buyer.
fn rfm_all(data: &Dataset, cfg: &RfmConfig, now: i64) -> Vec<Option<Rfm>> {
    let since = now.saturating_sub(cfg.window.millis());
    let mut out: Vec<Option<Rfm>> = data
        .contacts
        .iter()
        .map(|c| {
            let last = past(c, &cfg.purchase_event, now).map(|e| e.at).max()?;
            let window: Vec<&TEvent> = past(c, &cfg.purchase_event, now)
                .filter(|e| e.at > since)
                .collect();
            let f_count = window.len() as i64;
            let m_value: f64 = window.iter().filter_map(|e| e.value).sum();
            let r_days = (now - last).div_euclid(DAY);
            let r = cfg
                .recency_days
                .iter()
                .position(|e| r_days <= i64::from(*e))
                .map_or(1, |i| 5 - i as u8);
            Some(Rfm {
                r,
                f: score_up(f_count as f64, &cfg.frequency),
                m: score_up(m_value, &cfg.monetary),
                r_days,
                f_count,
                m_value,
            })
        })
        .collect();
    if let Some(weights) = &cfg.monetary_weights {
        let total: f64 = weights.values().sum();
        let buyers: Vec<usize> = (0..data.contacts.len())
            .filter(|&i| out[i].is_some() && !data.contacts[i].forgotten)
            .collect();
        let n = buyers.len();
        let edges = cfg.monetary_composite.unwrap_or([20.0, 40.0, 60.0, 80.0]);
        for &i in &buyers {
            let mut m = 0.0;
            for (key, w) in weights {
                let value = |j: usize| measure(key, &data.contacts[j], cfg, now);
                let mine = value(i);
                // None sorts below every number, as NULLS FIRST does.
                let lower = buyers
                    .iter()
                    .filter(|&&j| match (value(j), mine) {
                        (None, Some(_)) => true,
                        (Some(a), Some(b)) => a < b,
                        _ => false,
                    })
                    .count();
                let rank = if n > 1 {
                    lower as f64 / (n - 1) as f64
                } else {
                    0.0
                };
                m += (w / total) * (rank * 100.0);
            }
            if let Some(r) = out[i].as_mut() {
                r.m = score_up(m, &edges);
            }
        }
    }
    out
}

/// The channels contact `i` can be reached on: address, consent, no suppression.
fn channels(data: &Dataset, i: usize) -> BTreeSet<Channel> {
    let c = &data.contacts[i];
    let suppressed = |ch: &str, addr: Option<&String>| {
        data.suppressions.iter().any(|s| {
            s.topic.is_none()
                && (s.channel == ch || s.channel == "any")
                && (s.contact == Some(i) || (addr.is_some() && s.address.as_ref() == addr))
        })
    };
    let mut out = BTreeSet::new();
    if c.email.is_some() && c.consent_email != Some(false) && !suppressed("email", c.email.as_ref())
    {
        out.insert(Channel::Email);
    }
    if c.phone.is_some() && c.consent_sms == Some(true) && !suppressed("sms", c.phone.as_ref()) {
        out.insert(Channel::Sms);
    }
    if c.push == Some(true) && c.consent_push != Some(false) && !suppressed("push", None) {
        out.insert(Channel::Push);
    }
    out
}

/// The facts of every contact at `now`.
fn facts(data: &Dataset, rfm: &RfmConfig, life: &LifecycleConfig, now: i64) -> Vec<Facts> {
    let scores = rfm_all(data, rfm, now);
    data.contacts
        .iter()
        .enumerate()
        .map(|(i, c)| Facts {
            now_ms: now,
            email: c.email.clone(),
            phone: c.phone.clone(),
            timezone: c.timezone.clone(),
            locale: c.locale.clone(),
            attrs: c.attrs.clone(),
            tags: c.tags.clone().unwrap_or_default(),
            channel_ok: channels(data, i),
            lifecycle: Some(lifecycle(c, life, now)),
            rfm: scores[i],
            first_seen_days: first_seen_days(c, now),
            events: c
                .events
                .iter()
                .map(|e| EventFact {
                    name: e.name.clone(),
                    at_ms: e.at,
                    value: e.value,
                })
                .collect(),
        })
        .collect()
}

// ---------------------------------------------------------------------------
// The database side.

async fn connect(backend: Backend) -> Option<(tempfile::TempDir, TestDb, Db)> {
    let dir = tempfile::tempdir().expect("temp dir");
    let test_db = TestDb::new(backend, dir.path()).await?;
    let db = Db::connect(&test_db.url).await.expect("connect");
    Some((dir, test_db, db))
}

async fn exec(db: &Db, q: Sql) {
    herald_storage::test_support::conn(db)
        .execute_raw(q.build(db.backend()))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

fn opt_json(v: Option<Json>) -> Value {
    Value::Json(v.map(Box::new))
}

/// Replaces everything in the contact tables with `data`; contact `i` gets id `i + 1`.
async fn seed(db: &Db, data: &Dataset) {
    for t in ["events", "push_tokens", "suppressions", "contacts"] {
        let mut q = Sql::new();
        q.push(&format!("DELETE FROM {t}"));
        exec(db, q).await;
    }
    if data.contacts.is_empty() {
        return;
    }
    let b = db.backend();
    let mut q = Sql::new();
    q.push("INSERT INTO contacts (id, external_id, email, phone, timezone, locale, attrs, tags, consent_email, consent_sms, consent_push, first_seen_at, created_at, updated_at, forgotten_at) VALUES ");
    for (i, c) in data.contacts.iter().enumerate() {
        if i > 0 {
            q.push(", ");
        }
        // As the importer keeps it: the earliest event ever, future ones included.
        let first_seen = c.events.iter().map(|e| e.at).min();
        q.push("(")
            .bind(i as i64 + 1)
            .push(", ")
            .bind(format!("x{i}"));
        q.push(", ").bind_as(b, c.email.clone(), "text");
        q.push(", ").bind_as(b, c.phone.clone(), "text");
        q.push(", ").bind_as(b, c.timezone.clone(), "text");
        q.push(", ").bind_as(b, c.locale.clone(), "text");
        q.push(", ").bind(opt_json(Some(c.attrs.clone())));
        q.push(", ")
            .bind_as(b, opt_json(c.tags.clone().map(Json::from)), "jsonb");
        q.push(", ").bind_as(b, c.consent_email, "boolean");
        q.push(", ").bind_as(b, c.consent_sms, "boolean");
        q.push(", ").bind_as(b, c.consent_push, "boolean");
        q.push(", ").bind_as(b, first_seen, "int8");
        q.push(", ")
            .bind(c.created_at)
            .push(", ")
            .bind(c.created_at);
        q.push(", ")
            .bind_as(b, c.forgotten.then_some(NOW - DAY), "int8")
            .push(")");
    }
    exec(db, q).await;
    let events: Vec<(usize, &TEvent)> = data
        .contacts
        .iter()
        .enumerate()
        .flat_map(|(i, c)| c.events.iter().map(move |e| (i, e)))
        .collect();
    if !events.is_empty() {
        let mut q = Sql::new();
        q.push("INSERT INTO events (contact_id, name, at, value, received_at) VALUES ");
        for (k, (i, e)) in events.iter().enumerate() {
            if k > 0 {
                q.push(", ");
            }
            q.push("(")
                .bind(*i as i64 + 1)
                .push(", ")
                .bind(e.name.clone());
            q.push(", ")
                .bind(e.at)
                .push(", ")
                .bind_as(b, e.value, "float8");
            q.push(", ").bind(e.at).push(")");
        }
        exec(db, q).await;
    }
    let tokens: Vec<(usize, bool)> = data
        .contacts
        .iter()
        .enumerate()
        .filter_map(|(i, c)| c.push.map(|valid| (i, valid)))
        .collect();
    if !tokens.is_empty() {
        let mut q = Sql::new();
        q.push("INSERT INTO push_tokens (contact_id, token, created_at, invalid_at) VALUES ");
        for (k, (i, valid)) in tokens.iter().enumerate() {
            if k > 0 {
                q.push(", ");
            }
            q.push("(")
                .bind(*i as i64 + 1)
                .push(", ")
                .bind(format!("tok{i}"));
            q.push(", ").bind(NOW).push(", ");
            q.bind_as(b, (!valid).then_some(NOW), "int8").push(")");
        }
        exec(db, q).await;
    }
    if !data.suppressions.is_empty() {
        let mut q = Sql::new();
        q.push("INSERT INTO suppressions (channel, address, contact_id, topic, reason, source, created_at) VALUES ");
        for (k, s) in data.suppressions.iter().enumerate() {
            if k > 0 {
                q.push(", ");
            }
            q.push("(").bind(s.channel).push(", ");
            q.bind_as(b, s.address.clone(), "text").push(", ");
            q.bind_as(b, s.contact.map(|i| i as i64 + 1), "int8")
                .push(", ");
            q.bind_as(b, s.topic.clone(), "text");
            q.push(", 'test', 'test', ").bind(NOW).push(")");
        }
        exec(db, q).await;
    }
}

/// Contact indexes `audience_page` returns for `src`, reading pages of `page` rows.
async fn audience(store: &SqlStore, src: &str, page: u32) -> Result<Vec<usize>, String> {
    let expr = parse(src).map_err(|e| format!("{src}: {e:?}"))?;
    let mut after = 0;
    let mut out = Vec::new();
    loop {
        let rows = store
            .audience_page(&expr, NOW, None, after, page, None)
            .await
            .map_err(|e| format!("{src}: {e}"))?;
        let Some(last) = rows.last() else { break };
        if rows.len() > page as usize {
            return Err(format!(
                "{src}: a page of {} rows, asked {page}",
                rows.len()
            ));
        }
        after = last.contact_id;
        out.extend(rows.iter().map(|m| m.contact_id as usize - 1));
    }
    Ok(out)
}

/// The number of contacts `count_sql` finds for `src`.
async fn count(store: &SqlStore, src: &str) -> Result<usize, String> {
    let expr = parse(src).map_err(|e| format!("{src}: {e:?}"))?;
    let ctx: SegmentContext<'_> = store.segment_context(NOW);
    let q = count_sql(&expr, &ctx).map_err(|e| e.to_string())?;
    let db = store.db();
    let rows = herald_storage::test_support::conn(db)
        .query_all_raw(q.build(db.backend()))
        .await
        .map_err(|e| format!("{src}: {e}"))?;
    let n: i64 = rows
        .first()
        .and_then(|r| r.try_get_by_index(0).ok())
        .ok_or("no count")?;
    Ok(n as usize)
}

/// The contacts (not forgotten) the evaluator accepts.
fn expected(data: &Dataset, facts: &[Facts], src: &str) -> Vec<usize> {
    let expr = parse(src).unwrap_or_else(|e| panic!("{src}: {e:?}"));
    (0..facts.len())
        .filter(|&i| !data.contacts[i].forgotten && evaluate(&expr, &facts[i]))
        .collect()
}

// ---------------------------------------------------------------------------
// Every operator and field, answers by hand.

/// Seven contacts, each with something to tell apart.
fn hand_data() -> Dataset {
    let c0 = TContact {
        email: Some("ann@example.com".into()),
        phone: Some("+8613800000000".into()),
        timezone: Some("Asia/Shanghai".into()),
        locale: Some("zh-CN".into()),
        attrs: json!({"region": "guangdong", "n": 30, "vip": true, "address": {"city": "广州", "zip": 510000}}),
        tags: Some(vec!["vip".into()]),
        consent_sms: Some(true),
        push: Some(true),
        events: vec![
            ev("order_placed", 100.0, Some(50.0)),
            ev("order_placed", 120.0, Some(25.5)),
            ev("app_open", 3.0, None),
        ],
        ..TContact::default()
    };
    let c1 = TContact {
        email: Some("Ann@Example.com".into()),
        phone: Some("+15550001".into()),
        locale: Some("en".into()),
        attrs: json!({"region": "zhejiang", "n": "30", "vip": "true"}),
        tags: Some(vec!["VIP".into(), "wholesale".into()]),
        consent_email: Some(false),
        consent_sms: Some(true),
        push: Some(false),
        events: vec![
            ev("order_placed", 10.0, Some(1000.0)),
            ev("login", 20.0, None),
        ],
        ..TContact::default()
    };
    let c2 = TContact {
        email: Some("é@example.com".into()),
        timezone: Some("UTC".into()),
        attrs: json!({"region": INJECTION, "n": 2.5, "vip": false}),
        tags: Some(vec![INJECTION.into()]),
        created_at: NOW - 3 * DAY,
        ..TContact::default()
    };
    let c3 = TContact {
        email: Some(INJECTION.into()),
        attrs: json!(["not", "an", "object"]),
        events: vec![ev("order_placed", 400.0, Some(10.0))],
        ..TContact::default()
    };
    let c4 = TContact {
        attrs: json!({"n": null, "address": "x"}),
        push: Some(true),
        consent_push: Some(false),
        events: vec![ev("app_open", 45.0, None), ev("order_placed", 0.0, None)],
        created_at: NOW - 40 * DAY,
        ..TContact::default()
    };
    let c5 = TContact {
        email: Some("zed@example.com".into()),
        forgotten: true,
        attrs: json!({"region": "guangdong"}),
        ..TContact::default()
    };
    let c6 = TContact {
        email: Some("bob@example.com".into()),
        phone: Some("+8613900000000".into()),
        consent_sms: Some(true),
        attrs: json!({"region": "guangdong", "n": -2}),
        events: vec![ev("app_open", 10.0, None), ev("x'y", 1.0, Some(1.0))],
        ..TContact::default()
    };
    Dataset {
        contacts: vec![c0, c1, c2, c3, c4, c5, c6],
        suppressions: vec![
            TSuppression {
                channel: "email",
                contact: None,
                address: Some("bob@example.com".into()),
                topic: None,
            },
            TSuppression {
                channel: "any",
                contact: Some(6),
                address: None,
                topic: Some("news".into()),
            },
        ],
    }
}

async fn every_operator_and_field(backend: Backend) {
    let Some((_dir, test_db, db)) = connect(backend).await else {
        return;
    };
    let data = hand_data();
    seed(&db, &data).await;
    let store = SqlStore::new(db.clone());
    let all: &[usize] = &[0, 1, 2, 3, 4, 6];
    let cases: &[(&str, &[usize])] = &[
        // Text: equality, order by code point ('A' < 'a' < 'z' < 'é'), contains, in, between.
        ("email == \"ann@example.com\"", &[0]),
        ("email != \"ann@example.com\"", &[1, 2, 3, 6]),
        ("email < \"a\"", &[1, 3]),
        ("email <= \"ann@example.com\"", &[0, 1, 3]),
        ("email > \"zzz\"", &[2]),
        ("email >= \"bob@example.com\"", &[2, 6]),
        ("email contains \"@Example.\"", &[1]),
        ("email contains \"\"", &[0, 1, 2, 3, 6]),
        ("not email contains \"example\"", &[1, 3, 4]),
        (
            "email in [\"bob@example.com\", \"Ann@Example.com\"]",
            &[1, 6],
        ),
        ("email not in [\"bob@example.com\"]", &[0, 1, 2, 3, 4]),
        ("email between \"B\" and \"b\"", &[0]),
        ("email between \"A\" and \"b\"", &[0, 1]),
        ("phone contains \"+86\"", &[0, 6]),
        ("phone == \"+15550001\"", &[1]),
        (
            "timezone == 'Asia/Shanghai' or timezone == \"UTC\"",
            &[0, 2],
        ),
        ("not timezone == \"UTC\"", &[0, 1, 3, 4, 6]),
        ("locale >= \"zh\"", &[0]),
        ("locale in [\"en\", \"fr\"]", &[1]),
        // attrs: typed comparisons; wrong types and non-objects are missing.
        ("attrs.region == \"guangdong\"", &[0, 6]),
        ("attrs.region != \"guangdong\"", &[1, 2]),
        ("attrs.n == 30", &[0]),
        ("attrs.n == \"30\"", &[1]),
        ("attrs.n > 0", &[0, 2]),
        ("attrs.n < 0", &[6]),
        ("attrs.n between 2.5 and 30", &[0, 2]),
        ("attrs.n in [\"30\", -2]", &[1, 6]),
        ("not attrs.n > 0", &[1, 3, 4, 6]),
        ("attrs.n contains \"3\"", &[1]),
        ("attrs.vip", &[0]),
        ("attrs.vip == false", &[2]),
        ("attrs.vip != true", &[2]),
        ("not attrs.vip", &[1, 2, 3, 4, 6]),
        (
            "attrs.address.city == \"广州\" and attrs.address.zip >= 510000",
            &[0],
        ),
        ("attrs.address == \"x\"", &[4]),
        ("attrs.address.city contains \"州\"", &[0]),
        ("attrs.missing == 1 or attrs.region.x == 1", &[]),
        // Tags and channels.
        ("has_tag(\"vip\")", &[0]),
        ("has_tag(\"VIP\") and has_tag(\"wholesale\")", &[1]),
        ("not has_tag(\"wholesale\")", &[0, 2, 3, 4, 6]),
        ("channel_ok(\"email\")", &[0, 2, 3]),
        // c6's suppression is for one topic only.
        ("channel_ok(\"sms\")", &[0, 1, 6]),
        ("channel_ok(\"push\")", &[0]),
        ("not channel_ok(\"sms\")", &[2, 3, 4]),
        // Event aggregates: windows (now - W, now], whole days.
        ("count(\"order_placed\") == 2", &[0]),
        ("count(\"order_placed\", \"365d\") >= 1", &[0, 1, 4]),
        ("count(\"order_placed\", \"30d\") == 0", &[0, 2, 3, 6]),
        ("count(\"x'y\") == 1", &[6]),
        ("sum(\"order_placed\") > 70", &[0, 1]),
        ("sum(\"order_placed\", \"365d\") == 75.5", &[0]),
        ("sum(\"order_placed\") == 0", &[2, 4, 6]),
        ("days_since(\"order_placed\") between 90 and 150", &[0]),
        ("days_since(\"order_placed\") == 0", &[4]),
        ("not days_since(\"order_placed\") >= 0", &[2, 6]),
        ("days_since(\"app_open\") < 10", &[0]),
        ("first_seen_days < 7", &[2]),
        ("first_seen_days >= 1000", &[0, 1, 3, 6]),
        ("first_seen_days in [45, 3]", &[2, 4]),
        // RFM with the defaults.
        ("rfm.r == 3", &[0]),
        ("rfm.r == 5", &[1, 4]),
        ("rfm.r == 1", &[3]),
        ("rfm.f == 2", &[0]),
        ("rfm.f == 1", &[1, 3, 4]),
        ("rfm.m == 1", &[0, 3, 4]),
        ("rfm.m == 3", &[1]),
        ("rfm.r_days == 100", &[0]),
        ("rfm.f_count == 0", &[3]),
        ("rfm.m_value == 75.5", &[0]),
        ("not rfm.r >= 1", &[2, 6]),
        ("rfm.r between 4 and 5 and rfm.f in [1, 2]", &[1, 4]),
        // Lifecycle with the defaults: new 7, active 7, silent 30, dormant 90.
        ("lifecycle == \"new\"", &[2]),
        ("lifecycle == \"active\"", &[0, 4]),
        ("lifecycle == \"silent\"", &[1, 6]),
        ("lifecycle == \"churned\"", &[3]),
        ("lifecycle in [\"dormant\", \"churned\"]", &[3]),
        ("lifecycle != \"active\"", &[1, 2, 3, 6]),
        // Overdue: c0 buys every 20 days, last 100 days ago -> 5.
        ("overdue(\"order_placed\") == 5", &[0]),
        ("not overdue(\"order_placed\") > 0", &[1, 2, 3, 4, 6]),
        // Logic and precedence.
        (
            "has_tag(\"vip\") or has_tag(\"VIP\") and attrs.n == 1",
            &[0],
        ),
        (
            "(has_tag(\"vip\") or has_tag(\"VIP\")) and not attrs.n == 30",
            &[1],
        ),
        (
            "not (email contains \"example\" or phone contains \"+\")",
            &[3, 4],
        ),
        ("not not has_tag(\"vip\")", &[0]),
    ];
    let facts = facts(
        &data,
        &RfmConfig::default(),
        &LifecycleConfig::default(),
        NOW,
    );
    let mut wrong = Vec::new();
    for (src, want) in cases {
        let got = audience(&store, src, 1000)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        // The hand answers follow SPEC; the evaluator must agree too.
        let eval = expected(&data, &facts, src);
        let n = count(&store, src).await.expect("count");
        if got != *want || eval != *want || n != want.len() {
            wrong.push(format!(
                "{src}: want {want:?}, sql {got:?}, count {n}, evaluator {eval:?}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{backend:?}:\n{}", wrong.join("\n"));
    // Paging through the audience one or two at a time gives the same members.
    for page in [1, 2] {
        let got = audience(&store, "rfm.r >= 1 or lifecycle == \"new\"", page)
            .await
            .expect("paged");
        assert_eq!(got, vec![0, 1, 2, 3, 4], "page {page}");
    }
    assert_eq!(
        audience(&store, "not has_tag(\"zzz\")", 2)
            .await
            .expect("all"),
        all
    );
    test_db.drop_db().await;
}

async fn injection_matches_literally(backend: Backend) {
    let Some((_dir, test_db, db)) = connect(backend).await else {
        return;
    };
    let data = hand_data();
    seed(&db, &data).await;
    let store = SqlStore::new(db.clone());
    let lit = format!("\"{INJECTION}\"");
    for (src, want) in [
        (format!("email == {lit}"), vec![3]),
        (format!("attrs.region == {lit}"), vec![2]),
        (format!("has_tag({lit})"), vec![2]),
        (format!("email contains {lit}"), vec![3]),
        (format!("email in [{lit}, \"x\"]"), vec![3]),
        (
            format!("count({lit}) == 0 and days_since({lit}) > 0"),
            vec![],
        ),
        (
            format!("overdue({lit}) > 0 or sum({lit}, \"1d\") > 0"),
            vec![],
        ),
        (format!("attrs.region between {lit} and {lit}"), vec![2]),
    ] {
        assert_eq!(
            audience(&store, &src, 10).await.expect("query"),
            want,
            "{src}"
        );
    }
    let mut q = Sql::new();
    q.push("SELECT COUNT(*) FROM contacts");
    let rows = herald_storage::test_support::conn(&db)
        .query_all_raw(q.build(db.backend()))
        .await
        .expect("contacts still there");
    let n: i64 = rows[0].try_get_by_index(0).expect("count");
    assert_eq!(n, data.contacts.len() as i64);
    test_db.drop_db().await;
}

/// Non-default settings, the composite M, and window edges exactly on the boundary.
async fn rfm_lifecycle_and_overdue_by_hand(backend: Backend) {
    let Some((_dir, test_db, db)) = connect(backend).await else {
        return;
    };
    let p = "order_placed";
    let contacts = vec![
        // Purchase exactly 30 days ago (edge of r = 5), one more exactly at now - window (out).
        TContact {
            attrs: json!({"referrals": 10}),
            events: vec![ev(p, 30.0, Some(100.0)), ev(p, 60.0, Some(1.0))],
            ..TContact::default()
        },
        // 31 whole days ago: r = 4; three purchases at the same instant: overdue missing.
        TContact {
            attrs: json!({"referrals": "many"}),
            events: vec![
                TEvent {
                    name: p.into(),
                    at: NOW - 31 * DAY,
                    value: Some(300.0),
                },
                ev(p, 40.0, Some(300.0)),
                ev(p, 40.0, None),
                ev(p, 40.0, None),
            ],
            ..TContact::default()
        },
        // A future purchase is ignored; one past purchase.
        TContact {
            attrs: json!({"referrals": 3}),
            events: vec![ev(p, -1.0, Some(999.0)), ev(p, 2.0, Some(20.0))],
            ..TContact::default()
        },
        // Never bought: no RFM; activity exactly `active` days ago: silent.
        TContact {
            events: vec![ev("login", 3.0, None)],
            ..TContact::default()
        },
    ];
    let data = Dataset {
        contacts,
        suppressions: vec![],
    };
    seed(&db, &data).await;
    let rfm = RfmConfig {
        purchase_event: p.into(),
        window: Span::from_days(60),
        recency_days: [30, 90, 150, 270],
        frequency: [1.0, 2.0, 3.0, 4.0],
        monetary: [100.0, 500.0, 1000.0, 5000.0],
        monetary_weights: Some(BTreeMap::from([
            ("sum:order_placed".to_string(), 3.0),
            ("attrs.referrals".to_string(), 1.0),
        ])),
        monetary_composite: Some([25.0, 50.0, 75.0, 99.0]),
    };
    let life = LifecycleConfig {
        activity_events: vec!["login".into(), p.into()],
        new: 0,
        active: 3,
        silent: 6,
        dormant: 40,
    };
    let store = SqlStore::with_segment_config(db.clone(), rfm.clone(), life.clone());
    // Spend in the 60-day window: 100 (the 60-day-old one is out), 600, 20.
    // Ranks: spend 100 -> 50, 600 -> 100, 20 -> 0; referrals 10 -> 100, "many" -> 0, 3 -> 50.
    // M = 0.75 spend + 0.25 referrals: 62.5 -> 3, 75 -> 3 (75 is an inclusive edge), 12.5 -> 1.
    let cases: &[(&str, &[usize])] = &[
        ("rfm.r == 5", &[0, 2]),
        ("rfm.r == 4", &[1]),
        ("rfm.f_count == 1", &[0, 2]),
        ("rfm.f == 4", &[1]),
        ("rfm.m_value == 600", &[1]),
        ("rfm.m == 3", &[0, 1]),
        ("rfm.m == 1", &[2]),
        ("lifecycle == \"silent\"", &[3]),
        ("lifecycle == \"active\"", &[2]),
        ("lifecycle == \"dormant\"", &[0, 1]),
        ("overdue(\"order_placed\") == 1", &[0]),
        ("not overdue(\"order_placed\") >= 0", &[1, 2, 3]),
        ("count(\"order_placed\", \"30d\") == 1", &[2]),
        ("count(\"order_placed\", \"30d\") == 0", &[0, 1, 3]),
    ];
    let facts = facts(&data, &rfm, &life, NOW);
    let mut wrong = Vec::new();
    for (src, want) in cases {
        let got = audience(&store, src, 1000)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let eval = expected(&data, &facts, src);
        if got != *want || eval != *want {
            wrong.push(format!(
                "{src}: want {want:?}, sql {got:?}, evaluator {eval:?}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{backend:?}:\n{}", wrong.join("\n"));
    test_db.drop_db().await;
}

// ---------------------------------------------------------------------------
// The property test.

/// Strings that data and filters share: case, code point order, quotes, SQL.
const STRINGS: &[&str] = &[
    "ann@example.com",
    "Ann@Example.com",
    "bob@example.com",
    "",
    "A",
    "a",
    "Z",
    "é",
    "广州",
    "guangdong",
    INJECTION,
    "x\"y",
    "back\\slash",
    "%_",
    "+8613800000000",
    "Asia/Shanghai",
    "zh-CN",
    "30",
    "true",
];
const EVENTS: &[&str] = &["order_placed", "app_open", "login", "x'y"];
const TAGS: &[&str] = &["vip", "VIP", "wholesale", INJECTION, "é"];
/// Day offsets that sit on the default windows' and stages' edges.
const DAYS: &[i64] = &[
    0, 1, 2, 3, 6, 7, 8, 29, 30, 31, 60, 89, 90, 91, 150, 151, 270, 364, 365, 366, 800,
];
const NUMBERS: &[f64] = &[
    -1.0, 0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.0, 8.0, 29.0, 30.0, 31.0, 90.0, 100.0,
    150.0, 365.0, 500.0, 1000.0,
];
const WINDOWS: &[&str] = &["1d", "7d", "30d", "60d", "365d", "12h", "1w"];
const ATTR_PATHS: &[&str] = &[
    "region",
    "n",
    "vip",
    "address.city",
    "address.zip",
    "nil",
    "missing",
    "address",
];
const STAGES: &[&str] = &["new", "active", "silent", "dormant", "churned"];

fn quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

fn any_string() -> impl Strategy<Value = String> {
    prop::sample::select(STRINGS).prop_map(str::to_string)
}

/// An instant near an edge: whole days ago, a millisecond either side, or in the future.
fn instant() -> impl Strategy<Value = i64> {
    (
        prop::sample::select(DAYS),
        prop::sample::select(&[0i64, 1, -1, DAY / 2][..]),
    )
        .prop_map(|(d, jitter)| NOW - d * DAY + jitter)
}

fn json_scalar() -> impl Strategy<Value = Json> {
    prop_oneof![
        any_string().prop_map(Json::from),
        prop::sample::select(NUMBERS).prop_map(Json::from),
        prop::sample::select(&[30i64, 510_000][..]).prop_map(Json::from),
        any::<bool>().prop_map(Json::from),
        Just(Json::Null),
    ]
}

fn attrs() -> impl Strategy<Value = Json> {
    let object = (
        prop::option::of(json_scalar()),
        prop::option::of(json_scalar()),
        prop::option::of(json_scalar()),
        prop::option::of(prop_oneof![
            (json_scalar(), json_scalar()).prop_map(|(c, z)| json!({"city": c, "zip": z})),
            json_scalar(),
        ]),
        prop::option::of(Just(json!(["a", "b"]))),
    )
        .prop_map(|(region, n, vip, address, list)| {
            let mut m = serde_json::Map::new();
            for (k, v) in [
                ("region", region),
                ("n", n),
                ("vip", vip),
                ("address", address),
                ("nil", list),
            ] {
                if let Some(v) = v {
                    m.insert(k.to_string(), v);
                }
            }
            Json::Object(m)
        });
    prop_oneof![
        8 => object,
        1 => prop_oneof![Just(json!(5)), Just(json!(["region"])), Just(json!("region")), Just(Json::Null)],
    ]
}

fn event() -> impl Strategy<Value = TEvent> {
    (
        prop::sample::select(EVENTS),
        prop_oneof![8 => instant(), 1 => Just(NOW + 1), 1 => Just(NOW + DAY)],
        // Quarters add up exactly in any order, so sums agree to the bit.
        prop::option::of((-4i32..4000).prop_map(|k| f64::from(k) * 0.25)),
    )
        .prop_map(|(name, at, value)| TEvent {
            name: name.into(),
            at,
            value,
        })
}

fn contact() -> impl Strategy<Value = TContact> {
    (
        (
            prop::option::of(any_string()),
            prop::option::of(any_string()),
            prop::option::of(any_string()),
            prop::option::of(any_string()),
        ),
        attrs(),
        prop::option::of(prop::collection::vec(prop::sample::select(TAGS), 0..3)),
        (
            prop::option::of(any::<bool>()),
            prop::option::of(any::<bool>()),
            prop::option::of(any::<bool>()),
            prop::option::of(any::<bool>()),
        ),
        instant(),
        prop::bool::weighted(0.08),
        prop::collection::vec(event(), 0..9),
    )
        .prop_map(
            |(
                (email, phone, timezone, locale),
                attrs,
                tags,
                consents,
                created,
                forgotten,
                events,
            )| {
                TContact {
                    email,
                    phone,
                    timezone,
                    locale,
                    attrs,
                    tags: tags.map(|t| t.into_iter().map(str::to_string).collect()),
                    consent_email: consents.0,
                    consent_sms: consents.1,
                    consent_push: consents.2,
                    push: consents.3,
                    created_at: created.min(NOW),
                    forgotten,
                    events,
                }
            },
        )
}

fn dataset() -> impl Strategy<Value = Dataset> {
    prop::collection::vec(contact(), 0..14).prop_flat_map(|contacts| {
        let n = contacts.len().max(1);
        let suppression = (
            prop::sample::select(&["email", "sms", "push", "any"][..]),
            0..n,
            0..3u8,
            prop::bool::weighted(0.2),
        );
        prop::collection::vec(suppression, 0..4).prop_map(move |sups| {
            let suppressions = sups
                .into_iter()
                .filter(|(_, i, _, _)| *i < contacts.len())
                .map(|(channel, i, how, topic)| {
                    let c = &contacts[i];
                    let (contact, address) = match how {
                        0 => (Some(i), None),
                        1 => (None, c.email.clone()),
                        _ => (None, c.phone.clone()),
                    };
                    TSuppression {
                        channel,
                        contact,
                        address,
                        topic: topic.then(|| "news".to_string()),
                    }
                })
                .collect();
            Dataset {
                contacts: contacts.clone(),
                suppressions,
            }
        })
    })
}

fn ascending<T: Clone + PartialOrd + std::fmt::Debug>(
    pool: &'static [T],
) -> impl Strategy<Value = [T; 4]> {
    prop::collection::vec(prop::sample::select(pool), 4).prop_map(|mut v| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        [v[0].clone(), v[1].clone(), v[2].clone(), v[3].clone()]
    })
}

fn rfm_config() -> impl Strategy<Value = RfmConfig> {
    let keys = prop::sample::subsequence(
        &[
            "sum:order_placed",
            "count:order_placed",
            "count:app_open",
            "attrs.n",
            "attrs.region",
        ][..],
        1..4,
    );
    let weights = prop::option::of((
        keys,
        prop::collection::vec(prop::sample::select(&[0.2, 0.3, 0.5, 1.0, 3.0][..]), 4),
    ));
    (
        prop::sample::select(&["order_placed", "app_open"][..]),
        prop::sample::select(&[1i64, 30, 60, 365][..]),
        ascending(&[0u32, 1, 2, 5, 30, 90, 150, 270]),
        ascending(&[0.0, 1.0, 2.0, 3.0, 4.0, 8.0]),
        ascending(&[0.0, 1.0, 100.0, 500.0, 1000.0, 5000.0]),
        weights,
        prop::option::of(ascending(&[0.0, 10.0, 20.0, 37.5, 50.0, 75.0, 100.0])),
    )
        .prop_map(
            |(purchase, window, recency, frequency, monetary, weights, composite)| RfmConfig {
                purchase_event: purchase.into(),
                window: Span::from_days(window),
                recency_days: recency,
                frequency,
                monetary,
                monetary_weights: weights.map(|(keys, w)| {
                    keys.iter()
                        .zip(w)
                        .map(|(k, w)| (k.to_string(), w))
                        .collect()
                }),
                monetary_composite: composite,
            },
        )
}

fn lifecycle_config() -> impl Strategy<Value = LifecycleConfig> {
    (
        prop::sample::subsequence(EVENTS, 0..3),
        prop::sample::select(&[0u32, 1, 7, 30][..]),
        ascending(&[0u32, 1, 7, 8, 30, 90]),
    )
        .prop_map(|(events, new, t)| LifecycleConfig {
            activity_events: events.into_iter().map(str::to_string).collect(),
            new,
            active: t[0],
            silent: t[1],
            dormant: t[2],
        })
}

fn num_lit() -> impl Strategy<Value = String> {
    prop::sample::select(NUMBERS).prop_map(|n| n.to_string())
}

fn ops() -> impl Strategy<Value = &'static str> {
    prop::sample::select(&["==", "!=", "<", "<=", ">", ">="][..])
}

/// A condition on one field, with the operators its type allows.
fn leaf() -> BoxedStrategy<String> {
    let text_field = prop::sample::select(&["email", "phone", "timezone", "locale"][..]);
    let text = (
        text_field,
        any_string(),
        any_string(),
        prop::collection::vec(any_string(), 1..4),
        0..5u8,
        ops(),
    )
        .prop_map(|(f, a, b, list, form, op)| {
            let (lo, hi) = if a <= b {
                (a.clone(), b)
            } else {
                (b, a.clone())
            };
            match form {
                0 => format!("{f} {op} {}", quote(&a)),
                1 => format!("{f} between {} and {}", quote(&lo), quote(&hi)),
                2 => format!("{f} contains {}", quote(&a)),
                3 => format!(
                    "{f} not in [{}]",
                    list.iter().map(|s| quote(s)).collect::<Vec<_>>().join(", ")
                ),
                _ => format!(
                    "{f} in [{}]",
                    list.iter().map(|s| quote(s)).collect::<Vec<_>>().join(", ")
                ),
            }
        });
    let attr_lit = prop_oneof![any_string().prop_map(|s| quote(&s)), num_lit()];
    let attr = (
        prop::sample::select(ATTR_PATHS),
        attr_lit.clone(),
        prop::collection::vec(
            prop_oneof![attr_lit, any::<bool>().prop_map(|b| b.to_string())],
            1..4,
        ),
        (num_lit(), num_lit(), any_string(), any_string()),
        any::<bool>(),
        0..6u8,
        ops(),
    )
        .prop_map(|(p, lit, list, (n1, n2, s1, s2), b, form, op)| {
            let f = format!("attrs.{p}");
            match form {
                0 => format!("{f} {op} {lit}"),
                1 => format!("{f} {} {b}", if op == "==" { "==" } else { "!=" }),
                2 => {
                    let (x, y) = (
                        n1.parse::<f64>().unwrap_or(0.0),
                        n2.parse::<f64>().unwrap_or(0.0),
                    );
                    format!("{f} between {} and {}", x.min(y), x.max(y))
                }
                3 => {
                    let (lo, hi) = if s1 <= s2 { (s1, s2) } else { (s2, s1) };
                    format!("{f} between {} and {}", quote(&lo), quote(&hi))
                }
                4 => format!("{f} contains {}", quote(&s1)),
                _ if b => f,
                _ => format!("{f} in [{}]", list.join(", ")),
            }
        });
    let numeric_field = prop_oneof![
        prop::sample::select(
            &[
                "rfm.r_days",
                "rfm.f_count",
                "rfm.m_value",
                "first_seen_days"
            ][..]
        )
        .prop_map(str::to_string),
        (
            prop::sample::select(&["count", "sum"][..]),
            prop::sample::select(EVENTS),
            prop::option::of(prop::sample::select(WINDOWS))
        )
            .prop_map(|(agg, e, w)| match w {
                Some(w) => format!("{agg}({}, \"{w}\")", quote(e)),
                None => format!("{agg}({})", quote(e)),
            }),
        (
            prop::sample::select(&["days_since", "overdue"][..]),
            prop::sample::select(EVENTS)
        )
            .prop_map(|(f, e)| format!("{f}({})", quote(e))),
    ];
    let numeric = (
        numeric_field,
        num_lit(),
        num_lit(),
        prop::collection::vec(num_lit(), 1..4),
        0..3u8,
        ops(),
    )
        .prop_map(|(f, a, b, list, form, op)| {
            let (x, y) = (
                a.parse::<f64>().unwrap_or(0.0),
                b.parse::<f64>().unwrap_or(0.0),
            );
            match form {
                0 => format!("{f} {op} {a}"),
                1 => format!("{f} between {} and {}", x.min(y), x.max(y)),
                _ => format!("{f} in [{}]", list.join(", ")),
            }
        });
    let score = (
        prop::sample::select(&["rfm.r", "rfm.f", "rfm.m"][..]),
        1..=5u8,
        1..=5u8,
        prop::collection::vec(1..=5u8, 1..3),
        0..3u8,
        ops(),
    )
        .prop_map(|(f, a, b, list, form, op)| match form {
            0 => format!("{f} {op} {a}"),
            1 => format!("{f} between {} and {}", a.min(b), a.max(b)),
            _ => format!(
                "{f} in [{}]",
                list.iter()
                    .map(u8::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
    let stage = (
        prop::sample::select(STAGES),
        prop::collection::vec(prop::sample::select(STAGES), 1..3),
        0..4u8,
    )
        .prop_map(|(s, list, form)| {
            let list = list.iter().map(|s| quote(s)).collect::<Vec<_>>().join(", ");
            match form {
                0 => format!("lifecycle == {}", quote(s)),
                1 => format!("lifecycle != {}", quote(s)),
                2 => format!("lifecycle in [{list}]"),
                _ => format!("lifecycle not in [{list}]"),
            }
        });
    let calls = prop_oneof![
        prop::sample::select(TAGS).prop_map(|t| format!("has_tag({})", quote(t))),
        prop::sample::select(&["email", "sms", "push"][..])
            .prop_map(|c| format!("channel_ok(\"{c}\")")),
    ];
    prop_oneof![
        3 => text,
        4 => attr,
        5 => numeric,
        3 => score,
        2 => stage,
        2 => calls,
    ]
    .boxed()
}

/// A filter: leaves combined with `and`, `or`, `not` and parentheses, up to three deep.
fn filter() -> impl Strategy<Value = String> {
    leaf().prop_recursive(3, 8, 2, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a} and {b}")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a}) or ({b})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a} or {b}")),
            inner.clone().prop_map(|a| format!("not ({a})")),
        ]
    })
}

#[derive(Debug, Clone)]
struct Case {
    data: Dataset,
    rfm: RfmConfig,
    life: LifecycleConfig,
    filters: Vec<String>,
    page: u32,
}

fn case() -> impl Strategy<Value = Case> {
    (
        dataset(),
        rfm_config(),
        lifecycle_config(),
        prop::collection::vec(filter(), FILTERS_PER_CASE),
        1..6u32,
    )
        .prop_map(|(data, rfm, life, filters, page)| Case {
            data,
            rfm,
            life,
            filters,
            page,
        })
}

/// How many filters were checked, and how many split their data set (some members, not all).
#[derive(Default)]
struct Tally {
    filters: AtomicUsize,
    split: AtomicUsize,
}

async fn check_case(db: &Db, c: &Case, tally: &Tally) -> Result<(), String> {
    seed(db, &c.data).await;
    let facts = facts(&c.data, &c.rfm, &c.life, NOW);
    let store = SqlStore::with_segment_config(db.clone(), c.rfm.clone(), c.life.clone());
    let live = c.data.contacts.iter().filter(|x| !x.forgotten).count();
    for src in &c.filters {
        let want = expected(&c.data, &facts, src);
        tally.filters.fetch_add(1, Ordering::Relaxed);
        if !want.is_empty() && want.len() < live {
            tally.split.fetch_add(1, Ordering::Relaxed);
        }
        let got = audience(&store, src, c.page).await?;
        if got != want {
            return Err(format!(
                "{src}\n  sql:       {got:?}\n  evaluator: {want:?}"
            ));
        }
        let n = count(&store, src).await?;
        if n != want.len() {
            return Err(format!("{src}: count {n}, evaluator {}", want.len()));
        }
    }
    Ok(())
}

async fn sql_agrees_with_the_evaluator(backend: Backend) {
    let Some((_dir, test_db, db)) = connect(backend).await else {
        return;
    };
    let handle = tokio::runtime::Handle::current();
    let mut runner = TestRunner::new(Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    });
    let tally = Tally::default();
    let result = tokio::task::block_in_place(|| {
        runner
            .run(&case(), |c| {
                handle
                    .block_on(check_case(&db, &c, &tally))
                    .map_err(TestCaseError::fail)
            })
            .map_err(|e| e.to_string())
    });
    test_db.drop_db().await;
    if let Err(e) = result {
        panic!("{backend:?}: {e}");
    }
    let (filters, split) = (tally.filters.into_inner(), tally.split.into_inner());
    eprintln!(
        "{backend:?}: {filters} filters on {CASES} random data sets agree; {split} of them split their data set"
    );
    // A generator that drifted into trivial filters would prove little.
    assert!(
        split * 4 >= filters,
        "only {split} of {filters} filters split their data set"
    );
}
