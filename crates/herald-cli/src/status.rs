//! `herald status`: runs, queue depth per channel, achieved send rates, failures.

use crate::Cli;

/// Runs `herald status`.
pub async fn run(_cli: &Cli) -> anyhow::Result<()> {
    anyhow::bail!("herald status is being built")
}
