//! `herald preview CAMPAIGN [--contact ID] [--variant V]`: the rendered messages for a contact.

use clap::Args;

use crate::Cli;

/// Arguments of `herald preview`.
#[derive(Args, Debug)]
pub struct PreviewArgs {
    /// The campaign's name.
    pub campaign: String,
}

/// Runs `herald preview`.
pub async fn run(_cli: &Cli, _args: &PreviewArgs) -> anyhow::Result<()> {
    anyhow::bail!("herald preview is being built")
}
