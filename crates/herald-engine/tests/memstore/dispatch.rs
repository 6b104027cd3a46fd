//! Dispatch on the memstore, under paused time: retries wait their
//! backoff, a lapsed lease never sends a message twice, a permanent failure
//! falls back to the next channel once, an account fault blocks the route
//! and only probes go until one passes, and a lane keeps its route's rate.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use herald_channels::DeliveryError;
use herald_channels::pacer::Pacer;
use herald_channels::rate::RateLimit;
use herald_domain::types::{Channel, MessageStatus};
use herald_engine::dispatch::{DispatchStats, Route, claim_horizon};
use herald_engine::fallback::CampaignFallback;
use herald_engine::memstore::{LAPSED, MemStore};
use herald_engine::render::MessageRenderer;
use herald_engine::store::Store;
use herald_engine::{Clock, Engine, TokioClock};

use crate::support::*;

const ONE_EMAIL: &str = "name = \"news\"\nwhere = 'attrs.x == 1'\nchannels = [\"email\"]\n\n[[variants]]\nname = \"a\"\nemail = { subject = \"s\", template = \"a.email.hbs\" }\n";

/// `n` contacts and a run of [`ONE_EMAIL`] planned for them now: (store, clock, run).
async fn planned(n: usize) -> (Arc<MemStore>, Arc<TokioClock>, i64) {
    let store = Arc::new(MemStore::new());
    contacts(&store, n);
    let clock = clock();
    let (config, campaign) = config(ONE_EMAIL);
    let engine = Engine::new(store.clone(), clock.clone(), config);
    let (run, plan) = engine.start_run(&campaign, T0, "manual").await.unwrap();
    assert!(plan.finished);
    (store, clock, run.id)
}

fn results(store: &MemStore, id: i64) -> Vec<String> {
    store.attempts(id).into_iter().map(|a| a.result).collect()
}

/// The message of run `run` to `address`.
fn to(store: &MemStore, run: i64, address: &str) -> herald_engine::memstore::MemMessage {
    store
        .messages(run)
        .into_iter()
        .find(|m| m.address.as_deref() == Some(address))
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_transient_failure_is_retried_after_its_backoff_until_it_goes() {
    let (store, clock, run) = planned(3).await;
    let fake = Fake::new();
    fake.fail("c1@example.com", 2, transient());
    let mut d = dispatcher(&store, &clock, vec![(Channel::Email, route(&fake, 2))], "w");
    d.retry.max_attempts = 3;
    fake.fail("c2@example.com", 3, transient());
    let stats = d.drain_run(run, &Plain).await.unwrap();
    assert_eq!((stats.accepted, stats.failed), (2, 1));

    let m = to(&store, run, "c1@example.com");
    assert_eq!((m.status, m.attempts), (MessageStatus::Delivered, 3));
    assert_eq!(
        results(&store, m.id),
        ["transient", "transient", "accepted"]
    );
    // Each retry waited its backoff (1 s, then 2 s, spread), and no longer than a poll more.
    let at: Vec<i64> = store.attempts(m.id).iter().map(|a| a.at).collect();
    for (i, gap) in at.windows(2).map(|w| w[1] - w[0]).enumerate() {
        let wait = d.retry.wait_jittered(m.id, i as i32 + 1, None).as_millis() as i64;
        assert!(
            (wait..=wait + 100).contains(&gap),
            "retry {i}: waited {gap} ms, backoff {wait} ms"
        );
    }
    assert_eq!(fake.calls_to(Some("c1@example.com")), 3);

    let m = to(&store, run, "c2@example.com");
    assert_eq!((m.status, m.attempts), (MessageStatus::Failed, 3));
    assert!(
        m.reason
            .as_deref()
            .unwrap()
            .starts_with("attempts exhausted after 3"),
        "{:?}",
        m.reason
    );
    assert_eq!(store.run(run).unwrap().state, "done");
    assert!(
        clock.now_ms() - T0 < 10_000,
        "paused time moved only as far as the backoff"
    );
}

#[tokio::test(start_paused = true)]
async fn a_lapsed_lease_ends_unknown_and_the_message_is_never_sent_twice() {
    let (store, clock, run) = planned(5).await;
    let fake = Fake::new();
    // A worker claims three (marked `sending` in the claim) and dies before sending.
    let mut crashed = dispatcher(
        &store,
        &clock,
        vec![(Channel::Email, route(&fake, 1))],
        "crashed",
    );
    crashed.batch = 3;
    crashed.lease = Duration::from_secs(10);
    let claimed = crashed
        .claim(Some(run), &mut DispatchStats::default())
        .await
        .unwrap();
    assert_eq!(claimed.len(), 3);
    drop(crashed);
    // Another claims the other two without marking them, and dies too.
    let now = clock.now_ms();
    let held = store
        .claim_due("crashed-too", Some(run), now, now + 10_000, 10)
        .await
        .unwrap();
    assert_eq!(held.len(), 2);

    let mut survivor = dispatcher(
        &store,
        &clock,
        vec![(Channel::Email, route(&fake, 1))],
        "survivor",
    );
    survivor.lease = Duration::from_secs(10);
    // While the leases hold, nothing is claimable.
    let none = survivor
        .claim(Some(run), &mut DispatchStats::default())
        .await
        .unwrap();
    assert!(none.is_empty());
    // Too late for the dead owner: its lease lapsed, another may hold the message.
    tokio::time::advance(Duration::from_secs(11)).await;
    let now = clock.now_ms();
    let late: Vec<i64> = held.iter().map(|m| m.id).collect();
    assert!(
        store
            .mark_sending("crashed-too", &late, now)
            .await
            .unwrap()
            .is_empty()
    );

    let stats = survivor.drain_run(run, &Plain).await.unwrap();
    assert_eq!(
        stats.accepted, 2,
        "the claims that never reached `sending` are sent"
    );
    for m in &claimed {
        let row = store.message(m.id).unwrap();
        assert_eq!(
            (row.status, row.reason.as_deref()),
            (MessageStatus::Unknown, Some(LAPSED))
        );
        assert_eq!(fake.calls_to(Some(&m.address)), 0, "never resent");
    }
    for m in &held {
        assert_eq!(
            store.message(m.id).unwrap().status,
            MessageStatus::Delivered
        );
        assert_eq!(fake.calls_to(Some(&m.address)), 1);
    }
    assert_eq!(store.run(run).unwrap().state, "done");
}

/// Outcomes are never dropped: while the database refuses them the worker
/// keeps its batch and tries again (0.5 s, 1 s, 2 s...), claiming nothing
/// meanwhile; once it is back they land, and nothing was sent twice.
#[tokio::test(start_paused = true)]
async fn outcomes_are_written_once_the_database_is_back_and_nothing_is_resent() {
    let (store, clock, run) = planned(3).await;
    let fake = Fake::new();
    store.fail_records(3);
    let d = dispatcher(&store, &clock, vec![(Channel::Email, route(&fake, 3))], "w");
    let stats = d.drain_run(run, &Plain).await.unwrap();
    assert_eq!(stats.accepted, 3);
    for m in store.messages(run) {
        assert_eq!((m.status, m.attempts), (MessageStatus::Delivered, 1));
    }
    assert_eq!(fake.calls_to(None), 3, "each sent once");
    let waited = clock.now_ms() - T0;
    assert!(
        (3_500..4_000).contains(&waited),
        "0.5 + 1 + 2 s of retries: {waited} ms"
    );
}

const PUSH_THEN_EMAIL: &str = "name = \"news\"\nwhere = 'attrs.x == 1'\nchannels = [\"push\", \"email\"]\n\n[[variants]]\nname = \"a\"\npush = { title = \"t\", template = \"a.push.hbs\" }\nemail = { subject = \"s\", template = \"a.email.hbs\" }\n";

#[tokio::test(start_paused = true)]
async fn a_permanent_failure_falls_back_to_the_next_channel_once() {
    let store = Arc::new(MemStore::new());
    let ids = contacts(&store, 2);
    for (i, id) in ids.iter().enumerate() {
        store.edit_contact(*id, |c| c.push_token = Some(format!("tok-{}", i + 1)));
    }
    let clock = clock();
    let (config, campaign) = config(PUSH_THEN_EMAIL);
    let engine = Engine::new(store.clone(), clock.clone(), config.clone());
    let (run, _) = engine.start_run(&campaign, T0, "manual").await.unwrap();
    let (push, email) = (Fake::new(), Fake::new());
    let unregistered = DeliveryError::Permanent {
        code: "UNREGISTERED".into(),
        detail: "FCM UNREGISTERED".into(),
        suppress_address: true,
    };
    push.fail("tok-1", 1, unregistered.clone());
    push.fail("tok-2", 1, unregistered);
    // Contact 2's email is dead too: the fallback happens once only.
    email.fail(
        "c2@example.com",
        1,
        DeliveryError::Permanent {
            code: "550".into(),
            detail: "550 no such user".into(),
            suppress_address: true,
        },
    );
    let fallback = CampaignFallback::for_config(store.clone(), config).unwrap();
    let d = dispatcher(
        &store,
        &clock,
        vec![
            (Channel::Push, route(&push, 2)),
            (Channel::Email, route(&email, 2)),
        ],
        "w",
    )
    .with_fallback(fallback);
    d.drain_run(run.id, &Plain).await.unwrap();

    let one = store
        .messages(run.id)
        .into_iter()
        .find(|m| m.contact_id == ids[0])
        .unwrap();
    assert_eq!(
        (one.status, one.channel, one.fallback_from),
        (
            MessageStatus::Delivered,
            Some(Channel::Email),
            Some(Channel::Push)
        )
    );
    assert_eq!(results(&store, one.id), ["permanent", "accepted"]);
    assert!(
        store.token_invalid("tok-1"),
        "the unregistered token is not used again"
    );
    let two = store
        .messages(run.id)
        .into_iter()
        .find(|m| m.contact_id == ids[1])
        .unwrap();
    assert_eq!(
        (two.status, two.channel, two.fallback_from),
        (
            MessageStatus::Failed,
            Some(Channel::Email),
            Some(Channel::Push)
        )
    );
    assert_eq!(results(&store, two.id), ["permanent", "permanent"]);
    assert!(
        store
            .suppressions()
            .iter()
            .any(|s| s.address.as_deref() == Some("c2@example.com")),
        "a hard bounce suppresses the address"
    );
    assert_eq!((push.calls_to(None), email.calls_to(None)), (2, 2));
}

#[tokio::test(start_paused = true)]
async fn an_account_fault_blocks_the_route_and_only_probes_go_until_one_passes() {
    let (store, clock, run) = planned(4).await;
    let fake = Fake::new();
    fake.fail_all(account_fault());
    let d = dispatcher(&store, &clock, vec![(Channel::Email, route(&fake, 1))], "w")
        .with_lane(Channel::Email, 1);
    let renderers: HashMap<String, Arc<dyn MessageRenderer>> = [(
        "news".to_string(),
        Arc::new(Plain) as Arc<dyn MessageRenderer>,
    )]
    .into();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(async move { d.work(&renderers, stopped).await });

    tokio::time::sleep(Duration::from_secs(10)).await;
    // The first send and the probes at about 1, 3 and 7 s: the backoff doubles.
    let calls: Vec<tokio::time::Instant> = fake.calls.lock().unwrap().iter().map(|c| c.1).collect();
    assert_eq!(calls.len(), 4, "one refused send, then probes only");
    for (i, gap) in calls.windows(2).map(|w| w[1] - w[0]).enumerate() {
        let backoff = Duration::from_secs(1 << i);
        assert!(
            gap >= backoff && gap <= backoff + Duration::from_millis(200),
            "probe {i}: {gap:?} after the last, backoff {backoff:?}"
        );
    }
    for m in store.messages(run) {
        // Held for the route's fault, not theirs: planned, no attempt counted.
        assert_eq!((m.status, m.attempts), (MessageStatus::Planned, 0));
    }
    let block = store
        .route_block("email")
        .expect("the block, for `herald status`");
    assert!(block.reason.contains("20003"), "{}", block.reason);

    fake.heal();
    tokio::time::sleep(Duration::from_secs(10)).await;
    for m in store.messages(run) {
        assert_eq!((m.status, m.attempts), (MessageStatus::Delivered, 1));
    }
    assert!(
        store.route_block("email").is_none(),
        "the probe passed: unblocked"
    );
    assert_eq!(fake.accepted(), 4);
    stop.send(true).unwrap();
    worker.await.unwrap().unwrap();
    assert_eq!(store.run(run).unwrap().state, "done");
}

/// The only test on real time: a route's pacer runs on governor's real
/// clock, which tokio's paused time does not move (see docs/architecture.md).
#[tokio::test]
async fn a_lane_claims_its_routes_horizon_and_keeps_its_rate() {
    let limit = RateLimit {
        per_second: 20,
        burst: Some(1),
    };
    let paced = |fake: &Arc<Fake>| Route::new(fake.clone(), Arc::new(Pacer::new(Some(limit))), 1);
    // A lane claims about a second of its route plus its concurrency, never a batch.
    let (store, clock, run) = planned(40).await;
    let fake = Fake::new();
    let lane = dispatcher(&store, &clock, vec![(Channel::Email, paced(&fake))], "w")
        .with_lane(Channel::Email, 1);
    let claimed = lane
        .claim(Some(run), &mut DispatchStats::default())
        .await
        .unwrap();
    assert_eq!(claimed.len() as u32, claim_horizon(Some(20.0), 1, 1, 500));
    assert_eq!(claimed.len(), 21);

    let (store, clock, run) = planned(11).await;
    let fake = Fake::new();
    let lane = dispatcher(&store, &clock, vec![(Channel::Email, paced(&fake))], "w")
        .with_lane(Channel::Email, 1);
    let started = std::time::Instant::now();
    let stats = lane.drain_run(run, &Plain).await.unwrap();
    assert_eq!(stats.accepted, 11);
    let took = started.elapsed();
    // Eleven sends at 20/s: ten intervals of 50 ms.
    assert!(took >= Duration::from_millis(450), "{took:?}");
    // Generous: the machine may be loaded; the pacer's own tests bound it tightly.
    assert!(took < Duration::from_secs(30), "{took:?}");
}
