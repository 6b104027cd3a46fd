//! `herald send`: emails arrive at a real SMTP server on loopback; the test
//! reads the MIME back (subject, HTML escaping, the plain-text part,
//! List-Unsubscribe and List-Unsubscribe-Post) and the recorded statuses.

use herald_domain::token::TokenSigner;
use herald_sinks::{SmtpSink, SmtpSinkConfig};
use herald_storage::Db;
use herald_tests::{Backend, Project};
use sea_orm::{ConnectionTrait, Statement};

use crate::setup;

/// A real SMTP server on loopback that keeps what it receives.
pub async fn start_sink() -> SmtpSink {
    SmtpSink::start(SmtpSinkConfig::default())
        .await
        .expect("smtp sink")
}

/// A small shop: SMTP to `port`, one segment, the `hello` campaign, three contacts.
pub fn shop_project(p: &Project, port: u16) {
    p.write(
        "config/herald.toml",
        &format!(
            "[tracking]\npublic_url = \"https://t.example.com\"\n\n[channels.email]\nprovider = \"smtp\"\nhost = \"127.0.0.1\"\nport = {port}\nfrom = \"Shop <news@example.com>\"\nbounce_domain = \"bounces.example.com\"\nconcurrency = 2\n"
        ),
    );
    p.write(
        "config/segments/guangdong.toml",
        "name = \"guangdong\"\nwhere = 'attrs.region == \"guangdong\"'\n",
    );
    p.write(
        "config/campaigns/hello.toml",
        "name = \"hello\"\nsegment = \"guangdong\"\nchannels = [\"email\"]\n\n[[variants]]\nname = \"a\"\nemail = { subject = \"Hi {{contact.attrs.first_name}} & welcome\", template = \"shop/hello.email.hbs\" }\n",
    );
    p.write(
        "templates/shop/hello.email.hbs",
        "<p>Hello {{contact.attrs.first_name}},</p>\n<p>See <a href=\"{{track \"https://shop.example.com/new\"}}\">what is new</a>.</p>\n<p><a href=\"{{unsubscribe_url}}\">Unsubscribe</a></p>\n",
    );
    p.write(
        "contacts.csv",
        "external_id,email,first_name,region\n\
         c1,ann@example.com,<b>Ann</b> & \"Co\",guangdong\n\
         c2,bo@example.com,Bo,guangdong\n\
         c3,cy@example.com,Cy,beijing\n\
         c4,ann@example.com,<b>Ann</b> & \"Co\",guangdong\n",
    );
}

async fn emails_arrive_with_headers_and_both_parts(backend: Backend) {
    let Some((p, db)) = setup(backend).await else {
        return;
    };
    let sink = start_sink().await;
    shop_project(&p, sink.addr().port());
    p.herald(&db, &["import", "contacts", "contacts.csv"])
        .expect_code(0);
    p.herald(&db, &["check"]).expect_code(0);
    let dry = p.herald(&db, &["send", "hello", "--dry-run"]);
    dry.expect_code(0);
    assert!(
        dry.stdout()
            .contains("dry run of `hello`: audience 3; nothing was written or sent"),
        "{}",
        dry.stdout()
    );
    assert_eq!(sink.count(), 0, "a dry run sends nothing");
    let run = p.herald(&db, &["send", "hello"]);
    run.expect_code(0);
    assert!(run.stdout().contains("audience 3"), "{}", run.stdout());
    assert!(
        run.stdout().contains("suppressed (duplicate_address): 1"),
        "{}",
        run.stdout()
    );

    let mails = sink.received();
    assert_eq!(
        mails.len(),
        2,
        "c1 (or c4: they share one address) and c2; c3 is not in the segment"
    );
    let ann = mails
        .iter()
        .find(|m| m.rcpt_to == ["ann@example.com"])
        .expect("mail to ann");
    assert_eq!(
        ann.header("Subject").as_deref(),
        Some("Hi <b>Ann</b> & \"Co\" & welcome"),
        "subjects are plain text"
    );
    assert_eq!(
        ann.header("From").as_deref(),
        Some("Shop <news@example.com>")
    );
    assert!(
        ann.mail_from.starts_with("bounce+") && ann.mail_from.ends_with("@bounces.example.com"),
        "VERP: {}",
        ann.mail_from
    );
    let unsub = ann.header("List-Unsubscribe").expect("List-Unsubscribe");
    assert!(
        unsub.starts_with("<https://t.example.com/u/") && unsub.ends_with('>'),
        "{unsub}"
    );
    assert_eq!(
        ann.header("List-Unsubscribe-Post").as_deref(),
        Some("List-Unsubscribe=One-Click")
    );
    let html = ann.part("text/html").expect("html part");
    assert!(
        html.contains("Hello &lt;b&gt;Ann&lt;/b&gt; &amp; &quot;Co&quot;,"),
        "HTML escapes contact data: {html}"
    );
    assert!(
        html.contains("https://t.example.com/c/"),
        "links are tracked: {html}"
    );
    assert!(
        !html.contains("shop.example.com/new"),
        "the destination is behind the signed link: {html}"
    );
    let text = ann.part("text/plain").expect("plain-text part");
    assert!(
        text.contains("Hello <b>Ann</b> & \"Co\","),
        "the text part is unescaped: {text}"
    );
    assert!(
        text.contains("what is new (https://t.example.com/c/"),
        "{text}"
    );

    // Every message ends in a recorded status, with its attempt and link.
    let store = Db::connect(&db.url).await.expect("connect");
    let q = |sql: &str| Statement::from_string(store.backend(), sql.to_string());
    let rows = herald_storage::test_support::conn(&store)
        .query_all_raw(q(
            "SELECT status, COUNT(*) FROM messages GROUP BY status ORDER BY status",
        ))
        .await
        .expect("q");
    let counts: Vec<(String, i64)> = rows
        .iter()
        .map(|r| {
            (
                r.try_get_by_index(0).unwrap(),
                r.try_get_by_index(1).unwrap(),
            )
        })
        .collect();
    assert_eq!(
        counts,
        vec![("delivered".to_string(), 2), ("suppressed".to_string(), 1)]
    );
    let rows = herald_storage::test_support::conn(&store)
        .query_all_raw(q("SELECT COUNT(*) FROM attempts WHERE result = 'accepted'"))
        .await
        .expect("q");
    assert_eq!(rows[0].try_get_by_index::<i64>(0).unwrap(), 2);
    // The click link carries its destination, signed; no row is stored for it.
    let token = html
        .split("https://t.example.com/c/")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a click link");
    let link = TokenSigner::new(herald_tests::SECRET.as_bytes())
        .verify_link(token)
        .expect("a genuine link token");
    assert_eq!(link.url, "https://shop.example.com/new");
    let rows = herald_storage::test_support::conn(&store)
        .query_all_raw(q("SELECT COUNT(*) FROM links"))
        .await
        .expect("q");
    assert_eq!(rows[0].try_get_by_index::<i64>(0).unwrap(), 0);

    // Sending again starts a new run; Message-IDs are per message, so they differ.
    let ids: Vec<String> = mails
        .iter()
        .filter_map(|m| m.header("Message-ID"))
        .collect();
    assert_eq!(ids.len(), 2);
    assert_ne!(ids[0], ids[1]);
    db.drop_db().await;
}

async fn a_refused_recipient_fails_and_is_suppressed(backend: Backend) {
    let Some((p, db)) = setup(backend).await else {
        return;
    };
    let sink = SmtpSink::start(SmtpSinkConfig {
        reject_rcpt: vec![("bo@".into(), 550, "5.1.1 no such user".into())],
        ..Default::default()
    })
    .await
    .expect("sink");
    shop_project(&p, sink.addr().port());
    p.herald(&db, &["import", "contacts", "contacts.csv"])
        .expect_code(0);
    let run = p.herald(&db, &["send", "hello"]);
    run.expect_code(0);
    assert!(run.stdout().contains("1 failed"), "{}", run.stdout());
    assert_eq!(sink.count(), 1);
    let store = Db::connect(&db.url).await.expect("connect");
    let rows = herald_storage::test_support::conn(&store)
        .query_all_raw(Statement::from_string(
            store.backend(),
            "SELECT channel, address, source FROM suppressions".to_string(),
        ))
        .await
        .expect("q");
    assert_eq!(rows.len(), 1);
    assert_eq!(
        rows[0].try_get_by_index::<String>(1).unwrap(),
        "bo@example.com"
    );
    db.drop_db().await;
}

/// The stages `herald send` names at the end, in its order.
const STAGES: [&str; 9] = [
    "start",
    "wait for the plan",
    "claim",
    "contacts",
    "render",
    "wait for rate",
    "send",
    "record",
    "end",
];

/// `herald send` ends with where its time went: every stage, in seconds
/// that add up to about the whole (here two seconds or so, most of it
/// waiting for the route's rate of 100 a second).
async fn a_send_says_where_its_time_went(backend: Backend) {
    let Some((p, db)) = setup(backend).await else {
        return;
    };
    p.write(
        "config/herald.toml",
        "[tracking]\npublic_url = \"https://t.example.com\"\n\n[channels.email]\nprovider = \"outbox\"\nrate = { per_second = 100, burst = 1 }\n",
    );
    p.write(
        "config/campaigns/hello.toml",
        "name = \"hello\"\nwhere = 'email contains \"@\"'\nchannels = [\"email\"]\n\n[[variants]]\nname = \"a\"\nemail = { subject = \"Hi\", template = \"shop/hello.email.hbs\" }\n",
    );
    p.write(
        "templates/shop/hello.email.hbs",
        "<p>Hello {{contact.external_id}}</p>\n<p><a href=\"{{unsubscribe_url}}\">Unsubscribe</a></p>\n",
    );
    let mut csv = String::from("external_id,email\n");
    for i in 0..200 {
        csv.push_str(&format!("c{i},c{i}@example.com\n"));
    }
    p.write("contacts.csv", &csv);
    p.herald(&db, &["import", "contacts", "contacts.csv"])
        .expect_code(0);
    let run = p.herald(&db, &["send", "hello"]);
    run.expect_code(0);
    let out = run.stdout();
    assert!(out.contains("dispatched 200 message(s)"), "{out}");
    let line = out
        .lines()
        .find(|l| l.starts_with("time: "))
        .unwrap_or_else(|| panic!("no stage line: {out}"));
    let seconds = |after: &str| -> f64 {
        let at = line
            .find(after)
            .unwrap_or_else(|| panic!("no `{after}`: {line}"))
            + after.len();
        line[at..]
            .split('s')
            .next()
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no seconds after `{after}`: {line}"))
    };
    let wall = seconds("time: ");
    let mut sum = 0.0;
    for stage in STAGES {
        sum += seconds(&format!(" {stage} "));
    }
    assert!(
        (sum - wall).abs() <= (0.1 * wall).max(0.1),
        "the stages add up to {sum:.2}s of {wall:.2}s: {line}"
    );
    // 200 at 100 a second: much of the send waits for the rate.
    assert!(seconds(" wait for rate ") >= 0.5, "{line}");
    db.drop_db().await;
}

/// The events of a JSON log (one object a line) whose message is `what`.
fn events<'a>(log: &'a [serde_json::Value], what: &str) -> Vec<&'a serde_json::Value> {
    log.iter()
        .filter(|e| e["fields"]["message"] == what)
        .collect()
}

/// The field `name` of the span `span` an event is in (`spans` lists them, outermost first).
fn span_field<'a>(event: &'a serde_json::Value, span: &str, name: &str) -> &'a serde_json::Value {
    event["spans"]
        .as_array()
        .and_then(|spans| spans.iter().rev().find(|s| s["name"] == span))
        .map_or(&serde_json::Value::Null, |s| &s[name])
}

/// `RUST_LOG=herald=debug herald send --log-format json` tells each
/// message's story as JSON lines: planned (by run, contact and step, the
/// row's id being the database's), claimed (which joins them to the id),
/// sent with the provider's answer inside the run's, batch's and message's
/// spans (run, message id, channel, route), and recorded.
async fn a_debug_log_tells_one_messages_story_in_json(backend: Backend) {
    let Some((p, db)) = setup(backend).await else {
        return;
    };
    let sink = start_sink().await;
    shop_project(&p, sink.addr().port());
    p.herald(&db, &["import", "contacts", "contacts.csv"])
        .expect_code(0);
    let run = p.herald_with_env(
        &db,
        &["send", "hello", "--log-format", "json"],
        &[("RUST_LOG", "herald=debug")],
    );
    run.expect_code(0);
    let stderr = run.stderr();
    let log: Vec<serde_json::Value> = stderr
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let sent = events(&log, "sent");
    assert_eq!(sent.len(), 2, "c1 and c2 are sent:\n{stderr}");
    let one = sent[0];
    let id = one["fields"]["message_id"].as_i64().expect("message_id");
    let run_id = span_field(one, "run", "run").as_i64().expect("run span");
    let contact = span_field(one, "message", "contact").clone();
    assert_eq!(span_field(one, "message", "message_id").as_i64(), Some(id));
    assert_eq!(span_field(one, "message", "run").as_i64(), Some(run_id));
    assert_eq!(span_field(one, "message", "channel"), "email");
    assert_eq!(span_field(one, "message", "route"), "email");
    assert_eq!(one["fields"]["result"], "accepted", "{one}");
    assert!(
        one["fields"]["detail"]
            .as_str()
            .is_some_and(|d| !d.is_empty()),
        "the provider's answer: {one}"
    );
    let claimed = events(&log, "claimed");
    let claim = claimed
        .iter()
        .find(|e| e["fields"]["message_id"].as_i64() == Some(id))
        .unwrap_or_else(|| panic!("message {id} claimed:\n{stderr}"));
    assert_eq!(claim["fields"]["contact"], contact);
    let planned = events(&log, "planned");
    assert!(
        planned.iter().any(|e| e["fields"]["contact"] == contact
            && e["fields"]["status"] == "planned"
            && span_field(e, "run", "run").as_i64() == Some(run_id)
            && span_field(e, "page", "rows").is_number()),
        "contact {contact} planned in run {run_id}:\n{stderr}"
    );
    let recorded = events(&log, "recorded");
    assert!(
        recorded
            .iter()
            .any(|e| e["fields"]["message_id"].as_i64() == Some(id)
                && e["fields"]["status"] == "delivered"),
        "message {id} recorded delivered (SMTP's 250):\n{stderr}"
    );
    // Without RUST_LOG the default is quiet, and text.
    let quiet = p.herald(&db, &["send", "hello"]);
    quiet.expect_code(0);
    assert!(
        !quiet.stderr().contains("\"message_id\""),
        "{}",
        quiet.stderr()
    );
    db.drop_db().await;
}

on_both_databases!(
    emails_arrive_with_headers_and_both_parts,
    a_refused_recipient_fails_and_is_suppressed,
    a_send_says_where_its_time_went,
    a_debug_log_tells_one_messages_story_in_json
);
