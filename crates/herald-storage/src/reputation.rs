//! The reputation guard's IO: counts each running marketing run's
//! deliveries, bounces and complaints, and pauses the runs the rule
//! (`herald_engine::reputation`) condemns, as `herald runs pause` would, with
//! the reason in `runs.pause_reason` for `herald status`. A run the guard
//! paused keeps its reason after `herald runs resume`: the sender chose to
//! go on, and the guard does not pause it again.

use herald_engine::reputation::ReputationRule;
use sea_orm::{ConnectionTrait, QueryResult};

use crate::db::Db;
use crate::routes::{RoutesError, db_err, get};
use crate::sql::Sql;

async fn all(db: &Db, q: Sql) -> Result<Vec<QueryResult>, RoutesError> {
    db.conn
        .query_all_raw(q.build(db.backend()))
        .await
        .map_err(db_err)
}

/// Pauses every running (or planning) marketing run the rule condemns and
/// not paused by the guard before; returns (run, reason) of those paused now.
pub async fn guard(db: &Db, rule: &ReputationRule) -> Result<Vec<(i64, String)>, RoutesError> {
    let mut q = Sql::new();
    // A provider refusing a message for good when it is sent (an SMTP 550 at
    // RCPT: no such user) is a hard bounce too, only an earlier one.
    q.push("SELECT r.id, \
            SUM(CASE WHEN m.status IN ('sent', 'delivered', 'bounced') OR m.bounced_at IS NOT NULL OR (m.status = 'failed' AND EXISTS (SELECT 1 FROM attempts a WHERE a.message_id = m.id AND a.result = 'permanent')) THEN 1 ELSE 0 END), \
            SUM(CASE WHEN m.status = 'bounced' OR m.bounced_at IS NOT NULL OR (m.status = 'failed' AND EXISTS (SELECT 1 FROM attempts a WHERE a.message_id = m.id AND a.result = 'permanent')) THEN 1 ELSE 0 END), \
            SUM(CASE WHEN m.complained_at IS NOT NULL THEN 1 ELSE 0 END) \
            FROM runs r JOIN campaigns c ON c.id = r.campaign_id JOIN messages m ON m.run_id = r.id \
            WHERE r.state IN ('planning', 'running') AND c.kind = 'marketing' AND r.pause_reason IS NULL \
            GROUP BY r.id");
    let mut paused = Vec::new();
    for row in all(db, q).await? {
        let id: i64 = get(&row, 0)?;
        let n = |i| -> Result<u64, RoutesError> {
            Ok(get::<Option<i64>>(&row, i)?.unwrap_or(0).max(0) as u64)
        };
        let Some(reason) = rule.verdict(n(1)?, n(2)?, n(3)?) else {
            continue;
        };
        let mut q = Sql::new();
        q.push("UPDATE runs SET state = 'paused', resume_to = state, pause_reason = ")
            .bind(reason.clone())
            .push(" WHERE state IN ('planning', 'running') AND id = ")
            .bind(id);
        let done = db
            .conn
            .execute_raw(q.build(db.backend()))
            .await
            .map_err(db_err)?
            .rows_affected();
        if done > 0 {
            paused.push((id, reason));
        }
    }
    Ok(paused)
}

/// (run, reason) of the paused runs the guard paused, for `herald status`.
pub async fn paused_by_guard(db: &Db) -> Result<Vec<(i64, String)>, RoutesError> {
    let mut q = Sql::new();
    q.push("SELECT id, pause_reason FROM runs WHERE state = 'paused' AND pause_reason IS NOT NULL ORDER BY id");
    all(db, q)
        .await?
        .iter()
        .map(|r| Ok((get(r, 0)?, get(r, 1)?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_db::on_both_databases;

    /// A marketing run with `sent` deliveries of which `bounced` bounced, and
    /// a transactional one alike; returns (marketing run, transactional run).
    async fn runs_with_bounces(db: &Db, sent: i64, bounced: i64) -> (i64, i64) {
        let now = 1_000_000;
        let mut ids = Vec::new();
        for (i, kind) in ["marketing", "transactional"].into_iter().enumerate() {
            let c = i as i64 + 1;
            let stmt = |sql: String| sea_orm::Statement::from_string(db.backend(), sql);
            db.conn
                .execute_raw(stmt(format!(
                    "INSERT INTO campaigns (id, name, kind, fingerprint, created_at, updated_at) VALUES ({c}, 'c{c}', '{kind}', 'f', {now}, {now})"
                )))
                .await
                .unwrap();
            db.conn
                .execute_raw(stmt(format!(
                    "INSERT INTO runs (id, campaign_id, scheduled_at, now_at, origin, fingerprint, state, created_at) VALUES ({c}, {c}, {now}, {now}, 'manual', 'f', 'running', {now})"
                )))
                .await
                .unwrap();
            for k in 0..sent {
                let id = c * 10_000 + k;
                // Every other bounce is a refusal at send time (SMTP 550 at RCPT).
                let (status, bounced_at) = if k < bounced && k % 2 == 1 {
                    ("failed", "NULL".to_string())
                } else if k < bounced {
                    ("bounced", now.to_string())
                } else {
                    ("delivered", "NULL".to_string())
                };
                db.conn
                    .execute_raw(stmt(format!(
                        "INSERT INTO contacts (id, external_id, email, attrs, consent_email, created_at, updated_at) VALUES ({id}, 'x{id}', 'x{id}@example.com', '{{}}', TRUE, {now}, {now})"
                    )))
                    .await
                    .unwrap();
                db.conn
                    .execute_raw(stmt(format!(
                        "INSERT INTO messages (run_id, campaign_id, contact_id, step, arm, channel, address, send_at, status, attempts, bounced_at, created_at, updated_at) VALUES ({c}, {c}, {id}, 0, 'a', 'email', 'x{id}@example.com', {now}, '{status}', 1, {bounced_at}, {now}, {now})"
                    )))
                    .await
                    .unwrap();
                if status == "failed" {
                    db.conn
                        .execute_raw(stmt(format!(
                            "INSERT INTO attempts (message_id, at, result, provider_code, detail, duration_ms) SELECT id, {now}, 'permanent', '550', '5.1.1 no such user', 1 FROM messages WHERE contact_id = {id}"
                        )))
                        .await
                        .unwrap();
                }
            }
            ids.push(c);
        }
        (ids[0], ids[1])
    }

    async fn a_marketing_run_that_bounces_pauses_itself_once(db: &Db) {
        // 10% bounces (one of the three refused at send time); the threshold
        // lowered to 20 deliveries (CI-sized).
        let (marketing, transactional) = runs_with_bounces(db, 30, 3).await;
        let strict = ReputationRule {
            min_deliveries: 20,
            max_bounce_rate: 0.05,
            max_complaint_rate: 0.003,
        };
        let lenient = ReputationRule {
            min_deliveries: 31,
            ..strict
        };
        assert!(
            guard(db, &lenient).await.unwrap().is_empty(),
            "too few deliveries"
        );
        let paused = guard(db, &strict).await.unwrap();
        assert_eq!(
            paused,
            vec![(
                marketing,
                "reputation guard: bounce rate 10.0% over 5.0% after 30 deliveries".to_string()
            )],
            "the transactional run {transactional} is never paused"
        );
        assert_eq!(
            crate::runs::state_of(db, marketing).await.unwrap(),
            "paused"
        );
        assert_eq!(paused_by_guard(db).await.unwrap(), paused);
        // Resumed by the sender: the guard does not pause it again.
        crate::runs::resume(db, marketing).await.unwrap();
        assert!(guard(db, &strict).await.unwrap().is_empty());
        assert_eq!(
            crate::runs::state_of(db, marketing).await.unwrap(),
            "running"
        );
    }

    on_both_databases!(a_marketing_run_that_bounces_pauses_itself_once);
}
