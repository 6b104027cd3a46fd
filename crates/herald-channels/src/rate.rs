//! Send-rate limiting: a channel's `rate = { per_second, burst }` over governor's GCRA.
//!
//! Every send, retries included, awaits [`Limiter::acquire`] first. Without an explicit
//! burst the limiter allows a tenth of a second's worth ([`RateLimit::effective_burst`]):
//! burst 1 undershoots, because each wait overshoots a little and never wins it back. The
//! burst is not spent at the start, and a few ms worth of it is kept back for arrival jitter
//! ([`RateLimit::governed_burst`]): the provider counts arrivals, not permits.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use serde::Deserialize;

/// The default burst is `per_second / DEFAULT_BURST_DIVISOR`: a tenth of a second's worth.
pub const DEFAULT_BURST_DIVISOR: u32 = 10;
/// The default burst never exceeds this (10 ms of slack at 10,000/s is plenty for timers).
pub const MAX_DEFAULT_BURST: u32 = 100;
/// Arrival jitter at the provider that the limiter absorbs (see [`RateLimit::governed_burst`]).
pub const JITTER_ALLOWANCE: Duration = Duration::from_millis(5);

/// A channel's send rate, as written in `herald.toml`: `{ per_second = 50, burst = 10 }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawRateLimit")]
pub struct RateLimit {
    /// Sustained messages per second (at least 1).
    pub per_second: u32,
    /// How many may go at once after a pause; `None` picks [`RateLimit::effective_burst`].
    pub burst: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    per_second: u32,
    burst: Option<u32>,
}

/// Why a rate in the config is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RateLimitError {
    /// `per_second = 0` would never send; leave `rate` out for unlimited.
    #[error("rate per_second must be at least 1 (leave `rate` out for no limit)")]
    ZeroRate,
    /// `burst = 0` would never send.
    #[error("rate burst must be at least 1")]
    ZeroBurst,
}

impl TryFrom<RawRateLimit> for RateLimit {
    type Error = RateLimitError;

    fn try_from(raw: RawRateLimit) -> Result<Self, Self::Error> {
        if raw.per_second == 0 {
            return Err(RateLimitError::ZeroRate);
        }
        if raw.burst == Some(0) {
            return Err(RateLimitError::ZeroBurst);
        }
        Ok(RateLimit {
            per_second: raw.per_second,
            burst: raw.burst,
        })
    }
}

impl From<herald_domain::config::RateSpec> for RateLimit {
    fn from(r: herald_domain::config::RateSpec) -> Self {
        RateLimit {
            per_second: r.per_second.get(),
            burst: r.burst.map(|b| b.get()),
        }
    }
}

impl RateLimit {
    /// The burst in effect: the configured one, else `per_second / 10` within `1..=100`.
    pub fn effective_burst(&self) -> u32 {
        self.burst.unwrap_or_else(|| {
            (self.per_second / DEFAULT_BURST_DIVISOR).clamp(1, MAX_DEFAULT_BURST)
        })
    }

    /// The burst governor is given: the effective burst less [`JITTER_ALLOWANCE`] worth of
    /// the rate (at least 1, at least half the burst).
    ///
    /// The provider counts arrivals, not permits: when the first requests of a window reach it
    /// late (a new connection) and later ones early (a warm one), a second at the provider
    /// holds more than a second of permits. Keeping this much back keeps it within
    /// `per_second + burst` as the provider counts it.
    pub fn governed_burst(&self) -> u32 {
        let burst = self.effective_burst();
        let held_back =
            (u128::from(self.per_second) * JITTER_ALLOWANCE.as_micros() / 1_000_000) as u32;
        burst
            .saturating_sub(held_back)
            .max(burst.div_ceil(2))
            .max(1)
    }

    fn quota(&self) -> Quota {
        let rate = NonZeroU32::new(self.per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(self.governed_burst()).unwrap_or(NonZeroU32::MIN);
        Quota::per_second(rate).allow_burst(burst)
    }
}

type Inner<C> = RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// A channel's rate limiter; `None` in [`Limiter::new`] means unlimited.
#[derive(Debug)]
pub struct Limiter<C: Clock = DefaultClock> {
    inner: Option<Inner<C>>,
    clock: C,
    /// No permit taken yet: the first one spends the rest of the burst.
    fresh: AtomicBool,
}

impl Limiter {
    /// A limiter on the real clock.
    pub fn new(limit: Option<RateLimit>) -> Self {
        Self::with_clock(limit, DefaultClock::default())
    }
}

impl<C: Clock + Clone> Limiter<C> {
    /// A limiter on the given clock (tests pass `governor::clock::FakeRelativeClock`).
    pub fn with_clock(limit: Option<RateLimit>, clock: C) -> Self {
        let inner = limit.map(|l| RateLimiter::direct_with_clock(l.quota(), clock.clone()));
        Limiter {
            inner,
            clock,
            fresh: AtomicBool::new(true),
        }
    }

    /// Takes a permit if one is free now, else says how long until one is.
    ///
    /// The first permit goes at once and spends the rest of the burst: the burst is for
    /// after a pause, not for the start, when the first requests open new connections and
    /// arrive late while the next ones, on warm connections, arrive early and crowd the
    /// provider's first second.
    pub fn try_acquire(&self) -> Result<(), Duration> {
        let Some(limiter) = &self.inner else {
            return Ok(());
        };
        limiter
            .check()
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))?;
        if self.fresh.swap(false, Ordering::Relaxed) {
            while limiter.check().is_ok() {}
        }
        Ok(())
    }

    /// Waits until a permit is free and takes it.
    pub async fn acquire(&self) {
        while let Err(wait) = self.try_acquire() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn limit(per_second: u32, burst: Option<u32>) -> Option<RateLimit> {
        Some(RateLimit { per_second, burst })
    }

    /// Counts the permits taken over `total`, trying every `step` of fake time.
    fn permits_over(
        limiter: &Limiter<FakeRelativeClock>,
        clock: &FakeRelativeClock,
        total: Duration,
        step: Duration,
    ) -> usize {
        let mut taken = 0;
        let mut elapsed = Duration::ZERO;
        loop {
            while limiter.try_acquire().is_ok() {
                taken += 1;
            }
            if elapsed + step > total {
                return taken;
            }
            clock.advance(step);
            elapsed += step;
        }
    }

    #[test]
    fn starts_empty_then_burst_after_a_pause_then_steady_rate() {
        let clock = FakeRelativeClock::default();
        let limiter = Limiter::with_clock(limit(50, Some(10)), clock.clone());
        // The first permit at once; the burst is not spent at the start.
        assert_eq!(limiter.try_acquire(), Ok(()));
        assert_eq!(limiter.try_acquire(), Err(Duration::from_millis(20)));
        clock.advance(Duration::from_secs(1));
        for _ in 0..10 {
            assert_eq!(limiter.try_acquire(), Ok(()));
        }
        assert_eq!(limiter.try_acquire(), Err(Duration::from_millis(20)));
        clock.advance(Duration::from_millis(19));
        assert!(limiter.try_acquire().is_err());
        clock.advance(Duration::from_millis(1));
        assert_eq!(limiter.try_acquire(), Ok(()));
        // The next second (fake) admits exactly the rate.
        let second = permits_over(
            &limiter,
            &clock,
            Duration::from_secs(1),
            Duration::from_millis(1),
        );
        assert_eq!(second, 50);
    }

    #[test]
    fn one_window_allows_rate_plus_burst_less_the_jitter_allowance() {
        let clock = FakeRelativeClock::default();
        let limiter = Limiter::with_clock(limit(1000, None), clock.clone());
        assert_eq!(limiter.try_acquire(), Ok(()));
        clock.advance(Duration::from_secs(1));
        // Window [pause, pause + 1s): the burst less 5 ms worth at once, then one a millisecond.
        let n = permits_over(
            &limiter,
            &clock,
            Duration::from_millis(999),
            Duration::from_millis(1),
        );
        assert_eq!(n, 95 + 999);
        // So 5 ms of jitter later, a whole second at the provider still holds at most
        // per_second + burst.
        assert!(n + 5 <= 1000 + 100);
    }

    #[test]
    fn the_jitter_allowance_only_matters_at_high_rates() {
        let governed = |per_second, burst| RateLimit { per_second, burst }.governed_burst();
        assert_eq!(governed(50, Some(10)), 10);
        assert_eq!(governed(1000, None), 95);
        assert_eq!(governed(2000, Some(100)), 90);
        assert_eq!(governed(5, None), 1);
        // Never below half the configured burst, nor below 1.
        assert_eq!(governed(10_000, Some(20)), 10);
        assert_eq!(governed(100_000, Some(1)), 1);
    }

    #[test]
    fn default_burst_is_a_tenth_of_a_second_within_bounds() {
        let burst = |per_second| {
            RateLimit {
                per_second,
                burst: None,
            }
            .effective_burst()
        };
        assert_eq!(burst(5), 1);
        assert_eq!(burst(50), 5);
        assert_eq!(burst(1000), 100);
        assert_eq!(burst(100_000), MAX_DEFAULT_BURST);
        assert_eq!(
            RateLimit {
                per_second: 50,
                burst: Some(10)
            }
            .effective_burst(),
            10
        );
    }

    #[test]
    fn none_is_unlimited() {
        let limiter = Limiter::with_clock(None, FakeRelativeClock::default());
        for _ in 0..100_000 {
            assert_eq!(limiter.try_acquire(), Ok(()));
        }
    }

    #[test]
    fn deserializes_like_the_spec_and_rejects_zero_and_typos() {
        #[derive(Deserialize)]
        struct Channel {
            rate: Option<RateLimit>,
        }
        let parse = |json: &str| serde_json::from_str::<Channel>(json).map(|c| c.rate);
        assert_eq!(
            parse(r#"{"rate": {"per_second": 50, "burst": 10}}"#).unwrap(),
            limit(50, Some(10))
        );
        assert_eq!(
            parse(r#"{"rate": {"per_second": 10}}"#).unwrap(),
            limit(10, None)
        );
        assert_eq!(parse("{}").unwrap(), None);
        for bad in [
            r#"{"rate": {"per_second": 0}}"#,
            r#"{"rate": {"per_second": 5, "burst": 0}}"#,
            r#"{"rate": {"per_second": 5, "brust": 1}}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    /// Real time: how much of the rate each burst delivers (printed, not asserted).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "takes 3 s of real time; run with --ignored to measure"]
    async fn measure_real_rate_by_burst() {
        let per_second = 1000;
        for burst in [Some(1), Some(10), None] {
            let limiter = Limiter::new(limit(per_second, burst));
            // Spend the initial burst so only the steady rate is measured.
            while limiter.try_acquire().is_ok() {}
            let start = std::time::Instant::now();
            let mut n = 0u32;
            while start.elapsed() < Duration::from_secs(1) {
                limiter.acquire().await;
                n += 1;
            }
            let got = f64::from(n) / start.elapsed().as_secs_f64();
            println!(
                "rate {per_second}/s burst {:>3}: {got:.0}/s ({:.1}% of the rate)",
                RateLimit { per_second, burst }.effective_burst(),
                got / f64::from(per_second) * 100.0
            );
        }
    }
}
