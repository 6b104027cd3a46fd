//! CUPED's sums for revenue per converting contact (issue 33): per (run, arm),
//! the ratio's numerator (the goal's revenue) and denominator (converted)
//! after the message, the same two before it (`pre_goal_revenue`,
//! `pre_converted`, stored on the message when it was planned), and the six
//! sums of their products that gbstats' `RegressionAdjustedRatioStatistic`
//! takes. A statement of its own, read only with `[results] cuped`: it reads
//! only the message's columns (no probe of the events), over the contacts of
//! the `[results]` statement (first messages, global holdout left out).
//!
//! Clicks per delivered has no such history in herald: a contact's clicks and
//! deliveries before the message would be other campaigns' messages, other
//! content on other channels, and most contacts had none in the window, so it
//! stays unadjusted.

use herald_domain::stats::RatioProducts;
use herald_domain::types::SuppressReason;

use super::{ReportFilter, ReportResult, Runs, count, get, push_runs};
use crate::db::Db;
use crate::sql::Sql;

/// CUPED's sums of revenue per converting contact over an arm's contacts.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RatioCupedTally {
    /// Contacts (first messages).
    pub contacts: u64,
    /// Contacts whose pre-period goal and its revenue were both recorded.
    pub recorded: u64,
    /// The goal's revenue after the message.
    pub revenue: f64,
    /// Its sum of squares.
    pub revenue_squares: f64,
    /// Converted after the message.
    pub converted: u64,
    /// The goal event's values in the window before.
    pub pre_revenue: f64,
    /// Their sum of squares (per contact).
    pub pre_revenue_squares: f64,
    /// Had the goal event in the window before.
    pub pre_converted: u64,
    /// The six sums of products.
    pub products: RatioProducts,
}

impl RatioCupedTally {
    /// Adds `o` to this tally.
    pub fn add(&mut self, o: &RatioCupedTally) {
        self.contacts += o.contacts;
        self.recorded += o.recorded;
        self.revenue += o.revenue;
        self.revenue_squares += o.revenue_squares;
        self.converted += o.converted;
        self.pre_revenue += o.pre_revenue;
        self.pre_revenue_squares += o.pre_revenue_squares;
        self.pre_converted += o.pre_converted;
        let (p, q) = (&mut self.products, &o.products);
        p.m_post_d_post += q.m_post_d_post;
        p.m_post_m_pre += q.m_post_m_pre;
        p.d_post_d_pre += q.d_post_d_pre;
        p.m_pre_d_pre += q.m_pre_d_pre;
        p.m_post_d_pre += q.m_post_d_pre;
        p.m_pre_d_post += q.m_pre_d_post;
    }
}

/// [`RatioCupedTally`] of one (run, arm).
#[derive(Debug, Clone, PartialEq)]
pub struct RatioCupedGroup {
    /// The run.
    pub run_id: i64,
    /// The arm.
    pub arm: String,
    /// The sums.
    pub tally: RatioCupedTally,
}

fn ratio_cuped_sql(campaign_id: i64, runs: Runs<'_>) -> Sql {
    let mut q = Sql::new();
    q.push(
        "SELECT t.run_id, t.arm, COUNT(*), CAST(COALESCE(SUM(t.ph), 0) AS BIGINT), \
         CAST(COALESCE(SUM(t.rv), 0) AS DOUBLE PRECISION), \
         CAST(COALESCE(SUM(t.rv * t.rv), 0) AS DOUBLE PRECISION), \
         CAST(COALESCE(SUM(t.cv), 0) AS BIGINT), \
         CAST(COALESCE(SUM(t.pg), 0) AS DOUBLE PRECISION), \
         CAST(COALESCE(SUM(t.pg * t.pg), 0) AS DOUBLE PRECISION), \
         CAST(COALESCE(SUM(t.pc), 0) AS BIGINT), \
         CAST(COALESCE(SUM(t.rv * t.cv), 0) AS DOUBLE PRECISION), \
         CAST(COALESCE(SUM(t.rv * t.pg), 0) AS DOUBLE PRECISION), \
         CAST(COALESCE(SUM(t.cv * t.pc), 0) AS DOUBLE PRECISION), \
         CAST(COALESCE(SUM(t.pg * t.pc), 0) AS DOUBLE PRECISION), \
         CAST(COALESCE(SUM(t.rv * t.pc), 0) AS DOUBLE PRECISION), \
         CAST(COALESCE(SUM(t.pg * t.cv), 0) AS DOUBLE PRECISION) FROM (\
         SELECT m.run_id, m.arm, \
         CAST(COALESCE(m.revenue, 0) AS DOUBLE PRECISION) AS rv, \
         CASE WHEN m.converted_at IS NULL THEN 0 ELSE 1 END AS cv, \
         CAST(COALESCE(m.pre_goal_revenue, 0) AS DOUBLE PRECISION) AS pg, \
         COALESCE(m.pre_converted, 0) AS pc, \
         CASE WHEN m.pre_converted IS NULL OR m.pre_goal_revenue IS NULL THEN 0 ELSE 1 END AS ph \
         FROM messages m WHERE m.campaign_id = ",
    )
    .bind(campaign_id)
    .push(" AND m.step = 0")
    // The `[results]` statement's contacts: the global holdout is outside the experiment.
    .push(" AND (m.status <> 'suppressed' OR m.reason IS NULL OR m.reason <> ")
    .bind(SuppressReason::GlobalHoldout.as_str().to_string())
    .push(")");
    push_runs(&mut q, campaign_id, runs);
    q.push(") t GROUP BY t.run_id, t.arm");
    q
}

/// The sums of the runs `scheduled` and `triggered` (the latter cut by
/// trigger instant under `filter`), as the `[results]` statement selects them.
pub(super) async fn ratio_cuped_scan(
    db: &Db,
    campaign_id: i64,
    filter: &ReportFilter,
    scheduled: &[i64],
    triggered: &[i64],
) -> ReportResult<Vec<RatioCupedGroup>> {
    let rows = super::rows_of_runs(db, filter, scheduled, triggered, |runs| {
        ratio_cuped_sql(campaign_id, runs)
    })
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for (run_id, r) in rows {
        out.push(RatioCupedGroup {
            run_id,
            arm: get(&r, 1)?,
            tally: RatioCupedTally {
                contacts: count(&r, 2)?,
                recorded: count(&r, 3)?,
                revenue: get(&r, 4)?,
                revenue_squares: get(&r, 5)?,
                converted: count(&r, 6)?,
                pre_revenue: get(&r, 7)?,
                pre_revenue_squares: get(&r, 8)?,
                pre_converted: count(&r, 9)?,
                products: RatioProducts {
                    m_post_d_post: get(&r, 10)?,
                    m_post_m_pre: get(&r, 11)?,
                    d_post_d_pre: get(&r, 12)?,
                    m_pre_d_pre: get(&r, 13)?,
                    m_post_d_pre: get(&r, 14)?,
                    m_pre_d_post: get(&r, 15)?,
                },
            },
        });
    }
    Ok(out)
}
