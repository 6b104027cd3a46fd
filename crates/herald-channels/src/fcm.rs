//! Push through FCM HTTP v1 (or any server speaking its wire format).
//!
//! Auth is OAuth2 with a service-account key: an RS256 JWT signed with the key is exchanged
//! at the key's `token_uri` for a bearer token, cached until shortly before it expires and
//! refreshed by one task at a time. Sends are `POST {base_url}/v1/projects/{id}/messages:send`;
//! FCM's error codes decide the taxonomy (see [`FcmChannel`]).

use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD as BASE64, URL_SAFE_NO_PAD as BASE64URL};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use ring::rand::SystemRandom;
use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair as KeyPair};
use serde::{Deserialize, Serialize};

use crate::http::{self, DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_IDLE, DEFAULT_TIMEOUT};
use crate::{Channel, DeliveryError, ProviderReceipt, RenderedMessage};

/// FCM's API, when the config names no other.
pub const DEFAULT_BASE_URL: &str = "https://fcm.googleapis.com";
/// The OAuth2 scope FCM HTTP v1 requires.
pub const FCM_SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
/// The grant type of a service-account JWT exchange (RFC 7523).
const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// Lifetime asked for in the JWT: Google's maximum.
const JWT_LIFETIME_SECS: u64 = 3600;
/// A cached access token is replaced this long before it expires (or at half its life if shorter).
const REFRESH_MARGIN: Duration = Duration::from_secs(300);
/// After a failed token refresh, sends fail fast with the same error for this long, so a
/// down token endpoint is not asked once per waiting message.
const FAILED_REFRESH_HOLD: Duration = Duration::from_secs(1);
/// FCM asks for at least a minute after `QUOTA_EXCEEDED` when it sends no `Retry-After`.
const DEFAULT_QUOTA_WAIT: Duration = Duration::from_secs(60);

/// The parts of a Google service-account key JSON that herald uses.
#[derive(Clone, Deserialize)]
pub struct ServiceAccountKey {
    /// The service account: the JWT's issuer.
    pub client_email: String,
    /// The RSA private key, PEM (`BEGIN PRIVATE KEY`, PKCS#8, or `BEGIN RSA PRIVATE KEY`).
    pub private_key: String,
    /// Where the JWT is exchanged for an access token.
    pub token_uri: String,
}

impl ServiceAccountKey {
    /// Reads a key JSON as Google's console downloads it (other fields are ignored).
    pub fn from_json(json: &str) -> Result<ServiceAccountKey, FcmConfigError> {
        serde_json::from_str(json).map_err(|e| FcmConfigError::BadCredentials(e.to_string()))
    }

    /// Reads the value of `credentials_env`: the key JSON itself, or the path of a file
    /// holding it (like `GOOGLE_APPLICATION_CREDENTIALS`).
    pub fn from_env_value(value: &str) -> Result<ServiceAccountKey, FcmConfigError> {
        let value = value.trim();
        if value.starts_with('{') {
            return Self::from_json(value);
        }
        let json = std::fs::read_to_string(value).map_err(|e| {
            FcmConfigError::BadCredentials(format!("cannot read the key file {value:?}: {e}"))
        })?;
        Self::from_json(&json)
    }
}

impl fmt::Debug for ServiceAccountKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceAccountKey")
            .field("client_email", &self.client_email)
            .field("private_key", &"<hidden>")
            .field("token_uri", &self.token_uri)
            .finish()
    }
}

/// Where and how to send push messages.
#[derive(Debug, Clone)]
pub struct FcmSettings {
    /// `https://fcm.googleapis.com` or a compatible server (`[channels.push] base_url`).
    pub base_url: String,
    /// The Firebase project id.
    pub project_id: String,
    /// The service-account key.
    pub credentials: ServiceAccountKey,
    /// How long FCM (or the token endpoint) has to answer once the request is written.
    pub timeout: Duration,
    /// How long connecting may take.
    pub connect_timeout: Duration,
    /// Idle keep-alive connections kept (at least the route's concurrency).
    pub max_idle_connections: usize,
}

impl FcmSettings {
    /// Settings for FCM itself with the default timeouts.
    pub fn new(project_id: impl Into<String>, credentials: ServiceAccountKey) -> Self {
        FcmSettings {
            base_url: DEFAULT_BASE_URL.to_owned(),
            project_id: project_id.into(),
            credentials,
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            max_idle_connections: DEFAULT_MAX_IDLE,
        }
    }
}

/// Why [`FcmSettings`] cannot make a channel.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FcmConfigError {
    /// The key JSON lacks `client_email`, `private_key` or `token_uri`.
    #[error("the service-account key is not usable: {0}")]
    BadCredentials(String),
    /// The private key is not an RSA key in PEM.
    #[error("the service-account private_key is not an RSA key in PEM: {0}")]
    BadPrivateKey(String),
    /// `base_url` or `token_uri` is not an http(s) URL.
    #[error("{0}")]
    BadUrl(String),
    /// The project id is empty or would not fit in a URL path.
    #[error("project_id {0:?} must be letters, digits, '-', '_', '.' or ':'")]
    BadProjectId(String),
    /// The HTTP client could not be built (TLS roots, say).
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

/// The FCM channel: one keep-alive HTTP client and a cached OAuth2 access token.
///
/// Error taxonomy: `UNREGISTERED` (404) → `Permanent { suppress_address: true }` (the
/// token is dead); `QUOTA_EXCEEDED` or HTTP 429 → `RateLimited` (`Retry-After`, else a
/// minute); `UNAVAILABLE`, `INTERNAL`, 5xx → `Transient`; a 401 refreshes the access token
/// and resends once (a 401 means nothing was sent), then → `AccountFault`, as is a 403
/// without FCM's own code; `SENDER_ID_MISMATCH` (403) → `Permanent { suppress_address: true }`
/// (the token is another sender's: invalidated, as an unregistered one); `THIRD_PARTY_AUTH_ERROR`
/// → `PlatformFault` (the APNs or web-push credential: only iOS/web tokens are refused, so
/// only their part of the route blocks); `INVALID_ARGUMENT`
/// and other 4xx → `Permanent`; a `200` without a message name → `Ambiguous`; no connection
/// → `Transient`; no answer once written → `Ambiguous`. A failed token exchange sent
/// nothing: `Transient`, or `AccountFault` when the token endpoint refuses the key (4xx:
/// `invalid_client`, `invalid_grant`).
pub struct FcmChannel {
    client: reqwest::Client,
    send_url: String,
    token_uri: String,
    client_email: String,
    key: KeyPair,
    timeout: Duration,
    token: RwLock<Option<Arc<AccessToken>>>,
    /// Held by the one task refreshing the token; keeps the last failure for a moment.
    refresh: tokio::sync::Mutex<Option<(Instant, DeliveryError)>>,
}

/// A bearer token and when to replace it.
struct AccessToken {
    header: HeaderValue,
    refresh_at: Instant,
}

impl fmt::Debug for FcmChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FcmChannel")
            .field("send_url", &self.send_url)
            .field("token_uri", &self.token_uri)
            .field("client_email", &self.client_email)
            .finish_non_exhaustive()
    }
}

impl FcmChannel {
    /// Checks the settings, parses the key and builds the client; fetches a token lazily.
    pub fn new(settings: FcmSettings) -> Result<FcmChannel, FcmConfigError> {
        let base = http::base_url(&settings.base_url)
            .map_err(|why| FcmConfigError::BadUrl(format!("base_url: {why}")))?;
        let token_uri = http::base_url(&settings.credentials.token_uri)
            .map_err(|why| FcmConfigError::BadUrl(format!("token_uri: {why}")))?;
        let project = &settings.project_id;
        let project_ok = !project.is_empty()
            && project
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
        if !project_ok {
            return Err(FcmConfigError::BadProjectId(project.clone()));
        }
        if settings.credentials.client_email.is_empty() {
            return Err(FcmConfigError::BadCredentials(
                "client_email is empty".to_owned(),
            ));
        }
        let key = rsa_key(&settings.credentials.private_key)?;
        let client = http::client(
            settings.connect_timeout,
            settings.timeout,
            settings.max_idle_connections,
        )
        .map_err(|e| FcmConfigError::Client(http::describe(&e)))?;
        Ok(FcmChannel {
            client,
            send_url: format!("{base}/v1/projects/{project}/messages:send"),
            token_uri,
            client_email: settings.credentials.client_email,
            key,
            timeout: settings.timeout,
            token: RwLock::new(None),
            refresh: tokio::sync::Mutex::new(None),
        })
    }

    /// The cached token unless it is due for refresh or is the one just refused.
    fn cached(&self, refused: Option<&AccessToken>) -> Option<Arc<AccessToken>> {
        let guard = self.token.read().unwrap_or_else(PoisonError::into_inner);
        let token = guard.as_ref()?;
        let stale =
            Instant::now() >= token.refresh_at || refused.is_some_and(|r| r.header == token.header);
        (!stale).then(|| Arc::clone(token))
    }

    /// A usable access token; one task refreshes while the others wait for its result.
    async fn access_token(
        &self,
        refused: Option<&AccessToken>,
    ) -> Result<Arc<AccessToken>, DeliveryError> {
        if let Some(token) = self.cached(refused) {
            return Ok(token);
        }
        let mut last_failure = self.refresh.lock().await;
        // Another task may have refreshed while this one waited for the lock.
        if let Some(token) = self.cached(refused) {
            return Ok(token);
        }
        if let Some((at, error)) = last_failure.as_ref()
            && at.elapsed() < FAILED_REFRESH_HOLD
        {
            return Err(error.clone());
        }
        match self.fetch_token().await {
            Ok(token) => {
                let token = Arc::new(token);
                *self.token.write().unwrap_or_else(PoisonError::into_inner) =
                    Some(Arc::clone(&token));
                *last_failure = None;
                Ok(token)
            }
            Err(error) => {
                *last_failure = Some((Instant::now(), error.clone()));
                Err(error)
            }
        }
    }

    /// The signed JWT grant: RS256 over `iss`, `scope`, `aud`, `iat`, `exp`.
    fn assertion(&self) -> Result<String, DeliveryError> {
        let iat = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let claims = serde_json::json!({
            "iss": self.client_email,
            "scope": FCM_SCOPE,
            "aud": self.token_uri,
            "iat": iat,
            "exp": iat + JWT_LIFETIME_SECS,
        });
        let header = BASE64URL.encode(br#"{"alg":"RS256","typ":"JWT"}"#);
        let signing_input = format!("{header}.{}", BASE64URL.encode(claims.to_string()));
        let mut signature = vec![0; self.key.public().modulus_len()];
        self.key
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                signing_input.as_bytes(),
                &mut signature,
            )
            .map_err(|_| oauth_transient("cannot sign the JWT grant with the key".to_owned()))?;
        Ok(format!("{signing_input}.{}", BASE64URL.encode(signature)))
    }

    /// Exchanges a fresh JWT at `token_uri`. Nothing was sent yet, so nothing here is ambiguous.
    async fn fetch_token(&self) -> Result<AccessToken, DeliveryError> {
        let assertion = self.assertion()?;
        let response = self
            .client
            .post(&self.token_uri)
            .form(&[
                ("grant_type", JWT_BEARER_GRANT),
                ("assertion", assertion.as_str()),
            ])
            .send()
            .await
            .map_err(|e| oauth_transient(format!("token request: {}", http::describe(&e))))?;
        let status = response.status();
        let retry_after = http::retry_after(response.headers());
        let body = http::read_body(response)
            .await
            .map_err(|e| oauth_transient(format!("token answer: {}", http::describe(&e))))?;
        if status.is_success() {
            #[derive(Deserialize)]
            struct Granted {
                access_token: String,
                expires_in: Option<u64>,
            }
            let granted: Granted = serde_json::from_slice(&body).map_err(|e| {
                oauth_transient(format!(
                    "token answer HTTP {status} unreadable ({e}): {}",
                    http::snippet(&body)
                ))
            })?;
            let mut header = HeaderValue::from_str(&format!("Bearer {}", granted.access_token))
                .map_err(|_| oauth_transient("the access token cannot go in a header".into()))?;
            header.set_sensitive(true);
            let lifetime = Duration::from_secs(granted.expires_in.unwrap_or(JWT_LIFETIME_SECS));
            let margin = REFRESH_MARGIN.min(lifetime / 2);
            return Ok(AccessToken {
                header,
                refresh_at: Instant::now() + lifetime.saturating_sub(margin),
            });
        }
        #[derive(Deserialize)]
        struct OauthError {
            error: String,
            error_description: Option<String>,
        }
        let refusal = serde_json::from_slice::<OauthError>(&body).ok();
        let detail = match &refusal {
            Some(e) => format!(
                "token endpoint HTTP {status}: {} {}",
                e.error,
                e.error_description.as_deref().unwrap_or("")
            )
            .trim_end()
            .to_owned(),
            None => format!("token endpoint HTTP {status}: {}", http::snippet(&body)),
        };
        if status.is_client_error() && status.as_u16() != 429 {
            // The endpoint refuses this key (revoked, deleted, wrong audience):
            // the account's fault, not any message's; the route blocks until it is fixed.
            let code = format!(
                "oauth_{}",
                refusal.map_or_else(|| status.as_u16().to_string(), |e| e.error)
            );
            return Err(DeliveryError::AccountFault {
                detail: format!("FCM {code}: {detail}"),
                code,
            });
        }
        Err(DeliveryError::Transient {
            code: "oauth".to_owned(),
            detail,
            retry_after,
        })
    }
}

/// The send request body.
#[derive(Serialize)]
struct SendBody<'a> {
    message: PushMessage<'a>,
}

#[derive(Serialize)]
struct PushMessage<'a> {
    token: &'a str,
    notification: Notification<'a>,
}

#[derive(Serialize)]
struct Notification<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    title: Option<&'a str>,
    body: &'a str,
}

#[async_trait]
impl Channel for FcmChannel {
    fn delivered_on_accept(&self) -> bool {
        // SPEC section 1: acceptance is delivery, no receipt to wait for.
        true
    }

    async fn send(&self, message: &RenderedMessage) -> Result<ProviderReceipt, DeliveryError> {
        let token = message.to.trim();
        if token.is_empty() || token.contains(char::is_whitespace) {
            return Err(DeliveryError::Permanent {
                code: "invalid_address".to_owned(),
                detail: format!("{:?} is not a push registration token", message.to),
                suppress_address: false,
            });
        }
        let body = serde_json::to_vec(&SendBody {
            message: PushMessage {
                token,
                notification: Notification {
                    title: message.subject.as_deref(),
                    body: &message.body,
                },
            },
        })
        .map_err(|e| DeliveryError::Permanent {
            code: "build".to_owned(),
            detail: format!("cannot encode the message: {e}"),
            suppress_address: false,
        })?;
        let mut access = self.access_token(None).await?;
        let mut refreshed = false;
        loop {
            let response = self
                .client
                .post(&self.send_url)
                .header(AUTHORIZATION, access.header.clone())
                .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
                .body(body.clone())
                .send()
                .await
                .map_err(|e| http::request_failed(&e, self.timeout))?;
            let status = response.status();
            let retry_after = http::retry_after(response.headers());
            let answer = http::read_body(response).await;
            if status.is_success() {
                let answer = answer.map_err(|e| DeliveryError::Ambiguous {
                    detail: format!(
                        "HTTP {status}, then the answer was cut: {}",
                        http::describe(&e)
                    ),
                })?;
                return accepted(status.as_u16(), &answer);
            }
            let answer = answer.unwrap_or_default();
            let error = FcmError::parse(&answer);
            if status.as_u16() == 401
                && !refreshed
                && error.fcm_code.as_deref() != Some("THIRD_PARTY_AUTH_ERROR")
            {
                // Our access token was refused: nothing was sent, so one resend is safe.
                refreshed = true;
                access = self.access_token(Some(&access)).await?;
                continue;
            }
            return Err(error.into_delivery_error(status.as_u16(), retry_after, &answer));
        }
    }
}

fn accepted(status: u16, body: &[u8]) -> Result<ProviderReceipt, DeliveryError> {
    #[derive(Deserialize)]
    struct Sent {
        name: String,
    }
    match serde_json::from_slice::<Sent>(body) {
        Ok(sent) if !sent.name.is_empty() => Ok(ProviderReceipt {
            detail: format!("{status} {}", sent.name),
            provider_id: Some(sent.name),
        }),
        _ => Err(DeliveryError::Ambiguous {
            detail: format!(
                "HTTP {status} without a message name in the answer: {}",
                http::snippet(body)
            ),
        }),
    }
}

/// The field a `BadRequest` violation names when the registration token is malformed.
const TOKEN_FIELD: &str = "message.token";

/// Google's error shape and FCM's `errorCode` detail.
#[derive(Debug, Default)]
struct FcmError {
    status: Option<String>,
    message: Option<String>,
    fcm_code: Option<String>,
    /// A `google.rpc.BadRequest` detail names `message.token`: the token itself is bad.
    token_violation: bool,
}

impl FcmError {
    fn parse(body: &[u8]) -> FcmError {
        #[derive(Deserialize)]
        struct Envelope {
            error: Inner,
        }
        #[derive(Deserialize)]
        struct Inner {
            message: Option<String>,
            status: Option<String>,
            #[serde(default)]
            details: Vec<Detail>,
        }
        #[derive(Deserialize)]
        struct Detail {
            #[serde(rename = "@type")]
            kind: Option<String>,
            #[serde(rename = "errorCode")]
            error_code: Option<String>,
            #[serde(rename = "fieldViolations", default)]
            field_violations: Vec<FieldViolation>,
        }
        #[derive(Deserialize)]
        struct FieldViolation {
            field: Option<String>,
        }
        let Ok(Envelope { error }) = serde_json::from_slice::<Envelope>(body) else {
            return FcmError::default();
        };
        let token_violation = error.details.iter().any(|d| {
            d.kind.as_deref().is_some_and(|k| k.ends_with("BadRequest"))
                && d.field_violations
                    .iter()
                    .any(|v| v.field.as_deref() == Some(TOKEN_FIELD))
        });
        let fcm_code = error
            .details
            .into_iter()
            .filter(|d| d.kind.as_deref().is_some_and(|k| k.ends_with("FcmError")))
            .find_map(|d| d.error_code);
        FcmError {
            status: error.status,
            message: error.message,
            fcm_code,
            token_violation,
        }
    }

    /// The taxonomy of a non-2xx answer, decided here once.
    fn into_delivery_error(
        self,
        status: u16,
        retry_after: Option<Duration>,
        body: &[u8],
    ) -> DeliveryError {
        let code = self
            .fcm_code
            .clone()
            .or(self.status.clone())
            .unwrap_or_else(|| status.to_string());
        let detail = match &self.message {
            Some(message) => format!("HTTP {status} {code}: {message}"),
            None => format!("HTTP {status}: {}", http::snippet(body)),
        };
        match self.fcm_code.as_deref() {
            // Only FCM's own code says the token is dead; a bare 404 may be a wrong URL.
            Some("UNREGISTERED") => DeliveryError::Permanent {
                code,
                detail,
                suppress_address: true,
            },
            // INVALID_ARGUMENT is the token's fault only when FCM says which field: a
            // malformed payload must not cost the contact their token.
            Some("INVALID_ARGUMENT") if self.token_violation => DeliveryError::Permanent {
                code,
                detail,
                suppress_address: true,
            },
            Some("QUOTA_EXCEEDED") => DeliveryError::RateLimited {
                code,
                detail,
                retry_after: Some(retry_after.unwrap_or(DEFAULT_QUOTA_WAIT)),
            },
            Some("UNAVAILABLE" | "INTERNAL") => DeliveryError::Transient {
                code,
                detail,
                retry_after,
            },
            _ if status == 429 => DeliveryError::RateLimited {
                code,
                detail,
                retry_after: Some(retry_after.unwrap_or(DEFAULT_QUOTA_WAIT)),
            },
            // The APNs or web-push credential behind FCM is refused: the
            // sender's fault, not the token's, and only iOS and web tokens
            // need it. Dispatch blocks the part of the push route of this
            // token's platform; Android sends go on. Never the message's failure.
            Some("THIRD_PARTY_AUTH_ERROR") => DeliveryError::PlatformFault {
                detail: format!("FCM {code}: {detail}"),
                code,
            },
            // The token was registered for another sender (another Firebase
            // project): it can never take this sender's pushes, so it is dead
            // to herald as an unregistered one is (invalidated, not retried).
            Some("SENDER_ID_MISMATCH") => DeliveryError::Permanent {
                code,
                detail,
                suppress_address: true,
            },
            _ if status >= 500 => DeliveryError::Transient {
                code,
                detail,
                retry_after,
            },
            // A 401 even after a fresh token, or a 403 without a token's own
            // code (the project refuses this service account): the account's fault.
            _ if status == 401 || status == 403 => DeliveryError::AccountFault {
                detail: format!("FCM {code}: {detail}"),
                code,
            },
            _ => DeliveryError::Permanent {
                code,
                detail,
                suppress_address: false,
            },
        }
    }
}

fn oauth_transient(detail: String) -> DeliveryError {
    DeliveryError::Transient {
        code: "oauth".to_owned(),
        detail,
        retry_after: None,
    }
}

/// Parses a PEM RSA private key: PKCS#8 (`PRIVATE KEY`, what Google issues) or PKCS#1.
fn rsa_key(pem: &str) -> Result<KeyPair, FcmConfigError> {
    let bad = |why: &str| FcmConfigError::BadPrivateKey(why.to_owned());
    let (label, rest) = pem
        .split_once("-----BEGIN ")
        .and_then(|(_, rest)| rest.split_once("-----"))
        .ok_or_else(|| bad("no -----BEGIN line"))?;
    let end = format!("-----END {label}-----");
    let (body, _) = rest
        .split_once(end.as_str())
        .ok_or_else(|| bad("no matching -----END line"))?;
    let b64: String = body.chars().filter(|c| !c.is_whitespace()).collect();
    let der = BASE64
        .decode(b64)
        .map_err(|_| bad("the PEM body is not base64"))?;
    match label {
        "PRIVATE KEY" => KeyPair::from_pkcs8(&der).map_err(|e| bad(&e.to_string())),
        "RSA PRIVATE KEY" => KeyPair::from_der(&der).map_err(|e| bad(&e.to_string())),
        other => Err(bad(&format!(
            "a {other} is not an unencrypted RSA private key"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(status: u16, name: &str, fcm: Option<&str>) -> Vec<u8> {
        let details = fcm.map_or(String::new(), |c| {
            format!(r#"{{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "{c}"}}"#)
        });
        format!(
            r#"{{"error": {{"code": {status}, "message": "m", "status": "{name}", "details": [{details}]}}}}"#
        )
        .into_bytes()
    }

    fn classify(status: u16, retry: Option<u64>, body: &[u8]) -> DeliveryError {
        FcmError::parse(body).into_delivery_error(status, retry.map(Duration::from_secs), body)
    }

    #[test]
    fn fcm_codes_decide_the_taxonomy() {
        assert_eq!(
            classify(404, None, &error(404, "NOT_FOUND", Some("UNREGISTERED"))),
            DeliveryError::Permanent {
                code: "UNREGISTERED".into(),
                detail: "HTTP 404 UNREGISTERED: m".into(),
                suppress_address: true,
            }
        );
        // A 404 without FCM's code is not the token's fault.
        assert!(matches!(
            classify(404, None, &error(404, "NOT_FOUND", None)),
            DeliveryError::Permanent { suppress_address: false, ref code, .. } if code == "NOT_FOUND"
        ));
        assert!(matches!(
            classify(400, None, &error(400, "INVALID_ARGUMENT", Some("INVALID_ARGUMENT"))),
            DeliveryError::Permanent { suppress_address: false, ref code, .. } if code == "INVALID_ARGUMENT"
        ));
        // FCM's answer to a malformed registration token: the token is dead.
        let bad_token = br#"{"error": {"code": 400, "message": "The registration token is not a valid FCM registration token", "status": "INVALID_ARGUMENT", "details": [
            {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "INVALID_ARGUMENT"},
            {"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": [{"field": "message.token", "description": "The registration token is not a valid FCM registration token"}]}]}}"#;
        assert!(matches!(
            classify(400, None, bad_token),
            DeliveryError::Permanent { suppress_address: true, ref code, .. } if code == "INVALID_ARGUMENT"
        ));
        // A bad payload field is the message's fault, not the token's.
        let bad_payload = br#"{"error": {"code": 400, "message": "Invalid value", "status": "INVALID_ARGUMENT", "details": [
            {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "INVALID_ARGUMENT"},
            {"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": [{"field": "message.android.ttl", "description": "Invalid value"}]}]}}"#;
        assert!(matches!(
            classify(400, None, bad_payload),
            DeliveryError::Permanent {
                suppress_address: false,
                ..
            }
        ));
        assert_eq!(
            classify(
                429,
                Some(5),
                &error(429, "RESOURCE_EXHAUSTED", Some("QUOTA_EXCEEDED"))
            ),
            DeliveryError::RateLimited {
                code: "QUOTA_EXCEEDED".into(),
                detail: "HTTP 429 QUOTA_EXCEEDED: m".into(),
                retry_after: Some(Duration::from_secs(5)),
            }
        );
        assert!(matches!(
            classify(429, None, b"slow down"),
            DeliveryError::RateLimited { retry_after: Some(d), .. } if d == DEFAULT_QUOTA_WAIT
        ));
        for (status, name) in [(503, "UNAVAILABLE"), (500, "INTERNAL")] {
            assert!(matches!(
                classify(status, Some(2), &error(status, name, Some(name))),
                DeliveryError::Transient { ref code, retry_after: Some(_), .. } if code == name
            ));
        }
        assert!(matches!(
            classify(502, None, b"<html>bad gateway</html>"),
            DeliveryError::Transient { ref code, .. } if code == "502"
        ));
        assert!(matches!(
            classify(401, None, &error(401, "UNAUTHENTICATED", None)),
            DeliveryError::AccountFault { ref code, .. } if code == "UNAUTHENTICATED"
        ));
        assert!(matches!(
            classify(403, None, &error(403, "PERMISSION_DENIED", None)),
            DeliveryError::AccountFault { ref code, .. } if code == "PERMISSION_DENIED"
        ));
        // Only iOS/web tokens are refused: their platform's fault, not the
        // whole account's, not the message's; whatever the HTTP status.
        for (status, name) in [(401, "UNAUTHENTICATED"), (400, "INVALID_ARGUMENT")] {
            let e = classify(
                status,
                None,
                &error(status, name, Some("THIRD_PARTY_AUTH_ERROR")),
            );
            assert_eq!(
                e,
                DeliveryError::PlatformFault {
                    code: "THIRD_PARTY_AUTH_ERROR".into(),
                    detail: format!(
                        "FCM THIRD_PARTY_AUTH_ERROR: HTTP {status} THIRD_PARTY_AUTH_ERROR: m"
                    ),
                }
            );
            assert!(!e.is_retriable() && !e.is_account_fault());
        }
        assert!(matches!(
            classify(
                403,
                None,
                &error(403, "PERMISSION_DENIED", Some("SENDER_ID_MISMATCH"))
            ),
            DeliveryError::Permanent {
                suppress_address: true,
                ..
            }
        ));
    }

    #[test]
    fn a_200_needs_a_name_else_it_is_ambiguous() {
        let ok = accepted(200, br#"{"name": "projects/p/messages/0:1%ab"}"#).unwrap();
        assert_eq!(
            ok.provider_id.as_deref(),
            Some("projects/p/messages/0:1%ab")
        );
        for bad in [&b"{\"name\": \"proj"[..], b"{}", b"<html>"] {
            assert!(matches!(
                accepted(200, bad),
                Err(DeliveryError::Ambiguous { .. })
            ));
        }
    }

    #[test]
    fn bad_keys_are_refused_at_construction() {
        assert!(matches!(
            rsa_key("nothing"),
            Err(FcmConfigError::BadPrivateKey(_))
        ));
        assert!(matches!(
            rsa_key("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"),
            Err(FcmConfigError::BadPrivateKey(_))
        ));
        assert!(matches!(
            rsa_key("-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n"),
            Err(FcmConfigError::BadPrivateKey(_))
        ));
        assert!(matches!(
            ServiceAccountKey::from_json(r#"{"client_email": "a"}"#),
            Err(FcmConfigError::BadCredentials(_))
        ));
        let json = r#" {"client_email": "a@b", "private_key": "k", "token_uri": "https://t/token", "type": "service_account"}"#;
        let key = ServiceAccountKey::from_env_value(json).unwrap();
        assert_eq!(key.client_email, "a@b");
        let path = std::env::temp_dir().join(format!("herald-fcm-key-{}.json", std::process::id()));
        std::fs::write(&path, json).unwrap();
        let from_file = ServiceAccountKey::from_env_value(path.to_str().unwrap()).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(from_file.token_uri, "https://t/token");
        assert!(matches!(
            ServiceAccountKey::from_env_value("/no/such/key.json"),
            Err(FcmConfigError::BadCredentials(_))
        ));
    }
}
