//! Stored aggregates for the console (issues 31 and 32): the figures a page
//! would otherwise count over every message or contact on each request (a
//! run's counts, a campaign's report, a segment's grid) are kept here by a
//! refresh job, one JSON document a key, with the instant they were counted
//! so the page can say how old they are. `console_lease` names the one
//! process that refreshes them while several share a PostgreSQL database.
//! `attempts_at` lets the status page read the last hour's attempts live.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::ConnectionTrait;

/// Adds `console_figures`, `console_lease` and the index `attempts_at`.
pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261208_000120_console_figures"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let conn = m.get_connection();
        // `figures` is JSON as text on both databases: it is read whole by
        // its key, never queried inside.
        conn.execute_unprepared(
            "CREATE TABLE IF NOT EXISTS console_figures (\
             key VARCHAR(400) NOT NULL PRIMARY KEY, \
             figures TEXT NOT NULL, \
             counted_at BIGINT NOT NULL, \
             took_ms BIGINT NOT NULL)",
        )
        .await?;
        conn.execute_unprepared(
            "CREATE TABLE IF NOT EXISTS console_lease (\
             name VARCHAR(64) NOT NULL PRIMARY KEY, \
             owner VARCHAR(200) NOT NULL, \
             until_at BIGINT NOT NULL)",
        )
        .await?;
        // The status page's live pace of each route (accepted in the last
        // minute, failed in the last hour) reads attempts by time: without
        // this it scans every attempt ever made.
        conn.execute_unprepared("CREATE INDEX IF NOT EXISTS attempts_at ON attempts (at)")
            .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let conn = m.get_connection();
        conn.execute_unprepared("DROP INDEX IF EXISTS attempts_at")
            .await?;
        conn.execute_unprepared("DROP TABLE IF EXISTS console_lease")
            .await?;
        conn.execute_unprepared("DROP TABLE IF EXISTS console_figures")
            .await?;
        Ok(())
    }
}
