//! `herald runs pause|resume|cancel RUN`.

use clap::Subcommand;
use herald_storage::runs::{self, RunsError};

use crate::{Cli, EXIT_INVALID, Exit, app};

/// `herald runs` subcommands.
#[derive(Subcommand, Debug)]
pub enum RunsCmd {
    /// Stops claiming the run's messages (and planning it, if it still is).
    Pause {
        /// The run's id.
        run: i64,
    },
    /// Goes on with a paused run (a daemon plans the rest of an unfinished plan);
    /// routes blocked by an account fault probe at once.
    Resume {
        /// The run's id.
        run: i64,
    },
    /// Cancels what is still planned.
    Cancel {
        /// The run's id.
        run: i64,
    },
}

/// Runs `herald runs`.
pub async fn run(cli: &Cli, cmd: &RunsCmd) -> anyhow::Result<()> {
    let config = app::load_config(cli)?;
    let db = app::connect(cli, &config).await?;
    let now = chrono::Utc::now().timestamp_millis();
    let result = match cmd {
        RunsCmd::Pause { run } => runs::pause(&db, *run).await.map(|()| {
            format!("run {run} paused: no new messages are claimed; those in flight finish")
        }),
        RunsCmd::Resume { run } => {
            // Blocked routes (an account fault) probe at once: the usual
            // answer to "I fixed the credential".
            let probed = herald_storage::routes::request_probes(&db, now).await?;
            let probing = if probed > 0 {
                format!("; {probed} blocked route(s) probe now")
            } else {
                String::new()
            };
            match runs::resume(&db, *run).await {
                Ok(()) => Ok(format!("run {run} resumed{probing}")),
                // Not paused, but blocked: the probe is what was asked for.
                Err(RunsError::WrongState { state, .. }) if probed > 0 => {
                    Ok(format!("run {run} is {state}{probing}"))
                }
                Err(e) => Err(e),
            }
        }
        RunsCmd::Cancel { run } => runs::cancel(&db, *run, now)
            .await
            .map(|n| format!("run {run} cancelled: {n} planned message(s) will not be sent")),
    };
    match result {
        Ok(line) => {
            println!("{line}");
            Ok(())
        }
        Err(e @ (RunsError::NoSuchRun(_) | RunsError::WrongState { .. })) => {
            eprintln!("error: {e}");
            Err(Exit(EXIT_INVALID).into())
        }
        Err(e) => Err(e.into()),
    }
}
