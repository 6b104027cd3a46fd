//! Event-triggered campaigns and series through the real daemon and a real
//! SMTP server: one message per (contact, triggering event, step) with every
//! event imported twice and the daemon killed between the steps; the trigger's
//! `where` decides who gets it; an `exit` event, or leaving the audience,
//! cancels the steps still pending, with the reason recorded.

use std::time::{Duration, Instant};

use herald_sinks::{SmtpSink, SmtpSinkConfig};
use herald_tests::{Backend, Project, TestDb};
use sea_orm::{ConnectionTrait, Database, Statement};

use crate::{scalar, setup};

fn project(p: &Project, port: u16) {
    p.write(
        "config/herald.toml",
        &format!(
            "[tracking]\npublic_url = \"https://t.example.com\"\nlisten = \"127.0.0.1:0\"\n\n[channels.email]\nprovider = \"smtp\"\nhost = \"127.0.0.1\"\nport = {port}\nfrom = \"Shop <news@example.com>\"\nconcurrency = 4\n\n[dispatch]\nbatch = 50\nlease = \"5s\"\n"
        ),
    );
    // A welcome series: now, then 4 s later unless the contact activated.
    p.write(
        "config/campaigns/welcome.toml",
        "name = \"welcome\"\nkind = \"transactional\"\nwhere = 'email contains \"@\" and not has_tag(\"closed\")'\nchannels = [\"email\"]\ntrigger = { event = \"signup\", delay = \"0s\", where = 'attrs.plan == \"free\"' }\nexit = { event = \"activated\" }\n\n[[variants]]\nname = \"a\"\nemail = { subject = \"Welcome {{contact.external_id}}\", template = \"w/0.email.hbs\" }\n\n[[steps]]\ndelay = \"4s\"\nemail = { subject = \"Day two {{contact.external_id}}\", template = \"w/1.email.hbs\" }\n",
    );
    p.write("templates/w/0.email.hbs", "<p>Welcome</p>\n");
    p.write("templates/w/1.email.hbs", "<p>Still there?</p>\n");
    let mut csv = String::from("external_id,email,plan\n");
    for i in 0..10 {
        let plan = if i == 9 { "pro" } else { "free" };
        csv.push_str(&format!("u{i},u{i}@example.com,{plan}\n"));
    }
    p.write("contacts.csv", &csv);
}

fn events(name: &str, who: &[usize], at: chrono::DateTime<chrono::Utc>) -> String {
    let at = at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    who.iter()
        .map(|i| {
            format!("{{\"external_id\":\"u{i}\",\"name\":\"{name}\",\"at\":\"{at}\",\"event_id\":\"{name}-u{i}\"}}\n")
        })
        .collect()
}

/// Messages by step, status and reason, for failure messages.
async fn statuses(db: &TestDb) -> String {
    let conn = Database::connect(&db.url).await.expect("connect");
    let rows = conn
        .query_all_raw(Statement::from_string(
            conn.get_database_backend(),
            "SELECT step, status, COALESCE(reason, ''), COUNT(*) FROM messages GROUP BY step, status, reason ORDER BY 1, 2",
        ))
        .await
        .expect("query");
    rows.iter()
        .map(|r| {
            format!(
                "step {} {} ({}): {}",
                r.try_get_by_index::<i32>(0).unwrap_or(-1),
                r.try_get_by_index::<String>(1).unwrap_or_default(),
                r.try_get_by_index::<String>(2).unwrap_or_default(),
                r.try_get_by_index::<i64>(3).unwrap_or(-1)
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

async fn wait_for(db: &TestDb, sql: &str, want: i64, limit: Duration) {
    let t0 = Instant::now();
    loop {
        let got = scalar(db, sql).await;
        if got == want {
            return;
        }
        if t0.elapsed() >= limit {
            panic!(
                "after {limit:?}: {sql} is {got}, want {want}; messages: {}",
                statuses(db).await
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn series_once_per_event_and_step_with_exit(backend: Backend) {
    let Some((p, db)) = setup(backend).await else {
        return;
    };
    let sink = SmtpSink::start(SmtpSinkConfig::default())
        .await
        .expect("sink");
    project(&p, sink.addr().port());
    p.herald(&db, &["import", "contacts", "contacts.csv"])
        .expect_code(0);
    // `herald send` has no audience snapshot to send for a triggered campaign: it says so and plans nothing.
    for args in [
        &["send", "welcome"][..],
        &["send", "welcome", "--dry-run"][..],
    ] {
        let out = p.herald(&db, args);
        out.expect_code(2);
        assert!(
            out.stderr().contains("triggered by the event `signup`")
                && out.stderr().contains("herald run"),
            "{}",
            out.stderr()
        );
    }
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM runs").await, 0);
    let mut daemon = p.spawn(&db, "daemon", &["run"]);
    // A triggered campaign reacts to events that arrive once the daemon has seen it.
    wait_for(
        &db,
        "SELECT COUNT(*) FROM trigger_cursors",
        1,
        Duration::from_secs(30),
    )
    .await;
    let signup = chrono::Utc::now();
    let all: Vec<usize> = (0..10).collect();
    p.write("signup.ndjson", &events("signup", &all, signup));
    // Every event delivered twice: the second import adds no event, and no message.
    p.herald(&db, &["import", "events", "signup.ndjson"])
        .expect_code(0);
    p.herald(&db, &["import", "events", "signup.ndjson"])
        .expect_code(0);
    // The first step reaches the nine free-plan contacts; the pro one matches no `where`.
    wait_for(
        &db,
        "SELECT COUNT(*) FROM messages WHERE step = 0 AND status = 'delivered'",
        9,
        Duration::from_secs(30),
    )
    .await;
    // u1 activates before the second step: it is cancelled, with the reason.
    p.write(
        "activated.ndjson",
        &events("activated", &[1], chrono::Utc::now()),
    );
    p.herald(&db, &["import", "events", "activated.ndjson"])
        .expect_code(0);
    // u2 closes their account: no longer in the audience, the second step is cancelled.
    p.write(
        "closed.csv",
        "external_id,email,tags\nu2,u2@example.com,closed\n",
    );
    p.herald(&db, &["import", "contacts", "closed.csv"])
        .expect_code(0);
    // The daemon dies between the steps and comes back.
    daemon.kill().expect("SIGKILL");
    let _ = tokio::task::block_in_place(|| daemon.wait());
    p.herald(&db, &["import", "events", "signup.ndjson"])
        .expect_code(0);
    let mut daemon = p.spawn(&db, "daemon2", &["run"]);
    wait_for(
        &db,
        "SELECT COUNT(*) FROM messages WHERE step = 1 AND status IN ('delivered', 'cancelled')",
        9,
        Duration::from_secs(40),
    )
    .await;
    daemon.kill().expect("SIGKILL");
    let _ = tokio::task::block_in_place(|| daemon.wait());

    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM messages").await, 18);
    assert_eq!(
        scalar(
            &db,
            "SELECT COUNT(*) FROM messages WHERE status = 'cancelled' AND reason = 'exit (activated)' AND step = 1"
        )
        .await,
        1
    );
    assert_eq!(
        scalar(
            &db,
            "SELECT COUNT(*) FROM messages WHERE status = 'cancelled' AND reason = 'no longer in the audience' AND step = 1"
        )
        .await,
        1
    );
    assert_eq!(
        scalar(
            &db,
            "SELECT COUNT(*) FROM runs WHERE origin = 'trigger' AND state = 'running'"
        )
        .await,
        1
    );
    // Counted at the receiving server: two emails each, one for u1 and u2, none for the pro contact.
    let per = sink.per_recipient();
    assert_eq!(per.len(), 9, "{per:?}");
    for (to, n) in &per {
        let want = if to.contains("u1@") || to.contains("u2@") {
            1
        } else {
            2
        };
        assert_eq!(*n, want, "{to} received {n}");
    }
    assert!(!per.keys().any(|k| k.contains("u9@")));
}

/// `trigger = { enters = "vip", every = "2s" }`: the first pass is a baseline;
/// a contact who becomes a member is sent the message at the next pass, once,
/// however many passes follow.
async fn segment_entry_sends_to_entrants_once(backend: Backend) {
    let Some((p, db)) = setup(backend).await else {
        return;
    };
    let sink = SmtpSink::start(SmtpSinkConfig::default())
        .await
        .expect("sink");
    project(&p, sink.addr().port());
    std::fs::remove_file(p.path().join("config/campaigns/welcome.toml")).expect("rm");
    p.write(
        "config/segments/vip.toml",
        "name = \"vip\"\ndescription = \"pro plan\"\nwhere = 'attrs.plan == \"pro\"'\n",
    );
    p.write(
        "config/campaigns/vip.toml",
        "name = \"vip_welcome\"\nkind = \"transactional\"\nwhere = 'email contains \"@\"'\nchannels = [\"email\"]\ntrigger = { enters = \"vip\", every = \"2s\" }\n\n[[variants]]\nname = \"a\"\nemail = { subject = \"Welcome to pro\", template = \"w/0.email.hbs\" }\n",
    );
    p.herald(&db, &["import", "contacts", "contacts.csv"])
        .expect_code(0);
    let mut daemon = p.spawn(&db, "daemon", &["run"]);
    // The baseline pass: u9 is pro already, and is not "entering".
    wait_for(
        &db,
        "SELECT COUNT(*) FROM entry_passes",
        1,
        Duration::from_secs(30),
    )
    .await;
    p.write(
        "upgrade.csv",
        "external_id,email,plan\nu3,u3@example.com,pro\n",
    );
    p.herald(&db, &["import", "contacts", "upgrade.csv"])
        .expect_code(0);
    wait_for(
        &db,
        "SELECT COUNT(*) FROM messages WHERE status = 'delivered'",
        1,
        Duration::from_secs(30),
    )
    .await;
    // Two more passes: u3 stays a member and gets nothing more.
    let passes = scalar(&db, "SELECT COUNT(*) FROM entry_passes").await;
    wait_for(
        &db,
        &format!("SELECT COUNT(*) FROM entry_passes WHERE run_id > 0 AND (SELECT COUNT(*) FROM entry_passes) >= {}", passes + 2),
        passes + 2,
        Duration::from_secs(30),
    )
    .await;
    daemon.kill().expect("SIGKILL");
    let _ = tokio::task::block_in_place(|| daemon.wait());
    let per = sink.per_recipient();
    assert_eq!(per.len(), 1, "{per:?}");
    assert_eq!(per.get("u3@example.com"), Some(&1), "{per:?}");
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM messages").await, 1);
    // `herald status`: the passes are one row, with the message of them all
    // (a run the kill caught before its pass was recorded is not a pass yet).
    let passes = scalar(&db, "SELECT COUNT(*) FROM entry_passes").await;
    let unrecorded = scalar(
        &db,
        "SELECT COUNT(*) FROM runs WHERE id NOT IN (SELECT run_id FROM entry_passes)",
    )
    .await;
    let status = p.herald(&db, &["status", "--wide"]).stdout();
    let rows: Vec<&str> = status
        .lines()
        .filter(|l| l.contains("vip_welcome"))
        .collect();
    assert_eq!(rows.len() as i64, 1 + unrecorded, "{status}");
    let rows: Vec<&str> = rows
        .into_iter()
        .filter(|l| l.contains("entry passes"))
        .collect();
    assert_eq!(rows.len(), 1, "{status}");
    assert!(
        rows[0].contains(&format!("{passes} entry passes since"))
            && rows[0].contains("delivered 1"),
        "{status}"
    );
}

/// The trigger planner over the real store, with the clock in hand: an event
/// committed after a newer one (PostgreSQL hands out ids before commit) is
/// still planned by the re-read; a restarted planner re-plans the unsettled
/// seconds and inserts nothing twice; the durable cursor then settles.
async fn late_committed_events_are_planned_once(backend: Backend) {
    use herald_engine::clock::FixedClock;
    use herald_engine::store::Store;
    use herald_engine::trigger::TriggerPlanner;
    use std::sync::Arc;

    let Some((p, db)) = setup(backend).await else {
        return;
    };
    project(&p, 2525);
    p.herald(&db, &["import", "contacts", "contacts.csv"])
        .expect_code(0);
    let config = Arc::new(herald_domain::config::load(&p.path().join("config")).expect("config"));
    let storage = herald_storage::Db::connect(&db.url).await.expect("db");
    let store: Arc<dyn Store> = Arc::new(herald_storage::store::SqlStore::new(storage));
    let start = chrono::Utc::now();
    let clock = Arc::new(FixedClock::new(start));
    let planner = || TriggerPlanner::new(store.clone(), clock.clone(), config.clone());
    let mut first = planner();
    first.pass().await.expect("pass");
    let at = start.timestamp_millis();
    let insert = |id: i64, who: usize| {
        format!(
            "INSERT INTO events (id, contact_id, name, at, received_at) SELECT {id}, id, 'signup', {at}, {at} FROM contacts WHERE external_id = 'u{who}'"
        )
    };
    let conn = Database::connect(&db.url).await.expect("connect");
    let run = |sql: String| {
        let conn = &conn;
        async move {
            conn.execute_unprepared(&sql).await.expect("sql");
        }
    };
    for (id, who) in [(10, 0), (11, 1), (13, 3)] {
        run(insert(id, who)).await;
    }
    let r = first.pass().await.expect("pass");
    assert_eq!(
        (r.events, r.planned),
        (3, 6),
        "two steps for each of three events"
    );
    // Event 12 commits late, below the newest one already read.
    run(insert(12, 2)).await;
    assert_eq!(
        first.pass().await.expect("pass").planned,
        0,
        "not re-read yet"
    );
    clock.advance(chrono::Duration::milliseconds(1100));
    assert_eq!(first.pass().await.expect("pass").planned, 2);
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM messages").await, 8);
    // A restart within the settling time re-plans those events: nothing new.
    let mut second = planner();
    assert_eq!(second.pass().await.expect("pass").planned, 0);
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM messages").await, 8);
    clock.advance(chrono::Duration::milliseconds(3000));
    second.pass().await.expect("pass");
    assert_eq!(
        scalar(&db, "SELECT MAX(last_event_id) FROM trigger_cursors").await,
        13
    );
}

/// An `exit` event cancels the steps still pending at once, not at their
/// send time: with the second step an hour away, the contact who activates
/// sees it `cancelled` within seconds, in the database and in `herald status`.
async fn an_exit_cancels_the_pending_steps_at_once(backend: Backend) {
    let Some((p, db)) = setup(backend).await else {
        return;
    };
    let sink = SmtpSink::start(SmtpSinkConfig::default())
        .await
        .expect("sink");
    project(&p, sink.addr().port());
    let series = std::fs::read_to_string(p.path().join("config/campaigns/welcome.toml"))
        .expect("the campaign")
        .replace("delay = \"4s\"", "delay = \"1h\"");
    p.write("config/campaigns/welcome.toml", &series);
    p.herald(&db, &["import", "contacts", "contacts.csv"])
        .expect_code(0);
    let mut daemon = p.spawn(&db, "daemon", &["run"]);
    wait_for(
        &db,
        "SELECT COUNT(*) FROM trigger_cursors",
        1,
        Duration::from_secs(30),
    )
    .await;
    p.write(
        "signup.ndjson",
        &events("signup", &[1, 2], chrono::Utc::now()),
    );
    p.herald(&db, &["import", "events", "signup.ndjson"])
        .expect_code(0);
    wait_for(
        &db,
        "SELECT COUNT(*) FROM messages WHERE step = 1 AND status = 'planned'",
        2,
        Duration::from_secs(30),
    )
    .await;
    p.write(
        "activated.ndjson",
        &events("activated", &[1], chrono::Utc::now()),
    );
    p.herald(&db, &["import", "events", "activated.ndjson"])
        .expect_code(0);
    wait_for(
        &db,
        "SELECT COUNT(*) FROM messages WHERE step = 1 AND status = 'cancelled' AND reason = 'exit (activated)'",
        1,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(
        scalar(
            &db,
            "SELECT COUNT(*) FROM messages WHERE step = 1 AND status = 'planned'"
        )
        .await,
        1,
        "u2 did not activate: their step stays planned\n{}",
        statuses(&db).await
    );
    daemon.kill().expect("SIGKILL");
    let _ = tokio::task::block_in_place(|| daemon.wait());
}

on_both_databases!(
    an_exit_cancels_the_pending_steps_at_once,
    series_once_per_event_and_step_with_exit,
    segment_entry_sends_to_entrants_once,
    late_committed_events_are_planned_once,
);
