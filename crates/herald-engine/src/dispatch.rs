//! The dispatcher: claims due messages under a lease, renders them, marks
//! them `sending` just before the request is written, sends through the
//! channel adapters (rate limited, bounded concurrency) and records every
//! outcome and attempt. Retries read only the adapters' error taxonomy.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use herald_channels::pacer::Pacer;
use herald_channels::{Channel as ChannelAdapter, DeliveryError};
use herald_domain::types::{Channel, MessageStatus};
use tokio::sync::Semaphore;

use crate::clock::Clock;
use crate::render::{MessageRenderer, RenderOutput};
use crate::store::{AttemptRecord, ClaimedMessage, Outcome, Store, StoreResult};

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
    /// Transient failures scheduled for a retry.
    pub retried: u64,
    /// Wall time of the drain.
    pub elapsed: Duration,
}

impl DispatchStats {
    /// Accepted messages per second.
    pub fn rate(&self) -> f64 {
        self.accepted as f64 / self.elapsed.as_secs_f64().max(1e-9)
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
        }
    }

    /// Sends every message of `run_id` until none is left planned or sending.
    pub async fn drain_run(
        &self,
        run_id: i64,
        renderer: &dyn MessageRenderer,
    ) -> StoreResult<DispatchStats> {
        let started = Instant::now();
        let mut stats = DispatchStats::default();
        loop {
            let now = self.clock.now_ms();
            self.store.expire_leases(now).await?;
            let lease_until = now + self.lease.as_millis() as i64;
            let claimed = self
                .store
                .claim_due(&self.owner, Some(run_id), now, lease_until, self.batch)
                .await?;
            if claimed.is_empty() {
                if self.store.finish_run_if_drained(run_id, now).await? {
                    break;
                }
                tokio::time::sleep(self.poll).await;
                continue;
            }
            self.send_batch(claimed, renderer, &mut stats).await?;
        }
        stats.elapsed = started.elapsed();
        Ok(stats)
    }

    async fn send_batch(
        &self,
        claimed: Vec<ClaimedMessage>,
        renderer: &dyn MessageRenderer,
        stats: &mut DispatchStats,
    ) -> StoreResult<()> {
        let ids: Vec<i64> = claimed.iter().map(|m| m.contact_id).collect();
        let contacts: HashMap<i64, _> = self
            .store
            .contacts(&ids)
            .await?
            .into_iter()
            .map(|c| (c.id, c))
            .collect();
        let now = self.clock.now_ms();
        let mut outcomes = Vec::with_capacity(claimed.len());
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
                    outcomes.push(Outcome {
                        message_id: msg.id,
                        status: MessageStatus::Failed,
                        reason: Some(format!("render_error: {why}")),
                        retry_at: None,
                        provider_id: None,
                        attempt: Some(AttemptRecord {
                            at: now,
                            result: "render_error".into(),
                            code: None,
                            detail: Some(why),
                            duration_ms: 0,
                        }),
                        links: vec![],
                        suppress_address: None,
                    })
                }
            }
        }
        let sending: Vec<i64> = ready.iter().map(|(m, _)| m.id).collect();
        self.store.mark_sending(&sending, now).await?;
        let width = self
            .routes
            .values()
            .map(|r| r.concurrency.available_permits())
            .sum::<usize>()
            .max(1);
        let results: Vec<Outcome> = futures::stream::iter(ready)
            .map(|(msg, out)| self.send_one(msg, out))
            .buffer_unordered(width)
            .collect()
            .await;
        for o in &results {
            match o.status {
                MessageStatus::Sent | MessageStatus::Delivered => stats.accepted += 1,
                MessageStatus::Failed => stats.failed += 1,
                MessageStatus::Unknown => stats.unknown += 1,
                MessageStatus::Planned => stats.retried += 1,
                _ => {}
            }
        }
        outcomes.extend(results);
        self.store
            .record_outcomes(&outcomes, self.clock.now_ms())
            .await
    }

    async fn send_one(&self, msg: ClaimedMessage, out: RenderOutput) -> Outcome {
        let mut outcome = Outcome {
            message_id: msg.id,
            status: MessageStatus::Failed,
            reason: None,
            retry_at: None,
            provider_id: None,
            attempt: None,
            links: out.links,
            suppress_address: None,
        };
        let Some(route) = self.routes.get(&msg.channel) else {
            outcome.reason = Some(format!("no {} channel is configured", msg.channel));
            return outcome;
        };
        let _permit = route.concurrency.acquire().await;
        // Throttle inside retry: every attempt takes a fresh permit.
        route.pacer.acquire().await;
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
        outcome.attempt = Some(AttemptRecord {
            at,
            result: result_name.into(),
            code,
            detail: Some(detail.clone()),
            duration_ms,
        });
        match result {
            Ok(receipt) => {
                outcome.status = if receipt.delivered_on_accept {
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
