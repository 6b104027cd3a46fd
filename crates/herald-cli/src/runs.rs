//! `herald runs pause|resume|cancel RUN`.

use clap::Subcommand;

use crate::Cli;

/// `herald runs` subcommands.
#[derive(Subcommand, Debug)]
pub enum RunsCmd {
    /// Stops claiming the run's messages.
    Pause {
        /// The run's id.
        run: i64,
    },
    /// Goes on with a paused run.
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
pub async fn run(_cli: &Cli, _cmd: &RunsCmd) -> anyhow::Result<()> {
    anyhow::bail!("herald runs is being built")
}
