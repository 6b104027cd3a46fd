//! Starting a run: record the campaign, create the run keyed by (campaign,
//! scheduled instant), snapshot its audience page by page into message rows
//! (resuming where a crash left off), then hand it to the dispatcher.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use herald_domain::config::{Campaign, ConfigSet, SendTime, Trigger};
use tracing::Instrument;

use crate::clock::Clock;
use crate::dry_run::DryRunShape;
use crate::handoff::Handoff;
use crate::plan::{PlanContext, address_keys, decide, suppress_duplicate_addresses};
use crate::series::Series;
use crate::store::{
    CampaignRecord, Handed, PersonalisationRequest, PlannedMessage, PrePeriodSpec, RunCounts,
    RunRecord, Scope, Store, StoreError, StoreResult,
};

/// Audience members read and planned per page.
pub const PLAN_PAGE: u32 = 2000;

/// The smallest page with a hand-off: smaller batches still plan in pages this large.
pub const MIN_HANDOFF_PAGE: u32 = 250;

/// How long a planning lease holds without renewal. A heartbeat renews it
/// [`PLAN_HEARTBEATS`] times a lease whatever the plan is doing (reading a
/// slow page, waiting for a free worker), so it can be short: a planner that
/// died is taken over this long after its last heartbeat.
pub const PLAN_LEASE_MS: i64 = 5_000;

/// Heartbeats a planning lease: several, so one late beat (a busy core, a
/// slow commit) does not lose it.
pub const PLAN_HEARTBEATS: i64 = 5;

/// The planner renews its lease after this long (ms; a quarter lease if shorter)...
const RENEW_MS: i64 = 1_000;

/// ...or after this many pages, whichever comes first (a clock that stands
/// still in a test still sees a pause).
pub const RENEW_PAGES: u32 = 8;

/// A plan refreshes the database's statistics once it has written this many
/// messages, and again at its end (PostgreSQL's `ANALYZE messages`, a sample
/// of the table: a fraction of a second); smaller plans do not change the picture.
pub const REFRESH_STATISTICS_AFTER: u64 = 10_000;

/// Why an engine operation failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The campaign does not exist in the config.
    #[error("no campaign named `{0}` in config/campaigns/")]
    UnknownCampaign(String),
}

/// One debug event a message written by a page, inside the run's and the
/// page's spans: the first line of a message's story. Its id is the
/// database's, given as the page is written, so the event names the
/// message by run, contact and step; the `claimed` event joins those to
/// the id. Nothing is done unless debug is on for the engine.
fn log_planned(rows: &[PlannedMessage]) {
    if !tracing::enabled!(tracing::Level::DEBUG) {
        return;
    }
    for m in rows {
        tracing::debug!(
            contact = m.contact_id,
            step = m.step,
            arm = %m.arm,
            channel = m.channel.map(|c| c.as_str()),
            status = m.status.as_str(),
            reason = m.reason.as_deref(),
            send_at = m.send_at,
            "planned"
        );
    }
}

/// Figures of one planning pass.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PlanStats {
    /// Audience members planned by this pass (a resumed plan counts only the rest).
    pub members: u64,
    /// Whether this pass finished the plan (false: another planner holds or took it).
    pub finished: bool,
}

/// Plans runs of the configured campaigns.
pub struct Engine {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    config: Arc<ConfigSet>,
    owner: String,
    /// How long a planning lease holds without renewal (renewed by a
    /// heartbeat every fifth of it, and every second or so of writing).
    pub plan_lease_ms: i64,
    /// Where pages' due messages go straight to this process's workers, if anywhere.
    handoff: Option<Arc<Handoff>>,
}

impl Engine {
    /// An engine over `store`, reading time from `clock`; its planning leases are
    /// named after this process.
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>, config: Arc<ConfigSet>) -> Self {
        Self::with_owner(
            store,
            clock,
            config,
            format!("herald-{}", std::process::id()),
        )
    }

    /// An engine whose leases are named `owner` (one name per daemon).
    pub fn with_owner(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        config: Arc<ConfigSet>,
        owner: String,
    ) -> Self {
        Self {
            store,
            clock,
            config,
            owner,
            plan_lease_ms: PLAN_LEASE_MS,
            handoff: None,
        }
    }

    /// The configuration this engine plans with.
    pub fn config(&self) -> &ConfigSet {
        &self.config
    }

    /// The campaign named `name`.
    pub fn campaign(&self, name: &str) -> Result<&Campaign, EngineError> {
        self.config
            .campaigns
            .get(name)
            .ok_or_else(|| EngineError::UnknownCampaign(name.to_string()))
    }

    /// Hands each page's first batch due now straight to this process's
    /// workers through `handoff`, when one of them is free.
    pub fn with_handoff(mut self, handoff: Arc<Handoff>) -> Self {
        self.handoff = Some(handoff);
        self
    }

    /// Audience members a page: with a hand-off, about a batch, since a page
    /// hands one batch at most (its rows are written in one statement, so a
    /// resumed plan starts after the last contact written).
    fn page_size(&self) -> u32 {
        match &self.handoff {
            Some(h) => (h.batch as u32).clamp(MIN_HANDOFF_PAGE, PLAN_PAGE),
            None => PLAN_PAGE,
        }
    }

    /// Writes one page of `run`: with a hand-off whose slot frees in time,
    /// its first batch due now is written as sent, in a flight, and handed to a worker.
    async fn write_page(&self, run: &RunRecord, rows: &[PlannedMessage]) -> StoreResult<()> {
        let now = self.clock.now_ms();
        if let Some(h) = &self.handoff {
            let picked = h.pick(rows, now);
            // Reserved before the write: a batch written in a flight always has a worker to go to.
            let permit = if picked.contains(&true) {
                h.reserve().await
            } else {
                None
            };
            if let Some(permit) = permit {
                let handed = Handed {
                    rows: &picked,
                    delivered_on_accept: &h.delivered_on_accept,
                    owner: &h.owner,
                    until: now + h.lease.as_millis() as i64,
                };
                let claimed = self
                    .store
                    .insert_handed(run.id, run.campaign_id, rows, handed, now)
                    .await?;
                if !claimed.is_empty() {
                    if tracing::enabled!(tracing::Level::DEBUG) {
                        for m in &claimed {
                            tracing::debug!(
                                message_id = m.id,
                                contact = m.contact_id,
                                step = m.step,
                                "handed to a worker as it was written"
                            );
                        }
                    }
                    permit.send(claimed);
                }
                return Ok(());
            }
        }
        self.store
            .insert_planned(run.id, run.campaign_id, rows, now)
            .await
    }

    /// Creates (or finds) the run of `campaign` at `scheduled_at` (ms) and plans it fully.
    pub async fn start_run(
        &self,
        campaign: &Campaign,
        scheduled_at: i64,
        origin: &str,
    ) -> Result<(RunRecord, PlanStats), EngineError> {
        let run = self.create_run(campaign, scheduled_at, origin).await?;
        let stats = if run.state == "planning" {
            self.plan(campaign, &run).await?
        } else {
            PlanStats::default()
        };
        Ok((run, stats))
    }

    /// Creates (or finds) the run of `campaign` at `scheduled_at` (ms), not yet
    /// planned: workers may wait on it while [`Engine::plan`] writes its pages.
    pub async fn create_run(
        &self,
        campaign: &Campaign,
        scheduled_at: i64,
        origin: &str,
    ) -> Result<RunRecord, EngineError> {
        let now = self.clock.now_ms();
        let record = CampaignRecord::of(campaign);
        let campaign_id = self.store.upsert_campaign(&record, now).await?;
        Ok(self
            .store
            .create_run(campaign_id, scheduled_at, now, origin, &record.fingerprint)
            .await?)
    }

    /// Snapshots the audience of `run` into message rows, from where planning
    /// last stopped. Holds the run's planning lease, renewed every second or so, so two
    /// daemons never plan one run at once; returns `None` when another holds it.
    pub async fn plan(
        &self,
        campaign: &Campaign,
        run: &RunRecord,
    ) -> Result<PlanStats, EngineError> {
        // The run's span: every page, and every message planned, carries its id.
        let span = tracing::info_span!("run", run = run.id, campaign = %campaign.name);
        self.plan_in(campaign, run).instrument(span).await
    }

    async fn plan_in(
        &self,
        campaign: &Campaign,
        run: &RunRecord,
    ) -> Result<PlanStats, EngineError> {
        let lease = || self.clock.now_ms() + self.plan_lease_ms;
        let claimed_at = self.clock.now_ms();
        if !self
            .store
            .claim_planning(run.id, &self.owner, lease(), claimed_at)
            .await?
        {
            return Ok(PlanStats::default());
        }
        let scope = match &campaign.trigger {
            Some(Trigger::Enters { segment, .. }) => {
                // Who entered the segment since the previous pass (idempotent per run).
                let filter = &self
                    .config
                    .segments
                    .get(segment)
                    .ok_or_else(|| {
                        EngineError::UnknownCampaign(format!(
                            "{} (segment `{segment}`)",
                            campaign.name
                        ))
                    })?
                    .filter;
                let pass = self
                    .store
                    .entry_pass(run.campaign_id, run.id, filter, run.now_at)
                    .await?;
                tracing::info!(campaign = %campaign.name, run = run.id, members = pass.members, entrants = pass.entrants, leavers = pass.leavers, baseline = pass.baseline, "segment-entry pass");
                Scope::Entrants {
                    campaign_id: run.campaign_id,
                    run_id: run.id,
                }
            }
            _ => Scope::All,
        };
        let first = self.store.last_planned_contact(run.id).await?;
        let mut stats = PlanStats::default();
        // Reading and deciding the next page overlaps writing this one: two
        // connections, two cores. One page waits at most, so memory stays
        // two pages whatever the audience; pages are written in order, so a
        // plan resumes after the last contact written.
        let (tx, rx) = tokio::sync::mpsc::channel::<Vec<PlannedMessage>>(1);
        let read = async move {
            let mut after = first;
            while let Some((last, rows)) = self
                .decide_page(campaign, &scope, run.id, run.now_at, after)
                .await?
            {
                after = last;
                if tx.send(rows).await.is_err() {
                    break; // the writer stopped: its lease lapsed
                }
            }
            Ok::<(), EngineError>(())
        };
        // The heartbeat: the lease is renewed on time even while no page is
        // written (a slow read, a wait for a free worker), so a short lease
        // lapses only when this planner is gone. A lost lease (paused,
        // cancelled, taken over) stops the writer at its next page.
        let lost = AtomicBool::new(false);
        let heartbeat = self.planning_heartbeat(run.id, &lost);
        let write = async {
            // Owned here: when the writer stops early (paused, cancelled, lease
            // lost), the channel closes and the reader stops too, instead of
            // waiting forever to hand over its next page.
            let mut rx = rx;
            let mut refreshed = false;
            // From the claim: a long segment-entry pass is followed by a renewal.
            let (mut renewed_at, mut pages) = (claimed_at, 0u32);
            // Pages written by this pass, for the page span.
            let mut page_no = 0u64;
            let renew_ms = (self.plan_lease_ms / 4).clamp(1, RENEW_MS);
            while let Some(mut rows) = rx.recv().await {
                // The lease is renewed every second or every few pages, not
                // every page: a write (a commit) less a page. A pause or a
                // cancel stops the plan at the next renewal; until then, a
                // paused run's pages are written `planned` (not handed over)
                // and a cancelled run's are not written.
                if lost.load(Ordering::Relaxed) {
                    return Ok(false);
                }
                let now = self.clock.now_ms();
                pages += 1;
                if pages >= RENEW_PAGES || now - renewed_at >= renew_ms || now < renewed_at {
                    if !self
                        .store
                        .claim_planning(run.id, &self.owner, lease(), now)
                        .await?
                    {
                        // Paused, cancelled, or our lease lapsed and another daemon took over.
                        return Ok(false);
                    }
                    (renewed_at, pages) = (now, 0);
                }
                // Each page is claimable once written, so its duplicate
                // addresses are decided now, against the pages before it.
                page_no += 1;
                let page = tracing::debug_span!(
                    "page",
                    page = page_no,
                    first_contact = rows.first().map_or(0, |m| m.contact_id),
                    rows = rows.len()
                );
                async {
                    let keys = address_keys(&rows);
                    if !keys.is_empty() {
                        let first = rows.iter().map(|m| m.contact_id).min().unwrap_or(0);
                        let taken = self.store.addresses_taken(run.id, first, &keys).await?;
                        suppress_duplicate_addresses(&mut rows, &taken);
                    }
                    self.write_page(run, &rows).await?;
                    log_planned(&rows);
                    Ok::<(), EngineError>(())
                }
                .instrument(page)
                .await?;
                stats.members += rows.len() as u64;
                if !refreshed && stats.members >= REFRESH_STATISTICS_AFTER {
                    // Workers claim while the plan goes on: they need it now.
                    self.store.refresh_message_statistics().await?;
                    refreshed = true;
                }
            }
            Ok::<bool, EngineError>(true)
        };
        let (read, write) = tokio::select! {
            done = async { tokio::join!(read, write) } => done,
            never = heartbeat => match never {},
        };
        if !write? {
            return Ok(stats);
        }
        read?;
        self.store.finish_planning(run.id).await?;
        if stats.members >= REFRESH_STATISTICS_AFTER {
            self.store.refresh_message_statistics().await?;
        }
        stats.finished = true;
        Ok(stats)
    }

    /// Renews this planner's lease on `run_id` every fifth of
    /// [`Engine::plan_lease_ms`] for as long as it is polled; once the lease
    /// is lost (the run was paused or cancelled, or another planner took it
    /// over) sets `lost` and renews no more. Never ends: [`Engine::plan`]
    /// drops it when the plan stops.
    pub async fn planning_heartbeat(&self, run_id: i64, lost: &AtomicBool) -> Infallible {
        let every =
            std::time::Duration::from_millis((self.plan_lease_ms / PLAN_HEARTBEATS).max(1) as u64);
        loop {
            tokio::time::sleep(every).await;
            let now = self.clock.now_ms();
            match self
                .store
                .claim_planning(run_id, &self.owner, now + self.plan_lease_ms, now)
                .await
            {
                Ok(true) => {}
                Ok(false) => {
                    lost.store(true, Ordering::Relaxed);
                    break;
                }
                // The next beat tries again; the writer's own renewal fails
                // too if the database stays away.
                Err(e) => tracing::warn!(run = run_id, "planning heartbeat: {e}"),
            }
        }
        std::future::pending().await
    }

    /// What a run of `campaign` at `now` (ms) would plan, counted by arm, status
    /// and reason, without writing anything (`herald send --dry-run`).
    pub async fn dry_run(
        &self,
        campaign: &Campaign,
        now: i64,
    ) -> Result<(RunCounts, DryRunShape), EngineError> {
        let mut counts: BTreeMap<(String, String, Option<String>), i64> = BTreeMap::new();
        let mut shape = DryRunShape::default();
        let ctx = PlanContext::new(campaign, &self.config.herald, 0, now);
        let calendar = self.config.herald.defaults.timezone.0;
        let mut after = 0;
        let mut zones: HashMap<i64, Option<String>> = HashMap::new();
        while let Some((last, rows)) = self
            .decide_page_in(campaign, &Scope::All, 0, now, after, Some(&mut zones))
            .await?
        {
            after = last;
            for p in rows {
                let local = ctx.tz_of(zones.get(&p.contact_id).and_then(|z| z.as_deref()));
                shape.add(&p, local, calendar);
                *counts
                    .entry((p.arm, p.status.as_str().to_string(), p.reason))
                    .or_insert(0) += 1;
            }
        }
        let counts = RunCounts {
            rows: counts
                .into_iter()
                .map(|((a, s, r), n)| (a, s, r, n))
                .collect(),
        };
        Ok((counts, shape))
    }

    /// One keyset page of the audience after contact `after`, decided; `None` past the end.
    async fn decide_page(
        &self,
        campaign: &Campaign,
        scope: &Scope,
        run_id: i64,
        now: i64,
        after: i64,
    ) -> Result<Option<(i64, Vec<PlannedMessage>)>, EngineError> {
        let page = self
            .decide_page_in(campaign, scope, run_id, now, after, None)
            .await?;
        let (Some((_, rows)), Some(spec)) = (&page, PrePeriodSpec::of(campaign, now)) else {
            return Ok(page);
        };
        // CUPED's covariates, read with the page (on the reader's connection,
        // while the writer writes the page before) and stored with it: the
        // window ends at the audience snapshot, before anything is sent.
        let ids: Vec<i64> = rows
            .iter()
            .filter(|m| m.step == 0)
            .map(|m| m.contact_id)
            .collect();
        let found = self.store.pre_period(&ids, &spec).await?;
        let mut page = page;
        if let Some((_, rows)) = &mut page {
            for m in rows.iter_mut().filter(|m| m.step == 0) {
                m.pre = spec.covariates(found.get(&m.contact_id).copied());
            }
        }
        Ok(page)
    }

    /// [`Self::decide_page`], noting each member's time zone in `zones` (the dry run's hours).
    async fn decide_page_in(
        &self,
        campaign: &Campaign,
        scope: &Scope,
        run_id: i64,
        now: i64,
        after: i64,
        zones: Option<&mut HashMap<i64, Option<String>>>,
    ) -> Result<Option<(i64, Vec<PlannedMessage>)>, EngineError> {
        let ctx = PlanContext::new(campaign, &self.config.herald, run_id, now);
        let page = self
            .store
            .audience_in(
                self.config.audience_of(campaign),
                now,
                campaign.topic.as_deref(),
                scope,
                after,
                self.page_size(),
                ctx.history_since(),
            )
            .await?;
        let Some(last) = page.last().map(|m| m.contact_id) else {
            return Ok(None);
        };
        if let Some(zones) = zones {
            zones.clear();
            zones.extend(page.iter().map(|m| (m.contact_id, m.timezone.clone())));
        }
        let mut page = page;
        if campaign.send_time == SendTime::BestHour {
            // Each member's most active local hour, in one batch for the page.
            let ids: Vec<i64> = page.iter().map(|m| m.contact_id).collect();
            let request = PersonalisationRequest::best_hour(now, &self.config.herald);
            let hours: HashMap<i64, Option<u8>> = self
                .store
                .contacts(&ids, &request)
                .await?
                .into_iter()
                .map(|c| (c.id, c.personal.best_hour))
                .collect();
            for m in &mut page {
                m.best_hour = hours.get(&m.contact_id).copied().flatten();
            }
        }
        let rows = if campaign.steps.is_empty() {
            page.iter().map(|m| decide(&ctx, m)).collect()
        } else {
            let series = Series::of(campaign);
            page.iter()
                .flat_map(|m| series.decide(&self.config.herald, run_id, now, m))
                .collect()
        };
        Ok(Some((last, rows)))
    }
}
