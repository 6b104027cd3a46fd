//! CUPED on SQLite and PostgreSQL (issue 33), through the real planner: each
//! contact's goal events and revenue in the window before the plan end up on
//! its first message (window ends included and excluded exactly, other events
//! and older purchases ignored), and the report adjusts conversion, ARPU and
//! LTV by them: its sums equal an independent count over the events, and the
//! adjusted comparison is the domain's over those sums. The migration adding
//! the columns is run on a database made by the schema before it.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{TimeZone, Utc};
use herald_domain::config::{Campaign, ConfigSet, HeraldConfig};
use herald_domain::stats::{self, Measure, MetricArm, TestKind};
use herald_engine::store::Store;
use herald_engine::{Engine, FixedClock};
use herald_migrations::{Migrator, MigratorTrait};
use sea_orm::{ConnectionTrait, Statement};

use super::*;
use crate::store::SqlStore;
use crate::test_db::on_both_databases;

const DAY: i64 = 86_400_000;
const HOUR: i64 = 3_600_000;
/// 2026-11-01T10:00:00Z: the plan's instant, the end of the pre-period.
const T0: i64 = 1_793_527_200_000;
const CONTACTS: i64 = 300;

const CAMPAIGN: &str = r#"
name = "cup"
where = 'attrs.x == 1'
channels = ["email"]
goal = { event = "order_placed", within = "3d" }

[[variants]]
name = "a"
email = { subject = "s", template = "a.email.hbs" }

[[variants]]
name = "b"
email = { subject = "s", template = "b.email.hbs" }

[results]
revenue_event = "order_placed"
cuped = { days = 30 }
"#;

async fn exec(db: &Db, sql: &str) {
    db.conn.execute_unprepared(sql).await.expect(sql);
}

async fn rows(db: &Db, sql: &str) -> Vec<sea_orm::QueryResult> {
    db.conn
        .query_all_raw(Statement::from_string(db.backend(), sql))
        .await
        .expect(sql)
}

/// The pre-period events: (contact, name, offset from T0, value).
fn history() -> Vec<(i64, &'static str, i64, f64)> {
    let mut out = Vec::new();
    for i in 1..=CONTACTS {
        if i % 3 == 0 {
            // Within the window: a purchase 1 to 20 days before.
            out.push((i, "order_placed", -(i % 20 + 1) * DAY, (i % 17 + 1) as f64));
        }
        if i % 10 == 1 {
            out.push((i, "order_placed", -40 * DAY, 99.0)); // older than the window
        }
        if i % 11 == 0 {
            out.push((i, "app_open", -DAY, 50.0)); // not the goal, not revenue
        }
    }
    out.extend([
        (2, "order_placed", -30 * DAY, 7.0), // the window's first instant: in
        (4, "order_placed", -30 * DAY - 1, 8.0), // just before it: out
        (5, "order_placed", 0, 9.0),         // the plan's instant: not before it
        (7, "order_placed", -1, 4.0),        // its last instant before: in
    ]);
    out
}

/// (pre converted, pre revenue) of each contact, counted from [`history`].
fn expected_covariates() -> BTreeMap<i64, (i64, f64)> {
    (1..=CONTACTS)
        .map(|c| {
            let mine = history()
                .into_iter()
                .filter(|e| e.0 == c && e.1 == "order_placed" && e.2 >= -30 * DAY && e.2 < 0)
                .collect::<Vec<_>>();
            (
                c,
                (i64::from(!mine.is_empty()), mine.iter().map(|e| e.3).sum()),
            )
        })
        .collect()
}

/// The post-period purchase of a contact, if any: correlated with its history.
fn purchase(contact: i64, pre: f64) -> Option<f64> {
    (pre > 0.0 && contact % 2 == 0 || contact % 7 == 0).then_some(pre + 5.0 + (contact % 3) as f64)
}

async fn cuped_covariates_are_planned_and_adjust_the_report(db: &Db) {
    let contacts: Vec<String> = (1..=CONTACTS)
        .map(|i| {
            format!("({i}, 'u{i}', 'c{i}@example.com', 'UTC', '{{\"x\": 1}}', {T0}, {T0}, {T0})")
        })
        .collect();
    exec(
        db,
        &format!(
            "INSERT INTO contacts (id, external_id, email, timezone, attrs, first_seen_at, created_at, updated_at) VALUES {}",
            contacts.join(",")
        ),
    )
    .await;
    let events: Vec<String> = history()
        .iter()
        .map(|(c, name, offset, value)| {
            let at = T0 + offset;
            format!("({c}, '{name}', {at}, {value}, {at})")
        })
        .collect();
    exec(
        db,
        &format!(
            "INSERT INTO events (contact_id, name, at, value, received_at) VALUES {}",
            events.join(",")
        ),
    )
    .await;

    let campaign = Campaign::parse("cup.toml", CAMPAIGN).unwrap();
    let config = Arc::new(ConfigSet {
        herald: HeraldConfig::parse("herald.toml", "").unwrap(),
        segments: Default::default(),
        campaigns: [("cup".to_string(), campaign.clone())].into(),
    });
    let store: Arc<dyn Store> = Arc::new(SqlStore::new(db.clone()));
    let clock = Arc::new(FixedClock::new(Utc.timestamp_millis_opt(T0).unwrap()));
    let engine = Engine::new(store, clock, config);
    let (run, _) = engine.start_run(&campaign, T0, "manual").await.unwrap();

    // Every first message holds its contact's history of the 30 days before.
    let want = expected_covariates();
    let mut arms: BTreeMap<i64, String> = BTreeMap::new();
    let got = rows(
        db,
        &format!(
            "SELECT contact_id, pre_converted, CAST(pre_revenue AS DOUBLE PRECISION), arm, \
             CAST(pre_goal_revenue AS DOUBLE PRECISION) FROM messages \
             WHERE run_id = {} AND step = 0 ORDER BY contact_id",
            run.id
        ),
    )
    .await;
    assert_eq!(got.len() as i64, CONTACTS);
    for r in &got {
        let contact: i64 = r.try_get_by_index(0).unwrap();
        let converted: Option<i32> = r.try_get_by_index(1).unwrap();
        let revenue: Option<f64> = r.try_get_by_index(2).unwrap();
        let (pc, pr) = want[&contact];
        assert_eq!(
            (converted, revenue),
            (Some(pc as i32), Some(pr)),
            "contact {contact}"
        );
        arms.insert(contact, r.try_get_by_index(3).unwrap());
        // The goal is the revenue event here: its values before are the same.
        let goal_revenue: Option<f64> = r.try_get_by_index(4).unwrap();
        assert_eq!(goal_revenue, Some(pr), "contact {contact}");
    }
    assert_eq!(want[&2], (1, 7.0));
    assert_eq!(want[&4], (0, 0.0));
    assert_eq!(want[&5], (0, 0.0));
    assert_eq!(want[&7].0, 1);

    // Outcomes after the message, as attribution writes them, and the same
    // purchases as events for ARPU and LTV.
    let mut bought = Vec::new();
    for c in 1..=CONTACTS {
        if let Some(v) = purchase(c, want[&c].1) {
            let at = T0 + HOUR;
            exec(
                db,
                &format!(
                    "UPDATE messages SET converted_at = {at}, revenue = {v} WHERE run_id = {} AND contact_id = {c} AND step = 0",
                    run.id
                ),
            )
            .await;
            bought.push(format!("({c}, 'order_placed', {at}, {v}, {at})"));
        }
    }
    exec(
        db,
        &format!(
            "INSERT INTO events (contact_id, name, at, value, received_at) VALUES {}",
            bought.join(",")
        ),
    )
    .await;

    let r = campaign_report(
        db,
        "cup",
        Some(&campaign),
        0.0,
        &ReportFilter::default(),
        T0 + 200 * DAY,
    )
    .await
    .expect("report")
    .expect("known campaign");
    assert_eq!(r.statistics.cuped_days, Some(30));

    // The independent sums of each arm, from the events.
    let arm_sums = |arm: &str| {
        let mut n = 0u64;
        let (mut conv, mut pre_conv, mut both) = (0.0, 0.0, 0.0);
        let (mut post, mut post2, mut pre, mut pre2, mut prod) = (0.0, 0.0, 0.0, 0.0, 0.0);
        let mut products = stats::RatioProducts::default();
        for (c, a) in &arms {
            if a != arm {
                continue;
            }
            let (pc, pr) = want[c];
            let v = purchase(*c, pr).unwrap_or(0.0);
            let cv = f64::from(u8::from(v > 0.0));
            n += 1;
            conv += cv;
            pre_conv += pc as f64;
            both += cv * pc as f64;
            post += v;
            post2 += v * v;
            pre += pr;
            pre2 += pr * pr;
            prod += v * pr;
            // Revenue per converting contact: (revenue, converted) after and
            // (the goal's revenue, had the goal) before.
            let (d, dp) = (cv, pc as f64);
            products.m_post_d_post += v * d;
            products.m_post_m_pre += v * pr;
            products.d_post_d_pre += d * dp;
            products.m_pre_d_pre += pr * dp;
            products.m_post_d_pre += v * dp;
            products.m_pre_d_post += pr * d;
        }
        let per_converter = MetricArm::AdjustedRatio {
            n,
            numerator: Measure::Mean {
                n,
                sum: post,
                sum_squares: post2,
            },
            denominator: Measure::Proportion { n, sum: conv },
            pre_numerator: Measure::Mean {
                n,
                sum: pre,
                sum_squares: pre2,
            },
            pre_denominator: Measure::Proportion { n, sum: pre_conv },
            products,
        };
        let conversion = MetricArm::Adjusted {
            n,
            post: Measure::Proportion { n, sum: conv },
            pre: Measure::Proportion { n, sum: pre_conv },
            sum_of_products: both,
        };
        let arpu = MetricArm::Adjusted {
            n,
            post: Measure::Mean {
                n,
                sum: post,
                sum_squares: post2,
            },
            pre: Measure::Mean {
                n,
                sum: pre,
                sum_squares: pre2,
            },
            sum_of_products: prod,
        };
        (conversion, arpu, per_converter)
    };
    let (conv_a, arpu_a, ratio_a) = arm_sums("a");
    let (conv_b, arpu_b, ratio_b) = arm_sums("b");
    let test = TestKind::FixedHorizon;
    let s = &r.total;
    let conversion = &s.comparisons[0];
    assert_eq!(
        (conversion.variant.as_str(), conversion.control.as_str()),
        ("b", "a")
    );
    assert_eq!(
        conversion.cuped,
        Some(stats::compare_metric(&conv_a, &conv_b, test).unwrap())
    );
    for metric in ["arpu", "ltv"] {
        let c = s
            .metric_comparisons
            .iter()
            .find(|c| c.metric == metric)
            .unwrap();
        // Every purchase is within 30 days: ARPU's and LTV's sums are the same.
        assert_eq!(
            (c.control_sums, c.variant_sums),
            (arpu_a, arpu_b),
            "{metric}"
        );
        let e = *c.result.estimate().expect("an estimate");
        assert_eq!(
            c.result,
            stats::compare_metric(&arpu_a, &arpu_b, test).unwrap()
        );
        // The history predicts most purchases: a third of the variance goes.
        let reduction = e.variance_reduction.unwrap();
        assert!(reduction > 0.3, "{metric}: {reduction}");
        assert!(c.sentence.contains("CUPED removed"), "{}", c.sentence);
    }
    // Revenue per converting contact, adjusted by the goal's revenue and
    // conversions before the message (gbstats' RegressionAdjustedRatioStatistic).
    let c = s
        .metric_comparisons
        .iter()
        .find(|c| c.metric == "revenue_per_converter")
        .unwrap();
    assert_eq!((c.control_sums, c.variant_sums), (ratio_a, ratio_b));
    assert_eq!(
        c.result,
        stats::compare_metric(&ratio_a, &ratio_b, test).unwrap()
    );
    let reduction = c.result.estimate().unwrap().variance_reduction.unwrap();
    assert!(reduction > 0.1, "revenue per converter: {reduction}");
    assert!(c.sentence.contains("CUPED removed"), "{}", c.sentence);
    assert!(
        !s.summary.iter().any(|l| l.contains("no history recorded")),
        "{:?}",
        s.summary
    );
}

/// The migration on a database made by the schema before it: rows already
/// there get no covariates (NULL: planned before CUPED), new ones take them.
async fn cuped_migration_upgrades_todays_schema(db: &Db) {
    crate::test_db::down_to_before(db, "m20261207_000125_cuped_covariates").await;
    let columns = |db: &Db| {
        let db = db.clone();
        async move {
            let q = Statement::from_string(
                db.backend(),
                "SELECT pre_converted, pre_revenue FROM messages",
            );
            db.conn.query_all_raw(q).await.is_ok()
        }
    };
    assert!(
        !columns(db).await,
        "the columns are gone before the migration"
    );
    exec(
        db,
        &format!(
            "INSERT INTO campaigns (id, name, kind, topic, fingerprint, created_at, updated_at) VALUES (1, 'cup', 'marketing', NULL, 'cup;holdout=0;a=1', {T0}, {T0}); \
             INSERT INTO runs (id, campaign_id, scheduled_at, now_at, state, origin, fingerprint, created_at) VALUES (1, 1, {T0}, {T0}, 'done', 'manual', 'cup;holdout=0;a=1', {T0}); \
             INSERT INTO messages (id, run_id, campaign_id, contact_id, step, arm, channel, address, send_at, status, attempts, created_at, updated_at) VALUES (1, 1, 1, 1, 0, 'a', 'email', 'c1@example.com', {T0}, 'delivered', 1, {T0}, {T0})"
        ),
    )
    .await;
    Migrator::up(&db.conn, None).await.unwrap();
    assert!(columns(db).await);
    exec(
        db,
        &format!(
            "INSERT INTO messages (id, run_id, campaign_id, contact_id, step, arm, channel, address, send_at, status, attempts, pre_converted, pre_revenue, created_at, updated_at) VALUES (2, 1, 1, 2, 0, 'a', 'email', 'c2@example.com', {T0}, 'delivered', 1, 1, 12.5, {T0}, {T0})"
        ),
    )
    .await;
    let got = rows(
        db,
        "SELECT id, pre_converted, CAST(pre_revenue AS DOUBLE PRECISION) FROM messages ORDER BY id",
    )
    .await;
    let got: Vec<(i64, Option<i32>, Option<f64>)> = got
        .iter()
        .map(|r| {
            (
                r.try_get_by_index(0).unwrap(),
                r.try_get_by_index(1).unwrap(),
                r.try_get_by_index(2).unwrap(),
            )
        })
        .collect();
    assert_eq!(got, [(1, None, None), (2, Some(1), Some(12.5))]);
}

/// m20261208_000130 on a database made by the schema before it: rows already
/// there have no pre-period goal revenue (NULL), and the report then leaves
/// revenue per converting contact unadjusted and says why.
async fn goal_revenue_migration_upgrades_todays_schema(db: &Db) {
    crate::test_db::down_to_before(db, "m20261208_000130_cuped_goal_revenue").await;
    let column = |db: &Db| {
        let db = db.clone();
        async move {
            let q = Statement::from_string(db.backend(), "SELECT pre_goal_revenue FROM messages");
            db.conn.query_all_raw(q).await.is_ok()
        }
    };
    assert!(!column(db).await, "the column is gone before the migration");
    exec(
        db,
        &format!(
            "INSERT INTO campaigns (id, name, kind, topic, fingerprint, created_at, updated_at) VALUES (1, 'cup', 'marketing', NULL, 'cup;holdout=0;a=1,b=1', {T0}, {T0}); \
             INSERT INTO runs (id, campaign_id, scheduled_at, now_at, state, origin, fingerprint, created_at) VALUES (1, 1, {T0}, {T0}, 'done', 'manual', 'cup;holdout=0;a=1,b=1', {T0}); \
             INSERT INTO messages (id, run_id, campaign_id, contact_id, step, arm, channel, address, send_at, status, attempts, pre_converted, pre_revenue, created_at, updated_at) VALUES (1, 1, 1, 1, 0, 'a', 'email', 'c1@example.com', {T0}, 'delivered', 1, 1, 3.5, {T0}, {T0})"
        ),
    )
    .await;
    Migrator::up(&db.conn, None).await.unwrap();
    assert!(column(db).await);
    let got = rows(
        db,
        "SELECT pre_converted, CAST(pre_goal_revenue AS DOUBLE PRECISION) FROM messages",
    )
    .await;
    let got: (Option<i32>, Option<f64>) = (
        got[0].try_get_by_index(0).unwrap(),
        got[0].try_get_by_index(1).unwrap(),
    );
    assert_eq!(got, (Some(1), None));
    let campaign = Campaign::parse("cup.toml", CAMPAIGN).unwrap();
    let r = campaign_report(
        db,
        "cup",
        Some(&campaign),
        0.0,
        &ReportFilter::default(),
        T0 + 200 * DAY,
    )
    .await
    .expect("report")
    .expect("known campaign");
    assert!(
        r.total.summary.iter().any(|l| l
            .contains("CUPED is not applied to revenue per converting contact: 1 of 1 contact(s)")),
        "{:?}",
        r.total.summary
    );
}

on_both_databases!(
    cuped_covariates_are_planned_and_adjust_the_report,
    cuped_migration_upgrades_todays_schema,
    goal_revenue_migration_upgrades_todays_schema
);
