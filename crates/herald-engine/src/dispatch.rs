//! The dispatcher: claims due messages under a lease (from a keyset cursor
//! per worker), marking them `sending` in the claim itself, lets a [`Gate`]
//! cancel some, renders them, sends through the channel adapters (rate
//! limited, bounded concurrency) and records every outcome and attempt.
//! Batches the planner hands over ([`crate::handoff`]) are taken first, with
//! no claim. What a gate cancels goes from `sending` to `cancelled` without
//! a request. Retries read only the adapters' error taxonomy.
//!
//! Lanes (`docs/design/dispatch.md`): a worker with a lane claims only its
//! route's messages, and at most the route's horizon (about a second of its
//! rate plus its concurrency, [`claim_horizon`]), so a throttled route holds
//! only its own messages and a crash leaves at most that many `unknown`.
//! An account fault blocks the route ([`crate::health`]): its messages go
//! back to `planned`, the route sends only probes until one passes. FCM's
//! refusal of one platform's credential blocks only that platform's
//! sub-route of push ([`crate::platform`]): the lane's claim leaves its
//! messages out and probes it on its own. A halt
//! (graceful stop) releases what waits for a permit back to `planned`.
//! Outcomes are written until the database takes them; the worker claims
//! nothing meanwhile.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use herald_channels::pacer::Pacer;
use herald_channels::{Channel as ChannelAdapter, DeliveryError};
use herald_domain::types::{Channel, MessageStatus, SuppressReason};
use tokio::sync::{Semaphore, watch};
use tracing::Instrument;

use crate::clock::Clock;
use crate::handoff::Handoff;
use crate::health::{Admit, Change, RouteHealth};
use crate::platform::{PlatformFilter, PlatformHealth, PushPlatform};
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

/// One route's way out (a channel and its provider account): the adapter,
/// its rate limit, how many sends may be in flight, and its health.
#[derive(Clone)]
pub struct Route {
    /// The adapter.
    pub adapter: Arc<dyn ChannelAdapter>,
    /// The provider's rate, slowed after a 429 and recovering gradually.
    pub pacer: Arc<Pacer>,
    /// At most this many requests in flight.
    pub concurrency: Arc<Semaphore>,
    /// The concurrency's size (the semaphore says only what is free).
    pub width: usize,
    /// Open, or blocked by an account fault (shared by the route's workers).
    pub health: Arc<RouteHealth>,
    /// The health of each platform's sub-route (push: a third-party
    /// credential refused blocks only its platform's tokens).
    pub platforms: Arc<PlatformHealth>,
}

impl Route {
    /// A route of `adapter` paced by `pacer`, at most `concurrency` sends in flight.
    pub fn new(adapter: Arc<dyn ChannelAdapter>, pacer: Arc<Pacer>, concurrency: usize) -> Self {
        let width = concurrency.max(1);
        Route {
            adapter,
            pacer,
            concurrency: Arc::new(Semaphore::new(width)),
            width,
            health: Arc::new(RouteHealth::default()),
            platforms: Arc::new(PlatformHealth::default()),
        }
    }
}

/// How far ahead a lane's claim reaches: what its route sends in this long.
pub const HORIZON: Duration = Duration::from_secs(1);

/// How many messages one of a lane's `workers` may claim at once: the
/// route's rate over [`HORIZON`] plus its concurrency, split among the
/// lane's workers, within `1..=batch`; `batch` when the route is unlimited
/// (`rate` `None`). A crash leaves at most this many `unknown` per worker.
pub fn claim_horizon(rate: Option<f64>, concurrency: usize, workers: usize, batch: u32) -> u32 {
    let Some(rate) = rate else {
        return batch.max(1);
    };
    let horizon = (rate.max(0.0) * HORIZON.as_secs_f64()).ceil() + concurrency as f64;
    let each = (horizon / workers.max(1) as f64).ceil();
    (each.min(f64::from(batch)) as u32).max(1)
}

/// The first wait after a failed outcome write; it doubles up to [`RECORD_RETRY_MAX`].
pub const RECORD_RETRY_FIRST: Duration = Duration::from_millis(500);
/// The longest wait between tries of an outcome write.
pub const RECORD_RETRY_MAX: Duration = Duration::from_secs(5);
/// How often a blocked lane asks the database whether `herald runs resume` wants a probe.
const PROBE_REQUEST_CHECK_MS: i64 = 1000;
/// How far back a starting worker looks for a block a status callback
/// reported (the age after which `herald status` drops a block row).
const REPORTED_BLOCK_LOOKBACK_MS: i64 = 3 * 60_000;

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
        let unit = draw(message_id, attempts) * 2.0 - 1.0;
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

/// A uniform number in [0, 1) drawn from (message, attempt): splitmix64, so
/// waits are spread without a random source and reproducible.
fn draw(message_id: i64, attempts: i32) -> f64 {
    let mut z = (message_id as u64) ^ ((attempts as u64) << 48) ^ 0x9e37_79b9_7f4a_7c15;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// The reason a provider's refusal suppresses an address with. An SMS
/// provider refuses a number for good only when its owner opted out (Twilio
/// 21610: they replied STOP; an invalid number is the message's fault, not
/// the address's), which is consent withdrawn: `opt_out`, as the status
/// callback says it. Any other channel keeps the provider's words (a hard
/// bounce's SMTP reply).
fn suppression_reason(channel: Channel, detail: &str) -> String {
    match channel {
        Channel::Sms => SuppressReason::OptOut.as_str().to_string(),
        _ => detail.to_string(),
    }
}

/// How long a throttled message waits: the provider's `Retry-After` (else
/// the policy's first wait), spread up to [`RetryPolicy::jitter`] later so the
/// throttled requests of one second do not come back as one burst.
pub fn rate_limited_wait(
    policy: &RetryPolicy,
    message_id: i64,
    retry_after: Option<Duration>,
) -> Duration {
    let asked = retry_after.unwrap_or(policy.base);
    asked.mul_f64(1.0 + policy.jitter * draw(message_id, 0))
}

/// A route, or a push sub-route, blocked longer than a drain's
/// `blocked_wait` (`herald send` then exits 1). Shown as `sms:
/// authentication failed (...)` or `push:apns: authentication failed for
/// iOS tokens: ...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocked {
    /// The route's name: `sms`, or a push sub-route's: `push:apns`.
    pub route: String,
    /// The sub-route's platform when only those tokens are refused: the
    /// remedy is then a credential in the Firebase project, not the account.
    pub platform: Option<PushPlatform>,
    /// Why, in the provider's words around herald's.
    pub reason: String,
}

impl std::fmt::Display for Blocked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.route, self.reason)
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
    /// Messages a route's block had held that met their send-time rule or
    /// quiet hours when released: planned again for later, the daemon's to
    /// send (not this drain's).
    pub deferred: u64,
    /// Messages the planner handed over (sent without a claim query).
    pub handed: u64,
    /// Messages given back to `planned` without a request (a blocked route, a stop).
    pub released: u64,
    /// A route (or push sub-route) blocked longer than the drain's
    /// `blocked_wait`; the drain ended for it.
    pub blocked: Option<Blocked>,
    /// Wall time of the drain.
    pub elapsed: Duration,
    /// Workers that handled a message (1 for such a drain; merged, they add up).
    pub workers: u64,
    /// Where the time went, summed over the workers that handled a message
    /// (a lane with nothing to send only waits: it would hide the others).
    pub stages: StageTimes,
}

/// Time spent in each stage of dispatch, summed over batches: a worker's
/// whole drain falls in one stage or another, so a worker's stages add up
/// to about its wall time. Two clock reads a stage and batch, never one a
/// message: cheap enough to keep on.
#[derive(Debug, Clone, Default)]
pub struct StageTimes {
    /// Waiting for work: the planner's next page (or a poll) when nothing is due.
    pub wait: Duration,
    /// Claiming due messages (and expiring leases, the gate, asking whether the run is drained).
    pub claim: Duration,
    /// Reading contacts and personalisation data.
    pub contacts: Duration,
    /// Rendering templates.
    pub render: Duration,
    /// Waiting for the route's rate (the pacer): the batch's send time in
    /// the proportion its messages waited for a permit rather than for the adapter.
    pub rate: Duration,
    /// Waiting on the channel adapters (and their concurrency).
    pub send: Duration,
    /// Recording outcomes, attempts and links.
    pub record: Duration,
}

impl StageTimes {
    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &StageTimes) {
        self.wait += other.wait;
        self.claim += other.claim;
        self.contacts += other.contacts;
        self.render += other.render;
        self.rate += other.rate;
        self.send += other.send;
        self.record += other.record;
    }

    /// The stages by name, in the order a message meets them.
    pub fn named(&self) -> [(&'static str, Duration); 7] {
        [
            ("wait for the plan", self.wait),
            ("claim", self.claim),
            ("contacts", self.contacts),
            ("render", self.render),
            ("wait for rate", self.rate),
            ("send", self.send),
            ("record", self.record),
        ]
    }

    /// All the stages together.
    pub fn total(&self) -> Duration {
        self.named().iter().map(|(_, d)| *d).sum()
    }

    /// Each stage divided by `n` (the workers' average).
    pub fn per(&self, n: u64) -> StageTimes {
        let n = n.max(1) as u32;
        StageTimes {
            wait: self.wait / n,
            claim: self.claim / n,
            contacts: self.contacts / n,
            render: self.render / n,
            rate: self.rate / n,
            send: self.send / n,
            record: self.record / n,
        }
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
        self.released += other.released;
        if self.blocked.is_none() {
            self.blocked.clone_from(&other.blocked);
        }
        self.later = self.later.max(other.later);
        self.elapsed = self.elapsed.max(other.elapsed);
        self.workers += other.workers;
        if other.workers > 0 {
            self.stages.add(&other.stages);
        }
    }

    /// Messages this drain took to the end of a batch, whatever their outcome.
    pub fn handled(&self) -> u64 {
        self.accepted
            + self.failed
            + self.unknown
            + self.cancelled
            + self.retried
            + self.released
            + self.deferred
    }

    /// Accepted messages per second.
    pub fn rate(&self) -> f64 {
        self.accepted as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// How long one send, holding a concurrency permit, waited for its
/// route's pacer and for the adapter. The wait for the permit is left
/// out: it is the permit holders' time, which these two already split.
#[derive(Debug, Clone, Copy, Default)]
struct SendWaits {
    rate: Duration,
    send: Duration,
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

/// One debug event a claimed message (inside the batch's span): joins the
/// message's id to the run, contact and step it was planned as.
fn log_claimed(claimed: &[ClaimedMessage]) {
    if !tracing::enabled!(tracing::Level::DEBUG) {
        return;
    }
    for m in claimed {
        tracing::debug!(
            message_id = m.id,
            run = m.run_id,
            contact = m.contact_id,
            step = m.step,
            channel = m.channel.as_str(),
            attempts = m.attempts,
            "claimed"
        );
    }
}

/// One debug event an outcome written: the last line of a message's story.
fn log_recorded(outcomes: &[Outcome]) {
    if !tracing::enabled!(tracing::Level::DEBUG) {
        return;
    }
    for o in outcomes {
        tracing::debug!(
            message_id = o.message_id,
            status = o.status.as_str(),
            reason = o.reason.as_deref(),
            retry_at = o.retry_at,
            rerouted_to = o.reroute.as_ref().map(|(c, _)| c.as_str()),
            "recorded"
        );
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

/// What a claim is for: the lane's usual work, or a probe of its blocked
/// route or of one blocked sub-route (one message).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Probe {
    /// Usual work.
    #[default]
    No,
    /// The blocked route's probe.
    Route,
    /// The probe of a platform's blocked sub-route (the route is open).
    Platform(PushPlatform),
}

/// How long (ms) between `from` and `to` a message could not go out: its
/// route was blocked, or the sub-route of its token's platform (when
/// known). The longer of the two: overlaps are not counted twice, which
/// errs toward a message looking older, never younger.
fn held_ms(route: &Route, platform: Option<PushPlatform>, from: i64, to: i64) -> i64 {
    let sub = platform.map_or(0, |p| route.platforms.get(p).blocked_within(from, to));
    route.health.blocked_within(from, to).max(sub)
}

/// A message's age at `at` (ms) for `max_age`: from its send time, less
/// the time it was held by its route's block meanwhile ([`held_ms`]).
fn age(route: &Route, platform: Option<PushPlatform>, send_at: i64, at: i64) -> i64 {
    at - send_at - held_ms(route, platform, send_at, at)
}

/// A claimed message given back to `planned` as it was, without a request
/// (its route is blocked, or the process stops): no attempt, no links.
fn released(msg: &ClaimedMessage) -> Outcome {
    Outcome {
        status: MessageStatus::Planned,
        reason: None,
        ..failed(msg, String::new())
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
    /// The route whose messages alone this worker claims, if it is a lane's.
    lane: Option<Channel>,
    /// How many workers the lane has (they split its horizon).
    pub lane_workers: usize,
    /// Turns true on a graceful stop: sends waiting for a permit are released.
    halt: Option<watch::Receiver<bool>>,
    /// A drain ends once a route is blocked this long (`herald send`'s `blocked_wait`).
    pub blocked_wait: Option<Duration>,
    /// When this worker last asked whether a probe was requested (clock ms).
    probe_checked: AtomicI64,
    /// When this worker last looked for a block reported by a status callback
    /// (ms), and for the open transactional runs.
    block_checked: AtomicI64,
    /// The open transactional runs, as of `block_checked`: a lane claims
    /// their messages before its route's queue.
    transactional: Mutex<Vec<i64>>,
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
            lane: None,
            lane_workers: 1,
            halt: None,
            blocked_wait: None,
            probe_checked: AtomicI64::new(i64::MIN),
            block_checked: AtomicI64::new(i64::MIN),
            transactional: Mutex::new(Vec::new()),
        }
    }

    /// Makes this worker one of `workers` of the lane of `channel`: it claims
    /// only that route's messages, at most its share of the route's horizon.
    pub fn with_lane(mut self, channel: Channel, workers: usize) -> Self {
        self.lane = Some(channel);
        self.lane_workers = workers.max(1);
        self
    }

    /// Releases (back to `planned`) the sends still waiting for a permit once
    /// `halt` turns true: a graceful stop sends nothing new.
    pub fn with_halt(mut self, halt: watch::Receiver<bool>) -> Self {
        self.halt = Some(halt);
        self
    }

    fn halted(&self) -> bool {
        self.halt.as_ref().is_some_and(|h| *h.borrow())
    }

    /// Waits for `f`, unless the halt comes first (`None`).
    async fn unless_halted<T>(&self, f: impl std::future::Future<Output = T>) -> Option<T> {
        match &self.halt {
            None => Some(f.await),
            Some(h) => {
                let mut h = h.clone();
                if *h.borrow() {
                    return None;
                }
                tokio::select! {
                    v = f => Some(v),
                    _ = h.wait_for(|s| *s) => None,
                }
            }
        }
    }

    /// The first route (or platform sub-route) blocked at least `blocked_wait`.
    fn blocked_too_long(&self) -> Option<Blocked> {
        let wait = self.blocked_wait?;
        let now = self.clock.now_ms();
        let mut routes: Vec<_> = self.routes.iter().collect();
        routes.sort_by_key(|(c, _)| c.as_str());
        let too_long = |route: String, platform: Option<PushPlatform>, h: &RouteHealth| {
            let block = h.block()?;
            (h.blocked_for(now)? >= wait).then(|| Blocked {
                route,
                platform,
                reason: block.reason.clone(),
            })
        };
        routes.into_iter().find_map(|(c, r)| {
            too_long(c.to_string(), None, &r.health).or_else(|| {
                r.platforms
                    .iter()
                    .find_map(|(p, h)| too_long(p.route().to_owned(), Some(p), h))
            })
        })
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
        let t = Instant::now();
        let handed = match &self.handoff {
            Some(h) => h.take_within(self.poll).await,
            None => {
                tokio::time::sleep(self.poll).await;
                None
            }
        };
        stats.stages.wait += t.elapsed();
        match handed {
            Some(batch) => taken(batch, run, stats),
            None => Ok(Vec::new()),
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
        let span = tracing::info_span!("run", run = run_id);
        self.drain_run_in(run_id, renderer, stop)
            .instrument(span)
            .await
    }

    async fn drain_run_in(
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
            if let Some(blocked) = self.blocked_too_long() {
                // `herald send`: the messages stay planned for later.
                stats.blocked = Some(blocked);
                break;
            }
            let (claimed, probe) = self.claim_probe(Some(run_id), &mut stats).await?;
            if claimed.is_empty() {
                let t = Instant::now();
                let now = self.clock.now_ms();
                match self.store.finish_run_if_drained(run_id, now).await? {
                    RunDrain::Over => {
                        stats.stages.claim += t.elapsed();
                        break;
                    }
                    // The planner has not written the next page yet.
                    RunDrain::Planning => {}
                    RunDrain::Pending => {
                        // What policies moved to later (quiet hours, best hour, spread) is
                        // the daemon's to send; a retry waiting for its time is still ours.
                        // Held messages deferred on release (send hour, quiet hours) count
                        // as due (their send time passed) but are the daemon's too.
                        let (due, later) = self.store.run_pending(run_id, now).await?;
                        if due <= stats.deferred as i64 {
                            stats.later = later as u64 + stats.deferred;
                            stats.stages.claim += t.elapsed();
                            break;
                        }
                    }
                }
                stats.stages.claim += t.elapsed();
                let handed = self.idle(Some(run_id), &mut stats).await?;
                if !handed.is_empty() {
                    self.send_batch(handed, renderer, &mut stats).await?;
                }
                continue;
            }
            self.send_batch_as(claimed, renderer, &mut stats, probe)
                .await?;
        }
        stats.elapsed = started.elapsed();
        stats.workers = u64::from(stats.handled() > 0);
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
            let mut probe = Probe::No;
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
                let (claimed, p) = self.claim_probe(None, &mut stats).await?;
                probe = p;
                claimed
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
            // Runs in the order claimed: a lane's transactional messages come
            // first in its claim and are sent first.
            let mut by_run: Vec<(i64, Vec<ClaimedMessage>)> = Vec::new();
            for m in claimed {
                match by_run.iter_mut().find(|(r, _)| *r == m.run_id) {
                    Some((_, batch)) => batch.push(m),
                    None => by_run.push((m.run_id, vec![m])),
                }
            }
            for (run_id, batch) in by_run {
                if let std::collections::hash_map::Entry::Vacant(e) = campaigns.entry(run_id) {
                    e.insert(self.store.run_campaign(run_id).await?);
                }
                let renderer = campaigns[&run_id]
                    .as_deref()
                    .and_then(|c| renderers.renderer(c));
                match renderer {
                    Some(r) => {
                        let span = tracing::info_span!("run", run = run_id);
                        self.send_batch_as(batch, r.as_ref(), &mut stats, probe)
                            .instrument(span)
                            .await?
                    }
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
                        self.record(&outcomes).await;
                    }
                }
            }
        }
        stats.elapsed = started.elapsed();
        stats.workers = u64::from(stats.handled() > 0);
        Ok(stats)
    }

    /// Expires leases, then claims up to `batch` due messages (of `run`, or of
    /// every running run) under a fresh lease; the time goes to `stats`' claim stage.
    /// A lane's worker claims only its route's, at most its horizon.
    pub async fn claim(
        &self,
        run: Option<i64>,
        stats: &mut DispatchStats,
    ) -> StoreResult<Vec<ClaimedMessage>> {
        Ok(self.claim_probe(run, stats).await?.0)
    }

    /// How many this worker may claim now, and whether that is a blocked
    /// route's (or sub-route's) probe; `None`: its route is blocked and it is
    /// not probe time.
    async fn lane_limit(&self) -> StoreResult<Option<(u32, Probe)>> {
        let Some((channel, route)) = self.lane.and_then(|c| self.routes.get(&c).map(|r| (c, r)))
        else {
            return Ok(Some((self.batch, Probe::No)));
        };
        let now = self.clock.now_ms();
        match route.health.admit(now) {
            Admit::Open => {
                // A status callback may say the account is refused after its
                // sends were accepted (Twilio 30034/30007): the lane blocks
                // itself as if a send had been refused.
                let last = self.block_checked.load(Ordering::Relaxed);
                if last == i64::MIN || now - last >= PROBE_REQUEST_CHECK_MS {
                    self.block_checked.store(now, Ordering::Relaxed);
                    // The transactional runs open now, looked up with the
                    // block (not before every claim): a run opened since
                    // waits at most this long to jump its route's queue.
                    let first = self.store.transactional_runs().await?;
                    *self.transactional.lock().expect("transactional lock") = first;
                    let since = if last == i64::MIN {
                        now - REPORTED_BLOCK_LOOKBACK_MS
                    } else {
                        last
                    };
                    if let Some(reason) = self
                        .store
                        .route_block_reported(channel.as_str(), since)
                        .await?
                    {
                        self.learn(channel, route, Some(&reason)).await;
                        return Ok(None);
                    }
                }
                if let Some(platform) = self.platform_probe(route, now).await? {
                    return Ok(Some((1, Probe::Platform(platform))));
                }
                Ok(Some((
                    claim_horizon(
                        route.pacer.current_rate(),
                        route.width,
                        self.lane_workers,
                        self.batch,
                    ),
                    Probe::No,
                )))
            }
            Admit::Probe => Ok(Some((1, Probe::Route))),
            Admit::Wait(_) => {
                if let Some(since) = self.probe_request_due(now) {
                    self.probe_if_asked(channel.as_str(), &route.health, since, now)
                        .await?;
                }
                Ok(None)
            }
        }
    }

    /// Whether a blocked route (or sub-route) should look now if `herald
    /// runs resume` asked for a probe: about once a second for the worker,
    /// whatever is blocked. `Some(since)`: look for requests since then.
    fn probe_request_due(&self, now: i64) -> Option<i64> {
        let last = self.probe_checked.load(Ordering::Relaxed);
        (last == i64::MIN || now - last >= PROBE_REQUEST_CHECK_MS).then(|| {
            self.probe_checked.store(now, Ordering::Relaxed);
            if last == i64::MIN { now } else { last }
        })
    }

    /// Probes `health` (of the route or sub-route `name`) at once if
    /// `herald runs resume` asked for it since `since`.
    async fn probe_if_asked(
        &self,
        name: &str,
        health: &RouteHealth,
        since: i64,
        now: i64,
    ) -> StoreResult<()> {
        if self.store.route_probe_requested(name, since).await? {
            tracing::info!(route = %name, "a probe was asked for (herald runs resume)");
            health.probe_now(now);
        }
        Ok(())
    }

    /// The blocked sub-route of `route` whose probe may go now, if any
    /// (given to one worker: the probe is then in the air). A blocked
    /// sub-route also looks, about once a second, whether `herald runs
    /// resume` asked for a probe at once.
    async fn platform_probe(&self, route: &Route, now: i64) -> StoreResult<Option<PushPlatform>> {
        let mut asked = None;
        for (platform, health) in route.platforms.iter() {
            match health.admit(now) {
                Admit::Open => {}
                Admit::Probe => return Ok(Some(platform)),
                Admit::Wait(_) => {
                    // One look a second for all the sub-routes.
                    if let Some(since) = *asked.get_or_insert_with(|| self.probe_request_due(now)) {
                        self.probe_if_asked(platform.route(), health, since, now)
                            .await?;
                        if health.admit(now) == Admit::Probe {
                            return Ok(Some(platform));
                        }
                    }
                }
            }
        }
        Ok(None)
    }

    /// [`Dispatcher::claim`], saying whether the claim is a blocked route's
    /// (or sub-route's) probe.
    async fn claim_probe(
        &self,
        run: Option<i64>,
        stats: &mut DispatchStats,
    ) -> StoreResult<(Vec<ClaimedMessage>, Probe)> {
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
            return Ok((taken(batch, run, stats)?, Probe::No));
        }
        let Some((limit, probe)) = self.lane_limit().await? else {
            stats.stages.claim += t.elapsed();
            return Ok((Vec::new(), Probe::No));
        };
        let route = self.lane.and_then(|c| self.routes.get(&c));
        let lease_until = now + self.lease.as_millis() as i64;
        // A sub-route's probe takes the oldest due message of its platform
        // that was refused for the credential (it tests it), else the
        // oldest due one; it is no position in the route's queue.
        if let Probe::Platform(p) = probe {
            let mut claimed = Vec::new();
            for only in [PlatformFilter::Refused(p), PlatformFilter::Only(p)] {
                claimed = self
                    .claim_from(run, now, lease_until, None, 1, &only)
                    .await?;
                if !claimed.is_empty() {
                    break;
                }
            }
            if claimed.is_empty()
                && let Some(r) = route
            {
                r.platforms.get(p).probe_unused(now);
            }
            stats.stages.claim += t.elapsed();
            return Ok((claimed, probe));
        }
        // Otherwise the blocked sub-routes' messages are left where they are.
        let platforms = route.map_or(PlatformFilter::Any, |r| r.platforms.filter());
        // Messages that come due behind the cursor (a retry's wait ended, a
        // lapsed claim) are found when a pass ends or after an expiry.
        let after = if expired {
            None
        } else {
            *self.cursor.lock().expect("cursor lock")
        };
        let mut claimed = self
            .claim_from(run, now, lease_until, after, limit, &platforms)
            .await?;
        if claimed.is_empty() && after.is_some() {
            claimed = self
                .claim_from(run, now, lease_until, None, limit, &platforms)
                .await?;
        }
        // The cursor follows the route's queue only: a transactional message
        // claimed ahead of it is no position in it. A claim filled by those
        // alone never reached the queue, so its cursor stays where it was.
        let queue_last = claimed
            .iter()
            .rev()
            .find(|m| !m.first)
            .map(|m| (m.send_at, m.id));
        *self.cursor.lock().expect("cursor lock") = match queue_last {
            None if claimed.len() as u32 >= limit => after,
            last => last,
        };
        if probe == Probe::Route && claimed.is_empty() {
            // Nothing due to probe with: the probe is free again later.
            if let Some(r) = route {
                r.health.probe_unused(now);
            }
        }
        stats.stages.claim += t.elapsed();
        Ok((claimed, probe))
    }

    /// Claims (and marks `sending`) up to `limit` after the cursor `after`:
    /// only the lane's route's messages that `platforms` admits, if this
    /// worker is a lane's.
    async fn claim_from(
        &self,
        run: Option<i64>,
        now: i64,
        lease_until: i64,
        after: Option<(i64, i64)>,
        limit: u32,
        platforms: &PlatformFilter,
    ) -> StoreResult<Vec<ClaimedMessage>> {
        match self.lane {
            Some(channel) => {
                let first = self
                    .transactional
                    .lock()
                    .expect("transactional lock")
                    .clone();
                self.store
                    .claim_lane(
                        &self.owner,
                        run,
                        channel,
                        &first,
                        now,
                        lease_until,
                        limit,
                        after,
                        platforms,
                    )
                    .await
            }
            None => {
                self.store
                    .claim_sending_after(&self.owner, run, now, lease_until, limit, after)
                    .await
            }
        }
    }

    /// Writes `outcomes`, trying again until the database takes them: an
    /// outcome is never dropped, and the worker claims nothing meanwhile
    /// (its batch in hand is the bounded buffer). If the outage outlives the
    /// lease, the messages may turn `unknown` meanwhile; the late write then
    /// sets what truly happened.
    async fn record(&self, outcomes: &[Outcome]) {
        let mut wait = RECORD_RETRY_FIRST;
        let mut failures = 0u32;
        loop {
            match self
                .store
                .record_outcomes(outcomes, self.clock.now_ms())
                .await
            {
                Ok(()) => {
                    log_recorded(outcomes);
                    if failures > 0 {
                        tracing::info!(
                            outcomes = outcomes.len(),
                            tries = failures + 1,
                            "outcomes written after the database came back"
                        );
                    }
                    return;
                }
                Err(e) => {
                    failures += 1;
                    if failures == 1 || failures.is_power_of_two() {
                        tracing::warn!(
                            outcomes = outcomes.len(),
                            "cannot write outcomes ({e}); trying again in {wait:?}, claiming nothing meanwhile"
                        );
                    }
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(RECORD_RETRY_MAX);
                }
            }
        }
    }

    async fn send_batch(
        &self,
        claimed: Vec<ClaimedMessage>,
        renderer: &dyn MessageRenderer,
        stats: &mut DispatchStats,
    ) -> StoreResult<()> {
        self.send_batch_as(claimed, renderer, stats, Probe::No)
            .await
    }

    /// The platform sub-route of each push token of `claimed` (`None`:
    /// Android), read only when a sub-route was blocked since the oldest
    /// push message's send time (their ages and send-time rules then
    /// depend on it); otherwise nothing is read and the map is empty.
    async fn batch_platforms(
        &self,
        claimed: &[ClaimedMessage],
        now: i64,
    ) -> HashMap<String, Option<PushPlatform>> {
        let Some(route) = self.routes.get(&Channel::Push) else {
            return HashMap::new();
        };
        let oldest = claimed
            .iter()
            .filter(|m| m.channel == Channel::Push)
            .map(|m| m.send_at)
            .min();
        if !oldest.is_some_and(|from| route.platforms.any_blocked_within(from, now)) {
            return HashMap::new();
        }
        let tokens: Vec<String> = claimed
            .iter()
            .filter(|m| m.channel == Channel::Push)
            .map(|m| m.address.clone())
            .collect();
        self.platforms_of(&tokens).await
    }

    /// The platform sub-route of each of `tokens` (`None`: Android). A
    /// token the database cannot tell counts as unlabelled: its message
    /// then waits with the unlabelled ones rather than being refused again.
    async fn platforms_of(&self, tokens: &[String]) -> HashMap<String, Option<PushPlatform>> {
        let known: HashMap<String, Option<String>> = match self.store.push_platforms(tokens).await {
            Ok(rows) => rows.into_iter().collect(),
            Err(e) => {
                tracing::warn!(
                    "cannot read the push tokens' platforms ({e}); taking them as unlabelled"
                );
                HashMap::new()
            }
        };
        tokens
            .iter()
            .map(|t| {
                let platform = known.get(t).and_then(|p| p.as_deref());
                (t.clone(), PushPlatform::of(platform))
            })
            .collect()
    }

    /// Sends a batch; `probe`: it is a blocked route's or sub-route's probe (one message).
    async fn send_batch_as(
        &self,
        claimed: Vec<ClaimedMessage>,
        renderer: &dyn MessageRenderer,
        stats: &mut DispatchStats,
        probe: Probe,
    ) -> StoreResult<()> {
        let span = tracing::debug_span!(
            "batch",
            messages = claimed.len(),
            lane = self.lane.map(|c| c.as_str()),
            probe = probe != Probe::No
        );
        self.send_batch_in(claimed, renderer, stats, probe)
            .instrument(span)
            .await
    }

    async fn send_batch_in(
        &self,
        claimed: Vec<ClaimedMessage>,
        renderer: &dyn MessageRenderer,
        stats: &mut DispatchStats,
        probe: Probe,
    ) -> StoreResult<()> {
        log_claimed(&claimed);
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
        let mut contacts: HashMap<i64, _> = self
            .store
            .contacts(&ids, &renderer.personalisation(self.clock.now_ms()))
            .await?
            .into_iter()
            .map(|c| (c.id, c))
            .collect();
        let now = self.clock.now_ms();
        let platforms = self.batch_platforms(&claimed, now).await;
        let platform = |msg: &ClaimedMessage| platforms.get(&msg.address).copied().flatten();
        // A message its route held (blocked) meets the send-time rules and
        // quiet hours again: the block moved it out of the time it was
        // planned for.
        let held = |msg: &ClaimedMessage| {
            self.routes
                .get(&msg.channel)
                .is_some_and(|r| held_ms(r, platform(msg), msg.send_at, now) > 0)
        };
        let held_contacts: Vec<i64> = claimed
            .iter()
            .filter(|m| held(m))
            .map(|m| m.contact_id)
            .collect();
        if !held_contacts.is_empty()
            && let Some(request) = renderer.release_personalisation(now)
        {
            // What the release reads and the templates do not (best hours),
            // for the held contacts only: rare, so never on the common path.
            for extra in self.store.contacts(&held_contacts, &request).await? {
                if let Some(c) = contacts.get_mut(&extra.id) {
                    c.personal.best_hour = extra.personal.best_hour;
                }
            }
        }
        stats.stages.contacts += t.elapsed();
        let t = Instant::now();
        let mut ready = Vec::with_capacity(claimed.len());
        for msg in claimed {
            if let Some(later) = contacts
                .get(&msg.contact_id)
                .filter(|_| held(&msg))
                .and_then(|c| renderer.released_at(&msg, c, now))
            {
                stats.deferred += 1;
                outcomes.push(Outcome {
                    status: MessageStatus::Planned,
                    retry_at: Some(later.at),
                    reason: Some(format!("{} after its route's block", later.reason)),
                    ..failed(&msg, String::new())
                });
                continue;
            }
            let rendered = match contacts.get(&msg.contact_id) {
                Some(c) => renderer.render(&msg, c),
                None => Err("the contact was erased before the message was sent".into()),
            };
            match rendered {
                Ok(out) => {
                    tracing::debug!(message_id = msg.id, "rendered");
                    ready.push((msg, out))
                }
                Err(why) => {
                    tracing::debug!(message_id = msg.id, why = %why, "not rendered");
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
        let platforms_ref = &platforms;
        let mut paced = Duration::ZERO;
        let mut sending = Duration::ZERO;
        let mut results: Vec<Outcome> = futures::stream::iter(outputs.into_iter().enumerate())
            .map(|(i, out)| self.send_one(&sent_ref[i], out, probe, platforms_ref))
            .buffer_unordered(width)
            .map(|(o, waits)| {
                paced += waits.rate;
                sending += waits.send;
                o
            })
            .collect()
            .await;
        if probe != Probe::No && !results.iter().any(|o| o.attempt.is_some()) {
            // The probe never reached the provider (cancelled, deferred, not
            // rendered, released): it told nothing, the next one may go.
            if let Some(r) = self.lane.and_then(|c| self.routes.get(&c)) {
                match probe {
                    Probe::Route => r.health.probe_unused(now),
                    Probe::Platform(p) => r.platforms.get(p).probe_unused(now),
                    Probe::No => {}
                }
            }
        }
        if let Some(fallback) = &self.fallback {
            self.fall_back(fallback.as_ref(), &sent, &mut results)
                .await?;
        }
        for o in &results {
            match o.status {
                MessageStatus::Sent | MessageStatus::Delivered => stats.accepted += 1,
                MessageStatus::Failed => stats.failed += 1,
                MessageStatus::Unknown => stats.unknown += 1,
                MessageStatus::Planned if o.retry_at.is_none() && o.reroute.is_none() => {
                    stats.released += 1
                }
                MessageStatus::Planned => stats.retried += 1,
                _ => {}
            }
        }
        // Sends overlap: the batch's wall time is split in the proportion
        // its messages, once holding a concurrency permit, waited for the
        // pacer and for the adapter.
        let spent = t.elapsed();
        let rate = spent
            .mul_f64(paced.as_secs_f64() / (paced + sending).as_secs_f64().max(f64::MIN_POSITIVE));
        stats.stages.rate += rate;
        stats.stages.send += spent.saturating_sub(rate);
        let t = Instant::now();
        outcomes.extend(results);
        self.record(&outcomes).await;
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

    /// What an answer means for the route's health: logged once, written
    /// for `herald status`, counted for `/metrics`.
    async fn learn(&self, channel: Channel, route: &Route, fault: Option<&str>) {
        let change = self
            .note(
                channel.as_str(),
                &route.health,
                fault,
                "its messages stay planned",
            )
            .await;
        if let (Some(m), Some(change)) = (&self.metrics, change) {
            m.route_state(channel, route.health.is_blocked(), &change);
        }
    }

    /// [`Dispatcher::learn`] for a platform's sub-route of `route`: its
    /// tokens' messages wait, the route's others go on.
    async fn learn_platform(&self, route: &Route, platform: PushPlatform, fault: Option<&str>) {
        let health = route.platforms.get(platform);
        let change = self
            .note(
                platform.route(),
                health,
                fault,
                "these tokens' messages stay planned, the route's other messages go on",
            )
            .await;
        if let (Some(m), Some(change)) = (&self.metrics, change) {
            m.platform_state(platform, health.is_blocked(), &change);
        }
    }

    /// Applies an answer to `health` (of the route or sub-route `name`):
    /// a change is logged once and written for `herald status`; returns it
    /// (`None`: nothing changed).
    async fn note(
        &self,
        name: &str,
        health: &RouteHealth,
        fault: Option<&str>,
        held: &str,
    ) -> Option<Change> {
        let now = self.clock.now_ms();
        let change = health.answer(fault, now);
        let block = match &change {
            Change::None => return None,
            Change::Blocked(reason) => {
                tracing::error!(
                    route = %name,
                    "blocked: {name}: {reason}; {held}, probing with backoff (`herald runs resume` probes at once)"
                );
                health.block()
            }
            Change::StillBlocked => health.block(),
            Change::Unblocked(was) => {
                tracing::warn!(route = %name, "unblocked: {name} works again after {was:?}");
                None
            }
        };
        // The row is for `herald status`; sending goes on without it.
        if let Err(e) = self
            .store
            .set_route_block(name, &self.owner, block.as_ref(), now)
            .await
        {
            tracing::warn!(route = %name, "cannot write the route's block for `herald status`: {e}");
        }
        Some(change)
    }

    /// [`Dispatcher::send_timed`], with how long the message waited for
    /// the pacer and for the adapter.
    async fn send_one(
        &self,
        msg: &ClaimedMessage,
        out: RenderOutput,
        probe: Probe,
        platforms: &HashMap<String, Option<PushPlatform>>,
    ) -> (Outcome, SendWaits) {
        let mut waits = SendWaits::default();
        // The message's span (debug: nothing is built unless it is on).
        let span = tracing::debug_span!(
            "message",
            message_id = msg.id,
            run = msg.run_id,
            contact = msg.contact_id,
            channel = msg.channel.as_str(),
            route = platforms
                .get(&msg.address)
                .copied()
                .flatten()
                .map_or(msg.channel.as_str(), PushPlatform::route)
        );
        let outcome = self
            .send_timed(msg, out, probe, platforms, &mut waits)
            .instrument(span)
            .await;
        (outcome, waits)
    }

    /// What a platform fault (FCM `THIRD_PARTY_AUTH_ERROR`) of `msg` means:
    /// the sub-route of its token's platform blocks (`None` returned), or,
    /// for a token imported as `android` (the label contradicts FCM), the
    /// message's own temporary failure, returned in its place.
    async fn platform_fault(
        &self,
        msg: &ClaimedMessage,
        route: &Route,
        probe: Probe,
        platforms: &HashMap<String, Option<PushPlatform>>,
        error: &DeliveryError,
    ) -> Option<DeliveryError> {
        let platform = match (probe, platforms.get(&msg.address)) {
            // The probe's claim chose it by its platform.
            (Probe::Platform(p), _) => Some(p),
            (_, Some(known)) => *known,
            (_, None) => self
                .platforms_of(std::slice::from_ref(&msg.address))
                .await
                .remove(&msg.address)
                .flatten(),
        };
        match platform {
            Some(p) => {
                let detail = match error {
                    DeliveryError::PlatformFault { detail, .. } => detail.clone(),
                    other => other.to_string(),
                };
                self.learn_platform(route, p, Some(&p.reason(&detail)))
                    .await;
                None
            }
            None => Some(DeliveryError::Transient {
                code: error.code().to_string(),
                detail: format!(
                    "{error}; the token was imported as android, which needs no such credential: check its push_platform"
                ),
                retry_after: None,
            }),
        }
    }

    async fn send_timed(
        &self,
        msg: &ClaimedMessage,
        out: RenderOutput,
        probe: Probe,
        platforms: &HashMap<String, Option<PushPlatform>>,
        waits: &mut SendWaits,
    ) -> Outcome {
        let mut outcome = Outcome {
            reason: None,
            links: out.links,
            ..failed(msg, String::new())
        };
        let Some(route) = self.routes.get(&msg.channel) else {
            outcome.reason = Some(format!("no {} channel is configured", msg.channel));
            return outcome;
        };
        // A blocked route sends only its probe; a stop sends nothing new.
        let held =
            |route: &Route| (probe != Probe::Route && route.health.is_blocked()) || self.halted();
        if held(route) {
            return released(msg);
        }
        let Some(_permit) = self.unless_halted(route.concurrency.acquire()).await else {
            return released(msg);
        };
        // Throttle inside retry: every attempt takes a fresh permit.
        let waited = Instant::now();
        let paced = self.unless_halted(route.pacer.acquire()).await;
        let rate_wait = waited.elapsed();
        waits.rate += rate_wait;
        if paced.is_none() {
            return released(msg);
        }
        if let Some(m) = &self.metrics {
            m.limiter_wait(msg.channel, rate_wait);
        }
        // The route may have been blocked while this send waited its turn.
        if held(route) {
            return released(msg);
        }
        let at = self.clock.now_ms();
        let t0 = Instant::now();
        let mut result = route.adapter.send(&out.message).await;
        // One clock read for the stage, the attempt's row and the histogram:
        // the provider's time, not the health bookkeeping after it.
        let took = t0.elapsed();
        waits.send += took;
        route.pacer.on_result(&result);
        let fault = match &result {
            Err(e @ DeliveryError::AccountFault { .. }) => Some(e.to_string()),
            _ => None,
        };
        self.learn(msg.channel, route, fault.as_deref()).await;
        match (&result, probe) {
            (Err(e @ DeliveryError::PlatformFault { .. }), _) => {
                if let Some(own) = self.platform_fault(msg, route, probe, platforms, e).await {
                    result = Err(own);
                }
            }
            // Accepted: the platform's credential works again.
            (Ok(_), Probe::Platform(p)) => self.learn_platform(route, p, None).await,
            // Refused for another reason (the whole account, the message's
            // own token or payload, a timeout): the probe told nothing of
            // the platform's credential, so the sub-route stays blocked and
            // the next probe may go. Unblocking here let one bad message
            // reopen it, and every blocked message behind it be refused again.
            (Err(_), Probe::Platform(p)) => {
                route.platforms.get(p).probe_unused(self.clock.now_ms());
            }
            _ => {}
        }
        let platform = platforms.get(&msg.address).copied().flatten();
        let duration_ms = took.as_millis() as i64;
        let attempts = msg.attempts + 1;
        let (result_name, code, detail) = match &result {
            Ok(r) => ("accepted", None, r.detail.clone()),
            Err(e) => (
                match e {
                    DeliveryError::Transient { .. } => "transient",
                    DeliveryError::RateLimited { .. } => "rate_limited",
                    DeliveryError::Permanent { .. } => "permanent",
                    DeliveryError::Ambiguous { .. } => "ambiguous",
                    DeliveryError::AccountFault { .. } | DeliveryError::PlatformFault { .. } => {
                        "account_fault"
                    }
                },
                Some(e.code().to_string()),
                e.to_string(),
            ),
        };
        if let Some(m) = &self.metrics {
            m.attempt(msg.channel, result_name, took);
        }
        // The provider's answer, whatever it was.
        match &result {
            Ok(r) => tracing::debug!(
                message_id = msg.id,
                result = result_name,
                provider_id = r.provider_id.as_deref(),
                detail = %detail,
                duration_ms,
                "sent"
            ),
            Err(_) => tracing::debug!(
                message_id = msg.id,
                result = result_name,
                code = code.as_deref(),
                detail = %detail,
                duration_ms,
                "send failed"
            ),
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
            Err(DeliveryError::RateLimited { retry_after, .. }) => {
                // The provider asked us to wait: this message waits that long
                // (spread a little later, never sooner), not an exponential
                // backoff, and the 429 is not counted against its attempts;
                // only its age can end it.
                let now = self.clock.now_ms();
                let wait = rate_limited_wait(&self.retry, msg.id, retry_after);
                let retry_at = now + wait.as_millis() as i64;
                if age(route, platform, msg.send_at, retry_at)
                    > self.retry.max_age.as_millis() as i64
                {
                    outcome.reason = Some(format!(
                        "expired: not accepted within {}h of its send time, throttled: {detail}",
                        self.retry.max_age.as_secs() / 3600
                    ));
                } else {
                    outcome.status = MessageStatus::Planned;
                    outcome.retry_at = Some(retry_at);
                }
            }
            Err(DeliveryError::Transient { retry_after, .. }) => {
                let now = self.clock.now_ms();
                let wait = self.retry.wait_jittered(msg.id, attempts, retry_after);
                let retry_at = now + wait.as_millis() as i64;
                if attempts >= self.retry.max_attempts {
                    outcome.reason = Some(format!("attempts exhausted after {attempts}: {detail}"));
                } else if age(route, platform, msg.send_at, retry_at)
                    > self.retry.max_age.as_millis() as i64
                {
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
                if suppress_address {
                    let reason = suppression_reason(msg.channel, &detail);
                    outcome.suppress_address = Some((msg.channel, msg.address.clone(), reason));
                }
                outcome.reason = Some(detail);
            }
            Err(DeliveryError::Ambiguous { .. }) => {
                outcome.status = MessageStatus::Unknown;
                outcome.reason = Some(detail);
            }
            Err(DeliveryError::AccountFault { .. } | DeliveryError::PlatformFault { .. }) => {
                // The route's fault (or its platform sub-route's): the message
                // stays planned, due as it was (no fallback, no `failed`, the
                // attempt logged but not counted); the route is blocked and
                // sends it when a probe passes.
                outcome.status = MessageStatus::Planned;
                outcome.retry_at = None;
                outcome.reason = None;
                outcome.links.clear();
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
    fn a_throttled_message_waits_its_retry_after_never_sooner_never_exponentially() {
        let p = RetryPolicy::default();
        let waits: Vec<Duration> = (0..1000)
            .map(|id| rate_limited_wait(&p, id, Some(Duration::from_secs(1))))
            .collect();
        assert!(
            waits
                .iter()
                .all(|w| *w >= Duration::from_secs(1) && *w <= Duration::from_millis(1200)),
            "1 s to 1.2 s"
        );
        let distinct: std::collections::BTreeSet<_> = waits.iter().collect();
        assert!(distinct.len() > 900, "spread, not one burst");
        // Without Retry-After: the policy's first wait.
        let w = rate_limited_wait(&p, 7, None);
        assert!(w >= p.base && w <= p.base.mul_f64(1.2), "{w:?}");
    }

    #[test]
    fn claims_reach_about_a_second_of_the_route_plus_its_concurrency() {
        // 10 SMS/s, 2 in flight, 2 workers: 6 each, never a batch of 500.
        assert_eq!(claim_horizon(Some(10.0), 2, 2, 500), 6);
        // 100/s and 8 in flight on one worker: 108 (#23's crash window).
        assert_eq!(claim_horizon(Some(100.0), 8, 1, 500), 108);
        // A slowed route claims less.
        assert_eq!(claim_horizon(Some(5.0), 2, 1, 500), 7);
        // Never more than a batch, never nothing.
        assert_eq!(claim_horizon(Some(10_000.0), 8, 2, 500), 500);
        assert_eq!(claim_horizon(Some(0.0), 0, 4, 500), 1);
        // Unlimited: a batch.
        assert_eq!(claim_horizon(None, 8, 2, 500), 500);
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
