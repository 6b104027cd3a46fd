//! Channel adapters: how a rendered message leaves herald.
//!
//! Every adapter implements [`Channel`]: one `send` that answers with a
//! [`ProviderReceipt`] or a [`DeliveryError`] decided from the provider's own
//! codes. The retry policy (in the engine) reads only that taxonomy. Adapters:
//! [`smtp`] (lettre over herald's own TCP_NODELAY connections), [`twilio`] and [`fcm`]
//! (reqwest; their shared HTTP rules in `http.rs`) and [`outbox`] (records instead of
//! sending). Rate limiting lives in [`rate`]; [`pacer`] slows a route down on 429s;
//! [`dkim`] signs email.

pub mod dkim;
pub mod fcm;
mod http;
pub mod outbox;
pub mod pacer;
pub mod rate;
pub mod smtp;
pub mod twilio;

use std::time::Duration;

use async_trait::async_trait;
use herald_domain::types::Channel as ChannelKind;

/// A reqwest client builder whose TLS uses ring, the project's one crypto
/// provider. reqwest is built without a provider of its own (its default is
/// aws-lc-rs), so ring is installed as the process's rustls default first;
/// every HTTP client of herald, tests included, starts here.
pub fn http_client_builder() -> reqwest::ClientBuilder {
    // Err only when a provider is already installed: ring, by this function.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
}

/// A message ready to leave: rendered, addressed, with its headers decided.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderedMessage {
    /// The message row's id (stable across retries).
    pub message_id: i64,
    /// Which channel this is for.
    pub channel: ChannelKind,
    /// Email address, E.164 phone number or push token.
    pub to: String,
    /// Email subject or push title.
    pub subject: Option<String>,
    /// Email HTML body, or the plain text of an SMS or push.
    pub body: String,
    /// Email plain-text alternative.
    pub text: Option<String>,
    /// `List-Unsubscribe` target (https URL) for email.
    pub unsubscribe_url: Option<String>,
    /// VERP return path (`bounce+TOKEN@domain`) for email.
    pub return_path: Option<String>,
    /// Provider status-callback URL (Twilio `StatusCallback`).
    pub status_callback: Option<String>,
    /// The signed token naming this message to provider callbacks: email carries it in
    /// its Message-ID and in the relay's custom args or tags, so webhooks find the message.
    pub callback_token: Option<String>,
}

/// What a provider said when it accepted a message.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ProviderReceipt {
    /// The provider's id for the message (SMTP queue id, Twilio SID, FCM name).
    pub provider_id: Option<String>,
    /// The provider's own words, for the attempt log.
    pub detail: String,
}

/// Why a send did not succeed, decided once per adapter from the provider's answer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DeliveryError {
    /// Try again later (connection refused, 4xx SMTP, HTTP 5xx).
    #[error("temporary failure ({code}): {detail}")]
    Transient {
        /// Provider code (SMTP reply code, HTTP status, ...).
        code: String,
        /// Provider text.
        detail: String,
        /// How long the provider asked us to wait, if it said.
        retry_after: Option<Duration>,
    },
    /// The provider throttled us; wait `retry_after` (or a default) and retry.
    #[error("rate limited ({code}): {detail}")]
    RateLimited {
        /// Provider code.
        code: String,
        /// Provider text.
        detail: String,
        /// How long the provider asked us to wait, if it said.
        retry_after: Option<Duration>,
    },
    /// Never retry this message; `suppress_address` when the address itself is dead.
    #[error("permanent failure ({code}): {detail}")]
    Permanent {
        /// Provider code.
        code: String,
        /// Provider text.
        detail: String,
        /// The address should be suppressed (unsubscribed number, unregistered token, hard bounce).
        suppress_address: bool,
    },
    /// The request may have reached the provider but no answer came: never resend.
    #[error("no answer after the request was written: {detail}")]
    Ambiguous {
        /// What happened.
        detail: String,
    },
    /// The provider refused the sender's account, not the message (wrong
    /// credentials, a suspended account): the route is blocked and probed,
    /// the message stays planned; never the message's failure, never a fallback.
    #[error("authentication failed ({detail})")]
    AccountFault {
        /// Provider code (`20003`, `535`, `invalid_client`, ...).
        code: String,
        /// The provider's name, code and words, as a sender recognises
        /// them: `Twilio 20003: Authenticate (HTTP 401)`.
        detail: String,
    },
    /// The provider refused a credential of the sender's that only some of
    /// the route's addresses need: FCM's `THIRD_PARTY_AUTH_ERROR`, the APNs
    /// or web-push credential in the Firebase project is wrong, so iOS and
    /// web tokens are refused while Android ones still go. The part of the
    /// route the address belongs to (its token's platform) is blocked and
    /// probed, the message stays planned; the rest of the route goes on.
    #[error("authentication failed for iOS/web tokens ({detail})")]
    PlatformFault {
        /// Provider code (`THIRD_PARTY_AUTH_ERROR`).
        code: String,
        /// The provider's name, code and words.
        detail: String,
    },
}

impl DeliveryError {
    /// Whether the retry policy may try this message again.
    pub fn is_retriable(&self) -> bool {
        matches!(
            self,
            DeliveryError::Transient { .. } | DeliveryError::RateLimited { .. }
        )
    }

    /// Whether the answer is the sender's account's, not the message's: the
    /// route blocks (see [`DeliveryError::AccountFault`]).
    pub fn is_account_fault(&self) -> bool {
        matches!(self, DeliveryError::AccountFault { .. })
    }

    /// The provider's code, for the attempt log.
    pub fn code(&self) -> &str {
        match self {
            DeliveryError::Transient { code, .. }
            | DeliveryError::RateLimited { code, .. }
            | DeliveryError::Permanent { code, .. }
            | DeliveryError::AccountFault { code, .. }
            | DeliveryError::PlatformFault { code, .. } => code,
            DeliveryError::Ambiguous { .. } => "no_answer",
        }
    }
}

/// A way out of herald. One required method, like lettre's `send_raw`.
#[async_trait]
pub trait Channel: Send + Sync {
    /// Hands one message to the provider.
    async fn send(&self, message: &RenderedMessage) -> Result<ProviderReceipt, DeliveryError>;

    /// Whether this adapter's acceptance counts as delivery (SMTP, FCM, the
    /// outbox) or a receipt will follow (Twilio): an accepted send ends
    /// `delivered` or `sent`. A message handed to it is written so before
    /// the send, so that an accepted send needs no second write.
    fn delivered_on_accept(&self) -> bool;
}
