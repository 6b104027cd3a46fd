//! The A/B report's storage (SPEC section 5): `rollouts` keeps a rollout
//! decision, one row per run that tested its variants on a fraction of the
//! audience and then sent one of them to the rest; and on SQLite two indexes
//! that hold everything the report's scan reads, in its GROUP BY order.
//!
//! SQLite aggregates by sorting: over 10M messages its sorter took 53 s,
//! where reading these indexes in order takes about 3. Their outcome columns
//! are `IS NOT NULL` flags, which SQLite's record format stores in no bytes;
//! the price is a third more time to record a first open or click.
//! PostgreSQL aggregates by hash over a parallel scan and gets no such index:
//! an indexed outcome column would turn every open and click, today a HOT
//! update, into an entry in each of the table's indexes.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

/// Creates `rollouts` and, on SQLite, `messages_report` and `messages_report_reasons`.
pub struct Migration;

/// The report's covering index on SQLite, in the order of its scan by (run,
/// arm, status). Its expressions must match `herald_storage::report`'s scan
/// word for word, or SQLite reads the table instead (a test checks the plan).
pub(crate) const REPORT_INDEX: &str = "CREATE INDEX IF NOT EXISTS messages_report ON messages (\
    campaign_id, run_id, arm, status, \
    (sent_at IS NOT NULL), (opened_at IS NOT NULL), (machine_opened_at IS NOT NULL), \
    (clicked_at IS NOT NULL), (unsubscribed_at IS NOT NULL), (complained_at IS NOT NULL), \
    (converted_at IS NOT NULL), revenue, send_at, secondary)";

/// The same for the few suppressed and cancelled messages, by reason.
pub(crate) const REASONS_INDEX: &str = "CREATE INDEX IF NOT EXISTS messages_report_reasons ON messages (\
    campaign_id, run_id, arm, status, reason, \
    (sent_at IS NOT NULL), (opened_at IS NOT NULL), (machine_opened_at IS NOT NULL), \
    (clicked_at IS NOT NULL), (unsubscribed_at IS NOT NULL), (complained_at IS NOT NULL), \
    (converted_at IS NOT NULL), revenue, send_at, secondary) \
    WHERE status IN ('suppressed', 'cancelled')";

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261126_000001_rollout"
    }
}

#[derive(DeriveIden)]
enum Rollouts {
    Table,
    RunId,
    DecidedAt,
    Metric,
    Chosen,
    Leader,
    ClearWinner,
    WindowCutShort,
    Reason,
    Detail,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(Rollouts::Table)
                .if_not_exists()
                // A run decides once: the key refuses a second decision.
                .col(big_integer(Rollouts::RunId).primary_key())
                .col(big_integer(Rollouts::DecidedAt))
                // `conversion`, `click` or `open`.
                .col(text(Rollouts::Metric))
                // The variant sent to the rest of the audience.
                .col(text(Rollouts::Chosen))
                // The variant with the best rate, which may not be the one chosen.
                .col(text(Rollouts::Leader))
                .col(boolean(Rollouts::ClearWinner))
                // Decided before every tested message's goal window had closed.
                .col(boolean(Rollouts::WindowCutShort))
                .col(text(Rollouts::Reason))
                // The counts and chances the decision was made on.
                .col(json_binary_null(Rollouts::Detail))
                // No foreign key to `runs`: PostgreSQL refuses to TRUNCATE a
                // table another one references, which `Db::truncate_all` does.
                .to_owned(),
        )
        .await?;
        if m.get_database_backend() == DbBackend::Sqlite {
            for index in [REPORT_INDEX, REASONS_INDEX] {
                m.get_connection().execute_unprepared(index).await?;
            }
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        if m.get_database_backend() == DbBackend::Sqlite {
            for index in ["messages_report", "messages_report_reasons"] {
                m.get_connection()
                    .execute_unprepared(&format!("DROP INDEX IF EXISTS {index}"))
                    .await?;
            }
        }
        m.drop_table(Table::drop().table(Rollouts::Table).to_owned())
            .await
    }
}
