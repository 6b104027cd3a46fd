//! Flights: the batches a planner hands straight to a worker. A handed
//! message is written once, already carrying the outcome its send is
//! expected to have (`sent`, or `delivered` on a channel whose acceptance is
//! delivery), and its batch gets one `flights` row: the lease (owner, until)
//! and the message ids. The worker deletes the row when it records the
//! batch, writing only the messages whose outcome differs; a flight whose
//! lease lapses turns its untouched messages `unknown`, as a lapsed
//! `sending` lease did. One row a batch instead of a second write of every
//! message row (seven index entries each).

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

/// Adds `flights`.
pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261206_000001_flights"
    }
}

#[derive(DeriveIden)]
enum Flights {
    Table,
    Id,
    RunId,
    Owner,
    LeaseUntil,
    WrittenAt,
    Size,
    Ids,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(Flights::Table)
                .if_not_exists()
                .col(big_pk_auto(Flights::Id))
                .col(big_integer(Flights::RunId))
                .col(text(Flights::Owner))
                .col(big_integer(Flights::LeaseUntil))
                // The instant the messages were written (their `updated_at`
                // until anything else touches them).
                .col(big_integer(Flights::WrittenAt))
                .col(big_integer(Flights::Size))
                // The message ids, comma-separated.
                .col(text(Flights::Ids))
                .to_owned(),
        )
        .await?;
        // "Is anything of this run still in the air?" when a run drains.
        m.create_index(
            Index::create()
                .name("flights_run")
                .table(Flights::Table)
                .col(Flights::RunId)
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table(Flights::Table).to_owned())
            .await
    }
}
