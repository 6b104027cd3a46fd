//! Each arm's conversions over time since the send: the console's report
//! page draws them as cumulative lines. A message's time is measured from
//! when it was sent (a held-out one, never sent, from when it would have
//! been), so arms of several runs share one axis. The runs are those the
//! report selects ([`crate::report::runs`]); a triggered campaign's run is
//! cut by its messages' trigger instants, as the report cuts it.

use std::collections::BTreeMap;

use sea_orm::ConnectionTrait;

use crate::Db;
use crate::report::{ReportFilter, ReportResult, runs};
use crate::sql::Sql;

/// One arm's conversions: (bucket since the send, conversions in it), by bucket.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ArmConversions {
    /// The arm.
    pub arm: String,
    /// (bucket index, conversions whose time since the send falls in it).
    pub buckets: Vec<(i64, i64)>,
}

/// The latest bucket holding a conversion, over every arm (0 for none).
pub fn last_bucket(arms: &[ArmConversions]) -> i64 {
    arms.iter()
        .filter_map(|a| a.buckets.last().map(|b| b.0))
        .max()
        .unwrap_or(0)
}

impl ArmConversions {
    /// The same counts in buckets `factor` times wider (minutes to hours:
    /// 60), so one scan serves every scale.
    pub fn coarsen(&self, factor: i64) -> ArmConversions {
        let mut buckets: Vec<(i64, i64)> = Vec::new();
        for &(b, n) in &self.buckets {
            let wide = b / factor.max(1);
            match buckets.last_mut() {
                Some(last) if last.0 == wide => last.1 += n,
                _ => buckets.push((wide, n)),
            }
        }
        ArmConversions {
            arm: self.arm.clone(),
            buckets,
        }
    }

    /// Running totals: (bucket, conversions up to the end of it).
    pub fn cumulative(&self) -> Vec<(i64, i64)> {
        let mut sum = 0;
        self.buckets
            .iter()
            .map(|&(b, n)| {
                sum += n;
                (b, sum)
            })
            .collect()
    }
}

/// The conversions of campaign `name`'s runs selected by `filter`, per arm,
/// in buckets of `bucket_ms` since each message's send. Arms without a
/// conversion are absent; `None` when the campaign has never run.
pub async fn by_time_since_send(
    db: &Db,
    name: &str,
    filter: &ReportFilter,
    bucket_ms: i64,
) -> ReportResult<Option<Vec<ArmConversions>>> {
    let b = db.backend();
    let mut q = Sql::new();
    q.push("SELECT id FROM campaigns WHERE name = ")
        .bind(name.to_string());
    let rows = db.conn.query_all_raw(q.build(b)).await?;
    let Some(id) = rows
        .first()
        .map(|r| r.try_get_by_index::<i64>(0))
        .transpose()?
    else {
        return Ok(None);
    };
    let selected = runs(db, id, filter).await?;
    let mut out: BTreeMap<String, BTreeMap<i64, i64>> = BTreeMap::new();
    // Bound lists stay short: a page of runs at a time.
    for chunk in selected.chunks(500) {
        let mut q = Sql::new();
        q.push("SELECT m.arm, CASE WHEN m.converted_at < COALESCE(m.sent_at, m.send_at) THEN 0 ELSE (m.converted_at - COALESCE(m.sent_at, m.send_at)) / ")
            .bind(bucket_ms.max(1))
            .push(" END AS bucket, COUNT(*) FROM messages m WHERE m.converted_at IS NOT NULL")
            // As the report counts: a contact once (their first message holds
            // the outcome), the global holdout outside the campaign's test.
            .push(" AND m.step = 0 AND (m.status <> 'suppressed' OR m.reason IS NULL OR m.reason <> ")
            .bind(herald_domain::types::SuppressReason::GlobalHoldout.as_str().to_string())
            .push(") AND m.run_id IN (");
        for (i, r) in chunk.iter().enumerate() {
            if i > 0 {
                q.push(", ");
            }
            q.bind(r.id);
        }
        q.push(")");
        // A triggered run is cut by trigger instant, as the report cuts it.
        if chunk.iter().any(|r| r.origin == "trigger") {
            if let Some(since) = filter.since {
                q.push(" AND (m.trigger_at IS NULL OR m.trigger_at >= ")
                    .bind(since)
                    .push(")");
            }
            if let Some(until) = filter.until {
                q.push(" AND (m.trigger_at IS NULL OR m.trigger_at < ")
                    .bind(until)
                    .push(")");
            }
        }
        q.push(" GROUP BY m.arm, bucket");
        for r in db.conn.query_all_raw(q.build(b)).await? {
            let arm: String = r.try_get_by_index(0)?;
            let bucket: i64 = r.try_get_by_index(1)?;
            let n: i64 = r.try_get_by_index(2)?;
            *out.entry(arm).or_default().entry(bucket).or_insert(0) += n;
        }
    }
    Ok(Some(
        out.into_iter()
            .map(|(arm, buckets)| ArmConversions {
                arm,
                buckets: buckets.into_iter().collect(),
            })
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_db::on_both_databases;

    const NOW: i64 = 1_767_225_600_000;
    const HOUR: i64 = 3_600_000;

    on_both_databases!(conversions_are_timed_from_each_send_in_the_selected_runs);

    /// Two runs; in run 1 arm `a` converts 30 min and 5 h after its sends,
    /// `holdout` (never sent) 2 h after it would have gone, one of `a` not
    /// at all; run 2's conversion counts only without the run filter.
    async fn conversions_are_timed_from_each_send_in_the_selected_runs(db: &Db) {
        let m = |id: i64, run: i64, arm: &str, sent: Option<i64>, conv: Option<i64>| {
            let sent = sent.map_or("NULL".to_string(), |t| t.to_string());
            let conv = conv.map_or("NULL".to_string(), |t| t.to_string());
            format!(
                "({id}, {run}, 1, {id}, 0, '{arm}', NULL, NULL, {NOW}, 'delivered', NULL, 0, {sent}, {conv}, 0, 0, 0, {NOW}, {NOW})"
            )
        };
        let rows = [
            m(1, 1, "a", Some(NOW + HOUR), Some(NOW + HOUR + HOUR / 2)),
            m(2, 1, "a", Some(NOW), Some(NOW + 5 * HOUR)),
            m(3, 1, "a", Some(NOW), None),
            m(4, 1, "holdout", None, Some(NOW + 2 * HOUR)),
            m(5, 2, "a", Some(NOW), Some(NOW + 10 * HOUR)),
            // The global holdout keeps its assigned arm and may convert, and
            // a later step carries no outcome of its own: neither is counted.
            format!(
                "(6, 1, 1, 6, 0, 'a', NULL, NULL, {NOW}, 'suppressed', 'global_holdout', 0, NULL, {}, 0, 0, 0, {NOW}, {NOW})",
                NOW + 3 * HOUR
            ),
            format!(
                "(7, 1, 1, 2, 1, 'a', NULL, NULL, {NOW}, 'delivered', NULL, 0, {NOW}, {}, 0, 0, 0, {NOW}, {NOW})",
                NOW + 4 * HOUR
            ),
        ];
        for sql in [
            format!(
                "INSERT INTO contacts (id, external_id, attrs, created_at, updated_at) SELECT i, 'c' || i, '{{}}', {NOW}, {NOW} FROM (SELECT 1 AS i UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4 UNION ALL SELECT 5 UNION ALL SELECT 6) t"
            ),
            format!(
                "INSERT INTO campaigns (id, name, kind, topic, fingerprint, created_at, updated_at) VALUES (1, 'c', 'marketing', NULL, 'f', {NOW}, {NOW})"
            ),
            format!(
                "INSERT INTO runs (id, campaign_id, scheduled_at, now_at, state, origin, fingerprint, created_at) VALUES \
                 (1, 1, {NOW}, {NOW}, 'done', 'manual', 'f', {NOW}), (2, 1, {NOW} + 1, {NOW}, 'done', 'manual', 'f', {NOW})"
            ),
            format!(
                "INSERT INTO messages (id, run_id, campaign_id, contact_id, step, arm, channel, address, send_at, status, reason, attempts, sent_at, converted_at, open_count, click_count, revenue, created_at, updated_at) VALUES {}",
                rows.join(", ")
            ),
        ] {
            db.conn.execute_unprepared(&sql).await.expect(&sql);
        }
        let one = ReportFilter {
            run: Some(1),
            ..ReportFilter::default()
        };
        let got = by_time_since_send(db, "c", &one, HOUR)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            got,
            vec![
                ArmConversions {
                    arm: "a".into(),
                    buckets: vec![(0, 1), (5, 1)],
                },
                ArmConversions {
                    arm: "holdout".into(),
                    buckets: vec![(2, 1)],
                },
            ]
        );
        let all = by_time_since_send(db, "c", &ReportFilter::default(), HOUR)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(all[0].buckets, vec![(0, 1), (5, 1), (10, 1)]);
        assert_eq!(
            by_time_since_send(db, "nobody", &one, HOUR).await.unwrap(),
            None
        );
    }

    #[test]
    fn minutes_coarsen_into_hours_as_an_hourly_count_would_give() {
        let by_minute = ArmConversions {
            arm: "a".into(),
            buckets: vec![(0, 2), (59, 1), (60, 4), (185, 1)],
        };
        assert_eq!(by_minute.coarsen(60).buckets, vec![(0, 3), (1, 4), (3, 1)]);
        assert_eq!(last_bucket(&[by_minute.coarsen(60)]), 3);
        assert_eq!(last_bucket(&[]), 0);
    }

    #[test]
    fn cumulative_adds_up_in_bucket_order() {
        let a = ArmConversions {
            arm: "a".into(),
            buckets: vec![(0, 2), (3, 1), (4, 5)],
        };
        assert_eq!(a.cumulative(), vec![(0, 2), (3, 3), (4, 8)]);
    }
}
