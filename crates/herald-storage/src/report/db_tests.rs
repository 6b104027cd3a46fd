//! The report's scan on SQLite and PostgreSQL: every status, outcome flag,
//! reason, secondary goal and filter counted from rows written by hand, the
//! same on both databases; rollouts recorded once; and on SQLite the scan
//! reads only the covering index.
//!
//! The databases are the storage tests' own (`crate::test_db`): PostgreSQL
//! beside `HERALD_TEST_DATABASE_URL`, skipped loudly when unreachable unless
//! `HERALD_REQUIRE_POSTGRES=1`.

use std::collections::BTreeMap;

use herald_domain::config::Campaign;
use herald_domain::stats::{ArmCounts, Measure, MetricArm, pick_winner};
use sea_orm::{ConnectionTrait, DbBackend};

use super::*;

const DAY: i64 = 86_400_000;
/// 2026-11-01T10:00:00Z: run 1 starts.
const T0: i64 = 1_793_527_200_000;
const FINGERPRINT: &str = "winback;holdout=0.1;discount=1,reminder=1";

const CAMPAIGN: &str = r#"
name = "winback"
where = 'attrs.x == 1'
channels = ["email"]
goal = { event = "order_placed", within = "3d" }
secondary_goals = ["app_open"]
holdout = 0.10

[[variants]]
name = "discount"
email = { subject = "s", template = "t.email.hbs" }

[[variants]]
name = "reminder"
email = { subject = "s", template = "t.email.hbs" }
"#;

async fn exec(db: &Db, sql: &str) {
    db.conn.execute_unprepared(sql).await.expect(sql);
}

/// One message row: (id, run, campaign, arm, status, reason, sent, delivered?,
/// opened, machine opened, clicked, unsubscribed, complained, converted, revenue, secondary).
#[allow(clippy::too_many_arguments)]
fn message(
    id: i64,
    run: i64,
    campaign: i64,
    arm: &str,
    status: &str,
    reason: Option<&str>,
    sent: bool,
    outcomes: &[&str],
    revenue: f64,
    secondary: Option<&str>,
) -> String {
    let send_at = T0 + (run - 1) * 2 * DAY;
    let at = |flag: &str| {
        if outcomes.contains(&flag) {
            (send_at + 3_600_000).to_string()
        } else {
            "NULL".to_string()
        }
    };
    let text = |v: Option<&str>| v.map_or("NULL".to_string(), |v| format!("'{v}'"));
    format!(
        "({id}, {run}, {campaign}, {id}, 0, '{arm}', 'email', 'c{id}@example.com', {send_at}, '{status}', {}, 0, {}, {}, {}, {}, 0, {}, 0, {}, {}, {}, {revenue}, {}, {send_at}, {send_at})",
        text(reason),
        if sent {
            (send_at + 1000).to_string()
        } else {
            "NULL".to_string()
        },
        if status == "delivered" {
            (send_at + 2000).to_string()
        } else {
            "NULL".to_string()
        },
        at("complained"),
        at("opened"),
        at("machine"),
        at("clicked"),
        at("unsubscribed"),
        at("converted"),
        text(secondary),
    )
}

/// Inserts rows made by [`message`].
async fn insert_messages(db: &Db, rows: &[String]) {
    exec(
        db,
        &format!(
            "INSERT INTO messages (id, run_id, campaign_id, contact_id, step, arm, channel, address, send_at, status, reason, attempts, sent_at, delivered_at, complained_at, opened_at, open_count, machine_opened_at, click_count, clicked_at, unsubscribed_at, converted_at, revenue, secondary, created_at, updated_at) VALUES {}",
            rows.join(", ")
        ),
    )
    .await;
}

/// Two runs of `winback` and one of another campaign (never counted).
async fn fixture(db: &Db) {
    exec(
        db,
        &format!(
            "INSERT INTO campaigns (id, name, kind, topic, fingerprint, created_at, updated_at) VALUES \
             (1, 'winback', 'marketing', NULL, '{FINGERPRINT}', {T0}, {T0}), \
             (2, 'other', 'marketing', NULL, 'other;holdout=0;a=1', {T0}, {T0})"
        ),
    )
    .await;
    let run2 = T0 + 2 * DAY;
    exec(
        db,
        &format!(
            "INSERT INTO runs (id, campaign_id, scheduled_at, now_at, state, origin, fingerprint, created_at) VALUES \
             (1, 1, {T0}, {T0}, 'running', 'manual', '{FINGERPRINT}', {T0}), \
             (2, 1, {run2}, {run2}, 'done', 'schedule', '{FINGERPRINT}', {run2}), \
             (3, 2, {T0}, {T0}, 'done', 'manual', 'other;holdout=0;a=1', {T0})"
        ),
    )
    .await;
    let app_open = r#"{"app_open": {"at": 1, "count": 2, "revenue": 0}}"#;
    let app_open_paid = r#"{"app_open": {"at": 1, "count": 1, "revenue": 4.5}, "login": {"at": 1, "count": 1, "revenue": 0}}"#;
    let rows = [
        // Run 1, discount.
        message(
            1,
            1,
            1,
            "discount",
            "delivered",
            None,
            true,
            &["opened", "machine"],
            0.0,
            None,
        ),
        message(
            2,
            1,
            1,
            "discount",
            "delivered",
            None,
            true,
            &["opened", "clicked"],
            0.0,
            None,
        ),
        message(
            3,
            1,
            1,
            "discount",
            "delivered",
            None,
            true,
            &["converted"],
            30.0,
            Some(app_open),
        ),
        message(4, 1, 1, "discount", "bounced", None, true, &[], 0.0, None),
        message(
            5,
            1,
            1,
            "discount",
            "failed",
            Some("smtp 550 no such user"),
            false,
            &[],
            0.0,
            None,
        ),
        message(
            6,
            1,
            1,
            "discount",
            "unknown",
            Some("timeout"),
            false,
            &[],
            0.0,
            None,
        ),
        message(
            7,
            1,
            1,
            "discount",
            "suppressed",
            Some("no_address"),
            false,
            &["converted"],
            10.0,
            None,
        ),
        message(
            8,
            1,
            1,
            "discount",
            "suppressed",
            Some("global_holdout"),
            false,
            &["converted"],
            5.0,
            None,
        ),
        // Run 1, reminder.
        message(
            9,
            1,
            1,
            "reminder",
            "delivered",
            None,
            true,
            &["unsubscribed", "complained"],
            0.0,
            None,
        ),
        message(
            10,
            1,
            1,
            "reminder",
            "delivered",
            None,
            true,
            &[],
            0.0,
            None,
        ),
        message(11, 1, 1, "reminder", "sent", None, true, &[], 0.0, None),
        message(
            12,
            1,
            1,
            "reminder",
            "planned",
            Some("deferred: quiet hours"),
            false,
            &[],
            0.0,
            None,
        ),
        message(
            13,
            1,
            1,
            "reminder",
            "cancelled",
            Some("exit"),
            false,
            &[],
            0.0,
            None,
        ),
        // Run 1, holdout.
        message(
            14,
            1,
            1,
            "holdout",
            "held_out",
            None,
            false,
            &["converted"],
            20.0,
            Some(app_open_paid),
        ),
        message(15, 1, 1, "holdout", "held_out", None, false, &[], 0.0, None),
        message(
            16,
            1,
            1,
            "holdout",
            "suppressed",
            Some("global_holdout"),
            false,
            &[],
            0.0,
            None,
        ),
        // Run 2.
        message(
            17,
            2,
            1,
            "discount",
            "delivered",
            None,
            true,
            &["converted"],
            7.0,
            None,
        ),
        message(18, 2, 1, "holdout", "held_out", None, false, &[], 0.0, None),
        // Another campaign.
        message(
            19,
            3,
            2,
            "a",
            "delivered",
            None,
            true,
            &["converted", "opened"],
            99.0,
            None,
        ),
    ];
    insert_messages(db, &rows).await;
}

fn campaign() -> Campaign {
    Campaign::parse("winback.toml", CAMPAIGN).expect("campaign")
}

async fn report(db: &Db, filter: ReportFilter) -> Report {
    let c = campaign();
    campaign_report(db, "winback", Some(&c), 0.1, &filter, T0 + 30 * DAY)
        .await
        .expect("report")
        .expect("known campaign")
}

fn arm<'a>(scope: &'a Scope, name: &str) -> &'a ArmReport {
    scope
        .arms
        .iter()
        .find(|a| a.arm == name)
        .unwrap_or_else(|| panic!("no arm {name} in {:?}", scope.arms))
}

async fn report_counts_every_status_and_outcome(db: &Db) {
    fixture(db).await;
    let r = report(db, ReportFilter::default()).await;
    assert_eq!(r.kind, "marketing");
    assert_eq!(r.runs.len(), 2);
    assert_eq!(
        r.total.messages, 18,
        "the other campaign's message is not counted"
    );
    let names: Vec<&str> = r.total.arms.iter().map(|a| a.arm.as_str()).collect();
    assert_eq!(names, ["discount", "reminder", "holdout"]);

    let d = arm(&r.total, "discount");
    assert_eq!(
        (
            d.assigned,
            d.sent,
            d.delivered,
            d.bounced,
            d.failed,
            d.unknown
        ),
        (8, 5, 4, 1, 1, 1),
        "the global holdout's message is not assigned"
    );
    assert_eq!((d.suppressed, d.global_holdout), (1, 1));
    assert_eq!(
        d.suppressed_by_reason,
        BTreeMap::from([("no_address".to_string(), 1)])
    );
    assert_eq!(
        (d.opened, d.machine_opened, d.clicked),
        (2, 1, 1),
        "machine opens apart"
    );
    assert_eq!(
        d.converted, 3,
        "a suppressed message converts too (intention to treat)"
    );
    assert_eq!(d.revenue, 47.0);
    assert_eq!(d.rates.delivery, Some(4.0 / 5.0));
    assert_eq!(d.rates.open, Some(2.0 / 4.0));
    assert_eq!(d.rates.click, Some(1.0 / 4.0));
    assert_eq!(d.rates.conversion, Some(3.0 / 8.0));
    assert_eq!(d.revenue_per_assigned, Some(47.0 / 8.0));
    assert_eq!(d.secondary[0].event, "app_open");
    assert_eq!((d.secondary[0].reached, d.secondary[0].revenue), (1, 0.0));

    let m = arm(&r.total, "reminder");
    assert_eq!(
        (m.assigned, m.sent, m.delivered, m.pending, m.cancelled),
        (5, 3, 2, 1, 1)
    );
    assert_eq!(m.by_status.get("sent"), Some(&1), "awaiting its receipt");
    assert_eq!(
        m.cancelled_by_reason,
        BTreeMap::from([("exit".to_string(), 1)])
    );
    assert!(
        m.suppressed_by_reason.is_empty(),
        "a deferral is no suppression"
    );
    assert_eq!((m.unsubscribed, m.complained, m.converted), (1, 1, 0));

    let h = arm(&r.total, "holdout");
    assert!(h.holdout);
    assert_eq!((h.assigned, h.held_out, h.global_holdout), (3, 3, 1));
    assert_eq!((h.converted, h.revenue), (1, 20.0));
    assert_eq!((h.secondary[0].reached, h.secondary[0].revenue), (1, 4.5));
    assert_eq!(h.rates.delivery, None, "nothing sent, no rate");

    assert_eq!(r.total.control.as_deref(), Some("holdout"));
    let pairs: Vec<(&str, &str)> = r
        .total
        .comparisons
        .iter()
        .map(|c| (c.variant.as_str(), c.control.as_str()))
        .collect();
    assert_eq!(
        pairs,
        [
            ("discount", "holdout"),
            ("reminder", "holdout"),
            ("reminder", "discount")
        ]
    );
    assert_eq!(
        r.total.comparisons[0].variant_counts,
        ArmCounts::new(8, 3).unwrap()
    );
    assert_eq!(
        r.total.comparisons[0].control_counts,
        ArmCounts::new(3, 1).unwrap()
    );
    let srm = r.total.srm.as_ref().expect("split checked");
    assert_eq!(srm.weights_from, "run");
    // Run 1: 12 + 2 assigned, run 2: 2; 45/45/10.
    assert!((srm.expected["discount"] - 0.45 * 16.0).abs() < 1e-9);
    assert!((srm.expected["holdout"] - 0.1 * 16.0).abs() < 1e-9);

    let g = r.global_holdout.as_ref().expect("global holdout report");
    assert_eq!((g.marketing.messages, g.marketing.converted), (16, 4));
    assert_eq!(
        (
            g.global_holdout.messages,
            g.global_holdout.converted,
            g.global_holdout.revenue
        ),
        (2, 1, 5.0)
    );

    // Per run, oldest first.
    let run1 = &r.runs[0];
    assert_eq!((run1.run.id, run1.run.state.as_str()), (1, "running"));
    assert_eq!(arm(&run1.scope, "discount").assigned, 7);
    let run2 = &r.runs[1];
    assert_eq!(run2.run.started_at, "2026-11-03T10:00:00Z");
    assert_eq!(
        run2.scope
            .arms
            .iter()
            .map(|a| (a.arm.as_str(), a.assigned))
            .collect::<Vec<_>>(),
        [("discount", 1), ("reminder", 0), ("holdout", 1)],
        "an arm with weight but no one in it is shown"
    );
}

async fn report_filters_select_whole_runs(db: &Db) {
    fixture(db).await;
    let only2 = report(
        db,
        ReportFilter {
            run: Some(2),
            ..ReportFilter::default()
        },
    )
    .await;
    assert_eq!(only2.runs.len(), 1);
    assert_eq!(only2.total.messages, 2);
    assert_eq!(arm(&only2.total, "discount").converted, 1);

    let since = parse_instant("2026-11-02", Bound::Since).unwrap();
    let late = report(
        db,
        ReportFilter {
            since: Some(since),
            ..ReportFilter::default()
        },
    )
    .await;
    assert_eq!(late.runs.iter().map(|r| r.run.id).collect::<Vec<_>>(), [2]);

    // A date as `until` includes that whole day; an instant is exclusive.
    let until = parse_instant("2026-11-01", Bound::Until).unwrap();
    let early = report(
        db,
        ReportFilter {
            until: Some(until),
            ..ReportFilter::default()
        },
    )
    .await;
    assert_eq!(early.runs.iter().map(|r| r.run.id).collect::<Vec<_>>(), [1]);
    assert_eq!(early.total.messages, 16);
    let exact = report(
        db,
        ReportFilter {
            since: Some(T0),
            until: Some(T0 + 2 * DAY),
            ..ReportFilter::default()
        },
    )
    .await;
    assert_eq!(exact.runs.iter().map(|r| r.run.id).collect::<Vec<_>>(), [1]);

    let none = report(
        db,
        ReportFilter {
            run: Some(3),
            ..ReportFilter::default()
        },
    )
    .await;
    assert!(none.runs.is_empty(), "run 3 belongs to another campaign");
    assert_eq!(none.notes, ["no run of this campaign matches the filter"]);

    // Configured but never run: a report that says so; unknown: none.
    let c = campaign();
    let fresh = campaign_report(db, "fresh", Some(&c), 0.0, &ReportFilter::default(), T0)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(fresh.notes, ["`fresh` has not run yet"]);
    assert!(
        campaign_report(db, "nope", None, 0.0, &ReportFilter::default(), T0)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(campaign_names(db).await.unwrap(), ["other", "winback"]);
}

async fn report_shows_each_rollout_once(db: &Db) {
    fixture(db).await;
    let variants = [
        ("discount", ArmCounts::new(1_000, 80).unwrap()),
        ("reminder", ArmCounts::new(1_000, 40).unwrap()),
    ];
    let decision = pick_winner(&variants).unwrap();
    let record =
        RolloutRecord::from_decision(2, T0 + 3 * DAY, "conversion", &variants, &decision, true);
    assert_eq!(
        (record.chosen.as_str(), record.leader.as_str()),
        ("discount", "discount")
    );
    assert!(record_rollout(db, &record).await.unwrap());
    let mut second = record.clone();
    second.chosen = "reminder".into();
    assert!(
        !record_rollout(db, &second).await.unwrap(),
        "a decision is final"
    );
    let r = report(db, ReportFilter::default()).await;
    assert_eq!(r.rollouts.len(), 1);
    let ro = &r.rollouts[0];
    assert_eq!((ro.run_id, ro.chosen.as_str()), (2, "discount"));
    assert!(ro.clear_winner && ro.window_cut_short);
    assert_eq!(ro.detail["arms"][1]["k"], 40);
    assert!(
        ro.sentence.starts_with("run 2: discount went to the rest"),
        "{}",
        ro.sentence
    );
    assert!(
        ro.sentence.contains("on the outcomes so far"),
        "{}",
        ro.sentence
    );
    assert!(
        r.runs[1].scope.srm.is_none(),
        "a rolled-out run is not split by weight"
    );
    assert!(r.total.srm.is_none());
    let only1 = report(
        db,
        ReportFilter {
            run: Some(1),
            ..ReportFilter::default()
        },
    )
    .await;
    assert!(only1.rollouts.is_empty());
}

/// A triggered campaign's one open-ended run is cut by its messages' trigger
/// instants: `--since` keeps the run (started before it) and counts only the
/// messages triggered in the range; scheduled runs are still selected whole.
async fn report_cuts_a_triggered_run_by_trigger_instant(db: &Db) {
    fixture(db).await;
    exec(
        db,
        &format!(
            "INSERT INTO runs (id, campaign_id, scheduled_at, now_at, state, origin, fingerprint, created_at) VALUES \
             (4, 1, 0, {T0}, 'running', 'trigger', '{FINGERPRINT}', {T0})"
        ),
    )
    .await;
    let rows: Vec<String> = (0..5)
        .map(|i| {
            message(
                100 + i,
                4,
                1,
                "discount",
                "delivered",
                None,
                true,
                &[],
                0.0,
                None,
            )
        })
        .collect();
    insert_messages(db, &rows).await;
    // Two triggered on day 1, three on day 5; distinct trigger ids keep them apart.
    exec(
        db,
        &format!(
            "UPDATE messages SET trigger_id = id, trigger_at = CASE WHEN id < 102 THEN {} ELSE {} END WHERE run_id = 4",
            T0 + DAY,
            T0 + 5 * DAY
        ),
    )
    .await;
    let all = report(db, ReportFilter::default()).await;
    let late = report(
        db,
        ReportFilter {
            since: Some(T0 + 4 * DAY),
            ..ReportFilter::default()
        },
    )
    .await;
    let early = report(
        db,
        ReportFilter {
            until: Some(T0 + 2 * DAY),
            ..ReportFilter::default()
        },
    )
    .await;
    let triggered = |r: &Report| {
        r.runs
            .iter()
            .find(|x| x.run.id == 4)
            .map(|x| x.scope.messages)
    };
    assert_eq!(triggered(&all), Some(5));
    assert_eq!(triggered(&late), Some(3));
    // Until day 2: the triggered run's first two, and run 1 (started at T0) whole.
    assert_eq!(triggered(&early), Some(2));
    assert!(early.runs.iter().any(|x| x.run.id == 1));
    assert!(!late.runs.iter().any(|x| x.run.id == 1));
}

#[tokio::test]
async fn report_scan_reads_only_the_covering_indexes_on_sqlite() {
    let t = crate::test_db::TestDb::new(DbBackend::Sqlite, "report")
        .await
        .expect("sqlite");
    fixture(&t.db).await;
    let goals = ["app_open".to_string()];
    let only2 = ReportFilter {
        run: Some(2),
        ..ReportFilter::default()
    };
    for (filter, ids) in [(ReportFilter::default(), vec![1, 2]), (only2, vec![2])] {
        for (part, index) in [
            (Part::ByStatus, "messages_report"),
            (Part::Reasons, "messages_report_reasons"),
        ] {
            let mut q = scan_sql(
                DbBackend::Sqlite,
                1,
                Runs::of(&filter, &ids),
                &goals,
                part,
                None,
            );
            q.text = format!("EXPLAIN QUERY PLAN {}", q.text);
            let plan: Vec<String> =
                t.db.conn
                    .query_all_raw(q.build(DbBackend::Sqlite))
                    .await
                    .unwrap()
                    .iter()
                    .map(|r| r.try_get_by_index::<String>(3).unwrap())
                    .collect();
            let plan = plan.join("\n");
            assert!(
                plan.contains(&format!("USING COVERING INDEX {index} "))
                    && !plan.contains("TEMP B-TREE"),
                "{part:?}: {plan}"
            );
        }
    }
}

/// A two-step follow-up series, two days apart, with a 3-day goal.
const SERIES: &str = r#"
name = "welcome"
where = 'attrs.x == 1'
channels = ["email"]
goal = { event = "order_placed", within = "3d" }

[[variants]]
name = "a"
email = { subject = "s", template = "t.email.hbs" }

[[variants]]
name = "b"
email = { subject = "s", template = "t.email.hbs" }

[[steps]]
delay = "2d"
email = { subject = "s2", template = "t.email.hbs" }

[[steps]]
delay = "2d"
email = { subject = "s3", template = "t.email.hbs" }
"#;

/// A contact is the unit of an A/B test: three messages of a series are one
/// assignment, and one purchase is one conversion, not one per step whose
/// window holds it. The window runs from the first message to `within` after
/// the last step (3d + 2d + 2d).
async fn a_series_counts_each_contact_once(db: &Db) {
    let c = Campaign::parse("welcome.toml", SERIES).expect("series campaign");
    assert_eq!(c.goal_window_ms(), Some(7 * DAY));
    exec(
        db,
        &format!(
            "INSERT INTO campaigns (id, name, kind, topic, fingerprint, created_at, updated_at) VALUES \
             (3, 'welcome', 'marketing', NULL, 'welcome;holdout=0;a=1,b=1', {T0}, {T0}); \
             INSERT INTO runs (id, campaign_id, scheduled_at, now_at, state, origin, fingerprint, created_at) VALUES \
             (7, 3, {T0}, {T0}, 'done', 'manual', 'welcome;holdout=0;a=1,b=1', {T0}); \
             INSERT INTO contacts (id, external_id, attrs, created_at, updated_at) VALUES \
             (1, 'c1', '{{}}', {T0}, {T0}), (2, 'c2', '{{}}', {T0}, {T0}), (3, 'c3', '{{}}', {T0}, {T0})"
        ),
    )
    .await;
    // c1 and c2 get all three steps; c3's first message was suppressed (a
    // channel suppression is per step), its follow-ups went out.
    let mut rows = Vec::new();
    for (contact, arm, first) in [
        (1, "a", "delivered"),
        (2, "b", "delivered"),
        (3, "a", "suppressed"),
    ] {
        for step in 0..3i64 {
            let id = contact * 10 + step;
            let at = T0 + step * 2 * DAY;
            let status = if step == 0 { first } else { "delivered" };
            rows.push(format!(
                "({id}, 7, 3, {contact}, {step}, '{arm}', 'email', 'c{contact}@example.com', {at}, '{status}', 0, {at}, {at})"
            ));
        }
    }
    exec(
        db,
        &format!(
            "INSERT INTO messages (id, run_id, campaign_id, contact_id, step, arm, channel, address, send_at, status, attempts, created_at, updated_at) VALUES {}",
            rows.join(", ")
        ),
    )
    .await;
    // c1 buys on day 5: past the first message's own 3 days, inside the
    // series' window, and inside steps 1 and 2's own windows too. c3 buys on day 1.
    let events = [("c1", 1, 5 * DAY + 1, 10.0), ("c3", 3, DAY, 5.0)];
    for (_, contact, at, value) in events {
        exec(
            db,
            &format!(
                "INSERT INTO events (contact_id, name, at, value, received_at) VALUES ({contact}, 'order_placed', {}, {value}, {})",
                T0 + at,
                T0 + at
            ),
        )
        .await;
    }
    let goals = [crate::tracking::GoalSpec {
        campaign_name: "welcome".into(),
        event: "order_placed".into(),
        within_ms: c.goal_window_ms().unwrap(),
        secondary: false,
    }];
    let rows: Vec<crate::import::EventRow> = events
        .iter()
        .map(|(who, _, at, value)| crate::import::EventRow {
            external_id: who.to_string(),
            name: "order_placed".into(),
            at: T0 + at,
            value: Some(*value),
            event_id: None,
            properties: Default::default(),
        })
        .collect();
    crate::tracking::attribute_events(db, &goals, &rows)
        .await
        .expect("attribution");
    let converted: Vec<(i64, Option<i64>)> = db
        .conn
        .query_all_raw(sea_orm::Statement::from_string(
            db.backend(),
            "SELECT id, converted_at FROM messages WHERE converted_at IS NOT NULL ORDER BY id",
        ))
        .await
        .unwrap()
        .iter()
        .map(|r| {
            (
                r.try_get_by_index(0).unwrap(),
                r.try_get_by_index(1).unwrap(),
            )
        })
        .collect();
    assert_eq!(
        converted,
        [(10, Some(T0 + 5 * DAY + 1)), (30, Some(T0 + DAY))],
        "only first messages convert"
    );

    let report_at = |now: i64| {
        let c = &c;
        async move {
            campaign_report(db, "welcome", Some(c), 0.0, &ReportFilter::default(), now)
                .await
                .expect("report")
                .expect("known campaign")
        }
    };
    let r = report_at(T0 + 30 * DAY).await;
    assert_eq!(r.total.messages, 3, "one per contact, not one per step");
    let a = arm(&r.total, "a");
    assert_eq!((a.assigned, a.delivered, a.suppressed), (2, 1, 1));
    assert_eq!((a.converted, a.revenue), (2, 15.0));
    let b = arm(&r.total, "b");
    assert_eq!((b.assigned, b.delivered, b.converted), (1, 1, 0));
    // On day 6 the series' window (day 0 + 7) is still open, on day 30 closed.
    let early = report_at(T0 + 6 * DAY).await;
    assert!(early.total.goal_window_open && !r.total.goal_window_open);
}

crate::test_db::on_both_databases!(
    a_series_counts_each_contact_once,
    report_counts_every_status_and_outcome,
    report_filters_select_whole_runs,
    report_shows_each_rollout_once,
    report_cuts_a_triggered_run_by_trigger_instant
);

const RESULTS_CAMPAIGN: &str = r#"
name = "seeds"
where = 'attrs.x == 1'
channels = ["email"]
goal = { event = "order_placed", within = "3d" }
holdout = 0.2

[[variants]]
name = "a"
email = { subject = "s", template = "t.email.hbs" }

[[variants]]
name = "b"
email = { subject = "s", template = "t.email.hbs" }

[results]
retention_event = "app_open"
revenue_event = "order_placed"
ltv_horizon = "60d"
"#;

/// Retention, ARPU and LTV per arm (issue 26's seeds' metrics) equal an
/// independent count over hand-made events: every window's both ends are
/// hit exactly, other events and other contacts' events are ignored, a
/// contact's later steps are not counted again, and the global holdout is
/// left out.
async fn report_counts_retention_arpu_and_ltv(db: &Db) {
    let c = Campaign::parse("seeds.toml", RESULTS_CAMPAIGN).expect("campaign");
    exec(
        db,
        &format!(
            "INSERT INTO campaigns (id, name, kind, topic, fingerprint, created_at, updated_at) VALUES \
             (4, 'seeds', 'marketing', NULL, 'seeds;holdout=0.2;a=1,b=1', {T0}, {T0}); \
             INSERT INTO runs (id, campaign_id, scheduled_at, now_at, state, origin, fingerprint, created_at) VALUES \
             (8, 4, {T0}, {T0}, 'done', 'manual', 'seeds;holdout=0.2;a=1,b=1', {T0})"
        ),
    )
    .await;
    const HOUR: i64 = 3_600_000;
    // (contact, arm, status, reason): 30 contacts; contact 30 is in the global holdout.
    let arms = ["a", "b", "holdout"];
    let messages: Vec<(i64, &str, &str, Option<&str>)> = (1..=30)
        .map(|i| {
            let arm = arms[(i % 3) as usize];
            match (i, arm) {
                (30, _) => (i, arm, "suppressed", Some("global_holdout")),
                (_, "holdout") => (i, arm, "held_out", None),
                _ if i % 7 == 0 => (i, arm, "bounced", None),
                _ => (i, arm, "delivered", None),
            }
        })
        .collect();
    let send_at = |contact: i64| T0 + contact * HOUR;
    let mut sql = String::from(
        "INSERT INTO contacts (id, external_id, attrs, created_at, updated_at) VALUES ",
    );
    sql.push_str(
        &(1..=30)
            .map(|i| format!("({i}, 'c{i}', '{{}}', {T0}, {T0})"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    exec(db, &sql).await;
    let mut rows = Vec::new();
    for (contact, arm, status, reason) in &messages {
        let at = send_at(*contact);
        let reason = reason.map_or("NULL".to_string(), |r| format!("'{r}'"));
        rows.push(format!(
            "({contact}, 8, 4, {contact}, 0, '{arm}', 'email', 'c{contact}@example.com', {at}, '{status}', {reason}, 0, {at}, {at})"
        ));
        // A second step a day later: the contact is counted once, from step 0.
        let later = at + DAY;
        rows.push(format!(
            "({}, 8, 4, {contact}, 1, '{arm}', 'email', 'c{contact}@example.com', {later}, 'delivered', NULL, 0, {later}, {later})",
            1000 + contact
        ));
    }
    exec(
        db,
        &format!(
            "INSERT INTO messages (id, run_id, campaign_id, contact_id, step, arm, channel, address, send_at, status, reason, attempts, created_at, updated_at) VALUES {}",
            rows.join(", ")
        ),
    )
    .await;
    // Events, relative to each contact's own send time: a fixed scatter from
    // a small generator, and every window's ends exactly.
    let mut events: Vec<(i64, &str, i64, f64)> = Vec::new();
    let mut seed: u64 = 7;
    let mut next = |m: u64| {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (seed >> 33) % m
    };
    for contact in 1..=30i64 {
        for _ in 0..next(4) {
            let offset = next(70 * 24) as i64 * HOUR - 2 * DAY;
            let name = ["app_open", "order_placed", "page_view"][next(3) as usize];
            events.push((contact, name, offset, (next(100) + 1) as f64));
        }
    }
    for (contact, name, offset) in [
        (1, "app_open", DAY),               // day 1 starts: retained in 1-7
        (2, "app_open", DAY - 1),           // still day 0: not retained
        (4, "app_open", 8 * DAY),           // day 8 starts: 8-30, not 1-7
        (5, "app_open", 31 * DAY),          // day 31: neither
        (7, "app_open", 31 * DAY - 1),      // last instant of day 30
        (8, "order_placed", 0),             // at the send time: not after it
        (10, "order_placed", 30 * DAY),     // ARPU's last instant
        (11, "order_placed", 30 * DAY + 1), // LTV only
        (13, "order_placed", 60 * DAY),     // LTV's last instant
        (14, "order_placed", 60 * DAY + 1), // past the horizon
        (30, "app_open", 2 * DAY),          // the global holdout: not counted
        (30, "order_placed", 2 * DAY),
    ] {
        events.push((contact, name, offset, 9.5));
    }
    let values: Vec<String> = events
        .iter()
        .map(|(contact, name, offset, value)| {
            let at = send_at(*contact) + offset;
            format!("({contact}, '{name}', {at}, {value}, {at})")
        })
        .collect();
    exec(
        db,
        &format!(
            "INSERT INTO events (contact_id, name, at, value, received_at) VALUES {}",
            values.join(", ")
        ),
    )
    .await;

    // The independent count: every message against every event.
    #[derive(Default, Debug, PartialEq)]
    struct Expect {
        contacts: u64,
        d1_7: u64,
        d8_30: u64,
        r30: f64,
        ltv: f64,
        r30_squares: f64,
        ltv_squares: f64,
    }
    let mut expect: BTreeMap<&str, Expect> = BTreeMap::new();
    for (contact, arm, _, reason) in &messages {
        if reason.is_some() {
            continue;
        }
        let e = expect.entry(arm).or_default();
        e.contacts += 1;
        let mine = || events.iter().filter(|ev| ev.0 == *contact);
        let opened =
            |from: i64, to: i64| mine().any(|ev| ev.1 == "app_open" && ev.2 >= from && ev.2 < to);
        e.d1_7 += u64::from(opened(DAY, 8 * DAY));
        e.d8_30 += u64::from(opened(8 * DAY, 31 * DAY));
        let revenue = |to: i64| -> f64 {
            mine()
                .filter(|ev| ev.1 == "order_placed" && ev.2 > 0 && ev.2 <= to)
                .map(|ev| ev.3)
                .sum()
        };
        e.r30 += revenue(30 * DAY);
        e.ltv += revenue(60 * DAY);
        e.r30_squares += revenue(30 * DAY).powi(2);
        e.ltv_squares += revenue(60 * DAY).powi(2);
    }

    let r = campaign_report(
        db,
        "seeds",
        Some(&c),
        0.0,
        &ReportFilter::default(),
        T0 + 200 * DAY,
    )
    .await
    .expect("report")
    .expect("known campaign");
    let echo = r.results.as_ref().expect("results echoed");
    assert_eq!((echo.ltv_horizon.as_str(), echo.arpu_days), ("60d", 30));
    for scope in [&r.total, &r.runs[0].scope] {
        for (name, e) in &expect {
            let got = arm(scope, name).results.as_ref().expect("results per arm");
            let close = |x: f64, y: f64| (x - y).abs() < 1e-9;
            assert_eq!(
                (got.contacts, got.retained_d1_7, got.retained_d8_30),
                (e.contacts, Some(e.d1_7), Some(e.d8_30)),
                "arm {name}"
            );
            assert!(
                close(got.revenue_30d.unwrap(), e.r30),
                "arm {name}: {got:?} vs {e:?}"
            );
            assert!(
                close(got.revenue_ltv.unwrap(), e.ltv),
                "arm {name}: {got:?} vs {e:?}"
            );
            let n = e.contacts as f64;
            assert!(close(got.retention_d1_7.unwrap(), e.d1_7 as f64 / n));
            assert!(close(got.retention_d8_30.unwrap(), e.d8_30 as f64 / n));
            assert!(close(got.arpu.unwrap(), e.r30 / n));
            assert!(close(got.ltv.unwrap(), e.ltv / n));
        }
    }
    // ARPU and LTV are compared as means: their sums of squares are each
    // contact's own revenue squared (issue 33).
    type Sums = fn(&Expect) -> (f64, f64);
    let metrics: [(&str, Sums); 2] = [
        ("arpu", |e| (e.r30, e.r30_squares)),
        ("ltv", |e| (e.ltv, e.ltv_squares)),
    ];
    for (metric, sums) in metrics {
        let m = r
            .total
            .metric_comparisons
            .iter()
            .find(|m| m.metric == metric && m.variant == "a" && m.control == "holdout")
            .unwrap_or_else(|| panic!("no {metric}"));
        for (name, got) in [("a", m.variant_sums), ("holdout", m.control_sums)] {
            let e = &expect[name];
            let (sum, squares) = sums(e);
            let MetricArm::Plain {
                measure:
                    Measure::Mean {
                        n,
                        sum: s,
                        sum_squares,
                    },
            } = got
            else {
                panic!("{metric} is a mean: {got:?}")
            };
            assert_eq!(n, e.contacts, "{metric} {name}");
            assert!(
                (s - sum).abs() < 1e-9 && (sum_squares - squares).abs() < 1e-6,
                "{metric} {name}: {got:?} vs {e:?}"
            );
        }
    }
    // The boundaries did what they say: a sanity check on the oracle itself.
    let a = &expect["a"];
    assert!(
        a.contacts == 9 && expect["holdout"].contacts == 10,
        "{expect:?}"
    );
    // Retention is compared like conversion: each variant against the holdout, both windows.
    let metrics: Vec<(&str, &str, &str)> = r
        .total
        .results_comparisons
        .iter()
        .map(|c| (c.metric, c.variant.as_str(), c.control.as_str()))
        .collect();
    assert_eq!(
        metrics,
        [
            ("retention_d1_7", "a", "holdout"),
            ("retention_d1_7", "b", "holdout"),
            ("retention_d1_7", "b", "a"),
            ("retention_d8_30", "a", "holdout"),
            ("retention_d8_30", "b", "holdout"),
            ("retention_d8_30", "b", "a"),
        ]
    );
    let d1 = &r.total.results_comparisons[0];
    assert_eq!(
        (d1.variant_counts.n(), d1.variant_counts.k()),
        (expect["a"].contacts, expect["a"].d1_7)
    );
    // Without `[results]` there is nothing to count and nothing is shown.
    let plain = Campaign::parse(
        "seeds.toml",
        RESULTS_CAMPAIGN.split("[results]").next().unwrap(),
    )
    .expect("campaign");
    let r = campaign_report(
        db,
        "seeds",
        Some(&plain),
        0.0,
        &ReportFilter::default(),
        T0 + 200 * DAY,
    )
    .await
    .expect("report")
    .expect("known campaign");
    assert!(r.results.is_none() && arm(&r.total, "a").results.is_none());
    assert!(r.total.results_comparisons.is_empty());
}

crate::test_db::on_both_databases!(report_counts_retention_arpu_and_ltv);

const RATIO_CAMPAIGN: &str = r#"
name = "ratios"
where = 'attrs.x == 1'
channels = ["email"]
goal = { event = "order_placed", within = "3d" }
holdout = 0.2

[[variants]]
name = "a"
email = { subject = "s", template = "t.email.hbs" }

[[variants]]
name = "b"
email = { subject = "s", template = "t.email.hbs" }

[results]
sequential = true
correction = "holm"
"#;

/// The sums behind the ratio metrics (issue 33) equal an independent count
/// over the rows: revenue and its squares per converting contact, clicks,
/// deliveries and clicks among the delivered (a click on a message still
/// `sent` counts as a click, not as a delivered click); and the report
/// says it shows sequential, Holm-corrected numbers.
async fn report_sums_ratio_metrics(db: &Db) {
    let c = Campaign::parse("ratios.toml", RATIO_CAMPAIGN).expect("campaign");
    let fp = "ratios;holdout=0.2;a=1,b=1";
    exec(
        db,
        &format!(
            "INSERT INTO campaigns (id, name, kind, topic, fingerprint, created_at, updated_at) VALUES \
             (5, 'ratios', 'marketing', NULL, '{fp}', {T0}, {T0}); \
             INSERT INTO runs (id, campaign_id, scheduled_at, now_at, state, origin, fingerprint, created_at) VALUES \
             (1, 5, {T0}, {T0}, 'done', 'manual', '{fp}', {T0})"
        ),
    )
    .await;
    let mut seed: u64 = 11;
    let mut next = |m: u64| {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (seed >> 33) % m
    };
    #[derive(Default, Debug)]
    struct Expect {
        n: u64,
        clicked: u64,
        delivered: u64,
        clicked_delivered: u64,
        converted: u64,
        revenue: f64,
        revenue_squares: f64,
    }
    let mut expect: BTreeMap<&str, Expect> = BTreeMap::new();
    let mut rows = Vec::new();
    for id in 1..=240i64 {
        let arm = ["a", "b", "holdout"][(id % 3) as usize];
        let status = match (arm, id % 5) {
            ("holdout", _) => "held_out",
            (_, 0) => "bounced",
            (_, 1) => "sent",
            _ => "delivered",
        };
        let mut outcomes = Vec::new();
        if arm != "holdout" && status != "bounced" && next(3) == 0 {
            outcomes.push("clicked");
        }
        let revenue = if next(4) == 0 {
            outcomes.push("converted");
            (next(50) + 1) as f64
        } else {
            0.0
        };
        let e = expect.entry(arm).or_default();
        e.n += 1;
        let clicked = outcomes.contains(&"clicked");
        e.clicked += u64::from(clicked);
        e.delivered += u64::from(status == "delivered");
        e.clicked_delivered += u64::from(clicked && status == "delivered");
        e.converted += u64::from(revenue > 0.0);
        e.revenue += revenue;
        e.revenue_squares += revenue * revenue;
        rows.push(message(
            id,
            1,
            5,
            arm,
            status,
            None,
            status != "held_out",
            &outcomes,
            revenue,
            None,
        ));
    }
    insert_messages(db, &rows).await;
    // The oracle covers what it claims: clicks on `sent` messages exist.
    assert!(
        expect["a"].clicked > expect["a"].clicked_delivered,
        "{expect:?}"
    );

    let r = campaign_report(
        db,
        "ratios",
        Some(&c),
        0.0,
        &ReportFilter::default(),
        T0 + 30 * DAY,
    )
    .await
    .expect("report")
    .expect("known campaign");
    assert_eq!(
        (r.statistics.test, r.statistics.correction),
        ("sequential", "holm")
    );
    let s = &r.total;
    let find = |metric: &str, variant: &str, control: &str| {
        s.metric_comparisons
            .iter()
            .find(|m| m.metric == metric && m.variant == variant && m.control == control)
            .unwrap_or_else(|| panic!("no {metric} {variant} vs {control}"))
    };
    for (variant, control) in [("b", "a"), ("a", "holdout")] {
        for (arm, sums) in [
            (
                variant,
                find("revenue_per_converter", variant, control).variant_sums,
            ),
            (
                control,
                find("revenue_per_converter", variant, control).control_sums,
            ),
        ] {
            let e = &expect[arm];
            assert_eq!(
                sums,
                MetricArm::Ratio {
                    n: e.n,
                    numerator: Measure::Mean {
                        n: e.n,
                        sum: e.revenue,
                        sum_squares: e.revenue_squares,
                    },
                    denominator: Measure::Proportion {
                        n: e.n,
                        sum: e.converted as f64,
                    },
                    sum_of_products: e.revenue,
                },
                "revenue per converter, arm {arm}"
            );
        }
    }
    let clicks = find("clicks_per_delivered", "b", "a");
    for (arm, sums) in [("b", clicks.variant_sums), ("a", clicks.control_sums)] {
        let e = &expect[arm];
        assert_eq!(
            sums,
            MetricArm::Ratio {
                n: e.n,
                numerator: Measure::Proportion {
                    n: e.n,
                    sum: e.clicked as f64,
                },
                denominator: Measure::Proportion {
                    n: e.n,
                    sum: e.delivered as f64,
                },
                sum_of_products: e.clicked_delivered as f64,
            },
            "clicks per delivered, arm {arm}"
        );
    }
    // Conversion and revenue per converter over three pairs, clicks per
    // delivered between the variants, less those without an estimate.
    let estimated = s
        .comparisons
        .iter()
        .filter(|c| c.result.estimate().is_some())
        .count()
        + s.metric_comparisons
            .iter()
            .filter(|c| c.result.estimate().is_some())
            .count();
    assert_eq!(s.corrected_for, estimated);
    assert!(estimated >= 6, "{estimated}");
    let conv = &s.comparisons[0];
    let e = conv.result.estimate().expect("an estimate");
    assert!(conv.p_value_adjusted.unwrap() >= e.p_value);
}

crate::test_db::on_both_databases!(report_sums_ratio_metrics);
