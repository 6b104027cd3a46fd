//! The dispatcher's Prometheus metrics: attempts by channel and result, a
//! send latency histogram per channel, time spent waiting on rate
//! limits, and whether each route (and each platform sub-route of push,
//! `push:apns`) is blocked by an account fault. Lock-free
//! counters, read at each scrape by a [`DispatchCollector`] that the daemon
//! registers with the tracking server's one exporter (`/metrics`).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use herald_domain::types::Channel;

use crate::platform::PushPlatform;

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

/// A platform sub-route's block ([`crate::platform`]).
#[derive(Default)]
struct PerPlatform {
    /// 1 while the sub-route is blocked.
    blocked: AtomicU64,
    /// Times it turned blocked.
    blocks: AtomicU64,
}

/// Counters shared by every worker of a daemon.
#[derive(Default)]
pub struct DispatchMetrics {
    channels: [PerChannel; 3],
    platforms: [PerPlatform; 3],
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

    /// [`DispatchMetrics::route_state`] of a platform's sub-route of push.
    pub fn platform_state(
        &self,
        platform: PushPlatform,
        blocked: bool,
        change: &crate::health::Change,
    ) {
        let i = PushPlatform::ALL
            .iter()
            .position(|p| *p == platform)
            .unwrap_or(0);
        let p = &self.platforms[i];
        p.blocked.store(u64::from(blocked), Ordering::Relaxed);
        if matches!(change, crate::health::Change::Blocked(_)) {
            p.blocks.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Attempts so far on `channel` with `result`.
    pub fn attempts(&self, channel: Channel, result: &str) -> u64 {
        RESULTS.iter().position(|r| *r == result).map_or(0, |i| {
            self.channels[index(channel)].results[i].load(Ordering::Relaxed)
        })
    }

    /// Writes every metric to `e`, as the one exporter of `/metrics` asks.
    fn encode(&self, e: &mut DescriptorEncoder) -> fmt::Result {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut m = e.encode_descriptor(
            "herald_dispatch_attempts",
            "Attempts at a provider by channel and result.",
            None,
            MetricType::Counter,
        )?;
        for (ch, c) in CHANNELS.iter().zip(&self.channels) {
            for (r, n) in RESULTS.iter().zip(&c.results) {
                let labels = [("channel", ch.as_str()), ("result", r)];
                m.encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(&load(n), None)?;
            }
        }
        let mut m = e.encode_descriptor(
            "herald_send_duration_seconds",
            "Time a provider took to answer a send.",
            None,
            MetricType::Histogram,
        )?;
        for (ch, c) in CHANNELS.iter().zip(&self.channels) {
            // The counters are cumulative; the encoder wants each bucket's own.
            let mut buckets = Vec::with_capacity(LATENCY_BUCKETS.len() + 1);
            let mut below = 0;
            for (bound, n) in LATENCY_BUCKETS.iter().zip(&c.buckets) {
                let upto = load(n);
                buckets.push((*bound, upto.saturating_sub(below)));
                below = upto;
            }
            let count = load(&c.count);
            buckets.push((f64::MAX, count.saturating_sub(below)));
            let labels = [("channel", ch.as_str())];
            m.encode_family(&labels)?.encode_histogram::<NoLabelSet>(
                load(&c.sum_micros) as f64 / 1e6,
                count,
                &buckets,
                None,
            )?;
        }
        let mut m = e.encode_descriptor(
            "herald_rate_limiter_wait_seconds",
            "Time sends waited for their channel's rate limit.",
            None,
            MetricType::Counter,
        )?;
        for (ch, c) in CHANNELS.iter().zip(&self.channels) {
            let labels = [("channel", ch.as_str())];
            m.encode_family(&labels)?
                .encode_counter::<NoLabelSet, _, f64>(
                    &(load(&c.limiter_wait_micros) as f64 / 1e6),
                    None,
                )?;
        }
        let mut m = e.encode_descriptor(
            "herald_route_blocked",
            "Whether the route is blocked by an account fault (its messages wait, planned).",
            None,
            MetricType::Gauge,
        )?;
        for (ch, c) in CHANNELS.iter().zip(&self.channels) {
            let labels = [("route", ch.as_str())];
            m.encode_family(&labels)?.encode_gauge(&load(&c.blocked))?;
        }
        for (p, c) in PushPlatform::ALL.iter().zip(&self.platforms) {
            let labels = [("route", p.route())];
            m.encode_family(&labels)?.encode_gauge(&load(&c.blocked))?;
        }
        let mut m = e.encode_descriptor(
            "herald_route_blocks",
            "Times the route was blocked by an account fault.",
            None,
            MetricType::Counter,
        )?;
        for (ch, c) in CHANNELS.iter().zip(&self.channels) {
            let labels = [("route", ch.as_str())];
            m.encode_family(&labels)?
                .encode_counter::<NoLabelSet, _, u64>(&load(&c.blocks), None)?;
        }
        for (p, c) in PushPlatform::ALL.iter().zip(&self.platforms) {
            let labels = [("route", p.route())];
            m.encode_family(&labels)?
                .encode_counter::<NoLabelSet, _, u64>(&load(&c.blocks), None)?;
        }
        Ok(())
    }

    /// The metrics as `/metrics` serves them (OpenMetrics text), for tests and tools.
    pub fn render(self: &Arc<Self>) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(DispatchCollector(self.clone())));
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

/// The dispatcher's metrics as a collector of the tracking server's one
/// exporter (prometheus-client): the counters stay plain atomics on the send
/// path and are read only when `/metrics` is scraped.
#[derive(Clone)]
pub struct DispatchCollector(pub Arc<DispatchMetrics>);

impl fmt::Debug for DispatchCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DispatchCollector")
    }
}

impl Collector for DispatchCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        self.0.encode(&mut encoder)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_and_latencies_render_as_prometheus_text() {
        let m = Arc::new(DispatchMetrics::default());
        m.attempt(Channel::Sms, "accepted", Duration::from_millis(30));
        m.attempt(Channel::Sms, "rate_limited", Duration::from_millis(3));
        m.limiter_wait(Channel::Sms, Duration::from_millis(1500));
        assert_eq!(m.attempts(Channel::Sms, "accepted"), 1);
        assert_eq!(m.attempts(Channel::Email, "accepted"), 0);
        let text = m.render();
        assert!(
            text.contains("herald_dispatch_attempts_total{channel=\"sms\",result=\"accepted\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "herald_dispatch_attempts_total{channel=\"sms\",result=\"rate_limited\"} 1"
            ),
            "{text}"
        );
        // 3 ms is under every bound; 30 ms only from 0.05 up.
        assert!(
            text.contains("herald_send_duration_seconds_bucket{le=\"0.005\",channel=\"sms\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("herald_send_duration_seconds_bucket{le=\"0.05\",channel=\"sms\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("herald_send_duration_seconds_count{channel=\"sms\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("herald_rate_limiter_wait_seconds_total{channel=\"sms\"} 1.5"),
            "{text}"
        );
        assert!(
            text.contains("herald_route_blocked{route=\"sms\"} 0"),
            "{text}"
        );
        m.route_state(
            Channel::Sms,
            true,
            &crate::health::Change::Blocked("authentication failed".into()),
        );
        let text = m.render();
        // OpenMetrics text, as prometheus-client writes it.
        assert!(
            text.contains("# TYPE herald_dispatch_attempts counter\n"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(
            text.contains("herald_route_blocked{route=\"sms\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("herald_route_blocks_total{route=\"sms\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("herald_route_blocked{route=\"email\"} 0"),
            "{text}"
        );
        // A platform's sub-route of push has its own gauge and count.
        assert!(
            text.contains("herald_route_blocked{route=\"push:apns\"} 0"),
            "{text}"
        );
        m.platform_state(
            PushPlatform::Apns,
            true,
            &crate::health::Change::Blocked("iOS tokens".into()),
        );
        let text = m.render();
        assert!(
            text.contains("herald_route_blocked{route=\"push:apns\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("herald_route_blocks_total{route=\"push:apns\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("herald_route_blocked{route=\"push\"} 0"),
            "the rest of push is open\n{text}"
        );
    }
}
