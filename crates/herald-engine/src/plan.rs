//! Pure planning decisions: for one audience member of one campaign, which
//! arm, which channel and address, and whether (and why not) to send. No IO,
//! so every rule is a unit test.

use herald_domain::address::{E164Phone, EmailAddress};
use herald_domain::assign::{Arm, in_global_holdout};
use herald_domain::config::Campaign;
use herald_domain::types::{CampaignKind, Channel, MessageStatus, SuppressReason};

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
fn reachable(member: &AudienceMember, channel: Channel) -> Result<String, Blocked> {
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
    if member.suppressed.contains(&channel) {
        return Err(Blocked::OptOut);
    }
    Ok(address)
}

/// Decides the message of `member` in a run of `campaign` at `now` (ms).
pub fn decide(
    campaign: &Campaign,
    global_holdout: f64,
    member: &AudienceMember,
    now: i64,
) -> PlannedMessage {
    let arm = campaign.arms.assign(&campaign.name, &member.external_id);
    let arm_name = match arm {
        Arm::Holdout => HOLDOUT_ARM.to_string(),
        Arm::Variant(i) => campaign.variants[i].name.get_ref().as_str().to_string(),
    };
    let mut planned = PlannedMessage {
        contact_id: member.contact_id,
        step: 0,
        arm: arm_name,
        channel: None,
        address: None,
        send_at: now,
        status: MessageStatus::Planned,
        reason: None,
    };
    let suppress = |mut p: PlannedMessage, why: SuppressReason| {
        p.status = MessageStatus::Suppressed;
        p.reason = Some(why.as_str().to_string());
        p
    };
    let marketing = campaign.kind == CampaignKind::Marketing;
    if marketing && in_global_holdout(global_holdout, &member.external_id) {
        return suppress(planned, SuppressReason::GlobalHoldout);
    }
    if arm == Arm::Holdout {
        planned.status = MessageStatus::HeldOut;
        return planned;
    }
    if marketing && member.topic_opt_out {
        return suppress(planned, SuppressReason::OptOut);
    }
    let mut worst = Blocked::NoAddress;
    for &channel in &campaign.channels {
        match reachable(member, channel) {
            Ok(address) => {
                planned.channel = Some(channel);
                planned.address = Some(address);
                return planned;
            }
            Err(b) => worst = worst.max(b),
        }
    }
    suppress(planned, worst.reason())
}

#[cfg(test)]
mod tests {
    use super::*;

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
            topic_opt_out: false,
        }
    }

    #[test]
    fn first_receivable_channel_wins_and_sms_needs_explicit_consent() {
        let c = campaign("");
        let p = decide(&c, 0.0, &member(), 5);
        // No push token; SMS consent not given; email consent defaults to yes.
        assert_eq!(p.channel, Some(Channel::Email));
        assert_eq!(p.address.as_deref(), Some("ann@example.com"));
        assert_eq!(p.status, MessageStatus::Planned);
        assert_eq!(p.send_at, 5);
        let m = AudienceMember {
            consent_sms: Some(true),
            ..member()
        };
        assert_eq!(decide(&c, 0.0, &m, 5).channel, Some(Channel::Sms));
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
            decide(&c, 0.0, &none, 0).reason.as_deref(),
            Some("no_address")
        );
        let bad = AudienceMember {
            email: Some("not-an-email".into()),
            phone: None,
            ..member()
        };
        assert_eq!(
            decide(&c, 0.0, &bad, 0).reason.as_deref(),
            Some("invalid_address")
        );
        let no_consent = AudienceMember {
            consent_email: Some(false),
            ..member()
        };
        assert_eq!(
            decide(&c, 0.0, &no_consent, 0).reason.as_deref(),
            Some("no_consent")
        );
        let opted_out = AudienceMember {
            suppressed: vec![Channel::Email],
            ..member()
        };
        let p = decide(&c, 0.0, &opted_out, 0);
        assert_eq!(
            (p.status, p.reason.as_deref()),
            (MessageStatus::Suppressed, Some("opt_out"))
        );
    }

    #[test]
    fn topic_opt_out_stops_marketing_but_not_transactional() {
        let m = AudienceMember {
            topic_opt_out: true,
            ..member()
        };
        assert_eq!(
            decide(&campaign(""), 0.0, &m, 0).reason.as_deref(),
            Some("opt_out")
        );
        let t = campaign("kind = \"transactional\"");
        assert_eq!(decide(&t, 0.0, &m, 0).status, MessageStatus::Planned);
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
            let p = decide(&c, 0.0, &m, 0);
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
        let p = decide(&c, (g + 0.01).min(0.99), &m, 0);
        assert_eq!(p.reason.as_deref(), Some("global_holdout"));
        assert_eq!(
            decide(&t, (g + 0.01).min(0.99), &m, 0).status,
            MessageStatus::Planned
        );
        assert_eq!(decide(&c, g / 2.0, &m, 0).status, MessageStatus::Planned);
    }
}
