//! The FCM sink: a loopback server speaking FCM HTTP v1 and Google's OAuth2 token endpoint.
//!
//! At start it makes a throwaway RSA key and offers a service-account key JSON for it
//! ([`FcmSink::credentials_json`]); `POST /token` verifies the RS256 JWT grant and issues
//! bearer tokens; `POST /v1/projects/{id}/messages:send` checks them, then answers per its
//! [`FaultPlan`], records each message it took and logs every arrival ([`RequestLog`]).
//! [`FcmSink::set_third_party_refused`] makes it refuse some tokens with
//! `THIRD_PARTY_AUTH_ERROR`, as FCM does for iOS/web tokens when the APNs or
//! web-push credential in the Firebase project is wrong;
//! [`FcmSink::set_other_senders`] with `SENDER_ID_MISMATCH`, as FCM does for
//! tokens registered for another Firebase project.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD as BASE64, URL_SAFE_NO_PAD as BASE64URL};
use hyper::header::{AUTHORIZATION, HeaderMap};
use hyper::{Method, StatusCode};
use ring::signature::{self, KeyPair as _, RsaKeyPair, UnparsedPublicKey};
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpListener;

use crate::http::{
    self, Answer, DEFAULT_STALL, FaultPlan, Handler, Planner, Reply, RequestLog, Server, lock,
};

/// The OAuth2 scope FCM HTTP v1 requires.
pub const FCM_SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
/// The grant type of a service-account JWT exchange (RFC 7523).
const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// Clock skew tolerated on a JWT's `iat` and `exp`.
const CLOCK_SKEW: Duration = Duration::from_secs(60);
/// Longest JWT lifetime Google accepts.
const MAX_JWT_LIFETIME: u64 = 3600;
/// The error detail type FCM puts in `error.details`.
const FCM_ERROR_TYPE: &str = "type.googleapis.com/google.firebase.fcm.v1.FcmError";

/// How an [`FcmSink`] listens and answers.
#[derive(Debug, Clone)]
pub struct FcmSinkConfig {
    /// Where to listen; the default is `127.0.0.1:0` (any free port).
    pub bind: SocketAddr,
    /// The project in the send URL.
    pub project_id: String,
    /// The service account's email: the JWT's `iss`.
    pub client_email: String,
    /// `expires_in` of the access tokens issued.
    pub token_lifetime: Duration,
    /// Keep each message's content; `false` only counts them, to keep memory bounded.
    pub keep_messages: bool,
    /// Answers to message requests.
    pub plan: FaultPlan,
    /// How long a stalled request is held before the connection is dropped.
    pub stall_for: Duration,
    /// The service account's RSA key (PKCS#8 PEM): [`DEMO_SERVICE_ACCOUNT_KEY`],
    /// or [`SECOND_SERVICE_ACCOUNT_KEY`] for a sink that must not know the first.
    pub private_key_pem: &'static str,
}

impl Default for FcmSinkConfig {
    fn default() -> Self {
        FcmSinkConfig {
            bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            project_id: "demo".to_owned(),
            client_email: "herald-demo@demo.iam.gserviceaccount.com".to_owned(),
            token_lifetime: Duration::from_secs(3600),
            keep_messages: true,
            plan: FaultPlan::default(),
            stall_for: DEFAULT_STALL,
            private_key_pem: DEMO_SERVICE_ACCOUNT_KEY,
        }
    }
}

/// One push message the FCM sink took (or may have: stalled, hung up, answered malformed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedPush {
    /// The `projects/.../messages/...` name the sink gave it.
    pub name: String,
    /// `message.token`: the device registration token.
    pub token: String,
    /// `message.notification.title`, if given.
    pub title: Option<String>,
    /// `message.notification.body`, if given.
    pub body: Option<String>,
    /// How the sink answered.
    pub answer: Answer,
}

/// Why the FCM sink could not start.
#[derive(Debug, thiserror::Error)]
pub enum FcmSinkError {
    /// Binding or serving failed.
    #[error("fcm sink: {0}")]
    Io(#[from] io::Error),
    /// The throwaway RSA key could not be made.
    #[error("fcm sink: cannot make an RSA key: {0}")]
    Key(String),
}

/// A running FCM-compatible server on loopback; stops on [`FcmSink::shutdown`] or drop.
#[derive(Debug)]
pub struct FcmSink {
    server: Server,
    state: Arc<FcmState>,
    private_key_pem: String,
}

#[derive(Debug)]
struct FcmState {
    send_path: String,
    project_id: String,
    client_email: String,
    token_uri: String,
    public_key: Vec<u8>,
    token_lifetime: Duration,
    keep_messages: bool,
    planner: Planner,
    log: RequestLog,
    tokens: Mutex<HashMap<String, Instant>>,
    token_requests: AtomicUsize,
    received: Mutex<Vec<ReceivedPush>>,
    count: AtomicUsize,
    next_id: AtomicU64,
    /// Refuse the service-account key at `/token` (as for a deleted key), until cleared.
    refuse_key: AtomicBool,
    /// Tokens beginning with one of these are refused `THIRD_PARTY_AUTH_ERROR`.
    third_party_refused: Mutex<Vec<String>>,
    /// Tokens beginning with one of these are refused `SENDER_ID_MISMATCH`.
    other_senders: Mutex<Vec<String>>,
}

impl FcmSink {
    /// Binds `config.bind`, makes a key and starts serving on the current tokio runtime.
    pub async fn start(config: FcmSinkConfig) -> Result<FcmSink, FcmSinkError> {
        let listener = TcpListener::bind(config.bind).await?;
        Self::serve(listener, config)
    }

    /// Serves on a listener the caller already bound (must run inside a tokio runtime).
    pub fn serve(listener: TcpListener, config: FcmSinkConfig) -> Result<FcmSink, FcmSinkError> {
        let addr = listener.local_addr()?;
        // ring signs with RSA keys but cannot make them: every sink uses one
        // fixed key, which is a fake service account's and guards nothing.
        let private_key_pem = config.private_key_pem.to_owned();
        let key = rsa_key(config.private_key_pem)?;
        let state = Arc::new(FcmState {
            send_path: format!("/v1/projects/{}/messages:send", config.project_id),
            project_id: config.project_id,
            client_email: config.client_email,
            token_uri: format!("http://{addr}/token"),
            public_key: key.public_key().as_ref().to_vec(),
            token_lifetime: config.token_lifetime,
            keep_messages: config.keep_messages,
            planner: Planner::new(config.plan),
            log: RequestLog::new(),
            tokens: Mutex::new(HashMap::new()),
            token_requests: AtomicUsize::new(0),
            received: Mutex::new(Vec::new()),
            count: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            refuse_key: AtomicBool::new(false),
            third_party_refused: Mutex::new(Vec::new()),
            other_senders: Mutex::new(Vec::new()),
        });
        let handler: Arc<dyn Handler> = state.clone();
        let server = Server::serve(listener, handler, config.stall_for)?;
        Ok(FcmSink {
            server,
            state,
            private_key_pem,
        })
    }

    /// The address the sink listens on.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// The `base_url` to give herald's FCM channel: `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// The project id the send URL must name.
    pub fn project_id(&self) -> &str {
        &self.state.project_id
    }

    /// A service-account key JSON (as Google's console makes them) whose `token_uri` is this sink.
    pub fn credentials_json(&self) -> String {
        json!({
            "type": "service_account",
            "project_id": self.state.project_id,
            "private_key_id": format!("{:016x}", http::fnv1a(self.private_key_pem.as_bytes())),
            "private_key": self.private_key_pem,
            "client_email": self.state.client_email,
            "client_id": "100000000000000000001",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": self.state.token_uri,
        })
        .to_string()
    }

    /// Issues an access token directly, as `/token` would (for a bare client in benchmarks).
    pub fn mint_token(&self) -> String {
        self.state.issue_token()
    }

    /// Forgets every issued access token: the next send gets `401 UNAUTHENTICATED`.
    pub fn revoke_tokens(&self) {
        lock(&self.state.tokens).clear();
    }

    /// How many requests reached `/token` (good or bad).
    pub fn token_requests(&self) -> usize {
        self.state.token_requests.load(Ordering::SeqCst)
    }

    /// The messages taken so far (empty when `keep_messages` is off).
    pub fn received(&self) -> Vec<ReceivedPush> {
        lock(&self.state.received).clone()
    }

    /// How many messages were taken so far (counted even when not kept).
    pub fn count(&self) -> usize {
        self.state.count.load(Ordering::SeqCst)
    }

    /// Every authenticated message request's arrival, whatever the answer.
    pub fn requests(&self) -> &RequestLog {
        &self.state.log
    }

    /// Replaces the plan for the requests to come.
    pub fn set_plan(&self, plan: FaultPlan) {
        self.state.planner.set(plan);
    }

    /// While `refuse` holds, `/token` answers `invalid_client` (a deleted or
    /// disabled key) and every issued access token is forgotten; clearing it
    /// is the key fixed.
    pub fn set_refuse_key(&self, refuse: bool) {
        self.state.refuse_key.store(refuse, Ordering::SeqCst);
        if refuse {
            lock(&self.state.tokens).clear();
        }
    }

    /// Tokens beginning with one of `prefixes` are refused `401
    /// THIRD_PARTY_AUTH_ERROR` (and not taken), as FCM refuses the tokens of
    /// iOS or web apps when the APNs or web-push credential in the Firebase
    /// project is wrong; other tokens go on. The sink cannot tell a token's
    /// platform, so the test names its iOS/web tokens by prefix. Empty: the
    /// credential fixed.
    pub fn set_third_party_refused(&self, prefixes: &[&str]) {
        *lock(&self.state.third_party_refused) = prefixes.iter().map(|p| p.to_string()).collect();
    }

    /// Tokens beginning with one of `prefixes` are refused `403
    /// SENDER_ID_MISMATCH` (and not taken), as FCM refuses a token an app
    /// registered for another Firebase project (another sender). Empty: none.
    pub fn set_other_senders(&self, prefixes: &[&str]) {
        *lock(&self.state.other_senders) = prefixes.iter().map(|p| p.to_string()).collect();
    }

    /// Stops accepting, closes every connection and waits until they are gone.
    pub async fn shutdown(self) {
        self.server.shutdown().await;
    }
}

/// The send request body: `{"message": {"token", "notification": {"title", "body"}}}`.
#[derive(Deserialize)]
struct SendRequest {
    message: Option<PushMessage>,
}

#[derive(Deserialize)]
struct PushMessage {
    token: Option<String>,
    notification: Option<Notification>,
}

#[derive(Deserialize)]
struct Notification {
    title: Option<String>,
    body: Option<String>,
}

#[derive(Deserialize)]
struct Claims {
    iss: String,
    scope: String,
    aud: String,
    iat: u64,
    exp: u64,
}

impl Handler for FcmState {
    fn handle(&self, method: &Method, path: &str, headers: &HeaderMap, body: &[u8]) -> Reply {
        match (method, path) {
            (&Method::POST, "/token") => self.token(body),
            (&Method::POST, p) if p == self.send_path => self.send(headers, body),
            (_, p) if p.starts_with("/v1/projects/") && p.ends_with("/messages:send") => fcm_error(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                None,
                "Requested entity was not found.",
            ),
            _ => fcm_error(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                None,
                &format!("{method} {path} is not an FCM endpoint"),
            ),
        }
    }
}

impl FcmState {
    fn issue_token(&self) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let token = format!(
            "ya29.c.{:016x}{:016x}",
            http::mix64(n),
            http::mix64(n ^ http::fnv1a(self.client_email.as_bytes()))
        );
        lock(&self.tokens).insert(token.clone(), Instant::now() + self.token_lifetime);
        token
    }

    /// `POST /token`: the JWT bearer grant.
    fn token(&self, body: &[u8]) -> Reply {
        self.token_requests.fetch_add(1, Ordering::SeqCst);
        let form = http::form_fields(body);
        if form.get("grant_type").map(String::as_str) != Some(JWT_BEARER_GRANT) {
            return oauth_error("unsupported_grant_type", "Invalid grant_type.");
        }
        let Some(assertion) = form.get("assertion") else {
            return oauth_error("invalid_request", "Missing required parameter: assertion");
        };
        if let Err(why) = self.check_assertion(assertion) {
            return oauth_error("invalid_grant", &why);
        }
        if self.refuse_key.load(Ordering::SeqCst) {
            return oauth_error("invalid_client", "The OAuth client was not found.");
        }
        let token = self.issue_token();
        Reply::Respond(http::json_response(
            StatusCode::OK,
            json!({
                "access_token": token,
                "expires_in": self.token_lifetime.as_secs(),
                "token_type": "Bearer",
            })
            .to_string(),
        ))
    }

    /// Verifies the RS256 signature and the claims Google checks.
    fn check_assertion(&self, jwt: &str) -> Result<(), String> {
        let mut parts = jwt.split('.');
        let (Some(header), Some(claims), Some(sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("Invalid JWT: not three parts.".to_owned());
        };
        let decode = |part: &str| {
            BASE64URL
                .decode(part)
                .map_err(|_| "Invalid JWT: not base64url.".to_owned())
        };
        let header: serde_json::Value = serde_json::from_slice(&decode(header)?)
            .map_err(|_| "Invalid JWT header.".to_owned())?;
        if header.get("alg").and_then(|a| a.as_str()) != Some("RS256") {
            return Err("Invalid JWT: alg must be RS256.".to_owned());
        }
        let signed = &jwt[..jwt.len() - sig.len() - 1];
        UnparsedPublicKey::new(&signature::RSA_PKCS1_2048_8192_SHA256, &self.public_key)
            .verify(signed.as_bytes(), &decode(sig)?)
            .map_err(|_| "Invalid JWT Signature.".to_owned())?;
        let claims: Claims = serde_json::from_slice(&decode(claims)?)
            .map_err(|e| format!("Invalid JWT claims: {e}"))?;
        if claims.iss != self.client_email {
            return Err(format!("Invalid issuer: {}", claims.iss));
        }
        if claims.aud != self.token_uri {
            return Err(format!("Invalid audience: {}", claims.aud));
        }
        if !claims.scope.split(' ').any(|s| s == FCM_SCOPE) {
            return Err(format!("Invalid scope: {}", claims.scope));
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let skew = CLOCK_SKEW.as_secs();
        if claims.iat > now + skew || claims.exp + skew < now {
            return Err(
                "Invalid JWT: Token must be a short-lived token and in a reasonable timeframe."
                    .to_owned(),
            );
        }
        if claims.exp <= claims.iat || claims.exp - claims.iat > MAX_JWT_LIFETIME {
            return Err("Invalid JWT: exp must be at most an hour after iat.".to_owned());
        }
        Ok(())
    }

    /// `POST /v1/projects/{id}/messages:send`.
    fn send(&self, headers: &HeaderMap, body: &[u8]) -> Reply {
        let bearer = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let valid = bearer.is_some_and(|token| {
            lock(&self.tokens)
                .get(token)
                .is_some_and(|expires| Instant::now() < *expires)
        });
        if !valid {
            return fcm_error(
                StatusCode::UNAUTHORIZED,
                "UNAUTHENTICATED",
                None,
                "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.",
            );
        }
        self.log.arrived();
        let message = serde_json::from_slice::<SendRequest>(body)
            .ok()
            .and_then(|r| r.message);
        let Some(PushMessage {
            token: Some(token),
            notification,
        }) = message.filter(|m| m.token.as_deref().is_some_and(|t| !t.is_empty()))
        else {
            return fcm_error(
                StatusCode::BAD_REQUEST,
                "INVALID_ARGUMENT",
                Some("INVALID_ARGUMENT"),
                "Request contains an invalid argument: message.token is required.",
            );
        };
        if lock(&self.third_party_refused)
            .iter()
            .any(|p| token.starts_with(p.as_str()))
        {
            return fcm_error(
                StatusCode::UNAUTHORIZED,
                "UNAUTHENTICATED",
                Some("THIRD_PARTY_AUTH_ERROR"),
                "Auth error from APNS or Web Push Service",
            );
        }
        if lock(&self.other_senders)
            .iter()
            .any(|p| token.starts_with(p.as_str()))
        {
            return fcm_error(
                StatusCode::FORBIDDEN,
                "PERMISSION_DENIED",
                Some("SENDER_ID_MISMATCH"),
                "SenderId mismatch",
            );
        }
        let (title, text) = notification.map_or((None, None), |n| (n.title, n.body));
        let mut key = token.clone().into_bytes();
        key.push(0);
        key.extend_from_slice(text.as_deref().unwrap_or("").as_bytes());
        let answer = self.planner.answer(&key);
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let name = format!(
            "projects/{}/messages/0:{}%{:016x}",
            self.project_id,
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_micros(),
            http::mix64(n)
        );
        if answer.records() {
            self.count.fetch_add(1, Ordering::SeqCst);
            if self.keep_messages {
                lock(&self.received).push(ReceivedPush {
                    name: name.clone(),
                    token: token.clone(),
                    title,
                    body: text,
                    answer,
                });
            }
        }
        match answer {
            Answer::Accept => Reply::Respond(http::json_response(
                StatusCode::OK,
                json!({ "name": name }).to_string(),
            )),
            Answer::RateLimited { retry_after_secs } => Reply::Respond(http::throttled(
                retry_after_secs,
                error_body(
                    StatusCode::TOO_MANY_REQUESTS,
                    "RESOURCE_EXHAUSTED",
                    Some("QUOTA_EXCEEDED"),
                    "Quota exceeded for quota metric 'Send requests'.",
                ),
            )),
            Answer::ServerError => fcm_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "UNAVAILABLE",
                Some("UNAVAILABLE"),
                "The service is currently unavailable.",
            ),
            Answer::InvalidAddress => fcm_error(
                StatusCode::BAD_REQUEST,
                "INVALID_ARGUMENT",
                Some("INVALID_ARGUMENT"),
                "The registration token is not a valid FCM registration token",
            ),
            Answer::DeadAddress => fcm_error(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                Some("UNREGISTERED"),
                "Requested entity was not found.",
            ),
            Answer::Malformed => {
                Reply::Respond(http::malformed(StatusCode::OK, r#"{"name": "projects/"#))
            }
            Answer::Stall => Reply::Stall,
            Answer::HangUp => Reply::HangUp,
        }
    }
}

/// Google's error shape, with FCM's `errorCode` detail when there is one.
fn error_body(status: StatusCode, name: &str, fcm_code: Option<&str>, message: &str) -> String {
    let details = match fcm_code {
        Some(code) => json!([{ "@type": FCM_ERROR_TYPE, "errorCode": code }]),
        None => json!([]),
    };
    json!({
        "error": {
            "code": status.as_u16(),
            "message": message,
            "status": name,
            "details": details,
        }
    })
    .to_string()
}

fn fcm_error(status: StatusCode, name: &str, fcm_code: Option<&str>, message: &str) -> Reply {
    Reply::Respond(http::json_response(
        status,
        error_body(status, name, fcm_code, message),
    ))
}

/// The OAuth2 error shape of Google's token endpoint (RFC 6749 section 5.2).
fn oauth_error(error: &str, description: &str) -> Reply {
    Reply::Respond(http::json_response(
        StatusCode::BAD_REQUEST,
        json!({ "error": error, "error_description": description }).to_string(),
    ))
}

/// The fake service account's RSA key (PKCS#8 PEM), made once with
/// `openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048`.
pub const DEMO_SERVICE_ACCOUNT_KEY: &str = include_str!("demo_fcm_key.pem");

/// A second such key, for a sink whose token endpoint must refuse the first.
pub const SECOND_SERVICE_ACCOUNT_KEY: &str = include_str!("second_fcm_key.pem");

/// A PKCS#8 PEM key as a key pair, to check the JWTs it signs.
fn rsa_key(pem: &str) -> Result<RsaKeyPair, FcmSinkError> {
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = BASE64
        .decode(b64)
        .map_err(|e| FcmSinkError::Key(e.to_string()))?;
    RsaKeyPair::from_pkcs8(&der).map_err(|e| FcmSinkError::Key(e.to_string()))
}
