//! Provider webhooks as SendGrid and SES document them find herald's message by
//! what herald put in it (the token in SendGrid `unique_args` and SES message tags,
//! the Message-ID, SES's `250 Ok <id>` stored as provider id) and suppress the right
//! address; an event naming no herald message changes nothing.

use herald_domain::token::TokenKind;
use reqwest::StatusCode;
use sea_orm::ConnectionTrait;
use serde_json::{Value, json};

use crate::common::{App, M_CAT, M_EMAIL, M_FRESH};
use crate::on_both_databases;

/// SES's id of M_CAT, as its `250 Ok <id>` reply gave it.
const SES_ID: &str = "0100018c2a6b1f4e-6a2b3c4d-1234-4a5b-9c8d-0123456789ab-000000";

/// herald's Message-ID for `id`: random part, callback token, From domain.
fn herald_message_id(app: &App, id: i64) -> String {
    format!(
        "<5f1e0c9a2b7d4e3f8a6c1b0d.{}@example.com>",
        app.token(TokenKind::Callback, id)
    )
}

async fn post(app: &App, provider: &str, body: &Value) -> Value {
    let r = app
        .client
        .post(app.url(&format!("/webhooks/email/{provider}")))
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

async fn suppressed(app: &App, address: &str, reason: &str) -> i64 {
    app.count(&format!(
        "suppressions WHERE channel = 'email' AND address = '{address}' AND reason = '{reason}'"
    ))
    .await
}

/// SendGrid's documented bounce, dropped and spamreport events: the first carries
/// herald's token as a unique arg (SendGrid puts unique args at the event's top
/// level), the second only the `smtp-id` herald's Message-ID became, the third the
/// token again; then the documented example itself, which names no herald message.
async fn sendgrid_events_as_documented(app: &App) {
    let foreign = json!([{
        "email": "example@test.com",
        "timestamp": 1513299569,
        "smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-555>",
        "event": "bounce",
        "category": "cat facts",
        "sg_event_id": "6g4ZI7SA-xmRDv57GoPIPw==",
        "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0",
        "reason": "500 unknown recipient",
        "status": "5.0.0",
        "type": "bounce"
    }]);
    app.flush().await;
    let before = app.footprint().await;
    let v = post(app, "sendgrid", &foreign).await;
    assert_eq!(v, json!({"applied": 0, "ignored": 1}));
    app.flush().await;
    assert_eq!(
        app.footprint().await,
        before,
        "a foreign event changed something"
    );

    let events = json!([
        {
            "email": "cat@example.com",
            "timestamp": 1513299569,
            "smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-555>",
            "event": "bounce",
            "category": "cat facts",
            "sg_event_id": "6g4ZI7SA-xmRDv57GoPIPw==",
            "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0",
            "reason": "500 unknown recipient",
            "status": "5.0.0",
            "type": "bounce",
            "herald_token": app.token(TokenKind::Callback, M_CAT)
        },
        {
            "email": "bob@example.com",
            "timestamp": 1513299569,
            "smtp-id": herald_message_id(app, M_FRESH),
            "event": "dropped",
            "category": "cat facts",
            "sg_event_id": "zmzJhfJgAfUSOW80yEbPyw==",
            "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0",
            "reason": "Bounced Address",
            "status": "5.0.0"
        },
        {
            "email": "ann@example.com",
            "timestamp": 1513299569,
            "smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-555>",
            "event": "spamreport",
            "category": "cat facts",
            "sg_event_id": "37nvH5QBz858KGVYCM4uOA==",
            "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0",
            "herald_token": app.token(TokenKind::Callback, M_EMAIL)
        }
    ]);
    let v = post(app, "sendgrid", &events).await;
    assert_eq!(v, json!({"applied": 3, "ignored": 0}));
    assert_eq!(suppressed(app, "cat@example.com", "hard_bounce").await, 1);
    assert_eq!(suppressed(app, "bob@example.com", "hard_bounce").await, 1);
    assert_eq!(suppressed(app, "ann@example.com", "complaint").await, 1);
    assert_eq!(app.status(M_CAT).await, "bounced");
    // SendGrid's ids are kept with the event.
    let detail = app
        .text(&format!(
            "SELECT CAST(detail AS TEXT) FROM message_events WHERE message_id = {M_CAT} AND kind = 'hard_bounce'"
        ))
        .await
        .unwrap();
    assert!(detail.contains("ismtpd-555"), "{detail}");
    assert!(detail.contains("filter0001"), "{detail}");
}

/// The `mail` object SES documents, for a message herald did not send.
fn ses_mail() -> Value {
    json!({
        "timestamp": "2016-01-27T14:59:38.237Z",
        "source": "john@example.com",
        "sourceArn": "arn:aws:ses:us-east-1:888888888888:identity/example.com",
        "sourceIp": "127.0.3.0",
        "sendingAccountId": "123456789012",
        "callerIdentity": "IAM_user_or_role_name",
        "messageId": "00000138111222aa-33322211-cccc-cccc-cccc-ddddaaaa0680-000000",
        "destination": ["jane@example.com"],
        "headersTruncated": false,
        "headers": [
            {"name": "From", "value": "\"John Doe\" <john@example.com>"},
            {"name": "To", "value": "\"Jane Doe\" <jane@example.com>"},
            {"name": "Message-ID", "value": "custom-message-ID"},
            {"name": "Subject", "value": "Hello"}
        ],
        "commonHeaders": {
            "from": ["John Doe <john@example.com>"],
            "date": "Wed, 27 Jan 2016 14:05:45 +0000",
            "to": ["Jane Doe <jane@example.com>"],
            "messageId": "custom-message-ID",
            "subject": "Hello"
        }
    })
}

fn ses_bounce(address: &str, mail: Value) -> Value {
    json!({
        "notificationType": "Bounce",
        "bounce": {
            "bounceType": "Permanent",
            "reportingMTA": "dns; email.example.com",
            "bouncedRecipients": [{
                "emailAddress": address,
                "status": "5.1.1",
                "action": "failed",
                "diagnosticCode": format!("smtp; 550 5.1.1 <{address}>... User")
            }],
            "bounceSubType": "General",
            "timestamp": "2016-01-27T14:59:38.237Z",
            "feedbackId": "00000138111222aa-33322211-cccc-cccc-cccc-ddddaaaa068a-000000",
            "remoteMtaIp": "127.0.2.0"
        },
        "mail": mail
    })
}

fn ses_complaint(address: &str, mail: Value) -> Value {
    json!({
        "notificationType": "Complaint",
        "complaint": {
            "userAgent": "AnyCompany Feedback Loop (V0.01)",
            "complainedRecipients": [{"emailAddress": address}],
            "complaintFeedbackType": "abuse",
            "arrivalDate": "2016-01-27T14:59:38.237Z",
            "timestamp": "2016-01-27T14:59:38.237Z",
            "feedbackId": "000001378603177f-18c07c78-fa81-4a58-9dd1-fedc3cb8f49a-000000"
        },
        "mail": mail
    })
}

fn sns(message: &Value) -> Value {
    // Signed as SNS signs it, from a topic herald accepts: unsigned SES
    // events are refused (see `signed.rs`).
    crate::signed::sign_sns(
        json!({
            "Type": "Notification",
            "MessageId": "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324",
            "TopicArn": crate::signed::TOPIC,
            "Message": message.to_string(),
            "Timestamp": "2016-01-27T14:59:38.237Z",
        }),
        "2",
        crate::signed::CERT_URL,
    )
}

/// SES's documented Bounce and Complaint notifications: one names M_CAT only by SES's
/// own message id (herald stored it from the `250 Ok <id>` reply), one names M_FRESH
/// only by herald's Message-ID in `commonHeaders`, one names ann's message by the tag
/// herald set; the documented example itself names nothing of herald's.
async fn ses_events_as_documented(app: &App) {
    herald_storage::test_support::conn(&app.db)
        .execute_unprepared(&format!(
            "UPDATE messages SET provider_id = '{SES_ID}' WHERE id = {M_CAT}"
        ))
        .await
        .unwrap();
    app.flush().await;
    let before = app.footprint().await;
    let v = post(
        app,
        "ses",
        &sns(&ses_bounce("jane@example.com", ses_mail())),
    )
    .await;
    assert_eq!(v, json!({"applied": 0, "ignored": 1}));
    let v = post(
        app,
        "ses",
        &sns(&ses_complaint("jane@example.com", ses_mail())),
    )
    .await;
    assert_eq!(v, json!({"applied": 0, "ignored": 1}));
    app.flush().await;
    assert_eq!(
        app.footprint().await,
        before,
        "a foreign event changed something"
    );

    let mut by_ses_id = ses_mail();
    by_ses_id["messageId"] = json!(SES_ID);
    let v = post(app, "ses", &sns(&ses_bounce("cat@example.com", by_ses_id))).await;
    assert_eq!(v, json!({"applied": 1, "ignored": 0}));
    assert_eq!(suppressed(app, "cat@example.com", "hard_bounce").await, 1);
    assert_eq!(app.status(M_CAT).await, "bounced");

    let mut by_message_id = ses_mail();
    by_message_id["commonHeaders"]["messageId"] = json!(herald_message_id(app, M_FRESH));
    let v = post(
        app,
        "ses",
        &sns(&ses_complaint("bob@example.com", by_message_id)),
    )
    .await;
    assert_eq!(v, json!({"applied": 1, "ignored": 0}));
    assert_eq!(suppressed(app, "bob@example.com", "complaint").await, 1);

    // Event publishing through a configuration set: `eventType`, and herald's tag.
    let mut tagged = ses_mail();
    tagged["tags"] = json!({
        "ses:configuration-set": ["herald-events"],
        "herald_token": [app.token(TokenKind::Callback, M_EMAIL)]
    });
    let mut event = ses_complaint("ann@example.com", tagged);
    event["eventType"] = event["notificationType"].take();
    let v = post(app, "ses", &sns(&event)).await;
    assert_eq!(v, json!({"applied": 1, "ignored": 0}));
    assert_eq!(suppressed(app, "ann@example.com", "complaint").await, 1);
    // Nobody else was suppressed.
    assert_eq!(app.count("suppressions").await, 3);
}

on_both_databases!(sendgrid_events_as_documented);

/// The SES test on a server that accepts SNS from the test CA's certificates.
mod ses_events_as_documented {
    use herald_tests::Backend;

    async fn run(backend: Backend) {
        let (root, fetcher) = crate::signed::pki();
        if let Some(app) = crate::signed::start(backend, fetcher, root).await {
            super::ses_events_as_documented(&app).await;
            app.stop().await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        run(Backend::Sqlite).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        run(Backend::Postgres).await;
    }
}
