//! PostgreSQL keeps a fifth of each `messages` page free (fillfactor 80), so
//! an outcome update that changes no indexed column (an open, a click, a
//! delivery time) stays on its page as a HOT update and writes no index
//! entry: `messages` has seven indexes. SQLite has no such setting.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

/// Sets `fillfactor = 80` on `messages` (PostgreSQL only).
pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261125_000001_messages_fillfactor"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        if m.get_database_backend() == DbBackend::Postgres {
            // Pages written from now on keep the room; existing ones gain it as rows move.
            m.get_connection()
                .execute_unprepared("ALTER TABLE messages SET (fillfactor = 80)")
                .await?;
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        if m.get_database_backend() == DbBackend::Postgres {
            m.get_connection()
                .execute_unprepared("ALTER TABLE messages RESET (fillfactor)")
                .await?;
        }
        Ok(())
    }
}
