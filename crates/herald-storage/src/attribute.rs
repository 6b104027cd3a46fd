//! Attribution when messages are written (SPEC section 5): the goal events
//! already stored are attributed to the messages a planner writes (a page of
//! a plan, planned after a pause of hours) and recomputed for the messages a
//! rollout's release moves (a new `send_at`), by the rule the tracking side
//! applies to events as they arrive ([`crate::tracking::attribute_events`]):
//! a first message (step 0), whatever its status, converts on a goal event in
//! `(send_at, send_at + within]`, at the first such event, revenue the sum of
//! their values; secondary goals alike. So a result never depends on whether
//! an event came before or after its message was written.
//!
//! A page costs one probe of the events index (`name, at`): events newer
//! than the page's earliest send time, which are rare; the page's rows are
//! written again only for contacts that have one.

use std::collections::BTreeSet;

use sea_orm::{ConnectionTrait, DbBackend, QueryResult};

use crate::sql::Sql;

/// A campaign's goals as `campaigns` keeps them (migration
/// `m20261207_000123_campaign_goals`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Goals {
    /// The goal event.
    pub event: String,
    /// The window after a first message's `send_at` (ms).
    pub within_ms: i64,
    /// Secondary goal events, counted over the same window.
    pub secondary: Vec<String>,
}

impl Goals {
    /// Every event name that counts: the goal first, then the secondary goals.
    fn names(&self) -> Vec<&str> {
        let mut out = vec![self.event.as_str()];
        out.extend(self.secondary.iter().map(String::as_str));
        out
    }
}

/// Rows per statement of recomputed messages (two bound values each).
const CHUNK: usize = 1000;

fn get<T: sea_orm::TryGetable>(row: &QueryResult, i: usize) -> Result<T, sea_orm::DbErr> {
    row.try_get_by_index(i)
}

/// The goals of campaign `campaign_id`; `None` when it has no goal.
pub async fn goals_of(
    conn: &impl ConnectionTrait,
    campaign_id: i64,
) -> Result<Option<Goals>, sea_orm::DbErr> {
    let b = conn.get_database_backend();
    let mut q = Sql::new();
    q.push("SELECT goal_event, goal_within_ms, secondary_goals FROM campaigns WHERE id = ")
        .bind(campaign_id);
    let Some(r) = conn.query_one_raw(q.build(b)).await? else {
        return Ok(None);
    };
    let (event, within_ms, secondary): (Option<String>, Option<i64>, Option<String>) =
        (get(&r, 0)?, get(&r, 1)?, get(&r, 2)?);
    let (Some(event), Some(within_ms)) = (event, within_ms) else {
        return Ok(None);
    };
    let secondary = secondary
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_default();
    Ok(Some(Goals {
        event,
        within_ms,
        secondary,
    }))
}

/// The contacts among `lo..=hi` with an event that counts for `goals` after
/// `after` and at most `until`: the only ones of a page whose messages may
/// have converted already. One range read of `events_name_at` per name.
pub async fn contacts_with_goal_events(
    conn: &impl ConnectionTrait,
    goals: &Goals,
    (lo, hi): (i64, i64),
    after: i64,
    until: i64,
) -> Result<Vec<i64>, sea_orm::DbErr> {
    let b = conn.get_database_backend();
    let mut q = Sql::new();
    q.push("SELECT DISTINCT contact_id FROM events WHERE name IN (");
    for (i, name) in goals.names().into_iter().enumerate() {
        if i > 0 {
            q.push(",");
        }
        q.bind(name.to_string());
    }
    q.push(") AND at > ")
        .bind(after)
        .push(" AND at <= ")
        .bind(until)
        .push(" AND contact_id BETWEEN ")
        .bind(lo)
        .push(" AND ")
        .bind(hi);
    conn.query_all_raw(q.build(b))
        .await?
        .iter()
        .map(|r| get(r, 0))
        .collect()
}

/// Which messages [`recompute`] looks at.
#[derive(Debug, Clone, Copy)]
pub enum Messages<'a> {
    /// Of run `.0`, those of these contacts.
    Contacts(i64, &'a [i64]),
    /// These messages.
    Ids(&'a [i64]),
}

/// `e` is an event of `messages`' contact named by bind `name` in the
/// message's window: the rule of [`crate::tracking::attribute_events`].
fn in_window(q: &mut Sql, b: DbBackend, name: &str, within_ms: i64) {
    q.push("e.contact_id = messages.contact_id AND e.name = ")
        .bind_as(b, name.to_string(), "text")
        .push(" AND e.at > messages.send_at AND e.at <= messages.send_at + ")
        .bind_as(b, within_ms, "int8");
}

/// `messages` is a first message of the campaign among `which`.
fn scope(q: &mut Sql, b: DbBackend, campaign_id: i64, which: Messages<'_>) {
    q.push(" WHERE messages.campaign_id = ")
        .bind(campaign_id)
        .push(" AND messages.step = 0 AND ");
    let list = |ids: &[i64]| {
        ids.iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    match which {
        Messages::Contacts(run, contacts) => {
            q.push("messages.run_id = ")
                .bind(run)
                .push(" AND messages.contact_id IN ");
            crate::store::id_list_set(q, b, &list(contacts));
        }
        Messages::Ids(ids) => {
            q.push("messages.id IN ");
            crate::store::id_list_set(q, b, &list(ids));
        }
    }
}

/// Recomputes the outcome columns (`converted_at`, `revenue`, and each
/// secondary goal in `secondary`) of campaign `campaign_id`'s first messages
/// among `which` from the events stored and the messages' `send_at`:
/// attributed where a goal event falls in the window, cleared where none
/// does any more (a release moved `send_at` past it). Only rows whose
/// outcome may change are written. Returns the rows written.
pub async fn recompute(
    conn: &impl ConnectionTrait,
    campaign_id: i64,
    goals: &Goals,
    which: Messages<'_>,
) -> Result<u64, sea_orm::DbErr> {
    let b = conn.get_database_backend();
    let parts: Vec<Messages<'_>> = match which {
        Messages::Contacts(run, c) => c
            .chunks(CHUNK)
            .map(|c| Messages::Contacts(run, c))
            .collect(),
        Messages::Ids(ids) => ids.chunks(CHUNK).map(Messages::Ids).collect(),
    };
    let mut written = 0;
    for part in parts {
        let mut q = Sql::new();
        q.push("UPDATE messages SET converted_at = (SELECT MIN(e.at) FROM events e WHERE ");
        in_window(&mut q, b, &goals.event, goals.within_ms);
        q.push("), revenue = (SELECT COALESCE(SUM(e.value), 0) FROM events e WHERE ");
        in_window(&mut q, b, &goals.event, goals.within_ms);
        q.push(")");
        scope(&mut q, b, campaign_id, part);
        q.push(" AND (messages.converted_at IS NOT NULL OR EXISTS (SELECT 1 FROM events e WHERE ");
        in_window(&mut q, b, &goals.event, goals.within_ms);
        q.push("))");
        written += conn.execute_raw(q.build(b)).await?.rows_affected();
        let names: BTreeSet<&str> = goals.secondary.iter().map(String::as_str).collect();
        for name in names {
            written += recompute_secondary(conn, b, campaign_id, goals, name, part).await?;
        }
    }
    Ok(written)
}

/// [`recompute`] of one secondary goal: `secondary.NAME` holds the first
/// event's instant, the count and the revenue in the window, or is absent.
async fn recompute_secondary(
    conn: &impl ConnectionTrait,
    b: DbBackend,
    campaign_id: i64,
    goals: &Goals,
    name: &str,
    which: Messages<'_>,
) -> Result<u64, sea_orm::DbErr> {
    let within = goals.within_ms;
    let stats = |q: &mut Sql| {
        for (i, (key, agg)) in [
            ("at", "MIN(e.at)"),
            ("count", "COUNT(*)"),
            ("revenue", "COALESCE(SUM(e.value), 0)"),
        ]
        .into_iter()
        .enumerate()
        {
            if i > 0 {
                q.push(", ");
            }
            q.push("'").push(key).push("', (SELECT ").push(agg);
            q.push(" FROM events e WHERE ");
            in_window(q, b, name, within);
            q.push(")");
        }
    };
    let exists = |q: &mut Sql| {
        q.push("EXISTS (SELECT 1 FROM events e WHERE ");
        in_window(q, b, name, within);
        q.push(")");
    };
    // SQLite's JSON paths have no escape for a double quote in a key (the
    // report counts no such goal either): such a key is only ever set.
    let path = (!name.contains('"')).then(|| format!("$.\"{name}\""));
    let mut q = Sql::new();
    q.push("UPDATE messages SET secondary = CASE WHEN ");
    exists(&mut q);
    match b {
        DbBackend::Postgres => {
            q.push(" THEN COALESCE(messages.secondary, '{}'::jsonb) || jsonb_build_object(")
                .bind_as(b, name.to_string(), "text")
                .push(", jsonb_build_object(");
            stats(&mut q);
            q.push(")) ELSE messages.secondary - ")
                .bind_as(b, name.to_string(), "text")
                .push(" END");
        }
        _ => {
            q.push(" THEN json_patch(COALESCE(messages.secondary, '{}'), json_object(")
                .bind(name.to_string())
                .push(", json_object(");
            stats(&mut q);
            q.push("))) ELSE ");
            match &path {
                Some(p) => q
                    .push("json_remove(messages.secondary, ")
                    .bind(p.clone())
                    .push(")"),
                None => q.push("messages.secondary"),
            };
            q.push(" END");
        }
    }
    scope(&mut q, b, campaign_id, which);
    q.push(" AND (");
    exists(&mut q);
    match (b, &path) {
        (DbBackend::Postgres, _) => {
            q.push(" OR jsonb_exists(messages.secondary, ")
                .bind_as(b, name.to_string(), "text")
                .push(")");
        }
        (_, Some(p)) => {
            q.push(" OR json_extract(messages.secondary, ")
                .bind(p.clone())
                .push(") IS NOT NULL");
        }
        _ => {}
    }
    q.push(")");
    Ok(conn.execute_raw(q.build(b)).await?.rows_affected())
}
