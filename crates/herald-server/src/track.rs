//! Opens (`/o/{token}`), clicks (`/c/{token}`, `/s/{code}`) and unsubscribes
//! (`/u/{token}`). A token that does not verify, or names the wrong kind, is
//! a 404 before anything is read or written. Opens and clicks are queued
//! for the batched writer; an unsubscribe is written before it is answered.

use axum::body::Bytes;
use axum::extract::{Path, State, rejection::PathRejection};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use herald_domain::token::{TokenKind, TokenSigner};
use herald_storage::tracking::{self, Hit, HitKind, MessageInfo, UnsubscribeScope};

use crate::state::AppState;
use crate::writer::EnqueueError;
use crate::{internal_error, not_found, now_ms, plain};

/// A transparent 1x1 GIF (43 bytes).
pub const PIXEL_GIF: [u8; 43] = [
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00,
    0xff, 0xff, 0xff, 0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3b,
];

/// Characters of an SMS short code (base62), as `herald-templates` makes them.
const SHORT_CODE_LEN: usize = 8;

/// The open-pixel URL of message `message_id`: `{public_url}/o/{token}`.
pub fn open_pixel_url(public_url: &str, signer: &TokenSigner, message_id: i64) -> String {
    format!(
        "{}/o/{}",
        public_url.trim_end_matches('/'),
        signer.sign_message(TokenKind::Open, message_id)
    )
}

/// The invisible `<img>` that carries the open pixel, to put before `</body>`.
pub fn open_pixel_tag(public_url: &str, signer: &TokenSigner, message_id: i64) -> String {
    format!(
        "<img src=\"{}\" width=\"1\" height=\"1\" alt=\"\" style=\"display:block;border:0;width:1px;height:1px\">",
        open_pixel_url(public_url, signer, message_id)
    )
}

/// User-agent fragments of machines that fetch images nobody looks at:
/// security gateways that scan every message, link checkers and HTTP
/// libraries. Gmail's and Yahoo's image proxies are not among them: they
/// fetch when a person opens the message.
const MACHINE_AGENTS: [&str; 22] = [
    "barracuda",
    "mimecast",
    "proofpoint",
    "symantec",
    "messagelabs",
    "trendmicro",
    "trend micro",
    "forcepoint",
    "ironport",
    "spamtitan",
    "sophos",
    "fortinet",
    "scanner",
    "crawler",
    "spider",
    "linkchecker",
    "headlesschrome",
    "python-",
    "go-http-client",
    "curl/",
    "wget/",
    "okhttp",
];

/// Whether the user agent alone marks an open as a machine's: none at all,
/// Apple Mail Privacy Protection's bare `Mozilla/5.0`, or a known scanner.
pub fn machine_agent(user_agent: Option<&str>) -> bool {
    let Some(ua) = user_agent.map(str::trim).filter(|u| !u.is_empty()) else {
        return true;
    };
    if ua == "Mozilla/5.0" {
        return true;
    }
    let lower = ua.to_ascii_lowercase();
    MACHINE_AGENTS.iter().any(|m| lower.contains(m))
}

fn no_store(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-store, no-cache, must-revalidate, private"),
    );
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    h.insert(header::EXPIRES, HeaderValue::from_static("0"));
    r
}

fn enqueue_failed(e: EnqueueError) -> Response {
    tracing::error!(error = %e, "could not queue an open or click");
    plain(
        StatusCode::SERVICE_UNAVAILABLE,
        "temporarily unavailable; try again",
    )
}

/// `GET /o/{token}`: the pixel; a HEAD (a link checker's) records nothing.
pub(crate) async fn open(
    State(st): State<AppState>,
    method: Method,
    headers: HeaderMap,
    token: Result<Path<String>, PathRejection>,
) -> Response {
    let Some(claims) = token
        .ok()
        .and_then(|Path(t)| st.inner.signer.verify(&t))
        .filter(|c| c.kind == TokenKind::Open)
    else {
        return not_found();
    };
    if method != Method::HEAD {
        let ua = headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok());
        let hit = Hit {
            message_id: claims.message_id,
            at: now_ms(),
            kind: HitKind::Open {
                machine_agent: machine_agent(ua),
            },
        };
        if let Err(e) = st.inner.tracker.record(hit).await {
            return enqueue_failed(e);
        }
    }
    no_store(([(header::CONTENT_TYPE, "image/gif")], PIXEL_GIF.as_slice()).into_response())
}

/// A 302 to `url` if it is a web address that fits in a header.
fn redirect(url: &str) -> Option<Response> {
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    if !(lower.starts_with("https://") || lower.starts_with("http://")) {
        return None;
    }
    let location = HeaderValue::from_str(url).ok()?;
    let mut r = StatusCode::FOUND.into_response();
    r.headers_mut().insert(header::LOCATION, location);
    // The tracking token must not leak to the destination as a Referer.
    r.headers_mut().insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    Some(no_store(r))
}

async fn click_to(
    st: &AppState,
    method: &Method,
    message_id: i64,
    idx: i32,
    url: &str,
) -> Response {
    let Some(resp) = redirect(url) else {
        tracing::warn!(
            message_id,
            idx,
            "a stored link is not an http(s) URL; refused"
        );
        return not_found();
    };
    if *method != Method::HEAD {
        let hit = Hit {
            message_id,
            at: now_ms(),
            kind: HitKind::Click { link: idx },
        };
        if let Err(e) = st.inner.tracker.record(hit).await {
            return enqueue_failed(e);
        }
    }
    resp
}

/// `GET /c/{token}`: a 302 to the URL the signed token carries, or (a click
/// token from before link tokens) to the URL stored for (message, link);
/// never to anything else.
pub(crate) async fn click(
    State(st): State<AppState>,
    method: Method,
    token: Result<Path<String>, PathRejection>,
) -> Response {
    let Ok(Path(token)) = token else {
        return not_found();
    };
    if let Some(l) = st.inner.signer.verify_link(&token) {
        return click_to(&st, &method, l.message_id, i32::from(l.link), &l.url).await;
    }
    let Some((message_id, idx)) = st
        .inner
        .signer
        .verify(&token)
        .filter(|c| c.kind == TokenKind::Click)
        .and_then(|c| Some((c.message_id, i32::from(c.link?))))
    else {
        return not_found();
    };
    match tracking::link_url(&st.inner.db, message_id, idx).await {
        Ok(Some(url)) => click_to(&st, &method, message_id, idx, &url).await,
        Ok(None) => not_found(),
        Err(e) => internal_error(e),
    }
}

/// `GET /s/{code}`: the short form of a click, found by its code.
pub(crate) async fn short(
    State(st): State<AppState>,
    method: Method,
    code: Result<Path<String>, PathRejection>,
) -> Response {
    let Some(code) = code
        .ok()
        .map(|Path(c)| c)
        .filter(|c| c.len() == SHORT_CODE_LEN && c.bytes().all(|b| b.is_ascii_alphanumeric()))
    else {
        return not_found();
    };
    match tracking::short_link(&st.inner.db, &code).await {
        Ok(Some(l)) => click_to(&st, &method, l.message_id, l.idx, &l.url).await,
        Ok(None) => not_found(),
        Err(e) => internal_error(e),
    }
}

/// The message a genuine unsubscribe token names, or the response to send instead.
async fn unsubscribe_target(
    st: &AppState,
    token: Result<Path<String>, PathRejection>,
) -> Result<MessageInfo, Response> {
    let claims = token
        .ok()
        .and_then(|Path(t)| st.inner.signer.verify(&t))
        .filter(|c| c.kind == TokenKind::Unsubscribe)
        .ok_or_else(not_found)?;
    match tracking::message_info(&st.inner.db, claims.message_id).await {
        Ok(Some(m)) => Ok(m),
        Ok(None) => Err(not_found()),
        Err(e) => Err(internal_error(e)),
    }
}

/// Shows enough of an address to recognise it, not enough to learn it from a forwarded link.
fn mask(address: &str) -> String {
    match address.rsplit_once('@') {
        Some((local, domain)) => {
            let first: String = local.chars().take(1).collect();
            format!("{first}***@{domain}")
        }
        None => {
            let n = address.chars().count();
            let tail: String = address.chars().skip(n.saturating_sub(4)).collect();
            format!("***{tail}")
        }
    }
}

fn html_escape(s: &str) -> String {
    crate::sms::xml_escape(s)
}

fn page(title: &str, body: &str) -> Response {
    no_store(
        Html(format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><meta name=\"robots\" content=\"noindex\"><title>{t}</title><style>body{{font-family:system-ui,sans-serif;max-width:32rem;margin:3rem auto;padding:0 1rem;line-height:1.5}}button{{font-size:1rem;padding:.5rem 1rem;margin:.25rem 0;cursor:pointer}}</style></head><body><h1>{t}</h1>{body}</body></html>",
            t = html_escape(title)
        ))
        .into_response(),
    )
}

fn channel_words(channel: Option<&str>) -> &'static str {
    match channel {
        Some("email") => "emails",
        Some("sms") => "text messages",
        Some("push") => "push notifications",
        _ => "messages",
    }
}

/// `GET /u/{token}`: the page. Opening it changes nothing (mail scanners
/// follow links); its buttons POST back to the same URL.
pub(crate) async fn unsubscribe_page(
    State(st): State<AppState>,
    token: Result<Path<String>, PathRejection>,
) -> Response {
    let msg = match unsubscribe_target(&st, token).await {
        Ok(m) => m,
        Err(r) => return r,
    };
    let what = channel_words(msg.channel.as_deref());
    let who = msg
        .address
        .as_deref()
        .map(|a| format!(" to <strong>{}</strong>", html_escape(&mask(a))))
        .unwrap_or_default();
    let mut body = format!("<p>Choose what to stop sending{who}.</p><form method=\"post\">");
    if let Some(topic) = &msg.topic {
        body.push_str(&format!(
            "<p><button name=\"scope\" value=\"topic\">Stop “{}” {what}</button></p>",
            html_escape(topic)
        ));
    }
    body.push_str(&format!(
        "<p><button name=\"scope\" value=\"channel\">Stop all marketing {what}</button></p></form><p>Receipts and other messages about your account still reach you.</p>"
    ));
    page("Unsubscribe", &body)
}

/// `POST /u/{token}`: RFC 8058 one-click (`List-Unsubscribe=One-Click`) or
/// the page's form (SPEC section 4). One-click ends the message's topic, or
/// marketing on its channel when it has none; the page offers the topic or
/// all marketing on the channel. Neither stops transactional messages (a
/// bounce or a complaint does). Answered 200, never a redirect.
pub(crate) async fn unsubscribe(
    State(st): State<AppState>,
    token: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> Response {
    let msg = match unsubscribe_target(&st, token).await {
        Ok(m) => m,
        Err(r) => return r,
    };
    let fields: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
    let one_click = fields
        .iter()
        .any(|(k, v)| k == "List-Unsubscribe" && v == "One-Click");
    let topic = !one_click && fields.iter().any(|(k, v)| k == "scope" && v == "topic");
    let (scope, source) = if topic {
        (UnsubscribeScope::Topic, "unsubscribe_page")
    } else if one_click {
        // The topic when there is one (`unsubscribe` falls back to the channel).
        (UnsubscribeScope::Topic, "list_unsubscribe")
    } else {
        (UnsubscribeScope::Channel, "unsubscribe_page")
    };
    let applied = match tracking::unsubscribe(&st.inner.db, &msg, scope, source, now_ms()).await {
        Ok(a) => a,
        Err(e) => return internal_error(e),
    };
    if one_click {
        return no_store(plain(StatusCode::OK, "unsubscribed"));
    }
    let what = channel_words(msg.channel.as_deref());
    let text = match (applied, &msg.topic) {
        (UnsubscribeScope::Topic, Some(t)) => {
            format!("You will get no more “{}” {what}.", html_escape(t))
        }
        _ => format!("You will get no more marketing {what} from us."),
    };
    page("You are unsubscribed", &format!("<p>{text}</p>"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_agents_are_recognised() {
        assert!(machine_agent(None));
        assert!(machine_agent(Some("")));
        assert!(machine_agent(Some("Mozilla/5.0")));
        assert!(machine_agent(Some(
            "Mozilla/5.0 (compatible; Barracuda Sentinel)"
        )));
        assert!(machine_agent(Some("python-requests/2.31")));
        assert!(!machine_agent(Some(
            "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
        )));
        assert!(!machine_agent(Some(
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148"
        )));
    }

    #[test]
    fn only_web_urls_are_redirected_to() {
        assert!(redirect("https://shop.example.com/a?b=1").is_some());
        assert!(redirect("HTTP://shop.example.com/").is_some());
        assert!(redirect("javascript:alert(1)").is_none());
        assert!(redirect("//evil.example.com").is_none());
        assert!(redirect("https://x.example.com/\r\nSet-Cookie: a=b").is_none());
    }

    #[test]
    fn addresses_are_masked_on_the_page() {
        assert_eq!(mask("ann@example.com"), "a***@example.com");
        assert_eq!(mask("+8613800138000"), "***8000");
    }

    #[test]
    fn the_pixel_is_a_gif() {
        assert!(PIXEL_GIF.starts_with(b"GIF89a"));
        assert_eq!(PIXEL_GIF[PIXEL_GIF.len() - 1], 0x3b);
        let s = TokenSigner::new(b"0123456789abcdef");
        let url = open_pixel_url("https://t.example.com/", &s, 7);
        let token = url.strip_prefix("https://t.example.com/o/").unwrap();
        assert_eq!(s.verify(token).unwrap().kind, TokenKind::Open);
    }
}
