//! The pacer against a provider's own limit, measured at the receiving
//! server (a benchmark, ignored: run by hand, figures in
//! `docs/benchmarks.md`): herald configured for 100 SMS/s, the Twilio peer a
//! token bucket taking 70/s and answering the excess `429` with
//! `Retry-After: 1`. The rate the peer accepts must be at least 63/s (90% of
//! what it allows).

use std::time::{Duration, Instant};

use herald_sinks::{DEMO_ACCOUNT_SID, DEMO_AUTH_TOKEN, TwilioSink, TwilioSinkConfig};
use herald_tests::Backend;

use crate::setup;

/// SMS sent (about 20 s at the peer's 70/s).
const CONTACTS: usize = 1_400;
/// What the peer takes a second.
const PEER_RATE: f64 = 70.0;

async fn a_token_bucket_peer_gets_at_least_90_percent_of_its_rate(backend: Backend) {
    let Some((p, db)) = setup(backend).await else {
        return;
    };
    let twilio = TwilioSink::start(TwilioSinkConfig {
        keep_messages: false,
        accept_per_second: Some(PEER_RATE),
        ..Default::default()
    })
    .await
    .expect("twilio");
    p.write(
        "config/herald.toml",
        &format!(
            "[tracking]\npublic_url = \"https://t.example.com\"\nlisten = \"127.0.0.1:0\"\n\n\
             [channels.sms]\nprovider = \"twilio\"\nbase_url = \"{}\"\naccount_sid_env = \"TW_SID\"\nauth_token_env = \"TW_TOKEN\"\nfrom = \"+15005550006\"\nrate = {{ per_second = 100 }}\nconcurrency = 8\n\n\
             [dispatch]\nlease = \"30s\"\n",
            twilio.base_url(),
        ),
    );
    let at = chrono::Utc::now() + chrono::Duration::seconds(3);
    p.write(
        "config/campaigns/blast.toml",
        &format!(
            "name = \"blast\"\nkind = \"marketing\"\nwhere = 'email contains \"@\"'\nchannels = [\"sms\"]\nschedule = {{ at = \"{}\" }}\ncatch_up = \"1h\"\n\n\
             [[variants]]\nname = \"a\"\nsms = {{ template = \"t/a.sms.hbs\" }}\n",
            at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ),
    );
    p.write("templates/t/a.sms.hbs", "Sale today\n");
    let mut csv = String::from("external_id,email,phone,consent_sms\n");
    for i in 0..CONTACTS {
        csv.push_str(&format!("u{i},u{i}@example.com,+1415555{i:04},true\n"));
    }
    p.write("contacts.csv", &csv);
    p.herald(&db, &["import", "contacts", "contacts.csv"])
        .expect_code(0);
    let env = [("TW_SID", DEMO_ACCOUNT_SID), ("TW_TOKEN", DEMO_AUTH_TOKEN)];
    let mut daemon = p.spawn_with_env(&db, "daemon", &["run", "--no-server"], &env);

    // Measured at the peer: from its first accepted message to its last.
    let t0 = Instant::now();
    let mut first: Option<(Instant, usize)> = None;
    while twilio.count() < CONTACTS {
        let n = twilio.count();
        if first.is_none() && n > 0 {
            first = Some((Instant::now(), n));
        }
        let (out, err) = p.output_of("daemon");
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "{n} of {CONTACTS} accepted\n{out}\n{err}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (start, at_start) = first.expect("something was accepted");
    let rate = (CONTACTS - at_start) as f64 / start.elapsed().as_secs_f64();
    daemon.kill().expect("kill");
    let _ = tokio::task::block_in_place(|| daemon.wait());
    eprintln!(
        "pacer: configured 100/s, peer bucket {PEER_RATE}/s: accepted {rate:.1}/s at the peer ({CONTACTS} SMS)"
    );
    assert!(rate >= 0.9 * PEER_RATE, "accepted {rate:.1}/s");
    db.drop_db().await;
}

ignored_on_both_databases!(a_token_bucket_peer_gets_at_least_90_percent_of_its_rate);
