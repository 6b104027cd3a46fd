//! Event-triggered campaigns (`trigger = { event = "...", delay, where }`):
//! the daemon's trigger planner reads new events in id order and plans, for
//! each matching event, the campaign's messages (every step of a series)
//! `delay` after it, keyed by the event so that planning it twice inserts
//! nothing. The `where` and the audience are evaluated as of just before the
//! events (a returning user's own `app_open` must not make them "active"
//! before the trigger looks). The gate just before a send cancels a message
//! whose contact did the `exit` event since its trigger, or who left the
//! audience.
//!
//! Id order is not commit order when several writers insert events at once
//! (PostgreSQL hands out ids before commit), so the durable cursor trails the
//! newest event by [`SETTLE_MS`]: a restart re-reads those seconds, and a
//! periodic re-read catches an event committed late below the newest one.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use herald_domain::config::{Campaign, ConfigSet, SendTime, Trigger};
use herald_domain::segment::Expr;
use herald_domain::types::MessageStatus;

use crate::clock::Clock;
use crate::dispatch::Gate;
use crate::plan::PlanContext;
use crate::run::EngineError;
use crate::series::Series;
use crate::store::{
    AudienceMember, CampaignRecord, ClaimedMessage, PastMessage, PersonalisationRequest,
    PrePeriodSpec, RunRecord, Scope, Store, StoreResult, TriggerEvent, TriggeredMessage,
};

/// Events read per query.
pub const EVENT_PAGE: u32 = 5000;
/// How long after its arrival an event is assumed to be committed in id order.
pub const SETTLE_MS: i64 = 2_000;
/// How often the events between the durable cursor and the newest are re-read.
pub const RESCAN_MS: i64 = 1_000;
/// An event this much older than its arrival (a backfill) triggers nothing.
pub const STALE_MS: i64 = 86_400_000;
/// Events within this span share one evaluation of the filter (at the earliest, minus 1 ms).
const BUCKET_MS: i64 = 60_000;

/// What a pass did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TriggerReport {
    /// Triggering events read for the first time.
    pub events: u64,
    /// Messages inserted.
    pub planned: u64,
}

/// One event-triggered campaign, ready to plan.
struct Prepared {
    campaign: Campaign,
    event: String,
    delay_ms: i64,
    /// The audience and the trigger's `where`.
    filter: Expr,
    series: Series,
    run: Option<RunRecord>,
    /// Every event up to this id is planned (durable).
    settled: Option<i64>,
    /// The newest event id read.
    newest: i64,
    /// Events above `settled` already planned (this process).
    handled: BTreeSet<i64>,
    last_rescan: i64,
}

/// Plans the messages of event-triggered campaigns.
pub struct TriggerPlanner {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    config: Arc<ConfigSet>,
    campaigns: Vec<Prepared>,
}

impl TriggerPlanner {
    /// A planner for the event-triggered campaigns of `config`.
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>, config: Arc<ConfigSet>) -> Self {
        let campaigns = config
            .campaigns
            .values()
            .filter_map(|c| match &c.trigger {
                Some(Trigger::Event {
                    event,
                    delay,
                    filter,
                }) => {
                    let audience = config.audience_of(c).clone();
                    let filter = match filter {
                        Some(w) => Expr::And {
                            lhs: Box::new(audience),
                            rhs: Box::new(w.clone()),
                            span: 0..0,
                        },
                        None => audience,
                    };
                    Some(Prepared {
                        campaign: c.clone(),
                        event: event.clone(),
                        delay_ms: delay.millis(),
                        filter,
                        series: Series::of(c),
                        run: None,
                        settled: None,
                        newest: 0,
                        handled: BTreeSet::new(),
                        last_rescan: i64::MIN,
                    })
                }
                _ => None,
            })
            .collect();
        Self {
            store,
            clock,
            config,
            campaigns,
        }
    }

    /// The id of the run of the triggered campaign `name`, once a pass made it.
    pub fn run_of(&self, name: &str) -> Option<i64> {
        self.campaigns
            .iter()
            .find(|p| p.campaign.name == name)
            .and_then(|p| p.run.as_ref().map(|r| r.id))
    }

    /// Whether any campaign is event-triggered.
    pub fn is_empty(&self) -> bool {
        self.campaigns.is_empty()
    }

    /// Plans every event that arrived since the last pass.
    pub async fn pass(&mut self) -> Result<TriggerReport, EngineError> {
        let mut report = TriggerReport::default();
        let mut campaigns = std::mem::take(&mut self.campaigns);
        let mut result = Ok(());
        for p in &mut campaigns {
            if let Err(e) = self.pass_one(p, &mut report).await {
                result = Err(e);
                break;
            }
        }
        self.campaigns = campaigns;
        result.map(|()| report)
    }

    async fn pass_one(
        &self,
        p: &mut Prepared,
        report: &mut TriggerReport,
    ) -> Result<(), EngineError> {
        let now = self.clock.now_ms();
        let run = match &p.run {
            Some(r) => r.clone(),
            None => {
                let record = CampaignRecord::of(&p.campaign);
                let id = self.store.upsert_campaign(&record, now).await?;
                let run = self.store.trigger_run(id, &record.fingerprint, now).await?;
                p.run = Some(run.clone());
                run
            }
        };
        let settled = match p.settled {
            Some(s) => s,
            None => {
                let s = self.store.trigger_cursor(run.campaign_id, now).await?;
                p.settled = Some(s);
                p.newest = p.newest.max(s);
                s
            }
        };
        let names = [p.event.clone()];
        // New events, page by page.
        loop {
            let page = self
                .store
                .events_after(&names, p.newest, EVENT_PAGE)
                .await?;
            let full = page.len() == EVENT_PAGE as usize;
            if let Some(last) = page.last() {
                p.newest = last.id;
            }
            report.events += page.len() as u64;
            report.planned += self.plan_events(p, &run, &page, settled).await?;
            if !full {
                break;
            }
        }
        // Now and then: re-read what the cursor trails, for events committed late, and move it.
        if now.saturating_sub(p.last_rescan) >= RESCAN_MS {
            p.last_rescan = now;
            let mut after = settled;
            let mut new_settled = settled;
            let mut prefix = true;
            while after < p.newest {
                let page = self.store.events_after(&names, after, EVENT_PAGE).await?;
                let Some(last) = page.last() else { break };
                after = last.id;
                let late: Vec<TriggerEvent> = page
                    .iter()
                    .filter(|e| e.id <= p.newest && !p.handled.contains(&e.id))
                    .cloned()
                    .collect();
                if !late.is_empty() {
                    tracing::info!(campaign = %p.campaign.name, events = late.len(), "planning events committed after newer ones");
                    report.planned += self.plan_events(p, &run, &late, new_settled).await?;
                }
                for e in &page {
                    if prefix && e.id <= p.newest && e.received_at <= now - SETTLE_MS {
                        new_settled = e.id;
                    } else {
                        prefix = false;
                    }
                }
                if page.len() < EVENT_PAGE as usize {
                    break;
                }
            }
            if new_settled > settled {
                self.store
                    .insert_triggered(run.id, run.campaign_id, &[], new_settled, now)
                    .await?;
                p.settled = Some(new_settled);
                p.handled = p.handled.split_off(&(new_settled + 1));
            }
        }
        Ok(())
    }

    /// Plans `events` (all of `p`'s trigger event) and records them handled.
    async fn plan_events(
        &self,
        p: &mut Prepared,
        run: &RunRecord,
        events: &[TriggerEvent],
        cursor: i64,
    ) -> Result<u64, EngineError> {
        if events.is_empty() {
            return Ok(0);
        }
        let rows = self.decide_events(p, run, events).await?;
        let inserted = self
            .store
            .insert_triggered(run.id, run.campaign_id, &rows, cursor, self.clock.now_ms())
            .await?;
        p.handled.extend(events.iter().map(|e| e.id));
        Ok(inserted)
    }

    /// The messages `events` trigger, in event order.
    async fn decide_events(
        &self,
        p: &Prepared,
        run: &RunRecord,
        events: &[TriggerEvent],
    ) -> Result<Vec<TriggeredMessage>, EngineError> {
        let herald = &self.config.herald;
        let fresh: Vec<&TriggerEvent> = events
            .iter()
            .filter(|e| e.at >= e.received_at - STALE_MS)
            .collect();
        let mut buckets: Vec<Vec<&TriggerEvent>> = Vec::new();
        for e in fresh {
            match buckets.last_mut() {
                Some(b) if (e.at - b[0].at).abs() < BUCKET_MS => b.push(e),
                _ => buckets.push(vec![e]),
            }
        }
        let mut out = Vec::new();
        for bucket in buckets {
            let before = bucket.iter().map(|e| e.at).min().unwrap_or(0) - 1;
            let mut ids: Vec<i64> = bucket.iter().map(|e| e.contact_id).collect();
            ids.sort_unstable();
            ids.dedup();
            let ctx = PlanContext::new(&p.campaign, herald, 0, before);
            let members = self
                .store
                .audience_in(
                    &p.filter,
                    before,
                    p.campaign.topic.as_deref(),
                    &Scope::Contacts(ids.clone()),
                    0,
                    ids.len() as u32,
                    ctx.history_since(),
                )
                .await?;
            let mut members: HashMap<i64, AudienceMember> =
                members.into_iter().map(|m| (m.contact_id, m)).collect();
            if members.is_empty() {
                continue;
            }
            // The audience's members: the history and best hours are theirs.
            let member_ids: Vec<i64> = members.keys().copied().collect();
            // CUPED's history, up to the bucket's first event (the trigger
            // itself, a purchase perhaps, is not before it): one read a bucket.
            let pre = PrePeriodSpec::of(&p.campaign, before + 1);
            let history = match &pre {
                Some(spec) => self.store.pre_period(&member_ids, spec).await?,
                None => HashMap::new(),
            };
            if p.campaign.send_time == SendTime::BestHour {
                let ids = &member_ids;
                let request = PersonalisationRequest::best_hour(before, herald);
                for c in self.store.contacts(ids, &request).await? {
                    if let Some(m) = members.get_mut(&c.id) {
                        m.best_hour = c.personal.best_hour;
                    }
                }
            }
            let exited: HashSet<(i64, i64)> = match &p.campaign.exit {
                Some(exit) => {
                    let pairs: Vec<(i64, i64)> = bucket
                        .iter()
                        .filter(|e| members.contains_key(&e.contact_id))
                        .map(|e| (e.contact_id, e.at))
                        .collect();
                    self.store
                        .exited(&exit.event, &pairs)
                        .await?
                        .into_iter()
                        .collect()
                }
                None => HashSet::new(),
            };
            for e in bucket {
                let Some(member) = members.get_mut(&e.contact_id) else {
                    continue;
                };
                let mut rows = p.series.decide(herald, 0, e.at + p.delay_ms, member);
                if let Some(spec) = &pre {
                    for m in rows.iter_mut().filter(|m| m.step == 0) {
                        m.pre = spec.covariates(history.get(&e.contact_id).copied());
                    }
                }
                if exited.contains(&(e.contact_id, e.at)) {
                    let exit = p.campaign.exit.as_ref().map_or("", |x| x.event.as_str());
                    for m in &mut rows {
                        if matches!(m.status, MessageStatus::Planned) {
                            m.status = MessageStatus::Cancelled;
                            m.reason = Some(format!("exit ({exit})"));
                        }
                    }
                }
                // A second event of the same contact in this batch sees these messages.
                for m in &rows {
                    member.history.insert(
                        0,
                        PastMessage {
                            campaign: p.campaign.name.clone(),
                            run_id: run.id,
                            channel: m.channel,
                            send_at: m.send_at,
                            status: m.status,
                            marketing: p.campaign.kind
                                == herald_domain::types::CampaignKind::Marketing,
                        },
                    );
                }
                out.extend(rows.into_iter().map(|message| TriggeredMessage {
                    message,
                    trigger_id: e.id,
                    trigger_at: e.at,
                }));
            }
        }
        Ok(out)
    }
}

/// Run id to campaign name, read once per run: a run never changes campaign,
/// and the gate and the fallback ask for every claimed batch.
#[derive(Default)]
pub struct RunCampaigns(std::sync::Mutex<HashMap<i64, Option<String>>>);

impl RunCampaigns {
    /// The name of the campaign of run `run_id`.
    pub async fn name(&self, store: &dyn Store, run_id: i64) -> StoreResult<Option<String>> {
        if let Some(name) = self.0.lock().ok().and_then(|m| m.get(&run_id).cloned()) {
            return Ok(name);
        }
        let name = store.run_campaign(run_id).await?;
        if let Ok(mut m) = self.0.lock() {
            m.insert(run_id, name.clone());
        }
        Ok(name)
    }
}

/// Of `claimed`, the messages that must not go out, with why: their contact did
/// the campaign's `exit` event since the trigger (or the run), or, for a
/// triggered campaign, no longer matches its audience.
pub async fn gate(
    store: &dyn Store,
    config: &ConfigSet,
    runs: &RunCampaigns,
    claimed: &[ClaimedMessage],
    now: i64,
) -> StoreResult<Vec<(i64, String)>> {
    let mut by_run: HashMap<i64, Vec<&ClaimedMessage>> = HashMap::new();
    for m in claimed {
        by_run.entry(m.run_id).or_default().push(m);
    }
    let mut out = Vec::new();
    for (run_id, msgs) in by_run {
        let Some(name) = runs.name(store, run_id).await? else {
            continue;
        };
        let Some(campaign) = config.campaigns.get(&name) else {
            continue;
        };
        let mut cancelled: HashSet<i64> = HashSet::new();
        if let Some(exit) = &campaign.exit {
            let ids: Vec<i64> = msgs.iter().map(|m| m.id).collect();
            for id in store.exited_messages(&exit.event, &ids).await? {
                cancelled.insert(id);
                out.push((id, format!("exit ({})", exit.event)));
            }
        }
        if campaign.trigger.is_some() {
            let mut ids: Vec<i64> = msgs
                .iter()
                .filter(|m| !cancelled.contains(&m.id))
                .map(|m| m.contact_id)
                .collect();
            ids.sort_unstable();
            ids.dedup();
            let still: HashSet<i64> = store
                .matching(config.audience_of(campaign), &ids, now)
                .await?
                .into_iter()
                .collect();
            for m in msgs.iter().filter(|m| !cancelled.contains(&m.id)) {
                if !still.contains(&m.contact_id) {
                    out.push((m.id, "no longer in the audience".to_string()));
                }
            }
        }
    }
    Ok(out)
}

/// The dispatcher's [`Gate`]: [`gate`] over the configured campaigns. Runs only
/// for campaigns with an `exit` or a trigger; others pass untouched.
pub struct CampaignGate {
    store: Arc<dyn Store>,
    config: Arc<ConfigSet>,
    runs: RunCampaigns,
}

impl CampaignGate {
    /// A gate over `config`'s campaigns; `None` when no campaign needs one.
    pub fn for_config(store: Arc<dyn Store>, config: Arc<ConfigSet>) -> Option<Arc<dyn Gate>> {
        let needed = config
            .campaigns
            .values()
            .any(|c| c.exit.is_some() || c.trigger.is_some());
        needed.then(|| {
            Arc::new(Self {
                store,
                config,
                runs: RunCampaigns::default(),
            }) as Arc<dyn Gate>
        })
    }
}

#[async_trait::async_trait]
impl Gate for CampaignGate {
    async fn check(&self, claimed: &[ClaimedMessage], now: i64) -> StoreResult<Vec<(i64, String)>> {
        gate(self.store.as_ref(), &self.config, &self.runs, claimed, now).await
    }
}
