//! `herald send CAMPAIGN`: checks the campaign's templates against sample
//! audience members (refusing to start on any render error), starts a run
//! now, snapshots the audience, dispatches and prints the per-arm summary.
//! With `[rollout]` only the test is sent; the summary says when the daemon
//! decides for the rest. `--test-to` is [`crate::test_to`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use comfy_table::Table;
use herald_domain::config::{Campaign, ConfigSet, Trigger};
use herald_domain::stats::{POWER, TestKind, minimum_detectable_lift};
use herald_domain::types::{MessageStatus, SuppressReason};
use herald_engine::dispatch::{Blocked, DispatchStats, Dispatcher};
use herald_engine::dry_run::DryRunShape;
use herald_engine::render::CampaignRenderer;
use herald_engine::run::PlanStats;
use herald_engine::store::{RunCounts, RunRecord, Store};
use herald_engine::{Clock, Engine, SystemClock};
use herald_engine::{plan, rollout};
use herald_storage::report::Baseline;
use herald_storage::store::SqlStore;
use herald_templates::TemplateSet;

use crate::{Cli, EXIT_FAILURE, EXIT_INVALID, Exit, app, check, output};

/// Arguments of `herald send`.
#[derive(Args, Debug)]
pub struct SendArgs {
    /// The campaign's name.
    pub campaign: String,
    /// Plan and render, send nothing, write nothing.
    #[arg(long, conflicts_with = "test_to")]
    pub dry_run: bool,
    /// Render each variant for a sample contact and send it only to these
    /// addresses (email addresses get the email, E.164 numbers the SMS); records nothing.
    #[arg(long, value_delimiter = ',', value_name = "ADDRESS,...")]
    pub test_to: Vec<String>,
    /// Tables with every cell in full (default: fitted to the terminal or to 100 columns).
    #[arg(long)]
    pub wide: bool,
}

/// What a send did.
pub struct SendSummary {
    /// The run.
    pub run: RunRecord,
    /// Planning figures.
    pub plan: PlanStats,
    /// Dispatch figures.
    pub dispatch: DispatchStats,
    /// Counts by arm and status.
    pub counts: RunCounts,
    /// `[dispatch] blocked_wait`, seconds (for the words of a blocked route).
    pub dispatch_blocked_wait_secs: i64,
    /// When planning and sending began (the workers started).
    pub dispatch_started: Instant,
    /// How long from then until the last worker ended.
    pub dispatch_wall: Duration,
    /// How long the planner ran (alongside the workers).
    pub plan_wall: Duration,
}

/// Where a send's `wall` time went, in seconds that add up to about it:
/// `start` (config, templates, the database, the template check, the run's
/// row), then the stages of the workers that sent, averaged (each worker's
/// stages add up to its own wall time; `wait for the plan` is the planner's
/// cost as the workers felt it), then `end` (the counts). The planner's own
/// time runs alongside the workers and is given apart.
pub fn stage_times(
    s: &SendSummary,
    started: Instant,
    wall: Duration,
) -> Vec<(&'static str, Duration)> {
    let start = s.dispatch_started.saturating_duration_since(started);
    let end = wall.saturating_sub(start + s.dispatch_wall);
    let mut out = vec![("start", start)];
    out.extend(s.dispatch.stages.per(s.dispatch.workers).named());
    out.push(("end", end));
    out
}

/// The line that says where a send's time went.
pub fn stage_line(s: &SendSummary, started: Instant, wall: Duration) -> String {
    let parts: Vec<String> = stage_times(s, started, wall)
        .into_iter()
        .map(|(name, d)| {
            format!(
                "{name} {:.2}s ({:.0}%)",
                d.as_secs_f64(),
                100.0 * d.as_secs_f64() / wall.as_secs_f64().max(1e-9)
            )
        })
        .collect();
    format!(
        "time: {:.2}s in all: {} (the stages of the {} worker(s) that sent, averaged; the planner ran {:.2}s alongside them)",
        wall.as_secs_f64(),
        parts.join(", "),
        s.dispatch.workers,
        s.plan_wall.as_secs_f64(),
    )
}

/// Refuses to go on when any template fails for sample audience members.
pub async fn preflight(
    config: &ConfigSet,
    templates: Arc<TemplateSet>,
    store: &SqlStore,
    campaign: &Campaign,
) -> anyhow::Result<()> {
    let mut contacts = check::sample_contacts(store, config, &templates, campaign).await?;
    if contacts.is_empty() {
        contacts.push(check::builtin_sample());
    }
    let problems = check::render_problems(config, templates, campaign, &contacts);
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("error: {p}");
        }
        eprintln!("nothing was sent: fix the template(s) and run `herald check`");
        return Err(Exit(EXIT_INVALID).into());
    }
    Ok(())
}

/// Plans and dispatches a run of `campaign` now; the whole send, for `send`
/// and `demo`. As in the daemon, `[dispatch] workers` send while the plan
/// goes on: the planner hands each page's batch due now to a free worker.
pub async fn send_campaign(
    config: Arc<ConfigSet>,
    templates: Arc<TemplateSet>,
    store: Arc<SqlStore>,
    campaign: &Campaign,
    signer: herald_domain::token::TokenSigner,
    secrets: app::Secrets<'_>,
) -> anyhow::Result<SendSummary> {
    preflight(&config, templates.clone(), &store, campaign).await?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let routes = app::routes(&config, &store, secrets)?;
    let owner = format!("herald-send-{}", std::process::id());
    let lanes = campaign_lanes(campaign);
    let (handoff, workers) = app::workers(&config, &store, &clock, &routes, &owner, Some(&lanes));
    let engine = Engine::new(store.clone(), clock.clone(), config.clone()).with_handoff(handoff);
    let run = engine
        .create_run(campaign, clock.now_ms(), "manual")
        .await?;
    let dispatch_started = Instant::now();
    let mut plan_wall = Duration::ZERO;
    // A run past planning (sent, or being sent by a daemon) is left to the daemon.
    let (plan, dispatch) = if run.state == "planning" {
        let renderer = CampaignRenderer::new(templates, campaign.clone(), &config.herald, signer);
        let progress = crate::progress::Progress::start(store.clone(), run.id);
        let sent = plan_and_send(
            &engine,
            campaign,
            &run,
            workers,
            Arc::new(renderer),
            &mut plan_wall,
        )
        .await;
        progress.finish().await;
        sent?
    } else {
        (PlanStats::default(), DispatchStats::default())
    };
    let dispatch_wall = dispatch_started.elapsed();
    let counts = store.run_counts(run.id).await?;
    Ok(SendSummary {
        run,
        plan,
        dispatch,
        counts,
        dispatch_blocked_wait_secs: config.herald.dispatch.blocked_wait.secs(),
        dispatch_started,
        dispatch_wall,
        plan_wall,
    })
}

/// The routes a campaign's messages can take: its channels and its steps'
/// (a permanent failure falls back along them).
pub fn campaign_lanes(campaign: &Campaign) -> Vec<herald_domain::types::Channel> {
    let mut lanes = campaign.channels.clone();
    for step in &campaign.steps {
        lanes.extend(step.channels.iter().flatten().copied());
    }
    lanes.sort_by_key(|c| c.as_str());
    lanes.dedup();
    lanes
}

/// Plans `run` while `workers` send it. When the plan stops early (another
/// process holds it, the run was paused or cancelled meanwhile, or planning
/// failed), the workers send what was handed to them and stop; a daemon
/// sends what is planned.
async fn plan_and_send(
    engine: &Engine,
    campaign: &Campaign,
    run: &RunRecord,
    workers: Vec<Dispatcher>,
    renderer: Arc<CampaignRenderer>,
    plan_wall: &mut Duration,
) -> anyhow::Result<(PlanStats, DispatchStats)> {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let run_id = run.id;
    let workers: Vec<_> = workers
        .into_iter()
        .map(|w| {
            let (renderer, stopped) = (renderer.clone(), stopped.clone());
            tokio::spawn(async move {
                w.drain_run_until(run_id, renderer.as_ref(), Some(&stopped))
                    .await
            })
        })
        .collect();
    let planning = Instant::now();
    let plan = engine.plan(campaign, run).await;
    *plan_wall = planning.elapsed();
    if !plan.as_ref().is_ok_and(|p| p.finished) {
        let _ = stop.send(true);
    }
    let mut dispatch = DispatchStats::default();
    let mut failed = None;
    for w in workers {
        match w.await? {
            Ok(s) => dispatch.merge(&s),
            Err(e) => failed = failed.or(Some(e)),
        }
    }
    let plan = plan?;
    match failed {
        Some(e) => Err(e.into()),
        None => Ok((plan, dispatch)),
    }
}

/// Per-arm table of a run's counts: fitted to the terminal or to 100
/// columns (long arm names cut), every cell in full when `wide`.
pub fn arm_table(campaign: &Campaign, counts: &RunCounts, wide: bool) -> Table {
    let mut arms: Vec<String> = campaign
        .variant_names()
        .into_iter()
        .map(str::to_string)
        .collect();
    arms.push(herald_engine::plan::HOLDOUT_ARM.to_string());
    // A rollout's waiting (or released) messages: in no tested variant.
    for (arm, ..) in &counts.rows {
        if rollout::is_rollout_arm(arm) && !arms.contains(arm) {
            arms.push(arm.clone());
        }
    }
    let header = [
        "arm",
        "assigned",
        "delivered",
        "sent",
        "failed",
        "unknown",
        "suppressed",
        "held out",
    ];
    let mut t = output::table(header.map(String::from).to_vec(), wide);
    for arm in arms {
        let assigned: i64 = counts.rows.iter().filter(|r| r.0 == arm).map(|r| r.3).sum();
        if assigned == 0 && arm == herald_engine::plan::HOLDOUT_ARM {
            continue;
        }
        let c = |s| counts.count(Some(&arm), s).to_string();
        t.add_row(vec![
            if wide {
                arm.clone()
            } else {
                output::cut(&arm, output::MAX_CELL_CHARS.min(40))
            },
            assigned.to_string(),
            c("delivered"),
            c("sent"),
            c("failed"),
            c("unknown"),
            c("suppressed"),
            c("held_out"),
        ]);
    }
    t
}

/// Suppression reasons over the whole run.
pub fn reasons(counts: &RunCounts) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    for (_, status, reason, n) in &counts.rows {
        if status == "suppressed" || status == "failed" {
            *out.entry(format!("{status} ({})", reason.as_deref().unwrap_or("-")))
                .or_insert(0) += n;
        }
    }
    out
}

/// Prints the summary of a send.
pub fn print_summary(campaign: &Campaign, s: &SendSummary, wide: bool) {
    let assigned: i64 = s.counts.rows.iter().map(|r| r.3).sum();
    println!(
        "run {} of `{}`: audience {assigned}{}",
        s.run.id,
        campaign.name,
        if !s.plan.finished {
            format!(" so far ({} planned here)", s.plan.members)
        } else if s.run.created && s.plan.members as i64 == assigned {
            String::new()
        } else {
            format!(
                " (an existing run, resumed; {} planned now)",
                s.plan.members
            )
        }
    );
    println!("{}", arm_table(campaign, &s.counts, wide));
    for (reason, n) in reasons(&s.counts) {
        println!("  {reason}: {n}");
    }
    if !s.plan.finished {
        println!(
            "the plan stopped before its end: the run was paused or cancelled meanwhile, or another process plans it; a daemon (`herald run`) plans the rest of a run that is planning (after a pause: `herald runs resume {}`) and sends it",
            s.run.id
        );
    }
    println!(
        "dispatched {} message(s) in {:.2}s: {:.0} messages/s; {} failed, {} unknown, {} retried",
        s.dispatch.accepted,
        s.dispatch.elapsed.as_secs_f64(),
        s.dispatch.rate(),
        s.dispatch.failed,
        s.dispatch.unknown,
        s.dispatch.retried
    );
    let waiting = s
        .counts
        .count(Some(rollout::WAITING_ARM), MessageStatus::Planned.as_str());
    let later = s.dispatch.later.saturating_sub(waiting as u64);
    if later > 0 {
        println!(
            "{later} message(s) are planned for later (quiet hours, best hour, spread): `herald run` sends them on time"
        );
    }
    if let Some(r) = campaign.rollout.as_ref().filter(|_| waiting > 0) {
        let at = s.run.now_at + r.decide_after.millis();
        println!(
            "rollout: this was the test ({:.0}% of the audience outside the holdout); {waiting} message(s) wait for the decision at {}: `herald run` picks the variant with the best {} rate then and sends it to them",
            r.test_fraction.get() * 100.0,
            chrono::DateTime::from_timestamp_millis(at).map_or_else(
                || at.to_string(),
                |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
            rollout::metric_name(r.metric),
        );
    }
}

async fn dry_run(
    config: Arc<ConfigSet>,
    store: Arc<SqlStore>,
    campaign: &Campaign,
    wide: bool,
) -> anyhow::Result<()> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let now = clock.now_ms();
    let calendar = config.herald.defaults.timezone.0.name();
    let db = store.db().clone();
    let store_db = &db;
    let (counts, shape) = Engine::new(store, clock, config)
        .dry_run(campaign, now)
        .await?;
    let total: i64 = counts.rows.iter().map(|r| r.3).sum();
    println!(
        "dry run of `{}`: audience {total}; nothing was written or sent",
        campaign.name
    );
    println!("{}", arm_table(campaign, &counts, wide));
    for (reason, n) in reasons(&counts) {
        println!("  {reason}: {n}");
    }
    print!("{}", shape_text(&shape, calendar));
    if let Some(goal) = &campaign.goal {
        let window = campaign.goal_window_ms().unwrap_or(goal.within.millis());
        let baseline = herald_storage::report::baseline_rate(
            store_db,
            &campaign.name,
            &goal.event,
            window,
            now,
        )
        .await?;
        print!(
            "{}",
            power_text(campaign, &arm_sizes(&counts), baseline.as_ref())
        );
    }
    Ok(())
}

/// Each arm's planned size as the report will count it: every message but
/// the global holdout's and a rollout's waiting rest.
fn arm_sizes(counts: &RunCounts) -> BTreeMap<String, u64> {
    let mut sizes: BTreeMap<String, u64> = BTreeMap::new();
    for (arm, status, reason, n) in &counts.rows {
        let global = status == "suppressed"
            && reason.as_deref() == Some(SuppressReason::GlobalHoldout.as_str());
        if !global && !rollout::is_rollout_arm(arm) {
            *sizes.entry(arm.clone()).or_default() += u64::try_from(*n).unwrap_or(0);
        }
    }
    sizes
}

/// The smallest control size (with `n_variant` fixed) at which `lift` is
/// detectable, if one up to a billion is.
fn control_needed(baseline: f64, n_variant: u64, lift: f64, test: TestKind) -> Option<u64> {
    smallest(|n| minimum_detectable_lift(baseline, n, n_variant, test).is_some_and(|m| m <= lift))
}

/// The smallest size of two equal arms at which `lift` is detectable, if one
/// up to a billion is.
fn arms_needed(baseline: f64, lift: f64, test: TestKind) -> Option<u64> {
    smallest(|n| minimum_detectable_lift(baseline, n, n, test).is_some_and(|m| m <= lift))
}

/// The smallest n in 1..=1e9 for which `detects` holds, `detects` being
/// monotone (more contacts never detect less).
fn smallest(detects: impl Fn(u64) -> bool) -> Option<u64> {
    let mut hi = 2;
    while !detects(hi) {
        hi *= 2;
        if hi > 1_000_000_000 {
            return None;
        }
    }
    let mut lo = hi / 2;
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if detects(mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Some(hi)
}

/// Power before the send: for each comparison the report will make on the
/// goal, the smallest relative lift detectable at 80% power and 5% two-sided
/// (herald's delta-method test; the sequential one with `[results]
/// sequential`), and a warning when `[results] expected_lift` is smaller.
pub fn power_text(
    campaign: &Campaign,
    sizes: &BTreeMap<String, u64>,
    baseline: Option<&Baseline>,
) -> String {
    let results = campaign.results.as_ref();
    let test = results.map_or(TestKind::FixedHorizon, |r| r.test());
    let kind = match test {
        TestKind::FixedHorizon => "fixed-horizon",
        TestKind::Sequential { .. } => "sequential",
    };
    let mut out = format!(
        "power ({:.0}%, 5% two-sided, {kind} test of the relative lift in conversions):\n",
        POWER * 100.0
    );
    let Some(baseline) = baseline else {
        out.push_str(
            "  no baseline conversion rate yet (no conversions in previous runs or recent \
             events), so no minimum detectable lift\n",
        );
        return out;
    };
    out.push_str(&format!(
        "  baseline conversion {:.2}% ({})\n",
        baseline.rate * 100.0,
        baseline.from
    ));
    let size = |arm: &str| sizes.get(arm).copied().unwrap_or(0);
    let variants = campaign.variant_names();
    let holdout = plan::HOLDOUT_ARM;
    let control = if size(holdout) > 0 {
        Some(holdout)
    } else {
        variants.first().copied()
    };
    let Some(control) = control else {
        return out;
    };
    let expected = results.and_then(|r| r.expected_lift);
    // One comparison's line, and its warning (`too_small(lift, nv)`) when
    // `expected_lift` is out of its reach.
    let mut compare = |variant: &str, other: &str, too_small: &dyn Fn(f64, u64) -> String| {
        let (no, nv) = (size(other), size(variant));
        let mde = minimum_detectable_lift(baseline.rate, no, nv, test);
        let words = match mde {
            Some(m) => format!("+{:.1}%", m * 100.0),
            None => "none that is possible (the arms are too small)".to_string(),
        };
        out.push_str(&format!(
            "  {variant} ({nv}) vs {other} ({no}): minimum detectable lift {words}\n"
        ));
        if let Some(lift) = expected
            && mde.is_none_or(|m| m > lift)
        {
            out.push_str(&too_small(lift, nv));
        }
    };
    for variant in variants.iter().filter(|v| **v != control) {
        compare(variant, control, &|lift, nv| {
            let fix = control_needed(baseline.rate, nv, lift, test)
                .map(|n| format!("; a {control} of about {n} contacts would"))
                .unwrap_or_default();
            format!(
                "  warning: the {control} is too small to detect the expected +{:.1}% lift \
                 (`[results] expected_lift`) of {variant}{fix}\n",
                lift * 100.0
            )
        });
    }
    // With a holdout the report also compares each variant with the first:
    // which of them is better is a question of its own, with its own power.
    if control == holdout
        && let Some((first, rest)) = variants.split_first()
    {
        for variant in rest {
            compare(variant, first, &|lift, _| {
                let fix = arms_needed(baseline.rate, lift, test)
                    .map(|n| format!("; about {n} contacts in each would"))
                    .unwrap_or_default();
                format!(
                    "  warning: {variant} and {first} are too small to tell apart by the \
                     expected +{:.1}% lift (`[results] expected_lift`){fix}\n",
                    lift * 100.0
                )
            });
        }
    }
    out
}

/// The dry run's channel mix, send times, deferrals and cap suppressions.
pub fn shape_text(shape: &DryRunShape, calendar: &str) -> String {
    let mut out = String::from("channels per arm (messages to send):\n");
    let mut arms: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for ((arm, channel), n) in &shape.channels {
        arms.entry(arm).or_default().push(format!("{channel} {n}"));
    }
    if arms.is_empty() {
        out.push_str("  none\n");
    }
    for (arm, parts) in arms {
        out.push_str(&format!("  {arm}: {}\n", parts.join(", ")));
    }
    out.push_str("planned send times by the recipient's local hour:\n");
    let hours: Vec<String> = shape
        .by_local_hour
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(h, n)| format!("{h:02}:00 {n}"))
        .collect();
    out.push_str(&format!(
        "  {}\n",
        if hours.is_empty() {
            "none".to_string()
        } else {
            hours.join(", ")
        }
    ));
    out.push_str(&format!("planned send times by day ({calendar}):\n"));
    if shape.by_day.is_empty() {
        out.push_str("  none\n");
    }
    for (day, n) in &shape.by_day {
        out.push_str(&format!("  {day}: {n}\n"));
    }
    out.push_str(&format!(
        "deferred by quiet hours: {}; suppressed by frequency caps: {}\n",
        shape.quiet_hours_deferred, shape.cap_suppressed
    ));
    out
}

/// Runs the send command.
pub async fn run(cli: &Cli, args: &SendArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let config = Arc::new(app::load_config(cli)?);
    let campaign = config
        .campaigns
        .get(&args.campaign)
        .cloned()
        .ok_or_else(|| {
            let known: Vec<&str> = config.campaigns.keys().map(String::as_str).collect();
            eprintln!(
                "error: no campaign named `{}` in {}/campaigns (known: {})",
                args.campaign,
                cli.config.display(),
                known.join(", ")
            );
            Exit(EXIT_INVALID)
        })?;
    if let Some(trigger) = &campaign.trigger
        && args.test_to.is_empty()
    {
        // A triggered campaign has no audience snapshot to send: its messages
        // follow events or segment entries, which only the daemon watches.
        let by = match trigger {
            Trigger::Event { event, .. } => format!("the event `{event}`"),
            Trigger::Enters { segment, .. } => format!("entering the segment `{segment}`"),
        };
        eprintln!(
            "error: `{}` is triggered by {by}: `herald run` sends it as that happens; \
             `herald send` sends scheduled and manual campaigns only. To see its \
             messages, use `herald send {} --test-to ADDRESS` or `herald preview {}`.",
            campaign.name, campaign.name, campaign.name
        );
        return Err(Exit(EXIT_INVALID).into());
    }
    let templates = Arc::new(app::load_templates(cli, &config)?);
    let store = Arc::new(app::store(cli, &config).await?);
    if args.dry_run {
        preflight(&config, templates, &store, &campaign).await?;
        return dry_run(config, store, &campaign, args.wide).await;
    }
    let signer = app::signer(&config)?;
    if !args.test_to.is_empty() {
        return crate::test_to::run(config, templates, store, &campaign, signer, &args.test_to)
            .await;
    }
    let summary = send_campaign(
        config,
        templates,
        store,
        &campaign,
        signer,
        &app::env_secrets,
    )
    .await?;
    print_summary(&campaign, &summary, args.wide);
    println!("{}", stage_line(&summary, started, started.elapsed()));
    if let Some(blocked) = &summary.dispatch.blocked {
        // The provider refused the account (or a platform's credential):
        // nothing failed, nothing fell back; the messages wait, planned, for
        // the credential to be fixed.
        eprintln!(
            "{}",
            blocked_message(blocked, summary.dispatch_blocked_wait_secs, &campaign.name)
        );
        return Err(Exit(EXIT_FAILURE).into());
    }
    Ok(())
}

/// What `herald send` says when it ends on a block: the provider's words
/// (`blocked: ...`), then what was refused and what to fix. A push
/// sub-route's block is not the sender's account but one platform's
/// credential in the Firebase project, refused for those tokens only: the
/// message names the sub-route, the platform and that credential.
fn blocked_message(blocked: &Blocked, wait_secs: i64, campaign: &str) -> String {
    let then = format!("then `herald run` (or `herald send {campaign}` again) sends them");
    match blocked.platform {
        None => format!(
            "error: blocked: {blocked}\nthe provider refused the sender's account for {wait_secs}s of probing ([dispatch] blocked_wait); the run's messages stay planned: fix the credential, {then}"
        ),
        Some(platform) => {
            let (tokens, credential) = (platform.tokens(), platform.credential());
            format!(
                "error: blocked: {blocked}\nFCM refused the run's pushes to {tokens} (sub-route {}) for {wait_secs}s of probing ([dispatch] blocked_wait): {credential} in the Firebase project is wrong, not the FCM account, and the other pushes went on. The run's messages not sent yet stay planned, those to {tokens} among them: fix {credential} in the Firebase console (Project settings > Cloud Messaging), {then}",
                blocked.route
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sub_routes_block_names_its_platform_and_credential_not_the_account() {
        use herald_engine::platform::PushPlatform;
        let route = Blocked {
            route: "sms".into(),
            platform: None,
            reason: "authentication failed (Twilio 20003: Authenticate)".into(),
        };
        let said = blocked_message(&route, 60, "notice");
        assert!(said.starts_with("error: blocked: sms: authentication failed (Twilio 20003"));
        assert!(said.contains("the provider refused the sender's account for 60s"));
        let platform = PushPlatform::Web;
        let sub = Blocked {
            route: platform.route().into(),
            platform: Some(platform),
            reason: platform.reason("FCM THIRD_PARTY_AUTH_ERROR: HTTP 401"),
        };
        let said = blocked_message(&sub, 60, "notice");
        assert!(
            said.starts_with("error: blocked: push:web: authentication failed for web tokens"),
            "{said}"
        );
        assert!(
            said.contains(
                "FCM refused the run's pushes to web tokens (sub-route push:web) for 60s"
            ),
            "{said}"
        );
        assert!(
            said.contains("fix the web push credential in the Firebase console"),
            "{said}"
        );
        assert!(!said.contains("sender's account"), "{said}");
    }

    fn campaign(results: &str) -> Campaign {
        let src = format!(
            "name = \"p\"\nwhere = 'attrs.x == 1'\nchannels = [\"email\"]\n\
             goal = {{ event = \"order_placed\", within = \"3d\" }}\nholdout = 0.1\n{results}\n\
             [[variants]]\nname = \"a\"\nemail = {{ subject = \"s\", template = \"a.email.hbs\" }}\n\
             [[variants]]\nname = \"b\"\nemail = {{ subject = \"s\", template = \"b.email.hbs\" }}\n"
        );
        Campaign::parse("p.toml", &src).unwrap()
    }

    fn sizes(holdout: u64, a: u64, b: u64) -> BTreeMap<String, u64> {
        [("holdout", holdout), ("a", a), ("b", b)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect()
    }

    fn baseline() -> Baseline {
        Baseline {
            rate: 0.05,
            contacts: 20_000,
            from: "1000 of 20000 contacts of its previous runs converted".into(),
        }
    }

    #[test]
    fn the_dry_run_names_each_comparisons_minimum_detectable_lift() {
        let text = power_text(
            &campaign(""),
            &sizes(1_000, 4_500, 4_500),
            Some(&baseline()),
        );
        let want = minimum_detectable_lift(0.05, 1_000, 4_500, TestKind::FixedHorizon).unwrap();
        assert!(text.contains("fixed-horizon"), "{text}");
        assert!(text.contains("baseline conversion 5.00%"), "{text}");
        assert!(
            text.contains(&format!(
                "a (4500) vs holdout (1000): minimum detectable lift +{:.1}%",
                want * 100.0
            )),
            "{text}"
        );
        assert!(
            !text.contains("warning"),
            "no expected lift, no warning: {text}"
        );
        // With a holdout, the variants are also compared with each other.
        let between = minimum_detectable_lift(0.05, 4_500, 3_000, TestKind::FixedHorizon).unwrap();
        let uneven = power_text(
            &campaign(""),
            &sizes(1_000, 4_500, 3_000),
            Some(&baseline()),
        );
        assert!(
            uneven.contains(&format!(
                "b (3000) vs a (4500): minimum detectable lift +{:.1}%",
                between * 100.0
            )),
            "{uneven}"
        );
        assert!(!uneven.contains("a (4500) vs b"), "{uneven}");
        let seq = power_text(
            &campaign("[results]\nsequential = true\n"),
            &sizes(1_000, 4_500, 4_500),
            Some(&baseline()),
        );
        assert!(seq.contains("sequential test"), "{seq}");
    }

    #[test]
    fn a_holdout_too_small_for_the_expected_lift_is_warned_with_the_size_that_would_do() {
        let c = campaign("[results]\nexpected_lift = 0.1\n");
        let text = power_text(&c, &sizes(1_000, 40_000, 40_000), Some(&baseline()));
        assert!(
            text.contains("warning: the holdout is too small to detect the expected +10.0% lift"),
            "{text}"
        );
        let needed = control_needed(0.05, 40_000, 0.1, TestKind::FixedHorizon).unwrap();
        assert!(text.contains(&format!("about {needed} contacts")), "{text}");
        let mde = minimum_detectable_lift(0.05, needed, 40_000, TestKind::FixedHorizon).unwrap();
        let short = minimum_detectable_lift(0.05, needed - 1, 40_000, TestKind::FixedHorizon);
        assert!(
            mde <= 0.1 && short.is_none_or(|m| m > 0.1),
            "{mde} {short:?}"
        );
        // Variants too small for any holdout: warned, with no size that would do.
        let hopeless = power_text(&c, &sizes(1_000, 4_500, 4_500), Some(&baseline()));
        assert!(
            hopeless.contains("warning: the holdout is too small"),
            "{hopeless}"
        );
        assert!(control_needed(0.05, 4_500, 0.1, TestKind::FixedHorizon).is_none());
        assert!(!hopeless.contains("a holdout of about"), "{hopeless}");
        // The variants between them: too small for +10%, with the size that would do.
        assert!(!text.contains("b and a are too small"), "{text}");
        assert!(
            hopeless.contains(
                "warning: b and a are too small to tell apart by the expected +10.0% lift"
            ),
            "{hopeless}"
        );
        let each = arms_needed(0.05, 0.1, TestKind::FixedHorizon).unwrap();
        assert!(
            hopeless.contains(&format!("about {each} contacts in each")),
            "{hopeless}"
        );
        let at = minimum_detectable_lift(0.05, each, each, TestKind::FixedHorizon).unwrap();
        let below = minimum_detectable_lift(0.05, each - 1, each - 1, TestKind::FixedHorizon);
        assert!(at <= 0.1 && below.is_none_or(|m| m > 0.1), "{at} {below:?}");
        let big = power_text(&c, &sizes(200_000, 200_000, 200_000), Some(&baseline()));
        assert!(!big.contains("warning"), "{big}");
        let none = power_text(&c, &sizes(1_000, 4_500, 4_500), None);
        assert!(none.contains("no baseline"), "{none}");
    }
}
