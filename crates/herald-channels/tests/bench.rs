//! Benchmarks (ignored; run in release with
//! `cargo test --release -p herald-channels --test bench -- --ignored --nocapture`):
//! each adapter against the transport alone, on the same loopback sink at the same
//! concurrency (16 HTTP requests in flight, 8 SMTP connections), printed as messages/s and
//! the adapter's ratio to the transport.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use herald_channels::Channel;
use herald_channels::fcm::FcmChannel;
use herald_channels::smtp::SmtpChannel;
use herald_channels::twilio::TwilioChannel;
use herald_sinks::{
    DEMO_ACCOUNT_SID, DEMO_AUTH_TOKEN, FcmSink, FcmSinkConfig, SmtpSink, SmtpSinkConfig,
    TwilioSink, TwilioSinkConfig,
};
use lettre::address::Envelope;
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::client::AsyncSmtpConnection;
use lettre::transport::smtp::extension::ClientId;
use tokio::net::TcpStream;

const HTTP_IN_FLIGHT: usize = 16;
const SMTP_CONNECTIONS: usize = 8;
const WARM_UP: Duration = Duration::from_millis(500);
const RUN: Duration = Duration::from_secs(3);

/// Runs `workers` loops of `one(worker, n)` (sending message number `n`) for [`WARM_UP`]
/// then [`RUN`], and returns the messages per second of the run.
async fn rate<F, Fut>(workers: usize, one: F) -> f64
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    let one = Arc::new(one);
    let counter = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let measure_from = start + WARM_UP;
    let stop = measure_from + RUN;
    let mut at_start = None;
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..workers {
        let (one, counter) = (one.clone(), counter.clone());
        tasks.spawn(async move {
            while Instant::now() < stop {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                one(worker, n).await;
            }
        });
    }
    tokio::time::sleep_until(measure_from.into()).await;
    at_start.get_or_insert(counter.load(Ordering::Relaxed));
    tokio::time::sleep_until(stop.into()).await;
    let at_stop = counter.load(Ordering::Relaxed);
    while let Some(done) = tasks.join_next().await {
        done.expect("worker");
    }
    (at_stop - at_start.unwrap_or(0)) as f64 / RUN.as_secs_f64()
}

fn report(what: &str, transport: &str, concurrency: &str, adapter: f64, bare: f64) {
    println!(
        "{what}: adapter {adapter:.0} messages/s, {transport} {bare:.0} messages/s, \
         ratio {:.2} ({concurrency}, loopback sink in the same process, {} s each after {} ms warm-up)",
        adapter / bare,
        RUN.as_secs(),
        WARM_UP.as_millis()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run in release with --ignored --nocapture"]
async fn bench_twilio_adapter_vs_bare_reqwest() {
    let sink = TwilioSink::start(TwilioSinkConfig {
        keep_messages: false,
        ..TwilioSinkConfig::default()
    })
    .await
    .expect("sink");
    let url = format!(
        "{}/2010-04-01/Accounts/{DEMO_ACCOUNT_SID}/Messages.json",
        sink.base_url()
    );
    let client = herald_channels::http_client_builder()
        .tcp_nodelay(true)
        .build()
        .expect("client");
    let bare = rate(HTTP_IN_FLIGHT, move |_, n| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let m = common::sms(n as i64, "+14155550100");
            let response = client
                .post(&url)
                .basic_auth(DEMO_ACCOUNT_SID, Some(DEMO_AUTH_TOKEN))
                .form(&[
                    ("To", m.to.as_str()),
                    ("From", common::FROM_PHONE),
                    ("Body", m.body.as_str()),
                    ("StatusCallback", m.status_callback.as_deref().unwrap_or("")),
                ])
                .send()
                .await
                .expect("sent");
            assert_eq!(response.status(), 201);
            response.bytes().await.expect("body");
        }
    })
    .await;
    let channel = Arc::new(
        TwilioChannel::new(common::twilio_settings(&sink, Duration::from_secs(10)))
            .expect("channel"),
    );
    let adapter = rate(HTTP_IN_FLIGHT, move |_, n| {
        let channel = channel.clone();
        async move {
            channel
                .send(&common::sms(n as i64, "+14155550100"))
                .await
                .expect("accepted");
        }
    })
    .await;
    report(
        "twilio",
        "bare reqwest",
        "16 requests in flight",
        adapter,
        bare,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run in release with --ignored --nocapture"]
async fn bench_fcm_adapter_vs_bare_reqwest() {
    let sink = FcmSink::start(FcmSinkConfig {
        keep_messages: false,
        ..FcmSinkConfig::default()
    })
    .await
    .expect("sink");
    let url = format!("{}/v1/projects/demo/messages:send", sink.base_url());
    let token = sink.mint_token();
    let client = herald_channels::http_client_builder()
        .tcp_nodelay(true)
        .build()
        .expect("client");
    let bare = rate(HTTP_IN_FLIGHT, move |_, n| {
        let (client, url, token) = (client.clone(), url.clone(), token.clone());
        async move {
            let m = common::push(n as i64, "dev-token-0001");
            let body = serde_json::json!({"message": {"token": m.to, "notification": {"title": m.subject, "body": m.body}}});
            let response = client
                .post(&url)
                .bearer_auth(&token)
                .json(&body)
                .send()
                .await
                .expect("sent");
            assert_eq!(response.status(), 200);
            response.bytes().await.expect("body");
        }
    })
    .await;
    let channel = Arc::new(
        FcmChannel::new(common::fcm_settings(&sink, Duration::from_secs(10))).expect("channel"),
    );
    let adapter = rate(HTTP_IN_FLIGHT, move |_, n| {
        let channel = channel.clone();
        async move {
            channel
                .send(&common::push(n as i64, "dev-token-0001"))
                .await
                .expect("accepted");
        }
    })
    .await;
    report(
        "fcm",
        "bare reqwest",
        "16 requests in flight",
        adapter,
        bare,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run in release with --ignored --nocapture"]
async fn bench_smtp_adapter_vs_bare_lettre() {
    let sink = SmtpSink::start(SmtpSinkConfig {
        keep_messages: false,
        ..SmtpSinkConfig::default()
    })
    .await
    .expect("sink");
    let port = sink.addr().port();

    // The transport alone: lettre over a TCP_NODELAY socket, one message formatted once.
    let sample = common::email(0, "ann@example.org");
    let from: Mailbox = "Shop <news@example.com>".parse().expect("mailbox");
    let to: Mailbox = sample.to.parse().expect("mailbox");
    let envelope =
        Envelope::new(Some(from.email.clone()), vec![to.email.clone()]).expect("envelope");
    let email = lettre::Message::builder()
        .from(from)
        .to(to)
        .subject(sample.subject.clone().unwrap_or_default())
        .multipart(MultiPart::alternative_plain_html(
            sample.text.clone().unwrap_or_default(),
            sample.body.clone(),
        ))
        .expect("message")
        .formatted();
    let mut connections = Vec::new();
    for _ in 0..SMTP_CONNECTIONS {
        let tcp = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        tcp.set_nodelay(true).expect("nodelay");
        let conn = AsyncSmtpConnection::connect_with_transport(
            Box::new(tcp),
            &ClientId::Domain("bench.test".into()),
        )
        .await
        .expect("smtp session");
        connections.push(tokio::sync::Mutex::new(conn));
    }
    let connections = Arc::new(connections);
    let (envelope, email) = (Arc::new(envelope), Arc::new(email));
    let bare = rate(SMTP_CONNECTIONS, move |worker, _| {
        let (connections, envelope, email) = (connections.clone(), envelope.clone(), email.clone());
        async move {
            // One connection a worker: the lock is never contended.
            let mut conn = connections[worker].lock().await;
            conn.send(&envelope, &email).await.expect("sent");
        }
    })
    .await;

    let mut settings = common::smtp_settings(port, Duration::from_secs(10));
    settings.pool_size = SMTP_CONNECTIONS;
    let channel = Arc::new(SmtpChannel::new(settings).expect("channel"));
    let adapter = rate(SMTP_CONNECTIONS, move |_, n| {
        let channel = channel.clone();
        async move {
            channel
                .send(&common::email(n as i64, "ann@example.org"))
                .await
                .expect("accepted");
        }
    })
    .await;
    report(
        "smtp",
        "bare lettre over TCP_NODELAY sockets",
        "8 connections",
        adapter,
        bare,
    );
}
