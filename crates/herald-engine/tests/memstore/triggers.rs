//! Triggered campaigns on the memstore: an event plans a series once
//! (however often it is read again, by this planner or a restarted one),
//! only for the audience; an `exit` event cancels the steps still to come,
//! at planning or just before the send; leaving the audience does too.

use std::sync::Arc;
use std::time::Duration;

use herald_domain::types::{Channel, MessageStatus};
use herald_engine::Clock;
use herald_engine::memstore::MemStore;
use herald_engine::store::{CampaignRecord, Store};
use herald_engine::trigger::{CampaignGate, SETTLE_MS, TriggerPlanner};

use crate::support::*;

const WELCOME: &str = "name = \"welcome\"\nkind = \"transactional\"\nwhere = 'attrs.x == 1'\nchannels = [\"email\"]\ntrigger = { event = \"signup\", delay = \"0s\" }\nexit = { event = \"activated\" }\n\n[[variants]]\nname = \"a\"\nemail = { subject = \"s\", template = \"w/0.email.hbs\" }\n\n[[steps]]\ndelay = \"1h\"\nemail = { subject = \"day two\", template = \"w/1.email.hbs\" }\n";

#[tokio::test(start_paused = true)]
async fn an_event_plans_its_series_once_for_the_audience_only() {
    let store = Arc::new(MemStore::new());
    let ids = contacts(&store, 3);
    store.set_audience(Some(&ids[..2]));
    // Before the planner first looks: history, not a trigger.
    store.add_event(ids[0], "signup", T0 - 60_000, T0 - 60_000);
    let clock = clock();
    let (config, _) = config(WELCOME);
    let mut planner = TriggerPlanner::new(store.clone(), clock.clone(), config.clone());
    assert_eq!(planner.pass().await.unwrap().planned, 0);

    for id in &ids {
        store.add_event(*id, "signup", T0, T0);
    }
    let newest = store.add_event(ids[0], "pageview", T0, T0);
    let r = planner.pass().await.unwrap();
    assert_eq!(
        (r.events, r.planned),
        (3, 4),
        "two steps for each member; c3 is not one"
    );
    assert_eq!(
        planner.pass().await.unwrap().planned,
        0,
        "read again: nothing new"
    );
    let run = planner.run_of("welcome").unwrap();
    let steps: Vec<(i64, i32, i64)> = store
        .messages(run)
        .iter()
        .map(|m| (m.contact_id, m.step, m.send_at - T0))
        .collect();
    assert_eq!(
        steps,
        [
            (ids[0], 0, 0),
            (ids[0], 1, 3_600_000),
            (ids[1], 0, 0),
            (ids[1], 1, 3_600_000)
        ]
    );

    // A restart within the settling time reads those events again: nothing twice.
    let mut restarted = TriggerPlanner::new(store.clone(), clock.clone(), config.clone());
    assert_eq!(restarted.pass().await.unwrap().planned, 0);
    assert_eq!(store.messages(run).len(), 4);
    tokio::time::advance(Duration::from_millis(SETTLE_MS as u64 + 1)).await;
    restarted.pass().await.unwrap();
    let campaign_id = store
        .upsert_campaign(
            &CampaignRecord::of(&config.campaigns["welcome"]),
            clock.now_ms(),
        )
        .await
        .unwrap();
    assert_eq!(
        store
            .trigger_cursor(campaign_id, clock.now_ms())
            .await
            .unwrap(),
        newest - 1,
        "the cursor settles on the last signup"
    );
    assert_eq!(
        store.run(run).unwrap().state,
        "running",
        "a trigger's run stays open"
    );
}

#[tokio::test(start_paused = true)]
async fn an_exit_event_cancels_the_steps_to_come_and_so_does_leaving_the_audience() {
    let store = Arc::new(MemStore::new());
    let ids = contacts(&store, 4);
    let clock = clock();
    let (config, _) = config(WELCOME);
    let mut planner = TriggerPlanner::new(store.clone(), clock.clone(), config.clone());
    planner.pass().await.unwrap();
    for id in &ids[..3] {
        store.add_event(*id, "signup", T0, T0);
    }
    // Contact 4 activated right after signing up, before the planner looked.
    store.add_event(ids[3], "signup", T0, T0);
    store.add_event(ids[3], "activated", T0 + 1, T0 + 1);
    tokio::time::advance(Duration::from_millis(10)).await;
    assert_eq!(planner.pass().await.unwrap().planned, 8);
    let run = planner.run_of("welcome").unwrap();
    for m in store
        .messages(run)
        .iter()
        .filter(|m| m.contact_id == ids[3])
    {
        assert_eq!(
            (m.status, m.reason.as_deref()),
            (MessageStatus::Cancelled, Some("exit (activated)"))
        );
    }

    let fake = Fake::new();
    let gate = CampaignGate::for_config(store.clone(), config.clone()).unwrap();
    let d =
        dispatcher(&store, &clock, vec![(Channel::Email, route(&fake, 2))], "w").with_gate(gate);
    let stats = d.drain_run(run, &Plain).await.unwrap();
    assert_eq!(
        (stats.accepted, stats.later),
        (3, 3),
        "the first steps; the second wait"
    );

    // Contact 1 activates, contact 2 leaves the audience, before the second step.
    tokio::time::advance(Duration::from_secs(600)).await;
    store.add_event(ids[0], "activated", clock.now_ms(), clock.now_ms());
    store.set_audience(Some(&[ids[0], ids[2], ids[3]]));
    tokio::time::advance(Duration::from_secs(3000)).await;
    let stats = d.drain_run(run, &Plain).await.unwrap();
    assert_eq!((stats.accepted, stats.cancelled), (1, 2));
    let second = |id: i64| {
        store
            .messages(run)
            .into_iter()
            .find(|m| m.contact_id == id && m.step == 1)
            .unwrap()
    };
    assert_eq!(second(ids[0]).reason.as_deref(), Some("exit (activated)"));
    assert_eq!(
        second(ids[1]).reason.as_deref(),
        Some("no longer in the audience")
    );
    assert_eq!(second(ids[2]).status, MessageStatus::Delivered);
    assert_eq!(
        fake.calls_to(Some("c1@example.com")),
        1,
        "the first step only"
    );
    assert_eq!(fake.calls_to(Some("c4@example.com")), 0);
}
