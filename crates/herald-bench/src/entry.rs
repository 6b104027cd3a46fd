//! `herald-bench entry`: the segment-entry pass of issue 9 over a generated
//! contact base (the `bench segments` generator: COPY on PostgreSQL, batched
//! inserts on SQLite). Per segment it times the segment query alone (a COUNT,
//! the floor of any pass), the baseline pass, steady passes where nothing
//! changed, a pass after time moved on so that people enter with no data
//! change, and a retried pass; then the same through the engine, which also
//! plans the entrants into message rows (the figure).

use std::time::Instant;

use crate::segments::{self, BENCH_NOW, BenchOptions};
use herald_domain::config::{LifecycleConfig, RfmConfig};
use herald_domain::segment::parse;
use herald_storage::Db;
use herald_storage::bench;
use herald_storage::segment_preview::count_in;
use herald_storage::segment_sql::{DAY_MS, SegmentContext};

/// Steady passes timed per segment (nothing changes between them).
const STEADY_PASSES: i64 = 2;

/// What `herald-bench entry` generates and measures.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Contacts to generate.
    pub contacts: usize,
    /// Events to generate.
    pub events: usize,
    /// Seed of the generator.
    pub seed: u64,
    /// Reuse the data a previous run left in the database.
    pub keep: bool,
}

/// A segment to pass over, and how far the clock moves before the entering pass.
struct Case {
    name: &'static str,
    filter: &'static str,
    campaign_id: i64,
    advance_days: i64,
}

/// The churn early warning of the issue, and a wide segment (most buyers) that
/// stresses the diff rather than the evaluation.
const CASES: [Case; 2] = [
    Case {
        name: "churn_risk",
        filter: "overdue(\"order_placed\") > 2",
        campaign_id: 1,
        advance_days: 25,
    },
    Case {
        name: "lapsed_30d",
        filter: "days_since(\"order_placed\") > 30",
        campaign_id: 2,
        advance_days: 5,
    },
];

fn secs(t: Instant) -> f64 {
    t.elapsed().as_secs_f64()
}

/// Runs the benchmark on `url` (EMPTIED first unless `keep`).
pub async fn run(url: &str, o: Options) -> anyhow::Result<()> {
    let db = Db::connect(url).await?;
    let backend = if db.backend() == sea_orm::DbBackend::Postgres {
        "PostgreSQL"
    } else {
        "SQLite"
    };
    if !o.keep {
        let t = Instant::now();
        let options = BenchOptions {
            contacts: o.contacts,
            events: o.events,
            seed: o.seed,
        };
        let purchases = segments::load(&db, &options).await?;
        eprintln!(
            "loaded {} contacts and {} events ({purchases} purchases, seed {}) in {:.1} s",
            o.contacts,
            o.events,
            o.seed,
            secs(t)
        );
        let t = Instant::now();
        segments::analyze(&db).await?;
        eprintln!("analyzed in {:.1} s", secs(t));
    }
    let contacts = bench::live_contacts(&db).await?;
    println!(
        "{backend}: segment-entry passes over {contacts} contacts (evaluate + diff + store, one transaction each)"
    );
    let rfm = RfmConfig::default();
    let lifecycle = LifecycleConfig::default();
    for case in &CASES {
        let filter = parse(case.filter).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        bench::clear_entry_state(&db).await?;
        println!("segment {} = '{}'", case.name, case.filter);

        let ctx = SegmentContext::new(db.backend(), BENCH_NOW, &rfm, &lifecycle);
        let t = Instant::now();
        let members = count_in(&db, &filter, &ctx).await?;
        let floor = secs(t);
        println!("  the segment query alone (COUNT): {members} members in {floor:.2} s");

        let mut run = case.campaign_id * 1000;
        let timed = |label: String, pass: herald_engine::store::EntryPass, s: f64| {
            println!(
                "  {label:<44} {:>6.2} s ({:.2}x the COUNT): {} members, {} entrants, {} leavers{}",
                s,
                s / floor,
                pass.members,
                pass.entrants,
                pass.leavers,
                if pass.baseline { " (baseline)" } else { "" }
            );
        };
        run += 1;
        let t = Instant::now();
        let pass = db.entry_pass(case.campaign_id, run, &filter, &ctx).await?;
        timed("baseline pass".into(), pass, secs(t));
        for k in 1..=STEADY_PASSES {
            run += 1;
            let t = Instant::now();
            let pass = db.entry_pass(case.campaign_id, run, &filter, &ctx).await?;
            timed(format!("steady pass {k} (nothing changed)"), pass, secs(t));
        }
        run += 1;
        let later = SegmentContext::new(
            db.backend(),
            BENCH_NOW + case.advance_days * DAY_MS,
            &rfm,
            &lifecycle,
        );
        let t = Instant::now();
        let pass = db
            .entry_pass(case.campaign_id, run, &filter, &later)
            .await?;
        let entered = pass.entrants;
        timed(
            format!("{} days later, no data change", case.advance_days),
            pass,
            secs(t),
        );
        println!(
            "  ({entered} entrants = {:.2}% of the contacts)",
            100.0 * entered as f64 / contacts.max(1) as f64
        );
        let t = Instant::now();
        let pass = db
            .entry_pass(case.campaign_id, run, &filter, &later)
            .await?;
        timed("the same run again (a retry)".into(), pass, secs(t));
    }
    for case in &CASES {
        plan_end_to_end(&db, case).await?;
    }
    Ok(())
}

/// The whole pass as the daemon runs it: the engine starts the run of a
/// campaign with `trigger = { enters = ... }`, which evaluates, diffs and plans
/// the entrants through every policy into message rows.
async fn plan_end_to_end(db: &Db, case: &Case) -> anyhow::Result<()> {
    use herald_engine::clock::{Clock, FixedClock};
    use herald_engine::run::Engine;
    use std::sync::Arc;

    let dir = tempfile::tempdir()?;
    std::fs::create_dir_all(dir.path().join("segments"))?;
    std::fs::create_dir_all(dir.path().join("campaigns"))?;
    std::fs::write(dir.path().join("herald.toml"), "")?;
    std::fs::write(
        dir.path().join("segments/s.toml"),
        format!(
            "name = \"{}\"\ndescription = \"bench\"\nwhere = '{}'\n",
            case.name, case.filter
        ),
    )?;
    let campaign = format!("bench_enters_{}", case.name);
    std::fs::write(
        dir.path().join("campaigns/c.toml"),
        format!(
            "name = \"{campaign}\"\nkind = \"marketing\"\nsegment = \"{}\"\ntrigger = {{ enters = \"{}\", every = \"1h\" }}\nchannels = [\"push\", \"sms\", \"email\"]\nholdout = 0.1\n\n[[variants]]\nname = \"a\"\nemail = {{ subject = \"s\", template = \"t.email.hbs\" }}\nsms = {{ template = \"t.sms.hbs\" }}\npush = {{ title = \"t\", template = \"t.push.hbs\" }}\n",
            case.name, case.name
        ),
    )?;
    let config = Arc::new(
        herald_domain::config::load(dir.path())
            .map_err(|e| anyhow::anyhow!("the bench campaign is invalid: {}", e[0]))?,
    );
    // A previous bench's run of this campaign would be found, not planned again.
    bench::clear_campaign_runs(db, &campaign).await?;
    let store = Arc::new(herald_storage::store::SqlStore::new(db.clone()));
    let at = |ms: i64| chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default();
    let clock = Arc::new(FixedClock::new(at(BENCH_NOW)));
    let engine = Engine::new(store, clock.clone(), config.clone());
    let c = &config.campaigns[&campaign];
    let t = Instant::now();
    let (_, base) = engine.start_run(c, clock.now_ms(), "schedule").await?;
    let baseline = secs(t);
    clock.set(at(BENCH_NOW + case.advance_days * DAY_MS));
    let t = Instant::now();
    let (run, plan) = engine.start_run(c, clock.now_ms(), "schedule").await?;
    let whole = secs(t);
    let planned = herald_storage::runs::message_count(db, run.id).await?;
    println!(
        "segment {} end to end (engine, {} days later): evaluate + diff + plan {} entrants into {planned} messages in {whole:.2} s (baseline pass {baseline:.2} s, {} planned)",
        case.name, case.advance_days, plan.members, base.members
    );
    Ok(())
}
