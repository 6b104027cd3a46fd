//! The report counts a series once per contact, on its first message (step 0):
//! on SQLite its two covering indexes become partial on `step = 0`, the
//! condition the report's scan now carries, and hold `step` too (SQLite reads
//! a column the WHERE names from the index or the table, whatever the
//! predicate says). Later steps of a series leave the indexes, which also
//! makes their writes cheaper. PostgreSQL has no such index.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

// The indexes as `m20261126_000001_rollout` made them: what `down` restores.
use crate::m20261126_000001_rollout::{
    REASONS_INDEX as REASONS_INDEX_BEFORE, REPORT_INDEX as REPORT_INDEX_BEFORE,
};

/// The report's covering index: its expressions must match
/// `herald_storage::report`'s scan word for word (a test checks the plan).
const REPORT_INDEX: &str = "CREATE INDEX IF NOT EXISTS messages_report ON messages (\
    campaign_id, run_id, arm, status, \
    (sent_at IS NOT NULL), (opened_at IS NOT NULL), (machine_opened_at IS NOT NULL), \
    (clicked_at IS NOT NULL), (unsubscribed_at IS NOT NULL), (complained_at IS NOT NULL), \
    (converted_at IS NOT NULL), revenue, send_at, secondary, step) \
    WHERE step = 0";

/// The same for the few suppressed and cancelled first messages, by reason.
const REASONS_INDEX: &str = "CREATE INDEX IF NOT EXISTS messages_report_reasons ON messages (\
    campaign_id, run_id, arm, status, reason, \
    (sent_at IS NOT NULL), (opened_at IS NOT NULL), (machine_opened_at IS NOT NULL), \
    (clicked_at IS NOT NULL), (unsubscribed_at IS NOT NULL), (complained_at IS NOT NULL), \
    (converted_at IS NOT NULL), revenue, send_at, secondary, step) \
    WHERE status IN ('suppressed', 'cancelled') AND step = 0";

/// Rebuilds `messages_report` and `messages_report_reasons` on SQLite.
pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261202_000001_report_first_step"
    }
}

async fn rebuild(m: &SchemaManager<'_>, first_step_only: bool) -> Result<(), DbErr> {
    if m.get_database_backend() != DbBackend::Sqlite {
        return Ok(());
    }
    let conn = m.get_connection();
    for index in ["messages_report", "messages_report_reasons"] {
        conn.execute_unprepared(&format!("DROP INDEX IF EXISTS {index}"))
            .await?;
    }
    let indexes = if first_step_only {
        [REPORT_INDEX, REASONS_INDEX]
    } else {
        [REPORT_INDEX_BEFORE, REASONS_INDEX_BEFORE]
    };
    for index in indexes {
        conn.execute_unprepared(index).await?;
    }
    Ok(())
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        rebuild(m, true).await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        rebuild(m, false).await
    }
}
