//! `herald-bench`: herald's benchmarks, measured, not asserted, kept out of
//! the product's crates. `herald-bench import` generates N
//! contacts as CSV, then imports them into a fresh SQLite file and (with
//! `--postgres`) a PostgreSQL database, each in a child process so its peak
//! memory is its own; it prints rows/s, peak RSS, and the rate of parsing the
//! CSV alone, so the figure means something on another machine. `herald-bench
//! adapters` sets `herald send` through the real adapters beside the bare
//! transport to the same local peers.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use clap::{Parser, Subcommand};
use herald_storage::Db;
use herald_storage::import::import_contacts;

use herald_cli::datagen;

mod adapters;
mod console;
mod entry;
mod report;
mod run;
mod segments;
mod trigger;

/// herald's benchmarks: import, segments, a whole run, the report, triggers, the console.
#[derive(Parser, Debug)]
#[command(name = "herald-bench", version, about)]
pub struct BenchArgs {
    /// How log lines (stderr, filtered by RUST_LOG) are written: `text` or `json`.
    #[arg(long, global = true, value_enum, default_value_t = herald_cli::LogFormat::Text)]
    log_format: herald_cli::LogFormat,
    #[command(subcommand)]
    what: BenchWhat,
}

#[derive(Subcommand, Debug)]
enum BenchWhat {
    /// Contact import throughput and peak memory.
    Import {
        /// Contacts to generate.
        #[arg(long, default_value_t = 1_000_000)]
        contacts: usize,
        /// Also import into this PostgreSQL database (its contacts table is emptied first).
        #[arg(long)]
        postgres: Option<String>,
    },
    /// Segment counts and RFM scoring on generated data, next to hand-written SQL.
    Segments {
        /// Contacts to generate.
        #[arg(long, default_value_t = 1_000_000)]
        contacts: usize,
        /// Events to generate.
        #[arg(long, default_value_t = 10_000_000)]
        events: usize,
        /// Seed of the generator.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// A scratch database: EMPTIED first (default: a temporary SQLite file).
        #[arg(long)]
        database: Option<String>,
    },
    /// A whole run end to end to an unlimited outbox: the real `herald send`
    /// as a child process, with the product's defaults, on generated contacts.
    Run {
        /// Audience sizes to measure (contacts generated per size).
        #[arg(long, value_delimiter = ',', default_value = "100000,1000000")]
        recipients: Vec<usize>,
        /// Also measure on this PostgreSQL database: EMPTIED first.
        #[arg(long)]
        postgres: Option<String>,
        /// `[dispatch] batch` (default: the product's default).
        #[arg(long)]
        batch: Option<u32>,
        /// `[dispatch] workers` (default: the product's default).
        #[arg(long)]
        workers: Option<usize>,
        /// Events generated per contact (purchases, app opens): what RFM,
        /// lifecycle and best-hour queries would read. 0 keeps the load fast.
        #[arg(long, default_value_t = 0)]
        events_per_contact: usize,
    },
    /// `herald send` through the Twilio and SMTP adapters to fast local
    /// peers, alternated with the bare transport (reqwest, 16 in flight;
    /// lettre, TCP_NODELAY, 8 connections) to the same peers: messages/s and the ratio.
    Adapters {
        /// Contacts generated (about 27% get an SMS, 92% an email).
        #[arg(long, default_value_t = 40_000)]
        contacts: usize,
        /// Messages each bare loop sends per round.
        #[arg(long, default_value_t = 10_000)]
        bare_messages: usize,
        /// Rounds per adapter, each the bare loop then `herald send`.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Which adapters.
        #[arg(long, value_delimiter = ',', default_value = "twilio,smtp")]
        adapters: Vec<String>,
        /// `[channels.sms] concurrency` (default: the product's).
        #[arg(long)]
        sms_concurrency: Option<usize>,
        /// `[channels.email] concurrency` (default: the product's).
        #[arg(long)]
        email_concurrency: Option<usize>,
        /// Extra lines at the end of `config/herald.toml` (to try a setting before making it the default).
        #[arg(long)]
        extra_config: Option<String>,
    },
    /// One run (used by `bench run`): generates the data, runs `herald send`; prints one JSON line.
    #[command(hide = true)]
    RunOne {
        #[arg(long)]
        recipients: usize,
        #[arg(long)]
        database: String,
        #[arg(long)]
        batch: Option<u32>,
        #[arg(long)]
        workers: Option<usize>,
        #[arg(long, default_value_t = 0)]
        events_per_contact: usize,
    },
    /// The A/B report over generated messages, half of them with outcomes.
    Report {
        /// Messages to generate.
        #[arg(long, default_value_t = 10_000_000)]
        messages: u64,
        /// Runs they are spread over.
        #[arg(long, default_value_t = 10)]
        runs: u64,
        /// A scratch database: EMPTIED first (default: a temporary SQLite file).
        #[arg(long)]
        database: Option<String>,
        /// Time the report on the data a previous run left in `--database`.
        #[arg(long, requires = "database")]
        keep: bool,
    },
    /// Event to send for a campaign triggered with `delay = "0s"`: a real daemon,
    /// events POSTed to its /events at a steady rate.
    Trigger {
        /// Contacts the events are spread over.
        #[arg(long, default_value_t = 10_000)]
        contacts: usize,
        /// Events per second.
        #[arg(long, default_value_t = 1000)]
        rate: usize,
        /// For how long.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// A scratch database: EMPTIED first (default: a temporary SQLite file).
        #[arg(long)]
        database: Option<String>,
    },
    /// Segment-entry passes (evaluate and diff) over generated contacts: baseline, steady, entering.
    Entry {
        /// Contacts to generate.
        #[arg(long, default_value_t = 1_000_000)]
        contacts: usize,
        /// Events to generate.
        #[arg(long, default_value_t = 10_000_000)]
        events: usize,
        /// Seed of the generator.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// A scratch database: EMPTIED first (default: a temporary SQLite file).
        #[arg(long)]
        database: Option<String>,
        /// Pass over the data a previous run left in `--database`.
        #[arg(long, requires = "database")]
        keep: bool,
    },
    /// The console's pages over a large database: each page's HTML timed
    /// through the real admin router, before and after the stored figures.
    Console {
        /// Contacts to generate.
        #[arg(long, default_value_t = 1_000_000)]
        contacts: i64,
        /// Messages to generate.
        #[arg(long, default_value_t = 10_000_000)]
        messages: i64,
        /// Purchase events to generate (for the segments' R x F grid).
        #[arg(long, default_value_t = 1_000_000)]
        purchases: i64,
        /// Requests a page with stored figures (the median is printed).
        #[arg(long, default_value_t = 5)]
        requests: usize,
        /// A scratch database: EMPTIED first (default: a temporary SQLite file).
        #[arg(long)]
        database: Option<String>,
        /// Time the data a previous run left in `--database`.
        #[arg(long, requires = "database")]
        keep: bool,
    },
    /// One import in this process (used by `bench import`); prints one JSON line.
    #[command(hide = true)]
    ImportOne {
        #[arg(long)]
        file: PathBuf,
        #[arg(long)]
        database: String,
    },
}

/// Peak resident memory of this process in bytes (Linux), if known.
pub fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn parse_only_rate(file: &PathBuf) -> anyhow::Result<f64> {
    let t = Instant::now();
    let mut rdr = csv::Reader::from_path(file)?;
    let mut rec = csv::StringRecord::new();
    let mut n = 0u64;
    while rdr.read_record(&mut rec)? {
        n += 1;
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = BenchArgs::parse();
    herald_cli::init_logging(args.log_format);
    match &args.what {
        BenchWhat::Trigger {
            contacts,
            rate,
            seconds,
            database,
        } => trigger::run(*contacts, *rate, *seconds, database.as_deref()).await,
        BenchWhat::Run {
            recipients,
            postgres,
            batch,
            workers,
            events_per_contact,
        } => run::run(
            recipients,
            postgres.as_deref(),
            *batch,
            *workers,
            *events_per_contact,
        ),
        BenchWhat::Adapters {
            contacts,
            bare_messages,
            rounds,
            adapters,
            sms_concurrency,
            email_concurrency,
            extra_config,
        } => {
            adapters::run(adapters::Options {
                contacts: *contacts,
                bare_messages: *bare_messages,
                rounds: *rounds,
                adapters: adapters.clone(),
                sms_concurrency: *sms_concurrency,
                email_concurrency: *email_concurrency,
                extra_config: extra_config.clone(),
            })
            .await
        }
        BenchWhat::RunOne {
            recipients,
            database,
            batch,
            workers,
            events_per_contact,
        } => run::run_one(*recipients, database, *batch, *workers, *events_per_contact).await,
        BenchWhat::Segments {
            contacts,
            events,
            seed,
            database,
        } => {
            let dir = tempfile::tempdir()?;
            let url = database_or_scratch(database, dir.path(), "segments");
            let db = Db::connect(&url).await?;
            let options = segments::BenchOptions {
                contacts: *contacts,
                events: *events,
                seed: *seed,
            };
            let report =
                segments::bench_segments(&db, options, &|line| eprintln!("{line}")).await?;
            println!("{report}");
            Ok(())
        }
        BenchWhat::Report {
            messages,
            runs,
            database,
            keep,
        } => {
            let dir = tempfile::tempdir()?;
            let url = database_or_scratch(database, dir.path(), "report");
            let options = report::Options {
                messages: *messages,
                runs: *runs,
            };
            report::run(&url, options, *keep).await
        }
        BenchWhat::Entry {
            contacts,
            events,
            seed,
            database,
            keep,
        } => {
            let dir = tempfile::tempdir()?;
            let url = database_or_scratch(database, dir.path(), "entry");
            let options = entry::Options {
                contacts: *contacts,
                events: *events,
                seed: *seed,
                keep: *keep,
            };
            entry::run(&url, options).await
        }
        BenchWhat::Console {
            contacts,
            messages,
            purchases,
            requests,
            database,
            keep,
        } => {
            let dir = tempfile::tempdir()?;
            let url = database_or_scratch(database, dir.path(), "console");
            let options = console::Options {
                contacts: *contacts,
                messages: *messages,
                purchases: *purchases,
                requests: *requests,
                keep: *keep,
            };
            console::run(&url, options).await
        }
        BenchWhat::ImportOne { file, database } => {
            let db = Db::connect(database).await?;
            db.truncate_all().await?;
            let t = Instant::now();
            let r = import_contacts(&db, file, &|_| {}).await?;
            let secs = t.elapsed().as_secs_f64();
            println!(
                "{}",
                serde_json::json!({"rows": r.accepted, "rejected": r.rejected, "seconds": secs, "rows_per_s": r.accepted as f64 / secs, "peak_rss": peak_rss()})
            );
            Ok(())
        }
        BenchWhat::Import { contacts, postgres } => {
            let dir = tempfile::tempdir()?;
            let file = dir.path().join("contacts.csv");
            let t = Instant::now();
            datagen::contacts_csv(&file, *contacts, 7)?;
            let size = std::fs::metadata(&file)?.len();
            println!(
                "generated {contacts} contacts ({:.1} MB CSV) in {:.1}s",
                size as f64 / 1e6,
                t.elapsed().as_secs_f64()
            );
            let parse = parse_only_rate(&file)?;
            println!("baseline: parsing the CSV alone: {parse:.0} rows/s");
            let sqlite = format!(
                "sqlite://{}?mode=rwc",
                dir.path().join("bench.db").display()
            );
            let mut targets = vec![("SQLite", sqlite)];
            if let Some(pg) = postgres {
                targets.push(("PostgreSQL", pg.clone()));
            }
            let exe = std::env::current_exe()?;
            for (name, url) in targets {
                let out = Command::new(&exe)
                    .args(["import-one", "--file"])
                    .arg(&file)
                    .args(["--database", &url])
                    .output()?;
                if !out.status.success() {
                    anyhow::bail!(
                        "{name} import failed: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
                let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
                let rate = v["rows_per_s"].as_f64().unwrap_or(0.0);
                println!(
                    "{name:<10} imported {} contacts in {:.2}s: {:.0} rows/s ({:.0}% of parse-only), peak RSS {:.1} MB",
                    v["rows"],
                    v["seconds"].as_f64().unwrap_or(0.0),
                    rate,
                    100.0 * rate / parse,
                    v["peak_rss"].as_f64().unwrap_or(0.0) / 1e6
                );
            }
            Ok(())
        }
    }
}

/// The `herald` binary beside this one (`cargo build --release --workspace`
/// builds both): benchmarks that need a daemon run the real one.
pub fn herald_exe() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let herald = exe.with_file_name("herald");
    anyhow::ensure!(
        herald.exists(),
        "{} is missing: build it beside herald-bench with `cargo build --release --workspace`",
        herald.display()
    );
    Ok(herald)
}

/// `database`, or a scratch SQLite file `NAME.db` in `dir`.
fn database_or_scratch(database: &Option<String>, dir: &std::path::Path, name: &str) -> String {
    database.clone().unwrap_or_else(|| {
        format!(
            "sqlite://{}?mode=rwc",
            dir.join(format!("{name}.db")).display()
        )
    })
}
