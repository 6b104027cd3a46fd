//! An index on `messages.provider_id` for email: a relay's webhook event (SES
//! `mail.messageId`) may name a message only by the id of the relay's `250 Ok <id>`
//! reply, and finding it must not scan every message.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::ConnectionTrait;

/// Partial, so the many messages without a provider id (planned, SMS and push in
/// flight) cost the index nothing.
const CREATE: &str = "CREATE INDEX IF NOT EXISTS messages_provider_id ON messages (provider_id) \
     WHERE provider_id IS NOT NULL AND channel = 'email'";

/// Creates `messages_provider_id`.
pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261207_000124_provider_id_index"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.get_connection().execute_unprepared(CREATE).await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.get_connection()
            .execute_unprepared("DROP INDEX IF EXISTS messages_provider_id")
            .await?;
        Ok(())
    }
}
