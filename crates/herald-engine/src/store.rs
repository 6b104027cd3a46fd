//! What the engine needs from the database, as a trait: `herald-storage`
//! implements it on SQLite and PostgreSQL. Bulk operations take and return
//! pages, so an audience of millions flows through bounded memory.

use async_trait::async_trait;
use herald_domain::segment::Expr;
use herald_domain::types::{Channel, MessageStatus};
use serde_json::Value;

/// A storage failure, with the database's words.
#[derive(Debug, thiserror::Error)]
#[error("database: {0}")]
pub struct StoreError(pub String);

/// Shorthand for store results.
pub type StoreResult<T> = Result<T, StoreError>;

/// A campaign as the database keeps it.
#[derive(Debug, Clone)]
pub struct CampaignRecord {
    /// Its name.
    pub name: String,
    /// `marketing` or `transactional`.
    pub kind: String,
    /// Its topic, if any.
    pub topic: Option<String>,
    /// What decides arms; a change reshuffles them.
    pub fingerprint: String,
}

/// A run just created, or found because it already existed.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRecord {
    /// Its id.
    pub id: i64,
    /// The campaign's id.
    pub campaign_id: i64,
    /// The audience snapshot instant (ms).
    pub now_at: i64,
    /// `planning`, `running`, `paused`, `done`, `cancelled`.
    pub state: String,
    /// False when the (campaign, instant) run already existed.
    pub created: bool,
}

/// What the planner needs to know about one audience member.
#[derive(Debug, Clone, PartialEq)]
pub struct AudienceMember {
    /// Contact id.
    pub contact_id: i64,
    /// The app's id (arm assignment hashes it).
    pub external_id: String,
    /// Email address, if any.
    pub email: Option<String>,
    /// Phone, if any.
    pub phone: Option<String>,
    /// A valid push token, if any.
    pub push_token: Option<String>,
    /// Consent per channel as stored (None: not given).
    pub consent_email: Option<bool>,
    /// SMS consent as stored.
    pub consent_sms: Option<bool>,
    /// Push consent as stored.
    pub consent_push: Option<bool>,
    /// Channels whose address (or the whole channel) is suppressed for this contact.
    pub suppressed: Vec<Channel>,
    /// Unsubscribed from the campaign's topic.
    pub topic_opt_out: bool,
}

/// A message row to insert when planning.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedMessage {
    /// Contact id.
    pub contact_id: i64,
    /// Series step (0 for a one-shot campaign).
    pub step: i32,
    /// Variant name, or `holdout`.
    pub arm: String,
    /// The channel chosen.
    pub channel: Option<Channel>,
    /// The address on that channel.
    pub address: Option<String>,
    /// Planned send time (ms).
    pub send_at: i64,
    /// `planned`, `held_out` or `suppressed`.
    pub status: MessageStatus,
    /// Why, for suppressed messages.
    pub reason: Option<String>,
}

/// A message claimed for sending, with what rendering needs.
#[derive(Debug, Clone)]
pub struct ClaimedMessage {
    /// Message id.
    pub id: i64,
    /// Run id.
    pub run_id: i64,
    /// Contact id.
    pub contact_id: i64,
    /// Variant name.
    pub arm: String,
    /// Channel.
    pub channel: Channel,
    /// Address.
    pub address: String,
    /// Attempts so far.
    pub attempts: i32,
    /// Planned send time (ms).
    pub send_at: i64,
}

/// A contact as templates see it.
#[derive(Debug, Clone)]
pub struct ContactView {
    /// Contact id.
    pub id: i64,
    /// The app's id.
    pub external_id: String,
    /// Email.
    pub email: Option<String>,
    /// Phone.
    pub phone: Option<String>,
    /// Time zone.
    pub timezone: Option<String>,
    /// Locale.
    pub locale: Option<String>,
    /// Attributes.
    pub attrs: Value,
    /// Tags.
    pub tags: Vec<String>,
}

/// A link made while rendering, stored so the tracking server redirects only to it.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkRecord {
    /// Index in the message.
    pub idx: i32,
    /// Target URL.
    pub url: String,
    /// SMS short code.
    pub short_code: Option<String>,
}

/// What happened to one message at dispatch.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Message id.
    pub message_id: i64,
    /// New status.
    pub status: MessageStatus,
    /// Reason for failed/unknown/suppressed.
    pub reason: Option<String>,
    /// When to try again (status `planned`).
    pub retry_at: Option<i64>,
    /// Provider's id.
    pub provider_id: Option<String>,
    /// The attempt, if the provider was tried.
    pub attempt: Option<AttemptRecord>,
    /// Links to store.
    pub links: Vec<LinkRecord>,
    /// Suppress this address from now on (hard bounce, unsubscribed number).
    pub suppress_address: Option<(Channel, String)>,
}

/// One try at a provider.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    /// When (ms).
    pub at: i64,
    /// `accepted`, `transient`, `rate_limited`, `permanent`, `ambiguous`, `render_error`.
    pub result: String,
    /// The provider's code.
    pub code: Option<String>,
    /// The provider's words.
    pub detail: Option<String>,
    /// How long the call took.
    pub duration_ms: i64,
}

/// Counts of a run's messages by arm and status.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunCounts {
    /// (arm, status, reason, count).
    pub rows: Vec<(String, String, Option<String>, i64)>,
}

impl RunCounts {
    /// Sum over rows matching `arm` (None: all) and `status`.
    pub fn count(&self, arm: Option<&str>, status: &str) -> i64 {
        self.rows
            .iter()
            .filter(|(a, s, _, _)| arm.is_none_or(|x| x == a) && s == status)
            .map(|r| r.3)
            .sum()
    }
}

/// The database, as the engine needs it.
#[async_trait]
pub trait Store: Send + Sync {
    /// Creates or updates a campaign row; returns its id.
    async fn upsert_campaign(&self, campaign: &CampaignRecord, now: i64) -> StoreResult<i64>;
    /// Creates the run keyed by (campaign, scheduled instant), or returns the existing one.
    async fn create_run(
        &self,
        campaign_id: i64,
        scheduled_at: i64,
        now_at: i64,
        origin: &str,
        fingerprint: &str,
    ) -> StoreResult<RunRecord>;
    /// One keyset page of the audience: members with contact id above `after`, in id order.
    async fn audience_page(
        &self,
        filter: &Expr,
        now: i64,
        topic: Option<&str>,
        after: i64,
        limit: u32,
    ) -> StoreResult<Vec<AudienceMember>>;
    /// The highest contact id already planned in this run (to resume planning after a crash).
    async fn last_planned_contact(&self, run_id: i64) -> StoreResult<i64>;
    /// Inserts planned messages; a (run, contact, step) already there is left alone.
    async fn insert_planned(
        &self,
        run_id: i64,
        campaign_id: i64,
        rows: &[PlannedMessage],
        now: i64,
    ) -> StoreResult<()>;
    /// Ends planning: one message per address in the run (`duplicate_address`), state `running`.
    async fn finish_planning(&self, run_id: i64, now: i64) -> StoreResult<()>;
    /// Ends messages whose lease expired while `sending` as `unknown`; returns how many.
    /// (A claim that expires before `sending` needs nothing: it is claimable again.)
    async fn expire_leases(&self, now: i64) -> StoreResult<u64>;
    /// Claims up to `limit` due messages of running runs (optionally one run) under a lease.
    async fn claim_due(
        &self,
        owner: &str,
        run_id: Option<i64>,
        now: i64,
        lease_until: i64,
        limit: u32,
    ) -> StoreResult<Vec<ClaimedMessage>>;
    /// Marks claimed messages `sending`, just before their requests are written.
    async fn mark_sending(&self, ids: &[i64], now: i64) -> StoreResult<()>;
    /// The contacts, for rendering.
    async fn contacts(&self, ids: &[i64]) -> StoreResult<Vec<ContactView>>;
    /// Records outcomes, attempts and links in one transaction.
    async fn record_outcomes(&self, outcomes: &[Outcome], now: i64) -> StoreResult<()>;
    /// Marks a run done when nothing of it is planned or sending.
    async fn finish_run_if_drained(&self, run_id: i64, now: i64) -> StoreResult<bool>;
    /// Counts of the run's messages by arm, status and reason.
    async fn run_counts(&self, run_id: i64) -> StoreResult<RunCounts>;
}
