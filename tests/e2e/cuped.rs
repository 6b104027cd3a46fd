//! CUPED through the binary (issue 33): `herald send` stores each contact's
//! purchases of the 30 days before it on its message, and `herald report`
//! adjusts conversion, ARPU and LTV by them, saying so in the JSON, the
//! table and the CSV with the variance removed.

use herald_tests::Backend;
use serde_json::Value;

use crate::setup;

const DAY: i64 = 86_400_000;

/// Contact `i`'s spend in the 30 days before the send (0: none).
fn before(i: i64) -> i64 {
    if i % 3 == 0 { 10 + i % 7 * 5 } else { 0 }
}

/// Its purchase after the message: mostly those who bought before, for about what they spent.
fn after(i: i64) -> Option<i64> {
    (before(i) > 0 && i % 2 == 0 || i % 11 == 0).then(|| before(i) + 3 + i % 4)
}

async fn the_report_applies_cuped_from_purchases_before_the_send(backend: Backend) {
    let Some((p, db)) = setup(backend).await else {
        return;
    };
    p.write(
        "config/segments/all.toml",
        "name = \"all\"\nwhere = 'email contains \"@\"'\n",
    );
    let campaign = "name = \"cup\"\nsegment = \"all\"\nschedule = \"manual\"\nchannels = [\"email\"]\nholdout = 0.5\n\
         goal = { event = \"order_placed\", within = \"3d\" }\n\n\
         [[variants]]\nname = \"a\"\nemail = { subject = \"s\", template = \"t/a.email.hbs\" }\n\n\
         [results]\nrevenue_event = \"order_placed\"\ncuped = { days = 30 }\n";
    p.write("config/campaigns/cup.toml", campaign);
    p.write("templates/t/a.email.hbs", "<p>Hi</p>\n");
    let mut contacts = String::from("external_id,email\n");
    let mut events = String::from("external_id,name,at,value,event_id\n");
    let now = chrono::Utc::now().timestamp_millis();
    let stamp = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms)
            .unwrap()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    };
    for i in 0..120 {
        contacts.push_str(&format!("u{i},u{i}@example.com\n"));
        if before(i) > 0 {
            let at = stamp(now - (i % 25 + 1) * DAY);
            events.push_str(&format!("u{i},order_placed,{at},{},pre{i}\n", before(i)));
        }
        // Older than the window: not part of the history.
        if i % 5 == 0 {
            let at = stamp(now - 40 * DAY);
            events.push_str(&format!("u{i},order_placed,{at},500,old{i}\n"));
        }
    }
    p.write("contacts.csv", &contacts);
    p.write("events.csv", &events);
    p.herald(&db, &["import", "contacts", "contacts.csv"])
        .expect_code(0);
    p.herald(&db, &["import", "events", "events.csv"])
        .expect_code(0);
    p.herald(&db, &["send", "cup"]).expect_code(0);

    // Each message holds its contact's spend before the send.
    let store = herald_storage::Db::connect(&db.url).await.expect("connect");
    use sea_orm::ConnectionTrait;
    let rows = herald_storage::test_support::conn(&store)
        .query_all_raw(sea_orm::Statement::from_string(
            store.backend(),
            "SELECT c.external_id, m.pre_converted, CAST(m.pre_revenue AS DOUBLE PRECISION), m.send_at \
             FROM messages m JOIN contacts c ON c.id = m.contact_id"
                .to_string(),
        ))
        .await
        .expect("messages");
    assert_eq!(rows.len(), 120);
    // The purchases after the message, a day after it, as events.
    let mut later = String::from("external_id,name,at,value,event_id\n");
    for r in &rows {
        let who: String = r.try_get_by_index(0).unwrap();
        let i: i64 = who[1..].parse().unwrap();
        let converted: Option<i32> = r.try_get_by_index(1).unwrap();
        let revenue: Option<f64> = r.try_get_by_index(2).unwrap();
        assert_eq!(
            (converted, revenue),
            (Some(i32::from(before(i) > 0)), Some(before(i) as f64)),
            "{who}"
        );
        let send_at: i64 = r.try_get_by_index(3).unwrap();
        if let Some(v) = after(i) {
            // The send is moved a week back first: its day after is in the past.
            let at = stamp(send_at - 7 * DAY + DAY);
            later.push_str(&format!("{who},order_placed,{at},{v},post{i}\n"));
        }
    }
    herald_storage::test_support::conn(&store)
        .execute_unprepared(&format!(
            "UPDATE messages SET send_at = send_at - {}",
            7 * DAY
        ))
        .await
        .expect("move the run back");
    p.write("later.csv", &later);
    p.herald(&db, &["import", "events", "later.csv"])
        .expect_code(0);

    let run = p.herald(&db, &["report", "cup", "--format", "json"]);
    run.expect_code(0);
    let doc: Value = serde_json::from_str(&run.stdout()).expect("report JSON");
    assert_eq!(doc["statistics"]["cuped_days"], 30, "{}", doc["statistics"]);
    let conversion = &doc["total"]["comparisons"][0];
    assert_eq!(conversion["cuped"]["outcome"], "estimate", "{conversion}");
    let arpu = doc["total"]["metric_comparisons"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["metric"] == "arpu")
        .expect("ARPU compared");
    assert_eq!(arpu["variant_sums"]["kind"], "adjusted", "{arpu}");
    let reduction = arpu["result"]["variance_reduction"].as_f64().unwrap();
    assert!(reduction > 0.3, "{arpu}");
    // The sums hold the purchases: all of them, the old ones left out.
    let pre = |sums: &Value| sums["pre"]["sum"].as_f64().unwrap();
    let all: f64 = (0..120).map(|i| before(i) as f64).sum();
    assert_eq!(pre(&arpu["variant_sums"]) + pre(&arpu["control_sums"]), all);
    // Revenue per converting contact is adjusted as a ratio, by the goal's
    // revenue and conversions before the message.
    let per_converter = doc["total"]["metric_comparisons"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["metric"] == "revenue_per_converter")
        .expect("revenue per converter compared");
    let sums = &per_converter["variant_sums"];
    assert_eq!(sums["kind"], "adjusted_ratio", "{per_converter}");
    let pre_goal = |sums: &Value| sums["pre_numerator"]["sum"].as_f64().unwrap();
    assert_eq!(
        pre_goal(sums) + pre_goal(&per_converter["control_sums"]),
        all
    );
    assert!(
        per_converter["result"]["variance_reduction"].is_f64(),
        "{per_converter}"
    );

    let table = p.herald(&db, &["report", "cup"]);
    table.expect_code(0);
    let out = table.stdout();
    for want in ["CUPED is applied", "CUPED variance", "CUPED removed"] {
        assert!(out.contains(want), "{want}: {out}");
    }
    // The tables fit 100 columns (the sentences under them are prose).
    assert!(
        out.lines()
            .filter(|l| !l.starts_with("* "))
            .all(|l| l.chars().count() <= 100),
        "{out}"
    );
    let csv = p.herald(&db, &["report", "cup", "--format", "csv"]);
    csv.expect_code(0);
    let text = csv.stdout();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let at = |name: &str| header.iter().position(|h| *h == name).expect(name);
    // The CUPED columns are last: no quoted comma after them to split on.
    let cells: Vec<&str> = lines.next().unwrap().rsplit(',').collect();
    assert_eq!(cells[header.len() - 1 - at("cuped_days")], "30", "{text}");
    at("arpu_vs_control_variance_reduction");
    at("revenue_per_converter_vs_control_variance_reduction");
    db.drop_db().await;
}

on_both_databases!(the_report_applies_cuped_from_purchases_before_the_send);

/// A triggered campaign's messages take their history too, up to the
/// triggering event: the purchase that triggers is not its own history.
async fn a_triggered_message_takes_the_history_before_its_event(backend: Backend) {
    use herald_engine::clock::FixedClock;
    use herald_engine::store::Store;
    use herald_engine::trigger::TriggerPlanner;
    use sea_orm::ConnectionTrait;
    use std::sync::Arc;

    let Some((p, db)) = setup(backend).await else {
        return;
    };
    p.write(
        "config/herald.toml",
        "[channels.email]\nprovider = \"smtp\"\nhost = \"127.0.0.1\"\nport = 2525\nfrom = \"Shop <news@example.com>\"\n",
    );
    p.write(
        "config/campaigns/thanks.toml",
        "name = \"thanks\"\nwhere = 'email contains \"@\"'\nchannels = [\"email\"]\n\
         trigger = { event = \"order_placed\", delay = \"0s\" }\n\
         goal = { event = \"order_placed\", within = \"3d\" }\n\n\
         [[variants]]\nname = \"a\"\nemail = { subject = \"s\", template = \"t/a.email.hbs\" }\n\n\
         [results]\nrevenue_event = \"order_placed\"\ncuped = { days = 30 }\n",
    );
    p.write("templates/t/a.email.hbs", "<p>Thanks</p>\n");
    let mut contacts = String::from("external_id,email\n");
    for i in 0..6 {
        contacts.push_str(&format!("u{i},u{i}@example.com\n"));
    }
    p.write("contacts.csv", &contacts);
    p.herald(&db, &["import", "contacts", "contacts.csv"])
        .expect_code(0);
    let config = Arc::new(herald_domain::config::load(&p.path().join("config")).expect("config"));
    let storage = herald_storage::Db::connect(&db.url).await.expect("db");
    let store: Arc<dyn Store> = Arc::new(herald_storage::store::SqlStore::new(storage.clone()));
    let start = chrono::Utc::now();
    let clock = Arc::new(FixedClock::new(start));
    let at = start.timestamp_millis();
    let event = |id: i64, who: i64, offset: i64, value: f64| {
        let t = at + offset;
        format!(
            "INSERT INTO events (id, contact_id, name, at, value, received_at) SELECT {id}, id, 'order_placed', {t}, {value}, {t} FROM contacts WHERE external_id = 'u{who}'"
        )
    };
    // The history, stored before the planner starts (it triggers nothing):
    // u1 bought 40 and 2 in the window, u2 only long ago.
    for (id, who, offset, value) in [
        (1, 1, -5 * DAY, 40.0),
        (2, 1, -DAY, 2.0),
        (3, 2, -45 * DAY, 9.0),
    ] {
        let s = event(id, who, offset, value);
        herald_storage::test_support::conn(&storage)
            .execute_unprepared(&s)
            .await
            .expect(&s);
    }
    let mut planner = TriggerPlanner::new(store, clock.clone(), config);
    planner.pass().await.expect("pass");
    // Each of u1, u2 and u3 buys now: the purchase that triggers is not history.
    for (id, who) in [(10, 1), (11, 2), (12, 3)] {
        let s = event(id, who, 0, 15.0);
        herald_storage::test_support::conn(&storage)
            .execute_unprepared(&s)
            .await
            .expect(&s);
    }
    clock.advance(chrono::Duration::milliseconds(1100));
    let r = planner.pass().await.expect("pass");
    assert_eq!(r.planned, 3, "{r:?}");
    let rows = herald_storage::test_support::conn(&storage)
        .query_all_raw(sea_orm::Statement::from_string(
            storage.backend(),
            "SELECT c.external_id, m.pre_converted, CAST(m.pre_revenue AS DOUBLE PRECISION) \
             FROM messages m JOIN contacts c ON c.id = m.contact_id ORDER BY c.external_id"
                .to_string(),
        ))
        .await
        .expect("messages");
    let got: Vec<(String, Option<i32>, Option<f64>)> = rows
        .iter()
        .map(|r| {
            (
                r.try_get_by_index(0).unwrap(),
                r.try_get_by_index(1).unwrap(),
                r.try_get_by_index(2).unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("u1".to_string(), Some(1), Some(42.0)),
            ("u2".to_string(), Some(0), Some(0.0)),
            ("u3".to_string(), Some(0), Some(0.0)),
        ]
    );
    db.drop_db().await;
}

on_both_databases!(a_triggered_message_takes_the_history_before_its_event);
