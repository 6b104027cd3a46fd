//! `herald status`: recent runs with their messages by status (a
//! segment-entry campaign's passes as one row, under its latest pass), queue depth
//! and achieved send rate per channel, routes blocked by an account fault,
//! live daemons, and the most frequent failures of the last day; `--watch`
//! refreshes it.

use std::io::IsTerminal;

use chrono::{DateTime, Utc};
use herald_storage::runs;

use crate::{Cli, app};

/// Runs shown.
const RUNS: u32 = 20;

fn when(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_default()
}

/// Arguments of `herald status`.
#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// Refresh every SECS seconds (default 2) until interrupted; on a terminal
    /// the screen is redrawn, otherwise each refresh follows the last.
    #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "2")]
    pub watch: Option<u64>,
    /// Tables with every cell in full (default: fitted to the terminal or to 100 columns).
    #[arg(long)]
    pub wide: bool,
}

/// Runs `herald status`, once or, with `--watch`, until Ctrl-C.
pub async fn run(cli: &Cli, args: &StatusArgs) -> anyhow::Result<()> {
    let config = app::load_config(cli)?;
    let db = app::connect(cli, &config).await?;
    let Some(every) = args.watch else {
        return show(&db, args.wide).await;
    };
    let redraw = crate::output::colour_allowed(std::io::stdout().is_terminal());
    loop {
        if redraw {
            // Clear the screen and go home: a terminal shows one status at a time.
            print!("\x1b[2J\x1b[H");
        } else {
            println!("--- {}", when(Utc::now().timestamp_millis()));
        }
        show(&db, args.wide).await?;
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(every.max(1))) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

/// Prints the status once.
async fn show(db: &herald_storage::Db, wide: bool) -> anyhow::Result<()> {
    let now = Utc::now().timestamp_millis();
    let s = runs::status(db, now, RUNS).await?;

    let header = [
        "run",
        "campaign",
        "scheduled (started)",
        "state",
        "messages",
    ];
    let mut t = crate::output::table(header.map(String::from).to_vec(), wide);
    let cell = |text: &str| {
        if wide {
            text.to_string()
        } else {
            crate::output::cut(text, crate::output::MAX_CELL_CHARS)
        }
    };
    for r in &s.runs {
        let counts: Vec<String> = r.counts.iter().map(|(st, n)| format!("{st} {n}")).collect();
        t.add_row(vec![
            r.id.to_string(),
            cell(&r.campaign),
            match (&r.passes, r.origin.as_str()) {
                (Some(p), _) => format!(
                    "{} entry pass{} since {}",
                    p.count,
                    if p.count == 1 { "" } else { "es" },
                    when(p.since)
                ),
                (None, "trigger") => format!("triggered, since {}", when(r.scheduled_at)),
                _ => when(r.scheduled_at),
            },
            r.state.clone(),
            cell(&counts.join(", ")),
        ]);
    }
    if s.runs.is_empty() {
        println!("no runs yet");
    } else {
        println!("{t}");
    }

    let header = [
        "channel",
        "due now",
        "planned later",
        "sending",
        "sent last minute (/s)",
        "failed attempts last hour",
    ];
    let mut t = crate::output::table(header.map(String::from).to_vec(), wide);
    for c in &s.channels {
        t.add_row(vec![
            c.channel.clone(),
            c.due.to_string(),
            c.later.to_string(),
            c.sending.to_string(),
            format!(
                "{} ({:.1}/s)",
                c.sent_last_minute,
                c.sent_last_minute as f64 / 60.0
            ),
            c.failed_last_hour.to_string(),
        ]);
    }
    println!("{t}");

    // Runs the reputation guard paused, and why.
    for (run, reason) in herald_storage::reputation::paused_by_guard(db).await? {
        println!("run {run} paused: {reason} (`herald runs resume {run}` goes on anyway)");
    }
    // A route blocked by an account fault: its messages wait, planned.
    for b in herald_storage::routes::blocks(db, now).await? {
        println!(
            "blocked: {}: {} (since {}, next probe in {:.0}s; seen by {})",
            b.route,
            b.reason,
            when(b.since),
            ((b.probe_at - now).max(0) as f64 / 1000.0),
            b.owner
        );
    }
    if s.daemons.is_empty() {
        println!("daemons: none running (start one with `herald run`)");
    } else {
        for (owner, started, beat) in &s.daemons {
            println!(
                "daemon {owner}: up since {}, last heartbeat {:.0}s ago",
                when(*started),
                (now - beat) as f64 / 1000.0
            );
        }
    }
    if !s.failures.is_empty() {
        println!("failures of the last day:");
        for (reason, n) in &s.failures {
            println!("  {n:>8}  {reason}");
        }
    }
    Ok(())
}
