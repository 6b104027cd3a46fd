//! The dispatcher: claims due messages under a lease (from a keyset cursor
//! per worker), marking them `sending` in the claim itself, lets a [`Gate`]
//! cancel some, renders them, sends through the channel adapters (rate
//! limited, bounded concurrency) and records every outcome and attempt.
//! Batches the planner hands over ([`crate::handoff`]) are taken first, with
//! no claim. A crash leaves the batch in hand `unknown`: the in-flight window
//! is one batch a worker, and one more in the hand-off; what a gate cancels
//! goes from `sending` to `cancelled` without a request.
//! Retries read only the adapters' error taxonomy.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use herald_channels::pacer::Pacer;
use herald_channels::{Channel as ChannelAdapter, DeliveryError};
use herald_domain::types::{Channel, MessageStatus};
use tokio::sync::Semaphore;

use crate::clock::Clock;
use crate::handoff::Handoff;
use crate::render::{MessageRenderer, RenderOutput};
use crate::store::{
    AttemptRecord, ClaimedMessage, Outcome, RunDrain, Store, StoreError, StoreResult,
};

/// Decides, just before sending, which claimed messages must not go out (an exit condition, a contact who left the audience).
#[async_trait::async_trait]
pub trait Gate: Send + Sync {
    /// (message id, reason) of the claimed messages to cancel instead of sending.
    async fn check(&self, claimed: &[ClaimedMessage], now: i64) -> StoreResult<Vec<(i64, String)>>;
}

/// Decides, after a permanent failure, which channel a message falls back to
/// (SPEC: "a permanent failure on one channel may fall back to the next
/// channel of the campaign's order, once").
#[async_trait::async_trait]
pub trait Fallback: Send + Sync {
    /// (message id, channel, address) for the failed messages that move on.
    async fn reroute(
        &self,
        failed: &[ClaimedMessage],
        now: i64,
    ) -> StoreResult<Vec<(i64, Channel, String)>>;
}

/// One channel's way out: the adapter, its rate limit and how many sends may be in flight.
#[derive(Clone)]
pub struct Route {
    /// The adapter.
    pub adapter: Arc<dyn ChannelAdapter>,
    /// The provider's rate, slowed after a 429 and recovering gradually.
    pub pacer: Arc<Pacer>,
    /// At most this many requests in flight.
    pub concurrency: Arc<Semaphore>,
}

/// When and how often a transient failure is retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: i32,
    /// Wait after the first failure; doubles each time.
    pub base: Duration,
    /// Longest wait.
    pub max_wait: Duration,
    /// A message not accepted this long after its planned send time ends `failed`.
    pub max_age: Duration,
    /// Each wait is spread by up to this fraction either way, so a throttled
    /// batch does not come back as one burst.
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            base: Duration::from_secs(1),
            max_wait: Duration::from_secs(300),
            max_age: Duration::from_secs(24 * 3600),
            jitter: 0.2,
        }
    }
}

impl RetryPolicy {
    /// The wait before attempt `attempts + 1` of message `message_id`: the
    /// exponential wait spread by a jitter derived from the message and the
    /// attempt (reproducible), never shorter than the provider's `retry_after`.
    pub fn wait_jittered(
        &self,
        message_id: i64,
        attempts: i32,
        retry_after: Option<Duration>,
    ) -> Duration {
        let base = self.wait(attempts, None);
        // splitmix64 of (id, attempt): a uniform number in [-1, 1) without a random source.
        let mut z = (message_id as u64) ^ ((attempts as u64) << 48) ^ 0x9e37_79b9_7f4a_7c15;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let unit = (z >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0;
        let spread = base.mul_f64((1.0 + self.jitter * unit).max(0.0));
        spread.max(retry_after.unwrap_or_default())
    }

    /// The wait before attempt number `attempts + 1`, honouring the provider's `retry_after`.
    pub fn wait(&self, attempts: i32, retry_after: Option<Duration>) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << attempts.clamp(0, 20).max(1).saturating_sub(1));
        exp.max(retry_after.unwrap_or_default())
            .min(self.max_wait.max(retry_after.unwrap_or_default()))
    }
}

/// Figures of one drain.
#[derive(Debug, Clone, Default)]
pub struct DispatchStats {
    /// Messages handed to providers and accepted.
    pub accepted: u64,
    /// Messages that ended failed.
    pub failed: u64,
    /// Messages that ended unknown.
    pub unknown: u64,
    /// Messages a [`Gate`] cancelled before sending.
    pub cancelled: u64,
    /// Transient failures scheduled for a retry.
    pub retried: u64,
    /// Messages left planned for later (quiet hours, best hour, spread) when a drain ended.
    pub later: u64,
    /// Messages the planner handed over (sent without a claim query).
    pub handed: u64,
    /// Wall time of the drain.
    pub elapsed: Duration,
    /// Where the time went.
    pub stages: StageTimes,
}

/// Time spent in each stage of dispatch, summed over batches.
#[derive(Debug, Clone, Default)]
pub struct StageTimes {
    /// Claiming due messages (and expiring leases).
    pub claim: Duration,
    /// Reading contacts and personalisation data.
    pub contacts: Duration,
    /// Rendering templates.
    pub render: Duration,
    /// Waiting on the channel adapters.
    pub send: Duration,
    /// Recording outcomes, attempts and links.
    pub record: Duration,
}

impl StageTimes {
    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &StageTimes) {
        self.claim += other.claim;
        self.contacts += other.contacts;
        self.render += other.render;
        self.send += other.send;
        self.record += other.record;
    }
}

impl DispatchStats {
    /// Adds the figures of another worker of the same drain into `self`:
    /// counts add up; `later` (each worker reads the same count) and the
    /// wall time are the largest.
    pub fn merge(&mut self, other: &DispatchStats) {
        self.accepted += other.accepted;
        self.failed += other.failed;
        self.unknown += other.unknown;
        self.cancelled += other.cancelled;
        self.retried += other.retried;
        self.handed += other.handed;
        self.later = self.later.max(other.later);
        self.elapsed = self.elapsed.max(other.elapsed);
        self.stages.add(&other.stages);
    }

    /// Accepted messages per second.
    pub fn rate(&self) -> f64 {
        self.accepted as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Finds the renderer of a campaign by name (the daemon's compiled campaigns).
pub trait RendererSource: Send + Sync {
    /// The renderer of `campaign`, if it is configured.
    fn renderer(&self, campaign: &str) -> Option<Arc<dyn MessageRenderer>>;
}

impl RendererSource for HashMap<String, Arc<dyn MessageRenderer>> {
    fn renderer(&self, campaign: &str) -> Option<Arc<dyn MessageRenderer>> {
        self.get(campaign).cloned()
    }
}

/// A failed outcome of `msg` with no attempt at a provider; it carries how
/// the message's row was written in advance (a handed message's flight), so
/// that recording writes only what differs.
fn failed(msg: &ClaimedMessage, reason: String) -> Outcome {
    Outcome {
        message_id: msg.id,
        status: MessageStatus::Failed,
        reason: Some(reason),
        retry_at: None,
        provider_id: None,
        attempt: None,
        links: vec![],
        suppress_address: None,
        reroute: None,
        written: msg.written,
    }
}

/// A handed-over batch, counted in `stats` and checked to be of `run` (when
/// draining one run): the planner of one run hands only to the workers that drain it.
fn taken(
    batch: Vec<ClaimedMessage>,
    run: Option<i64>,
    stats: &mut DispatchStats,
) -> StoreResult<Vec<ClaimedMessage>> {
    stats.handed += batch.len() as u64;
    match (run, batch.first()) {
        (Some(r), Some(m)) if m.run_id != r => Err(StoreError(format!(
            "a batch of run {} was handed to the workers of run {r}",
            m.run_id
        ))),
        _ => Ok(batch),
    }
}

/// Claims, renders, sends and records.
pub struct Dispatcher {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    routes: HashMap<Channel, Route>,
    owner: String,
    /// Messages claimed at once (also the most that can end `unknown` after a crash).
    pub batch: u32,
    /// How long a claim holds.
    pub lease: Duration,
    /// Retry policy for transient failures.
    pub retry: RetryPolicy,
    /// How often to look for due messages when none are.
    pub poll: Duration,
    /// Where attempts are counted for `/metrics`, if anywhere.
    pub metrics: Option<Arc<crate::metrics::DispatchMetrics>>,
    /// What may cancel claimed messages just before they are sent.
    gate: Option<Arc<dyn Gate>>,
    /// Where a message goes after a permanent failure, if anywhere.
    fallback: Option<Arc<dyn Fallback>>,
    /// When leases were last expired (clock ms; `i64::MIN`: never).
    last_expire: AtomicI64,
    /// The (send_at, id) of the last message claimed in this pass over the queue.
    cursor: Mutex<Option<(i64, i64)>>,
    /// Where the planner of this process hands batches over, if anywhere.
    handoff: Option<Arc<Handoff>>,
}

impl Dispatcher {
    /// A dispatcher named `owner` (for leases) over `routes`.
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        routes: HashMap<Channel, Route>,
        owner: String,
    ) -> Self {
        Self {
            store,
            clock,
            routes,
            owner,
            batch: 500,
            lease: Duration::from_secs(120),
            retry: RetryPolicy::default(),
            poll: Duration::from_millis(200),
            metrics: None,
            gate: None,
            fallback: None,
            last_expire: AtomicI64::new(i64::MIN),
            cursor: Mutex::new(None),
            handoff: None,
        }
    }

    /// Takes the batches the planner hands over through `handoff` before claiming.
    pub fn with_handoff(mut self, handoff: Arc<Handoff>) -> Self {
        self.handoff = Some(handoff);
        self
    }

    /// Waits up to a poll for work: a batch handed over (of `run`, if given), if
    /// this dispatcher has a hand-off.
    async fn idle(
        &self,
        run: Option<i64>,
        stats: &mut DispatchStats,
    ) -> StoreResult<Vec<ClaimedMessage>> {
        match &self.handoff {
            Some(h) => match h.take_within(self.poll).await {
                Some(batch) => taken(batch, run, stats),
                None => Ok(Vec::new()),
            },
            None => {
                tokio::time::sleep(self.poll).await;
                Ok(Vec::new())
            }
        }
    }

    /// Checks every claimed batch with `gate` before sending it.
    pub fn with_gate(mut self, gate: Arc<dyn Gate>) -> Self {
        self.gate = Some(gate);
        self
    }

    /// Lets `fallback` move a permanently failed message to another channel, once.
    pub fn with_fallback(mut self, fallback: Arc<dyn Fallback>) -> Self {
        self.fallback = Some(fallback);
        self
    }

    /// Sends every message of `run_id` that is due, until none is left due or
    /// sending; messages planned for later stay for the daemon (`stats.later`).
    pub async fn drain_run(
        &self,
        run_id: i64,
        renderer: &dyn MessageRenderer,
    ) -> StoreResult<DispatchStats> {
        self.drain_run_until(run_id, renderer, None).await
    }

    /// [`Dispatcher::drain_run`], which also ends once `stop` holds true:
    /// for workers of a plan that stopped early (another process plans the
    /// run, or planning failed), who would otherwise wait for pages that never
    /// come. What the planner handed over by then (in the slot, or written
    /// under a slot it reserved) is in a flight under this process's lease,
    /// so it is sent first.
    pub async fn drain_run_until(
        &self,
        run_id: i64,
        renderer: &dyn MessageRenderer,
        stop: Option<&tokio::sync::watch::Receiver<bool>>,
    ) -> StoreResult<DispatchStats> {
        let started = Instant::now();
        let mut stats = DispatchStats::default();
        loop {
            if stop.is_some_and(|s| *s.borrow()) {
                if let Some(h) = &self.handoff {
                    while let Some(batch) = h.close_and_take().await {
                        let batch = taken(batch, Some(run_id), &mut stats)?;
                        self.send_batch(batch, renderer, &mut stats).await?;
                    }
                }
                break;
            }
            let claimed = self.claim(Some(run_id), &mut stats).await?;
            if claimed.is_empty() {
                let now = self.clock.now_ms();
                match self.store.finish_run_if_drained(run_id, now).await? {
                    RunDrain::Over => break,
                    // The planner has not written the next page yet.
                    RunDrain::Planning => {}
                    RunDrain::Pending => {
                        // What policies moved to later (quiet hours, best hour, spread) is
                        // the daemon's to send; a retry waiting for its time is still ours.
                        let (due, later) = self.store.run_pending(run_id, now).await?;
                        if due == 0 {
                            stats.later = later as u64;
                            break;
                        }
                    }
                }
                let handed = self.idle(Some(run_id), &mut stats).await?;
                if !handed.is_empty() {
                    self.send_batch(handed, renderer, &mut stats).await?;
                }
                continue;
            }
            self.send_batch(claimed, renderer, &mut stats).await?;
        }
        stats.elapsed = started.elapsed();
        Ok(stats)
    }

    /// The daemon's loop: claims due messages of every running run, renders
    /// each with its campaign's renderer, sends and records, until `stop` turns
    /// true; the batch in hand is finished first (drained), so every claimed
    /// message ends recorded. Marks runs done as they drain.
    pub async fn work(
        &self,
        renderers: &dyn RendererSource,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> StoreResult<DispatchStats> {
        let started = Instant::now();
        let mut stats = DispatchStats::default();
        let mut campaigns: HashMap<i64, Option<String>> = HashMap::new();
        loop {
            let mut claimed = if *stop.borrow() {
                // Stopping: the batches handed over (one at most, and one
                // being written) are sent, then nothing more is taken.
                match &self.handoff {
                    Some(h) => taken(
                        h.close_and_take().await.unwrap_or_default(),
                        None,
                        &mut stats,
                    )?,
                    None => Vec::new(),
                }
            } else {
                self.claim(None, &mut stats).await?
            };
            if claimed.is_empty() {
                if *stop.borrow() {
                    break;
                }
                self.store.finish_drained_runs(self.clock.now_ms()).await?;
                tokio::select! {
                    handed = self.idle(None, &mut stats) => claimed = handed?,
                    _ = stop.changed() => {}
                }
                if claimed.is_empty() {
                    continue;
                }
            }
            let mut by_run: HashMap<i64, Vec<ClaimedMessage>> = HashMap::new();
            for m in claimed {
                by_run.entry(m.run_id).or_default().push(m);
            }
            for (run_id, batch) in by_run {
                if let std::collections::hash_map::Entry::Vacant(e) = campaigns.entry(run_id) {
                    e.insert(self.store.run_campaign(run_id).await?);
                }
                let renderer = campaigns[&run_id]
                    .as_deref()
                    .and_then(|c| renderers.renderer(c));
                match renderer {
                    Some(r) => self.send_batch(batch, r.as_ref(), &mut stats).await?,
                    None => {
                        let name = campaigns[&run_id].clone().unwrap_or_default();
                        let outcomes: Vec<Outcome> = batch
                            .iter()
                            .map(|m| {
                                failed(
                                    m,
                                    format!(
                                        "the campaign `{name}` is no longer in config/campaigns"
                                    ),
                                )
                            })
                            .collect();
                        stats.failed += outcomes.len() as u64;
                        self.store
                            .record_outcomes(&outcomes, self.clock.now_ms())
                            .await?;
                    }
                }
            }
        }
        stats.elapsed = started.elapsed();
        Ok(stats)
    }

    /// Expires leases, then claims up to `batch` due messages (of `run`, or of
    /// every running run) under a fresh lease; the time goes to `stats`' claim stage.
    pub async fn claim(
        &self,
        run: Option<i64>,
        stats: &mut DispatchStats,
    ) -> StoreResult<Vec<ClaimedMessage>> {
        let t = Instant::now();
        let now = self.clock.now_ms();
        // A lease cannot lapse sooner than a lease after it was taken: expiring
        // every half lease finds each one at most half a lease late, without an
        // UPDATE before every claim.
        let half = (self.lease.as_millis() as i64 / 2).max(1);
        let last = self.last_expire.load(Ordering::Relaxed);
        let expired = last == i64::MIN || now - last >= half || now < last;
        if expired {
            self.last_expire.store(now, Ordering::Relaxed);
            self.store.expire_leases(now).await?;
        }
        if let Some(batch) = self.handoff.as_ref().and_then(|h| h.try_take()) {
            stats.stages.claim += t.elapsed();
            return taken(batch, run, stats);
        }
        let lease_until = now + self.lease.as_millis() as i64;
        // Messages that come due behind the cursor (a retry's wait ended, a
        // lapsed claim) are found when a pass ends or after an expiry.
        let after = if expired {
            None
        } else {
            *self.cursor.lock().expect("cursor lock")
        };
        let mut claimed = self.claim_from(run, now, lease_until, after).await?;
        if claimed.is_empty() && after.is_some() {
            claimed = self.claim_from(run, now, lease_until, None).await?;
        }
        *self.cursor.lock().expect("cursor lock") = claimed.last().map(|m| (m.send_at, m.id));
        stats.stages.claim += t.elapsed();
        Ok(claimed)
    }

    /// Claims (and marks `sending`) up to a batch after the cursor `after`.
    async fn claim_from(
        &self,
        run: Option<i64>,
        now: i64,
        lease_until: i64,
        after: Option<(i64, i64)>,
    ) -> StoreResult<Vec<ClaimedMessage>> {
        self.store
            .claim_sending_after(&self.owner, run, now, lease_until, self.batch, after)
            .await
    }

    async fn send_batch(
        &self,
        claimed: Vec<ClaimedMessage>,
        renderer: &dyn MessageRenderer,
        stats: &mut DispatchStats,
    ) -> StoreResult<()> {
        let mut outcomes = Vec::with_capacity(claimed.len());
        let mut claimed = claimed;
        if let Some(gate) = &self.gate {
            let t = Instant::now();
            let mut cancel: HashMap<i64, String> = gate
                .check(&claimed, self.clock.now_ms())
                .await?
                .into_iter()
                .collect();
            if !cancel.is_empty() {
                let (gone, kept): (Vec<_>, Vec<_>) = claimed
                    .into_iter()
                    .partition(|m| cancel.contains_key(&m.id));
                claimed = kept;
                outcomes.extend(gone.iter().map(|m| Outcome {
                    status: MessageStatus::Cancelled,
                    ..failed(m, cancel.remove(&m.id).unwrap_or_default())
                }));
                stats.cancelled += outcomes.len() as u64;
            }
            stats.stages.claim += t.elapsed();
        }
        let t = Instant::now();
        let ids: Vec<i64> = claimed.iter().map(|m| m.contact_id).collect();
        let contacts: HashMap<i64, _> = self
            .store
            .contacts(&ids, &renderer.personalisation(self.clock.now_ms()))
            .await?
            .into_iter()
            .map(|c| (c.id, c))
            .collect();
        stats.stages.contacts += t.elapsed();
        let t = Instant::now();
        let now = self.clock.now_ms();
        let mut ready = Vec::with_capacity(claimed.len());
        for msg in claimed {
            let rendered = match contacts.get(&msg.contact_id) {
                Some(c) => renderer.render(&msg, c),
                None => Err("the contact was erased before the message was sent".into()),
            };
            match rendered {
                Ok(out) => ready.push((msg, out)),
                Err(why) => {
                    stats.failed += 1;
                    let reason = format!("render_error: {why}");
                    outcomes.push(Outcome {
                        attempt: Some(AttemptRecord {
                            at: now,
                            result: "render_error".into(),
                            code: None,
                            detail: Some(why),
                            duration_ms: 0,
                        }),
                        ..failed(&msg, reason)
                    })
                }
            }
        }
        stats.stages.render += t.elapsed();
        let t = Instant::now();
        let width = self
            .routes
            .values()
            .map(|r| r.concurrency.available_permits())
            .sum::<usize>()
            .max(1);
        // The messages stay here, lent to the sends: a permanent failure's
        // fallback reads them afterwards without a copy of each.
        let (sent, outputs): (Vec<ClaimedMessage>, Vec<RenderOutput>) = ready.into_iter().unzip();
        let sent_ref = &sent;
        let mut results: Vec<Outcome> = futures::stream::iter(outputs.into_iter().enumerate())
            .map(|(i, out)| self.send_one(&sent_ref[i], out))
            .buffer_unordered(width)
            .collect()
            .await;
        if let Some(fallback) = &self.fallback {
            self.fall_back(fallback.as_ref(), &sent, &mut results)
                .await?;
        }
        for o in &results {
            match o.status {
                MessageStatus::Sent | MessageStatus::Delivered => stats.accepted += 1,
                MessageStatus::Failed => stats.failed += 1,
                MessageStatus::Unknown => stats.unknown += 1,
                MessageStatus::Planned => stats.retried += 1,
                _ => {}
            }
        }
        stats.stages.send += t.elapsed();
        let t = Instant::now();
        outcomes.extend(results);
        self.store
            .record_outcomes(&outcomes, self.clock.now_ms())
            .await?;
        stats.stages.record += t.elapsed();
        Ok(())
    }

    /// Turns the permanent failures `fallback` reroutes into messages planned
    /// again on their next channel (recorded with the failed attempt, in the
    /// same transaction: a crash loses neither).
    async fn fall_back(
        &self,
        fallback: &dyn Fallback,
        sent: &[ClaimedMessage],
        results: &mut [Outcome],
    ) -> StoreResult<()> {
        let permanent: std::collections::HashSet<i64> = results
            .iter()
            .filter(|o| {
                o.status == MessageStatus::Failed
                    && o.attempt.as_ref().is_some_and(|a| a.result == "permanent")
            })
            .map(|o| o.message_id)
            .collect();
        if permanent.is_empty() {
            return Ok(());
        }
        let failed: Vec<ClaimedMessage> = sent
            .iter()
            .filter(|m| permanent.contains(&m.id))
            .cloned()
            .collect();
        let now = self.clock.now_ms();
        let moves: HashMap<i64, (Channel, String)> = fallback
            .reroute(&failed, now)
            .await?
            .into_iter()
            .map(|(id, ch, addr)| (id, (ch, addr)))
            .collect();
        for o in results.iter_mut() {
            let Some((channel, address)) = moves.get(&o.message_id) else {
                continue;
            };
            let from = failed
                .iter()
                .find(|m| m.id == o.message_id)
                .map_or(*channel, |m| m.channel);
            o.status = MessageStatus::Planned;
            o.retry_at = None;
            o.reason = Some(format!(
                "fallback to {channel}: {from} failed permanently ({})",
                o.reason.as_deref().unwrap_or("refused")
            ));
            // The failed channel's links do not belong to the next one.
            o.links.clear();
            o.reroute = Some((*channel, address.clone()));
        }
        Ok(())
    }

    async fn send_one(&self, msg: &ClaimedMessage, out: RenderOutput) -> Outcome {
        let mut outcome = Outcome {
            reason: None,
            links: out.links,
            ..failed(msg, String::new())
        };
        let Some(route) = self.routes.get(&msg.channel) else {
            outcome.reason = Some(format!("no {} channel is configured", msg.channel));
            return outcome;
        };
        let _permit = route.concurrency.acquire().await;
        // Throttle inside retry: every attempt takes a fresh permit.
        let waited = Instant::now();
        route.pacer.acquire().await;
        if let Some(m) = &self.metrics {
            m.limiter_wait(msg.channel, waited.elapsed());
        }
        let at = self.clock.now_ms();
        let t0 = Instant::now();
        let result = route.adapter.send(&out.message).await;
        route.pacer.on_result(&result);
        let duration_ms = t0.elapsed().as_millis() as i64;
        let attempts = msg.attempts + 1;
        let (result_name, code, detail) = match &result {
            Ok(r) => ("accepted", None, r.detail.clone()),
            Err(e) => (
                match e {
                    DeliveryError::Transient { .. } => "transient",
                    DeliveryError::RateLimited { .. } => "rate_limited",
                    DeliveryError::Permanent { .. } => "permanent",
                    DeliveryError::Ambiguous { .. } => "ambiguous",
                },
                Some(e.code().to_string()),
                e.to_string(),
            ),
        };
        if let Some(m) = &self.metrics {
            m.attempt(msg.channel, result_name, t0.elapsed());
        }
        outcome.attempt = Some(AttemptRecord {
            at,
            result: result_name.into(),
            code,
            detail: Some(detail.clone()),
            duration_ms,
        });
        match result {
            Ok(receipt) => {
                outcome.status = if route.adapter.delivered_on_accept() {
                    MessageStatus::Delivered
                } else {
                    MessageStatus::Sent
                };
                outcome.provider_id = receipt.provider_id;
            }
            Err(
                DeliveryError::Transient { retry_after, .. }
                | DeliveryError::RateLimited { retry_after, .. },
            ) => {
                let now = self.clock.now_ms();
                let wait = self.retry.wait_jittered(msg.id, attempts, retry_after);
                let retry_at = now + wait.as_millis() as i64;
                if attempts >= self.retry.max_attempts {
                    outcome.reason = Some(format!("attempts exhausted after {attempts}: {detail}"));
                } else if retry_at - msg.send_at > self.retry.max_age.as_millis() as i64 {
                    outcome.reason = Some(format!(
                        "expired: not accepted within {}h of its send time after {attempts} attempt(s): {detail}",
                        self.retry.max_age.as_secs() / 3600
                    ));
                } else {
                    outcome.status = MessageStatus::Planned;
                    outcome.retry_at = Some(retry_at);
                }
            }
            Err(DeliveryError::Permanent {
                suppress_address, ..
            }) => {
                outcome.reason = Some(detail);
                if suppress_address {
                    outcome.suppress_address = Some((msg.channel, msg.address.clone()));
                }
            }
            Err(DeliveryError::Ambiguous { .. }) => {
                outcome.status = MessageStatus::Unknown;
                outcome.reason = Some(detail);
            }
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_waits_double_and_honour_retry_after() {
        let p = RetryPolicy::default();
        assert_eq!(p.wait(1, None), Duration::from_secs(1));
        assert_eq!(p.wait(2, None), Duration::from_secs(2));
        assert_eq!(p.wait(4, None), Duration::from_secs(8));
        assert_eq!(
            p.wait(1, Some(Duration::from_secs(30))),
            Duration::from_secs(30)
        );
        assert_eq!(p.wait(20, None), Duration::from_secs(300));
        // A provider that asks for longer than our cap is obeyed.
        assert_eq!(
            p.wait(1, Some(Duration::from_secs(900))),
            Duration::from_secs(900)
        );
    }

    #[test]
    fn jitter_spreads_waits_within_bounds_and_keeps_retry_after() {
        let p = RetryPolicy::default();
        let waits: Vec<Duration> = (0..1000).map(|id| p.wait_jittered(id, 3, None)).collect();
        let (lo, hi) = (Duration::from_millis(3200), Duration::from_millis(4800));
        assert!(waits.iter().all(|w| *w >= lo && *w <= hi), "4s +/- 20%");
        let distinct: std::collections::BTreeSet<_> = waits.iter().collect();
        assert!(distinct.len() > 900, "spread, not one burst");
        assert_eq!(
            p.wait_jittered(7, 3, None),
            p.wait_jittered(7, 3, None),
            "reproducible"
        );
        assert!(p.wait_jittered(7, 1, Some(Duration::from_secs(60))) >= Duration::from_secs(60));
    }
}
