//! `herald contacts export|forget ID`: a contact's data, and erasing it.

use clap::Subcommand;

use crate::Cli;

/// `herald contacts` subcommands.
#[derive(Subcommand, Debug)]
pub enum ContactsCmd {
    /// Prints everything herald keeps about a contact, as JSON.
    Export {
        /// The contact's external_id.
        id: String,
    },
    /// Erases a contact (messages are kept, anonymised, for the reports).
    Forget {
        /// The contact's external_id.
        id: String,
    },
}

/// Runs `herald contacts`.
pub async fn run(_cli: &Cli, _cmd: &ContactsCmd) -> anyhow::Result<()> {
    anyhow::bail!("herald contacts is being built")
}
