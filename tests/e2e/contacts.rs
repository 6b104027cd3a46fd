//! `herald contacts export|forget`: the export holds everything herald keeps
//! about a person; after forget nothing personal is left (nor recorded by
//! the tracking links of their messages), the report's counts are the same,
//! and a suppression survives a re-import of the same address.

use std::net::SocketAddr;

use herald_domain::token::{TokenClaims, TokenKind, TokenSigner};
use herald_server::{AppState, ServerConfig};
use herald_storage::Db;
use herald_storage::contacts::{DigestKeys, address_digest};
use herald_tests::{Backend, Project};
use sea_orm::{ConnectionTrait, Statement, Value};
use serde_json::Value as Json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::send::start_sink;
use crate::setup;

/// The same secret `Project::herald` gives the binary.
const SECRET: &[u8] = herald_tests::SECRET.as_bytes();

/// Ann's personal data: none of it may survive `forget`.
const ANN: &str = "cust-ann-7731";
const ANN_EMAIL: &str = "annabelle.x@example.com";
const ANN_PHONE: &str = "+8613800138731";
const ANN_TOKEN: &str = "tok-ann-9f8e7d";
const ANN_NAME: &str = "Annabelle";
const ANN_SECRET_PROP: &str = "sku-ann-secret";

fn shop(p: &Project, port: u16) {
    p.write(
        "config/herald.toml",
        &format!(
            "[tracking]\npublic_url = \"https://t.example.com\"\n\n[channels.email]\nprovider = \"smtp\"\nhost = \"127.0.0.1\"\nport = {port}\nconcurrency = 2\n"
        ),
    );
    p.write(
        "config/campaigns/promo.toml",
        "name = \"promo\"\ntopic = \"promotions\"\nwhere = 'attrs.region == \"guangdong\"'\nchannels = [\"email\"]\ngoal = { event = \"order_placed\", within = \"3d\" }\nholdout = 0.2\n\n[[variants]]\nname = \"a\"\nemail = { subject = \"Hi {{contact.attrs.first_name}}\", template = \"promo.email.hbs\" }\n\n[[variants]]\nname = \"b\"\nemail = { subject = \"Hello {{contact.attrs.first_name}}\", template = \"promo.email.hbs\" }\n",
    );
    p.write(
        "templates/promo.email.hbs",
        "<p>Hi {{contact.attrs.first_name}}, see <a href=\"{{track \"https://shop.example.com/new\"}}\">what is new</a>.</p><p><a href=\"{{unsubscribe_url}}\">Unsubscribe</a></p>\n",
    );
    let mut csv = String::from(
        "external_id,email,phone,consent_sms,tags,push_token,push_platform,first_name,region\n",
    );
    csv.push_str(&format!(
        "{ANN},{ANN_EMAIL},{ANN_PHONE},true,vip;app,{ANN_TOKEN},ios,{ANN_NAME},guangdong\n"
    ));
    for i in 1..=9 {
        csv.push_str(&format!("p{i},p{i}@example.com,,,,,,P{i},guangdong\n"));
    }
    p.write("contacts.csv", &csv);
}

async fn rows(db: &Db, sql: &str, values: Vec<Value>) -> Vec<sea_orm::QueryResult> {
    herald_storage::test_support::conn(db)
        .query_all_raw(Statement::from_sql_and_values(
            db.backend(),
            herald_storage::sql::placeholders(db.backend(), sql),
            values,
        ))
        .await
        .expect("query")
}

async fn count(db: &Db, sql: &str, values: Vec<Value>) -> i64 {
    rows(db, sql, values).await[0]
        .try_get_by_index(0)
        .expect("count")
}

/// What the report is made of: per arm, status and reason, the messages,
/// conversions, revenue, opens and clicks.
async fn report_counts(db: &Db) -> Vec<String> {
    rows(
        db,
        "SELECT arm, status, COALESCE(reason, ''), COUNT(*), COUNT(converted_at), SUM(revenue), SUM(open_count), COUNT(opened_at), SUM(click_count), COUNT(unsubscribed_at) FROM messages GROUP BY arm, status, reason ORDER BY arm, status, 3",
        vec![],
    )
    .await
    .iter()
    .map(|r| {
        let s = |i| r.try_get_by_index::<String>(i).expect("text");
        let n = |i| r.try_get_by_index::<i64>(i).expect("count");
        let f: f64 = r.try_get_by_index(5).expect("revenue");
        format!(
            "{} {} {} n={} conv={} rev={f} opens={} opened={} clicks={} unsub={}",
            s(0),
            s(1),
            s(2),
            n(3),
            n(4),
            n(6),
            n(7),
            n(8),
            n(9)
        )
    })
    .collect()
}

/// A minimal HTTP/1.1 request to the tracking server: (status, body).
async fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: t.example.com\r\nConnection: close\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.expect("read");
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let body = text
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_string());
    (status, body)
}

/// Waits until `sql` counts `want` (the server writes opens in batches).
async fn eventually(db: &Db, sql: &str, values: Vec<Value>, want: i64) {
    for _ in 0..100 {
        if count(db, sql, values.clone()).await == want {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("`{sql}` never counted {want}");
}

/// Counts of rows anywhere that still hold one of Ann's personal values.
async fn personal_traces(db: &Db) -> Vec<(String, i64)> {
    let pg = db.backend() == sea_orm::DbBackend::Postgres;
    let text = |col: &str| {
        if pg {
            format!("COALESCE({col}::text, '')")
        } else {
            format!("COALESCE({col}, '')")
        }
    };
    let mut out = Vec::new();
    let checks = [
        ("contacts", "external_id || ' ' || COALESCE(email, '') || ' ' || COALESCE(phone, '') || ' ' || ".to_string() + &text("attrs") + " || ' ' || " + &text("tags")),
        ("push_tokens", "token".to_string()),
        ("suppressions", "COALESCE(address, '') || ' ' || source".to_string()),
        ("events", text("properties") + " || ' ' || COALESCE(event_id, '')"),
        ("messages", "COALESCE(address, '') || ' ' || COALESCE(reason, '') || ' ' || COALESCE(provider_id, '')".to_string()),
        ("attempts", "COALESCE(detail, '')".to_string()),
        ("message_events", text("detail")),
        ("outbox", "address || ' ' || body || ' ' || COALESCE(subject, '')".to_string()),
        ("links", "url".to_string()),
    ];
    for (table, expr) in checks {
        for needle in [
            ANN,
            ANN_EMAIL,
            ANN_PHONE,
            ANN_TOKEN,
            ANN_NAME,
            ANN_SECRET_PROP,
        ] {
            let n = count(
                db,
                &format!("SELECT COUNT(*) FROM {table} WHERE ({expr}) LIKE $1"),
                vec![format!("%{needle}%").into()],
            )
            .await;
            if n > 0 {
                out.push((format!("{table} holds {needle}"), n));
            }
        }
    }
    out
}

async fn export_then_forget_leaves_nothing_personal(backend: Backend) {
    let Some((p, db)) = setup(backend).await else {
        return;
    };
    let sink = start_sink().await;
    shop(&p, sink.addr().port());
    p.herald(&db, &["import", "contacts", "contacts.csv"])
        .expect_code(0);
    p.herald(&db, &["send", "promo"]).expect_code(0);
    let store = Db::connect(&db.url).await.expect("connect");

    // The tracking server, in this process, with the binary's secret.
    let signer = TokenSigner::new(SECRET);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let state = AppState::new(
        store.clone(),
        signer.clone(),
        ServerConfig::new("https://t.example.com"),
    );
    let server = tokio::spawn(herald_server::run(listener, state, async {
        let _ = stopped.await;
    }));

    let mine = rows(
        &store,
        "SELECT m.id, m.status, m.send_at FROM messages m JOIN contacts c ON c.id = m.contact_id WHERE c.external_id = $1",
        vec![ANN.into()],
    )
    .await;
    assert_eq!(mine.len(), 1);
    let msg: i64 = mine[0].try_get_by_index(0).expect("id");
    let status: String = mine[0].try_get_by_index(1).expect("status");
    let send_at: i64 = mine[0].try_get_by_index(2).expect("send_at");
    assert_eq!(status, "delivered", "Ann is not in promo's holdout");

    // Ann orders (a property names the product), opens, then unsubscribes
    // from the topic on the page and from email with one click.
    let at = chrono::DateTime::from_timestamp_millis(send_at + 3_600_000)
        .expect("instant")
        .to_rfc3339();
    p.write(
        "events.ndjson",
        &format!(
            "{{\"external_id\":\"{ANN}\",\"name\":\"order_placed\",\"at\":\"{at}\",\"value\":42.5,\"event_id\":\"order-ann-1\",\"properties\":{{\"sku\":\"{ANN_SECRET_PROP}\"}}}}\n"
        ),
    );
    p.herald(&db, &["import", "events", "events.ndjson"])
        .expect_code(0);
    let (code, _) = http(
        addr,
        "GET",
        &format!("/o/{}", signer.sign_message(TokenKind::Open, msg)),
        "",
    )
    .await;
    assert_eq!(code, 200);
    eventually(
        &store,
        "SELECT COUNT(*) FROM messages WHERE open_count > 0 AND id = $1",
        vec![msg.into()],
        1,
    )
    .await;
    let unsub = format!("/u/{}", signer.sign_message(TokenKind::Unsubscribe, msg));
    assert_eq!(http(addr, "POST", &unsub, "scope=topic").await.0, 200);
    // The page's "stop all marketing by email": a channel suppression (a
    // one-click POST ends only the message's topic).
    assert_eq!(http(addr, "POST", &unsub, "scope=channel").await.0, 200);
    assert_eq!(
        http(addr, "POST", &unsub, "List-Unsubscribe=One-Click")
            .await
            .0,
        200
    );

    // The export: every kind of data, with Ann's values.
    let run = p.herald(&db, &["contacts", "export", ANN]);
    run.expect_code(0);
    let doc: Json = serde_json::from_str(&run.stdout()).expect("export is JSON");
    for key in [
        "external_id",
        "email",
        "phone",
        "timezone",
        "locale",
        "attrs",
        "tags",
        "consent",
        "first_seen_at",
        "created_at",
        "updated_at",
        "forgotten_at",
        "topic_subscriptions",
        "push_tokens",
        "suppressions",
        "events",
        "messages",
    ] {
        assert!(doc.get(key).is_some(), "export lacks `{key}`: {doc:#}");
    }
    assert_eq!(doc["external_id"], ANN);
    assert_eq!(doc["email"], ANN_EMAIL);
    assert_eq!(doc["phone"], ANN_PHONE);
    assert_eq!(doc["attrs"]["first_name"], ANN_NAME);
    assert_eq!(doc["tags"], serde_json::json!(["vip", "app"]));
    assert_eq!(doc["consent"]["sms"], true);
    assert_eq!(doc["forgotten_at"], Json::Null);
    assert_eq!(doc["push_tokens"][0]["token"], ANN_TOKEN);
    assert_eq!(doc["push_tokens"][0]["platform"], "ios");
    assert_eq!(
        doc["topic_subscriptions"][0]["topic"], "promotions",
        "{doc:#}"
    );
    assert_eq!(doc["topic_subscriptions"][0]["subscribed"], false);
    let sup = &doc["suppressions"][0];
    assert_eq!(
        (&sup["channel"], &sup["address"], &sup["reason"]),
        (&"email".into(), &ANN_EMAIL.into(), &"unsubscribe".into()),
        "{doc:#}"
    );
    assert_eq!(doc["events"][0]["properties"]["sku"], ANN_SECRET_PROP);
    assert_eq!(doc["events"][0]["event_id"], "order-ann-1");
    let m = &doc["messages"][0];
    assert_eq!(m["id"], msg);
    assert_eq!(m["campaign"], "promo");
    assert_eq!(m["status"], status.as_str());
    assert_eq!(m["outcome"]["revenue"], 42.5);
    assert!(m["outcome"]["converted_at"].is_string(), "{m:#}");
    assert!(m["outcome"]["unsubscribed_at"].is_string(), "{m:#}");
    assert!(m["send_at"].as_str().is_some_and(|t| t.ends_with('Z')));
    assert_eq!(m["address"], ANN_EMAIL);
    assert_eq!(m["attempts"][0]["result"], "accepted", "{m:#}");
    // An email's click link carries its URL in its signed token: no row to export.
    assert_eq!(m["links"], serde_json::json!([]), "{m:#}");
    assert_eq!(m["outcome"]["open_count"], 1);
    assert!(
        m["activity"]
            .as_array()
            .is_some_and(|a| a.iter().any(|e| e["kind"] == "unsubscribe")),
        "{m:#}"
    );
    assert!(
        !personal_traces(&store).await.is_empty(),
        "the probe finds Ann before she is forgotten"
    );

    // Forget: one transaction; the report is made of the same numbers.
    let counts = report_counts(&store).await;
    let run = p.herald(&db, &["contacts", "forget", ANN]);
    run.expect_code(0);
    let out = run.stdout();
    let tombstone = out
        .split('`')
        .nth(3)
        .expect("the tombstone's id is printed")
        .to_string();
    assert!(tombstone.starts_with("forgotten:"), "{out}");
    assert_eq!(report_counts(&store).await, counts);
    assert_eq!(personal_traces(&store).await, vec![]);
    // The unsubscribes outlive her as digests of the address, not the address.
    // Keyed with the tracking secret: a plain SHA-256 of the address is not stored.
    let digest = DigestKeys::from_secrets(SECRET, &[]).digest(ANN_EMAIL);
    assert_eq!(
        count(
            &store,
            "SELECT COUNT(*) FROM suppressions WHERE address = $1",
            vec![address_digest(ANN_EMAIL).into()]
        )
        .await,
        0
    );
    assert_eq!(
        count(
            &store,
            "SELECT COUNT(*) FROM suppressions WHERE address = $1 AND topic IS NULL AND channel = 'email'",
            vec![digest.clone().into()]
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &store,
            "SELECT COUNT(*) FROM suppressions WHERE address = $1 AND topic = 'promotions'",
            vec![digest.clone().into()]
        )
        .await,
        1
    );

    // The old id is unknown now (exit 2); the tombstone exports as nothing personal.
    let run = p.herald(&db, &["contacts", "export", ANN]);
    run.expect_code(2);
    assert!(run.stderr().contains("no contact"), "{}", run.stderr());
    p.herald(&db, &["contacts", "forget", "nobody"])
        .expect_code(2);
    let run = p.herald(&db, &["contacts", "export", &tombstone]);
    run.expect_code(0);
    let text = run.stdout();
    for needle in [
        ANN,
        ANN_EMAIL,
        ANN_PHONE,
        ANN_TOKEN,
        ANN_NAME,
        ANN_SECRET_PROP,
    ] {
        assert!(!text.contains(needle), "`{needle}` in {text}");
    }
    let gone: Json = serde_json::from_str(&text).expect("json");
    assert!(gone["forgotten_at"].is_string());
    assert_eq!(gone["attrs"], serde_json::json!({}));
    assert_eq!(gone["push_tokens"], serde_json::json!([]));
    assert_eq!(gone["messages"][0]["address"], Json::Null);
    assert_eq!(gone["messages"][0]["links"], serde_json::json!([]));
    assert_eq!(gone["messages"][0]["status"], status.as_str());
    assert_eq!(gone["events"][0]["properties"], Json::Null);
    assert_eq!(gone["events"][0]["value"], 42.5);

    // Her message's tracking links record nothing personal: the click's
    // link is gone (404), the page shows no address, opens and unsubscribes
    // land on the anonymised message and tombstone only.
    let click = signer.sign(TokenClaims {
        kind: TokenKind::Click,
        message_id: msg,
        link: Some(0),
    });
    assert_eq!(http(addr, "GET", &format!("/c/{click}"), "").await.0, 404);
    let (code, page) = http(addr, "GET", &unsub, "").await;
    assert_eq!(code, 200);
    assert!(
        !page.contains("@example.com") && !page.contains("a***@"),
        "{page}"
    );
    assert_eq!(
        http(addr, "POST", &unsub, "List-Unsubscribe=One-Click")
            .await
            .0,
        200
    );
    let opens_before = count(
        &store,
        "SELECT CAST(open_count AS BIGINT) FROM messages WHERE id = $1",
        vec![msg.into()],
    )
    .await;
    assert_eq!(
        http(
            addr,
            "GET",
            &format!("/o/{}", signer.sign_message(TokenKind::Open, msg)),
            ""
        )
        .await
        .0,
        200
    );
    eventually(
        &store,
        "SELECT CAST(open_count AS BIGINT) FROM messages WHERE id = $1",
        vec![msg.into()],
        opens_before + 1,
    )
    .await;
    assert_eq!(personal_traces(&store).await, vec![]);
    let _ = stop.send(());
    server.await.expect("server task").expect("server");

    // Imported again under her old id and address, she is a new contact,
    // and her unsubscribe still holds: the next send suppresses her.
    p.write(
        "again.csv",
        &format!("external_id,email,first_name,region\n{ANN},{ANN_EMAIL},{ANN_NAME},guangdong\n"),
    );
    p.herald(&db, &["import", "contacts", "again.csv"])
        .expect_code(0);
    let ids = rows(
        &store,
        "SELECT id FROM contacts WHERE external_id = $1 OR external_id = $2 ORDER BY id",
        vec![ANN.into(), tombstone.clone().into()],
    )
    .await;
    assert_eq!(ids.len(), 2, "a fresh row beside the tombstone");
    p.herald(&db, &["send", "promo"]).expect_code(0);
    let again = rows(
        &store,
        "SELECT m.status, COALESCE(m.reason, '') FROM messages m JOIN contacts c ON c.id = m.contact_id WHERE c.external_id = $1",
        vec![ANN.into()],
    )
    .await;
    assert_eq!(again.len(), 1);
    let st: String = again[0].try_get_by_index(0).expect("status");
    let why: String = again[0].try_get_by_index(1).expect("reason");
    assert_eq!((st.as_str(), why.as_str()), ("suppressed", "opt_out"));
    let to_ann = sink
        .received()
        .iter()
        .filter(|mail| mail.rcpt_to.iter().any(|r| r == ANN_EMAIL))
        .count();
    assert_eq!(to_ann, 1, "the first send's mail, and no second one");
    db.drop_db().await;
}

on_both_databases!(export_then_forget_leaves_nothing_personal);
