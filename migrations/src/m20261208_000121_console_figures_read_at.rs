//! When each of the console's stored figures was last read by a page
//! (`console_figures.read_at`), so the refresh job can stop counting, and
//! delete, the figures of a page nobody has opened for a day (every report
//! selection visited once became a key counted every 30 s forever).

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::ConnectionTrait;

/// Adds `console_figures.read_at`.
pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261208_000121_console_figures_read_at"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let conn = m.get_connection();
        conn.execute_unprepared(
            "ALTER TABLE console_figures ADD COLUMN read_at BIGINT NOT NULL DEFAULT 0",
        )
        .await?;
        // Figures stored before count as read when they were counted: none
        // is pruned at the first refresh after the upgrade.
        conn.execute_unprepared("UPDATE console_figures SET read_at = counted_at")
            .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.get_connection()
            .execute_unprepared("ALTER TABLE console_figures DROP COLUMN read_at")
            .await?;
        Ok(())
    }
}
