//! Account faults through the real daemon and the real local peers: a
//! credential the provider refuses (Twilio `401` 20003, FCM's token endpoint
//! `invalid_client`, SMTP `535`) blocks the route instead of failing each
//! message. While it lasts, `herald status` shows the block, nothing fails
//! and nothing falls back; once the peer accepts again (the credential
//! fixed), a probe opens the route and every message goes, once.
//! `herald send` with a credential that stays wrong exits 1 with the
//! provider's words after `[dispatch] blocked_wait`, its messages planned.
//! FCM's `THIRD_PARTY_AUTH_ERROR` (the APNs or web push credential wrong)
//! blocks only the iOS (web) tokens' sub-route, `push:apns` (`push:web`):
//! Android pushes go at once, and `herald send` names the sub-route when
//! it exits 1. FCM's `SENDER_ID_MISMATCH` is no account fault: the message
//! fails and its token is invalidated.

use std::time::{Duration, Instant};

use herald_sinks::{
    DEMO_ACCOUNT_SID, DEMO_AUTH_TOKEN, FcmSink, FcmSinkConfig, SmtpSink, SmtpSinkConfig,
    TwilioSink, TwilioSinkConfig,
};
use herald_tests::{Backend, Project, TestDb};

use crate::daemon::scrape_metrics;
use crate::{scalar, setup};

/// Contacts in each run (CI-sized).
const CONTACTS: i64 = 6;
/// How long the credential stays wrong in CI (the 20 s, CI-sized).
const WRONG_FOR: Duration = Duration::from_secs(3);
/// How long it stays wrong in the issue's own test (the ignored full-size runs).
const WRONG_FOR_FULL: Duration = Duration::from_secs(20);
/// SMTP login of the peer.
const SMTP_USER: &str = "herald";
const SMTP_PASSWORD: &str = "s3cret";

/// The three peers: each refuses the sender's account until told otherwise.
struct Peers {
    smtp: SmtpSink,
    twilio: TwilioSink,
    fcm: FcmSink,
}

impl Peers {
    async fn start() -> Peers {
        let smtp = SmtpSink::start(SmtpSinkConfig {
            credentials: Some((SMTP_USER.into(), SMTP_PASSWORD.into())),
            ..Default::default()
        })
        .await
        .expect("smtp");
        let twilio = TwilioSink::start(TwilioSinkConfig::default())
            .await
            .expect("twilio");
        let fcm = FcmSink::start(FcmSinkConfig::default()).await.expect("fcm");
        Peers { smtp, twilio, fcm }
    }

    /// The credential of `channel`'s provider refused (`true`) or fixed.
    fn refuse(&self, channel: &str, refuse: bool) {
        match channel {
            "email" => self.smtp.set_refuse_credentials(refuse),
            "sms" => self.twilio.set_refuse_credentials(refuse),
            _ => self.fcm.set_refuse_key(refuse),
        }
    }

    /// Messages each peer took: (email, sms, push).
    fn counts(&self) -> (usize, usize, usize) {
        (self.smtp.count(), self.twilio.count(), self.fcm.count())
    }
}

/// A project whose one campaign sends on `channel` first and falls back to
/// the next of email/sms/push, `CONTACTS` contacts, scheduled in 2 s.
fn project(p: &Project, peers: &Peers, channel: &str, blocked_wait: &str) {
    p.write(
        "config/herald.toml",
        &format!(
            "[tracking]\npublic_url = \"https://t.example.com\"\nlisten = \"127.0.0.1:0\"\n\n\
             [channels.email]\nprovider = \"smtp\"\nhost = \"127.0.0.1\"\nport = {}\nfrom = \"Shop <news@example.com>\"\nusername_env = \"SMTP_USER\"\npassword_env = \"SMTP_PASSWORD\"\n# the local peer on loopback: no TLS to offer\nallow_plaintext_auth = true\n\n\
             [channels.sms]\nprovider = \"twilio\"\nbase_url = \"{}\"\naccount_sid_env = \"TW_SID\"\nauth_token_env = \"TW_TOKEN\"\nfrom = \"+15005550006\"\n\n\
             [channels.push]\nprovider = \"fcm\"\nbase_url = \"{}\"\nproject_id = \"{}\"\ncredentials_env = \"FCM_KEY\"\n\n\
             [dispatch]\nbatch = 10\nlease = \"5s\"\nblocked_wait = \"{blocked_wait}\"\n",
            peers.smtp.addr().port(),
            peers.twilio.base_url(),
            peers.fcm.base_url(),
            peers.fcm.project_id()
        ),
    );
    let others: Vec<&str> = ["email", "sms", "push"]
        .into_iter()
        .filter(|c| *c != channel)
        .collect();
    let at = chrono::Utc::now() + chrono::Duration::seconds(2);
    p.write(
        "config/campaigns/notice.toml",
        &format!(
            "name = \"notice\"\nkind = \"transactional\"\nwhere = 'email contains \"@\"'\nchannels = [\"{channel}\", \"{}\", \"{}\"]\nschedule = {{ at = \"{}\" }}\ncatch_up = \"1h\"\n\n\
             [[variants]]\nname = \"a\"\npush = {{ title = \"Notice\", template = \"n/a.push.hbs\" }}\nsms = {{ template = \"n/a.sms.hbs\" }}\nemail = {{ subject = \"Notice\", template = \"n/a.email.hbs\" }}\n",
            others[0],
            others[1],
            at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ),
    );
    p.write("templates/n/a.push.hbs", "Your order shipped\n");
    p.write("templates/n/a.sms.hbs", "Your order shipped\n");
    p.write("templates/n/a.email.hbs", "<p>Your order shipped</p>\n");
    let mut csv = String::from("external_id,email,phone,consent_sms,push_token,push_platform\n");
    for i in 0..CONTACTS {
        csv.push_str(&format!(
            "u{i},u{i}@example.com,+1415555010{i},true,tok-{i},android\n"
        ));
    }
    p.write("contacts.csv", &csv);
}

fn env(peers: &Peers) -> Vec<(&'static str, String)> {
    vec![
        ("TW_SID", DEMO_ACCOUNT_SID.to_string()),
        ("TW_TOKEN", DEMO_AUTH_TOKEN.to_string()),
        ("FCM_KEY", peers.fcm.credentials_json()),
        ("SMTP_USER", SMTP_USER.to_string()),
        ("SMTP_PASSWORD", SMTP_PASSWORD.to_string()),
    ]
}

/// The daemon meets a refused credential on `channel`: blocked, shown, then
/// everything sent once after the fix.
async fn a_refused_credential_blocks_the_route_until_fixed(
    backend: Backend,
    channel: &str,
    wrong_for: Duration,
) {
    let Some((p, db)) = setup(backend).await else {
        return;
    };
    let peers = Peers::start().await;
    peers.refuse(channel, true);
    project(&p, &peers, channel, "60s");
    p.herald(&db, &["import", "contacts", "contacts.csv"])
        .expect_code(0);
    let env = env(&peers);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut daemon = p.spawn_with_env(&db, "daemon", &["run", "--no-server"], &env);

    // The block shows in `herald status` while the credential is wrong.
    let t0 = Instant::now();
    let status = loop {
        let status = p.herald(&db, &["status"]).stdout();
        if status.contains(&format!("blocked: {channel}: authentication failed")) {
            break status;
        }
        let (out, err) = p.output_of("daemon");
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no block shown\n{status}\n{out}\n{err}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Wrong for `wrong_for` more, the block shown all along.
    let shown = Instant::now();
    while shown.elapsed() < wrong_for {
        let status = p.herald(&db, &["status"]).stdout();
        assert!(
            status.contains(&format!("blocked: {channel}: authentication failed")),
            "the block stays shown while it lasts\n{status}"
        );
        tokio::time::sleep(Duration::from_millis(500).min(wrong_for)).await;
    }
    assert_eq!(peers.counts(), (0, 0, 0), "nothing taken while refused");
    assert_eq!(
        scalar(
            &db,
            "SELECT COUNT(*) FROM messages WHERE status NOT IN ('planned', 'sending') OR fallback_from IS NOT NULL"
        )
        .await,
        0,
        "nothing failed nor fell back while blocked\n{status}"
    );

    // Fixed: a probe passes and every message goes, once.
    peers.refuse(channel, false);
    let t1 = Instant::now();
    loop {
        let settled = scalar(
            &db,
            "SELECT COUNT(*) FROM messages WHERE status IN ('sent', 'delivered') AND NOT EXISTS (SELECT 1 FROM flights)",
        )
        .await;
        if settled == CONTACTS {
            break;
        }
        let (out, err) = p.output_of("daemon");
        assert!(
            t1.elapsed() < Duration::from_secs(40),
            "{settled} of {CONTACTS} sent after the fix\n{out}\n{err}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    daemon.kill().expect("kill");
    let _ = tokio::task::block_in_place(|| daemon.wait());

    let expected = match channel {
        "email" => (CONTACTS as usize, 0, 0),
        "sms" => (0, CONTACTS as usize, 0),
        _ => (0, 0, CONTACTS as usize),
    };
    assert_eq!(peers.counts(), expected, "each sent once, none fell back");
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM messages").await, CONTACTS);
    assert_eq!(
        scalar(
            &db,
            &format!("SELECT COUNT(*) FROM messages WHERE channel = '{channel}' AND fallback_from IS NULL")
        )
        .await,
        CONTACTS
    );
    // The refusals are in the attempt log, counted against no message.
    assert!(
        scalar(
            &db,
            "SELECT COUNT(*) FROM attempts WHERE result = 'account_fault'"
        )
        .await
            >= 1
    );
    assert_eq!(
        scalar(
            &db,
            "SELECT CAST(COALESCE(MAX(attempts), 0) AS BIGINT) FROM messages"
        )
        .await,
        1
    );
    let status = p.herald(&db, &["status"]).stdout();
    assert!(!status.contains("blocked:"), "unblocked\n{status}");
    let (_, err) = p.output_of("daemon");
    assert_eq!(
        err.matches(&format!("blocked: {channel}:")).count(),
        1,
        "the block is logged once\n{err}"
    );
    db.drop_db().await;
}

async fn twilio_20003_blocks_sms_until_fixed(backend: Backend) {
    a_refused_credential_blocks_the_route_until_fixed(backend, "sms", WRONG_FOR).await
}

async fn smtp_535_blocks_email_until_fixed(backend: Backend) {
    a_refused_credential_blocks_the_route_until_fixed(backend, "email", WRONG_FOR).await
}

async fn fcm_invalid_client_blocks_push_until_fixed(backend: Backend) {
    a_refused_credential_blocks_the_route_until_fixed(backend, "push", WRONG_FOR).await
}

/// The issue's own test: the credential wrong for the first 20 s (run by
/// hand: `--ignored`; CI runs the 3 s versions above).
async fn twilio_20003_blocks_sms_for_20_s(backend: Backend) {
    a_refused_credential_blocks_the_route_until_fixed(backend, "sms", WRONG_FOR_FULL).await
}

async fn smtp_535_blocks_email_for_20_s(backend: Backend) {
    a_refused_credential_blocks_the_route_until_fixed(backend, "email", WRONG_FOR_FULL).await
}

async fn fcm_invalid_client_blocks_push_for_20_s(backend: Backend) {
    a_refused_credential_blocks_the_route_until_fixed(backend, "push", WRONG_FOR_FULL).await
}

/// A platform whose credential in the Firebase project FCM refuses with
/// `THIRD_PARTY_AUTH_ERROR`, for its tokens only.
#[derive(Debug, Clone, Copy)]
struct Refused {
    /// `push_platform` as imported; the tokens are named `{platform}-N`.
    platform: &'static str,
    /// Its push sub-route.
    route: &'static str,
    /// The block's words in `herald status`.
    words: &'static str,
}

/// iOS tokens: the APNs credential.
const APNS: Refused = Refused {
    platform: "ios",
    route: "push:apns",
    words: "authentication failed for iOS tokens",
};

/// Web tokens: the web push credential.
const WEB: Refused = Refused {
    platform: "web",
    route: "push:web",
    words: "authentication failed for web tokens",
};

impl Refused {
    /// The prefix of this platform's tokens (what the FCM peer refuses).
    fn prefix(self) -> String {
        format!("{}-", self.platform)
    }

    /// `CONTACTS` contacts, half with Android tokens (`android-N`), half
    /// with this platform's (`ios-N`), written as `contacts.csv`.
    fn contacts(self, p: &Project) {
        let mut csv =
            String::from("external_id,email,phone,consent_sms,push_token,push_platform\n");
        for i in 0..CONTACTS {
            let platform = if i % 2 == 0 { "android" } else { self.platform };
            csv.push_str(&format!(
                "u{i},u{i}@example.com,+1415555010{i},true,{platform}-{i},{platform}\n"
            ));
        }
        p.write("contacts.csv", &csv);
    }
}

/// The APNs credential in the Firebase project is wrong for `wrong_for`,
/// then fixed: FCM refuses the iOS tokens (`THIRD_PARTY_AUTH_ERROR`) and
/// takes the Android ones. The Android pushes are delivered at once while
/// `herald status` shows `push:apns` blocked (and push itself not); the
/// iOS ones stay planned, then go after the fix; nothing fails, nothing
/// falls back, nothing is sent twice.
async fn fcm_third_party_auth_error_blocks_only_ios_tokens_until_fixed(backend: Backend) {
    a_refused_platform_credential_blocks_only_its_tokens(backend, APNS, WRONG_FOR).await
}

/// The same with the credential wrong for the 20 s (run by hand).
async fn fcm_third_party_auth_error_blocks_only_ios_tokens_for_20_s(backend: Backend) {
    a_refused_platform_credential_blocks_only_its_tokens(backend, APNS, WRONG_FOR_FULL).await
}

/// The same for the web push credential: web tokens refused, `push:web`
/// blocked, Android pushes delivered meanwhile.
async fn fcm_third_party_auth_error_blocks_only_web_tokens_until_fixed(backend: Backend) {
    a_refused_platform_credential_blocks_only_its_tokens(backend, WEB, WRONG_FOR).await
}

async fn a_refused_platform_credential_blocks_only_its_tokens(
    backend: Backend,
    refused: Refused,
    wrong_for: Duration,
) {
    let Some((p, db)) = setup(backend).await else {
        return;
    };
    let peers = Peers::start().await;
    let prefix = refused.prefix();
    let route = refused.route;
    peers.fcm.set_third_party_refused(&[prefix.as_str()]);
    project(&p, &peers, "push", "60s");
    refused.contacts(&p);
    p.herald(&db, &["import", "contacts", "contacts.csv"])
        .expect_code(0);
    let env = env(&peers);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // With its server: `/metrics` shows the sub-route's block.
    let mut daemon = p.spawn_with_env(&db, "daemon", &["run"], &env);
    let android = (CONTACTS as usize).div_ceil(2);
    let delivered = "SELECT COUNT(*) FROM messages WHERE status = 'delivered' AND NOT EXISTS (SELECT 1 FROM flights)";

    // The block shows, naming the platform, and the Android pushes are delivered meanwhile.
    let shown_blocked = format!("blocked: {route}: {}", refused.words);
    let t0 = Instant::now();
    let status = loop {
        let status = p.herald(&db, &["status"]).stdout();
        if status.contains(&shown_blocked) && scalar(&db, delivered).await == android as i64 {
            break status;
        }
        let (out, err) = p.output_of("daemon");
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no block shown, or Android not delivered\n{status}\n{out}\n{err}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        !status.contains("blocked: push: "),
        "the push route itself is open\n{status}"
    );
    let blocked_after = t0.elapsed();
    let metrics = scrape_metrics(&p, "daemon");
    for shown in [
        format!("herald_route_blocked{{route=\"{route}\"}} 1"),
        format!("herald_route_blocks_total{{route=\"{route}\"}} 1"),
        "herald_route_blocked{route=\"push\"} 0".to_string(),
    ] {
        assert!(metrics.contains(&shown), "{shown}\n{metrics}");
    }
    let shown = Instant::now();
    while shown.elapsed() < wrong_for {
        let status = p.herald(&db, &["status"]).stdout();
        assert!(
            status.contains(&format!("blocked: {route}:")),
            "the block stays shown while it lasts\n{status}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let taken: Vec<String> = peers.fcm.received().into_iter().map(|r| r.token).collect();
    assert_eq!(
        taken.len(),
        android,
        "only the Android pushes taken: {taken:?}"
    );
    assert!(taken.iter().all(|t| t.starts_with("android-")), "{taken:?}");
    assert_eq!(
        scalar(
            &db,
            &format!("SELECT COUNT(*) FROM messages WHERE address LIKE '{prefix}%' AND status NOT IN ('planned', 'sending')")
        )
        .await,
        0,
        "the refused platform's pushes wait, planned"
    );
    assert_eq!(
        scalar(
            &db,
            "SELECT COUNT(*) FROM messages WHERE status NOT IN ('planned', 'sending', 'delivered') OR fallback_from IS NOT NULL"
        )
        .await,
        0,
        "nothing failed nor fell back while blocked"
    );

    // Fixed: the sub-route's probe passes and its pushes go, once.
    peers.fcm.set_third_party_refused(&[]);
    let t1 = Instant::now();
    while scalar(&db, delivered).await < CONTACTS {
        let (out, err) = p.output_of("daemon");
        assert!(
            t1.elapsed() < Duration::from_secs(40),
            "not all delivered after the fix\n{out}\n{err}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let metrics = scrape_metrics(&p, "daemon");
    for shown in [
        format!("herald_route_blocked{{route=\"{route}\"}} 0"),
        format!("herald_route_blocks_total{{route=\"{route}\"}} 1"),
    ] {
        assert!(
            metrics.contains(&shown),
            "after the fix: {shown}\n{metrics}"
        );
    }
    eprintln!(
        "{backend:?}: Android delivered and {route} shown blocked {blocked_after:?} after the daemon started (the run is due 2 s in); the {} pushes delivered {:?} after the fix",
        refused.platform,
        t1.elapsed()
    );
    daemon.kill().expect("kill");
    let _ = tokio::task::block_in_place(|| daemon.wait());

    let mut taken: Vec<String> = peers.fcm.received().into_iter().map(|r| r.token).collect();
    taken.sort();
    taken.dedup();
    assert_eq!(taken.len(), CONTACTS as usize, "each token once");
    assert_eq!(peers.counts(), (0, 0, CONTACTS as usize), "none fell back");
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM messages").await, CONTACTS);
    assert_eq!(
        scalar(
            &db,
            "SELECT COUNT(*) FROM messages WHERE channel = 'push' AND fallback_from IS NULL AND status = 'delivered'"
        )
        .await,
        CONTACTS
    );
    // The refusals are in the attempt log, counted against no message.
    assert!(
        scalar(
            &db,
            "SELECT COUNT(*) FROM attempts WHERE result = 'account_fault'"
        )
        .await
            >= 1
    );
    assert_eq!(
        scalar(
            &db,
            "SELECT CAST(COALESCE(MAX(attempts), 0) AS BIGINT) FROM messages"
        )
        .await,
        1
    );
    let status = p.herald(&db, &["status"]).stdout();
    assert!(!status.contains("blocked:"), "unblocked\n{status}");
    let (_, err) = p.output_of("daemon");
    assert_eq!(
        err.matches(&format!("blocked: {route}:")).count(),
        1,
        "the block is logged once\n{err}"
    );
    assert!(!err.contains("blocked: push: "), "push itself never\n{err}");
    db.drop_db().await;
}

/// `herald send notice` in `p`, with the peers' credentials in its environment.
fn herald_send(p: &Project, db: &TestDb, peers: &Peers) -> std::process::Output {
    let env = env(peers);
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_herald"));
    cmd.current_dir(p.path())
        .env("HERALD_DATABASE_URL", &db.url)
        .env("HERALD_SECRET", herald_tests::SECRET)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .args(["send", "notice"]);
    tokio::task::block_in_place(|| cmd.output()).expect("herald send")
}

/// `herald send` with a credential that stays wrong: exit 1 after
/// `blocked_wait`, the provider's words on stderr, the messages planned.
async fn send_with_a_wrong_credential_exits_1_in_the_providers_words(backend: Backend) {
    let Some((p, db)) = setup(backend).await else {
        return;
    };
    let peers = Peers::start().await;
    peers.refuse("sms", true);
    project(&p, &peers, "sms", "2s");
    p.herald(&db, &["import", "contacts", "contacts.csv"])
        .expect_code(0);
    let t0 = Instant::now();
    let out = herald_send(&p, &db, &peers);
    let took = t0.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("blocked: sms: authentication failed (Twilio 20003: Authenticate"),
        "{stderr}"
    );
    assert!(took < Duration::from_secs(30), "{took:?}");
    assert_eq!(peers.counts(), (0, 0, 0));
    assert_eq!(
        scalar(
            &db,
            "SELECT COUNT(*) FROM messages WHERE status = 'planned' AND channel = 'sms' AND fallback_from IS NULL"
        )
        .await,
        CONTACTS,
        "the messages stay planned for later"
    );
    db.drop_db().await;
}

/// `herald send` with the APNs credential refused for good: the Android
/// pushes go, then after `blocked_wait` it exits 1 naming the sub-route
/// (`push:apns`), the platform's tokens and the credential to fix, not
/// "the sender's account"; the iOS pushes stay planned.
async fn send_with_a_refused_apns_credential_exits_1_naming_the_sub_route(backend: Backend) {
    let Some((p, db)) = setup(backend).await else {
        return;
    };
    let peers = Peers::start().await;
    peers.fcm.set_third_party_refused(&[APNS.prefix().as_str()]);
    project(&p, &peers, "push", "2s");
    APNS.contacts(&p);
    p.herald(&db, &["import", "contacts", "contacts.csv"])
        .expect_code(0);
    let out = herald_send(&p, &db, &peers);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("blocked: push:apns: authentication failed for iOS tokens: the APNs credential in the Firebase project was refused (FCM THIRD_PARTY_AUTH_ERROR"),
        "{stderr}"
    );
    assert!(
        stderr.contains("FCM refused the run's pushes to iOS tokens (sub-route push:apns) for 2s"),
        "{stderr}"
    );
    assert!(
        stderr.contains("fix the APNs credential in the Firebase console"),
        "{stderr}"
    );
    assert!(!stderr.contains("sender's account"), "{stderr}");
    let android = (CONTACTS as usize).div_ceil(2);
    assert_eq!(peers.counts(), (0, 0, android), "the Android pushes went");
    assert_eq!(
        scalar(
            &db,
            "SELECT COUNT(*) FROM messages WHERE status = 'planned' AND address LIKE 'ios-%' AND fallback_from IS NULL"
        )
        .await,
        CONTACTS - android as i64,
        "the iOS pushes stay planned for later"
    );
    db.drop_db().await;
}

/// FCM's `SENDER_ID_MISMATCH` (403) is no account fault: the token was
/// registered for another Firebase project, so its message fails for good
/// (and falls back, here to email), its token is invalidated
/// (`push_tokens.invalid_at`) as an unregistered one is, and no route blocks.
async fn fcm_sender_id_mismatch_fails_the_message_and_invalidates_its_token(backend: Backend) {
    let Some((p, db)) = setup(backend).await else {
        return;
    };
    let peers = Peers::start().await;
    // `project` names the tokens tok-0 .. tok-5.
    peers.fcm.set_other_senders(&["tok-1"]);
    project(&p, &peers, "push", "2s");
    p.herald(&db, &["import", "contacts", "contacts.csv"])
        .expect_code(0);
    let out = herald_send(&p, &db, &peers);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("blocked:"), "{stderr}");
    assert_eq!(
        scalar(
            &db,
            "SELECT COUNT(*) FROM push_tokens WHERE token = 'tok-1' AND invalid_at IS NOT NULL"
        )
        .await,
        1,
        "the other sender's token is invalidated"
    );
    assert_eq!(
        scalar(
            &db,
            "SELECT COUNT(*) FROM push_tokens WHERE invalid_at IS NOT NULL"
        )
        .await,
        1,
        "the others stay valid"
    );
    assert_eq!(
        scalar(
            &db,
            "SELECT COUNT(*) FROM attempts WHERE result = 'permanent' AND provider_code = 'SENDER_ID_MISMATCH'"
        )
        .await,
        1,
        "its push failed for good, at the first answer"
    );
    assert_eq!(
        scalar(
            &db,
            "SELECT COUNT(*) FROM messages WHERE fallback_from = 'push' AND channel = 'email'"
        )
        .await,
        1,
        "and fell back once"
    );
    assert_eq!(
        peers.counts(),
        (1, 0, CONTACTS as usize - 1),
        "the others' pushes went; tok-1's contact got the fallback email"
    );
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM route_blocks").await, 0);
    db.drop_db().await;
}

/// `herald runs resume` after the credential is fixed: the blocked route
/// probes at once, not when its backoff says (seconds later), and sends.
async fn runs_resume_makes_a_blocked_route_probe_at_once(backend: Backend) {
    let Some((p, db)) = setup(backend).await else {
        return;
    };
    let peers = Peers::start().await;
    peers.refuse("sms", true);
    project(&p, &peers, "sms", "60s");
    p.herald(&db, &["import", "contacts", "contacts.csv"])
        .expect_code(0);
    let env = env(&peers);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut daemon = p.spawn_with_env(&db, "daemon", &["run", "--no-server"], &env);
    let now_ms = || chrono::Utc::now().timestamp_millis();
    // Refused probes until the next one is at least 5 s away (1, 2, 4, 8 s backoff).
    let t0 = Instant::now();
    let probe_at = loop {
        let at = scalar(
            &db,
            "SELECT COALESCE(MAX(probe_at), 0) FROM route_blocks WHERE route = 'sms'",
        )
        .await;
        if at - now_ms() >= 5_000 {
            break at;
        }
        let (out, err) = p.output_of("daemon");
        assert!(
            t0.elapsed() < Duration::from_secs(40),
            "the backoff never grew\n{out}\n{err}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(peers.counts(), (0, 0, 0));
    peers.refuse("sms", false);
    let run = scalar(&db, "SELECT MAX(id) FROM runs").await;
    let out = p.herald(&db, &["runs", "resume", &run.to_string()]);
    out.expect_code(0);
    assert!(
        out.stdout().contains("blocked route(s) probe now"),
        "{}",
        out.stdout()
    );
    // The probe went long before its backoff would have let it.
    loop {
        if peers.counts().1 >= 1 {
            break;
        }
        let (o, err) = p.output_of("daemon");
        assert!(
            now_ms() < probe_at - 1_000,
            "no probe before the backoff's ({} ms left)\n{o}\n{err}",
            probe_at - now_ms()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let t1 = Instant::now();
    while scalar(
        &db,
        "SELECT COUNT(*) FROM messages WHERE status IN ('sent', 'delivered')",
    )
    .await
        < CONTACTS
    {
        assert!(t1.elapsed() < Duration::from_secs(30), "not all sent");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    daemon.kill().expect("kill");
    let _ = tokio::task::block_in_place(|| daemon.wait());
    assert_eq!(peers.counts(), (0, CONTACTS as usize, 0), "each sent once");
    db.drop_db().await;
}

on_both_databases!(
    twilio_20003_blocks_sms_until_fixed,
    smtp_535_blocks_email_until_fixed,
    fcm_invalid_client_blocks_push_until_fixed,
    fcm_third_party_auth_error_blocks_only_ios_tokens_until_fixed,
    fcm_third_party_auth_error_blocks_only_web_tokens_until_fixed,
    send_with_a_wrong_credential_exits_1_in_the_providers_words,
    send_with_a_refused_apns_credential_exits_1_naming_the_sub_route,
    fcm_sender_id_mismatch_fails_the_message_and_invalidates_its_token,
    runs_resume_makes_a_blocked_route_probe_at_once,
);

ignored_on_both_databases!(
    twilio_20003_blocks_sms_for_20_s,
    smtp_535_blocks_email_for_20_s,
    fcm_invalid_client_blocks_push_for_20_s,
    fcm_third_party_auth_error_blocks_only_ios_tokens_for_20_s,
);
