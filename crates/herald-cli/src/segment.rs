//! `herald segment preview NAME`: who is in a segment right now: the member
//! count, the R x F grid of members, the lifecycle breakdown and a sample,
//! as a table or as JSON.

use clap::{Args, Subcommand, ValueEnum};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use herald_engine::store::{PersonalisationRequest, Store};
use herald_storage::segment_preview::preview;
use serde_json::json;

use crate::{Cli, EXIT_INVALID, Exit, app, output};

/// `herald segment ...`.
#[derive(Subcommand, Debug)]
pub enum SegmentCmd {
    /// Member count, R x F grid, lifecycle breakdown and a sample.
    Preview(PreviewArgs),
}

/// Output formats.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Human-readable tables.
    Table,
    /// One JSON document.
    Json,
}

/// Arguments of `herald segment preview`.
#[derive(Args, Debug)]
pub struct PreviewArgs {
    /// The segment's name.
    pub name: String,
    /// Sample size.
    #[arg(long, default_value_t = 10)]
    pub limit: u32,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

/// Runs `herald segment preview`.
pub async fn run(cli: &Cli, cmd: &SegmentCmd) -> anyhow::Result<()> {
    let SegmentCmd::Preview(args) = cmd;
    let config = app::load_config(cli)?;
    let Some(segment) = config.segments.get(&args.name) else {
        let known: Vec<&str> = config.segments.keys().map(String::as_str).collect();
        eprintln!(
            "error: no segment named `{}` (known: {})",
            args.name,
            known.join(", ")
        );
        return Err(Exit(EXIT_INVALID).into());
    };
    let store = app::store(cli, &config).await?;
    let now = chrono::Utc::now().timestamp_millis();
    // The console's segments page counts with the same function.
    let p = preview(&store, &segment.filter, now, args.limit).await?;
    let (total, grid, no_rfm) = (p.members, &p.rf_grid, p.without_rfm);
    let stages: Vec<(&str, i64)> = p.lifecycle.iter().map(|(s, n)| (s.as_str(), *n)).collect();
    let ids: Vec<i64> = p.sample.iter().map(|m| m.contact_id).collect();
    let sample = store
        .contacts(
            &ids,
            &PersonalisationRequest::new(now, &config.herald, Vec::new()),
        )
        .await?;

    if args.format == Format::Json {
        let doc = json!({
            "segment": segment.name,
            "description": segment.description,
            "now": now,
            "members": total,
            "rf_grid": grid.iter().map(|((r, f), n)| json!({"r": r, "f": f, "members": n})).collect::<Vec<_>>(),
            "without_rfm": no_rfm,
            "lifecycle": stages.iter().map(|(s, n)| (s.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
            "sample": sample.iter().map(|c| json!({
                "external_id": c.external_id, "email": c.email, "phone": c.phone,
                "timezone": c.timezone, "locale": c.locale, "attrs": c.attrs, "tags": c.tags,
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    println!("segment `{}`: {} member(s)", segment.name, total);
    if !segment.description.is_empty() {
        println!("  {}", segment.description);
    }
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(vec!["R \\ F", "1", "2", "3", "4", "5"]);
    for r in (1..=5).rev() {
        let mut row = vec![r.to_string()];
        row.extend((1..=5).map(|f| grid.get(&(r, f)).copied().unwrap_or(0).to_string()));
        t.add_row(row);
    }
    println!(
        "R x F grid of members (R 5 = bought most recently, F 5 = most often); {no_rfm} without a purchase:\n{t}"
    );
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(
        stages
            .iter()
            .map(|(s, _)| s.to_string())
            .collect::<Vec<_>>(),
    );
    t.add_row(
        stages
            .iter()
            .map(|(_, n)| n.to_string())
            .collect::<Vec<_>>(),
    );
    println!("lifecycle:\n{t}");
    // Every cell cut to a bounded length first: the table's layout is not
    // linear in a cell's size, and one contact's attributes can be megabytes.
    let mut t = output::table(
        ["external_id", "email", "phone", "locale", "attrs"]
            .map(String::from)
            .to_vec(),
        false,
    );
    let cell = |s: &str| output::cut(s, output::MAX_CELL_CHARS);
    for c in &sample {
        t.add_row(vec![
            cell(&c.external_id),
            cell(c.email.as_deref().unwrap_or_default()),
            cell(c.phone.as_deref().unwrap_or_default()),
            cell(c.locale.as_deref().unwrap_or_default()),
            cell(&c.attrs.to_string()),
        ]);
    }
    println!("sample:\n{t}");
    Ok(())
}
