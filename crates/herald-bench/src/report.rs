//! `herald-bench report`: the A/B report over a large campaign. Generates
//! messages inside the database (`generate_series` on PostgreSQL, a recursive
//! CTE on SQLite: nothing crosses the wire), half of them with outcomes, then
//! times the whole report (runs, the grouped scan, the statistics) next to
//! the cheapest pass over the same rows, `COUNT(*)`, so the figure means
//! something on another machine.

use std::time::{Duration, Instant};

use anyhow::Context;
use herald_domain::config::Campaign;
use herald_storage::Db;
use herald_storage::report::{ReportFilter, campaign_report};
use herald_storage::sql::Sql;
use sea_orm::{ConnectionTrait, DbBackend};

/// How many times the report is timed; the best and the median are printed.
const REPEATS: usize = 3;

/// `[results]` as the report is timed with it: none (the grouped scan
/// alone), ARPU and LTV (the per-message results statement too), and the
/// same with CUPED (its covariates read from the messages, generated here
/// for a quarter of them). Timed in turn, so a load that changes over the
/// run weighs on each alike.
const SETTINGS: [(&str, &str); 3] = [
    ("no [results]", ""),
    (
        "[results] revenue_event",
        "\n[results]\nrevenue_event = \"order_placed\"\n",
    ),
    (
        "[results] revenue_event + cuped",
        "\n[results]\nrevenue_event = \"order_placed\"\ncuped = { days = 30 }\n",
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

/// 2026-01-01T00:00:00Z: the first run starts; one run a day.
const FIRST_RUN: i64 = 1_767_225_600_000;
const DAY: i64 = 86_400_000;

/// What `herald-bench report` generates.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Messages in all.
    pub messages: u64,
    /// Runs they are spread over.
    pub runs: u64,
}

/// The generator's SELECT: one message per `g` of run `$1`, contacts
/// `$2..=$3`. Every second message has outcomes (an app open at least);
/// arms, statuses and outcomes come from Weyl sequences of `g`, so both
/// databases get the very same rows. As in planning, the global holdout
/// (0.75%) takes contacts of every arm alike.
fn messages_select(b: DbBackend) -> String {
    let frac = |mult: u64, modulus: u64| {
        format!("(CAST((g * {mult}) % {modulus} AS DOUBLE PRECISION) / {modulus})")
    };
    let (u, s, ch, o, o2, cv) = (
        frac(2_654_435_761, 4_294_967_291),
        frac(7_919, 1_000_003),
        frac(104_729, 999_983),
        frac(15_485_863, 1_000_033),
        frac(32_452_843, 999_979),
        frac(49_979_687, 1_000_037),
    );
    let app_open = match b {
        DbBackend::Postgres => {
            "jsonb_build_object('app_open', jsonb_build_object('at', t + 600000, 'count', 1 + g % 3, 'revenue', 0))"
        }
        _ => {
            "json_object('app_open', json_object('at', t + 600000, 'count', 1 + g % 3, 'revenue', 0))"
        }
    };
    format!(
        "SELECT run, 1, g, 0, arm, \
           CASE WHEN st IN ('held_out', 'suppressed') THEN NULL WHEN ch < 0.6 THEN 'email' WHEN ch < 0.8 THEN 'sms' ELSE 'push' END, \
           CASE WHEN st IN ('held_out', 'suppressed') THEN NULL ELSE 'user' || g || '@example.com' END, \
           t, st, \
           CASE WHEN s < 0.0075 THEN 'global_holdout' \
                WHEN st = 'suppressed' THEN CASE g % 3 WHEN 0 THEN 'no_address' WHEN 1 THEN 'no_consent' ELSE 'opt_out' END \
                WHEN st = 'failed' THEN 'smtp 550 5.1.1 mailbox unavailable' WHEN st = 'unknown' THEN 'timeout after the request was written' END, \
           CASE WHEN st IN ('held_out', 'suppressed') THEN 0 ELSE 1 END, \
           CASE WHEN st IN ('delivered', 'sent', 'bounced') THEN 'p-' || g END, \
           CASE WHEN st IN ('delivered', 'sent', 'bounced') THEN t + 1000 END, \
           CASE WHEN st = 'delivered' THEN t + 2000 END, \
           CASE WHEN hit AND st = 'delivered' AND o < 0.7 THEN t + 3600000 END, \
           CASE WHEN hit AND st = 'delivered' AND o2 < 0.3 THEN t + 3000 END, \
           CASE WHEN hit AND st = 'delivered' AND o < 0.7 THEN 1 ELSE 0 END, \
           CASE WHEN hit AND st = 'delivered' AND o < 0.16 THEN t + 3700000 END, \
           CASE WHEN hit AND st = 'delivered' AND o < 0.16 THEN 1 ELSE 0 END, \
           CASE WHEN hit AND st = 'delivered' AND o2 > 0.994 THEN t + 4000000 END, \
           CASE WHEN hit AND cv < goal THEN t + 7200000 END, \
           CASE WHEN hit AND cv < goal THEN 20 + g % 380 ELSE 0 END, \
           CASE WHEN hit THEN {app_open} END, \
           t, t, \
           CASE WHEN o2 < 0.25 THEN 1 ELSE 0 END, \
           CAST(CASE WHEN o2 < 0.25 THEN 10 + g % 200 ELSE 0 END AS DOUBLE PRECISION), \
           CAST(CASE WHEN o2 < 0.25 THEN 10 + g % 200 ELSE 0 END AS DOUBLE PRECISION) \
         FROM (SELECT g, run, t, arm, s, ch, o, o2, cv, hit, \
                 CASE arm WHEN 'holdout' THEN 0.08 WHEN 'discount' THEN 0.12 ELSE 0.10 END AS goal, \
                 CASE WHEN s < 0.0075 THEN 'suppressed' WHEN arm = 'holdout' THEN 'held_out' \
                      WHEN s < 0.03 THEN 'suppressed' WHEN s < 0.04 THEN 'failed' \
                      WHEN s < 0.045 THEN 'unknown' WHEN s < 0.065 THEN 'bounced' WHEN s < 0.115 THEN 'sent' ELSE 'delivered' END AS st \
               FROM (SELECT g, $1 AS run, {FIRST_RUN} + ($1 - 1) * {DAY} AS t, g % 2 = 0 AS hit, \
                       CASE WHEN {u} < 0.1 THEN 'holdout' WHEN {u} < 0.55 THEN 'discount' ELSE 'reminder' END AS arm, \
                       {s} AS s, {ch} AS ch, {o} AS o, {o2} AS o2, {cv} AS cv \
                     FROM {series}) a) b",
        series = match b {
            DbBackend::Postgres => "generate_series($2::bigint, $3::bigint) AS s(g)",
            _ => "s",
        },
    )
}

const INSERT_COLUMNS: &str = "INSERT INTO messages (run_id, campaign_id, contact_id, step, arm, channel, address, send_at, status, reason, attempts, provider_id, sent_at, delivered_at, opened_at, machine_opened_at, open_count, clicked_at, click_count, unsubscribed_at, converted_at, revenue, secondary, created_at, updated_at, pre_converted, pre_revenue, pre_goal_revenue) ";

async fn exec(db: &Db, q: Sql) -> anyhow::Result<u64> {
    Ok(db
        .conn_for_report_bench()
        .execute_raw(q.build(db.backend()))
        .await?
        .rows_affected())
}

async fn exec_text(db: &Db, text: &str) -> anyhow::Result<()> {
    db.conn_for_report_bench()
        .execute_unprepared(text)
        .await
        .with_context(|| text.to_string())?;
    Ok(())
}

/// Empties the database and fills it with `o.runs` runs of the `bench` campaign.
async fn generate(db: &Db, campaign: &Campaign, o: Options) -> anyhow::Result<()> {
    let b = db.backend();
    db.truncate_all().await?;
    exec_text(db, "DELETE FROM rollouts").await?;
    let fingerprint = campaign.assignment_fingerprint();
    let mut q = Sql::new();
    q.push("INSERT INTO campaigns (id, name, kind, topic, fingerprint, created_at, updated_at) VALUES (1, 'bench', 'marketing', NULL, ")
        .bind(fingerprint.clone())
        .push(", 0, 0)");
    exec(db, q).await?;
    let per_run = o.messages.div_ceil(o.runs.max(1));
    let select = messages_select(b);
    for run in 1..=o.runs.max(1) {
        let first = (run - 1) * per_run + 1;
        let last = (run * per_run).min(o.messages);
        if first > last {
            break;
        }
        let t0 = Instant::now();
        let at = FIRST_RUN + (run as i64 - 1) * DAY;
        let mut q = Sql::new();
        q.push("INSERT INTO runs (id, campaign_id, scheduled_at, now_at, state, origin, fingerprint, created_at, finished_at) VALUES (")
            .bind(run as i64)
            .push(", 1, ")
            .bind(at)
            .push(", ")
            .bind(at)
            .push(", 'done', 'schedule', ")
            .bind(fingerprint.clone())
            .push(", ")
            .bind(at)
            .push(", ")
            .bind(at + 3_600_000)
            .push(")");
        exec(db, q).await?;
        let mut q = Sql::new();
        if b == DbBackend::Postgres {
            q.push(INSERT_COLUMNS);
        } else {
            q.push(
                "WITH RECURSIVE s(g) AS (SELECT $2 UNION ALL SELECT g + 1 FROM s WHERE g < $3) ",
            )
            .push(INSERT_COLUMNS);
        }
        q.push(&select);
        // `$1` is the run, `$2..$3` the contacts, in both texts.
        q.values = vec![
            (run as i64).into(),
            (first as i64).into(),
            (last as i64).into(),
        ];
        let n = exec(db, q).await?;
        eprintln!(
            "run {run}: {n} messages in {:.1}s",
            t0.elapsed().as_secs_f64()
        );
    }
    if b == DbBackend::Postgres {
        // Fresh statistics and a visibility map, as autovacuum would leave them.
        exec_text(db, "VACUUM ANALYZE messages").await?;
        exec_text(db, "ANALYZE runs").await?;
    } else {
        exec_text(db, "ANALYZE").await?;
        exec_text(db, "PRAGMA wal_checkpoint(TRUNCATE)").await?;
    }
    Ok(())
}

async fn count_all(db: &Db) -> anyhow::Result<(i64, i64)> {
    let rows = db
        .conn_for_report_bench()
        .query_all_raw(sea_orm::Statement::from_string(
            db.backend(),
            "SELECT COUNT(*), COUNT(opened_at) + COUNT(machine_opened_at) + COUNT(clicked_at) + COUNT(converted_at) + COUNT(secondary) FROM messages WHERE campaign_id = 1",
        ))
        .await?;
    let row = rows.first().context("COUNT(*) returned nothing")?;
    Ok((row.try_get_by_index(0)?, row.try_get_by_index(1)?))
}

async fn with_outcome(db: &Db) -> anyhow::Result<i64> {
    let rows = db
        .conn_for_report_bench()
        .query_all_raw(sea_orm::Statement::from_string(
            db.backend(),
            "SELECT COUNT(*) FROM messages WHERE campaign_id = 1 AND (opened_at IS NOT NULL OR machine_opened_at IS NOT NULL OR clicked_at IS NOT NULL OR unsubscribed_at IS NOT NULL OR converted_at IS NOT NULL OR secondary IS NOT NULL)",
        ))
        .await?;
    Ok(rows
        .first()
        .context("COUNT(*) returned nothing")?
        .try_get_by_index(0)?)
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
        generate(&db, &campaign, o).await?;
        eprintln!("generated in {}", secs(t.elapsed()));
    }
    let outcomes = with_outcome(&db).await?;
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
        let (n, _) = count_all(&db).await?;
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
        "report of {messages} messages ({outcomes} with outcomes) in {} runs on {}, each setting timed {REPEATS} times in turn:",
        report.runs.len(),
        match backend {
            DbBackend::Postgres => "PostgreSQL",
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
