//! `herald run`, the daemon: a scheduled campaign fires and is sent through a
//! real SMTP server on loopback; the daemon survives SIGKILL at random
//! moments without sending anyone a message of a run twice; SIGTERM drains
//! and exits 0; `herald runs` and `herald status` operate it; two daemons on
//! one PostgreSQL database share the work and the rate limit.

use std::time::{Duration, Instant};

use herald_sinks::{SmtpSink, SmtpSinkConfig};
use herald_tests::{Backend, Project, TestDb};

use crate::{scalar, setup};

/// Writes a project with one campaign firing at `at` to the SMTP server on `port`.
pub(crate) fn daemon_project(
    p: &Project,
    port: u16,
    at: chrono::DateTime<chrono::Utc>,
    dispatch: &str,
    campaign_extra: &str,
) {
    p.write(
        "config/herald.toml",
        &format!(
            "[tracking]\npublic_url = \"https://t.example.com\"\nlisten = \"127.0.0.1:0\"\n\n[channels.email]\nprovider = \"smtp\"\nhost = \"127.0.0.1\"\nport = {port}\nfrom = \"Shop <news@example.com>\"\nbounce_domain = \"bounces.example.com\"\nconcurrency = 8\n\n[dispatch]\n{dispatch}\n"
        ),
    );
    p.write(
        "config/campaigns/tuesday.toml",
        &format!(
            "name = \"tuesday\"\nwhere = 'email contains \"@\"'\nchannels = [\"email\"]\nschedule = {{ at = \"{}\" }}\ncatch_up = \"1h\"\n{campaign_extra}\n\n[[variants]]\nname = \"a\"\nemail = {{ subject = \"Hello {{{{contact.external_id}}}}\", template = \"t/hello.email.hbs\" }}\n",
            at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ),
    );
    p.write(
        "templates/t/hello.email.hbs",
        "<p>Hello {{contact.external_id}}</p>\n",
    );
}

pub(crate) fn contacts_csv(p: &Project, n: usize) {
    let mut csv = String::with_capacity(n * 32);
    csv.push_str("external_id,email\n");
    for i in 0..n {
        csv.push_str(&format!("u{i},u{i}@example.com\n"));
    }
    p.write("contacts.csv", &csv);
}

/// Waits until the daemon `name` says it is running (its signal handler is then in place).
pub(crate) async fn wait_started(p: &Project, name: &str) {
    let t0 = Instant::now();
    loop {
        let (out, err) = p.output_of(name);
        if out.contains("SIGINT or SIGTERM stops it") {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "daemon `{name}` never started\n{out}\n{err}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `GET /metrics` from the tracking server of the daemon `name` (its
/// address as the daemon printed it).
pub(crate) fn scrape_metrics(p: &Project, name: &str) -> String {
    let (out, _) = p.output_of(name);
    let addr = out
        .lines()
        .find_map(|l| l.strip_prefix("tracking server on http://"))
        .and_then(|l| l.split_whitespace().next())
        .expect("the daemon prints its tracking address")
        .to_string();
    tokio::task::block_in_place(|| {
        use std::io::{Read, Write};
        let mut conn = std::net::TcpStream::connect(&addr).expect("connect");
        conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
            .expect("write");
        let mut text = String::new();
        conn.read_to_string(&mut text).expect("read");
        text
    })
}

pub(crate) fn term(child: &mut std::process::Child) -> i32 {
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill -TERM")
        .success();
    assert!(ok, "kill -TERM");
    let status = tokio::task::block_in_place(|| child.wait()).expect("wait");
    status.code().unwrap_or(-1)
}

/// Waits until every message of the campaign's run is settled and the run is done.
pub(crate) async fn wait_done(db: &TestDb, audience: i64, limit: Duration) {
    let t0 = Instant::now();
    loop {
        let total = scalar(db, "SELECT COUNT(*) FROM messages").await;
        let pending = scalar(
            db,
            "SELECT COUNT(*) FROM messages WHERE status IN ('planned', 'sending')",
        )
        .await;
        let done = scalar(db, "SELECT COUNT(*) FROM runs WHERE state = 'done'").await;
        if total == audience && pending == 0 && done == 1 {
            return;
        }
        assert!(
            t0.elapsed() < limit,
            "not done after {limit:?}: {total} messages, {pending} pending, {done} runs done"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn scheduled_fire_is_sent_and_sigterm_exits_zero(backend: Backend) {
    let Some((p, db)) = setup(backend).await else {
        return;
    };
    let sink = SmtpSink::start(SmtpSinkConfig::default())
        .await
        .expect("sink");
    let at = chrono::Utc::now() + chrono::Duration::seconds(2);
    daemon_project(&p, sink.addr().port(), at, "batch = 20\nlease = \"5s\"", "");
    contacts_csv(&p, 300);
    p.herald(&db, &["import", "contacts", "contacts.csv"])
        .expect_code(0);
    let mut daemon = p.spawn(&db, "daemon", &["run"]);
    wait_done(&db, 300, Duration::from_secs(60)).await;
    // The daemon's tracking server serves its dispatcher metrics too.
    let metrics = scrape_metrics(&p, "daemon");
    assert!(
        metrics
            .contains("herald_dispatch_attempts_total{channel=\"email\",result=\"accepted\"} 300"),
        "{metrics}"
    );
    assert!(metrics.contains("herald_send_duration_seconds_count{channel=\"email\"} 300"));
    // One exporter: the server's and the dispatcher's metrics in one
    // OpenMetrics exposition, ended once.
    assert!(
        metrics.contains("herald_tracking_opens_written_total 0"),
        "{metrics}"
    );
    // Every route's block gauge, push's sub-routes too (none blocked here;
    // account_faults.rs sees push:apns and push:web at 1).
    for route in [
        "email",
        "sms",
        "push",
        "push:apns",
        "push:web",
        "push:unlabelled",
    ] {
        assert!(
            metrics.contains(&format!("herald_route_blocked{{route=\"{route}\"}} 0")),
            "{route}\n{metrics}"
        );
    }
    assert_eq!(metrics.matches("# EOF").count(), 1, "{metrics}");
    assert!(metrics.ends_with("# EOF\n"), "{metrics}");
    let code = term(&mut daemon);
    let (out, err) = p.output_of("daemon");
    assert_eq!(code, 0, "SIGTERM drains and exits 0\n{out}\n{err}");
    assert!(
        out.contains("300 message(s) sent by this daemon"),
        "{out}\n{err}"
    );
    assert_eq!(sink.count(), 300);
    assert!(sink.per_recipient().values().all(|&n| n == 1));
    assert_eq!(
        scalar(&db, "SELECT COUNT(*) FROM runs WHERE origin = 'schedule'").await,
        1
    );
    // A second daemon start finds the run already there: nothing fires twice.
    let mut again = p.spawn(&db, "again", &["run"]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(term(&mut again), 0);
    assert_eq!(sink.count(), 300, "a restart sends nothing again");
    let status = p.herald(&db, &["status"]);
    status.expect_code(0);
    assert!(status.stdout().contains("tuesday"), "{}", status.stdout());
    assert!(
        status.stdout().contains("delivered 300"),
        "{}",
        status.stdout()
    );
    db.drop_db().await;
}

/// A small deterministic generator: the kill moments, reproducible from the printed seed.
pub(crate) struct Lcg(pub(crate) u64);

impl Lcg {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

const CRASH_AUDIENCE: usize = 100_000;
const KILLS: usize = 20;
const MIN_WHILE_SENDING: usize = 5;
const MAX_KILLS: usize = 60;
const BATCH: i64 = 50;
const WORKERS: i64 = 2;

async fn sigkill_at_random_moments_never_sends_twice(backend: Backend) {
    let Some((p, db)) = setup(backend).await else {
        return;
    };
    let sink = SmtpSink::start(SmtpSinkConfig {
        keep_messages: false,
        ..SmtpSinkConfig::default()
    })
    .await
    .expect("sink");
    let at = chrono::Utc::now() + chrono::Duration::seconds(1);
    daemon_project(
        &p,
        sink.addr().port(),
        at,
        &format!("batch = {BATCH}\nworkers = {WORKERS}\nlease = \"2s\""),
        "",
    );
    contacts_csv(&p, CRASH_AUDIENCE);
    p.herald(&db, &["import", "contacts", "contacts.csv"])
        .expect_code(0);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_nanos() as u64;
    eprintln!("crash test seed {seed}");
    let mut rng = Lcg(seed);
    // KILLS kills at random moments; more (up to MAX_KILLS) until at least
    // MIN_WHILE_SENDING of them hit a daemon in the middle of sending: on a slow
    // machine the first lives may all be spent planning.
    let (mut kills, mut while_sending) = (0usize, 0usize);
    while kills < KILLS || (while_sending < MIN_WHILE_SENDING && kills < MAX_KILLS) {
        let at_start = sink.count();
        let mut daemon = p.spawn(&db, &format!("killed-{kills}"), &["run"]);
        // Lives of 0.5 to 4 s: longer than a lease (2 s) often enough for plans and claims to be taken over.
        let wait = 500 + rng.next() % 3500;
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let at_kill = sink.count();
        daemon.kill().expect("SIGKILL");
        tokio::task::block_in_place(|| daemon.wait()).expect("wait");
        kills += 1;
        while_sending += usize::from(at_kill > at_start);
        if at_kill >= CRASH_AUDIENCE {
            break;
        }
    }
    assert!(
        while_sending > 0,
        "the kills must land mid-run to test anything (seed {seed}): {kills} kills, {while_sending} while sending, {} received",
        sink.count()
    );
    let mut last = p.spawn(&db, "last", &["run"]);
    wait_done(&db, CRASH_AUDIENCE as i64, Duration::from_secs(300)).await;
    // The killed daemons may have finished the run already: SIGTERM only once this one
    // is up (before its handler is installed, SIGTERM just kills it).
    wait_started(&p, "last").await;
    let (out, err) = p.output_of("last");
    assert_eq!(term(&mut last), 0, "{out}\n{err}");

    let per = sink.per_recipient();
    let twice: Vec<_> = per.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "duplicates (seed {seed}): {twice:?}");
    let delivered = scalar(
        &db,
        "SELECT COUNT(*) FROM messages WHERE status = 'delivered'",
    )
    .await;
    let unknown = scalar(
        &db,
        "SELECT COUNT(*) FROM messages WHERE status = 'unknown'",
    )
    .await;
    let other = scalar(
        &db,
        "SELECT COUNT(*) FROM messages WHERE status NOT IN ('delivered', 'unknown')",
    )
    .await;
    assert_eq!(
        other, 0,
        "every message ends delivered or unknown (seed {seed})"
    );
    assert_eq!(delivered + unknown, CRASH_AUDIENCE as i64);
    // The in-flight window: a batch a worker, and one the planner hands over.
    assert!(
        unknown <= kills as i64 * BATCH * (WORKERS + 1),
        "unknown {unknown} exceeds the in-flight window of {kills} kills (seed {seed})"
    );
    // Every delivered message was received, once; unknown ones at most once.
    assert!(
        per.len() as i64 >= delivered,
        "{} received, {delivered} delivered",
        per.len()
    );
    assert!(per.len() as i64 <= CRASH_AUDIENCE as i64);
    eprintln!(
        "crash test: {kills} kills ({while_sending} while sending), {delivered} delivered, {unknown} unknown, {} received",
        per.len()
    );
    db.drop_db().await;
}

async fn runs_pause_resume_and_cancel(backend: Backend) {
    let Some((p, db)) = setup(backend).await else {
        return;
    };
    let sink = SmtpSink::start(SmtpSinkConfig::default())
        .await
        .expect("sink");
    // Spread over a day: once planned, the run waits with its messages in the queue.
    let at = chrono::Utc::now() + chrono::Duration::seconds(1);
    daemon_project(&p, sink.addr().port(), at, "", "spread = \"1d\"");
    contacts_csv(&p, 200);
    p.herald(&db, &["import", "contacts", "contacts.csv"])
        .expect_code(0);
    let mut daemon = p.spawn(&db, "daemon", &["run"]);
    let t0 = Instant::now();
    while scalar(&db, "SELECT COUNT(*) FROM runs WHERE state = 'running'").await == 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "{:?}",
            p.output_of("daemon")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let run = scalar(&db, "SELECT MAX(id) FROM runs").await.to_string();
    let status = p.herald(&db, &["status"]);
    assert!(status.stdout().contains("running"), "{}", status.stdout());
    p.herald(&db, &["runs", "pause", &run]).expect_code(0);
    assert_eq!(
        scalar(&db, "SELECT COUNT(*) FROM runs WHERE state = 'paused'").await,
        1
    );
    let again = p.herald(&db, &["runs", "pause", &run]);
    again.expect_code(2);
    assert!(again.stderr().contains("is paused"), "{}", again.stderr());
    p.herald(&db, &["runs", "resume", &run]).expect_code(0);
    p.herald(&db, &["runs", "resume", "999"]).expect_code(2);
    let planned = scalar(
        &db,
        "SELECT COUNT(*) FROM messages WHERE status = 'planned'",
    )
    .await;
    let sent_so_far = sink.count() as i64;
    assert_eq!(planned + sent_so_far, 200, "spread over a day: most wait");
    let cancel = p.herald(&db, &["runs", "cancel", &run]);
    cancel.expect_code(0);
    assert!(cancel.stdout().contains("cancelled"), "{}", cancel.stdout());
    assert_eq!(
        scalar(
            &db,
            "SELECT COUNT(*) FROM messages WHERE status = 'planned'"
        )
        .await,
        0
    );
    assert_eq!(
        scalar(
            &db,
            "SELECT COUNT(*) FROM messages WHERE status = 'cancelled' AND reason = 'run_cancelled'"
        )
        .await
            + scalar(
                &db,
                "SELECT COUNT(*) FROM messages WHERE status = 'delivered'"
            )
            .await,
        200
    );
    p.herald(&db, &["runs", "cancel", &run]).expect_code(2);
    assert_eq!(term(&mut daemon), 0);
    db.drop_db().await;
}

/// SMS rate limit for the two-daemon test, messages a second.
const SHARED_RATE: usize = 100;

/// Two daemons on one PostgreSQL database: both work, nobody gets a message
/// twice, and together they keep the channel's rate limit (each takes half).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_share_the_work_and_the_rate_limit() {
    let Some((p, db)) = setup(Backend::Postgres).await else {
        return;
    };
    use herald_sinks::{DEMO_ACCOUNT_SID, DEMO_AUTH_TOKEN};
    let sink = herald_sinks::TwilioSink::start(herald_sinks::TwilioSinkConfig::default())
        .await
        .expect("twilio sink");
    let at = chrono::Utc::now() + chrono::Duration::seconds(6);
    p.write(
        "config/herald.toml",
        &format!(
            "[tracking]\npublic_url = \"https://t.example.com\"\nlisten = \"127.0.0.1:0\"\n\n[channels.sms]\nprovider = \"twilio\"\nbase_url = \"{}\"\naccount_sid_env = \"TW_SID\"\nauth_token_env = \"TW_TOKEN\"\nfrom = \"+15005550006\"\nrate = {{ per_second = {SHARED_RATE}, burst = 5 }}\nconcurrency = 8\n\n[dispatch]\nbatch = 20\nlease = \"5s\"\n",
            sink.base_url()
        ),
    );
    p.write(
        "config/campaigns/flash.toml",
        &format!(
            "name = \"flash\"\nkind = \"transactional\"\nwhere = 'phone contains \"+\"'\nchannels = [\"sms\"]\nschedule = {{ at = \"{}\" }}\ncatch_up = \"1h\"\n\n[[variants]]\nname = \"a\"\nsms = {{ template = \"t/flash.sms.hbs\" }}\n",
            at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ),
    );
    p.write(
        "templates/t/flash.sms.hbs",
        "Flash sale for {{contact.external_id}}\n",
    );
    let n = 1500;
    let mut csv = String::from("external_id,phone,consent_sms\n");
    for i in 0..n {
        csv.push_str(&format!("p{i},+1415555{i:04},true\n"));
    }
    p.write("contacts.csv", &csv);
    p.herald(&db, &["import", "contacts", "contacts.csv"])
        .expect_code(0);
    let env = [("TW_SID", DEMO_ACCOUNT_SID), ("TW_TOKEN", DEMO_AUTH_TOKEN)];
    let mut one = p.spawn_with_env(&db, "one", &["run", "--name", "one"], &env);
    let mut two = p.spawn_with_env(&db, "two", &["run", "--name", "two", "--no-server"], &env);
    wait_done(&db, n, Duration::from_secs(120)).await;
    assert_eq!(term(&mut one), 0, "{:?}", p.output_of("one"));
    assert_eq!(term(&mut two), 0, "{:?}", p.output_of("two"));
    let received = sink.received();
    assert_eq!(received.len(), n as usize);
    let distinct: std::collections::HashSet<_> = received.iter().map(|m| m.to.clone()).collect();
    assert_eq!(
        distinct.len(),
        n as usize,
        "nobody got the flash sale twice"
    );
    let sent_by = |name: &str| -> u64 {
        let (out, _) = p.output_of(name);
        out.lines()
            .find_map(|l| l.strip_prefix("stopped: "))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|x| x.parse().ok())
            .unwrap_or(0)
    };
    let (a, b) = (sent_by("one"), sent_by("two"));
    assert_eq!(a + b, n as u64);
    assert!(
        a > n as u64 / 5 && b > n as u64 / 5,
        "both daemons worked: {a} and {b}"
    );
    // Together within the limit: no one-second window holds more than the rate plus both bursts.
    let busiest = sink.requests().max_in_window(Duration::from_secs(1));
    assert!(
        busiest <= SHARED_RATE + 10,
        "{busiest} requests in one second against a shared limit of {SHARED_RATE}/s"
    );
    db.drop_db().await;
}

/// A manual campaign's run left planning (its `herald send` was killed before
/// the first page, or it was paused and then resumed) is the daemon's to
/// finish: it plans the rest, sends it and closes the run.
async fn the_daemon_finishes_a_manual_plan_left_unfinished(backend: Backend) {
    let Some((p, db)) = setup(backend).await else {
        return;
    };
    let sink = SmtpSink::start(SmtpSinkConfig::default())
        .await
        .expect("sink");
    daemon_project(&p, sink.addr().port(), chrono::Utc::now(), "batch = 20", "");
    let path = p.path().join("config/campaigns/tuesday.toml");
    let text = std::fs::read_to_string(&path).expect("campaign");
    let schedule = text
        .lines()
        .find(|l| l.starts_with("schedule = "))
        .expect("a schedule line");
    p.write(
        "config/campaigns/tuesday.toml",
        &text.replace(schedule, "schedule = \"manual\""),
    );
    contacts_csv(&p, 120);
    p.herald(&db, &["import", "contacts", "contacts.csv"])
        .expect_code(0);
    // What a `herald send tuesday` killed right after creating its run leaves.
    let now = chrono::Utc::now().timestamp_millis();
    let fingerprint = "tuesday;holdout=0;a=1";
    {
        use sea_orm::{ConnectionTrait, Database};
        let conn = Database::connect(&db.url).await.expect("connect");
        conn.execute_unprepared(&format!(
            "INSERT INTO campaigns (name, kind, fingerprint, created_at, updated_at) VALUES ('tuesday', 'marketing', '{fingerprint}', {now}, {now})"
        ))
        .await
        .expect("campaign");
        conn.execute_unprepared(&format!(
            "INSERT INTO runs (campaign_id, scheduled_at, now_at, state, origin, fingerprint, created_at) SELECT id, {now}, {now}, 'planning', 'manual', '{fingerprint}', {now} FROM campaigns WHERE name = 'tuesday'"
        ))
        .await
        .expect("run");
    }
    let mut daemon = p.spawn(&db, "daemon", &["run"]);
    wait_done(&db, 120, Duration::from_secs(60)).await;
    assert_eq!(sink.count(), 120, "{:?}", p.output_of("daemon"));
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM runs").await, 1);
    assert_eq!(term(&mut daemon), 0);
    db.drop_db().await;
}

on_both_databases!(
    scheduled_fire_is_sent_and_sigterm_exits_zero,
    sigkill_at_random_moments_never_sends_twice,
    runs_pause_resume_and_cancel,
    the_daemon_finishes_a_manual_plan_left_unfinished,
);
