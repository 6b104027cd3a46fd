//! A contact's page: attributes, consent per channel and topic,
//! suppressions, and every message and event on one timeline, read from
//! the same export `herald contacts export` prints (so the page shows
//! exactly what herald keeps); export as JSON and forget (with
//! confirmation) do what `herald contacts export` and `forget` do.

use std::fmt::Write as _;

use axum::Extension;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::DateTime;
use serde_json::Value;

use super::html::{csrf_field, esc, page, table};
use super::report::segment;
use super::{Form, Signed, csrf_of, html, see_other, settings};
use crate::AppState;

/// One line of the timeline: when (RFC 3339), what kind, and the words (HTML).
type Entry = (String, &'static str, String);

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

/// `v` as a cell: text escaped, `null` empty, anything else as JSON.
fn cell(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(t) => esc(t),
        other => esc(&other.to_string()),
    }
}

/// An RFC 3339 instant in the console's zone.
fn local(tz: chrono_tz::Tz, t: &str) -> String {
    DateTime::parse_from_rfc3339(t).map_or_else(
        |_| t.to_string(),
        |d| {
            d.with_timezone(&tz)
                .format("%Y-%m-%d %H:%M:%S %Z")
                .to_string()
        },
    )
}

/// Every message, attempt, message event, contact event and suppression of
/// `doc` (an export), oldest first.
pub fn timeline(doc: &Value) -> Vec<Entry> {
    let mut out: Vec<Entry> = Vec::new();
    let mut push = |at: &Value, kind: &'static str, what: String| {
        if let Some(at) = at.as_str() {
            out.push((at.to_string(), kind, what));
        }
    };
    for m in doc["messages"].as_array().into_iter().flatten() {
        let name = format!(
            "message {} ({}, run {}, arm {}{})",
            m["id"],
            esc(s(&m["campaign"])),
            m["run_id"],
            esc(s(&m["arm"])),
            m["channel"]
                .as_str()
                .map_or_else(String::new, |c| format!(", {}", esc(c)))
        );
        let reason = m["reason"]
            .as_str()
            .map_or_else(String::new, |r| format!(" ({})", esc(r)));
        push(
            &m["send_at"],
            "message",
            format!(
                "{name}: planned; now <strong>{}</strong>{reason}",
                esc(s(&m["status"]))
            ),
        );
        let o = &m["outcome"];
        for (key, words) in [
            ("sent_at", "sent"),
            ("delivered_at", "delivered"),
            ("bounced_at", "bounced"),
            ("complained_at", "marked as spam"),
            ("machine_opened_at", "fetched by a privacy proxy or scanner"),
            ("unsubscribed_at", "unsubscribed"),
            ("converted_at", "converted"),
        ] {
            push(&o[key], "message", format!("{name}: {words}"));
        }
        push(
            &o["opened_at"],
            "message",
            format!("{name}: opened ({} times)", o["open_count"]),
        );
        push(
            &o["clicked_at"],
            "message",
            format!("{name}: clicked ({} times)", o["click_count"]),
        );
        for a in m["attempts"].as_array().into_iter().flatten() {
            let detail = [&a["provider_code"], &a["detail"]]
                .iter()
                .filter_map(|v| v.as_str())
                .map(esc)
                .collect::<Vec<_>>()
                .join(" ");
            push(
                &a["at"],
                "attempt",
                format!("{name}: attempt {} {detail}", esc(s(&a["result"]))),
            );
        }
        for e in m["activity"].as_array().into_iter().flatten() {
            push(
                &e["at"],
                "activity",
                format!("{name}: {}", esc(s(&e["kind"]))),
            );
        }
    }
    for e in doc["events"].as_array().into_iter().flatten() {
        let value = e["value"]
            .as_f64()
            .map_or_else(String::new, |v| format!(", value {v}"));
        push(
            &e["at"],
            "event",
            format!("event <code>{}</code>{value}", esc(s(&e["name"]))),
        );
    }
    for x in doc["suppressions"].as_array().into_iter().flatten() {
        push(
            &x["created_at"],
            "suppression",
            format!(
                "suppressed on {}{}: {} (from {})",
                esc(s(&x["channel"])),
                x["topic"]
                    .as_str()
                    .map_or_else(String::new, |t| format!(", topic {}", esc(t))),
                esc(s(&x["reason"])),
                esc(s(&x["source"]))
            ),
        );
    }
    // RFC 3339 UTC with milliseconds sorts as text; equal instants keep their order.
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn lookup_form(value: &str) -> String {
    format!(
        "<form method=\"get\" action=\"/console/contacts\" class=\"filter\">\
         <label for=\"id\">External id</label><input id=\"id\" name=\"id\" value=\"{}\" required> \
         <button type=\"submit\">Open</button></form>",
        esc(value)
    )
}

/// `GET /console/contacts?id=EXT`: the lookup form, or the contact.
pub(crate) async fn lookup(
    State(st): State<AppState>,
    Extension(Signed(session)): Extension<Signed>,
    RawQuery(raw): RawQuery,
) -> Response {
    let id = raw
        .and_then(|q| {
            form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .find(|(k, _)| k == "id")
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default();
    if !id.is_empty() {
        return see_other(&format!("/console/contacts/{}", segment(&id)));
    }
    html(
        StatusCode::OK,
        page("Contacts", Some(&csrf_of(&st, &session)), &lookup_form("")),
    )
}

async fn export(st: &AppState, id: &str) -> Result<Value, Response> {
    match herald_storage::contacts::export_contact(st.db(), id).await {
        Ok(Some(doc)) => Ok(doc),
        Ok(None) => Err(crate::not_found()),
        Err(e) => Err(crate::internal_error(e)),
    }
}

/// `GET /console/contacts/{id}`.
pub(crate) async fn contact_page(
    State(st): State<AppState>,
    Extension(Signed(session)): Extension<Signed>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Response {
    let Some(cfg) = settings(&st) else {
        return crate::not_found();
    };
    let tz = cfg.timezone;
    let doc = match export(&st, &id).await {
        Ok(d) => d,
        Err(r) => return r,
    };
    let csrf = csrf_of(&st, &session);
    let seg = segment(&id);
    let mut body = lookup_form(&id);
    if raw.as_deref().is_some_and(|q| q.contains("done=forget")) {
        body.push_str("<p class=\"ok\" role=\"status\">Forgotten: the personal data is erased; the counts stay.</p>");
    }
    let _ = write!(
        body,
        "<p><a href=\"/console/contacts/{seg}/export.json\">Export everything (JSON)</a> \
         <a class=\"button\" href=\"/console/contacts/{seg}/forget\">Forget…</a></p>"
    );
    // Who they are.
    let mut rows: Vec<Vec<String>> = [
        "email",
        "phone",
        "timezone",
        "locale",
        "tags",
        "forgotten_at",
    ]
    .iter()
    .map(|k| vec![esc(k), cell(&doc[*k])])
    .collect();
    for (k, v) in doc["attrs"].as_object().into_iter().flatten() {
        rows.push(vec![format!("attrs.{}", esc(k)), cell(v)]);
    }
    body.push_str(&table("Attributes", &["field", "value"], &rows));
    // Consent per channel, then per topic.
    let mut rows: Vec<Vec<String>> = ["email", "sms", "push"]
        .iter()
        .map(|ch| {
            let c = match doc["consent"][*ch].as_bool() {
                Some(true) => "yes",
                Some(false) => "no",
                None => "not recorded",
            };
            vec![format!("channel {ch}"), c.to_string(), String::new()]
        })
        .collect();
    for t in doc["topic_subscriptions"].as_array().into_iter().flatten() {
        rows.push(vec![
            format!("topic {}", esc(s(&t["topic"]))),
            if t["subscribed"].as_bool() == Some(true) {
                "subscribed".into()
            } else {
                "unsubscribed".into()
            },
            esc(&local(tz, s(&t["updated_at"]))),
        ]);
    }
    body.push_str(&table("Consent", &["for", "consent", "since"], &rows));
    let rows: Vec<Vec<String>> = doc["suppressions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|x| {
            vec![
                cell(&x["channel"]),
                cell(&x["topic"]),
                cell(&x["reason"]),
                cell(&x["source"]),
                esc(&local(tz, s(&x["created_at"]))),
            ]
        })
        .collect();
    if rows.is_empty() {
        body.push_str("<p>Suppressions: none.</p>");
    } else {
        body.push_str(&table(
            "Suppressions",
            &["channel", "topic", "reason", "source", "since"],
            &rows,
        ));
    }
    // Messages.
    let rows: Vec<Vec<String>> = doc["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            let o = &m["outcome"];
            vec![
                format!("<a href=\"/console/runs/{}\">{}</a>", m["run_id"], m["id"]),
                cell(&m["campaign"]),
                cell(&m["arm"]),
                cell(&m["channel"]),
                cell(&m["status"]),
                cell(&m["reason"]),
                m["attempts"].as_array().map_or(0, Vec::len).to_string(),
                o["open_count"].to_string(),
                o["click_count"].to_string(),
                esc(&local(tz, s(&m["send_at"]))),
            ]
        })
        .collect();
    body.push_str(&table(
        "Messages",
        &[
            "message",
            "campaign",
            "arm",
            "channel",
            "status",
            "reason",
            "attempts",
            "opens",
            "clicks",
            "planned for",
        ],
        &rows,
    ));
    body.push_str(&why_nothing(&st, cfg, &id, &doc).await);
    let rows: Vec<Vec<String>> = timeline(&doc)
        .into_iter()
        .map(|(at, kind, what)| vec![esc(&local(tz, &at)), kind.to_string(), what])
        .collect();
    body.push_str(&table(
        &format!("Timeline (times in {})", tz.name()),
        &["when", "kind", "what"],
        &rows,
    ));
    html(
        StatusCode::OK,
        page(&format!("Contact {id}"), Some(&csrf), &body),
    )
}

/// The "why they got nothing" table: empty when there is nothing to say
/// (every message went out and every latest run reached them).
async fn why_nothing(st: &AppState, cfg: &super::ConsoleSettings, id: &str, doc: &Value) -> String {
    let Some(config) = &cfg.config else {
        return String::new();
    };
    let key = match herald_storage::contacts::contact_key(st.db(), id).await {
        Ok(Some(k)) => k,
        Ok(None) => return String::new(),
        Err(e) => {
            tracing::warn!(error = %e, "reading a contact's key failed");
            return String::new();
        }
    };
    let answers = match super::why::explain(st, config, doc, key.0, key.1).await {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(error = %e, "explaining a contact's runs failed");
            return "<p class=\"error\">Why they got nothing could not be worked out (see the log).</p>"
                .to_string();
        }
    };
    if answers.is_empty() {
        return "<p>Why they got nothing: every run they are in sent them something, or still may.</p>"
            .to_string();
    }
    let rows: Vec<Vec<String>> = answers
        .into_iter()
        .map(|(run, campaign, why)| {
            vec![
                format!("<a href=\"/console/runs/{run}\">{run}</a>"),
                esc(&campaign),
                esc(&why),
            ]
        })
        .collect();
    table("Why they got nothing", &["run", "campaign", "why"], &rows)
}

/// `GET /console/contacts/{id}/export.json`: `herald contacts export`.
pub(crate) async fn export_json(State(st): State<AppState>, Path(id): Path<String>) -> Response {
    match export(&st, &id).await {
        Ok(doc) => {
            let mut r = axum::Json(doc).into_response();
            let h = r.headers_mut();
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            if let Ok(v) = HeaderValue::from_str(&format!(
                "attachment; filename=\"contact-{}.json\"",
                segment(&id)
            )) {
                h.insert(header::CONTENT_DISPOSITION, v);
            }
            r
        }
        Err(r) => r,
    }
}

/// `GET /console/contacts/{id}/forget`: the confirmation.
pub(crate) async fn confirm_forget(
    State(st): State<AppState>,
    Extension(Signed(session)): Extension<Signed>,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = export(&st, &id).await {
        return r;
    }
    let csrf = csrf_of(&st, &session);
    let seg = segment(&id);
    let body = format!(
        "<p>Erases the personal data of <strong>{}</strong> as <code>herald contacts forget</code> does: \
         addresses, attributes, consent, push tokens, links and outbox copies go; messages keep their \
         counts for the reports; planned messages are cancelled; suppressions stay as digests. \
         This cannot be undone.</p>\
         <form method=\"post\" action=\"/console/contacts/{seg}/forget\">{}<button type=\"submit\">Forget {}</button> \
         <a href=\"/console/contacts/{seg}\">Back, do nothing</a></form>",
        esc(&id),
        csrf_field(&csrf),
        esc(&id),
    );
    html(
        StatusCode::OK,
        page(&format!("Forget {id}?"), Some(&csrf), &body),
    )
}

/// `POST /console/contacts/{id}/forget`: `herald contacts forget`.
pub(crate) async fn forget(
    State(st): State<AppState>,
    Extension(Signed(session)): Extension<Signed>,
    Extension(_form): Extension<Form>,
    Path(id): Path<String>,
) -> Response {
    match herald_storage::contacts::forget_contact(st.db(), &id, crate::now_ms()).await {
        Ok(Some(report)) => see_other(&format!(
            "/console/contacts/{}?done=forget",
            segment(&report.tombstone)
        )),
        Ok(None) => crate::not_found(),
        Err(e @ herald_storage::contacts::ContactsError::NoDigestKey) => html(
            StatusCode::CONFLICT,
            page(
                "Not forgotten",
                Some(&csrf_of(&st, &session)),
                &format!(
                    "<p class=\"error\" role=\"alert\">{}</p>",
                    esc(&e.to_string())
                ),
            ),
        ),
        Err(e) => crate::internal_error(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_timeline_merges_messages_events_and_suppressions_in_time_order() {
        let doc = json!({
            "messages": [{
                "id": 7, "campaign": "<b>", "run_id": 2, "arm": "a", "channel": "email",
                "send_at": "2026-01-01T10:00:00.000Z", "status": "delivered", "reason": null,
                "outcome": { "sent_at": "2026-01-01T10:00:01.000Z", "opened_at": "2026-01-01T12:00:00.000Z",
                             "open_count": 2, "click_count": 0, "clicked_at": null },
                "attempts": [{ "at": "2026-01-01T10:00:00.500Z", "result": "accepted", "provider_code": "250", "detail": null }],
                "activity": []
            }],
            "events": [{ "name": "order_placed", "at": "2026-01-01T11:00:00.000Z", "value": 12.5 }],
            "suppressions": [{ "channel": "email", "topic": null, "reason": "unsubscribed",
                               "source": "link", "created_at": "2026-01-02T00:00:00.000Z" }]
        });
        let t = timeline(&doc);
        let kinds: Vec<&str> = t.iter().map(|e| e.1).collect();
        assert_eq!(
            kinds,
            [
                "message",
                "attempt",
                "message",
                "event",
                "message",
                "suppression"
            ]
        );
        assert!(t[3].2.contains("order_placed") && t[3].2.contains("12.5"));
        assert!(t[4].2.contains("opened (2 times)"));
        assert!(t.iter().all(|e| !e.2.contains("<b>")), "escaped");
    }
}
