//! Twilio webhooks: delivery status callbacks (`/webhooks/twilio/status?m=TOKEN`)
//! and inbound SMS (`/webhooks/twilio/inbound`), both verified by
//! `X-Twilio-Signature`: base64 HMAC-SHA1, keyed by the auth token, of the
//! full URL followed by each POST parameter's name and value, sorted by name.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use herald_domain::address::E164Phone;
use herald_domain::token::TokenKind;
use herald_storage::tracking::{self, SmsReceipt};
use ring::hmac;

use crate::sms::{Intent, intent, twiml};
use crate::state::AppState;
use crate::{internal_error, not_found, now_ms, plain};

/// The header Twilio signs its requests with.
pub const SIGNATURE_HEADER: &str = "x-twilio-signature";

/// Twilio error codes that mean the number cannot receive SMS: it is suppressed.
const UNREACHABLE_CODES: [&str; 4] = ["21211", "21614", "30005", "30006"];
/// Twilio's error code for a recipient who replied STOP to Twilio itself.
const OPTED_OUT_CODE: &str = "21610";

/// A status callback's error code that is the sender's account's fault,
/// not the message's: the sms route is blocked with these words (what
/// `herald status` prints after `blocked: sms: `).
fn account_fault(code: &str) -> Option<String> {
    let words = match code {
        "30034" => "the sending number is not registered for A2P 10DLC",
        "30007" => "carriers are filtering the messages",
        _ => return None,
    };
    Some(format!("{words} (Twilio {code}, in a status callback)"))
}

fn signed_data(url: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    // Twilio's libraries sign each distinct (name, value) once.
    sorted.dedup();
    let mut data = url.to_string();
    for (k, v) in sorted {
        data.push_str(k);
        data.push_str(v);
    }
    data
}

/// The `X-Twilio-Signature` Twilio sends for a POST of `params` to `url`.
pub fn twilio_signature(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, auth_token.as_bytes());
    STANDARD.encode(hmac::sign(&key, signed_data(url, params).as_bytes()).as_ref())
}

/// `url` with and without its scheme's default port: Twilio may sign either
/// form, and its own libraries accept both.
fn url_variants(url: &str) -> Vec<String> {
    let mut out = vec![url.to_string()];
    let (scheme, default) = if url.starts_with("https://") {
        ("https://", "443")
    } else if url.starts_with("http://") {
        ("http://", "80")
    } else {
        return out;
    };
    let rest = &url[scheme.len()..];
    let host_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (host, tail) = rest.split_at(host_end);
    match host.rsplit_once(':') {
        Some((h, port)) if port == default => out.push(format!("{scheme}{h}{tail}")),
        Some(_) => {}
        None => out.push(format!("{scheme}{host}:{default}{tail}")),
    }
    out
}

/// Whether `signature` is Twilio's for `params` posted to `url` (compared in constant time).
pub fn verify_twilio_signature(
    auth_token: &str,
    url: &str,
    params: &[(String, String)],
    signature: &str,
) -> bool {
    let Ok(sig) = STANDARD.decode(signature.trim()) else {
        return false;
    };
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, auth_token.as_bytes());
    url_variants(url)
        .iter()
        .any(|u| hmac::verify(&key, signed_data(u, params).as_bytes(), &sig).is_ok())
}

fn form(body: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(body).into_owned().collect()
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

/// Checks the signature of a Twilio webhook: `None` when genuine, else the refusal to send.
fn signature_refusal(
    st: &AppState,
    uri: &Uri,
    headers: &HeaderMap,
    params: &[(String, String)],
) -> Option<Response> {
    let Some(token) = st.inner.config.twilio_auth_token.as_deref() else {
        tracing::warn!("a Twilio webhook arrived but no Twilio auth token is configured; refused");
        return Some(plain(
            StatusCode::FORBIDDEN,
            "Twilio webhooks are disabled: no Twilio auth token is configured",
        ));
    };
    let url = format!(
        "{}{}",
        st.inner.config.public_url,
        uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let sig = headers
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if verify_twilio_signature(token, &url, params, sig) {
        None
    } else {
        tracing::warn!(%url, "refused a Twilio webhook with a missing or wrong X-Twilio-Signature");
        Some(plain(StatusCode::FORBIDDEN, "invalid X-Twilio-Signature"))
    }
}

/// `POST /webhooks/twilio/status?m={token}`.
pub(crate) async fn status(
    State(st): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let token = uri
        .query()
        .and_then(|q| {
            form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == "m")
                .map(|(_, v)| v.into_owned())
        })
        .unwrap_or_default();
    let Some(claims) = st
        .inner
        .signer
        .verify(&token)
        .filter(|c| c.kind == TokenKind::Callback)
    else {
        return not_found();
    };
    let params = form(&body);
    if let Some(r) = signature_refusal(&st, &uri, &headers, &params) {
        return r;
    }
    let msg = match tracking::message_info(&st.inner.db, claims.message_id).await {
        Ok(Some(m)) => m,
        Ok(None) => return not_found(),
        Err(e) => return internal_error(e),
    };
    let receipt = match param(&params, "MessageStatus") {
        Some("sent") => SmsReceipt::Sent,
        Some("delivered") => SmsReceipt::Delivered,
        Some("undelivered") => SmsReceipt::Undelivered,
        Some("failed") => SmsReceipt::Failed,
        // queued, accepted, sending, scheduled, read, canceled: nothing to record.
        _ => return StatusCode::NO_CONTENT.into_response(),
    };
    let code = param(&params, "ErrorCode");
    if let (SmsReceipt::Undelivered | SmsReceipt::Failed, Some(c)) = (receipt, code)
        && let Some(reason) = account_fault(c)
    {
        tracing::warn!(
            message = msg.id,
            "Twilio {c}: the sms route is blocked: {reason}"
        );
        return match tracking::apply_sms_account_fault(
            &st.inner.db,
            &msg,
            param(&params, "MessageSid"),
            c,
            &reason,
            now_ms(),
        )
        .await
        {
            Ok(_) => StatusCode::NO_CONTENT.into_response(),
            Err(e) => internal_error(e),
        };
    }
    let suppress = match code {
        Some(OPTED_OUT_CODE) => Some("opt_out"),
        Some(c) if UNREACHABLE_CODES.contains(&c) => Some("undeliverable"),
        _ => None,
    };
    match tracking::apply_sms_receipt(
        &st.inner.db,
        &msg,
        receipt,
        param(&params, "MessageSid"),
        code,
        suppress,
        now_ms(),
    )
    .await
    {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => internal_error(e),
    }
}

fn xml(body: String) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/xml; charset=utf-8")],
        body,
    )
        .into_response()
}

/// `POST /webhooks/twilio/inbound`.
pub(crate) async fn inbound(
    State(st): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let params = form(&body);
    if let Some(r) = signature_refusal(&st, &uri, &headers, &params) {
        return r;
    }
    let cfg = &st.inner.config;
    let text = param(&params, "Body").unwrap_or("");
    let what = intent(text, &st.inner.opt_out);
    let phone = param(&params, "From").map(E164Phone::parse);
    let phone = match (phone, &what) {
        (Some(Ok(p)), _) => p,
        (_, Intent::Help) => return xml(twiml(Some(&cfg.sms_help_reply))),
        (from, _) => {
            tracing::warn!(
                ?from,
                "inbound SMS from a sender that is not an E.164 number; ignored"
            );
            return xml(twiml(None));
        }
    };
    match what {
        Intent::OptOut(word) => {
            match tracking::sms_opt_out(&st.inner.db, phone.as_str(), &word, now_ms()).await {
                Ok(()) => {
                    tracing::info!(keyword = %word, "an SMS opt-out suppressed a number");
                    xml(twiml(cfg.sms_stop_reply.as_deref()))
                }
                Err(e) => internal_error(e),
            }
        }
        Intent::OptIn => match tracking::sms_opt_in(&st.inner.db, phone.as_str()).await {
            Ok(n) => {
                tracing::info!(lifted = n, "an SMS opt-in lifted opt-outs of a number");
                xml(twiml(cfg.sms_start_reply.as_deref()))
            }
            Err(e) => internal_error(e),
        },
        Intent::Help => xml(twiml(Some(&cfg.sms_help_reply))),
        Intent::Other => xml(twiml(None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vector_params(caller: &str) -> Vec<(String, String)> {
        [
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", caller),
            ("Digits", "1234"),
            ("From", caller),
            ("To", "+18005551212"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    const URL: &str = "https://mycompany.com/myapp.php?foo=1&bar=2";

    #[test]
    fn twilios_published_vectors_pass() {
        // Twilio's documentation and api-snippets (two editions of the example).
        assert_eq!(
            twilio_signature("12345", URL, &vector_params("+14158675309")),
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        );
        assert_eq!(
            twilio_signature("12345", URL, &vector_params("+14158675310")),
            "GvWf1cFY/Q7PnoempGyD5oXAezc="
        );
        assert!(verify_twilio_signature(
            "12345",
            URL,
            &vector_params("+14158675310"),
            "GvWf1cFY/Q7PnoempGyD5oXAezc="
        ));
    }

    #[test]
    fn parameter_order_does_not_matter_but_every_byte_does() {
        let mut p = vector_params("+14158675309");
        p.reverse();
        assert!(verify_twilio_signature(
            "12345",
            URL,
            &p,
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        ));
        assert!(!verify_twilio_signature(
            "12346",
            URL,
            &p,
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        ));
        assert!(!verify_twilio_signature(
            "12345",
            "https://mycompany.com/myapp.php?foo=1&bar=3",
            &p,
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        ));
        p[0].1.push('0');
        assert!(!verify_twilio_signature(
            "12345",
            URL,
            &p,
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        ));
        assert!(!verify_twilio_signature("12345", URL, &p, "not base64!"));
        assert!(!verify_twilio_signature("12345", URL, &p, ""));
    }

    #[test]
    fn a_default_port_may_be_signed_or_not() {
        let p = vector_params("+14158675309");
        let with_port = twilio_signature(
            "12345",
            "https://mycompany.com:443/myapp.php?foo=1&bar=2",
            &p,
        );
        assert!(verify_twilio_signature("12345", URL, &p, &with_port));
        let without = twilio_signature("12345", URL, &p);
        assert!(verify_twilio_signature(
            "12345",
            "https://mycompany.com:443/myapp.php?foo=1&bar=2",
            &p,
            &without
        ));
        assert!(!verify_twilio_signature(
            "12345",
            "https://mycompany.com:8443/myapp.php?foo=1&bar=2",
            &p,
            &without
        ));
    }
}
