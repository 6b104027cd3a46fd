//! Segment-entry triggers (SPEC section 2, `trigger = { enters = .. }`): each
//! pass evaluates the segment, diffs it against the members stored at the
//! previous pass and marks who entered. `entry_members` holds a campaign's
//! members as of its last pass, with the run of the pass each entered in
//! (NULL for the members of the first, baseline pass); `entry_passes` records
//! every pass's figures and is the pass's idempotency key.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

/// Adds `entry_members` and `entry_passes`.
pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261127_000004_entry"
    }
}

#[derive(DeriveIden)]
enum EntryMembers {
    Table,
    CampaignId,
    ContactId,
    EnteredRun,
}

#[derive(DeriveIden)]
enum EntryPasses {
    Table,
    RunId,
    CampaignId,
    Members,
    Entrants,
    Leavers,
    Baseline,
    At,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(EntryMembers::Table)
                .if_not_exists()
                .col(big_integer(EntryMembers::CampaignId))
                .col(big_integer(EntryMembers::ContactId))
                .col(big_integer_null(EntryMembers::EnteredRun))
                .primary_key(
                    Index::create()
                        .col(EntryMembers::CampaignId)
                        .col(EntryMembers::ContactId),
                )
                .to_owned(),
        )
        .await?;
        // Planning reads one pass's entrants: `Scope::Entrants`.
        m.create_index(
            Index::create()
                .name("entry_members_entered")
                .table(EntryMembers::Table)
                .col(EntryMembers::CampaignId)
                .col(EntryMembers::EnteredRun)
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table(EntryPasses::Table)
                .if_not_exists()
                .col(big_integer(EntryPasses::RunId).primary_key())
                .col(big_integer(EntryPasses::CampaignId))
                .col(big_integer(EntryPasses::Members))
                .col(big_integer(EntryPasses::Entrants))
                .col(big_integer(EntryPasses::Leavers))
                .col(boolean(EntryPasses::Baseline))
                .col(big_integer(EntryPasses::At))
                .to_owned(),
        )
        .await?;
        // "Has this campaign had a pass before?" decides the baseline.
        m.create_index(
            Index::create()
                .name("entry_passes_campaign")
                .table(EntryPasses::Table)
                .col(EntryPasses::CampaignId)
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table(EntryPasses::Table).to_owned())
            .await?;
        m.drop_table(Table::drop().table(EntryMembers::Table).to_owned())
            .await
    }
}
