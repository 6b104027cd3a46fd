//! `herald report CAMPAIGN`: the A/B result of SPEC section 5.

use clap::Args;

use crate::Cli;

/// Arguments of `herald report`.
#[derive(Args, Debug)]
pub struct ReportArgs {
    /// The campaign's name.
    pub campaign: String,
}

/// Runs `herald report`.
pub async fn run(_cli: &Cli, _args: &ReportArgs) -> anyhow::Result<()> {
    anyhow::bail!("herald report is being built")
}
