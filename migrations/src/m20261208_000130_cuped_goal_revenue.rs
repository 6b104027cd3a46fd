//! CUPED for revenue per converting contact (issue 33): each first message
//! keeps `pre_goal_revenue`, the goal event's values in the window before it
//! was planned, beside `pre_converted` (the goal event happened). Together they
//! are the ratio's numerator and denominator before the message, as the
//! message's `revenue` and `converted_at` are after it. (`pre_revenue` is the
//! revenue event's values, which may be another event than the goal.)
//! NULL where the campaign asked for no CUPED, or the message predates this.
//! Nullable without a default: adding it rewrites no row on either database.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::ConnectionTrait;

/// Adds `messages.pre_goal_revenue`.
pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261208_000130_cuped_goal_revenue"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.get_connection()
            .execute_unprepared("ALTER TABLE messages ADD COLUMN pre_goal_revenue DOUBLE PRECISION")
            .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.get_connection()
            .execute_unprepared("ALTER TABLE messages DROP COLUMN pre_goal_revenue")
            .await?;
        Ok(())
    }
}
