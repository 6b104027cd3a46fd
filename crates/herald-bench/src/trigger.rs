//! `herald-bench trigger`: the time from an event to its message's send for a
//! campaign triggered with `delay = "0s"`. A real daemon (this binary, `herald
//! run`) runs against a scratch database and a local SMTP server; events are
//! POSTed to its `/events` at a steady rate over HTTP, and each message's
//! provider acceptance (`sent_at`) is compared with its event's arrival
//! (`received_at`), both stamped by the daemon's clock.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use herald_sinks::{SmtpSink, SmtpSinkConfig};
use herald_storage::Db;
use herald_storage::bench;
use herald_storage::import::import_contacts;

use herald_cli::datagen;

/// The events token the bench gives its daemon.
const TOKEN: &str = "bench-trigger-token";
/// Events per request.
const PER_REQUEST: usize = 10;

/// Runs the benchmark: `rate` events/s for `seconds` over `contacts` contacts.
pub async fn run(
    contacts: usize,
    rate: usize,
    seconds: u64,
    database: Option<&str>,
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let url = match database {
        Some(u) => u.to_string(),
        None => format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("bench.db").display()
        ),
    };
    let db = Db::connect(&url).await?;
    db.truncate_all().await?;
    let csv = dir.path().join("contacts.csv");
    datagen::contacts_csv(&csv, contacts, 7)?;
    import_contacts(&db, &csv, &|_| {}).await?;
    let sink = SmtpSink::start(SmtpSinkConfig {
        keep_messages: false,
        ..Default::default()
    })
    .await?;
    write_project(dir.path(), &url, sink.addr().port())?;

    let mut child = Command::new(crate::herald_exe()?)
        .current_dir(dir.path())
        .args(["run", "--name", "bench-trigger"])
        .env("HERALD_BENCH_EVENTS_TOKEN", TOKEN)
        .env("HERALD_SECRET", "bench-trigger-secret-0123456789abcdef")
        .env_remove("HERALD_DATABASE_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot start the daemon")?;
    let stdout = child.stdout.take().context("daemon stdout")?;
    // Read the daemon's output to its end (a closed pipe would kill it), handing on its address.
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = line
                .strip_prefix("tracking server on http://")
                .and_then(|r| r.split_whitespace().next())
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(addr.to_string());
            }
        }
    });
    let addr = rx
        .await
        .context("the daemon did not print its tracking address")?;
    // The daemon reacts to events that arrive once it has seen the campaign.
    let t0 = Instant::now();
    while bench::trigger_cursors(&db).await? == 0 {
        anyhow::ensure!(
            t0.elapsed() < Duration::from_secs(30),
            "the daemon never saw the campaign"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let client = herald_channels::http_client_builder().build()?;
    let url_events = format!("http://{addr}/events");
    let total = rate * seconds as usize;
    let interval = Duration::from_secs_f64(PER_REQUEST as f64 / rate as f64);
    let mut ticker = tokio::time::interval(interval);
    let mut requests = Vec::new();
    let started = Instant::now();
    let mut sent = 0;
    while sent < total {
        ticker.tick().await;
        let batch: Vec<serde_json::Value> = (sent..(sent + PER_REQUEST).min(total))
            .map(|i| {
                serde_json::json!({
                    "external_id": format!("u{:07}", i % contacts),
                    "name": "app_open",
                    "event_id": format!("bench-{i}"),
                })
            })
            .collect();
        sent += batch.len();
        let req = client
            .post(&url_events)
            .bearer_auth(TOKEN)
            .json(&batch)
            .send();
        requests.push(tokio::spawn(async move {
            req.await.map(|r| r.status().is_success()).unwrap_or(false)
        }));
    }
    let mut ok = 0;
    for r in requests {
        ok += usize::from(r.await.unwrap_or(false));
    }
    let posting = started.elapsed().as_secs_f64();
    // Wait for every triggered message to be settled.
    // (Contacts without an email address get no message: stop when the count holds still.)
    let t0 = Instant::now();
    let mut last = (-1, 0);
    loop {
        let (planned, pending) = bench::message_counts(&db).await?;
        last = if planned == last.0 {
            (planned, last.1 + 1)
        } else {
            (planned, 0)
        };
        if pending == 0 && (planned as usize >= total || last.1 >= 10) {
            break;
        }
        if t0.elapsed() > Duration::from_secs(120) {
            eprintln!("gave up waiting: {planned} planned, {pending} pending");
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = tokio::task::spawn_blocking(move || child.wait()).await;

    let mut lat = bench::event_to_send_ms(&db).await?;
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or(-1)
    };
    println!(
        "bench trigger on {}: {total} events POSTed in {posting:.1}s ({:.0} events/s, {ok} of {} requests accepted); {} messages sent, {} received by the SMTP server",
        match db.backend() {
            sea_orm::DbBackend::Postgres => "PostgreSQL",
            _ => "SQLite",
        },
        total as f64 / posting,
        requests_len(total),
        lat.len(),
        sink.count()
    );
    println!(
        "event to send (ms): p50 {}, p90 {}, p99 {}, max {}",
        pct(0.50),
        pct(0.90),
        pct(0.99),
        lat.last().copied().unwrap_or(-1)
    );
    sink.shutdown().await;
    Ok(())
}

fn requests_len(total: usize) -> usize {
    total.div_ceil(PER_REQUEST)
}

fn write_project(dir: &Path, url: &str, smtp_port: u16) -> anyhow::Result<()> {
    for sub in ["config/campaigns", "config/segments", "templates/bench"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    std::fs::write(
        dir.join("config/herald.toml"),
        format!(
            "[database]\nurl = \"{url}\"\n\n[tracking]\npublic_url = \"https://t.example.com\"\nlisten = \"127.0.0.1:0\"\nevents_token_env = \"HERALD_BENCH_EVENTS_TOKEN\"\n\n[channels.email]\nprovider = \"smtp\"\nhost = \"127.0.0.1\"\nport = {smtp_port}\nfrom = \"Shop <news@example.com>\"\nconcurrency = 16\n\n[dispatch]\nbatch = 500\nworkers = 2\n"
        ),
    )?;
    std::fs::write(
        dir.join("config/campaigns/opened.toml"),
        "name = \"opened\"\nkind = \"transactional\"\nwhere = 'email contains \"@\"'\nchannels = [\"email\"]\ntrigger = { event = \"app_open\", delay = \"0s\" }\n\n[[variants]]\nname = \"a\"\nemail = { subject = \"Hello {{contact.external_id}}\", template = \"bench/hello.email.hbs\" }\n",
    )?;
    std::fs::write(
        dir.join("templates/bench/hello.email.hbs"),
        "<p>Hello {{contact.external_id}}</p>\n",
    )?;
    Ok(())
}
