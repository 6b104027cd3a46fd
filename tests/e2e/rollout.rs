//! Rollout (`[rollout]`), end to end through the real binary and a real SMTP
//! server: `herald send` sends the test fraction and says the rest waits;
//! conversions are imported for the test's contacts; the daemon decides after
//! `decide_after` and sends the winner to the rest. Nobody gets two messages,
//! the holdout gets none, and `herald report --format json` shows the
//! decision. Without a clear winner the decision waits until `decide_by`
//! (default twice `decide_after`), then the leader goes, and it says why.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use herald_domain::assign::unit_hash;
use herald_sinks::{SmtpSink, SmtpSinkConfig};
use herald_tests::{Backend, Project, TestDb};
use sea_orm::{ConnectionTrait, Database, Statement};
use serde_json::Value;

use crate::setup;

const AUDIENCE: usize = 400;

fn rollout_project(p: &Project, port: u16) {
    p.write(
        "config/herald.toml",
        &format!(
            "[tracking]\npublic_url = \"https://t.example.com\"\nlisten = \"127.0.0.1:0\"\n\n[channels.email]\nprovider = \"smtp\"\nhost = \"127.0.0.1\"\nport = {port}\nfrom = \"Shop <news@example.com>\"\nbounce_domain = \"bounces.example.com\"\nconcurrency = 4\n"
        ),
    );
    p.write(
        "config/campaigns/launch.toml",
        "name = \"launch\"\nwhere = 'email contains \"@\"'\nchannels = [\"email\"]\ngoal = { event = \"order_placed\", within = \"1d\" }\nholdout = 0.1\n\n\
         [rollout]\ntest_fraction = 0.3\ndecide_after = \"2s\"\nmetric = \"conversion\"\n\n\
         [[variants]]\nname = \"a\"\nemail = { subject = \"Offer A\", template = \"t/a.email.hbs\" }\n\n\
         [[variants]]\nname = \"b\"\nemail = { subject = \"Offer B\", template = \"t/b.email.hbs\" }\n",
    );
    p.write(
        "templates/t/a.email.hbs",
        "<p>A for {{contact.external_id}}</p>\n",
    );
    p.write(
        "templates/t/b.email.hbs",
        "<p>B for {{contact.external_id}}</p>\n",
    );
    let mut csv = String::from("external_id,email\n");
    for i in 0..AUDIENCE {
        csv.push_str(&format!("u{i},u{i}@example.com\n"));
    }
    p.write("contacts.csv", &csv);
}

async fn rows(db: &TestDb, sql: &str) -> Vec<sea_orm::QueryResult> {
    let conn = Database::connect(&db.url).await.expect("connect");
    conn.query_all_raw(Statement::from_string(conn.get_database_backend(), sql))
        .await
        .expect(sql)
}

async fn scalar(db: &TestDb, sql: &str) -> i64 {
    rows(db, sql).await[0]
        .try_get_by_index::<i64>(0)
        .expect("i64")
}

fn iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .expect("instant")
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn term(child: &mut std::process::Child) -> i32 {
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill -TERM")
        .success();
    assert!(ok, "kill -TERM");
    let status = tokio::task::block_in_place(|| child.wait()).expect("wait");
    status.code().unwrap_or(-1)
}

/// The subject each recipient got, from the SMTP sink.
fn subjects(sink: &SmtpSink) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for mail in sink.received() {
        let text = String::from_utf8_lossy(&mail.data).into_owned();
        let subject = text
            .lines()
            .find_map(|l| l.strip_prefix("Subject: "))
            .unwrap_or("")
            .trim()
            .to_string();
        for to in &mail.rcpt_to {
            out.entry(to.clone()).or_default().push(subject.clone());
        }
    }
    out
}

/// `herald send`, conversions for the test's contacts at `rate(arm)`, then the
/// daemon until nothing waits or is pending; returns the report's JSON.
async fn send_test_then_decide(
    p: &Project,
    db: &TestDb,
    sink: &SmtpSink,
    rate: fn(&str) -> f64,
) -> Value {
    p.herald(db, &["import", "contacts", "contacts.csv"])
        .expect_code(0);
    let send = p.herald(db, &["send", "launch"]);
    send.expect_code(0);
    assert!(
        send.stdout().contains("wait for the decision at"),
        "{}",
        send.stdout()
    );
    let tested = scalar(db, "SELECT COUNT(*) FROM messages WHERE arm IN ('a', 'b')").await;
    let waiting = scalar(db, "SELECT COUNT(*) FROM messages WHERE arm = 'rollout:*'").await;
    assert!(tested > 50 && waiting > 2 * tested, "{tested} {waiting}");
    assert_eq!(sink.count() as i64, tested, "only the test is sent");

    let mut events = String::from("external_id,name,at,value,event_id\n");
    for m in rows(
        db,
        "SELECT c.external_id, m.arm, m.send_at FROM messages m JOIN contacts c ON c.id = m.contact_id WHERE m.arm IN ('a', 'b')",
    )
    .await
    {
        let external_id: String = m.try_get_by_index(0).unwrap();
        let arm: String = m.try_get_by_index(1).unwrap();
        let send_at: i64 = m.try_get_by_index(2).unwrap();
        if unit_hash("e2e-rollout-order", &external_id) < rate(&arm) {
            events.push_str(&format!(
                "{external_id},order_placed,{},25,o-{external_id}\n",
                iso(send_at + 60_000)
            ));
        }
    }
    p.write("outcomes.csv", &events);
    p.herald(db, &["import", "events", "outcomes.csv"])
        .expect_code(0);

    let mut daemon = p.spawn(db, "daemon", &["run"]);
    let t0 = Instant::now();
    loop {
        let left = scalar(
            db,
            "SELECT (SELECT COUNT(*) FROM messages WHERE arm = 'rollout:*' OR status IN ('planned', 'sending')) + (SELECT COUNT(*) FROM flights)",
        )
        .await;
        if left == 0 {
            break;
        }
        let (out, err) = p.output_of("daemon");
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "{left} message(s) still waiting or pending\n{out}\n{err}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let code = term(&mut daemon);
    let (out, err) = p.output_of("daemon");
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("rollout released"), "{out}\n{err}");

    let report = p.herald(db, &["report", "launch", "--format", "json"]);
    report.expect_code(0);
    serde_json::from_str(&report.stdout()).expect("report JSON")
}

/// Who got what: every message of the run by address, with its arm.
async fn arms_by_address(db: &TestDb) -> HashMap<String, String> {
    rows(
        db,
        "SELECT address, arm FROM messages WHERE address IS NOT NULL",
    )
    .await
    .iter()
    .map(|r| {
        (
            r.try_get_by_index(0).unwrap(),
            r.try_get_by_index(1).unwrap(),
        )
    })
    .collect()
}

/// What every rollout end to end must show: each contact got at most one
/// email; the holdout none; the rest only `winner`'s; the report's arms.
async fn check_release(db: &TestDb, sink: &SmtpSink, report: &Value, winner: &str) {
    let got = subjects(sink);
    assert!(got.values().all(|s| s.len() == 1), "nobody gets two emails");
    let arms = arms_by_address(db).await;
    let held: HashSet<String> = rows(
        db,
        "SELECT c.email FROM messages m JOIN contacts c ON c.id = m.contact_id WHERE m.arm = 'holdout'",
    )
    .await
    .iter()
    .map(|r| r.try_get_by_index(0).unwrap())
    .collect();
    assert!(!held.is_empty());
    assert!(
        held.iter().all(|e| !got.contains_key(e)),
        "the holdout got nothing"
    );
    let released = format!("rollout:{winner}");
    let subject = format!("Offer {}", winner.to_uppercase());
    let mut rest = 0;
    for (address, arm) in &arms {
        let subjects = got.get(address).map(Vec::as_slice).unwrap_or_default();
        match arm.as_str() {
            "a" => assert_eq!(subjects, ["Offer A"], "{address}"),
            "b" => assert_eq!(subjects, ["Offer B"], "{address}"),
            a if a == released => {
                assert_eq!(subjects, std::slice::from_ref(&subject), "{address}");
                rest += 1;
            }
            other => panic!("{address}: unexpected arm {other}"),
        }
    }
    assert!(rest > 100, "{rest}");
    assert_eq!(
        scalar(db, "SELECT COUNT(*) FROM messages WHERE arm = 'rollout:*'").await,
        0
    );
    // The report: the decision, and the rest shown apart from the test.
    let ro = &report["rollouts"][0];
    assert_eq!(ro["chosen"], winner, "{ro}");
    assert_eq!(ro["metric"], "conversion");
    assert_eq!(
        ro["window_cut_short"], true,
        "decided inside the 1d goal window"
    );
    let rest_arm = report["total"]["arms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["arm"] == released.as_str())
        .expect("the released arm is in the report");
    assert_eq!(rest_arm["rollout"]["state"], "released");
    assert_eq!(rest_arm["rollout"]["variant"], winner);
    assert_eq!(rest_arm["assigned"], rest);
    for c in report["total"]["comparisons"].as_array().unwrap() {
        assert!(
            !c["variant"].as_str().unwrap().starts_with("rollout"),
            "only the test is compared: {c}"
        );
    }
    let srm = &report["runs"][0]["srm"];
    assert_eq!(srm["mismatch"], false, "{srm}");
}

async fn the_daemon_sends_the_clear_winner_to_the_rest(backend: Backend) {
    let Some((p, db)) = setup(backend).await else {
        return;
    };
    let sink = SmtpSink::start(SmtpSinkConfig::default())
        .await
        .expect("sink");
    rollout_project(&p, sink.addr().port());
    let report =
        send_test_then_decide(&p, &db, &sink, |arm| if arm == "b" { 0.6 } else { 0.1 }).await;
    check_release(&db, &sink, &report, "b").await;
    let ro = &report["rollouts"][0];
    assert_eq!(ro["clear_winner"], true, "{ro}");
    assert_eq!(ro["leader"], "b");
    db.drop_db().await;
}

async fn without_a_clear_winner_the_leader_goes_at_decide_by_and_the_report_says_why(
    backend: Backend,
) {
    let Some((p, db)) = setup(backend).await else {
        return;
    };
    let sink = SmtpSink::start(SmtpSinkConfig::default())
        .await
        .expect("sink");
    rollout_project(&p, sink.addr().port());
    let started = Instant::now();
    let report = send_test_then_decide(&p, &db, &sink, |_| 0.3).await;
    // decide_after = 2s: the default decide_by is 4s after the run's start.
    assert!(started.elapsed() >= Duration::from_secs(4));
    let ro = &report["rollouts"][0];
    let leader = ro["leader"].as_str().unwrap().to_string();
    check_release(&db, &sink, &report, &leader).await;
    assert_eq!(ro["clear_winner"], false, "{ro}");
    let reason = ro["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("no clear winner by the decision deadline"),
        "{reason}"
    );
    assert!(
        reason.ends_with(&format!(
            "so the variant with the higher observed rate, {leader}, goes"
        )),
        "{reason}"
    );
    let sentence = ro["sentence"].as_str().unwrap();
    assert!(
        sentence.contains("decided before every tested message's goal window had closed"),
        "{sentence}"
    );
    db.drop_db().await;
}

on_both_databases!(
    the_daemon_sends_the_clear_winner_to_the_rest,
    without_a_clear_winner_the_leader_goes_at_decide_by_and_the_report_says_why,
);
