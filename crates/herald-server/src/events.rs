//! `POST /events`: app events from a backend, one object, an array or
//! `{"events": [...]}`; at most [`MAX_EVENTS`] and [`MAX_BODY`] bytes. Rows
//! are checked like `herald import events` rows, stored through the same
//! insert (idempotent by `event_id`), then attributed to campaign goals.

use axum::Json;
use axum::body::{Body, to_bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use herald_storage::import::{EventRow, event_from_json, insert_events};
use herald_storage::tracking::attribute_events;
use serde_json::{Value, json};
use std::sync::atomic::Ordering;

use crate::state::AppState;
use crate::{internal_error, now_ms};

/// Events in one request at most.
pub const MAX_EVENTS: usize = 1000;
/// Bytes of one request body at most (1 MiB).
pub const MAX_BODY: usize = 1 << 20;

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

/// One event checked as `herald import events` checks an NDJSON line, except
/// that a missing `at` means the moment it was received.
pub fn event_row(v: Value, received_at: i64) -> Result<EventRow, String> {
    match v {
        Value::Object(map) => event_from_json(map, Some(received_at)),
        _ => Err("an event must be a JSON object".into()),
    }
}

/// Compares the bearer token in constant time: both sides are hashed first,
/// so neither the bytes nor the length of the expected token leak through timing.
pub(crate) fn authorised(headers: &HeaderMap, expected: &str) -> bool {
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
    else {
        return false;
    };
    let a = ring::digest::digest(&ring::digest::SHA256, given.trim().as_bytes());
    let b = ring::digest::digest(&ring::digest::SHA256, expected.as_bytes());
    a.as_ref()
        .iter()
        .zip(b.as_ref())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// `POST /events`.
pub(crate) async fn post(State(st): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let Some(expected) = st.inner.config.events_token.as_deref() else {
        return error(
            StatusCode::FORBIDDEN,
            "POST /events is disabled: set the events token ([tracking].events_token_env)",
        );
    };
    if !authorised(&headers, expected) {
        let mut r = error(
            StatusCode::UNAUTHORIZED,
            "a valid `Authorization: Bearer TOKEN` is required",
        );
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        return r;
    }
    let Ok(bytes) = to_bytes(body, MAX_BODY).await else {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!(
                "the body is larger than {MAX_BODY} bytes; send at most {MAX_EVENTS} events a request"
            ),
        );
    };
    let parsed: Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("invalid JSON: {e}")),
    };
    let items = match parsed {
        Value::Array(a) => a,
        Value::Object(mut o) if o.len() == 1 && o.get("events").is_some_and(Value::is_array) => {
            match o.remove("events") {
                Some(Value::Array(a)) => a,
                _ => Vec::new(),
            }
        }
        o @ Value::Object(_) => vec![o],
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "send one event object, an array of them, or {\"events\": [...]}",
            );
        }
    };
    if items.len() > MAX_EVENTS {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!(
                "{} events in one request; at most {MAX_EVENTS}",
                items.len()
            ),
        );
    }
    let now = now_ms();
    let mut rows = Vec::with_capacity(items.len());
    let mut rejected = Vec::new();
    for (index, item) in items.into_iter().enumerate() {
        match event_row(item, now) {
            Ok(r) => rows.push(r),
            Err(error) => rejected.push(json!({ "index": index, "error": error })),
        }
    }
    let m = &st.inner.metrics;
    m.events_rejected
        .fetch_add(rejected.len() as u64, Ordering::Relaxed);
    if rows.is_empty() {
        let mut body = json!({ "accepted": 0, "rejected": rejected });
        if rejected.is_empty() {
            body["error"] = json!("no events in the request");
        }
        return (StatusCode::BAD_REQUEST, Json(body)).into_response();
    }
    if let Err(e) = insert_events(&st.inner.db, &rows).await {
        return internal_error(e);
    }
    m.events_accepted
        .fetch_add(rows.len() as u64, Ordering::Relaxed);
    if let Err(e) = attribute_events(&st.inner.db, &st.inner.config.goals, &rows).await {
        // The events are stored: a retry without event ids would duplicate
        // them, so the answer stays 200; the next event of the same contacts
        // recomputes their conversions.
        m.attribution_errors.fetch_add(1, Ordering::Relaxed);
        tracing::error!(error = %e, "attributing events to campaign goals failed");
    }
    (
        StatusCode::OK,
        Json(json!({ "accepted": rows.len(), "rejected": rejected })),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_checked_like_import_rows() {
        let r = event_row(
            json!({"external_id": 42, "name": "order_placed", "at": "2026-01-02", "value": "19.5", "event_id": "e1", "properties": {"sku": "A", "x": null}}),
            0,
        )
        .unwrap();
        assert_eq!(r.external_id, "42");
        assert_eq!(r.at, 1_767_312_000_000);
        assert_eq!(r.value, Some(19.5));
        assert_eq!(r.properties.len(), 1);
        assert_eq!(
            event_row(json!({"external_id": "a", "name": "x"}), 7)
                .unwrap()
                .at,
            7
        );
        assert!(
            event_row(json!({"name": "x"}), 0)
                .unwrap_err()
                .contains("external_id")
        );
        assert!(
            event_row(
                json!({"external_id": "a", "name": "x", "at": "yesterday"}),
                0
            )
            .unwrap_err()
            .contains("RFC 3339")
        );
        assert!(
            event_row(json!({"external_id": "a", "name": "x", "value": "ten"}), 0)
                .unwrap_err()
                .contains("value")
        );
        assert!(
            event_row(json!({"external_id": "a", "name": "x", "nmae": 1}), 0)
                .unwrap_err()
                .contains("unknown key `nmae`")
        );
        assert!(event_row(json!([1]), 0).is_err());
    }

    #[test]
    fn the_bearer_token_must_match_exactly() {
        let mut h = HeaderMap::new();
        assert!(!authorised(&h, "s3cret"));
        h.insert(header::AUTHORIZATION, "Bearer s3cret".parse().unwrap());
        assert!(authorised(&h, "s3cret"));
        assert!(!authorised(&h, "s3cre"));
        h.insert(header::AUTHORIZATION, "Basic s3cret".parse().unwrap());
        assert!(!authorised(&h, "s3cret"));
    }
}
