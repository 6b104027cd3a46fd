//! Rollout release (SPEC section 5, `[rollout]`): the messages of a run that
//! wait for its rollout decision carry the arm `rollout:*` until the winner
//! is released to them. This partial index holds only those, so the daemon
//! finds a run's waiting messages (and whether it has any) without a scan,
//! and it shrinks to nothing once every run has decided.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::ConnectionTrait;

/// Creates the partial index `messages_rollout_waiting`.
pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261127_000003_rollout_release"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // The same text on both databases: each supports a partial index.
        m.get_connection()
            .execute_unprepared(
                "CREATE INDEX IF NOT EXISTS messages_rollout_waiting ON messages (run_id, id) \
                 WHERE arm = 'rollout:*'",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.get_connection()
            .execute_unprepared("DROP INDEX IF EXISTS messages_rollout_waiting")
            .await?;
        Ok(())
    }
}
