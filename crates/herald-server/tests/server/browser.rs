//! The console in a real browser: headless Chromium driven over WebDriver
//! (see `webdriver.rs`). A marketer signs in, reads the campaigns and a
//! run, pauses and resumes it through the confirmation forms (so the CSRF
//! tokens work as a browser sends them), signs out and is shut out; with
//! JavaScript off every page still reads. Skipped, with a message, where
//! chromedriver is not installed, unless `HERALD_REQUIRE_BROWSER=1`.

use herald_server::console::report::{METRICS, pct};
use herald_storage::runs::{self, Which};
use herald_tests::Backend;

use crate::common::*;
use sea_orm::ConnectionTrait;

use crate::console::{PASSWORD, StorageReport, admin, config, preview_store, purchases, start};
use crate::webdriver::{Browser, ONE_AT_A_TIME, driver};

/// The rows of the table captioned `caption` on the page shown, each as
/// its cells' words joined by single spaces (whatever the driver puts
/// between cells).
pub async fn table_rows(b: &Browser, caption: &str) -> Vec<String> {
    for t in b.all("main table").await {
        let text = b.text(&t).await;
        let mut lines = text.lines();
        if lines.next().map(str::trim) == Some(caption) {
            return lines
                .skip(1) // the header row
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
                .collect();
        }
    }
    panic!("no table captioned `{caption}` on {}", b.url().await);
}

/// Signs in through the form, as a person would.
pub async fn sign_in(b: &Browser, app: &App, password: &str) {
    b.goto(&admin(app, "/console/sign-in")).await;
    let field = b.the("#password").await;
    b.type_into(&field, password).await;
    b.click_on("main form button[type=submit]").await;
    if password == PASSWORD {
        b.wait_for_url("/console/").await;
    } else {
        b.wait_for("[role=alert]").await;
    }
}

/// What `herald status` counts for run `id`, as the page writes each row.
async fn status_rows(app: &App, id: i64) -> Vec<String> {
    let status = runs::status_of(&app.db, now_ms(), Which::One(id))
        .await
        .unwrap();
    status.runs[0]
        .counts
        .iter()
        .map(|(s, n)| format!("{s} {n}"))
        .collect()
}

async fn run_state(app: &App, id: i64) -> String {
    app.text(&format!("SELECT state FROM runs WHERE id = {id}"))
        .await
        .unwrap()
}

/// Sign in, read, pause and resume, sign out: JavaScript on.
async fn a_marketer_signs_in_reads_pauses_resumes_and_signs_out(app: &App) {
    let Some(driver) = driver() else { return };
    let _one = ONE_AT_A_TIME.lock().await;
    let b = Browser::open(&driver, true, 1000).await;

    // Signed out, the console sends the browser to sign in.
    b.goto(&admin(app, "/console/runs/1")).await;
    b.wait_for_url("/console/sign-in").await;
    sign_in(&b, app, "not-the-password").await;
    assert_eq!(b.text_of("[role=alert]").await, "Wrong password.");
    sign_in(&b, app, PASSWORD).await;
    b.wait_for_url("/console/").await;
    assert_eq!(b.title().await, "Campaigns · herald");
    // The session cookie is there, and page scripts cannot read it.
    assert!(
        b.cookie_names()
            .await
            .contains(&"herald_session".to_string())
    );
    let visible = b.script("return document.cookie").await;
    assert!(!visible.to_string().contains("herald_session"), "{visible}");

    // The campaigns page: the configured campaign and its last run.
    let rows = table_rows(&b, "Campaigns (times in Asia/Shanghai)").await;
    // The row, then its `herald check` problem (a list in the last cell).
    assert!(rows.join(" ").ends_with("is not in templates"), "{rows:?}");
    assert!(
        rows[0].starts_with("winback report marketing, scheduled email, sms"),
        "{rows:?}"
    );
    assert!(rows[0].contains("6 messages:"), "{rows:?}");

    // Its run, from the link: the counts are `herald status`'s.
    b.click_on("a[href=\"/console/runs/1\"]").await;
    b.wait_for_url("/console/runs/1").await;
    assert_eq!(
        table_rows(&b, "Messages by status").await,
        status_rows(app, 1).await
    );
    assert!(b.find("figure svg rect").await.is_some(), "the chart");

    // Pause through the confirmation page; then resume.
    for (action, state) in [("pause", "paused"), ("resume", "running")] {
        b.click_on(&format!("a[href=\"/console/runs/1/{action}\"]"))
            .await;
        b.wait_for_url(&format!("/console/runs/1/{action}")).await;
        b.click_on("main form button[type=submit]").await;
        b.wait_for_url(&format!("/console/runs/1?done={action}"))
            .await;
        assert_eq!(run_state(app, 1).await, state);
        let said = b.text_of("main").await;
        assert!(said.contains(&format!("state {state}")), "{said}");
    }

    // Sign out: every page sends the browser back to sign in.
    b.click_on("header form button[type=submit]").await;
    b.wait_for_url("/console/sign-in").await;
    for p in [
        "/console/",
        "/console/status",
        "/console/runs/1",
        "/console/runs/1/cancel",
    ] {
        b.goto(&admin(app, p)).await;
        b.wait_for_url("/console/sign-in").await;
        assert_eq!(b.title().await, "Sign in · herald", "{p}");
    }
    assert_eq!(run_state(app, 1).await, "running");
}

/// With page scripts off, sign-in and every page still work and read.
async fn with_javascript_off_every_page_reads(app: &App) {
    let Some(driver) = driver() else { return };
    let _one = ONE_AT_A_TIME.lock().await;
    let b = Browser::open(&driver, false, 1000).await;
    // Scripts really are off: this page's script would write "on".
    b.goto("data:text/html,<p id=x>off</p><script>document.getElementById('x').textContent='on'</script>")
        .await;
    assert_eq!(b.text_of("#x").await, "off");

    sign_in(&b, app, PASSWORD).await;
    assert_eq!(b.title().await, "Campaigns · herald");
    let rows = table_rows(&b, "Campaigns (times in Asia/Shanghai)").await;
    assert!(rows[0].starts_with("winback"), "{rows:?}");
    b.goto(&admin(app, "/console/runs/1")).await;
    assert_eq!(
        table_rows(&b, "Messages by status").await,
        status_rows(app, 1).await
    );
    b.goto(&admin(app, "/console/status")).await;
    assert_eq!(b.title().await, "Status · herald");
    assert!(!table_rows(&b, "Recent runs").await.is_empty());
    // The segments: the list, one segment's figures, the box's caret.
    b.goto(&admin(app, "/console/segments/everyone")).await;
    assert_eq!(table_rows(&b, "Lifecycle stages").await.len(), 5);
    b.goto(&admin(app, "/console/segments?filter=lifecyle+%3D%3D+1"))
        .await;
    assert!(b.text_of("pre.diagnostic").await.contains("^^^^^^^^"));
    b.goto(&admin(app, "/console/contacts/c4")).await;
    assert!(
        table_rows(&b, "Why they got nothing")
            .await
            .iter()
            .any(|r| r.starts_with("1 winback suppressed: no consent")),
        "the planner's reason"
    );
}

/// Runs each scenario once per database, on a server with the console.
macro_rules! in_a_browser {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                use super::*;

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    if let Some(app) = start(Backend::Sqlite).await {
                        super::$name(&app).await;
                        app.stop().await;
                    }
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    if let Some(app) = start(Backend::Postgres).await {
                        super::$name(&app).await;
                        app.stop().await;
                    }
                }
            }
        )*
    };
}

in_a_browser!(
    a_marketer_signs_in_reads_pauses_resumes_and_signs_out,
    with_javascript_off_every_page_reads,
    the_report_page_shows_the_figures_of_the_report_json,
    the_segments_page_counts_as_segment_preview_and_a_typo_shows_its_caret,
    forget_from_the_contact_page_erases_as_contacts_forget_does,
    every_page_passes_axe_core_with_no_serious_violation,
);

/// axe-core's script, from `HERALD_AXE_JS` (`.ci/run` installs the pinned
/// package from the npm registry and sets it); `None`, with a message,
/// when it is not set, a panic when `HERALD_REQUIRE_AXE=1`.
fn axe_source() -> Option<String> {
    match std::env::var("HERALD_AXE_JS") {
        Ok(path) => Some(
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("HERALD_AXE_JS={path}: {e}")),
        ),
        Err(_) if std::env::var("HERALD_REQUIRE_AXE").as_deref() == Ok("1") => {
            panic!("HERALD_REQUIRE_AXE=1 but HERALD_AXE_JS is not set (see .ci/run)")
        }
        Err(_) => {
            eprintln!(
                "skipping the accessibility check: HERALD_AXE_JS is not set (.ci/run installs axe-core from npm and sets it)"
            );
            None
        }
    }
}

/// Runs axe (`script`) over the page shown: its serious and critical violations, in words.
async fn axe_violations(b: &Browser, script: &str) -> Vec<String> {
    b.script(script)
        .await
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|v| v.as_str().unwrap_or_default().to_string())
        .collect()
}

/// Every page of the console, signed in, through axe-core in the same
/// Chromium, in the light and the dark theme: no violation of serious or
/// critical impact (#31).
async fn every_page_passes_axe_core_with_no_serious_violation(app: &App) {
    let Some(driver) = driver() else { return };
    let Some(axe) = axe_source() else { return };
    purchases(app).await;
    let now = now_ms();
    herald_storage::test_support::conn(&app.db)
        .execute_unprepared(&format!(
            "UPDATE messages SET converted_at = {now}, opened_at = {now} WHERE id IN (1, 5)"
        ))
        .await
        .unwrap();
    let _one = ONE_AT_A_TIME.lock().await;
    let b = Browser::open(&driver, true, 1000).await;
    let script = format!(
        "{axe}\n;return axe.run(document, {{ resultTypes: ['violations'] }}).then(r => r.violations\
         .filter(v => v.impact === 'serious' || v.impact === 'critical')\
         .map(v => v.impact + ' ' + v.id + ': ' + v.help + ' at ' + v.nodes.slice(0, 3).map(n => n.target.join(' ')).join(', ')));"
    );
    b.goto(&admin(app, "/console/sign-in")).await;
    let mut problems: Vec<String> = axe_violations(&b, &script)
        .await
        .into_iter()
        .map(|p| format!("/console/sign-in: {p}"))
        .collect();
    sign_in(&b, app, PASSWORD).await;
    // Each page in the light theme, then in the dark one (the stylesheet's
    // `prefers-color-scheme: dark` colours must contrast as well).
    for scheme in ["light", "dark"] {
        b.color_scheme(scheme).await;
        assert_eq!(
            b.script("return window.matchMedia('(prefers-color-scheme: dark)').matches;")
                .await,
            serde_json::json!(scheme == "dark"),
            "the browser shows the {scheme} theme"
        );
        for path in [
            "/console/",
            "/console/status",
            "/console/runs/1",
            "/console/runs/1/pause",
            "/console/campaigns/winback/report",
            "/console/segments",
            "/console/segments?filter=lifecyle+%3D%3D+1",
            "/console/segments?filter=rfm.f+%3E%3D+1",
            "/console/segments/buyers",
            "/console/contacts",
            "/console/contacts/c1",
            "/console/contacts/c4",
            "/console/contacts/c1/forget",
        ] {
            b.goto(&admin(app, path)).await;
            problems.extend(
                axe_violations(&b, &script)
                    .await
                    .into_iter()
                    .map(|p| format!("{path} ({scheme}): {p}")),
            );
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The segments pages in a browser: each segment's count, and one
/// segment's members, stages and sample, are those of the function
/// `herald segment preview` prints; a filter with a typo typed into the
/// box comes back with `herald check`'s words and the caret under the typo.
async fn the_segments_page_counts_as_segment_preview_and_a_typo_shows_its_caret(app: &App) {
    use herald_storage::segment_preview::{count, preview};
    let Some(driver) = driver() else { return };
    purchases(app).await;
    let store = preview_store(app);
    let cfg = config();
    let _one = ONE_AT_A_TIME.lock().await;
    let b = Browser::open(&driver, true, 1000).await;
    sign_in(&b, app, PASSWORD).await;
    b.click_on("nav a[href=\"/console/segments\"]").await;
    b.wait_for_url("/console/segments").await;
    let rows = table_rows(&b, "Segments").await;
    assert_eq!(rows.len(), cfg.segments.len(), "{rows:?}");
    for (row, (name, seg)) in rows.iter().zip(&cfg.segments) {
        let n = count(&store, &seg.filter, now_ms()).await.unwrap();
        assert!(n > 0, "{name}");
        assert!(
            row.starts_with(name.as_str()) && row.ends_with(&format!(" {n}")),
            "{row}: not {name} with {n} members"
        );
    }

    b.click_on("a[href=\"/console/segments/buyers\"]").await;
    b.wait_for_url("/console/segments/buyers").await;
    let p = preview(&store, &cfg.segments["buyers"].filter, now_ms(), 20)
        .await
        .unwrap();
    assert_eq!(b.text_of("#members-segment").await, p.members.to_string());
    let stages: Vec<String> = p
        .lifecycle
        .iter()
        .map(|(s, n)| format!("{} {n}", s.as_str()))
        .collect();
    assert_eq!(table_rows(&b, "Lifecycle stages").await, stages);
    let sample: Vec<String> = table_rows(&b, "Sample: the first 2 members")
        .await
        .iter()
        .map(|r| r.split(' ').next().unwrap().to_string())
        .collect();
    let want: Vec<String> = p.sample.iter().map(|m| m.external_id.clone()).collect();
    assert_eq!(sample, want);
    assert!(
        b.find("figure svg rect.cell").await.is_some(),
        "the heat map"
    );
    // A member's link opens their page.
    b.click_on("a[href=\"/console/contacts/c5\"]").await;
    b.wait_for_url("/console/contacts/c5").await;

    // A typo in the box.
    b.goto(&admin(app, "/console/segments")).await;
    let typo = "rfm.f >= 1 and lifecyle == \"active\"";
    let field = b.the("#filter").await;
    b.type_into(&field, typo).await;
    b.click_on("form.try button[type=submit]").await;
    b.wait_for("pre.diagnostic").await;
    let said = herald_domain::config::check_filter_text(
        typo,
        &herald_domain::config::HeraldConfig::default(),
    )
    .unwrap_err()
    .into_diagnostic("filter", typo, 0)
    .to_string();
    let shown = b
        .script("return document.querySelector('pre.diagnostic').textContent")
        .await;
    assert_eq!(shown.as_str(), Some(said.as_str()));
    // The caret sits under the typo, 15 characters in, as `herald check` puts it.
    let lines: Vec<&str> = said.lines().collect();
    assert_eq!(lines[1], " --> filter:1:16", "{said}");
    assert_eq!(
        lines[3], "1 | rfm.f >= 1 and lifecyle == \"active\"",
        "{said}"
    );
    assert_eq!(
        lines[4], "  |                ^^^^^^^^ did you mean `lifecycle`?",
        "{said}"
    );
    assert!(b.text_of("pre.diagnostic").await.contains("^^^^^^^^"));
    // The box still holds it, to fix.
    assert_eq!(
        b.script("return document.querySelector('#filter').value")
            .await
            .as_str(),
        Some(typo)
    );
}

/// Forget from a contact's page, through its confirmation: the contact is
/// erased exactly as `herald contacts forget` (the storage function it
/// calls) erases another.
async fn forget_from_the_contact_page_erases_as_contacts_forget_does(app: &App) {
    use herald_storage::contacts::{export_contact, forget_contact};
    let Some(driver) = driver() else { return };
    let _one = ONE_AT_A_TIME.lock().await;
    let b = Browser::open(&driver, true, 1000).await;
    sign_in(&b, app, PASSWORD).await;
    b.goto(&admin(app, "/console/contacts?id=c5")).await;
    b.wait_for_url("/console/contacts/c5").await;
    assert!(b.text_of("main").await.contains("bob@example.com"));
    b.click_on("a.button[href=\"/console/contacts/c5/forget\"]")
        .await;
    b.wait_for_url("/console/contacts/c5/forget").await;
    assert_eq!(b.title().await, "Forget c5? · herald");
    // Nothing is erased until the confirmation is sent.
    assert_eq!(app.count("contacts WHERE external_id = 'c5'").await, 1);
    b.click_on("main form button[type=submit]").await;
    b.wait_for_url("?done=forget").await;
    assert!(b.text_of("[role=status]").await.starts_with("Forgotten"));
    assert!(!b.source().await.contains("bob@example.com"));
    let url = b.url().await;
    let tombstone = url
        .rsplit('/')
        .next()
        .unwrap()
        .split('?')
        .next()
        .unwrap()
        .replace("%3A", ":");

    // `herald contacts forget c6`, for comparison.
    let theirs = forget_contact(&app.db, "c6", now_ms())
        .await
        .unwrap()
        .unwrap();
    let page = export_contact(&app.db, &tombstone).await.unwrap().unwrap();
    let cli = export_contact(&app.db, &theirs.tombstone)
        .await
        .unwrap()
        .unwrap();
    for key in [
        "email",
        "phone",
        "timezone",
        "locale",
        "attrs",
        "tags",
        "consent",
        "topic_subscriptions",
        "push_tokens",
        "suppressions",
    ] {
        assert_eq!(page[key], cli[key], "{key}");
    }
    assert!(
        page["email"].is_null() && page["forgotten_at"].is_string(),
        "{page}"
    );
    assert_eq!(
        app.count("contacts WHERE external_id IN ('c5', 'c6')")
            .await,
        0
    );
    assert_eq!(
        app.count("messages WHERE contact_id IN (5, 6) AND address IS NOT NULL")
            .await,
        0
    );
    assert_eq!(
        app.count("messages WHERE contact_id IN (5, 6)").await,
        2,
        "counts stay"
    );
}

/// The report page in a browser: its table and charts carry the figures of
/// the report's JSON (the source `herald report --format json` prints), its
/// JSON link gives that JSON, and the run selector narrows it.
async fn the_report_page_shows_the_figures_of_the_report_json(app: &App) {
    let Some(driver) = driver() else { return };
    let now = now_ms();
    // Opens and clicks, so every rate has something to show.
    for sql in [
        format!("UPDATE messages SET opened_at = {now}, open_count = 1 WHERE id IN (1, 5)"),
        format!("UPDATE messages SET clicked_at = {now}, click_count = 1 WHERE id = 1"),
        // Conversions an hour after the send (message 1) and just now (5).
        "UPDATE messages SET converted_at = sent_at + 3600000 WHERE id = 1".to_string(),
        format!("UPDATE messages SET converted_at = {now} WHERE id = 5"),
    ] {
        herald_storage::test_support::conn(&app.db)
            .execute_unprepared(&sql)
            .await
            .unwrap();
    }
    let source = StorageReport::default();
    let _ = source.db.set(app.db.clone());
    let _one = ONE_AT_A_TIME.lock().await;
    let b = Browser::open(&driver, true, 1000).await;
    sign_in(&b, app, PASSWORD).await;
    b.click_on("a[href=\"/console/campaigns/winback/report\"]")
        .await;
    b.wait_for_url("/report").await;
    assert_eq!(b.title().await, "Report: winback · herald");

    for query in [vec![], vec![("run".to_string(), "1".to_string())]] {
        if !query.is_empty() {
            let run = b.the("#run").await;
            b.type_into(&run, "1").await;
            b.click_on("form.filter button[type=submit]").await;
            b.wait_for_url("until=").await;
            assert!(b.url().await.contains("run=1"), "{}", b.url().await);
        }
        let json = source.json("winback", &query).await.unwrap().unwrap();
        let total = &json["total"];
        let arms = total["arms"].as_array().unwrap();
        assert!(arms.len() >= 3, "{json}");
        let want: Vec<String> = arms
            .iter()
            .map(|a| {
                let mut cells = vec![a["arm"].as_str().unwrap().to_string()];
                for k in [
                    "assigned",
                    "sent",
                    "delivered",
                    "opened",
                    "clicked",
                    "converted",
                ] {
                    cells.push(a[k].as_u64().unwrap().to_string());
                }
                cells.push(format!("{:.2}", a["revenue"].as_f64().unwrap()));
                for (key, ..) in METRICS {
                    if let Some(r) = a["rates"][key].as_f64() {
                        cells.push(pct(r));
                    }
                }
                cells.join(" ")
            })
            .collect();
        let caption = format!(
            "Arms: {} messages in {} runs",
            total["messages"],
            json["runs"].as_array().unwrap().len()
        );
        assert_eq!(table_rows(&b, &caption).await, want);
        // Each chart: every arm's rate as the JSON has it, with its interval.
        let source_html = b.source().await;
        let mut drawn = 0;
        for (key, ..) in METRICS {
            assert!(b.find(&format!("#chart-{key}")).await.is_some(), "{key}");
            for a in arms {
                if let Some(r) = a["rates"][key].as_f64() {
                    let words = format!("{}: {} (95% interval", a["arm"].as_str().unwrap(), pct(r));
                    assert!(source_html.contains(&words), "{key}: {words}");
                    drawn += 1;
                }
            }
        }
        assert!(drawn >= 6, "{drawn} rates drawn");
        // The cumulative conversions end at each arm's `converted`.
        assert!(b.find("#chart-cumulative").await.is_some());
        let cumulative = &source_html[source_html
            .find("aria-labelledby=\"chart-cumulative\"")
            .expect("the cumulative chart")..];
        let mut converted = 0;
        for a in arms {
            let n = a["converted"].as_u64().unwrap();
            converted += n;
            let end = format!(">{}: {n}</text>", a["arm"].as_str().unwrap());
            assert!(cumulative.contains(&end), "{end} not in {cumulative}");
        }
        assert!(converted >= 2, "{converted} conversions drawn");
        // The report's own words.
        let said = b.text_of("ul.said").await;
        for s in total["summary"].as_array().unwrap() {
            assert!(said.contains(s.as_str().unwrap()), "{s} not in {said}");
        }
    }

    // The JSON link gives the report's JSON (made a moment later).
    b.click_on("a[href$=\"report.json?run=1\"]").await;
    b.wait_for_url("report.json?run=1").await;
    let mut shown: serde_json::Value = serde_json::from_str(&b.text_of("pre").await).unwrap();
    let mut json = source
        .json("winback", &[("run".into(), "1".into())])
        .await
        .unwrap()
        .unwrap();
    for v in [&mut shown, &mut json] {
        v["generated_at"] = serde_json::Value::Null;
    }
    assert_eq!(shown, json);
}

/// Saves the README's pictures of the console to `docs/console/`: the
/// campaigns page, a run page and the report page, over a few thousand
/// messages sent in the last hour. Ignored: run it by name with
/// `--ignored` after changing how a page looks, then look at the PNGs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "writes docs/console/*.png: run by name with --ignored"]
async fn screenshots_for_the_readme() {
    use herald_domain::config::Campaign;
    use herald_server::console::CampaignEntry;
    use std::sync::Arc;

    let Some(driver) = driver() else { return };
    let campaign = |file: &str, toml: &str| Campaign::parse(file, toml).expect("campaign");
    let entries = vec![
        CampaignEntry {
            campaign: campaign(
                "config/campaigns/winback.toml",
                "name = \"winback\"\nwhere = 'attrs.x == 1'\nchannels = [\"email\", \"sms\"]\nschedule = { cron = \"0 0 10 * * Tue\", timezone = \"Asia/Shanghai\" }\n[[variants]]\nname = \"discount\"\nsms = { template = \"t.sms.hbs\" }\nemail = { subject = \"s\", template = \"t.email.hbs\" }\n",
            ),
            problems: vec![],
        },
        CampaignEntry {
            campaign: campaign(
                "config/campaigns/newsletter.toml",
                "name = \"newsletter\"\nwhere = 'attrs.x == 1'\nchannels = [\"email\"]\n[[variants]]\nname = \"a\"\nemail = { subject = \"s\", template = \"news.email.hbs\" }\n",
            ),
            problems: vec![
                "config/campaigns/newsletter.toml: template `news.email.hbs` is not in templates/"
                    .into(),
            ],
        },
    ];
    let app = crate::console::start_console(Backend::Sqlite, SECRET, move |c| {
        c.campaigns = Arc::new(entries);
        let mut cfg = config();
        if let Some(s) = cfg.segments.get_mut("everyone") {
            s.description = "Everyone with an email address".into();
        }
        c.config = Some(Arc::new(cfg));
    })
    .await
    .unwrap();
    // 3,000 more messages of run 1 over three arms, sent in the last hour,
    // with opens and clicks at rates that differ by arm.
    let now = now_ms();
    let n = 3_000;
    let series = format!(
        "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {n}) SELECT i FROM s"
    );
    let arm = "CASE i % 3 WHEN 0 THEN 'discount' WHEN 1 THEN 'reminder' ELSE 'holdout' END";
    for sql in [
        format!(
            "INSERT INTO contacts (id, external_id, email, attrs, created_at, updated_at) SELECT 1000 + i, 'x' || i, 'x' || i || '@example.com', '{{}}', {now}, {now} FROM ({series}) t"
        ),
        format!(
            "INSERT INTO messages (id, run_id, campaign_id, contact_id, step, arm, channel, address, send_at, status, reason, attempts, sent_at, delivered_at, opened_at, clicked_at, open_count, click_count, revenue, created_at, updated_at) \
             SELECT 1000 + i, 1, 1, 1000 + i, 0, {arm}, CASE WHEN i % 3 = 2 THEN NULL ELSE 'email' END, 'x' || i || '@example.com', {now}, \
             CASE WHEN i % 3 = 2 THEN 'held_out' WHEN i % 53 = 0 THEN 'failed' WHEN i % 11 = 0 THEN 'planned' ELSE 'delivered' END, \
             CASE WHEN i % 3 <> 2 AND i % 53 = 0 THEN 'mailbox full' END, 1, {now} - (i % 3600) * 1000, {now}, \
             CASE WHEN i % 3 <> 2 AND i % (4 + i % 3) = 0 THEN {now} END, CASE WHEN i % 3 <> 2 AND i % (13 - 4 * (i % 3)) = 0 THEN {now} END, 0, 0, 0, {now}, {now} FROM ({series}) t"
        ),
        format!(
            "INSERT INTO attempts (message_id, at, result, duration_ms) SELECT 1000 + i, {now} - (i * 7 % 3600) * 1000 * (1 + i % 2) / 2, 'accepted', 5 FROM ({series}) t WHERE i % 3 <> 2 AND i % 11 <> 0"
        ),
        // Conversions over the first hours after each send, fewer in the holdout.
        format!(
            "UPDATE messages SET converted_at = sent_at + ({now} - sent_at) * (id % 7) / 7 WHERE id >= 1000 AND status = 'delivered' AND id * 7 % 100 < CASE arm WHEN 'discount' THEN 11 ELSE 7 END"
        ),
        format!(
            "UPDATE messages SET send_at = {now} - 3600000, converted_at = {now} - 3600000 + 3600000 * (id % 7) / 7 WHERE id >= 1000 AND arm = 'holdout' AND id * 7 % 100 < 4"
        ),
        // The report counts `delivered` etc. from the timestamps: planned and failed ones were never sent.
        "UPDATE messages SET sent_at = NULL, delivered_at = NULL, opened_at = NULL, clicked_at = NULL WHERE status IN ('planned', 'failed', 'held_out')".to_string(),
    ] {
        herald_storage::test_support::conn(&app.db).execute_unprepared(&sql).await.expect(&sql);
    }
    // Purchases: three in four contacts bought, 1 to 9 times, over the last
    // 300 days, so the R x F grid has every shade.
    for k in 0..9 {
        let sql = format!(
            "INSERT INTO events (contact_id, name, at, value, received_at) SELECT 1000 + i, 'order_placed', {now} - ((i * 37 + {k} * 11) % (30 + i % 330)) * 86400000, 20 + i % 80, {now} FROM ({series}) t WHERE i % 4 <> 0 AND i % 9 >= {k} AND (i % 5 <> 0 OR {k} < 2)"
        );
        herald_storage::test_support::conn(&app.db)
            .execute_unprepared(&sql)
            .await
            .expect(&sql);
    }
    // Contacts who came over the last 400 days, so every lifecycle stage has some.
    let sql = format!(
        "UPDATE contacts SET created_at = {now} - (id % 400) * 86400000, first_seen_at = {now} - (id % 400) * 86400000 WHERE id >= 1000"
    );
    herald_storage::test_support::conn(&app.db)
        .execute_unprepared(&sql)
        .await
        .expect(&sql);
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/console");
    std::fs::create_dir_all(&dir).unwrap();
    let _one = ONE_AT_A_TIME.lock().await;
    for (file, path, height) in [
        ("campaigns.png", "/console/", 640),
        ("run.png", "/console/runs/1", 1500),
        ("report.png", "/console/campaigns/winback/report", 1900),
        ("segment.png", "/console/segments/everyone", 1500),
        (
            "segments-typo.png",
            "/console/segments?filter=rfm.f+%3E%3D+2+and+lifecyle+%3D%3D+%22active%22",
            760,
        ),
    ] {
        let b = Browser::open(&driver, true, height).await;
        sign_in(&b, &app, PASSWORD).await;
        b.goto(&admin(&app, path)).await;
        std::fs::write(dir.join(file), b.screenshot().await).unwrap();
        println!("wrote docs/console/{file}");
    }
    app.stop().await;
}
