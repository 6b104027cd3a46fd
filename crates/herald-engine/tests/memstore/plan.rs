//! Planning on the memstore: an audience becomes one message per member,
//! with the holdout held out and every suppression's reason; a run is
//! planned once; a dead planner's run is taken over after its lease.

use std::sync::Arc;

use herald_domain::assign::unit_hash;
use herald_domain::types::{Channel, MessageStatus};
use herald_engine::Engine;
use herald_engine::memstore::{MARKETING_UNSUBSCRIBE, MemContact, MemStore, MemSuppression};
use herald_engine::run::PLAN_LEASE_MS;
use herald_engine::store::Store;

use crate::support::*;

const NEWS: &str = "name = \"news\"\ntopic = \"weekly\"\nholdout = 0.2\nwhere = 'attrs.x == 1'\nchannels = [\"email\"]\n\n[[variants]]\nname = \"a\"\nemail = { subject = \"s\", template = \"a.email.hbs\" }\n";

#[tokio::test(start_paused = true)]
async fn an_audience_becomes_messages_with_the_holdout_and_each_reason() {
    let store = Arc::new(MemStore::new());
    // Contacts 1..=8 each show one rule: their ids are picked outside the
    // holdout, which is decided first. The rest are `c9..=c300`.
    let held = |external: &str| unit_hash("news", external) < 0.2;
    let mut free = (0..).map(|k| format!("r{k}")).filter(|x| !held(x));
    let mut ids: Vec<i64> = (1..=8)
        .map(|i| {
            let x = free.next().unwrap();
            store.add_contact(MemContact::email(&x, &format!("c{i}@example.com")))
        })
        .collect();
    ids.extend((9..=300).map(|i| {
        store.add_contact(MemContact::email(
            &format!("c{i}"),
            &format!("c{i}@example.com"),
        ))
    }));
    let c = |i: usize| ids[i - 1];
    store.edit_contact(c(1), |x| x.email = None);
    store.edit_contact(c(2), |x| x.email = Some("not-an-email".into()));
    store.edit_contact(c(3), |x| x.consent_email = Some(false));
    store.suppress(MemSuppression {
        channel: Some(Channel::Email),
        address: Some("c4@example.com".into()),
        contact_id: None,
        topic: None,
        reason: "550 no such user".into(),
    });
    store.suppress(MemSuppression {
        channel: Some(Channel::Email),
        address: None,
        contact_id: Some(c(5)),
        topic: None,
        reason: MARKETING_UNSUBSCRIBE.into(),
    });
    store.edit_contact(c(6), |x| x.topic_opt_outs = vec!["weekly".into()]);
    // Contact 8 shares contact 7's inbox: one email per address and step.
    store.edit_contact(c(8), |x| x.email = Some("c7@example.com".into()));
    // The audience (the filter is not evaluated): all but the last contact.
    store.set_audience(Some(&ids[..299]));
    let (config, campaign) = config(NEWS);
    let engine = Engine::new(store.clone(), clock(), config);
    let (run, plan) = engine.start_run(&campaign, T0, "manual").await.unwrap();
    assert!(plan.finished);
    assert_eq!(plan.members, 299, "the audience, not every contact");
    assert_eq!(store.run(run.id).unwrap().state, "running");

    let messages = store.messages(run.id);
    assert_eq!(messages.len(), 299);
    let of = |i: usize| messages.iter().find(|m| m.contact_id == c(i)).unwrap();
    let reasons = [
        (1, "no_address"),
        (2, "invalid_address"),
        (3, "no_consent"),
        (4, "opt_out"),
        (5, "opt_out"),
        (6, "opt_out"),
    ];
    for (i, why) in reasons {
        let m = of(i);
        assert_eq!(
            (m.status, m.reason.as_deref()),
            (MessageStatus::Suppressed, Some(why)),
            "contact {i}"
        );
    }
    assert_eq!(of(7).status, MessageStatus::Planned);
    assert_eq!(of(8).reason.as_deref(), Some("duplicate_address"));
    let mut held_out = 0;
    for i in 9..=299 {
        let m = of(i);
        let expect = if held(&format!("c{i}")) {
            held_out += 1;
            MessageStatus::HeldOut
        } else {
            MessageStatus::Planned
        };
        assert_eq!(m.status, expect, "c{i}");
        assert_eq!(m.send_at, T0);
    }
    assert!((30..90).contains(&held_out), "about a fifth: {held_out}");

    // The same (campaign, instant) again is the same run: nothing is planned twice.
    let (again, plan) = engine.start_run(&campaign, T0, "manual").await.unwrap();
    assert_eq!((again.id, again.created, plan.members), (run.id, false, 0));
    assert_eq!(store.messages(run.id).len(), 299);
}

/// A planner that died right after claiming its run holds it for the short
/// planning lease only; another planner then takes it over and finishes it.
#[tokio::test(start_paused = true)]
async fn a_dead_planners_run_is_taken_over_after_its_lease() {
    let store = Arc::new(MemStore::new());
    contacts(&store, 10);
    let (config, campaign) = config(NEWS);
    let clock = clock();
    let dead = Engine::with_owner(store.clone(), clock.clone(), config.clone(), "dead".into());
    let run = dead.create_run(&campaign, T0, "manual").await.unwrap();
    assert!(
        store
            .claim_planning(run.id, "dead", T0 + PLAN_LEASE_MS, T0)
            .await
            .unwrap()
    );
    let live = Engine::with_owner(store.clone(), clock.clone(), config, "live".into());
    let refused = live.plan(&campaign, &run).await.unwrap();
    assert!(!refused.finished, "the lease still holds");
    assert!(store.messages(run.id).is_empty());
    tokio::time::advance(std::time::Duration::from_millis(PLAN_LEASE_MS as u64 + 1)).await;
    let taken = live.plan(&campaign, &run).await.unwrap();
    assert!(taken.finished);
    assert_eq!(store.messages(run.id).len(), 10);
    assert_eq!(store.run(run.id).unwrap().planner.as_deref(), Some("live"));
}

/// A contact with no email who has a phone but no SMS consent: the reason
/// is the most specific one of the campaign's channels.
#[tokio::test(start_paused = true)]
async fn a_contact_out_of_reach_on_every_channel_gets_the_most_specific_reason() {
    let store = Arc::new(MemStore::new());
    let id = store.add_contact(MemContact {
        external_id: "u1".into(),
        phone: Some("+8613800138000".into()),
        ..MemContact::default()
    });
    let toml = NEWS
        .replace("holdout = 0.2\n", "")
        .replace("channels = [\"email\"]", "channels = [\"sms\", \"email\"]")
        .replace(
            "email = { subject",
            "sms = { template = \"a.sms.hbs\" }\nemail = { subject",
        );
    let (config, campaign) = config(&toml);
    let engine = Engine::new(store.clone(), clock(), config);
    let (run, _) = engine.start_run(&campaign, T0, "manual").await.unwrap();
    let m = &store.messages(run.id)[0];
    assert_eq!(m.contact_id, id);
    assert_eq!(m.reason.as_deref(), Some("no_consent"));
}
