//! The Twilio sink: a loopback server speaking Twilio's Messages API (`2010-04-01`).
//!
//! It checks HTTP Basic auth and the form fields the way Twilio does, answers `201` with a
//! real-looking message resource, or what its [`FaultPlan`] says, records each message it
//! took, and logs every arrival for rate checks ([`RequestLog`]).

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hyper::header::{AUTHORIZATION, HeaderMap, HeaderValue, WWW_AUTHENTICATE};
use hyper::{Method, StatusCode};
use serde_json::json;
use tokio::net::TcpListener;

use crate::http::{
    self, Answer, DEFAULT_STALL, FaultPlan, Handler, Planner, Reply, RequestLog, Server, lock,
};

/// The account SID the sink expects unless told otherwise.
pub const DEMO_ACCOUNT_SID: &str = "AC00000000000000000000000000000001";
/// The auth token the sink expects unless told otherwise.
pub const DEMO_AUTH_TOKEN: &str = "herald-demo-auth-token";
/// Characters of one single-part SMS in GSM-7; UCS-2 allows 70.
const GSM_SINGLE: usize = 160;
/// Characters of each part of a multipart GSM-7 SMS; UCS-2 allows 67.
const GSM_PART: usize = 153;
const UCS2_SINGLE: usize = 70;
const UCS2_PART: usize = 67;

/// How a [`TwilioSink`] listens and answers.
#[derive(Debug, Clone)]
pub struct TwilioSinkConfig {
    /// Where to listen; the default is `127.0.0.1:0` (any free port).
    pub bind: SocketAddr,
    /// The account SID in the URL and the Basic auth user.
    pub account_sid: String,
    /// The Basic auth password.
    pub auth_token: String,
    /// Keep each message's content; `false` only counts them, to keep memory bounded.
    pub keep_messages: bool,
    /// Answers to message requests.
    pub plan: FaultPlan,
    /// How long a stalled request is held before the connection is dropped.
    pub stall_for: Duration,
    /// A token bucket, as a Twilio account's rate limit: at most this many
    /// messages a second (burst: one second's worth) are taken; the excess
    /// is answered `429` (code 20429) with `Retry-After: 1`. `None`: no limit.
    pub accept_per_second: Option<f64>,
}

impl Default for TwilioSinkConfig {
    fn default() -> Self {
        TwilioSinkConfig {
            bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            account_sid: DEMO_ACCOUNT_SID.to_owned(),
            auth_token: DEMO_AUTH_TOKEN.to_owned(),
            keep_messages: true,
            plan: FaultPlan::default(),
            stall_for: DEFAULT_STALL,
            accept_per_second: None,
        }
    }
}

/// One message the Twilio sink took (or may have: stalled, hung up, answered malformed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedSms {
    /// The `SM...` SID the sink gave it.
    pub sid: String,
    /// The `To` field.
    pub to: String,
    /// The `From` field, if given.
    pub from: Option<String>,
    /// The `MessagingServiceSid` field, if given.
    pub messaging_service_sid: Option<String>,
    /// The `Body` field.
    pub body: String,
    /// The `StatusCallback` field, if given.
    pub status_callback: Option<String>,
    /// How the sink answered.
    pub answer: Answer,
}

/// A running Twilio-compatible server on loopback; stops on [`TwilioSink::shutdown`] or drop.
#[derive(Debug)]
pub struct TwilioSink {
    server: Server,
    state: Arc<TwilioState>,
}

#[derive(Debug)]
struct TwilioState {
    path: String,
    expected_auth: String,
    account_sid: String,
    keep_messages: bool,
    planner: Planner,
    log: RequestLog,
    received: Mutex<Vec<ReceivedSms>>,
    count: AtomicUsize,
    next_sid: AtomicU64,
    /// Refuse every credential (as after a rotated auth token), until cleared.
    refuse_credentials: AtomicBool,
    /// The token bucket: (rate a second, tokens left, last refill).
    bucket: Option<Mutex<(f64, f64, std::time::Instant)>>,
}

impl TwilioState {
    /// Takes a token from the bucket, if there is one: `false` is a 429.
    fn take_token(&self) -> bool {
        let Some(bucket) = &self.bucket else {
            return true;
        };
        let mut b = lock(bucket);
        let now = std::time::Instant::now();
        let (rate, tokens, last) = *b;
        let tokens = (tokens + now.duration_since(last).as_secs_f64() * rate).min(rate);
        let (tokens, ok) = if tokens >= 1.0 {
            (tokens - 1.0, true)
        } else {
            (tokens, false)
        };
        *b = (rate, tokens, now);
        ok
    }
}

impl TwilioSink {
    /// Binds `config.bind` and starts serving on the current tokio runtime.
    pub async fn start(config: TwilioSinkConfig) -> io::Result<TwilioSink> {
        let listener = TcpListener::bind(config.bind).await?;
        Self::serve(listener, config)
    }

    /// Serves on a listener the caller already bound (must run inside a tokio runtime).
    pub fn serve(listener: TcpListener, config: TwilioSinkConfig) -> io::Result<TwilioSink> {
        let credentials = format!("{}:{}", config.account_sid, config.auth_token);
        let state = Arc::new(TwilioState {
            path: format!("/2010-04-01/Accounts/{}/Messages.json", config.account_sid),
            expected_auth: format!("Basic {}", BASE64.encode(credentials)),
            account_sid: config.account_sid,
            keep_messages: config.keep_messages,
            planner: Planner::new(config.plan),
            log: RequestLog::new(),
            received: Mutex::new(Vec::new()),
            count: AtomicUsize::new(0),
            next_sid: AtomicU64::new(1),
            refuse_credentials: AtomicBool::new(false),
            bucket: config
                .accept_per_second
                .map(|r| Mutex::new((r, r, std::time::Instant::now()))),
        });
        let handler: Arc<dyn Handler> = state.clone();
        let server = Server::serve(listener, handler, config.stall_for)?;
        Ok(TwilioSink { server, state })
    }

    /// The address the sink listens on.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// The `base_url` to give herald's Twilio channel: `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// The messages taken so far (empty when `keep_messages` is off).
    pub fn received(&self) -> Vec<ReceivedSms> {
        lock(&self.state.received).clone()
    }

    /// How many messages were taken so far (counted even when not kept).
    pub fn count(&self) -> usize {
        self.state.count.load(Ordering::SeqCst)
    }

    /// Every message request's arrival, whatever the answer.
    pub fn requests(&self) -> &RequestLog {
        &self.state.log
    }

    /// Replaces the plan for the requests to come.
    pub fn set_plan(&self, plan: FaultPlan) {
        self.state.planner.set(plan);
    }

    /// While `refuse` holds, answers every request `401` (Twilio 20003
    /// `Authenticate`), as Twilio does for a wrong auth token; clearing it is
    /// the credential fixed.
    pub fn set_refuse_credentials(&self, refuse: bool) {
        self.state
            .refuse_credentials
            .store(refuse, Ordering::SeqCst);
    }

    /// Stops accepting, closes every connection and waits until they are gone.
    pub async fn shutdown(self) {
        self.server.shutdown().await;
    }
}

impl Handler for TwilioState {
    fn handle(&self, method: &Method, path: &str, headers: &HeaderMap, body: &[u8]) -> Reply {
        if path != self.path {
            return twilio_error(
                StatusCode::NOT_FOUND,
                20404,
                &format!("The requested resource {path} was not found"),
            );
        }
        if method != Method::POST {
            return twilio_error(StatusCode::METHOD_NOT_ALLOWED, 20004, "Method not allowed");
        }
        if self.refuse_credentials.load(Ordering::SeqCst)
            || headers.get(AUTHORIZATION).map(HeaderValue::as_bytes)
                != Some(self.expected_auth.as_bytes())
        {
            let mut reply = twilio_error(StatusCode::UNAUTHORIZED, 20003, "Authenticate");
            if let Reply::Respond(response) = &mut reply {
                response.headers_mut().insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"Twilio API\""),
                );
            }
            return reply;
        }
        self.log.arrived();
        let mut form = http::form_fields(body);
        let Some(to) = form.remove("To") else {
            return twilio_error(
                StatusCode::BAD_REQUEST,
                21604,
                "A 'To' phone number is required.",
            );
        };
        if !is_e164(&to) {
            return twilio_error(
                StatusCode::BAD_REQUEST,
                21211,
                &format!("Invalid 'To' Phone Number: {to}"),
            );
        }
        let from = form.remove("From");
        let messaging_service_sid = form.remove("MessagingServiceSid");
        if from.is_none() && messaging_service_sid.is_none() {
            return twilio_error(
                StatusCode::BAD_REQUEST,
                21603,
                "A 'From' or 'MessagingServiceSid' parameter is required to send a message",
            );
        }
        let Some(text) = form.remove("Body").filter(|b| !b.is_empty()) else {
            return twilio_error(StatusCode::BAD_REQUEST, 21602, "Message body is required.");
        };
        let answer = if self.take_token() {
            self.planner.answer(format!("{to}\0{text}").as_bytes())
        } else {
            Answer::RateLimited {
                retry_after_secs: 1,
            }
        };
        let sid = self.sid();
        if answer.records() {
            self.count.fetch_add(1, Ordering::SeqCst);
            if self.keep_messages {
                lock(&self.received).push(ReceivedSms {
                    sid: sid.clone(),
                    to: to.clone(),
                    from: from.clone(),
                    messaging_service_sid: messaging_service_sid.clone(),
                    body: text.clone(),
                    status_callback: form.remove("StatusCallback"),
                    answer,
                });
            }
        }
        match answer {
            Answer::Accept => {
                let now = httpdate::fmt_http_date(SystemTime::now());
                let uri = format!("{}/{sid}", self.path.trim_end_matches(".json"));
                let resource = json!({
                    "account_sid": self.account_sid,
                    "api_version": "2010-04-01",
                    "body": text,
                    "date_created": now,
                    "date_sent": null,
                    "date_updated": now,
                    "direction": "outbound-api",
                    "error_code": null,
                    "error_message": null,
                    "from": from,
                    "messaging_service_sid": messaging_service_sid,
                    "num_media": "0",
                    "num_segments": segments(&text).to_string(),
                    "price": null,
                    "price_unit": "USD",
                    "sid": sid,
                    "status": if messaging_service_sid.is_some() { "accepted" } else { "queued" },
                    "subresource_uris": { "media": format!("{uri}/Media.json") },
                    "to": to,
                    "uri": format!("{uri}.json"),
                });
                Reply::Respond(http::json_response(
                    StatusCode::CREATED,
                    resource.to_string(),
                ))
            }
            Answer::RateLimited { retry_after_secs } => Reply::Respond(http::throttled(
                retry_after_secs,
                error_body(StatusCode::TOO_MANY_REQUESTS, 20429, "Too Many Requests"),
            )),
            Answer::ServerError => twilio_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                20500,
                "An internal server error has occurred",
            ),
            Answer::InvalidAddress => twilio_error(
                StatusCode::BAD_REQUEST,
                21211,
                &format!("Invalid 'To' Phone Number: {to}"),
            ),
            Answer::DeadAddress => twilio_error(
                StatusCode::BAD_REQUEST,
                21610,
                "Attempt to send to unsubscribed recipient",
            ),
            Answer::Malformed => {
                Reply::Respond(http::malformed(StatusCode::CREATED, r#"{"sid": "SM0f3a"#))
            }
            Answer::Stall => Reply::Stall,
            Answer::HangUp => Reply::HangUp,
        }
    }
}

impl TwilioState {
    /// `SM` and 32 hex digits, unique within the sink.
    fn sid(&self) -> String {
        let n = self.next_sid.fetch_add(1, Ordering::Relaxed);
        let salt = http::fnv1a(self.account_sid.as_bytes());
        format!(
            "SM{:016x}{:016x}",
            http::mix64(n ^ salt),
            http::mix64(n.wrapping_add(salt))
        )
    }
}

/// Twilio's error resource: `code`, `message`, `more_info`, `status`.
fn error_body(status: StatusCode, code: u32, message: &str) -> String {
    json!({
        "code": code,
        "message": message,
        "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
        "status": status.as_u16(),
    })
    .to_string()
}

fn twilio_error(status: StatusCode, code: u32, message: &str) -> Reply {
    Reply::Respond(http::json_response(
        status,
        error_body(status, code, message),
    ))
}

/// `+` then 8 to 15 digits, not starting with 0 (what Twilio accepts as E.164).
fn is_e164(to: &str) -> bool {
    to.strip_prefix('+').is_some_and(|digits| {
        (8..=15).contains(&digits.len())
            && digits.bytes().all(|b| b.is_ascii_digit())
            && !digits.starts_with('0')
    })
}

/// Segments the way Twilio counts them, roughly: GSM-7 when every character is ASCII.
fn segments(text: &str) -> usize {
    let (single, part) = if text.is_ascii() {
        (GSM_SINGLE, GSM_PART)
    } else {
        (UCS2_SINGLE, UCS2_PART)
    };
    let n = if text.is_ascii() {
        text.len()
    } else {
        text.encode_utf16().count()
    };
    if n <= single { 1 } else { n.div_ceil(part) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e164_and_segments() {
        assert!(is_e164("+15551234567"));
        assert!(!is_e164("15551234567"));
        assert!(!is_e164("+0555123456"));
        assert!(!is_e164("+1555"));
        assert_eq!(segments("hi"), 1);
        assert_eq!(segments(&"a".repeat(160)), 1);
        assert_eq!(segments(&"a".repeat(161)), 2);
        assert_eq!(segments(&"é".repeat(70)), 1);
        assert_eq!(segments(&"é".repeat(71)), 2);
    }
}
