//! `herald-bench run`: a whole run, end to end, to an unlimited outbox:
//! plan (audience snapshot and policies) while the workers claim, read
//! contacts, render, send (the batched outbox) and record what is
//! planned, as the daemon does; with each stage's share of the workers'
//! time. Each size runs in a child process so its peak memory is its own;
//! the parent prints messages/s and how peak memory grows with the audience.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_domain::token::TokenSigner;
use herald_engine::dispatch::{DispatchStats, Dispatcher};
use herald_engine::handoff::Handoff;
use herald_engine::render::{CampaignRenderer, MessageRenderer, register_inline};
use herald_engine::{Clock, Engine, Store, SystemClock};
use herald_storage::Db;
use herald_storage::store::SqlStore;
use herald_templates::TemplateSet;

use herald_cli::app;

use crate::{peak_rss, reset_peak_rss};

/// Writes the bench project: outbox channels without a rate limit, one
/// campaign to everyone with an email, with a goal (so each page written
/// looks for goal events already stored, as a real campaign's does).
fn write_project(dir: &Path, url: &str, batch: u32, workers: usize) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir.join("config/campaigns"))?;
    std::fs::create_dir_all(dir.join("templates/bench"))?;
    std::fs::write(
        dir.join("config/herald.toml"),
        format!(
            "[database]\nurl = \"{url}\"\n\n[tracking]\npublic_url = \"https://t.example.com\"\n\n[channels.email]\nprovider = \"outbox\"\nconcurrency = {}\n\n[dispatch]\nbatch = {batch}\nworkers = {workers}\n",
            batch as usize * 2
        ),
    )?;
    std::fs::write(
        dir.join("config/campaigns/everyone.toml"),
        "name = \"everyone\"\nwhere = 'email contains \"@\"'\nchannels = [\"email\"]\nholdout = 0.1\ngoal = { event = \"order_placed\", within = \"3d\" }\nsecondary_goals = [\"app_open\"]\n\n[[variants]]\nname = \"a\"\nemail = { subject = \"Hello {{contact.external_id}}\", template = \"bench/hello.email.hbs\" }\n\n[[variants]]\nname = \"b\"\nemail = { subject = \"Hi {{contact.external_id}}\", template = \"bench/hello.email.hbs\" }\n",
    )?;
    std::fs::write(
        dir.join("templates/bench/hello.email.hbs"),
        "<p>Hello {{contact.external_id}},</p>\n<p>See <a href=\"{{track \"https://shop.example.com/new\"}}\">what is new</a>.</p>\n<p><a href=\"{{unsubscribe_url}}\">Unsubscribe</a></p>\n",
    )?;
    Ok(())
}

/// One measured run in this process; prints one JSON line.
pub async fn run_one(
    recipients: usize,
    database: &str,
    batch: u32,
    workers: usize,
    events_per_contact: usize,
    handoff: bool,
) -> anyhow::Result<()> {
    let db = Db::connect(database).await?;
    let t = Instant::now();
    let options = crate::segments::BenchOptions {
        contacts: recipients,
        events: recipients * events_per_contact,
        seed: 3,
    };
    crate::segments::load(&db, &options).await?;
    crate::segments::analyze(&db).await?;
    let load_s = t.elapsed().as_secs_f64();
    let load_peak_rss = peak_rss();
    // The run's own peak, not the generator's.
    let peak_reset = reset_peak_rss();
    let dir = tempfile::tempdir()?;
    write_project(dir.path(), database, batch, workers)?;
    let config = Arc::new(
        herald_domain::config::load(&dir.path().join("config"))
            .map_err(|e| anyhow::anyhow!("bench config: {e:?}"))?,
    );
    let mut templates = TemplateSet::load(&dir.path().join("templates"))?;
    register_inline(&mut templates, config.campaigns.values())?;
    let templates = Arc::new(templates);
    let store = Arc::new(SqlStore::with_segment_config(
        db.clone(),
        config.herald.rfm.clone(),
        config.herald.lifecycle.clone(),
    ));
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let campaign = config.campaigns["everyone"].clone();
    let signer = TokenSigner::new(b"bench-secret-0123456789abcdef");
    let routes = app::routes(&config, &store, &|_| None)?;
    let renderer: Arc<dyn MessageRenderer> = Arc::new(CampaignRenderer::new(
        templates,
        campaign.clone(),
        &config.herald,
        signer,
    ));

    let started = Instant::now();
    // As in the daemon, the planner hands batches due now to free workers,
    // under their lease.
    let lease = Duration::from_secs(120);
    let handoff = handoff.then(|| {
        Arc::new(
            Handoff::new("bench".into(), batch as usize, lease)
                .with_delivered_on_accept(app::delivered_on_accept(&routes)),
        )
    });
    let mut engine = Engine::new(store.clone(), clock.clone(), config.clone());
    if let Some(h) = &handoff {
        engine = engine.with_handoff(h.clone());
    }
    // As in the daemon, workers send each page as soon as the planner wrote it.
    let run = engine
        .create_run(&campaign, clock.now_ms(), "bench")
        .await?;
    let mut handles = Vec::new();
    for i in 0..workers {
        let mut d = Dispatcher::new(
            store.clone() as Arc<dyn Store>,
            clock.clone(),
            routes.clone(),
            format!("bench/{i}"),
        );
        if let Some(h) = &handoff {
            d = d.with_handoff(h.clone());
        }
        // The bench campaign is email: its workers are the email lane, as in
        // `herald send` (claims by route use the `messages_lane` index).
        d = d.with_lane(herald_domain::types::Channel::Email, workers);
        d.batch = batch;
        d.lease = lease;
        d.poll = Duration::from_millis(20);
        let renderer = renderer.clone();
        handles.push(tokio::spawn(async move {
            d.drain_run(run.id, renderer.as_ref()).await
        }));
    }
    let plan = engine.plan(&campaign, &run).await?;
    let plan_s = started.elapsed();
    anyhow::ensure!(plan.finished, "the bench run's plan did not finish");
    let mut total = DispatchStats::default();
    for h in handles {
        total.merge(&h.await??);
    }
    let elapsed = started.elapsed();
    let counts = store.run_counts(run.id).await?;
    let st = &total.stages;
    let secs = |d: Duration| d.as_secs_f64();
    let line = serde_json::json!({
        "recipients": recipients,
        "audience": plan.members,
        "accepted": total.accepted,
        "failed": total.failed,
        "held_out": counts.count(None, "held_out"),
        "handed": total.handed,
        "load_s": load_s,
        "seconds": elapsed.as_secs_f64(),
        "plan_s": plan_s.as_secs_f64(),
        // Worker stages are summed over workers (they overlap in time).
        "claim_s": secs(st.claim),
        "contacts_s": secs(st.contacts),
        "render_s": secs(st.render),
        "send_s": secs(st.send),
        "record_s": secs(st.record),
        "peak_rss": peak_rss(),
        "peak_reset": peak_reset,
        "load_peak_rss": load_peak_rss,
    });
    println!("{line}");
    Ok(())
}

/// Runs `bench run-one` for each size and database in child processes and prints the figures.
pub fn run(
    sizes: &[usize],
    postgres: Option<&str>,
    batch: u32,
    workers: usize,
    events_per_contact: usize,
    handoff: bool,
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut targets: Vec<(&str, String)> = vec![("SQLite", String::new())];
    if let Some(pg) = postgres {
        targets.push(("PostgreSQL", pg.to_string()));
    }
    let exe = std::env::current_exe()?;
    for (name, url) in &targets {
        let mut peaks = Vec::new();
        for &n in sizes {
            let url = if url.is_empty() {
                format!(
                    "sqlite://{}?mode=rwc",
                    dir.path().join(format!("run-{n}.db")).display()
                )
            } else {
                url.clone()
            };
            let out = Command::new(&exe)
                .args([
                    "run-one",
                    "--recipients",
                    &n.to_string(),
                    "--database",
                    &url,
                ])
                .args([
                    "--batch",
                    &batch.to_string(),
                    "--workers",
                    &workers.to_string(),
                    "--events-per-contact",
                    &events_per_contact.to_string(),
                ])
                .args((!handoff).then_some("--no-handoff"))
                .output()?;
            if !out.status.success() {
                anyhow::bail!(
                    "{name} run failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
            let f = |k: &str| v[k].as_f64().unwrap_or(0.0);
            let sent = f("accepted");
            let total = f("seconds");
            let work: f64 = ["claim_s", "contacts_s", "render_s", "send_s", "record_s"]
                .iter()
                .map(|k| f(k))
                .sum();
            let share = |k: &str| 100.0 * f(k) / work.max(1e-9);
            println!(
                "{name:<10} {n:>9} contacts{}: {:.0} messages planned ({:.0} held out), {:.0} sent in {total:.2}s = {:.0} sent/s end to end; peak RSS of the run {:.1} MB{} (data load {:.1}s and {:.1} MB, not counted)",
                if events_per_contact > 0 {
                    format!(" ({events_per_contact} events each)")
                } else {
                    String::new()
                },
                f("audience"),
                f("held_out"),
                f("accepted"),
                sent / total,
                f("peak_rss") / 1e6,
                if v["peak_reset"].as_bool() == Some(true) {
                    ""
                } else {
                    " (could not reset the peak: the data load's included)"
                },
                f("load_s"),
                f("load_peak_rss") / 1e6,
            );
            println!(
                "           planning ended at {:.0}% of the run (workers sent meanwhile; {:.0}% handed over, unclaimed); the workers' time: claim {:.0}%, contacts {:.0}%, render {:.0}%, send {:.0}%, record {:.0}%",
                100.0 * f("plan_s") / total,
                100.0 * f("handed") / sent.max(1.0),
                share("claim_s"),
                share("contacts_s"),
                share("render_s"),
                share("send_s"),
                share("record_s"),
            );
            peaks.push((n, f("peak_rss")));
        }
        if let [first, .., last] = peaks.as_slice() {
            println!(
                "{name:<10} peak memory at {} vs {} contacts: {:.2}x",
                last.0,
                first.0,
                last.1 / first.1.max(1.0)
            );
        }
    }
    Ok(())
}
