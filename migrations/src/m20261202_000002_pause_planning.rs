//! A run can be paused while it is still being planned: `runs.resume_to`
//! keeps the state a paused run goes back to (`planning` or `running`), so
//! that resuming a half-written plan lets the scheduler finish it instead of
//! declaring it planned. NULL on a run that is not paused.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

/// Adds `runs.resume_to`.
pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261202_000002_pause_planning"
    }
}

#[derive(DeriveIden)]
enum Runs {
    Table,
    ResumeTo,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(Runs::Table)
                .add_column(text_null(Runs::ResumeTo))
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(Runs::Table)
                .drop_column(Runs::ResumeTo)
                .to_owned(),
        )
        .await
    }
}
