//! `herald-bench adapters`: the real `herald send`, through the Twilio and
//! SMTP adapters, against the bare transport to the same fast local peer,
//! alternated in one run.
//!
//! The peers are herald's own sinks (`herald-sinks`), served by this
//! process: a Twilio-compatible HTTP server answering `201` with a message
//! resource, and an SMTP server that accepts every message. Each round runs
//! these two one after the other, the bare transport first in odd rounds and
//! `herald send` first in even ones:
//! - the bare transport: a reqwest loop with 16 requests in flight posting
//!   Twilio's form; lettre over 8 TCP_NODELAY connections, one message
//!   formatted once;
//! - `herald send` as a child process, with a fresh campaign of the round
//!   on generated contacts, its `[channels.sms]` or `[channels.email]`
//!   pointing at the sink and the product's defaults otherwise (no rate:
//!   only the route's concurrency bounds it; `RUST_LOG` is not passed on).
//!
//! It prints messages/s of each and the ratio, both for the whole `herald
//! send` process (start, planning and the last write included) and for its
//! dispatch phase alone (the rate `herald send` prints itself).

use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use herald_sinks::{
    DEMO_ACCOUNT_SID, DEMO_AUTH_TOKEN, SmtpSink, SmtpSinkConfig, TwilioSink, TwilioSinkConfig,
};
use herald_storage::Db;
use lettre::address::Envelope;
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::client::AsyncSmtpConnection;
use lettre::transport::smtp::extension::ClientId;
use tokio::net::TcpStream;

/// Requests in flight of the bare reqwest loop (the yardstick).
pub const HTTP_IN_FLIGHT: usize = 16;
/// Connections of the bare lettre loop.
pub const SMTP_CONNECTIONS: usize = 8;
const SID_VAR: &str = "HERALD_BENCH_TWILIO_SID";
const TOKEN_VAR: &str = "HERALD_BENCH_TWILIO_TOKEN";
const SENDER: &str = "+15005550006";

/// What `herald-bench adapters` measures.
#[derive(Debug, Clone)]
pub struct Options {
    /// Contacts generated (about 27% get an SMS, 92% an email).
    pub contacts: usize,
    /// Messages each bare loop sends per round.
    pub bare_messages: usize,
    /// Rounds, each bare then `herald send`, per adapter.
    pub rounds: usize,
    /// Which adapters: `twilio`, `smtp`.
    pub adapters: Vec<String>,
    /// `[channels.sms] concurrency` (default: the product's).
    pub sms_concurrency: Option<usize>,
    /// `[channels.email] concurrency` (default: the product's).
    pub email_concurrency: Option<usize>,
    /// Extra lines at the end of `config/herald.toml` (e.g. `[dispatch] workers = 4`).
    pub extra_config: Option<String>,
}

/// One `herald send`: messages sent, whole-process seconds, dispatch rate.
struct Send {
    sent: f64,
    seconds: f64,
    dispatch_rate: f64,
    cpu: f64,
    stages: String,
}

/// Runs the benchmark and prints its figures.
pub async fn run(o: Options) -> anyhow::Result<()> {
    let herald = crate::herald_exe()?;
    let dir = tempfile::tempdir()?;
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("adapters.db").display()
    );
    {
        let db = Db::connect(&url).await?;
        let options = crate::segments::BenchOptions {
            contacts: o.contacts,
            events: 0,
            seed: 3,
        };
        crate::segments::load(&db, &options).await?;
        crate::segments::analyze(&db).await?;
    }
    let twilio = TwilioSink::start(TwilioSinkConfig {
        keep_messages: false,
        ..TwilioSinkConfig::default()
    })
    .await?;
    let smtp = SmtpSink::start(SmtpSinkConfig {
        keep_messages: false,
        ..SmtpSinkConfig::default()
    })
    .await?;
    write_project(dir.path(), &url, &twilio, &smtp, &o)?;
    println!(
        "{} contacts, SQLite; peers in this process (Twilio-compatible HTTP {}, SMTP {}); `herald send` with the product's defaults, no rate limit{}",
        o.contacts,
        twilio.base_url(),
        smtp.addr(),
        [
            o.sms_concurrency
                .map(|c| format!("[channels.sms] concurrency = {c}")),
            o.email_concurrency
                .map(|c| format!("[channels.email] concurrency = {c}")),
            o.extra_config.as_ref().map(|c| c.replace('\n', " ")),
        ]
        .into_iter()
        .flatten()
        .map(|c| format!(", {c}"))
        .collect::<String>(),
    );
    for adapter in &o.adapters {
        let (bare_name, channel) = match adapter.as_str() {
            "twilio" => ("bare reqwest, 16 in flight", "sms"),
            "smtp" => ("lettre, TCP_NODELAY, 8 connections", "email"),
            other => anyhow::bail!("unknown adapter {other:?}: twilio or smtp"),
        };
        let mut ratios = Vec::new();
        for round in 1..=o.rounds {
            let bare_loop = async {
                match channel {
                    "sms" => bare_twilio(&twilio.base_url(), o.bare_messages).await,
                    _ => bare_smtp(smtp.addr().port(), o.bare_messages).await,
                }
            };
            let campaign = format!("{channel}-{round}");
            write_campaign(dir.path(), &campaign, channel)?;
            // The order alternates by round, so a load that climbs or falls
            // over a round weighs on both sides alike.
            let (bare, send) = if round % 2 == 1 {
                let bare = bare_loop.await?;
                (bare, herald_send(&herald, dir.path(), &campaign).await?)
            } else {
                let send = herald_send(&herald, dir.path(), &campaign).await?;
                (bare_loop.await?, send)
            };
            let whole = send.sent / send.seconds;
            ratios.push((whole / bare, send.dispatch_rate / bare));
            println!(
                "{adapter} round {round}: {bare_name}: {bare:.0}/s | herald send: {:.0} sent in {:.2}s = {whole:.0}/s as a whole process ({:.2}x), dispatch {:.0}/s ({:.2}x); CPU {:.1} µs a message",
                send.sent,
                send.seconds,
                whole / bare,
                send.dispatch_rate,
                send.dispatch_rate / bare,
                1e6 * send.cpu / send.sent.max(1.0),
            );
            println!("    {}", send.stages);
        }
        let (lo, hi) = ratios
            .iter()
            .fold((f64::MAX, 0f64), |(lo, hi), r| (lo.min(r.0), hi.max(r.0)));
        let (dlo, dhi) = ratios
            .iter()
            .fold((f64::MAX, 0f64), |(lo, hi), r| (lo.min(r.1), hi.max(r.1)));
        println!(
            "{adapter}: herald send / {bare_name}: {lo:.2}-{hi:.2}x as a whole process, {dlo:.2}-{dhi:.2}x in dispatch ({} rounds)",
            o.rounds
        );
    }
    twilio.shutdown().await;
    smtp.shutdown().await;
    Ok(())
}

/// The project: SMS through Twilio and email through SMTP, both at the sinks.
fn write_project(
    dir: &std::path::Path,
    url: &str,
    twilio: &TwilioSink,
    smtp: &SmtpSink,
    o: &Options,
) -> anyhow::Result<()> {
    let concurrency = |c: Option<usize>| {
        c.map(|c| format!("concurrency = {c}\n"))
            .unwrap_or_default()
    };
    std::fs::create_dir_all(dir.join("config/campaigns"))?;
    std::fs::create_dir_all(dir.join("templates/bench"))?;
    let config = format!(
        "[database]\nurl = \"{url}\"\n\n[tracking]\npublic_url = \"https://t.example.com\"\n\n\
         [channels.sms]\nprovider = \"twilio\"\nbase_url = \"{}\"\naccount_sid_env = \"{SID_VAR}\"\nauth_token_env = \"{TOKEN_VAR}\"\nfrom = \"{SENDER}\"\n{}\n\
         [channels.email]\nprovider = \"smtp\"\nhost = \"127.0.0.1\"\nport = {}\nfrom = \"Shop <news@example.com>\"\nbounce_domain = \"bounces.example.com\"\n{}\n{}\n",
        twilio.base_url(),
        concurrency(o.sms_concurrency),
        smtp.addr().port(),
        concurrency(o.email_concurrency),
        o.extra_config.as_deref().unwrap_or_default(),
    );
    std::fs::write(dir.join("config/herald.toml"), config)?;
    std::fs::write(
        dir.join("templates/bench/hello.sms.hbs"),
        "Hi {{contact.external_id}}: 15% off this week at the shop.",
    )?;
    std::fs::write(
        dir.join("templates/bench/hello.email.hbs"),
        "<p>Hello {{contact.external_id}},</p>\n<p>15% off this week: <a href=\"{{track \"https://shop.example.com/new\"}}\">see what is new</a>.</p>\n<p><a href=\"{{unsubscribe_url}}\">Unsubscribe</a></p>\n",
    )?;
    Ok(())
}

/// A campaign to everyone reachable on `channel`, new each round (a run is sent once).
fn write_campaign(dir: &std::path::Path, name: &str, channel: &str) -> anyhow::Result<()> {
    let (filter, variant) = match channel {
        "sms" => (
            "phone contains \"+\"",
            "sms = { template = \"bench/hello.sms.hbs\" }",
        ),
        _ => (
            "email contains \"@\"",
            "email = { subject = \"Hello {{contact.external_id}}\", template = \"bench/hello.email.hbs\" }",
        ),
    };
    std::fs::write(
        dir.join(format!("config/campaigns/{name}.toml")),
        format!(
            "name = \"{name}\"\nwhere = '{filter}'\nchannels = [\"{channel}\"]\n\n[[variants]]\nname = \"a\"\n{variant}\n"
        ),
    )?;
    Ok(())
}

/// Runs `herald send NAME` in `dir` (off the runtime: the sinks go on serving).
async fn herald_send(
    herald: &std::path::Path,
    dir: &std::path::Path,
    campaign: &str,
) -> anyhow::Result<Send> {
    let (herald, dir, campaign) = (herald.to_owned(), dir.to_owned(), campaign.to_owned());
    tokio::task::spawn_blocking(move || {
        let (u0, s0, _) = crate::run::children_usage();
        let started = Instant::now();
        let out = std::process::Command::new(herald)
            .current_dir(&dir)
            .args(["send", &campaign])
            .env("HERALD_SECRET", "bench-secret-0123456789abcdef")
            .env(SID_VAR, DEMO_ACCOUNT_SID)
            .env(TOKEN_VAR, DEMO_AUTH_TOKEN)
            .env_remove("HERALD_DATABASE_URL")
            .env_remove("HERALD_CONFIG")
            .env_remove("HERALD_TEMPLATES")
            // The product's default logging: a RUST_LOG=debug in the
            // caller's shell would log every message and measure that.
            .env_remove("RUST_LOG")
            .output()?;
        let seconds = started.elapsed().as_secs_f64();
        let (u1, s1, _) = crate::run::children_usage();
        let stdout = String::from_utf8_lossy(&out.stdout);
        anyhow::ensure!(
            out.status.success(),
            "herald send failed ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let after = |prefix: &str| crate::run::number_after(&stdout, prefix);
        let sent = after("dispatched ").unwrap_or(0.0);
        anyhow::ensure!(sent > 0.0, "herald send sent nothing:\n{stdout}");
        let rate_at = stdout.find("dispatched ").unwrap_or(0);
        Ok(Send {
            sent,
            seconds,
            dispatch_rate: crate::run::number_after(&stdout[rate_at..], "s: ").unwrap_or(0.0),
            cpu: (u1 - u0) + (s1 - s0),
            stages: stdout
                .lines()
                .find(|l| l.starts_with("time: "))
                .unwrap_or_default()
                .to_owned(),
        })
    })
    .await?
}

/// A bare reqwest loop posting Twilio's form, 16 in flight: messages/s.
async fn bare_twilio(base_url: &str, messages: usize) -> anyhow::Result<f64> {
    let url = format!("{base_url}/2010-04-01/Accounts/{DEMO_ACCOUNT_SID}/Messages.json");
    let client = herald_channels::http_client_builder()
        .tcp_nodelay(true)
        .build()?;
    let started = Instant::now();
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(0..messages)
        .map(|n| {
            let (client, url) = (client.clone(), url.clone());
            async move {
                let to = format!("+86138{n:08}");
                let body = format!("Hi c{n}: 15% off this week at the shop. Reply STOP to opt out");
                let callback = format!("https://t.example.com/sms/status/tok{n}");
                let response = client
                    .post(&url)
                    .basic_auth(DEMO_ACCOUNT_SID, Some(DEMO_AUTH_TOKEN))
                    .form(&[
                        ("To", to.as_str()),
                        ("From", SENDER),
                        ("Body", body.as_str()),
                        ("StatusCallback", callback.as_str()),
                    ])
                    .send()
                    .await?;
                anyhow::ensure!(response.status() == 201, "{}", response.status());
                response.bytes().await?;
                Ok(())
            }
        })
        .buffer_unordered(HTTP_IN_FLIGHT)
        .collect()
        .await;
    let rate = messages as f64 / started.elapsed().as_secs_f64();
    results.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    Ok(rate)
}

/// lettre over 8 TCP_NODELAY connections, one message formatted once: messages/s.
async fn bare_smtp(port: u16, messages: usize) -> anyhow::Result<f64> {
    let from: Mailbox = "Shop <news@example.com>".parse()?;
    let to: Mailbox = "u1@example.com".parse()?;
    let envelope = Envelope::new(Some(from.email.clone()), vec![to.email.clone()])?;
    let email = lettre::Message::builder()
        .from(from)
        .to(to)
        .subject("Hello c1")
        .multipart(MultiPart::alternative_plain_html(
            "Hello c1, 15% off this week: https://shop.example.com/new".to_owned(),
            "<p>Hello c1,</p>\n<p>15% off this week: <a href=\"https://t.example.com/c/x\">see what is new</a>.</p>\n<p><a href=\"https://t.example.com/u/x\">Unsubscribe</a></p>\n".to_owned(),
        ))?
        .formatted();
    let (envelope, email) = (Arc::new(envelope), Arc::new(email));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..SMTP_CONNECTIONS {
        let (envelope, email) = (envelope.clone(), email.clone());
        let count = messages / SMTP_CONNECTIONS + usize::from(worker < messages % SMTP_CONNECTIONS);
        tasks.spawn(async move {
            let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
            tcp.set_nodelay(true)?;
            let mut conn = AsyncSmtpConnection::connect_with_transport(
                Box::new(tcp),
                &ClientId::Domain("bench.test".into()),
            )
            .await?;
            for _ in 0..count {
                conn.send(&envelope, &email).await?;
            }
            conn.quit().await?;
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(messages as f64 / started.elapsed().as_secs_f64())
}
