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

/// One HTTP/1.1 exchange on 127.0.0.1:`port`: status, head and body.
fn http(port: u16, request: &str) -> (u16, String, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.write_all(request.as_bytes()).expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let (head, body) = response.split_once("\r\n\r\n").expect("a response");
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head.to_string(), body.to_string())
}

/// The value of the cookie `name` a response's head sets.
fn cookie(head: &str, name: &str) -> String {
    head.lines()
        .filter_map(|l| {
            l.strip_prefix("set-cookie: ")
                .or_else(|| l.strip_prefix("Set-Cookie: "))
        })
        .find_map(|c| c.strip_prefix(&format!("{name}=")))
        .and_then(|c| c.split(';').next())
        .unwrap_or_else(|| panic!("no {name} cookie in {head}"))
        .to_string()
}

/// `herald serve`'s console shows a segment with the figures `herald
/// segment preview --format json` prints: the real binary on both sides.
async fn the_consoles_segment_page_shows_what_segment_preview_prints(backend: Backend) {
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
            "[tracking]\npublic_url = \"https://t.example.com\"\nlisten = \"127.0.0.1:{public}\"\nadmin_listen = \"127.0.0.1:{port}\"\n"
        ),
    );
    let run = p.herald(
        &db,
        &["segment", "preview", "guangdong", "--format", "json"],
    );
    run.expect_code(0);
    let printed: serde_json::Value = serde_json::from_str(&run.stdout()).expect("json");

    struct Server(std::process::Child);
    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let password = "console-e2e-password";
    let _server = Server(
        std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
            .arg("serve")
            .current_dir(p.path())
            .env("HERALD_DATABASE_URL", &db.url)
            .env("HERALD_SECRET", herald_tests::SECRET)
            .env("HERALD_CONSOLE_PASSWORD", password)
            .env_remove("HERALD_CONFIG")
            .env_remove("HERALD_TEMPLATES")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start herald serve"),
    );
    let get = |path: &str, cookie: &str| {
        http(
            port,
            &format!(
                "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"
            ),
        )
    };
    let mut ready = false;
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            ready = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(ready, "herald serve did not listen");
    // Sign in as the form does.
    let (status, head, body) = get("/console/sign-in", "");
    assert_eq!(status, 200, "{body}");
    let pre = cookie(&head, "herald_pre");
    let at = body.find("name=\"csrf\" value=\"").expect("a CSRF field") + 19;
    let csrf = body[at..].split('"').next().unwrap();
    let form = format!("csrf={csrf}&password={password}");
    let (status, head, _) = http(
        port,
        &format!(
            "POST /console/sign-in HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: herald_pre={pre}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{form}",
            form.len()
        ),
    );
    assert_eq!(status, 303, "{head}");
    let session = format!("herald_session={}", cookie(&head, "herald_session"));

    let (status, _, page) = get("/console/segments/guangdong", &session);
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains(&format!(
            "id=\"members-segment\">{}</strong>",
            printed["members"]
        )),
        "{} members not in {page}",
        printed["members"]
    );
    for (stage, n) in printed["lifecycle"].as_object().expect("stages") {
        let row = format!("<tr><td>{stage}</td><td>{n}</td></tr>");
        assert!(page.contains(&row), "{row} not in {page}");
    }
    let mut in_grid = 0;
    for cell in printed["rf_grid"].as_array().expect("grid") {
        let title = format!(
            "<title>R {}, F {}: {} members</title>",
            cell["r"], cell["f"], cell["members"]
        );
        assert!(page.contains(&title), "{title} not in {page}");
        in_grid += 1;
    }
    assert_eq!(in_grid, 1, "only c1 ever bought");
    assert!(
        page.contains(&format!("{} never bought", printed["without_rfm"])),
        "{page}"
    );
    for c in printed["sample"].as_array().expect("sample") {
        let id = c["external_id"].as_str().unwrap();
        assert!(
            page.contains(&format!("<a href=\"/console/contacts/{id}\">{id}</a>")),
            "{id}"
        );
    }
    // The list page counts the same.
    let (_, _, list) = get("/console/segments", &session);
    assert!(
        list.contains(&format!("</code></td><td>{}</td>", printed["members"])),
        "{list}"
    );
    db.drop_db().await;
}

on_both_databases!(
    preview_counts_members_grid_and_stages,
    the_consoles_segment_page_shows_what_segment_preview_prints,
);
