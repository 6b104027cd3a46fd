//! The first schema, laid for the whole of SPEC: contacts and their
//! addresses, consent and events; suppressions; campaigns, runs, messages
//! (status, reason, lease, outcome flags) and attempts; links, the outbox.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

/// Creates every table and index of the first release.
pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261123_000001_initial"
    }
}

#[derive(DeriveIden)]
enum Contacts {
    Table,
    Id,
    ExternalId,
    Email,
    Phone,
    Timezone,
    Locale,
    Attrs,
    Tags,
    ConsentEmail,
    ConsentSms,
    ConsentPush,
    FirstSeenAt,
    CreatedAt,
    UpdatedAt,
    ForgottenAt,
}

#[derive(DeriveIden)]
enum PushTokens {
    Table,
    Id,
    ContactId,
    Token,
    Platform,
    CreatedAt,
    InvalidAt,
}

#[derive(DeriveIden)]
enum TopicSubscriptions {
    Table,
    ContactId,
    Topic,
    Subscribed,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Events {
    Table,
    Id,
    ContactId,
    Name,
    At,
    Value,
    Properties,
    EventId,
    ReceivedAt,
}

#[derive(DeriveIden)]
enum Suppressions {
    Table,
    Id,
    Channel,
    Address,
    ContactId,
    Topic,
    Reason,
    Source,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Campaigns {
    Table,
    Id,
    Name,
    Kind,
    Topic,
    Fingerprint,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Runs {
    Table,
    Id,
    CampaignId,
    ScheduledAt,
    NowAt,
    State,
    Origin,
    Fingerprint,
    Note,
    CreatedAt,
    FinishedAt,
}

#[derive(DeriveIden)]
enum Messages {
    Table,
    Id,
    RunId,
    CampaignId,
    ContactId,
    Step,
    Arm,
    Channel,
    Address,
    SendAt,
    Status,
    Reason,
    LeaseOwner,
    LeaseUntil,
    NotBefore,
    Attempts,
    ProviderId,
    SentAt,
    DeliveredAt,
    BouncedAt,
    ComplainedAt,
    OpenedAt,
    MachineOpenedAt,
    OpenCount,
    ClickedAt,
    ClickCount,
    UnsubscribedAt,
    ConvertedAt,
    Revenue,
    Secondary,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Attempts {
    Table,
    Id,
    MessageId,
    At,
    Result,
    ProviderCode,
    Detail,
    DurationMs,
}

#[derive(DeriveIden)]
enum Links {
    Table,
    Id,
    MessageId,
    Idx,
    Url,
    ShortCode,
}

#[derive(DeriveIden)]
enum Outbox {
    Table,
    Id,
    MessageId,
    Channel,
    Address,
    Subject,
    Body,
    BodyText,
    Headers,
    CreatedAt,
}

#[derive(DeriveIden)]
enum MessageEvents {
    Table,
    Id,
    MessageId,
    Kind,
    At,
    Detail,
}

fn index(name: &str, table: impl IntoIden, cols: &[&'static str]) -> IndexCreateStatement {
    let mut i = Index::create();
    i.name(name).table(table).if_not_exists();
    for c in cols {
        i.col(Alias::new(*c));
    }
    i.to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(Contacts::Table)
                .if_not_exists()
                .col(big_pk_auto(Contacts::Id))
                .col(text_uniq(Contacts::ExternalId))
                .col(text_null(Contacts::Email))
                .col(text_null(Contacts::Phone))
                .col(text_null(Contacts::Timezone))
                .col(text_null(Contacts::Locale))
                .col(json_binary(Contacts::Attrs))
                .col(json_binary_null(Contacts::Tags))
                .col(boolean_null(Contacts::ConsentEmail))
                .col(boolean_null(Contacts::ConsentSms))
                .col(boolean_null(Contacts::ConsentPush))
                .col(big_integer_null(Contacts::FirstSeenAt))
                .col(big_integer(Contacts::CreatedAt))
                .col(big_integer(Contacts::UpdatedAt))
                .col(big_integer_null(Contacts::ForgottenAt))
                .to_owned(),
        )
        .await?;
        m.create_index(index("contacts_email", Contacts::Table, &["email"]))
            .await?;
        m.create_index(index("contacts_phone", Contacts::Table, &["phone"]))
            .await?;

        m.create_table(
            Table::create()
                .table(PushTokens::Table)
                .if_not_exists()
                .col(big_pk_auto(PushTokens::Id))
                .col(big_integer(PushTokens::ContactId))
                .col(text_uniq(PushTokens::Token))
                .col(text_null(PushTokens::Platform))
                .col(big_integer(PushTokens::CreatedAt))
                .col(big_integer_null(PushTokens::InvalidAt))
                .foreign_key(
                    ForeignKey::create()
                        .from(PushTokens::Table, PushTokens::ContactId)
                        .to(Contacts::Table, Contacts::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(index(
            "push_tokens_contact",
            PushTokens::Table,
            &["contact_id"],
        ))
        .await?;

        m.create_table(
            Table::create()
                .table(TopicSubscriptions::Table)
                .if_not_exists()
                .col(big_integer(TopicSubscriptions::ContactId))
                .col(text(TopicSubscriptions::Topic))
                .col(boolean(TopicSubscriptions::Subscribed))
                .col(big_integer(TopicSubscriptions::UpdatedAt))
                .primary_key(
                    Index::create()
                        .col(TopicSubscriptions::ContactId)
                        .col(TopicSubscriptions::Topic),
                )
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(Events::Table)
                .if_not_exists()
                .col(big_pk_auto(Events::Id))
                .col(big_integer(Events::ContactId))
                .col(text(Events::Name))
                .col(big_integer(Events::At))
                .col(double_null(Events::Value))
                .col(json_binary_null(Events::Properties))
                // NULLs never collide in a unique index on either database,
                // so only events that carry an id are deduplicated.
                .col(text_null(Events::EventId).unique_key())
                .col(big_integer(Events::ReceivedAt))
                .to_owned(),
        )
        .await?;
        m.create_index(index(
            "events_contact_name_at",
            Events::Table,
            &["contact_id", "name", "at"],
        ))
        .await?;
        m.create_index(index("events_name_at", Events::Table, &["name", "at"]))
            .await?;

        m.create_table(
            Table::create()
                .table(Suppressions::Table)
                .if_not_exists()
                .col(big_pk_auto(Suppressions::Id))
                .col(text(Suppressions::Channel))
                .col(text_null(Suppressions::Address))
                .col(big_integer_null(Suppressions::ContactId))
                .col(text_null(Suppressions::Topic))
                .col(text(Suppressions::Reason))
                .col(text(Suppressions::Source))
                .col(big_integer(Suppressions::CreatedAt))
                .to_owned(),
        )
        .await?;
        m.create_index(index(
            "suppressions_address",
            Suppressions::Table,
            &["channel", "address"],
        ))
        .await?;
        m.create_index(index(
            "suppressions_contact",
            Suppressions::Table,
            &["contact_id"],
        ))
        .await?;

        m.create_table(
            Table::create()
                .table(Campaigns::Table)
                .if_not_exists()
                .col(big_pk_auto(Campaigns::Id))
                .col(text_uniq(Campaigns::Name))
                .col(text(Campaigns::Kind))
                .col(text_null(Campaigns::Topic))
                .col(text(Campaigns::Fingerprint))
                .col(big_integer(Campaigns::CreatedAt))
                .col(big_integer(Campaigns::UpdatedAt))
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(Runs::Table)
                .if_not_exists()
                .col(big_pk_auto(Runs::Id))
                .col(big_integer(Runs::CampaignId))
                .col(big_integer(Runs::ScheduledAt))
                .col(big_integer(Runs::NowAt))
                .col(text(Runs::State))
                .col(text(Runs::Origin))
                .col(text(Runs::Fingerprint))
                .col(text_null(Runs::Note))
                .col(big_integer(Runs::CreatedAt))
                .col(big_integer_null(Runs::FinishedAt))
                .foreign_key(
                    ForeignKey::create()
                        .from(Runs::Table, Runs::CampaignId)
                        .to(Campaigns::Table, Campaigns::Id),
                )
                .to_owned(),
        )
        .await?;
        // A run is keyed by (campaign, scheduled instant): a DST repeat, two
        // daemons or a restart cannot fire it twice.
        m.create_index(
            index(
                "runs_campaign_instant",
                Runs::Table,
                &["campaign_id", "scheduled_at"],
            )
            .unique()
            .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(Messages::Table)
                .if_not_exists()
                .col(big_pk_auto(Messages::Id))
                .col(big_integer(Messages::RunId))
                .col(big_integer(Messages::CampaignId))
                .col(big_integer(Messages::ContactId))
                .col(integer(Messages::Step))
                .col(text(Messages::Arm))
                .col(text_null(Messages::Channel))
                .col(text_null(Messages::Address))
                .col(big_integer(Messages::SendAt))
                .col(text(Messages::Status))
                .col(text_null(Messages::Reason))
                .col(text_null(Messages::LeaseOwner))
                .col(big_integer_null(Messages::LeaseUntil))
                // A retry waits until then; `send_at` stays the planned time, which attribution reads.
                .col(big_integer_null(Messages::NotBefore))
                .col(integer(Messages::Attempts).default(0))
                .col(text_null(Messages::ProviderId))
                .col(big_integer_null(Messages::SentAt))
                .col(big_integer_null(Messages::DeliveredAt))
                .col(big_integer_null(Messages::BouncedAt))
                .col(big_integer_null(Messages::ComplainedAt))
                .col(big_integer_null(Messages::OpenedAt))
                .col(big_integer_null(Messages::MachineOpenedAt))
                .col(integer(Messages::OpenCount).default(0))
                .col(big_integer_null(Messages::ClickedAt))
                .col(integer(Messages::ClickCount).default(0))
                .col(big_integer_null(Messages::UnsubscribedAt))
                .col(big_integer_null(Messages::ConvertedAt))
                .col(double(Messages::Revenue).default(0.0))
                .col(json_binary_null(Messages::Secondary))
                .col(big_integer(Messages::CreatedAt))
                .col(big_integer(Messages::UpdatedAt))
                .foreign_key(
                    ForeignKey::create()
                        .from(Messages::Table, Messages::RunId)
                        .to(Runs::Table, Runs::Id),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(
            index(
                "messages_run_contact_step",
                Messages::Table,
                &["run_id", "contact_id", "step"],
            )
            .unique()
            .to_owned(),
        )
        .await?;
        m.create_index(index(
            "messages_due",
            Messages::Table,
            &["status", "send_at"],
        ))
        .await?;
        m.create_index(index(
            "messages_campaign_contact",
            Messages::Table,
            &["campaign_id", "contact_id"],
        ))
        .await?;
        m.create_index(index(
            "messages_contact_sent",
            Messages::Table,
            &["contact_id", "sent_at"],
        ))
        .await?;
        m.create_index(index(
            "messages_run_status",
            Messages::Table,
            &["run_id", "status"],
        ))
        .await?;
        m.create_index(index(
            "messages_run_address",
            Messages::Table,
            &["run_id", "channel", "address"],
        ))
        .await?;

        m.create_table(
            Table::create()
                .table(Attempts::Table)
                .if_not_exists()
                .col(big_pk_auto(Attempts::Id))
                .col(big_integer(Attempts::MessageId))
                .col(big_integer(Attempts::At))
                .col(text(Attempts::Result))
                .col(text_null(Attempts::ProviderCode))
                .col(text_null(Attempts::Detail))
                .col(big_integer(Attempts::DurationMs))
                .to_owned(),
        )
        .await?;
        m.create_index(index("attempts_message", Attempts::Table, &["message_id"]))
            .await?;

        m.create_table(
            Table::create()
                .table(Links::Table)
                .if_not_exists()
                .col(big_pk_auto(Links::Id))
                .col(big_integer(Links::MessageId))
                .col(integer(Links::Idx))
                .col(text(Links::Url))
                .col(text_null(Links::ShortCode).unique_key())
                .to_owned(),
        )
        .await?;
        m.create_index(
            index("links_message_idx", Links::Table, &["message_id", "idx"])
                .unique()
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(Outbox::Table)
                .if_not_exists()
                .col(big_pk_auto(Outbox::Id))
                .col(big_integer_uniq(Outbox::MessageId))
                .col(text(Outbox::Channel))
                .col(text(Outbox::Address))
                .col(text_null(Outbox::Subject))
                .col(text(Outbox::Body))
                .col(text_null(Outbox::BodyText))
                .col(json_binary_null(Outbox::Headers))
                .col(big_integer(Outbox::CreatedAt))
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(MessageEvents::Table)
                .if_not_exists()
                .col(big_pk_auto(MessageEvents::Id))
                .col(big_integer(MessageEvents::MessageId))
                .col(text(MessageEvents::Kind))
                .col(big_integer(MessageEvents::At))
                .col(json_binary_null(MessageEvents::Detail))
                .to_owned(),
        )
        .await?;
        m.create_index(index(
            "message_events_message",
            MessageEvents::Table,
            &["message_id"],
        ))
        .await?;
        Ok(())
    }
}
