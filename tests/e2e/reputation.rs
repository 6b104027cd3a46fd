//! The reputation guard through the real daemon: a marketing run whose SMTP
//! peer refuses 10% of its recipients (`550 5.1.1` at `RCPT`: hard bounces)
//! pauses itself once the bounce rate is over 5% after
//! `[dispatch] reputation_min_deliveries` (lowered to 20, CI-sized), and
//! `herald status` says why; it is paused once and sends no more.

use std::time::{Duration, Instant};

use herald_sinks::{SmtpSink, SmtpSinkConfig};
use herald_tests::Backend;

use crate::{scalar, setup};

/// Recipients (10 s of sending at 10/s, so the guard's 5 s check finds the run running).
const CONTACTS: usize = 100;

async fn a_run_whose_peer_bounces_10_percent_pauses_itself(backend: Backend) {
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
             [channels.email]\nprovider = \"smtp\"\nhost = \"127.0.0.1\"\nport = {}\nfrom = \"Shop <news@example.com>\"\nrate = {{ per_second = 10 }}\n\n\
             [dispatch]\nlease = \"30s\"\nbatch = 20\nreputation_min_deliveries = 20\n",
            smtp.addr().port(),
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
    for i in 0..CONTACTS {
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
            t0.elapsed() < Duration::from_secs(40),
            "never paused ({} sent)\n{status}\n{out}\n{err}",
            smtp.count()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
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
        then < CONTACTS,
        "the run was paused before its end ({then} sent)"
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
