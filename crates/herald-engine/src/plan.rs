//! Pure planning decisions: for one audience member of one campaign, which
//! arm, which channel and address, and whether (and why not) to send. No IO,
//! so every rule is a unit test.

use std::collections::HashSet;

use chrono_tz::Tz;
use herald_domain::address::{E164Phone, EmailAddress};
use herald_domain::assign::{Arm, in_global_holdout};
use herald_domain::config::{Campaign, FrequencyCap, HeraldConfig, QuietHours};
use herald_domain::types::{CampaignKind, Channel, MessageStatus, SuppressReason};

use crate::policy;
use crate::rollout;
use crate::store::{AudienceMember, PlannedMessage};

/// The arm name of the control group.
pub const HOLDOUT_ARM: &str = "holdout";

/// Why a channel cannot carry a message to a member, worst first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Blocked {
    NoAddress,
    InvalidAddress,
    NoConsent,
    OptOut,
}

impl Blocked {
    fn reason(self) -> SuppressReason {
        match self {
            Blocked::NoAddress => SuppressReason::NoAddress,
            Blocked::InvalidAddress => SuppressReason::InvalidAddress,
            Blocked::NoConsent => SuppressReason::NoConsent,
            Blocked::OptOut => SuppressReason::OptOut,
        }
    }
}

/// The address `member` can be reached at on `channel`, or why not.
fn reachable(
    member: &AudienceMember,
    channel: Channel,
    marketing: bool,
) -> Result<String, Blocked> {
    let (address, consent) = match channel {
        // Consent not given means yes for email and push (a token is itself an opt-in), no for SMS.
        Channel::Email => (
            member.email.as_deref(),
            member.consent_email.unwrap_or(true),
        ),
        Channel::Sms => (member.phone.as_deref(), member.consent_sms.unwrap_or(false)),
        Channel::Push => (
            member.push_token.as_deref(),
            member.consent_push.unwrap_or(true),
        ),
    };
    let raw = address
        .filter(|a| !a.trim().is_empty())
        .ok_or(Blocked::NoAddress)?;
    let address = match channel {
        Channel::Email => EmailAddress::parse(raw).map(|a| a.to_string()),
        Channel::Sms => E164Phone::parse(raw).map(|p| p.to_string()),
        Channel::Push => Ok(raw.to_string()),
    }
    .map_err(|_| Blocked::InvalidAddress)?;
    if !consent {
        return Err(Blocked::NoConsent);
    }
    if member.suppressed.contains(&channel)
        || (marketing && member.marketing_suppressed.contains(&channel))
    {
        return Err(Blocked::OptOut);
    }
    Ok(address)
}

/// What planning a run needs besides the member: the campaign, the run and
/// the house rules (`[defaults]` unless the campaign overrides them).
#[derive(Debug, Clone)]
pub struct PlanContext<'a> {
    /// The campaign.
    pub campaign: &'a Campaign,
    /// `[defaults].global_holdout`.
    pub global_holdout: f64,
    /// The run being planned (its own messages never count for `reentry`); 0 in a dry run.
    pub run_id: i64,
    /// The run's instant (ms).
    pub now: i64,
    /// For contacts without a (valid) time zone.
    pub default_tz: Tz,
    /// Quiet hours, marketing only.
    pub quiet_hours: Option<&'a QuietHours>,
    /// Frequency caps, marketing only.
    pub caps: &'a [FrequencyCap],
}

impl<'a> PlanContext<'a> {
    /// The context of a run of `campaign` at `now` under `herald.toml`'s defaults.
    pub fn new(campaign: &'a Campaign, herald: &'a HeraldConfig, run_id: i64, now: i64) -> Self {
        let d = &herald.defaults;
        Self {
            campaign,
            global_holdout: d.global_holdout.get(),
            run_id,
            now,
            default_tz: d.timezone.0,
            quiet_hours: campaign.quiet_hours.as_ref().or(d.quiet_hours.as_ref()),
            caps: campaign
                .frequency_caps
                .as_deref()
                .unwrap_or(&d.frequency_caps),
        }
    }

    fn marketing(&self) -> bool {
        self.campaign.kind == CampaignKind::Marketing
    }

    /// How far back a member's messages matter (`reentry`, caps); `None`: not at all.
    pub fn history_since(&self) -> Option<i64> {
        let mut window = self.campaign.reentry.map_or(0, |r| r.millis());
        if self.marketing() {
            for cap in self.caps {
                window = window.max(cap.per.millis());
            }
        }
        (window > 0).then(|| self.now - window)
    }

    fn tz(&self, member: &AudienceMember) -> Tz {
        self.tz_of(member.timezone.as_deref())
    }

    /// The time zone named `tz`, or the default one when it is missing or not a zone.
    pub fn tz_of(&self, tz: Option<&str>) -> Tz {
        tz.and_then(|t| t.parse().ok()).unwrap_or(self.default_tz)
    }

    /// When a planned message of this contact goes out, with the policies
    /// that moved it: the variant's own hour (or the campaign's send time),
    /// quiet hours (marketing only), then `spread`. Planning uses it, and so
    /// does a rollout releasing the rest of the audience to its winner.
    pub fn send_at(
        &self,
        tz: Tz,
        variant_hour: Option<u8>,
        best_hour: Option<u8>,
        external_id: &str,
    ) -> (i64, Vec<&'static str>) {
        let campaign = self.campaign;
        let mut moved = Vec::new();
        let (mut at, why) =
            policy::send_time(self.now, tz, variant_hour, campaign.send_time, best_hour);
        moved.extend(why);
        let quiet = self.quiet_hours.filter(|_| self.marketing());
        if let Some(later) = quiet.and_then(|q| policy::quiet_hours(at, tz, q)) {
            at = later;
            moved.push("deferred (quiet hours)");
        }
        if let Some(spread) = campaign.spread {
            let key = format!("{}\0{}", campaign.name, external_id);
            at += policy::spread_offset(&key, spread);
            moved.push("spread");
        }
        (at, moved)
    }
}

/// Statuses of an earlier message that mean the contact "got" the campaign,
/// for `reentry`: held-out counts too, so the control group is treated alike.
fn got(status: MessageStatus) -> bool {
    !matches!(
        status,
        MessageStatus::Suppressed | MessageStatus::Cancelled | MessageStatus::Failed
    )
}

/// Statuses of an earlier message that count toward a frequency cap: it was, or will be, sent.
fn counts_for_cap(status: MessageStatus) -> bool {
    !matches!(
        status,
        MessageStatus::Suppressed
            | MessageStatus::Cancelled
            | MessageStatus::Failed
            | MessageStatus::HeldOut
    )
}

/// Decides the message of `member` in the run of `ctx`, applying SPEC
/// section 2's policies in order: global holdout and arm, kind and topic
/// consent, channel (address, consent, suppression), `reentry`, frequency
/// caps, then the send time, quiet hours and `spread`.
pub fn decide(ctx: &PlanContext<'_>, member: &AudienceMember) -> PlannedMessage {
    let campaign = ctx.campaign;
    let arm = campaign.arms.assign(&campaign.name, &member.external_id);
    // With `[rollout]`, a variant's member outside the test fraction waits for
    // the decision: in no variant until then (the holdout stays held out).
    let waiting = matches!(arm, Arm::Variant(_))
        && campaign
            .rollout
            .as_ref()
            .is_some_and(|r| !rollout::in_test(&campaign.name, &member.external_id, r));
    let (arm_name, variant_hour) = match arm {
        _ if waiting => (rollout::WAITING_ARM.to_string(), None),
        Arm::Holdout => (HOLDOUT_ARM.to_string(), None),
        Arm::Variant(i) => {
            let v = &campaign.variants[i];
            (
                v.name.get_ref().as_str().to_string(),
                v.send_time.map(|t| t.hour),
            )
        }
    };
    let mut planned = PlannedMessage {
        contact_id: member.contact_id,
        step: 0,
        arm: arm_name,
        channel: None,
        address: None,
        send_at: ctx.now,
        status: MessageStatus::Planned,
        reason: None,
        pre: Default::default(),
    };
    let suppress = |mut p: PlannedMessage, why: SuppressReason| {
        p.status = MessageStatus::Suppressed;
        p.reason = Some(why.as_str().to_string());
        p
    };
    let marketing = ctx.marketing();
    if marketing && in_global_holdout(ctx.global_holdout, &member.external_id) {
        return suppress(planned, SuppressReason::GlobalHoldout);
    }
    let held_out = arm == Arm::Holdout;
    if !held_out {
        if marketing && member.topic_opt_out {
            return suppress(planned, SuppressReason::OptOut);
        }
        match choose_channel(campaign, member) {
            Ok((channel, address)) => {
                planned.channel = Some(channel);
                planned.address = Some(address);
            }
            Err(blocked) => return suppress(planned, blocked.reason()),
        }
    }
    if let Some(window) = campaign.reentry {
        let since = ctx.now - window.millis();
        let again = member.history.iter().any(|h| {
            h.campaign == campaign.name
                && h.run_id != ctx.run_id
                && h.send_at > since
                && got(h.status)
        });
        if again {
            return suppress(planned, SuppressReason::Reentry);
        }
    }
    if let Some(channel) = planned
        .channel
        .filter(|_| marketing && !ctx.caps.is_empty())
    {
        // Messages planned for later count too: any window holding this one is capped.
        let recent: Vec<(Channel, i64)> = member
            .history
            .iter()
            .filter(|h| h.marketing && h.run_id != ctx.run_id && counts_for_cap(h.status))
            .filter_map(|h| h.channel.map(|c| (c, h.send_at)))
            .collect();
        if policy::capped(ctx.caps, channel, ctx.now, &recent) {
            return suppress(planned, SuppressReason::Cap);
        }
    }
    if let Some(r) = campaign.rollout.as_ref().filter(|_| waiting) {
        // Its send time is the winner's, worked out when it is released.
        planned.send_at = ctx.now + r.decide_after.millis();
        planned.reason = Some(rollout::WAITING_REASON.to_string());
        return planned;
    }
    let (at, moved) = ctx.send_at(
        ctx.tz(member),
        variant_hour,
        member.best_hour,
        &member.external_id,
    );
    planned.send_at = at;
    if held_out {
        planned.status = MessageStatus::HeldOut;
    }
    if !moved.is_empty() {
        planned.reason = Some(moved.join(", "));
    }
    planned
}

/// The first channel of the campaign's order that `member` can receive, or the most specific reason none.
fn choose_channel(
    campaign: &Campaign,
    member: &AudienceMember,
) -> Result<(Channel, String), Blocked> {
    let mut worst = Blocked::NoAddress;
    let marketing = campaign.kind == CampaignKind::Marketing;
    for &channel in &campaign.channels {
        match reachable(member, channel, marketing) {
            Ok(address) => return Ok((channel, address)),
            Err(b) => worst = worst.max(b),
        }
    }
    Err(worst)
}

/// The next channel after `failed` in the campaign's order that `member` can
/// receive: the fallback after a permanent failure (an unregistered push token).
pub fn fallback_channel(
    campaign: &Campaign,
    member: &AudienceMember,
    failed: Channel,
) -> Option<(Channel, String)> {
    let pos = campaign.channels.iter().position(|&c| c == failed)?;
    let marketing = campaign.kind == CampaignKind::Marketing;
    campaign.channels[pos + 1..]
        .iter()
        .find_map(|&c| reachable(member, c, marketing).ok().map(|a| (c, a)))
}

/// A message's claim on an address within a run: one message per (step,
/// channel, address), so two contacts sharing an inbox get one email per step.
pub type AddressKey = (i32, Channel, String);

/// The (step, channel, address) of each planned message of `rows`, borrowed:
/// what a page asks the run's earlier pages about.
pub fn address_keys(rows: &[PlannedMessage]) -> Vec<(i32, Channel, &str)> {
    rows.iter().filter_map(address_key).collect()
}

fn address_key(m: &PlannedMessage) -> Option<(i32, Channel, &str)> {
    if m.status != MessageStatus::Planned {
        return None;
    }
    Some((m.step, m.channel?, m.address.as_deref()?))
}

/// Suppresses (`duplicate_address`) each planned message of `rows` whose
/// address is `taken` by an earlier contact of the run, or by a contact with
/// a lower id in the page: the first contact planned keeps it, whichever page
/// it was on. Pages are planned in contact order, so deciding page by page
/// gives what one pass over the whole run would.
pub fn suppress_duplicate_addresses(rows: &mut [PlannedMessage], taken: &HashSet<AddressKey>) {
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by_key(|&i| rows[i].contact_id);
    let duplicates: Vec<usize> = {
        // Seeded with what earlier pages took (a few keys, usually none).
        let mut seen: HashSet<(i32, Channel, &str)> = taken
            .iter()
            .map(|(step, channel, address)| (*step, *channel, address.as_str()))
            .collect();
        order
            .into_iter()
            .filter(|&i| address_key(&rows[i]).is_some_and(|key| !seen.insert(key)))
            .collect()
    };
    for i in duplicates {
        rows[i].status = MessageStatus::Suppressed;
        rows[i].reason = Some(SuppressReason::DuplicateAddress.as_str().to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::PastMessage;

    fn row(contact_id: i64, step: i32, address: &str) -> PlannedMessage {
        PlannedMessage {
            contact_id,
            step,
            arm: "a".into(),
            channel: Some(Channel::Email),
            address: Some(address.into()),
            send_at: 0,
            status: MessageStatus::Planned,
            reason: None,
            pre: Default::default(),
        }
    }

    fn statuses(rows: &[PlannedMessage]) -> Vec<(i64, i32, &str, Option<&str>)> {
        rows.iter()
            .map(|m| (m.contact_id, m.step, m.status.as_str(), m.reason.as_deref()))
            .collect()
    }

    #[test]
    fn the_lowest_contact_keeps_a_shared_address_each_step() {
        // Out of order on purpose: contact 2 comes first in the page.
        let mut rows = vec![
            row(2, 0, "home@example.com"),
            row(1, 0, "home@example.com"),
            row(1, 1, "home@example.com"),
            row(2, 1, "home@example.com"),
            row(3, 0, "own@example.com"),
        ];
        suppress_duplicate_addresses(&mut rows, &Default::default());
        assert_eq!(
            statuses(&rows),
            vec![
                (2, 0, "suppressed", Some("duplicate_address")),
                (1, 0, "planned", None),
                (1, 1, "planned", None),
                (2, 1, "suppressed", Some("duplicate_address")),
                (3, 0, "planned", None),
            ]
        );
    }

    #[test]
    fn an_address_an_earlier_page_took_is_suppressed() {
        let mut rows = vec![row(5, 0, "home@example.com"), row(6, 1, "home@example.com")];
        let mut held = row(7, 0, "held@example.com");
        held.status = MessageStatus::HeldOut;
        rows.push(held);
        let taken = [(0, Channel::Email, "home@example.com".to_string())]
            .into_iter()
            .collect();
        suppress_duplicate_addresses(&mut rows, &taken);
        assert_eq!(
            statuses(&rows),
            vec![
                (5, 0, "suppressed", Some("duplicate_address")),
                // Another step's message to the same address is its own.
                (6, 1, "planned", None),
                (7, 0, "held_out", None),
            ]
        );
        assert_eq!(
            address_keys(&rows),
            vec![(1, Channel::Email, "home@example.com")]
        );
    }

    fn campaign(extra: &str) -> Campaign {
        let src = format!(
            r#"
name = "plan-test"
where = 'attrs.x == 1'
channels = ["push", "sms", "email"]
{extra}
[[variants]]
name = "a"
email = {{ subject = "s", template = "t.email.hbs" }}
sms = {{ template = "t.sms.hbs" }}
push = {{ title = "t", template = "t.push.hbs" }}
"#
        );
        Campaign::parse("c.toml", &src).unwrap()
    }

    fn member() -> AudienceMember {
        AudienceMember {
            contact_id: 1,
            external_id: "u1".into(),
            email: Some("ann@example.com".into()),
            phone: Some("+8613800138000".into()),
            push_token: None,
            consent_email: None,
            consent_sms: None,
            consent_push: None,
            suppressed: vec![],
            marketing_suppressed: vec![],
            topic_opt_out: false,
            timezone: None,
            best_hour: None,
            history: vec![],
        }
    }

    /// `decide` for run 1 of `c` at `now` with this global holdout and no caps or quiet hours.
    fn decide_at(
        c: &Campaign,
        global_holdout: f64,
        m: &AudienceMember,
        now: i64,
    ) -> PlannedMessage {
        let ctx = PlanContext {
            campaign: c,
            global_holdout,
            run_id: 1,
            now,
            default_tz: Tz::UTC,
            quiet_hours: None,
            caps: &[],
        };
        decide(&ctx, m)
    }

    #[test]
    fn first_receivable_channel_wins_and_sms_needs_explicit_consent() {
        let c = campaign("");
        let p = decide_at(&c, 0.0, &member(), 5);
        // No push token; SMS consent not given; email consent defaults to yes.
        assert_eq!(p.channel, Some(Channel::Email));
        assert_eq!(p.address.as_deref(), Some("ann@example.com"));
        assert_eq!(p.status, MessageStatus::Planned);
        assert_eq!(p.send_at, 5);
        let m = AudienceMember {
            consent_sms: Some(true),
            ..member()
        };
        assert_eq!(decide_at(&c, 0.0, &m, 5).channel, Some(Channel::Sms));
    }

    #[test]
    fn the_reason_for_nothing_is_the_most_specific_one() {
        let c = campaign("");
        let none = AudienceMember {
            email: None,
            phone: None,
            ..member()
        };
        assert_eq!(
            decide_at(&c, 0.0, &none, 0).reason.as_deref(),
            Some("no_address")
        );
        let bad = AudienceMember {
            email: Some("not-an-email".into()),
            phone: None,
            ..member()
        };
        assert_eq!(
            decide_at(&c, 0.0, &bad, 0).reason.as_deref(),
            Some("invalid_address")
        );
        let no_consent = AudienceMember {
            consent_email: Some(false),
            ..member()
        };
        assert_eq!(
            decide_at(&c, 0.0, &no_consent, 0).reason.as_deref(),
            Some("no_consent")
        );
        let opted_out = AudienceMember {
            suppressed: vec![Channel::Email],
            ..member()
        };
        let p = decide_at(&c, 0.0, &opted_out, 0);
        assert_eq!(
            (p.status, p.reason.as_deref()),
            (MessageStatus::Suppressed, Some("opt_out"))
        );
    }

    #[test]
    fn a_marketing_unsubscribe_stops_marketing_but_not_transactional() {
        let m = AudienceMember {
            marketing_suppressed: vec![Channel::Email],
            ..member()
        };
        assert_eq!(
            decide_at(&campaign(""), 0.0, &m, 0).reason.as_deref(),
            Some("opt_out")
        );
        let t = campaign("kind = \"transactional\"");
        assert_eq!(decide_at(&t, 0.0, &m, 0).status, MessageStatus::Planned);
        // A bounce or a complaint stops both.
        let bounced = AudienceMember {
            suppressed: vec![Channel::Email],
            ..member()
        };
        assert_eq!(
            decide_at(&t, 0.0, &bounced, 0).reason.as_deref(),
            Some("opt_out")
        );
    }

    #[test]
    fn topic_opt_out_stops_marketing_but_not_transactional() {
        let m = AudienceMember {
            topic_opt_out: true,
            ..member()
        };
        assert_eq!(
            decide_at(&campaign(""), 0.0, &m, 0).reason.as_deref(),
            Some("opt_out")
        );
        let t = campaign("kind = \"transactional\"");
        assert_eq!(decide_at(&t, 0.0, &m, 0).status, MessageStatus::Planned);
    }

    #[test]
    fn holdout_members_are_held_out_with_the_assigned_arm() {
        let c = campaign("holdout = 0.5");
        let mut held = 0;
        for i in 0..200 {
            let m = AudienceMember {
                external_id: format!("u{i}"),
                ..member()
            };
            let p = decide_at(&c, 0.0, &m, 0);
            let expect_holdout =
                herald_domain::assign::unit_hash("plan-test", &m.external_id) < 0.5;
            assert_eq!(p.status == MessageStatus::HeldOut, expect_holdout);
            assert_eq!(p.arm == HOLDOUT_ARM, expect_holdout);
            held += usize::from(expect_holdout);
        }
        assert!((60..140).contains(&held), "{held}");
    }

    #[test]
    fn global_holdout_applies_to_marketing_only() {
        let c = campaign("");
        let t = campaign("kind = \"transactional\"");
        let m = member();
        let g = herald_domain::assign::unit_hash("__global__", "u1");
        let p = decide_at(&c, (g + 0.01).min(0.99), &m, 0);
        assert_eq!(p.reason.as_deref(), Some("global_holdout"));
        assert_eq!(
            decide_at(&t, (g + 0.01).min(0.99), &m, 0).status,
            MessageStatus::Planned
        );
        assert_eq!(decide_at(&c, g / 2.0, &m, 0).status, MessageStatus::Planned);
    }

    fn past(
        campaign: &str,
        run_id: i64,
        channel: Channel,
        send_at: i64,
        status: MessageStatus,
    ) -> PastMessage {
        PastMessage {
            campaign: campaign.into(),
            run_id,
            channel: Some(channel),
            send_at,
            status,
            marketing: true,
        }
    }

    const DAY: i64 = 86_400_000;

    #[test]
    fn reentry_skips_contacts_who_got_the_campaign_within_the_window() {
        let c = campaign("reentry = \"7d\"");
        let now = 100 * DAY;
        let within = AudienceMember {
            history: vec![past(
                "plan-test",
                9,
                Channel::Email,
                now - 6 * DAY,
                MessageStatus::Delivered,
            )],
            ..member()
        };
        assert_eq!(
            decide_at(&c, 0.0, &within, now).reason.as_deref(),
            Some("reentry")
        );
        // Older than the window, another campaign, a suppressed earlier message, this run itself: no reentry.
        for h in [
            past(
                "plan-test",
                9,
                Channel::Email,
                now - 8 * DAY,
                MessageStatus::Delivered,
            ),
            past(
                "other",
                9,
                Channel::Email,
                now - DAY,
                MessageStatus::Delivered,
            ),
            past(
                "plan-test",
                9,
                Channel::Email,
                now - DAY,
                MessageStatus::Suppressed,
            ),
            past("plan-test", 1, Channel::Email, now, MessageStatus::Planned),
        ] {
            let m = AudienceMember {
                history: vec![h.clone()],
                ..member()
            };
            assert_eq!(
                decide_at(&c, 0.0, &m, now).status,
                MessageStatus::Planned,
                "{h:?}"
            );
        }
        // Held out last time counts as having got it, so arms stay alike.
        let held = AudienceMember {
            history: vec![past(
                "plan-test",
                9,
                Channel::Email,
                now - DAY,
                MessageStatus::HeldOut,
            )],
            ..member()
        };
        assert_eq!(
            decide_at(&c, 0.0, &held, now).reason.as_deref(),
            Some("reentry")
        );
    }

    fn ctx_with<'a>(
        c: &'a Campaign,
        caps: &'a [FrequencyCap],
        quiet: Option<&'a QuietHours>,
        now: i64,
    ) -> PlanContext<'a> {
        PlanContext {
            campaign: c,
            global_holdout: 0.0,
            run_id: 1,
            now,
            default_tz: Tz::Asia__Shanghai,
            quiet_hours: quiet,
            caps,
        }
    }

    #[test]
    fn frequency_caps_count_marketing_sends_across_campaigns() {
        let c = campaign("");
        let now = 100 * DAY;
        let caps = [FrequencyCap {
            channel: herald_domain::config::CapChannel::One(Channel::Email),
            max: 2,
            per: herald_domain::duration::Span::from_days(7),
        }];
        let two = AudienceMember {
            history: vec![
                past("a", 7, Channel::Email, now - DAY, MessageStatus::Delivered),
                past("b", 8, Channel::Email, now + DAY, MessageStatus::Planned),
            ],
            ..member()
        };
        let ctx = ctx_with(&c, &caps, None, now);
        assert_eq!(decide(&ctx, &two).reason.as_deref(), Some("cap"));
        assert_eq!(ctx.history_since(), Some(now - 7 * DAY));
        // Transactional sends, SMS, and failed sends do not count.
        let mut other = two.clone();
        other.history[1].marketing = false;
        assert_eq!(decide(&ctx, &other).status, MessageStatus::Planned);
        other.history[1] = past("b", 8, Channel::Sms, now, MessageStatus::Sent);
        assert_eq!(decide(&ctx, &other).status, MessageStatus::Planned);
        other.history[1] = past("b", 8, Channel::Email, now, MessageStatus::Failed);
        assert_eq!(decide(&ctx, &other).status, MessageStatus::Planned);
        // A transactional campaign skips caps.
        let t = campaign("kind = \"transactional\"");
        assert_eq!(
            decide(&ctx_with(&t, &caps, None, now), &two).status,
            MessageStatus::Planned
        );
    }

    #[test]
    fn quiet_hours_defer_marketing_to_the_recipients_morning_and_say_so() {
        let c = campaign("");
        // 2026-11-23 14:00 UTC = 22:00 in Shanghai.
        let now = 1_795_442_400_000;
        let hm =
            |h| herald_domain::config::LocalTime(chrono::NaiveTime::from_hms_opt(h, 0, 0).unwrap());
        let quiet = QuietHours {
            start: hm(21),
            end: hm(8),
        };
        let p = decide(&ctx_with(&c, &[], Some(&quiet), now), &member());
        assert_eq!(p.status, MessageStatus::Planned);
        assert_eq!(
            p.send_at,
            now + 10 * 3_600_000,
            "08:00 the next morning in Shanghai"
        );
        assert_eq!(p.reason.as_deref(), Some("deferred (quiet hours)"));
        // A contact in New York (09:00 local) is not in quiet hours.
        let ny = AudienceMember {
            timezone: Some("America/New_York".into()),
            ..member()
        };
        assert_eq!(
            decide(&ctx_with(&c, &[], Some(&quiet), now), &ny).send_at,
            now
        );
        // Transactional ignores quiet hours.
        let t = campaign("kind = \"transactional\"");
        assert_eq!(
            decide(&ctx_with(&t, &[], Some(&quiet), now), &member()).send_at,
            now
        );
    }

    #[test]
    fn variant_hour_then_spread_move_the_send_time() {
        let c = campaign("spread = \"2h\"");
        let now = 1_795_442_400_000;
        let p = decide(&ctx_with(&c, &[], None, now), &member());
        assert!(p.send_at >= now && p.send_at < now + 7_200_000);
        assert_eq!(p.reason.as_deref(), Some("spread"));
        let held = campaign("holdout = 0.999999");
        let h = decide(&ctx_with(&held, &[], None, now), &member());
        assert_eq!(
            (h.status, h.send_at),
            (MessageStatus::HeldOut, now),
            "held out, measured at its send time"
        );
    }

    #[test]
    fn with_a_rollout_the_rest_waits_for_the_decision_and_the_holdout_stays_out() {
        let c = campaign(
            "holdout = 0.1\n[rollout]\ntest_fraction = 0.25\ndecide_after = \"1h\"\nmetric = \"click\"",
        );
        let r = c.rollout.clone().unwrap();
        let now = 1_795_442_400_000;
        let (mut tested, mut waiting, mut held) = (0, 0, 0);
        for i in 0..2_000 {
            let m = AudienceMember {
                external_id: format!("u{i}"),
                ..member()
            };
            let p = decide_at(&c, 0.0, &m, now);
            let holdout = herald_domain::assign::unit_hash("plan-test", &m.external_id) < 0.1;
            if holdout {
                assert_eq!(
                    (p.arm.as_str(), p.status),
                    (HOLDOUT_ARM, MessageStatus::HeldOut)
                );
                held += 1;
            } else if rollout::in_test("plan-test", &m.external_id, &r) {
                assert_eq!((p.arm.as_str(), p.send_at), ("a", now));
                tested += 1;
            } else {
                assert_eq!(p.arm, rollout::WAITING_ARM);
                assert_eq!(p.status, MessageStatus::Planned);
                assert_eq!(
                    p.channel,
                    Some(Channel::Email),
                    "a channel is chosen as for any member"
                );
                assert_eq!(p.send_at, now + 3_600_000, "due at the decision");
                assert_eq!(p.reason.as_deref(), Some(rollout::WAITING_REASON));
                waiting += 1;
            }
        }
        assert_eq!(tested + waiting + held, 2_000);
        assert!((350..550).contains(&tested), "{tested}");
        assert!(waiting > 2 * tested, "{waiting}");
        assert!((140..260).contains(&held), "{held}");
        // A waiting member who cannot be reached is suppressed like any other.
        let unreachable = (0..100)
            .map(|i| AudienceMember {
                external_id: format!("u{i}"),
                email: None,
                phone: None,
                ..member()
            })
            .map(|m| decide_at(&c, 0.0, &m, now))
            .find(|p| p.arm == rollout::WAITING_ARM)
            .unwrap();
        assert_eq!(
            (unreachable.status, unreachable.reason.as_deref()),
            (MessageStatus::Suppressed, Some("no_address"))
        );
    }

    #[test]
    fn fallback_is_the_next_receivable_channel_after_the_failed_one() {
        let c = campaign("");
        let m = AudienceMember {
            push_token: Some("tok".into()),
            consent_sms: Some(true),
            ..member()
        };
        assert_eq!(
            fallback_channel(&c, &m, Channel::Push).map(|x| x.0),
            Some(Channel::Sms)
        );
        assert_eq!(
            fallback_channel(&c, &m, Channel::Sms).map(|x| x.0),
            Some(Channel::Email)
        );
        assert_eq!(fallback_channel(&c, &m, Channel::Email), None);
    }
}
