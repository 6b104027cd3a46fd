//! What the daemon needs to share work safely between processes: a planning
//! lease on runs (two daemons that both see a due fire must not both plan it,
//! or the second's pages would miss the duplicate-address pass), and a table
//! of live daemons, so each takes its share of every channel's rate limit.
//! The claim index gains `id`: workers claim in (send_at, id) order, and when
//! a whole run shares one send_at PostgreSQL otherwise sorts every due row of
//! it for each batch (SQLite's indexes end in the rowid anyway).

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

/// Adds `runs.planner`, `runs.planner_until` and the `daemons` table.
pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261126_000002_daemon"
    }
}

#[derive(DeriveIden)]
enum Runs {
    Table,
    Planner,
    PlannerUntil,
}

#[derive(DeriveIden)]
enum Messages {
    Table,
    Status,
    SendAt,
    Id,
}

#[derive(DeriveIden)]
enum Daemons {
    Table,
    Owner,
    StartedAt,
    HeartbeatAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // SQLite alters one column per statement.
        m.alter_table(
            Table::alter()
                .table(Runs::Table)
                .add_column(text_null(Runs::Planner))
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table(Runs::Table)
                .add_column(big_integer_null(Runs::PlannerUntil))
                .to_owned(),
        )
        .await?;
        m.drop_index(
            Index::drop()
                .name("messages_due")
                .table(Messages::Table)
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
        m.create_table(
            Table::create()
                .table(Daemons::Table)
                .if_not_exists()
                .col(text(Daemons::Owner).primary_key())
                .col(big_integer(Daemons::StartedAt))
                .col(big_integer(Daemons::HeartbeatAt))
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table(Daemons::Table).to_owned())
            .await?;
        m.drop_index(
            Index::drop()
                .name("messages_claim")
                .table(Messages::Table)
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("messages_due")
                .table(Messages::Table)
                .col(Messages::Status)
                .col(Messages::SendAt)
                .to_owned(),
        )
        .await?;
        for col in [Runs::Planner, Runs::PlannerUntil] {
            m.alter_table(
                Table::alter()
                    .table(Runs::Table)
                    .drop_column(col)
                    .to_owned(),
            )
            .await?;
        }
        Ok(())
    }
}
