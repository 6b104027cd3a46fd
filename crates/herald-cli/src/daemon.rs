//! `herald run`: the daemon. One process runs the scheduler (fires due
//! campaigns, resumes plans a dead daemon left), `[dispatch] workers`
//! dispatch workers (claim, render, send, record) and the tracking server.
//! A heartbeat counts the daemons on the database so each takes its share of
//! every channel's rate limit (a joining daemon waits for the others to
//! recount; a leaving one leaves the count after its workers drained).
//! SIGINT/SIGTERM: stop claiming, finish the requests in the air, give what
//! waits back to `planned`, write every outcome, stop the server after its
//! pending writes, exit 0, all within `[dispatch] stop_timeout`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use herald_engine::dispatch::RendererSource;
use herald_engine::metrics::DispatchMetrics;
use herald_engine::render::{CampaignRenderer, MessageRenderer};
use herald_engine::reputation::ReputationRule;
use herald_engine::rollout::Roller;
use herald_engine::scheduler::Scheduler;
use herald_engine::trigger::TriggerPlanner;
use herald_engine::{Clock, Engine, SystemClock};
use herald_storage::exits::{self, ExitRule};
use herald_storage::runs;
use tokio::sync::watch;

use crate::{Cli, EXIT_INVALID, Exit, app, check, serve};

/// How often the scheduler looks for due fires.
const TICK: Duration = Duration::from_secs(1);
/// How often the trigger planner looks for new events (part of an event's time to its send).
const TRIGGER_TICK: Duration = Duration::from_millis(100);
/// How often a daemon says it is alive and recounts the others.
const HEARTBEAT: Duration = Duration::from_secs(2);
/// How often the reputation guard counts the running marketing runs' bounces and complaints.
const REPUTATION_TICK: Duration = Duration::from_secs(5);
/// How long a daemon joining others waits before it sends: every other
/// daemon recounts within a heartbeat and gives up its part of the rate.
const JOIN_WAIT: Duration = Duration::from_millis(2500);

/// Arguments of `herald run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// Run without the tracking server (another process serves it).
    #[arg(long)]
    pub no_server: bool,
    /// Name this daemon (leases and heartbeats); default: host and process id.
    #[arg(long)]
    pub name: Option<String>,
}

/// Runs the daemon until SIGINT/SIGTERM.
pub async fn run(cli: &Cli, args: &RunArgs) -> anyhow::Result<()> {
    let config = Arc::new(app::load_config(cli)?);
    let templates = Arc::new(app::load_templates(cli, &config)?);
    let store = Arc::new(app::store(cli, &config).await?);
    let signer = app::signer(&config)?;

    // Refuse to start on a template that fails for real audience members:
    // better no daemon than a run of render errors.
    let mut problems = Vec::new();
    for campaign in config.campaigns.values() {
        let mut sample = check::sample_contacts(&store, &config, &templates, campaign).await?;
        if sample.is_empty() {
            sample.push(check::builtin_sample());
        }
        problems.extend(check::render_problems(
            &config,
            templates.clone(),
            campaign,
            &sample,
        ));
    }
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("error: {p}");
        }
        eprintln!("the daemon did not start: fix the template(s) and run `herald check`");
        return Err(Exit(EXIT_INVALID).into());
    }

    let owner = args.name.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "herald".into());
        format!("{host}-{}", std::process::id())
    });
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let routes = app::routes(&config, &store, &app::env_secrets)?;
    let renderers: HashMap<String, Arc<dyn MessageRenderer>> = config
        .campaigns
        .values()
        .map(|c| {
            let r: Arc<dyn MessageRenderer> = Arc::new(CampaignRenderer::new(
                templates.clone(),
                c.clone(),
                &config.herald,
                signer.clone(),
            ));
            (c.name.clone(), r)
        })
        .collect();
    let renderers = Arc::new(renderers);
    let (stop_tx, stop_rx) = watch::channel(false);
    let metrics = Arc::new(DispatchMetrics::default());

    // The tracking server.
    let server = if args.no_server {
        None
    } else {
        let m = metrics.clone();
        let extra: herald_server::ExtraMetrics =
            Arc::new(herald_engine::metrics::DispatchCollector(m));
        let state = serve::tracking_state(cli, &config, &store, signer.clone(), Some(extra))?;
        let listener = serve::tracking_listener(&config).await?;
        println!(
            "tracking server on http://{} (links point to {})",
            listener.local_addr()?,
            config.herald.tracking.public_url
        );
        let mut stop = stop_rx.clone();
        Some(tokio::spawn(async move {
            herald_server::run(listener, state, async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await
        }))
    };

    // Heartbeats: each daemon takes 1/N of every channel's rate. A daemon
    // joining others sends nothing until they have all recounted (one
    // heartbeat and a margin), so together they never exceed the rate; it
    // leaves the count only after its workers have drained (below).
    let pacers: Vec<_> = routes.values().map(|r| r.pacer.clone()).collect();
    let first = runs::heartbeat(store.db(), &owner, clock.now_ms())
        .await
        .unwrap_or(1);
    for p in &pacers {
        p.set_share(1.0 / first as f64);
    }
    if first > 1 {
        println!(
            "{first} daemons on this database: waiting {JOIN_WAIT:?} for the others to give up their share before sending"
        );
        tokio::time::sleep(JOIN_WAIT).await;
    }
    let (beat_stop_tx, beat_stop_rx) = watch::channel(false);
    let heartbeat = {
        let db = store.db().clone();
        let owner = owner.clone();
        let clock = clock.clone();
        let mut stop = beat_stop_rx.clone();
        tokio::spawn(async move {
            let mut last = first;
            loop {
                match runs::heartbeat(&db, &owner, clock.now_ms()).await {
                    Ok(n) if n != last => {
                        tracing::info!(
                            daemons = n,
                            "daemons on this database: each takes 1/{n} of every rate limit"
                        );
                        for p in &pacers {
                            p.set_share(1.0 / n as f64);
                        }
                        last = n;
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!("heartbeat: {e}"),
                }
                tokio::select! {
                    _ = tokio::time::sleep(HEARTBEAT) => {}
                    _ = stop.wait_for(|s| *s) => break,
                }
            }
            // Only now, with nothing more to send, do the others take our share.
            let _ = runs::leave(&db, &owner, clock.now_ms()).await;
        })
    };

    // The scheduler.
    let engine = Engine::with_owner(store.clone(), clock.clone(), config.clone(), owner.clone());
    // A dead planner's run is taken over once its short, heartbeated lease
    // lapses (`PLAN_LEASE_MS`), within seconds, not after the workers' lease.
    // The planner hands batches due now straight to this daemon's free workers.
    let (handoff, dispatchers) = app::workers(&config, &store, &clock, &routes, &owner, None);
    let engine = Arc::new(engine.with_handoff(handoff.clone()));
    let scheduler = {
        let mut scheduler = Scheduler::new(engine, store.clone(), clock.clone());
        // Rollouts decide on the scheduler's tick: after `decide_after`, the winner goes to the rest.
        let roller = Roller::new(store.clone(), store.clone(), clock.clone(), config.clone());
        let mut stop = stop_rx.clone();
        // The reputation guard judges running marketing runs every so often.
        let guard_db = store.db().clone();
        let rule = ReputationRule::from_config(&config.herald.dispatch);
        // Campaigns whose `exit` event cancels their planned messages at once.
        let exit_rules: Vec<ExitRule> = config
            .campaigns
            .values()
            .filter_map(|c| {
                c.exit.as_ref().map(|x| ExitRule {
                    campaign: c.name.clone(),
                    event: x.event.clone(),
                })
            })
            .collect();
        let exit_clock = clock.clone();
        tokio::spawn(async move {
            let mut last_guard: Option<std::time::Instant> = None;
            // Newest event id of the last sweep and of the one before it.
            let (mut exits_before, mut exits_last) = (0_i64, 0_i64);
            loop {
                if !exit_rules.is_empty() {
                    match exits::sweep(&guard_db, &exit_rules, exits_before, exit_clock.now_ms())
                        .await
                    {
                        Ok((n, newest)) => {
                            if n > 0 {
                                tracing::info!(
                                    cancelled = n,
                                    "exit events cancelled planned messages"
                                );
                            }
                            (exits_before, exits_last) = (exits_last, newest);
                        }
                        Err(e) => tracing::error!("exit sweep: {e}"),
                    }
                }
                if last_guard.is_none_or(|t| t.elapsed() >= REPUTATION_TICK) {
                    last_guard = Some(std::time::Instant::now());
                    match herald_storage::reputation::guard(&guard_db, &rule).await {
                        Ok(paused) => {
                            for (run, reason) in paused {
                                tracing::warn!(run, "run {run} paused: {reason}");
                                println!("run {run} paused: {reason}");
                            }
                        }
                        Err(e) => tracing::error!("reputation guard: {e}"),
                    }
                }
                if let Err(e) = scheduler.tick().await {
                    tracing::error!("scheduler: {e}");
                }
                match roller.tick().await {
                    Ok(rolled) => {
                        for r in rolled.iter().filter(|r| r.released > 0) {
                            println!(
                                "run {}: rollout released {} message(s) to `{}`",
                                r.run_id, r.released, r.chosen
                            );
                        }
                    }
                    Err(e) => tracing::error!("rollout: {e}"),
                }
                tokio::select! {
                    _ = tokio::time::sleep(TICK) => {}
                    _ = stop.wait_for(|s| *s) => break,
                }
            }
        })
    };

    // The trigger planner: events to messages, as they arrive.
    let triggers = {
        let mut planner = TriggerPlanner::new(store.clone(), clock.clone(), config.clone());
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            if planner.is_empty() {
                return;
            }
            loop {
                if let Err(e) = planner.pass().await {
                    tracing::error!("trigger planner: {e}");
                }
                tokio::select! {
                    _ = tokio::time::sleep(TRIGGER_TICK) => {}
                    _ = stop.wait_for(|s| *s) => break,
                }
            }
        })
    };

    // The workers.
    let mut workers = Vec::new();
    for (i, dispatcher) in dispatchers.into_iter().enumerate() {
        // A stop releases what waits for a permit back to `planned`.
        let mut dispatcher = dispatcher.with_halt(stop_rx.clone());
        dispatcher.metrics = Some(metrics.clone());
        let renderers = renderers.clone();
        let mut stop = stop_rx.clone();
        workers.push(tokio::spawn(async move {
            loop {
                let source: &dyn RendererSource = renderers.as_ref();
                match dispatcher.work(source, stop.clone()).await {
                    Ok(stats) => return stats,
                    Err(e) => {
                        // The database went away: what is claimed stays leased, and
                        // comes back (or ends unknown) when the lease lapses.
                        tracing::error!("worker {i}: {e}; retrying in 1s");
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                            _ = stop.wait_for(|s| *s) => return Default::default(),
                        }
                    }
                }
            }
        }));
    }
    // Listen for SIGTERM before saying we run: one in between would kill us, undrained.
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    println!(
        "herald daemon `{owner}`: {} campaign(s), {} worker(s); SIGINT or SIGTERM stops it",
        config.campaigns.len(),
        workers.len()
    );

    #[cfg(unix)]
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    #[cfg(not(unix))]
    serve::shutdown_signal().await;
    let stop_timeout =
        Duration::from_millis(config.herald.dispatch.stop_timeout.millis().max(0) as u64);
    eprintln!(
        "stopping: finishing the requests in the air, giving the rest back to `planned` (within {stop_timeout:?})"
    );
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(stop_timeout, async {
        let mut total = herald_engine::dispatch::DispatchStats::default();
        for w in workers {
            if let Ok(stats) = w.await {
                total.merge(&stats);
            }
        }
        total
    })
    .await;
    let _ = beat_stop_tx.send(true);
    let _ = heartbeat.await;
    let _ = scheduler.await;
    let _ = triggers.await;
    if let Some(server) = server {
        server.await??;
    }
    match drained {
        Ok(total) => println!(
            "stopped: {} message(s) sent by this daemon, {} given back to planned; every claimed message is recorded",
            total.accepted, total.released
        ),
        // A provider that does not answer within the stop timeout: those
        // requests stay `sending` under their lease and end `unknown` (at
        // most a horizon a worker), never resent.
        Err(_) => eprintln!(
            "stopped after [dispatch] stop_timeout ({stop_timeout:?}) with requests still unanswered: those messages end `unknown` when their lease lapses"
        ),
    }
    Ok(())
}
