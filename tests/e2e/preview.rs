//! `herald segment preview`: member count, R x F grid, lifecycle breakdown and a sample.

use herald_tests::Backend;

use crate::send::shop_project;
use crate::setup;

async fn preview_counts_members_grid_and_stages(backend: Backend) {
    let Some((p, db)) = setup(backend).await else {
        return;
    };
    shop_project(&p, 25);
    p.write(
        "events.csv",
        "external_id,name,at,value\nc1,order_placed,2026-01-05,10\nc1,order_placed,2026-02-05,20\nc2,app_open,2026-01-01,\n",
    );
    p.herald(&db, &["import", "contacts", "contacts.csv"])
        .expect_code(0);
    p.herald(&db, &["import", "events", "events.csv"])
        .expect_code(0);
    let run = p.herald(
        &db,
        &[
            "segment",
            "preview",
            "guangdong",
            "--limit",
            "2",
            "--format",
            "json",
        ],
    );
    run.expect_code(0);
    let doc: serde_json::Value = serde_json::from_str(&run.stdout()).expect("json");
    assert_eq!(doc["members"], 3, "c1, c2 and c4 are in Guangdong: {doc}");
    let stages: i64 = doc["lifecycle"]
        .as_object()
        .expect("stages")
        .values()
        .map(|v| v.as_i64().unwrap_or(0))
        .sum();
    assert_eq!(stages, 3, "every member has exactly one stage: {doc}");
    let in_grid: i64 = doc["rf_grid"]
        .as_array()
        .expect("grid")
        .iter()
        .map(|c| c["members"].as_i64().unwrap_or(0))
        .sum();
    assert_eq!(in_grid, 1, "only c1 ever bought: {doc}");
    assert_eq!(doc["without_rfm"], 2);
    assert_eq!(doc["sample"].as_array().map(Vec::len), Some(2));
    let table = p.herald(&db, &["segment", "preview", "guangdong"]);
    table.expect_code(0);
    assert!(
        table.stdout().contains("segment `guangdong`: 3 member(s)"),
        "{}",
        table.stdout()
    );
    let unknown = p.herald(&db, &["segment", "preview", "guangdongg"]);
    unknown.expect_code(2);
    db.drop_db().await;
}

on_both_databases!(preview_counts_members_grid_and_stages);
