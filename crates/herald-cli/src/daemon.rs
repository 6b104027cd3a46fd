//! `herald run`: the daemon (scheduler, dispatch workers, tracking server).

use clap::Args;

use crate::Cli;

/// Arguments of `herald run`.
#[derive(Args, Debug)]
pub struct RunArgs {}

/// Runs the daemon until SIGINT/SIGTERM.
pub async fn run(_cli: &Cli, _args: &RunArgs) -> anyhow::Result<()> {
    anyhow::bail!("herald run is being built")
}
