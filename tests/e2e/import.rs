//! `herald import`: bad rows are named by line and reason, good rows are kept, exit 1.

use herald_storage::Db;
use herald_tests::Backend;
use sea_orm::{ConnectionTrait, Statement};

use crate::setup;

async fn scalar(db: &Db, sql: &str) -> Vec<Vec<String>> {
    let rows = db
        .conn
        .query_all_raw(Statement::from_string(db.backend(), sql.to_string()))
        .await
        .expect("query");
    rows.iter()
        .map(|r| {
            (0..)
                .map_while(|i| {
                    r.try_get_by_index::<Option<String>>(i)
                        .map(|v| v.unwrap_or_default())
                        .or_else(|_| {
                            r.try_get_by_index::<Option<i64>>(i)
                                .map(|v| v.map_or(String::new(), |n| n.to_string()))
                        })
                        .or_else(|_| {
                            r.try_get_by_index::<Option<bool>>(i)
                                .map(|v| v.map_or(String::new(), |b| b.to_string()))
                        })
                        .ok()
                })
                .collect()
        })
        .collect()
}

async fn contacts_with_bad_rows(backend: Backend) {
    let Some((p, db)) = setup(backend).await else {
        return;
    };
    p.write(
        "contacts.csv",
        "external_id,email,phone,consent_sms,tags,region,orders\n\
         c1,ann@example.com,+8613800138000,true,vip;app,guangdong,3\n\
         c2,not-an-email,,,,,\n\
         c3,cat@example.com,12345,,,,\n\
         c4,dan@example.com,,maybe,,,\n\
         ,eve@example.com,,,,,\n\
         c6,fay@example.com,,,,zhejiang,02134\n",
    );
    let run = p.herald(&db, &["import", "contacts", "contacts.csv"]);
    run.expect_code(1);
    let err = run.stderr();
    assert!(err.contains("contacts.csv:3: column `email`"), "{err}");
    assert!(err.contains("contacts.csv:4: column `phone`"), "{err}");
    assert!(
        err.contains("contacts.csv:5: column `consent_sms`"),
        "{err}"
    );
    assert!(
        err.contains("contacts.csv:6: `external_id` is missing"),
        "{err}"
    );
    assert!(
        run.stdout().contains("imported 2 contacts"),
        "{}",
        run.stdout()
    );

    let store = Db::connect(&db.url).await.expect("connect");
    let rows = scalar(
        &store,
        "SELECT external_id, email, phone FROM contacts ORDER BY external_id",
    )
    .await;
    assert_eq!(
        rows,
        vec![
            vec!["c1", "ann@example.com", "+8613800138000"],
            vec!["c6", "fay@example.com", ""]
        ]
    );

    // An empty cell keeps the stored value; attrs merge shallowly; tags are replaced when given.
    p.write("more.ndjson", "{\"external_id\":\"c1\",\"attrs\":{\"tier\":\"gold\"},\"tags\":[\"app\"]}\n{\"external_id\":\"c1\",\"locale\":\"zh-CN\"}\nnot json\n");
    let run = p.herald(&db, &["import", "contacts", "more.ndjson"]);
    run.expect_code(1);
    assert!(
        run.stderr().contains("more.ndjson:3: invalid JSON"),
        "{}",
        run.stderr()
    );
    let attrs = scalar(
        &store,
        if backend == Backend::Postgres {
            "SELECT attrs::text, tags::text, locale, email FROM contacts WHERE external_id = 'c1'"
        } else {
            "SELECT attrs, tags, locale, email FROM contacts WHERE external_id = 'c1'"
        },
    )
    .await;
    let parsed: serde_json::Value = serde_json::from_str(&attrs[0][0]).expect("attrs json");
    assert_eq!(
        parsed,
        serde_json::json!({"region": "guangdong", "orders": 3, "tier": "gold"})
    );
    let tags: serde_json::Value = serde_json::from_str(&attrs[0][1]).expect("tags json");
    assert_eq!(tags, serde_json::json!(["app"]));
    assert_eq!(attrs[0][2], "zh-CN");
    assert_eq!(attrs[0][3], "ann@example.com");
    // A ZIP-like cell stays text; canonical numbers become numbers.
    let zip = scalar(
        &store,
        if backend == Backend::Postgres {
            "SELECT attrs->>'orders' FROM contacts WHERE external_id = 'c6'"
        } else {
            "SELECT json_extract(attrs, '$.orders') FROM contacts WHERE external_id = 'c6'"
        },
    )
    .await;
    assert_eq!(zip[0][0], "02134");
    db.drop_db().await;
}

async fn events_are_idempotent_and_create_bare_contacts(backend: Backend) {
    let Some((p, db)) = setup(backend).await else {
        return;
    };
    p.write(
        "events.csv",
        "external_id,name,at,value,event_id,sku\n\
         u1,order_placed,2026-11-01T10:00:00+08:00,99.5,e1,tea\n\
         u1,order_placed,2026-11-02,,e2,\n\
         u2,app_open,yesterday,,e3,\n\
         u2,order_placed,2026-11-03T00:00:00Z,abc,e4,\n",
    );
    let run = p.herald(&db, &["import", "events", "events.csv"]);
    run.expect_code(1);
    assert!(
        run.stderr().contains("events.csv:4: column `at`"),
        "{}",
        run.stderr()
    );
    assert!(
        run.stderr().contains("events.csv:5: column `value`"),
        "{}",
        run.stderr()
    );
    // Importing the same file again adds nothing: event ids deduplicate.
    p.herald(&db, &["import", "events", "events.csv"])
        .expect_code(1);
    let store = Db::connect(&db.url).await.expect("connect");
    let rows = scalar(&store, "SELECT c.external_id, COUNT(*), MIN(e.at) FROM events e JOIN contacts c ON c.id = e.contact_id GROUP BY c.external_id").await;
    assert_eq!(
        rows,
        vec![vec!["u1".to_string(), "2".into(), "1793498400000".into()]]
    );
    let first_seen = scalar(
        &store,
        "SELECT first_seen_at FROM contacts WHERE external_id = 'u1'",
    )
    .await;
    assert_eq!(first_seen[0][0], "1793498400000");
    db.drop_db().await;
}

on_both_databases!(
    contacts_with_bad_rows,
    events_are_idempotent_and_create_bare_contacts
);
