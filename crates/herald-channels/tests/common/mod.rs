//! Helpers shared by the test binaries: messages for each channel, settings pointing at the
//! loopback sinks, and a port nobody listens on.
#![allow(dead_code)] // each binary uses a different part

use std::time::Duration;

use herald_channels::RenderedMessage;
use herald_channels::fcm::{FcmSettings, ServiceAccountKey};
use herald_channels::smtp::SmtpSettings;
use herald_channels::twilio::{TwilioSender, TwilioSettings};
use herald_domain::types::Channel as ChannelKind;
use herald_sinks::{DEMO_ACCOUNT_SID, DEMO_AUTH_TOKEN, FcmSink, TwilioSink};

/// The sender number of the Twilio tests.
pub const FROM_PHONE: &str = "+15005550006";

/// An SMS whose body carries its id, so the sink's record says which message it was.
pub fn sms(id: i64, to: &str) -> RenderedMessage {
    RenderedMessage {
        message_id: id,
        channel: ChannelKind::Sms,
        to: to.to_owned(),
        subject: None,
        body: format!("msg {id}: 15% off this week. Reply STOP to opt out"),
        text: None,
        unsubscribe_url: None,
        return_path: None,
        status_callback: Some(format!("https://t.example.com/sms/status/tok{id}")),
        callback_token: None,
    }
}

/// A push message whose body carries its id.
pub fn push(id: i64, token: &str) -> RenderedMessage {
    RenderedMessage {
        message_id: id,
        channel: ChannelKind::Push,
        to: token.to_owned(),
        subject: Some("We miss you".to_owned()),
        body: format!("msg {id}: 15% off this week"),
        text: None,
        unsubscribe_url: None,
        return_path: None,
        status_callback: None,
        callback_token: None,
    }
}

/// An email whose body carries its id.
pub fn email(id: i64, to: &str) -> RenderedMessage {
    RenderedMessage {
        message_id: id,
        channel: ChannelKind::Email,
        to: to.to_owned(),
        subject: Some("We miss you".to_owned()),
        body: format!("<p>msg {id}: 15% off this week</p>"),
        text: Some(format!("msg {id}: 15% off this week")),
        unsubscribe_url: Some(format!("https://t.example.com/u/tok{id}")),
        return_path: Some(format!("bounce+tok{id}@bounces.example.com")),
        status_callback: None,
        callback_token: None,
    }
}

/// The message id a sink recorded, read back from `msg ID:` in the body.
pub fn id_in(body: &str) -> i64 {
    body.strip_prefix("msg ")
        .and_then(|rest| rest.split(':').next())
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("no message id in {body:?}"))
}

/// Twilio settings for `sink` with `timeout`.
pub fn twilio_settings(sink: &TwilioSink, timeout: Duration) -> TwilioSettings {
    let mut s = TwilioSettings::new(
        DEMO_ACCOUNT_SID,
        DEMO_AUTH_TOKEN,
        TwilioSender::parse(FROM_PHONE).expect("a valid sender"),
    );
    s.base_url = sink.base_url();
    s.timeout = timeout;
    s.connect_timeout = Duration::from_secs(2);
    s
}

/// FCM settings for `sink` (its own service-account key) with `timeout`.
pub fn fcm_settings(sink: &FcmSink, timeout: Duration) -> FcmSettings {
    let key = ServiceAccountKey::from_json(&sink.credentials_json()).expect("the sink's key");
    let mut s = FcmSettings::new(sink.project_id(), key);
    s.base_url = sink.base_url();
    s.timeout = timeout;
    s.connect_timeout = Duration::from_secs(2);
    s
}

/// SMTP settings for a sink at `port` with `timeout`.
pub fn smtp_settings(port: u16, timeout: Duration) -> SmtpSettings {
    let mut s = SmtpSettings::new("127.0.0.1", port, "Shop <news@example.com>");
    s.hello_name = Some("herald.test".to_owned());
    s.timeout = timeout;
    s
}

/// A loopback port that was free a moment ago and has no listener now.
pub async fn closed_port() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    port
}
