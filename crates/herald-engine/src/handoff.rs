//! The hand-off from the planner to this process's workers. A page's
//! messages that are due now are written as sent, in a flight under a lease
//! ([`crate::store::Written`]), and go straight to a worker: no claim query,
//! and an accepted send writes its message row no second time. Crash
//! safety is the claim's: a crash leaves the flight, and when its lease
//! lapses its messages end `unknown`, never resent.
//!
//! One batch waits at most (the slot). When the last one is still there,
//! no worker is free, and the page is written `planned` for any worker of
//! any daemon to claim: several daemons still share a run, and the
//! in-flight window grows by one batch (`(workers + 1) × batch`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::mpsc::{self, Permit};

use crate::store::{ClaimedMessage, PlannedMessage};
use herald_domain::types::{Channel, MessageStatus};

/// The slot between the planner and the workers of one process.
pub struct Handoff {
    tx: mpsc::Sender<Vec<ClaimedMessage>>,
    rx: tokio::sync::Mutex<mpsc::Receiver<Vec<ClaimedMessage>>>,
    /// Most messages handed at once: the workers' batch.
    pub batch: usize,
    /// The lease a handed batch is written under: twice the workers' lease,
    /// since it may wait in the slot while a worker finishes its batch.
    pub lease: Duration,
    /// The lease's owner.
    pub owner: String,
    /// The channels whose adapter counts acceptance as delivery (see
    /// [`crate::store::Handed`]); empty: every handed message is written `sent`.
    pub delivered_on_accept: Vec<Channel>,
    /// Whether the planner waits for the slot (see [`Handoff::reserve`]).
    patient: AtomicBool,
    /// The channels whose messages may be handed (`None`: all): a slow
    /// route's messages are left `planned` for its lane to claim at its pace.
    channels: Option<Vec<Channel>>,
}

/// How long the planner waits for a worker to take the last batch handed
/// over, before it writes a page `planned` instead: about a worker's batch.
pub const PATIENCE: Duration = Duration::from_millis(100);

impl Handoff {
    /// A slot for batches of `batch` messages, leased to `owner` for twice `lease`.
    pub fn new(owner: String, batch: usize, lease: Duration) -> Self {
        let (tx, rx) = mpsc::channel(1);
        Self {
            tx,
            rx: tokio::sync::Mutex::new(rx),
            batch: batch.max(1),
            lease: lease.saturating_mul(2),
            owner,
            delivered_on_accept: Vec::new(),
            patient: AtomicBool::new(true),
            channels: None,
        }
    }

    /// Writes handed messages on `channels` `delivered` (their adapters count
    /// acceptance as delivery), the others `sent`.
    pub fn with_delivered_on_accept(mut self, channels: Vec<Channel>) -> Self {
        self.delivered_on_accept = channels;
        self
    }

    /// Hands over only messages on `channels` (the routes fast enough to
    /// send a batch within a lane's horizon).
    pub fn with_channels(mut self, channels: Vec<Channel>) -> Self {
        self.channels = Some(channels);
        self
    }

    /// The slot, once it is free: the planner hands the next batch through
    /// it. Waits up to [`PATIENCE`] for a worker to take the last batch; after
    /// a wait in vain, waits no more until the slot is found free again, so a
    /// planner whose workers are all busy (a slow channel) writes its pages
    /// `planned` at full speed, for any daemon to claim.
    pub async fn reserve(&self) -> Option<Permit<'_, Vec<ClaimedMessage>>> {
        if let Ok(permit) = self.tx.try_reserve() {
            self.patient.store(true, Ordering::Relaxed);
            return Some(permit);
        }
        if !self.patient.load(Ordering::Relaxed) {
            return None;
        }
        match tokio::time::timeout(PATIENCE, self.tx.reserve()).await {
            Ok(permit) => permit.ok(),
            Err(_) => {
                self.patient.store(false, Ordering::Relaxed);
                None
            }
        }
    }

    /// The batch in the slot, if there is one and no other worker is taking it.
    pub fn try_take(&self) -> Option<Vec<ClaimedMessage>> {
        self.rx.try_lock().ok()?.try_recv().ok()
    }

    /// The next batch handed within `wait`, if any.
    pub async fn take_within(&self, wait: Duration) -> Option<Vec<ClaimedMessage>> {
        tokio::time::timeout(wait, async { self.rx.lock().await.recv().await })
            .await
            .ok()
            .flatten()
    }

    /// Closes the slot (the planner hands nothing more) and returns what is
    /// still in it or being written under a reserved slot; `None` once empty.
    pub async fn close_and_take(&self) -> Option<Vec<ClaimedMessage>> {
        let mut rx = self.rx.lock().await;
        rx.close();
        rx.recv().await
    }

    /// Which rows of a page may be handed at `now`: the first `batch` of
    /// those to send now (not held out, suppressed, waiting for a rollout
    /// decision or for a later hour).
    pub fn pick(&self, rows: &[PlannedMessage], now: i64) -> Vec<bool> {
        let mut left = self.batch;
        rows.iter()
            .map(|m| {
                let take = left > 0
                    && m.status == MessageStatus::Planned
                    && m.send_at <= now
                    && m.arm != crate::rollout::WAITING_ARM
                    && m.channel
                        .is_some_and(|c| self.channels.as_ref().is_none_or(|l| l.contains(&c)))
                    && m.address.is_some();
                left -= usize::from(take);
                take
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(contact_id: i64, status: MessageStatus, send_at: i64, arm: &str) -> PlannedMessage {
        PlannedMessage {
            contact_id,
            step: 0,
            arm: arm.into(),
            channel: Some(Channel::Email),
            address: Some(format!("c{contact_id}@example.com")),
            send_at,
            status,
            reason: None,
            pre: Default::default(),
        }
    }

    #[test]
    fn only_messages_due_now_are_picked_up_to_a_batch() {
        let h = Handoff::new("me".into(), 2, Duration::from_secs(60));
        let rows = vec![
            row(1, MessageStatus::HeldOut, 0, "holdout"),
            row(2, MessageStatus::Planned, 100, "a"), // later
            row(3, MessageStatus::Planned, 0, crate::rollout::WAITING_ARM),
            row(4, MessageStatus::Suppressed, 0, "a"),
            row(5, MessageStatus::Planned, 0, "a"),
            row(6, MessageStatus::Planned, 50, "b"),
            row(7, MessageStatus::Planned, 0, "a"), // beyond the batch
        ];
        assert_eq!(
            h.pick(&rows, 50),
            vec![false, false, false, false, true, true, false]
        );
        assert_eq!(h.lease, Duration::from_secs(120));
        // A slow route's messages are not handed: its lane claims them at its pace.
        let h = Handoff::new("me".into(), 2, Duration::from_secs(60)).with_channels(vec![]);
        assert_eq!(
            h.pick(&rows, 50),
            vec![false, false, false, false, false, false, false]
        );
    }

    fn batch(n: usize) -> Vec<ClaimedMessage> {
        (0..n as i64)
            .map(|id| ClaimedMessage {
                id,
                run_id: 1,
                contact_id: id,
                arm: "a".into(),
                channel: Channel::Email,
                address: format!("c{id}@example.com"),
                step: 0,
                attempts: 0,
                send_at: 0,
                written: None,
                first: false,
            })
            .collect()
    }

    // Paused time: the waits are virtual, the test takes no time.
    #[tokio::test(start_paused = true)]
    async fn the_planner_waits_for_a_free_worker_once_then_stops_waiting() {
        let h = std::sync::Arc::new(Handoff::new("me".into(), 10, Duration::from_secs(60)));
        let start = tokio::time::Instant::now();
        h.reserve().await.expect("the slot is free").send(batch(3));
        assert_eq!(start.elapsed(), Duration::ZERO);

        // A worker takes the batch within the patience: the planner waited for it.
        let worker = {
            let h = h.clone();
            tokio::spawn(async move {
                tokio::time::sleep(PATIENCE / 2).await;
                h.try_take().map(|b| b.len())
            })
        };
        let permit = h.reserve().await.expect("taken in time");
        assert_eq!(start.elapsed(), PATIENCE / 2);
        assert_eq!(worker.await.unwrap(), Some(3));
        permit.send(batch(2));

        // No worker comes: one wait in vain, then none until the slot is seen free.
        let before = tokio::time::Instant::now();
        assert!(h.reserve().await.is_none());
        assert_eq!(before.elapsed(), PATIENCE);
        let before = tokio::time::Instant::now();
        assert!(h.reserve().await.is_none());
        assert_eq!(before.elapsed(), Duration::ZERO, "no second wait");

        assert_eq!(h.take_within(PATIENCE).await.map(|b| b.len()), Some(2));
        assert!(h.reserve().await.is_some(), "free again");
    }

    #[tokio::test(start_paused = true)]
    async fn closing_returns_what_is_handed_and_takes_no_more() {
        let h = Handoff::new("me".into(), 10, Duration::from_secs(60));
        h.reserve().await.expect("free").send(batch(4));
        assert_eq!(h.close_and_take().await.map(|b| b.len()), Some(4));
        assert!(h.close_and_take().await.is_none());
        assert!(
            h.reserve().await.is_none(),
            "closed: the planner writes `planned`"
        );
        assert!(h.take_within(PATIENCE).await.is_none());
    }
}
