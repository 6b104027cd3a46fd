//! `herald demo`: the whole loop on one machine with nothing to install. A
//! fresh SQLite database, generated contacts and events imported through the
//! real import path, the example win-back campaign, real SMTP to a built-in
//! server on loopback, and the per-arm summary; then three simulated days of
//! opens, clicks, app opens and orders (through the tracking server's writer
//! and the event import, which attributes them), and the A/B report. Runs
//! again without cleanup.

use std::io::Write;
use std::path::{Path, PathBuf};
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
use herald_storage::import::{import_contacts, import_events, import_events_with_goals};
use herald_storage::report::{ReportFilter, campaign_report};
use herald_storage::store::SqlStore;
use herald_storage::tracking::{Hit, HitKind, record_hits};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

use herald_engine::clock::{Clock, SystemClock};
use herald_engine::dispatch::Dispatcher;
use herald_engine::render::CampaignRenderer;
use herald_engine::store::Store;
use herald_engine::trigger::{CampaignGate, TriggerPlanner};

use crate::{Cli, app, datagen, report, send};

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
const FILES: [(&str, &str); 15] = [
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
        "config/campaigns/comeback.toml",
        include_str!("../../../config/campaigns/comeback.toml"),
    ),
    (
        "templates/comeback/offer.email.hbs",
        include_str!("../../../templates/comeback/offer.email.hbs"),
    ),
    (
        "templates/comeback/offer.push.hbs",
        include_str!("../../../templates/comeback/offer.push.hbs"),
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
    // The demo shows the whole loop now, whatever the hour: quiet hours would
    // leave part of it for tomorrow morning (the daemon's job, not the demo's).
    cfg.herald.defaults.quiet_hours = None;
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
    let signer_secret = secret;
    let signer = TokenSigner::new(&secret);
    let cli_like = dir.join("templates");
    let templates_dir = cli_like.clone();
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
        store.clone(),
        &campaign,
        signer,
        &secrets,
    )
    .await?;
    send::print_summary(&campaign, &summary, false);
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

    let db = store.db();
    let outcomes = dir.join("data/outcomes.csv");
    let sim = simulate(db, summary.run.id, &outcomes, args.seed).await?;
    let goals = herald_server::goal_specs(cfg.campaigns.values());
    let imported = import_events_with_goals(db, &outcomes, &goals, &|_| {}).await?;
    println!(
        "simulated the next three days: {} opens ({} by privacy proxies), {} clicks through the \
         tracking writer; {} orders and {} app opens through the event import, which attributes them",
        sim.opens, sim.machine_opens, sim.clicks, sim.orders, sim.app_opens
    );
    anyhow::ensure!(
        imported.rejected == 0,
        "the simulated events were rejected: a bug in the demo"
    );
    let report = campaign_report(
        db,
        &campaign.name,
        Some(&campaign),
        cfg.herald.defaults.global_holdout.get(),
        &ReportFilter::default(),
        chrono::Utc::now().timestamp_millis(),
    )
    .await?
    .context("the demo campaign has no report")?;
    print!("\n{}", report::table(&report, false));
    comeback(
        &cfg,
        store,
        templates_dir,
        &signer_secret,
        &summary,
        args.seed,
    )
    .await
}

/// The triggered campaign: lapsed buyers who come back to the app get, on the
/// spot, an offer on the product they buy most. Their `app_open` events go
/// through the event import; the daemon's trigger planner plans the messages
/// and a dispatcher sends them to fresh local servers.
async fn comeback(
    cfg: &Arc<config::ConfigSet>,
    store: Arc<SqlStore>,
    templates_dir: PathBuf,
    signer_secret: &[u8; 32],
    winback: &send::SendSummary,
    seed: u64,
) -> anyhow::Result<()> {
    let campaign = cfg
        .campaigns
        .get("comeback")
        .cloned()
        .context("the demo's triggered campaign is missing")?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let mut planner = TriggerPlanner::new(store.clone(), clock.clone(), cfg.clone());
    // The first pass starts the campaign's cursor at the newest event: history triggers nothing.
    planner.pass().await?;
    let recipients = herald_storage::runs::recipients(store.db(), winback.run.id).await?;
    let mut rng = StdRng::seed_from_u64(seed ^ 0x00c0_3eba);
    let now = chrono::Utc::now().timestamp_millis();
    let visits = dir_file(&templates_dir, "data/comeback.csv");
    let mut csv = String::from("external_id,name,at,event_id\n");
    let mut n = 0;
    for id in &recipients {
        if rng.random_bool(0.05) {
            n += 1;
            csv.push_str(&format!("{id},app_open,{},visit-{id}\n", iso(now)));
        }
    }
    std::fs::write(&visits, csv)?;
    let sink = SmtpSink::start(SmtpSinkConfig {
        keep_messages: false,
        ..Default::default()
    })
    .await?;
    let fcm = FcmSink::start(FcmSinkConfig {
        keep_messages: false,
        ..Default::default()
    })
    .await?;
    let mut cfg2 = (**cfg).clone();
    cfg2.herald.channels.email.port = sink.addr().port();
    cfg2.herald.channels.email.host = sink.addr().ip().to_string();
    cfg2.herald.channels.push.base_url = fcm.base_url();
    cfg2.herald.channels.push.project_id = fcm.project_id().to_string();
    let fcm_key = fcm.credentials_json();
    let secrets = move |var: &str| match var {
        FCM_KEY_VAR => Some(fcm_key.clone()),
        TWILIO_SID_VAR => Some(DEMO_ACCOUNT_SID.to_string()),
        TWILIO_TOKEN_VAR => Some(DEMO_AUTH_TOKEN.to_string()),
        _ => None,
    };
    let imported = import_events(store.db(), &visits, &|_| {}).await?;
    anyhow::ensure!(
        imported.rejected == 0,
        "the demo's app opens were rejected: a bug in the demo"
    );
    let t = Instant::now();
    let planned = planner.pass().await?;
    let run_id = planner
        .run_of(&campaign.name)
        .context("the trigger planner has no run for `comeback`")?;
    let mut templates = herald_templates::TemplateSet::load(&templates_dir)?;
    herald_engine::render::register_inline(&mut templates, cfg.campaigns.values())?;
    let routes = app::routes(&cfg2, &store, &secrets)?;
    let gate = CampaignGate::for_config(store.clone(), cfg.clone())
        .context("the demo's campaigns need a gate")?;
    let dispatcher = Dispatcher::new(
        store.clone(),
        clock,
        routes,
        format!("herald-demo-{}", std::process::id()),
    )
    .with_gate(gate);
    let renderer = CampaignRenderer::new(
        Arc::new(templates),
        campaign.clone(),
        &cfg.herald,
        TokenSigner::new(signer_secret),
    );
    dispatcher.drain_run(run_id, &renderer).await?;
    let elapsed = t.elapsed().as_secs_f64();
    let counts = store.run_counts(run_id).await?;
    println!(
        "\ncampaign `comeback` (triggered by app_open): {n} win-back recipients came back to the app; \
         for the {} still lapsed buyers away from the app for over 14 days, {} sent ({} push, {} email) within {elapsed:.2}s of their visit, \
         {} held out, {} suppressed, {} cancelled (an order already came in)",
        planned.planned,
        counts.count(None, "delivered") + counts.count(None, "sent"),
        fcm.count(),
        sink.count(),
        counts.count(None, "held_out"),
        counts.count(None, "suppressed"),
        counts.count(None, "cancelled"),
    );
    for (reason, k) in send::reasons(&counts) {
        println!("  {reason}: {k}");
    }
    sink.shutdown().await;
    fcm.shutdown().await;
    Ok(())
}

fn dir_file(templates_dir: &Path, rel: &str) -> PathBuf {
    templates_dir
        .parent()
        .map_or_else(|| PathBuf::from(rel), |d| d.join(rel))
}

/// How likely each arm's contacts are to do something in the three days
/// after the send. The discount truly works best, so the report has
/// something to find; the holdout, never sent, still buys at the base rate.
struct Behaviour {
    /// Orders (the campaign's goal), of everyone in the arm, on average:
    /// each contact's own chance follows their [`History`].
    order: f64,
    /// Email opens, of delivered emails.
    open: f64,
    /// Clicks, of delivered messages.
    click: f64,
}

fn behaviour(arm: &str) -> Behaviour {
    match arm {
        "discount" => Behaviour {
            order: 0.12,
            open: 0.45,
            click: 0.12,
        },
        "reminder" => Behaviour {
            order: 0.08,
            open: 0.38,
            click: 0.07,
        },
        _ => Behaviour {
            order: HOLDOUT_ORDER,
            open: 0.0,
            click: 0.0,
        },
    }
}

/// A contact's purchases before the send, which the simulation's orders
/// follow, as in life: frequent and recent buyers come back more often and
/// spend what they used to. That history is what CUPED (`[results] cuped`
/// in winback.toml) adjusts by, so the report can show the variance it removes.
struct History {
    /// Orders in the year before the send.
    year_orders: i64,
    /// Orders in the [`RECENT_DAYS`] before the send.
    recent_orders: i64,
    /// Their revenue in the year before the send.
    year_revenue: f64,
}

impl History {
    /// How much more than another contact this one is inclined to order:
    /// each order of the year counts, a recent one forty times as much (one
    /// who bought last month is far likelier to be back than one who
    /// stopped in spring).
    fn appetite(&self) -> f64 {
        0.05 * self.year_orders as f64 + 2.0 * self.recent_orders as f64
    }

    /// The contact's average order value in the year (the demo data's
    /// middle for one with none).
    fn order_value(&self) -> f64 {
        if self.year_orders > 0 {
            self.year_revenue / self.year_orders as f64
        } else {
            210.0
        }
    }
}

/// The holdout's order rate: what the run's contacts buy on average unasked.
const HOLDOUT_ORDER: f64 = 0.05;
const YEAR_DAYS: i64 = 365;
/// The window of "recent" orders, CUPED's window in winback.toml too.
const RECENT_DAYS: i64 = 90;
const DAY_MS: i64 = 86_400_000;

/// Share of all contacts who open the app in those days (a secondary goal).
const APP_OPEN: f64 = 0.25;
/// Share of delivered emails a privacy proxy fetches right away.
const PROXY_FETCH: f64 = 0.15;
const HOUR_MS: i64 = 3_600_000;

/// What [`simulate`] made up.
struct Simulated {
    opens: u64,
    machine_opens: u64,
    clicks: u64,
    orders: u64,
    app_opens: u64,
}

/// Writes the opens and clicks of run `run_id` through the tracking
/// server's writer, and its orders and app opens to `events` (CSV) for the
/// import; every contact of the run, held out and suppressed ones too,
/// may buy, as in life.
async fn simulate(db: &Db, run_id: i64, events: &Path, seed: u64) -> anyhow::Result<Simulated> {
    let rows = herald_storage::runs::message_histories(
        db,
        run_id,
        "order_placed",
        YEAR_DAYS * DAY_MS,
        RECENT_DAYS * DAY_MS,
    )
    .await?;
    let history: Vec<History> = rows
        .iter()
        .map(|r| History {
            year_orders: r.long_count,
            recent_orders: r.short_count,
            year_revenue: r.long_value,
        })
        .collect();
    // Every arm holds the same mix of buyers: scaling by the run's mean
    // keeps each arm's order rate where `behaviour` puts it.
    let mean_appetite =
        history.iter().map(History::appetite).sum::<f64>() / history.len().max(1) as f64;
    // Two streams: what people buy depends only on the seed and the message,
    // not on how many draws its opens and clicks took.
    let mut reads = StdRng::seed_from_u64(seed ^ 0x00a7_c0e5);
    let mut buys = StdRng::seed_from_u64(seed ^ 0x00b0_0c5e);
    let mut hits = Vec::new();
    let mut sim = Simulated {
        opens: 0,
        machine_opens: 0,
        clicks: 0,
        orders: 0,
        app_opens: 0,
    };
    let mut w = std::io::BufWriter::new(std::fs::File::create(events)?);
    writeln!(w, "external_id,name,at,value,event_id")?;
    for (r, past) in rows.iter().zip(&history) {
        let (id, external_id, arm) = (r.id, &r.external_id, r.arm.as_str());
        let (channel, status) = (&r.channel, r.status.as_str());
        let (send_at, delivered_at) = (r.send_at, r.reached_at);
        let b = behaviour(arm);
        let email = channel.as_deref() == Some("email");
        // Without a status callback server an SMS stays `sent`; it arrived all the same.
        let received = status == "delivered" || (status == "sent" && !email);
        if received {
            let mut hit = |at: i64, kind| {
                hits.push(Hit {
                    message_id: id,
                    at,
                    kind,
                })
            };
            if email && reads.random_bool(PROXY_FETCH) {
                hit(
                    delivered_at + 2_000,
                    HitKind::Open {
                        machine_agent: true,
                    },
                );
                sim.machine_opens += 1;
                sim.opens += 1;
            }
            let opened = email && reads.random_bool(b.open);
            if opened {
                hit(
                    delivered_at + reads.random_range(HOUR_MS / 6..48 * HOUR_MS),
                    HitKind::Open {
                        machine_agent: false,
                    },
                );
                sim.opens += 1;
            }
            // Push and SMS are read without a pixel: their clicks are all we see.
            if (opened || !email) && reads.random_bool(b.click) {
                hit(
                    delivered_at + reads.random_range(HOUR_MS / 2..50 * HOUR_MS),
                    HitKind::Click { link: 0 },
                );
                sim.clicks += 1;
            }
        }
        let (order, order_at, share) = (
            buys.random::<f64>(),
            send_at + buys.random_range(HOUR_MS..70 * HOUR_MS),
            buys.random_range(50..100),
        );
        // What a contact spends is about what they spent before.
        let value = (past.order_value() * share as f64 / 100.0).round() as i64;
        // Everyone would buy at their own rate anyway (the holdout's); a
        // message adds its arm's lift on top. Added, not multiplied: the
        // history then predicts every arm alike, as CUPED's one theta for
        // both arms of a comparison assumes.
        let own = if mean_appetite > 0.0 {
            HOLDOUT_ORDER * past.appetite() / mean_appetite
        } else {
            HOLDOUT_ORDER
        };
        let chance = (own + b.order - HOLDOUT_ORDER).min(0.9);
        if order < chance {
            writeln!(
                w,
                "{external_id},order_placed,{},{value},sim-o-{id}",
                iso(order_at)
            )?;
            sim.orders += 1;
        }
        let (app, app_at) = (
            buys.random::<f64>(),
            send_at + buys.random_range(HOUR_MS / 6..70 * HOUR_MS),
        );
        if app < APP_OPEN {
            writeln!(w, "{external_id},app_open,{},,sim-a-{id}", iso(app_at))?;
            sim.app_opens += 1;
        }
    }
    w.flush()?;
    record_hits(
        db,
        &hits,
        herald_server::DEFAULT_MACHINE_OPEN_WINDOW.as_millis() as i64,
    )
    .await?;
    Ok(sim)
}

fn iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
