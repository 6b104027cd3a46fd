//! The `[results]` statement as it was before issue 33's one pass: four
//! correlated probes of the events index a message. Kept, for the tests
//! only, as the oracle the one-pass statement must equal (`results_tests`).

use herald_domain::types::SuppressReason;

use super::{ARPU_DAYS, DAY_MS, ResultsSpec, Runs, push_runs};
use crate::sql::Sql;

/// The seeds' metrics of the messages `runs` selects, per (run, arm): one
/// statement, each message probing the events index (`name, contact_id, at,
/// value`) once per metric. Kept apart from the grouped scan so that a
/// campaign without `[results]` pays nothing, and SQLite's covering indexes
/// of that scan stay covering. Each contact's values are computed once in a
/// derived table, so the sums of squares (the spread of ARPU and LTV) cost a
/// multiplication, not another probe.
pub(super) fn probing_results_sql(campaign_id: i64, runs: Runs<'_>, spec: &ResultsSpec) -> Sql {
    let mut q = Sql::new();
    q.push("SELECT m.run_id, m.arm, m.send_at");
    let retained = |q: &mut Sql, from_day: i64, to_day: i64, name: &str| {
        match &spec.retention_event {
            Some(event) => {
                q.push(", CASE WHEN EXISTS (SELECT 1 FROM events e WHERE e.name = ")
                    .bind(event.clone())
                    .push(" AND e.contact_id = m.contact_id AND e.at >= m.send_at + ")
                    .bind(from_day * DAY_MS)
                    .push(" AND e.at < m.send_at + ")
                    .bind(to_day * DAY_MS)
                    .push(") THEN 1 ELSE 0 END AS ");
            }
            None => {
                q.push(", 0 AS ");
            }
        }
        q.push(name);
    };
    retained(&mut q, 1, 8, "d1");
    retained(&mut q, 8, 31, "d8");
    let revenue = |q: &mut Sql, span_ms: i64, name: &str| {
        match &spec.revenue_event {
            Some(event) => {
                q.push(", CAST(COALESCE((SELECT SUM(e.value) FROM events e WHERE e.name = ")
                    .bind(event.clone())
                    .push(
                        " AND e.contact_id = m.contact_id AND e.at > m.send_at AND e.at <= m.send_at + ",
                    )
                    .bind(span_ms)
                    .push("), 0) AS DOUBLE PRECISION) AS ");
            }
            None => {
                q.push(", CAST(0 AS DOUBLE PRECISION) AS ");
            }
        }
        q.push(name);
    };
    revenue(&mut q, ARPU_DAYS * DAY_MS, "r30");
    revenue(&mut q, spec.ltv_horizon_ms, "rl");
    // CUPED's covariates were stored on the message when it was planned: read
    // with it, no probe of the history. A message without them counts as a
    // contact without history.
    q.push(if spec.cuped {
        ", CASE WHEN m.converted_at IS NULL THEN 0 ELSE 1 END AS cv, \
         COALESCE(m.pre_converted, 0) AS pc, \
         CAST(COALESCE(m.pre_revenue, 0) AS DOUBLE PRECISION) AS pr, \
         CASE WHEN m.pre_converted IS NULL AND m.pre_revenue IS NULL THEN 0 ELSE 1 END AS ph"
    } else {
        ", 0 AS cv, 0 AS pc, CAST(0 AS DOUBLE PRECISION) AS pr, 0 AS ph"
    });
    q.push(" FROM messages m WHERE m.campaign_id = ")
        .bind(campaign_id)
        .push(" AND m.step = 0")
        // The global holdout is outside the campaign's experiment, as in the scan.
        .push(" AND (m.status <> 'suppressed' OR m.reason IS NULL OR m.reason <> ")
        .bind(SuppressReason::GlobalHoldout.as_str().to_string())
        .push(")");
    push_runs(&mut q, campaign_id, runs);
    // The outer query binds nothing, so the inner one's placeholders keep their numbers.
    q.text.insert_str(
        0,
        "SELECT t.run_id, t.arm, COUNT(*), CAST(COALESCE(SUM(t.d1), 0) AS BIGINT), \
         CAST(COALESCE(SUM(t.d8), 0) AS BIGINT), \
         CAST(COALESCE(SUM(t.r30), 0) AS DOUBLE PRECISION), \
         CAST(COALESCE(SUM(t.rl), 0) AS DOUBLE PRECISION), MAX(t.send_at), \
         CAST(COALESCE(SUM(t.r30 * t.r30), 0) AS DOUBLE PRECISION), \
         CAST(COALESCE(SUM(t.rl * t.rl), 0) AS DOUBLE PRECISION), \
         CAST(COALESCE(SUM(t.ph), 0) AS BIGINT), CAST(COALESCE(SUM(t.cv), 0) AS BIGINT), \
         CAST(COALESCE(SUM(t.pc), 0) AS BIGINT), CAST(COALESCE(SUM(t.pc * t.cv), 0) AS BIGINT), \
         CAST(COALESCE(SUM(t.pr), 0) AS DOUBLE PRECISION), \
         CAST(COALESCE(SUM(t.pr * t.pr), 0) AS DOUBLE PRECISION), \
         CAST(COALESCE(SUM(t.pr * t.r30), 0) AS DOUBLE PRECISION), \
         CAST(COALESCE(SUM(t.pr * t.rl), 0) AS DOUBLE PRECISION) FROM (",
    );
    q.push(") t GROUP BY t.run_id, t.arm");
    q
}
