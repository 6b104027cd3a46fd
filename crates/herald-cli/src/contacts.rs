//! `herald contacts export|forget ID`: a contact's data as JSON on stdout,
//! and erasing it (messages kept, anonymised, for the reports). An unknown
//! id is a usage error: exit 2, with the reason on stderr.

use clap::Subcommand;
use herald_storage::contacts::{export_contact, forget_contact};

use crate::{Cli, EXIT_INVALID, Exit, app};

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

fn unknown(id: &str) -> anyhow::Error {
    eprintln!("error: no contact has external_id `{id}`");
    Exit(EXIT_INVALID).into()
}

/// Runs `herald contacts`.
pub async fn run(cli: &Cli, cmd: &ContactsCmd) -> anyhow::Result<()> {
    let config = app::load_config(cli)?;
    let db = app::connect(cli, &config).await?;
    match cmd {
        ContactsCmd::Export { id } => {
            let doc = export_contact(&db, id).await?.ok_or_else(|| unknown(id))?;
            println!("{}", serde_json::to_string_pretty(&doc)?);
        }
        ContactsCmd::Forget { id } => {
            let now = chrono::Utc::now().timestamp_millis();
            let r = forget_contact(&db, id, now)
                .await?
                .ok_or_else(|| unknown(id))?;
            println!(
                "forgot `{id}`: its record is now `{}`; {} messages anonymised ({} planned ones cancelled), {} links and {} outbox copies deleted, {} events stripped of properties, {} push tokens deleted, {} suppressions kept as address digests",
                r.tombstone,
                r.messages,
                r.cancelled,
                r.links,
                r.outbox,
                r.events,
                r.push_tokens,
                r.digested
            );
        }
    }
    Ok(())
}
