//! A campaign's messages to one contact: its own (step 0) and, for a series,
//! one per `[[steps]]`, each `delay` after the one before. Every step goes
//! through the planning policies on its own (its channel order, caps, quiet
//! hours), except what concerns the contact as a whole: an arm (the holdout
//! is held out of every step) and a `reentry` or global-holdout suppression,
//! which every step shares. Pure: no IO.

use herald_domain::config::{Campaign, HeraldConfig};
use herald_domain::types::{MessageStatus, SuppressReason};

use crate::plan::{PlanContext, decide};
use crate::store::{AudienceMember, PlannedMessage};

/// A campaign's steps, ready to decide: step 0 is the campaign itself.
#[derive(Debug, Clone)]
pub struct Series {
    /// Per step, the campaign as that step plans it (its own channel order).
    steps: Vec<Campaign>,
    /// Per step, its offset from step 0 (ms).
    offsets: Vec<i64>,
}

impl Series {
    /// The series of `campaign` (one step when it has no `[[steps]]`).
    pub fn of(campaign: &Campaign) -> Self {
        let mut steps = vec![campaign.clone()];
        let mut offsets = vec![0];
        let mut at = 0;
        for step in &campaign.steps {
            let mut c = campaign.clone();
            if let Some(channels) = &step.channels {
                c.channels = channels.clone();
            }
            at += step.delay.millis();
            steps.push(c);
            offsets.push(at);
        }
        Self { steps, offsets }
    }

    /// The campaign as step `i` plans it (its channel order), if there is such a step.
    pub fn step(&self, i: usize) -> Option<&Campaign> {
        self.steps.get(i)
    }

    /// How many steps (1 without `[[steps]]`).
    pub fn len(&self) -> usize {
        self.steps.len()
    }

    /// Never empty: step 0 is the campaign.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Every step's message to `member` for a run at `now` (ms): step 0 at `now`,
    /// each later one its delay after the one before as that one was planned,
    /// so a step that quiet hours (or a send hour) push later pushes the later
    /// steps too and the gaps between them stay. `run_id` 0 counts every
    /// earlier message of the campaign for `reentry` (a triggered campaign's single run).
    pub fn decide(
        &self,
        herald: &HeraldConfig,
        run_id: i64,
        now: i64,
        member: &AudienceMember,
    ) -> Vec<PlannedMessage> {
        let mut out: Vec<PlannedMessage> = Vec::with_capacity(self.steps.len());
        for (i, campaign) in self.steps.iter().enumerate() {
            let at = match out.last() {
                None => now,
                Some(before) => before
                    .send_at
                    .saturating_add(self.offsets[i] - self.offsets[i - 1]),
            };
            let ctx = PlanContext::new(campaign, herald, run_id, at);
            let mut m = decide(&ctx, member);
            m.step = i as i32;
            if let Some(first) = out.first().filter(|f| contact_wide(f)) {
                m.status = first.status;
                m.reason = first.reason.clone();
            }
            out.push(m);
        }
        out
    }
}

/// A suppression that concerns the contact, not one step's channel or time.
fn contact_wide(m: &PlannedMessage) -> bool {
    m.status == MessageStatus::Suppressed
        && m.reason.as_deref().is_some_and(|r| {
            r == SuppressReason::Reentry.as_str() || r == SuppressReason::GlobalHoldout.as_str()
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::PastMessage;
    use herald_domain::types::Channel;

    fn campaign() -> Campaign {
        Campaign::parse(
            "welcome.toml",
            r#"
name = "welcome"
where = 'attrs.x == 1'
channels = ["email"]
reentry = "30d"
[[variants]]
name = "a"
email = { subject = "Welcome", template = "w.email.hbs" }
[[steps]]
delay = "2d"
channels = ["push", "email"]
push = { title = "Day 2", template = "w2.push.hbs" }
email = { subject = "Day 2", template = "w2.email.hbs" }
[[steps]]
delay = "3d"
channels = ["sms"]
sms = { template = "w5.sms.hbs" }
"#,
        )
        .unwrap()
    }

    fn member() -> AudienceMember {
        AudienceMember {
            contact_id: 7,
            external_id: "u7".into(),
            email: Some("ann@example.com".into()),
            phone: Some("+14155550100".into()),
            push_token: None,
            consent_email: None,
            consent_sms: Some(true),
            consent_push: None,
            suppressed: vec![],
            topic_opt_out: false,
            timezone: Some("UTC".into()),
            best_hour: None,
            history: vec![],
        }
    }

    const DAY: i64 = 86_400_000;
    const NOW: i64 = 1_780_000_000_000;

    #[test]
    fn each_step_is_its_delays_after_the_first_on_its_own_channels() {
        let s = Series::of(&campaign());
        assert_eq!(s.len(), 3);
        let ms = s.decide(&HeraldConfig::default(), 1, NOW, &member());
        let got: Vec<_> = ms
            .iter()
            .map(|m| (m.step, m.channel, m.send_at - NOW, m.status))
            .collect();
        assert_eq!(
            got,
            vec![
                (0, Some(Channel::Email), 0, MessageStatus::Planned),
                // No push token: the step's next channel.
                (1, Some(Channel::Email), 2 * DAY, MessageStatus::Planned),
                (2, Some(Channel::Sms), 5 * DAY, MessageStatus::Planned),
            ]
        );
    }

    /// Quiet hours 21:00-08:00: at 22:00 the first step waits until 08:00 and
    /// the second, 2 hours later, follows it at 10:00 (it used to be moved to
    /// 08:00 as well, and the gap vanished).
    #[test]
    fn a_step_deferred_by_quiet_hours_pushes_the_next_and_keeps_the_gap() {
        let c = Campaign::parse(
            "welcome.toml",
            r#"
name = "welcome"
where = 'attrs.x == 1'
channels = ["email"]
quiet_hours = { start = "21:00", end = "08:00" }
[[variants]]
name = "a"
email = { subject = "Welcome", template = "w.email.hbs" }
[[steps]]
delay = "2h"
[[steps]]
delay = "1d"
"#,
        )
        .unwrap();
        const HOUR: i64 = 3_600_000;
        // 2026-06-01T22:00:00Z; the member's zone is UTC.
        let ten_pm = 1_780_351_200_000;
        assert_eq!(ten_pm % DAY, 22 * HOUR);
        let ms = Series::of(&c).decide(&HeraldConfig::default(), 1, ten_pm, &member());
        let at: Vec<i64> = ms.iter().map(|m| m.send_at - ten_pm).collect();
        assert_eq!(at, vec![10 * HOUR, 12 * HOUR, 36 * HOUR]);
        assert!(ms.iter().all(|m| m.status == MessageStatus::Planned));
    }

    #[test]
    fn a_reentry_suppression_holds_for_every_step() {
        let mut m = member();
        m.history.push(PastMessage {
            campaign: "welcome".into(),
            run_id: 9,
            channel: Some(Channel::Email),
            send_at: NOW - DAY,
            status: MessageStatus::Delivered,
            marketing: true,
        });
        let ms = Series::of(&campaign()).decide(&HeraldConfig::default(), 1, NOW, &m);
        assert_eq!(ms.len(), 3);
        for x in &ms {
            assert_eq!(x.status, MessageStatus::Suppressed);
            assert_eq!(x.reason.as_deref(), Some("reentry"));
        }
    }

    #[test]
    fn a_channel_suppression_stays_with_its_step() {
        let mut m = member();
        m.email = None;
        let ms = Series::of(&campaign()).decide(&HeraldConfig::default(), 1, NOW, &m);
        let got: Vec<_> = ms.iter().map(|m| (m.status, m.channel)).collect();
        assert_eq!(
            got,
            vec![
                (MessageStatus::Suppressed, None),
                (MessageStatus::Suppressed, None),
                (MessageStatus::Planned, Some(Channel::Sms)),
            ]
        );
    }
}
