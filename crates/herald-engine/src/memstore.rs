//! The engine's test double: [`MemStore`], an in-memory [`Store`], so that
//! planning, dispatch, retries, leases, fallback and triggers are tested
//! without a database, under tokio's paused time. It keeps the trait's
//! contracts as `herald-storage` does on SQLite and PostgreSQL (a contract
//! test there runs one body against all three): claims under leases, in
//! (send_at, id) order after a cursor; `mark_sending` only under a live lease;
//! a lapsed `sending` claim ends `unknown`, never sent twice; handed rows
//! written as sent in a flight, landed by their outcomes, `unknown` when the
//! flight lapses untouched, and the late truth written over it; `sent` never
//! overwrites a later receipt; one message per (run, contact, step, trigger);
//! a run drains as the SQL store says.
//!
//! What it does not model: segment filters (the audience is a list of
//! contacts, [`MemStore::set_audience`], and the filter passed in is
//! ignored: the segment compiler is tested in `herald-storage`); goal
//! attribution, reports and receipts (opens, clicks, status callbacks:
//! nothing touches a message after it is written but the dispatcher);
//! personalisation beyond a contact's best hour; transactions across
//! concurrent writers beyond one lock per call.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use herald_domain::segment::Expr;
use herald_domain::types::{Channel, MessageStatus};
use serde_json::Value;

use crate::health::Block;
use crate::plan::AddressKey;
use crate::platform::{PlatformFilter, PushPlatform};
use crate::rollout::WAITING_ARM;
use crate::store::*;

/// The reason a lapsed `sending` claim (or flight) ends `unknown` with, as the SQL store words it.
pub const LAPSED: &str = "the worker stopped while sending; not resent, to avoid a duplicate";

/// The suppression reason of a marketing unsubscribe (herald-storage's
/// `tracking::MARKETING_UNSUBSCRIBE`): it stops marketing only.
pub const MARKETING_UNSUBSCRIBE: &str = "unsubscribe";

/// A contact as the memstore keeps it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MemContact {
    /// The app's id.
    pub external_id: String,
    /// Email address.
    pub email: Option<String>,
    /// Phone (E.164).
    pub phone: Option<String>,
    /// A push token.
    pub push_token: Option<String>,
    /// The token's imported platform (`ios`, `web`, `android`).
    pub push_platform: Option<String>,
    /// Email consent as stored.
    pub consent_email: Option<bool>,
    /// SMS consent as stored.
    pub consent_sms: Option<bool>,
    /// Push consent as stored.
    pub consent_push: Option<bool>,
    /// IANA time zone.
    pub timezone: Option<String>,
    /// Locale.
    pub locale: Option<String>,
    /// Attributes, as templates see them.
    pub attrs: Value,
    /// Tags.
    pub tags: Vec<String>,
    /// Topics the contact unsubscribed from.
    pub topic_opt_outs: Vec<String>,
    /// The most active local hour, as [`Store::contacts`] reports it.
    pub best_hour: Option<u8>,
    /// Forgotten (erased): in no audience, no view.
    pub forgotten: bool,
}

impl MemContact {
    /// A contact `external_id` with an email address and nothing else.
    pub fn email(external_id: &str, email: &str) -> Self {
        Self {
            external_id: external_id.into(),
            email: Some(email.into()),
            attrs: Value::Object(Default::default()),
            ..Self::default()
        }
    }
}

/// A suppression row: a channel (`None`: any) for an address or a contact,
/// or a contact's topic.
#[derive(Debug, Clone, PartialEq)]
pub struct MemSuppression {
    /// The channel; `None` is every channel.
    pub channel: Option<Channel>,
    /// The address suppressed, if by address.
    pub address: Option<String>,
    /// The contact suppressed, if by contact.
    pub contact_id: Option<i64>,
    /// A topic: only that topic's marketing stops.
    pub topic: Option<String>,
    /// Why ([`MARKETING_UNSUBSCRIBE`] stops marketing only).
    pub reason: String,
}

/// A message row.
#[derive(Debug, Clone, PartialEq)]
pub struct MemMessage {
    /// Its id.
    pub id: i64,
    /// Its run.
    pub run_id: i64,
    /// Its campaign.
    pub campaign_id: i64,
    /// Its contact.
    pub contact_id: i64,
    /// Series step.
    pub step: i32,
    /// The triggering event (0: none).
    pub trigger_id: i64,
    /// The triggering event's instant.
    pub trigger_at: Option<i64>,
    /// Arm.
    pub arm: String,
    /// Channel.
    pub channel: Option<Channel>,
    /// Address.
    pub address: Option<String>,
    /// Planned send time (ms).
    pub send_at: i64,
    /// Status.
    pub status: MessageStatus,
    /// Why.
    pub reason: Option<String>,
    /// The provider's id.
    pub provider_id: Option<String>,
    /// Counted attempts.
    pub attempts: i32,
    /// A retry's time: not claimable before.
    pub not_before: Option<i64>,
    /// The lease's owner.
    pub lease_owner: Option<String>,
    /// The lease's end (ms).
    pub lease_until: Option<i64>,
    /// The channel it fell back from, once.
    pub fallback_from: Option<Channel>,
    /// When it was accepted.
    pub sent_at: Option<i64>,
    /// When it was delivered.
    pub delivered_at: Option<i64>,
    /// Last written (ms).
    pub updated_at: i64,
    /// CUPED's covariates.
    pub pre: PrePeriod,
}

/// A run row.
#[derive(Debug, Clone, PartialEq)]
pub struct MemRun {
    /// Its id.
    pub id: i64,
    /// Its campaign.
    pub campaign_id: i64,
    /// The scheduled instant (its key with the campaign).
    pub scheduled_at: i64,
    /// The audience snapshot instant.
    pub now_at: i64,
    /// `planning`, `running`, `paused`, `done`, `cancelled`.
    pub state: String,
    /// `schedule`, `manual`, `trigger`...
    pub origin: String,
    /// The planner holding it.
    pub planner: Option<String>,
    /// Until when.
    pub planner_until: Option<i64>,
}

/// A flight: handed rows written as sent under one lease.
#[derive(Debug, Clone, PartialEq)]
struct Flight {
    run_id: i64,
    lease_until: i64,
    written_at: i64,
    ids: Vec<i64>,
}

#[derive(Debug, Clone)]
struct MemEvent {
    id: i64,
    contact_id: i64,
    name: String,
    at: i64,
    received_at: i64,
    value: Option<f64>,
}

#[derive(Debug, Clone, Default)]
struct EntryState {
    members: BTreeSet<i64>,
    last_run: Option<i64>,
    figures: EntryPass,
}

#[derive(Debug, Default)]
struct State {
    next_id: i64,
    campaigns: BTreeMap<i64, CampaignRecord>,
    runs: BTreeMap<i64, MemRun>,
    contacts: BTreeMap<i64, MemContact>,
    audience: Option<BTreeSet<i64>>,
    messages: BTreeMap<i64, MemMessage>,
    flights: BTreeMap<i64, Flight>,
    attempts: Vec<(i64, AttemptRecord)>,
    links: BTreeMap<(i64, i32), LinkRecord>,
    suppressions: Vec<MemSuppression>,
    invalid_tokens: HashSet<String>,
    events: BTreeMap<i64, MemEvent>,
    cursors: HashMap<i64, i64>,
    entry: HashMap<i64, EntryState>,
    entrants: HashMap<(i64, i64), BTreeSet<i64>>,
    blocks: HashMap<String, Block>,
    reported: Vec<(String, String, i64)>,
    probes: Vec<(String, i64)>,
    failing_records: u32,
}

impl State {
    fn id(&mut self) -> i64 {
        self.next_id += 1;
        self.next_id
    }

    fn campaign_of_run(&self, run_id: i64) -> Option<&CampaignRecord> {
        let run = self.runs.get(&run_id)?;
        self.campaigns.get(&run.campaign_id)
    }

    fn in_audience(&self, id: i64) -> bool {
        self.contacts.get(&id).is_some_and(|c| !c.forgotten)
            && self.audience.as_ref().is_none_or(|a| a.contains(&id))
    }

    fn member(&self, id: i64, c: &MemContact, topic: Option<&str>) -> AudienceMember {
        let mut suppressed = Vec::new();
        let mut marketing_suppressed = Vec::new();
        for channel in [Channel::Email, Channel::Sms, Channel::Push] {
            let address = match channel {
                Channel::Email => c.email.as_deref(),
                Channel::Sms => c.phone.as_deref(),
                Channel::Push => None,
            };
            let mut worst = 0;
            for s in &self.suppressions {
                let on = s.topic.is_none() && s.channel.is_none_or(|x| x == channel);
                let whom = s.contact_id == Some(id)
                    || (address.is_some() && s.address.as_deref() == address);
                if on && whom {
                    worst = worst.max(if s.reason == MARKETING_UNSUBSCRIBE {
                        1
                    } else {
                        2
                    });
                }
            }
            match worst {
                2 => suppressed.push(channel),
                1 => marketing_suppressed.push(channel),
                _ => {}
            }
        }
        let topic_opt_out = topic.is_some_and(|t| {
            c.topic_opt_outs.iter().any(|x| x == t)
                || self
                    .suppressions
                    .iter()
                    .any(|s| s.contact_id == Some(id) && s.topic.as_deref() == Some(t))
        });
        AudienceMember {
            contact_id: id,
            external_id: c.external_id.clone(),
            email: c.email.clone(),
            phone: c.phone.clone(),
            push_token: c
                .push_token
                .clone()
                .filter(|t| !self.invalid_tokens.contains(t)),
            consent_email: c.consent_email,
            consent_sms: c.consent_sms,
            consent_push: c.consent_push,
            suppressed,
            marketing_suppressed,
            topic_opt_out,
            timezone: c.timezone.clone(),
            best_hour: None,
            history: Vec::new(),
        }
    }

    fn history(&self, contact_id: i64, since: i64) -> Vec<PastMessage> {
        let mut out: Vec<PastMessage> = self
            .messages
            .values()
            .filter(|m| m.contact_id == contact_id && m.send_at > since)
            .filter(|m| {
                matches!(
                    m.status,
                    MessageStatus::Planned
                        | MessageStatus::Sending
                        | MessageStatus::Sent
                        | MessageStatus::Delivered
                        | MessageStatus::Bounced
                        | MessageStatus::Unknown
                        | MessageStatus::HeldOut
                )
            })
            .filter_map(|m| {
                let c = self.campaigns.get(&m.campaign_id)?;
                Some(PastMessage {
                    campaign: c.name.clone(),
                    run_id: m.run_id,
                    channel: m.channel,
                    send_at: m.send_at,
                    status: m.status,
                    marketing: c.kind == "marketing",
                })
            })
            .collect();
        out.sort_by_key(|p| std::cmp::Reverse(p.send_at));
        out
    }

    fn platform(&self, token: &str) -> Option<PushPlatform> {
        let label = self
            .contacts
            .values()
            .find(|c| c.push_token.as_deref() == Some(token))
            .and_then(|c| c.push_platform.as_deref());
        PushPlatform::of(label)
    }

    /// Inserts one message unless its (run, contact, step, trigger) is
    /// there; `handed`: written as that status (the run permitting).
    /// Returns its id when inserted.
    fn insert(
        &mut self,
        run_id: i64,
        campaign_id: i64,
        m: &PlannedMessage,
        trigger: Option<(i64, i64)>,
        handed: Option<MessageStatus>,
        now: i64,
    ) -> Option<i64> {
        let state = self.runs.get(&run_id)?.state.clone();
        // Open runs only: a cancelled (or done) run takes no more messages.
        if !matches!(state.as_str(), "planning" | "running" | "paused") {
            return None;
        }
        let trigger_id = trigger.map_or(0, |t| t.0);
        let taken = self.messages.values().any(|x| {
            x.run_id == run_id
                && x.contact_id == m.contact_id
                && x.step == m.step
                && x.trigger_id == trigger_id
        });
        if taken {
            return None;
        }
        // A paused run's handed rows are written planned: it sends nothing.
        let live = state != "paused";
        let written = handed.filter(|_| live);
        let id = self.id();
        self.messages.insert(
            id,
            MemMessage {
                id,
                run_id,
                campaign_id,
                contact_id: m.contact_id,
                step: m.step,
                trigger_id,
                trigger_at: trigger.map(|t| t.1),
                arm: m.arm.clone(),
                channel: m.channel,
                address: m.address.clone(),
                send_at: m.send_at,
                status: written.unwrap_or(if handed.is_some() {
                    MessageStatus::Planned
                } else {
                    m.status
                }),
                reason: m.reason.clone(),
                provider_id: None,
                attempts: i32::from(written.is_some()),
                not_before: None,
                lease_owner: None,
                lease_until: None,
                fallback_from: None,
                sent_at: written.map(|_| now),
                delivered_at: written
                    .filter(|s| *s == MessageStatus::Delivered)
                    .map(|_| now),
                updated_at: now,
                pre: m.pre,
            },
        );
        Some(id)
    }

    #[allow(clippy::too_many_arguments)]
    fn claim(
        &mut self,
        owner: &str,
        run_id: Option<i64>,
        now: i64,
        lease_until: i64,
        limit: u32,
        after: Option<(i64, i64)>,
        sending: bool,
        channel: Option<Channel>,
        runs: Option<&[i64]>,
        platforms: &PlatformFilter,
    ) -> Vec<ClaimedMessage> {
        let refused: HashSet<i64> = match platforms {
            PlatformFilter::Refused(_) => self
                .attempts
                .iter()
                .filter(|(_, a)| a.result == "account_fault")
                .map(|(id, _)| *id)
                .collect(),
            _ => HashSet::new(),
        };
        let mut due: Vec<(i64, i64)> = self
            .messages
            .values()
            .filter(|m| {
                m.status == MessageStatus::Planned
                    && m.arm != WAITING_ARM
                    && self
                        .runs
                        .get(&m.run_id)
                        .is_some_and(|r| matches!(r.state.as_str(), "planning" | "running"))
                    && m.send_at <= now
                    && m.not_before.is_none_or(|t| t <= now)
                    && m.lease_until.is_none_or(|t| t < now)
                    && run_id.is_none_or(|r| r == m.run_id)
                    && channel.is_none_or(|c| m.channel == Some(c))
                    && runs.is_none_or(|rs| rs.contains(&m.run_id))
                    && after.is_none_or(|a| (m.send_at, m.id) > a)
                    // A row without a channel or address is never sendable:
                    // left alone rather than leased and skipped.
                    && m.channel.is_some()
                    && m.address.is_some()
            })
            .filter(|m| match platforms {
                PlatformFilter::Any => true,
                // As the SQL store: the class of the message's address as a token.
                f => {
                    let p = self.platform(m.address.as_deref().unwrap_or_default());
                    f.admits(p)
                        && (!matches!(f, PlatformFilter::Refused(_)) || refused.contains(&m.id))
                }
            })
            .map(|m| (m.send_at, m.id))
            .collect();
        due.sort_unstable();
        due.truncate(limit as usize);
        let mut out = Vec::with_capacity(due.len());
        for (_, id) in due {
            let Some(m) = self.messages.get_mut(&id) else {
                continue;
            };
            m.lease_owner = Some(owner.to_string());
            m.lease_until = Some(lease_until);
            if sending {
                m.status = MessageStatus::Sending;
                m.updated_at = now;
            }
            let (Some(channel), Some(address)) = (m.channel, m.address.clone()) else {
                continue;
            };
            out.push(ClaimedMessage {
                id: m.id,
                run_id: m.run_id,
                contact_id: m.contact_id,
                arm: m.arm.clone(),
                channel,
                address,
                step: m.step,
                attempts: m.attempts,
                send_at: m.send_at,
                written: None,
                first: runs.is_some(),
            });
        }
        out
    }

    fn pending(&self, run_id: i64) -> bool {
        self.messages.values().any(|m| {
            m.run_id == run_id
                && matches!(m.status, MessageStatus::Planned | MessageStatus::Sending)
        }) || self.flights.values().any(|f| f.run_id == run_id)
    }
}

/// An in-memory [`Store`]: see the module's documentation for what it keeps and what it does not.
#[derive(Debug, Default)]
pub struct MemStore {
    state: Mutex<State>,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a contact; returns its id.
    pub fn add_contact(&self, contact: MemContact) -> i64 {
        let mut s = self.lock();
        let id = s.id();
        s.contacts.insert(id, contact);
        id
    }

    /// Changes a contact (its consent, its address...).
    pub fn edit_contact(&self, id: i64, edit: impl FnOnce(&mut MemContact)) {
        if let Some(c) = self.lock().contacts.get_mut(&id) {
            edit(c);
        }
    }

    /// Who matches every segment from now on (`None`: every contact not
    /// forgotten). The memstore evaluates no filter: this list stands for
    /// every audience, `where` and segment (see the module's documentation).
    pub fn set_audience(&self, ids: Option<&[i64]>) {
        self.lock().audience = ids.map(|ids| ids.iter().copied().collect());
    }

    /// Stores an event; returns its id.
    pub fn add_event(&self, contact_id: i64, name: &str, at: i64, received_at: i64) -> i64 {
        self.add_event_valued(contact_id, name, at, received_at, None)
    }

    /// Stores an event with a value (a purchase's revenue); returns its id.
    pub fn add_event_valued(
        &self,
        contact_id: i64,
        name: &str,
        at: i64,
        received_at: i64,
        value: Option<f64>,
    ) -> i64 {
        let mut s = self.lock();
        let id = s.id();
        s.events.insert(
            id,
            MemEvent {
                id,
                contact_id,
                name: name.into(),
                at,
                received_at,
                value,
            },
        );
        id
    }

    /// Adds a suppression.
    pub fn suppress(&self, suppression: MemSuppression) {
        self.lock().suppressions.push(suppression);
    }

    /// The suppressions, oldest first.
    pub fn suppressions(&self) -> Vec<MemSuppression> {
        self.lock().suppressions.clone()
    }

    /// Whether a provider's refusal invalidated the push token `token`.
    pub fn token_invalid(&self, token: &str) -> bool {
        self.lock().invalid_tokens.contains(token)
    }

    /// The message `id`.
    pub fn message(&self, id: i64) -> Option<MemMessage> {
        self.lock().messages.get(&id).cloned()
    }

    /// The messages of run `run_id`, by id.
    pub fn messages(&self, run_id: i64) -> Vec<MemMessage> {
        self.lock()
            .messages
            .values()
            .filter(|m| m.run_id == run_id)
            .cloned()
            .collect()
    }

    /// The attempts logged for message `id`, in order.
    pub fn attempts(&self, id: i64) -> Vec<AttemptRecord> {
        self.lock()
            .attempts
            .iter()
            .filter(|(m, _)| *m == id)
            .map(|(_, a)| a.clone())
            .collect()
    }

    /// The links stored for message `id`.
    pub fn links(&self, id: i64) -> Vec<LinkRecord> {
        self.lock()
            .links
            .range((id, i32::MIN)..=(id, i32::MAX))
            .map(|(_, l)| l.clone())
            .collect()
    }

    /// The run `id`.
    pub fn run(&self, id: i64) -> Option<MemRun> {
        self.lock().runs.get(&id).cloned()
    }

    /// Sets a run's state (`herald runs pause`, `cancel`, `resume`).
    pub fn set_run_state(&self, id: i64, state: &str) {
        if let Some(r) = self.lock().runs.get_mut(&id) {
            r.state = state.into();
        }
    }

    /// Flights still in the air (written, not landed, not lapsed).
    pub fn flights(&self) -> usize {
        self.lock().flights.len()
    }

    /// The block of `route` as last written for `herald status`.
    pub fn route_block(&self, route: &str) -> Option<Block> {
        self.lock().blocks.get(route).cloned()
    }

    /// A provider's status callback reports `route` blocked at `at` (Twilio 30034).
    pub fn report_route_block(&self, route: &str, reason: &str, at: i64) {
        self.lock().reported.push((route.into(), reason.into(), at));
    }

    /// `herald runs resume` asks for a probe of `route` at `at`.
    pub fn request_probe(&self, route: &str, at: i64) {
        self.lock().probes.push((route.into(), at));
    }

    /// The next `n` calls of [`Store::record_outcomes`] fail, as a database
    /// that went away: the dispatcher must keep its outcomes and try again.
    pub fn fail_records(&self, n: u32) {
        self.lock().failing_records = n;
    }
}

fn err(what: impl Into<String>) -> StoreError {
    StoreError(what.into())
}

#[async_trait]
impl Store for MemStore {
    async fn upsert_campaign(&self, campaign: &CampaignRecord, _now: i64) -> StoreResult<i64> {
        let mut s = self.lock();
        let found = s
            .campaigns
            .iter()
            .find(|(_, c)| c.name == campaign.name)
            .map(|(id, _)| *id);
        let id = match found {
            Some(id) => id,
            None => s.id(),
        };
        s.campaigns.insert(id, campaign.clone());
        Ok(id)
    }

    async fn create_run(
        &self,
        campaign_id: i64,
        scheduled_at: i64,
        now_at: i64,
        origin: &str,
        _fingerprint: &str,
    ) -> StoreResult<RunRecord> {
        let mut s = self.lock();
        if let Some(r) = s
            .runs
            .values()
            .find(|r| r.campaign_id == campaign_id && r.scheduled_at == scheduled_at)
        {
            return Ok(RunRecord {
                id: r.id,
                campaign_id,
                now_at: r.now_at,
                state: r.state.clone(),
                created: false,
            });
        }
        let id = s.id();
        s.runs.insert(
            id,
            MemRun {
                id,
                campaign_id,
                scheduled_at,
                now_at,
                state: "planning".into(),
                origin: origin.into(),
                planner: None,
                planner_until: None,
            },
        );
        Ok(RunRecord {
            id,
            campaign_id,
            now_at,
            state: "planning".into(),
            created: true,
        })
    }

    async fn audience_in(
        &self,
        _filter: &Expr,
        _now: i64,
        topic: Option<&str>,
        scope: &Scope,
        after: i64,
        limit: u32,
        history_since: Option<i64>,
    ) -> StoreResult<Vec<AudienceMember>> {
        let s = self.lock();
        let empty = BTreeSet::new();
        let entrants = match scope {
            Scope::Entrants {
                campaign_id,
                run_id,
            } => Some(s.entrants.get(&(*campaign_id, *run_id)).unwrap_or(&empty)),
            _ => None,
        };
        let mut out = Vec::new();
        for (&id, c) in s.contacts.range(after + 1..) {
            if out.len() >= limit as usize {
                break;
            }
            let scoped = match scope {
                Scope::All => true,
                Scope::Contacts(ids) => ids.contains(&id),
                Scope::Entrants { .. } => entrants.is_some_and(|e| e.contains(&id)),
            };
            if !scoped || !s.in_audience(id) {
                continue;
            }
            let mut m = s.member(id, c, topic);
            if let Some(since) = history_since {
                m.history = s.history(id, since);
            }
            out.push(m);
        }
        Ok(out)
    }

    async fn claim_planning(
        &self,
        run_id: i64,
        owner: &str,
        until: i64,
        now: i64,
    ) -> StoreResult<bool> {
        let mut s = self.lock();
        let Some(r) = s.runs.get_mut(&run_id) else {
            return Ok(false);
        };
        let free = r.planner.is_none()
            || r.planner.as_deref() == Some(owner)
            || r.planner_until.is_some_and(|t| t < now);
        if r.state != "planning" || !free {
            return Ok(false);
        }
        r.planner = Some(owner.into());
        r.planner_until = Some(until);
        Ok(true)
    }

    async fn last_scheduled(&self, campaign: &str) -> StoreResult<Option<i64>> {
        let s = self.lock();
        Ok(s.runs
            .values()
            .filter(|r| r.origin == "schedule")
            .filter(|r| {
                s.campaigns
                    .get(&r.campaign_id)
                    .is_some_and(|c| c.name == campaign)
            })
            .map(|r| r.scheduled_at)
            .max())
    }

    async fn run_campaign(&self, run_id: i64) -> StoreResult<Option<String>> {
        Ok(self.lock().campaign_of_run(run_id).map(|c| c.name.clone()))
    }

    async fn unfinished_plans(&self, campaign: &str) -> StoreResult<Vec<RunRecord>> {
        let s = self.lock();
        Ok(s.runs
            .values()
            .filter(|r| r.state == "planning")
            .filter(|r| {
                s.campaigns
                    .get(&r.campaign_id)
                    .is_some_and(|c| c.name == campaign)
            })
            .map(|r| RunRecord {
                id: r.id,
                campaign_id: r.campaign_id,
                now_at: r.now_at,
                state: r.state.clone(),
                created: false,
            })
            .collect())
    }

    async fn last_planned_contact(&self, run_id: i64) -> StoreResult<i64> {
        Ok(self
            .lock()
            .messages
            .values()
            .filter(|m| m.run_id == run_id)
            .map(|m| m.contact_id)
            .max()
            .unwrap_or(0))
    }

    async fn insert_planned(
        &self,
        run_id: i64,
        campaign_id: i64,
        rows: &[PlannedMessage],
        now: i64,
    ) -> StoreResult<()> {
        let mut s = self.lock();
        for m in rows {
            s.insert(run_id, campaign_id, m, None, None, now);
        }
        Ok(())
    }

    async fn insert_handed(
        &self,
        run_id: i64,
        campaign_id: i64,
        rows: &[PlannedMessage],
        handed: Handed<'_>,
        now: i64,
    ) -> StoreResult<Vec<ClaimedMessage>> {
        let mut s = self.lock();
        let mut claimed = Vec::new();
        for (i, m) in rows.iter().enumerate() {
            let hand = handed.rows.get(i) == Some(&true);
            let status = hand.then(|| match m.channel {
                Some(c) if handed.delivered_on_accept.contains(&c) => MessageStatus::Delivered,
                _ => MessageStatus::Sent,
            });
            let Some(id) = s.insert(run_id, campaign_id, m, None, status, now) else {
                continue;
            };
            let row = &s.messages[&id];
            if let Some(status) = status.filter(|s| *s == row.status) {
                claimed.push((id, m, status));
            }
        }
        if claimed.is_empty() {
            return Ok(Vec::new());
        }
        let flight = s.id();
        s.flights.insert(
            flight,
            Flight {
                run_id,
                lease_until: handed.until,
                written_at: now,
                ids: claimed.iter().map(|c| c.0).collect(),
            },
        );
        let mut out: Vec<ClaimedMessage> = claimed
            .into_iter()
            .filter_map(|(id, m, status)| {
                Some(ClaimedMessage {
                    id,
                    run_id,
                    contact_id: m.contact_id,
                    arm: m.arm.clone(),
                    channel: m.channel?,
                    address: m.address.clone()?,
                    step: m.step,
                    attempts: 0,
                    send_at: m.send_at,
                    written: Some(Written { flight, status }),
                    first: false,
                })
            })
            .collect();
        out.sort_by_key(|m| (m.send_at, m.id));
        Ok(out)
    }

    async fn addresses_taken(
        &self,
        run_id: i64,
        before_contact: i64,
        keys: &[(i32, Channel, &str)],
    ) -> StoreResult<HashSet<AddressKey>> {
        let wanted: HashSet<(i32, Channel, &str)> = keys.iter().copied().collect();
        let s = self.lock();
        Ok(s.messages
            .values()
            .filter(|m| {
                m.run_id == run_id
                    && m.contact_id < before_contact
                    && !matches!(m.status, MessageStatus::Suppressed | MessageStatus::HeldOut)
            })
            .filter_map(|m| {
                let (c, a) = (m.channel?, m.address.as_deref()?);
                wanted
                    .contains(&(m.step, c, a))
                    .then(|| (m.step, c, a.to_string()))
            })
            .collect())
    }

    async fn finish_planning(&self, run_id: i64) -> StoreResult<()> {
        if let Some(r) = self.lock().runs.get_mut(&run_id)
            && r.state == "planning"
        {
            r.state = "running".into();
        }
        Ok(())
    }

    async fn expire_leases(&self, now: i64) -> StoreResult<u64> {
        let mut s = self.lock();
        let mut ended = 0;
        for m in s.messages.values_mut() {
            if m.status == MessageStatus::Sending && m.lease_until.is_some_and(|t| t < now) {
                m.status = MessageStatus::Unknown;
                m.reason = Some(LAPSED.into());
                m.lease_owner = None;
                m.lease_until = None;
                m.updated_at = now;
                ended += 1;
            }
        }
        let lapsed: Vec<i64> = s
            .flights
            .iter()
            .filter(|(_, f)| f.lease_until < now)
            .map(|(id, _)| *id)
            .collect();
        for id in lapsed {
            let Some(f) = s.flights.remove(&id) else {
                continue;
            };
            for mid in f.ids {
                // Only what nothing touched since it was written (a receipt would have).
                if let Some(m) = s.messages.get_mut(&mid)
                    && matches!(m.status, MessageStatus::Sent | MessageStatus::Delivered)
                    && m.updated_at == f.written_at
                {
                    m.status = MessageStatus::Unknown;
                    m.reason = Some(LAPSED.into());
                    m.sent_at = None;
                    m.delivered_at = None;
                    m.updated_at = now;
                    ended += 1;
                }
            }
        }
        Ok(ended)
    }

    async fn claim_due(
        &self,
        owner: &str,
        run_id: Option<i64>,
        now: i64,
        lease_until: i64,
        limit: u32,
    ) -> StoreResult<Vec<ClaimedMessage>> {
        self.claim_due_after(owner, run_id, now, lease_until, limit, None)
            .await
    }

    async fn claim_due_after(
        &self,
        owner: &str,
        run_id: Option<i64>,
        now: i64,
        lease_until: i64,
        limit: u32,
        after: Option<(i64, i64)>,
    ) -> StoreResult<Vec<ClaimedMessage>> {
        Ok(self.lock().claim(
            owner,
            run_id,
            now,
            lease_until,
            limit,
            after,
            false,
            None,
            None,
            &PlatformFilter::Any,
        ))
    }

    async fn claim_sending_after(
        &self,
        owner: &str,
        run_id: Option<i64>,
        now: i64,
        lease_until: i64,
        limit: u32,
        after: Option<(i64, i64)>,
    ) -> StoreResult<Vec<ClaimedMessage>> {
        Ok(self.lock().claim(
            owner,
            run_id,
            now,
            lease_until,
            limit,
            after,
            true,
            None,
            None,
            &PlatformFilter::Any,
        ))
    }

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
    ) -> StoreResult<Vec<ClaimedMessage>> {
        let first: Vec<i64> = first
            .iter()
            .copied()
            .filter(|r| run_id.is_none_or(|id| id == *r))
            .collect();
        let mut s = self.lock();
        let mut out = if first.is_empty() {
            Vec::new()
        } else {
            s.claim(
                owner,
                run_id,
                now,
                lease_until,
                limit,
                None,
                true,
                Some(channel),
                Some(&first),
                platforms,
            )
        };
        let room = limit.saturating_sub(out.len() as u32);
        if room > 0 {
            out.extend(s.claim(
                owner,
                run_id,
                now,
                lease_until,
                room,
                after,
                true,
                Some(channel),
                None,
                platforms,
            ));
        }
        Ok(out)
    }

    async fn push_platforms(
        &self,
        tokens: &[String],
    ) -> StoreResult<Vec<(String, Option<String>)>> {
        let s = self.lock();
        Ok(s.contacts
            .values()
            .filter_map(|c| Some((c.push_token.clone()?, c.push_platform.clone())))
            .filter(|(t, _)| tokens.contains(t))
            .collect())
    }

    async fn transactional_runs(&self) -> StoreResult<Vec<i64>> {
        let s = self.lock();
        Ok(s.runs
            .values()
            .filter(|r| matches!(r.state.as_str(), "planning" | "running"))
            .filter(|r| {
                s.campaigns
                    .get(&r.campaign_id)
                    .is_some_and(|c| c.kind == "transactional")
            })
            .map(|r| r.id)
            .collect())
    }

    async fn set_route_block(
        &self,
        route: &str,
        _owner: &str,
        block: Option<&Block>,
        _now: i64,
    ) -> StoreResult<()> {
        let mut s = self.lock();
        match block {
            Some(b) => {
                s.blocks.insert(route.into(), b.clone());
            }
            None => {
                s.blocks.remove(route);
            }
        }
        Ok(())
    }

    async fn route_block_reported(&self, route: &str, since: i64) -> StoreResult<Option<String>> {
        Ok(self
            .lock()
            .reported
            .iter()
            .rev()
            .find(|(r, _, at)| r == route && *at > since)
            .map(|(_, why, _)| why.clone()))
    }

    async fn route_probe_requested(&self, route: &str, since: i64) -> StoreResult<bool> {
        Ok(self
            .lock()
            .probes
            .iter()
            .any(|(r, at)| r == route && *at > since))
    }

    async fn mark_sending(&self, owner: &str, ids: &[i64], now: i64) -> StoreResult<Vec<i64>> {
        let mut s = self.lock();
        let mut out = Vec::new();
        for id in ids {
            if let Some(m) = s.messages.get_mut(id)
                && m.status == MessageStatus::Planned
                && m.lease_owner.as_deref() == Some(owner)
                && m.lease_until.is_some_and(|t| t >= now)
            {
                m.status = MessageStatus::Sending;
                m.updated_at = now;
                out.push(*id);
            }
        }
        Ok(out)
    }

    async fn contacts(
        &self,
        ids: &[i64],
        want: &PersonalisationRequest,
    ) -> StoreResult<Vec<ContactView>> {
        let s = self.lock();
        let ids: BTreeSet<i64> = ids.iter().copied().collect();
        Ok(ids
            .into_iter()
            .filter_map(|id| {
                let c = s.contacts.get(&id).filter(|c| !c.forgotten)?;
                Some(ContactView {
                    id,
                    external_id: c.external_id.clone(),
                    email: c.email.clone(),
                    phone: c.phone.clone(),
                    timezone: c.timezone.clone(),
                    locale: c.locale.clone(),
                    attrs: c.attrs.clone(),
                    tags: c.tags.clone(),
                    personal: Personalisation {
                        best_hour: c.best_hour.filter(|_| want.best_hour),
                        ..Personalisation::default()
                    },
                })
            })
            .collect())
    }

    async fn record_outcomes(&self, outcomes: &[Outcome], now: i64) -> StoreResult<()> {
        if outcomes.is_empty() {
            return Ok(());
        }
        let mut guard = self.lock();
        // Field by field: a message row and the links table are borrowed at once.
        let s = &mut *guard;
        if s.failing_records > 0 {
            s.failing_records -= 1;
            return Err(err(
                "the in-memory database is down (MemStore::fail_records)",
            ));
        }
        // The flights of written messages land: deleted; all of them still
        // there means each row still says what the planner wrote.
        let flights = Outcome::flights(outcomes);
        let landed = flights
            .iter()
            .filter(|f| s.flights.remove(f).is_some())
            .count()
            == flights.len();
        for o in outcomes {
            let Some(m) = s.messages.get_mut(&o.message_id) else {
                continue;
            };
            if landed && o.ends_as_written() {
                if let Some(id) = &o.provider_id {
                    m.provider_id = Some(id.clone());
                    m.updated_at = now;
                }
            } else {
                let accepted = matches!(o.status, MessageStatus::Sent | MessageStatus::Delivered);
                let written = o.written.is_some();
                // A receipt may have outrun this write: `sent` never overwrites it.
                let later = matches!(
                    m.status,
                    MessageStatus::Delivered | MessageStatus::Bounced | MessageStatus::Failed
                );
                if !(o.status == MessageStatus::Sent && later) {
                    m.status = o.status;
                }
                m.reason = o.reason.clone();
                if o.provider_id.is_some() {
                    m.provider_id = o.provider_id.clone();
                }
                // A written row counted its attempt when it was written.
                m.attempts += i32::from(o.attempt.as_ref().is_some_and(AttemptRecord::counts))
                    - i32::from(written);
                m.not_before = o.retry_at;
                if written && !accepted {
                    m.sent_at = None;
                    m.delivered_at = None;
                } else {
                    m.sent_at = m.sent_at.or(accepted.then_some(now));
                    m.delivered_at = m
                        .delivered_at
                        .or((o.status == MessageStatus::Delivered).then_some(now));
                }
                m.lease_owner = None;
                m.lease_until = None;
                m.updated_at = now;
            }
            if let Some((channel, address)) = &o.reroute
                && m.fallback_from.is_none()
            {
                m.fallback_from = m.channel;
                m.channel = Some(*channel);
                m.address = Some(address.clone());
                m.send_at = now;
                m.not_before = None;
                let id = o.message_id;
                let links: Vec<(i64, i32)> = s
                    .links
                    .range((id, i32::MIN)..=(id, i32::MAX))
                    .map(|(k, _)| *k)
                    .collect();
                for k in links {
                    s.links.remove(&k);
                }
            }
        }
        for o in outcomes {
            if let Some(a) = &o.attempt {
                s.attempts.push((o.message_id, a.clone()));
            }
            for l in &o.links {
                s.links
                    .entry((o.message_id, l.idx))
                    .or_insert_with(|| l.clone());
            }
            match &o.suppress_address {
                Some((Channel::Push, token, _)) => {
                    s.invalid_tokens.insert(token.clone());
                }
                Some((channel, address, reason)) => {
                    let contact_id = s.messages.get(&o.message_id).map(|m| m.contact_id);
                    s.suppressions.push(MemSuppression {
                        channel: Some(*channel),
                        address: Some(address.clone()),
                        contact_id,
                        topic: None,
                        reason: reason.clone(),
                    });
                }
                None => {}
            }
        }
        Ok(())
    }

    async fn finish_run_if_drained(&self, run_id: i64, _now: i64) -> StoreResult<RunDrain> {
        let mut s = self.lock();
        let pending = s.pending(run_id);
        let Some(r) = s.runs.get_mut(&run_id) else {
            return Ok(RunDrain::Over);
        };
        match r.state.as_str() {
            "planning" => Ok(RunDrain::Planning),
            "running" if pending => Ok(RunDrain::Pending),
            "running" => {
                // A triggered campaign's run never ends: its next event adds to it.
                if r.origin != "trigger" {
                    r.state = "done".into();
                }
                Ok(RunDrain::Over)
            }
            _ => Ok(RunDrain::Over),
        }
    }

    async fn run_pending(&self, run_id: i64, now: i64) -> StoreResult<(i64, i64)> {
        let s = self.lock();
        let mut due: i64 = s
            .flights
            .values()
            .filter(|f| f.run_id == run_id)
            .map(|f| f.ids.len() as i64)
            .sum();
        let mut later = 0;
        for m in s.messages.values().filter(|m| m.run_id == run_id) {
            let waiting = m.arm == WAITING_ARM;
            match m.status {
                MessageStatus::Sending => due += 1,
                MessageStatus::Planned if m.send_at <= now && !waiting => due += 1,
                MessageStatus::Planned => later += 1,
                _ => {}
            }
        }
        Ok((due, later))
    }

    async fn finish_drained_runs(&self, _now: i64) -> StoreResult<Vec<i64>> {
        let mut s = self.lock();
        let done: Vec<i64> = s
            .runs
            .values()
            .filter(|r| r.state == "running" && r.origin != "trigger")
            .map(|r| r.id)
            .filter(|id| !s.pending(*id))
            .collect();
        for id in &done {
            if let Some(r) = s.runs.get_mut(id) {
                r.state = "done".into();
            }
        }
        Ok(done)
    }

    async fn run_counts(&self, run_id: i64) -> StoreResult<RunCounts> {
        let s = self.lock();
        let mut counts: BTreeMap<(String, String, Option<String>), i64> = BTreeMap::new();
        for m in s.messages.values().filter(|m| m.run_id == run_id) {
            *counts
                .entry((m.arm.clone(), m.status.as_str().into(), m.reason.clone()))
                .or_insert(0) += 1;
        }
        Ok(RunCounts {
            rows: counts
                .into_iter()
                .map(|((a, st, r), n)| (a, st, r, n))
                .collect(),
        })
    }

    async fn trigger_run(
        &self,
        campaign_id: i64,
        fingerprint: &str,
        now: i64,
    ) -> StoreResult<RunRecord> {
        let mut run = self
            .create_run(campaign_id, 0, now, "trigger", fingerprint)
            .await?;
        if run.state == "planning" {
            // Nothing to snapshot: messages arrive with their events.
            self.finish_planning(run.id).await?;
            run.state = "running".into();
        }
        Ok(run)
    }

    async fn events_after(
        &self,
        names: &[String],
        after: i64,
        limit: u32,
    ) -> StoreResult<Vec<TriggerEvent>> {
        let s = self.lock();
        Ok(s.events
            .range(after + 1..)
            .map(|(_, e)| e)
            .filter(|e| names.contains(&e.name))
            .take(limit as usize)
            .map(|e| TriggerEvent {
                id: e.id,
                contact_id: e.contact_id,
                name: e.name.clone(),
                at: e.at,
                received_at: e.received_at,
            })
            .collect())
    }

    async fn trigger_cursor(&self, campaign_id: i64, _now: i64) -> StoreResult<i64> {
        let mut s = self.lock();
        let newest = s.events.keys().next_back().copied().unwrap_or(0);
        Ok(*s.cursors.entry(campaign_id).or_insert(newest))
    }

    async fn insert_triggered(
        &self,
        run_id: i64,
        campaign_id: i64,
        rows: &[TriggeredMessage],
        cursor: i64,
        now: i64,
    ) -> StoreResult<u64> {
        let mut s = self.lock();
        let mut inserted = 0;
        for t in rows {
            let trigger = Some((t.trigger_id, t.trigger_at));
            if s.insert(run_id, campaign_id, &t.message, trigger, None, now)
                .is_some()
            {
                inserted += 1;
            }
        }
        let c = s.cursors.entry(campaign_id).or_insert(cursor);
        *c = (*c).max(cursor);
        Ok(inserted)
    }

    async fn exited(&self, event: &str, pairs: &[(i64, i64)]) -> StoreResult<Vec<(i64, i64)>> {
        let s = self.lock();
        let mut out: Vec<(i64, i64)> = pairs
            .iter()
            .copied()
            .filter(|(contact, since)| {
                s.events
                    .values()
                    .any(|e| e.contact_id == *contact && e.name == event && e.at > *since)
            })
            .collect();
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    async fn exited_messages(&self, event: &str, ids: &[i64]) -> StoreResult<Vec<i64>> {
        let s = self.lock();
        Ok(ids
            .iter()
            .copied()
            .filter(|id| {
                let Some(m) = s.messages.get(id) else {
                    return false;
                };
                let Some(since) = m
                    .trigger_at
                    .or_else(|| s.runs.get(&m.run_id).map(|r| r.now_at))
                else {
                    return false;
                };
                s.events
                    .values()
                    .any(|e| e.contact_id == m.contact_id && e.name == event && e.at > since)
            })
            .collect())
    }

    async fn matching(&self, _filter: &Expr, ids: &[i64], _now: i64) -> StoreResult<Vec<i64>> {
        let s = self.lock();
        Ok(ids
            .iter()
            .copied()
            .filter(|id| s.in_audience(*id))
            .collect())
    }

    async fn fell_back(&self, ids: &[i64]) -> StoreResult<Vec<i64>> {
        let s = self.lock();
        Ok(ids
            .iter()
            .copied()
            .filter(|id| {
                s.messages
                    .get(id)
                    .is_some_and(|m| m.fallback_from.is_some())
            })
            .collect())
    }

    async fn entry_pass(
        &self,
        campaign_id: i64,
        run_id: i64,
        _filter: &Expr,
        _now: i64,
    ) -> StoreResult<EntryPass> {
        let mut s = self.lock();
        let members: BTreeSet<i64> = s
            .contacts
            .keys()
            .copied()
            .filter(|id| s.in_audience(*id))
            .collect();
        let prev = s.entry.get(&campaign_id).cloned();
        if let Some(p) = &prev
            && p.last_run == Some(run_id)
        {
            return Ok(p.figures);
        }
        let figures = match &prev {
            None => EntryPass {
                members: members.len() as u64,
                entrants: 0,
                leavers: 0,
                baseline: true,
            },
            Some(p) => {
                let entrants: BTreeSet<i64> = members.difference(&p.members).copied().collect();
                let leavers = p.members.difference(&members).count() as u64;
                let figures = EntryPass {
                    members: members.len() as u64,
                    entrants: entrants.len() as u64,
                    leavers,
                    baseline: false,
                };
                s.entrants.insert((campaign_id, run_id), entrants);
                figures
            }
        };
        s.entry.insert(
            campaign_id,
            EntryState {
                members,
                last_run: Some(run_id),
                figures,
            },
        );
        Ok(figures)
    }

    async fn pre_period(
        &self,
        contacts: &[i64],
        spec: &PrePeriodSpec,
    ) -> StoreResult<HashMap<i64, (bool, f64, f64)>> {
        let s = self.lock();
        let mut out: HashMap<i64, (bool, f64, f64)> = HashMap::new();
        for e in s.events.values() {
            if !contacts.contains(&e.contact_id) || e.at < spec.since || e.at >= spec.until {
                continue;
            }
            let goal = spec.goal.as_deref() == Some(e.name.as_str());
            let revenue = spec.revenue.as_deref() == Some(e.name.as_str());
            if !goal && !revenue {
                continue;
            }
            // As the SQL store: (the goal happened, the revenue event's sum,
            // the goal event's sum; ratio CUPED's numerator history).
            let entry = out.entry(e.contact_id).or_insert((false, 0.0, 0.0));
            entry.0 |= goal;
            if revenue {
                entry.1 += e.value.unwrap_or(0.0);
            }
            if goal {
                entry.2 += e.value.unwrap_or(0.0);
            }
        }
        Ok(out)
    }
}
