//! What mailbox providers and relays see of herald's email, over loopback to the
//! `herald-sinks` SMTP server: DKIM signatures checked by an independent verifier
//! (mail-auth, keys from its injected DNS records: a cache, and a resolver that
//! could only ever ask 127.0.0.1), globally unique Message-IDs, the headers that let
//! SendGrid and SES webhooks find a message, and SES's `250 Ok <id>` as provider id;
//! and an SMS Twilio would refuse as too long is refused without a request.

mod common;

use std::borrow::Borrow;
use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herald_channels::dkim::DkimSigner;
use herald_channels::smtp::{EmailRelay, SmtpChannel, SmtpSettings};
use herald_channels::twilio::{TOO_LONG, TwilioChannel};
use herald_channels::{Channel, DeliveryError, RenderedMessage};
use herald_domain::config::{DkimAlgorithm, MAX_SMS_BODY_CHARS};
use herald_domain::token::{TokenKind, TokenSigner};
use herald_domain::types::Channel as ChannelKind;
use herald_sinks::{DataReply, SmtpSink, SmtpSinkConfig, TwilioSink, TwilioSinkConfig};
use mail_auth::common::parse::TxtRecordParser;
use mail_auth::common::verify::DomainKey;
use mail_auth::hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use mail_auth::{
    AuthenticatedMessage, DkimResult, MessageAuthenticator, Parameters, ResolverCache, Txt,
};

const RSA_PKCS8: &str = include_str!("keys/rsa2048.pem");
const RSA_PKCS1: &str = include_str!("keys/rsa2048.pkcs1.pem");
const ED25519: &str = include_str!("keys/ed25519.pem");
const FROM: &str = "Shop <news@example.com>";
/// Messages each DKIM configuration signs in the verification test.
const MESSAGES_PER_RUN: i64 = 12;

/// The verifier's DNS: TXT records by name, never a network lookup.
#[derive(Default)]
struct InjectedDns(Mutex<HashMap<Box<str>, Txt>>);

impl ResolverCache<Box<str>, Txt> for InjectedDns {
    fn get<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.0.lock().unwrap().get(name).cloned()
    }

    fn remove<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.0.lock().unwrap().remove(name)
    }

    fn insert(&self, key: Box<str>, value: Txt, _: Instant) {
        self.0.lock().unwrap().insert(key, value);
    }
}

impl InjectedDns {
    /// Publishes `signer`'s public key at `SELECTOR._domainkey.DOMAIN.`.
    fn publish(&self, selector: &str, signer: &DkimSigner) {
        let record = signer.dns_record();
        let key = DomainKey::parse(record.as_bytes()).expect("mail-auth parses the record");
        self.insert(
            format!("{selector}._domainkey.{}.", signer.domain()).into(),
            key.into(),
            Instant::now() + Duration::from_secs(3600),
        );
    }
}

/// A verifier whose resolver could only ever ask 127.0.0.1 (nothing listens there):
/// every key must come from the injected records.
fn verifier() -> MessageAuthenticator {
    let loopback = NameServerConfig::udp_and_tcp(IpAddr::V4(Ipv4Addr::LOCALHOST));
    MessageAuthenticator::new(
        ResolverConfig::from_parts(None, vec![], vec![loopback]),
        ResolverOpts::default(),
    )
    .expect("resolver")
}

/// The DKIM results of `raw`, one per signature.
async fn verify(auth: &MessageAuthenticator, dns: &InjectedDns, raw: &[u8]) -> Vec<DkimResult> {
    let message = AuthenticatedMessage::parse(raw).expect("a parsable message");
    auth.verify_dkim(Parameters::new(&message).with_txt_cache(dns))
        .await
        .into_iter()
        .map(|o| o.result().clone())
        .collect()
}

fn message(id: i64, token: Option<String>) -> RenderedMessage {
    RenderedMessage {
        message_id: id,
        channel: ChannelKind::Email,
        to: format!("c{id}@example.org"),
        subject: Some(format!("Spring sale — {id}% off, café")),
        body: format!(
            "<html><body><p>Hello  café,\t{}</p><p>.leading dot</p>   \r\n\r\n</body></html>",
            "a long line ".repeat(id as usize % 20 + 1)
        ),
        text: Some(format!("Hello café {id}\n.leading dot\n\n\n")),
        unsubscribe_url: Some(format!("https://t.example.com/u/tok{id}")),
        return_path: Some(format!("bounce+tok{id}@bounces.example.com")),
        status_callback: None,
        callback_token: token,
    }
}

fn settings(sink: &SmtpSink) -> SmtpSettings {
    let mut s = SmtpSettings::new("127.0.0.1", sink.addr().port(), FROM);
    s.hello_name = Some("herald.test".to_owned());
    s.timeout = Duration::from_secs(5);
    s
}

fn signer(selector: &str, algorithm: DkimAlgorithm, key: &str) -> Arc<DkimSigner> {
    Arc::new(DkimSigner::new("example.com", selector, algorithm, key).expect("the test key"))
}

#[tokio::test]
async fn every_message_verifies_with_rsa_ed25519_and_both_and_tampering_fails() {
    let rsa = signer("rsa1", DkimAlgorithm::RsaSha256, RSA_PKCS8);
    let rsa_pkcs1 = signer("rsa2", DkimAlgorithm::RsaSha256, RSA_PKCS1);
    let ed = signer("ed1", DkimAlgorithm::Ed25519Sha256, ED25519);
    let dns = InjectedDns::default();
    dns.publish("rsa1", &rsa);
    dns.publish("rsa2", &rsa_pkcs1);
    dns.publish("ed1", &ed);
    let auth = verifier();
    let runs: [(&str, Vec<Arc<DkimSigner>>); 4] = [
        ("rsa-sha256", vec![rsa.clone()]),
        ("rsa-sha256, PKCS#1 key", vec![rsa_pkcs1]),
        ("ed25519-sha256", vec![ed.clone()]),
        ("dual", vec![rsa, ed]),
    ];
    for (name, signers) in runs {
        let sink = SmtpSink::start(SmtpSinkConfig::default()).await.unwrap();
        let mut s = settings(&sink);
        s.dkim = signers.clone();
        let channel = SmtpChannel::new(s).unwrap();
        for id in 1..=MESSAGES_PER_RUN {
            channel.send(&message(id, None)).await.unwrap();
        }
        let got = sink.received();
        assert_eq!(got.len(), MESSAGES_PER_RUN as usize, "{name}");
        for mail in &got {
            let results = verify(&auth, &dns, &mail.data).await;
            assert_eq!(
                results,
                vec![DkimResult::Pass; signers.len()],
                "{name}: {}",
                String::from_utf8_lossy(&mail.data)
            );
        }
        // Tampering with the body, a signed header, or the unsubscribe target breaks
        // every signature.
        let raw = got[0].data.clone();
        let text = String::from_utf8(raw.clone()).unwrap();
        let mut body = raw.clone();
        body.extend_from_slice(b"one more line\r\n");
        let subject = text.replacen("Subject: ", "Subject: Re: ", 1);
        let unsubscribe = text.replacen("https://t.example.com/u/", "https://evil.example/u/", 1);
        assert_ne!(subject, text);
        assert_ne!(unsubscribe, text);
        for (what, tampered) in [
            ("body", body),
            ("Subject", subject.into_bytes()),
            ("List-Unsubscribe", unsubscribe.into_bytes()),
        ] {
            let results = verify(&auth, &dns, &tampered).await;
            assert_eq!(results.len(), signers.len(), "{name}, {what}");
            // mail-auth calls a body hash mismatch neutral, a bad signature a failure.
            assert!(
                results
                    .iter()
                    .all(|r| matches!(r, DkimResult::Fail(_) | DkimResult::Neutral(_))),
                "{name}: a tampered {what} still verifies: {results:?}"
            );
        }
        // The signature names what RFC 8058 and DMARC need signed.
        let header = got[0].header("DKIM-Signature").unwrap();
        for name in [
            "from",
            "to",
            "subject",
            "date",
            "message-id",
            "list-unsubscribe",
            "list-unsubscribe-post",
            "mime-version",
            "content-type",
        ] {
            assert!(
                header.to_ascii_lowercase().contains(name),
                "{name} missing from {header}"
            );
        }
        sink.shutdown().await;
    }
}

#[tokio::test]
async fn message_ids_of_two_databases_and_of_test_sends_never_collide() {
    let sink = SmtpSink::start(SmtpSinkConfig::default()).await.unwrap();
    // Two installations (staging and production of one brand) with the same row ids,
    // one of them sharing the other's secret, and test sends (row id 0, no token).
    let staging = TokenSigner::new(b"staging-secret");
    let production = TokenSigner::new(b"production-secret");
    let mut sent = Vec::new();
    for signer in [&staging, &production, &staging] {
        let channel = SmtpChannel::new(settings(&sink)).unwrap();
        for id in 1..=20 {
            let token = signer.sign_message(TokenKind::Callback, id);
            channel.send(&message(id, Some(token))).await.unwrap();
        }
        for _ in 0..5 {
            channel.send(&message(0, None)).await.unwrap();
        }
        sent.push(channel);
    }
    let ids: Vec<String> = sink
        .received()
        .iter()
        .map(|m| m.header("Message-ID").unwrap())
        .collect();
    assert_eq!(ids.len(), 75);
    let distinct: HashSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), ids.len(), "a Message-ID repeats: {ids:?}");
    for id in &ids {
        assert!(id.starts_with('<') && id.ends_with("@example.com>"), "{id}");
    }
    // A Message-ID carries the callback token, so a provider event quoting it names the message.
    let token = staging.sign_message(TokenKind::Callback, 1);
    assert!(ids[0].contains(&format!(".{token}@")), "{}", ids[0]);
    sink.shutdown().await;
}

#[tokio::test]
async fn sendgrid_and_ses_get_the_token_in_their_own_headers() {
    let token = TokenSigner::new(b"s").sign_message(TokenKind::Callback, 7);
    let sink = SmtpSink::start(SmtpSinkConfig::default()).await.unwrap();
    let mut s = settings(&sink);
    s.relay = Some(EmailRelay::Sendgrid);
    SmtpChannel::new(s)
        .unwrap()
        .send(&message(7, Some(token.clone())))
        .await
        .unwrap();
    let mail = &sink.received()[0];
    let smtpapi: serde_json::Value =
        serde_json::from_str(&mail.header("X-SMTPAPI").unwrap()).unwrap();
    assert_eq!(smtpapi["unique_args"]["herald_token"], token.as_str());
    assert_eq!(mail.header("X-SES-MESSAGE-TAGS"), None);
    sink.shutdown().await;

    // SES answers `250 Ok <MessageId>`: that id is the provider id its events carry.
    let ses_id = "0100018c2a6b1f4e-6a2b3c4d-1234-4a5b-9c8d-0123456789ab-000000";
    let sink = SmtpSink::start(SmtpSinkConfig {
        after_data: DataReply::Reply(250, format!("Ok {ses_id}")),
        ..SmtpSinkConfig::default()
    })
    .await
    .unwrap();
    let mut s = settings(&sink);
    s.ses_configuration_set = Some("herald-events".to_owned());
    let receipt = SmtpChannel::new(s)
        .unwrap()
        .send(&message(7, Some(token.clone())))
        .await
        .unwrap();
    assert_eq!(receipt.provider_id.as_deref(), Some(ses_id));
    let mail = &sink.received()[0];
    assert_eq!(
        mail.header("X-SES-CONFIGURATION-SET").as_deref(),
        Some("herald-events")
    );
    assert_eq!(
        mail.header("X-SES-MESSAGE-TAGS"),
        Some(format!("herald_token={token}"))
    );
    assert_eq!(mail.header("X-SMTPAPI"), None);
    sink.shutdown().await;
}

#[tokio::test]
async fn an_sms_over_1600_characters_fails_as_too_long_without_a_request() {
    let sink = TwilioSink::start(TwilioSinkConfig::default())
        .await
        .unwrap();
    let channel =
        TwilioChannel::new(common::twilio_settings(&sink, Duration::from_secs(5))).unwrap();
    let mut m = common::sms(1, "+15005550001");
    m.body = "回".repeat(MAX_SMS_BODY_CHARS + 1);
    let err = channel.send(&m).await.unwrap_err();
    assert!(
        matches!(err, DeliveryError::Permanent { ref code, suppress_address: false, .. } if code == TOO_LONG),
        "{err:?}"
    );
    assert_eq!(sink.requests().count(), 0, "Twilio was not asked");
    // At the limit it goes.
    m.body = "回".repeat(MAX_SMS_BODY_CHARS);
    channel.send(&m).await.unwrap();
    assert_eq!(sink.count(), 1);
    sink.shutdown().await;
}

/// Messages/s of `channel` over `connections` workers for `run`, after a short warm-up.
async fn rate(channel: Arc<SmtpChannel>, connections: usize, run: Duration) -> f64 {
    let warm_up = run / 5;
    let start = Instant::now();
    let (measure_from, stop) = (start + warm_up, start + warm_up + run);
    let counted = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..connections {
        let (channel, counted) = (channel.clone(), counted.clone());
        tasks.spawn(async move {
            let mut n = worker as i64;
            while Instant::now() < stop {
                channel.send(&message(n % 1000, None)).await.expect("sent");
                if Instant::now() >= measure_from {
                    counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                n += connections as i64;
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("worker");
    }
    counted.load(std::sync::atomic::Ordering::Relaxed) as f64 / run.as_secs_f64()
}

/// Unsigned, Ed25519-signed and RSA-2048-signed SMTP, one after another in the same run
/// against one loopback sink: (unsigned, ed25519, rsa) messages/s.
async fn signing_rates(run: Duration) -> (f64, f64, f64) {
    const CONNECTIONS: usize = 8;
    let sink = SmtpSink::start(SmtpSinkConfig {
        keep_messages: false,
        ..SmtpSinkConfig::default()
    })
    .await
    .unwrap();
    let channel = |dkim: Vec<Arc<DkimSigner>>| {
        let mut s = settings(&sink);
        s.pool_size = CONNECTIONS;
        s.dkim = dkim;
        Arc::new(SmtpChannel::new(s).unwrap())
    };
    let unsigned = rate(channel(vec![]), CONNECTIONS, run).await;
    let ed = signer("ed1", DkimAlgorithm::Ed25519Sha256, ED25519);
    let ed25519 = rate(channel(vec![ed]), CONNECTIONS, run).await;
    let rsa = signer("rsa1", DkimAlgorithm::RsaSha256, RSA_PKCS8);
    let rsa = rate(channel(vec![rsa]), CONNECTIONS, run).await;
    sink.shutdown().await;
    println!(
        "DKIM signing, 8 SMTP connections to a loopback sink in the same process, {:.1} s each: \
         unsigned {unsigned:.0} messages/s; ed25519-sha256 {ed25519:.0} messages/s ({:.2}x); \
         rsa-sha256 (2048-bit) {rsa:.0} messages/s ({:.2}x)",
        run.as_secs_f64(),
        ed25519 / unsigned,
        rsa / unsigned
    );
    (unsigned, ed25519, rsa)
}

/// The full benchmark (run in release:
/// `cargo test --release -p herald-channels --test deliverability -- --ignored --nocapture`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run in release with --ignored --nocapture"]
async fn bench_dkim_signing_against_unsigned_smtp() {
    let (unsigned, ed25519, rsa) = signing_rates(Duration::from_secs(5)).await;
    assert!(
        ed25519 >= 0.7 * unsigned,
        "ed25519 at {:.2}x",
        ed25519 / unsigned
    );
    assert!(rsa >= 1_500.0, "rsa-sha256 at {rsa:.0} messages/s");
}

/// The same comparison at CI size (a second each, debug build, a shared machine): only
/// that signing keeps a sizeable share of unsigned throughput.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dkim_signing_keeps_most_of_the_smtp_rate() {
    let (unsigned, ed25519, rsa) = signing_rates(Duration::from_millis(600)).await;
    assert!(unsigned > 0.0 && rsa > 0.0);
    assert!(
        ed25519 >= 0.3 * unsigned,
        "ed25519 at {:.2}x",
        ed25519 / unsigned
    );
}
