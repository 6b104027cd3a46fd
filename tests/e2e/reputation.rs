//! The reputation guard through the real daemon: a marketing run whose SMTP
//! peer refuses 10% of its recipients (`550 5.1.1` at `RCPT`: hard bounces)
//! pauses itself once the bounce rate is over 5% after
//! `[dispatch] reputation_min_deliveries` (lowered to 20, CI-sized; the
//! default 1,000 in the ignored full-size run), and `herald status` says
//! why; it is paused once and sends no more.

use std::time::{Duration, Instant};

use herald_sinks::{SmtpSink, SmtpSinkConfig};
use herald_tests::Backend;

use crate::{scalar, setup};

/// A run of the guard test, CI-sized or full-size.
struct Size {
    /// Recipients.
    contacts: usize,
    /// `[dispatch] reputation_min_deliveries`; `None`: the default (1,000).
    min_deliveries: Option<usize>,
    /// The SMTP route's rate (per second).
    rate: usize,
    /// How long the pause may take to show.
    within: Duration,
}

/// 10 s of sending at 10/s, so the guard's 5 s check finds the run running.
const CI: Size = Size {
    contacts: 100,
    min_deliveries: Some(20),
    rate: 10,
    within: Duration::from_secs(40),
};

/// The issue's: the default 1,000 deliveries, 30 s of sending at 100/s.
const FULL: Size = Size {
    contacts: 3_000,
    min_deliveries: None,
    rate: 100,
    within: Duration::from_secs(90),
};

/// The default `[dispatch] reputation_min_deliveries`.
const DEFAULT_MIN_DELIVERIES: usize = 1_000;

async fn a_run_whose_peer_bounces_10_percent_pauses_itself(backend: Backend) {
    bounces_pause_the_run(backend, CI).await
}

/// The full-size run (by hand: `--ignored`).
async fn a_run_whose_peer_bounces_10_percent_pauses_after_1000_deliveries(backend: Backend) {
    bounces_pause_the_run(backend, FULL).await
}

async fn bounces_pause_the_run(backend: Backend, size: Size) {
    let contacts = size.contacts;
    let Some((p, db)) = setup(backend).await else {
        return;
    };
    let smtp = SmtpSink::start(SmtpSinkConfig {
        keep_messages: false,
        reject_rcpt: vec![("bad".into(), 550, "5.1.1 no such user".into())],
        ..Default::default()
    })
    .await
    .expect("smtp");
    p.write(
        "config/herald.toml",
        &format!(
            "[tracking]\npublic_url = \"https://t.example.com\"\nlisten = \"127.0.0.1:0\"\n\n\
             [channels.email]\nprovider = \"smtp\"\nhost = \"127.0.0.1\"\nport = {}\nfrom = \"Shop <news@example.com>\"\nrate = {{ per_second = {} }}\n\n\
             [dispatch]\nlease = \"30s\"\nbatch = 20\n{}",
            smtp.addr().port(),
            size.rate,
            size.min_deliveries
                .map_or(String::new(), |n| format!("reputation_min_deliveries = {n}\n")),
        ),
    );
    let at = chrono::Utc::now() + chrono::Duration::seconds(2);
    p.write(
        "config/campaigns/news.toml",
        &format!(
            "name = \"news\"\nkind = \"marketing\"\nwhere = 'email contains \"@\"'\nchannels = [\"email\"]\nschedule = {{ at = \"{}\" }}\ncatch_up = \"1h\"\n\n\
             [[variants]]\nname = \"a\"\nemail = {{ subject = \"Hi\", template = \"t/a.email.hbs\" }}\n",
            at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ),
    );
    p.write("templates/t/a.email.hbs", "<p>Sale today</p>\n");
    let mut csv = String::from("external_id,email\n");
    for i in 0..contacts {
        // One recipient in ten is unknown to the peer.
        let local = if i % 10 == 0 { "bad" } else { "u" };
        csv.push_str(&format!("u{i},{local}{i}@example.com\n"));
    }
    p.write("contacts.csv", &csv);
    p.herald(&db, &["import", "contacts", "contacts.csv"])
        .expect_code(0);
    let mut daemon = p.spawn(&db, "daemon", &["run", "--no-server"]);

    let t0 = Instant::now();
    let status = loop {
        let status = p.herald(&db, &["status"]).stdout();
        if status.contains("reputation guard: bounce rate") {
            break status;
        }
        let (out, err) = p.output_of("daemon");
        assert!(
            t0.elapsed() < size.within,
            "never paused ({} sent)\n{status}\n{out}\n{err}",
            smtp.count()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let paused_after = t0.elapsed();
    assert_eq!(
        scalar(&db, "SELECT COUNT(*) FROM runs WHERE state = 'paused' AND pause_reason LIKE 'reputation guard: bounce rate%'").await,
        1,
        "{status}"
    );
    // Paused: what was claimed finishes, then nothing more goes out.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let then = smtp.count();
    tokio::time::sleep(Duration::from_secs(6)).await;
    daemon.kill().expect("kill");
    let _ = tokio::task::block_in_place(|| daemon.wait());
    assert_eq!(smtp.count(), then, "nothing sent after the pause");
    assert!(
        then < contacts,
        "the run was paused before its end ({then} sent)"
    );
    // Not before the guard had its deliveries, as its reason says.
    let min = size.min_deliveries.unwrap_or(DEFAULT_MIN_DELIVERIES);
    let judged: usize = status
        .lines()
        .find(|l| l.contains("reputation guard"))
        .unwrap_or_default()
        .split(" after ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no delivery count in the reason\n{status}"));
    assert!(
        judged >= min,
        "paused after {judged} of {min} deliveries\n{status}"
    );
    eprintln!(
        "reputation guard ({backend:?}): paused {:.1} s after the daemon started, after {judged} deliveries (min_deliveries {min}); {then} of {contacts} accepted by the peer in all",
        paused_after.as_secs_f64()
    );
    assert!(
        scalar(
            &db,
            "SELECT COUNT(*) FROM messages WHERE status = 'planned'"
        )
        .await
            > 0,
        "the rest stays planned"
    );
    let (_, err) = p.output_of("daemon");
    assert!(
        err.matches("reputation guard").count() <= 1,
        "paused once\n{err}"
    );
    db.drop_db().await;
}

on_both_databases!(a_run_whose_peer_bounces_10_percent_pauses_itself);

ignored_on_both_databases!(a_run_whose_peer_bounces_10_percent_pauses_after_1000_deliveries);
