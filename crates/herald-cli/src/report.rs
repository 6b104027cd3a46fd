//! `herald report CAMPAIGN`: the A/B result of SPEC section 5, as tables with
//! the verdicts in words under them, as JSON (the stable shape the README
//! documents, also served at `GET /api/campaigns/{name}/report` through
//! [`report_source`]), or as CSV, one row per (scope, arm).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, ValueEnum};
use comfy_table::Table;
use herald_domain::config::ConfigSet;
use herald_domain::stats::{Comparison, Interval, MetricComparison};
use herald_server::{ReportError as ServerReportError, ReportSource};
use herald_storage::Db;
use herald_storage::report::{
    ArmReport, Bound, ComparisonReport, MetricComparisonReport, Report, ReportFilter, ResultsEcho,
    Scope, campaign_names, campaign_report, parse_instant,
};

use crate::{Cli, EXIT_INVALID, Exit, app, output};

/// Arguments of `herald report`.
#[derive(Args, Debug)]
pub struct ReportArgs {
    /// The campaign's name.
    pub campaign: String,
    /// Only this run.
    #[arg(long)]
    pub run: Option<i64>,
    /// Runs that started at or after T (RFC 3339, or a date: 00:00 UTC).
    #[arg(long, value_name = "T")]
    pub since: Option<String>,
    /// Runs that started before T (RFC 3339, or a date: through the end of that day, UTC).
    #[arg(long, value_name = "T")]
    pub until: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Tables with every column, as wide as they need (default: the columns
    /// that matter, fitted to the terminal or to 100 columns).
    #[arg(long)]
    pub wide: bool,
}

/// How the report is printed.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Tables and sentences, for people.
    Table,
    /// The stable JSON shape (see README).
    Json,
    /// One row per (scope, arm).
    Csv,
}

/// The filter of `--run`, `--since` and `--until`.
pub fn filter(
    run: Option<i64>,
    since: Option<&str>,
    until: Option<&str>,
) -> Result<ReportFilter, String> {
    let instant = |t: Option<&str>, bound| {
        t.map(|t| parse_instant(t, bound))
            .transpose()
            .map_err(|e| e.to_string())
    };
    let filter = ReportFilter {
        run,
        since: instant(since, Bound::Since)?,
        until: instant(until, Bound::Until)?,
    };
    if let (Some(s), Some(u)) = (filter.since, filter.until)
        && s >= u
    {
        return Err("--since must be before --until".to_string());
    }
    Ok(filter)
}

/// The report of `name` now, from `config` (its campaign, if configured, and the global holdout).
async fn make(
    db: &Db,
    config: &ConfigSet,
    name: &str,
    filter: &ReportFilter,
) -> anyhow::Result<Option<Report>> {
    let now = chrono::Utc::now().timestamp_millis();
    Ok(campaign_report(
        db,
        name,
        config.campaigns.get(name),
        config.herald.defaults.global_holdout.get(),
        filter,
        now,
    )
    .await?)
}

/// Runs `herald report`.
pub async fn run(cli: &Cli, args: &ReportArgs) -> anyhow::Result<()> {
    let config = app::load_config(cli)?;
    let filter = filter(args.run, args.since.as_deref(), args.until.as_deref()).map_err(|e| {
        eprintln!("error: {e}");
        Exit(EXIT_INVALID)
    })?;
    let db = app::connect(cli, &config).await?;
    let Some(report) = make(&db, &config, &args.campaign, &filter).await? else {
        let mut known: Vec<String> = config.campaigns.keys().cloned().collect();
        known.extend(campaign_names(&db).await?);
        known.sort();
        known.dedup();
        eprintln!(
            "error: no campaign named `{}` in {}/campaigns or in the database (known: {})",
            args.campaign,
            cli.config.display(),
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        );
        return Err(Exit(EXIT_INVALID).into());
    };
    let out = match args.format {
        Format::Json => serde_json::to_string_pretty(&report)? + "\n",
        Format::Csv => csv(&report)?,
        Format::Table => table(&report, args.wide),
    };
    print!("{out}");
    Ok(())
}

/// A rate as a percentage with two decimals; empty where there is none.
fn rate(r: Option<f64>) -> String {
    r.map(|r| format!("{:.2}%", r * 100.0)).unwrap_or_default()
}

fn money(x: f64) -> String {
    format!("{x:.2}")
}

fn new_table(header: Vec<String>, wide: bool) -> Table {
    output::table(header, wide)
}

/// A column of a per-arm table: its header, its cell, and whether the
/// narrow table (the default) shows it when every arm has nothing in it.
struct Column<'a> {
    header: String,
    cell: Box<dyn Fn(&ArmReport) -> String + 'a>,
    /// Always shown; otherwise shown narrow only when some arm's cell is not
    /// zero or empty (a `bounced` column of zeros says nothing).
    always: bool,
    /// Only in `--wide` tables.
    wide_only: bool,
}

impl<'a> Column<'a> {
    fn new(header: &str, always: bool, cell: impl Fn(&ArmReport) -> String + 'a) -> Self {
        Self {
            header: header.to_string(),
            cell: Box::new(cell),
            always,
            wide_only: false,
        }
    }

    fn wide_only(mut self) -> Self {
        self.wide_only = true;
        self
    }
}

fn is_nothing(cell: &str) -> bool {
    cell.is_empty() || cell == "0" || cell == "0.00" || cell == "0.00%"
}

/// The table of `columns` over `arms`; narrow unless `wide`.
fn arm_table(arms: &[ArmReport], columns: Vec<Column<'_>>, wide: bool) -> Table {
    let shown: Vec<Column<'_>> = columns
        .into_iter()
        .filter(|c| {
            wide || (!c.wide_only && (c.always || arms.iter().any(|a| !is_nothing(&(c.cell)(a)))))
        })
        .collect();
    let mut t = new_table(shown.iter().map(|c| c.header.clone()).collect(), wide);
    for a in arms {
        t.add_row(shown.iter().map(|c| (c.cell)(a)).collect::<Vec<_>>());
    }
    t
}

/// Counts per arm: who was assigned and what happened to the messages.
fn delivery_table(scope: &Scope, wide: bool) -> Table {
    let columns = vec![
        Column::new("arm", true, |a| {
            output::cut(&arm_label(a), output::MAX_CELL_CHARS)
        }),
        Column::new("assigned", true, |a| a.assigned.to_string()),
        Column::new("sent", true, |a| a.sent.to_string()),
        Column::new("delivered", true, |a| a.delivered.to_string()),
        Column::new("bounced", false, |a| a.bounced.to_string()),
        Column::new("failed", true, |a| a.failed.to_string()),
        Column::new("unknown", false, |a| a.unknown.to_string()),
        Column::new("pending", false, |a| a.pending.to_string()),
        Column::new("held out", false, |a| a.held_out.to_string()),
        Column::new("suppressed", true, |a| a.suppressed.to_string()),
        Column::new("cancelled", false, |a| a.cancelled.to_string()),
        Column::new("global holdout", false, |a| a.global_holdout.to_string()),
    ];
    arm_table(&scope.arms, columns, wide)
}

/// Outcomes per arm, with SPEC's rates; narrow, the counts behind the rates
/// and the secondary goals are left to `--wide` and [`secondary_table`].
fn outcome_table(scope: &Scope, goals: &[String], wide: bool) -> Table {
    let mut columns = vec![
        Column::new("arm", true, |a| {
            output::cut(&arm_label(a), output::MAX_CELL_CHARS)
        }),
        Column::new("delivery", true, |a| rate(a.rates.delivery)),
        Column::new("opened", true, |a| a.opened.to_string()).wide_only(),
        Column::new("open rate", true, |a| rate(a.rates.open)),
        Column::new("machine opened", false, |a| a.machine_opened.to_string()).wide_only(),
        Column::new("clicked", true, |a| a.clicked.to_string()),
        Column::new("click rate", true, |a| rate(a.rates.click)),
        Column::new("unsubscribed", false, |a| a.unsubscribed.to_string()).wide_only(),
        Column::new("complained", false, |a| a.complained.to_string()).wide_only(),
        Column::new("converted", true, |a| a.converted.to_string()),
        Column::new("conversion", true, |a| rate(a.rates.conversion)),
        Column::new("revenue", true, |a| money(a.revenue)).wide_only(),
        // ARPU: revenue per assigned contact, under a name short enough to fit.
        Column::new(if wide { "revenue/assigned" } else { "ARPU" }, true, |a| {
            a.revenue_per_assigned.map(money).unwrap_or_default()
        }),
    ];
    if wide {
        for (i, g) in goals.iter().enumerate() {
            columns.push(Column::new(&format!("{g} reached"), true, move |a| {
                a.secondary
                    .get(i)
                    .map(|s| s.reached.to_string())
                    .unwrap_or_default()
            }));
            columns.push(Column::new(&format!("{g} rate"), true, move |a| {
                a.secondary.get(i).map(|s| rate(s.rate)).unwrap_or_default()
            }));
        }
    }
    arm_table(&scope.arms, columns, wide)
}

/// The secondary goals per arm, a table of their own in the narrow report.
fn secondary_table(scope: &Scope, goals: &[String]) -> Table {
    let mut columns = vec![Column::new("arm", true, |a| {
        output::cut(&arm_label(a), output::MAX_CELL_CHARS)
    })];
    for (i, g) in goals.iter().enumerate() {
        columns.push(Column::new(&format!("{g} reached"), true, move |a| {
            a.secondary
                .get(i)
                .map(|s| s.reached.to_string())
                .unwrap_or_default()
        }));
        columns.push(Column::new(&format!("{g} rate"), true, move |a| {
            a.secondary.get(i).map(|s| rate(s.rate)).unwrap_or_default()
        }));
    }
    arm_table(&scope.arms, columns, false)
}

/// The seeds' metrics per arm (`[results]`): retention in days 1-7 and
/// 8-30, ARPU over 30 days and LTV over the horizon, per assigned contact.
fn results_table(scope: &Scope, horizon: &str, wide: bool) -> Table {
    let res = |a: &ArmReport| a.results.clone();
    let ltv = format!("LTV {horizon}");
    let columns = vec![
        Column::new("arm", true, |a| {
            output::cut(&arm_label(a), output::MAX_CELL_CHARS)
        }),
        Column::new("contacts", true, move |a| {
            res(a).map(|r| r.contacts.to_string()).unwrap_or_default()
        }),
        Column::new("retained d1-7", true, move |a| {
            opt(res(a).and_then(|r| r.retained_d1_7))
        })
        .wide_only(),
        Column::new("retention d1-7", true, move |a| {
            rate(res(a).and_then(|r| r.retention_d1_7))
        }),
        Column::new("retained d8-30", true, move |a| {
            opt(res(a).and_then(|r| r.retained_d8_30))
        })
        .wide_only(),
        Column::new("retention d8-30", true, move |a| {
            rate(res(a).and_then(|r| r.retention_d8_30))
        }),
        Column::new("revenue 30d", true, move |a| {
            res(a)
                .and_then(|r| r.revenue_30d)
                .map(money)
                .unwrap_or_default()
        })
        .wide_only(),
        Column::new("ARPU 30d", true, move |a| {
            res(a).and_then(|r| r.arpu).map(money).unwrap_or_default()
        }),
        Column::new(&format!("revenue {horizon}"), true, move |a| {
            res(a)
                .and_then(|r| r.revenue_ltv)
                .map(money)
                .unwrap_or_default()
        })
        .wide_only(),
        Column::new(&ltv, true, move |a| {
            res(a).and_then(|r| r.ltv).map(money).unwrap_or_default()
        }),
    ];
    arm_table(&scope.arms, columns, wide)
}

/// A p-value cell: four decimals, or scientific notation where that would show 0.
fn p_cell(p: f64) -> String {
    if p < 1e-4 {
        format!("{p:.1e}")
    } else {
        format!("{p:.4}")
    }
}

/// A chance cell: one decimal, never rounded into a certainty.
fn chance_cell(c: f64) -> String {
    if c > 0.999 {
        ">99.9%".to_string()
    } else if c < 0.001 {
        "<0.1%".to_string()
    } else {
        format!("{:.1}%", c * 100.0)
    }
}

/// The numbers of an estimate in a comparison table's cells: lift, interval,
/// p-value, the corrected one when `corrected`, chance to beat.
fn estimate_cells(
    e: Option<(f64, Interval, f64, f64)>,
    adjusted: Option<f64>,
    corrected: bool,
) -> Vec<String> {
    let mut cells = match e {
        Some((lift, ci, p, chance)) => vec![
            format!("{:+.2}%", lift * 100.0),
            format!("{:+.2}% to {:+.2}%", ci.lower * 100.0, ci.upper * 100.0),
            p_cell(p),
            chance_cell(chance),
        ],
        None => vec![
            "not enough data".to_string(),
            String::new(),
            String::new(),
            String::new(),
        ],
    };
    if corrected {
        cells.insert(3, adjusted.map(p_cell).unwrap_or_default());
    }
    cells
}

/// The header cells of [`estimate_cells`].
fn estimate_header(r: &Report) -> Vec<&'static str> {
    let mut header = vec![
        "lift",
        if r.statistics.test == "sequential" {
            "95% CI (seq.)"
        } else {
            "95% CI"
        },
        "p-value",
    ];
    if r.statistics.correction != "none" {
        header.push("corrected p");
    }
    header.push("chance to beat");
    header
}

fn metric_numbers(c: &MetricComparisonReport) -> Option<(f64, Interval, f64, f64)> {
    match &c.result {
        MetricComparison::Estimate(e) => Some((e.rel_lift, e.rel_ci, e.p_value, e.chance_to_beat)),
        MetricComparison::NotEnoughData { .. } => None,
    }
}

/// The share of a comparison's variance CUPED removed: conversion's.
fn conversion_reduction(c: &ComparisonReport) -> Option<f64> {
    c.cuped
        .as_ref()
        .and_then(|m| m.estimate())
        .and_then(|e| e.variance_reduction)
}

/// A metric's (ARPU's, LTV's).
fn metric_reduction(c: &MetricComparisonReport) -> Option<f64> {
    c.result.estimate().and_then(|e| e.variance_reduction)
}

/// A variance-reduction cell: "-31%" of the variance, empty where not adjusted.
fn reduction_cell(v: Option<f64>) -> String {
    v.map(|v| format!("{:+.1}%", -v * 100.0))
        .unwrap_or_default()
}

/// Each comparison's numbers, next to the sentences that say them in words.
fn comparison_table(r: &Report, scope: &Scope, wide: bool) -> Table {
    // Narrow, the two rates are left out: the outcome table above has them.
    let mut header = vec!["variant", "vs"];
    if wide {
        header.extend(["conversion", "control conversion"]);
    }
    header.extend(estimate_header(r));
    let cuped = r.statistics.cuped_days.is_some();
    if cuped {
        header.push("CUPED variance");
    }
    let corrected = r.statistics.correction != "none";
    let mut t = new_table(header.into_iter().map(String::from).collect(), wide);
    for c in &scope.comparisons {
        let mut row = vec![c.variant.clone(), c.control.clone()];
        if wide {
            row.extend([rate(c.variant_counts.rate()), rate(c.control_counts.rate())]);
        }
        row.extend(estimate_cells(c.numbers(), c.p_value_adjusted, corrected));
        if cuped {
            row.push(reduction_cell(conversion_reduction(c)));
        }
        t.add_row(row);
    }
    t
}

/// A metric's short name in the tables.
fn metric_label(metric: &str, horizon: &str) -> String {
    match metric {
        "retention_d1_7" => "retention d1-7".to_string(),
        "retention_d8_30" => "retention d8-30".to_string(),
        "arpu" => "ARPU 30d".to_string(),
        "ltv" => format!("LTV {horizon}"),
        "revenue_per_converter" => "revenue/converter".to_string(),
        "clicks_per_delivered" => "clicks/delivered".to_string(),
        other => other.to_string(),
    }
}

/// A metric's value in a cell: a rate as a percentage, money with two decimals.
fn metric_value_cell(metric: &str, value: Option<f64>) -> String {
    match (metric, value) {
        (_, None) => String::new(),
        ("arpu" | "ltv" | "revenue_per_converter", Some(v)) => money(v),
        (_, Some(v)) => rate(Some(v)),
    }
}

/// Retention, mean and ratio metrics compared like conversion (`[results]`);
/// narrow, the arms' values are left to `--wide` (the results table has most).
fn metric_table(r: &Report, scope: &Scope, wide: bool) -> Table {
    let horizon = r.results.as_ref().map_or("", |x| x.ltv_horizon.as_str());
    let mut header = vec!["metric", "variant", "vs"];
    if wide {
        header.extend(["value", "control value"]);
    }
    header.extend(estimate_header(r));
    let cuped = r.statistics.cuped_days.is_some();
    if cuped {
        header.push("CUPED variance");
    }
    let corrected = r.statistics.correction != "none";
    let mut t = new_table(header.into_iter().map(String::from).collect(), wide);
    for c in &scope.results_comparisons {
        let mut row = vec![
            metric_label(c.metric, horizon),
            c.variant.clone(),
            c.control.clone(),
        ];
        if wide {
            row.extend([rate(c.variant_counts.rate()), rate(c.control_counts.rate())]);
        }
        row.extend(estimate_cells(c.numbers(), c.p_value_adjusted, corrected));
        if cuped {
            row.push(String::new());
        }
        t.add_row(row);
    }
    for c in &scope.metric_comparisons {
        let mut row = vec![
            metric_label(c.metric, horizon),
            c.variant.clone(),
            c.control.clone(),
        ];
        if wide {
            row.extend([
                metric_value_cell(c.metric, c.variant_value),
                metric_value_cell(c.metric, c.control_value),
            ]);
        }
        row.extend(estimate_cells(
            metric_numbers(c),
            c.p_value_adjusted,
            corrected,
        ));
        if cuped {
            row.push(reduction_cell(metric_reduction(c)));
        }
        t.add_row(row);
    }
    t
}

fn suppression_lines(arms: &[ArmReport]) -> Vec<String> {
    arms.iter()
        .filter(|a| !a.suppressed_by_reason.is_empty() || !a.cancelled_by_reason.is_empty())
        .map(|a| {
            let mut parts: Vec<String> = a
                .suppressed_by_reason
                .iter()
                .map(|(r, n)| format!("suppressed ({r}) {n}"))
                .collect();
            parts.extend(
                a.cancelled_by_reason
                    .iter()
                    .map(|(r, n)| format!("cancelled ({r}) {n}")),
            );
            format!("  {}: {}", a.arm, parts.join(", "))
        })
        .collect()
}

fn scope_text(
    out: &mut String,
    report: &Report,
    title: &str,
    scope: &Scope,
    goals: &[String],
    results: Option<&ResultsEcho>,
    wide: bool,
) {
    out.push_str(&format!("{title}: {} messages\n", scope.messages));
    out.push_str(&format!("{}\n", delivery_table(scope, wide)));
    for line in suppression_lines(&scope.arms) {
        out.push_str(&line);
        out.push('\n');
    }
    out.push_str(&format!("{}\n", outcome_table(scope, goals, wide)));
    if !wide && !goals.is_empty() {
        out.push_str(&format!("{}\n", secondary_table(scope, goals)));
    }
    if let Some(r) = results {
        out.push_str(&format!("{}\n", results_table(scope, &r.ltv_horizon, wide)));
    }
    if !scope.comparisons.is_empty() {
        out.push_str(&format!("{}\n", comparison_table(report, scope, wide)));
    }
    if !scope.results_comparisons.is_empty() || !scope.metric_comparisons.is_empty() {
        out.push_str(&format!("{}\n", metric_table(report, scope, wide)));
    }
    for s in &scope.summary {
        out.push_str(&format!("* {s}\n"));
    }
}

/// The report for people: tables, and the verdicts in words under them;
/// every column when `wide`, else those that matter, fitted to the width.
pub fn table(r: &Report, wide: bool) -> String {
    let mut out = String::new();
    let goal = r
        .goal
        .as_ref()
        .map(|g| format!("goal {} within {}", g.event, g.within))
        .unwrap_or_else(|| "no goal".to_string());
    let mut range = Vec::new();
    if let Some(run) = r.filter.run {
        range.push(format!("run {run}"));
    }
    if let Some(s) = &r.filter.since {
        range.push(format!("started from {s}"));
    }
    if let Some(u) = &r.filter.until {
        range.push(format!("started before {u}"));
    }
    out.push_str(&format!(
        "report of `{}` ({}, {goal}): {} run(s){}; made {}\n",
        r.campaign,
        r.kind,
        r.runs.len(),
        if range.is_empty() {
            String::new()
        } else {
            format!(" ({})", range.join(", "))
        },
        r.generated_at
    ));
    for n in &r.notes {
        out.push_str(&format!("* {n}\n"));
    }
    if r.runs.is_empty() {
        return out;
    }
    let ids: Vec<String> = r.runs.iter().map(|s| s.run.id.to_string()).collect();
    let total = &r.total;
    if !total.comparisons.is_empty()
        || !total.results_comparisons.is_empty()
        || !total.metric_comparisons.is_empty()
    {
        out.push_str(&format!("* {}\n", r.statistics.sentence));
    }
    scope_text(
        &mut out,
        r,
        &format!("\nall selected runs ({})", ids.join(", ")),
        &r.total,
        &r.secondary_goals,
        r.results.as_ref(),
        wide,
    );
    if r.runs.len() > 1 {
        let mut t = new_table(
            [
                "run",
                "started",
                "state",
                "messages",
                "assigned per arm",
                "converted per arm",
                "split check (p)",
            ]
            .map(String::from)
            .to_vec(),
            wide,
        );
        for s in &r.runs {
            let per_arm = |f: &dyn Fn(&ArmReport) -> u64| {
                s.scope
                    .arms
                    .iter()
                    .map(|a| format!("{} {}", a.arm, f(a)))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            t.add_row(vec![
                s.run.id.to_string(),
                s.run.started_at.clone(),
                s.run.state.clone(),
                s.scope.messages.to_string(),
                per_arm(&|a| a.assigned),
                per_arm(&|a| a.converted),
                s.scope
                    .srm
                    .as_ref()
                    .map(|m| {
                        format!(
                            "{:.4}{}",
                            m.test.p_value,
                            if m.test.mismatch { " MISMATCH" } else { "" }
                        )
                    })
                    .unwrap_or_default(),
            ]);
        }
        out.push_str(&format!("\nper run (one run in full: --run ID)\n{t}\n"));
        for s in &r.runs {
            if let Some(m) = s.scope.srm.as_ref().filter(|m| m.test.mismatch) {
                out.push_str(&format!("* run {}: {}\n", s.run.id, m.sentence));
            }
        }
    }
    if let Some(g) = &r.global_holdout {
        let mut t = new_table(
            [
                "",
                "messages",
                "converted",
                "conversion",
                "revenue",
                "revenue/message",
            ]
            .map(String::from)
            .to_vec(),
            wide,
        );
        for (name, side) in [
            ("marketing", &g.marketing),
            ("global holdout", &g.global_holdout),
        ] {
            t.add_row(vec![
                name.to_string(),
                side.messages.to_string(),
                side.converted.to_string(),
                rate(side.conversion_rate),
                money(side.revenue),
                side.revenue_per_message.map(money).unwrap_or_default(),
            ]);
        }
        out.push_str(&format!(
            "\nglobal holdout ({} of all contacts get no marketing)\n{t}\n",
            rate(Some(g.fraction))
        ));
        for s in &g.summary {
            out.push_str(&format!("* {s}\n"));
        }
    }
    if !r.rollouts.is_empty() {
        out.push_str("\nrollouts\n");
        for ro in &r.rollouts {
            out.push_str(&format!("* {}\n", ro.sentence));
        }
    }
    out
}

/// An arm's name in the tables; a rollout's rest says what it is.
fn arm_label(a: &herald_storage::report::ArmReport) -> String {
    match &a.rollout {
        Some(r) if r.variant.is_none() => format!("{} (waiting for the decision)", a.arm),
        Some(_) => format!("{} (the rest, after the test)", a.arm),
        None => a.arm.clone(),
    }
}

fn opt<T: ToString>(x: Option<T>) -> String {
    x.map(|x| x.to_string()).unwrap_or_default()
}

/// One CSV row per (scope, arm): `total` first, then each run.
pub fn csv(r: &Report) -> anyhow::Result<String> {
    let mut header: Vec<String> = [
        "scope",
        "run_id",
        "arm",
        "holdout",
        "expected_share",
        "assigned",
        "sent",
        "delivered",
        "bounced",
        "failed",
        "unknown",
        "pending",
        "held_out",
        "suppressed",
        "suppressed_by_reason",
        "cancelled",
        "global_holdout",
        "opened",
        "machine_opened",
        "clicked",
        "unsubscribed",
        "complained",
        "converted",
        "revenue",
        "revenue_per_assigned",
        "delivery_rate",
        "open_rate",
        "click_rate",
        "conversion_rate",
    ]
    .map(String::from)
    .to_vec();
    for g in &r.secondary_goals {
        header.extend([
            format!("{g}_reached"),
            format!("{g}_rate"),
            format!("{g}_revenue"),
        ]);
    }
    for prefix in ["vs_control", "vs_first"] {
        header.push(format!("{prefix}_arm"));
        for f in [
            "rel_lift",
            "ci_lower",
            "ci_upper",
            "p_value",
            "chance_to_beat",
            "no_estimate",
        ] {
            header.push(format!("{prefix}_{f}"));
        }
    }
    header.extend(["srm_p_value", "srm_mismatch", "rollout"].map(String::from));
    // The seeds' metrics last, and only with `[results]`: older columns keep their places.
    if r.results.is_some() {
        header.extend(
            [
                "contacts",
                "retained_d1_7",
                "retention_d1_7",
                "retained_d8_30",
                "retention_d8_30",
                "revenue_30d",
                "arpu",
                "revenue_ltv",
                "ltv",
            ]
            .map(String::from),
        );
    }
    // Which intervals and p-values the row shows, and the corrected p-values.
    header.extend(
        [
            "test",
            "correction",
            "vs_control_p_adjusted",
            "vs_first_p_adjusted",
        ]
        .map(String::from),
    );
    // Retention, mean and ratio metrics (`[results]`), each against the control and the first.
    let metrics = csv_metrics(r);
    for m in &metrics {
        header.push(format!("{m}_value"));
        for prefix in ["vs_control", "vs_first"] {
            for f in [
                "rel_lift",
                "ci_lower",
                "ci_upper",
                "p_value",
                "p_adjusted",
                "chance_to_beat",
                "no_estimate",
            ] {
                header.push(format!("{m}_{prefix}_{f}"));
            }
        }
    }

    // CUPED last, and only with it: the adjusted numbers are in the columns
    // above; these say it was applied and how much variance it removed.
    let cuped = r.statistics.cuped_days.is_some();
    if cuped {
        header.extend(
            [
                "cuped_days",
                "vs_control_variance_reduction",
                "vs_first_variance_reduction",
            ]
            .map(String::from),
        );
        for m in CUPED_METRICS {
            for prefix in ["vs_control", "vs_first"] {
                header.push(format!("{m}_{prefix}_variance_reduction"));
            }
        }
    }

    let mut w = ::csv::Writer::from_writer(Vec::new());
    w.write_record(&header)?;
    let scopes = std::iter::once(("total", None, &r.total))
        .chain(r.runs.iter().map(|s| ("run", Some(s.run.id), &s.scope)));
    for (kind, run, scope) in scopes {
        let first_variant = scope
            .arms
            .iter()
            .find(|a| !a.holdout)
            .map(|a| a.arm.as_str());
        for a in &scope.arms {
            let mut row = vec![
                kind.to_string(),
                opt(run),
                a.arm.clone(),
                a.holdout.to_string(),
                opt(a.expected_share),
                a.assigned.to_string(),
                a.sent.to_string(),
                a.delivered.to_string(),
                a.bounced.to_string(),
                a.failed.to_string(),
                a.unknown.to_string(),
                a.pending.to_string(),
                a.held_out.to_string(),
                a.suppressed.to_string(),
                a.suppressed_by_reason
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(";"),
                a.cancelled.to_string(),
                a.global_holdout.to_string(),
                a.opened.to_string(),
                a.machine_opened.to_string(),
                a.clicked.to_string(),
                a.unsubscribed.to_string(),
                a.complained.to_string(),
                a.converted.to_string(),
                a.revenue.to_string(),
                opt(a.revenue_per_assigned),
                opt(a.rates.delivery),
                opt(a.rates.open),
                opt(a.rates.click),
                opt(a.rates.conversion),
            ];
            for s in &a.secondary {
                row.extend([s.reached.to_string(), opt(s.rate), s.revenue.to_string()]);
            }
            let versus = |control: Option<&str>| {
                let found = control.and_then(|c| {
                    scope
                        .comparisons
                        .iter()
                        .find(|x| x.variant == a.arm && x.control == c)
                });
                let mut cells = vec![opt(found.map(|c| c.control.clone()))];
                // With CUPED, the adjusted numbers (the `cuped_days` column says so).
                match (found.map(ComparisonReport::numbers), found) {
                    (Some(Some((lift, ci, p, chance))), _) => cells.extend([
                        lift.to_string(),
                        ci.lower.to_string(),
                        ci.upper.to_string(),
                        p.to_string(),
                        chance.to_string(),
                        String::new(),
                    ]),
                    (Some(None), Some(c)) => {
                        let message = match (&c.cuped, &c.result) {
                            (Some(MetricComparison::NotEnoughData { message, .. }), _)
                            | (None, Comparison::NotEnoughData { message, .. }) => *message,
                            _ => "",
                        };
                        cells.extend(std::iter::repeat_n(String::new(), 5));
                        cells.push(message.to_string());
                    }
                    _ => cells.extend(std::iter::repeat_n(String::new(), 6)),
                }
                cells
            };
            row.extend(versus(scope.control.as_deref()));
            // Against the first variant only where the holdout is the control.
            let first = first_variant.filter(|_| scope.control.as_deref() == Some("holdout"));
            row.extend(versus(first));
            row.extend([
                opt(scope.srm.as_ref().map(|s| s.test.p_value)),
                opt(scope.srm.as_ref().map(|s| s.test.mismatch)),
                opt(a.rollout.as_ref().map(|r| r.state)),
            ]);
            if r.results.is_some() {
                let x = a.results.as_ref();
                row.extend([
                    opt(x.map(|x| x.contacts)),
                    opt(x.and_then(|x| x.retained_d1_7)),
                    opt(x.and_then(|x| x.retention_d1_7)),
                    opt(x.and_then(|x| x.retained_d8_30)),
                    opt(x.and_then(|x| x.retention_d8_30)),
                    opt(x.and_then(|x| x.revenue_30d)),
                    opt(x.and_then(|x| x.arpu)),
                    opt(x.and_then(|x| x.revenue_ltv)),
                    opt(x.and_then(|x| x.ltv)),
                ]);
            }
            let adjusted = |control: Option<&str>| {
                opt(control.and_then(|c| {
                    scope
                        .comparisons
                        .iter()
                        .find(|x| x.variant == a.arm && x.control == c)
                        .and_then(|x| x.p_value_adjusted)
                }))
            };
            row.extend([
                r.statistics.test.to_string(),
                r.statistics.correction.to_string(),
                adjusted(scope.control.as_deref()),
                adjusted(first),
            ]);
            for m in &metrics {
                row.extend(csv_metric_cells(scope, &a.arm, m, first));
            }
            if cuped {
                let versus = |control: Option<&str>| {
                    let found = control.and_then(|c| {
                        scope
                            .comparisons
                            .iter()
                            .find(|x| x.variant == a.arm && x.control == c)
                    });
                    opt(found.and_then(conversion_reduction))
                };
                row.extend([
                    opt(r.statistics.cuped_days),
                    versus(scope.control.as_deref()),
                    versus(first),
                ]);
                for m in CUPED_METRICS {
                    for control in [scope.control.as_deref(), first] {
                        let found = control.and_then(|c| {
                            scope
                                .metric_comparisons
                                .iter()
                                .find(|x| x.metric == m && x.variant == a.arm && x.control == c)
                        });
                        row.push(opt(found.and_then(metric_reduction)));
                    }
                }
            }
            w.write_record(&row)?;
        }
    }
    let bytes = w.into_inner().context("cannot finish the CSV")?;
    Ok(String::from_utf8(bytes)?)
}

/// The metrics CUPED adjusts besides conversion, in the CSV's order.
const CUPED_METRICS: [&str; 3] = ["arpu", "ltv", "revenue_per_converter"];

/// The metrics compared besides conversion, in the order the total shows them.
fn csv_metrics(r: &Report) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    let scopes = std::iter::once(&r.total).chain(r.runs.iter().map(|s| &s.scope));
    for scope in scopes {
        let names = scope
            .results_comparisons
            .iter()
            .map(|c| c.metric)
            .chain(scope.metric_comparisons.iter().map(|c| c.metric));
        for m in names {
            if !out.contains(&m) {
                out.push(m);
            }
        }
    }
    out
}

/// One arm's cells of `metric`: its value, then against the control and
/// the first variant as the conversion columns have them.
fn csv_metric_cells(scope: &Scope, arm: &str, metric: &str, first: Option<&str>) -> Vec<String> {
    let proportions = scope
        .results_comparisons
        .iter()
        .filter(|c| c.metric == metric);
    let others = scope
        .metric_comparisons
        .iter()
        .filter(|c| c.metric == metric);
    let value = proportions
        .clone()
        .find_map(|c| {
            if c.variant == arm {
                c.variant_counts.rate()
            } else if c.control == arm {
                c.control_counts.rate()
            } else {
                None
            }
        })
        .or_else(|| {
            others.clone().find_map(|c| {
                if c.variant == arm {
                    c.variant_value
                } else if c.control == arm {
                    c.control_value
                } else {
                    None
                }
            })
        });
    let mut cells = vec![opt(value)];
    for control in [scope.control.as_deref(), first] {
        let numbers = control.and_then(|control| {
            proportions
                .clone()
                .find(|c| c.variant == arm && c.control == control)
                .map(|c| {
                    let why = match &c.result {
                        Comparison::NotEnoughData { message, .. } => Some(*message),
                        Comparison::Estimate(_) => None,
                    };
                    (c.numbers(), c.p_value_adjusted, why)
                })
                .or_else(|| {
                    others
                        .clone()
                        .find(|c| c.variant == arm && c.control == control)
                        .map(|c| {
                            let why = match &c.result {
                                MetricComparison::NotEnoughData { message, .. } => Some(*message),
                                MetricComparison::Estimate(_) => None,
                            };
                            (metric_numbers(c), c.p_value_adjusted, why)
                        })
                })
        });
        match numbers {
            Some((Some((lift, ci, p, chance)), adjusted, _)) => cells.extend([
                lift.to_string(),
                ci.lower.to_string(),
                ci.upper.to_string(),
                p.to_string(),
                opt(adjusted),
                chance.to_string(),
                String::new(),
            ]),
            Some((None, _, why)) => {
                cells.extend(std::iter::repeat_n(String::new(), 6));
                cells.push(why.unwrap_or_default().to_string());
            }
            None => cells.extend(std::iter::repeat_n(String::new(), 7)),
        }
    }
    cells
}

/// The report source of `GET /api/campaigns/{name}/report`, for `herald serve` and `herald run`.
struct SqlReportSource {
    db: Db,
    config: Arc<ConfigSet>,
}

impl SqlReportSource {
    async fn answer(
        &self,
        campaign: &str,
        query: &[(String, String)],
    ) -> Result<Option<serde_json::Value>, ServerReportError> {
        self.build(campaign, query)
            .await?
            .map(serde_json::to_value)
            .transpose()
            .map_err(|e| ServerReportError::Failed(e.to_string()))
    }

    /// The report as `herald report --format csv` prints it.
    async fn answer_csv(
        &self,
        campaign: &str,
        query: &[(String, String)],
    ) -> Result<Option<String>, ServerReportError> {
        self.build(campaign, query)
            .await?
            .map(|r| csv(&r))
            .transpose()
            .map_err(|e| ServerReportError::Failed(format!("{e:#}")))
    }

    async fn build(
        &self,
        campaign: &str,
        query: &[(String, String)],
    ) -> Result<Option<Report>, ServerReportError> {
        let param = |key: &str| {
            query
                .iter()
                .rev()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        };
        if let Some((k, _)) = query
            .iter()
            .find(|(k, _)| !["run", "since", "until"].contains(&k.as_str()))
        {
            return Err(ServerReportError::BadRequest(format!(
                "unknown parameter `{k}`: use run, since or until"
            )));
        }
        let run = param("run")
            .map(|r| {
                r.parse::<i64>().map_err(|_| {
                    ServerReportError::BadRequest(format!("run `{r}` is not a run id"))
                })
            })
            .transpose()?;
        let filter =
            filter(run, param("since"), param("until")).map_err(ServerReportError::BadRequest)?;
        make(&self.db, &self.config, campaign, &filter)
            .await
            .map_err(|e| ServerReportError::Failed(format!("{e:#}")))
    }
}

type CsvFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Option<String>, ServerReportError>> + Send + 'a>>;
type ReportFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Option<serde_json::Value>, ServerReportError>> + Send + 'a>>;

// The trait is declared with `#[async_trait]`; this is that macro's expansion
// written out, so this crate needs no dependency for one impl.
impl ReportSource for SqlReportSource {
    fn report<'life0, 'life1, 'life2, 'async_trait>(
        &'life0 self,
        campaign: &'life1 str,
        query: &'life2 [(String, String)],
    ) -> ReportFuture<'async_trait>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(self.answer(campaign, query))
    }

    fn report_csv<'life0, 'life1, 'life2, 'async_trait>(
        &'life0 self,
        campaign: &'life1 str,
        query: &'life2 [(String, String)],
    ) -> CsvFuture<'async_trait>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(self.answer_csv(campaign, query))
    }
}

/// `GET /api/campaigns/{name}/report` over `db`, with the campaigns of `config`.
pub fn report_source(db: Db, config: Arc<ConfigSet>) -> Arc<dyn ReportSource> {
    Arc::new(SqlReportSource { db, config })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_keep_small_numbers_readable() {
        assert_eq!(p_cell(0.0312), "0.0312");
        assert_eq!(p_cell(2.7e-29), "2.7e-29");
        assert_eq!(chance_cell(0.9997), ">99.9%");
        assert_eq!(chance_cell(0.0), "<0.1%");
        assert_eq!(chance_cell(0.935), "93.5%");
    }

    #[test]
    fn the_range_must_not_be_empty() {
        assert!(filter(None, Some("2026-11-02"), Some("2026-11-01")).is_err());
        let f = filter(Some(3), Some("2026-11-01"), Some("2026-11-01")).unwrap();
        assert_eq!(f.run, Some(3));
        assert_eq!(f.until.unwrap() - f.since.unwrap(), 86_400_000);
        assert!(
            filter(None, Some("yesterday"), None)
                .unwrap_err()
                .contains("RFC 3339")
        );
    }
}
