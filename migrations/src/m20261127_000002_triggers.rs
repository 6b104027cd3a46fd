//! Triggered campaigns (SPEC section 2, `trigger`): a message may be planned
//! because of one event, so the message key gains the triggering event:
//! (run, contact, step, trigger_id), with `trigger_id` 0 for scheduled runs.
//! Planning the same event twice (a duplicate delivery, a restart, two
//! daemons) then inserts nothing the second time. `trigger_at` is the event's
//! instant: an `exit` event after it cancels the message. `trigger_cursors`
//! remembers, per campaign, up to which event id every event was planned.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;
use sea_orm_migration::sea_orm::ConnectionTrait;

/// Adds `messages.trigger_id`, `messages.trigger_at`, the wider message key and `trigger_cursors`.
pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261127_000002_triggers"
    }
}

#[derive(DeriveIden)]
enum Messages {
    Table,
    RunId,
    ContactId,
    Step,
    TriggerId,
    TriggerAt,
}

#[derive(DeriveIden)]
enum TriggerCursors {
    Table,
    CampaignId,
    LastEventId,
    UpdatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    // One connection for every statement: on SQLite a pooled connection that did not
    // drop the old index may still see it and refuse to create the new one.
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // SQLite alters one column per statement.
        m.alter_table(
            Table::alter()
                .table(Messages::Table)
                .add_column(big_integer(Messages::TriggerId).default(0))
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table(Messages::Table)
                .add_column(big_integer_null(Messages::TriggerAt))
                .to_owned(),
        )
        .await?;
        // The same words on both databases (sea-query's DROP INDEX names the table, which SQLite refuses).
        m.get_connection()
            .execute_unprepared("DROP INDEX IF EXISTS messages_run_contact_step")
            .await?;
        m.create_index(
            Index::create()
                .name("messages_run_contact_step")
                .table(Messages::Table)
                .col(Messages::RunId)
                .col(Messages::ContactId)
                .col(Messages::Step)
                .col(Messages::TriggerId)
                .unique()
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table(TriggerCursors::Table)
                .if_not_exists()
                .col(big_integer(TriggerCursors::CampaignId).primary_key())
                .col(big_integer(TriggerCursors::LastEventId))
                .col(big_integer(TriggerCursors::UpdatedAt))
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table(TriggerCursors::Table).to_owned())
            .await?;
        // The same words on both databases (sea-query's DROP INDEX names the table, which SQLite refuses).
        m.get_connection()
            .execute_unprepared("DROP INDEX IF EXISTS messages_run_contact_step")
            .await?;
        m.create_index(
            Index::create()
                .name("messages_run_contact_step")
                .table(Messages::Table)
                .col(Messages::RunId)
                .col(Messages::ContactId)
                .col(Messages::Step)
                .unique()
                .to_owned(),
        )
        .await?;
        for col in [Messages::TriggerAt, Messages::TriggerId] {
            m.alter_table(
                Table::alter()
                    .table(Messages::Table)
                    .drop_column(col)
                    .to_owned(),
            )
            .await?;
        }
        Ok(())
    }
}
