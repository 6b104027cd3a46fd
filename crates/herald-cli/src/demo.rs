//! `herald demo`: the whole loop on one machine with nothing to install. A
//! fresh SQLite database, generated contacts and events imported through the
//! real import path, the example win-back campaign, real SMTP to a built-in
//! server on loopback, and the per-arm summary. Runs again without cleanup.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use herald_domain::config::{self, EmailProvider};
use herald_domain::token::TokenSigner;
use herald_sinks::{SmtpSink, SmtpSinkConfig};
use herald_storage::Db;
use herald_storage::import::{import_contacts, import_events};
use herald_storage::store::SqlStore;
use rand::RngCore;

use crate::{Cli, app, datagen, send};

/// Arguments of `herald demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Where the demo writes its database, config, templates and data (recreated each time).
    #[arg(long, default_value = "herald-demo")]
    pub dir: PathBuf,
    /// How many contacts to generate.
    #[arg(long, default_value_t = 10_000)]
    pub contacts: usize,
    /// Seed of the generated data.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

/// The example files, embedded so the demo runs from anywhere.
const FILES: [(&str, &str); 7] = [
    (
        "config/herald.toml",
        include_str!("../../../config/herald.toml"),
    ),
    (
        "config/segments/lapsed_buyers.toml",
        include_str!("../../../config/segments/lapsed_buyers.toml"),
    ),
    (
        "config/campaigns/winback.toml",
        include_str!("../../../config/campaigns/winback.toml"),
    ),
    (
        "templates/winback/discount.email.hbs",
        include_str!("../../../templates/winback/discount.email.hbs"),
    ),
    (
        "templates/winback/discount.email.zh-CN.hbs",
        include_str!("../../../templates/winback/discount.email.zh-CN.hbs"),
    ),
    (
        "templates/winback/reminder.email.hbs",
        include_str!("../../../templates/winback/reminder.email.hbs"),
    ),
    (
        "README",
        "Written by `herald demo`; deleted and recreated on every run.\n",
    ),
];

/// Runs the demo.
pub async fn run(_cli: &Cli, args: &DemoArgs) -> anyhow::Result<()> {
    let dir = &args.dir;
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("cannot clear {}", dir.display()))?;
    }
    for (rel, text) in FILES {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, text)?;
    }
    std::fs::create_dir_all(dir.join("data"))?;

    let sink = SmtpSink::start(SmtpSinkConfig {
        keep_messages: false,
        ..Default::default()
    })
    .await
    .context("cannot start the built-in SMTP server")?;
    let mut cfg = config::load(&dir.join("config"))
        .map_err(|e| anyhow::anyhow!("the embedded demo config is invalid: {}", e[0]))?;
    let db_path = dir.join("herald.db");
    cfg.herald.database.url = format!("sqlite://{}?mode=rwc", db_path.display());
    let email = &mut cfg.herald.channels.email;
    email.provider = EmailProvider::Smtp;
    email.host = sink.addr().ip().to_string();
    email.port = sink.addr().port();
    // The built-in server is local: no provider rate to respect.
    email.rate = None;
    println!(
        "herald demo in {}: SQLite {}, SMTP server on {}",
        dir.display(),
        db_path.display(),
        sink.addr()
    );

    let db = Db::connect(&cfg.herald.database.url).await?;
    let now = chrono::Utc::now().timestamp_millis();
    let contacts = dir.join("data/contacts.csv");
    let events = dir.join("data/events.csv");
    datagen::contacts_csv(&contacts, args.contacts, args.seed)?;
    let n_events = datagen::events_csv(&events, args.contacts, now, args.seed)?;
    let t = Instant::now();
    let rc = import_contacts(&db, &contacts, &|_| {}).await?;
    let re = import_events(&db, &events, &|_| {}).await?;
    println!(
        "imported {} contacts and {} of {n_events} events in {:.2}s",
        rc.accepted,
        re.accepted,
        t.elapsed().as_secs_f64()
    );

    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    let signer = TokenSigner::new(&secret);
    let cli_like = dir.join("templates");
    let mut templates = herald_templates::TemplateSet::load(&cli_like)?;
    herald_engine::render::register_inline(&mut templates, cfg.campaigns.values())?;
    let cfg = Arc::new(cfg);
    let store = Arc::new(SqlStore::new(db));
    let campaign = cfg
        .campaigns
        .get("winback")
        .cloned()
        .context("the demo campaign is missing")?;
    println!(
        "segment `lapsed_buyers`: {}",
        cfg.segments["lapsed_buyers"].description
    );
    let summary =
        send::send_campaign(cfg.clone(), Arc::new(templates), store, &campaign, signer).await?;
    send::print_summary(&campaign, &summary);
    println!(
        "the built-in SMTP server received {} email(s) over {} connection(s)",
        sink.count(),
        sink.connections()
    );
    let _ = app::database_url;
    sink.shutdown().await;
    Ok(())
}
