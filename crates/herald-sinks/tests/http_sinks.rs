//! The Twilio and FCM sinks driven by a bare HTTP client: the checks a real provider makes
//! (auth, required fields, the JWT grant), the request log, and a stalled request at shutdown.

use std::time::{Duration, Instant};

use herald_sinks::{
    Answer, DEMO_ACCOUNT_SID, DEMO_AUTH_TOKEN, FaultPlan, FcmSink, FcmSinkConfig, TwilioSink,
    TwilioSinkConfig,
};
use serde_json::Value;

async fn json(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let body = response.bytes().await.expect("body");
    (
        status,
        serde_json::from_slice(&body)
            .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&body))),
    )
}

fn messages_url(sink: &TwilioSink) -> String {
    format!(
        "{}/2010-04-01/Accounts/{DEMO_ACCOUNT_SID}/Messages.json",
        sink.base_url()
    )
}

#[tokio::test]
async fn twilio_sink_checks_auth_and_fields_like_twilio() {
    let sink = TwilioSink::start(TwilioSinkConfig::default())
        .await
        .unwrap();
    let http = herald_channels::http_client_builder().build().unwrap();
    let post = |form: Vec<(&'static str, &'static str)>, token: &'static str| {
        http.post(messages_url(&sink))
            .basic_auth(DEMO_ACCOUNT_SID, Some(token))
            .form(&form)
            .send()
    };
    let ok_form = vec![
        ("To", "+14155550100"),
        ("From", "+15005550006"),
        ("Body", "hi"),
    ];

    let (status, body) = json(post(ok_form.clone(), "wrong").await.unwrap()).await;
    assert_eq!((status, body["code"].as_u64()), (401, Some(20003)));
    let (status, body) = json(post(ok_form[1..].to_vec(), DEMO_AUTH_TOKEN).await.unwrap()).await;
    assert_eq!((status, body["code"].as_u64()), (400, Some(21604)));
    let (status, body) = json(
        post(
            vec![("To", "555"), ("From", "+15005550006"), ("Body", "hi")],
            DEMO_AUTH_TOKEN,
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!((status, body["code"].as_u64()), (400, Some(21211)));
    let (status, body) = json(post(ok_form[..2].to_vec(), DEMO_AUTH_TOKEN).await.unwrap()).await;
    assert_eq!((status, body["code"].as_u64()), (400, Some(21602)));

    let (status, body) = json(post(ok_form, DEMO_AUTH_TOKEN).await.unwrap()).await;
    assert_eq!(status, 201);
    assert_eq!(body["status"], "queued");
    assert_eq!(body["num_segments"], "1");
    assert_eq!(body["price"], Value::Null);
    assert_eq!(body["to"], "+14155550100");
    assert_eq!(body["sid"].as_str().map(str::len), Some(34));
    // Only requests that passed auth are logged; only the accepted one was taken.
    assert_eq!(sink.requests().count(), 4);
    assert_eq!(sink.count(), 1);

    let (status, body) = json(
        http.get(format!(
            "{}/2010-04-01/Accounts/ACother/Messages.json",
            sink.base_url()
        ))
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!((status, body["code"].as_u64()), (404, Some(20404)));
}

#[tokio::test]
async fn fcm_sink_checks_the_grant_and_the_bearer() {
    let sink = FcmSink::start(FcmSinkConfig::default()).await.unwrap();
    let http = herald_channels::http_client_builder().build().unwrap();
    let key: Value = serde_json::from_str(&sink.credentials_json()).unwrap();
    assert_eq!(key["type"], "service_account");
    assert!(
        key["private_key"]
            .as_str()
            .unwrap()
            .starts_with("-----BEGIN PRIVATE KEY-----\n")
    );
    let token_uri = key["token_uri"].as_str().unwrap().to_owned();
    assert_eq!(token_uri, format!("{}/token", sink.base_url()));

    let grant = |grant_type: &'static str, assertion: &'static str| {
        http.post(&token_uri)
            .form(&[("grant_type", grant_type), ("assertion", assertion)])
            .send()
    };
    let (status, body) = json(grant("password", "x").await.unwrap()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("unsupported_grant_type"))
    );
    let (status, body) = json(
        grant("urn:ietf:params:oauth:grant-type:jwt-bearer", "a.b.c")
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    assert_eq!(sink.token_requests(), 2);

    let send_url = format!("{}/v1/projects/demo/messages:send", sink.base_url());
    let message = serde_json::json!({"message": {"token": "t1", "notification": {"title": "a", "body": "b"}}});
    let (status, body) = json(http.post(&send_url).json(&message).send().await.unwrap()).await;
    assert_eq!(
        (status, body["error"]["status"].as_str()),
        (401, Some("UNAUTHENTICATED"))
    );

    let token = sink.mint_token();
    let (status, body) = json(
        http.post(&send_url)
            .bearer_auth(&token)
            .json(&serde_json::json!({"message": {"notification": {"body": "b"}}}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["details"][0]["errorCode"], "INVALID_ARGUMENT");
    let (status, body) = json(
        http.post(format!(
            "{}/v1/projects/other/messages:send",
            sink.base_url()
        ))
        .bearer_auth(&token)
        .json(&message)
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["error"]["status"].as_str()),
        (404, Some("NOT_FOUND"))
    );

    sink.set_plan(FaultPlan::script([Answer::RateLimited {
        retry_after_secs: 3,
    }]));
    let response = http
        .post(&send_url)
        .bearer_auth(&token)
        .json(&message)
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["retry-after"], "3");
    let (status, body) = json(response).await;
    assert_eq!(status, 429);
    assert_eq!(body["error"]["details"][0]["errorCode"], "QUOTA_EXCEEDED");
    let (status, body) = json(
        http.post(&send_url)
            .bearer_auth(&token)
            .json(&message)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        body["name"]
            .as_str()
            .unwrap()
            .starts_with("projects/demo/messages/0:")
    );
    assert_eq!(sink.received()[0].token, "t1");
}

#[tokio::test]
async fn the_request_log_counts_per_window_and_a_stalled_sink_shuts_down() {
    let sink = TwilioSink::start(TwilioSinkConfig {
        plan: FaultPlan::script([Answer::Stall]),
        stall_for: Duration::from_secs(60),
        ..TwilioSinkConfig::default()
    })
    .await
    .unwrap();
    let http = herald_channels::http_client_builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let send = || {
        http.post(messages_url(&sink))
            .basic_auth(DEMO_ACCOUNT_SID, Some(DEMO_AUTH_TOKEN))
            .form(&[
                ("To", "+14155550100"),
                ("From", "+15005550006"),
                ("Body", "hi"),
            ])
            .send()
    };
    let err = send().await.unwrap_err();
    assert!(err.is_timeout(), "{err}");
    for _ in 0..5 {
        assert_eq!(send().await.unwrap().status(), 201);
    }
    assert_eq!(sink.requests().count(), 6);
    assert_eq!(sink.requests().max_in_window(Duration::from_secs(1)), 6);
    assert_eq!(sink.requests().per_window(Duration::from_secs(1)), vec![6]);
    assert_eq!(sink.received()[0].answer, Answer::Stall);
    // The stalled connection is still held: shutdown must not wait for it.
    let started = Instant::now();
    sink.shutdown().await;
    assert!(started.elapsed() < Duration::from_secs(5));
}
