//! `/metrics`, herald's one Prometheus exporter (prometheus-client, the
//! OpenMetrics text format): requests by kind and status (lock-free
//! counters), the writer's queue and batches, events, SMTP sessions, and
//! messages by channel and status (a cached GROUP BY), plus the collectors
//! of the rest of the process (the daemon's dispatcher).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use herald_storage::tracking::MessageGauges;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tokio::sync::Mutex;

use crate::state::ExtraMetrics;
use crate::writer::WriterStats;

/// What a request was, for the `kind` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Open,
    Click,
    ShortLink,
    UnsubscribePage,
    Unsubscribe,
    TwilioStatus,
    TwilioInbound,
    EmailWebhook,
    Events,
    Report,
    Health,
    Metrics,
    Other,
}

impl Kind {
    const ALL: [Kind; 13] = [
        Kind::Open,
        Kind::Click,
        Kind::ShortLink,
        Kind::UnsubscribePage,
        Kind::Unsubscribe,
        Kind::TwilioStatus,
        Kind::TwilioInbound,
        Kind::EmailWebhook,
        Kind::Events,
        Kind::Report,
        Kind::Health,
        Kind::Metrics,
        Kind::Other,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::Open => "open",
            Kind::Click => "click",
            Kind::ShortLink => "short_link",
            Kind::UnsubscribePage => "unsubscribe_page",
            Kind::Unsubscribe => "unsubscribe",
            Kind::TwilioStatus => "twilio_status",
            Kind::TwilioInbound => "twilio_inbound",
            Kind::EmailWebhook => "email_webhook",
            Kind::Events => "events",
            Kind::Report => "report",
            Kind::Health => "healthz",
            Kind::Metrics => "metrics",
            Kind::Other => "other",
        }
    }
}

/// Statuses with their own counter; any other is counted under the last slot.
const STATUSES: [u16; 14] = [
    200, 204, 302, 400, 401, 403, 404, 405, 413, 415, 500, 501, 503, 0,
];
const KINDS: usize = Kind::ALL.len();
const SLOTS: usize = STATUSES.len();

/// SMTP session outcomes, for the `result` label.
pub(crate) const SMTP_RESULTS: [&str; 5] = [
    "hard_bounce",
    "soft_bounce",
    "complaint",
    "delivered",
    "unrecognised",
];

/// Every counter the server keeps.
pub(crate) struct Metrics {
    requests: Box<[[AtomicU64; SLOTS]; KINDS]>,
    pub(crate) writer: Arc<WriterStats>,
    pub(crate) events_accepted: AtomicU64,
    pub(crate) events_rejected: AtomicU64,
    pub(crate) attribution_errors: AtomicU64,
    pub(crate) smtp_messages: [AtomicU64; SMTP_RESULTS.len()],
    pub(crate) smtp_refused_recipients: AtomicU64,
    gauges: Mutex<Option<(Instant, MessageGauges)>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: Box::new(std::array::from_fn(|_| {
                std::array::from_fn(|_| AtomicU64::new(0))
            })),
            writer: Arc::default(),
            events_accepted: AtomicU64::new(0),
            events_rejected: AtomicU64::new(0),
            attribution_errors: AtomicU64::new(0),
            smtp_messages: std::array::from_fn(|_| AtomicU64::new(0)),
            smtp_refused_recipients: AtomicU64::new(0),
            gauges: Mutex::new(None),
        }
    }
}

impl Metrics {
    /// Counts one request of `kind` answered with `status`.
    pub(crate) fn count(&self, kind: Kind, status: u16) {
        let k = Kind::ALL
            .iter()
            .position(|x| *x == kind)
            .unwrap_or(KINDS - 1);
        let s = STATUSES
            .iter()
            .position(|x| *x == status)
            .unwrap_or(SLOTS - 1);
        self.requests[k][s].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one SMTP message by its outcome (one of [`SMTP_RESULTS`]).
    pub(crate) fn count_smtp(&self, result: &str) {
        if let Some(i) = SMTP_RESULTS.iter().position(|r| *r == result) {
            self.smtp_messages[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The cached message gauges if younger than `ttl`, else `None`.
    pub(crate) async fn cached_gauges(&self, ttl: std::time::Duration) -> Option<MessageGauges> {
        let g = self.gauges.lock().await;
        g.as_ref()
            .filter(|(at, _)| at.elapsed() < ttl)
            .map(|(_, g)| g.clone())
    }

    /// Stores freshly counted message gauges.
    pub(crate) async fn store_gauges(&self, g: MessageGauges) {
        *self.gauges.lock().await = Some((Instant::now(), g));
    }

    /// Writes every counter, and `gauges` when known, to `e`.
    fn encode(&self, gauges: Option<&MessageGauges>, e: &mut DescriptorEncoder) -> fmt::Result {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut m = e.encode_descriptor(
            "herald_tracking_requests",
            "Tracking server requests by kind and HTTP status.",
            None,
            MetricType::Counter,
        )?;
        for (k, kind) in Kind::ALL.iter().enumerate() {
            for (s, status) in STATUSES.iter().enumerate() {
                let n = load(&self.requests[k][s]);
                if n == 0 {
                    continue;
                }
                let status = if *status == 0 {
                    "other".to_string()
                } else {
                    status.to_string()
                };
                let labels = [("kind", kind.name()), ("status", status.as_str())];
                m.encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
            }
        }
        let w = &self.writer;
        let single: [(&str, MetricType, &str, u64); 11] = [
            (
                "herald_tracking_queued_hits",
                MetricType::Gauge,
                "Opens and clicks answered but not yet written.",
                load(&w.queued),
            ),
            (
                "herald_tracking_opens_written",
                MetricType::Counter,
                "Opens written to messages (machine opens included).",
                load(&w.opens),
            ),
            (
                "herald_tracking_machine_opens_written",
                MetricType::Counter,
                "Opens flagged as machine opens.",
                load(&w.machine_opens),
            ),
            (
                "herald_tracking_clicks_written",
                MetricType::Counter,
                "Clicks written to messages.",
                load(&w.clicks),
            ),
            (
                "herald_tracking_batches",
                MetricType::Counter,
                "Transactions that wrote opens and clicks.",
                load(&w.batches),
            ),
            (
                "herald_tracking_batch_errors",
                MetricType::Counter,
                "Failed open and click transactions (retried).",
                load(&w.errors),
            ),
            (
                "herald_tracking_hits_lost",
                MetricType::Counter,
                "Opens and clicks given up at shutdown after repeated failures.",
                load(&w.lost),
            ),
            (
                "herald_events_accepted",
                MetricType::Counter,
                "Events accepted by POST /events.",
                load(&self.events_accepted),
            ),
            (
                "herald_events_rejected",
                MetricType::Counter,
                "Events rejected by POST /events.",
                load(&self.events_rejected),
            ),
            (
                "herald_attribution_errors",
                MetricType::Counter,
                "Event batches stored whose attribution failed.",
                load(&self.attribution_errors),
            ),
            (
                "herald_smtp_refused_recipients",
                MetricType::Counter,
                "RCPT TO refused (not a valid bounce address).",
                load(&self.smtp_refused_recipients),
            ),
        ];
        for (name, ty, help, v) in single {
            let mut m = e.encode_descriptor(name, help, None, ty)?;
            match ty {
                MetricType::Gauge => m.encode_gauge(&v)?,
                _ => m.encode_counter::<NoLabelSet, _, u64>(&v, None)?,
            }
        }
        let mut m = e.encode_descriptor(
            "herald_smtp_messages",
            "Messages received by the SMTP bounce receiver, by outcome.",
            None,
            MetricType::Counter,
        )?;
        for (i, r) in SMTP_RESULTS.iter().enumerate() {
            let labels = [("result", *r)];
            m.encode_family(&labels)?
                .encode_counter::<NoLabelSet, _, u64>(&load(&self.smtp_messages[i]), None)?;
        }
        if let Some(g) = gauges {
            let mut m = e.encode_descriptor(
                "herald_messages",
                "Messages by channel and status.",
                None,
                MetricType::Gauge,
            )?;
            for (channel, status, n) in &g.by_status {
                let labels = [("channel", channel.as_str()), ("status", status.as_str())];
                m.encode_family(&labels)?.encode_gauge(n)?;
            }
            let mut m = e.encode_descriptor(
                "herald_queue_due",
                "Planned messages whose send time has come, by channel.",
                None,
                MetricType::Gauge,
            )?;
            for (channel, n) in &g.due {
                let labels = [("channel", channel.as_str())];
                m.encode_family(&labels)?.encode_gauge(n)?;
            }
        }
        Ok(())
    }
}

/// What `/metrics` serves: the server's counters and message gauges, then
/// the collectors of whatever else runs in the process (the daemon's
/// dispatcher), through one exporter (prometheus-client, OpenMetrics text).
pub(crate) fn render(
    metrics: Arc<Metrics>,
    gauges: Option<MessageGauges>,
    extra: Option<ExtraMetrics>,
) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(ServerCollector { metrics, gauges }));
    if let Some(extra) = extra {
        registry.register_collector(Box::new(Extra(extra)));
    }
    let mut out = String::with_capacity(4096);
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}

/// The server's counters at one scrape.
struct ServerCollector {
    metrics: Arc<Metrics>,
    gauges: Option<MessageGauges>,
}

impl fmt::Debug for ServerCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServerCollector")
    }
}

impl Collector for ServerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        self.metrics.encode(self.gauges.as_ref(), &mut encoder)
    }
}

/// Another part of the process's collector, shared.
struct Extra(ExtraMetrics);

impl fmt::Debug for Extra {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Extra")
    }
}

impl Collector for Extra {
    fn encode(&self, encoder: DescriptorEncoder) -> fmt::Result {
        self.0.encode(encoder)
    }
}
