//! `herald-bench console`: how long each console page takes to answer its
//! HTML over a large database (issues 31 and 32: under 300 ms at 1,000,000
//! contacts and 10,000,000 messages). Generates the data inside the
//! database ([`herald_storage::synthetic::console_data`]), then drives the
//! real admin router (`herald_server::admin_router`, signed in with a real
//! session cookie, the CLI's report source) in this process: each page
//! once with nothing stored (it counts live, what a page cost before the
//! stored aggregates), one refresh of the stored figures timed, then each
//! page `requests` times, the median printed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use herald_domain::config::{Campaign, ConfigSet, HeraldConfig, Segment};
use herald_domain::token::TokenSigner;
use herald_server::console::{CampaignEntry, SESSION_COOKIE};
use herald_server::{AppState, ConsoleSettings, ServerConfig};
use herald_storage::Db;
use herald_storage::console_figures;
use herald_storage::synthetic::{ConsoleData, console_data};
use sea_orm::DbBackend;
use tower::ServiceExt as _;

const SECRET: &[u8] = b"herald-bench console secret, 32+ bytes long";

/// The campaign the messages belong to (the demo's arms).
const CAMPAIGN: &str = r#"
name = "bench"
where = 'email contains "@"'
channels = ["email"]
goal = { event = "order_placed", within = "3d" }
holdout = 0.10

[[variants]]
name = "discount"
email = { subject = "s", template = "t.email.hbs" }

[[variants]]
name = "reminder"
email = { subject = "s", template = "t.email.hbs" }
"#;

/// What `herald-bench console` generates and how often it asks.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Contacts.
    pub contacts: i64,
    /// Messages.
    pub messages: i64,
    /// Purchase events.
    pub purchases: i64,
    /// Requests a page, stored figures (the median is printed).
    pub requests: usize,
    /// Time the data a previous run left (its stored figures are cleared).
    pub keep: bool,
}

fn config() -> anyhow::Result<ConfigSet> {
    let campaign = Campaign::parse("config/campaigns/bench.toml", CAMPAIGN)
        .map_err(|e| anyhow::anyhow!("the bench campaign is invalid: {e}"))?;
    let segment = |name: &str, filter: &str| -> anyhow::Result<(String, Segment)> {
        let s = Segment::parse(
            &format!("config/segments/{name}.toml"),
            &format!("name = \"{name}\"\nwhere = '{filter}'\n"),
        )
        .map_err(|e| anyhow::anyhow!("the bench segment {name} is invalid: {e}"))?;
        Ok((name.to_string(), s))
    };
    Ok(ConfigSet {
        herald: HeraldConfig::default(),
        segments: [
            segment("everyone", "email contains \"@\"")?,
            segment("buyers", "rfm.f >= 3")?,
        ]
        .into_iter()
        .collect(),
        campaigns: [(campaign.name.clone(), campaign)].into_iter().collect(),
    })
}

/// The server's state as `herald serve` makes it for the console (no
/// refresh job: the benchmark refreshes when it means to).
fn state(db: &Db, config: Arc<ConfigSet>) -> AppState {
    let mut console = ConsoleSettings::new(SECRET, Some("bench-password".into()));
    console.campaigns = Arc::new(
        config
            .campaigns
            .values()
            .map(|c| CampaignEntry {
                campaign: c.clone(),
                problems: Vec::new(),
            })
            .collect(),
    );
    console.rates = vec![("email".into(), Some(100))];
    console.config = Some(config.clone());
    let mut server = ServerConfig::new("http://127.0.0.1:8080");
    server.console = Some(console);
    let report = herald_cli::report_source(db.clone(), config);
    AppState::with_hooks(
        db.clone(),
        TokenSigner::new(SECRET),
        server,
        Some(report),
        None,
    )
}

/// One GET through the router, its body read whole: the time to the last byte.
async fn time_get(router: &axum::Router, cookie: &str, path: &str) -> anyhow::Result<Duration> {
    let req = Request::get(path)
        .header(header::COOKIE, cookie)
        .body(Body::empty())?;
    let t = Instant::now();
    let r = router.clone().oneshot(req).await?;
    let status = r.status();
    let body = axum::body::to_bytes(r.into_body(), usize::MAX).await?;
    let took = t.elapsed();
    anyhow::ensure!(
        status == StatusCode::OK,
        "{path} answered {status}: {}",
        String::from_utf8_lossy(&body)
    );
    Ok(took)
}

fn ms(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1000.0)
}

/// Runs `herald-bench console` on `url` (EMPTIED first unless `keep`).
pub async fn run(url: &str, o: Options) -> anyhow::Result<()> {
    let db = Db::connect(url).await?;
    let name = match db.backend() {
        DbBackend::Postgres => "PostgreSQL",
        _ => "SQLite",
    };
    let now = chrono::Utc::now().timestamp_millis();
    let d = ConsoleData {
        contacts: o.contacts,
        purchases: o.purchases,
        messages: o.messages,
        now,
    };
    if o.keep {
        console_figures::forget_prefix(&db, "").await?;
    } else {
        let t = Instant::now();
        console_data(&db, d, &|line| eprintln!("{line}")).await?;
        eprintln!("generated in {:.0} s", t.elapsed().as_secs_f64());
    }
    let config = Arc::new(config()?);
    let state = state(&db, config);
    let router = herald_server::admin_router(state.clone());
    let settings = ConsoleSettings::new(SECRET, None);
    let cookie = format!(
        "{SESSION_COOKIE}={}",
        settings.key.session_cookie([7; 16], now + 3_600_000)
    );
    let latest = d.runs();
    let pages = [
        "/console/".to_string(),
        "/console/status".into(),
        format!("/console/runs/{latest}"),
        "/console/runs/1".into(),
        "/console/campaigns/bench/report".into(),
        "/console/segments".into(),
        "/console/segments/everyone".into(),
        "/console/segments/buyers".into(),
        "/console/contacts/c5".into(),
    ];
    // Nothing stored: each page counts live (and stores what it counted).
    let mut live = Vec::new();
    for p in &pages {
        let took = time_get(&router, &cookie, p)
            .await
            .with_context(|| format!("{p}, nothing stored"))?;
        eprintln!("{p}: {} ms live", ms(took));
        live.push(took);
    }
    let t = Instant::now();
    let done = herald_server::console::figures::refresh(&state)
        .await
        .map_err(|e| anyhow::anyhow!("the refresh failed: {e}"))?;
    let refresh = t.elapsed();
    anyhow::ensure!(
        done.failed == 0,
        "the refresh failed to count some figures: {done:?}"
    );
    let mut rows = Vec::new();
    for (p, live) in pages.iter().zip(&live) {
        let mut times = Vec::with_capacity(o.requests);
        for _ in 0..o.requests.max(1) {
            times.push(time_get(&router, &cookie, p).await?);
        }
        times.sort();
        let median = times[times.len() / 2];
        eprintln!("{p}: median {} ms stored", ms(median));
        rows.push((p, *live, median, times[times.len() - 1]));
    }
    println!(
        "{name}: {} contacts, {} messages in {latest} runs, {} purchases; median of {} requests a page, ms:",
        o.contacts, o.messages, o.purchases, o.requests
    );
    println!("| page | nothing stored (counted live) | stored figures, median | slowest |");
    println!("| --- | ---: | ---: | ---: |");
    for (p, live, median, worst) in rows {
        println!("| `{p}` | {} | {} | {} |", ms(live), ms(median), ms(worst));
    }
    println!(
        "one refresh of every stored figure ({} of them): {:.1} s",
        done.stored,
        refresh.as_secs_f64()
    );
    state.flush().await.ok();
    Ok(())
}
