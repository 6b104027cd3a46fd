//! Lanes through the real daemon: a route throttled at 10 SMS a second with
//! a long queue never delays another route. Emails (a newsletter and a
//! transactional notice) that come due while the SMS queue drains reach the
//! SMTP peer within 2 s of their due time (the 1,000 SMS, 100 emails
//! and one transactional email, CI-sized: batches of 20, so that without
//! lanes both workers hold SMS batches while the emails come due).

use std::time::{Duration, Instant};

use herald_sinks::{
    DEMO_ACCOUNT_SID, DEMO_AUTH_TOKEN, SmtpSink, SmtpSinkConfig, TwilioSink, TwilioSinkConfig,
};
use herald_tests::Backend;

use crate::setup;

/// SMS queued (10 s of sending at 10/s).
const CONTACTS: usize = 100;
/// How long after the SMS campaign the emails come due.
const EMAIL_AFTER: i64 = 3;
/// The most an email may leave after its due time (the figure).
const MOST_LATE: Duration = Duration::from_secs(2);

async fn a_throttled_route_never_delays_another(backend: Backend) {
    throttled_route_and_emails(backend, CONTACTS).await;
}

/// The full size: 1,000 SMS at 10/s queued while 1,000 newsletter
/// emails and a receipt come due (ignored: run by hand, figures in
/// `docs/benchmarks.md`).
async fn full_size_a_throttled_route_never_delays_another(backend: Backend) {
    let late = throttled_route_and_emails(backend, 1_000).await;
    eprintln!("full size: the last email left {late:?} after its due time");
}

/// `contacts` SMS at 10/s queued, `contacts` emails and a receipt due 3 s
/// later: every email reaches the SMTP peer within 2 s of due. Returns how
/// late the last one was.
async fn throttled_route_and_emails(backend: Backend, contacts: usize) -> Duration {
    let Some((p, db)) = setup(backend).await else {
        return Duration::ZERO;
    };
    let smtp = SmtpSink::start(SmtpSinkConfig {
        keep_messages: false,
        ..Default::default()
    })
    .await
    .expect("smtp");
    let twilio = TwilioSink::start(TwilioSinkConfig {
        keep_messages: false,
        ..Default::default()
    })
    .await
    .expect("twilio");
    p.write(
        "config/herald.toml",
        &format!(
            "[tracking]\npublic_url = \"https://t.example.com\"\nlisten = \"127.0.0.1:0\"\n\n\
             [channels.email]\nprovider = \"smtp\"\nhost = \"127.0.0.1\"\nport = {}\nfrom = \"Shop <news@example.com>\"\n\n\
             [channels.sms]\nprovider = \"twilio\"\nbase_url = \"{}\"\naccount_sid_env = \"TW_SID\"\nauth_token_env = \"TW_TOKEN\"\nfrom = \"+15005550006\"\nrate = {{ per_second = 10 }}\nconcurrency = 2\n\n\
             [dispatch]\nlease = \"30s\"\nbatch = 20\n",
            smtp.addr().port(),
            twilio.base_url(),
        ),
    );
    let now = chrono::Utc::now();
    // Whole seconds: the schedule is written to the second.
    let sms_at = now + chrono::Duration::seconds(3);
    let email_at = sms_at + chrono::Duration::seconds(EMAIL_AFTER);
    let iso =
        |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let campaign = |name: &str, kind: &str, filter: &str, channel: &str, at: &str| {
        format!(
            "name = \"{name}\"\nkind = \"{kind}\"\nwhere = '{filter}'\nchannels = [\"{channel}\"]\nschedule = {{ at = \"{at}\" }}\ncatch_up = \"1h\"\n\n\
             [[variants]]\nname = \"a\"\nsms = {{ template = \"t/a.sms.hbs\" }}\nemail = {{ subject = \"Hi\", template = \"t/a.email.hbs\" }}\n"
        )
    };
    p.write(
        "config/campaigns/blast.toml",
        &campaign(
            "blast",
            "marketing",
            "email contains \"@\"",
            "sms",
            &iso(sms_at),
        ),
    );
    p.write(
        "config/campaigns/news.toml",
        &campaign(
            "news",
            "marketing",
            "email contains \"@\"",
            "email",
            &iso(email_at),
        ),
    );
    p.write(
        "config/campaigns/receipt.toml",
        &campaign(
            "receipt",
            "transactional",
            "email contains \"u1@\"",
            "email",
            &iso(email_at),
        ),
    );
    p.write("templates/t/a.sms.hbs", "Sale today\n");
    p.write("templates/t/a.email.hbs", "<p>Sale today</p>\n");
    let mut csv = String::from("external_id,email,phone,consent_sms\n");
    for i in 0..contacts {
        csv.push_str(&format!("u{i},u{i}@example.com,+1415555{i:04},true\n"));
    }
    p.write("contacts.csv", &csv);
    p.herald(&db, &["import", "contacts", "contacts.csv"])
        .expect_code(0);
    let env = [("TW_SID", DEMO_ACCOUNT_SID), ("TW_TOKEN", DEMO_AUTH_TOKEN)];
    let mut daemon = p.spawn_with_env(&db, "daemon", &["run", "--no-server"], &env);

    // Every email (the newsletter's and the receipt) at the SMTP peer, measured there.
    let emails = contacts + 1;
    let due = std::time::SystemTime::from(email_at);
    let t0 = Instant::now();
    while smtp.count() < emails {
        let (out, err) = p.output_of("daemon");
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "{} of {emails} emails\n{out}\n{err}",
            smtp.count()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let late = std::time::SystemTime::now()
        .duration_since(due)
        .unwrap_or_default();
    let sms_then = twilio.count();
    daemon.kill().expect("kill");
    let _ = tokio::task::block_in_place(|| daemon.wait());
    assert!(
        sms_then < contacts,
        "the SMS queue was still draining when the emails went ({sms_then} sent)"
    );
    assert!(
        late <= MOST_LATE,
        "the last email left {late:?} after its due time, behind {} SMS still queued",
        contacts - sms_then
    );
    db.drop_db().await;
    late
}

on_both_databases!(a_throttled_route_never_delays_another);

ignored_on_both_databases!(full_size_a_throttled_route_never_delays_another);
