//! CUPED's covariates (issue 33): each first message keeps its contact's same
//! measures in the window before it was planned, `pre_converted` (0 or 1: the
//! goal event happened) and `pre_revenue` (the revenue event's values), so the
//! report reads them with the outcomes and never looks the history up again.
//! NULL where the campaign asked for no CUPED, or the message predates this.
//! Nullable without a default: adding them rewrites no row on either database,
//! and no index holds them (the report reads them in its per-message results
//! statement, not through SQLite's covering indexes of the grouped scan).

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::ConnectionTrait;

/// Adds `messages.pre_converted` and `messages.pre_revenue`.
pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261207_000125_cuped_covariates"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let conn = m.get_connection();
        // One column a statement: SQLite adds one at a time.
        conn.execute_unprepared("ALTER TABLE messages ADD COLUMN pre_converted INTEGER")
            .await?;
        conn.execute_unprepared("ALTER TABLE messages ADD COLUMN pre_revenue DOUBLE PRECISION")
            .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let conn = m.get_connection();
        for column in ["pre_converted", "pre_revenue"] {
            conn.execute_unprepared(&format!("ALTER TABLE messages DROP COLUMN {column}"))
                .await?;
        }
        Ok(())
    }
}
