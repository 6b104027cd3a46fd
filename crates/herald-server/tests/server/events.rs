//! `POST /events`: authentication, batches with bad rows, idempotency,
//! limits, and attribution onto messages (SPEC section 5).

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::*;
use crate::on_both_databases;

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .expect("instant")
        .to_rfc3339()
}

async fn post(app: &App, body: &Value) -> (StatusCode, Value) {
    let r = app
        .client
        .post(app.url("/events"))
        .bearer_auth(EVENTS_TOKEN)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    (status, r.json().await.unwrap())
}

async fn events_need_the_bearer_token(app: &App) {
    let ev = json!({"external_id": "c1", "name": "login"});
    let r = app
        .client
        .post(app.url("/events"))
        .json(&ev)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = app
        .client
        .post(app.url("/events"))
        .bearer_auth("events-token-0124")
        .json(&ev)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(app.count("events").await, 0);
    let (status, v) = post(app, &ev).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v, json!({"accepted": 1, "rejected": []}));
    // An event for an unknown contact creates a bare one, as import does.
    let (status, _) = post(
        app,
        &json!({"events": [{"external_id": "new-1", "name": "login"}]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(app.count("contacts WHERE external_id = 'new-1'").await, 1);
    assert_eq!(app.count("events").await, 2);
}

async fn a_batch_with_one_bad_event_keeps_the_good_ones(app: &App) {
    let (status, v) = post(
        app,
        &json!([
            {"external_id": "c1", "name": "login", "at": "2026-01-02T03:04:05Z"},
            {"external_id": "c1", "name": "login", "at": "yesterday"},
            {"external_id": "c2", "name": "app_open", "value": 3},
        ]),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["accepted"], 2);
    assert_eq!(v["rejected"][0]["index"], 1);
    assert!(
        v["rejected"][0]["error"]
            .as_str()
            .unwrap()
            .contains("RFC 3339")
    );
    assert_eq!(app.count("events").await, 2);
    // None valid: 400, with the reasons.
    let (status, v) = post(app, &json!([{"name": "login"}, {"external_id": "c1"}])).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(v["accepted"], 0);
    assert_eq!(v["rejected"].as_array().unwrap().len(), 2);
    let (status, _) = post(app, &json!([])).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let r = app
        .client
        .post(app.url("/events"))
        .bearer_auth(EVENTS_TOKEN)
        .body("{oops")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(app.count("events").await, 2);
}

async fn a_duplicate_event_id_is_stored_and_counted_once(app: &App) {
    let at = rfc3339(app.send_at + DAY);
    let ev = json!({"external_id": "c1", "name": "order_placed", "at": at, "value": 30, "event_id": "order-1"});
    for _ in 0..2 {
        let (status, v) = post(app, &ev).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(v["accepted"], 1);
    }
    // In one batch too.
    let (status, _) = post(app, &json!([ev.clone(), ev])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(app.count("events WHERE event_id = 'order-1'").await, 1);
    assert_eq!(
        app.float("SELECT revenue FROM messages WHERE id = 1").await,
        30.0
    );
}

async fn oversized_requests_are_refused(app: &App) {
    let big = "x".repeat(herald_server::MAX_BODY);
    let r = app
        .client
        .post(app.url("/events"))
        .bearer_auth(EVENTS_TOKEN)
        .body(format!(r#"{{"external_id":"c1","name":"{big}"}}"#))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let many: Vec<Value> = (0..=herald_server::MAX_EVENTS)
        .map(|i| json!({"external_id": format!("bulk-{i}"), "name": "login"}))
        .collect();
    let (status, v) = post(app, &Value::Array(many)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(v["error"].as_str().unwrap().contains("1000"));
    assert_eq!(app.count("events").await, 0);
    // Exactly the limit is fine.
    let many: Vec<Value> = (0..herald_server::MAX_EVENTS)
        .map(|i| json!({"external_id": format!("bulk-{}", i % 50), "name": "login"}))
        .collect();
    let (status, v) = post(app, &Value::Array(many)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["accepted"], 1000);
}

async fn goal_events_convert_every_message_in_their_window(app: &App) {
    let s = app.send_at;
    let (status, v) = post(
        app,
        &json!([
            // The held-out contact buys twice within the window: one conversion, revenue summed.
            {"external_id": "c3", "name": "order_placed", "at": rfc3339(s + DAY), "value": 20},
            {"external_id": "c3", "name": "order_placed", "at": rfc3339(s + 2 * DAY), "value": 5.5},
            // The suppressed contact buys too: intention to treat.
            {"external_id": "c4", "name": "order_placed", "at": rfc3339(s + 3 * DAY), "value": 1},
            // Exactly at send_at is before the window; after within is past it.
            {"external_id": "c5", "name": "order_placed", "at": rfc3339(s), "value": 9},
            {"external_id": "c6", "name": "order_placed", "at": rfc3339(s + 3 * DAY + 1000), "value": 9},
            // Ann converts on winback; the newsletter has no goal.
            {"external_id": "c1", "name": "order_placed", "at": rfc3339(s + 3_600_000)},
            {"external_id": "c1", "name": "app_open", "at": rfc3339(s + 60_000)},
            {"external_id": "c1", "name": "app_open", "at": rfc3339(s + 120_000)},
        ]),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(app.msg_int(M_HELD, "converted_at").await, Some(s + DAY));
    assert_eq!(
        app.float("SELECT revenue FROM messages WHERE id = 3").await,
        25.5
    );
    assert_eq!(app.msg_int(M_SUPP, "converted_at").await, Some(s + 3 * DAY));
    assert_eq!(app.msg_int(M_FRESH, "converted_at").await, None);
    assert_eq!(app.msg_int(M_CAT, "converted_at").await, None);
    assert_eq!(
        app.msg_int(M_EMAIL, "converted_at").await,
        Some(s + 3_600_000)
    );
    assert_eq!(
        app.float("SELECT revenue FROM messages WHERE id = 1").await,
        0.0
    );
    assert_eq!(app.msg_int(M_NEWS, "converted_at").await, None);
    let secondary: Value = serde_json::from_str(
        &app.text("SELECT CAST(secondary AS TEXT) FROM messages WHERE id = 1")
            .await
            .expect("secondary"),
    )
    .unwrap();
    assert_eq!(secondary["app_open"]["at"], s + 60_000);
    assert_eq!(secondary["app_open"]["count"], 2);
    assert_eq!(
        app.text("SELECT CAST(secondary AS TEXT) FROM messages WHERE id = 3")
            .await,
        None
    );
    // A later purchase in the window adds revenue, not a second conversion.
    let (status, _) = post(app, &json!({"external_id": "c3", "name": "order_placed", "at": rfc3339(s + 2 * DAY + 5), "value": 4.5})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(app.msg_int(M_HELD, "converted_at").await, Some(s + DAY));
    assert_eq!(
        app.float("SELECT revenue FROM messages WHERE id = 3").await,
        30.0
    );
}

on_both_databases!(
    events_need_the_bearer_token,
    a_batch_with_one_bad_event_keeps_the_good_ones,
    a_duplicate_event_id_is_stored_and_counted_once,
    oversized_requests_are_refused,
    goal_events_convert_every_message_in_their_window,
);
