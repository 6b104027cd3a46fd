//! The storage half of triggered campaigns: their open-ended run, the events
//! that trigger or end them, the planned messages keyed by their triggering
//! event (inserted with the campaign's cursor in one transaction, so a crash
//! re-plans at most what was not committed, and re-planning inserts nothing),
//! and the checks made just before a send (`exit`, still in the audience).

use herald_domain::segment::Expr;
use herald_engine::store::*;
use sea_orm::{ConnectionTrait, TransactionTrait};

use super::{SqlStore, err, get, id_set};
use crate::segment_sql::{append, compile_ids};
use crate::sql::Sql;

/// The scheduled instant of a triggered campaign's single run.
const TRIGGER_RUN_AT: i64 = 0;

impl SqlStore {
    pub(super) async fn trigger_run_impl(
        &self,
        campaign_id: i64,
        fingerprint: &str,
        now: i64,
    ) -> StoreResult<RunRecord> {
        let mut run = self
            .create_run(campaign_id, TRIGGER_RUN_AT, now, "trigger", fingerprint)
            .await?;
        if run.state == "planning" {
            // Nothing to snapshot: messages arrive with their events.
            let mut q = Sql::new();
            q.push("UPDATE runs SET state = 'running' WHERE state = 'planning' AND id = ")
                .bind(run.id);
            self.exec(q).await?;
            run.state = "running".into();
        }
        Ok(run)
    }

    pub(super) async fn events_after_impl(
        &self,
        names: &[String],
        after: i64,
        limit: u32,
    ) -> StoreResult<Vec<TriggerEvent>> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let mut q = Sql::new();
        q.push("SELECT id, contact_id, name, at, received_at FROM events WHERE id > ")
            .bind(after)
            .push(" AND name IN (");
        for (i, n) in names.iter().enumerate() {
            if i > 0 {
                q.push(",");
            }
            q.bind(n.clone());
        }
        q.push(") ORDER BY id LIMIT ").bind(i64::from(limit));
        self.all(q)
            .await?
            .iter()
            .map(|r| {
                Ok(TriggerEvent {
                    id: get(r, 0)?,
                    contact_id: get(r, 1)?,
                    name: get(r, 2)?,
                    at: get(r, 3)?,
                    received_at: get(r, 4)?,
                })
            })
            .collect()
    }

    pub(super) async fn trigger_cursor_impl(&self, campaign_id: i64, now: i64) -> StoreResult<i64> {
        // A campaign seen for the first time reacts to events from now on, not to the history.
        let mut q = Sql::new();
        q.push("INSERT INTO trigger_cursors (campaign_id, last_event_id, updated_at) SELECT ")
            .bind(campaign_id)
            .push(", COALESCE(MAX(id), 0), ")
            .bind(now)
            // `WHERE true`: SQLite reads `ON CONFLICT` after a bare SELECT as a join constraint.
            .push(" FROM events WHERE true ON CONFLICT (campaign_id) DO NOTHING");
        self.exec(q).await?;
        let mut q = Sql::new();
        q.push("SELECT last_event_id FROM trigger_cursors WHERE campaign_id = ")
            .bind(campaign_id);
        let rows = self.all(q).await?;
        rows.first().map_or(Ok(0), |r| get(r, 0))
    }

    pub(super) async fn insert_triggered_impl(
        &self,
        run_id: i64,
        campaign_id: i64,
        rows: &[TriggeredMessage],
        cursor: i64,
        now: i64,
    ) -> StoreResult<u64> {
        let b = self.b();
        let txn = self.db.conn.begin().await.map_err(err)?;
        let mut inserted = 0;
        for chunk in rows.chunks(500) {
            let q = super::insert_messages_sql(
                b,
                run_id,
                campaign_id,
                chunk
                    .iter()
                    .map(|t| (&t.message, Some((t.trigger_id, t.trigger_at)), None)),
                now,
            );
            inserted += txn
                .execute_raw(q.build(b))
                .await
                .map_err(err)?
                .rows_affected();
        }
        let mut q = Sql::new();
        q.push("INSERT INTO trigger_cursors (campaign_id, last_event_id, updated_at) VALUES (")
            .bind(campaign_id)
            .push(",")
            .bind(cursor)
            .push(",")
            .bind(now)
            .push(") ON CONFLICT (campaign_id) DO UPDATE SET last_event_id = CASE WHEN trigger_cursors.last_event_id > excluded.last_event_id THEN trigger_cursors.last_event_id ELSE excluded.last_event_id END, updated_at = excluded.updated_at");
        txn.execute_raw(q.build(b)).await.map_err(err)?;
        txn.commit().await.map_err(err)?;
        // Goal events already stored (a purchase that arrived while the
        // trigger planner was behind, paused or down) are attributed to the
        // messages just written, by the rule applied to later events: a
        // conversion never depends on which was written first.
        let messages: Vec<PlannedMessage> = rows.iter().map(|t| t.message.clone()).collect();
        self.attribute_page(run_id, campaign_id, &messages).await?;
        Ok(inserted)
    }

    pub(super) async fn exited_impl(
        &self,
        event: &str,
        pairs: &[(i64, i64)],
    ) -> StoreResult<Vec<(i64, i64)>> {
        let mut out = Vec::new();
        for chunk in pairs.chunks(1000) {
            let mut q = Sql::new();
            q.push("SELECT DISTINCT x.column1, x.column2 FROM (VALUES ");
            for (i, (contact, since)) in chunk.iter().enumerate() {
                if i > 0 {
                    q.push(",");
                }
                q.push("(").bind(*contact).push(",").bind(*since).push(")");
            }
            // Both databases name a VALUES list's columns column1, column2.
            q.push(") AS x");
            q.push(" WHERE EXISTS (SELECT 1 FROM events e WHERE e.contact_id = x.column1 AND e.name = ")
                .bind(event.to_string())
                .push(" AND e.at > x.column2)");
            for r in self.all(q).await? {
                out.push((get(&r, 0)?, get(&r, 1)?));
            }
        }
        Ok(out)
    }

    pub(super) async fn exited_messages_impl(
        &self,
        event: &str,
        ids: &[i64],
    ) -> StoreResult<Vec<i64>> {
        let mut out = Vec::new();
        for chunk in ids.chunks(1000) {
            let mut q = Sql::new();
            q.push("SELECT m.id FROM messages m JOIN runs r ON r.id = m.run_id WHERE m.id IN ");
            id_set(&mut q, self.b(), chunk);
            q.push(" AND EXISTS (SELECT 1 FROM events e WHERE e.contact_id = m.contact_id AND e.name = ")
                .bind(event.to_string())
                .push(" AND e.at > COALESCE(m.trigger_at, r.now_at))");
            for r in self.all(q).await? {
                out.push(get(&r, 0)?);
            }
        }
        Ok(out)
    }

    pub(super) async fn matching_impl(
        &self,
        filter: &Expr,
        ids: &[i64],
        now: i64,
    ) -> StoreResult<Vec<i64>> {
        let ctx = self.segment_context(now);
        let mut out = Vec::new();
        for chunk in ids.chunks(1000) {
            let compiled = compile_ids(filter, &ctx, chunk).map_err(err)?;
            let mut q = Sql::new();
            q.push("SELECT c.id FROM contacts c");
            append(&mut q, compiled.joins);
            q.push(" WHERE c.forgotten_at IS NULL AND c.id IN ");
            id_set(&mut q, self.b(), chunk);
            q.push(" AND ");
            append(&mut q, compiled.cond);
            for r in self.all(q).await? {
                out.push(get(&r, 0)?);
            }
        }
        Ok(out)
    }
}
