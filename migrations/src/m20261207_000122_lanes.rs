//! Lanes and blocked routes (issue #22).
//!
//! - `messages_claim` (status, send_at, id) becomes `messages_lane`
//!   (status, channel, send_at, id): every claim is now one route's (a
//!   lane's), so a throttled route's queue is never scanned by another's
//!   claims; the queries that read a status alone still have its prefix. One
//!   index replaces the other: a message row keeps its number of index entries.
//! - `route_blocks`: a route blocked by an account fault (wrong credentials),
//!   for `herald status` to show and `herald runs resume` to ask for a probe.
//! - `runs.pause_reason`: why the reputation guard paused a run (bounce or
//!   complaint rate), for `herald status`; kept after a resume, so the guard
//!   does not pause the same run again.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

/// Adds `messages_lane`, `route_blocks` and `runs.pause_reason`.
pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261207_000122_lanes"
    }
}

#[derive(DeriveIden)]
enum Messages {
    Table,
    Status,
    Channel,
    SendAt,
    Id,
}

#[derive(DeriveIden)]
enum Runs {
    Table,
    PauseReason,
}

#[derive(DeriveIden)]
enum RouteBlocks {
    Table,
    Route,
    Owner,
    Reason,
    Since,
    ProbeAt,
    ResumeAt,
    UpdatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(Runs::Table)
                .add_column(text_null(Runs::PauseReason))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("messages_lane")
                .table(Messages::Table)
                .col(Messages::Status)
                .col(Messages::Channel)
                .col(Messages::SendAt)
                .col(Messages::Id)
                .if_not_exists()
                .to_owned(),
        )
        .await?;
        m.drop_index(
            Index::drop()
                .name("messages_claim")
                .table(Messages::Table)
                .if_exists()
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table(RouteBlocks::Table)
                .if_not_exists()
                .col(text(RouteBlocks::Route).primary_key())
                .col(text(RouteBlocks::Owner))
                // The provider's words.
                .col(text(RouteBlocks::Reason))
                .col(big_integer(RouteBlocks::Since))
                // The blocked daemon's next probe.
                .col(big_integer(RouteBlocks::ProbeAt))
                // When `herald runs resume` asked for a probe at once.
                .col(big_integer_null(RouteBlocks::ResumeAt))
                .col(big_integer(RouteBlocks::UpdatedAt))
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table(RouteBlocks::Table).to_owned())
            .await?;
        m.alter_table(
            Table::alter()
                .table(Runs::Table)
                .drop_column(Runs::PauseReason)
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("messages_claim")
                .table(Messages::Table)
                .col(Messages::Status)
                .col(Messages::SendAt)
                .col(Messages::Id)
                .to_owned(),
        )
        .await?;
        m.drop_index(
            Index::drop()
                .name("messages_lane")
                .table(Messages::Table)
                .to_owned(),
        )
        .await
    }
}
