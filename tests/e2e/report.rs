//! `herald report` end to end, on SQLite and PostgreSQL: the demo's win-back
//! campaign is sent to a generated audience, conversions in which the
//! discount truly works best come in through `herald import events` (which
//! attributes them), and the report names the discount with p < 0.05, shows
//! the lift over the holdout and over the global holdout, and passes the
//! split; a second run whose arms were rewritten in the database fails it.
//! Another test parses the table, JSON and CSV of one report and checks that
//! they say the same.

use std::collections::BTreeMap;

use herald_domain::assign::unit_hash;
use herald_storage::Db;
use herald_tests::{Backend, Project, TestDb};
use sea_orm::{ConnectionTrait, Statement};
use serde_json::Value;

use crate::setup;

/// The example files the demo embeds: the win-back campaign as shipped.
const FILES: [(&str, &str); 9] = [
    (
        "config/segments/lapsed_buyers.toml",
        include_str!("../../config/segments/lapsed_buyers.toml"),
    ),
    (
        "config/campaigns/winback.toml",
        include_str!("../../config/campaigns/winback.toml"),
    ),
    (
        "templates/winback/discount.email.hbs",
        include_str!("../../templates/winback/discount.email.hbs"),
    ),
    (
        "templates/winback/discount.email.zh-CN.hbs",
        include_str!("../../templates/winback/discount.email.zh-CN.hbs"),
    ),
    (
        "templates/winback/reminder.email.hbs",
        include_str!("../../templates/winback/reminder.email.hbs"),
    ),
    (
        "templates/winback/discount.sms.hbs",
        include_str!("../../templates/winback/discount.sms.hbs"),
    ),
    (
        "templates/winback/discount.sms.zh-CN.hbs",
        include_str!("../../templates/winback/discount.sms.zh-CN.hbs"),
    ),
    (
        "templates/winback/reminder.sms.hbs",
        include_str!("../../templates/winback/reminder.sms.hbs"),
    ),
    (
        "templates/winback/discount.push.hbs",
        include_str!("../../templates/winback/discount.push.hbs"),
    ),
];

const DAY_MS: i64 = 86_400_000;

/// The win-back campaign over `contacts` lapsed buyers, all reachable by
/// email, with a 5% global holdout and every channel to the outbox.
fn winback_project(p: &Project, contacts: usize) {
    for (rel, text) in FILES {
        p.write(rel, text);
    }
    p.write(
        "templates/winback/reminder.push.hbs",
        include_str!("../../templates/winback/reminder.push.hbs"),
    );
    p.write("config/herald.toml", "[defaults]\nglobal_holdout = 0.05\n");
    let mut people = String::from("external_id,email,first_name,region\n");
    let mut history = String::from("external_id,name,at,value,event_id\n");
    let now = chrono::Utc::now().timestamp_millis();
    for i in 0..contacts {
        people.push_str(&format!("r{i:05},r{i:05}@example.com,Ann,guangdong\n"));
        for (k, days) in [40, 100].into_iter().enumerate() {
            history.push_str(&format!(
                "r{i:05},order_placed,{},30,h-{i}-{k}\n",
                iso(now - days * DAY_MS)
            ));
        }
    }
    p.write("contacts.csv", &people);
    p.write("history.csv", &history);
}

fn iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .expect("instant")
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// How likely a contact of `arm` (or of the global holdout) is to order
/// within the goal window: the discount truly converts best.
fn order_rate(arm: &str, global_holdout: bool) -> f64 {
    match (arm, global_holdout) {
        (_, true) => 0.05,
        ("discount", _) => 0.16,
        ("reminder", _) => 0.08,
        _ => 0.06,
    }
}

async fn rows(db: &Db, sql: &str) -> Vec<sea_orm::QueryResult> {
    herald_storage::test_support::conn(db)
        .query_all_raw(Statement::from_string(db.backend(), sql.to_string()))
        .await
        .expect(sql)
}

async fn exec(db: &Db, sql: &str) {
    herald_storage::test_support::conn(db)
        .execute_unprepared(sql)
        .await
        .expect(sql);
}

/// Imports, sends the campaign `runs` times, then imports the outcomes of
/// every message of the first run (they fall in the later runs' windows too),
/// and marks some delivered emails opened and clicked as the tracking
/// server would. Returns the database.
async fn send_and_convert(p: &Project, db: &TestDb, contacts: usize, runs: usize) -> Db {
    winback_project(p, contacts);
    p.herald(db, &["import", "contacts", "contacts.csv"])
        .expect_code(0);
    p.herald(db, &["import", "events", "history.csv"])
        .expect_code(0);
    for _ in 0..runs {
        p.herald(db, &["send", "winback"]).expect_code(0);
    }
    let store = Db::connect(&db.url).await.expect("connect");
    let messages = rows(
        &store,
        "SELECT c.external_id, m.arm, m.reason, m.send_at FROM messages m JOIN contacts c ON c.id = m.contact_id WHERE m.run_id = 1",
    )
    .await;
    assert_eq!(messages.len(), contacts, "everyone is a lapsed buyer");
    let mut events = String::from("external_id,name,at,value,event_id\n");
    for m in &messages {
        let external_id: String = m.try_get_by_index(0).unwrap();
        let arm: String = m.try_get_by_index(1).unwrap();
        let reason: Option<String> = m.try_get_by_index(2).unwrap();
        let send_at: i64 = m.try_get_by_index(3).unwrap();
        let global = reason.as_deref() == Some("global_holdout");
        if unit_hash("e2e-order", &external_id) < order_rate(&arm, global) {
            events.push_str(&format!(
                "{external_id},order_placed,{},40,o-{external_id}\n",
                iso(send_at + 2 * 3_600_000)
            ));
        }
        if unit_hash("e2e-app", &external_id) < 0.3 {
            events.push_str(&format!(
                "{external_id},app_open,{},,a-{external_id}\n",
                iso(send_at + 3_600_000)
            ));
        }
    }
    p.write("outcomes.csv", &events);
    p.herald(db, &["import", "events", "outcomes.csv"])
        .expect_code(0);
    exec(
        &store,
        "UPDATE messages SET opened_at = send_at + 60000, open_count = 1 WHERE status = 'delivered' AND id % 3 = 0",
    )
    .await;
    exec(
        &store,
        "UPDATE messages SET machine_opened_at = send_at + 1000, open_count = open_count + 1 WHERE status = 'delivered' AND id % 5 = 0",
    )
    .await;
    exec(
        &store,
        "UPDATE messages SET clicked_at = send_at + 90000, click_count = 1 WHERE status = 'delivered' AND id % 6 = 0",
    )
    .await;
    store
}

fn json_report(p: &Project, db: &TestDb, extra: &[&str]) -> Value {
    let mut args = vec!["report", "winback", "--format", "json"];
    args.extend_from_slice(extra);
    let run = p.herald(db, &args);
    run.expect_code(0);
    serde_json::from_str(&run.stdout()).expect("the report is JSON")
}

fn comparison<'a>(scope: &'a Value, variant: &str, control: &str) -> &'a Value {
    scope["comparisons"]
        .as_array()
        .expect("comparisons")
        .iter()
        .find(|c| c["variant"] == variant && c["control"] == control)
        .unwrap_or_else(|| panic!("no {variant} vs {control} in {scope}"))
}

async fn the_report_names_the_variant_that_converts_better(backend: Backend) {
    let Some((p, db)) = setup(backend).await else {
        return;
    };
    let store = send_and_convert(&p, &db, 3_000, 2).await;

    let r = json_report(&p, &db, &["--run", "1"]);
    let total = &r["total"];
    let arms: Vec<&str> = total["arms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["arm"].as_str().unwrap())
        .collect();
    assert_eq!(arms, ["discount", "reminder", "holdout"]);
    let win = comparison(total, "discount", "holdout");
    assert_eq!(win["result"]["outcome"], "estimate", "{win}");
    let p_value = win["result"]["p_value"].as_f64().unwrap();
    assert!(p_value < 0.05, "{win}");
    assert!(win["result"]["rel_lift"].as_f64().unwrap() > 0.5, "{win}");
    assert!(win["result"]["rel_ci"]["lower"].as_f64().unwrap() > 0.0);
    assert_eq!(win["significant"], true);
    let sentence = win["sentence"].as_str().unwrap();
    assert!(
        sentence.starts_with("discount beat the holdout: +"),
        "{sentence}"
    );
    // Each variant against the first, too.
    let against_first = comparison(total, "reminder", "discount");
    assert!(
        against_first["result"]["p_value"].as_f64().unwrap() < 0.05
            && against_first["sentence"]
                .as_str()
                .unwrap()
                .starts_with("reminder did worse than discount: -"),
        "{against_first}"
    );
    let srm = &total["srm"];
    assert_eq!(srm["mismatch"], false, "{srm}");
    assert_eq!(srm["weights_from"], "run");
    assert!(srm["p_value"].as_f64().unwrap() >= 0.001);

    // Intention to treat: every message counts, the global holdout's apart.
    let discount = &total["arms"][0];
    let assigned = discount["assigned"].as_u64().unwrap();
    let global = discount["global_holdout"].as_u64().unwrap();
    assert!(global > 0, "{discount}");
    let in_db = rows(
        &store,
        "SELECT COUNT(*), COUNT(converted_at) FROM messages WHERE run_id = 1 AND arm = 'discount' AND NOT (status = 'suppressed' AND reason = 'global_holdout')",
    )
    .await;
    let (n, k): (i64, i64) = (
        in_db[0].try_get_by_index(0).unwrap(),
        in_db[0].try_get_by_index(1).unwrap(),
    );
    assert_eq!(
        (assigned, discount["converted"].as_u64().unwrap()),
        (n as u64, k as u64)
    );
    assert!(k > 0);
    assert_eq!(discount["revenue"].as_f64().unwrap(), 40.0 * k as f64);
    assert_eq!(discount["secondary"][0]["event"], "app_open");
    assert!(discount["secondary"][0]["reached"].as_u64().unwrap() > 0);
    assert!(discount["opened"].as_u64().unwrap() > 0);

    let g = &r["global_holdout"];
    assert_eq!(g["fraction"], 0.05);
    assert_eq!(g["srm"]["mismatch"], false, "{g}");
    assert!(
        g["comparison"]["result"]["rel_lift"].as_f64().unwrap() > 0.0,
        "marketing lifts conversions over the global holdout: {g}"
    );

    // Run 2 had a fifth of its `reminder` contacts moved to `discount` behind
    // the assignment's back: the split check must catch it.
    exec(
        &store,
        "UPDATE messages SET arm = 'discount' WHERE run_id = 2 AND arm = 'reminder' AND contact_id % 5 = 0",
    )
    .await;
    let skewed = json_report(&p, &db, &["--run", "2"]);
    let srm = &skewed["total"]["srm"];
    assert_eq!(srm["mismatch"], true, "{srm}");
    assert!(srm["p_value"].as_f64().unwrap() < 0.001);
    assert!(
        skewed["total"]["summary"][0]
            .as_str()
            .unwrap()
            .starts_with("sample ratio mismatch"),
        "the broken split is said first: {}",
        skewed["total"]["summary"]
    );
    let table = p.herald(&db, &["report", "winback", "--run", "2"]);
    table.expect_code(0);
    assert!(
        table.stdout().contains("* sample ratio mismatch ("),
        "{}",
        table.stdout()
    );
    // Over both runs, run 2's line in the per-run table is flagged.
    let both = p.herald(&db, &["report", "winback"]);
    both.expect_code(0);
    assert!(both.stdout().contains("MISMATCH"), "{}", both.stdout());
    assert!(
        both.stdout().contains("* run 2: sample ratio mismatch"),
        "{}",
        both.stdout()
    );
    // Run 1 is untouched.
    assert_eq!(
        json_report(&p, &db, &["--run", "1"])["total"]["srm"]["mismatch"],
        false
    );

    let unknown = p.herald(&db, &["report", "nope"]);
    unknown.expect_code(2);
    assert!(
        unknown.stderr().contains("no campaign named `nope`")
            && unknown.stderr().contains("(known: winback)"),
        "{}",
        unknown.stderr()
    );
    p.herald(&db, &["report", "winback", "--since", "last week"])
        .expect_code(2);
    drop(store);
    db.drop_db().await;
}

/// The tables of comfy-table's UTF8_FULL_CONDENSED output: header and rows.
fn tables(text: &str) -> Vec<(Vec<String>, Vec<Vec<String>>)> {
    let mut out = Vec::new();
    let mut current: Option<(Vec<String>, Vec<Vec<String>>)> = None;
    for line in text.lines() {
        if line.starts_with('┌') {
            current = Some((Vec::new(), Vec::new()));
        } else if line.starts_with('└') {
            out.extend(current.take());
        } else if let (Some((header, rows)), true) = (current.as_mut(), line.starts_with('│')) {
            let cells: Vec<String> = line
                .trim_matches('│')
                .split(['┆', '│'])
                .map(|c| c.trim().to_string())
                .collect();
            if header.is_empty() {
                *header = cells;
            } else {
                rows.push(cells);
            }
        }
    }
    out
}

/// The table whose header starts with `first` and `second`, as maps by column.
fn table_rows(text: &str, first: &str, second: &str) -> Vec<BTreeMap<String, String>> {
    let (header, rows) = tables(text)
        .into_iter()
        .find(|(h, _)| h.len() > 1 && h[0] == first && h[1] == second)
        .unwrap_or_else(|| panic!("no table {first} | {second} in\n{text}"));
    rows.into_iter()
        .map(|r| header.iter().cloned().zip(r).collect())
        .collect()
}

/// A percentage cell ("6.52%", "+12.30%") as a fraction.
fn percent(cell: &str) -> f64 {
    cell.trim_end_matches('%').parse::<f64>().expect(cell) / 100.0
}

fn close(a: f64, b: f64, tolerance: f64, what: &str) {
    assert!((a - b).abs() <= tolerance, "{what}: {a} vs {b}");
}

async fn table_json_and_csv_agree(backend: Backend) {
    let Some((p, db)) = setup(backend).await else {
        return;
    };
    let store = send_and_convert(&p, &db, 1_200, 1).await;
    let json = json_report(&p, &db, &[]);
    // Every column, as wide as it needs: the narrow default is checked below.
    let table = p.herald(&db, &["report", "winback", "--format", "table", "--wide"]);
    table.expect_code(0);
    let table = table.stdout();
    let narrow = p.herald(&db, &["report", "winback"]);
    narrow.expect_code(0);
    let narrow = narrow.stdout();
    for line in narrow
        .lines()
        .filter(|l| !l.starts_with("* ") && !l.starts_with("report of"))
    {
        assert!(
            line.chars().count() <= 100,
            "wider than 100 columns: {line}\n{narrow}"
        );
    }
    let csv_run = p.herald(&db, &["report", "winback", "--format", "csv"]);
    csv_run.expect_code(0);
    let csv_text = csv_run.stdout();
    let mut reader = csv::Reader::from_reader(csv_text.as_bytes());
    let header = reader.headers().expect("csv header").clone();
    let csv_rows: Vec<BTreeMap<String, String>> = reader
        .records()
        .map(|r| {
            header
                .iter()
                .map(str::to_string)
                .zip(r.expect("csv row").iter().map(str::to_string))
                .collect()
        })
        .collect();

    let arms = json["total"]["arms"].as_array().unwrap();
    let delivery = table_rows(&table, "arm", "assigned");
    let outcomes = table_rows(&table, "arm", "delivery");
    let total_csv: Vec<&BTreeMap<String, String>> =
        csv_rows.iter().filter(|r| r["scope"] == "total").collect();
    assert_eq!(arms.len(), 3);
    assert_eq!((delivery.len(), outcomes.len(), total_csv.len()), (3, 3, 3));
    // One run: the run's rows repeat the total's.
    assert_eq!(csv_rows.len(), 6);
    for (i, arm) in arms.iter().enumerate() {
        let name = arm["arm"].as_str().unwrap();
        let (d, o, c) = (&delivery[i], &outcomes[i], total_csv[i]);
        assert_eq!((d["arm"].as_str(), c["arm"].as_str()), (name, name));
        for (json_key, table_key) in [
            ("assigned", "assigned"),
            ("sent", "sent"),
            ("delivered", "delivered"),
            ("bounced", "bounced"),
            ("failed", "failed"),
            ("unknown", "unknown"),
            ("pending", "pending"),
            ("held_out", "held out"),
            ("suppressed", "suppressed"),
            ("cancelled", "cancelled"),
            ("global_holdout", "global holdout"),
        ] {
            let n = arm[json_key].as_u64().unwrap().to_string();
            assert_eq!(d[table_key], n, "{name} {json_key} (table)");
            assert_eq!(c[json_key], n, "{name} {json_key} (csv)");
        }
        for key in [
            "opened",
            "machine_opened",
            "clicked",
            "unsubscribed",
            "complained",
            "converted",
        ] {
            let n = arm[key].as_u64().unwrap().to_string();
            assert_eq!(o[&key.replace('_', " ")], n, "{name} {key} (table)");
            assert_eq!(c[key], n, "{name} {key} (csv)");
        }
        let revenue = arm["revenue"].as_f64().unwrap();
        close(
            c["revenue"].parse::<f64>().unwrap(),
            revenue,
            1e-9,
            "revenue",
        );
        assert_eq!(o["revenue"], format!("{revenue:.2}"));
        for (json_key, table_key, csv_key) in [
            ("delivery", "delivery", "delivery_rate"),
            ("open", "open rate", "open_rate"),
            ("click", "click rate", "click_rate"),
            ("conversion", "conversion", "conversion_rate"),
        ] {
            match arm["rates"][json_key].as_f64() {
                Some(rate) => {
                    close(percent(&o[table_key]), rate, 0.00005, table_key);
                    // serde_json (without float_roundtrip) may read a float 1 ulp off.
                    close(c[csv_key].parse::<f64>().unwrap(), rate, 1e-12, csv_key);
                }
                None => assert!(o[table_key].is_empty() && c[csv_key].is_empty()),
            }
        }
        let app = &arm["secondary"][0];
        assert_eq!(
            o["app_open reached"],
            app["reached"].as_u64().unwrap().to_string()
        );
        assert_eq!(
            c["app_open_reached"],
            app["reached"].as_u64().unwrap().to_string()
        );
        if let Some(srm) = json["total"]["srm"]["p_value"].as_f64() {
            close(
                c["srm_p_value"].parse::<f64>().unwrap(),
                srm,
                1e-12,
                "srm_p_value",
            );
        }
    }

    // The comparisons: the table's rounded numbers and the CSV's exact ones.
    let compared = table_rows(&table, "variant", "vs");
    let comparisons = json["total"]["comparisons"].as_array().unwrap();
    assert_eq!(compared.len(), comparisons.len());
    assert_eq!(
        comparisons.len(),
        3,
        "two against the holdout, one against the first"
    );
    for (t, j) in compared.iter().zip(comparisons) {
        assert_eq!(t["variant"], j["variant"].as_str().unwrap());
        assert_eq!(t["vs"], j["control"].as_str().unwrap());
        let e = &j["result"];
        assert_eq!(e["outcome"], "estimate");
        close(
            percent(&t["lift"]),
            e["rel_lift"].as_f64().unwrap(),
            0.00005,
            "lift",
        );
        let (lo, hi) = t["95% CI"].split_once(" to ").expect("an interval");
        close(
            percent(lo),
            e["rel_ci"]["lower"].as_f64().unwrap(),
            0.00005,
            "ci lower",
        );
        close(
            percent(hi),
            e["rel_ci"]["upper"].as_f64().unwrap(),
            0.00005,
            "ci upper",
        );
        close(
            t["p-value"].parse().unwrap(),
            e["p_value"].as_f64().unwrap(),
            0.00005,
            "p-value",
        );
        let chance = e["chance_to_beat"].as_f64().unwrap();
        match t["chance to beat"].as_str() {
            ">99.9%" => assert!(chance > 0.999, "{chance}"),
            "<0.1%" => assert!(chance < 0.001, "{chance}"),
            cell => close(percent(cell), chance, 0.0005, "chance"),
        }
        assert!(
            table.contains(&format!("* {}", j["sentence"].as_str().unwrap())),
            "the sentence is under the table"
        );
        let prefix = if j["control"] == "holdout" {
            "vs_control"
        } else {
            "vs_first"
        };
        let row = total_csv
            .iter()
            .find(|r| r["arm"] == j["variant"].as_str().unwrap())
            .unwrap();
        assert_eq!(
            row[&format!("{prefix}_arm")],
            j["control"].as_str().unwrap()
        );
        // The CSV prints each float exactly; serde_json may read one back 1 ulp off.
        let exact = |a: f64, b: f64, what: &str| close(a, b, 1e-12 * b.abs().max(1.0), what);
        for key in ["rel_lift", "p_value", "chance_to_beat"] {
            exact(
                row[&format!("{prefix}_{key}")].parse::<f64>().unwrap(),
                e[key].as_f64().unwrap(),
                &format!("{prefix}_{key}"),
            );
        }
        exact(
            row[&format!("{prefix}_ci_lower")].parse::<f64>().unwrap(),
            e["rel_ci"]["lower"].as_f64().unwrap(),
            "ci_lower",
        );
    }
    drop(store);
    db.drop_db().await;
}

/// `GET path` over a plain HTTP/1.1 connection: (status, body).
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    http_get_as(port, path, Some(API_TOKEN))
}

/// The report API's bearer token in these tests.
const API_TOKEN: &str = "report-api-token-0123";

/// `GET path` with `token` as its bearer token, if any.
fn http_get_as(port: u16, path: &str, token: Option<&str>) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Connection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// Kills the server when the test ends, however it ends.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn the_api_serves_the_same_report(backend: Backend) {
    let Some((p, db)) = setup(backend).await else {
        return;
    };
    let store = send_and_convert(&p, &db, 600, 1).await;
    let free_port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port()
    };
    let (public, port) = (free_port(), free_port());
    p.write(
        "config/herald.toml",
        &format!(
            "[defaults]\nglobal_holdout = 0.05\n\n[tracking]\nlisten = \"127.0.0.1:{public}\"\nadmin_listen = \"127.0.0.1:{port}\"\n"
        ),
    );
    let _server = Server(
        std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
            .arg("serve")
            .current_dir(p.path())
            .env("HERALD_DATABASE_URL", &db.url)
            .env("HERALD_SECRET", herald_tests::SECRET)
            .env("HERALD_API_TOKEN", API_TOKEN)
            .env_remove("HERALD_CONFIG")
            .env_remove("HERALD_TEMPLATES")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start herald serve"),
    );
    let mut ready = false;
    for _ in 0..100 {
        if http_get(port, "/healthz").is_some_and(|(status, _)| status == 200) {
            ready = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(ready, "herald serve did not answer /healthz");
    // The public listener serves recipients and providers, never the API.
    let (status, _) = http_get(public, "/healthz").expect("the public listener answers");
    assert_eq!(status, 200);
    let (status, _) = http_get(public, "/api/campaigns/winback/report?run=1").expect("answer");
    assert_eq!(status, 404, "the report API is not on the public listener");

    // Without the token, or with another, the API tells nothing.
    for token in [None, Some("wrong")] {
        let (status, _) =
            http_get_as(port, "/api/campaigns/winback/report?run=1", token).expect("answer");
        assert_eq!(status, 401);
    }
    let (status, body) = http_get(port, "/api/campaigns/winback/report?run=1").expect("answer");
    assert_eq!(status, 200, "{body}");
    let mut served: Value = serde_json::from_str(&body).expect("JSON");
    let mut printed = json_report(&p, &db, &["--run", "1"]);
    for r in [&mut served, &mut printed] {
        r["generated_at"] = Value::Null;
    }
    assert_eq!(served, printed, "the API and `--format json` agree");
    assert_eq!(served["filter"]["run"], 1);

    let (status, body) = http_get(port, "/api/campaigns/nope/report").expect("answer");
    assert_eq!(status, 404, "{body}");
    let (status, body) =
        http_get(port, "/api/campaigns/winback/report?since=yesterday").expect("answer");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("RFC 3339"), "{body}");
    let (status, _) = http_get(port, "/api/campaigns/winback/report?colour=red").expect("answer");
    assert_eq!(status, 400);
    drop(store);
    db.drop_db().await;
}

/// SPEC section 3: the demo ends with the A/B report, and its simulated
/// shoppers make the discount win (the demo is seeded: this is its result).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_ends_with_the_ab_report() {
    let p = crate::project();
    let db = TestDb::new(Backend::Sqlite, p.path())
        .await
        .expect("sqlite");
    let run = p.herald(&db, &["demo", "--dir", "demo"]);
    run.expect_code(0);
    let out = run.stdout();
    let report = out
        .split_once("\nreport of `winback` (marketing, goal order_placed within 3d): 1 run(s)")
        .map(|(_, r)| r)
        .unwrap_or_else(|| panic!("no report at the end of the demo:\n{out}"));
    for line in [
        "* the split fits the weights (sample ratio check p = ",
        "* discount beat the holdout: +",
        "* reminder did worse than discount: -",
    ] {
        assert!(report.contains(line), "{line}\n{report}");
    }
    let outcomes = table_rows(report, "arm", "delivery");
    let rate = |arm: &str| {
        let row = outcomes.iter().find(|r| r["arm"] == arm).expect(arm);
        (
            percent(&row["conversion"]),
            row["clicked"].parse::<u64>().unwrap(),
        )
    };
    let (discount, reminder, holdout) = (rate("discount"), rate("reminder"), rate("holdout"));
    assert!(
        discount.0 > reminder.0 && reminder.0 > holdout.0,
        "{report}"
    );
    assert!(
        discount.1 > 0 && holdout.1 == 0,
        "only sent messages are clicked"
    );
}

on_both_databases!(
    the_report_names_the_variant_that_converts_better,
    table_json_and_csv_agree,
    the_api_serves_the_same_report
);
