//! What the HTTP adapters (Twilio, FCM) share: the reqwest client they use, `Retry-After`,
//! and the network half of the taxonomy: a failure before the request was written is
//! transient, one after it (timeout, reset) is ambiguous and must never be resent.

use std::error::Error as StdError;
use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, RETRY_AFTER};

use crate::DeliveryError;

/// How long a provider has to answer once the request is written, when the config does not say.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connecting (TCP and TLS) may take, when the config does not say.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle keep-alive connections kept per host, when the config does not say.
pub const DEFAULT_MAX_IDLE: usize = 64;
/// An idle pooled connection is closed after this (providers close theirs after 60 to 120 s).
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(50);
/// Longest provider answer read; real ones are a few hundred bytes.
pub(crate) const MAX_ANSWER_BYTES: usize = 256 * 1024;

/// A keep-alive HTTP/1.1 client with `TCP_NODELAY`, no redirects and no automatic retries.
///
/// reqwest has no limit on the answer alone (its read timeout also runs from the start of
/// the request, connecting included), so the overall limit is `connect_timeout + timeout`:
/// a slow connect then always surfaces as a connect error (transient), never as a timeout
/// that would look like a lost answer (ambiguous). On a pooled connection an answer may
/// thus take up to that sum.
pub(crate) fn client(
    connect_timeout: Duration,
    timeout: Duration,
    max_idle: usize,
) -> reqwest::Result<reqwest::Client> {
    crate::http_client_builder()
        .http1_only()
        .tcp_nodelay(true)
        .connect_timeout(connect_timeout)
        .timeout(connect_timeout.saturating_add(timeout))
        .pool_max_idle_per_host(max_idle)
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        // A redirected POST would be a second send; providers never redirect the API.
        .redirect(reqwest::redirect::Policy::none())
        // Only herald decides what is resent (never after the request was written).
        .retry(reqwest::retry::never())
        .user_agent(concat!("herald/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Checks a provider base URL (`http` or `https`, a host) and drops a trailing `/`.
pub(crate) fn base_url(raw: &str) -> Result<String, String> {
    let url = reqwest::Url::parse(raw).map_err(|e| format!("{raw:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!("{raw:?} must be an http or https URL with a host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("{raw:?} must not carry a query or a fragment"));
    }
    Ok(raw.trim_end_matches('/').to_owned())
}

/// `Retry-After` as delay-seconds or an HTTP date (RFC 9110 section 10.2.3).
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    // A date in the past means "now".
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// The taxonomy of a request that got no HTTP answer.
pub(crate) fn request_failed(e: &reqwest::Error, timeout: Duration) -> DeliveryError {
    let detail = describe(e);
    if e.is_connect() {
        // Connection refused, DNS, connect timeout, TLS handshake: nothing was written.
        DeliveryError::Transient {
            code: if e.is_timeout() {
                "connect_timeout"
            } else {
                "connect"
            }
            .to_owned(),
            detail,
            retry_after: None,
        }
    } else if e.is_builder() {
        DeliveryError::Permanent {
            code: "client".to_owned(),
            detail,
            suppress_address: false,
        }
    } else if e.is_timeout() {
        DeliveryError::Ambiguous {
            detail: format!(
                "no answer in time after the request was written (timeout {timeout:?})"
            ),
        }
    } else {
        DeliveryError::Ambiguous {
            detail: format!("the connection failed once the request was being sent: {detail}"),
        }
    }
}

/// An error and its causes on one line (reqwest's own text names only the URL).
pub(crate) fn describe(e: &dyn StdError) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Reads an answer's body, at most [`MAX_ANSWER_BYTES`] of it.
pub(crate) async fn read_body(mut response: reqwest::Response) -> reqwest::Result<Vec<u8>> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = MAX_ANSWER_BYTES.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if room <= chunk.len() {
            break;
        }
    }
    Ok(body)
}

/// The first bytes of a body as text, for the attempt log.
pub(crate) fn snippet(body: &[u8]) -> String {
    const MAX: usize = 200;
    let text = String::from_utf8_lossy(&body[..body.len().min(MAX)]);
    let text = text.trim();
    if body.len() > MAX {
        format!("{text}...")
    } else {
        text.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&h), Some(Duration::ZERO));
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(120));
        h.insert(RETRY_AFTER, HeaderValue::from_str(&later).unwrap());
        let got = retry_after(&h).unwrap();
        assert!(
            got > Duration::from_secs(110) && got <= Duration::from_secs(120),
            "{got:?}"
        );
        h.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn base_urls() {
        assert_eq!(
            base_url("https://api.twilio.com/").unwrap(),
            "https://api.twilio.com"
        );
        assert_eq!(
            base_url("http://127.0.0.1:8080").unwrap(),
            "http://127.0.0.1:8080"
        );
        for bad in ["api.twilio.com", "ftp://x", "https://x/?a=1", ""] {
            assert!(base_url(bad).is_err(), "{bad}");
        }
    }
}
