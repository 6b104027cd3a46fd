//! What `herald send --dry-run` shows beyond the counts per arm (issue 26):
//! the channel mix per arm, when the messages would go out (by the
//! recipient's local hour, and by day in `[defaults] timezone`, the
//! operator's calendar), how many quiet hours deferred and how many a
//! frequency cap suppressed. Pure: the planner's decisions in, figures out.

use std::collections::BTreeMap;

use chrono::{DateTime, Timelike};
use chrono_tz::Tz;

use crate::store::PlannedMessage;
use herald_domain::types::{MessageStatus, SuppressReason};

/// The shape of a planned run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DryRunShape {
    /// Messages that would be sent, per (arm, channel).
    pub channels: BTreeMap<(String, String), i64>,
    /// Messages that would be sent, per local hour of the recipient (0..23).
    pub by_local_hour: [i64; 24],
    /// Messages that would be sent, per day (`YYYY-MM-DD` in `[defaults] timezone`).
    pub by_day: BTreeMap<String, i64>,
    /// Messages quiet hours moved later.
    pub quiet_hours_deferred: i64,
    /// Messages a frequency cap suppressed.
    pub cap_suppressed: i64,
}

impl DryRunShape {
    /// Counts `p`, whose recipient lives in `local`; days are told in `calendar`.
    pub fn add(&mut self, p: &PlannedMessage, local: Tz, calendar: Tz) {
        if p.status == MessageStatus::Suppressed {
            if p.reason
                .as_deref()
                .is_some_and(|r| r.starts_with(SuppressReason::Cap.as_str()))
            {
                self.cap_suppressed += 1;
            }
            return;
        }
        if p.status != MessageStatus::Planned {
            return;
        }
        if p.reason
            .as_deref()
            .is_some_and(|r| r.contains("quiet hours"))
        {
            self.quiet_hours_deferred += 1;
        }
        let channel = p.channel.map_or("none", |c| c.as_str()).to_string();
        *self.channels.entry((p.arm.clone(), channel)).or_default() += 1;
        if let Some(at) = DateTime::from_timestamp_millis(p.send_at) {
            self.by_local_hour[at.with_timezone(&local).hour() as usize] += 1;
            let day = at.with_timezone(&calendar).format("%Y-%m-%d").to_string();
            *self.by_day.entry(day).or_default() += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_domain::types::Channel;

    fn planned(arm: &str, channel: Channel, at: &str, reason: Option<&str>) -> PlannedMessage {
        PlannedMessage {
            contact_id: 1,
            step: 0,
            arm: arm.into(),
            channel: Some(channel),
            address: Some("x".into()),
            send_at: DateTime::parse_from_rfc3339(at).unwrap().timestamp_millis(),
            status: MessageStatus::Planned,
            reason: reason.map(str::to_string),
            pre: Default::default(),
        }
    }

    #[test]
    fn counts_channels_hours_days_deferrals_and_caps() {
        let shanghai: Tz = "Asia/Shanghai".parse().unwrap();
        let utc: Tz = "UTC".parse().unwrap();
        let mut s = DryRunShape::default();
        // 01:00 UTC is 09:00 in Shanghai; 23:30 UTC on the 1st is the 2nd there.
        s.add(
            &planned("a", Channel::Email, "2026-12-01T01:00:00Z", None),
            shanghai,
            utc,
        );
        s.add(
            &planned(
                "a",
                Channel::Sms,
                "2026-12-01T23:30:00Z",
                Some("deferred (quiet hours)"),
            ),
            shanghai,
            utc,
        );
        s.add(
            &planned("b", Channel::Email, "2026-12-01T09:00:00Z", None),
            utc,
            shanghai,
        );
        let mut capped = planned("b", Channel::Email, "2026-12-01T09:00:00Z", Some("cap"));
        capped.status = MessageStatus::Suppressed;
        s.add(&capped, utc, utc);
        let mut held = planned("holdout", Channel::Email, "2026-12-01T09:00:00Z", None);
        held.status = MessageStatus::HeldOut;
        s.add(&held, utc, utc);
        assert_eq!(
            s.channels.into_iter().collect::<Vec<_>>(),
            [
                (("a".into(), "email".into()), 1),
                (("a".into(), "sms".into()), 1),
                (("b".into(), "email".into()), 1)
            ]
        );
        assert_eq!((s.by_local_hour[9], s.by_local_hour[7]), (2, 1));
        assert_eq!(s.by_local_hour.iter().sum::<i64>(), 3);
        assert_eq!(
            s.by_day.into_iter().collect::<Vec<_>>(),
            [("2026-12-01".to_string(), 3)]
        );
        assert_eq!((s.quiet_hours_deferred, s.cap_suppressed), (1, 1));
    }
}
