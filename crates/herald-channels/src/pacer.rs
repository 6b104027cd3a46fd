//! Adaptive pacing: a 429 slows a route down and successes bring it back gradually, without
//! ever pausing it. governor cannot change a quota in place, so a [`Pacer`] keeps the
//! configured [`Limiter`] as the hard ceiling and, while slowed, adds its own gate at a lower
//! rate: multiplicative decrease on `RateLimited`, additive increase on later successes.
//!
//! Wiring: the dispatcher calls [`Pacer::acquire`] before every attempt and
//! [`Pacer::on_result`] with the adapter's answer after it.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock, Reference};

use crate::DeliveryError;
use crate::rate::{Limiter, RateLimit};

/// How a [`Pacer`] slows down and recovers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PacerConfig {
    /// The rate is multiplied by this on a 429 (`0.5` halves it).
    pub decrease: f64,
    /// The slowed rate never goes below this share of the configured rate (nor below 1/s).
    pub floor: f64,
    /// While sends succeed, the rate climbs back by the configured rate per `recovery`
    /// (from half speed to full in half of it).
    pub recovery: Duration,
    /// 429s closer together than this are one slow-down: the requests already in flight
    /// all answer 429 at once, and that is one signal, not many.
    pub spacing: Duration,
}

impl Default for PacerConfig {
    fn default() -> Self {
        PacerConfig {
            decrease: 0.5,
            floor: 0.05,
            recovery: Duration::from_secs(20),
            spacing: Duration::from_secs(1),
        }
    }
}

/// A route's rate limiter that slows down on 429s and recovers on successes.
///
/// It replaces a route's [`Limiter`] one for one: `Pacer::new(rate)` where the route had
/// `Limiter::new(rate)`, then per attempt `pacer.acquire().await`, `adapter.send(..)`,
/// `pacer.on_result(&result)`. A 429's message itself still waits its `retry_after` in the
/// retry policy; the pacer only slows the route's other sends, it never holds them.
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
    /// No increase before this: the provider's `Retry-After` after the last 429.
    hold_until: Duration,
    /// When the rate last changed (the additive increase counts from there).
    last_change: Duration,
    /// When the last slow-down happened.
    last_decrease: Option<Duration>,
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
                hold_until: Duration::ZERO,
                last_change: Duration::ZERO,
                last_decrease: None,
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

    /// Learns from an attempt's answer: `RateLimited` slows down; an answer that was not
    /// throttled (accepted, or refused for the message's own sake) lets the rate recover.
    pub fn on_result<T>(&self, result: &Result<T, DeliveryError>) {
        let Some(ceiling) = self.ceiling else {
            return;
        };
        let now = self.now();
        let mut state = self.lock();
        match result {
            Err(DeliveryError::RateLimited { retry_after, .. }) => {
                state.hold_until = state.hold_until.max(now + retry_after.unwrap_or_default());
                let due = state
                    .last_decrease
                    .is_none_or(|at| now >= at + self.config.spacing);
                if due {
                    let floor = (ceiling * self.config.floor).max(ceiling.min(1.0));
                    if state.rate >= ceiling {
                        // The gate starts now; until then governor alone paced the route.
                        state.next = now;
                    }
                    state.rate = (state.rate * self.config.decrease).max(floor);
                    state.last_decrease = Some(now);
                }
                state.last_change = now;
            }
            Ok(_) | Err(DeliveryError::Permanent { .. }) => {
                if state.rate < ceiling * state.share && now > state.hold_until {
                    let since = now - state.last_change.max(state.hold_until);
                    let step = ceiling * since.as_secs_f64() / self.config.recovery.as_secs_f64();
                    state.rate = (state.rate + step).min(ceiling * state.share);
                    state.last_change = now;
                }
            }
            // A server error or a lost answer says nothing about our pace.
            Err(DeliveryError::Transient { .. } | DeliveryError::Ambiguous { .. }) => {}
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

    #[test]
    fn a_share_caps_the_rate_and_successes_never_recover_past_it() {
        let (p, clock) = pacer(100, 10);
        p.set_share(0.5);
        assert_eq!(p.current_rate(), Some(50.0));
        let n = permits_over(&p, &clock, Duration::from_secs(2), true);
        assert!((99..=101).contains(&n), "{n}");
        assert_eq!(p.current_rate(), Some(50.0), "successes stop at the share");
        // A 429 halves the shared rate; recovery climbs back to the share only.
        p.on_result(&throttled(0));
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
    fn a_429_halves_the_rate_without_pausing() {
        let (p, clock) = pacer(100, 10);
        permits_over(&p, &clock, Duration::from_secs(1), true);
        p.on_result(&throttled(5));
        assert_eq!(p.current_rate(), Some(50.0));
        // Not a pause: the next permit comes within one slowed interval, not 5 s.
        let mut waited = Duration::ZERO;
        while let Err(wait) = p.try_acquire() {
            assert!(wait <= Duration::from_millis(20), "{wait:?}");
            clock.advance(wait);
            waited += wait;
        }
        assert!(waited <= Duration::from_millis(20), "{waited:?}");
        // During the Retry-After hold the rate stays at half: about 50 a second.
        let n = permits_over(&p, &clock, Duration::from_secs(2), true);
        assert!((99..=101).contains(&n), "{n}");
        assert_eq!(p.current_rate(), Some(50.0));
    }

    #[test]
    fn a_burst_of_429s_is_one_slow_down_and_the_floor_holds() {
        let (p, clock) = pacer(100, 10);
        for _ in 0..20 {
            p.on_result(&throttled(0));
        }
        assert_eq!(p.current_rate(), Some(50.0));
        for expect in [25.0, 12.5, 6.25, 5.0, 5.0] {
            clock.advance(Duration::from_secs(1));
            p.on_result(&throttled(0));
            assert_eq!(p.current_rate(), Some(expect));
        }
        // A 1/s route cannot go below 1/s.
        let (slow, clock) = pacer(1, 1);
        slow.on_result(&throttled(0));
        clock.advance(Duration::from_secs(1));
        slow.on_result(&throttled(0));
        assert_eq!(slow.current_rate(), Some(1.0));
    }

    #[test]
    fn successes_recover_gradually_after_the_hold() {
        let (p, clock) = pacer(100, 10);
        p.on_result(&throttled(2));
        assert_eq!(p.current_rate(), Some(50.0));
        // Within the 2 s hold, successes do not raise the rate.
        permits_over(&p, &clock, Duration::from_secs(2), true);
        assert_eq!(p.current_rate(), Some(50.0));
        // Then it climbs by 100/s per 20 s: +25/s after 5 s, full after 10 s.
        permits_over(&p, &clock, Duration::from_secs(5), true);
        let rate = p.current_rate().unwrap();
        assert!((74.0..=76.0).contains(&rate), "{rate}");
        permits_over(&p, &clock, Duration::from_secs(6), true);
        assert_eq!(p.current_rate(), Some(100.0));
        // Back at full speed, governor alone paces again.
        assert_eq!(permits_over(&p, &clock, Duration::from_secs(1), true), 100);
    }

    #[test]
    fn failures_that_are_not_throttling_neither_slow_nor_speed() {
        let (p, clock) = pacer(100, 10);
        p.on_result(&throttled(0));
        clock.advance(Duration::from_secs(5));
        p.on_result::<()>(&Err(DeliveryError::Transient {
            code: "503".into(),
            detail: String::new(),
            retry_after: None,
        }));
        p.on_result::<()>(&Err(DeliveryError::Ambiguous {
            detail: String::new(),
        }));
        assert_eq!(p.current_rate(), Some(50.0));
        p.on_result::<()>(&Err(DeliveryError::Permanent {
            code: "21211".into(),
            detail: String::new(),
            suppress_address: false,
        }));
        assert_eq!(p.current_rate(), Some(75.0));
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
