//! Adaptive pacing: 429s slow a route down to the rate the provider accepts and successes
//! bring it back, without ever pausing it. governor cannot change a quota in place, so a
//! [`Pacer`] keeps the configured [`Limiter`] as the hard ceiling and, while slowed, adds its
//! own gate at a lower rate.
//!
//! AIMD around the accepted rate, decided once per window ([`PacerConfig::window`]): a
//! window with 429s sets the rate to what the provider accepted in it (never less than half
//! the rate, nor the floor); a window without lets it climb by the ceiling per
//! [`PacerConfig::recovery`]. 429s that do not become rarer when the route slows down (a
//! provider answering a random share of requests 429, below [`FUTILE_MAX_SHARE`]) are not
//! about our pace: the route does not slow down for them again and climbs back. A 429's
//! message waits its own `Retry-After` in the retry policy; the pacer never holds the route.
//!
//! Wiring: the dispatcher calls [`Pacer::acquire`] before every attempt and
//! [`Pacer::on_result`] with the adapter's answer after it.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock, Reference};

use crate::DeliveryError;
use crate::rate::{Limiter, RateLimit};

/// A slow-down that did not lower the share of 429s below this fraction of
/// the share before it did not help: the 429s are not about our pace.
pub const FUTILE_RATIO: f64 = 0.8;
/// Above this share of 429s the provider is refusing most of what we send:
/// the route keeps slowing down whatever the last slow-down did.
pub const FUTILE_MAX_SHARE: f64 = 0.5;

/// How a [`Pacer`] slows down and recovers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PacerConfig {
    /// One window never cuts the rate below this share of it (`0.5` halves it at most).
    pub decrease: f64,
    /// The slowed rate never goes below this share of the configured rate (nor below 1/s).
    pub floor: f64,
    /// While no 429 comes, the rate climbs back by the configured rate per `recovery`
    /// (from half speed to full in half of it).
    pub recovery: Duration,
    /// The pacer decides once per window, from the answers in it: the requests in flight
    /// all answer 429 at once, and that is one signal, not many.
    pub window: Duration,
}

impl Default for PacerConfig {
    fn default() -> Self {
        PacerConfig {
            decrease: 0.5,
            floor: 0.05,
            recovery: Duration::from_secs(10),
            window: Duration::from_secs(1),
        }
    }
}

/// A route's rate limiter that slows down on 429s and recovers on successes.
///
/// It replaces a route's [`Limiter`] one for one: `Pacer::new(rate)` where the route had
/// `Limiter::new(rate)`, then per attempt `pacer.acquire().await`, `adapter.send(..)`,
/// `pacer.on_result(&result)`. A 429's message itself still waits its `retry_after` in the
/// retry policy; the pacer only slows the route's other sends, it never holds them.
///
/// Several daemons: each one's pacer is capped at its share of the configured rate
/// ([`Pacer::set_share`]) and sees its part of the provider's answers, so each follows its
/// part of the accepted rate and together they follow the whole.
#[derive(Debug)]
pub struct Pacer<C: Clock = DefaultClock> {
    limiter: Limiter<C>,
    clock: C,
    origin: C::Instant,
    /// The configured rate; `None` is unlimited, which the pacer leaves alone.
    ceiling: Option<f64>,
    config: PacerConfig,
    state: Mutex<PaceState>,
}

#[derive(Debug)]
struct PaceState {
    /// Permits a second now; equal to the ceiling when not slowed.
    rate: f64,
    /// While slowed, the earliest instant of the next permit.
    next: Duration,
    /// When the current window began.
    window_start: Duration,
    /// Answers in the current window that were not throttled (accepted, or the message's own refusal).
    answered: u32,
    /// 429s in the current window.
    throttled: u32,
    /// The share of 429s in the window that last slowed the route down,
    /// until a window without 429s.
    slowed_at_share: Option<f64>,
    /// This process's share of the configured rate (several daemons split it).
    share: f64,
}

impl Pacer {
    /// A pacer on the real clock with the default behaviour.
    pub fn new(limit: Option<RateLimit>) -> Self {
        Self::with_clock(limit, PacerConfig::default(), DefaultClock::default())
    }

    /// A pacer on the real clock.
    pub fn with_config(limit: Option<RateLimit>, config: PacerConfig) -> Self {
        Self::with_clock(limit, config, DefaultClock::default())
    }
}

impl<C: Clock + Clone> Pacer<C> {
    /// A pacer on the given clock (tests pass `governor::clock::FakeRelativeClock`).
    pub fn with_clock(limit: Option<RateLimit>, config: PacerConfig, clock: C) -> Self {
        let ceiling = limit.map(|l| f64::from(l.per_second));
        Pacer {
            limiter: Limiter::with_clock(limit, clock.clone()),
            origin: clock.now(),
            clock,
            ceiling,
            config,
            state: Mutex::new(PaceState {
                rate: ceiling.unwrap_or(f64::INFINITY),
                next: Duration::ZERO,
                window_start: Duration::ZERO,
                answered: 0,
                throttled: 0,
                slowed_at_share: None,
                share: 1.0,
            }),
        }
    }

    fn now(&self) -> Duration {
        self.clock.now().duration_since(self.origin).into()
    }

    /// The rate in effect, permits a second; `None` when unlimited.
    pub fn current_rate(&self) -> Option<f64> {
        self.ceiling?;
        Some(self.lock().rate)
    }

    /// Takes a permit if one is free now, else says how long until one may be.
    pub fn try_acquire(&self) -> Result<(), Duration> {
        let Some(ceiling) = self.ceiling else {
            return self.limiter.try_acquire();
        };
        let now = self.now();
        let mut state = self.lock();
        let slowed = state.rate < ceiling;
        if slowed && now < state.next {
            return Err(state.next - now);
        }
        self.limiter.try_acquire()?;
        if slowed {
            let interval = Duration::from_secs_f64(1.0 / state.rate);
            // A little late keeps the schedule (no drift); after an idle spell it restarts.
            state.next = if now < state.next + interval {
                state.next + interval
            } else {
                now + interval
            };
        }
        Ok(())
    }

    /// Waits until a permit is free and takes it (every attempt, retries included).
    pub async fn acquire(&self) {
        while let Err(wait) = self.try_acquire() {
            tokio::time::sleep(wait).await;
        }
    }

    /// Learns from an attempt's answer: `RateLimited` counts as throttled, an answer that
    /// was not throttled (accepted, or refused for the message's own sake) as answered; the
    /// rest (a server error, a lost answer, a refused account) says nothing about our pace.
    /// A window that ended is decided first.
    pub fn on_result<T>(&self, result: &Result<T, DeliveryError>) {
        let Some(ceiling) = self.ceiling else {
            return;
        };
        let now = self.now();
        let mut state = self.lock();
        self.close_window(&mut state, now, ceiling);
        match result {
            Err(DeliveryError::RateLimited { .. }) => state.throttled += 1,
            Ok(_) | Err(DeliveryError::Permanent { .. }) => state.answered += 1,
            Err(
                DeliveryError::Transient { .. }
                | DeliveryError::Ambiguous { .. }
                | DeliveryError::AccountFault { .. }
                | DeliveryError::PlatformFault { .. },
            ) => {}
        }
    }

    /// Decides the window that ended by `now`, if one did: slow down to the accepted rate,
    /// or climb back.
    fn close_window(&self, state: &mut PaceState, now: Duration, ceiling: f64) {
        let length = now.saturating_sub(state.window_start);
        if length < self.config.window {
            return;
        }
        let secs = length.as_secs_f64();
        let cap = ceiling * state.share;
        let answers = state.answered + state.throttled;
        if state.throttled > 0 {
            let share = f64::from(state.throttled) / f64::from(answers);
            let futile = share < FUTILE_MAX_SHARE
                && state
                    .slowed_at_share
                    .is_some_and(|before| share >= before * FUTILE_RATIO);
            if futile {
                self.climb(state, secs, cap);
            } else {
                let accepted = f64::from(state.answered) / secs;
                let floor = (ceiling * self.config.floor).max(ceiling.min(1.0));
                let rate = (state.rate * self.config.decrease)
                    .max(accepted)
                    .max(floor)
                    .min(state.rate);
                if state.rate >= ceiling && rate < ceiling {
                    // The gate starts now; until then governor alone paced the route.
                    state.next = now;
                }
                state.rate = rate;
                state.slowed_at_share = Some(share);
            }
        } else if answers > 0 {
            state.slowed_at_share = None;
            self.climb(state, secs, cap);
        }
        // Windows are whole multiples of the window from the pacer's start.
        let into = now.as_nanos() % self.config.window.as_nanos().max(1);
        state.window_start = now.saturating_sub(Duration::from_nanos(into as u64));
        state.answered = 0;
        state.throttled = 0;
    }

    /// Additive increase over `secs`, up to `cap`.
    fn climb(&self, state: &mut PaceState, secs: f64, cap: f64) {
        let Some(ceiling) = self.ceiling else {
            return;
        };
        if state.rate < cap {
            let step = ceiling * secs / self.config.recovery.as_secs_f64();
            state.rate = (state.rate + step).min(cap);
        }
    }

    /// Sets this process's share of the configured rate, in (0, 1]: with N
    /// daemons on one database each takes 1/N, so together they keep the
    /// provider's limit. The share caps the rate like a slow-down that never recovers past it.
    pub fn set_share(&self, share: f64) {
        let Some(ceiling) = self.ceiling else {
            return;
        };
        let share = if share.is_finite() {
            share.clamp(0.01, 1.0)
        } else {
            1.0
        };
        let now = self.now();
        let mut state = self.lock();
        let cap = ceiling * share;
        if state.rate >= ceiling && cap < ceiling {
            // The gate starts now; until then governor alone paced the route.
            state.next = now;
        }
        if state.rate > cap || state.rate >= ceiling * state.share {
            state.rate = cap;
        }
        state.share = share;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PaceState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ProviderReceipt;
    use governor::clock::FakeRelativeClock;

    const MS: Duration = Duration::from_millis(1);

    fn pacer(per_second: u32, burst: u32) -> (Pacer<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        let limit = RateLimit {
            per_second,
            burst: Some(burst),
        };
        let p = Pacer::with_clock(Some(limit), PacerConfig::default(), clock.clone());
        (p, clock)
    }

    fn ok() -> Result<ProviderReceipt, DeliveryError> {
        Ok(ProviderReceipt::default())
    }

    fn throttled(secs: u64) -> Result<ProviderReceipt, DeliveryError> {
        Err(DeliveryError::RateLimited {
            code: "429".into(),
            detail: String::new(),
            retry_after: Some(Duration::from_secs(secs)),
        })
    }

    /// Permits taken over `total` of fake time, trying every millisecond; each permit's
    /// send succeeds when `succeed`.
    fn permits_over(
        p: &Pacer<FakeRelativeClock>,
        clock: &FakeRelativeClock,
        total: Duration,
        succeed: bool,
    ) -> usize {
        let mut taken = 0;
        let mut elapsed = Duration::ZERO;
        while elapsed < total {
            while p.try_acquire().is_ok() {
                taken += 1;
                if succeed {
                    p.on_result(&ok());
                }
            }
            clock.advance(MS);
            elapsed += MS;
        }
        taken
    }

    #[test]
    fn at_full_speed_it_is_the_limiter() {
        let (p, clock) = pacer(100, 10);
        assert_eq!(p.current_rate(), Some(100.0));
        // The first permit at once, no burst at the start, then one every 10 ms.
        assert_eq!(permits_over(&p, &clock, Duration::from_secs(1), true), 100);
        assert_eq!(permits_over(&p, &clock, Duration::from_secs(1), true), 100);
        // After a pause, the burst (10, less nothing at this rate) and then the rate.
        clock.advance(Duration::from_secs(1));
        assert_eq!(
            permits_over(&p, &clock, Duration::from_secs(1), true),
            10 + 99
        );
    }

    /// One second of sends as fast as the pacer allows, each answered by `answer(n)` where
    /// `n` counts the permits of that second from 0; returns the permits.
    fn second_of(
        p: &Pacer<FakeRelativeClock>,
        clock: &FakeRelativeClock,
        answer: impl Fn(usize) -> Result<ProviderReceipt, DeliveryError>,
    ) -> usize {
        let mut n = 0;
        for _ in 0..1000 {
            while p.try_acquire().is_ok() {
                p.on_result(&answer(n));
                n += 1;
            }
            clock.advance(MS);
        }
        n
    }

    #[test]
    fn a_share_caps_the_rate_and_successes_never_recover_past_it() {
        let (p, clock) = pacer(100, 10);
        p.set_share(0.5);
        assert_eq!(p.current_rate(), Some(50.0));
        let n = permits_over(&p, &clock, Duration::from_secs(2), true);
        assert!((99..=101).contains(&n), "{n}");
        assert_eq!(p.current_rate(), Some(50.0), "successes stop at the share");
        // A second of nothing but 429s halves the shared rate; recovery climbs back to the share only.
        second_of(&p, &clock, |_| throttled(1));
        p.on_result(&ok());
        assert_eq!(p.current_rate(), Some(25.0));
        permits_over(&p, &clock, Duration::from_secs(30), true);
        assert_eq!(p.current_rate(), Some(50.0));
        // The other daemon left: the whole rate again.
        p.set_share(1.0);
        assert_eq!(p.current_rate(), Some(100.0));
        permits_over(&p, &clock, Duration::from_secs(1), true);
        let n = permits_over(&p, &clock, Duration::from_secs(1), true);
        assert!((99..=101).contains(&n), "{n}");
    }

    #[test]
    fn a_token_bucket_provider_slows_the_route_to_what_it_accepts_without_pausing() {
        // The provider takes 70 a second and answers the rest 429 (Retry-After: 1).
        let (p, clock) = pacer(100, 10);
        let bucket = |n: usize| if n < 70 { ok() } else { throttled(1) };
        assert_eq!(second_of(&p, &clock, bucket), 100);
        // The window closes at the next answer: the rate is what was accepted, not a halving.
        p.on_result(&ok());
        assert_eq!(p.current_rate(), Some(70.0));
        // Not a pause: the next permit within one slowed interval, not the Retry-After.
        let mut waited = Duration::ZERO;
        while let Err(wait) = p.try_acquire() {
            clock.advance(wait);
            waited += wait;
        }
        assert!(waited <= Duration::from_millis(15), "{waited:?}");
        // Around the accepted rate from then on: each second it probes a little above,
        // is told 429 for the excess, and comes back.
        let mut accepted = 0;
        for _ in 0..20 {
            let n = second_of(&p, &clock, bucket);
            accepted += n.min(70);
            let rate = p.current_rate().unwrap();
            assert!((69.0..=81.0).contains(&rate), "{rate}");
        }
        assert!(accepted >= 20 * 63, "accepted {accepted} in 20 s");
    }

    #[test]
    fn random_429s_do_not_pin_the_route() {
        // 30% of requests 429 whatever the pace: slowing down once does not lower the
        // share of 429s, so the route climbs back to the configured rate and stays there.
        let (p, clock) = pacer(100, 10);
        let random = |n: usize| if n % 10 < 3 { throttled(1) } else { ok() };
        let mut per_second = Vec::new();
        for _ in 0..10 {
            per_second.push(second_of(&p, &clock, random));
        }
        assert!(per_second[0] >= 99, "{per_second:?}");
        assert!(per_second[9] >= 99, "{per_second:?}");
        let accepted: usize = per_second.iter().map(|n| n * 7 / 10).sum();
        assert!(
            accepted >= 10 * 60,
            "{accepted} accepted in 10 s: {per_second:?}"
        );
        assert_eq!(p.current_rate(), Some(100.0));
    }

    #[test]
    fn a_storm_of_429s_slows_by_halves_down_to_the_floor() {
        let (p, clock) = pacer(100, 10);
        // Many 429s within one window are one slow-down.
        for _ in 0..20 {
            p.on_result(&throttled(0));
        }
        assert_eq!(
            p.current_rate(),
            Some(100.0),
            "decided when the window ends"
        );
        for expect in [50.0, 25.0, 12.5, 6.25, 5.0, 5.0] {
            clock.advance(Duration::from_secs(1));
            p.on_result(&throttled(0));
            assert_eq!(p.current_rate(), Some(expect));
        }
        // A 1/s route cannot go below 1/s.
        let (slow, clock) = pacer(1, 1);
        for _ in 0..3 {
            slow.on_result(&throttled(0));
            clock.advance(Duration::from_secs(1));
        }
        slow.on_result(&throttled(0));
        assert_eq!(slow.current_rate(), Some(1.0));
    }

    #[test]
    fn successes_bring_the_rate_back_within_ten_seconds() {
        let (p, clock) = pacer(100, 10);
        second_of(&p, &clock, |_| throttled(2));
        p.on_result(&ok());
        assert_eq!(p.current_rate(), Some(50.0));
        // It climbs by 100/s per 10 s: about +25/s after 2.5 s, full within 5 s.
        permits_over(&p, &clock, Duration::from_millis(2500), true);
        let rate = p.current_rate().unwrap();
        assert!((70.0..=80.0).contains(&rate), "{rate}");
        permits_over(&p, &clock, Duration::from_secs(3), true);
        assert_eq!(p.current_rate(), Some(100.0));
        // Back at full speed, governor alone paces again.
        assert_eq!(permits_over(&p, &clock, Duration::from_secs(1), true), 100);
    }

    #[test]
    fn failures_that_are_not_throttling_neither_slow_nor_speed() {
        let (p, clock) = pacer(100, 10);
        let server_error = || -> Result<ProviderReceipt, DeliveryError> {
            Err(DeliveryError::Transient {
                code: "503".into(),
                detail: String::new(),
                retry_after: None,
            })
        };
        second_of(&p, &clock, |_| throttled(0));
        p.on_result(&server_error());
        assert_eq!(p.current_rate(), Some(50.0));
        for _ in 0..5 {
            clock.advance(Duration::from_secs(1));
            p.on_result(&server_error());
            p.on_result::<()>(&Err(DeliveryError::Ambiguous {
                detail: String::new(),
            }));
            p.on_result::<()>(&Err(DeliveryError::AccountFault {
                code: "20003".into(),
                detail: String::new(),
            }));
        }
        assert_eq!(p.current_rate(), Some(50.0));
        // A refusal for the message's own sake is an answer: the pace was fine.
        p.on_result::<()>(&Err(DeliveryError::Permanent {
            code: "21211".into(),
            detail: String::new(),
            suppress_address: false,
        }));
        clock.advance(Duration::from_secs(1));
        p.on_result(&ok());
        assert_eq!(p.current_rate(), Some(60.0));
    }

    #[test]
    fn unlimited_stays_unlimited() {
        let clock = FakeRelativeClock::default();
        let p = Pacer::with_clock(None, PacerConfig::default(), clock);
        p.on_result(&throttled(1));
        assert_eq!(p.current_rate(), None);
        for _ in 0..10_000 {
            assert_eq!(p.try_acquire(), Ok(()));
        }
    }
}
