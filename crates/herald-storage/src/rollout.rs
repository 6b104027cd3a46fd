//! The engine's `RolloutStore` on SQLite and PostgreSQL: which runs wait for
//! a rollout decision, their test arms' outcomes, the decision recorded once
//! per run (`rollouts` is keyed by run), and the release of the waiting
//! messages (arm `rollout:*`) to the winner, page by page, each message
//! moved only while it still waits.

use async_trait::async_trait;
use herald_domain::stats::ArmCounts;
use herald_engine::rollout::{
    ArmOutcomes, Decision, Release, RolloutStore, WAITING_ARM, WaitingMessage, WaitingRun,
};
use herald_engine::store::{StoreError, StoreResult};
use sea_orm::{ConnectionTrait, QueryResult};

use crate::attribute::{self, Goals};
use crate::report::{RolloutRecord, record_rollout};
use crate::sql::Sql;
use crate::store::SqlStore;

/// Rows released per statement.
const RELEASE_CHUNK: usize = 500;

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

fn get<T: sea_orm::TryGetable>(row: &QueryResult, i: usize) -> StoreResult<T> {
    row.try_get_by_index(i).map_err(err)
}

fn count(row: &QueryResult, i: usize) -> StoreResult<u64> {
    let n: i64 = get(row, i)?;
    Ok(u64::try_from(n).unwrap_or(0))
}

impl SqlStore {
    async fn rows(&self, q: Sql) -> StoreResult<Vec<QueryResult>> {
        self.db()
            .conn
            .query_all_raw(q.build(self.db().backend()))
            .await
            .map_err(err)
    }
}

impl SqlStore {
    /// The campaign of `run_id` and its goals, if it has any.
    async fn release_goals(&self, run_id: i64) -> StoreResult<Option<(i64, Goals)>> {
        let mut q = Sql::new();
        q.push("SELECT campaign_id FROM runs WHERE id = ")
            .bind(run_id);
        let Some(r) = self.rows(q).await?.into_iter().next() else {
            return Ok(None);
        };
        let campaign_id: i64 = get(&r, 0)?;
        Ok(attribute::goals_of(&self.db().conn, campaign_id)
            .await
            .map_err(err)?
            .map(|g| (campaign_id, g)))
    }
}

impl SqlStore {
    /// The test arms' outcomes of `run_id` read at `now`: a flight's untouched
    /// rows are not delivered yet (they are in the air, or `unknown` once its
    /// lease lapsed; [`crate::flights`]), so a decision never counts a message
    /// the provider may not have.
    pub async fn arm_outcomes_at(&self, run_id: i64, now: i64) -> StoreResult<Vec<ArmOutcomes>> {
        let b = self.db().backend();
        let txn = crate::flights::snapshot(&self.db().conn)
            .await
            .map_err(err)?;
        let mut q = Sql::new();
        // The global holdout's messages carry an arm but are in no test, and a
        // series counts on its first message, as in the report.
        q.push("SELECT arm, COUNT(*), COUNT(CASE WHEN status = 'delivered' THEN 1 END), COUNT(opened_at), COUNT(clicked_at), COUNT(converted_at), MAX(send_at), COUNT(pre_converted), CAST(COALESCE(SUM(pre_converted), 0) AS BIGINT), COUNT(CASE WHEN pre_converted = 1 AND converted_at IS NOT NULL THEN 1 END) FROM messages WHERE run_id = ")
            .bind(run_id)
            .push(" AND step = 0 AND NOT (status = 'suppressed' AND reason IS NOT NULL AND reason = 'global_holdout') GROUP BY arm ORDER BY arm");
        let mut arms = txn
            .query_all_raw(q.build(b))
            .await
            .map_err(err)?
            .iter()
            .map(|r| {
                Ok(ArmOutcomes {
                    arm: get(r, 0)?,
                    assigned: count(r, 1)?,
                    delivered: count(r, 2)?,
                    opened: count(r, 3)?,
                    clicked: count(r, 4)?,
                    converted: count(r, 5)?,
                    last_send_at: get(r, 6)?,
                    // CUPED's covariate, stored at planning (NULL without `cuped`).
                    pre_recorded: count(r, 7)?,
                    pre_converted: count(r, 8)?,
                    both_converted: count(r, 9)?,
                })
            })
            .collect::<StoreResult<Vec<_>>>()?;
        for f in crate::flights::in_the_air(&txn, now, Some(run_id))
            .await
            .map_err(err)?
        {
            if f.written != "delivered" {
                continue;
            }
            if let Some(a) = arms.iter_mut().find(|a| a.arm == f.arm) {
                a.delivered = a.delivered.saturating_sub(u64::try_from(f.n).unwrap_or(0));
            }
        }
        txn.commit().await.map_err(err)?;
        Ok(arms)
    }
}

#[async_trait]
impl RolloutStore for SqlStore {
    async fn waiting_runs(&self, campaigns: &[String]) -> StoreResult<Vec<WaitingRun>> {
        if campaigns.is_empty() {
            return Ok(Vec::new());
        }
        let mut q = Sql::new();
        // A drained run may still hold waiting messages that were all suppressed:
        // it decides too, so they are renamed and the record is complete.
        q.push("SELECT r.id, c.name, r.now_at FROM runs r JOIN campaigns c ON c.id = r.campaign_id WHERE r.state IN ('running', 'done') AND c.name IN (");
        for (i, name) in campaigns.iter().enumerate() {
            if i > 0 {
                q.push(",");
            }
            q.bind(name.clone());
        }
        q.push(") AND EXISTS (SELECT 1 FROM messages m WHERE m.run_id = r.id AND m.arm = ")
            .bind(WAITING_ARM)
            .push(") ORDER BY r.id");
        self.rows(q)
            .await?
            .iter()
            .map(|r| {
                Ok(WaitingRun {
                    run_id: get(r, 0)?,
                    campaign: get(r, 1)?,
                    started_at: get(r, 2)?,
                })
            })
            .collect()
    }

    async fn arm_outcomes(&self, run_id: i64, now: i64) -> StoreResult<Vec<ArmOutcomes>> {
        self.arm_outcomes_at(run_id, now).await
    }

    async fn record_decision(&self, d: &Decision) -> StoreResult<(String, bool)> {
        let variants: Vec<(&str, ArmCounts)> =
            d.variants.iter().map(|(n, c)| (n.as_str(), *c)).collect();
        let record = RolloutRecord::from_decision(
            d.run_id,
            d.decided_at,
            d.metric,
            &variants,
            &d.rollout,
            d.window_cut_short,
        );
        let recorded = record_rollout(self.db(), &record).await.map_err(err)?;
        // Another daemon may have decided first: its choice is the one released.
        let chosen = self
            .recorded_choice(d.run_id)
            .await?
            .ok_or_else(|| err(format!("run {}: no rollout recorded", d.run_id)))?;
        Ok((chosen, recorded))
    }

    async fn recorded_choice(&self, run_id: i64) -> StoreResult<Option<String>> {
        let mut q = Sql::new();
        q.push("SELECT chosen FROM rollouts WHERE run_id = ")
            .bind(run_id);
        let rows = self.rows(q).await?;
        rows.first().map(|row| get(row, 0)).transpose()
    }

    async fn waiting_page(
        &self,
        run_id: i64,
        after: i64,
        limit: u32,
    ) -> StoreResult<Vec<WaitingMessage>> {
        let mut q = Sql::new();
        q.push("SELECT id, contact_id, status FROM messages WHERE run_id = ")
            .bind(run_id)
            .push(" AND arm = ")
            .bind(WAITING_ARM)
            .push(" AND id > ")
            .bind(after)
            .push(" ORDER BY id LIMIT ")
            .bind(i64::from(limit));
        self.rows(q)
            .await?
            .iter()
            .map(|r| {
                let status: String = get(r, 2)?;
                Ok(WaitingMessage {
                    id: get(r, 0)?,
                    contact_id: get(r, 1)?,
                    planned: status == "planned",
                })
            })
            .collect()
    }

    async fn release(
        &self,
        run_id: i64,
        arm: &str,
        rows: &[Release],
        now: i64,
    ) -> StoreResult<u64> {
        let b = self.db().backend();
        let mut moved = 0;
        // A release moves `send_at`: the outcome columns are recomputed from
        // the new one, so a purchase made before the released messages were
        // sent is not credited to them (SPEC section 5).
        let goals = self.release_goals(run_id).await?;
        for chunk in rows.chunks(RELEASE_CHUNK) {
            let mut q = Sql::new();
            // Only a still-waiting message moves, so a second release (another
            // daemon, a retry after a crash) changes nothing; only a planned one
            // gets the winner's send time.
            q.push("UPDATE messages SET arm = ")
                .bind(arm.to_string())
                .push(", send_at = CASE WHEN messages.status = 'planned' THEN x.column2 ELSE messages.send_at END, reason = CASE WHEN messages.status = 'planned' THEN x.column3 ELSE messages.reason END, updated_at = ")
                .bind(now)
                .push(" FROM (VALUES ");
            for (i, r) in chunk.iter().enumerate() {
                if i > 0 {
                    q.push(",");
                }
                q.push("(").bind_as(b, r.id, "int8").push(",");
                q.bind_as(b, r.send_at, "int8").push(",");
                q.bind_as(b, r.reason.clone(), "text").push(")");
            }
            q.push(") AS x WHERE messages.id = x.column1 AND messages.run_id = ")
                .bind(run_id)
                .push(" AND messages.arm = ")
                .bind(WAITING_ARM);
            moved += self
                .db()
                .conn
                .execute_raw(q.build(b))
                .await
                .map_err(err)?
                .rows_affected();
            if let Some((campaign_id, goals)) = &goals {
                let ids: Vec<i64> = chunk.iter().map(|r| r.id).collect();
                attribute::recompute(
                    &self.db().conn,
                    *campaign_id,
                    goals,
                    attribute::Messages::Ids(&ids),
                )
                .await
                .map_err(err)?;
            }
        }
        Ok(moved)
    }
}

#[cfg(test)]
mod db_tests;
