//! The console's stored aggregates (`console_figures`): figures that would
//! take a scan of every message or contact to count on each request, kept
//! as one JSON document a key with the instant they were counted, so a page
//! reads them by key and says how old they are. A refresh job writes them
//! ([`put`] is an upsert where the newer count wins, so two writers never
//! go backwards); [`take_lease`] lets one process of several on one
//! PostgreSQL database do the refreshing while the others only read.

use sea_orm::{ConnectionTrait, QueryResult};
use serde_json::Value;

use crate::db::Db;
use crate::sql::Sql;

/// Why stored figures could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FiguresError {
    /// The database failed.
    #[error("database: {0}")]
    Db(String),
    /// A stored document is not JSON (written by something else).
    #[error("the stored figures `{key}` are not JSON: {error}")]
    NotJson {
        /// Its key.
        key: String,
        /// The parser's words.
        error: String,
    },
}

fn db_err(e: impl std::fmt::Display) -> FiguresError {
    FiguresError::Db(e.to_string())
}

fn get<T: sea_orm::TryGetable>(row: &QueryResult, i: usize) -> Result<T, FiguresError> {
    row.try_get_by_index(i).map_err(db_err)
}

async fn exec(db: &Db, q: Sql) -> Result<u64, FiguresError> {
    Ok(db
        .conn
        .execute_raw(q.build(db.backend()))
        .await
        .map_err(db_err)?
        .rows_affected())
}

/// Figures as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    /// The document.
    pub figures: Value,
    /// When they were counted (ms).
    pub counted_at: i64,
    /// How long counting them took (ms): what a page would have waited.
    pub took_ms: i64,
}

/// The key of the marker a forget leaves (never a page's key: pages'
/// keys start with a letter): its `counted_at` is the forget's instant, and
/// figures counted before it are refused, so a refresh pass that read a
/// forgotten contact's address before the forget can't store it after.
pub const FORGOTTEN_MARKER: &str = "~forgotten";

/// Stores `figures` under `key`, counted at `counted_at` (the instant the
/// count started) in `took_ms`; figures already stored from a later count
/// are kept (a slow refresher finishing after a faster one never puts older
/// figures back), and figures counted before the latest forget are refused
/// (they may quote the forgotten contact: [`forget_all`]). New figures
/// count as read when counted (a page counted them for itself, or the
/// refresher for a page it always keeps); a refresh leaves `read_at`.
pub async fn put(
    db: &Db,
    key: &str,
    figures: &Value,
    counted_at: i64,
    took_ms: i64,
) -> Result<(), FiguresError> {
    let mut q = Sql::new();
    q.push("INSERT INTO console_figures (key, figures, counted_at, took_ms, read_at) SELECT ")
        .bind(key.to_string())
        .push(", ")
        .bind(figures.to_string())
        .push(", ")
        .bind(counted_at)
        .push(", ")
        .bind(took_ms)
        .push(", ")
        .bind(counted_at)
        // SQLite needs the WHERE to read ON CONFLICT as the upsert's.
        .push(" WHERE NOT EXISTS (SELECT 1 FROM console_figures f WHERE f.key = ")
        .bind(FORGOTTEN_MARKER.to_string())
        .push(" AND f.counted_at >= ")
        .bind(counted_at)
        .push(
            ") ON CONFLICT (key) DO UPDATE SET figures = excluded.figures, \
             counted_at = excluded.counted_at, took_ms = excluded.took_ms \
             WHERE console_figures.counted_at <= excluded.counted_at",
        );
    exec(db, q).await?;
    Ok(())
}

/// In a forget's transaction: deletes every stored figure (a run's failure
/// reasons or a report may hold the contact's address or their numbers;
/// each page counts live again, without them, and stores that) and leaves
/// the marker at `now`, so figures a refresh counted before it are refused.
pub(crate) async fn forget_all(
    conn: &impl ConnectionTrait,
    b: sea_orm::DbBackend,
    now: i64,
) -> Result<(), sea_orm::DbErr> {
    let mut q = Sql::new();
    q.push("DELETE FROM console_figures WHERE key <> ")
        .bind(FORGOTTEN_MARKER.to_string());
    conn.execute_raw(q.build(b)).await?;
    let mut q = Sql::new();
    q.push("INSERT INTO console_figures (key, figures, counted_at, took_ms) VALUES (")
        .bind(FORGOTTEN_MARKER.to_string())
        .push(", '{}', ")
        .bind(now)
        .push(
            ", 0) ON CONFLICT (key) DO UPDATE SET counted_at = excluded.counted_at \
             WHERE console_figures.counted_at < excluded.counted_at",
        );
    conn.execute_raw(q.build(b)).await?;
    Ok(())
}

/// The figures stored under `key`, if any: one primary-key lookup.
pub async fn get_figures(db: &Db, key: &str) -> Result<Option<Stored>, FiguresError> {
    let mut q = Sql::new();
    q.push("SELECT figures, counted_at, took_ms FROM console_figures WHERE key = ")
        .bind(key.to_string());
    let rows = db
        .conn
        .query_all_raw(q.build(db.backend()))
        .await
        .map_err(db_err)?;
    let Some(row) = rows.first() else {
        return Ok(None);
    };
    let text: String = get(row, 0)?;
    let figures = serde_json::from_str(&text).map_err(|e| FiguresError::NotJson {
        key: key.to_string(),
        error: e.to_string(),
    })?;
    Ok(Some(Stored {
        figures,
        counted_at: get(row, 1)?,
        took_ms: get(row, 2)?,
    }))
}

/// Notes that a page read `key`'s figures at `now`. At most one write a
/// minute a key: a busy page does not turn each view into an update.
pub async fn mark_read(db: &Db, key: &str, now: i64) -> Result<(), FiguresError> {
    let mut q = Sql::new();
    q.push("UPDATE console_figures SET read_at = ")
        .bind(now)
        .push(" WHERE key = ")
        .bind(key.to_string())
        .push(" AND read_at < ")
        .bind(now - 60_000);
    exec(db, q).await?;
    Ok(())
}

/// The keys whose figures no page has read since `before` (ms): what the
/// refresh job stops counting and deletes.
pub async fn unread_since(db: &Db, before: i64) -> Result<Vec<String>, FiguresError> {
    let mut q = Sql::new();
    // A forget's marker is not a page's figures: it stays.
    q.push("SELECT key FROM console_figures WHERE read_at < ")
        .bind(before)
        .push(" AND key <> ")
        .bind(FORGOTTEN_MARKER.to_string())
        .push(" ORDER BY key");
    let rows = db
        .conn
        .query_all_raw(q.build(db.backend()))
        .await
        .map_err(db_err)?;
    rows.iter().map(|r| get(r, 0)).collect()
}

/// Deletes the figures stored under `key` (what they counted is gone).
pub async fn delete(db: &Db, key: &str) -> Result<(), FiguresError> {
    let mut q = Sql::new();
    q.push("DELETE FROM console_figures WHERE key = ")
        .bind(key.to_string());
    exec(db, q).await?;
    Ok(())
}

/// Every stored key, with when its figures were counted: what a refresh
/// counts again (pages visited once are kept fresh from then on).
pub async fn keys(db: &Db) -> Result<Vec<(String, i64)>, FiguresError> {
    let mut q = Sql::new();
    q.push("SELECT key, counted_at FROM console_figures ORDER BY key");
    let rows = db
        .conn
        .query_all_raw(q.build(db.backend()))
        .await
        .map_err(db_err)?;
    rows.iter().map(|r| Ok((get(r, 0)?, get(r, 1)?))).collect()
}

/// Deletes the figures whose key starts with `prefix` (a forgotten
/// contact's page, a run that is gone): their page counts live again
/// until the next refresh.
pub async fn forget_prefix(db: &Db, prefix: &str) -> Result<u64, FiguresError> {
    let mut q = Sql::new();
    // `substr` rather than LIKE: a key may hold `%` or `_`.
    q.push("DELETE FROM console_figures WHERE substr(key, 1, ")
        .bind(i32::try_from(prefix.chars().count()).unwrap_or(i32::MAX))
        .push(") = ")
        .bind(prefix.to_string());
    exec(db, q).await
}

/// Takes (or renews) the lease `name` for `owner` until `now + ttl_ms`:
/// `true` when `owner` holds it now, `false` while another's lease runs.
/// One statement, so two processes asking at once cannot both get it.
pub async fn take_lease(
    db: &Db,
    name: &str,
    owner: &str,
    now: i64,
    ttl_ms: i64,
) -> Result<bool, FiguresError> {
    let mut q = Sql::new();
    q.push("INSERT INTO console_lease (name, owner, until_at) VALUES (")
        .bind(name.to_string())
        .push(", ")
        .bind(owner.to_string())
        .push(", ")
        .bind(now + ttl_ms)
        .push(
            ") ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, until_at = excluded.until_at \
             WHERE console_lease.owner = excluded.owner OR console_lease.until_at < ",
        )
        .bind(now);
    Ok(exec(db, q).await? == 1)
}

/// Gives the lease `name` up if `owner` holds it (a clean exit), so another
/// process takes over at once rather than when it lapses.
pub async fn release_lease(db: &Db, name: &str, owner: &str) -> Result<(), FiguresError> {
    let mut q = Sql::new();
    q.push("DELETE FROM console_lease WHERE name = ")
        .bind(name.to_string())
        .push(" AND owner = ")
        .bind(owner.to_string());
    exec(db, q).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use herald_migrations::{Migrator, MigratorTrait};
    use serde_json::json;

    use super::*;
    use crate::test_db::on_both_databases;

    /// Stored figures come back with their instant; a later count replaces
    /// them, an earlier one (a slow refresher finishing late) does not.
    async fn figures_are_stored_and_the_newer_count_wins(db: &Db) {
        assert_eq!(get_figures(db, "run:1").await.unwrap(), None);
        put(db, "run:1", &json!({"delivered": 3}), 1_000, 40)
            .await
            .unwrap();
        let s = get_figures(db, "run:1").await.unwrap().unwrap();
        assert_eq!(s.figures, json!({"delivered": 3}));
        assert_eq!((s.counted_at, s.took_ms), (1_000, 40));
        put(db, "run:1", &json!({"delivered": 5}), 2_000, 41)
            .await
            .unwrap();
        put(db, "run:1", &json!({"delivered": 4}), 1_500, 42)
            .await
            .unwrap();
        let s = get_figures(db, "run:1").await.unwrap().unwrap();
        assert_eq!(s.figures, json!({"delivered": 5}));
        assert_eq!(s.counted_at, 2_000);
        put(db, "segment:a%", &json!(1), 1, 1).await.unwrap();
        put(db, "segment:ab", &json!(1), 1, 1).await.unwrap();
        assert_eq!(forget_prefix(db, "segment:a%").await.unwrap(), 1);
        assert!(get_figures(db, "segment:ab").await.unwrap().is_some());
        assert!(get_figures(db, "run:1").await.unwrap().is_some());
        let listed: Vec<String> = keys(db).await.unwrap().into_iter().map(|k| k.0).collect();
        assert_eq!(listed, ["run:1", "segment:ab"]);
        delete(db, "run:1").await.unwrap();
        assert_eq!(get_figures(db, "run:1").await.unwrap(), None);
    }

    /// One holder at a time: another process gets the lease only once the
    /// holder's lapses or is given up; the holder renews its own.
    async fn one_refresher_holds_the_lease(db: &Db) {
        assert!(take_lease(db, "figures", "a", 1_000, 100).await.unwrap());
        assert!(!take_lease(db, "figures", "b", 1_050, 100).await.unwrap());
        assert!(take_lease(db, "figures", "a", 1_090, 100).await.unwrap());
        // a's lease now runs to 1_190.
        assert!(!take_lease(db, "figures", "b", 1_150, 100).await.unwrap());
        assert!(take_lease(db, "figures", "b", 1_200, 100).await.unwrap());
        assert!(!take_lease(db, "figures", "a", 1_210, 100).await.unwrap());
        release_lease(db, "figures", "a").await.unwrap();
        assert!(!take_lease(db, "figures", "a", 1_220, 100).await.unwrap());
        release_lease(db, "figures", "b").await.unwrap();
        assert!(take_lease(db, "figures", "a", 1_230, 100).await.unwrap());
    }

    /// The migration on a database made by the schema before it: the
    /// tables are not there, then are, and the figures work.
    async fn the_migration_upgrades_todays_schema(db: &Db) {
        crate::test_db::down_to_before(db, "m20261208_000120_console_figures").await;
        assert!(get_figures(db, "x").await.is_err(), "the table is gone");
        Migrator::up(&db.conn, None).await.unwrap();
        put(db, "x", &json!([1]), 1, 1).await.unwrap();
        assert!(take_lease(db, "figures", "a", 1, 1).await.unwrap());
        assert_eq!(
            get_figures(db, "x").await.unwrap().unwrap().figures,
            json!([1])
        );
    }

    /// A forget deletes every stored figure (they may quote the contact)
    /// and refuses figures counted before it: a refresh pass that read the
    /// address before the forget and writes after it stores nothing.
    async fn a_forget_clears_the_figures_and_refuses_older_counts(db: &Db) {
        let quoting = json!({"failures": [["550 <alice@example.com> unknown", 1]]});
        put(db, "status", &quoting, 1_000, 1).await.unwrap();
        put(db, "run:1", &quoting, 1_000, 1).await.unwrap();
        forget_all(&db.conn, db.backend(), 2_000).await.unwrap();
        assert_eq!(get_figures(db, "status").await.unwrap(), None);
        assert_eq!(get_figures(db, "run:1").await.unwrap(), None);
        // Counted at 1_500 (before the forget), written after it: refused,
        // as is a count that started in the forget's very millisecond.
        put(db, "status", &quoting, 1_500, 1).await.unwrap();
        put(db, "status", &quoting, 2_000, 1).await.unwrap();
        assert_eq!(get_figures(db, "status").await.unwrap(), None);
        put(db, "status", &json!({"failures": []}), 2_001, 1)
            .await
            .unwrap();
        assert_eq!(
            get_figures(db, "status").await.unwrap().unwrap().figures,
            json!({"failures": []})
        );
        // An earlier forget's instant never moves the marker back.
        forget_all(&db.conn, db.backend(), 1_800).await.unwrap();
        put(db, "run:1", &quoting, 1_900, 1).await.unwrap();
        assert_eq!(get_figures(db, "run:1").await.unwrap(), None);
    }

    /// A forget's marker is never pruned as an unread figure: deleting
    /// it would let a pass counted before the forget store again.
    async fn the_forget_marker_is_never_unread(db: &Db) {
        forget_all(&db.conn, db.backend(), 2_000).await.unwrap();
        assert_eq!(
            unread_since(db, 10_000).await.unwrap(),
            Vec::<String>::new()
        );
    }

    /// A key's figures are read when stored and when a page marks them;
    /// a refresh (a newer put) does not make them read.
    async fn figures_remember_when_they_were_read(db: &Db) {
        put(db, "a", &json!(1), 1_000, 1).await.unwrap();
        put(db, "b", &json!(1), 1_000, 1).await.unwrap();
        assert_eq!(unread_since(db, 1_000).await.unwrap(), Vec::<String>::new());
        assert_eq!(unread_since(db, 1_001).await.unwrap(), ["a", "b"]);
        put(db, "a", &json!(2), 500_000, 1).await.unwrap();
        mark_read(db, "b", 500_000).await.unwrap();
        assert_eq!(unread_since(db, 400_000).await.unwrap(), ["a"]);
        // Within a minute of the last mark, nothing is written.
        mark_read(db, "b", 530_000).await.unwrap();
        assert_eq!(unread_since(db, 500_001).await.unwrap(), ["a", "b"]);
    }

    /// The read_at migration on a database made by the schema before it:
    /// stored figures survive and count as read when they were counted.
    async fn the_read_at_migration_upgrades_the_previous_schema(db: &Db) {
        crate::test_db::down_to_before(db, "m20261208_000121_console_figures_read_at").await;
        assert!(
            unread_since(db, 0).await.is_err(),
            "the column is not there yet"
        );
        let mut q = Sql::new();
        q.push("INSERT INTO console_figures (key, figures, counted_at, took_ms) VALUES ('old', '[1]', 7000, 1)");
        exec(db, q).await.unwrap();
        Migrator::up(&db.conn, None).await.unwrap();
        assert_eq!(unread_since(db, 7_000).await.unwrap(), Vec::<String>::new());
        assert_eq!(unread_since(db, 7_001).await.unwrap(), ["old"]);
        mark_read(db, "old", 100_000).await.unwrap();
        assert_eq!(unread_since(db, 7_001).await.unwrap(), Vec::<String>::new());
    }

    on_both_databases!(
        the_forget_marker_is_never_unread,
        figures_remember_when_they_were_read,
        the_read_at_migration_upgrades_the_previous_schema,
        figures_are_stored_and_the_newer_count_wins,
        one_refresher_holds_the_lease,
        the_migration_upgrades_todays_schema,
        a_forget_clears_the_figures_and_refuses_older_counts,
    );
}
