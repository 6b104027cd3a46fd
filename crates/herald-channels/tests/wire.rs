//! The Twilio and FCM adapters against their loopback sinks: the exact wire format, auth,
//! E.164 checks, and the OAuth2 token's caching, single-flight refresh and 401 handling.

mod common;

use std::sync::Arc;
use std::time::Duration;

use herald_channels::fcm::{FcmChannel, ServiceAccountKey};
use herald_channels::twilio::{TwilioChannel, TwilioSender};
use herald_channels::{Channel, DeliveryError};
use herald_sinks::{Answer, FaultPlan, FcmSink, FcmSinkConfig, TwilioSink, TwilioSinkConfig};

const TIMEOUT: Duration = Duration::from_secs(5);

async fn twilio_sink() -> TwilioSink {
    TwilioSink::start(TwilioSinkConfig::default())
        .await
        .expect("twilio sink")
}

async fn fcm_sink(config: FcmSinkConfig) -> FcmSink {
    FcmSink::start(config).await.expect("fcm sink")
}

#[tokio::test]
async fn twilio_posts_the_form_with_basic_auth_and_reads_the_sid() {
    let sink = twilio_sink().await;
    let channel = TwilioChannel::new(common::twilio_settings(&sink, TIMEOUT)).unwrap();
    // Spaces and dashes are dropped: the number goes out as E.164.
    let receipt = channel
        .send(&common::sms(7, "+1 415-555-0100"))
        .await
        .unwrap();
    let got = sink.received();
    assert_eq!(got.len(), 1);
    let sms = &got[0];
    assert_eq!(receipt.provider_id.as_deref(), Some(sms.sid.as_str()));
    assert!(
        sms.sid.starts_with("SM") && sms.sid.len() == 34,
        "{}",
        sms.sid
    );
    assert!(
        !channel.delivered_on_accept(),
        "delivery comes on the callback"
    );
    assert_eq!(sms.to, "+14155550100");
    assert_eq!(sms.from.as_deref(), Some(common::FROM_PHONE));
    assert_eq!(sms.messaging_service_sid, None);
    assert_eq!(sms.body, common::sms(7, "").body);
    assert_eq!(
        sms.status_callback.as_deref(),
        Some("https://t.example.com/sms/status/tok7")
    );
    assert_eq!(sms.answer, Answer::Accept);
    assert!(receipt.detail.contains("queued"), "{}", receipt.detail);

    // A Messaging Service instead of a number; no status callback.
    let mut settings = common::twilio_settings(&sink, TIMEOUT);
    let service = format!("MG{}", "0123456789abcdef".repeat(2));
    settings.from = TwilioSender::parse(&service).unwrap();
    let mut message = common::sms(8, "+14155550101");
    message.status_callback = None;
    TwilioChannel::new(settings)
        .unwrap()
        .send(&message)
        .await
        .unwrap();
    let sms = &sink.received()[1];
    assert_eq!(sms.from, None);
    assert_eq!(sms.messaging_service_sid.as_deref(), Some(service.as_str()));
    assert_eq!(sms.status_callback, None);
}

#[tokio::test]
async fn twilio_refuses_a_bad_number_without_a_request() {
    let sink = twilio_sink().await;
    let channel = TwilioChannel::new(common::twilio_settings(&sink, TIMEOUT)).unwrap();
    for bad in ["4155550100", "+0155550100", "+1415", "call me"] {
        let err = channel.send(&common::sms(1, bad)).await.unwrap_err();
        assert!(
            matches!(err, DeliveryError::Permanent { ref code, suppress_address: false, .. } if code == "invalid_address"),
            "{bad}: {err:?}"
        );
    }
    assert_eq!(sink.requests().count(), 0);
}

#[tokio::test]
async fn twilio_with_a_wrong_token_is_the_accounts_fault() {
    let sink = twilio_sink().await;
    let mut settings = common::twilio_settings(&sink, TIMEOUT);
    settings.auth_token = "wrong".into();
    let err = TwilioChannel::new(settings)
        .unwrap()
        .send(&common::sms(1, "+14155550100"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, DeliveryError::AccountFault { ref code, .. } if code == "20003"),
        "{err:?}"
    );
    assert_eq!(sink.count(), 0);
}

#[tokio::test]
async fn fcm_posts_the_message_with_a_bearer_token_and_reads_the_name() {
    let sink = fcm_sink(FcmSinkConfig::default()).await;
    let channel = FcmChannel::new(common::fcm_settings(&sink, TIMEOUT)).unwrap();
    let receipt = channel.send(&common::push(3, "dev-token-3")).await.unwrap();
    let got = sink.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].token, "dev-token-3");
    assert_eq!(got[0].title.as_deref(), Some("We miss you"));
    assert_eq!(got[0].body.as_deref(), Some("msg 3: 15% off this week"));
    assert_eq!(receipt.provider_id.as_deref(), Some(got[0].name.as_str()));
    assert!(got[0].name.starts_with("projects/demo/messages/"));
    assert!(channel.delivered_on_accept());
    // A push without a title leaves `title` out.
    let mut untitled = common::push(4, "dev-token-4");
    untitled.subject = None;
    channel.send(&untitled).await.unwrap();
    assert_eq!(sink.received()[1].title, None);
    assert_eq!(sink.token_requests(), 1);
    // An empty token never leaves.
    let err = channel.send(&common::push(5, " ")).await.unwrap_err();
    assert!(matches!(err, DeliveryError::Permanent { ref code, .. } if code == "invalid_address"));
    assert_eq!(sink.requests().count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fcm_fetches_one_token_for_many_concurrent_sends() {
    let sink = fcm_sink(FcmSinkConfig::default()).await;
    let channel = Arc::new(FcmChannel::new(common::fcm_settings(&sink, TIMEOUT)).unwrap());
    let mut tasks = tokio::task::JoinSet::new();
    for id in 0..50 {
        let channel = channel.clone();
        tasks.spawn(async move { channel.send(&common::push(id, "dev-token")).await });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap().unwrap();
    }
    assert_eq!(sink.count(), 50);
    assert_eq!(sink.token_requests(), 1, "single-flight refresh");
}

#[tokio::test]
async fn fcm_refreshes_the_token_before_it_expires() {
    // A 2 s token is replaced after half its life (the margin is 5 minutes or half).
    let sink = fcm_sink(FcmSinkConfig {
        token_lifetime: Duration::from_secs(2),
        ..FcmSinkConfig::default()
    })
    .await;
    let channel = FcmChannel::new(common::fcm_settings(&sink, TIMEOUT)).unwrap();
    channel.send(&common::push(1, "t")).await.unwrap();
    channel.send(&common::push(2, "t")).await.unwrap();
    assert_eq!(sink.token_requests(), 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    channel.send(&common::push(3, "t")).await.unwrap();
    assert_eq!(sink.token_requests(), 2);
}

#[tokio::test]
async fn fcm_401_refreshes_once_and_resends() {
    let sink = fcm_sink(FcmSinkConfig::default()).await;
    let channel = FcmChannel::new(common::fcm_settings(&sink, TIMEOUT)).unwrap();
    channel.send(&common::push(1, "t")).await.unwrap();
    sink.revoke_tokens();
    channel.send(&common::push(2, "t")).await.unwrap();
    assert_eq!(sink.token_requests(), 2);
    assert_eq!(sink.count(), 2);

    // Tokens that are dead on arrival: one refresh, then the account's fault.
    let dead = fcm_sink(FcmSinkConfig {
        token_lifetime: Duration::ZERO,
        ..FcmSinkConfig::default()
    })
    .await;
    let channel = FcmChannel::new(common::fcm_settings(&dead, TIMEOUT)).unwrap();
    let err = channel.send(&common::push(1, "t")).await.unwrap_err();
    assert!(
        matches!(err, DeliveryError::AccountFault { ref code, .. } if code == "UNAUTHENTICATED"),
        "{err:?}"
    );
    assert_eq!(dead.token_requests(), 2);
    assert_eq!(dead.count(), 0);
}

#[tokio::test]
async fn fcm_third_party_auth_error_is_the_platforms_not_the_accounts() {
    // The APNs/web-push credential is wrong: iOS/web tokens are refused,
    // Android ones go; the OAuth token is not refreshed for it (it works).
    let sink = fcm_sink(FcmSinkConfig::default()).await;
    sink.set_third_party_refused(&["ios-"]);
    let channel = FcmChannel::new(common::fcm_settings(&sink, TIMEOUT)).unwrap();
    let err = channel.send(&common::push(1, "ios-1")).await.unwrap_err();
    assert!(
        matches!(err, DeliveryError::PlatformFault { ref code, ref detail }
            if code == "THIRD_PARTY_AUTH_ERROR" && detail.contains("Auth error from APNS")),
        "{err:?}"
    );
    channel.send(&common::push(2, "android-1")).await.unwrap();
    assert_eq!(sink.token_requests(), 1);
    assert_eq!(sink.count(), 1);
    sink.set_third_party_refused(&[]);
    channel.send(&common::push(3, "ios-1")).await.unwrap();
    assert_eq!(sink.count(), 2);
}

#[tokio::test]
async fn fcm_token_endpoint_refusals_and_outages() {
    // A key the token endpoint does not know: the grant is refused, the account's fault.
    let sink = fcm_sink(FcmSinkConfig::default()).await;
    let other = fcm_sink(FcmSinkConfig {
        private_key_pem: herald_sinks::SECOND_SERVICE_ACCOUNT_KEY,
        ..FcmSinkConfig::default()
    })
    .await;
    let mut settings = common::fcm_settings(&sink, TIMEOUT);
    settings.credentials = ServiceAccountKey {
        private_key: ServiceAccountKey::from_json(&other.credentials_json())
            .unwrap()
            .private_key,
        ..settings.credentials
    };
    let err = FcmChannel::new(settings)
        .unwrap()
        .send(&common::push(1, "t"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, DeliveryError::AccountFault { ref code, .. } if code == "oauth_invalid_grant"),
        "{err:?}"
    );
    assert_eq!(sink.requests().count(), 0);

    // The token endpoint is down: nothing was sent, so it is transient.
    let mut settings = common::fcm_settings(&sink, TIMEOUT);
    settings.credentials.token_uri =
        format!("http://127.0.0.1:{}/token", common::closed_port().await);
    let channel = FcmChannel::new(settings).unwrap();
    let err = channel.send(&common::push(1, "t")).await.unwrap_err();
    assert!(
        matches!(err, DeliveryError::Transient { ref code, .. } if code == "oauth"),
        "{err:?}"
    );
    // And the next sends fail fast with the same error instead of asking again at once.
    let again = channel.send(&common::push(2, "t")).await.unwrap_err();
    assert_eq!(again, err);
}

#[tokio::test]
async fn fcm_settings_are_checked() {
    let sink = fcm_sink(FcmSinkConfig::default()).await;
    let settings = common::fcm_settings(&sink, TIMEOUT);
    assert!(!format!("{:?}", settings.credentials).contains("BEGIN"));
    let mut bad = settings.clone();
    bad.project_id = "a/b".into();
    assert!(FcmChannel::new(bad).is_err());
    let mut bad = settings.clone();
    bad.credentials.private_key =
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----".into();
    assert!(FcmChannel::new(bad).is_err());
    let mut bad = settings;
    bad.base_url = "fcm.googleapis.com".into();
    assert!(FcmChannel::new(bad).is_err());
}

#[tokio::test]
async fn sinks_answer_a_scripted_plan_then_accept() {
    let sink = TwilioSink::start(TwilioSinkConfig {
        plan: FaultPlan::script([Answer::ServerError, Answer::DeadAddress]),
        ..TwilioSinkConfig::default()
    })
    .await
    .unwrap();
    let channel = TwilioChannel::new(common::twilio_settings(&sink, TIMEOUT)).unwrap();
    let m = common::sms(1, "+14155550100");
    assert!(matches!(
        channel.send(&m).await,
        Err(DeliveryError::Transient { .. })
    ));
    assert!(matches!(
        channel.send(&m).await,
        Err(DeliveryError::Permanent {
            suppress_address: true,
            ..
        })
    ));
    assert!(channel.send(&m).await.is_ok());
    assert_eq!(sink.requests().count(), 3);
    assert_eq!(sink.count(), 1);
}

#[tokio::test]
async fn a_body_over_1600_characters_fails_too_long_without_a_request_to_twilio() {
    // Twilio would answer 21617; herald knows before it asks.
    let sink = twilio_sink().await;
    let channel = TwilioChannel::new(common::twilio_settings(&sink, TIMEOUT)).unwrap();
    let mut sms = common::sms(8, "+1 415-555-0100");
    sms.body = "a".repeat(1_601);
    let err = channel.send(&sms).await.unwrap_err();
    assert!(
        matches!(err, DeliveryError::Permanent { ref code, .. } if code == herald_channels::twilio::TOO_LONG),
        "{err:?}"
    );
    assert_eq!(sink.requests().count(), 0, "nothing reached the provider");
}
