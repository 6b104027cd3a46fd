//! PostgreSQL checks a foreign key row by row, with a trigger and a query on
//! `runs` for each inserted message: a fifth of a page insert's time. Every
//! statement that writes messages already joins its run's row (`FOR SHARE`
//! while the run is open) and writes nothing without it, and runs are never
//! deleted, so the constraint only repeated that check a thousand times a
//! page. SQLite checks the key with one rowid probe a row and cannot drop a
//! constraint without rebuilding the table: it keeps it.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

/// Drops `messages_run_id_fkey` (PostgreSQL only).
pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261207_000001_messages_run_fk"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        if m.get_database_backend() == DbBackend::Postgres {
            m.get_connection()
                .execute_unprepared(
                    "ALTER TABLE messages DROP CONSTRAINT IF EXISTS messages_run_id_fkey",
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        if m.get_database_backend() == DbBackend::Postgres {
            m.get_connection()
                .execute_unprepared(
                    "ALTER TABLE messages ADD CONSTRAINT messages_run_id_fkey FOREIGN KEY (run_id) REFERENCES runs (id)",
                )
                .await?;
        }
        Ok(())
    }
}
