//! The SMTP channel against the real `herald-sinks` server over loopback: MIME and
//! envelope, the error taxonomy, pooling, AUTH, and a printed throughput check.

use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_channels::smtp::{SmtpChannel, SmtpSettings, TlsMode};
use herald_channels::{Channel, DeliveryError, RenderedMessage};
use herald_domain::types::Channel as ChannelKind;
use herald_sinks::{DataReply, SmtpSink, SmtpSinkConfig};
use tokio::net::TcpListener;

const FROM: &str = "Shop <news@example.com>";

fn message(id: i64, to: &str) -> RenderedMessage {
    RenderedMessage {
        message_id: id,
        channel: ChannelKind::Email,
        to: to.to_owned(),
        subject: Some("Spring sale — 20% off".to_owned()),
        body: format!(
            "<html><body><p>Hello café, {}</p><p>.leading dot</p></body></html>",
            "a long line ".repeat(20)
        ),
        text: Some("Hello café\n.leading dot\nsee you".to_owned()),
        unsubscribe_url: Some("https://t.example.com/u/abc123".to_owned()),
        return_path: Some("bounce+abc123@bounces.example.com".to_owned()),
        status_callback: None,
    }
}

fn settings(sink: &SmtpSink) -> SmtpSettings {
    let mut s = SmtpSettings::new("127.0.0.1", sink.addr().port(), FROM);
    s.hello_name = Some("herald.test".to_owned());
    s.timeout = Duration::from_secs(5);
    s
}

async fn sink(config: SmtpSinkConfig) -> SmtpSink {
    SmtpSink::start(config).await.expect("sink starts")
}

#[tokio::test]
async fn success_writes_headers_parts_and_verp_envelope() {
    let sink = sink(SmtpSinkConfig::default()).await;
    let channel = SmtpChannel::new(settings(&sink)).unwrap();
    let m = message(42, "ann@example.org");

    let receipt = channel.send(&m).await.unwrap();
    assert!(channel.delivered_on_accept());
    assert_eq!(receipt.provider_id.as_deref(), Some("00000001"));
    assert!(receipt.detail.starts_with("250 "), "{}", receipt.detail);

    let got = sink.received();
    let mail = &got[0];
    assert_eq!(mail.mail_from, "bounce+abc123@bounces.example.com");
    assert_eq!(mail.rcpt_to, vec!["ann@example.org"]);
    assert_eq!(
        mail.header("From").as_deref(),
        Some("Shop <news@example.com>")
    );
    assert_eq!(mail.header("To").as_deref(), Some("ann@example.org"));
    assert_eq!(
        mail.header("Subject").as_deref(),
        Some("Spring sale — 20% off")
    );
    assert_eq!(
        mail.header("Message-ID").as_deref(),
        Some("<herald.42@example.com>")
    );
    assert_eq!(
        mail.header("List-Unsubscribe").as_deref(),
        Some("<https://t.example.com/u/abc123>")
    );
    assert_eq!(
        mail.header("List-Unsubscribe-Post").as_deref(),
        Some("List-Unsubscribe=One-Click")
    );
    assert!(mail.header("Date").is_some());
    assert!(
        mail.header("Content-Type")
            .unwrap()
            .starts_with("multipart/alternative"),
    );
    let parts = mail.mime_parts();
    assert_eq!(parts.len(), 2, "{parts:?}");
    assert_eq!(parts[0].0, "text/plain");
    assert_eq!(parts[0].1.replace("\r\n", "\n"), m.text.clone().unwrap());
    assert_eq!(parts[1].0, "text/html");
    assert_eq!(parts[1].1.replace("\r\n", "\n"), m.body);

    // A retry of the same message row carries the same Message-ID, on the same connection.
    channel.send(&m).await.unwrap();
    // Without a return path the envelope sender is the From address; without text, HTML only.
    let plain = RenderedMessage {
        return_path: None,
        text: None,
        unsubscribe_url: None,
        ..message(43, "bob@example.org")
    };
    channel.send(&plain).await.unwrap();
    let got = sink.received();
    assert_eq!(
        got[1].header("Message-ID").as_deref(),
        Some("<herald.42@example.com>")
    );
    assert_eq!(got[2].mail_from, "news@example.com");
    assert_eq!(got[2].header("List-Unsubscribe"), None);
    let parts = got[2].mime_parts();
    assert_eq!(parts.len(), 1);
    assert_eq!(parts[0].0, "text/html");
    assert_eq!(parts[0].1.trim_end(), plain.body);
    assert_eq!(sink.connections(), 1, "the connection is reused");
    assert_eq!(channel.idle_connections(), 1);
    channel.close().await;
    assert_eq!(channel.idle_connections(), 0);
}

#[tokio::test]
async fn rcpt_550_is_a_permanent_bounce_and_the_connection_survives() {
    let sink = sink(SmtpSinkConfig {
        reject_rcpt: vec![
            ("gone".into(), 550, "5.1.1 No such user".into()),
            ("blocked".into(), 550, "5.7.1 Rejected by policy".into()),
            ("plain".into(), 553, "Mailbox name not allowed".into()),
        ],
        ..SmtpSinkConfig::default()
    })
    .await;
    let channel = SmtpChannel::new(settings(&sink)).unwrap();

    let err = channel
        .send(&message(1, "gone@example.org"))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        DeliveryError::Permanent {
            code: "550".into(),
            detail: "5.1.1 No such user".into(),
            suppress_address: true,
        }
    );
    assert!(!err.is_retriable());
    // A policy refusal is not the address's fault: do not suppress it.
    let err = channel
        .send(&message(2, "blocked@example.org"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, DeliveryError::Permanent { suppress_address: false, ref code, .. } if code == "550"),
        "{err:?}"
    );
    let err = channel
        .send(&message(3, "plain@example.org"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            DeliveryError::Permanent {
                suppress_address: true,
                ..
            }
        ),
        "{err:?}"
    );
    channel.send(&message(4, "ok@example.org")).await.unwrap();
    assert_eq!(sink.count(), 1);
    assert_eq!(sink.connections(), 1, "RSET kept the connection in use");
}

#[tokio::test]
async fn transient_4xx_on_rcpt_and_5xx_after_data() {
    let sink = sink(SmtpSinkConfig {
        reject_rcpt: vec![("busy".into(), 451, "4.3.0 Try again later".into())],
        after_data: DataReply::Reply(554, "5.6.0 Content rejected".into()),
        ..SmtpSinkConfig::default()
    })
    .await;
    let channel = SmtpChannel::new(settings(&sink)).unwrap();
    let err = channel
        .send(&message(1, "busy@example.org"))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        DeliveryError::Transient {
            code: "451".into(),
            detail: "4.3.0 Try again later".into(),
            retry_after: None,
        }
    );
    assert!(err.is_retriable());
    let err = channel
        .send(&message(2, "ok@example.org"))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        DeliveryError::Permanent {
            code: "554".into(),
            detail: "5.6.0 Content rejected".into(),
            suppress_address: false,
        }
    );
}

#[tokio::test]
async fn connection_refused_is_transient() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let channel = SmtpChannel::new(SmtpSettings::new("127.0.0.1", port, FROM)).unwrap();
    let err = channel
        .send(&message(1, "a@example.org"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, DeliveryError::Transient { ref code, .. } if code == "connect"),
        "{err:?}"
    );
}

#[tokio::test]
async fn tls_handshake_failure_is_transient() {
    let sink = sink(SmtpSinkConfig::default()).await;
    let mut s = settings(&sink);
    s.host = "localhost".to_owned();
    s.tls = TlsMode::Tls;
    let channel = SmtpChannel::new(s).unwrap();
    let err = channel
        .send(&message(1, "a@example.org"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, DeliveryError::Transient { ref code, .. } if code == "tls"),
        "{err:?}"
    );
    // STARTTLS that the server does not offer fails the same way, before any message.
    let mut s = settings(&sink);
    s.tls = TlsMode::StartTls;
    let err = SmtpChannel::new(s)
        .unwrap()
        .send(&message(1, "a@example.org"))
        .await
        .unwrap_err();
    assert!(matches!(err, DeliveryError::Transient { .. }), "{err:?}");
    assert_eq!(sink.count(), 0);
}

#[tokio::test]
async fn no_reply_after_the_content_is_ambiguous() {
    let sink = sink(SmtpSinkConfig {
        after_data: DataReply::HangUp,
        ..SmtpSinkConfig::default()
    })
    .await;
    let channel = SmtpChannel::new(settings(&sink)).unwrap();
    let err = channel
        .send(&message(1, "a@example.org"))
        .await
        .unwrap_err();
    assert!(matches!(err, DeliveryError::Ambiguous { .. }), "{err:?}");
    assert!(!err.is_retriable());
    assert_eq!(
        sink.count(),
        1,
        "the message did arrive: that is why it must not be resent"
    );
    assert_eq!(
        channel.idle_connections(),
        0,
        "a broken connection is not pooled"
    );

    let stall = SmtpSink::start(SmtpSinkConfig {
        after_data: DataReply::Stall,
        ..SmtpSinkConfig::default()
    })
    .await
    .unwrap();
    let mut s = settings(&stall);
    s.timeout = Duration::from_millis(300);
    let err = SmtpChannel::new(s)
        .unwrap()
        .send(&message(1, "a@example.org"))
        .await
        .unwrap_err();
    assert!(matches!(err, DeliveryError::Ambiguous { .. }), "{err:?}");
}

#[tokio::test]
async fn auth_with_good_and_bad_credentials() {
    let sink = sink(SmtpSinkConfig {
        credentials: Some(("herald".into(), "s3cret".into())),
        ..SmtpSinkConfig::default()
    })
    .await;
    let mut s = settings(&sink);
    s.credentials = Some(("herald".into(), "s3cret".into()));
    assert!(
        !format!("{s:?}").contains("s3cret"),
        "Debug hides the password"
    );
    let channel = SmtpChannel::new(s.clone()).unwrap();
    channel.send(&message(1, "a@example.org")).await.unwrap();
    assert_eq!(sink.count(), 1);

    s.credentials = Some(("herald".into(), "wrong".into()));
    let err = SmtpChannel::new(s)
        .unwrap()
        .send(&message(2, "a@example.org"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, DeliveryError::AccountFault { ref code, .. } if code == "535"),
        "{err:?}"
    );

    // Without credentials the server refuses MAIL with 530: the account's fault, not the message's.
    let err = SmtpChannel::new(settings(&sink))
        .unwrap()
        .send(&message(3, "a@example.org"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, DeliveryError::AccountFault { ref code, .. } if code == "530"),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_pooled_connection_the_server_dropped_is_replaced() {
    let first = sink(SmtpSinkConfig::default()).await;
    let addr = first.addr();
    let channel = SmtpChannel::new(settings(&first)).unwrap();
    channel.send(&message(1, "a@example.org")).await.unwrap();
    first.shutdown().await;
    let second = sink(SmtpSinkConfig {
        bind: addr,
        ..SmtpSinkConfig::default()
    })
    .await;
    channel.send(&message(2, "a@example.org")).await.unwrap();
    assert_eq!(second.count(), 1);
}

#[tokio::test]
async fn bad_settings_and_bad_addresses() {
    assert!(SmtpChannel::new(SmtpSettings::new("h", 25, "not a mailbox")).is_err());
    let mut s = SmtpSettings::new("h", 25, FROM);
    s.pool_size = 0;
    assert!(SmtpChannel::new(s).is_err());
    let channel = SmtpChannel::new(SmtpSettings::new("127.0.0.1", 9, FROM)).unwrap();
    let err = channel.send(&message(1, "no-at-sign")).await.unwrap_err();
    assert!(
        matches!(err, DeliveryError::Permanent { ref code, .. } if code == "invalid_address"),
        "{err:?}"
    );
}

/// Printed, not asserted: with TCP_NODELAY expect thousands a second; ~22/s a
/// connection would mean every message waits for a delayed ACK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput_over_four_connections() {
    const MESSAGES: usize = 2_000;
    const CONNECTIONS: usize = 4;
    let sink = sink(SmtpSinkConfig {
        keep_messages: false,
        ..SmtpSinkConfig::default()
    })
    .await;
    let mut s = settings(&sink);
    s.pool_size = CONNECTIONS;
    let channel = Arc::new(SmtpChannel::new(s).unwrap());
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..CONNECTIONS {
        let channel = Arc::clone(&channel);
        tasks.spawn(async move {
            for i in (worker..MESSAGES).step_by(CONNECTIONS) {
                let to = format!("user{i}@example.org");
                channel.send(&message(i as i64, &to)).await.unwrap();
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let elapsed = start.elapsed();
    assert_eq!(sink.count(), MESSAGES);
    assert!(sink.connections() <= CONNECTIONS);
    println!(
        "smtp throughput: {MESSAGES} messages over {} connections in {:.2} s = {:.0} messages/s \
         (loopback herald-sink, ~1.5 KB multipart messages, test profile)",
        sink.connections(),
        elapsed.as_secs_f64(),
        MESSAGES as f64 / elapsed.as_secs_f64()
    );
}
