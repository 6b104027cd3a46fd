//! What the engine needs from the database, as a trait: `herald-storage`
//! implements it on SQLite and PostgreSQL. Bulk operations take and return
//! pages, so an audience of millions flows through bounded memory.

use std::collections::BTreeMap;

use async_trait::async_trait;
use herald_domain::config::{Campaign, HeraldConfig, Timezone};
use herald_domain::duration::Span;
use herald_domain::segment::{Expr, Lifecycle, Rfm};
use herald_domain::types::{Channel, MessageStatus};
use herald_templates::TemplateReads;
use serde_json::Value;

use crate::platform::PlatformFilter;

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
    /// Its goals, as attribution needs them; `None` without a goal.
    pub goal: Option<GoalRecord>,
}

impl CampaignRecord {
    /// The record of `campaign`.
    pub fn of(campaign: &Campaign) -> Self {
        Self {
            name: campaign.name.clone(),
            kind: campaign.kind.as_str().to_string(),
            topic: campaign.topic.clone(),
            fingerprint: campaign.assignment_fingerprint(),
            goal: GoalRecord::of(campaign),
        }
    }
}

/// A campaign's goals as the database keeps them, so that messages written
/// (planned, or moved by a rollout's release) are attributed to the goal
/// events already stored by the same rule as events arriving later (SPEC
/// section 5): a first message converts on a goal event in `(send_at,
/// send_at + within_ms]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoalRecord {
    /// The goal event.
    pub event: String,
    /// The window (`Campaign::goal_window_ms`: a series' spans its steps).
    pub within_ms: i64,
    /// Secondary goals, counted over the same window.
    pub secondary: Vec<String>,
}

impl GoalRecord {
    /// The goals of `campaign`; `None` without a goal (then its secondary
    /// goals have no window and are not counted either).
    pub fn of(campaign: &Campaign) -> Option<Self> {
        let goal = campaign.goal.as_ref()?;
        Some(Self {
            event: goal.event.clone(),
            within_ms: campaign.goal_window_ms()?,
            secondary: campaign.secondary_goals.clone(),
        })
    }
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
    /// Channels whose address (or the whole channel) is suppressed for this
    /// contact: bounces, complaints, opt-outs; nothing is sent there.
    pub suppressed: Vec<Channel>,
    /// Channels where the contact unsubscribed from marketing (SPEC section
    /// 4): marketing is not sent there, transactional messages still are.
    pub marketing_suppressed: Vec<Channel>,
    /// Unsubscribed from the campaign's topic.
    pub topic_opt_out: bool,
    /// The contact's IANA time zone, if known.
    pub timezone: Option<String>,
    /// The contact's most active local hour, when the campaign sends at it.
    pub best_hour: Option<u8>,
    /// Messages the contact already has (any campaign), newest first, for
    /// `reentry` and frequency caps; empty unless asked for.
    pub history: Vec<PastMessage>,
}

/// A message a contact already has: what `reentry` and frequency caps count.
#[derive(Debug, Clone, PartialEq)]
pub struct PastMessage {
    /// Its campaign's name.
    pub campaign: String,
    /// Its run's id.
    pub run_id: i64,
    /// Its channel (none for held-out and suppressed messages).
    pub channel: Option<Channel>,
    /// Its planned send time (ms).
    pub send_at: i64,
    /// Its status.
    pub status: MessageStatus,
    /// Whether its campaign is marketing (transactional messages count toward no cap).
    pub marketing: bool,
}

/// Which contacts an audience page may hold, besides matching the filter.
#[derive(Debug, Clone, PartialEq)]
pub enum Scope {
    /// The whole contact base (a scheduled run).
    All,
    /// Only these contacts (the contacts of a batch of triggering events).
    Contacts(Vec<i64>),
    /// Only the contacts who entered the campaign's segment at this run's pass.
    Entrants {
        /// The campaign's id.
        campaign_id: i64,
        /// The run of the segment-entry pass.
        run_id: i64,
    },
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
    /// CUPED's covariates (`[results] cuped`), on a contact's first message.
    pub pre: PrePeriod,
}

/// CUPED's covariates of one contact (issue 33): its same measures in the
/// window before its message was planned, stored on the message so the report
/// reads them in its scan. `None`: not measured (no CUPED, no goal, no
/// revenue event); a contact without history has `Some(false)` and `Some(0.0)`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PrePeriod {
    /// The goal event happened in the window.
    pub converted: Option<bool>,
    /// The sum of the revenue event's values in the window.
    pub revenue: Option<f64>,
    /// The sum of the goal event's values in the window: with `converted`,
    /// revenue per converting contact before the message.
    pub goal_revenue: Option<f64>,
}

/// What [`Store::pre_period`] reads: a campaign's goal and revenue events
/// over `[since, until)` (ms).
#[derive(Debug, Clone, PartialEq)]
pub struct PrePeriodSpec {
    /// The goal event, if the campaign has a goal.
    pub goal: Option<String>,
    /// `[results] revenue_event`.
    pub revenue: Option<String>,
    /// The window's start (inclusive).
    pub since: i64,
    /// Its end (exclusive): the planning instant.
    pub until: i64,
}

impl PrePeriodSpec {
    /// The window of `campaign`'s `[results] cuped` before `now`; `None`
    /// without CUPED (a campaign with CUPED has a goal or a revenue event:
    /// its config is refused otherwise).
    pub fn of(campaign: &Campaign, now: i64) -> Option<Self> {
        let cuped = campaign.results.as_ref()?.cuped?;
        let goal = campaign.goal.as_ref().map(|g| g.event.clone());
        let revenue = campaign.results.as_ref()?.revenue_event.clone();
        Some(Self {
            goal,
            revenue,
            since: now.saturating_sub(i64::from(cuped.days) * 86_400_000),
            until: now,
        })
    }

    /// The covariates of a contact whose history in the window is `found`
    /// ((goal happened, revenue, goal's revenue) as [`Store::pre_period`]
    /// returns; `None`: none).
    pub fn covariates(&self, found: Option<(bool, f64, f64)>) -> PrePeriod {
        let (converted, revenue, goal_revenue) = found.unwrap_or((false, 0.0, 0.0));
        PrePeriod {
            converted: self.goal.as_ref().map(|_| converted),
            revenue: self.revenue.as_ref().map(|_| revenue),
            goal_revenue: self.goal.as_ref().map(|_| goal_revenue),
        }
    }
}

/// Which rows of a page [`Store::insert_handed`] hands to a worker, and under which lease.
#[derive(Debug, Clone, Copy)]
pub struct Handed<'a> {
    /// One flag a row of the page: `true` is handed.
    pub rows: &'a [bool],
    /// The channels whose acceptance counts as delivery: a handed message on
    /// one of them is written `delivered`, any other `sent` (see [`Written`]).
    pub delivered_on_accept: &'a [Channel],
    /// The lease's owner.
    pub owner: &'a str,
    /// The lease's end (ms).
    pub until: i64,
}

/// An event that may trigger a campaign (or end one: `exit`).
#[derive(Debug, Clone, PartialEq)]
pub struct TriggerEvent {
    /// The event row's id: the trigger's identity in the message key.
    pub id: i64,
    /// Whose event.
    pub contact_id: i64,
    /// Its name.
    pub name: String,
    /// When it happened (ms).
    pub at: i64,
    /// When herald stored it (ms).
    pub received_at: i64,
}

/// Where a run stands for a worker draining it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunDrain {
    /// Nothing more will come: done, paused, cancelled, or gone.
    Over,
    /// Messages of it are still planned or sending.
    Pending,
    /// Its audience is still being planned: more messages will come.
    Planning,
}

/// A message planned because of one event.
#[derive(Debug, Clone, PartialEq)]
pub struct TriggeredMessage {
    /// The message.
    pub message: PlannedMessage,
    /// The triggering event's id.
    pub trigger_id: i64,
    /// The triggering event's instant (ms): an `exit` event after it cancels the message.
    pub trigger_at: i64,
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
    /// Series step (0: the campaign's own content; n: `[[steps]]` number n).
    pub step: i32,
    /// Attempts so far.
    pub attempts: i32,
    /// Planned send time (ms).
    pub send_at: i64,
    /// How the row was written in advance, if it was (a handed message):
    /// recording it writes only what differs.
    pub written: Option<Written>,
    /// Claimed ahead of its route's queue (a transactional campaign's
    /// message): not a position of the lane's keyset cursor.
    pub first: bool,
}

/// A handed message's row as the planner wrote it: already carrying the
/// outcome its send is expected to have, in a flight (one lease a batch).
/// The report counts it as that outcome while it is in the air; if the
/// flight's lease lapses first, the message ends `unknown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// The flight (batch) the message was handed in.
    pub flight: i64,
    /// The status written: `sent`, or `delivered` on a channel whose acceptance is delivery.
    pub status: MessageStatus,
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
    /// What templates see beyond the contact's own fields.
    pub personal: Personalisation,
}

/// A `top.EVENT.PROPERTY` a template reads: the contact's most frequent value of
/// `PROPERTY` among their `EVENT` events.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopKey {
    /// The event's name.
    pub event: String,
    /// The property of its `properties`.
    pub property: String,
}

/// What [`Store::contacts`] computes for templates (SPEC section 2, "Templates see").
#[derive(Debug, Clone, PartialEq)]
pub struct PersonalisationRequest {
    /// The instant it is computed at (ms); later events are ignored.
    pub now: i64,
    /// `top.*` and `best_hour` count events in `(now - window, now]` (`[personalisation] window`).
    pub window: Span,
    /// For contacts without a (valid) time zone: `[defaults] timezone`.
    pub default_timezone: Timezone,
    /// The `top.EVENT.PROPERTY` pairs the templates read; no other is fetched.
    pub top: Vec<TopKey>,
    /// The `(top "EVENT" "PROPERTY" N)` pairs the templates read, with the largest N.
    pub top_lists: BTreeMap<TopKey, usize>,
    /// RFM and lifecycle stage (one query over the contacts' purchases and activity).
    pub rfm_lifecycle: bool,
    /// The most active local hour (one query over the contacts' events).
    pub best_hour: bool,
}

impl PersonalisationRequest {
    /// Everything, with the `top` pairs given, at `now`, with the window and
    /// default time zone of `herald.toml` (previews and samples show it all).
    pub fn new(now: i64, herald: &HeraldConfig, top: Vec<TopKey>) -> Self {
        Self {
            now,
            window: herald.personalisation.window,
            default_timezone: herald.defaults.timezone,
            top,
            top_lists: BTreeMap::new(),
            rfm_lifecycle: true,
            best_hour: true,
        }
    }

    /// Only what `reads` names, what a campaign's templates print; `now` is 0
    /// until the caller sets it (a renderer builds this once, then stamps it).
    pub fn reads(herald: &HeraldConfig, reads: &TemplateReads) -> Self {
        let top = reads
            .top
            .iter()
            .map(|(event, property)| TopKey {
                event: event.clone(),
                property: property.clone(),
            })
            .collect();
        let top_lists = reads
            .top_lists
            .iter()
            .map(|((event, property), n)| {
                let key = TopKey {
                    event: event.clone(),
                    property: property.clone(),
                };
                (key, *n)
            })
            .collect();
        Self {
            rfm_lifecycle: reads.rfm || reads.lifecycle,
            best_hour: reads.best_hour,
            top_lists,
            ..Self::new(0, herald, top)
        }
    }

    /// Only each contact's best hour (planning a `send_time = "best_hour"` campaign).
    pub fn best_hour(now: i64, herald: &HeraldConfig) -> Self {
        Self {
            rfm_lifecycle: false,
            ..Self::new(now, herald, Vec::new())
        }
    }
}

/// One contact's personalisation data.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Personalisation {
    /// RFM scores and measures, as segments see them; `None` without a purchase.
    pub rfm: Option<Rfm>,
    /// Lifecycle stage (`None` only for a view made without a store).
    pub lifecycle: Option<Lifecycle>,
    /// The local hour (0..23) of most of the contact's events in the window; `None` without events.
    pub best_hour: Option<u8>,
    /// `top.EVENT.PROPERTY` values the contact has (a requested pair without a value is absent).
    pub top: BTreeMap<TopKey, Value>,
    /// `(top "EVENT" "PROPERTY" N)` values, most frequent first (a requested
    /// pair without a value is absent).
    pub top_lists: BTreeMap<TopKey, Vec<Value>>,
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
    /// Suppress this address from now on (hard bounce, unsubscribed number):
    /// (channel, address, the suppression's reason). The reason is fixed when
    /// the provider refuses, since a fallback rewrites the message's own.
    pub suppress_address: Option<(Channel, String, String)>,
    /// Move the message, planned again, to this channel and address: the
    /// fallback after a permanent failure (status `planned`).
    pub reroute: Option<(Channel, String)>,
    /// How the message's row was written in advance, if it was (see [`Written`]).
    pub written: Option<Written>,
}

impl Outcome {
    /// Whether the message ends as its row was written in advance: with this
    /// status, and no fallback or suppression to add. Only a provider id may
    /// be left to write.
    pub fn ends_as_written(&self) -> bool {
        self.written.is_some_and(|w| w.status == self.status)
            && self.reroute.is_none()
            && self.suppress_address.is_none()
    }

    /// Whether the row already says all this outcome would write (its
    /// attempt and links are still recorded).
    pub fn already_written(&self) -> bool {
        self.ends_as_written() && self.provider_id.is_none()
    }

    /// The flights `outcomes`' written messages were handed in, each once, ascending.
    pub fn flights(outcomes: &[Outcome]) -> Vec<i64> {
        let flights: std::collections::BTreeSet<i64> = outcomes
            .iter()
            .filter_map(|o| o.written.map(|w| w.flight))
            .collect();
        flights.into_iter().collect()
    }
}

/// One try at a provider.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    /// When (ms).
    pub at: i64,
    /// `accepted`, `transient`, `rate_limited`, `permanent`, `ambiguous`, `account_fault`, `render_error`.
    pub result: String,
    /// The provider's code.
    pub code: Option<String>,
    /// The provider's words.
    pub detail: Option<String>,
    /// How long the call took.
    pub duration_ms: i64,
}

/// Attempt results that are logged but not counted against the message's
/// attempts: nothing reached a provider (`render_error`), the provider
/// refused the sender's account, not the message (`account_fault`), or asked
/// us to slow down (`rate_limited`: the message did nothing wrong).
pub const UNCOUNTED_RESULTS: [&str; 3] = ["render_error", "account_fault", "rate_limited"];

impl AttemptRecord {
    /// Whether this attempt counts against the message's attempts (see [`UNCOUNTED_RESULTS`]).
    pub fn counts(&self) -> bool {
        !UNCOUNTED_RESULTS.contains(&self.result.as_str())
    }
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

/// Figures of one segment-entry pass ([`Store::entry_pass`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EntryPass {
    /// Contacts in the segment at this pass.
    pub members: u64,
    /// Members now who were not at the previous pass (none on a baseline pass).
    pub entrants: u64,
    /// Members at the previous pass who are not now.
    pub leavers: u64,
    /// The campaign's first pass: members are stored, nobody enters.
    pub baseline: bool,
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
    /// With `history_since`, each member's messages planned to be sent after it
    /// (statuses that count: planned, sending, sent, delivered, bounced, unknown, held_out).
    async fn audience_page(
        &self,
        filter: &Expr,
        now: i64,
        topic: Option<&str>,
        after: i64,
        limit: u32,
        history_since: Option<i64>,
    ) -> StoreResult<Vec<AudienceMember>> {
        self.audience_in(filter, now, topic, &Scope::All, after, limit, history_since)
            .await
    }
    /// [`Store::audience_page`] restricted to `scope`.
    #[allow(clippy::too_many_arguments)]
    async fn audience_in(
        &self,
        filter: &Expr,
        now: i64,
        topic: Option<&str>,
        scope: &Scope,
        after: i64,
        limit: u32,
        history_since: Option<i64>,
    ) -> StoreResult<Vec<AudienceMember>>;
    /// Takes (or renews) the right to plan `run_id` until `until`; false when another owner holds it.
    async fn claim_planning(
        &self,
        run_id: i64,
        owner: &str,
        until: i64,
        now: i64,
    ) -> StoreResult<bool>;
    /// The latest scheduled instant of any run of the campaign named `campaign`.
    async fn last_scheduled(&self, campaign: &str) -> StoreResult<Option<i64>>;
    /// The name of the campaign of run `run_id`.
    async fn run_campaign(&self, run_id: i64) -> StoreResult<Option<String>>;
    /// Runs of the campaign named `campaign` still in `planning` (a planner died).
    async fn unfinished_plans(&self, campaign: &str) -> StoreResult<Vec<RunRecord>>;
    /// The highest contact id already planned in this run (to resume planning after a crash).
    async fn last_planned_contact(&self, run_id: i64) -> StoreResult<i64>;
    /// Inserts planned messages while the run is still `planning` (none once it
    /// is cancelled); a (run, contact, step) already there is left alone.
    async fn insert_planned(
        &self,
        run_id: i64,
        campaign_id: i64,
        rows: &[PlannedMessage],
        now: i64,
    ) -> StoreResult<()>;
    /// [`Store::insert_planned`], except that the rows `handed.rows` marks
    /// are written as sent, in one flight under `handed`'s lease, in the same
    /// transaction (see [`Written`]): claimed as they are written, for a
    /// worker of this process ([`crate::handoff`]). A run paused in between
    /// gets them `planned`, so a paused run sends nothing. Returns the rows
    /// handed, as claimed messages.
    async fn insert_handed(
        &self,
        run_id: i64,
        campaign_id: i64,
        rows: &[PlannedMessage],
        handed: Handed<'_>,
        now: i64,
    ) -> StoreResult<Vec<ClaimedMessage>>;
    /// Which of `keys` (step, channel, address) a message of `run_id` to a
    /// contact before `before_contact` already holds (any status but
    /// `suppressed` and `held_out`): the run's earlier pages, for
    /// [`crate::plan::suppress_duplicate_addresses`].
    async fn addresses_taken(
        &self,
        run_id: i64,
        before_contact: i64,
        keys: &[(i32, Channel, &str)],
    ) -> StoreResult<std::collections::HashSet<crate::plan::AddressKey>>;
    /// Ends planning: state `running` (its messages were claimable since
    /// they were written, and each page's duplicate addresses decided then).
    async fn finish_planning(&self, run_id: i64) -> StoreResult<()>;
    /// Refreshes the database's statistics of the message table after a large
    /// plan, so the first claims read the queue index instead of the whole run.
    async fn refresh_message_statistics(&self) -> StoreResult<()> {
        Ok(())
    }
    /// Ends messages whose lease expired while `sending`, and the messages
    /// of flights whose lease expired that nothing touched since they were
    /// written, as `unknown`; returns how many.
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
    /// [`Store::claim_due`] from a keyset cursor: only messages after `after`
    /// in (send_at, id) order, so a worker never rescans what it already
    /// passed (on PostgreSQL, the dead index entries of messages already
    /// sent). `None` starts from the beginning. The default ignores the cursor.
    #[allow(clippy::too_many_arguments)]
    async fn claim_due_after(
        &self,
        owner: &str,
        run_id: Option<i64>,
        now: i64,
        lease_until: i64,
        limit: u32,
        after: Option<(i64, i64)>,
    ) -> StoreResult<Vec<ClaimedMessage>> {
        let _ = after;
        self.claim_due(owner, run_id, now, lease_until, limit).await
    }
    /// [`Store::claim_due_after`] and [`Store::mark_sending`] in one statement:
    /// the claimed messages are `sending` already. Their number is the same
    /// in-flight window (one batch a worker); the default takes two steps.
    #[allow(clippy::too_many_arguments)]
    async fn claim_sending_after(
        &self,
        owner: &str,
        run_id: Option<i64>,
        now: i64,
        lease_until: i64,
        limit: u32,
        after: Option<(i64, i64)>,
    ) -> StoreResult<Vec<ClaimedMessage>> {
        let mut claimed = self
            .claim_due_after(owner, run_id, now, lease_until, limit, after)
            .await?;
        let ids: Vec<i64> = claimed.iter().map(|m| m.id).collect();
        let marked: std::collections::HashSet<i64> = self
            .mark_sending(owner, &ids, now)
            .await?
            .into_iter()
            .collect();
        claimed.retain(|m| marked.contains(&m.id));
        Ok(claimed)
    }
    /// [`Store::claim_sending_after`] of one route's messages (a lane's):
    /// only messages on `channel`, so a throttled or blocked route's queue
    /// never holds another's; the messages of the `first` runs (the open
    /// transactional runs, [`Store::transactional_runs`], which the lane
    /// keeps and refreshes about once a second) come before the queue.
    /// Required: a default that ignored the filter would hand a lane other
    /// channels' messages.
    /// `platforms` leaves out (or, for a sub-route's probe, keeps only) the
    /// push messages whose token's platform has a blocked sub-route
    /// ([`crate::platform`]); [`PlatformFilter::Any`] joins nothing.
    #[allow(clippy::too_many_arguments)]
    async fn claim_lane(
        &self,
        owner: &str,
        run_id: Option<i64>,
        channel: Channel,
        first: &[i64],
        now: i64,
        lease_until: i64,
        limit: u32,
        after: Option<(i64, i64)>,
        platforms: &PlatformFilter,
    ) -> StoreResult<Vec<ClaimedMessage>>;
    /// The imported platform (`push_tokens.platform`) of those of `tokens`
    /// that are known: read only around a sub-route's block (FCM refused a
    /// token for its platform's credential), never on the common path.
    /// The default knows none (every token counts as unlabelled).
    async fn push_platforms(
        &self,
        tokens: &[String],
    ) -> StoreResult<Vec<(String, Option<String>)>> {
        let _ = tokens;
        Ok(Vec::new())
    }
    /// The runs of transactional campaigns still planning or sending, whose
    /// messages a lane claims before its route's marketing queue. The
    /// default knows none.
    async fn transactional_runs(&self) -> StoreResult<Vec<i64>> {
        Ok(Vec::new())
    }
    /// Writes the block of `route` (`None`: the route works again), for
    /// `herald status` to show. The default keeps nothing.
    async fn set_route_block(
        &self,
        route: &str,
        owner: &str,
        block: Option<&crate::health::Block>,
        now: i64,
    ) -> StoreResult<()> {
        let _ = (route, owner, block, now);
        Ok(())
    }
    /// The reason of a block of `route` that a provider's status callback
    /// reported after `since` (ms) (Twilio 30034/30007: the account is
    /// refused after the send was accepted); the lane blocks itself with it.
    async fn route_block_reported(&self, route: &str, since: i64) -> StoreResult<Option<String>> {
        let _ = (route, since);
        Ok(None)
    }
    /// Whether `herald runs resume` asked for a probe of `route` after `since` (ms).
    async fn route_probe_requested(&self, route: &str, since: i64) -> StoreResult<bool> {
        let _ = (route, since);
        Ok(false)
    }
    /// Marks claimed messages `sending`, just before their requests are written;
    /// returns the ids marked: only those `owner` still holds a live lease on.
    async fn mark_sending(&self, owner: &str, ids: &[i64], now: i64) -> StoreResult<Vec<i64>>;
    /// The contacts, for rendering, with the personalisation `want` asks for, computed
    /// for the whole list in a fixed number of queries (never one per contact).
    async fn contacts(
        &self,
        ids: &[i64],
        want: &PersonalisationRequest,
    ) -> StoreResult<Vec<ContactView>>;
    /// Records outcomes, attempts and links in one transaction. The flights
    /// of written messages ([`Written`]) are landed: their rows deleted, and
    /// a message whose row already says its outcome is not written again.
    /// When a flight is gone (its lease lapsed and its messages went
    /// `unknown`), every outcome of it is written, so the truth wins.
    async fn record_outcomes(&self, outcomes: &[Outcome], now: i64) -> StoreResult<()>;
    /// Marks a run done when it is planned and nothing of it is planned or sending.
    async fn finish_run_if_drained(&self, run_id: i64, now: i64) -> StoreResult<RunDrain>;
    /// A run's planned messages: (due now or being sent or retried, planned for later than `now`).
    async fn run_pending(&self, run_id: i64, now: i64) -> StoreResult<(i64, i64)>;
    /// Marks every running run done whose messages are all settled; returns their ids.
    async fn finish_drained_runs(&self, now: i64) -> StoreResult<Vec<i64>>;
    /// Counts of the run's messages by arm, status and reason.
    async fn run_counts(&self, run_id: i64) -> StoreResult<RunCounts>;

    /// The one open-ended run a triggered campaign's messages belong to, created
    /// `running` (its report is cut by date, `--since`/`--until`).
    async fn trigger_run(
        &self,
        campaign_id: i64,
        fingerprint: &str,
        now: i64,
    ) -> StoreResult<RunRecord>;
    /// Events named one of `names` with an id above `after`, in id order, at most `limit`.
    async fn events_after(
        &self,
        names: &[String],
        after: i64,
        limit: u32,
    ) -> StoreResult<Vec<TriggerEvent>>;
    /// The event id up to which every event was planned for the campaign; the first
    /// time, the newest event's (a new trigger reacts from now on, not to the history).
    async fn trigger_cursor(&self, campaign_id: i64, now: i64) -> StoreResult<i64>;
    /// Inserts triggered messages (one already there for its (run, contact, step,
    /// trigger) is left alone) and moves the campaign's cursor to `cursor`, in one
    /// transaction; returns how many were new.
    async fn insert_triggered(
        &self,
        run_id: i64,
        campaign_id: i64,
        rows: &[TriggeredMessage],
        cursor: i64,
        now: i64,
    ) -> StoreResult<u64>;
    /// Of `(contact, since)` pairs, those whose contact has an event named `event` after `since`.
    async fn exited(&self, event: &str, pairs: &[(i64, i64)]) -> StoreResult<Vec<(i64, i64)>>;
    /// Of the messages `ids`, those whose contact had an event named `event` after
    /// the message's trigger (or, for a scheduled run, after the run's instant).
    async fn exited_messages(&self, event: &str, ids: &[i64]) -> StoreResult<Vec<i64>>;
    /// Of the contacts `ids`, those that match `filter` at `now`.
    async fn matching(&self, filter: &Expr, ids: &[i64], now: i64) -> StoreResult<Vec<i64>>;
    /// Of the messages `ids`, those that already fell back once to another channel.
    async fn fell_back(&self, ids: &[i64]) -> StoreResult<Vec<i64>>;
    /// A segment-entry pass of campaign `campaign_id` for run `run_id`: evaluates `filter`
    /// at `now` over every contact not forgotten, diffs it against the membership stored at
    /// the previous pass, stores the new one and marks the entrants with `run_id` (what
    /// [`Scope::Entrants`] reads), in one transaction. The same `run_id` again changes
    /// nothing and returns the recorded figures; a campaign's first pass is a baseline.
    async fn entry_pass(
        &self,
        campaign_id: i64,
        run_id: i64,
        filter: &Expr,
        now: i64,
    ) -> StoreResult<EntryPass>;
    /// CUPED's history of `contacts` in `spec`'s window: for each contact with
    /// a goal or revenue event there, (the goal event happened, the sum of the
    /// revenue event's values, the sum of the goal event's values). Contacts
    /// without either are left out.
    async fn pre_period(
        &self,
        contacts: &[i64],
        spec: &PrePeriodSpec,
    ) -> StoreResult<std::collections::HashMap<i64, (bool, f64, f64)>> {
        let _ = (contacts, spec);
        Ok(std::collections::HashMap::new())
    }
}
