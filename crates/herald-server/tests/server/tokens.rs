//! Forged, altered and truncated tokens: 100,000 of them against the router
//! in process (CPU only), a few over the socket; none is accepted and none
//! leaves a trace in the database.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use herald_domain::token::{TokenClaims, TokenKind, TokenSigner};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tower::ServiceExt;

use crate::common::*;
use crate::on_both_databases;

const FORGERIES: usize = 100_000;
const URL_SAFE: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

fn genuine(app: &App) -> Vec<String> {
    let mut out = Vec::new();
    for id in 1..=7 {
        for kind in [TokenKind::Open, TokenKind::Unsubscribe, TokenKind::Callback] {
            out.push(app.token(kind, id));
        }
        for link in 0..3 {
            out.push(app.click_token(id, link));
            out.push(app.link_token(id, link, "https://shop.example.com/a"));
        }
    }
    out
}

fn random_string(rng: &mut StdRng, alphabet: &[u8], len: usize) -> String {
    (0..len)
        .map(|_| alphabet[rng.random_range(0..alphabet.len())] as char)
        .collect()
}

/// A token that must not verify: random, altered, truncated, extended, re-encoded or signed with another key.
fn forgery(rng: &mut StdRng, genuine: &[String], other: &TokenSigner) -> String {
    let g = &genuine[rng.random_range(0..genuine.len())];
    let forged = match rng.random_range(0..7) {
        0 => {
            let len = rng.random_range(0..48);
            random_string(rng, URL_SAFE, len)
        }
        1 => {
            let mut b = g.clone().into_bytes();
            let i = rng.random_range(0..b.len());
            let c = b[i];
            while b[i] == c {
                b[i] = URL_SAFE[rng.random_range(0..URL_SAFE.len())];
            }
            String::from_utf8(b).unwrap()
        }
        2 => g[..rng.random_range(0..g.len())].to_string(),
        3 => {
            let n = rng.random_range(1..4);
            format!("{g}{}", random_string(rng, URL_SAFE, n))
        }
        4 => {
            // Decoded, another message id written in, encoded again: the tag no longer fits.
            let mut raw = URL_SAFE_NO_PAD.decode(g).unwrap();
            let i = rng.random_range(1..9);
            raw[i] ^= 1 << rng.random_range(0..8);
            URL_SAFE_NO_PAD.encode(raw)
        }
        5 => other.sign_link(rng.random_range(1..8), 0, "https://shop.example.com/a"),
        _ => {
            let kind = [
                TokenKind::Open,
                TokenKind::Click,
                TokenKind::Unsubscribe,
                TokenKind::Callback,
            ][rng.random_range(0..4)];
            other.sign(TokenClaims {
                kind,
                message_id: rng.random_range(1..8),
                link: (kind == TokenKind::Click).then_some(0),
            })
        }
    };
    if genuine.contains(&forged) {
        // Vanishingly unlikely; keep the assertion honest anyway.
        return "x".into();
    }
    forged
}

fn request(app: &App, rng: &mut StdRng, i: usize, token: &str) -> Request<Body> {
    let get = |path: String| {
        Request::builder()
            .method(Method::GET)
            .uri(path)
            .body(Body::empty())
            .unwrap()
    };
    match i % 6 {
        0 => get(format!("/o/{token}")),
        1 => get(format!("/c/{token}")),
        2 => get(format!("/u/{token}")),
        3 => Request::builder()
            .method(Method::POST)
            .uri(format!("/u/{token}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Body::from("List-Unsubscribe=One-Click"))
            .unwrap(),
        4 => {
            // A correctly signed callback: only the token is wrong.
            let path = format!("/webhooks/twilio/status?m={token}");
            let params = vec![
                ("MessageSid".to_string(), "SM1".to_string()),
                ("MessageStatus".to_string(), "delivered".to_string()),
            ];
            let sig = herald_server::twilio_signature(TWILIO_TOKEN, &app.url(&path), &params);
            Request::builder()
                .method(Method::POST)
                .uri(path)
                .header("content-type", "application/x-www-form-urlencoded")
                .header("x-twilio-signature", sig)
                .body(Body::from("MessageSid=SM1&MessageStatus=delivered"))
                .unwrap()
        }
        _ => {
            let mut code = random_string(rng, ALNUM, 8);
            if code == SHORT_CODE {
                code = "zzzzzzzz".into();
            }
            get(format!("/s/{code}"))
        }
    }
}

async fn a_hundred_thousand_forged_tokens_are_refused(app: &App) {
    let before = app.footprint().await;
    let router = herald_server::router(app.state.clone());
    let genuine = genuine(app);
    let other = TokenSigner::new(b"another-secret-0123456789abcdef");
    let mut rng = StdRng::seed_from_u64(0x5eed);
    for i in 0..FORGERIES {
        let token = forgery(&mut rng, &genuine, &other);
        let req = request(app, &mut rng, i, &token);
        let uri = req.uri().clone();
        let resp = router.clone().oneshot(req).await.unwrap();
        assert_eq!(
            resp.status(),
            StatusCode::NOT_FOUND,
            "{uri} was not refused"
        );
    }
    // Genuine tokens of the wrong kind are refused too.
    for (i, t) in genuine.iter().enumerate() {
        let kind = match app.signer.verify(t) {
            Some(c) => c.kind,
            // A link token is a click token that carries its URL.
            None => {
                assert!(app.signer.verify_link(t).is_some(), "{t} is genuine");
                TokenKind::Click
            }
        };
        for slot in 0..5 {
            let expected = match slot {
                0 => TokenKind::Open,
                1 => TokenKind::Click,
                2 | 3 => TokenKind::Unsubscribe,
                _ => TokenKind::Callback,
            };
            if kind == expected {
                continue;
            }
            let req = request(app, &mut rng, slot + 6 * i, t);
            let uri = req.uri().clone();
            let resp = router.clone().oneshot(req).await.unwrap();
            assert_eq!(
                resp.status(),
                StatusCode::NOT_FOUND,
                "{uri} with a {kind:?} token"
            );
        }
    }
    app.flush().await;
    assert_eq!(
        app.footprint().await,
        before,
        "a refused request changed the database"
    );
}

async fn forged_tokens_over_the_socket(app: &App) {
    let before = app.footprint().await;
    let forged = {
        let mut t = app.token(TokenKind::Open, M_EMAIL).into_bytes();
        t[5] = if t[5] == b'A' { b'B' } else { b'A' };
        String::from_utf8(t).unwrap()
    };
    let c = &app.client;
    for path in ["/o/", "/c/", "/u/", "/s/"] {
        let r = c
            .get(app.url(&format!("{path}{forged}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
    }
    let r = c
        .post(app.url(&format!("/u/{forged}")))
        .body("List-Unsubscribe=One-Click")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = c
        .post(app.url(&format!("/webhooks/twilio/status?m={forged}")))
        .body("MessageStatus=delivered")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = c
        .post(app.url("/webhooks/email/sendgrid"))
        .body(format!(
            r#"[{{"event":"bounce","herald_token":"{forged}"}}]"#
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = c.get(app.url("/o/")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = c.get(app.url("/o/%FF%FE")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    app.flush().await;
    assert_eq!(app.footprint().await, before);
}

on_both_databases!(
    a_hundred_thousand_forged_tokens_are_refused,
    forged_tokens_over_the_socket,
);
