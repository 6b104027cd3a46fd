//! `herald preview CAMPAIGN --contact ID` renders a contact's messages with their
//! personalisation (their most-bought SKU, best hour, lifecycle); unknown names exit 2;
//! `herald check` fails on a `top` value that a sample audience member lacks.

use std::time::{SystemTime, UNIX_EPOCH};

use herald_tests::{Backend, Project};

use crate::setup;

const DAY_S: i64 = 86_400;

/// `YYYY-MM-DDT12:15:00Z`, `days` days before today (UTC): 20:15 in Shanghai.
fn days_ago(days: i64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    // Howard Hinnant's civil_from_days.
    let z = now.div_euclid(DAY_S) - days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T12:15:00Z")
}

/// A shop whose `winback` campaign prints the most-bought SKU, with a default.
fn shop(p: &Project) {
    p.write(
        "config/herald.toml",
        "[tracking]\npublic_url = \"https://t.example.com\"\n\n[defaults]\ntimezone = \"Asia/Shanghai\"\n\n[personalisation]\nwindow = \"365d\"\n",
    );
    p.write(
        "config/segments/guangdong.toml",
        "name = \"guangdong\"\nwhere = 'attrs.region == \"guangdong\"'\n",
    );
    p.write(
        "config/campaigns/winback.toml",
        "name = \"winback\"\nsegment = \"guangdong\"\nchannels = [\"sms\", \"email\"]\nholdout = 0.0\n\n\
         [[variants]]\nname = \"discount\"\n\
         email = { subject = \"{{default top.order_placed.sku \\\"Your favourite\\\"}} is 15% off\", template = \"w/discount.email.hbs\" }\n\
         sms = { template = \"w/discount.sms.hbs\" }\n\n\
         [[variants]]\nname = \"reminder\"\n\
         email = { subject = \"We miss you\", template = \"w/reminder.email.hbs\" }\n\
         sms = { template = \"w/reminder.sms.hbs\" }\n",
    );
    p.write(
        "templates/w/discount.email.hbs",
        "<p>{{default top.order_placed.sku \"nothing yet\"}} for you, at {{default best_hour \"any\"}}h ({{lifecycle}})</p><a href=\"{{unsubscribe_url}}\">unsubscribe</a>",
    );
    p.write(
        "templates/w/discount.sms.hbs",
        "SMS: {{default top.order_placed.sku \"15% off\"}} {{track \"https://shop.example.com/x\"}}",
    );
    p.write(
        "templates/w/reminder.email.hbs",
        "<p>Still there?</p><a href=\"{{unsubscribe_url}}\">unsubscribe</a>",
    );
    p.write("templates/w/reminder.sms.hbs", "Still there?");
    // c1 buys TEA-1 most in the window; c2 never ordered; c3 is not in the segment.
    p.write(
        "contacts.csv",
        "external_id,email,phone,consent_sms,region\n\
         c1,ann@example.com,+8613800000001,true,guangdong\n\
         c2,bo@example.com,+8613800000002,true,guangdong\n\
         c3,cy@example.com,,,beijing\n",
    );
    let ev = |id: &str, name: &str, days: i64, sku: &str| {
        format!(
            "{{\"external_id\":\"{id}\",\"name\":\"{name}\",\"at\":\"{}\",\"value\":30,\"properties\":{{\"sku\":\"{sku}\"}}}}\n",
            days_ago(days)
        )
    };
    // MUG-9 is the latest order, and the most frequent ever, but not in the window.
    let events = [
        ev("c1", "order_placed", 20, "TEA-1"),
        ev("c1", "order_placed", 10, "TEA-1"),
        ev("c1", "order_placed", 5, "MUG-9"),
        ev("c1", "order_placed", 400, "MUG-9"),
        ev("c1", "order_placed", 401, "MUG-9"),
        ev("c1", "order_placed", 402, "MUG-9"),
        ev("c2", "app_open", 3, "none"),
    ];
    p.write("events.ndjson", &events.concat());
}

async fn preview_renders_a_contacts_messages_with_their_data(backend: Backend) {
    let Some((p, db)) = setup(backend).await else {
        return;
    };
    shop(&p);
    p.herald(&db, &["import", "contacts", "contacts.csv"])
        .expect_code(0);
    p.herald(&db, &["import", "events", "events.ndjson"])
        .expect_code(0);
    p.herald(&db, &["check"]).expect_code(0);

    let run = p.herald(&db, &["preview", "winback", "--contact", "c1"]);
    run.expect_code(0);
    let out = run.stdout();
    assert!(out.contains("Subject: TEA-1 is 15% off"), "{out}");
    assert!(
        out.contains("<p>TEA-1 for you, at 20h (active)</p>"),
        "{out}"
    );
    assert!(out.contains("SMS: TEA-1 https://t.example.com/s/"), "{out}");
    assert!(out.contains("segment(s), GSM-7"), "{out}");
    assert!(out.contains("[0] https://shop.example.com/x"), "{out}");
    assert!(out.contains("top.order_placed.sku = \"TEA-1\""), "{out}");
    assert!(out.contains("in the audience now: yes"), "{out}");
    assert!(
        out.contains("=== variant `discount`, email to ann@example.com")
            && out.contains("=== variant `reminder`, sms to +8613800000001"),
        "every channel of every variant: {out}"
    );
    assert!(!out.contains("MUG-9"), "{out}");

    // A campaign whose templates print none of it computes none when it sends;
    // its preview still shows all of the contact's data.
    p.write(
        "config/campaigns/plain.toml",
        "name = \"plain\"\nsegment = \"guangdong\"\nchannels = [\"sms\"]\n\n\
         [[variants]]\nname = \"a\"\nsms = { template = \"w/reminder.sms.hbs\" }\n",
    );
    let out = p
        .herald(&db, &["preview", "plain", "--contact", "c1"])
        .expect_code(0)
        .stdout();
    assert!(
        out.contains("lifecycle active; best_hour 20; rfm r="),
        "{out}"
    );
    std::fs::remove_file(p.path().join("config/campaigns/plain.toml")).expect("remove");

    // Someone without orders gets the default; without --contact, the first member.
    let out = p
        .herald(&db, &["preview", "winback", "--contact", "c2"])
        .expect_code(0)
        .stdout();
    assert!(out.contains("Subject: Your favourite is 15% off"), "{out}");
    // First seen three days ago: new.
    assert!(
        out.contains("<p>nothing yet for you, at 20h (new)</p>"),
        "{out}"
    );
    let out = p
        .herald(&db, &["preview", "winback"])
        .expect_code(0)
        .stdout();
    // (Import may number contacts in any order: either Guangdong contact is first.)
    assert!(
        (out.contains("for contact `c1`") || out.contains("for contact `c2`"))
            && out.contains("in the audience now: yes"),
        "{out}"
    );
    // One variant; a contact outside the segment is still rendered, and says so.
    let out = p
        .herald(
            &db,
            &[
                "preview",
                "winback",
                "--contact",
                "c3",
                "--variant",
                "reminder",
            ],
        )
        .expect_code(0)
        .stdout();
    assert!(out.contains("in the audience now: no"), "{out}");
    assert!(
        out.contains("=== variant `reminder`") && !out.contains("=== variant `discount`"),
        "{out}"
    );
    assert!(out.contains("best_hour - (no events)"), "{out}");

    for (args, says) in [
        (
            &["preview", "winback", "--contact", "nobody"][..],
            "no contact with external_id `nobody`",
        ),
        (
            &["preview", "winback", "--variant", "nope"][..],
            "no variant `nope`",
        ),
        (&["preview", "winbak"][..], "no campaign named `winbak`"),
    ] {
        let run = p.herald(&db, args);
        run.expect_code(2);
        assert!(run.stderr().contains(says), "{args:?}: {}", run.stderr());
    }
    db.drop_db().await;
}

async fn check_fails_on_a_top_value_a_member_lacks(backend: Backend) {
    let Some((p, db)) = setup(backend).await else {
        return;
    };
    shop(&p);
    p.herald(&db, &["import", "contacts", "contacts.csv"])
        .expect_code(0);
    p.herald(&db, &["import", "events", "events.ndjson"])
        .expect_code(0);
    p.write(
        "templates/w/discount.email.hbs",
        "<p>{{top.order_placed.sku}}</p><a href=\"{{unsubscribe_url}}\">unsubscribe</a>",
    );
    let run = p.herald(&db, &["check"]);
    run.expect_code(2);
    let err = run.stderr();
    assert!(
        err.contains("contact `c2`") && err.contains("variable `top.order_placed.sku` is missing"),
        "{err}"
    );
    assert!(
        err.contains("{{default top.EVENT.PROPERTY"),
        "the hint: {err}"
    );
    assert!(!err.contains("contact `c1`"), "c1 ordered TEA-1: {err}");
    // The preview shows c1's message, and refuses c2's.
    p.herald(&db, &["preview", "winback", "--contact", "c1"])
        .expect_code(0);
    let run = p.herald(&db, &["preview", "winback", "--contact", "c2"]);
    run.expect_code(2);
    assert!(
        run.stderr().contains("top.order_placed.sku"),
        "{}",
        run.stderr()
    );
    // A property nobody has fails even for c1.
    p.write(
        "templates/w/discount.email.hbs",
        "<p>{{top.order_placed.colour}}</p><a href=\"{{unsubscribe_url}}\">unsubscribe</a>",
    );
    let err = p.herald(&db, &["check"]).expect_code(2).stderr();
    assert!(err.contains("top.order_placed.colour"), "{err}");
    let run = p.herald(&db, &["preview", "winback", "--contact", "c1"]);
    run.expect_code(2);
    assert!(
        run.stderr().contains("top.order_placed.colour"),
        "{}",
        run.stderr()
    );
    db.drop_db().await;
}

/// Without data, `check` uses the built-in sample, which has a value for every `top` pair.
async fn check_passes_on_an_empty_database_with_the_sample(backend: Backend) {
    let Some((p, db)) = setup(backend).await else {
        return;
    };
    shop(&p);
    p.write(
        "templates/w/discount.email.hbs",
        "<p>{{top.order_placed.sku}} {{rfm.r}} {{lifecycle}} {{best_hour}}</p><a href=\"{{unsubscribe_url}}\">unsubscribe</a>",
    );
    p.herald(&db, &["check"]).expect_code(0);
    let out = p
        .herald(&db, &["preview", "winback"])
        .expect_code(0)
        .stdout();
    assert!(out.contains("<p>sample-sku 3 silent 20</p>"), "{out}");
    db.drop_db().await;
}

on_both_databases!(
    preview_renders_a_contacts_messages_with_their_data,
    check_fails_on_a_top_value_a_member_lacks,
    check_passes_on_an_empty_database_with_the_sample,
);
