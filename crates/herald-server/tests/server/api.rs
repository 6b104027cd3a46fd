//! The report API behind its bearer token: no token, a wrong token, a known
//! and an unknown campaign all get the same 401; the right token gets the
//! report; with `admin_listen` set only the admin listener serves it.

use std::sync::Arc;

use herald_server::{ReportError, ReportSource};
use herald_tests::Backend;
use reqwest::StatusCode;

use crate::common::*;

/// Knows one campaign, `winback`.
struct OneCampaign;

#[async_trait::async_trait]
impl ReportSource for OneCampaign {
    async fn report(
        &self,
        campaign: &str,
        _query: &[(String, String)],
    ) -> Result<Option<serde_json::Value>, ReportError> {
        Ok((campaign == "winback")
            .then(|| serde_json::json!({ "campaign": "winback", "revenue": 42 })))
    }
}

/// Status, WWW-Authenticate and body of `GET url` with `token`.
async fn get(app: &App, url: &str, token: Option<&str>) -> (StatusCode, String, String) {
    let mut req = app.client.get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    let status = r.status();
    let www = r
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, www, r.text().await.unwrap())
}

async fn start(admin: bool, token: Option<&str>) -> App {
    let token = token.map(String::from);
    App::start_full(
        Backend::Sqlite,
        move |c| {
            c.api_token = token;
            if admin {
                c.admin_listen = Some("127.0.0.1:0".parse().unwrap());
            }
        },
        Some(Arc::new(OneCampaign)),
    )
    .await
    .expect("sqlite")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_api_answers_only_the_right_token() {
    let app = start(false, Some(API_TOKEN)).await;
    let known = app.url("/api/campaigns/winback/report");
    let unknown = app.url("/api/campaigns/nope/report");
    let mut refusals = Vec::new();
    for url in [&known, &unknown] {
        for token in [None, Some("wrong"), Some("api-token-012345678"), Some("")] {
            refusals.push(get(&app, url, token).await);
        }
    }
    // A token in another scheme is no token.
    let r = app
        .client
        .get(&known)
        .basic_auth("u", Some(API_TOKEN))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    for r in &refusals {
        assert_eq!(r, &refusals[0], "every refusal looks the same");
    }
    assert_eq!(refusals[0].0, StatusCode::UNAUTHORIZED);
    assert_eq!(refusals[0].1, "Bearer");
    let (status, _, body) = get(&app, &known, Some(API_TOKEN)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("\"revenue\":42"), "{body}");
    let (status, _, _) = get(&app, &unknown, Some(API_TOKEN)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_configured_token_the_api_refuses_everyone() {
    let app = start(false, None).await;
    for token in [None, Some(API_TOKEN), Some("")] {
        let (status, _, _) = get(&app, &app.url("/api/campaigns/winback/report"), token).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_admin_listener_the_public_one_does_not_serve_the_api() {
    let app = start(true, Some(API_TOKEN)).await;
    let admin = app.admin.clone().expect("an admin listener");
    // The public listener: as if the API did not exist, token or not.
    for token in [None, Some(API_TOKEN)] {
        let (status, _, _) = get(&app, &app.url("/api/campaigns/winback/report"), token).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
    // The admin listener: the API behind its token, and nothing for recipients.
    let report = format!("{admin}/api/campaigns/winback/report");
    let (status, _, _) = get(&app, &report, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, body) = get(&app, &report, Some(API_TOKEN)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let open = format!(
        "{admin}/o/{}",
        app.token(herald_domain::token::TokenKind::Open, M_EMAIL)
    );
    let (status, _, _) = get(&app, &open, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = get(&app, &format!("{admin}/healthz"), None).await;
    assert_eq!(status, StatusCode::OK);
    app.stop().await;
}
