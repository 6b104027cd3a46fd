//! Signed provider webhooks: SNS (SES) messages signed under a test CA's
//! certificate for an SNS host, served by an injected fetcher (no test
//! resolves an AWS host); SendGrid events signed with an ECDSA key made
//! here. A valid signature is applied; a forged one, a certificate on
//! another host, an http URL, an expired certificate, a foreign topic or no
//! signature at all: 403, and nothing changes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use herald_domain::token::TokenKind;
use herald_server::{CertFetcher, SnsSettings};
use herald_tests::Backend;
use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_RSA_SHA256,
};
use reqwest::StatusCode;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair as _, RsaKeyPair};
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use serde_json::{Value, json};

use crate::common::*;

/// A 2,048-bit RSA key (PKCS#8 DER) made for these tests only: ring signs
/// with RSA but does not make RSA keys.
const RSA_KEY: &[u8] = include_bytes!("../data/sns-test-rsa.pk8");
pub(crate) const TOPIC: &str = "arn:aws:sns:us-east-1:123456789012:herald-ses";
const HOST: &str = "sns.us-east-1.amazonaws.com";
pub(crate) const CERT_URL: &str =
    "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-test.pem";
const EXPIRED_URL: &str = "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-old.pem";
const OTHER_NAME_URL: &str =
    "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-test.pem";
const CONFIRM_URL: &str =
    "https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription&Token=t0k";

/// Serves certificates by URL and notes every URL asked for.
#[derive(Default)]
pub(crate) struct Fetcher {
    bodies: HashMap<String, Vec<u8>>,
    asked: Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl CertFetcher for Fetcher {
    async fn fetch(&self, url: &str) -> Result<Vec<u8>, String> {
        self.asked.lock().unwrap().push(url.to_string());
        self.bodies
            .get(url)
            .cloned()
            .ok_or_else(|| format!("404 at {url}"))
    }
}

impl Fetcher {
    fn asked(&self, url: &str) -> usize {
        self.asked
            .lock()
            .unwrap()
            .iter()
            .filter(|u| *u == url)
            .count()
    }
}

/// A test CA, and SNS signing certificates it issued: a good one for
/// [`HOST`] (served at [`CERT_URL`] and, for another host, at
/// [`OTHER_NAME_URL`]) and an expired one ([`EXPIRED_URL`]).
pub(crate) fn pki() -> (CertificateDer<'static>, Arc<Fetcher>) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let root = ca.self_signed(&ca_key).unwrap().der().clone();
    let issuer = Issuer::new(ca, &ca_key);
    let leaf_key =
        KeyPair::from_pkcs8_der_and_sign_algo(&PrivatePkcs8KeyDer::from(RSA_KEY), &PKCS_RSA_SHA256)
            .unwrap();
    let leaf = |expired: bool| {
        let mut p = CertificateParams::new(vec![HOST.to_string()]).unwrap();
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        if expired {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        p.signed_by(&leaf_key, &issuer).unwrap().pem().into_bytes()
    };
    let mut f = Fetcher::default();
    f.bodies.insert(CERT_URL.into(), leaf(false));
    f.bodies.insert(OTHER_NAME_URL.into(), leaf(false));
    f.bodies.insert(EXPIRED_URL.into(), leaf(true));
    f.bodies.insert(
        CONFIRM_URL.into(),
        b"<ConfirmSubscriptionResponse/>".to_vec(),
    );
    (root, Arc::new(f))
}

/// SignatureVersion 1 (SHA1withRSA) of the subscription confirmation in
/// [`sns_subscriptions`], made once with `openssl dgst -sha1 -sign` and the
/// key above: ring verifies SHA-1 signatures but does not make them.
const V1_CONFIRMATION_SIGNATURE: &str = include_str!("../data/sns-v1-confirmation.sig.b64");

/// `msg` with `SignatureVersion` 2, `SigningCertURL` and a `Signature` over its signed fields.
pub(crate) fn sign_sns(mut msg: Value, version: &str, cert_url: &str) -> Value {
    let kind = msg["Type"].as_str().unwrap().to_string();
    let fields: &[&str] = if kind == "Notification" {
        &[
            "Message",
            "MessageId",
            "Subject",
            "Timestamp",
            "TopicArn",
            "Type",
        ]
    } else {
        &[
            "Message",
            "MessageId",
            "SubscribeURL",
            "Timestamp",
            "Token",
            "TopicArn",
            "Type",
        ]
    };
    let mut text = String::new();
    for f in fields {
        if let Some(v) = msg.get(*f).and_then(Value::as_str) {
            text.push_str(&format!("{f}\n{v}\n"));
        }
    }
    let key = RsaKeyPair::from_pkcs8(RSA_KEY).unwrap();
    let mut sig = vec![0u8; key.public().modulus_len()];
    key.sign(
        &ring::signature::RSA_PKCS1_SHA256,
        &SystemRandom::new(),
        text.as_bytes(),
        &mut sig,
    )
    .unwrap();
    msg["SignatureVersion"] = json!(version);
    msg["SigningCertURL"] = json!(cert_url);
    msg["Signature"] = json!(STANDARD.encode(sig));
    msg
}

/// An SNS notification of an SES complaint about message `id`.
fn complaint(app: &App, id: i64) -> Value {
    let inner = json!({
        "notificationType": "Complaint",
        "complaint": {"complaintFeedbackType": "abuse"},
        "mail": {"tags": {"herald_token": [app.token(TokenKind::Callback, id)]}}
    });
    json!({
        "Type": "Notification",
        "MessageId": "2f0c-1",
        "TopicArn": TOPIC,
        "Message": inner.to_string(),
        "Timestamp": "2026-12-07T03:00:00.000Z",
    })
}

async fn post_ses(app: &App, body: &Value) -> StatusCode {
    app.client
        .post(app.url("/webhooks/email/ses"))
        .header("content-type", "text/plain; charset=UTF-8")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
        .status()
}

pub(crate) async fn start(
    backend: Backend,
    fetcher: Arc<Fetcher>,
    root: CertificateDer<'static>,
) -> Option<App> {
    App::start_with(backend, move |c| {
        c.sns = Some(SnsSettings {
            topic_arns: vec![TOPIC.into()],
            fetcher,
            roots: vec![webpki::anchor_from_trusted_cert(&root).unwrap().to_owned()],
        });
    })
    .await
}

async fn sns_signatures(backend: Backend) {
    let (root, fetcher) = pki();
    let Some(app) = start(backend, fetcher.clone(), root).await else {
        return;
    };
    let before = app.footprint().await;
    let good = sign_sns(complaint(&app, M_EMAIL), "2", CERT_URL);

    // Forged: the message changed after signing.
    let mut forged = good.clone();
    forged["Message"] = complaint(&app, M_CAT)["Message"].clone();
    // A valid signature, but the certificate URL is on another host.
    let foreign = sign_sns(
        complaint(&app, M_EMAIL),
        "2",
        "https://sns.us-east-1.amazonaws.com.evil.example/cert.pem",
    );
    let http = sign_sns(
        complaint(&app, M_EMAIL),
        "2",
        "http://sns.us-east-1.amazonaws.com/SimpleNotificationService-test.pem",
    );
    let expired = sign_sns(complaint(&app, M_EMAIL), "2", EXPIRED_URL);
    // An SNS host, but the certificate there names another one.
    let misnamed = sign_sns(complaint(&app, M_EMAIL), "2", OTHER_NAME_URL);
    let mut topic = complaint(&app, M_EMAIL);
    topic["TopicArn"] = json!("arn:aws:sns:us-east-1:999999999999:other");
    let topic = sign_sns(topic, "2", CERT_URL);
    let mut unsigned = complaint(&app, M_EMAIL);
    unsigned["SigningCertURL"] = json!(CERT_URL);
    let bare = json!({"notificationType": "Complaint", "mail": {"tags": {"herald_token": [app.token(TokenKind::Callback, M_EMAIL)]}}});
    // A SHA-256 signature called version 1 (SHA-1).
    let v2_as_v1 = sign_sns(complaint(&app, M_EMAIL), "1", CERT_URL);
    for (what, body) in [
        ("forged", &forged),
        ("foreign host", &foreign),
        ("http", &http),
        ("expired", &expired),
        ("misnamed", &misnamed),
        ("topic", &topic),
        ("unsigned", &unsigned),
        ("bare SES", &bare),
        ("SHA-256 signature called version 1", &v2_as_v1),
    ] {
        assert_eq!(post_ses(&app, body).await, StatusCode::FORBIDDEN, "{what}");
    }
    assert_eq!(
        app.footprint().await,
        before,
        "a refused message changed nothing"
    );
    assert_eq!(
        fetcher.asked("https://sns.us-east-1.amazonaws.com.evil.example/cert.pem"),
        0
    );

    // Signed right: applied (version 1 is in `sns_subscriptions`).
    assert_eq!(post_ses(&app, &good).await, StatusCode::OK);
    assert!(app.msg_int(M_EMAIL, "complained_at").await.is_some());
    let again = sign_sns(complaint(&app, M_CAT), "2", CERT_URL);
    assert_eq!(post_ses(&app, &again).await, StatusCode::OK);
    assert!(app.msg_int(M_CAT, "complained_at").await.is_some());
    // The certificate was fetched once and then cached.
    assert_eq!(fetcher.asked(CERT_URL), 1);
    app.stop().await;
}

async fn sns_subscriptions(backend: Backend) {
    let (root, fetcher) = pki();
    let Some(app) = start(backend, fetcher.clone(), root).await else {
        return;
    };
    let confirmation = json!({
        "Type": "SubscriptionConfirmation",
        "MessageId": "c-1",
        "Token": "t0k",
        "TopicArn": TOPIC,
        "Message": "You have chosen to subscribe to the topic.",
        "SubscribeURL": CONFIRM_URL,
        "Timestamp": "2026-12-07T03:00:00.000Z",
    });
    let mut signed = confirmation;
    signed["SignatureVersion"] = json!("1");
    signed["SigningCertURL"] = json!(CERT_URL);
    signed["Signature"] = json!(V1_CONFIRMATION_SIGNATURE.trim());
    let mut forged = signed.clone();
    forged["Token"] = json!("other");
    assert_eq!(post_ses(&app, &forged).await, StatusCode::FORBIDDEN);
    assert_eq!(fetcher.asked(CONFIRM_URL), 0, "not confirmed unsigned");
    assert_eq!(post_ses(&app, &signed).await, StatusCode::OK);
    assert_eq!(fetcher.asked(CONFIRM_URL), 1, "confirmed once verified");
    app.stop().await;
}

/// A SendGrid key pair: the signer, and the verification key as SendGrid shows it (base64 SPKI).
fn sendgrid_pair() -> (EcdsaKeyPair, String) {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
    let pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    // SubjectPublicKeyInfo of a P-256 key: a fixed prefix, then the point.
    let prefix: [u8; 26] = [
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08,
        0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
    ];
    let spki = [&prefix[..], pair.public_key().as_ref()].concat();
    (pair, STANDARD.encode(spki))
}

async fn sendgrid_signatures(backend: Backend) {
    let (pair, key) = sendgrid_pair();
    let point = herald_server::sendgrid_key(&key).unwrap();
    let Some(app) = App::start_with(backend, move |c| c.sendgrid_key = Some(point)).await else {
        return;
    };
    let body = format!(
        r#"[{{"email":"cat@example.com","event":"spamreport","herald_token":"{}"}}]"#,
        app.token(TokenKind::Callback, M_CAT)
    );
    let now = (now_ms() / 1000).to_string();
    let sign = |ts: &str, body: &str| {
        let sig = pair
            .sign(&SystemRandom::new(), format!("{ts}{body}").as_bytes())
            .unwrap();
        STANDARD.encode(sig.as_ref())
    };
    let post = |sig: Option<String>, ts: Option<String>, body: String| {
        let mut r = app
            .client
            .post(app.url("/webhooks/email/sendgrid"))
            .body(body);
        if let Some(s) = sig {
            r = r.header(herald_server::SENDGRID_SIGNATURE_HEADER, s);
        }
        if let Some(t) = ts {
            r = r.header(herald_server::SENDGRID_TIMESTAMP_HEADER, t);
        }
        r.send()
    };
    let before = app.footprint().await;
    let stale = (now_ms() / 1000 - 3600).to_string();
    let (other, _) = sendgrid_pair();
    let other_sig = STANDARD.encode(
        other
            .sign(&SystemRandom::new(), format!("{now}{body}").as_bytes())
            .unwrap()
            .as_ref(),
    );
    for (what, sig, ts, b) in [
        ("no headers", None, None, body.clone()),
        ("no signature", None, Some(now.clone()), body.clone()),
        (
            "another key",
            Some(other_sig),
            Some(now.clone()),
            body.clone(),
        ),
        (
            "altered body",
            Some(sign(&now, &body)),
            Some(now.clone()),
            body.replace("spamreport", "delivered"),
        ),
        (
            "stale",
            Some(sign(&stale, &body)),
            Some(stale.clone()),
            body.clone(),
        ),
    ] {
        let r = post(sig, ts, b).await.unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{what}");
    }
    assert_eq!(
        app.footprint().await,
        before,
        "a refused webhook changed nothing"
    );
    let r = post(Some(sign(&now, &body)), Some(now.clone()), body.clone())
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(app.msg_int(M_CAT, "complained_at").await.is_some());
    app.stop().await;
}

macro_rules! both {
    ($($name:ident),*) => {$(
        mod $name {
            use herald_tests::Backend;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(Backend::Sqlite).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name(Backend::Postgres).await;
            }
        }
    )*};
}

both!(sns_signatures, sns_subscriptions, sendgrid_signatures);
