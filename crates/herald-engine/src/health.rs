//! A route's health: open, or blocked by an account fault (the provider
//! refused the sender's account, not a message; see
//! `herald_channels::DeliveryError::AccountFault`). A blocked route sends
//! nothing but probes: one message at a time, on a schedule that starts at
//! [`PROBE_FIRST`] and doubles up to [`PROBE_MAX`]; a probe that is not
//! refused for the account opens the route again. `herald runs resume`
//! asks for a probe at once ([`RouteHealth::probe_now`]).
//!
//! Pure: every method takes the clock's `now` (ms); the dispatcher does the
//! IO (logging once, the `route_blocks` row, `/metrics`).

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// The first probe of a blocked route comes this long after the block.
pub const PROBE_FIRST: Duration = Duration::from_secs(1);
/// Probes of a route that stays blocked are at most this far apart.
pub const PROBE_MAX: Duration = Duration::from_secs(60);

/// Why and since when a route is blocked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// The provider's words: `authentication failed (Twilio 20003: ...)`.
    pub reason: String,
    /// When the block began (ms).
    pub since: i64,
    /// When the next probe may go (ms).
    pub next_probe: i64,
    /// The wait after the next refused probe.
    pub backoff: Duration,
    /// A probe is in the air: no second one until it answers.
    pub probing: bool,
    /// Probes sent so far.
    pub probes: u64,
}

/// What a worker of the route may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Send as usual.
    Open,
    /// Send exactly one message: the probe.
    Probe,
    /// Send nothing until this instant (ms).
    Wait(i64),
}

/// What an answer changed, for the IO at the edge (log once, write the row).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Nothing to say.
    None,
    /// The route just turned blocked with this reason.
    Blocked(String),
    /// A probe was refused again; the route stays blocked.
    StillBlocked,
    /// The route is open again after this long blocked.
    Unblocked(Duration),
}

/// How many past blocks a route remembers for message ages (the oldest
/// is forgotten first: a message then only looks older, never younger).
const SPANS_KEPT: usize = 32;

/// A route's health, shared by its workers.
#[derive(Debug, Default)]
pub struct RouteHealth {
    state: Mutex<Option<Block>>,
    /// The blocks that ended: (since, until) ms, oldest first.
    spans: Mutex<Vec<(i64, i64)>>,
}

impl RouteHealth {
    fn lock(&self) -> MutexGuard<'_, Option<Block>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The block, if the route is blocked.
    pub fn block(&self) -> Option<Block> {
        self.lock().clone()
    }

    /// Whether the route is blocked.
    pub fn is_blocked(&self) -> bool {
        self.lock().is_some()
    }

    /// How long the route has been blocked at `now`, if it is.
    pub fn blocked_for(&self, now: i64) -> Option<Duration> {
        self.lock()
            .as_ref()
            .map(|b| Duration::from_millis((now - b.since).max(0) as u64))
    }

    /// What a worker may do at `now`. [`Admit::Probe`] is given to one
    /// worker only: the probe is then in the air until [`RouteHealth::answer`].
    pub fn admit(&self, now: i64) -> Admit {
        let mut state = self.lock();
        match state.as_mut() {
            None => Admit::Open,
            Some(b) if b.probing => Admit::Wait(now + PROBE_FIRST.as_millis() as i64),
            Some(b) if now >= b.next_probe => {
                b.probing = true;
                b.probes += 1;
                Admit::Probe
            }
            Some(b) => Admit::Wait(b.next_probe),
        }
    }

    /// A probe that found nothing to send (no message due): the next one may go later.
    pub fn probe_unused(&self, now: i64) {
        if let Some(b) = self.lock().as_mut() {
            b.probing = false;
            b.probes = b.probes.saturating_sub(1);
            b.next_probe = b.next_probe.max(now + PROBE_FIRST.as_millis() as i64);
        }
    }

    /// Learns from an answer at `now`: `Some(reason)` for an account fault,
    /// `None` for any other answer (accepted, or the message's own failure:
    /// the account works).
    pub fn answer(&self, account_fault: Option<&str>, now: i64) -> Change {
        let mut state = self.lock();
        match (state.as_mut(), account_fault) {
            (None, None) => Change::None,
            (None, Some(reason)) => {
                *state = Some(Block {
                    reason: reason.to_string(),
                    since: now,
                    next_probe: now + PROBE_FIRST.as_millis() as i64,
                    backoff: (PROBE_FIRST * 2).min(PROBE_MAX),
                    probing: false,
                    probes: 0,
                });
                Change::Blocked(reason.to_string())
            }
            (Some(b), Some(reason)) => {
                // Several sends were in the air when the block began: only a
                // probe's refusal moves the schedule on.
                if b.probing {
                    b.probing = false;
                    b.next_probe = now + b.backoff.as_millis() as i64;
                    b.backoff = (b.backoff * 2).min(PROBE_MAX);
                }
                b.reason = reason.to_string();
                Change::StillBlocked
            }
            (Some(b), None) => {
                let was = Duration::from_millis((now - b.since).max(0) as u64);
                let mut spans = self.spans.lock().unwrap_or_else(PoisonError::into_inner);
                if spans.len() >= SPANS_KEPT {
                    spans.remove(0);
                }
                spans.push((b.since, now));
                *state = None;
                Change::Unblocked(was)
            }
        }
    }

    /// How long (ms) the route was blocked between `from` and `to`: a
    /// message's age leaves that out, so `max_age` does not run while the
    /// route could not send it (its messages were held for the route's
    /// fault, not theirs). Counts the block still going, up to `to`.
    pub fn blocked_within(&self, from: i64, to: i64) -> i64 {
        let current = self.lock().as_ref().map(|b| (b.since, i64::MAX));
        let spans = self.spans.lock().unwrap_or_else(PoisonError::into_inner);
        spans
            .iter()
            .copied()
            .chain(current)
            .map(|(a, b)| (b.min(to) - a.max(from)).max(0))
            .sum()
    }

    /// Probes at once (`herald runs resume`), and restarts the backoff.
    pub fn probe_now(&self, now: i64) {
        if let Some(b) = self.lock().as_mut() {
            b.next_probe = b.next_probe.min(now);
            b.backoff = (PROBE_FIRST * 2).min(PROBE_MAX);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1000;

    #[test]
    fn an_open_route_sends_and_a_fault_blocks_it_until_a_probe_passes() {
        let h = RouteHealth::default();
        assert_eq!(h.admit(0), Admit::Open);
        assert_eq!(h.answer(None, 0), Change::None);
        assert_eq!(
            h.answer(Some("authentication failed (Twilio 20003)"), 10),
            Change::Blocked("authentication failed (Twilio 20003)".into())
        );
        // The sends that were in the air answer too: one block, logged once.
        assert_eq!(h.answer(Some("again"), 20), Change::StillBlocked);
        assert_eq!(h.admit(20), Admit::Wait(10 + S));
        assert_eq!(h.blocked_for(510), Some(Duration::from_millis(500)));
        // One probe at a time.
        assert_eq!(h.admit(10 + S), Admit::Probe);
        assert_eq!(h.admit(10 + S), Admit::Wait(10 + 2 * S));
        // Refused: 2 s, then 4 s, ... up to a minute.
        assert_eq!(h.answer(Some("x"), 20 + S), Change::StillBlocked);
        assert_eq!(h.admit(20 + S), Admit::Wait(20 + 3 * S));
        assert_eq!(h.admit(20 + 3 * S), Admit::Probe);
        h.answer(Some("x"), 20 + 3 * S);
        assert_eq!(h.admit(20 + 3 * S), Admit::Wait(20 + 7 * S));
        assert_eq!(h.admit(20 + 7 * S), Admit::Probe);
        assert_eq!(
            h.answer(None, 30 + 7 * S),
            Change::Unblocked(Duration::from_millis(20 + 7000))
        );
        assert_eq!(h.admit(30 + 7 * S), Admit::Open);
        assert_eq!(h.block(), None);
    }

    #[test]
    fn the_time_blocked_is_counted_between_two_instants() {
        let h = RouteHealth::default();
        assert_eq!(h.blocked_within(0, 100 * S), 0);
        h.answer(Some("x"), 10 * S);
        // Still blocked: counted up to `to`.
        assert_eq!(h.blocked_within(0, 15 * S), 5 * S);
        h.answer(None, 20 * S);
        h.answer(Some("x"), 30 * S);
        h.answer(None, 35 * S);
        assert_eq!(h.blocked_within(0, 100 * S), 15 * S);
        // Only the part of a block inside the window.
        assert_eq!(h.blocked_within(15 * S, 32 * S), 7 * S);
        assert_eq!(h.blocked_within(40 * S, 100 * S), 0);
        h.answer(Some("x"), 50 * S);
        assert_eq!(h.blocked_within(0, 60 * S), 25 * S);
    }

    #[test]
    fn the_backoff_stops_at_a_minute() {
        let h = RouteHealth::default();
        h.answer(Some("x"), 0);
        let mut now = 0;
        let mut waits = Vec::new();
        for _ in 0..10 {
            let Admit::Wait(until) = h.admit(now) else {
                panic!("blocked")
            };
            now = until;
            assert_eq!(h.admit(now), Admit::Probe);
            h.answer(Some("x"), now);
            waits.push(match h.admit(now) {
                Admit::Wait(u) => (u - now) / S,
                other => panic!("{other:?}"),
            });
        }
        assert_eq!(waits, [2, 4, 8, 16, 32, 60, 60, 60, 60, 60]);
    }

    #[test]
    fn resume_probes_at_once_and_an_unused_probe_is_given_back() {
        let h = RouteHealth::default();
        h.answer(Some("x"), 0);
        for _ in 0..5 {
            let Admit::Wait(until) = h.admit(0) else {
                panic!()
            };
            h.admit(until);
            h.answer(Some("x"), until);
        }
        let now = 50 * S;
        assert!(matches!(h.admit(now), Admit::Wait(u) if u > now));
        h.probe_now(now);
        assert_eq!(h.admit(now), Admit::Probe);
        // Nothing was due to probe with: the probe is free again a second later.
        h.probe_unused(now);
        assert_eq!(h.admit(now), Admit::Wait(now + S));
        assert_eq!(h.admit(now + S), Admit::Probe);
    }
}
