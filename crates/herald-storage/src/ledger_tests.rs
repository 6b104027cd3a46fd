//! The ledger is true at every instant (issue 23), on both databases: a
//! flight written but not landed is never counted as sent or delivered by the
//! report or `herald status`; goal events stored before messages are written
//! (during a plan, a pause, before a rollout's release) are attributed by
//! the same rule as later ones; a planner that stops heartbeating is taken
//! over within its short lease; a bulk import refreshes PostgreSQL's
//! statistics.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use herald_domain::config::{Campaign, ConfigSet, HeraldConfig};
use herald_domain::types::{Channel, MessageStatus};
use herald_engine::clock::FixedClock;
use herald_engine::rollout::{Release, RolloutStore, WAITING_ARM};
use herald_engine::run::PLAN_LEASE_MS;
use herald_engine::store::{
    CampaignRecord, GoalRecord, Handed, PlannedMessage, Store, TriggeredMessage,
};
use herald_engine::{Clock, Engine, SystemClock};
use sea_orm::{ConnectionTrait, DbBackend};

use crate::db::Db;
use crate::import::EventRow;
use crate::report::{ReportFilter, campaign_report};
use crate::sql::Sql;
use crate::store::SqlStore;
use crate::test_db::on_both_databases;

/// Three days, a goal's window in these tests.
const WITHIN: i64 = 3 * 86_400_000;

async fn exec(db: &Db, q: Sql) {
    db.conn.execute_raw(q.build(db.backend())).await.unwrap();
}

/// Contacts `c1..=cn` with an email each, and campaign `c` with `goal`.
async fn contacts_and_campaign(
    store: &SqlStore,
    n: i64,
    goal: Option<GoalRecord>,
    now: i64,
) -> i64 {
    let mut q = Sql::new();
    q.push("INSERT INTO contacts (id, external_id, email, attrs, consent_email, created_at, updated_at) VALUES ");
    for i in 1..=n {
        if i > 1 {
            q.push(",");
        }
        q.push("(")
            .bind(i)
            .push(",")
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
    exec(store.db(), q).await;
    store
        .upsert_campaign(
            &CampaignRecord {
                name: "c".into(),
                kind: "marketing".into(),
                topic: None,
                fingerprint: "f".into(),
                goal,
            },
            now,
        )
        .await
        .unwrap()
}

/// A planned email of contact `i` in `arm`, due at `send_at`.
fn email(i: i64, arm: &str, send_at: i64) -> PlannedMessage {
    PlannedMessage {
        contact_id: i,
        step: 0,
        arm: arm.into(),
        channel: Some(Channel::Email),
        address: Some(format!("c{i}@example.com")),
        send_at,
        status: MessageStatus::Planned,
        reason: None,
        pre: Default::default(),
    }
}

/// Per arm of the report of campaign `c` at `now`: (arm, sent, delivered,
/// bounced, unknown, pending, converted, revenue).
async fn report_arms(db: &Db, now: i64) -> Vec<(String, u64, u64, u64, u64, u64, u64, f64)> {
    let report = campaign_report(db, "c", None, 0.0, &ReportFilter::default(), now)
        .await
        .unwrap()
        .expect("the campaign has run");
    report
        .total
        .arms
        .iter()
        .map(|a| {
            (
                a.arm.clone(),
                a.sent,
                a.delivered,
                a.bounced,
                a.unknown,
                a.pending,
                a.converted,
                a.revenue,
            )
        })
        .collect()
}

/// `herald status` at `now`: the run's counts by status, and email's `sending`.
async fn status_counts(db: &Db, now: i64) -> (Vec<(String, i64)>, i64) {
    let s = crate::runs::status(db, now, 10).await.unwrap();
    let sending = s
        .channels
        .iter()
        .find(|c| c.channel == "email")
        .map_or(0, |c| c.sending);
    (s.runs[0].counts.clone(), sending)
}

fn counts(v: &[(&str, i64)]) -> Vec<(String, i64)> {
    v.iter().map(|(s, n)| (s.to_string(), *n)).collect()
}

/// A handed batch is written `delivered` before its send (a flight). Until
/// it lands, the report and `herald status` count it in the air, not
/// delivered; a crash (the flight written, never landed) reads `unknown` as
/// soon as its lease lapses, before any daemon has expired it; a receipt
/// since the write says what happened; a landed flight is delivered.
async fn a_flight_in_the_air_is_not_counted_sent_or_delivered(db: &Db) {
    let store = SqlStore::new(db.clone());
    let now = SystemClock.now_ms();
    let campaign = contacts_and_campaign(&store, 4, None, now).await;
    let run = store
        .create_run(campaign, now, now, "manual", "f")
        .await
        .unwrap();
    let rows: Vec<PlannedMessage> = (1..=4).map(|i| email(i, "a", now - 1_000)).collect();
    let lease_until = now + 60_000;
    let handed = store
        .insert_handed(
            run.id,
            campaign,
            &rows,
            Handed {
                rows: &[true; 4],
                delivered_on_accept: &[Channel::Email],
                owner: "worker",
                until: lease_until,
            },
            now,
        )
        .await
        .unwrap();
    assert_eq!(handed.len(), 4);
    store.finish_planning(run.id).await.unwrap();
    let arm = |sent, delivered, bounced, unknown, pending| {
        vec![(
            "a".to_string(),
            sent,
            delivered,
            bounced,
            unknown,
            pending,
            0,
            0.0,
        )]
    };

    // In the air: nothing sent or delivered yet.
    assert_eq!(report_arms(db, now).await, arm(0, 0, 0, 0, 4));
    assert_eq!(status_counts(db, now).await, (counts(&[("sending", 4)]), 4));

    // A bounce for the first message arrives while the rest are in the air.
    let mut q = Sql::new();
    q.push("UPDATE messages SET status = 'bounced', updated_at = ")
        .bind(now + 10)
        .push(" WHERE id = ")
        .bind(handed[0].id);
    exec(db, q).await;
    assert_eq!(report_arms(db, now).await, arm(1, 0, 1, 0, 3));
    assert_eq!(
        status_counts(db, now).await,
        (counts(&[("bounced", 1), ("sending", 3)]), 3)
    );

    // The worker died: once the lease lapses they read `unknown` at once.
    let lapsed = lease_until + 1;
    assert_eq!(report_arms(db, lapsed).await, arm(1, 0, 1, 3, 0));
    assert_eq!(
        status_counts(db, lapsed).await,
        (counts(&[("bounced", 1), ("unknown", 3)]), 0)
    );
    // What the daemon then writes agrees.
    assert_eq!(store.expire_leases(lapsed).await.unwrap(), 3);
    assert_eq!(report_arms(db, lapsed).await, arm(1, 0, 1, 3, 0));
}

/// A flight that lands as written: its rows then say what happened.
async fn a_landed_flight_is_delivered(db: &Db) {
    let store = SqlStore::new(db.clone());
    let now = SystemClock.now_ms();
    let campaign = contacts_and_campaign(&store, 2, None, now).await;
    let run = store
        .create_run(campaign, now, now, "manual", "f")
        .await
        .unwrap();
    let rows: Vec<PlannedMessage> = (1..=2).map(|i| email(i, "a", now - 1_000)).collect();
    store
        .insert_handed(
            run.id,
            campaign,
            &rows,
            Handed {
                rows: &[true; 2],
                delivered_on_accept: &[Channel::Email],
                owner: "worker",
                until: now + 60_000,
            },
            now,
        )
        .await
        .unwrap();
    assert_eq!(report_arms(db, now).await[0].5, 2, "in the air");
    // Landing a flight whose sends ended as written deletes its row alone.
    let mut q = Sql::new();
    q.push("DELETE FROM flights");
    exec(db, q).await;
    assert_eq!(
        report_arms(db, now).await,
        [("a".to_string(), 2, 2, 0, 0, 0, 0, 0.0)]
    );
    assert_eq!(
        status_counts(db, now).await,
        (counts(&[("delivered", 2)]), 0)
    );
}

/// Stores goal events: (contact, name, at, value).
async fn events(db: &Db, rows: &[(i64, &str, i64, f64)]) {
    let rows: Vec<EventRow> = rows
        .iter()
        .map(|&(c, name, at, value)| EventRow {
            external_id: format!("c{c}"),
            name: name.into(),
            at,
            value: Some(value),
            event_id: None,
            properties: Default::default(),
        })
        .collect();
    crate::import::insert_events(db, &rows).await.unwrap();
}

/// Per contact of campaign `c`: (contact, converted_at, revenue, the
/// secondary goal `app_open`'s count).
async fn outcomes(db: &Db) -> Vec<(i64, Option<i64>, f64, Option<i64>)> {
    let b = db.backend();
    let mut q = Sql::new();
    q.push("SELECT contact_id, converted_at, CAST(revenue AS DOUBLE PRECISION), ");
    q.push(if b == DbBackend::Postgres {
        "CAST(secondary #>> '{app_open,count}' AS BIGINT)"
    } else {
        "json_extract(secondary, '$.app_open.count')"
    });
    q.push(" FROM messages ORDER BY contact_id");
    db.conn
        .query_all_raw(q.build(b))
        .await
        .unwrap()
        .iter()
        .map(|r| r.try_get_many_by_index().unwrap())
        .collect()
}

fn purchase_goal() -> GoalRecord {
    GoalRecord {
        event: "purchase".into(),
        within_ms: WITHIN,
        secondary: vec!["app_open".into()],
    }
}

/// Goal events that arrive while a run is being planned, or while its plan
/// is paused, convert the messages planned after them: the run's `send_at`
/// is its `now`, before the events, so SPEC's rule counts them. An event
/// before `send_at`, or after the window, does not.
async fn events_stored_before_their_messages_are_attributed(db: &Db) {
    let store = SqlStore::new(db.clone());
    let now = SystemClock.now_ms();
    let campaign = contacts_and_campaign(&store, 5, Some(purchase_goal()), now).await;
    let run = store
        .create_run(campaign, now, now, "manual", "f")
        .await
        .unwrap();
    let rows: Vec<PlannedMessage> = (1..=5).map(|i| email(i, "a", now)).collect();
    // The first page is written, then events arrive during the plan.
    store
        .insert_planned(run.id, campaign, &rows[..1], now)
        .await
        .unwrap();
    events(
        db,
        &[
            (2, "purchase", now + 1_000, 10.0),
            (2, "purchase", now + 2_000, 5.0),
            (3, "purchase", now - 1_000, 7.0),
            (4, "purchase", now + WITHIN + 1, 9.0),
        ],
    )
    .await;
    store
        .insert_planned(run.id, campaign, &rows[1..4], now + 3_000)
        .await
        .unwrap();
    // A pause of hours; a purchase and an app open meanwhile.
    crate::runs::pause(db, run.id).await.unwrap();
    events(
        db,
        &[
            (5, "purchase", now + 3_600_000, 20.0),
            (5, "app_open", now + 3_600_001, 0.0),
        ],
    )
    .await;
    crate::runs::resume(db, run.id).await.unwrap();
    store
        .insert_planned(run.id, campaign, &rows[4..], now + 3_600_002)
        .await
        .unwrap();
    assert_eq!(
        outcomes(db).await,
        [
            (1, None, 0.0, None),
            (2, Some(now + 1_000), 15.0, None),
            (3, None, 0.0, None),
            (4, None, 0.0, None),
            (5, Some(now + 3_600_000), 20.0, Some(1)),
        ]
    );
    let arms = report_arms(db, now + 3_600_003).await;
    assert_eq!((arms[0].6, arms[0].7), (2, 35.0), "{arms:?}");
}

/// A rollout's release moves `send_at`: purchases made before the released
/// messages were sent are no longer credited to them, and one inside the
/// new window (though outside the old one) is.
async fn a_release_recomputes_conversions_from_the_new_send_time(db: &Db) {
    let store = SqlStore::new(db.clone());
    let now = SystemClock.now_ms();
    let campaign = contacts_and_campaign(&store, 3, Some(purchase_goal()), now).await;
    let run = store
        .create_run(campaign, now, now, "manual", "f")
        .await
        .unwrap();
    let rows: Vec<PlannedMessage> = (1..=3).map(|i| email(i, WAITING_ARM, now)).collect();
    events(
        db,
        &[
            (1, "purchase", now + 1_000, 10.0),
            (1, "app_open", now + 1_001, 0.0),
            (2, "purchase", now + 2_000, 4.0),
            (2, "purchase", now + WITHIN + 5_000, 6.0),
        ],
    )
    .await;
    store
        .insert_planned(run.id, campaign, &rows, now)
        .await
        .unwrap();
    store.finish_planning(run.id).await.unwrap();
    // Credited while they wait, by their planned send time.
    assert_eq!(
        outcomes(db).await,
        [
            (1, Some(now + 1_000), 10.0, Some(1)),
            (2, Some(now + 2_000), 4.0, None),
            (3, None, 0.0, None),
        ]
    );
    let released_at = now + 10_000;
    let mut q = Sql::new();
    q.push("SELECT id FROM messages ORDER BY contact_id");
    let ids: Vec<i64> = db
        .conn
        .query_all_raw(q.build(db.backend()))
        .await
        .unwrap()
        .iter()
        .map(|r| r.try_get_by_index(0).unwrap())
        .collect();
    let release: Vec<Release> = ids
        .iter()
        .map(|&id| Release {
            id,
            send_at: released_at,
            reason: "rollout".into(),
        })
        .collect();
    let moved = store
        .release(run.id, "rollout:a", &release, released_at)
        .await
        .unwrap();
    assert_eq!(moved, 3);
    assert_eq!(
        outcomes(db).await,
        [
            (1, None, 0.0, None),
            (2, Some(now + WITHIN + 5_000), 6.0, None),
            (3, None, 0.0, None),
        ]
    );
}

/// Contacts `c1..=cn` with `attrs.x = 1`, through one statement.
async fn many_contacts(db: &Db, n: i64, now: i64) {
    let mut q = Sql::new();
    q.push("WITH RECURSIVE s(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM s WHERE g < ")
        .bind(n)
        .push(") INSERT INTO contacts (id, external_id, email, timezone, attrs, first_seen_at, created_at, updated_at) SELECT g, 'c' || g, 'c' || g || '@example.com', 'UTC', '{\"x\": 1}', ")
        .bind(now)
        .push(", ")
        .bind(now)
        .push(", ")
        .bind(now)
        .push(" FROM s");
    exec(db, q).await;
}

const ONE_EMAIL: &str = "name = \"all\"\nwhere = 'attrs.x == 1'\nchannels = [\"email\"]\n\n[[variants]]\nname = \"a\"\nemail = { subject = \"s\", template = \"a.email.hbs\" }\n";

fn config_and_campaign() -> (Arc<ConfigSet>, Campaign) {
    let campaign = Campaign::parse("all.toml", ONE_EMAIL).unwrap();
    let config = Arc::new(ConfigSet {
        herald: HeraldConfig::parse("herald.toml", "").unwrap(),
        segments: Default::default(),
        campaigns: [("all".to_string(), campaign.clone())].into(),
    });
    (config, campaign)
}

/// A planner that died right after claiming its run (it never heartbeats)
/// holds it for the short planning lease only: another planner is refused
/// before, and takes the run over and finishes it once the lease lapsed.
/// The clock is injected, so no test waits for the lease.
async fn a_dead_planners_run_is_taken_over_after_the_short_lease(db: &Db) {
    let now = SystemClock.now_ms();
    let store = Arc::new(SqlStore::new(db.clone()));
    many_contacts(db, 300, now).await;
    let (config, campaign) = config_and_campaign();
    let clock = Arc::new(FixedClock::new(
        chrono::DateTime::from_timestamp_millis(now).unwrap(),
    ));
    let dead = Engine::with_owner(store.clone(), clock.clone(), config.clone(), "dead".into());
    let run = dead.create_run(&campaign, now, "manual").await.unwrap();
    assert!(
        store
            .claim_planning(run.id, "dead", now + PLAN_LEASE_MS, now)
            .await
            .unwrap()
    );
    let heir = Engine::with_owner(store.clone(), clock.clone(), config, "heir".into());
    clock.advance(chrono::Duration::milliseconds(PLAN_LEASE_MS - 1_000));
    let stats = heir.plan(&campaign, &run).await.unwrap();
    assert!(
        !stats.finished && stats.members == 0,
        "the lease still holds"
    );
    clock.advance(chrono::Duration::milliseconds(1_001));
    let stats = heir.plan(&campaign, &run).await.unwrap();
    assert!(
        stats.finished,
        "taken over {PLAN_LEASE_MS} ms after the claim"
    );
    assert_eq!(stats.members, 300);
    const { assert!(PLAN_LEASE_MS <= 10_000, "a lease of seconds, not minutes") };
}

/// A live planner's heartbeat keeps its (here very short) lease however long
/// it goes without writing a page; once it stops beating (its process died),
/// another planner takes the run within about one lease.
async fn a_heartbeat_keeps_the_planning_lease_until_it_stops(db: &Db) {
    const LEASE_MS: i64 = 400;
    let now = SystemClock.now_ms();
    let store = Arc::new(SqlStore::new(db.clone()));
    let (config, campaign) = config_and_campaign();
    let mut holder = Engine::with_owner(
        store.clone(),
        Arc::new(SystemClock),
        config.clone(),
        "holder".into(),
    );
    holder.plan_lease_ms = LEASE_MS;
    let holder = Arc::new(holder);
    let run = holder.create_run(&campaign, now, "manual").await.unwrap();
    assert!(
        store
            .claim_planning(run.id, "holder", now + LEASE_MS, now)
            .await
            .unwrap()
    );
    let beating = {
        let (holder, run) = (holder.clone(), run.id);
        tokio::spawn(async move {
            let lost = AtomicBool::new(false);
            holder.planning_heartbeat(run, &lost).await
        })
    };
    let other = |at: i64| store.claim_planning(run.id, "other", at + LEASE_MS, at);
    // Three leases long, the other planner is refused at every try.
    let until = std::time::Instant::now() + Duration::from_millis(3 * LEASE_MS as u64);
    while std::time::Instant::now() < until {
        assert!(
            !other(SystemClock.now_ms()).await.unwrap(),
            "the holder's heartbeat keeps its lease"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    beating.abort();
    let died = std::time::Instant::now();
    let deadline = died + Duration::from_secs(10);
    loop {
        if other(SystemClock.now_ms()).await.unwrap() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never taken over");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = died.elapsed();
    assert!(
        after <= Duration::from_millis(2 * LEASE_MS as u64),
        "taken over {after:?} after the heartbeat stopped"
    );
}

/// A bulk import of contacts and of events refreshes PostgreSQL's
/// statistics of the tables it wrote; SQLite needs none.
async fn a_bulk_import_refreshes_the_statistics(db: &Db) {
    let dir = tempfile::tempdir().unwrap();
    let contacts = dir.path().join("contacts.csv");
    let mut text = String::from("external_id,email\n");
    for i in 0..500 {
        text.push_str(&format!("c{i},c{i}@example.com\n"));
    }
    std::fs::write(&contacts, text).unwrap();
    let events = dir.path().join("events.csv");
    let mut text = String::from("external_id,name,at\n");
    for i in 0..500 {
        text.push_str(&format!("c{i},login,2026-11-01T00:00:00Z\n"));
    }
    std::fs::write(&events, text).unwrap();
    // `last_analyze` is set by a manual ANALYZE only (autovacuum sets
    // `last_autoanalyze`); `reltuples` is -1 until a table is analysed.
    let analysed = |table: &'static str| async move {
        let mut q = Sql::new();
        q.push("SELECT CAST(c.reltuples AS BIGINT), CASE WHEN s.last_analyze IS NULL THEN 0 ELSE 1 END FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid WHERE s.relname = ")
            .bind(table);
        let row = db
            .conn
            .query_one_raw(q.build(DbBackend::Postgres))
            .await
            .unwrap()
            .expect("a table");
        let (rows, analysed): (i64, i32) = row.try_get_many_by_index().unwrap();
        (rows, analysed == 1)
    };
    let report = crate::import::import_contacts(db, &contacts, &|_| {})
        .await
        .unwrap();
    assert_eq!(report.accepted, 500);
    if db.backend() == DbBackend::Postgres {
        assert_eq!(analysed("contacts").await, (500, true), "contacts analysed");
        assert!(!analysed("events").await.1, "events not analysed so far");
    }
    crate::import::import_events(db, &events, &|_| {})
        .await
        .unwrap();
    if db.backend() == DbBackend::Postgres {
        assert_eq!(analysed("events").await, (500, true), "events analysed");
    } else {
        // SQLite plans from its indexes' shape: no statistics are written.
        let mut q = Sql::new();
        q.push("SELECT COUNT(*) FROM sqlite_master WHERE name = 'sqlite_stat1'");
        let row = db
            .conn
            .query_one_raw(q.build(DbBackend::Sqlite))
            .await
            .unwrap()
            .unwrap();
        let n: i64 = row.try_get_by_index(0).unwrap();
        assert_eq!(n, 0);
    }
}

/// `/metrics`' gauges of email by status at `now` (zeros left out).
async fn gauges(db: &Db, now: i64) -> Vec<(String, i64)> {
    let g = crate::tracking::message_gauges(db, now).await.unwrap();
    g.by_status
        .into_iter()
        .filter(|(c, _, _)| c == "email")
        .map(|(_, s, n)| (s, n))
        .collect()
}

/// The delivered count of arm `a` the rollout decision reads at `now`.
async fn decision_delivered(store: &SqlStore, run: i64, now: i64) -> u64 {
    let arms = store.arm_outcomes(run, now).await.unwrap();
    arms.iter()
        .find(|a| a.arm == "a")
        .map_or(0, |a| a.delivered)
}

/// `/metrics` and a rollout's decision read a flight as the report does: its
/// untouched rows are `sending` while it is in the air, `unknown` once its
/// lease lapsed, and neither counts them sent or delivered before it lands.
async fn a_flight_in_the_air_is_not_counted_by_metrics_or_a_rollout(db: &Db) {
    let store = SqlStore::new(db.clone());
    let now = SystemClock.now_ms();
    let campaign = contacts_and_campaign(&store, 4, None, now).await;
    let run = store
        .create_run(campaign, now, now, "manual", "f")
        .await
        .unwrap();
    let rows: Vec<PlannedMessage> = (1..=4).map(|i| email(i, "a", now - 1_000)).collect();
    let lease_until = now + 60_000;
    let handed = store
        .insert_handed(
            run.id,
            campaign,
            &rows,
            Handed {
                rows: &[true; 4],
                delivered_on_accept: &[Channel::Email],
                owner: "worker",
                until: lease_until,
            },
            now,
        )
        .await
        .unwrap();
    store.finish_planning(run.id).await.unwrap();

    // In the air.
    assert_eq!(gauges(db, now).await, counts(&[("sending", 4)]));
    assert_eq!(decision_delivered(&store, run.id, now).await, 0);

    // A bounce arrives for the first; the rest are still in the air.
    let mut q = Sql::new();
    q.push("UPDATE messages SET status = 'bounced', updated_at = ")
        .bind(now + 10)
        .push(" WHERE id = ")
        .bind(handed[0].id);
    exec(db, q).await;
    assert_eq!(
        gauges(db, now).await,
        counts(&[("bounced", 1), ("sending", 3)])
    );
    assert_eq!(decision_delivered(&store, run.id, now).await, 0);

    // The worker died: once the lease lapses they are `unknown`.
    let lapsed = lease_until + 1;
    assert_eq!(
        gauges(db, lapsed).await,
        counts(&[("bounced", 1), ("unknown", 3)])
    );
    assert_eq!(decision_delivered(&store, run.id, lapsed).await, 0);

    // Had it landed as written, they are delivered.
    let mut q = Sql::new();
    q.push("DELETE FROM flights");
    exec(db, q).await;
    assert_eq!(
        gauges(db, now).await,
        counts(&[("bounced", 1), ("delivered", 3)])
    );
    assert_eq!(decision_delivered(&store, run.id, now).await, 3);
}

/// A triggered campaign's messages are attributed when they are written,
/// like a plan's pages: a purchase stored before the trigger planner wrote
/// the message (it was behind, paused or down) converts it when it falls in
/// the window after `send_at`, and one before `send_at` does not.
async fn triggered_messages_are_attributed_when_written(db: &Db) {
    let store = SqlStore::new(db.clone());
    let now = SystemClock.now_ms();
    let campaign = contacts_and_campaign(&store, 3, Some(purchase_goal()), now).await;
    let run = store.trigger_run(campaign, "f", now).await.unwrap();
    let triggered = |contacts: std::ops::RangeInclusive<i64>, at: i64| -> Vec<TriggeredMessage> {
        contacts
            .map(|i| TriggeredMessage {
                message: email(i, "a", at),
                trigger_id: 100 + i,
                trigger_at: at,
            })
            .collect()
    };
    events(
        db,
        &[
            (1, "purchase", now + 1_000, 10.0),
            (1, "app_open", now + 1_500, 0.0),
            (2, "purchase", now - 1_000, 7.0),
        ],
    )
    .await;
    let written = store
        .insert_triggered(run.id, campaign, &triggered(1..=2, now), 102, now + 2_000)
        .await
        .unwrap();
    assert_eq!(written, 2);
    // Contact 3's message is written an hour late, after its purchase.
    events(db, &[(3, "purchase", now + 60_000, 4.0)]).await;
    store
        .insert_triggered(
            run.id,
            campaign,
            &triggered(3..=3, now),
            103,
            now + 3_600_000,
        )
        .await
        .unwrap();
    assert_eq!(
        outcomes(db).await,
        [
            (1, Some(now + 1_000), 10.0, Some(1)),
            (2, None, 0.0, None),
            (3, Some(now + 60_000), 4.0, None),
        ]
    );
}

on_both_databases!(
    triggered_messages_are_attributed_when_written,
    a_flight_in_the_air_is_not_counted_by_metrics_or_a_rollout,
    a_flight_in_the_air_is_not_counted_sent_or_delivered,
    a_landed_flight_is_delivered,
    events_stored_before_their_messages_are_attributed,
    a_release_recomputes_conversions_from_the_new_send_time,
    a_dead_planners_run_is_taken_over_after_the_short_lease,
    a_heartbeat_keeps_the_planning_lease_until_it_stops,
    a_bulk_import_refreshes_the_statistics,
);
