//! The dispatcher's Prometheus metrics: attempts by channel and result, a
//! send latency histogram per channel, time spent waiting on rate
//! limits, and whether each route is blocked by an account fault. Lock-free counters, rendered as Prometheus text for the tracking
//! server's `/metrics` (the daemon appends them).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use herald_domain::types::Channel;

/// Upper bounds of the latency histogram, seconds.
pub const LATENCY_BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// Attempt results counted, in the order of [`DispatchMetrics::attempt`]'s index.
pub const RESULTS: [&str; 6] = [
    "accepted",
    "transient",
    "rate_limited",
    "permanent",
    "ambiguous",
    "account_fault",
];

const CHANNELS: [Channel; 3] = [Channel::Email, Channel::Sms, Channel::Push];

#[derive(Default)]
struct PerChannel {
    results: [AtomicU64; RESULTS.len()],
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
    limiter_wait_micros: AtomicU64,
    /// 1 while the route is blocked by an account fault.
    blocked: AtomicU64,
    /// Times the route turned blocked.
    blocks: AtomicU64,
}

/// Counters shared by every worker of a daemon.
#[derive(Default)]
pub struct DispatchMetrics {
    channels: [PerChannel; 3],
}

fn index(channel: Channel) -> usize {
    CHANNELS.iter().position(|c| *c == channel).unwrap_or(0)
}

impl DispatchMetrics {
    /// Counts one attempt on `channel` with result `result` (an entry of [`RESULTS`]) taking `took`.
    pub fn attempt(&self, channel: Channel, result: &str, took: Duration) {
        let c = &self.channels[index(channel)];
        if let Some(i) = RESULTS.iter().position(|r| *r == result) {
            c.results[i].fetch_add(1, Ordering::Relaxed);
        }
        let secs = took.as_secs_f64();
        for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
            if secs <= *bound {
                c.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        c.count.fetch_add(1, Ordering::Relaxed);
        c.sum_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    /// Adds time a send waited for its channel's rate limit.
    pub fn limiter_wait(&self, channel: Channel, waited: Duration) {
        self.channels[index(channel)]
            .limiter_wait_micros
            .fetch_add(waited.as_micros() as u64, Ordering::Relaxed);
    }

    /// Notes a route's health after an answer: blocked or not, and a new block counted.
    pub fn route_state(&self, channel: Channel, blocked: bool, change: &crate::health::Change) {
        let c = &self.channels[index(channel)];
        c.blocked.store(u64::from(blocked), Ordering::Relaxed);
        if matches!(change, crate::health::Change::Blocked(_)) {
            c.blocks.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Attempts so far on `channel` with `result`.
    pub fn attempts(&self, channel: Channel, result: &str) -> u64 {
        RESULTS.iter().position(|r| *r == result).map_or(0, |i| {
            self.channels[index(channel)].results[i].load(Ordering::Relaxed)
        })
    }

    /// The metrics as Prometheus text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP herald_dispatch_attempts_total Attempts at a provider by channel and result.\n# TYPE herald_dispatch_attempts_total counter\n");
        for (ch, c) in CHANNELS.iter().zip(&self.channels) {
            for (r, n) in RESULTS.iter().zip(&c.results) {
                let _ = writeln!(
                    out,
                    "herald_dispatch_attempts_total{{channel=\"{ch}\",result=\"{r}\"}} {}",
                    n.load(Ordering::Relaxed)
                );
            }
        }
        out.push_str("# HELP herald_send_duration_seconds Time a provider took to answer a send.\n# TYPE herald_send_duration_seconds histogram\n");
        for (ch, c) in CHANNELS.iter().zip(&self.channels) {
            for (bound, n) in LATENCY_BUCKETS.iter().zip(&c.buckets) {
                let _ = writeln!(
                    out,
                    "herald_send_duration_seconds_bucket{{channel=\"{ch}\",le=\"{bound}\"}} {}",
                    n.load(Ordering::Relaxed)
                );
            }
            let count = c.count.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "herald_send_duration_seconds_bucket{{channel=\"{ch}\",le=\"+Inf\"}} {count}\nherald_send_duration_seconds_sum{{channel=\"{ch}\"}} {}\nherald_send_duration_seconds_count{{channel=\"{ch}\"}} {count}",
                c.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
            );
        }
        out.push_str("# HELP herald_rate_limiter_wait_seconds_total Time sends waited for their channel's rate limit.\n# TYPE herald_rate_limiter_wait_seconds_total counter\n");
        for (ch, c) in CHANNELS.iter().zip(&self.channels) {
            let _ = writeln!(
                out,
                "herald_rate_limiter_wait_seconds_total{{channel=\"{ch}\"}} {}",
                c.limiter_wait_micros.load(Ordering::Relaxed) as f64 / 1e6
            );
        }
        out.push_str("# HELP herald_route_blocked Whether the route is blocked by an account fault (its messages wait, planned).\n# TYPE herald_route_blocked gauge\n");
        for (ch, c) in CHANNELS.iter().zip(&self.channels) {
            let _ = writeln!(
                out,
                "herald_route_blocked{{route=\"{ch}\"}} {}",
                c.blocked.load(Ordering::Relaxed)
            );
        }
        out.push_str("# HELP herald_route_blocks_total Times the route was blocked by an account fault.\n# TYPE herald_route_blocks_total counter\n");
        for (ch, c) in CHANNELS.iter().zip(&self.channels) {
            let _ = writeln!(
                out,
                "herald_route_blocks_total{{route=\"{ch}\"}} {}",
                c.blocks.load(Ordering::Relaxed)
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_and_latencies_render_as_prometheus_text() {
        let m = DispatchMetrics::default();
        m.attempt(Channel::Sms, "accepted", Duration::from_millis(30));
        m.attempt(Channel::Sms, "rate_limited", Duration::from_millis(3));
        m.limiter_wait(Channel::Sms, Duration::from_millis(1500));
        assert_eq!(m.attempts(Channel::Sms, "accepted"), 1);
        assert_eq!(m.attempts(Channel::Email, "accepted"), 0);
        let text = m.render();
        assert!(
            text.contains("herald_dispatch_attempts_total{channel=\"sms\",result=\"accepted\"} 1")
        );
        assert!(
            text.contains(
                "herald_dispatch_attempts_total{channel=\"sms\",result=\"rate_limited\"} 1"
            )
        );
        // 3 ms is under every bound; 30 ms only from 0.05 up.
        assert!(
            text.contains("herald_send_duration_seconds_bucket{channel=\"sms\",le=\"0.005\"} 1")
        );
        assert!(
            text.contains("herald_send_duration_seconds_bucket{channel=\"sms\",le=\"0.05\"} 2")
        );
        assert!(text.contains("herald_send_duration_seconds_count{channel=\"sms\"} 2"));
        assert!(text.contains("herald_rate_limiter_wait_seconds_total{channel=\"sms\"} 1.5"));
        assert!(text.contains("herald_route_blocked{route=\"sms\"} 0"));
        m.route_state(
            Channel::Sms,
            true,
            &crate::health::Change::Blocked("authentication failed".into()),
        );
        let text = m.render();
        assert!(text.contains("herald_route_blocked{route=\"sms\"} 1"));
        assert!(text.contains("herald_route_blocks_total{route=\"sms\"} 1"));
        assert!(text.contains("herald_route_blocked{route=\"email\"} 0"));
    }
}
