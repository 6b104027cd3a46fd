//! SMTP adapter: lettre's protocol code over herald's own pool of `TCP_NODELAY` sockets.
//!
//! lettre never sets `TCP_NODELAY` and writes the final `.` apart from the body, so each
//! message would wait ~44 ms for a delayed ACK; herald opens the sockets itself and hands
//! them to `AsyncSmtpConnection::connect_with_transport`. [`SmtpChannel`] keeps a bounded
//! pool of them and decides the SMTP error taxonomy, once (see its docs).

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use lettre::address::Envelope;
use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
#[allow(deprecated)]
use lettre::transport::smtp::client::AsyncNetworkStream;
use lettre::transport::smtp::client::{AsyncSmtpConnection, AsyncTokioStream, TlsParameters};
use lettre::transport::smtp::commands::{Data, Mail, Rcpt, Rset};
use lettre::transport::smtp::extension::{ClientId, Extension, MailBodyParameter, MailParameter};
use lettre::transport::smtp::response::Response;
use lettre::{Address, Message};
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use crate::{Channel, DeliveryError, ProviderReceipt, RenderedMessage};

/// Connections kept open at most, when the config does not say.
pub const DEFAULT_POOL_SIZE: usize = 8;
/// Limit on each step (connect, handshake, each command, the content), when the config does not say.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// A pooled connection idle this long is checked with `NOOP` before use.
const PROBE_AFTER_IDLE: Duration = Duration::from_secs(5);
/// A pooled connection idle this long is closed (servers drop idle clients after 5 minutes).
const MAX_IDLE: Duration = Duration::from_secs(240);
/// Authentication mechanisms herald offers, in order of preference.
const AUTH_MECHANISMS: &[Mechanism] = &[Mechanism::Plain, Mechanism::Login];
const LIST_UNSUBSCRIBE: HeaderName = HeaderName::new_from_ascii_str("List-Unsubscribe");
const LIST_UNSUBSCRIBE_POST: HeaderName = HeaderName::new_from_ascii_str("List-Unsubscribe-Post");

/// How the connection to the SMTP server is encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Plain text (a local relay).
    #[default]
    None,
    /// Plain text upgraded with `STARTTLS` (usually port 587); fails if the server cannot.
    StartTls,
    /// TLS from the first byte (SMTPS, usually port 465).
    Tls,
}

/// Where and how to send email.
#[derive(Clone)]
pub struct SmtpSettings {
    /// Server host name (also the name its TLS certificate must carry).
    pub host: String,
    /// Server port.
    pub port: u16,
    /// Encryption.
    pub tls: TlsMode,
    /// `(user, password)` for `AUTH PLAIN` or `AUTH LOGIN`.
    pub credentials: Option<(String, String)>,
    /// The `From` mailbox, like `Shop <news@example.com>`.
    pub from: String,
    /// Connections open at most, hence messages in flight at most.
    pub pool_size: usize,
    /// Limit on each step: connect, handshake, each command, the content and its reply.
    pub timeout: Duration,
    /// The name given in `EHLO`; the machine's host name when `None`.
    pub hello_name: Option<String>,
}

impl SmtpSettings {
    /// Settings with no TLS, no credentials, the default pool size and timeout.
    pub fn new(host: impl Into<String>, port: u16, from: impl Into<String>) -> Self {
        SmtpSettings {
            host: host.into(),
            port,
            tls: TlsMode::None,
            credentials: None,
            from: from.into(),
            pool_size: DEFAULT_POOL_SIZE,
            timeout: DEFAULT_TIMEOUT,
            hello_name: None,
        }
    }
}

impl fmt::Debug for SmtpSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmtpSettings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("user", &self.credentials.as_ref().map(|(user, _)| user))
            .field("from", &self.from)
            .field("pool_size", &self.pool_size)
            .field("timeout", &self.timeout)
            .field("hello_name", &self.hello_name)
            .finish()
    }
}

/// Why [`SmtpSettings`] cannot make a channel.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SmtpConfigError {
    /// `from` is not a mailbox.
    #[error("from = {from:?} is not a mailbox like \"Shop <news@example.com>\": {reason}")]
    BadFrom {
        /// What was configured.
        from: String,
        /// What the parser said.
        reason: String,
    },
    /// `pool_size` is 0.
    #[error("pool_size must be at least 1")]
    ZeroPool,
    /// lettre could not set up TLS for this host.
    #[error("TLS for {host:?}: {reason}")]
    Tls {
        /// The configured host.
        host: String,
        /// What lettre said.
        reason: String,
    },
}

/// The SMTP channel: a bounded pool of reused lettre connections.
///
/// Error taxonomy: connect refused, connect or handshake timeout, TLS failure and any
/// 4xx reply → `Transient`, except a 4xx that says the sender is too fast (`451 4.7.0 rate
/// limit exceeded`, SES `454 Throttling failure`) → `RateLimited` (SMTP has no Retry-After); 5xx to `RCPT` → `Permanent { suppress_address: true }`
/// unless its enhanced status says policy, system or protocol (`5.7.x`, `5.3.x`,
/// `5.5.x`), which, like every other 5xx, is `Permanent { suppress_address: false }`;
/// 530, 534 and 535 (the login is refused or required) → `AccountFault`;
/// an IO error or timeout once the content started → `Ambiguous` (never resent).
pub struct SmtpChannel {
    settings: SmtpSettings,
    from: Mailbox,
    from_domain: String,
    client_id: ClientId,
    credentials: Option<Credentials>,
    tls: Option<TlsParameters>,
    idle: Mutex<Vec<Idle>>,
    permits: Semaphore,
}

struct Idle {
    conn: AsyncSmtpConnection,
    since: Instant,
}

impl fmt::Debug for SmtpChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmtpChannel")
            .field("settings", &self.settings)
            .field("idle", &self.idle_connections())
            .finish_non_exhaustive()
    }
}

impl SmtpChannel {
    /// Checks the settings; connects lazily, on the first send.
    pub fn new(settings: SmtpSettings) -> Result<SmtpChannel, SmtpConfigError> {
        if settings.pool_size == 0 {
            return Err(SmtpConfigError::ZeroPool);
        }
        let from: Mailbox = settings
            .from
            .parse()
            .map_err(
                |e: lettre::address::AddressError| SmtpConfigError::BadFrom {
                    from: settings.from.clone(),
                    reason: e.to_string(),
                },
            )?;
        let from_domain = from.email.domain().to_owned();
        let tls = match settings.tls {
            TlsMode::None => None,
            TlsMode::StartTls | TlsMode::Tls => {
                Some(TlsParameters::new(settings.host.clone()).map_err(|e| {
                    SmtpConfigError::Tls {
                        host: settings.host.clone(),
                        reason: e.to_string(),
                    }
                })?)
            }
        };
        let client_id = match &settings.hello_name {
            Some(name) => ClientId::Domain(name.clone()),
            None => ClientId::default(),
        };
        let credentials = settings
            .credentials
            .as_ref()
            .map(|(user, password)| Credentials::new(user.clone(), password.clone()));
        Ok(SmtpChannel {
            permits: Semaphore::new(settings.pool_size),
            settings,
            from,
            from_domain,
            client_id,
            credentials,
            tls,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// How many open connections wait in the pool now.
    pub fn idle_connections(&self) -> usize {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Says `QUIT` on every idle connection and closes it (in-flight sends are not affected).
    pub async fn close(&self) {
        let idle = std::mem::take(&mut *self.idle.lock().unwrap_or_else(PoisonError::into_inner));
        for mut idle in idle {
            let _ = tokio::time::timeout(self.settings.timeout, idle.conn.quit()).await;
        }
    }

    /// The message as lettre formats it, and its envelope (VERP sender when given).
    fn build(&self, m: &RenderedMessage) -> Result<(Envelope, Vec<u8>), DeliveryError> {
        let to: Address = m.to.parse().map_err(|e| DeliveryError::Permanent {
            code: "invalid_address".into(),
            detail: format!("{:?} is not an email address: {e}", m.to),
            suppress_address: false,
        })?;
        let sender = match &m.return_path {
            Some(path) => path.parse().map_err(|e| DeliveryError::Permanent {
                code: "invalid_return_path".into(),
                detail: format!("return path {path:?}: {e}"),
                suppress_address: false,
            })?,
            None => self.from.email.clone(),
        };
        let envelope =
            Envelope::new(Some(sender), vec![to.clone()]).map_err(|e| build_error(&e))?;
        let mut builder = Message::builder()
            .from(self.from.clone())
            .to(Mailbox::new(None, to))
            .message_id(Some(format!(
                "<herald.{}@{}>",
                m.message_id, self.from_domain
            )))
            .envelope(envelope.clone());
        if let Some(subject) = &m.subject {
            builder = builder.subject(subject.as_str());
        }
        if let Some(url) = &m.unsubscribe_url {
            if url.chars().any(|c| c.is_control() || c == '<' || c == '>') {
                return Err(DeliveryError::Permanent {
                    code: "invalid_unsubscribe_url".into(),
                    detail: format!("{url:?} cannot go in a List-Unsubscribe header"),
                    suppress_address: false,
                });
            }
            // RFC 8058 one-click unsubscribe: both headers, the URL must be https.
            builder = builder
                .raw_header(HeaderValue::new(LIST_UNSUBSCRIBE, format!("<{url}>")))
                .raw_header(HeaderValue::new(
                    LIST_UNSUBSCRIBE_POST,
                    "List-Unsubscribe=One-Click".to_owned(),
                ));
        }
        let message = match &m.text {
            Some(text) => builder.multipart(MultiPart::alternative_plain_html(
                text.clone(),
                m.body.clone(),
            )),
            None => builder.singlepart(SinglePart::html(m.body.clone())),
        }
        .map_err(|e| build_error(&e))?;
        Ok((envelope, message.formatted()))
    }

    /// A pooled connection (`true`) or a new one (`false`).
    async fn checkout(&self) -> Result<(AsyncSmtpConnection, bool), DeliveryError> {
        loop {
            let idle = self
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop();
            let Some(Idle { mut conn, since }) = idle else {
                return self.connect().await.map(|conn| (conn, false));
            };
            let idle_for = since.elapsed();
            if conn.has_broken() || idle_for > MAX_IDLE {
                continue;
            }
            if idle_for > PROBE_AFTER_IDLE {
                let alive =
                    tokio::time::timeout(self.settings.timeout, conn.test_connected()).await;
                if alive != Ok(true) {
                    continue;
                }
            }
            return Ok((conn, true));
        }
    }

    fn checkin(&self, conn: AsyncSmtpConnection) {
        if conn.has_broken() {
            return;
        }
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Idle {
                conn,
                since: Instant::now(),
            });
    }

    /// Opens a `TCP_NODELAY` socket, then greeting, EHLO, TLS and AUTH, all within the timeout.
    async fn connect(&self) -> Result<AsyncSmtpConnection, DeliveryError> {
        let s = &self.settings;
        let target = format!("{}:{}", s.host, s.port);
        let tcp =
            match tokio::time::timeout(s.timeout, TcpStream::connect((s.host.as_str(), s.port)))
                .await
            {
                Err(_) => {
                    return Err(transient(
                        "connect_timeout",
                        format!("no connection to {target} within {:?}", s.timeout),
                    ));
                }
                Ok(Err(e)) => {
                    return Err(transient("connect", format!("connecting to {target}: {e}")));
                }
                Ok(Ok(tcp)) => tcp,
            };
        // The reason herald opens the socket itself: see the module docs.
        tcp.set_nodelay(true)
            .map_err(|e| transient("connect", format!("setting TCP_NODELAY on {target}: {e}")))?;
        // Each error carries whether it came from TLS: lettre reports a failed handshake
        // as a connection error.
        let handshake = async {
            let tls_error = |e| (true, e);
            let smtp_error = |e| (false, e);
            let mut conn = match (&self.tls, s.tls) {
                (Some(tls), TlsMode::Tls) => {
                    #[allow(deprecated)]
                    let mut stream = AsyncNetworkStream::use_existing_tokio1(Box::new(tcp));
                    stream.upgrade_tls(tls.clone()).await.map_err(tls_error)?;
                    let stream = Box::new(TokioStream(stream));
                    AsyncSmtpConnection::connect_with_transport(stream, &self.client_id)
                        .await
                        .map_err(smtp_error)?
                }
                _ => AsyncSmtpConnection::connect_with_transport(Box::new(tcp), &self.client_id)
                    .await
                    .map_err(smtp_error)?,
            };
            if let (Some(tls), TlsMode::StartTls) = (&self.tls, s.tls) {
                conn.starttls(tls.clone(), &self.client_id)
                    .await
                    .map_err(tls_error)?;
            }
            if let Some(credentials) = &self.credentials {
                conn.auth(AUTH_MECHANISMS, credentials)
                    .await
                    .map_err(smtp_error)?;
            }
            Ok::<_, (bool, lettre::transport::smtp::Error)>(conn)
        };
        match tokio::time::timeout(s.timeout, handshake).await {
            Err(_) => Err(transient(
                "connect_timeout",
                format!("no SMTP session with {target} within {:?}", s.timeout),
            )),
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err((from_tls, e))) => Err(match e.status() {
                Some(code) => {
                    Failure::reply(Stage::Connect, u16::from(code), reply_text(&e)).into_error()
                }
                None if from_tls || e.is_tls() => {
                    transient("tls", format!("TLS with {target}: {e}"))
                }
                None => transient("connect", format!("SMTP session with {target}: {e}")),
            }),
        }
    }

    /// One transaction on one connection: MAIL, RCPT, DATA, content; each step timed.
    async fn transact(
        &self,
        conn: &mut AsyncSmtpConnection,
        envelope: &Envelope,
        email: &[u8],
    ) -> Result<Response, Failure> {
        let mut params = Vec::new();
        // What lettre's own `send` checks: SMTPUTF8 for non-ASCII addresses, 8BITMIME for content.
        let non_ascii_address = envelope
            .from()
            .into_iter()
            .chain(envelope.to())
            .any(|a| !AsRef::<str>::as_ref(a).is_ascii());
        if non_ascii_address {
            if !conn.server_info().supports_feature(Extension::SmtpUtfEight) {
                return Err(Failure::client(
                    "the address is not ASCII and the server lacks SMTPUTF8",
                ));
            }
            params.push(MailParameter::SmtpUtfEight);
        }
        if !email.is_ascii() {
            if !conn.server_info().supports_feature(Extension::EightBitMime) {
                return Err(Failure::client(
                    "the message is not ASCII and the server lacks 8BITMIME",
                ));
            }
            params.push(MailParameter::Body(MailBodyParameter::EightBitMime));
        }
        let t = self.settings.timeout;
        step(
            Stage::Mail,
            t,
            conn.command(Mail::new(envelope.from().cloned(), params)),
        )
        .await?;
        for to in envelope.to() {
            step(
                Stage::Rcpt,
                t,
                conn.command(Rcpt::new(to.clone(), Vec::new())),
            )
            .await?;
        }
        step(Stage::Data, t, conn.command(Data)).await?;
        step(Stage::Content, t, conn.message(email)).await
    }

    /// Puts a connection back after a failed transaction, if it is still in step.
    async fn recover(&self, mut conn: AsyncSmtpConnection, failure: &Failure) {
        match failure.kind {
            FailureKind::Reply { code: 421, .. } => {} // the server is closing it
            FailureKind::Reply { .. } if failure.stage == Stage::Content => self.checkin(conn),
            FailureKind::Reply { .. } => {
                let reset = tokio::time::timeout(self.settings.timeout, conn.command(Rset)).await;
                if matches!(reset, Ok(Ok(_))) {
                    self.checkin(conn);
                }
            }
            FailureKind::Client(_) => self.checkin(conn),
            FailureKind::Io(_) | FailureKind::Timeout => {}
        }
    }
}

#[async_trait]
impl Channel for SmtpChannel {
    fn delivered_on_accept(&self) -> bool {
        // SPEC section 1: acceptance is delivery, no receipt to wait for.
        true
    }

    async fn send(&self, message: &RenderedMessage) -> Result<ProviderReceipt, DeliveryError> {
        let (envelope, email) = self.build(message)?;
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| transient("closed", "the SMTP channel is closed".to_owned()))?;
        let mut retried_stale = false;
        loop {
            let (mut conn, reused) = self.checkout().await?;
            match self.transact(&mut conn, &envelope, &email).await {
                Ok(response) => {
                    self.checkin(conn);
                    return Ok(receipt(&response));
                }
                Err(failure) => {
                    // A pooled connection the server dropped while idle fails on MAIL, before
                    // anything of the message left: a fresh connection may retry at once.
                    if reused && !retried_stale && failure.is_stale_connection() {
                        retried_stale = true;
                        continue;
                    }
                    self.recover(conn, &failure).await;
                    return Err(failure.into_error());
                }
            }
        }
    }
}

/// The step of an SMTP session that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Connect,
    Mail,
    Rcpt,
    Data,
    /// The message content and the final reply: a failure here is ambiguous.
    Content,
}

#[derive(Debug)]
enum FailureKind {
    Reply { code: u16, text: String },
    Io(String),
    Timeout,
    Client(String),
}

#[derive(Debug)]
struct Failure {
    stage: Stage,
    kind: FailureKind,
}

impl Failure {
    fn reply(stage: Stage, code: u16, text: String) -> Failure {
        Failure {
            stage,
            kind: FailureKind::Reply { code, text },
        }
    }

    fn client(text: &str) -> Failure {
        Failure {
            stage: Stage::Mail,
            kind: FailureKind::Client(text.to_owned()),
        }
    }

    fn is_stale_connection(&self) -> bool {
        self.stage == Stage::Mail
            && matches!(
                self.kind,
                FailureKind::Io(_) | FailureKind::Reply { code: 421, .. }
            )
    }

    /// The taxonomy, decided here once.
    fn into_error(self) -> DeliveryError {
        let stage = self.stage;
        match self.kind {
            FailureKind::Reply { code, text }
                if (400..500).contains(&code) && is_throttling(&text) =>
            {
                DeliveryError::RateLimited {
                    code: code.to_string(),
                    detail: text,
                    retry_after: None,
                }
            }
            // The server refuses our login (or wants one): the account's fault,
            // whatever the step; the route blocks, no message fails for it.
            FailureKind::Reply { code, text } if ACCOUNT_REPLIES.contains(&code) => {
                DeliveryError::AccountFault {
                    code: code.to_string(),
                    detail: format!("SMTP {code}: {}", text.trim()),
                }
            }
            FailureKind::Reply { code, text } if (400..500).contains(&code) => {
                DeliveryError::Transient {
                    code: code.to_string(),
                    detail: text,
                    retry_after: None,
                }
            }
            FailureKind::Reply { code, text } => DeliveryError::Permanent {
                code: code.to_string(),
                suppress_address: stage == Stage::Rcpt
                    && (500..600).contains(&code)
                    && names_the_mailbox(&text),
                detail: text,
            },
            FailureKind::Client(text) => DeliveryError::Permanent {
                code: "client".into(),
                detail: text,
                suppress_address: false,
            },
            FailureKind::Io(text) if stage == Stage::Content => DeliveryError::Ambiguous {
                detail: format!("the connection failed once the message was being sent: {text}"),
            },
            FailureKind::Timeout if stage == Stage::Content => DeliveryError::Ambiguous {
                detail: "no answer to the message in time".to_owned(),
            },
            FailureKind::Io(text) => transient("network", format!("during {stage:?}: {text}")),
            FailureKind::Timeout => transient("timeout", format!("no answer to {stage:?} in time")),
        }
    }
}

/// Replies that refuse the sender's account (RFC 4954): 530 authentication
/// required, 534 mechanism too weak, 535 credentials invalid.
const ACCOUNT_REPLIES: [u16; 3] = [530, 534, 535];

/// Phrases with which servers say "you send too fast" in a 4xx reply (SES `454 Throttling
/// failure`, Gmail `421 4.7.28 ... rate limited`, Postfix `450 4.7.1 ... rate limit exceeded`).
const THROTTLING_PHRASES: &[&str] = &[
    "throttl",
    "rate limit",
    "sending rate",
    "rate exceeded",
    "too many messages",
    "slow down",
];

/// Whether a 4xx reply says the sender is too fast (then the pacer slows the route), rather
/// than some other temporary trouble (greylisting, a full disk).
fn is_throttling(text: &str) -> bool {
    let text = text.to_ascii_lowercase();
    THROTTLING_PHRASES.iter().any(|p| text.contains(p))
}

/// Whether a 5xx `RCPT` reply blames the mailbox (a bounce to suppress) rather than policy,
/// the system or the protocol: RFC 3463 subjects 7, 3 and 5 say it is not the address.
fn names_the_mailbox(text: &str) -> bool {
    let mut fields = text.split_whitespace().next().unwrap_or("").split('.');
    let (class, subject) = (fields.next(), fields.next());
    let enhanced = class == Some("5")
        && subject.is_some_and(|s| s.parse::<u16>().is_ok())
        && fields.next().is_some_and(|d| d.parse::<u16>().is_ok());
    !(enhanced && matches!(subject, Some("3" | "5" | "7")))
}

async fn step<F>(stage: Stage, limit: Duration, fut: F) -> Result<Response, Failure>
where
    F: Future<Output = Result<Response, lettre::transport::smtp::Error>>,
{
    match tokio::time::timeout(limit, fut).await {
        Err(_) => Err(Failure {
            stage,
            kind: FailureKind::Timeout,
        }),
        Ok(Ok(response)) => Ok(response),
        Ok(Err(e)) => Err(Failure {
            stage,
            kind: match e.status() {
                Some(code) => FailureKind::Reply {
                    code: u16::from(code),
                    text: reply_text(&e),
                },
                None if e.is_client() => FailureKind::Client(e.to_string()),
                None => FailureKind::Io(e.to_string()),
            },
        }),
    }
}

/// The server's words in a lettre error for a negative reply.
fn reply_text(e: &lettre::transport::smtp::Error) -> String {
    std::error::Error::source(e).map_or_else(|| e.to_string(), ToString::to_string)
}

fn transient(code: &str, detail: String) -> DeliveryError {
    DeliveryError::Transient {
        code: code.to_owned(),
        detail,
        retry_after: None,
    }
}

fn build_error(e: &dyn std::error::Error) -> DeliveryError {
    DeliveryError::Permanent {
        code: "build".into(),
        detail: format!("cannot build the message: {e}"),
        suppress_address: false,
    }
}

/// The receipt for a `250`: the queue id when the server names one, else its words.
fn receipt(response: &Response) -> ProviderReceipt {
    let text = response.message().collect::<Vec<_>>().join(" ");
    let queue_id = text
        .find("queued as ")
        .map(|i| &text[i + "queued as ".len()..])
        .and_then(|rest| rest.split_whitespace().next())
        .map(|id| id.trim_end_matches(['.', ')', ',']).to_owned());
    ProviderReceipt {
        provider_id: Some(queue_id.unwrap_or_else(|| text.clone())),
        detail: format!("{} {text}", response.code()),
    }
}

/// lettre's TLS stream (a futures-io stream) seen as a tokio stream, so an implicit-TLS
/// connection over herald's own socket can go through `connect_with_transport` too.
#[allow(deprecated)]
#[derive(Debug)]
struct TokioStream(AsyncNetworkStream);

impl tokio::io::AsyncRead for TokioStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let unfilled = buf.initialize_unfilled();
        match futures::io::AsyncRead::poll_read(Pin::new(&mut self.0), cx, unfilled) {
            Poll::Ready(Ok(n)) => {
                buf.advance(n);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl tokio::io::AsyncWrite for TokioStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        futures::io::AsyncWrite::poll_write(Pin::new(&mut self.0), cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        futures::io::AsyncWrite::poll_flush(Pin::new(&mut self.0), cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        futures::io::AsyncWrite::poll_close(Pin::new(&mut self.0), cx)
    }
}

impl AsyncTokioStream for TokioStream {
    fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.0.peer_addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttling_replies_are_told_apart_from_other_4xx() {
        for text in [
            "Throttling failure: Maximum sending rate exceeded.",
            "4.7.28 Our system has detected an unusual rate of mail. Rate limited.",
            "4.7.0 Rate limit exceeded, slow down",
            "4.7.1 Too many messages from this sender",
        ] {
            assert!(is_throttling(text), "{text}");
        }
        for text in [
            "4.7.1 Greylisted, please try again later",
            "4.3.0 Try again later",
            "4.5.3 Too many recipients",
        ] {
            assert!(!is_throttling(text), "{text}");
        }
        let throttled = Failure::reply(Stage::Content, 451, "4.7.0 rate limit exceeded".into());
        assert!(matches!(
            throttled.into_error(),
            DeliveryError::RateLimited { ref code, retry_after: None, .. } if code == "451"
        ));
    }

    #[test]
    fn a_refused_login_is_the_accounts_fault_at_any_step() {
        for (stage, code) in [
            (Stage::Connect, 535),
            (Stage::Mail, 530),
            (Stage::Rcpt, 530),
            (Stage::Connect, 534),
        ] {
            let e = Failure::reply(
                stage,
                code,
                "5.7.8 Authentication credentials invalid".into(),
            )
            .into_error();
            assert_eq!(
                e,
                DeliveryError::AccountFault {
                    code: code.to_string(),
                    detail: format!("SMTP {code}: 5.7.8 Authentication credentials invalid"),
                },
                "{stage:?}"
            );
        }
        // A mailbox refusal stays the message's.
        assert!(matches!(
            Failure::reply(Stage::Rcpt, 550, "5.1.1 no such user".into()).into_error(),
            DeliveryError::Permanent {
                suppress_address: true,
                ..
            }
        ));
    }
}
