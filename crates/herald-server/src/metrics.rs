//! `/metrics` in the Prometheus text format: requests by kind and status
//! (lock-free counters), the writer's queue and batches, events, SMTP
//! sessions, and messages by channel and status (a cached GROUP BY).

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use herald_storage::tracking::MessageGauges;
use tokio::sync::Mutex;

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

    /// The Prometheus text of every counter, and `gauges` when known.
    pub(crate) fn render(&self, gauges: Option<&MessageGauges>) -> String {
        let mut out = String::with_capacity(4096);
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        out.push_str("# HELP herald_tracking_requests_total Tracking server requests by kind and HTTP status.\n# TYPE herald_tracking_requests_total counter\n");
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
                let _ = writeln!(
                    out,
                    "herald_tracking_requests_total{{kind=\"{}\",status=\"{status}\"}} {n}",
                    kind.name()
                );
            }
        }
        let w = &self.writer;
        let counters: [(&str, &str, &str, u64); 9] = [
            (
                "herald_tracking_queued_hits",
                "gauge",
                "Opens and clicks answered but not yet written.",
                load(&w.queued),
            ),
            (
                "herald_tracking_opens_written_total",
                "counter",
                "Opens written to messages (machine opens included).",
                load(&w.opens),
            ),
            (
                "herald_tracking_machine_opens_written_total",
                "counter",
                "Opens flagged as machine opens.",
                load(&w.machine_opens),
            ),
            (
                "herald_tracking_clicks_written_total",
                "counter",
                "Clicks written to messages.",
                load(&w.clicks),
            ),
            (
                "herald_tracking_batches_total",
                "counter",
                "Transactions that wrote opens and clicks.",
                load(&w.batches),
            ),
            (
                "herald_tracking_batch_errors_total",
                "counter",
                "Failed open and click transactions (retried).",
                load(&w.errors),
            ),
            (
                "herald_tracking_hits_lost_total",
                "counter",
                "Opens and clicks given up at shutdown after repeated failures.",
                load(&w.lost),
            ),
            (
                "herald_events_accepted_total",
                "counter",
                "Events accepted by POST /events.",
                load(&self.events_accepted),
            ),
            (
                "herald_events_rejected_total",
                "counter",
                "Events rejected by POST /events.",
                load(&self.events_rejected),
            ),
        ];
        for (name, ty, help, v) in counters {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {ty}\n{name} {v}");
        }
        let _ = writeln!(
            out,
            "# HELP herald_attribution_errors_total Event batches stored whose attribution failed.\n# TYPE herald_attribution_errors_total counter\nherald_attribution_errors_total {}",
            load(&self.attribution_errors)
        );
        out.push_str("# HELP herald_smtp_messages_total Messages received by the SMTP bounce receiver, by outcome.\n# TYPE herald_smtp_messages_total counter\n");
        for (i, r) in SMTP_RESULTS.iter().enumerate() {
            let _ = writeln!(
                out,
                "herald_smtp_messages_total{{result=\"{r}\"}} {}",
                load(&self.smtp_messages[i])
            );
        }
        let _ = writeln!(
            out,
            "# HELP herald_smtp_refused_recipients_total RCPT TO refused (not a valid bounce address).\n# TYPE herald_smtp_refused_recipients_total counter\nherald_smtp_refused_recipients_total {}",
            load(&self.smtp_refused_recipients)
        );
        if let Some(g) = gauges {
            out.push_str("# HELP herald_messages Messages by channel and status.\n# TYPE herald_messages gauge\n");
            for (channel, status, n) in &g.by_status {
                let _ = writeln!(
                    out,
                    "herald_messages{{channel=\"{}\",status=\"{}\"}} {n}",
                    label(channel),
                    label(status)
                );
            }
            out.push_str("# HELP herald_queue_due Planned messages whose send time has come, by channel.\n# TYPE herald_queue_due gauge\n");
            for (channel, n) in &g.due {
                let _ = writeln!(
                    out,
                    "herald_queue_due{{channel=\"{}\"}} {n}",
                    label(channel)
                );
            }
        }
        out
    }
}

/// A label value escaped for the text format.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
