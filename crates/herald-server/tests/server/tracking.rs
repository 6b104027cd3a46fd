//! Opens, clicks, short links, unsubscribes, and the service endpoints.

use herald_domain::token::TokenKind;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, LOCATION, USER_AGENT};

use crate::common::*;
use crate::on_both_databases;

const BROWSER: &str =
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_0) AppleWebKit/605.1.15 (KHTML, like Gecko)";

async fn opens_answer_a_gif_and_are_counted(app: &App) {
    let url = app.url(&format!("/o/{}", app.token(TokenKind::Open, M_EMAIL)));
    let r = app
        .client
        .get(&url)
        .header(USER_AGENT, BROWSER)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()[CONTENT_TYPE], "image/gif");
    assert!(
        r.headers()["cache-control"]
            .to_str()
            .unwrap()
            .contains("no-store")
    );
    assert_eq!(&r.bytes().await.unwrap()[..], &herald_server::PIXEL_GIF[..]);
    // A second open, by a security scanner; a HEAD records nothing.
    let r = app
        .client
        .get(&url)
        .header(USER_AGENT, "Mozilla/5.0 (compatible; Barracuda)")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = app
        .client
        .head(&url)
        .header(USER_AGENT, BROWSER)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // An open moments after delivery is a machine's, whatever its user agent.
    let fresh = app.url(&format!("/o/{}", app.token(TokenKind::Open, M_FRESH)));
    let r = app
        .client
        .get(&fresh)
        .header(USER_AGENT, BROWSER)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    app.flush().await;
    assert_eq!(app.msg_int(M_EMAIL, "open_count").await, Some(2));
    assert!(app.msg_int(M_EMAIL, "opened_at").await.is_some());
    assert!(app.msg_int(M_EMAIL, "machine_opened_at").await.is_some());
    assert_eq!(app.msg_int(M_FRESH, "open_count").await, Some(1));
    assert_eq!(app.msg_int(M_FRESH, "opened_at").await, None);
    assert!(app.msg_int(M_FRESH, "machine_opened_at").await.is_some());
}

async fn clicks_redirect_only_to_the_messages_own_links(app: &App) {
    let r = app
        .client
        .get(app.url(&format!("/c/{}", app.click_token(M_EMAIL, 1))))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FOUND);
    assert_eq!(r.headers()[LOCATION], "https://shop.example.com/b?x=1");
    assert_eq!(r.headers()["referrer-policy"], "no-referrer");
    // A genuine click token for a link the message never had: no redirect, nothing recorded.
    let r = app
        .client
        .get(app.url(&format!("/c/{}", app.click_token(M_EMAIL, 7))))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert!(r.headers().get(LOCATION).is_none());
    // Message 7 has no links at all.
    let r = app
        .client
        .get(app.url(&format!("/c/{}", app.click_token(M_NEWS, 0))))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    app.flush().await;
    assert_eq!(app.msg_int(M_EMAIL, "click_count").await, Some(1));
    assert!(app.msg_int(M_EMAIL, "clicked_at").await.is_some());
    assert_eq!(app.msg_int(M_NEWS, "click_count").await, Some(0));
    assert_eq!(
        app.count("message_events WHERE kind = 'click' AND message_id = 1")
            .await,
        1
    );
}

async fn link_tokens_redirect_to_the_url_they_carry(app: &App) {
    let url = "https://shop.example.com/new?utm_source=herald&x=1";
    let token = app.link_token(M_EMAIL, 4, url);
    let r = app
        .client
        .get(app.url(&format!("/c/{token}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FOUND);
    assert_eq!(r.headers()[LOCATION], url);
    assert_eq!(r.headers()["referrer-policy"], "no-referrer");
    // The same token with its last character changed: refused, nothing recorded.
    let mut altered = token.clone();
    let last = altered.pop().unwrap();
    altered.push(if last == 'A' { 'B' } else { 'A' });
    // Signed by another secret: refused.
    let other = herald_domain::token::TokenSigner::new(b"not-the-secret").sign_link(
        M_EMAIL,
        4,
        "https://evil.example.com/",
    );
    // A genuine token that names no web address (herald never signs one): refused.
    let script = app.link_token(M_EMAIL, 5, "javascript:alert(1)");
    for bad in [altered, other, script] {
        let r = app
            .client
            .get(app.url(&format!("/c/{bad}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{bad}");
        assert!(r.headers().get(LOCATION).is_none());
    }
    app.flush().await;
    assert_eq!(app.msg_int(M_EMAIL, "click_count").await, Some(1));
    assert_eq!(
        app.count(&format!(
            "message_events WHERE kind = 'click' AND message_id = {M_EMAIL}"
        ))
        .await,
        1
    );
}

async fn short_links_redirect_by_code(app: &App) {
    let r = app
        .client
        .get(app.url(&format!("/s/{SHORT_CODE}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FOUND);
    assert_eq!(r.headers()[LOCATION], "https://shop.example.com/s");
    for bad in ["Ab3dE6gX", "short", "Ab3dE6gH9", "Ab3dE6g-"] {
        let r = app
            .client
            .get(app.url(&format!("/s/{bad}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{bad}");
    }
    app.flush().await;
    assert_eq!(app.msg_int(M_SMS, "click_count").await, Some(1));
}

/// SPEC section 4: one-click ends the topic of a message that has one.
async fn one_click_unsubscribe_ends_the_topic(app: &App) {
    let url = app.url(&format!(
        "/u/{}",
        app.token(TokenKind::Unsubscribe, M_EMAIL)
    ));
    let r = app
        .client
        .post(&url)
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body("List-Unsubscribe=One-Click")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers().get(LOCATION).is_none());
    assert_eq!(
        app.count("topic_subscriptions WHERE contact_id = 1 AND topic = 'promotions' AND subscribed = FALSE").await,
        1
    );
    // Not the channel: the newsletter (no topic) and receipts still reach ann.
    assert_eq!(app.count("suppressions").await, 0);
    assert!(app.msg_int(M_EMAIL, "unsubscribed_at").await.is_some());
}

/// SPEC section 4: one-click on a message without a topic ends marketing on
/// its channel, as a suppression that transactional messages pass.
async fn one_click_unsubscribe_suppresses_the_channel(app: &App) {
    let url = app.url(&format!("/u/{}", app.token(TokenKind::Unsubscribe, M_NEWS)));
    // The page shows choices and changes nothing.
    let r = app.client.get(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let page = r.text().await.unwrap();
    assert!(page.contains("Stop all marketing emails"), "{page}");
    assert!(!page.contains("value=\"topic\""), "{page}");
    let topic_page = app
        .client
        .get(app.url(&format!(
            "/u/{}",
            app.token(TokenKind::Unsubscribe, M_EMAIL)
        )))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(topic_page.contains("promotions"), "{topic_page}");
    assert!(
        topic_page.contains("Stop all marketing emails"),
        "{topic_page}"
    );
    assert!(page.contains("a***@example.com"), "{page}");
    assert!(!page.contains("ann@example.com"));
    assert_eq!(app.count("suppressions").await, 0);
    // RFC 8058: the mailbox provider's POST, answered 200 without a redirect.
    let r = app
        .client
        .post(&url)
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body("List-Unsubscribe=One-Click")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers().get(LOCATION).is_none());
    assert_eq!(
        app.count("suppressions WHERE channel = 'email' AND address = 'ann@example.com' AND contact_id = 1 AND topic IS NULL AND reason = 'unsubscribe'").await,
        1
    );
    assert!(app.msg_int(M_NEWS, "unsubscribed_at").await.is_some());
    // Twice is once.
    let r = app
        .client
        .post(&url)
        .body("List-Unsubscribe=One-Click")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(app.count("suppressions").await, 1);
}

async fn the_page_can_stop_only_the_topic(app: &App) {
    let url = app.url(&format!("/u/{}", app.token(TokenKind::Unsubscribe, M_CAT)));
    let r = app
        .client
        .post(&url)
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body("scope=topic")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.text().await.unwrap().contains("promotions"));
    assert_eq!(
        app.count("topic_subscriptions WHERE contact_id = 6 AND topic = 'promotions' AND subscribed = FALSE").await,
        1
    );
    assert_eq!(app.count("suppressions").await, 0);
    assert!(app.msg_int(M_CAT, "unsubscribed_at").await.is_some());
}

async fn a_burst_of_opens_is_recorded_exactly_and_in_few_transactions(app: &App) {
    const N: usize = 2000;
    let url = app.url(&format!("/o/{}", app.token(TokenKind::Open, M_EMAIL)));
    let mut set = tokio::task::JoinSet::new();
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(64));
    for _ in 0..N {
        let (client, url, gate) = (app.client.clone(), url.clone(), gate.clone());
        set.spawn(async move {
            let _p = gate.acquire().await.unwrap();
            client
                .get(&url)
                .header(USER_AGENT, BROWSER)
                .send()
                .await
                .map(|r| r.status())
        });
    }
    let mut ok = 0i64;
    while let Some(r) = set.join_next().await {
        if r.unwrap().is_ok_and(|s| s == StatusCode::OK) {
            ok += 1;
        }
    }
    app.flush().await;
    assert_eq!(app.msg_int(M_EMAIL, "open_count").await, Some(ok));
    assert_eq!(ok, N as i64);
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let batches: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("herald_tracking_batches_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        batches * 10 < N as u64,
        "{batches} transactions for {N} opens"
    );
    assert!(
        metrics.contains(&format!(
            "herald_tracking_requests_total{{kind=\"open\",status=\"200\"}} {N}"
        )),
        "{metrics}"
    );
}

async fn service_endpoints(app: &App) {
    let r = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let text = r.text().await.unwrap();
    assert!(
        text.contains("herald_messages{channel=\"email\",status=\"delivered\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("herald_tracking_requests_total{kind=\"healthz\",status=\"200\"} 1"),
        "{text}"
    );
    let r = app
        .client
        .get(app.url("/api/campaigns/winback/report"))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_IMPLEMENTED);
    assert!(r.text().await.unwrap().contains("herald report"));
    let r = app
        .client
        .get(app.url("/nothing/here"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

on_both_databases!(
    opens_answer_a_gif_and_are_counted,
    clicks_redirect_only_to_the_messages_own_links,
    link_tokens_redirect_to_the_url_they_carry,
    short_links_redirect_by_code,
    one_click_unsubscribe_ends_the_topic,
    one_click_unsubscribe_suppresses_the_channel,
    the_page_can_stop_only_the_topic,
    a_burst_of_opens_is_recorded_exactly_and_in_few_transactions,
    service_endpoints,
);
