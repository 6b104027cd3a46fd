//! `config/herald.toml`: database, channels and providers, tracking, defaults,
//! RFM and lifecycle settings. Every section is optional; the defaults are
//! the embedded ones (SQLite, outbox channels) so a fresh checkout just runs.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::values::{Fraction, FrequencyCap, QuietHours, RateSpec, Timezone};
use crate::diagnostic::Diagnostic;
use crate::duration::Span;

/// The default database: a SQLite file next to where herald runs.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://herald.db?mode=rwc";

/// The whole of `herald.toml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeraldConfig {
    /// Where state lives.
    pub database: DatabaseConfig,
    /// The tracking server and its secrets.
    pub tracking: TrackingConfig,
    /// Providers per channel.
    pub channels: ChannelsConfig,
    /// Policies every campaign inherits.
    pub defaults: Defaults,
    /// RFM scoring.
    pub rfm: RfmConfig,
    /// Lifecycle stages.
    pub lifecycle: LifecycleConfig,
    /// What templates see beyond the contact's own fields.
    pub personalisation: PersonalisationConfig,
    /// How the daemon's workers claim and send.
    pub dispatch: DispatchConfig,
    /// Declared types of imported contact attributes.
    pub contacts: super::attrs::ContactsConfig,
    /// The web console on the admin listener.
    pub console: ConsoleConfig,
}

/// `[console]`: the web console served on `[tracking] admin_listen`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleConfig {
    /// Environment variable holding the sign-in password; unset or empty,
    /// nobody can sign in.
    pub password_env: String,
    /// The zone times are shown in.
    pub timezone: Timezone,
    /// The console's own URL as people open it (behind a TLS proxy, say);
    /// when it is https the session cookie is marked `Secure`.
    pub url: Option<String>,
}

/// `[console] password_env` by default.
pub const DEFAULT_CONSOLE_PASSWORD_ENV: &str = "HERALD_CONSOLE_PASSWORD";

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self {
            password_env: DEFAULT_CONSOLE_PASSWORD_ENV.into(),
            timezone: Timezone(chrono_tz::Tz::UTC),
            url: None,
        }
    }
}

impl HeraldConfig {
    /// Parses the text of `herald.toml`.
    pub fn parse(file: &str, source: &str) -> Result<Self, Diagnostic> {
        let config: Self = super::parse_toml(file, source)?;
        config.lifecycle.check_order(file, source)?;
        Ok(config)
    }
}

/// `[database]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://...` or `postgres://...`.
    pub url: String,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: DEFAULT_DATABASE_URL.to_string(),
        }
    }
}

/// `[tracking]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrackingConfig {
    /// Address the tracking server binds.
    pub listen: String,
    /// What links in messages point to.
    pub public_url: String,
    /// Environment variable holding the signing secret.
    pub secret_env: String,
    /// Environment variable holding the secret before a rotation: digests of
    /// forgotten contacts' addresses made under it are still recognised.
    pub secret_previous_env: Option<String>,
    /// Environment variable holding the bearer token for `POST /events`.
    pub events_token_env: String,
    /// Where `herald serve` accepts DSN bounces and ARF complaints by SMTP (none: not at all).
    pub smtp_listen: Option<String>,
    /// Environment variable holding the bearer token of the report API
    /// (`GET /api/...`); unset, the API answers 401 to everyone.
    pub api_token_env: String,
    /// SNS topics (ARNs) whose SES notifications are accepted; none: SES
    /// webhooks are refused (403). Every message must be signed by SNS.
    pub sns_topic_arns: Vec<String>,
    /// Environment variable holding SendGrid's Signed Event Webhook
    /// verification key (base64); unset, SendGrid events are accepted
    /// unsigned and `herald check` warns.
    pub sendgrid_verification_key_env: Option<String>,
    /// Where the report API (and any later admin page) is served, never on
    /// `listen`; unset, [`DEFAULT_ADMIN_LISTEN`] (see [`Self::admin_address`]).
    pub admin_listen: Option<String>,
    /// A request head must arrive within this long of its first byte.
    pub header_timeout: Span,
    /// A keep-alive connection with no request this long is closed.
    pub idle_timeout: Span,
    /// A request body must arrive within this long of its head.
    pub body_timeout: Span,
    /// Open HTTP connections at most (per listener); past it the oldest idle
    /// one is closed. Lowered at start to fit the file-descriptor limit.
    pub max_connections: usize,
    /// An SMTP client silent this long is disconnected.
    pub smtp_command_timeout: Span,
    /// The longest SMTP session.
    pub smtp_session_timeout: Span,
    /// SMTP sessions open at once; past it the one longest without mail is closed.
    pub smtp_max_sessions: usize,
    /// Commands that move no mail (NOOP, RSET, HELO, ...) per SMTP session.
    pub smtp_max_idle_commands: usize,
}

/// `[tracking] admin_listen` by default: loopback, so the internet-facing
/// host serves only what recipients and providers need.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:8081";

impl TrackingConfig {
    /// The admin listener's address: `admin_listen`, or
    /// [`DEFAULT_ADMIN_LISTEN`]. When `listen` asks for any free port (port
    /// 0, as tests and several processes on one host do), the default admin
    /// address does too, so two such processes never collide on 8081.
    pub fn admin_address(&self) -> String {
        if let Some(a) = &self.admin_listen {
            return a.clone();
        }
        let ephemeral = self
            .listen
            .rsplit_once(':')
            .is_some_and(|(_, port)| port == "0");
        if ephemeral {
            "127.0.0.1:0".into()
        } else {
            DEFAULT_ADMIN_LISTEN.into()
        }
    }
}

/// `[tracking] header_timeout` by default.
pub const DEFAULT_HEADER_TIMEOUT: Span = Span::from_secs(10);
/// `[tracking] idle_timeout` by default.
pub const DEFAULT_IDLE_TIMEOUT: Span = Span::from_secs(60);
/// `[tracking] body_timeout` by default.
pub const DEFAULT_BODY_TIMEOUT: Span = Span::from_secs(30);
/// `[tracking] max_connections` by default.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// `[tracking] smtp_command_timeout` by default.
pub const DEFAULT_SMTP_COMMAND_TIMEOUT: Span = Span::from_secs(60);
/// `[tracking] smtp_session_timeout` by default.
pub const DEFAULT_SMTP_SESSION_TIMEOUT: Span = Span::from_secs(600);
/// `[tracking] smtp_max_sessions` by default.
pub const DEFAULT_SMTP_MAX_SESSIONS: usize = 256;
/// `[tracking] smtp_max_idle_commands` by default.
pub const DEFAULT_SMTP_MAX_IDLE_COMMANDS: usize = 20;

impl Default for TrackingConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            public_url: "http://localhost:8080".into(),
            secret_env: "HERALD_SECRET".into(),
            secret_previous_env: None,
            events_token_env: "HERALD_EVENTS_TOKEN".into(),
            smtp_listen: None,
            api_token_env: "HERALD_API_TOKEN".into(),
            sns_topic_arns: Vec::new(),
            sendgrid_verification_key_env: None,
            admin_listen: None,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            smtp_command_timeout: DEFAULT_SMTP_COMMAND_TIMEOUT,
            smtp_session_timeout: DEFAULT_SMTP_SESSION_TIMEOUT,
            smtp_max_sessions: DEFAULT_SMTP_MAX_SESSIONS,
            smtp_max_idle_commands: DEFAULT_SMTP_MAX_IDLE_COMMANDS,
        }
    }
}

/// `[channels.*]`: every channel defaults to the outbox.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChannelsConfig {
    /// `[channels.email]`.
    pub email: EmailChannelConfig,
    /// `[channels.sms]`.
    pub sms: SmsChannelConfig,
    /// `[channels.push]`.
    pub push: PushChannelConfig,
}

/// How an email leaves: a real SMTP server, or the database outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EmailProvider {
    /// SMTP via lettre.
    Smtp,
    /// Rendered, rate limited and recorded, but kept in the database.
    #[default]
    Outbox,
}

/// SMTP transport security.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Plain text (local relays only).
    #[default]
    None,
    /// Upgrade with STARTTLS (port 587).
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
}

/// `[channels.email]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmailChannelConfig {
    /// `smtp` or `outbox`.
    pub provider: EmailProvider,
    /// SMTP host.
    pub host: String,
    /// SMTP port.
    pub port: u16,
    /// Transport security.
    pub tls: TlsMode,
    /// Environment variable holding the SMTP user name.
    pub username_env: Option<String>,
    /// Environment variable holding the SMTP password.
    pub password_env: Option<String>,
    /// The From header, `Name <address>`.
    pub from: String,
    /// VERP return path domain: `bounce+TOKEN@bounce_domain`.
    pub bounce_domain: Option<String>,
    /// Send rate; none means unlimited.
    pub rate: Option<RateSpec>,
    /// Messages in flight at once (SMTP connections).
    pub concurrency: usize,
    /// DKIM keys to sign with: one table, or a list of them (dual signing).
    pub dkim: Option<DkimSetting>,
    /// Which provider the SMTP host is, so herald adds the headers its webhooks echo back.
    pub relay: Option<EmailRelay>,
    /// SES configuration set (`X-SES-CONFIGURATION-SET`) whose event destination
    /// publishes bounces and complaints; implies `relay = "ses"`.
    pub ses_configuration_set: Option<String>,
    /// Send SMTP credentials over a connection without TLS (a local relay only).
    pub allow_plaintext_auth: bool,
}

impl EmailChannelConfig {
    /// The DKIM keys configured, in order.
    pub fn dkim_keys(&self) -> &[DkimKeyConfig] {
        match &self.dkim {
            None => &[],
            Some(DkimSetting::One(k)) => std::slice::from_ref(k),
            Some(DkimSetting::Many(ks)) => ks,
        }
    }

    /// The provider whose webhook correlation headers to add, if any.
    pub fn effective_relay(&self) -> Option<EmailRelay> {
        self.relay
            .or(self.ses_configuration_set.as_ref().map(|_| EmailRelay::Ses))
    }
}

/// An email service provider behind the SMTP host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EmailRelay {
    /// SendGrid: herald's token in `X-SMTPAPI` `unique_args`.
    Sendgrid,
    /// Amazon SES: herald's token in `X-SES-MESSAGE-TAGS`.
    Ses,
}

/// A DKIM signature algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum DkimAlgorithm {
    /// RSA PKCS#1 v1.5 with SHA-256 (RFC 6376).
    #[default]
    #[serde(rename = "rsa-sha256")]
    RsaSha256,
    /// Ed25519 over SHA-256 (RFC 8463).
    #[serde(rename = "ed25519-sha256")]
    Ed25519Sha256,
}

impl DkimAlgorithm {
    /// The `a=` tag value.
    pub fn as_str(self) -> &'static str {
        match self {
            DkimAlgorithm::RsaSha256 => "rsa-sha256",
            DkimAlgorithm::Ed25519Sha256 => "ed25519-sha256",
        }
    }
}

/// One DKIM key: `{ domain, selector, key_env, algorithm }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DkimKeyConfig {
    /// The signing domain (`d=`); should be, or be a parent of, the From domain.
    pub domain: String,
    /// The selector (`s=`): the key is published at `SELECTOR._domainkey.DOMAIN`.
    pub selector: String,
    /// Environment variable holding the private key (PEM, or base64 of the DER).
    pub key_env: String,
    /// `rsa-sha256` (default) or `ed25519-sha256`.
    #[serde(default)]
    pub algorithm: DkimAlgorithm,
}

/// `dkim = { ... }` or `dkim = [{ ... }, { ... }]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum DkimSetting {
    /// One key.
    One(DkimKeyConfig),
    /// Several keys, each signing every message (e.g. RSA and Ed25519).
    Many(Vec<DkimKeyConfig>),
}

impl Default for EmailChannelConfig {
    fn default() -> Self {
        Self {
            provider: EmailProvider::Outbox,
            host: "localhost".into(),
            port: 25,
            tls: TlsMode::None,
            username_env: None,
            password_env: None,
            from: "herald <herald@example.com>".into(),
            bounce_domain: None,
            rate: None,
            concurrency: 8,
            dkim: None,
            relay: None,
            ses_configuration_set: None,
            allow_plaintext_auth: false,
        }
    }
}

/// How an SMS leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmsProvider {
    /// A Twilio-compatible HTTP API.
    Twilio,
    /// Kept in the database.
    #[default]
    Outbox,
}

/// `[channels.sms]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmsChannelConfig {
    /// `twilio` or `outbox`.
    pub provider: SmsProvider,
    /// API base URL.
    pub base_url: String,
    /// Environment variable holding the account SID.
    pub account_sid_env: Option<String>,
    /// Environment variable holding the auth token.
    pub auth_token_env: Option<String>,
    /// Sender number (E.164) or messaging service.
    pub from: String,
    /// Appended to every marketing SMS: one line, or one per locale.
    pub opt_out_line: Option<OptOutLine>,
    /// `herald check` refuses templates that can exceed this many segments.
    pub max_segments: usize,
    /// Send rate.
    pub rate: Option<RateSpec>,
    /// Requests in flight at once.
    pub concurrency: usize,
}

impl Default for SmsChannelConfig {
    fn default() -> Self {
        Self {
            provider: SmsProvider::Outbox,
            base_url: "https://api.twilio.com".into(),
            account_sid_env: None,
            auth_token_env: None,
            from: "+15005550006".into(),
            opt_out_line: Some(OptOutLine::Same("Reply STOP to opt out".into())),
            max_segments: 3,
            rate: None,
            concurrency: 8,
        }
    }
}

/// Twilio refuses an SMS body longer than this many characters (error 21617), however
/// many segments the account allows.
pub const MAX_SMS_BODY_CHARS: usize = 1_600;

/// The key of an [`OptOutLine`] table used when no locale matches.
pub const DEFAULT_LOCALE_KEY: &str = "default";

/// `opt_out_line = "..."` or `opt_out_line = { default = "...", zh-CN = "..." }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum OptOutLine {
    /// One line for every contact.
    Same(String),
    /// A line per locale tag, and `default` for the rest (no `default`: no line for them).
    PerLocale(BTreeMap<String, String>),
}

/// `zh_CN` and `ZH-cn` → `zh-cn`: tags compare case-insensitively, `_` like `-`.
fn normalize_locale(tag: &str) -> String {
    tag.trim().replace('_', "-").to_ascii_lowercase()
}

impl OptOutLine {
    /// The line for a contact of `locale`, chosen like a template's locale variant:
    /// the exact tag, then shorter prefixes (`zh-Hant-TW`, `zh-Hant`, `zh`), then `default`.
    pub fn for_locale(&self, locale: Option<&str>) -> Option<&str> {
        let table = match self {
            OptOutLine::Same(line) => return Some(line),
            OptOutLine::PerLocale(table) => table,
        };
        let find = |wanted: &str| {
            table
                .iter()
                .find(|(k, _)| k.as_str() != DEFAULT_LOCALE_KEY && normalize_locale(k) == wanted)
                .map(|(_, v)| v.as_str())
        };
        if let Some(locale) = locale {
            let wanted = normalize_locale(locale);
            let mut candidate = wanted.as_str();
            loop {
                if let Some(line) = find(candidate) {
                    return Some(line);
                }
                match candidate.rfind('-') {
                    Some(i) => candidate = &candidate[..i],
                    None => break,
                }
            }
        }
        table.get(DEFAULT_LOCALE_KEY).map(String::as_str)
    }

    /// Every locale tag the table names (none for a single line): the locales a check
    /// must count segments for, besides the default.
    pub fn locales(&self) -> Vec<&str> {
        match self {
            OptOutLine::Same(_) => Vec::new(),
            OptOutLine::PerLocale(table) => table
                .keys()
                .map(String::as_str)
                .filter(|k| *k != DEFAULT_LOCALE_KEY)
                .collect(),
        }
    }
}

/// How a push leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PushProvider {
    /// An FCM HTTP v1-compatible API.
    Fcm,
    /// Kept in the database.
    #[default]
    Outbox,
}

/// `[channels.push]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PushChannelConfig {
    /// `fcm` or `outbox`.
    pub provider: PushProvider,
    /// API base URL.
    pub base_url: String,
    /// FCM project.
    pub project_id: String,
    /// Environment variable holding the service-account key (JSON).
    pub credentials_env: Option<String>,
    /// Send rate.
    pub rate: Option<RateSpec>,
    /// Requests in flight at once.
    pub concurrency: usize,
}

impl Default for PushChannelConfig {
    fn default() -> Self {
        Self {
            provider: PushProvider::Outbox,
            base_url: "https://fcm.googleapis.com".into(),
            project_id: "demo".into(),
            credentials_env: None,
            rate: None,
            concurrency: 8,
        }
    }
}

/// `[defaults]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Defaults {
    /// For contacts without a time zone.
    pub timezone: Timezone,
    /// Recipient-local hours when marketing waits.
    pub quiet_hours: Option<QuietHours>,
    /// Caps across all marketing campaigns.
    pub frequency_caps: Vec<FrequencyCap>,
    /// Inbound SMS words that opt out, besides the standard English ones.
    pub opt_out_keywords: Vec<String>,
    /// A fraction of all contacts no marketing campaign reaches.
    pub global_holdout: Fraction,
}

impl Default for Defaults {
    fn default() -> Self {
        Self {
            timezone: Timezone(chrono_tz::Tz::UTC),
            quiet_hours: None,
            frequency_caps: Vec::new(),
            opt_out_keywords: ["TD", "T", "退订"].map(String::from).to_vec(),
            global_holdout: Fraction::default(),
        }
    }
}

/// `[rfm]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RfmConfig {
    /// The event that is a purchase.
    pub purchase_event: String,
    /// F and M count purchases in this window; R uses all history.
    pub window: Span,
    /// Recency bin edges in days (inclusive upper bounds), score 5 .. 1.
    pub recency_days: [u32; 4],
    /// Frequency edges, score 1 .. 5.
    pub frequency: [f64; 4],
    /// Monetary edges on spend in the window, score 1 .. 5.
    pub monetary: [f64; 4],
    /// Optional weighted composite for M: measure -> weight.
    pub monetary_weights: Option<BTreeMap<String, f64>>,
    /// Edges for the composite (percentile points).
    pub monetary_composite: Option<[f64; 4]>,
}

impl Default for RfmConfig {
    fn default() -> Self {
        Self {
            purchase_event: "order_placed".into(),
            window: Span::from_days(365),
            recency_days: [30, 90, 150, 270],
            frequency: [1.0, 2.0, 4.0, 8.0],
            monetary: [100.0, 500.0, 1000.0, 5000.0],
            monetary_weights: None,
            monetary_composite: None,
        }
    }
}

/// `[lifecycle]`: day thresholds, half-open ranges.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LifecycleConfig {
    /// Events that count as activity.
    pub activity_events: Vec<String>,
    /// First seen less than this many days ago: new.
    pub new: u32,
    /// Last activity in [0, active): active.
    pub active: u32,
    /// [active, silent): silent.
    pub silent: u32,
    /// [silent, dormant): dormant; beyond, churned.
    pub dormant: u32,
}

impl LifecycleConfig {
    /// The stage edges must rise: `active <= silent <= dormant` (each range
    /// is half-open, so an edge below the one before would leave a stage no days).
    fn check_order(&self, file: &str, source: &str) -> Result<(), Diagnostic> {
        let edges = [
            ("active", self.active),
            ("silent", self.silent),
            ("dormant", self.dormant),
        ];
        for pair in edges.windows(2) {
            let ((low, a), (high, b)) = (pair[0], pair[1]);
            if b < a {
                // Point at the later key inside `[lifecycle]` when it is written there.
                let section = source.find("[lifecycle]").unwrap_or(0);
                let at = source[section..]
                    .lines()
                    .scan(section, |offset, line| {
                        let start = *offset;
                        *offset += line.len() + 1;
                        Some((start, line))
                    })
                    .find(|(_, line)| line.trim_start().starts_with(high))
                    .map_or(section..section, |(start, line)| start..start + line.len());
                return Err(Diagnostic::new(
                    file,
                    source,
                    at,
                    format!("[lifecycle] {high} = {b} is below {low} = {a}: the edges must rise (active <= silent <= dormant)"),
                )
                .with_help(
                    "each stage is a half-open range of days since the last activity: active [0, active), silent [active, silent), dormant [silent, dormant); e.g. active = 7, silent = 30, dormant = 90",
                ));
            }
        }
        Ok(())
    }
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        Self {
            activity_events: vec!["app_open".into(), "login".into(), "order_placed".into()],
            new: 7,
            active: 7,
            silent: 30,
            dormant: 90,
        }
    }
}

/// `[dispatch]`: how `herald run` and `herald send` claim and send messages.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DispatchConfig {
    /// Messages a worker claims at once. Also the in-flight window: the most
    /// messages one worker's crash can leave `unknown`.
    pub batch: u32,
    /// How long a claim holds; a crashed worker's `sending` messages end
    /// `unknown` after it, its other claims return to the queue.
    pub lease: Span,
    /// Workers per daemon and route (each route has its own lane of workers).
    pub workers: usize,
    /// How long a graceful stop (SIGTERM) may take: the daemon stops
    /// claiming, finishes the requests in the air, gives the rest back to
    /// `planned`, writes every outcome and exits 0 within it.
    pub stop_timeout: Span,
    /// How long `herald send` probes a route blocked by an account fault
    /// (wrong credentials) before it exits 1, leaving its messages planned.
    pub blocked_wait: Span,
    /// The reputation guard judges a marketing run only after this many deliveries.
    pub reputation_min_deliveries: u64,
    /// A marketing run whose bounced share of deliveries exceeds this pauses itself.
    pub reputation_max_bounce_rate: f64,
    /// A marketing run whose complaints exceed this share of deliveries pauses itself.
    pub reputation_max_complaint_rate: f64,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        Self {
            batch: 500,
            lease: Span::from_secs(120),
            workers: 2,
            stop_timeout: Span::from_secs(20),
            blocked_wait: Span::from_secs(60),
            reputation_min_deliveries: 1000,
            reputation_max_bounce_rate: 0.05,
            reputation_max_complaint_rate: 0.003,
        }
    }
}

/// The window `[personalisation]` reads by default: a year, like `[rfm] window`.
pub const DEFAULT_PERSONALISATION_WINDOW: Span = Span::from_days(365);

/// `[personalisation]`: the data templates see as `top.EVENT.PROPERTY` and `best_hour`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PersonalisationConfig {
    /// `top.*` and `best_hour` count the contact's events in `(now - window, now]`.
    pub window: Span,
}

impl Default for PersonalisationConfig {
    fn default() -> Self {
        Self {
            window: DEFAULT_PERSONALISATION_WINDOW,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_means_embedded_defaults() {
        let c = HeraldConfig::parse("herald.toml", "").unwrap();
        assert_eq!(c.database.url, DEFAULT_DATABASE_URL);
        assert_eq!(c.channels.email.provider, EmailProvider::Outbox);
        assert_eq!(c.personalisation.window, DEFAULT_PERSONALISATION_WINDOW);
    }

    #[test]
    fn the_personalisation_window_is_a_duration() {
        let c =
            HeraldConfig::parse("herald.toml", "[personalisation]\nwindow = \"90d\"\n").unwrap();
        assert_eq!(c.personalisation.window, Span::from_days(90));
        let e = HeraldConfig::parse("herald.toml", "[personalisation]\nwindow = \"soon\"\n")
            .unwrap_err();
        assert_eq!(e.line_col().0, 2, "{e}");
    }

    #[test]
    fn the_spec_example_parses() {
        let src = r#"
[database]
url = "sqlite://herald.db?mode=rwc"
[tracking]
listen = "127.0.0.1:8080"
public_url = "http://localhost:8080"
secret_env = "HERALD_SECRET"
events_token_env = "HERALD_EVENTS_TOKEN"
[channels.email]
provider = "smtp"
host = "localhost"
port = 25
tls = "none"
username_env = "SMTP_USER"
password_env = "SMTP_PASSWORD"
from = "Shop <news@example.com>"
bounce_domain = "bounces.example.com"
dkim = { domain = "example.com", selector = "s1", key_env = "DKIM_KEY", algorithm = "rsa-sha256" }
rate = { per_second = 50, burst = 10 }
concurrency = 8
[channels.sms]
provider = "twilio"
base_url = "https://api.twilio.com"
account_sid_env = "TWILIO_ACCOUNT_SID"
auth_token_env = "TWILIO_AUTH_TOKEN"
from = "+15005550006"
opt_out_line = "Reply STOP to opt out"
max_segments = 3
rate = { per_second = 10 }
[channels.push]
provider = "fcm"
base_url = "https://fcm.googleapis.com"
project_id = "demo"
credentials_env = "FCM_CREDENTIALS"
rate = { per_second = 500 }
[defaults]
timezone = "Asia/Shanghai"
quiet_hours = { start = "21:00", end = "08:00" }
frequency_caps = [ { channel = "sms", max = 1, per = "3d" }, { channel = "any", max = 3, per = "7d" } ]
opt_out_keywords = ["TD", "T", "退订"]
global_holdout = 0.0
[contacts.attrs]
vip = "bool"
ltv = "number"
signup = "date"
[rfm]
purchase_event = "order_placed"
window = "365d"
recency_days = [30, 90, 150, 270]
frequency = [1, 2, 4, 8]
monetary = [100, 500, 1000, 5000]
[lifecycle]
activity_events = ["app_open", "login", "order_placed"]
new = 7
active = 7
silent = 30
dormant = 90
"#;
        let c = HeraldConfig::parse("herald.toml", src).unwrap();
        assert_eq!(c.channels.email.provider, EmailProvider::Smtp);
        assert_eq!(c.channels.email.rate.unwrap().per_second.get(), 50);
        assert_eq!(c.defaults.timezone.0, chrono_tz::Asia::Shanghai);
        assert_eq!(c.defaults.frequency_caps.len(), 2);
        assert_eq!(c.rfm.recency_days, [30, 90, 150, 270]);
        assert_eq!(
            c.contacts.attrs.get("vip"),
            Some(&super::super::attrs::AttrType::Bool)
        );
        assert_eq!(c.channels.email.dkim_keys()[0].selector, "s1");
    }

    #[test]
    fn the_opt_out_line_is_chosen_by_locale_then_language_then_default() {
        let src = "[channels.sms]\nopt_out_line = { default = \"Reply STOP to opt out\", zh-CN = \"回TD退订\", fr = \"STOP au 36111\" }\n";
        let c = HeraldConfig::parse("herald.toml", src).unwrap();
        let line = c.channels.sms.opt_out_line.unwrap();
        assert_eq!(line.for_locale(Some("zh-CN")), Some("回TD退订"));
        assert_eq!(line.for_locale(Some("zh_cn")), Some("回TD退订"));
        assert_eq!(line.for_locale(Some("fr-CA")), Some("STOP au 36111"));
        assert_eq!(
            line.for_locale(Some("zh-TW")),
            Some("Reply STOP to opt out")
        );
        assert_eq!(line.for_locale(None), Some("Reply STOP to opt out"));
        assert_eq!(line.locales(), vec!["fr", "zh-CN"]);
        let plain = OptOutLine::Same("STOP".into());
        assert_eq!(plain.for_locale(Some("zh-CN")), Some("STOP"));
        let no_default = OptOutLine::PerLocale(BTreeMap::from([("zh".into(), "回TD退订".into())]));
        assert_eq!(no_default.for_locale(Some("en")), None);
    }

    #[test]
    fn dkim_takes_one_key_or_a_list() {
        let src = r#"[channels.email]
dkim = [
  { domain = "example.com", selector = "r1", key_env = "K1" },
  { domain = "example.com", selector = "e1", key_env = "K2", algorithm = "ed25519-sha256" },
]
ses_configuration_set = "herald-events"
"#;
        let c = HeraldConfig::parse("herald.toml", src).unwrap();
        let keys = c.channels.email.dkim_keys();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].algorithm, DkimAlgorithm::RsaSha256);
        assert_eq!(keys[1].algorithm, DkimAlgorithm::Ed25519Sha256);
        assert_eq!(c.channels.email.effective_relay(), Some(EmailRelay::Ses));
        let bad = "[channels.email]\ndkim = { domain = \"x\", selector = \"s\", key_env = \"K\", algorithm = \"rsa-sha1\" }\n";
        assert!(HeraldConfig::parse("herald.toml", bad).is_err());
    }

    #[test]
    fn listener_limits_parse_and_default() {
        let c = HeraldConfig::parse("herald.toml", "").unwrap();
        assert_eq!(c.tracking.header_timeout, DEFAULT_HEADER_TIMEOUT);
        assert_eq!(c.tracking.admin_address(), "127.0.0.1:8081");
        let c = HeraldConfig::parse("herald.toml", "[tracking]\nlisten = \"0.0.0.0:0\"\n").unwrap();
        assert_eq!(c.tracking.admin_address(), "127.0.0.1:0");
        let src = "[tracking]\nheader_timeout = \"5s\"\nidle_timeout = \"2m\"\nmax_connections = 100\nadmin_listen = \"127.0.0.1:8081\"\napi_token_env = \"T\"\nsmtp_max_idle_commands = 5\n";
        let c = HeraldConfig::parse("herald.toml", src).unwrap();
        assert_eq!(c.tracking.header_timeout, Span::from_secs(5));
        assert_eq!(c.tracking.idle_timeout, Span::from_secs(120));
        assert_eq!(c.tracking.max_connections, 100);
        assert_eq!(c.tracking.admin_address(), "127.0.0.1:8081");
        let other = "[tracking]\nadmin_listen = \"10.0.0.5:9000\"\n";
        let other = HeraldConfig::parse("herald.toml", other).unwrap();
        assert_eq!(other.tracking.admin_address(), "10.0.0.5:9000");
        assert_eq!(c.tracking.api_token_env, "T");
        assert_eq!(c.tracking.smtp_max_idle_commands, 5);
    }

    #[test]
    fn a_typo_points_at_its_line_and_column() {
        let src = "[channels.email]\nprovider = \"smtp\"\nprot = 25\n";
        let e = HeraldConfig::parse("config/herald.toml", src).unwrap_err();
        assert_eq!(e.line_col(), (3, 1));
        assert!(e.message.contains("unknown field `prot`"), "{}", e.message);
        assert!(e.help.as_deref().unwrap_or("").contains("`port`"), "{e}");
    }

    #[test]
    fn lifecycle_edges_in_the_wrong_order_are_refused() {
        let src = "[lifecycle]\nactive = 7\nsilent = 60\ndormant = 30\n";
        let e = HeraldConfig::parse("herald.toml", src).unwrap_err();
        assert_eq!(e.line_col(), (4, 1), "{e}");
        assert!(
            e.message.contains("dormant = 30 is below silent = 60"),
            "{e}"
        );
        let ok = "[lifecycle]\nactive = 7\nsilent = 30\ndormant = 30\n";
        HeraldConfig::parse("herald.toml", ok).unwrap();
    }

    #[test]
    fn a_bad_time_zone_is_named() {
        let src = "[defaults]\ntimezone = \"Asia/Shanghi\"\n";
        let e = HeraldConfig::parse("herald.toml", src).unwrap_err();
        assert_eq!(e.line_col(), (2, 12));
        assert!(
            e.message.contains("unknown time zone `Asia/Shanghi`"),
            "{e}"
        );
    }
}
