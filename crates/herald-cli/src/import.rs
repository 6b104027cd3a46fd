//! `herald import contacts|events FILE`: streams the file into the database,
//! prints each rejected row with its line number, a summary on stdout, and
//! exits 1 when any row was rejected. Events count towards the goals of the
//! campaigns in the config directory, like those `POST /events` receives.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use clap::Subcommand;
use herald_server::goal_specs;
use herald_storage::decode::encoding_for_label;
use herald_storage::import::{
    ImportOptions, ImportReport, import_contacts_with, import_events_with,
};
use indicatif::{ProgressBar, ProgressStyle};

use crate::{Cli, EXIT_FAILURE, EXIT_INVALID, Exit, app};

/// What to import.
#[derive(Subcommand, Debug)]
pub enum ImportWhat {
    /// Contacts, upserted by external_id.
    Contacts {
        /// A .csv, .ndjson or .jsonl file.
        file: PathBuf,
        /// The file's text encoding when not UTF-8: gbk, gb18030, big5,
        /// shift_jis, euc-kr, utf-16, windows-1252... (a byte-order mark decides over it).
        #[arg(long, value_name = "LABEL")]
        encoding: Option<String>,
    },
    /// Events; unknown external ids create bare contacts.
    Events {
        /// A .csv, .ndjson or .jsonl file.
        file: PathBuf,
        /// The file's text encoding when not UTF-8 (see `import contacts --help`).
        #[arg(long, value_name = "LABEL")]
        encoding: Option<String>,
    },
}

fn progress_bar(file: &std::path::Path) -> Option<ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let len = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template(
            "{spinner} [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    Some(pb)
}

/// Prints the report; an error when rows were rejected.
pub fn print_report(
    what: &str,
    file: &std::path::Path,
    report: &ImportReport,
    started: Instant,
) -> anyhow::Result<()> {
    for e in &report.errors {
        eprintln!("{}:{}: {}", file.display(), e.line, e.message);
    }
    for w in &report.warnings {
        eprintln!("{}:{}: warning: {}", file.display(), w.line, w.message);
    }
    if report.warned > report.warnings.len() as u64 {
        eprintln!(
            "... and {} more warnings",
            report.warned - report.warnings.len() as u64
        );
    }
    if report.rejected > report.errors.len() as u64 {
        eprintln!(
            "... and {} more rejected rows",
            report.rejected - report.errors.len() as u64
        );
    }
    let secs = started.elapsed().as_secs_f64();
    let warned = if report.warned > 0 {
        format!("; {} warning(s)", report.warned)
    } else {
        String::new()
    };
    println!(
        "imported {} {what} from {} in {secs:.2}s ({:.0} rows/s); rejected {}{warned}",
        report.accepted,
        file.display(),
        report.accepted as f64 / secs.max(1e-9),
        report.rejected
    );
    if report.rejected > 0 {
        return Err(Exit(EXIT_FAILURE).into());
    }
    Ok(())
}

/// Runs the import command.
pub async fn run(cli: &Cli, what: &ImportWhat) -> anyhow::Result<()> {
    let config = app::load_config(cli)?;
    let (file, noun, label) = match what {
        ImportWhat::Contacts { file, encoding } => (file, "contacts", encoding),
        ImportWhat::Events { file, encoding } => (file, "events", encoding),
    };
    let encoding = label
        .as_deref()
        .map(encoding_for_label)
        .transpose()
        .map_err(|e| {
            eprintln!("error: --encoding: {e}");
            Exit(EXIT_INVALID)
        })?;
    let options = ImportOptions {
        attr_types: config.herald.contacts.attrs.clone(),
        encoding,
        ..ImportOptions::default()
    };
    let db = app::connect(cli, &config).await?;
    let pb = progress_bar(file);
    let progress = |bytes: u64| {
        if let Some(pb) = &pb {
            pb.set_position(bytes);
        }
    };
    let started = Instant::now();
    let report = match what {
        ImportWhat::Contacts { .. } => import_contacts_with(&db, file, &options, &progress).await?,
        ImportWhat::Events { .. } => {
            let goals = goal_specs(config.campaigns.values());
            import_events_with(&db, file, &goals, &options, &progress).await?
        }
    };
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    print_report(noun, file, &report, started)
}
