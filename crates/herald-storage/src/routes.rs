//! Blocked routes (`route_blocks`): a route whose provider refused the
//! sender's account (wrong credentials) is blocked in the daemon that saw
//! it; the row lets `herald status` show it (`blocked: sms: authentication
//! failed (...)`) and `herald runs resume` ask for a probe at once. The
//! block itself lives in the daemon (`herald_engine::health`); this is its
//! shadow, written when it changes and at each probe.

use sea_orm::{ConnectionTrait, QueryResult};

use crate::db::Db;
use crate::sql::Sql;

/// A block whose row was not refreshed for this long is a dead daemon's:
/// `herald status` no longer shows it (a live blocked route writes its row
/// at every probe, a minute apart at most).
pub const BLOCK_STALE_MS: i64 = 3 * 60_000;

/// A route's block, as `herald status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteBlock {
    /// The route (`sms`).
    pub route: String,
    /// The daemon (or `herald send`) that saw it.
    pub owner: String,
    /// The provider's words.
    pub reason: String,
    /// When the block began (ms).
    pub since: i64,
    /// The next probe (ms).
    pub probe_at: i64,
}

/// Why a route row could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("database: {0}")]
pub struct RoutesError(String);

/// A database error as a [`RoutesError`] (shared by the exit sweep and the
/// reputation guard, which report through the same error).
pub(crate) fn db_err(e: impl std::fmt::Display) -> RoutesError {
    RoutesError(e.to_string())
}

/// Column `i` of `row`.
pub(crate) fn get<T: sea_orm::TryGetable>(row: &QueryResult, i: usize) -> Result<T, RoutesError> {
    row.try_get_by_index(i).map_err(db_err)
}

async fn exec(db: &Db, q: Sql) -> Result<u64, RoutesError> {
    Ok(db
        .conn
        .execute_raw(q.build(db.backend()))
        .await
        .map_err(db_err)?
        .rows_affected())
}

/// Writes (or refreshes) `block`.
pub async fn block(db: &Db, block: &RouteBlock, now: i64) -> Result<(), RoutesError> {
    let mut q = Sql::new();
    q.push("INSERT INTO route_blocks (route, owner, reason, since, probe_at, updated_at) VALUES (")
        .bind(block.route.clone())
        .push(", ")
        .bind(block.owner.clone())
        .push(", ")
        .bind(block.reason.clone())
        .push(", ")
        .bind(block.since)
        .push(", ")
        .bind(block.probe_at)
        .push(", ")
        .bind(now)
        .push(") ON CONFLICT (route) DO UPDATE SET owner = excluded.owner, reason = excluded.reason, since = excluded.since, probe_at = excluded.probe_at, updated_at = excluded.updated_at");
    exec(db, q).await?;
    Ok(())
}

/// The route works again: its row goes.
pub async fn unblock(db: &Db, route: &str) -> Result<(), RoutesError> {
    let mut q = Sql::new();
    q.push("DELETE FROM route_blocks WHERE route = ")
        .bind(route.to_string());
    exec(db, q).await?;
    Ok(())
}

/// The blocks of live daemons (refreshed within [`BLOCK_STALE_MS`]), by route.
pub async fn blocks(db: &Db, now: i64) -> Result<Vec<RouteBlock>, RoutesError> {
    let mut q = Sql::new();
    q.push("SELECT route, owner, reason, since, probe_at FROM route_blocks WHERE updated_at > ")
        .bind(now - BLOCK_STALE_MS)
        .push(" ORDER BY route");
    let rows = db
        .conn
        .query_all_raw(q.build(db.backend()))
        .await
        .map_err(db_err)?;
    rows.iter()
        .map(|r| {
            Ok(RouteBlock {
                route: get(r, 0)?,
                owner: get(r, 1)?,
                reason: get(r, 2)?,
                since: get(r, 3)?,
                probe_at: get(r, 4)?,
            })
        })
        .collect()
}

/// The owner of a block a provider reported in a status callback (Twilio
/// 30034/30007), until a daemon's lane takes it over.
pub const CALLBACK_OWNER: &str = "status callback";

/// A provider's status callback says the sender's account is refused
/// (Twilio 30034, 30007): the route is blocked. A daemon's lane reads the
/// row ([`reported_block`]) and blocks itself as if its own send had been
/// refused; a route already blocked keeps its row (only refreshed).
pub async fn report_block(db: &Db, route: &str, reason: &str, now: i64) -> Result<(), RoutesError> {
    let mut q = Sql::new();
    q.push("INSERT INTO route_blocks (route, owner, reason, since, probe_at, updated_at) VALUES (")
        .bind(route.to_string())
        .push(", ")
        .bind(CALLBACK_OWNER.to_string())
        .push(", ")
        .bind(reason.to_string())
        .push(", ")
        .bind(now)
        .push(", ")
        .bind(now)
        .push(", ")
        .bind(now)
        .push(") ON CONFLICT (route) DO UPDATE SET updated_at = excluded.updated_at");
    exec(db, q).await?;
    Ok(())
}

/// The reason of a block of `route` reported by a status callback after
/// `since` (ms) that no daemon has taken over yet.
pub async fn reported_block(
    db: &Db,
    route: &str,
    since: i64,
) -> Result<Option<String>, RoutesError> {
    let mut q = Sql::new();
    q.push("SELECT reason FROM route_blocks WHERE route = ")
        .bind(route.to_string())
        .push(" AND owner = ")
        .bind(CALLBACK_OWNER.to_string())
        .push(" AND updated_at > ")
        .bind(since);
    let rows = db
        .conn
        .query_all_raw(q.build(db.backend()))
        .await
        .map_err(db_err)?;
    rows.first().map(|r| get(r, 0)).transpose()
}

/// `herald runs resume`: every blocked route probes at once; returns how many are blocked.
pub async fn request_probes(db: &Db, now: i64) -> Result<u64, RoutesError> {
    let mut q = Sql::new();
    q.push("UPDATE route_blocks SET resume_at = ").bind(now);
    exec(db, q).await
}

/// Whether a probe of `route` was asked for after `since` (ms).
pub async fn probe_requested(db: &Db, route: &str, since: i64) -> Result<bool, RoutesError> {
    let mut q = Sql::new();
    q.push("SELECT COUNT(*) FROM route_blocks WHERE route = ")
        .bind(route.to_string())
        .push(" AND resume_at > ")
        .bind(since);
    let rows = db
        .conn
        .query_all_raw(q.build(db.backend()))
        .await
        .map_err(db_err)?;
    let n: i64 = rows.first().map(|r| get(r, 0)).transpose()?.unwrap_or(0);
    Ok(n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_db::on_both_databases;

    async fn blocks_are_written_shown_refreshed_and_removed(db: &Db) {
        let now = 1_000_000;
        let b = RouteBlock {
            route: "sms".into(),
            owner: "d1".into(),
            reason: "authentication failed (Twilio 20003: Authenticate (HTTP 401))".into(),
            since: now,
            probe_at: now + 1000,
        };
        block(db, &b, now).await.unwrap();
        assert_eq!(blocks(db, now).await.unwrap(), vec![b.clone()]);
        assert!(!probe_requested(db, "sms", now).await.unwrap());
        assert_eq!(request_probes(db, now + 5).await.unwrap(), 1);
        assert!(probe_requested(db, "sms", now).await.unwrap());
        assert!(!probe_requested(db, "sms", now + 5).await.unwrap());
        // A refresh at the next probe.
        let later = RouteBlock {
            probe_at: now + 3000,
            ..b.clone()
        };
        block(db, &later, now + 1000).await.unwrap();
        assert_eq!(blocks(db, now + 1000).await.unwrap(), vec![later]);
        // A dead daemon's block is not shown.
        assert!(
            blocks(db, now + 1000 + BLOCK_STALE_MS)
                .await
                .unwrap()
                .is_empty()
        );
        unblock(db, "sms").await.unwrap();
        assert!(blocks(db, now).await.unwrap().is_empty());
    }

    on_both_databases!(blocks_are_written_shown_refreshed_and_removed);
}
