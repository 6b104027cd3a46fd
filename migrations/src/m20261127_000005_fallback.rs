//! Channel fallback (SPEC section 2, issue #6): after a permanent failure on
//! one channel (an unregistered push token) a message may move, once, to the
//! next channel of the campaign's order. It stays one message (the report's
//! unit is one contact in one run); `fallback_from` keeps the channel that
//! failed, and a message that already fell back never falls back again.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

/// Adds `messages.fallback_from`.
pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261127_000005_fallback"
    }
}

#[derive(DeriveIden)]
enum Messages {
    Table,
    FallbackFrom,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(Messages::Table)
                .add_column(text_null(Messages::FallbackFrom))
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(Messages::Table)
                .drop_column(Messages::FallbackFrom)
                .to_owned(),
        )
        .await
    }
}
