//! A covering index for segment queries: one event name's history in
//! contact order, with time and value, so per-contact aggregates (RFM,
//! days since, counts, the gaps behind `overdue`) read only that event's
//! index entries, already grouped, and never the table.

use sea_orm_migration::prelude::*;

/// Adds `events_name_contact_at` (name, contact_id, at, value).
pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261124_000001_segment_index"
    }
}

#[derive(DeriveIden)]
enum Events {
    Table,
    Name,
    ContactId,
    At,
    Value,
}

/// The index's name.
const INDEX: &str = "events_name_contact_at";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_index(
            Index::create()
                .name(INDEX)
                .table(Events::Table)
                .col(Events::Name)
                .col(Events::ContactId)
                .col(Events::At)
                .col(Events::Value)
                .if_not_exists()
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_index(Index::drop().name(INDEX).table(Events::Table).to_owned())
            .await
    }
}
