//! `herald demo`: the whole loop on one machine with nothing to install. A
//! fresh SQLite database, generated contacts and events imported through the
//! real import path, the example win-back campaign, real SMTP to a built-in
//! server on loopback, and the per-arm summary. Runs again without cleanup.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use herald_domain::config::{self, EmailProvider, PushProvider, SmsProvider};
use herald_domain::token::TokenSigner;
use herald_sinks::{
    DEMO_ACCOUNT_SID, DEMO_AUTH_TOKEN, FcmSink, FcmSinkConfig, SmtpSink, SmtpSinkConfig,
    TwilioSink, TwilioSinkConfig,
};
use herald_storage::Db;
use herald_storage::import::{import_contacts, import_events};
use herald_storage::store::SqlStore;
use rand::RngCore;

use crate::{Cli, datagen, send};

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
const FILES: [(&str, &str); 12] = [
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
        "templates/winback/discount.sms.hbs",
        include_str!("../../../templates/winback/discount.sms.hbs"),
    ),
    (
        "templates/winback/discount.sms.zh-CN.hbs",
        include_str!("../../../templates/winback/discount.sms.zh-CN.hbs"),
    ),
    (
        "templates/winback/reminder.sms.hbs",
        include_str!("../../../templates/winback/reminder.sms.hbs"),
    ),
    (
        "templates/winback/discount.push.hbs",
        include_str!("../../../templates/winback/discount.push.hbs"),
    ),
    (
        "templates/winback/reminder.push.hbs",
        include_str!("../../../templates/winback/reminder.push.hbs"),
    ),
    (
        "README",
        "Written by `herald demo`; deleted and recreated on every run.\n",
    ),
];

/// Names of the demo's secret variables; their values come from the local servers, not the environment.
const TWILIO_SID_VAR: &str = "HERALD_DEMO_TWILIO_SID";
const TWILIO_TOKEN_VAR: &str = "HERALD_DEMO_TWILIO_TOKEN";
const FCM_KEY_VAR: &str = "HERALD_DEMO_FCM_KEY";

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

    // Real servers on loopback that speak SMTP, Twilio's API and FCM v1; they only count.
    let sink = SmtpSink::start(SmtpSinkConfig {
        keep_messages: false,
        ..Default::default()
    })
    .await
    .context("cannot start the built-in SMTP server")?;
    let twilio = TwilioSink::start(TwilioSinkConfig {
        keep_messages: false,
        ..Default::default()
    })
    .await
    .context("cannot start the built-in Twilio-compatible server")?;
    let fcm = FcmSink::start(FcmSinkConfig {
        keep_messages: false,
        ..Default::default()
    })
    .await
    .context("cannot start the built-in FCM-compatible server")?;
    let mut cfg = config::load(&dir.join("config"))
        .map_err(|e| anyhow::anyhow!("the embedded demo config is invalid: {}", e[0]))?;
    let db_path = dir.join("herald.db");
    cfg.herald.database.url = format!("sqlite://{}?mode=rwc", db_path.display());
    // The built-in servers are local: no provider rate to respect.
    let email = &mut cfg.herald.channels.email;
    email.provider = EmailProvider::Smtp;
    email.host = sink.addr().ip().to_string();
    email.port = sink.addr().port();
    email.rate = None;
    let sms = &mut cfg.herald.channels.sms;
    sms.provider = SmsProvider::Twilio;
    sms.base_url = twilio.base_url();
    sms.account_sid_env = Some(TWILIO_SID_VAR.into());
    sms.auth_token_env = Some(TWILIO_TOKEN_VAR.into());
    sms.rate = None;
    let push = &mut cfg.herald.channels.push;
    push.provider = PushProvider::Fcm;
    push.base_url = fcm.base_url();
    push.project_id = fcm.project_id().to_string();
    push.credentials_env = Some(FCM_KEY_VAR.into());
    push.rate = None;
    println!(
        "herald demo in {}: SQLite {}; SMTP on {}, Twilio-compatible API on {}, FCM-compatible API on {}",
        dir.display(),
        db_path.display(),
        sink.addr(),
        twilio.addr(),
        fcm.addr()
    );
    let fcm_key = fcm.credentials_json();
    let secrets = move |var: &str| match var {
        TWILIO_SID_VAR => Some(DEMO_ACCOUNT_SID.to_string()),
        TWILIO_TOKEN_VAR => Some(DEMO_AUTH_TOKEN.to_string()),
        FCM_KEY_VAR => Some(fcm_key.clone()),
        _ => None,
    };

    let db = Db::connect(&cfg.herald.database.url).await?;
    let now = chrono::Utc::now().timestamp_millis();
    let contacts = dir.join("data/contacts.csv");
    let events = dir.join("data/events.csv");
    datagen::contacts_csv(&contacts, args.contacts, args.seed)?;
    let n_events = datagen::events_csv(&events, args.contacts, now, args.seed)?;
    let t = Instant::now();
    let rc = import_contacts(&db, &contacts, &|_| {}).await?;
    let re = import_events(&db, &events, &|_| {}).await?;
    if let Some(e) = rc.errors.first().or(re.errors.first()) {
        anyhow::bail!(
            "the generated demo data was rejected (line {}: {}): a bug in the demo",
            e.line,
            e.message
        );
    }
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
    let store = Arc::new(SqlStore::with_segment_config(
        db,
        cfg.herald.rfm.clone(),
        cfg.herald.lifecycle.clone(),
    ));
    let campaign = cfg
        .campaigns
        .get("winback")
        .cloned()
        .context("the demo campaign is missing")?;
    println!(
        "segment `lapsed_buyers`: {}",
        cfg.segments["lapsed_buyers"].description
    );
    let summary = send::send_campaign(
        cfg.clone(),
        Arc::new(templates),
        store,
        &campaign,
        signer,
        &secrets,
    )
    .await?;
    send::print_summary(&campaign, &summary);
    println!(
        "the built-in servers received {} email(s) over {} SMTP connection(s), {} SMS and {} push notification(s)",
        sink.count(),
        sink.connections(),
        twilio.count(),
        fcm.count()
    );
    sink.shutdown().await;
    twilio.shutdown().await;
    fcm.shutdown().await;
    Ok(())
}
