//! `herald-bench report`: the A/B report over a large campaign. Generates
//! messages inside the database (herald-storage's `bench_data`), half of
//! them with outcomes, and the contacts' purchases and app opens that
//! `[results]` reads, then times the whole report (runs, the grouped scan,
//! the results statement, the statistics) next to the cheapest pass over the
//! same rows, `COUNT(*)`, so the figure means something on another machine.

use std::time::{Duration, Instant};

use anyhow::Context;
use herald_domain::config::Campaign;
use herald_storage::bench_data::{self, GeneratedRun};
use herald_storage::report::{ReportFilter, campaign_report};
use herald_storage::{Backend, Db};

/// How many times the report is timed; the best and the median are printed.
const REPEATS: usize = 3;

/// `[results]` as the report is timed with it: none (the grouped scan
/// alone), retention, ARPU and LTV (the results statement too, over the
/// generated events), and the same with CUPED and sequential testing (its
/// covariates read from the messages, generated for a quarter of them).
/// Timed in turn, so a load that changes over the run weighs on each alike.
const SETTINGS: [(&str, &str); 3] = [
    ("no [results]", ""),
    (
        "[results] retention + revenue",
        "\n[results]\nretention_event = \"app_open\"\nrevenue_event = \"order_placed\"\n",
    ),
    (
        "[results] retention + revenue + cuped + sequential",
        "\n[results]\nretention_event = \"app_open\"\nrevenue_event = \"order_placed\"\ncuped = { days = 30 }\nsequential = true\n",
    ),
];

/// The benchmark's campaign: the demo's arms (10% holdout, two variants).
const CAMPAIGN: &str = r#"
name = "bench"
where = 'attrs.x == 1'
channels = ["email"]
goal = { event = "order_placed", within = "3d" }
secondary_goals = ["app_open"]
holdout = 0.10

[[variants]]
name = "discount"
email = { subject = "s", template = "t.email.hbs" }

[[variants]]
name = "reminder"
email = { subject = "s", template = "t.email.hbs" }
"#;

/// What `herald-bench report` generates.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Messages in all.
    pub messages: u64,
    /// Runs they are spread over.
    pub runs: u64,
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// Runs `herald-bench report` on `url` (EMPTIED first).
pub async fn run(url: &str, o: Options, keep: bool) -> anyhow::Result<()> {
    let campaign = Campaign::parse("bench.toml", CAMPAIGN)
        .map_err(|e| anyhow::anyhow!("the bench campaign is invalid: {e}"))?;
    let db = Db::connect(url).await?;
    let backend = db.backend();
    if !keep {
        let t = Instant::now();
        let fingerprint = campaign.assignment_fingerprint();
        bench_data::generate_report_data(&db, &fingerprint, o.messages, o.runs, true, |r| {
            let GeneratedRun {
                run,
                messages,
                events,
            } = r;
            eprintln!(
                "run {run}: {messages} messages, {events} events (at {:.1}s)",
                t.elapsed().as_secs_f64()
            );
        })
        .await?;
        eprintln!("generated in {}", secs(t.elapsed()));
    }
    let outcomes = bench_data::count_with_outcome(&db).await?;
    let events = bench_data::count_events(&db).await?;
    let campaigns: Vec<Campaign> = SETTINGS
        .iter()
        .map(|(_, results)| {
            Campaign::parse("bench.toml", &format!("{CAMPAIGN}{results}"))
                .map_err(|e| anyhow::anyhow!("the bench campaign is invalid: {e}"))
        })
        .collect::<anyhow::Result<_>>()?;

    let mut baseline = Vec::new();
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); SETTINGS.len()];
    let mut last = None;
    for _ in 0..REPEATS {
        let t = Instant::now();
        let (n, _) = bench_data::count_messages(&db).await?;
        baseline.push((t.elapsed(), n));
        for (i, campaign) in campaigns.iter().enumerate() {
            let t = Instant::now();
            let report = campaign_report(
                &db,
                "bench",
                Some(campaign),
                0.0,
                &ReportFilter::default(),
                chrono::Utc::now().timestamp_millis(),
            )
            .await?
            .context("the bench campaign is missing")?;
            times[i].push(t.elapsed());
            last = Some(report);
        }
    }
    let report = last.context("no report was made")?;
    let messages = baseline.first().map_or(0, |b| b.1);
    // The report must have counted every row the plain count saw.
    anyhow::ensure!(
        report.total.messages == messages as u64,
        "the report counted {} messages, COUNT(*) {messages}",
        report.total.messages
    );
    let mut base: Vec<Duration> = baseline.iter().map(|b| b.0).collect();
    base.sort();
    println!(
        "report of {messages} messages ({outcomes} with outcomes, {events} events) in {} runs on {}, each setting timed {REPEATS} times in turn:",
        report.runs.len(),
        match backend {
            Backend::Postgres => "PostgreSQL",
            _ => "SQLite",
        },
    );
    for ((name, _), times) in SETTINGS.iter().zip(&mut times) {
        times.sort();
        let (best, median) = (times[0], times[times.len() / 2]);
        println!(
            "  {name}: best {}, median {}; report / baseline = {:.2}",
            secs(best),
            secs(median),
            best.as_secs_f64() / base[0].as_secs_f64()
        );
    }
    println!(
        "baseline SELECT COUNT(*) over the same rows: best {}",
        secs(base[0]),
    );
    for a in &report.total.arms {
        println!(
            "  {:<9} assigned {:>9}  converted {:>8}  conversion {}",
            a.arm,
            a.assigned,
            a.converted,
            a.rates
                .conversion
                .map(|r| format!("{:.3}%", r * 100.0))
                .unwrap_or_default()
        );
    }
    for s in &report.total.summary {
        println!("  * {s}");
    }
    Ok(())
}
