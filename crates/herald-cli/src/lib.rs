//! The `herald` command line: clap commands over the library crates, with
//! progress bars and tables. The only crate that uses `anyhow`. Exit codes:
//! 0 ok, 1 runtime failure or rejected input rows, 2 bad usage or invalid config.
//!
//! It is a library with a one-line binary (`main.rs`) so that `herald-bench`
//! drives the very code, defaults and allocator `herald` runs.

pub mod app;
mod check;
mod contacts;
mod daemon;
pub mod datagen;
mod demo;
mod import;
mod output;
mod preview;
mod progress;
mod report;
mod runs;
mod segment;
mod send;
mod sender_check;
mod serve;
mod status;
mod test_to;

/// The report source `herald serve` gives the console and the API (the benchmark drives it too).
pub use report::report_source;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

// The allocator of every binary built on this library: herald and its bench.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Exit code for a runtime failure or rejected input rows.
pub const EXIT_FAILURE: u8 = 1;
/// Exit code for bad usage or invalid config.
pub const EXIT_INVALID: u8 = 2;

/// A failure that carries its exit code.
#[derive(Debug)]
pub struct Exit(pub u8);

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {}", self.0)
    }
}

impl std::error::Error for Exit {}

/// herald: multichannel outreach campaigns from config files.
#[derive(Parser, Debug)]
#[command(name = "herald", version, about)]
pub struct Cli {
    /// The config directory (herald.toml, segments/, campaigns/).
    #[arg(long, global = true, env = "HERALD_CONFIG", default_value = "config")]
    pub config: PathBuf,
    /// The templates directory.
    #[arg(
        long,
        global = true,
        env = "HERALD_TEMPLATES",
        default_value = "templates"
    )]
    pub templates: PathBuf,
    /// Overrides [database].url of herald.toml.
    #[arg(long, global = true, env = "HERALD_DATABASE_URL")]
    pub database: Option<String>,
    /// How log lines (stderr, filtered by RUST_LOG) are written: `text` for
    /// people, `json` (one object a line, with the span fields) for a log pipeline.
    #[arg(
        long,
        global = true,
        env = "HERALD_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The whole loop on this machine: generated contacts, real SMTP to a built-in server, the summary.
    Demo(demo::DemoArgs),
    /// Applies the schema.
    Migrate,
    /// Imports contacts or events from CSV or NDJSON.
    Import {
        #[command(subcommand)]
        what: import::ImportWhat,
    },
    /// Validates every config file, segment and template.
    Check,
    /// Segments: preview who is in one.
    Segment {
        #[command(subcommand)]
        cmd: segment::SegmentCmd,
    },
    /// The rendered messages of a campaign for one contact.
    Preview(preview::PreviewArgs),
    /// Starts a run of a campaign now.
    Send(send::SendArgs),
    /// Pauses, resumes or cancels a run.
    Runs {
        #[command(subcommand)]
        cmd: runs::RunsCmd,
    },
    /// The daemon: scheduler, dispatch workers and the tracking server.
    Run(daemon::RunArgs),
    /// Runs, queue depth per channel, achieved send rates, failures (`--watch` refreshes).
    Status(status::StatusArgs),
    /// The A/B result of a campaign.
    Report(report::ReportArgs),
    /// A contact's data: export it, or forget it.
    Contacts {
        #[command(subcommand)]
        cmd: contacts::ContactsCmd,
    },
    /// The tracking server alone: opens, clicks, unsubscribes, webhooks, POST /events.
    Serve,
}

/// How log lines are written (`--log-format`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// One line of text an event, for people.
    #[default]
    Text,
    /// One JSON object an event: its fields, its span and every span it is
    /// in with their fields (run, message, channel, route...), for a log pipeline.
    Json,
}

/// Logs to stderr in `format`, filtered by `RUST_LOG` (default `warn`):
/// `RUST_LOG=herald=debug` tells each message's story (planned, claimed,
/// rendered, sent or failed with the provider's answer, recorded) inside
/// spans for the run, the page, the batch and the message.
pub fn init_logging(format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        // A log file or a pipe gets no escape codes; nor does anyone with NO_COLOR.
        LogFormat::Text => builder.with_ansi(output::stderr_colour()).init(),
        LogFormat::Json => builder.json().with_ansi(false).init(),
    }
}

/// The `herald` binary: parses the command line, runs it, maps errors to exit codes.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some(Exit(code)) = e.downcast_ref::<Exit>() {
                return ExitCode::from(*code);
            }
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Demo(args) => demo::run(&cli, args).await,
        Command::Migrate => {
            let config = app::load_config(&cli)?;
            let db = app::connect(&cli, &config).await?;
            println!("schema is up to date ({:?})", db.backend());
            Ok(())
        }
        Command::Import { what } => import::run(&cli, what).await,
        Command::Check => check::run(&cli).await,
        Command::Segment { cmd } => segment::run(&cli, cmd).await,
        Command::Preview(args) => preview::run(&cli, args).await,
        Command::Send(args) => send::run(&cli, args).await,
        Command::Runs { cmd } => runs::run(&cli, cmd).await,
        Command::Run(args) => daemon::run(&cli, args).await,
        Command::Status(args) => status::run(&cli, args).await,
        Command::Report(args) => report::run(&cli, args).await,
        Command::Contacts { cmd } => contacts::run(&cli, cmd).await,
        Command::Serve => serve::run(&cli).await,
    }
}
