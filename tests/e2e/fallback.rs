//! Channel fallback through the real daemon and real HTTP servers: a push
//! refused with FCM's `404 UNREGISTERED` falls back to the contact's next
//! channel (SMS), and a fallback SMS refused for good (Twilio 21610) does not
//! fall back again: it ends `failed`, one message per contact throughout.

use std::time::{Duration, Instant};

use herald_sinks::{
    Answer, DEMO_ACCOUNT_SID, DEMO_AUTH_TOKEN, FaultPlan, FcmSink, FcmSinkConfig, SmtpSink,
    SmtpSinkConfig, TwilioSink, TwilioSinkConfig,
};
use herald_tests::Backend;

use crate::{scalar, setup};

async fn a_permanent_failure_falls_back_once(backend: Backend) {
    let Some((p, db)) = setup(backend).await else {
        return;
    };
    let smtp = SmtpSink::start(SmtpSinkConfig::default())
        .await
        .expect("smtp");
    // The first two pushes: the token is unregistered.
    let fcm = FcmSink::start(FcmSinkConfig {
        plan: FaultPlan::script([Answer::DeadAddress, Answer::DeadAddress]),
        ..Default::default()
    })
    .await
    .expect("fcm");
    // The first SMS: the number unsubscribed (a permanent refusal too).
    let twilio = TwilioSink::start(TwilioSinkConfig {
        plan: FaultPlan::script([Answer::DeadAddress]),
        ..Default::default()
    })
    .await
    .expect("twilio");
    p.write(
        "config/herald.toml",
        &format!(
            "[tracking]\npublic_url = \"https://t.example.com\"\nlisten = \"127.0.0.1:0\"\n\n\
             [channels.email]\nprovider = \"smtp\"\nhost = \"127.0.0.1\"\nport = {}\nfrom = \"Shop <news@example.com>\"\n\n\
             [channels.sms]\nprovider = \"twilio\"\nbase_url = \"{}\"\naccount_sid_env = \"TW_SID\"\nauth_token_env = \"TW_TOKEN\"\nfrom = \"+15005550006\"\n\n\
             [channels.push]\nprovider = \"fcm\"\nbase_url = \"{}\"\nproject_id = \"{}\"\ncredentials_env = \"FCM_KEY\"\n\n\
             [dispatch]\nbatch = 10\nlease = \"5s\"\n",
            smtp.addr().port(),
            twilio.base_url(),
            fcm.base_url(),
            fcm.project_id()
        ),
    );
    let at = chrono::Utc::now() + chrono::Duration::seconds(2);
    p.write(
        "config/campaigns/notice.toml",
        &format!(
            "name = \"notice\"\nkind = \"transactional\"\nwhere = 'email contains \"@\"'\nchannels = [\"push\", \"sms\", \"email\"]\nschedule = {{ at = \"{}\" }}\ncatch_up = \"1h\"\n\n\
             [[variants]]\nname = \"a\"\npush = {{ title = \"Notice\", template = \"n/a.push.hbs\" }}\nsms = {{ template = \"n/a.sms.hbs\" }}\nemail = {{ subject = \"Notice\", template = \"n/a.email.hbs\" }}\n",
            at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ),
    );
    p.write("templates/n/a.push.hbs", "Your order shipped\n");
    p.write("templates/n/a.sms.hbs", "Your order shipped\n");
    p.write("templates/n/a.email.hbs", "<p>Your order shipped</p>\n");
    let mut csv = String::from("external_id,email,phone,consent_sms,push_token,push_platform\n");
    for i in 0..4 {
        csv.push_str(&format!(
            "u{i},u{i}@example.com,+1415555010{i},true,tok-{i},android\n"
        ));
    }
    p.write("contacts.csv", &csv);
    p.herald(&db, &["import", "contacts", "contacts.csv"])
        .expect_code(0);
    let key = fcm.credentials_json();
    let env = [
        ("TW_SID", DEMO_ACCOUNT_SID),
        ("TW_TOKEN", DEMO_AUTH_TOKEN),
        ("FCM_KEY", key.as_str()),
    ];
    let mut daemon = p.spawn_with_env(&db, "daemon", &["run"], &env);
    let t0 = Instant::now();
    loop {
        let settled = scalar(
            &db,
            // A handed message's row says `delivered` before its send: its
            // flight lands when the send's outcome is recorded.
            "SELECT COUNT(*) FROM messages WHERE status NOT IN ('planned', 'sending') AND NOT EXISTS (SELECT 1 FROM flights)",
        )
        .await;
        if settled == 4 {
            break;
        }
        let (out, err) = p.output_of("daemon");
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "{settled} of 4 settled\n{out}\n{err}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    daemon.kill().expect("kill");
    let _ = tokio::task::block_in_place(|| daemon.wait());

    // Two pushes went through; two fell back to SMS, of which one went through.
    assert_eq!(fcm.count(), 2);
    assert_eq!(twilio.count(), 1);
    assert_eq!(smtp.count(), 0, "a fallback never falls back again");
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM messages").await, 4);
    assert_eq!(
        scalar(
            &db,
            "SELECT COUNT(*) FROM messages WHERE fallback_from = 'push' AND channel = 'sms'"
        )
        .await,
        2
    );
    assert_eq!(
        scalar(
            &db,
            "SELECT COUNT(*) FROM messages WHERE status = 'failed' AND channel = 'sms' AND fallback_from = 'push'"
        )
        .await,
        1
    );
    // Every try is on record: 4 pushes and 2 SMS.
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM attempts").await, 6);
}

on_both_databases!(a_permanent_failure_falls_back_once);

/// A number refused with Twilio 21610 (its owner replied STOP) is suppressed
/// as `opt_out`, though the message itself falls back to email and its own
/// reason says so (issue 26: the suppression read "fallback to email").
async fn an_sms_opt_out_is_suppressed_as_opt_out(backend: Backend) {
    let Some((p, db)) = setup(backend).await else {
        return;
    };
    let smtp = SmtpSink::start(SmtpSinkConfig::default())
        .await
        .expect("smtp");
    let twilio = TwilioSink::start(TwilioSinkConfig {
        plan: FaultPlan::script([Answer::DeadAddress]),
        ..Default::default()
    })
    .await
    .expect("twilio");
    p.write(
        "config/herald.toml",
        &format!(
            "[tracking]\npublic_url = \"https://t.example.com\"\n\n\
             [channels.email]\nprovider = \"smtp\"\nhost = \"127.0.0.1\"\nport = {}\nfrom = \"Shop <news@example.com>\"\n\n\
             [channels.sms]\nprovider = \"twilio\"\nbase_url = \"{}\"\naccount_sid_env = \"TW_SID\"\nauth_token_env = \"TW_TOKEN\"\nfrom = \"+15005550006\"\n",
            smtp.addr().port(),
            twilio.base_url(),
        ),
    );
    p.write(
        "config/campaigns/notice.toml",
        "name = \"notice\"\nkind = \"transactional\"\nwhere = 'email contains \"@\"'\nchannels = [\"sms\", \"email\"]\n\n\
         [[variants]]\nname = \"a\"\nsms = { template = \"n/a.sms.hbs\" }\nemail = { subject = \"Notice\", template = \"n/a.email.hbs\" }\n",
    );
    p.write("templates/n/a.sms.hbs", "Your order shipped\n");
    p.write("templates/n/a.email.hbs", "<p>Your order shipped</p>\n");
    p.write(
        "contacts.csv",
        "external_id,email,phone,consent_sms\nu0,u0@example.com,+14155550100,true\n",
    );
    p.herald(&db, &["import", "contacts", "contacts.csv"])
        .expect_code(0);
    let env = [("TW_SID", DEMO_ACCOUNT_SID), ("TW_TOKEN", DEMO_AUTH_TOKEN)];
    let mut send = p.spawn_with_env(&db, "send", &["send", "notice"], &env);
    let status = tokio::task::block_in_place(|| send.wait()).expect("send");
    let (out, err) = p.output_of("send");
    assert!(status.success(), "{out}\n{err}");
    assert_eq!((twilio.count(), smtp.count()), (0, 1), "{out}\n{err}");
    assert_eq!(
        scalar(
            &db,
            "SELECT COUNT(*) FROM suppressions WHERE channel = 'sms' AND address = '+14155550100' AND reason = 'opt_out'"
        )
        .await,
        1,
        "{out}\n{err}"
    );
    assert_eq!(
        scalar(
            &db,
            "SELECT COUNT(*) FROM suppressions WHERE reason LIKE 'fallback%'"
        )
        .await,
        0
    );
}

on_both_databases!(an_sms_opt_out_is_suppressed_as_opt_out);
