//! Exit events cancel at once. A campaign's `exit` event (`exit = { event =
//! "order_placed" }`: a series that stops once the contact acts) makes that
//! contact's still-planned messages of the campaign `cancelled` within one
//! sweep of the event's arrival, instead of showing as pending in `herald
//! status` and the report until their send time. The dispatch gate
//! (`herald_engine::trigger::gate`) still checks every claimed message, so an
//! event the sweep misses (committed late, below an id already read) is
//! caught at send time as before.

use sea_orm::{ConnectionTrait, QueryResult};

use crate::db::Db;
use crate::routes::{RoutesError, db_err};
use crate::sql::Sql;

/// A campaign whose `exit` event ends its planned messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitRule {
    /// The campaign's name.
    pub campaign: String,
    /// Its `exit` event.
    pub event: String,
}

/// Cancels, for each rule, the planned messages of the campaign's unfinished
/// runs whose contact did the exit event after the message's trigger (or its
/// run's start), looking only at contacts with an exit event of id above
/// `after`. Returns (messages cancelled, the newest event id there was).
///
/// Pass the newest id of the sweep *before* the last one as `after`: events
/// are re-read for one more sweep, so one committed a little late below a
/// newer id is not skipped (PostgreSQL hands ids out before commit).
pub async fn sweep(
    db: &Db,
    rules: &[ExitRule],
    after: i64,
    now: i64,
) -> Result<(u64, i64), RoutesError> {
    let b = db.backend();
    let mut q = Sql::new();
    q.push("SELECT MAX(id) FROM events");
    let rows: Vec<QueryResult> = db.conn.query_all_raw(q.build(b)).await.map_err(db_err)?;
    let newest: i64 = rows
        .first()
        .map(|r| r.try_get_by_index::<Option<i64>>(0))
        .transpose()
        .map_err(db_err)?
        .flatten()
        .unwrap_or(0);
    if newest <= after {
        return Ok((0, newest));
    }
    let mut cancelled = 0;
    for rule in rules {
        let mut q = Sql::new();
        q.push("UPDATE messages SET status = 'cancelled', reason = ")
            .bind(format!("exit ({})", rule.event))
            .push(", lease_owner = NULL, lease_until = NULL, updated_at = ")
            .bind(now)
            .push(
                " WHERE status = 'planned' AND run_id IN (SELECT r.id FROM runs r JOIN campaigns c ON c.id = r.campaign_id \
                 WHERE r.state IN ('planning', 'running', 'paused') AND c.name = ",
            )
            .bind(rule.campaign.clone())
            .push(") AND contact_id IN (SELECT e.contact_id FROM events e WHERE e.name = ")
            .bind(rule.event.clone())
            .push(" AND e.id > ")
            .bind(after)
            .push(" AND e.id <= ")
            .bind(newest)
            // The gate's own rule (`exited_messages`): an exit after the
            // message's trigger, or after its run's start.
            .push(") AND EXISTS (SELECT 1 FROM events e JOIN runs r ON r.id = messages.run_id WHERE e.contact_id = messages.contact_id AND e.name = ")
            .bind(rule.event.clone())
            .push(" AND e.at > COALESCE(messages.trigger_at, r.now_at))");
        cancelled += db
            .conn
            .execute_raw(q.build(b))
            .await
            .map_err(db_err)?
            .rows_affected();
    }
    Ok((cancelled, newest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_db::on_both_databases;

    async fn exec(db: &Db, sql: String) {
        db.conn
            .execute_raw(sea_orm::Statement::from_string(db.backend(), sql))
            .await
            .unwrap();
    }

    async fn status_of(
        db: &Db,
        campaign: i64,
        contact: i64,
        step: i64,
    ) -> (String, Option<String>) {
        let row = db
            .conn
            .query_one_raw(sea_orm::Statement::from_string(
                db.backend(),
                format!("SELECT status, reason FROM messages WHERE campaign_id = {campaign} AND contact_id = {contact} AND step = {step}"),
            ))
            .await
            .unwrap()
            .expect("the message");
        (
            row.try_get_by_index(0).unwrap(),
            row.try_get_by_index(1).unwrap(),
        )
    }

    async fn an_exit_event_cancels_the_campaigns_planned_messages_at_once(db: &Db) {
        let now = 1_000_000;
        let later = 9_000_000_000_i64;
        // Two campaigns with a running run each, started at `now`; contacts
        // 1-3 each have step 0 delivered and step 1 planned far ahead in both.
        for c in [1, 2] {
            exec(db, format!("INSERT INTO campaigns (id, name, kind, fingerprint, created_at, updated_at) VALUES ({c}, 'c{c}', 'marketing', 'f', {now}, {now})")).await;
            exec(db, format!("INSERT INTO runs (id, campaign_id, scheduled_at, now_at, origin, fingerprint, state, created_at) VALUES ({c}, {c}, {now}, {now}, 'manual', 'f', 'running', {now})")).await;
        }
        for id in 1..=3 {
            exec(db, format!("INSERT INTO contacts (id, external_id, email, attrs, consent_email, created_at, updated_at) VALUES ({id}, 'x{id}', 'x{id}@example.com', '{{}}', TRUE, {now}, {now})")).await;
            for c in [1, 2] {
                for (step, status, at) in [(0, "delivered", now), (1, "planned", later)] {
                    exec(db, format!("INSERT INTO messages (run_id, campaign_id, contact_id, step, arm, channel, address, send_at, status, attempts, created_at, updated_at) VALUES ({c}, {c}, {id}, {step}, 'a', 'email', 'x{id}@example.com', {at}, '{status}', 0, {now}, {now})")).await;
                }
            }
        }
        let event = |contact: i64, name: &str, at: i64| {
            format!(
                "INSERT INTO events (contact_id, name, at, received_at) VALUES ({contact}, '{name}', {at}, {at})"
            )
        };
        // 1 buys after the run started; 2 bought before it; 3 only opened the app.
        exec(db, event(1, "order_placed", now + 10)).await;
        exec(db, event(2, "order_placed", now - 10)).await;
        exec(db, event(3, "app_open", now + 10)).await;
        let rules = [ExitRule {
            campaign: "c1".into(),
            event: "order_placed".into(),
        }];

        let (n, seen) = sweep(db, &rules, 0, now + 20).await.unwrap();
        assert_eq!(n, 1, "only contact 1's step 1 of c1");
        assert_eq!(
            status_of(db, 1, 1, 1).await,
            ("cancelled".into(), Some("exit (order_placed)".into()))
        );
        assert_eq!(
            status_of(db, 1, 1, 0).await.0,
            "delivered",
            "what was sent stays"
        );
        assert_eq!(
            status_of(db, 2, 1, 1).await.0,
            "planned",
            "another campaign's message stays"
        );
        assert_eq!(
            status_of(db, 1, 2, 1).await.0,
            "planned",
            "an exit before the run does not count"
        );
        assert_eq!(
            status_of(db, 1, 3, 1).await.0,
            "planned",
            "another event does not count"
        );

        // Nothing new: nothing to do. Then contact 3 buys: cancelled at the next sweep.
        assert_eq!(sweep(db, &rules, seen, now + 30).await.unwrap(), (0, seen));
        exec(db, event(3, "order_placed", now + 40)).await;
        let (n, newer) = sweep(db, &rules, seen, now + 50).await.unwrap();
        assert_eq!((n, newer > seen), (1, true));
        assert_eq!(status_of(db, 1, 3, 1).await.0, "cancelled");
        // A cancelled run's messages are the run's, not the sweep's.
        exec(
            db,
            "UPDATE runs SET state = 'cancelled' WHERE id = 1".into(),
        )
        .await;
        exec(db, event(2, "order_placed", now + 60)).await;
        assert_eq!(sweep(db, &rules, newer, now + 70).await.unwrap().0, 0);
    }

    on_both_databases!(an_exit_event_cancels_the_campaigns_planned_messages_at_once);
}
