//! When a campaign fires (SPEC section 2: `schedule`, `catch_up`), and the
//! wall-clock maths it needs. Pure: no IO, no clock; every instant is a
//! parameter in epoch milliseconds (UTC), and time zones are any chrono
//! [`TimeZone`] (in practice a `chrono_tz::Tz`).
//!
//! A cron expression is read in its own time zone, on the local wall clock,
//! with two DST rules (the cron crate alone fires an ambiguous time twice and
//! skips a nonexistent one, so herald maps each local time itself):
//! - **fall-back**: a local time that occurs twice fires once, at its first
//!   occurrence; the repeated hour does not fire again;
//! - **spring-forward**: a local time inside the gap fires once, at the first
//!   instant after the gap (03:00 EDT for 02:30 in New York), like Vixie cron;
//!   if the schedule fires then anyway, or several gap times map there, that
//!   instant fires only once.
//!
//! `at` fires once; `manual` never. [`due`] decides what a poll runs after a
//! pause: only the latest fire that is at most `catch_up` late (at least
//! [`ON_TIME_TOLERANCE`]); every other fire since the last poll is missed.

use chrono::{DateTime, Days, LocalResult, NaiveDateTime, TimeZone, Utc};
use herald_domain::config::Schedule;
use herald_domain::duration::Span;

/// The most instants [`fires_between`] returns, and the most missed fires
/// [`due`] reports: a per-second cron over a long outage stays bounded.
pub const MAX_FIRES: usize = 1000;

/// How late a fire may be seen and still run when the campaign has no
/// `catch_up` (or a shorter one): one poll interval of the daemon plus slack,
/// so an ordinary poll never misses the fire it was waiting for.
pub const ON_TIME_TOLERANCE: Span = Span::from_secs(60);

const DAY_MS: i64 = 86_400_000;

/// `at` (epoch ms) as a UTC date-time, clamped to two days inside chrono's
/// range (±262,000 years) so that a local time never overflows it.
fn utc(at: i64) -> DateTime<Utc> {
    let min = DateTime::<Utc>::MIN_UTC.timestamp_millis() + 2 * DAY_MS;
    let max = DateTime::<Utc>::MAX_UTC.timestamp_millis() - 2 * DAY_MS;
    DateTime::from_timestamp_millis(at.clamp(min, max)).unwrap_or_default()
}

/// The wall-clock time in `tz` at instant `at` (epoch ms).
pub fn local_datetime<Z: TimeZone>(at: i64, tz: &Z) -> NaiveDateTime {
    tz.from_utc_datetime(&utc(at).naive_utc()).naive_local()
}

/// The instants at which the wall clock in `tz` shows `local`: one, two (in
/// a fall-back fold, earlier first), or, when `local` falls in a
/// spring-forward gap, the first instant after the gap.
fn occurrences<Z: TimeZone>(local: NaiveDateTime, tz: &Z) -> [Option<i64>; 2] {
    match tz.from_local_datetime(&local) {
        LocalResult::Single(t) => [Some(t.timestamp_millis()), None],
        LocalResult::Ambiguous(a, b) => {
            let (a, b) = (a.timestamp_millis(), b.timestamp_millis());
            [Some(a.min(b)), Some(a.max(b))]
        }
        LocalResult::None => [Some(gap_end(local, tz)), None],
    }
}

/// The first instant whose wall-clock time in `tz` is `local`: its first
/// occurrence in a fall-back fold, the first instant after the gap when
/// `local` does not exist.
pub fn first_instant_at<Z: TimeZone>(local: NaiveDateTime, tz: &Z) -> i64 {
    occurrences(local, tz)[0].unwrap_or_else(|| local.and_utc().timestamp_millis())
}

/// The earliest instant at or after `from` whose wall-clock time in `tz` is
/// `local` (either occurrence in a fold; the end of the gap when `local`
/// does not exist), or `None` if all of them are before `from`.
pub fn instant_at_or_after<Z: TimeZone>(local: NaiveDateTime, tz: &Z, from: i64) -> Option<i64> {
    occurrences(local, tz)
        .into_iter()
        .flatten()
        .find(|&t| t >= from)
}

/// The smallest instant whose local time is at or after `local`, which lies
/// in a gap: the instant of the DST transition.
fn gap_end<Z: TimeZone>(local: NaiveDateTime, tz: &Z) -> i64 {
    let reached = |t: i64| local_datetime(t, tz) >= local;
    let naive = local.and_utc().timestamp_millis();
    // The offsets a day either side bracket the transition exactly (the gap
    // is their difference); if another change is that close, bracket by a day.
    let offset_at = |t: i64| local_datetime(t, tz).and_utc().timestamp_millis() - t;
    let (lo, hi) = (
        naive - offset_at(naive + DAY_MS),
        naive - offset_at(naive - DAY_MS),
    );
    let (mut lo, mut hi) = if lo < hi && !reached(lo) && reached(hi) {
        (lo, hi)
    } else {
        (naive - DAY_MS, naive + DAY_MS)
    };
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if reached(mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    hi
}

/// The schedule's fires after `after`, ascending, lazily (unbounded).
fn fires_after(schedule: &Schedule, after: i64) -> Box<dyn Iterator<Item = i64> + '_> {
    match schedule {
        Schedule::Manual => Box::new(std::iter::empty()),
        Schedule::At(at) => {
            Box::new(std::iter::once(at.timestamp_millis()).filter(move |&t| t > after))
        }
        Schedule::Cron {
            schedule, timezone, ..
        } => {
            let tz = *timezone;
            // Iterate wall-clock times (UTC has no DST, so each comes once) and
            // map each to its instant. The mapping never decreases, and every
            // local time up to the one at `after` maps to `after` or earlier,
            // so starting there misses nothing; the filter drops the fold's
            // first occurrences that precede `after` and the gap's duplicates.
            // cron knows no year before 1970 (and wraps a negative one), so
            // start no earlier than the day before the epoch.
            let start = local_datetime(after.max(-DAY_MS), &tz).and_utc();
            let mut last = after;
            Box::new(
                schedule
                    .after(&start)
                    .map(move |local| first_instant_at(local.naive_utc(), &tz))
                    .filter(move |&t| {
                        let new = t > last;
                        last = last.max(t);
                        new
                    }),
            )
        }
    }
}

/// The schedule's fires at or before `at`, descending, lazily (unbounded).
fn fires_until(schedule: &Schedule, at: i64) -> Box<dyn Iterator<Item = i64> + '_> {
    match schedule {
        Schedule::Manual => Box::new(std::iter::empty()),
        Schedule::At(when) => {
            Box::new(std::iter::once(when.timestamp_millis()).filter(move |&t| t <= at))
        }
        Schedule::Cron {
            schedule, timezone, ..
        } => {
            // cron knows no year before 1970, and a negative one would wrap
            // and walk every fire down from 2100 in vain.
            if at < -DAY_MS {
                return Box::new(std::iter::empty());
            }
            let tz = *timezone;
            let local = local_datetime(at, &tz);
            // When `at` is in the second pass of a fold, later wall-clock times
            // (up to the fold's length later) map to first occurrences before it.
            let fold = match occurrences(local, &tz) {
                [Some(a), Some(b)] => b - a,
                _ => 0,
            };
            // The reverse iterator yields times strictly before its start.
            let start = utc(local.and_utc().timestamp_millis() + fold + 1);
            let mut last = at.saturating_add(1);
            Box::new(
                schedule
                    .after(&start)
                    .rev()
                    .map(move |local| first_instant_at(local.naive_utc(), &tz))
                    .filter(move |&t| {
                        let new = t < last;
                        last = last.min(t);
                        new
                    }),
            )
        }
    }
}

/// The schedule's fires in `(after, until]`, ascending, at most [`MAX_FIRES`]
/// (the earliest ones). Cron times follow the module's DST rules.
pub fn fires_between(schedule: &Schedule, after: i64, until: i64) -> Vec<i64> {
    if until <= after {
        return Vec::new();
    }
    fires_after(schedule, after)
        .take_while(|&t| t <= until)
        .take(MAX_FIRES)
        .collect()
}

/// The schedule's first fire strictly after `after`, if it has one.
pub fn next_fire(schedule: &Schedule, after: i64) -> Option<i64> {
    fires_after(schedule, after).next()
}

/// What a scheduler poll does with the fires since the previous one.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Due {
    /// Fires to run now: at most one, the latest, when it is late by no more
    /// than the catch-up window.
    pub run: Vec<i64>,
    /// Fires that will not run, ascending: every earlier fire since the last
    /// poll, and the latest too when it is too late; at most [`MAX_FIRES`]
    /// (the most recent ones).
    pub missed: Vec<i64>,
}

/// Which of the fires in `(last_seen, now]` run and which are missed.
///
/// `last_seen` is the instant up to which the schedule was already handled
/// (for a campaign the daemon has never seen, the moment it first sees it).
/// The latest fire `f` runs if `now - f <= window`, where `window` is
/// `catch_up` but never less than [`ON_TIME_TOLERANCE`]; all other fires are
/// missed. After a three-day outage a daily newsletter goes out once, not
/// three times, whatever `catch_up` is; a cron that fires more often than the
/// daemon polls runs once a poll.
pub fn due(schedule: &Schedule, last_seen: i64, now: i64, catch_up: Option<Span>) -> Due {
    let window = catch_up
        .map_or(0, Span::millis)
        .max(ON_TIME_TOLERANCE.millis());
    let mut fires = fires_until(schedule, now).take_while(|&f| f > last_seen);
    let mut out = Due::default();
    if let Some(latest) = fires.next() {
        if now.saturating_sub(latest) <= window {
            out.run.push(latest);
        } else {
            out.missed.push(latest);
        }
    }
    let room = MAX_FIRES - out.missed.len();
    out.missed.extend(fires.take(room));
    out.missed.reverse();
    out
}

/// The calendar day after `local`'s, at the same wall-clock time.
pub(crate) fn next_day(local: NaiveDateTime) -> NaiveDateTime {
    local.checked_add_days(Days::new(1)).unwrap_or(local)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Datelike, NaiveDate, Timelike};
    use herald_domain::config::Timezone;

    fn ms(rfc3339: &str) -> i64 {
        DateTime::parse_from_rfc3339(rfc3339)
            .unwrap()
            .timestamp_millis()
    }

    fn iso(at: i64) -> String {
        utc(at).format("%Y-%m-%dT%H:%M:%SZ").to_string()
    }

    fn isos(v: &[i64]) -> Vec<String> {
        v.iter().map(|&t| iso(t)).collect()
    }

    fn cron(expr: &str, zone: &str) -> Schedule {
        serde_json::from_value(serde_json::json!({ "cron": expr, "timezone": zone })).unwrap()
    }

    fn at(rfc3339: &str) -> Schedule {
        serde_json::from_value(serde_json::json!({ "at": rfc3339 })).unwrap()
    }

    fn zone(name: &str) -> Timezone {
        serde_json::from_value(serde_json::json!(name)).unwrap()
    }

    #[test]
    fn shanghai_tuesday_ten_fires_at_two_utc() {
        let s = cron("0 0 10 * * Tue", "Asia/Shanghai");
        let fires = fires_between(&s, ms("2026-01-01T00:00:00Z"), ms("2026-01-31T00:00:00Z"));
        assert_eq!(
            isos(&fires),
            [
                "2026-01-06T02:00:00Z",
                "2026-01-13T02:00:00Z",
                "2026-01-20T02:00:00Z",
                "2026-01-27T02:00:00Z"
            ]
        );
    }

    #[test]
    fn window_is_open_at_after_and_closed_at_until() {
        let s = cron("0 0 10 * * Tue", "Asia/Shanghai");
        let fire = ms("2026-01-06T02:00:00Z");
        assert!(fires_between(&s, fire, fire + DAY_MS).is_empty());
        assert_eq!(fires_between(&s, fire - 1, fire), [fire]);
        assert!(fires_between(&s, fire, fire).is_empty());
        assert!(fires_between(&s, fire, fire - DAY_MS).is_empty());
        assert_eq!(next_fire(&s, fire - 1), Some(fire));
        assert_eq!(next_fire(&s, fire), Some(fire + 7 * DAY_MS));
    }

    #[test]
    fn new_york_spring_forward_0130_is_untouched() {
        let s = cron("0 30 1 * * *", "America/New_York");
        let fires = fires_between(&s, ms("2026-03-07T00:00:00Z"), ms("2026-03-10T00:00:00Z"));
        assert_eq!(
            isos(&fires),
            [
                "2026-03-07T06:30:00Z", // 01:30 EST
                "2026-03-08T06:30:00Z", // 01:30 EST, before the 02:00 change
                "2026-03-09T05:30:00Z", // 01:30 EDT
            ]
        );
    }

    #[test]
    fn new_york_spring_forward_0230_fires_once_after_the_gap() {
        let s = cron("0 30 2 * * *", "America/New_York");
        let fires = fires_between(&s, ms("2026-03-07T00:00:00Z"), ms("2026-03-10T00:00:00Z"));
        assert_eq!(
            isos(&fires),
            [
                "2026-03-07T07:30:00Z", // 02:30 EST
                "2026-03-08T07:00:00Z", // 02:30 does not exist: 03:00 EDT
                "2026-03-09T06:30:00Z", // 02:30 EDT
            ]
        );
    }

    #[test]
    fn gap_times_and_a_real_fire_at_the_gap_end_fire_once() {
        let s = cron("0 0,30 2,3 * * *", "America/New_York");
        let fires = fires_between(&s, ms("2026-03-08T05:00:00Z"), ms("2026-03-08T12:00:00Z"));
        // 02:00, 02:30 and 03:00 all mean 03:00 EDT; then 03:30 EDT.
        assert_eq!(
            isos(&fires),
            ["2026-03-08T07:00:00Z", "2026-03-08T07:30:00Z"]
        );
    }

    #[test]
    fn new_york_fall_back_0130_fires_once_at_the_first_occurrence() {
        let s = cron("0 30 1 * * *", "America/New_York");
        let fires = fires_between(&s, ms("2026-10-31T00:00:00Z"), ms("2026-11-03T00:00:00Z"));
        assert_eq!(
            isos(&fires),
            [
                "2026-10-31T05:30:00Z", // 01:30 EDT
                "2026-11-01T05:30:00Z", // 01:30 EDT; not again at 01:30 EST (06:30Z)
                "2026-11-02T06:30:00Z", // 01:30 EST
            ]
        );
    }

    #[test]
    fn new_york_fall_back_0230_is_untouched() {
        let s = cron("0 30 2 * * *", "America/New_York");
        let fires = fires_between(&s, ms("2026-10-31T00:00:00Z"), ms("2026-11-03T00:00:00Z"));
        assert_eq!(
            isos(&fires),
            [
                "2026-10-31T06:30:00Z", // 02:30 EDT
                "2026-11-01T07:30:00Z", // 02:30 EST, after the fold
                "2026-11-02T07:30:00Z",
            ]
        );
    }

    #[test]
    fn the_repeated_hour_does_not_fire_again() {
        let s = cron("0 0,30 * * * *", "America/New_York");
        let fires = fires_between(&s, ms("2026-11-01T03:45:00Z"), ms("2026-11-01T07:00:00Z"));
        assert_eq!(
            isos(&fires),
            [
                "2026-11-01T04:00:00Z", // 00:00 EDT
                "2026-11-01T04:30:00Z",
                "2026-11-01T05:00:00Z", // 01:00 EDT
                "2026-11-01T05:30:00Z", // 01:30 EDT; 01:00 and 01:30 EST do not fire
                "2026-11-01T07:00:00Z", // 02:00 EST
            ]
        );
    }

    #[test]
    fn starting_inside_the_repeated_hour_skips_its_first_occurrences() {
        let s = cron("0 30 1 * * *", "America/New_York");
        let second_pass = ms("2026-11-01T06:10:00Z"); // 01:10 EST
        assert_eq!(
            next_fire(&s, second_pass).map(iso).as_deref(),
            Some("2026-11-02T06:30:00Z")
        );
        let first_pass = ms("2026-11-01T05:10:00Z"); // 01:10 EDT
        assert_eq!(
            next_fire(&s, first_pass).map(iso).as_deref(),
            Some("2026-11-01T05:30:00Z")
        );
    }

    #[test]
    fn the_cron_crate_alone_needs_the_correction() {
        // Why herald maps local times itself: cron 0.17 fires 01:30 twice on
        // the fall-back day and skips 02:30 on the spring-forward day.
        let ny = zone("America/New_York").0;
        let fall = cron("0 30 1 * * *", "America/New_York");
        let spring = cron("0 30 2 * * *", "America/New_York");
        let (
            Schedule::Cron { schedule: fall, .. },
            Schedule::Cron {
                schedule: spring, ..
            },
        ) = (fall, spring)
        else {
            unreachable!()
        };
        let from = utc(ms("2026-10-31T12:00:00Z")).with_timezone(&ny);
        let raw: Vec<i64> = fall
            .after(&from)
            .take(2)
            .map(|t| t.timestamp_millis())
            .collect();
        assert_eq!(isos(&raw), ["2026-11-01T05:30:00Z", "2026-11-01T06:30:00Z"]);
        let from = utc(ms("2026-03-07T12:00:00Z")).with_timezone(&ny);
        let raw = spring.after(&from).next().unwrap().timestamp_millis();
        assert_eq!(iso(raw), "2026-03-09T06:30:00Z");
    }

    #[test]
    fn daily_ten_new_york_stays_ten_local_across_both_changes() {
        let ny = zone("America/New_York").0;
        let s = cron("0 0 10 * * *", "America/New_York");
        for (from, to, utc_hours) in [
            (
                "2026-03-06T00:00:00Z",
                "2026-03-10T00:00:00Z",
                [15, 15, 14, 14],
            ),
            (
                "2026-10-30T00:00:00Z",
                "2026-11-03T00:00:00Z",
                [14, 14, 15, 15],
            ),
        ] {
            let fires = fires_between(&s, ms(from), ms(to));
            assert_eq!(fires.len(), 4, "{from}");
            for (&f, &h) in fires.iter().zip(&utc_hours) {
                assert_eq!(local_datetime(f, &ny).time().hour(), 10, "{}", iso(f));
                assert_eq!(utc(f).hour(), h, "{}", iso(f));
            }
        }
    }

    #[test]
    fn leap_day_fires_on_2028_02_29() {
        let s = cron("0 0 9 29 Feb *", "Asia/Shanghai");
        let fires = fires_between(&s, ms("2025-01-01T00:00:00Z"), ms("2033-01-01T00:00:00Z"));
        assert_eq!(
            isos(&fires),
            ["2028-02-29T01:00:00Z", "2032-02-29T01:00:00Z"]
        );
        assert_eq!(
            next_fire(&s, ms("2026-03-01T00:00:00Z"))
                .map(iso)
                .as_deref(),
            Some("2028-02-29T01:00:00Z")
        );
        let d = utc(fires[0]).with_timezone(&zone("Asia/Shanghai").0);
        assert_eq!((d.month(), d.day(), d.hour()), (2, 29, 9));
    }

    #[test]
    fn fires_are_capped() {
        let s = cron("* * * * * *", "UTC");
        let from = ms("2026-01-01T00:00:00Z");
        let fires = fires_between(&s, from, from + DAY_MS);
        assert_eq!(fires.len(), MAX_FIRES);
        assert_eq!(fires[0], from + 1000);
        assert!(fires.windows(2).all(|w| w[1] - w[0] == 1000));
    }

    #[test]
    fn manual_never_fires_and_at_fires_once() {
        let m = Schedule::Manual;
        assert!(fires_between(&m, i64::MIN, i64::MAX).is_empty());
        assert_eq!(next_fire(&m, 0), None);
        let a = at("2026-12-01T10:00:00+08:00");
        let t = ms("2026-12-01T02:00:00Z");
        assert_eq!(fires_between(&a, t - 1, t), [t]);
        assert_eq!(fires_between(&a, i64::MIN, i64::MAX), [t]);
        assert!(fires_between(&a, t, i64::MAX).is_empty());
        assert_eq!(next_fire(&a, 0), Some(t));
        assert_eq!(next_fire(&a, t), None);
    }

    #[test]
    fn extreme_instants_neither_panic_nor_lose_fires() {
        let s = cron("0 0 10 * * Tue", "America/New_York");
        let first = fires_between(&s, i64::MIN, i64::MAX);
        assert_eq!(first.len(), MAX_FIRES);
        assert_eq!(iso(first[0]), "1970-01-06T15:00:00Z");
        assert_eq!(next_fire(&s, i64::MAX), None);
        assert_eq!(due(&s, i64::MAX, i64::MIN, None), Due::default());
        assert_eq!(due(&s, i64::MIN, -1, None), Due::default());
        assert_eq!(due(&s, i64::MIN, -5 * DAY_MS, None), Due::default());
        let every_second = cron("* * * * * *", "Asia/Shanghai");
        assert_eq!(
            due(&every_second, i64::MIN, -5 * DAY_MS, None),
            Due::default()
        );
        assert_eq!(due(&every_second, i64::MIN, 0, None).run, [0]);
        let d = due(&s, i64::MIN, ms("2026-01-06T15:00:30Z"), None);
        assert_eq!(d.run, [ms("2026-01-06T15:00:00Z")]);
        assert_eq!(d.missed.len(), MAX_FIRES);
        let ny = zone("America/New_York").0;
        let _ = local_datetime(i64::MIN, &ny);
        let _ = local_datetime(i64::MAX, &ny);
    }

    const HOUR: i64 = 3_600_000;

    #[test]
    fn a_missed_fire_within_catch_up_runs() {
        let s = cron("0 0 10 * * Tue", "Asia/Shanghai");
        let fire = ms("2026-01-06T02:00:00Z");
        let d = due(
            &s,
            fire - 5 * HOUR,
            fire + 30 * 60_000,
            Some(Span::from_secs(3600)),
        );
        assert_eq!(
            d,
            Due {
                run: vec![fire],
                missed: vec![]
            }
        );
        // Exactly catch_up late still runs.
        let d = due(
            &s,
            fire - 5 * HOUR,
            fire + HOUR,
            Some(Span::from_secs(3600)),
        );
        assert_eq!(d.run, [fire]);
    }

    #[test]
    fn a_missed_fire_beyond_catch_up_is_missed() {
        let s = cron("0 0 10 * * Tue", "Asia/Shanghai");
        let fire = ms("2026-01-06T02:00:00Z");
        let d = due(
            &s,
            fire - 5 * HOUR,
            fire + HOUR + 1,
            Some(Span::from_secs(3600)),
        );
        assert_eq!(
            d,
            Due {
                run: vec![],
                missed: vec![fire]
            }
        );
    }

    #[test]
    fn without_catch_up_only_the_poll_tolerance_applies() {
        let s = cron("0 0 10 * * Tue", "Asia/Shanghai");
        let fire = ms("2026-01-06T02:00:00Z");
        let tol = ON_TIME_TOLERANCE.millis();
        assert_eq!(due(&s, fire - 1, fire, None).run, [fire]);
        assert_eq!(due(&s, fire - 1, fire + tol, None).run, [fire]);
        assert_eq!(due(&s, fire - 1, fire + tol + 1, None).missed, [fire]);
        // A catch_up shorter than the tolerance does not make polls miss fires.
        assert_eq!(
            due(&s, fire - 1, fire + tol, Some(Span::from_secs(0))).run,
            [fire]
        );
        // Nothing due before the fire, nor again once it was seen.
        assert_eq!(due(&s, fire - HOUR, fire - 1, None), Due::default());
        assert_eq!(due(&s, fire, fire + 10, None), Due::default());
    }

    #[test]
    fn several_missed_fires_run_only_the_latest() {
        let s = cron("0 0 10 * * *", "Asia/Shanghai");
        let first = ms("2026-01-05T02:00:00Z");
        let now = first + 2 * DAY_MS + 10 * 60_000;
        let d = due(&s, first - HOUR, now, Some(Span::from_days(3)));
        assert_eq!(
            d,
            Due {
                run: vec![first + 2 * DAY_MS],
                missed: vec![first, first + DAY_MS]
            }
        );
        let d = due(&s, first - HOUR, now, Some(Span::from_secs(60)));
        assert_eq!(
            d,
            Due {
                run: vec![],
                missed: vec![first, first + DAY_MS, first + 2 * DAY_MS]
            }
        );
    }

    #[test]
    fn a_long_outage_reports_a_bounded_number_of_missed_fires() {
        let s = cron("0 * * * * *", "UTC");
        let now = ms("2026-01-10T00:00:30Z");
        let d = due(
            &s,
            ms("2026-01-01T00:00:00Z"),
            now,
            Some(Span::from_secs(60)),
        );
        assert_eq!(d.run, [now - 30_000]);
        assert_eq!(d.missed.len(), MAX_FIRES);
        assert_eq!(d.missed.last(), Some(&(now - 90_000)));
        assert!(d.missed.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn due_across_the_fall_back_fold_runs_once() {
        let s = cron("0 30 1 * * *", "America/New_York");
        let first = ms("2026-11-01T05:30:00Z"); // 01:30 EDT
        // Polls every 30 minutes through the repeated hour: one run in all.
        let mut runs = Vec::new();
        let mut last = ms("2026-11-01T04:00:00Z");
        for poll in 1..=6 {
            let now = ms("2026-11-01T04:00:00Z") + poll * 30 * 60_000;
            let d = due(&s, last, now, None);
            assert!(d.missed.is_empty());
            runs.extend(d.run);
            last = now;
        }
        assert_eq!(runs, [first]);
        // Polling from inside the second pass sees nothing new.
        assert_eq!(
            due(
                &s,
                ms("2026-11-01T06:10:00Z"),
                ms("2026-11-01T06:40:00Z"),
                None
            ),
            Due::default()
        );
    }

    #[test]
    fn at_in_the_past_and_the_future() {
        let a = at("2026-12-01T10:00:00+08:00");
        let t = ms("2026-12-01T02:00:00Z");
        let hour = Some(Span::from_secs(3600));
        assert_eq!(due(&a, t - DAY_MS, t - 1, hour), Due::default());
        assert_eq!(due(&a, t - DAY_MS, t + HOUR, hour).run, [t]);
        assert_eq!(due(&a, t - DAY_MS, t + 2 * HOUR, hour).missed, [t]);
        assert_eq!(due(&a, t, t + 2 * HOUR, hour), Due::default());
        assert_eq!(due(&Schedule::Manual, 0, t, hour), Due::default());
    }

    #[test]
    fn wall_clock_helpers_on_dst_days() {
        let ny = zone("America/New_York").0;
        let local = |d: u32, m: u32, h: u32, min: u32| {
            NaiveDate::from_ymd_opt(2026, m, d)
                .unwrap()
                .and_hms_opt(h, min, 0)
                .unwrap()
        };
        assert_eq!(
            iso(first_instant_at(local(8, 3, 2, 30), &ny)),
            "2026-03-08T07:00:00Z"
        );
        assert_eq!(
            iso(first_instant_at(local(1, 11, 1, 30), &ny)),
            "2026-11-01T05:30:00Z"
        );
        let after_first = ms("2026-11-01T05:31:00Z");
        assert_eq!(
            instant_at_or_after(local(1, 11, 1, 30), &ny, after_first)
                .map(iso)
                .as_deref(),
            Some("2026-11-01T06:30:00Z")
        );
        assert_eq!(
            instant_at_or_after(local(1, 11, 1, 30), &ny, ms("2026-11-01T06:31:00Z")),
            None
        );
        assert_eq!(next_day(local(7, 3, 2, 30)), local(8, 3, 2, 30));
    }
}
