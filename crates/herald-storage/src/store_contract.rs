//! One test body, three stores: the engine's in-memory double
//! (`herald_engine::memstore::MemStore`) keeps the contracts of the SQL store
//! on SQLite and PostgreSQL for the core operations (claims under leases,
//! outcomes, a lapsed lease, flights, a run's drain, triggered rows), so the
//! engine's tests on it mean what they would on a database. A body fails on
//! the store that drifted: `NAME::memory`, `NAME::sqlite` or `NAME::postgres`.

use herald_domain::types::{Channel, MessageStatus};
use herald_engine::memstore::{MemContact, MemStore};
use herald_engine::store::{
    AttemptRecord, CampaignRecord, ClaimedMessage, Handed, Outcome, PlannedMessage, RunDrain,
    Store, TriggeredMessage,
};

use sea_orm::ConnectionTrait;

use crate::db::Db;
use crate::sql::Sql;
use crate::store::SqlStore;

/// The bodies' instant (ms).
const NOW: i64 = 1_796_126_400_000;

/// Contacts `c1..=c4` with an email each, on the SQL store: their ids.
async fn sql_contacts(db: &Db) -> Vec<i64> {
    let mut q = Sql::new();
    q.push("INSERT INTO contacts (id, external_id, email, attrs, created_at, updated_at) VALUES ");
    for i in 1..=4i64 {
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
            .bind(NOW)
            .push(",")
            .bind(NOW)
            .push(")");
    }
    db.conn.execute_raw(q.build(db.backend())).await.unwrap();
    (1..=4).collect()
}

/// The same contacts on the memstore.
fn mem_contacts(store: &MemStore) -> Vec<i64> {
    (1..=4)
        .map(|i| {
            store.add_contact(MemContact::email(
                &format!("c{i}"),
                &format!("c{i}@example.com"),
            ))
        })
        .collect()
}

/// Runs `body` as `NAME::memory`, `NAME::sqlite` and `NAME::postgres`.
macro_rules! on_every_store {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use super::*;
            #[tokio::test]
            async fn memory() {
                let store = MemStore::new();
                let contacts = mem_contacts(&store);
                super::$name(&store, &contacts).await;
            }
            #[tokio::test]
            async fn sqlite() {
                crate::test_db::both(sea_orm::DbBackend::Sqlite, "c", |db| Box::pin(async move {
                    let contacts = sql_contacts(db).await;
                    super::$name(&SqlStore::new(db.clone()), &contacts).await;
                })).await
            }
            #[tokio::test]
            async fn postgres() {
                crate::test_db::both(sea_orm::DbBackend::Postgres, "c", |db| Box::pin(async move {
                    let contacts = sql_contacts(db).await;
                    super::$name(&SqlStore::new(db.clone()), &contacts).await;
                })).await
            }
        }
    )*};
}

on_every_store!(
    claims_outcomes_and_a_lapsed_lease,
    handed_flights_land_or_lapse_and_the_truth_wins,
    a_triggered_row_is_inserted_once_per_event,
);

/// A running run of campaign `c` at `at`: (campaign, run).
async fn running(store: &dyn Store, at: i64) -> (i64, i64) {
    let record = CampaignRecord {
        name: "c".into(),
        kind: "marketing".into(),
        topic: None,
        fingerprint: "f".into(),
        goal: None,
    };
    let campaign = store.upsert_campaign(&record, NOW).await.unwrap();
    let run = store
        .create_run(campaign, at, NOW, "manual", "f")
        .await
        .unwrap();
    (campaign, run.id)
}

fn email(contact: i64, send_at: i64) -> PlannedMessage {
    PlannedMessage {
        contact_id: contact,
        step: 0,
        arm: "a".into(),
        channel: Some(Channel::Email),
        address: Some(format!("c{contact}@example.com")),
        send_at,
        status: MessageStatus::Planned,
        reason: None,
        pre: Default::default(),
    }
}

fn outcome(m: &ClaimedMessage, status: MessageStatus, result: &str, at: i64) -> Outcome {
    Outcome {
        message_id: m.id,
        status,
        reason: None,
        retry_at: None,
        provider_id: None,
        attempt: Some(AttemptRecord {
            at,
            result: result.into(),
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

/// (status, count) of the run's messages, sorted: the databases order NULL reasons differently.
async fn counts(store: &dyn Store, run: i64) -> Vec<(String, i64)> {
    let mut by: std::collections::BTreeMap<String, i64> = Default::default();
    for (_, status, _, n) in store.run_counts(run).await.unwrap().rows {
        *by.entry(status).or_default() += n;
    }
    by.into_iter().collect()
}

fn pairs(v: &[(&str, i64)]) -> Vec<(String, i64)> {
    v.iter().map(|(s, n)| (s.to_string(), *n)).collect()
}

/// Claims take due messages of open runs in (send_at, id) order, marked
/// `sending` under a lease no one else may take; outcomes land once (a
/// retry waits its time and counts its attempt); a lapsed `sending` claim
/// ends `unknown`, while a lapsed claim never marked is claimable again and
/// its old owner can no longer mark it; a run drains to `done`.
async fn claims_outcomes_and_a_lapsed_lease(store: &dyn Store, c: &[i64]) {
    let (campaign, run) = running(store, NOW).await;
    let again = store
        .create_run(campaign, NOW, NOW, "manual", "f")
        .await
        .unwrap();
    assert_eq!(
        (again.id, again.created),
        (run, false),
        "one run a (campaign, instant)"
    );
    let mut suppressed = email(c[3], NOW);
    suppressed.status = MessageStatus::Suppressed;
    suppressed.reason = Some("no_consent".into());
    let rows = vec![
        email(c[1], NOW),
        email(c[0], NOW),
        email(c[2], NOW + 60_000),
        suppressed,
    ];
    store
        .insert_planned(run, campaign, &rows, NOW)
        .await
        .unwrap();
    let mut twice = email(c[0], NOW);
    twice.arm = "b".into();
    store
        .insert_planned(run, campaign, &[twice], NOW)
        .await
        .unwrap();
    assert_eq!(
        store
            .run_counts(run)
            .await
            .unwrap()
            .count(Some("b"), "planned"),
        0,
        "a (run, contact, step) already there is left alone"
    );
    assert_eq!(
        store.finish_run_if_drained(run, NOW).await.unwrap(),
        RunDrain::Planning
    );
    store.finish_planning(run).await.unwrap();

    let a = store
        .claim_sending_after("a", Some(run), NOW, NOW + 10_000, 10, None)
        .await
        .unwrap();
    let mut who: Vec<i64> = a.iter().map(|m| m.contact_id).collect();
    who.sort_unstable();
    assert_eq!(
        who,
        [c[0], c[1]],
        "the due ones, not the later or the suppressed"
    );
    assert!(
        a.windows(2)
            .all(|w| (w[0].send_at, w[0].id) < (w[1].send_at, w[1].id))
    );
    let none = store
        .claim_sending_after("b", Some(run), NOW + 1, NOW + 10_000, 10, None)
        .await
        .unwrap();
    assert!(none.is_empty(), "a live lease holds");
    assert_eq!(
        store.finish_run_if_drained(run, NOW).await.unwrap(),
        RunDrain::Pending
    );

    let delivered = outcome(&a[0], MessageStatus::Delivered, "accepted", NOW);
    let mut retry = outcome(&a[1], MessageStatus::Planned, "transient", NOW);
    retry.retry_at = Some(NOW + 5_000);
    store
        .record_outcomes(&[delivered.clone(), retry], NOW)
        .await
        .unwrap();
    let after_one = counts(store, run).await;
    store.record_outcomes(&[delivered], NOW + 1).await.unwrap();
    assert_eq!(
        counts(store, run).await,
        after_one,
        "the same outcome again leaves every status as it was"
    );
    assert_eq!(
        after_one,
        pairs(&[("delivered", 1), ("planned", 2), ("suppressed", 1)])
    );

    let early = store
        .claim_sending_after("b", Some(run), NOW + 4_999, NOW + 20_000, 10, None)
        .await
        .unwrap();
    assert!(early.is_empty(), "a retry waits for its time");
    let b = store
        .claim_sending_after("b", Some(run), NOW + 5_000, NOW + 15_000, 10, None)
        .await
        .unwrap();
    assert_eq!((b.len(), b[0].id, b[0].attempts), (1, a[1].id, 1));
    // Its worker dies while sending: the lease lapses, it ends unknown, never claimed again.
    assert_eq!(
        store.expire_leases(NOW + 15_000).await.unwrap(),
        0,
        "not yet"
    );
    assert_eq!(store.expire_leases(NOW + 15_001).await.unwrap(), 1);
    // The later message is due now; claimed without marking, its lease lapses.
    let t = NOW + 60_000;
    let held = store
        .claim_due("c", Some(run), t, t + 1_000, 10)
        .await
        .unwrap();
    assert_eq!(
        held.iter().map(|m| m.contact_id).collect::<Vec<_>>(),
        [c[2]]
    );
    assert_eq!(
        store.expire_leases(t + 2_000).await.unwrap(),
        0,
        "never sending: nothing to end"
    );
    let late = store
        .mark_sending("c", &[held[0].id], t + 2_000)
        .await
        .unwrap();
    assert!(late.is_empty(), "a lapsed lease's owner may not send");
    let d = store
        .claim_sending_after("d", Some(run), t + 2_000, t + 12_000, 10, None)
        .await
        .unwrap();
    assert_eq!(d.iter().map(|m| m.id).collect::<Vec<_>>(), [held[0].id]);
    let out = outcome(&d[0], MessageStatus::Delivered, "accepted", t + 2_000);
    store.record_outcomes(&[out], t + 2_000).await.unwrap();

    assert_eq!(
        counts(store, run).await,
        pairs(&[("delivered", 2), ("suppressed", 1), ("unknown", 1)])
    );
    assert_eq!(store.run_pending(run, t + 3_000).await.unwrap(), (0, 0));
    assert_eq!(
        store.finish_run_if_drained(run, t + 3_000).await.unwrap(),
        RunDrain::Over
    );
    assert_eq!(store.unfinished_plans("c").await.unwrap(), vec![]);
    assert!(
        store
            .finish_drained_runs(t + 4_000)
            .await
            .unwrap()
            .is_empty(),
        "already done"
    );
}

/// Handed rows are written as their expected outcome in a flight: the run
/// is pending while it is in the air; outcomes land it (a failed send
/// corrects its row and its attempt is not counted twice); a flight whose
/// lease lapses untouched ends `unknown`, and the late outcome's truth wins.
async fn handed_flights_land_or_lapse_and_the_truth_wins(store: &dyn Store, c: &[i64]) {
    let (campaign, run) = running(store, NOW).await;
    let rows = vec![email(c[0], NOW), email(c[1], NOW), email(c[2], NOW)];
    let handed = |until| Handed {
        rows: &[true, true, false],
        delivered_on_accept: &[Channel::Email],
        owner: "h",
        until,
    };
    let flight = store
        .insert_handed(run, campaign, &rows, handed(NOW + 1_000), NOW)
        .await
        .unwrap();
    assert_eq!(flight.len(), 2);
    assert!(flight.iter().all(|m| {
        m.written
            .is_some_and(|w| w.status == MessageStatus::Delivered)
    }));
    assert_eq!(
        counts(store, run).await,
        pairs(&[("delivered", 2), ("planned", 1)])
    );
    store.finish_planning(run).await.unwrap();
    assert_eq!(
        store.run_pending(run, NOW).await.unwrap(),
        (3, 0),
        "a flight counts as due"
    );
    let ok = outcome(&flight[0], MessageStatus::Delivered, "accepted", NOW);
    let mut retry = outcome(&flight[1], MessageStatus::Planned, "transient", NOW);
    retry.retry_at = Some(NOW + 500);
    store.record_outcomes(&[ok, retry], NOW).await.unwrap();
    assert_eq!(
        counts(store, run).await,
        pairs(&[("delivered", 1), ("planned", 2)])
    );
    assert_eq!(
        store.expire_leases(NOW + 2_000).await.unwrap(),
        0,
        "landed: nothing lapses"
    );
    let again = store
        .claim_sending_after("w", Some(run), NOW + 2_000, NOW + 3_000, 10, None)
        .await
        .unwrap();
    let retried = again.iter().find(|m| m.id == flight[1].id).unwrap();
    assert_eq!(retried.attempts, 1, "the written attempt is counted once");

    let (campaign, run) = running(store, NOW + 1).await;
    let flight = store
        .insert_handed(run, campaign, &rows, handed(NOW + 1_000), NOW)
        .await
        .unwrap();
    store.finish_planning(run).await.unwrap();
    assert_eq!(
        store.finish_run_if_drained(run, NOW).await.unwrap(),
        RunDrain::Pending
    );
    assert_eq!(store.expire_leases(NOW + 1_001).await.unwrap(), 2);
    assert_eq!(
        counts(store, run).await,
        pairs(&[("planned", 1), ("unknown", 2)])
    );
    // The worker was only slow: its outcomes arrive after the lapse, and are the truth.
    let late: Vec<Outcome> = flight
        .iter()
        .map(|m| outcome(m, MessageStatus::Delivered, "accepted", NOW))
        .collect();
    store.record_outcomes(&late, NOW + 1_500).await.unwrap();
    assert_eq!(
        counts(store, run).await,
        pairs(&[("delivered", 2), ("planned", 1)])
    );
}

/// A triggered message is keyed by its event: planned again (a restart,
/// a re-read) it is not inserted twice; the cursor only moves forward; the
/// run stays open when drained.
async fn a_triggered_row_is_inserted_once_per_event(store: &dyn Store, c: &[i64]) {
    let record = CampaignRecord {
        name: "t".into(),
        kind: "transactional".into(),
        topic: None,
        fingerprint: "f".into(),
        goal: None,
    };
    let campaign = store.upsert_campaign(&record, NOW).await.unwrap();
    let run = store.trigger_run(campaign, "f", NOW).await.unwrap();
    assert_eq!(run.state, "running");
    assert_eq!(
        store.trigger_run(campaign, "f", NOW + 1).await.unwrap().id,
        run.id
    );
    let row = |contact, trigger_id| TriggeredMessage {
        message: email(contact, NOW),
        trigger_id,
        trigger_at: NOW,
    };
    let rows = [row(c[0], 7), row(c[0], 8), row(c[1], 7)];
    assert_eq!(
        store
            .insert_triggered(run.id, campaign, &rows, 8, NOW)
            .await
            .unwrap(),
        3
    );
    assert_eq!(
        store
            .insert_triggered(run.id, campaign, &rows, 8, NOW)
            .await
            .unwrap(),
        0
    );
    assert_eq!(store.trigger_cursor(campaign, NOW).await.unwrap(), 8);
    store
        .insert_triggered(run.id, campaign, &[], 5, NOW)
        .await
        .unwrap();
    assert_eq!(
        store.trigger_cursor(campaign, NOW).await.unwrap(),
        8,
        "the cursor never goes back"
    );
    // A trigger's run never finishes on its own: its next event adds to it.
    let claimed = store
        .claim_sending_after("w", Some(run.id), NOW, NOW + 1_000, 10, None)
        .await
        .unwrap();
    let outcomes: Vec<Outcome> = claimed
        .iter()
        .map(|m| outcome(m, MessageStatus::Delivered, "accepted", NOW))
        .collect();
    store.record_outcomes(&outcomes, NOW).await.unwrap();
    assert_eq!(
        store.finish_run_if_drained(run.id, NOW).await.unwrap(),
        RunDrain::Over
    );
    assert_eq!(
        store
            .trigger_run(campaign, "f", NOW + 2)
            .await
            .unwrap()
            .state,
        "running"
    );
}

/// CUPED's history window, `[since, until)`, of [`pre_period_sums`].
const PRE_SINCE: i64 = NOW - 100_000;

/// The events [`pre_period_sums`] reads: (contact index, name, at, value).
/// Contact 1 ordered and bought inside the window; contact 2 bought at its
/// first instant and ordered at its end (outside: the end is exclusive);
/// contact 3 only opened the app; contact 4 has nothing.
const PRE_EVENTS: [(usize, &str, i64, f64); 5] = [
    (0, "order_placed", NOW - 1_000, 20.0),
    (0, "purchase", NOW - 2_000, 7.5),
    (1, "order_placed", NOW, 5.0),
    (1, "purchase", PRE_SINCE, 3.0),
    (2, "app_open", NOW - 10, 1.0),
];

/// CUPED's history per contact, on every store: (the goal happened, the
/// revenue event's sum, the goal event's sum), contacts with neither left out.
async fn pre_period_sums(store: &dyn Store, c: &[i64]) {
    let spec = herald_engine::store::PrePeriodSpec {
        goal: Some("order_placed".into()),
        revenue: Some("purchase".into()),
        since: PRE_SINCE,
        until: NOW,
    };
    let got = store.pre_period(c, &spec).await.unwrap();
    let mut got: Vec<_> = got.into_iter().collect();
    got.sort_by_key(|(id, _)| *id);
    assert_eq!(
        got,
        vec![(c[0], (true, 7.5, 20.0)), (c[1], (false, 3.0, 0.0))]
    );
}

mod pre_period_sums {
    use super::*;

    #[tokio::test]
    async fn memory() {
        let store = MemStore::new();
        let contacts = mem_contacts(&store);
        for (i, name, at, value) in PRE_EVENTS {
            store.add_event_valued(contacts[i], name, at, at, Some(value));
        }
        super::pre_period_sums(&store, &contacts).await;
    }

    async fn on_sql(db: &Db) {
        let contacts = sql_contacts(db).await;
        for (i, name, at, value) in PRE_EVENTS {
            let mut q = Sql::new();
            q.push("INSERT INTO events (contact_id, name, at, value, received_at) VALUES (")
                .bind(contacts[i])
                .push(",")
                .bind(name.to_string())
                .push(",")
                .bind(at)
                .push(",")
                .bind(value)
                .push(",")
                .bind(at)
                .push(")");
            db.conn.execute_raw(q.build(db.backend())).await.unwrap();
        }
        super::pre_period_sums(&SqlStore::new(db.clone()), &contacts).await;
    }

    #[tokio::test]
    async fn sqlite() {
        crate::test_db::both(sea_orm::DbBackend::Sqlite, "c", |db| {
            Box::pin(async move { on_sql(db).await })
        })
        .await
    }

    #[tokio::test]
    async fn postgres() {
        crate::test_db::both(sea_orm::DbBackend::Postgres, "c", |db| {
            Box::pin(async move { on_sql(db).await })
        })
        .await
    }
}
