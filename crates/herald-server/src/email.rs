//! Email provider webhooks (`POST /webhooks/email/{sendgrid|ses}`): bounces,
//! complaints, deliveries and unsubscribes. Each event names its message by
//! the signed callback token herald put in the message's custom args
//! (`herald_token`: SendGrid `unique_args`, SES message tags), an
//! `X-Herald-Token` header, or its VERP return path; failing those, by herald's
//! Message-ID (which carries the token) as SendGrid's `smtp-id` or SES's
//! `mail.commonHeaders.messageId`, or by SES's own id (`mail.messageId`, the id
//! of its `250 Ok <id>` reply, stored as the message's provider id).

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use herald_domain::token::TokenKind;
use herald_storage::tracking::{self, EmailFeedback, UnsubscribeScope};
use serde_json::{Value, json};

use crate::state::AppState;
use crate::{internal_error, not_found, now_ms, plain};

/// The custom argument (SendGrid `custom_args`, SES message tag) that carries the callback token.
pub const TOKEN_FIELD: &str = "herald_token";
/// The message header that may carry the callback token instead.
pub const TOKEN_HEADER: &str = "X-Herald-Token";

/// What a provider event asks herald to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Feedback(EmailFeedback),
    Unsubscribe,
}

/// One provider event, reduced to what herald uses.
#[derive(Debug, Clone, PartialEq)]
struct ProviderEvent {
    token: Option<String>,
    action: Option<Action>,
    detail: Value,
    /// What else in the event may name the message.
    refs: EventRefs,
}

/// What in a provider event may name a herald message besides its token.
#[derive(Debug, Clone, PartialEq, Default)]
struct EventRefs {
    /// Message-IDs the event quotes (SendGrid `smtp-id`, SES `mail.commonHeaders.messageId`).
    message_ids: Vec<String>,
    /// The provider's own id of the message (SES `mail.messageId`).
    provider_id: Option<String>,
}

/// The callback token in one of herald's Message-IDs, `<RANDOM.TOKEN@domain>`.
fn token_from_message_id(message_id: &str) -> Option<&str> {
    let id = message_id
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>');
    let (local, _) = id.rsplit_once('@')?;
    let (random, token) = local.split_once('.')?;
    let well_formed = !random.is_empty()
        && random.bytes().all(|b| b.is_ascii_hexdigit())
        && !token.is_empty()
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    well_formed.then_some(token)
}

/// The message an event names, and how it was found.
enum Found {
    Message(tracking::MessageInfo),
    /// It carried a token, and the token was forged.
    Forged,
    /// Nothing in it names a message of this database.
    Nothing,
}

/// Finds the message `ev` is about: its token, then a token in a Message-ID it quotes,
/// then the provider's own id. A Message-ID that is not herald's, or whose token another
/// installation signed (a staging database on the same provider account), names nothing.
async fn find_message(st: &AppState, ev: &ProviderEvent) -> Result<Found, tracking::TrackingError> {
    let verify = |token: &str| {
        st.inner
            .signer
            .verify(token)
            .filter(|c| c.kind == TokenKind::Callback)
    };
    let mut forged = false;
    if let Some(token) = &ev.token {
        match verify(token) {
            Some(claims) => {
                if let Some(m) = tracking::message_info(&st.inner.db, claims.message_id).await? {
                    return Ok(Found::Message(m));
                }
            }
            None => forged = true,
        }
    }
    for id in &ev.refs.message_ids {
        if let Some(claims) = token_from_message_id(id).and_then(verify)
            && let Some(m) = tracking::message_info(&st.inner.db, claims.message_id).await?
        {
            return Ok(Found::Message(m));
        }
    }
    if let Some(pid) = &ev.refs.provider_id
        && let Some(m) = tracking::message_by_provider_id(&st.inner.db, pid).await?
    {
        return Ok(Found::Message(m));
    }
    Ok(if forged {
        Found::Forged
    } else {
        Found::Nothing
    })
}

/// What a SendGrid event quotes of the message: its `smtp-id` (the Message-ID it was sent with).
fn sendgrid_refs(e: &Value) -> EventRefs {
    EventRefs {
        message_ids: str_at(e, &["smtp-id"])
            .map(str::to_string)
            .into_iter()
            .collect(),
        provider_id: None,
    }
}

/// What an SES `mail` object quotes of the message: the original Message-ID header and
/// SES's own message id.
fn ses_refs(mail: Option<&Value>) -> EventRefs {
    let Some(mail) = mail else {
        return EventRefs::default();
    };
    let mut message_ids: Vec<String> = str_at(mail, &["commonHeaders", "messageId"])
        .map(str::to_string)
        .into_iter()
        .collect();
    if let Some(headers) = mail.get("headers").and_then(Value::as_array) {
        message_ids.extend(headers.iter().filter_map(|h| {
            let name = h.get("name").and_then(Value::as_str)?;
            name.eq_ignore_ascii_case("Message-ID")
                .then(|| h.get("value").and_then(Value::as_str).map(str::to_string))
                .flatten()
        }));
    }
    message_ids.dedup();
    EventRefs {
        message_ids,
        provider_id: str_at(mail, &["messageId"]).map(str::to_string),
    }
}

/// The token in a VERP address `bounce+TOKEN@domain`, if it is one.
pub fn token_from_verp(address: &str) -> Option<&str> {
    let address = address.trim().trim_start_matches('<').trim_end_matches('>');
    let (local, _) = address.rsplit_once('@')?;
    let token = local.strip_prefix("bounce+")?;
    (!token.is_empty()).then_some(token)
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_str()
}

fn sendgrid(v: Value) -> Result<Vec<ProviderEvent>, String> {
    let items = match v {
        Value::Array(a) => a,
        o @ Value::Object(_) => vec![o],
        _ => return Err("a SendGrid webhook body is a JSON array of events".into()),
    };
    Ok(items
        .into_iter()
        .map(|e| {
            let token = str_at(&e, &[TOKEN_FIELD])
                .or_else(|| str_at(&e, &["custom_args", TOKEN_FIELD]))
                .or_else(|| str_at(&e, &["unique_args", TOKEN_FIELD]))
                .map(str::to_string);
            let kind = str_at(&e, &["event"]).unwrap_or("");
            let action = match kind {
                "delivered" => Some(Action::Feedback(EmailFeedback::Delivered)),
                "bounce" if str_at(&e, &["type"]) == Some("blocked") => {
                    Some(Action::Feedback(EmailFeedback::SoftBounce))
                }
                // SendGrid drops mail to addresses on its own bounce, spam and
                // unsubscribe lists: as final as a hard bounce.
                "bounce" | "dropped" => Some(Action::Feedback(EmailFeedback::HardBounce)),
                "deferred" => Some(Action::Feedback(EmailFeedback::SoftBounce)),
                "spamreport" => Some(Action::Feedback(EmailFeedback::Complaint)),
                "unsubscribe" | "group_unsubscribe" => Some(Action::Unsubscribe),
                _ => None,
            };
            let detail = json!({
                "provider": "sendgrid",
                "event": kind,
                "type": e.get("type"),
                "status": e.get("status"),
                "reason": e.get("reason"),
                "sg_message_id": e.get("sg_message_id"),
                "smtp_id": e.get("smtp-id"),
            });
            ProviderEvent {
                token,
                action,
                detail,
                refs: sendgrid_refs(&e),
            }
        })
        .collect())
}

/// The callback token of an SES `mail` object: a tag, a header, or the VERP source.
fn ses_token(mail: &Value) -> Option<String> {
    if let Some(t) = mail
        .get("tags")
        .and_then(|t| t.get(TOKEN_FIELD))
        .and_then(|t| t.get(0))
        .and_then(Value::as_str)
    {
        return Some(t.to_string());
    }
    if let Some(headers) = mail.get("headers").and_then(Value::as_array)
        && let Some(v) = headers.iter().find_map(|h| {
            let name = h.get("name").and_then(Value::as_str)?;
            name.eq_ignore_ascii_case(TOKEN_HEADER)
                .then(|| h.get("value").and_then(Value::as_str))
                .flatten()
        })
    {
        return Some(v.to_string());
    }
    mail.get("source")
        .and_then(Value::as_str)
        .and_then(token_from_verp)
        .map(str::to_string)
}

/// The events of an SES notification (bare, or wrapped in an SNS envelope);
/// `Ok(None)` for an SNS subscription confirmation.
fn ses(v: Value) -> Result<Option<Vec<ProviderEvent>>, String> {
    let v = match str_at(&v, &["Type"]) {
        Some("SubscriptionConfirmation") | Some("UnsubscribeConfirmation") => {
            // Confirming means fetching a URL on the provider's side; an
            // operator does it once, from the log.
            tracing::warn!(
                subscribe_url = str_at(&v, &["SubscribeURL"]).unwrap_or(""),
                topic = str_at(&v, &["TopicArn"]).unwrap_or(""),
                "SNS subscription confirmation received: open SubscribeURL to confirm it"
            );
            return Ok(None);
        }
        Some("Notification") => {
            let msg = str_at(&v, &["Message"]).ok_or("an SNS notification without a Message")?;
            serde_json::from_str(msg).map_err(|e| format!("the SNS Message is not JSON: {e}"))?
        }
        _ => v,
    };
    let items = match v {
        Value::Array(a) => a,
        o => vec![o],
    };
    Ok(Some(
        items
            .into_iter()
            .map(|e| {
                let kind = str_at(&e, &["eventType"])
                    .or_else(|| str_at(&e, &["notificationType"]))
                    .unwrap_or("")
                    .to_string();
                let token = e.get("mail").and_then(ses_token);
                let (action, detail) = match kind.as_str() {
                    "Bounce" => {
                        let hard = str_at(&e, &["bounce", "bounceType"]) == Some("Permanent");
                        let first = e.pointer("/bounce/bouncedRecipients/0");
                        (
                            Some(Action::Feedback(if hard {
                                EmailFeedback::HardBounce
                            } else {
                                EmailFeedback::SoftBounce
                            })),
                            json!({
                                "provider": "ses",
                                "event": kind,
                                "bounce_type": e.pointer("/bounce/bounceType"),
                                "bounce_sub_type": e.pointer("/bounce/bounceSubType"),
                                "status": first.and_then(|r| r.get("status")),
                                "diagnostic": first.and_then(|r| r.get("diagnosticCode")),
                            }),
                        )
                    }
                    "Complaint" => (
                        Some(Action::Feedback(EmailFeedback::Complaint)),
                        json!({
                            "provider": "ses",
                            "event": kind,
                            "feedback_type": e.pointer("/complaint/complaintFeedbackType"),
                        }),
                    ),
                    "Delivery" => (
                        Some(Action::Feedback(EmailFeedback::Delivered)),
                        json!({ "provider": "ses", "event": kind }),
                    ),
                    _ => (None, json!({ "provider": "ses", "event": kind })),
                };
                let mut detail = detail;
                if let Value::Object(d) = &mut detail {
                    d.insert("ses_message_id".into(), json!(e.pointer("/mail/messageId")));
                }
                ProviderEvent {
                    token,
                    action,
                    detail,
                    refs: ses_refs(e.get("mail")),
                }
            })
            .collect(),
    ))
}

/// `POST /webhooks/email/{provider}`: answers 200 with what was applied, or
/// 404 when every token it carried was forged (so nothing was recorded).
pub(crate) async fn webhook(
    State(st): State<AppState>,
    Path(provider): Path<String>,
    body: Bytes,
) -> Response {
    let parsed: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return plain(StatusCode::BAD_REQUEST, &format!("invalid JSON: {e}")),
    };
    let events = match provider.as_str() {
        "sendgrid" => sendgrid(parsed),
        "ses" => match ses(parsed) {
            Ok(Some(ev)) => Ok(ev),
            Ok(None) => {
                return (StatusCode::OK, Json(json!({ "subscription": "logged" }))).into_response();
            }
            Err(e) => Err(e),
        },
        _ => return not_found(),
    };
    let events = match events {
        Ok(ev) => ev,
        Err(e) => return plain(StatusCode::BAD_REQUEST, &e),
    };
    let (mut applied, mut ignored, mut forged) = (0u64, 0u64, 0u64);
    let source = provider.as_str();
    for ev in events {
        let Some(action) = ev.action else {
            ignored += 1;
            continue;
        };
        let msg = match find_message(&st, &ev).await {
            Ok(Found::Message(m)) => m,
            Ok(Found::Forged) => {
                forged += 1;
                continue;
            }
            Ok(Found::Nothing) => {
                ignored += 1;
                continue;
            }
            Err(e) => return internal_error(e),
        };
        let now = now_ms();
        let done = match action {
            Action::Feedback(f) => {
                tracking::apply_email_feedback(&st.inner.db, &msg, f, source, ev.detail, now).await
            }
            Action::Unsubscribe => {
                tracking::unsubscribe(&st.inner.db, &msg, UnsubscribeScope::Channel, source, now)
                    .await
                    .map(|_| ())
            }
        };
        if let Err(e) = done {
            // The provider retries the whole delivery; every write is idempotent.
            return internal_error(e);
        }
        applied += 1;
    }
    if applied == 0 && forged > 0 {
        tracing::warn!(
            provider = source,
            forged,
            "an email webhook carried only forged tokens"
        );
        return not_found();
    }
    (
        StatusCode::OK,
        Json(json!({ "applied": applied, "ignored": ignored + forged })),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verp_addresses_carry_the_token() {
        assert_eq!(
            token_from_verp("bounce+abc_-1@b.example.com"),
            Some("abc_-1")
        );
        assert_eq!(token_from_verp("<bounce+abc@b.example.com>"), Some("abc"));
        assert_eq!(token_from_verp("bounce+@b.example.com"), None);
        assert_eq!(token_from_verp("ann@b.example.com"), None);
    }

    #[test]
    fn sendgrid_events_map_to_feedback() {
        let ev = sendgrid(json!([
            {"event": "bounce", "type": "bounce", "herald_token": "t1", "status": "5.1.1"},
            {"event": "bounce", "type": "blocked", "herald_token": "t2"},
            {"event": "spamreport", "custom_args": {"herald_token": "t3"}},
            {"event": "open", "herald_token": "t4"},
        ]))
        .unwrap();
        assert_eq!(
            ev[0].action,
            Some(Action::Feedback(EmailFeedback::HardBounce))
        );
        assert_eq!(
            ev[1].action,
            Some(Action::Feedback(EmailFeedback::SoftBounce))
        );
        assert_eq!(
            ev[2].action,
            Some(Action::Feedback(EmailFeedback::Complaint))
        );
        assert_eq!(ev[2].token.as_deref(), Some("t3"));
        assert_eq!(ev[3].action, None);
    }

    #[test]
    fn ses_notifications_are_unwrapped_from_sns() {
        let inner = json!({
            "notificationType": "Bounce",
            "bounce": {"bounceType": "Permanent", "bouncedRecipients": [{"emailAddress": "a@x.com", "status": "5.1.1"}]},
            "mail": {"source": "bounce+tok@b.example.com", "tags": {}}
        });
        let sns = json!({"Type": "Notification", "Message": inner.to_string()});
        let ev = ses(sns).unwrap().unwrap();
        assert_eq!(
            ev[0].action,
            Some(Action::Feedback(EmailFeedback::HardBounce))
        );
        assert_eq!(ev[0].token.as_deref(), Some("tok"));
        let tagged = json!({"eventType": "Complaint", "mail": {"tags": {"herald_token": ["t9"]}}});
        let ev = ses(tagged).unwrap().unwrap();
        assert_eq!(ev[0].token.as_deref(), Some("t9"));
        assert_eq!(
            ev[0].action,
            Some(Action::Feedback(EmailFeedback::Complaint))
        );
        assert!(
            ses(json!({"Type": "SubscriptionConfirmation"}))
                .unwrap()
                .is_none()
        );
    }
}
