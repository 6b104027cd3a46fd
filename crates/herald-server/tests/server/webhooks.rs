//! Twilio status callbacks and inbound SMS, email provider webhooks, and a
//! DSN bounce and an ARF complaint over SMTP.

use herald_domain::token::TokenKind;
use reqwest::StatusCode;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::common::*;
use crate::on_both_databases;

fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn form(pairs: &[(String, String)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

/// Posts `pairs` to `path` as Twilio would, signed with `auth_token`.
async fn twilio_post(
    app: &App,
    path: &str,
    pairs: &[(&str, &str)],
    auth_token: &str,
) -> reqwest::Response {
    let p = params(pairs);
    let sig = herald_server::twilio_signature(auth_token, &app.url(path), &p);
    app.client
        .post(app.url(path))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-twilio-signature", sig)
        .body(form(&p))
        .send()
        .await
        .unwrap()
}

async fn twilio_status_callbacks_move_the_message(app: &App) {
    let path = format!(
        "/webhooks/twilio/status?m={}",
        app.token(TokenKind::Callback, M_SMS)
    );
    // A wrong signature is refused and changes nothing.
    let r = twilio_post(
        app,
        &path,
        &[("MessageSid", "SM1"), ("MessageStatus", "delivered")],
        "not-the-token",
    )
    .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(app.status(M_SMS).await, "sent");
    let r = twilio_post(
        app,
        &path,
        &[("MessageSid", "SM1"), ("MessageStatus", "delivered")],
        TWILIO_TOKEN,
    )
    .await;
    assert!(r.status().is_success(), "{}", r.status());
    assert_eq!(app.status(M_SMS).await, "delivered");
    assert!(app.msg_int(M_SMS, "delivered_at").await.is_some());
    assert_eq!(
        app.text("SELECT provider_id FROM messages WHERE id = 2")
            .await
            .as_deref(),
        Some("SM1")
    );
    // A late `sent` never moves it back.
    let r = twilio_post(
        app,
        &path,
        &[("MessageSid", "SM1"), ("MessageStatus", "sent")],
        TWILIO_TOKEN,
    )
    .await;
    assert!(r.status().is_success());
    assert_eq!(app.status(M_SMS).await, "delivered");
    assert_eq!(
        app.count("message_events WHERE kind = 'sms_status' AND message_id = 2")
            .await,
        2
    );
}

async fn undelivered_and_failed_sms(app: &App) {
    // The SMS message (2) bounces on an unknown destination: the number is suppressed.
    let path = format!(
        "/webhooks/twilio/status?m={}",
        app.token(TokenKind::Callback, M_SMS)
    );
    let r = twilio_post(
        app,
        &path,
        &[
            ("MessageSid", "SM2"),
            ("MessageStatus", "undelivered"),
            ("ErrorCode", "30005"),
        ],
        TWILIO_TOKEN,
    )
    .await;
    assert!(r.status().is_success());
    assert_eq!(app.status(M_SMS).await, "bounced");
    assert!(app.msg_int(M_SMS, "bounced_at").await.is_some());
    assert_eq!(
        app.text("SELECT reason FROM messages WHERE id = 2")
            .await
            .as_deref(),
        Some("twilio error 30005")
    );
    assert_eq!(
        app.count(&format!(
            "suppressions WHERE channel = 'sms' AND address = '{SMS_PHONE}'"
        ))
        .await,
        1
    );
    // `failed` of a message still `sent` (6 is an email, but the mapping is the channel's receipt).
    let path = format!(
        "/webhooks/twilio/status?m={}",
        app.token(TokenKind::Callback, M_CAT)
    );
    let r = twilio_post(
        app,
        &path,
        &[("MessageStatus", "failed"), ("ErrorCode", "30001")],
        TWILIO_TOKEN,
    )
    .await;
    assert!(r.status().is_success());
    assert_eq!(app.status(M_CAT).await, "failed");
}

/// Twilio 30034 (unregistered A2P 10DLC) and 30007 (carrier filtering) in
/// a status callback are the sender's account's fault: the message goes
/// back to `planned` (no bounce, no suppression, its attempt not counted)
/// and the sms route is blocked for the lanes and `herald status`.
async fn an_account_fault_in_a_status_callback_blocks_the_route(app: &App) {
    let path = format!(
        "/webhooks/twilio/status?m={}",
        app.token(TokenKind::Callback, M_SMS)
    );
    let attempts = app.msg_int(M_SMS, "attempts").await.unwrap_or(0);
    let r = twilio_post(
        app,
        &path,
        &[
            ("MessageSid", "SM3"),
            ("MessageStatus", "undelivered"),
            ("ErrorCode", "30034"),
        ],
        TWILIO_TOKEN,
    )
    .await;
    assert!(r.status().is_success(), "{}", r.status());
    assert_eq!(app.status(M_SMS).await, "planned");
    assert_eq!(
        app.msg_int(M_SMS, "attempts").await.unwrap_or(0),
        (attempts - 1).max(0)
    );
    assert!(app.msg_int(M_SMS, "sent_at").await.is_none());
    assert!(app.msg_int(M_SMS, "bounced_at").await.is_none());
    assert_eq!(app.count("suppressions WHERE channel = 'sms'").await, 0);
    let reason = app
        .text("SELECT reason FROM route_blocks WHERE route = 'sms' AND owner = 'status callback'")
        .await
        .expect("the sms route is blocked");
    assert!(
        reason.contains("A2P 10DLC") && reason.contains("30034"),
        "{reason}"
    );
    // 30007 on a message already planned again changes nothing more; the
    // block stays the first one's.
    let r = twilio_post(
        app,
        &path,
        &[("MessageStatus", "failed"), ("ErrorCode", "30007")],
        TWILIO_TOKEN,
    )
    .await;
    assert!(r.status().is_success());
    assert_eq!(app.status(M_SMS).await, "planned");
    assert_eq!(app.count("route_blocks").await, 1);
}

async fn every_opt_out_keyword_suppresses_the_number(app: &App) {
    let path = "/webhooks/twilio/inbound";
    let words: Vec<String> = herald_server::STANDARD_OPT_OUT_KEYWORDS
        .iter()
        .map(|w| w.to_string())
        .chain(EXTRA_KEYWORDS.iter().map(|w| w.to_string()))
        .collect();
    let sms_sup = |n: &str| {
        format!("suppressions WHERE channel = 'sms' AND address = '{n}' AND reason = 'opt_out'")
    };
    for (i, word) in words.iter().enumerate() {
        let number = format!("+1500555{:04}", 1000 + i);
        // Case and surrounding punctuation do not matter.
        let body = format!(" {}! ", word.to_lowercase());
        let r = twilio_post(
            app,
            path,
            &[("From", &number), ("To", "+15005550006"), ("Body", &body)],
            TWILIO_TOKEN,
        )
        .await;
        assert_eq!(r.status(), StatusCode::OK, "{word}");
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/xml")
        );
        assert_eq!(
            app.count(&sms_sup(&number)).await,
            1,
            "{word} did not opt out"
        );
    }
    // A sentence that merely contains a keyword is not an opt-out.
    let r = twilio_post(
        app,
        path,
        &[("From", SMS_PHONE), ("Body", "please don't stop")],
        TWILIO_TOKEN,
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(app.count(&sms_sup(SMS_PHONE)).await, 0);
    // STOP, then each re-subscribe word lifts it.
    for word in herald_server::OPT_IN_KEYWORDS {
        twilio_post(
            app,
            path,
            &[("From", SMS_PHONE), ("Body", "STOP")],
            TWILIO_TOKEN,
        )
        .await;
        assert_eq!(app.count(&sms_sup(SMS_PHONE)).await, 1);
        let r = twilio_post(
            app,
            path,
            &[("From", SMS_PHONE), ("Body", word)],
            TWILIO_TOKEN,
        )
        .await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(
            app.count(&sms_sup(SMS_PHONE)).await,
            0,
            "{word} did not opt back in"
        );
    }
    let r = twilio_post(
        app,
        path,
        &[("From", SMS_PHONE), ("Body", "help")],
        TWILIO_TOKEN,
    )
    .await;
    let xml = r.text().await.unwrap();
    assert!(
        xml.contains("<Message>") && xml.contains("Reply STOP"),
        "{xml}"
    );
    // Unsigned inbound messages are refused: anyone could opt anyone out otherwise.
    let r = app
        .client
        .post(app.url(path))
        .body(form(&params(&[("From", "+15005559999"), ("Body", "STOP")])))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(app.count(&sms_sup("+15005559999")).await, 0);
}

async fn email_provider_webhooks(app: &App) {
    let t_cat = app.token(TokenKind::Callback, M_CAT);
    let body = format!(
        r#"[{{"email":"cat@example.com","event":"bounce","type":"bounce","status":"5.1.1","reason":"550 unknown user","herald_token":"{t_cat}"}},
            {{"email":"x@example.com","event":"processed"}}]"#
    );
    let r = app
        .client
        .post(app.url("/webhooks/email/sendgrid"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["applied"], 1);
    assert_eq!(app.status(M_CAT).await, "bounced");
    assert_eq!(
        app.count("suppressions WHERE channel = 'email' AND address = 'cat@example.com' AND reason = 'hard_bounce'").await,
        1
    );
    // SES through SNS: without [tracking] sns_topic_arns, refused (signed
    // SNS messages are tested in `signed`), and nothing changes.
    let before = app.footprint().await;
    let t_ann = app.token(TokenKind::Callback, M_EMAIL);
    let inner = serde_json::json!({
        "notificationType": "Complaint",
        "complaint": {"complaintFeedbackType": "abuse", "complainedRecipients": [{"emailAddress": "ann@example.com"}]},
        "mail": {"source": format!("bounce+{t_ann}@{BOUNCE_DOMAIN}"), "destination": ["ann@example.com"]}
    });
    let sns =
        serde_json::json!({"Type": "Notification", "MessageId": "1", "Message": inner.to_string()});
    let r = app
        .client
        .post(app.url("/webhooks/email/ses"))
        .json(&sns)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let soft = serde_json::json!({"eventType": "Bounce", "bounce": {"bounceType": "Transient"}, "mail": {"tags": {"herald_token": [app.token(TokenKind::Callback, M_FRESH)]}}});
    let r = app
        .client
        .post(app.url("/webhooks/email/ses"))
        .json(&soft)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(app.footprint().await, before);
    let r = app
        .client
        .post(app.url("/webhooks/email/mailchimp"))
        .body("[]")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = app
        .client
        .post(app.url("/webhooks/email/sendgrid"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}

/// One SMTP exchange: sends `line` (unless empty) and returns the complete reply.
async fn smtp_say(
    r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
    w: &mut tokio::net::tcp::OwnedWriteHalf,
    line: &str,
) -> String {
    if !line.is_empty() {
        w.write_all(line.as_bytes()).await.unwrap();
        w.write_all(b"\r\n").await.unwrap();
    }
    let mut reply = String::new();
    loop {
        let mut l = String::new();
        r.read_line(&mut l).await.unwrap();
        reply.push_str(&l);
        if l.len() < 4 || l.as_bytes()[3] != b'-' {
            return reply;
        }
    }
}

const DSN: &str = "From: MAILER-DAEMON@mx.example.org\r\nTo: RCPT\r\nSubject: Undelivered Mail Returned to Sender\r\nMIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"4A3C.1700000000/mx.example.org\"\r\n\r\n--4A3C.1700000000/mx.example.org\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n.leading dot line\r\n\r\n--4A3C.1700000000/mx.example.org\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.org\r\n\r\nFinal-Recipient: rfc822; cy@example.com\r\nAction: failed\r\nStatus: 5.1.1\r\nDiagnostic-Code: smtp; 550 5.1.1 user unknown\r\n\r\n--4A3C.1700000000/mx.example.org--\r\n";

async fn a_dsn_bounce_over_smtp(app: &App) {
    let sock = TcpStream::connect(app.smtp).await.unwrap();
    let (r, mut w) = sock.into_split();
    let mut r = BufReader::new(r);
    assert!(smtp_say(&mut r, &mut w, "").await.starts_with("220"));
    assert!(
        smtp_say(&mut r, &mut w, "EHLO mx.example.org")
            .await
            .starts_with("250")
    );
    assert!(
        smtp_say(&mut r, &mut w, "MAIL FROM:<>")
            .await
            .starts_with("250")
    );
    // Forged, wrong-kind and foreign-domain recipients are refused.
    let mut forged = app.token(TokenKind::Callback, M_FRESH);
    forged.pop();
    for bad in [
        format!("bounce+{forged}@{BOUNCE_DOMAIN}"),
        format!(
            "bounce+{}@{BOUNCE_DOMAIN}",
            app.token(TokenKind::Open, M_FRESH)
        ),
        format!(
            "bounce+{}@other.example.com",
            app.token(TokenKind::Callback, M_FRESH)
        ),
        "ann@example.com".to_string(),
    ] {
        let reply = smtp_say(&mut r, &mut w, &format!("RCPT TO:<{bad}>")).await;
        assert!(reply.starts_with("550"), "{bad}: {reply}");
    }
    let rcpt = format!(
        "bounce+{}@{BOUNCE_DOMAIN}",
        app.token(TokenKind::Callback, M_FRESH)
    );
    assert!(
        smtp_say(&mut r, &mut w, &format!("RCPT TO:<{rcpt}>"))
            .await
            .starts_with("250")
    );
    assert!(smtp_say(&mut r, &mut w, "DATA").await.starts_with("354"));
    // Dot-stuffing: a line starting with a dot is sent doubled.
    let data = DSN
        .replace("RCPT", &rcpt)
        .replace("\r\n.leading", "\r\n..leading");
    w.write_all(data.as_bytes()).await.unwrap();
    let reply = smtp_say(&mut r, &mut w, ".").await;
    assert!(reply.starts_with("250"), "{reply}");
    assert!(smtp_say(&mut r, &mut w, "QUIT").await.starts_with("221"));
    assert_eq!(app.status(M_FRESH).await, "bounced");
    assert!(app.msg_int(M_FRESH, "bounced_at").await.is_some());
    assert_eq!(
        app.count("suppressions WHERE channel = 'email' AND address = 'bob@example.com' AND reason = 'hard_bounce' AND source = 'smtp'").await,
        1
    );
    assert_eq!(
        app.count("message_events WHERE kind = 'hard_bounce' AND message_id = 5")
            .await,
        1
    );
    // Another message of the same contact's address is untouched, apart from the suppression.
    assert_eq!(app.status(M_EMAIL).await, "delivered");
}

async fn an_arf_complaint_over_smtp(app: &App) {
    let sock = TcpStream::connect(app.smtp).await.unwrap();
    let (r, mut w) = sock.into_split();
    let mut r = BufReader::new(r);
    smtp_say(&mut r, &mut w, "").await;
    smtp_say(&mut r, &mut w, "HELO fbl.example.net").await;
    smtp_say(&mut r, &mut w, "MAIL FROM:<fbl@example.net>").await;
    let rcpt = format!(
        "bounce+{}@{BOUNCE_DOMAIN}",
        app.token(TokenKind::Callback, M_EMAIL)
    );
    assert!(
        smtp_say(&mut r, &mut w, &format!("RCPT TO:<{rcpt}>"))
            .await
            .starts_with("250")
    );
    smtp_say(&mut r, &mut w, "DATA").await;
    let arf = "Content-Type: multipart/report; report-type=feedback-report; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nabuse report\r\n--b\r\nContent-Type: message/feedback-report\r\n\r\nFeedback-Type: abuse\r\nUser-Agent: fbl/1\r\nVersion: 1\r\n\r\n--b--\r\n";
    w.write_all(arf.as_bytes()).await.unwrap();
    assert!(smtp_say(&mut r, &mut w, ".").await.starts_with("250"));
    smtp_say(&mut r, &mut w, "QUIT").await;
    assert!(app.msg_int(M_EMAIL, "complained_at").await.is_some());
    assert_eq!(
        app.count("suppressions WHERE channel = 'email' AND address = 'ann@example.com' AND reason = 'complaint'").await,
        1
    );
}

on_both_databases!(
    twilio_status_callbacks_move_the_message,
    undelivered_and_failed_sms,
    an_account_fault_in_a_status_callback_blocks_the_route,
    every_opt_out_keyword_suppresses_the_number,
    email_provider_webhooks,
    a_dsn_bounce_over_smtp,
    an_arf_complaint_over_smtp,
);
