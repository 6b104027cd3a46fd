//! The time parts of SPEC section 2's policies, in its order: frequency caps,
//! the send time (the variant's hour, else `best_hour`, else the schedule),
//! quiet hours, `spread`. Pure: every instant is a parameter in epoch
//! milliseconds (UTC); time zones are any chrono [`TimeZone`] (in practice
//! the contact's `chrono_tz::Tz`), read on the local wall clock with the DST
//! rules of [`crate::schedule`].

use chrono::{NaiveTime, TimeZone, Timelike};
use herald_domain::assign::unit_hash;
use herald_domain::config::{CapChannel, FrequencyCap, QuietHours, SendTime};
use herald_domain::duration::Span;
use herald_domain::types::Channel;

use crate::schedule::{instant_at_or_after, local_datetime, next_day};

/// Reason label when a variant's own hour moved the send time.
pub const REASON_VARIANT_HOUR: &str = "variant_hour";
/// Reason label when the contact's best hour moved the send time.
pub const REASON_BEST_HOUR: &str = "best_hour";

/// The name [`spread_offset`] hashes its key under, so the offset is
/// independent of the contact's A/B arm (which hashes the campaign name).
const SPREAD_HASH_NAME: &str = "__spread__";

/// The local hour (0..23) in `tz` at instant `at`.
pub fn local_hour_at<Z: TimeZone>(at: i64, tz: Z) -> u8 {
    // An hour is below 24, so the cast never truncates.
    local_datetime(at, &tz).hour() as u8
}

/// The first instant at or after `from` whose local time in `tz` is
/// `hour`:00, so within one local day (23 to 25 hours on DST days). When
/// that hour does not exist on a spring-forward day, the first instant after
/// the gap; on a fall-back day, either occurrence, whichever comes first.
/// An `hour` above 23 is read as 23 (config checks it is 0..23).
pub fn next_local_hour<Z: TimeZone>(from: i64, tz: Z, hour: u8) -> i64 {
    let Some(time) = NaiveTime::from_hms_opt(u32::from(hour.min(23)), 0, 0) else {
        return from;
    };
    let mut local = local_datetime(from, &tz).date().and_time(time);
    // Today's hour may have passed; tomorrow's cannot have. A third day only
    // guards against zones that skip a whole calendar day.
    for _ in 0..3 {
        if let Some(t) = instant_at_or_after(local, &tz, from) {
            return t;
        }
        local = next_day(local);
    }
    from
}

/// When a message goes out, before quiet hours: the variant's own hour wins,
/// else the contact's `best_hour` when the campaign's `send_time` is
/// `best_hour`, else `run_at`. Hours are the next such local hour at or after
/// `run_at` ([`next_local_hour`]). Returns the instant and, when it differs
/// from `run_at`, why ([`REASON_VARIANT_HOUR`], [`REASON_BEST_HOUR`]).
pub fn send_time<Z: TimeZone>(
    run_at: i64,
    tz: Z,
    variant_hour: Option<u8>,
    send_time: SendTime,
    best_hour: Option<u8>,
) -> (i64, Option<&'static str>) {
    let chosen = match (variant_hour, send_time, best_hour) {
        (Some(h), _, _) => Some((h, REASON_VARIANT_HOUR)),
        (None, SendTime::BestHour, Some(h)) => Some((h, REASON_BEST_HOUR)),
        _ => None,
    };
    match chosen {
        Some((hour, reason)) => {
            let at = next_local_hour(run_at, tz, hour);
            (at, (at != run_at).then_some(reason))
        }
        None => (run_at, None),
    }
}

/// `None` when `at` is outside quiet hours in `tz`, else the instant they
/// end: the next time the local clock shows `quiet.end` (the first instant
/// after the gap if that time does not exist that day).
///
/// Quiet hours are `[start, end)` in local wall-clock time; when `end` is
/// earlier than `start` they run over midnight (22:00-08:00 is quiet from
/// 22:00 to 07:59:59.999). `start == end` means no quiet hours at all.
pub fn quiet_hours<Z: TimeZone>(at: i64, tz: Z, quiet: &QuietHours) -> Option<i64> {
    let (start, end) = (quiet.start.0, quiet.end.0);
    if start == end {
        return None;
    }
    let local = local_datetime(at, &tz);
    let t = local.time();
    let is_quiet = if start < end {
        start <= t && t < end
    } else {
        start <= t || t < end
    };
    if !is_quiet {
        return None;
    }
    let mut end_at = local.date().and_time(end);
    if end < start && start <= t {
        end_at = next_day(end_at);
    }
    // In a fall-back fold, today's end may have passed already (`at` is in
    // the repeated hour): then its second occurrence, or tomorrow's.
    for _ in 0..3 {
        if let Some(next) = instant_at_or_after(end_at, &tz, at) {
            return Some(next);
        }
        end_at = next_day(end_at);
    }
    None
}

/// A stable offset in `[0, spread)` milliseconds for `key` (the caller
/// passes the campaign name and the contact's external id, e.g.
/// `"winback-q4/C123"`), so a resumed or re-planned run gives every contact
/// the same send time. Uniform: the first 64 bits of a SHA-256 of the key
/// (see [`herald_domain::assign::unit_hash`]) scaled to the span, hashed
/// under a name of its own so it does not correlate with the A/B arm. A zero
/// span gives 0.
pub fn spread_offset(key: &str, spread: Span) -> i64 {
    let span = spread.millis();
    if span <= 0 {
        return 0;
    }
    // u < 1, so the floor is below `span`; the min guards float rounding.
    let offset = (unit_hash(SPREAD_HASH_NAME, key) * span as f64) as i64;
    offset.min(span - 1)
}

/// Whether a message on `channel` at `at` would break one of `caps`, given
/// `recent`: the contact's messages already sent or planned, as (channel,
/// send_at), without this one.
///
/// A cap `{channel, max, per}` counts the messages on its channel (every
/// channel for `any`; a cap on another channel never applies) in windows of
/// length `per`, half-open `(e - per, e]`: two messages exactly `per` apart
/// are in different windows. It is hit when some window containing `at`
/// already holds `max` of them. With only earlier messages that is the
/// window `(at - per, at]`; planned messages after `at` count too, so adding
/// this one can never push a later window over the cap either. `max = 0`
/// blocks the channel; `per = 0` never caps.
pub fn capped(caps: &[FrequencyCap], channel: Channel, at: i64, recent: &[(Channel, i64)]) -> bool {
    caps.iter().any(|cap| cap_hit(cap, channel, at, recent))
}

fn cap_hit(cap: &FrequencyCap, channel: Channel, at: i64, recent: &[(Channel, i64)]) -> bool {
    if let CapChannel::One(c) = cap.channel
        && c != channel
    {
        return false;
    }
    let per = cap.per.millis();
    if per <= 0 {
        return false;
    }
    if cap.max == 0 {
        return true;
    }
    let mut times: Vec<i64> = recent
        .iter()
        .filter(|(c, t)| {
            let counts = matches!(cap.channel, CapChannel::Any) || *c == channel;
            counts && *t > at.saturating_sub(per) && *t < at.saturating_add(per)
        })
        .map(|&(_, t)| t)
        .collect();
    times.sort_unstable();
    let max = usize::try_from(cap.max).unwrap_or(usize::MAX);
    // The fullest window containing `at` ends at `at` or at a message after it.
    let mut ends = std::iter::once(at).chain(times.iter().copied().filter(|&t| t > at));
    ends.any(|e| {
        let inside = times.partition_point(|&t| t <= e)
            - times.partition_point(|&t| t <= e.saturating_sub(per));
        inside >= max
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::DateTime;
    use herald_domain::config::{LocalTime, Timezone};

    fn ms(rfc3339: &str) -> i64 {
        DateTime::parse_from_rfc3339(rfc3339)
            .unwrap()
            .timestamp_millis()
    }

    fn iso(at: i64) -> String {
        DateTime::from_timestamp_millis(at)
            .unwrap()
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string()
    }

    fn zone(name: &str) -> Timezone {
        serde_json::from_value(serde_json::json!(name)).unwrap()
    }

    fn quiet(start: &str, end: &str) -> QuietHours {
        let t = |s: &str| LocalTime(NaiveTime::parse_from_str(s, "%H:%M").unwrap());
        QuietHours {
            start: t(start),
            end: t(end),
        }
    }

    fn moved(at: i64, tz: Timezone, q: &QuietHours) -> Option<String> {
        quiet_hours(at, tz.0, q).map(iso)
    }

    #[test]
    fn quiet_hours_over_midnight_in_shanghai() {
        let sh = zone("Asia/Shanghai");
        let q = quiet("22:00", "08:00");
        // 23:00 local -> 08:00 local the next day (00:00Z).
        assert_eq!(
            moved(ms("2026-01-06T23:00:00+08:00"), sh, &q).as_deref(),
            Some("2026-01-07T00:00:00Z")
        );
        // 03:00 local -> 08:00 the same day.
        assert_eq!(
            moved(ms("2026-01-07T03:00:00+08:00"), sh, &q).as_deref(),
            Some("2026-01-07T00:00:00Z")
        );
        // The start is quiet, the end is not.
        assert!(moved(ms("2026-01-06T22:00:00+08:00"), sh, &q).is_some());
        assert_eq!(moved(ms("2026-01-06T21:59:59.999+08:00"), sh, &q), None);
        assert_eq!(moved(ms("2026-01-07T08:00:00+08:00"), sh, &q), None);
        assert_eq!(
            moved(ms("2026-01-07T07:59:59.999+08:00"), sh, &q).as_deref(),
            Some("2026-01-07T00:00:00Z")
        );
        assert_eq!(moved(ms("2026-01-07T12:00:00+08:00"), sh, &q), None);
    }

    #[test]
    fn quiet_hours_within_a_day_and_none() {
        let sh = zone("Asia/Shanghai");
        let lunch = quiet("12:00", "14:00");
        assert_eq!(
            moved(ms("2026-01-07T13:00:00+08:00"), sh, &lunch).as_deref(),
            Some("2026-01-07T06:00:00Z")
        );
        assert_eq!(moved(ms("2026-01-07T14:00:00+08:00"), sh, &lunch), None);
        assert_eq!(moved(ms("2026-01-07T23:00:00+08:00"), sh, &lunch), None);
        let none = quiet("08:00", "08:00");
        for h in 0..24 {
            let at = ms("2026-01-07T00:00:00+08:00") + h * 3_600_000;
            assert_eq!(moved(at, sh, &none), None);
        }
    }

    #[test]
    fn quiet_hours_in_new_york_on_dst_days() {
        let ny = zone("America/New_York");
        let q = quiet("22:00", "08:00");
        // Spring forward: 23:00 EST -> 08:00 EDT, 8 hours later, not 9.
        assert_eq!(
            moved(ms("2026-03-07T23:00:00-05:00"), ny, &q).as_deref(),
            Some("2026-03-08T12:00:00Z")
        );
        // Fall back: 23:00 EDT -> 08:00 EST, 10 hours later.
        assert_eq!(
            moved(ms("2026-10-31T23:00:00-04:00"), ny, &q).as_deref(),
            Some("2026-11-01T13:00:00Z")
        );
        // An end inside the gap: the first instant after it (03:00 EDT).
        let q = quiet("22:00", "02:30");
        assert_eq!(
            moved(ms("2026-03-08T01:00:00-05:00"), ny, &q).as_deref(),
            Some("2026-03-08T07:00:00Z")
        );
        // An end inside the repeated hour: the next occurrence after `at`.
        let q = quiet("01:00", "01:30");
        assert_eq!(
            moved(ms("2026-11-01T01:10:00-04:00"), ny, &q).as_deref(),
            Some("2026-11-01T05:30:00Z")
        );
        assert_eq!(
            moved(ms("2026-11-01T01:10:00-05:00"), ny, &q).as_deref(),
            Some("2026-11-01T06:30:00Z")
        );
        assert_eq!(moved(ms("2026-11-01T01:40:00-05:00"), ny, &q), None);
    }

    #[test]
    fn a_time_moved_onto_the_quiet_end_stays() {
        let sh = zone("Asia/Shanghai");
        let q = quiet("21:00", "08:00");
        let run_at = ms("2026-01-06T23:30:00+08:00");
        let (at, why) = send_time(run_at, sh.0, None, SendTime::BestHour, Some(8));
        assert_eq!(iso(at), "2026-01-07T00:00:00Z");
        assert_eq!(why, Some(REASON_BEST_HOUR));
        assert_eq!(quiet_hours(at, sh.0, &q), None);
        // The schedule's own time inside quiet hours moves to exactly there.
        assert_eq!(quiet_hours(run_at, sh.0, &q), Some(at));
    }

    #[test]
    fn best_hour_already_past_today_means_tomorrow() {
        let sh = zone("Asia/Shanghai").0;
        let now = ms("2026-01-06T15:00:00+08:00");
        assert_eq!(iso(next_local_hour(now, sh, 9)), "2026-01-07T01:00:00Z");
        assert_eq!(iso(next_local_hour(now, sh, 20)), "2026-01-06T12:00:00Z");
        // The hour itself, exactly now: now.
        let nine = ms("2026-01-06T09:00:00+08:00");
        assert_eq!(next_local_hour(nine, sh, 9), nine);
        assert_eq!(
            iso(next_local_hour(nine + 1, sh, 9)),
            "2026-01-07T01:00:00Z"
        );
        assert_eq!(local_hour_at(now, sh), 15);
    }

    #[test]
    fn next_local_hour_on_dst_days() {
        let ny = zone("America/New_York").0;
        // 02:00 does not exist on Mar 8: the first instant after the gap.
        let from = ms("2026-03-08T00:30:00-05:00");
        assert_eq!(iso(next_local_hour(from, ny, 2)), "2026-03-08T07:00:00Z");
        assert_eq!(iso(next_local_hour(from, ny, 10)), "2026-03-08T14:00:00Z");
        // 01:00 occurs twice on Nov 1: from inside the first pass, the second.
        let from = ms("2026-11-01T01:30:00-04:00");
        assert_eq!(iso(next_local_hour(from, ny, 1)), "2026-11-01T06:00:00Z");
        let from = ms("2026-11-01T00:30:00-04:00");
        assert_eq!(iso(next_local_hour(from, ny, 1)), "2026-11-01T05:00:00Z");
    }

    #[test]
    fn variant_hour_beats_best_hour() {
        let sh = zone("Asia/Shanghai").0;
        let run_at = ms("2026-01-06T10:00:00+08:00");
        let (at, why) = send_time(run_at, sh, Some(20), SendTime::BestHour, Some(12));
        assert_eq!(
            (iso(at).as_str(), why),
            ("2026-01-06T12:00:00Z", Some(REASON_VARIANT_HOUR))
        );
        let (at, why) = send_time(run_at, sh, None, SendTime::BestHour, Some(12));
        assert_eq!(
            (iso(at).as_str(), why),
            ("2026-01-06T04:00:00Z", Some(REASON_BEST_HOUR))
        );
        // best_hour is ignored unless the campaign asks for it.
        assert_eq!(
            send_time(run_at, sh, None, SendTime::Immediate, Some(12)),
            (run_at, None)
        );
        assert_eq!(
            send_time(run_at, sh, None, SendTime::BestHour, None),
            (run_at, None)
        );
        // Already at the hour: not moved, no reason.
        assert_eq!(
            send_time(run_at, sh, Some(10), SendTime::Immediate, None),
            (run_at, None)
        );
    }

    #[test]
    fn spread_is_stable_bounded_and_uniform() {
        let spread = Span::from_secs(2 * 3600);
        let span = spread.millis();
        let mut buckets = [0u32; 10];
        for i in 0..10_000 {
            let key = format!("winback-q4/C{i}");
            let o = spread_offset(&key, spread);
            assert!((0..span).contains(&o), "{key}: {o}");
            assert_eq!(o, spread_offset(&key, spread));
            buckets[(o * 10 / span) as usize] += 1;
        }
        for (i, &n) in buckets.iter().enumerate() {
            assert!(
                (900..=1100).contains(&n),
                "bucket {i} holds {n}: {buckets:?}"
            );
        }
        assert_eq!(spread_offset("a", Span::from_secs(0)), 0);
        assert_ne!(
            spread_offset("winback-q4/C1", spread),
            spread_offset("winback-q4/C2", spread)
        );
    }

    #[test]
    fn extreme_instants_do_not_panic() {
        let ny = zone("America/New_York");
        let q = quiet("22:00", "08:00");
        for at in [i64::MIN, i64::MAX] {
            let _ = quiet_hours(at, ny.0, &q);
            let _ = next_local_hour(at, ny.0, 9);
            let _ = send_time(at, ny.0, Some(9), SendTime::BestHour, Some(3));
            let _ = capped(
                &[cap(CapChannel::Any, 1, 3)],
                Channel::Sms,
                at,
                &[(Channel::Sms, at)],
            );
        }
        assert!((0..1000).contains(&spread_offset("k", Span::from_secs(1))));
    }

    const DAY: i64 = 86_400_000;

    fn cap(channel: CapChannel, max: u32, days: i64) -> FrequencyCap {
        FrequencyCap {
            channel,
            max,
            per: Span::from_days(days),
        }
    }

    #[test]
    fn per_channel_caps_count_only_their_channel() {
        let now = ms("2026-01-10T00:00:00Z");
        let caps = [cap(CapChannel::One(Channel::Sms), 1, 3)];
        let recent = [(Channel::Email, now - DAY), (Channel::Push, now - DAY)];
        assert!(!capped(&caps, Channel::Sms, now, &recent));
        let recent = [(Channel::Sms, now - DAY)];
        assert!(capped(&caps, Channel::Sms, now, &recent));
        // An sms cap never stops an email.
        assert!(!capped(&caps, Channel::Email, now, &recent));
    }

    #[test]
    fn any_caps_count_every_channel() {
        let now = ms("2026-01-10T00:00:00Z");
        let caps = [cap(CapChannel::Any, 3, 7)];
        let two = [(Channel::Email, now - DAY), (Channel::Sms, now - 2 * DAY)];
        assert!(!capped(&caps, Channel::Push, now, &two));
        let three = [
            (Channel::Email, now - DAY),
            (Channel::Sms, now - 2 * DAY),
            (Channel::Push, now - 6 * DAY),
        ];
        assert!(capped(&caps, Channel::Push, now, &three));
        assert!(capped(&caps, Channel::Email, now, &three));
        // Several caps: any one hit is enough.
        let both = [
            cap(CapChannel::One(Channel::Sms), 1, 3),
            cap(CapChannel::Any, 3, 7),
        ];
        assert!(capped(
            &both,
            Channel::Sms,
            now,
            &[(Channel::Sms, now - DAY)]
        ));
        assert!(!capped(
            &both,
            Channel::Email,
            now,
            &[(Channel::Sms, now - DAY)]
        ));
        assert!(!capped(&[], Channel::Email, now, &three));
    }

    #[test]
    fn cap_window_boundaries() {
        let now = ms("2026-01-10T00:00:00Z");
        let caps = [cap(CapChannel::One(Channel::Sms), 1, 3)];
        // Exactly `per` ago is outside (at - per, at]; 1 ms later is inside.
        assert!(!capped(
            &caps,
            Channel::Sms,
            now,
            &[(Channel::Sms, now - 3 * DAY)]
        ));
        assert!(capped(
            &caps,
            Channel::Sms,
            now,
            &[(Channel::Sms, now - 3 * DAY + 1)]
        ));
        // At the same instant: inside.
        assert!(capped(&caps, Channel::Sms, now, &[(Channel::Sms, now)]));
        // A planned message later in the window counts; exactly `per` later does not.
        assert!(capped(
            &caps,
            Channel::Sms,
            now,
            &[(Channel::Sms, now + DAY)]
        ));
        assert!(!capped(
            &caps,
            Channel::Sms,
            now,
            &[(Channel::Sms, now + 3 * DAY)]
        ));
        // max = 0 blocks the channel.
        assert!(capped(
            &[cap(CapChannel::One(Channel::Sms), 0, 3)],
            Channel::Sms,
            now,
            &[]
        ));
    }

    #[test]
    fn cap_counts_the_fullest_window_containing_the_message() {
        let now = ms("2026-01-10T00:00:00Z");
        let caps = [cap(CapChannel::Any, 2, 3)];
        // 2 days before and 2 days after: no 3-day window holds both.
        let apart = [
            (Channel::Email, now - 2 * DAY),
            (Channel::Email, now + 2 * DAY),
        ];
        assert!(!capped(&caps, Channel::Email, now, &apart));
        // 1 day before and 1 day after: (now - 2d, now + 1d] holds both.
        let close = [(Channel::Email, now - DAY), (Channel::Email, now + DAY)];
        assert!(capped(&caps, Channel::Email, now, &close));
    }
}
