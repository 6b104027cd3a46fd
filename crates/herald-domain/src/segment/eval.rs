//! The reference semantics of a filter: evaluates an [`Expr`] against one
//! contact's [`Facts`] in memory, following SPEC section 2's counting rules.
//! The SQL compiler must agree with this on every contact.

use std::cmp::Ordering;
use std::collections::BTreeSet;

use serde_json::Value as Json;

use super::ast::{CmpOp, Expr, Field, Lifecycle, Literal};
use crate::types::Channel;

/// Milliseconds in a day.
pub const MS_PER_DAY: i64 = 86_400_000;

/// Everything a filter can ask about one contact, at the instant `now_ms`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Facts {
    /// The run's snapshot instant, in milliseconds since the Unix epoch.
    pub now_ms: i64,
    /// Email address.
    pub email: Option<String>,
    /// Phone number.
    pub phone: Option<String>,
    /// IANA time zone.
    pub timezone: Option<String>,
    /// Locale.
    pub locale: Option<String>,
    /// The contact's attributes (an object; anything else has no paths).
    pub attrs: Json,
    /// Tags.
    pub tags: Vec<String>,
    /// Channels with an address, consent and no suppression.
    pub channel_ok: BTreeSet<Channel>,
    /// Lifecycle stage, if computed.
    pub lifecycle: Option<Lifecycle>,
    /// RFM scores and measures; `None` for a contact who never made the purchase event.
    pub rfm: Option<Rfm>,
    /// Whole days since the first event or creation.
    pub first_seen_days: i64,
    /// The contact's events (any order; those after `now_ms` are ignored).
    pub events: Vec<EventFact>,
}

/// A contact's RFM scores and the measures behind them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rfm {
    /// Recency score 1..5.
    pub r: u8,
    /// Frequency score 1..5.
    pub f: u8,
    /// Monetary score 1..5.
    pub m: u8,
    /// Whole days since the last purchase.
    pub r_days: i64,
    /// Purchases in the RFM window.
    pub f_count: i64,
    /// Spend in the RFM window.
    pub m_value: f64,
}

/// One event of a contact.
#[derive(Debug, Clone, PartialEq)]
pub struct EventFact {
    /// Event name.
    pub name: String,
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: i64,
    /// Its value (money), if any.
    pub value: Option<f64>,
}

/// A field's value for one contact.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    /// Text.
    Str(&'a str),
    /// A number.
    Num(f64),
    /// A boolean (only from `attrs`).
    Bool(bool),
}

/// Whether the contact described by `facts` matches `expr`.
pub fn evaluate(expr: &Expr, facts: &Facts) -> bool {
    match expr {
        Expr::And { lhs, rhs, .. } => evaluate(lhs, facts) && evaluate(rhs, facts),
        Expr::Or { lhs, rhs, .. } => evaluate(lhs, facts) || evaluate(rhs, facts),
        Expr::Not { expr, .. } => !evaluate(expr, facts),
        Expr::Compare {
            field, op, value, ..
        } => compare(field_value(&field.value, facts), &value.value)
            .is_some_and(|o| op.value.holds(o)),
        Expr::Between {
            field, low, high, ..
        } => {
            let v = field_value(&field.value, facts);
            compare(v, &low.value).is_some_and(|o| CmpOp::Ge.holds(o))
                && compare(v, &high.value).is_some_and(|o| CmpOp::Le.holds(o))
        }
        Expr::In { field, values, .. } => {
            let v = field_value(&field.value, facts);
            values
                .iter()
                .any(|lit| compare(v, &lit.value) == Some(Ordering::Equal))
        }
        Expr::Contains { field, needle, .. } => {
            matches!(field_value(&field.value, facts), Some(Value::Str(s)) if s.contains(needle.value.as_str()))
        }
        Expr::HasTag { tag, .. } => facts.tags.contains(&tag.value),
        Expr::ChannelOk { channel, .. } => facts.channel_ok.contains(&channel.value),
        Expr::IsTrue { field, .. } => field_value(&field.value, facts) == Some(Value::Bool(true)),
    }
}

/// How a value orders against a literal; `None` when missing or of another type.
fn compare(value: Option<Value<'_>>, lit: &Literal) -> Option<Ordering> {
    match (value?, lit) {
        (Value::Num(a), Literal::Num(b)) => a.partial_cmp(b),
        (Value::Str(a), Literal::Str(b)) => Some(a.cmp(b.as_str())),
        (Value::Bool(a), Literal::Bool(b)) => Some(a.cmp(b)),
        _ => None,
    }
}

/// The value of `field` for the contact, or `None` when it is missing.
pub fn field_value<'a>(field: &Field, facts: &'a Facts) -> Option<Value<'a>> {
    let text = |s: &'a Option<String>| s.as_deref().map(Value::Str);
    let rfm = |pick: fn(&Rfm) -> f64| facts.rfm.as_ref().map(|r| Value::Num(pick(r)));
    match field {
        Field::Email => text(&facts.email),
        Field::Phone => text(&facts.phone),
        Field::Timezone => text(&facts.timezone),
        Field::Locale => text(&facts.locale),
        Field::Attr(path) => attr(&facts.attrs, path),
        Field::Lifecycle => facts.lifecycle.map(|l| Value::Str(l.as_str())),
        Field::RfmR => rfm(|r| f64::from(r.r)),
        Field::RfmF => rfm(|r| f64::from(r.f)),
        Field::RfmM => rfm(|r| f64::from(r.m)),
        Field::RfmRDays => rfm(|r| r.r_days as f64),
        Field::RfmFCount => rfm(|r| r.f_count as f64),
        Field::RfmMValue => rfm(|r| r.m_value),
        Field::FirstSeenDays => Some(Value::Num(facts.first_seen_days as f64)),
        Field::Count { event, window } => {
            let since = window.map(|w| facts.now_ms.saturating_sub(w.millis()));
            let n = in_window(facts, event, since).count();
            Some(Value::Num(n as f64))
        }
        Field::Sum { event, window } => {
            let since = window.map(|w| facts.now_ms.saturating_sub(w.millis()));
            let total: f64 = in_window(facts, event, since).filter_map(|e| e.value).sum();
            Some(Value::Num(total))
        }
        Field::DaysSince(event) => {
            let last = in_window(facts, event, None).map(|e| e.at_ms).max()?;
            Some(Value::Num(((facts.now_ms - last) / MS_PER_DAY) as f64))
        }
        Field::Overdue(event) => overdue(facts, event).map(Value::Num),
    }
}

/// Events named `event` with `at` in `(since, now]` (no lower bound without `since`).
fn in_window<'a>(
    facts: &'a Facts,
    event: &'a str,
    since: Option<i64>,
) -> impl Iterator<Item = &'a EventFact> {
    facts.events.iter().filter(move |e| {
        e.name == event && e.at_ms <= facts.now_ms && since.is_none_or(|s| e.at_ms > s)
    })
}

/// Days since the last `event` over the median gap (in days) between consecutive ones.
fn overdue(facts: &Facts, event: &str) -> Option<f64> {
    let mut at: Vec<i64> = in_window(facts, event, None).map(|e| e.at_ms).collect();
    if at.len() < 2 {
        return None;
    }
    at.sort_unstable();
    let mut gaps: Vec<f64> = at
        .windows(2)
        .map(|w| (w[1] - w[0]) as f64 / MS_PER_DAY as f64)
        .collect();
    gaps.sort_by(f64::total_cmp);
    let mid = gaps.len() / 2;
    let median = if gaps.len() % 2 == 1 {
        gaps[mid]
    } else {
        (gaps[mid - 1] + gaps[mid]) / 2.0
    };
    if median == 0.0 {
        return None;
    }
    let last = *at.last()?;
    let since_last = (facts.now_ms - last) as f64 / MS_PER_DAY as f64;
    Some(since_last / median)
}

/// The scalar at `path` below `attrs`; `null`, arrays and objects are missing.
fn attr<'a>(attrs: &'a Json, path: &[String]) -> Option<Value<'a>> {
    let mut cur = attrs;
    for key in path {
        cur = cur.as_object()?.get(key)?;
    }
    match cur {
        Json::String(s) => Some(Value::Str(s)),
        Json::Number(n) => n.as_f64().map(Value::Num),
        Json::Bool(b) => Some(Value::Bool(*b)),
        Json::Null | Json::Array(_) | Json::Object(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segment::parse;
    use serde_json::json;

    /// 2026-01-01T00:00:00Z.
    const NOW: i64 = 1_767_225_600_000;

    fn day(d: f64) -> i64 {
        (d * MS_PER_DAY as f64) as i64
    }

    fn ev(name: &str, at_ms: i64, value: Option<f64>) -> EventFact {
        EventFact {
            name: name.into(),
            at_ms,
            value,
        }
    }

    /// A contact seen at `NOW` with the given events.
    fn with_events(events: Vec<EventFact>) -> Facts {
        Facts {
            now_ms: NOW,
            events,
            ..Facts::default()
        }
    }

    #[track_caller]
    fn is(src: &str, facts: &Facts) -> bool {
        let e = parse(src).unwrap_or_else(|e| panic!("{src}: {e:?}"));
        evaluate(&e, facts)
    }

    #[track_caller]
    fn num(field_src: &str, facts: &Facts) -> Option<f64> {
        let e = parse(&format!("{field_src} == 0")).unwrap();
        match field_value(&e.field().unwrap().value, facts) {
            Some(Value::Num(n)) => Some(n),
            None => None,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn count_window_is_open_below_and_closed_at_now() {
        let w = day(30.0);
        let f = with_events(vec![
            ev("o", NOW - w, None),     // exactly at now - window: out
            ev("o", NOW - w + 1, None), // just inside
            ev("o", NOW, None),         // at now: in
            ev("o", NOW + 1, None),     // after now: ignored
            ev("other", NOW, None),
        ]);
        assert_eq!(num("count(\"o\", \"30d\")", &f), Some(2.0));
        assert_eq!(num("count(\"o\")", &f), Some(3.0));
        assert_eq!(num("count(\"none\", \"30d\")", &f), Some(0.0));
        assert!(is("count(\"none\") == 0", &f));
        assert!(is("count(\"o\", \"30d\") between 2 and 2", &f));
        assert_eq!(num("count(\"o\", \"1h\")", &f), Some(1.0));
    }

    #[test]
    fn sum_adds_values_in_the_window() {
        let f = with_events(vec![
            ev("o", NOW - day(400.0), Some(1000.0)),
            ev("o", NOW - day(10.0), Some(20.5)),
            ev("o", NOW - day(5.0), None),
            ev("o", NOW, Some(4.5)),
            ev("o", NOW + 1, Some(99.0)),
        ]);
        assert_eq!(num("sum(\"o\", \"365d\")", &f), Some(25.0));
        assert_eq!(num("sum(\"o\")", &f), Some(1025.0));
        assert_eq!(num("sum(\"x\")", &f), Some(0.0));
        assert!(is("sum(\"x\", \"1d\") == 0", &f));
    }

    #[test]
    fn days_since_rounds_down_and_ignores_the_future() {
        let f = with_events(vec![
            ev("a", NOW - day(89.99), None),
            ev("a", NOW - day(120.0), None),
            ev("b", NOW - day(90.0), None),
            ev("c", NOW + day(1.0), None),
            ev("d", NOW, None),
        ]);
        assert_eq!(num("days_since(\"a\")", &f), Some(89.0));
        assert_eq!(num("days_since(\"b\")", &f), Some(90.0));
        assert_eq!(num("days_since(\"c\")", &f), None);
        assert_eq!(num("days_since(\"d\")", &f), Some(0.0));
        assert!(is("days_since(\"b\") between 90 and 150", &f));
        assert!(!is("days_since(\"a\") between 90 and 150", &f));
    }

    #[test]
    fn missing_values_are_false_and_their_negation_true() {
        let f = with_events(vec![]);
        for cond in [
            "days_since(\"x\") > 1",
            "days_since(\"x\") <= 1",
            "days_since(\"x\") != 1",
            "overdue(\"x\") >= 0",
            "rfm.r >= 1",
            "rfm.m_value != 0",
            "attrs.missing == 1",
            "attrs.missing != 1",
            "attrs.missing in [1, \"a\"]",
            "attrs.missing between 0 and 9",
            "email == \"\"",
            "email != \"a\"",
            "email contains \"\"",
            "lifecycle != \"new\"",
            "attrs.missing",
        ] {
            assert!(!is(cond, &f), "{cond}");
            assert!(is(&format!("not {cond}"), &f), "not {cond}");
            assert!(is(&format!("not ({cond})"), &f), "not ({cond})");
        }
        assert!(is("lifecycle not in [\"new\"]", &f));
    }

    #[test]
    fn wrong_typed_attrs_compare_as_missing() {
        let f = Facts {
            attrs: json!({
                "age": "30", "n": 30, "vip": true, "no": false, "vip_s": "true",
                "tags": ["a", "b"], "nil": null, "address": {"city": "广州", "zip": 510000}
            }),
            ..Facts::default()
        };
        assert!(!is("attrs.age > 18", &f));
        assert!(!is("attrs.age == 30", &f));
        assert!(is("not attrs.age > 18", &f));
        assert!(is("attrs.age == \"30\"", &f));
        assert!(is("attrs.n == 30 and attrs.n between 30 and 30.0", &f));
        assert!(!is("attrs.n == \"30\"", &f));
        assert!(!is("attrs.n contains \"3\"", &f));
        assert!(is("attrs.n in [\"30\", 30]", &f));
        assert!(!is("attrs.n in [\"30\", true]", &f));
        assert!(is(
            "attrs.vip and attrs.vip == true and attrs.no == false",
            &f
        ));
        assert!(!is("attrs.no", &f));
        assert!(!is("attrs.vip_s", &f));
        assert!(!is("attrs.vip_s == true", &f));
        assert!(!is("attrs.tags contains \"a\"", &f));
        assert!(!is("attrs.tags == \"a\"", &f));
        assert!(!is("attrs.nil == 0", &f));
        assert!(is(
            "attrs.address.city == \"广州\" and attrs.address.zip >= 510000",
            &f
        ));
        assert!(!is("attrs.address == \"x\"", &f));
        assert!(!is("attrs.age.x == 1", &f));
        let not_an_object = Facts {
            attrs: json!(5),
            ..Facts::default()
        };
        assert!(!is("attrs.x == 5", &not_an_object));
    }

    #[test]
    fn overdue_uses_the_median_gap() {
        // Odd number of gaps: 10, 20, 10 days -> median 10; 30 days since last -> 3.
        let odd = with_events(
            [70.0, 60.0, 40.0, 30.0]
                .map(|d| ev("o", NOW - day(d), None))
                .to_vec(),
        );
        assert_eq!(num("overdue(\"o\")", &odd), Some(3.0));
        // Even: gaps 10, 20, 30, 10 -> sorted 10, 10, 20, 30 -> median 15; 30 days since last -> 2.
        let mut even = with_events(
            [100.0, 90.0, 70.0, 40.0, 30.0]
                .map(|d| ev("o", NOW - day(d), None))
                .to_vec(),
        );
        assert_eq!(num("overdue(\"o\")", &even), Some(2.0));
        assert!(is("overdue(\"o\") == 2", &even));
        // A future event changes nothing; order of the list does not matter.
        even.events.push(ev("o", NOW + day(1.0), None));
        even.events.reverse();
        assert_eq!(num("overdue(\"o\")", &even), Some(2.0));
        // Fractional days: gap 2 days, last 1.5 days ago -> 0.75.
        let frac = with_events(vec![
            ev("o", NOW - day(3.5), None),
            ev("o", NOW - day(1.5), None),
        ]);
        assert_eq!(num("overdue(\"o\")", &frac), Some(0.75));
    }

    #[test]
    fn overdue_is_missing_without_two_events_or_with_a_zero_median() {
        let one = with_events(vec![ev("o", NOW - day(5.0), None), ev("o", NOW + 5, None)]);
        assert_eq!(num("overdue(\"o\")", &one), None);
        assert!(is("not overdue(\"o\") > 0", &one));
        let same_time = with_events(vec![
            ev("o", NOW - day(5.0), None),
            ev("o", NOW - day(5.0), None),
            ev("o", NOW - day(5.0), None),
            ev("o", NOW - day(1.0), None),
        ]);
        // Gaps 0, 0, 4 -> median 0.
        assert_eq!(num("overdue(\"o\")", &same_time), None);
    }

    #[test]
    fn strings_compare_by_code_point() {
        let f = Facts {
            email: Some("Ann@Example.com".into()),
            locale: Some("zh-CN".into()),
            attrs: json!({"name": "é"}),
            ..Facts::default()
        };
        assert!(is("email < \"a\"", &f)); // 'A' < 'a'
        assert!(is("attrs.name > \"z\"", &f));
        assert!(is("email contains \"@Example.\"", &f));
        assert!(!is("email contains \"@example.\"", &f));
        assert!(is("locale between \"zh\" and \"zh-Z\"", &f));
        assert!(is("locale between \"zh-CN\" and \"zh-CN\"", &f));
        assert!(is("locale in [\"en\", \"zh-CN\"]", &f));
        assert!(!is("locale in [\"zh-cn\"]", &f));
        assert!(is(
            "locale >= \"zh-CN\" and locale <= \"zh-CN\" and not locale < \"zh-CN\"",
            &f
        ));
    }

    #[test]
    fn scalar_fields_tags_channels_and_lifecycle() {
        let f = Facts {
            phone: Some("+8613800000000".into()),
            timezone: Some("Asia/Shanghai".into()),
            tags: vec!["vip".into()],
            channel_ok: [Channel::Sms].into_iter().collect(),
            lifecycle: Some(Lifecycle::Dormant),
            rfm: Some(Rfm {
                r: 2,
                f: 4,
                m: 5,
                r_days: 200,
                f_count: 6,
                m_value: 1234.5,
            }),
            first_seen_days: 400,
            ..Facts::default()
        };
        assert!(is("has_tag(\"vip\") and not has_tag(\"VIP\")", &f));
        assert!(is("channel_ok(\"sms\") and not channel_ok(\"email\")", &f));
        assert!(is(
            "lifecycle == \"dormant\" and lifecycle in [\"dormant\", \"churned\"]",
            &f
        ));
        assert!(is("lifecycle != \"new\"", &f));
        assert!(is(
            "rfm.r == 2 and rfm.f >= 4 and rfm.m between 5 and 5",
            &f
        ));
        assert!(is(
            "rfm.r_days == 200 and rfm.f_count == 6 and rfm.m_value > 1234.49",
            &f
        ));
        assert!(is("first_seen_days > 365", &f));
        assert!(is(
            "phone contains \"+86\" and timezone == 'Asia/Shanghai'",
            &f
        ));
        assert!(is("has_tag(\"x\") or rfm.r < 3", &f));
        assert!(!is("has_tag(\"x\") or rfm.r > 3", &f));
    }

    #[test]
    fn spec_example_by_hand() {
        let src = "attrs.region == \"guangdong\"\n  and days_since(\"order_placed\") between 90 and 150\n  and count(\"order_placed\", \"365d\") >= 2\n  and not has_tag(\"wholesale\")";
        let mut f = Facts {
            now_ms: NOW,
            attrs: json!({"region": "guangdong"}),
            events: vec![
                ev("order_placed", NOW - day(300.0), Some(50.0)),
                ev("order_placed", NOW - day(150.0), Some(80.0)),
                ev("order_placed", NOW + day(1.0), None),
            ],
            ..Facts::default()
        };
        assert!(is(src, &f));
        f.tags.push("wholesale".into());
        assert!(!is(src, &f));
        f.tags.clear();
        f.events[0].at_ms = NOW - day(365.0); // leaves the window: count is 1
        assert!(!is(src, &f));
    }
}
