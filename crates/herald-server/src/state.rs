//! What the server runs with: [`ServerConfig`] (settings the CLI reads from
//! `herald.toml` and the environment), and [`AppState`], the shared handle
//! every request sees: database, token signer, the batched writer, metrics.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use herald_domain::token::TokenSigner;
use herald_storage::Db;
use herald_storage::tracking::GoalSpec;

use crate::listen::HttpLimits;
use crate::metrics::Metrics;
use crate::sns::{CertCache, SnsSettings};
use crate::writer::{Tracker, WriterClosed, WriterSettings};

/// The inbound SMS words that always opt out (CTIA and Twilio's standard list).
pub const STANDARD_OPT_OUT_KEYWORDS: [&str; 8] = [
    "STOP",
    "STOPALL",
    "UNSUBSCRIBE",
    "CANCEL",
    "END",
    "QUIT",
    "REVOKE",
    "OPTOUT",
];

/// The inbound SMS words that lift an opt-out.
pub const OPT_IN_KEYWORDS: [&str; 3] = ["START", "YES", "UNSTOP"];

/// The inbound SMS words that ask for help.
pub const HELP_KEYWORDS: [&str; 2] = ["HELP", "INFO"];

/// Opens this soon after delivery are flagged as machine opens (see [`ServerConfig::machine_open_window`]).
pub const DEFAULT_MACHINE_OPEN_WINDOW: Duration = Duration::from_secs(10);

/// The reply to HELP when none is configured.
pub const DEFAULT_HELP_REPLY: &str =
    "Reply STOP to stop these messages, START to receive them again.";

/// An SMTP client silent this long is disconnected.
pub const DEFAULT_SMTP_COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// SMTP sessions open at once.
pub const DEFAULT_SMTP_MAX_SESSIONS: usize = 256;
/// Commands that move no mail, per session. A bounce needs EHLO, MAIL,
/// RCPT, DATA, QUIT; MTAs add a RSET or NOOP between messages.
pub const DEFAULT_SMTP_MAX_IDLE_COMMANDS: usize = 20;
/// The longest SMTP session.
pub const DEFAULT_SMTP_SESSION_TIMEOUT: Duration = Duration::from_secs(600);

/// The SMTP bounce receiver's settings.
#[derive(Debug, Clone)]
pub struct SmtpSettings {
    /// Where [`crate::run`] binds it.
    pub listen: SocketAddr,
    /// Only `bounce+TOKEN@bounce_domain` is accepted; `None` accepts any domain.
    pub bounce_domain: Option<String>,
    /// The name in the greeting.
    pub hostname: String,
    /// Larger messages are refused (552); bounces quoting a whole message fit well within the default.
    pub max_message_bytes: usize,
    /// A client silent this long is disconnected (the command timeout).
    pub idle_timeout: Duration,
    /// Sessions open at once; past it the session longest without mail
    /// progress (MAIL, RCPT, DATA) is closed for the newcomer.
    pub max_sessions: usize,
    /// Commands that move no mail (NOOP, RSET, HELO, EHLO, VRFY, unknown or
    /// refused ones) a session may send before it is closed.
    pub max_idle_commands: usize,
    /// A session is closed this long after it opened, whatever it does.
    pub session_timeout: Duration,
}

impl Default for SmtpSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 2525)),
            bounce_domain: None,
            hostname: "herald".into(),
            max_message_bytes: 10 << 20,
            idle_timeout: DEFAULT_SMTP_COMMAND_TIMEOUT,
            max_sessions: DEFAULT_SMTP_MAX_SESSIONS,
            max_idle_commands: DEFAULT_SMTP_MAX_IDLE_COMMANDS,
            session_timeout: DEFAULT_SMTP_SESSION_TIMEOUT,
        }
    }
}

/// Everything the server needs besides the database and the signer.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// What links in messages point to (`[tracking].public_url`); Twilio signs URLs under it.
    pub public_url: String,
    /// The bearer token of `POST /events`; `None` disables the endpoint (403).
    pub events_token: Option<String>,
    /// `[defaults].opt_out_keywords`: opt-out words besides [`STANDARD_OPT_OUT_KEYWORDS`].
    pub opt_out_keywords: Vec<String>,
    /// The Twilio auth token that signs webhooks (`X-Twilio-Signature`); `None` refuses them (403).
    pub twilio_auth_token: Option<String>,
    /// The answer to HELP.
    pub sms_help_reply: String,
    /// The answer to an opt-out word; `None` answers nothing (Twilio's own opt-out handling replies).
    pub sms_stop_reply: Option<String>,
    /// The answer to START; `None` answers nothing.
    pub sms_start_reply: Option<String>,
    /// The SMTP bounce receiver, if it should run.
    pub smtp: Option<SmtpSettings>,
    /// Campaign goals for attribution (see [`crate::goal_specs`]).
    pub goals: Vec<GoalSpec>,
    /// Opens sooner than this after delivery are machine opens.
    pub machine_open_window: Duration,
    /// How opens and clicks are batched into transactions.
    pub writer: WriterSettings,
    /// How long `/metrics` reuses its message counts (a GROUP BY over all messages).
    pub gauge_ttl: Duration,
    /// Timeouts and the connection cap of the HTTP listeners.
    pub http: HttpLimits,
    /// The bearer token of the report API (`[tracking] api_token_env`); `None`
    /// refuses every API request (401).
    pub api_token: Option<String>,
    /// Where [`crate::run`] serves the report API (`[tracking] admin_listen`);
    /// when set, the public listener does not serve it.
    pub admin_listen: Option<SocketAddr>,
    /// SendGrid's Signed Event Webhook key (the point, see
    /// [`crate::sendgrid_key`]); `None` accepts SendGrid events unsigned.
    pub sendgrid_key: Option<Vec<u8>>,
    /// How SNS (SES) messages are checked; `None` refuses them all (403).
    pub sns: Option<SnsSettings>,
    /// The web console on the admin listener; `None` serves none.
    pub console: Option<crate::console::ConsoleSettings>,
}

impl ServerConfig {
    /// Settings with every optional part off, for `public_url`.
    pub fn new(public_url: impl Into<String>) -> Self {
        Self {
            public_url: public_url.into().trim_end_matches('/').to_string(),
            events_token: None,
            opt_out_keywords: Vec::new(),
            twilio_auth_token: None,
            sms_help_reply: DEFAULT_HELP_REPLY.into(),
            sms_stop_reply: None,
            sms_start_reply: None,
            smtp: None,
            goals: Vec::new(),
            machine_open_window: DEFAULT_MACHINE_OPEN_WINDOW,
            writer: WriterSettings::default(),
            gauge_ttl: Duration::from_secs(15),
            http: HttpLimits::default(),
            api_token: None,
            admin_listen: None,
            sendgrid_key: None,
            sns: None,
            console: None,
        }
    }
}

/// Produces a campaign's report as JSON, for `GET /api/campaigns/{name}/report`.
#[async_trait::async_trait]
pub trait ReportSource: Send + Sync {
    /// The report of `campaign` with the query's `run`, `since`, `until`;
    /// `Ok(None)` for an unknown campaign, `Err` for a bad query or a failure.
    async fn report(
        &self,
        campaign: &str,
        query: &[(String, String)],
    ) -> Result<Option<serde_json::Value>, ReportError>;

    /// The same report as CSV (`herald report --format csv`), for the
    /// console's link; `Ok(None)` for an unknown campaign. A source that
    /// makes none says so.
    async fn report_csv(
        &self,
        campaign: &str,
        query: &[(String, String)],
    ) -> Result<Option<String>, ReportError> {
        let _ = (campaign, query);
        Err(ReportError::Failed(
            "this server makes no CSV reports: use `herald report CAMPAIGN --format csv`".into(),
        ))
    }
}

/// Why a report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The query is wrong (400).
    #[error("{0}")]
    BadRequest(String),
    /// Something failed (500).
    #[error("{0}")]
    Failed(String),
}

/// Another collector `/metrics` serves (the daemon's dispatcher metrics).
pub type ExtraMetrics = Arc<dyn prometheus_client::collector::Collector>;

pub(crate) struct Inner {
    pub(crate) db: Db,
    pub(crate) signer: TokenSigner,
    pub(crate) config: ServerConfig,
    /// Opt-out words, normalised (see `crate::sms::normalise`).
    pub(crate) opt_out: Vec<String>,
    pub(crate) tracker: Tracker,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) report: Option<Arc<dyn ReportSource>>,
    pub(crate) extra_metrics: Option<ExtraMetrics>,
    /// SNS signing certificates fetched so far.
    pub(crate) sns_certs: CertCache,
    /// The console's rate limiter and signed-out sessions.
    pub(crate) console: crate::console::ConsoleMemory,
}

/// The server's shared state; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("public_url", &self.inner.config.public_url)
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// The state over `db`; starts the open/click writer, so call it inside a tokio runtime.
    pub fn new(db: Db, signer: TokenSigner, config: ServerConfig) -> Self {
        Self::build(db, signer, config, None, None)
    }

    /// Like [`AppState::new`], with a report source and extra metrics (either may be `None`).
    pub fn with_hooks(
        db: Db,
        signer: TokenSigner,
        config: ServerConfig,
        report: Option<Arc<dyn ReportSource>>,
        extra_metrics: Option<ExtraMetrics>,
    ) -> Self {
        Self::build(db, signer, config, report, extra_metrics)
    }

    fn build(
        db: Db,
        signer: TokenSigner,
        mut config: ServerConfig,
        report: Option<Arc<dyn ReportSource>>,
        extra_metrics: Option<ExtraMetrics>,
    ) -> Self {
        config.public_url = config.public_url.trim_end_matches('/').to_string();
        let mut opt_out: Vec<String> = STANDARD_OPT_OUT_KEYWORDS
            .iter()
            .map(|k| crate::sms::normalise(k))
            .chain(
                config
                    .opt_out_keywords
                    .iter()
                    .map(|k| crate::sms::normalise(k)),
            )
            .filter(|k| !k.is_empty())
            .collect();
        opt_out.sort();
        opt_out.dedup();
        let metrics = Arc::new(Metrics::default());
        let tracker = Tracker::spawn(
            db.clone(),
            config.writer.clone(),
            config.machine_open_window,
            metrics.writer.clone(),
        );
        Self {
            inner: Arc::new(Inner {
                db,
                signer,
                config,
                opt_out,
                tracker,
                metrics,
                report,
                extra_metrics,
                sns_certs: CertCache::default(),
                console: crate::console::ConsoleMemory::default(),
            }),
        }
    }

    /// The database.
    pub fn db(&self) -> &Db {
        &self.inner.db
    }

    /// The settings.
    pub fn config(&self) -> &ServerConfig {
        &self.inner.config
    }

    /// Waits until every open and click answered so far is written.
    pub async fn flush(&self) -> Result<(), WriterClosed> {
        self.inner.tracker.flush().await
    }
}
