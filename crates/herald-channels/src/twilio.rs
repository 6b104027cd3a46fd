//! SMS through Twilio's Messages API (or any server speaking its wire format).
//!
//! `POST {base_url}/2010-04-01/Accounts/{AccountSid}/Messages.json`, a form with `To`,
//! `From` or `MessagingServiceSid`, `Body` and `StatusCallback`, HTTP Basic auth. A `201`
//! is `sent` (delivery comes later, on the status callback); errors follow Twilio's codes
//! (see [`TwilioChannel`]).

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use herald_domain::address::E164Phone;
use reqwest::header::{AUTHORIZATION, HeaderValue};
use serde::Deserialize;

use crate::http::{self, DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_IDLE, DEFAULT_TIMEOUT};
use crate::{Channel, DeliveryError, ProviderReceipt, RenderedMessage};

/// Twilio's API, when the config names no other.
pub const DEFAULT_BASE_URL: &str = "https://api.twilio.com";
/// Twilio: too many requests (the account's concurrency or rate).
const CODE_TOO_MANY_REQUESTS: u32 = 20429;
/// Twilio: the recipient replied STOP; sending again is refused until they reply START.
const CODE_UNSUBSCRIBED: u32 = 21610;
/// Twilio: authentication failed (wrong account SID or auth token).
const CODE_AUTHENTICATE: u32 = 20003;
/// HTTP statuses that refuse the account itself (credentials, permissions).
const ACCOUNT_STATUSES: [u16; 2] = [401, 403];

/// Who the SMS is from: a number of the account, or a Messaging Service that picks one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TwilioSender {
    /// `From`: an E.164 number of the account.
    Phone(E164Phone),
    /// `MessagingServiceSid`: `MG` and 32 hex digits.
    MessagingService(String),
}

impl TwilioSender {
    /// Reads the config's `from`: `MG...` is a Messaging Service, anything else an E.164 number.
    pub fn parse(raw: &str) -> Result<TwilioSender, TwilioConfigError> {
        let raw = raw.trim();
        if let Some(hex) = raw.strip_prefix("MG") {
            let ok = hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit());
            return if ok {
                Ok(TwilioSender::MessagingService(raw.to_owned()))
            } else {
                Err(TwilioConfigError::BadSender(format!(
                    "{raw:?} looks like a Messaging Service SID but is not MG and 32 hex digits"
                )))
            };
        }
        E164Phone::parse(raw)
            .map(TwilioSender::Phone)
            .map_err(TwilioConfigError::BadSender)
    }

    /// The form field and its value.
    fn field(&self) -> (&'static str, &str) {
        match self {
            TwilioSender::Phone(phone) => ("From", phone.as_str()),
            TwilioSender::MessagingService(sid) => ("MessagingServiceSid", sid),
        }
    }
}

/// Where and how to send SMS.
#[derive(Clone)]
pub struct TwilioSettings {
    /// `https://api.twilio.com` or a compatible server (`[channels.sms] base_url`).
    pub base_url: String,
    /// The account SID (`AC...`): in the URL and the Basic auth user.
    pub account_sid: String,
    /// The auth token: the Basic auth password.
    pub auth_token: String,
    /// The sender.
    pub from: TwilioSender,
    /// How long Twilio has to answer once the request is written.
    pub timeout: Duration,
    /// How long connecting may take.
    pub connect_timeout: Duration,
    /// Idle keep-alive connections kept (at least the route's concurrency).
    pub max_idle_connections: usize,
}

impl TwilioSettings {
    /// Settings for Twilio itself with the default timeouts.
    pub fn new(
        account_sid: impl Into<String>,
        auth_token: impl Into<String>,
        from: TwilioSender,
    ) -> Self {
        TwilioSettings {
            base_url: DEFAULT_BASE_URL.to_owned(),
            account_sid: account_sid.into(),
            auth_token: auth_token.into(),
            from,
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            max_idle_connections: DEFAULT_MAX_IDLE,
        }
    }
}

impl fmt::Debug for TwilioSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TwilioSettings")
            .field("base_url", &self.base_url)
            .field("account_sid", &self.account_sid)
            .field("auth_token", &"<hidden>")
            .field("from", &self.from)
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_idle_connections", &self.max_idle_connections)
            .finish()
    }
}

/// Why [`TwilioSettings`] cannot make a channel.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TwilioConfigError {
    /// `base_url` is not an http(s) URL.
    #[error("base_url: {0}")]
    BadBaseUrl(String),
    /// The account SID is empty or would not fit in a URL path.
    #[error("account_sid {0:?} must be letters and digits, like AC followed by 32 hex digits")]
    BadAccountSid(String),
    /// `from` is neither an E.164 number nor a Messaging Service SID.
    #[error("from: {0}")]
    BadSender(String),
    /// The auth token cannot go in a header.
    #[error("the auth token is empty or holds characters that cannot go in a header")]
    BadAuthToken,
    /// The HTTP client could not be built (TLS roots, say).
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

/// The Twilio channel: one keep-alive HTTP client, the URL and auth header built once.
///
/// Error taxonomy: code 20429 or HTTP 429 → `RateLimited` (with `Retry-After`); 5xx →
/// `Transient`; HTTP 401/403 or code 20003 → `AccountFault` (the route blocks); 21610 (unsubscribed) → `Permanent { suppress_address: true }`; 21211 and
/// any other 4xx → `Permanent`; a `2xx` whose body has no `sid` → `Ambiguous` (it may
/// have been taken); no connection → `Transient`; no answer once written → `Ambiguous`.
pub struct TwilioChannel {
    client: reqwest::Client,
    url: String,
    auth: HeaderValue,
    from: TwilioSender,
    timeout: Duration,
}

impl fmt::Debug for TwilioChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TwilioChannel")
            .field("url", &self.url)
            .field("from", &self.from)
            .finish_non_exhaustive()
    }
}

impl TwilioChannel {
    /// Checks the settings and builds the client; connects lazily, on the first send.
    pub fn new(settings: TwilioSettings) -> Result<TwilioChannel, TwilioConfigError> {
        let base = http::base_url(&settings.base_url).map_err(TwilioConfigError::BadBaseUrl)?;
        let sid = &settings.account_sid;
        if sid.is_empty() || !sid.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(TwilioConfigError::BadAccountSid(sid.clone()));
        }
        if settings.auth_token.is_empty() {
            return Err(TwilioConfigError::BadAuthToken);
        }
        let credentials = BASE64.encode(format!("{sid}:{}", settings.auth_token));
        let mut auth = HeaderValue::from_str(&format!("Basic {credentials}"))
            .map_err(|_| TwilioConfigError::BadAuthToken)?;
        auth.set_sensitive(true);
        let client = http::client(
            settings.connect_timeout,
            settings.timeout,
            settings.max_idle_connections,
        )
        .map_err(|e| TwilioConfigError::Client(http::describe(&e)))?;
        Ok(TwilioChannel {
            client,
            url: format!("{base}/2010-04-01/Accounts/{sid}/Messages.json"),
            auth,
            from: settings.from,
            timeout: settings.timeout,
        })
    }
}

#[async_trait]
impl Channel for TwilioChannel {
    fn delivered_on_accept(&self) -> bool {
        // Twilio's status callback says what became of the message.
        false
    }

    async fn send(&self, message: &RenderedMessage) -> Result<ProviderReceipt, DeliveryError> {
        let to = E164Phone::parse(&message.to).map_err(|why| DeliveryError::Permanent {
            code: "invalid_address".to_owned(),
            detail: why,
            suppress_address: false,
        })?;
        let mut form = Vec::with_capacity(4);
        form.push(("To", to.as_str()));
        form.push(self.from.field());
        form.push(("Body", message.body.as_str()));
        if let Some(callback) = &message.status_callback {
            form.push(("StatusCallback", callback.as_str()));
        }
        let response = self
            .client
            .post(&self.url)
            .header(AUTHORIZATION, self.auth.clone())
            .form(&form)
            .send()
            .await
            .map_err(|e| http::request_failed(&e, self.timeout))?;
        let status = response.status();
        let retry_after = http::retry_after(response.headers());
        let body = http::read_body(response).await;
        if status.is_success() {
            // Twilio answered 2xx: the message was taken unless the answer says otherwise,
            // so anything short of a readable SID is ambiguous, never a failure.
            let body = body.map_err(|e| DeliveryError::Ambiguous {
                detail: format!(
                    "HTTP {status}, then the answer was cut: {}",
                    http::describe(&e)
                ),
            })?;
            return created(status.as_u16(), &body);
        }
        // The status decides even if the body was lost.
        Err(refused(
            status.as_u16(),
            retry_after,
            &body.unwrap_or_default(),
        ))
    }
}

/// Twilio's `201` message resource (only what herald reads; Twilio sends numbers as strings).
#[derive(Deserialize)]
struct Created {
    sid: String,
    status: Option<String>,
    num_segments: Option<serde_json::Value>,
    price: Option<serde_json::Value>,
    price_unit: Option<String>,
}

fn created(status: u16, body: &[u8]) -> Result<ProviderReceipt, DeliveryError> {
    let created: Created = serde_json::from_slice(body)
        .ok()
        .filter(|c: &Created| !c.sid.is_empty())
        .ok_or_else(|| DeliveryError::Ambiguous {
            detail: format!(
                "HTTP {status} without a message SID in the answer: {}",
                http::snippet(body)
            ),
        })?;
    let text = |v: &Option<serde_json::Value>| match v {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Number(n)) => n.to_string(),
        _ => "-".to_owned(),
    };
    Ok(ProviderReceipt {
        detail: format!(
            "{status} {}: {} segment(s), price {} {}",
            created.status.as_deref().unwrap_or("queued"),
            text(&created.num_segments),
            text(&created.price),
            created.price_unit.as_deref().unwrap_or(""),
        )
        .trim_end()
        .to_owned(),
        provider_id: Some(created.sid),
    })
}

/// Twilio's error resource.
#[derive(Deserialize)]
struct TwilioError {
    code: Option<u32>,
    message: Option<String>,
    more_info: Option<String>,
}

/// The taxonomy of a non-2xx answer, decided here once.
fn refused(status: u16, retry_after: Option<Duration>, body: &[u8]) -> DeliveryError {
    let error = serde_json::from_slice::<TwilioError>(body).ok();
    let code = error.as_ref().and_then(|e| e.code);
    let detail = match &error {
        Some(TwilioError {
            message: Some(message),
            more_info,
            ..
        }) => match more_info {
            Some(info) => format!("HTTP {status}: {message} ({info})"),
            None => format!("HTTP {status}: {message}"),
        },
        _ => format!("HTTP {status}: {}", http::snippet(body)),
    };
    let code_text = code.map_or_else(|| status.to_string(), |c| c.to_string());
    if code == Some(CODE_TOO_MANY_REQUESTS) || status == 429 {
        return DeliveryError::RateLimited {
            code: code_text,
            detail,
            retry_after,
        };
    }
    if status >= 500 {
        return DeliveryError::Transient {
            code: code_text,
            detail,
            retry_after,
        };
    }
    // The account's credentials or permissions: the route's fault, never
    // the message's (no fallback, no `failed`; the route blocks and probes).
    if code == Some(CODE_AUTHENTICATE) || ACCOUNT_STATUSES.contains(&status) {
        let words = error
            .as_ref()
            .and_then(|e| e.message.clone())
            .unwrap_or_else(|| http::snippet(body));
        return DeliveryError::AccountFault {
            detail: format!("Twilio {code_text}: {words} (HTTP {status})"),
            code: code_text,
        };
    }
    // 21211 (invalid number) and the rest are the message's fault, not a dead address.
    DeliveryError::Permanent {
        suppress_address: code == Some(CODE_UNSUBSCRIBED),
        code: code_text,
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(code: u32, status: u16) -> Vec<u8> {
        format!(
            r#"{{"code": {code}, "message": "m{code}", "more_info": "https://www.twilio.com/docs/errors/{code}", "status": {status}}}"#
        )
        .into_bytes()
    }

    #[test]
    fn twilio_codes_decide_the_taxonomy() {
        let secs = Some(Duration::from_secs(3));
        assert_eq!(
            refused(429, secs, &body(20429, 429)),
            DeliveryError::RateLimited {
                code: "20429".into(),
                detail: "HTTP 429: m20429 (https://www.twilio.com/docs/errors/20429)".into(),
                retry_after: secs,
            }
        );
        // 20429 wins whatever the HTTP status; a bare 429 is rate limited too.
        assert!(matches!(
            refused(400, None, &body(20429, 400)),
            DeliveryError::RateLimited { .. }
        ));
        assert!(matches!(
            refused(429, None, b"<html>slow down</html>"),
            DeliveryError::RateLimited { ref code, .. } if code == "429"
        ));
        assert!(matches!(
            refused(503, secs, b""),
            DeliveryError::Transient { ref code, retry_after, .. } if code == "503" && retry_after == secs
        ));
        assert!(matches!(
            refused(500, None, &body(20500, 500)),
            DeliveryError::Transient { ref code, .. } if code == "20500"
        ));
        assert_eq!(
            refused(400, None, &body(21610, 400)),
            DeliveryError::Permanent {
                code: "21610".into(),
                detail: "HTTP 400: m21610 (https://www.twilio.com/docs/errors/21610)".into(),
                suppress_address: true,
            }
        );
        assert!(matches!(
            refused(400, None, &body(21211, 400)),
            DeliveryError::Permanent { ref code, suppress_address: false, .. } if code == "21211"
        ));
        // The account's credentials are the route's fault, not the message's.
        assert_eq!(
            refused(401, None, &body(20003, 401)),
            DeliveryError::AccountFault {
                code: "20003".into(),
                detail: "Twilio 20003: m20003 (HTTP 401)".into(),
            }
        );
        assert_eq!(
            refused(401, None, &body(20003, 401)).to_string(),
            "authentication failed (Twilio 20003: m20003 (HTTP 401))"
        );
        assert!(matches!(
            refused(403, None, b"forbidden"),
            DeliveryError::AccountFault { ref code, .. } if code == "403"
        ));
        assert!(matches!(
            refused(404, None, b"not json"),
            DeliveryError::Permanent { ref code, .. } if code == "404"
        ));
    }

    #[test]
    fn a_201_needs_a_sid_else_it_is_ambiguous() {
        let ok = created(
            201,
            br#"{"sid": "SM123", "status": "queued", "num_segments": "2", "price": null, "price_unit": "USD"}"#,
        )
        .unwrap();
        assert_eq!(ok.provider_id.as_deref(), Some("SM123"));
        assert_eq!(ok.detail, "201 queued: 2 segment(s), price - USD");
        for bad in [&b"{\"sid\": \"SM1"[..], b"{}", b"{\"sid\": \"\"}", b""] {
            assert!(
                matches!(created(201, bad), Err(DeliveryError::Ambiguous { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn sender_parsing() {
        assert!(matches!(
            TwilioSender::parse("+1 555 123 4567"),
            Ok(TwilioSender::Phone(p)) if p.as_str() == "+15551234567"
        ));
        let mg = format!("MG{}", "a1".repeat(16));
        assert_eq!(
            TwilioSender::parse(&mg),
            Ok(TwilioSender::MessagingService(mg.clone()))
        );
        assert!(TwilioSender::parse("MG123").is_err());
        assert!(TwilioSender::parse("5551234567").is_err());
    }

    #[test]
    fn settings_are_checked_and_the_token_hidden() {
        let from = TwilioSender::parse("+15551234567").unwrap();
        let s = TwilioSettings::new("AC123", "s3cret", from);
        assert!(!format!("{s:?}").contains("s3cret"));
        assert!(TwilioChannel::new(s.clone()).is_ok());
        let bad = |f: fn(&mut TwilioSettings)| {
            let mut s = s.clone();
            f(&mut s);
            TwilioChannel::new(s).unwrap_err()
        };
        assert!(matches!(
            bad(|s| s.account_sid = "AC/../x".into()),
            TwilioConfigError::BadAccountSid(_)
        ));
        assert!(matches!(
            bad(|s| s.base_url = "api.twilio.com".into()),
            TwilioConfigError::BadBaseUrl(_)
        ));
        assert_eq!(
            bad(|s| s.auth_token = String::new()),
            TwilioConfigError::BadAuthToken
        );
    }
}
