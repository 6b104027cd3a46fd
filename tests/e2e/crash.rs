//! The ledger under crashes and churn (issue #23), through the real daemon:
//! a planner killed mid-plan is taken over within seconds of a restart; a
//! daemon sending SMS to a Twilio peer at 100/s, killed -9 at random
//! instants, never sends a message twice, leaves at most its claim horizon
//! `unknown` per kill, and a report read right after a kill never counts
//! more than the peer received; two daemons joining and leaving a running
//! run keep the busiest second at the receiver within rate + burst.
//!
//! CI runs small versions; the full sizes are `#[ignore]`d benchmarks whose
//! figures are in `docs/benchmarks.md`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use herald_sinks::{
    DEMO_ACCOUNT_SID, DEMO_AUTH_TOKEN, SmtpSink, SmtpSinkConfig, TwilioSink, TwilioSinkConfig,
};
use herald_tests::{Backend, Project, TestDb};

use crate::daemon::{Lcg, contacts_csv, daemon_project, term, wait_done, wait_started};
use crate::{scalar, setup};

const TWILIO_ENV: [(&str, &str); 2] = [("TW_SID", DEMO_ACCOUNT_SID), ("TW_TOKEN", DEMO_AUTH_TOKEN)];

/// Waits for `child` killed with SIGKILL.
fn kill9(child: &mut std::process::Child) {
    child.kill().expect("SIGKILL");
    tokio::task::block_in_place(|| child.wait()).expect("wait");
}

/// A daemon killed while it plans a large audience: a restarted daemon
/// takes the run over within 10 s (the planning lease is 5 s and
/// heartbeated, not the 2 min it was), plans the rest and sends every
/// message at most once.
async fn a_killed_planners_run_resumes_within_10_s_of_a_restart(backend: Backend) {
    const AUDIENCE: usize = 20_000;
    let Some((p, db)) = setup(backend).await else {
        return;
    };
    let sink = SmtpSink::start(SmtpSinkConfig {
        keep_messages: false,
        ..SmtpSinkConfig::default()
    })
    .await
    .expect("sink");
    let at = chrono::Utc::now();
    daemon_project(&p, sink.addr().port(), at, "batch = 20\nlease = \"2s\"", "");
    contacts_csv(&p, AUDIENCE);
    p.herald(&db, &["import", "contacts", "contacts.csv"])
        .expect_code(0);
    let mut planner = p.spawn(&db, "planner", &["run", "--name", "planner"]);
    let t0 = Instant::now();
    loop {
        let planning = scalar(&db, "SELECT COUNT(*) FROM runs WHERE state = 'planning'").await;
        let written = scalar(&db, "SELECT COUNT(*) FROM messages").await;
        if planning == 1 && written > 0 {
            break;
        }
        assert!(
            written < AUDIENCE as i64,
            "the plan ended before it could be killed: raise the audience"
        );
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no plan began\n{:?}",
            p.output_of("planner")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    kill9(&mut planner);
    let at_kill = scalar(&db, "SELECT COUNT(*) FROM messages").await;
    assert_eq!(
        scalar(&db, "SELECT COUNT(*) FROM runs WHERE state = 'planning'").await,
        1,
        "killed while planning"
    );
    let mut resumed = p.spawn(&db, "resumed", &["run", "--name", "resumed"]);
    let restart = Instant::now();
    // The plan resumes when the new daemon holds its lease and writes: a
    // count alone could grow by a page the killed process had committing
    // (PostgreSQL finishes a COMMIT its dead client sent).
    while scalar(&db, "SELECT COUNT(*) FROM runs WHERE planner = 'resumed'").await == 0
        || scalar(&db, "SELECT COUNT(*) FROM messages").await <= at_kill
    {
        assert!(
            restart.elapsed() < Duration::from_secs(10),
            "the plan did not resume within 10 s of the restart ({at_kill} messages written)\n{:?}",
            p.output_of("resumed")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = restart.elapsed();
    wait_done(&db, AUDIENCE as i64, Duration::from_secs(300)).await;
    wait_started(&p, "resumed").await;
    assert_eq!(term(&mut resumed), 0, "{:?}", p.output_of("resumed"));
    let per = sink.per_recipient();
    assert!(
        per.values().all(|&n| n == 1),
        "nobody gets the message twice"
    );
    let delivered = scalar(
        &db,
        "SELECT COUNT(*) FROM messages WHERE status = 'delivered'",
    )
    .await;
    assert!(per.len() as i64 >= delivered);
    eprintln!(
        "planner takeover: killed at {at_kill} messages written, resumed {took:?} after the restart"
    );
    db.drop_db().await;
}

/// A project sending SMS campaign `blast` (due at `at`, one variant) to
/// `audience` phones through `twilio`, its route `(rate/s, burst,
/// concurrency)`, under `[dispatch] dispatch`.
fn sms_project(
    p: &Project,
    twilio: &TwilioSink,
    audience: usize,
    (rate, burst, concurrency): (usize, usize, usize),
    dispatch: &str,
    at: chrono::DateTime<chrono::Utc>,
) {
    p.write(
        "config/herald.toml",
        &format!(
            "[tracking]\npublic_url = \"https://t.example.com\"\nlisten = \"127.0.0.1:0\"\n\n\
             [channels.sms]\nprovider = \"twilio\"\nbase_url = \"{}\"\naccount_sid_env = \"TW_SID\"\nauth_token_env = \"TW_TOKEN\"\nfrom = \"+15005550006\"\nrate = {{ per_second = {rate}, burst = {burst} }}\nconcurrency = {concurrency}\n\n\
             [dispatch]\n{dispatch}\n",
            twilio.base_url(),
        ),
    );
    p.write(
        "config/campaigns/blast.toml",
        &format!(
            "name = \"blast\"\nkind = \"transactional\"\nwhere = 'phone contains \"+\"'\nchannels = [\"sms\"]\nschedule = {{ at = \"{}\" }}\ncatch_up = \"1h\"\n\n\
             [[variants]]\nname = \"a\"\nsms = {{ template = \"t/a.sms.hbs\" }}\n",
            at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ),
    );
    p.write("templates/t/a.sms.hbs", "Sale today\n");
    let mut csv = String::from("external_id,phone,consent_sms\n");
    for i in 0..audience {
        csv.push_str(&format!("p{i},+1415{i:07},true\n"));
    }
    p.write("contacts.csv", &csv);
}

/// Sent (provider reached) in `herald report blast`, over every arm.
fn reported_sent(p: &Project, db: &TestDb) -> i64 {
    let run = p.herald(db, &["report", "blast", "--format", "json"]);
    run.expect_code(0);
    let r: serde_json::Value = serde_json::from_str(&run.stdout()).expect("JSON report");
    r["total"]["arms"]
        .as_array()
        .expect("arms")
        .iter()
        .map(|a| a["sent"].as_i64().unwrap_or(0))
        .sum()
}

/// The SMS route's claim horizon: about a second at its rate plus its concurrency.
const CRASH_RATE: usize = 100;
const CRASH_CONCURRENCY: usize = 8;

/// kill -9 at random instants of a daemon sending SMS at 100/s with 8 in
/// flight, `kills` times, then one daemon finishes: no message sent twice
/// (requests counted at the peer per number), every message ends `sent` or
/// `unknown`, `unknown` at most `kills × (rate + concurrency)`, and the
/// report read right after each kill never says more was sent than the
/// peer received.
async fn crash_at_100_per_second(backend: Backend, audience: usize, kills: usize) {
    let Some((p, db)) = setup(backend).await else {
        return;
    };
    let twilio = TwilioSink::start(TwilioSinkConfig::default())
        .await
        .expect("twilio");
    sms_project(
        &p,
        &twilio,
        audience,
        (CRASH_RATE, 5, CRASH_CONCURRENCY),
        "lease = \"2s\"",
        chrono::Utc::now(),
    );
    p.herald(&db, &["import", "contacts", "contacts.csv"])
        .expect_code(0);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_nanos() as u64;
    eprintln!("crash test seed {seed}");
    let mut rng = Lcg(seed);
    let started = Instant::now();
    let mut done = 0;
    for k in 0..kills {
        let name = format!("killed-{k}");
        let mut daemon = p.spawn_with_env(&db, &name, &["run", "--no-server"], &TWILIO_ENV);
        // Wait until this life sends, then kill it 0.2 to 3 s later.
        let before = twilio.count();
        let t0 = Instant::now();
        while twilio.count() == before && twilio.count() < audience {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "life {k} never sent\n{:?}",
                p.output_of(&name)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(200 + rng.next() % 2_800)).await;
        kill9(&mut daemon);
        done += 1;
        let received = twilio.count() as i64;
        let reported = reported_sent(&p, &db);
        assert!(
            reported <= received,
            "after kill {k} the report says {reported} sent, the peer received {received} (seed {seed})"
        );
        if twilio.count() >= audience {
            break;
        }
    }
    let mut last = p.spawn_with_env(&db, "last", &["run", "--no-server"], &TWILIO_ENV);
    wait_done(&db, audience as i64, Duration::from_secs(600)).await;
    wait_started(&p, "last").await;
    assert_eq!(term(&mut last), 0, "{:?}", p.output_of("last"));
    let took = started.elapsed();

    let mut per: HashMap<String, usize> = HashMap::new();
    for m in twilio.received() {
        *per.entry(m.to).or_default() += 1;
    }
    let twice = per.values().filter(|&&n| n > 1).count();
    assert_eq!(twice, 0, "numbers that got the SMS twice (seed {seed})");
    let sent = scalar(&db, "SELECT COUNT(*) FROM messages WHERE status = 'sent'").await;
    let unknown = scalar(
        &db,
        "SELECT COUNT(*) FROM messages WHERE status = 'unknown'",
    )
    .await;
    assert_eq!(
        sent + unknown,
        audience as i64,
        "every message ends sent or unknown (seed {seed})"
    );
    assert!(per.len() as i64 >= sent, "every sent message was received");
    let bound = done as i64 * (CRASH_RATE + CRASH_CONCURRENCY) as i64;
    eprintln!(
        "crash test ({backend:?}): {done} kills, {sent} sent, {unknown} unknown (bound {bound}), {} received, {} of them unknown, {took:?}",
        per.len(),
        per.len() as i64 - sent
    );
    assert!(
        unknown <= bound,
        "{unknown} unknown after {done} kills, over the claim horizon's {bound} (seed {seed})"
    );
    db.drop_db().await;
}

/// CI's crash test: 3 kills, 2,000 SMS at 100/s.
async fn sigkill_x3_at_100_per_second_sends_nothing_twice(backend: Backend) {
    crash_at_100_per_second(backend, 2_000, 3).await;
}

on_both_databases!(
    a_killed_planners_run_resumes_within_10_s_of_a_restart,
    sigkill_x3_at_100_per_second_sends_nothing_twice,
);

/// The crash benchmark: kill -9 ×20, 20,000 SMS at 100/s, concurrency 8
/// (target: `unknown` ≤ 2,160 in all). `cargo test --workspace --test e2e --
/// --ignored crash_benchmark`.
mod crash_benchmark {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "benchmark: minutes"]
    async fn sqlite() {
        super::crash_at_100_per_second(herald_tests::Backend::Sqlite, 20_000, 20).await;
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "benchmark: minutes"]
    async fn postgres() {
        super::crash_at_100_per_second(herald_tests::Backend::Postgres, 20_000, 20).await;
    }
}

const CHURN_RATE: usize = 20;
const CHURN_BURST: usize = 5;

/// Two daemons on one PostgreSQL database sending one SMS route limited to
/// 20/s (burst 5): one stays, the other joins and leaves (SIGTERM) `cycles`
/// times. At the receiver, the busiest sliding second stays within rate +
/// burst, and nobody gets the SMS twice.
async fn join_and_leave(cycles: usize, audience: usize, jitter: usize) {
    let Some((p, db)) = setup(Backend::Postgres).await else {
        return;
    };
    let twilio = TwilioSink::start(TwilioSinkConfig::default())
        .await
        .expect("twilio");
    sms_project(
        &p,
        &twilio,
        audience,
        (CHURN_RATE, CHURN_BURST, 4),
        "lease = \"5s\"",
        chrono::Utc::now() + chrono::Duration::seconds(3),
    );
    p.herald(&db, &["import", "contacts", "contacts.csv"])
        .expect_code(0);
    let mut stays = p.spawn_with_env(&db, "stays", &["run", "--name", "stays"], &TWILIO_ENV);
    wait_started(&p, "stays").await;
    let t0 = Instant::now();
    while twilio.count() == 0 {
        assert!(t0.elapsed() < Duration::from_secs(60), "nothing sent");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for c in 0..cycles {
        let name = format!("joins-{c}");
        let mut joins = p.spawn_with_env(
            &db,
            &name,
            &["run", "--name", &name, "--no-server"],
            &TWILIO_ENV,
        );
        wait_started(&p, &name).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(term(&mut joins), 0, "{:?}", p.output_of(&name));
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(
            twilio.count() < audience,
            "the run ended during cycle {c}: raise the audience"
        );
    }
    wait_done(&db, audience as i64, Duration::from_secs(600)).await;
    assert_eq!(term(&mut stays), 0, "{:?}", p.output_of("stays"));
    let received = twilio.received();
    let distinct: std::collections::HashSet<_> = received.iter().map(|m| m.to.clone()).collect();
    assert_eq!(distinct.len(), received.len(), "nobody got the SMS twice");
    let busiest = twilio.requests().max_in_window(Duration::from_secs(1));
    eprintln!(
        "join and leave x{cycles}: busiest second {busiest} against {CHURN_RATE}/s + burst {CHURN_BURST}; {} received",
        received.len()
    );
    assert!(
        busiest <= CHURN_RATE + CHURN_BURST + jitter,
        "{busiest} requests in one second against {CHURN_RATE}/s + burst {CHURN_BURST} (+{jitter} for arrival jitter)"
    );
    db.drop_db().await;
}

/// CI's version: 2 joins and leaves. Requests sent within the limit can
/// arrive closer together at the receiver on a loaded CI machine (a request
/// delayed in the kernel lands beside the next one), so this version allows
/// 2 more; the full benchmark below holds the exact bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_joining_and_leaving_keep_the_shared_rate() {
    join_and_leave(2, 600, 2).await;
}

/// The issue's: 7 joins and leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: a minute"]
async fn two_daemons_joining_and_leaving_7_times_keep_the_shared_rate() {
    join_and_leave(7, 1_600, 0).await;
}
