//! A campaign's goals kept with it (`campaigns.goal_event`,
//! `goal_within_ms`, `secondary_goals`), written by every planner that
//! records the campaign: the store attributes the goal events already stored
//! to the messages it writes (a page of a plan, a rollout's release), by the
//! same rule as an event arriving later, without the config at hand. NULL for
//! a campaign without a goal.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

/// Adds `campaigns.goal_event`, `campaigns.goal_within_ms` and `campaigns.secondary_goals`.
pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261207_000123_campaign_goals"
    }
}

#[derive(DeriveIden, Clone, Copy)]
enum Campaigns {
    Table,
    GoalEvent,
    GoalWithinMs,
    /// A JSON array of event names.
    SecondaryGoals,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // One column a statement: SQLite's ALTER TABLE adds one at a time.
        for col in [
            text_null(Campaigns::GoalEvent),
            big_integer_null(Campaigns::GoalWithinMs),
            text_null(Campaigns::SecondaryGoals),
        ] {
            m.alter_table(
                Table::alter()
                    .table(Campaigns::Table)
                    .add_column(col)
                    .to_owned(),
            )
            .await?;
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for col in [
            Campaigns::GoalEvent,
            Campaigns::GoalWithinMs,
            Campaigns::SecondaryGoals,
        ] {
            m.alter_table(
                Table::alter()
                    .table(Campaigns::Table)
                    .drop_column(col)
                    .to_owned(),
            )
            .await?;
        }
        Ok(())
    }
}
