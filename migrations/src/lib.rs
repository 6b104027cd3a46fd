//! herald's schema as sea-orm migrations, one file a change, the same on
//! SQLite and PostgreSQL. Every instant is a BIGINT of milliseconds since the
//! Unix epoch (UTC): one arithmetic for both databases in segment and report SQL.

pub use sea_orm_migration::prelude::*;

mod m20261123_000001_initial;
mod m20261124_000001_segment_index;
mod m20261125_000001_messages_fillfactor;
mod m20261126_000001_rollout;
mod m20261126_000002_daemon;
mod m20261127_000002_triggers;
mod m20261127_000003_rollout_release;
mod m20261127_000004_entry;
mod m20261127_000005_fallback;
mod m20261201_000001_import_speed;
mod m20261202_000001_report_first_step;
mod m20261202_000002_pause_planning;
mod m20261206_000001_flights;
mod m20261207_000001_messages_run_fk;
mod m20261207_000122_lanes;
mod m20261207_000123_campaign_goals;
mod m20261207_000124_provider_id_index;
mod m20261207_000125_cuped_covariates;
mod m20261208_000120_console_figures;
mod m20261208_000121_console_figures_read_at;
mod m20261208_000130_cuped_goal_revenue;

/// Applies herald's migrations in order.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261123_000001_initial::Migration),
            Box::new(m20261124_000001_segment_index::Migration),
            Box::new(m20261125_000001_messages_fillfactor::Migration),
            Box::new(m20261126_000001_rollout::Migration),
            Box::new(m20261126_000002_daemon::Migration),
            Box::new(m20261127_000002_triggers::Migration),
            Box::new(m20261127_000003_rollout_release::Migration),
            Box::new(m20261127_000004_entry::Migration),
            Box::new(m20261127_000005_fallback::Migration),
            Box::new(m20261201_000001_import_speed::Migration),
            Box::new(m20261202_000001_report_first_step::Migration),
            Box::new(m20261202_000002_pause_planning::Migration),
            Box::new(m20261206_000001_flights::Migration),
            Box::new(m20261207_000001_messages_run_fk::Migration),
            Box::new(m20261207_000122_lanes::Migration),
            Box::new(m20261207_000123_campaign_goals::Migration),
            Box::new(m20261207_000124_provider_id_index::Migration),
            Box::new(m20261207_000125_cuped_covariates::Migration),
            Box::new(m20261208_000120_console_figures::Migration),
            Box::new(m20261208_000121_console_figures_read_at::Migration),
            Box::new(m20261208_000130_cuped_goal_revenue::Migration),
        ]
    }
}
