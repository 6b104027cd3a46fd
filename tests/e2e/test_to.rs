//! `herald send CAMPAIGN --test-to ADDRESS,...`: each variant, rendered for a
//! sample audience member, arrives at a real SMTP server (an email address)
//! and a Twilio-compatible server (an E.164 number); nothing is recorded in
//! runs or messages; an address that is neither is refused before anything
//! is sent; an empty audience renders for the built-in sample contact.

use herald_sinks::{
    DEMO_ACCOUNT_SID, DEMO_AUTH_TOKEN, FcmSink, FcmSinkConfig, SmtpSink, SmtpSinkConfig,
    TwilioSink, TwilioSinkConfig,
};
use herald_tests::{Backend, Project, TestDb};

use crate::{scalar, setup};

fn test_project(p: &Project, smtp_port: u16, twilio: &str) {
    p.write(
        "config/herald.toml",
        &format!(
            "[tracking]\npublic_url = \"https://t.example.com\"\n\n[channels.email]\nprovider = \"smtp\"\nhost = \"127.0.0.1\"\nport = {smtp_port}\nfrom = \"Shop <news@example.com>\"\nbounce_domain = \"bounces.example.com\"\n\n[channels.sms]\nprovider = \"twilio\"\nbase_url = \"{twilio}\"\naccount_sid_env = \"TW_SID\"\nauth_token_env = \"TW_TOKEN\"\nfrom = \"+15005550006\"\n"
        ),
    );
    p.write(
        "config/campaigns/promo.toml",
        "name = \"promo\"\nwhere = 'email contains \"ann@\"'\nchannels = [\"sms\", \"email\"]\n\n\
         [[variants]]\nname = \"a\"\nemail = { subject = \"Promo A for {{contact.external_id}}\", template = \"t/a.email.hbs\" }\nsms = { template = \"t/a.sms.hbs\" }\n\n\
         [[variants]]\nname = \"b\"\nemail = { subject = \"Promo B for {{contact.external_id}}\", template = \"t/b.email.hbs\" }\nsms = { template = \"t/b.sms.hbs\" }\n",
    );
    p.write(
        "config/campaigns/nobody.toml",
        "name = \"nobody\"\nwhere = 'email contains \"@nowhere\"'\nchannels = [\"email\"]\n\n\
         [[variants]]\nname = \"only\"\nemail = { subject = \"Hello {{contact.external_id}}\", template = \"t/a.email.hbs\" }\n",
    );
    p.write(
        "templates/t/a.email.hbs",
        "<p>A for {{contact.external_id}}</p>\n",
    );
    p.write(
        "templates/t/b.email.hbs",
        "<p>B for {{contact.external_id}}</p>\n",
    );
    p.write("templates/t/a.sms.hbs", "A: hi {{contact.external_id}}\n");
    p.write("templates/t/b.sms.hbs", "B: hi {{contact.external_id}}\n");
    p.write(
        "contacts.csv",
        "external_id,email,phone,consent_sms\nc1,ann@example.com,+8613800138000,true\nc2,bo@example.com,,\n",
    );
}

/// Runs `herald ARGS` with the Twilio secrets set; returns (exit code, stdout, stderr).
fn herald(p: &Project, db: &TestDb, name: &str, args: &[&str]) -> (i32, String, String) {
    let env = [("TW_SID", DEMO_ACCOUNT_SID), ("TW_TOKEN", DEMO_AUTH_TOKEN)];
    let mut child = p.spawn_with_env(db, name, args, &env);
    let status = tokio::task::block_in_place(|| child.wait()).expect("wait");
    let (out, err) = p.output_of(name);
    (status.code().unwrap_or(-1), out, err)
}

async fn count(db: &TestDb, table: &str) -> i64 {
    scalar(db, &format!("SELECT COUNT(*) FROM {table}")).await
}

fn subjects(sink: &SmtpSink) -> Vec<(Vec<String>, String)> {
    let mut out: Vec<(Vec<String>, String)> = sink
        .received()
        .iter()
        .map(|m| {
            let text = String::from_utf8_lossy(&m.data).into_owned();
            let subject = text
                .lines()
                .find_map(|l| l.strip_prefix("Subject: "))
                .unwrap_or("")
                .trim()
                .to_string();
            (m.rcpt_to.clone(), subject)
        })
        .collect();
    out.sort();
    out
}

async fn test_sends_reach_only_the_given_addresses_and_record_nothing(backend: Backend) {
    let Some((p, db)) = setup(backend).await else {
        return;
    };
    let smtp = SmtpSink::start(SmtpSinkConfig::default())
        .await
        .expect("smtp sink");
    let twilio = TwilioSink::start(TwilioSinkConfig::default())
        .await
        .expect("twilio sink");
    test_project(&p, smtp.addr().port(), &twilio.base_url());
    p.herald(&db, &["import", "contacts", "contacts.csv"])
        .expect_code(0);

    // Refused before anything is sent: not an address, and a channel the campaign lacks.
    let (code, _, err) = herald(
        &p,
        &db,
        "bad",
        &["send", "promo", "--test-to", "me@example.com,13800138000"],
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("`13800138000` is neither an email address, a phone number in E.164 form"),
        "{err}"
    );
    assert!(err.contains("nothing was sent"), "{err}");
    let (code, _, err) = herald(
        &p,
        &db,
        "nosms",
        &["send", "nobody", "--test-to", "+8613800138001"],
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("which campaign `nobody` does not use"),
        "{err}"
    );
    assert_eq!(smtp.count() + twilio.count(), 0);

    let (code, out, err) = herald(
        &p,
        &db,
        "test",
        &[
            "send",
            "promo",
            "--test-to",
            "me@example.com, +8613800138001",
        ],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains(
            "test send of `promo`, rendered for audience member `c1`; nothing is recorded"
        ),
        "{out}"
    );
    assert!(
        out.contains("sent variant `a` (email) \"Promo A for c1\" to me@example.com"),
        "{out}"
    );
    assert!(
        out.contains("sent variant `b` (sms) to +8613800138001"),
        "{out}"
    );
    assert_eq!(
        subjects(&smtp),
        [
            (
                vec!["me@example.com".to_string()],
                "Promo A for c1".to_string()
            ),
            (
                vec!["me@example.com".to_string()],
                "Promo B for c1".to_string()
            ),
        ]
    );
    let mut sms: Vec<(String, String)> = twilio
        .received()
        .into_iter()
        .map(|m| (m.to, m.body))
        .collect();
    sms.sort();
    assert_eq!(sms.len(), 2, "{sms:?}");
    assert!(sms.iter().all(|(to, _)| to == "+8613800138001"));
    assert!(sms[0].1.starts_with("A: hi c1"), "{sms:?}");
    assert!(sms[1].1.starts_with("B: hi c1"), "{sms:?}");
    // No audience member got anything, and nothing was recorded.
    assert_eq!(count(&db, "runs").await, 0);
    assert_eq!(count(&db, "messages").await, 0);

    // An empty audience: the built-in sample contact.
    let (code, out, err) = herald(
        &p,
        &db,
        "empty",
        &["send", "nobody", "--test-to", "me@example.com"],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("rendered for the built-in sample contact"),
        "{out}"
    );
    assert!(
        subjects(&smtp).contains(&(
            vec!["me@example.com".to_string()],
            "Hello sample-1".to_string()
        )),
        "{:?}",
        subjects(&smtp)
    );
    assert_eq!(count(&db, "messages").await, 0);
    db.drop_db().await;
}

on_both_databases!(test_sends_reach_only_the_given_addresses_and_record_nothing);

/// A push token gets each variant's push through the FCM adapter, to a real
/// FCM-compatible server (issue 26: `--test-to` could not test push), and
/// nothing is recorded.
async fn a_test_push_reaches_the_token(backend: Backend) {
    let Some((p, db)) = setup(backend).await else {
        return;
    };
    let fcm = FcmSink::start(FcmSinkConfig::default())
        .await
        .expect("fcm sink");
    p.write(
        "config/herald.toml",
        &format!(
            "[tracking]\npublic_url = \"https://t.example.com\"\n\n[channels.push]\nprovider = \"fcm\"\nbase_url = \"{}\"\nproject_id = \"{}\"\ncredentials_env = \"FCM_KEY\"\n",
            fcm.base_url(),
            fcm.project_id()
        ),
    );
    p.write(
        "config/campaigns/app.toml",
        "name = \"app\"\nwhere = 'email contains \"@\"'\nchannels = [\"push\"]\n\n\
         [[variants]]\nname = \"a\"\npush = { title = \"A for {{contact.external_id}}\", template = \"t/a.push.hbs\" }\n\n\
         [[variants]]\nname = \"b\"\npush = { title = \"B for {{contact.external_id}}\", template = \"t/b.push.hbs\" }\n",
    );
    p.write("templates/t/a.push.hbs", "A body");
    p.write("templates/t/b.push.hbs", "B body");
    p.write("contacts.csv", "external_id,email\nc1,ann@example.com\n");
    p.herald(&db, &["import", "contacts", "contacts.csv"])
        .expect_code(0);
    let key = fcm.credentials_json();
    let token = "dQw4w9WgXcQ:APA91bHun4MxP5egoKMwt2KZFBaFUH-1RYqx";
    let mut child = p.spawn_with_env(
        &db,
        "push",
        &["send", "app", "--test-to", &format!("push:{token}")],
        &[("FCM_KEY", key.as_str())],
    );
    let status = tokio::task::block_in_place(|| child.wait()).expect("wait");
    let (out, err) = p.output_of("push");
    assert!(status.success(), "{out}\n{err}");
    let mut got: Vec<(String, Option<String>, Option<String>)> = fcm
        .received()
        .into_iter()
        .map(|m| (m.token, m.title, m.body))
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            (
                token.to_string(),
                Some("A for c1".into()),
                Some("A body".into())
            ),
            (
                token.to_string(),
                Some("B for c1".into()),
                Some("B body".into())
            ),
        ],
        "{out}\n{err}"
    );
    assert!(out.contains("sent variant `a` (push)"), "{out}");
    assert_eq!(count(&db, "messages").await, 0);
    assert_eq!(count(&db, "runs").await, 0);
}

on_both_databases!(a_test_push_reaches_the_token);
