//! Personalisation data for templates (SPEC section 2, "Templates see"):
//! `rfm`, `lifecycle`, `best_hour` and `top.EVENT.PROPERTY` for a page of
//! contacts, in three queries per page however long it is, never one per contact.
//!
//! - `rfm` and `lifecycle` are the segment compiler's own expressions
//!   ([`personal_sql`]), so a template prints exactly the numbers a filter
//!   tests. A composite M (`monetary_weights`) still ranks against the whole
//!   base, which costs one pass over every buyer's events per page.
//! - `best_hour`: the local hour (0..23) in which most of the contact's events
//!   of the window fall, in their time zone (else `[defaults] timezone`). SQLite
//!   has no time zone database, so herald computes, for each zone on the page,
//!   the spans of the window with one UTC offset (DST moves the offset; a span
//!   ends exactly at each transition) and sends them as a small table; both
//!   databases then add an integer offset to each event's instant: the same
//!   arithmetic, exact across DST changes. Ties go to the hour holding the
//!   contact's most recent event (their current habit); events at one instant
//!   share an hour, so that settles every tie.
//! - `top.EVENT.PROPERTY`: the contact's most frequent value of `PROPERTY`
//!   among their `EVENT` events of the window (strings, numbers and booleans;
//!   an empty string, an object or a missing property does not count). Ties
//!   go to the value seen most recently, then to the smallest text by code
//!   point (two values at the same instant).
//!
//! The window is `(now - [personalisation] window, now]`, like `count()`.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Offset, TimeZone};
use chrono_tz::Tz;
use herald_domain::config::{LifecycleConfig, RfmConfig};
use herald_domain::duration::Span;
use herald_domain::segment::{Lifecycle, Rfm};
use herald_engine::store::{Personalisation, PersonalisationRequest, TopKey};
use sea_orm::{ConnectionTrait, DbBackend, QueryResult};
use serde_json::Value as Json;

use crate::db::Db;
use crate::segment_sql::{SegmentContext, Unsupported, personal_sql};
use crate::sql::Sql;

/// Contacts per query: every id is a bound parameter, and SQLite allows 32,766 of them.
pub const IDS_PER_QUERY: usize = 5000;

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;

/// How far apart [`offset_spans`] looks for a change of UTC offset. Time zone rules never
/// change an offset twice within hours, so no change between two probes goes unseen.
const PROBE_MS: i64 = 6 * HOUR_MS;

/// Why personalisation data could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PersonaliseError {
    /// The database failed.
    #[error("database: {0}")]
    Db(#[from] sea_orm::DbErr),
    /// The `[rfm]` settings cannot be compiled.
    #[error(transparent)]
    Unsupported(#[from] Unsupported),
    /// A row held something these queries never produce.
    #[error("personalisation query returned {0}")]
    Unexpected(String),
}

/// A contact to personalise: its id and its stored time zone (IANA name, maybe invalid).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subject<'a> {
    /// Contact id.
    pub id: i64,
    /// As stored; `None` or an unknown name means `[defaults] timezone`.
    pub timezone: Option<&'a str>,
}

/// The personalisation `want` asks for, for each of `contacts` (every one gets an entry).
pub async fn personalise(
    db: &Db,
    rfm: &RfmConfig,
    lifecycle: &LifecycleConfig,
    contacts: &[Subject<'_>],
    want: &PersonalisationRequest,
) -> Result<HashMap<i64, Personalisation>, PersonaliseError> {
    let mut out: HashMap<i64, Personalisation> = contacts
        .iter()
        .map(|c| (c.id, Personalisation::default()))
        .collect();
    let ctx = SegmentContext::new(db.backend(), want.now, rfm, lifecycle);
    for page in contacts.chunks(IDS_PER_QUERY) {
        let ids: Vec<i64> = page.iter().map(|c| c.id).collect();
        if want.rfm_lifecycle {
            for (id, (rfm, stage)) in rfm_and_lifecycle(db, &ctx, &ids).await? {
                if let Some(p) = out.get_mut(&id) {
                    p.rfm = rfm;
                    p.lifecycle = Some(stage);
                }
            }
        }
        if want.best_hour {
            let tz = want.default_timezone.0;
            for (id, hour) in best_hours(db, page, want.now, want.window, tz).await? {
                if let Some(p) = out.get_mut(&id) {
                    p.best_hour = Some(hour);
                }
            }
        }
        // One query for both forms: `top.EVENT.PROPERTY` is the first of the
        // ranked values, `(top "EVENT" "PROPERTY" N)` the first N.
        let mut keys: BTreeMap<TopKey, usize> = want.top.iter().map(|k| (k.clone(), 1)).collect();
        for (k, n) in &want.top_lists {
            let mine = keys.entry(k.clone()).or_default();
            *mine = (*mine).max(*n);
        }
        let keys: Vec<(TopKey, usize)> = keys.into_iter().collect();
        for (id, ranked) in top_values(db, &ids, want.now, want.window, &keys).await? {
            if let Some(p) = out.get_mut(&id) {
                for (key, values) in ranked {
                    if want.top.contains(&key)
                        && let Some(first) = values.first()
                    {
                        p.top.insert(key.clone(), first.clone());
                    }
                    if let Some(n) = want.top_lists.get(&key) {
                        p.top_lists
                            .insert(key, values.into_iter().take(*n).collect());
                    }
                }
            }
        }
    }
    Ok(out)
}

/// RFM (absent without a purchase) and lifecycle stage of `ids`, in one query.
pub async fn rfm_and_lifecycle(
    db: &Db,
    ctx: &SegmentContext<'_>,
    ids: &[i64],
) -> Result<HashMap<i64, (Option<Rfm>, Lifecycle)>, PersonaliseError> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = all(db, personal_sql(ctx, ids)?).await?;
    let mut out = HashMap::with_capacity(rows.len());
    for r in &rows {
        let score = |i| -> Result<Option<u8>, PersonaliseError> {
            int(r, i)?
                .map(|v| u8::try_from(v).map_err(|_| unexpected(i, v)))
                .transpose()
        };
        let rfm = match (score(1)?, score(2)?, score(3)?, int(r, 4)?, int(r, 5)?) {
            (Some(r_), Some(f), Some(m), Some(r_days), Some(f_count)) => {
                float(r, 6)?.map(|m_value| Rfm {
                    r: r_,
                    f,
                    m,
                    r_days,
                    f_count,
                    m_value,
                })
            }
            _ => None,
        };
        let stage: String = r.try_get_by_index(7)?;
        let stage = stage.parse().map_err(PersonaliseError::Unexpected)?;
        out.insert(
            int(r, 0)?.ok_or_else(|| unexpected(0, "NULL"))?,
            (rfm, stage),
        );
    }
    Ok(out)
}

/// The local hour of most of each contact's events in `(now - window, now]`; contacts
/// without events there are absent. One query: see the module docs.
pub async fn best_hours(
    db: &Db,
    contacts: &[Subject<'_>],
    now: i64,
    window: Span,
    default_timezone: Tz,
) -> Result<HashMap<i64, u8>, PersonaliseError> {
    if contacts.is_empty() {
        return Ok(HashMap::new());
    }
    let since = now.saturating_sub(window.millis());
    let b = db.backend();
    // One table of offset spans per distinct stored zone ('' for none); an invalid name
    // gets the default zone's spans.
    let stored: BTreeSet<&str> = contacts.iter().map(|c| c.timezone.unwrap_or("")).collect();
    let mut q = Sql::new();
    q.push("WITH z(tz, lo, hi, off) AS (VALUES ");
    let mut first = true;
    for name in stored {
        let zone = name.parse::<Tz>().unwrap_or(default_timezone);
        for s in offset_spans(zone, since, now.saturating_add(1)) {
            if !first {
                q.push(", ");
            }
            first = false;
            // Instants and offsets are numbers herald computed: inlined, typed BIGINT.
            q.push("(")
                .bind_as(b, name.to_string(), "text")
                .push(&format!(
                    ", CAST({} AS BIGINT), CAST({} AS BIGINT), CAST({} AS BIGINT))",
                    s.start, s.end, s.offset_ms
                ));
        }
    }
    q.push(&format!(
        ") SELECT e.contact_id, ((e.at + z.off) % {DAY_MS} + {DAY_MS}) % {DAY_MS} / {HOUR_MS}, COUNT(*), MAX(e.at) \
         FROM events e JOIN contacts c ON c.id = e.contact_id \
         JOIN z ON z.tz = COALESCE(c.timezone, '') AND e.at >= z.lo AND e.at < z.hi \
         WHERE e.at > {since} AND e.at <= {now} AND e.contact_id IN "
    ));
    id_list(&mut q, contacts.iter().map(|c| c.id));
    q.push(" GROUP BY 1, 2");
    // (count, latest event) of the best hour so far, per contact.
    let mut best: HashMap<i64, (i64, i64, u8)> = HashMap::new();
    for r in all(db, q).await? {
        let get = |i| int(&r, i)?.ok_or_else(|| unexpected(i, "NULL"));
        let (id, hour, n, last) = (get(0)?, get(1)?, get(2)?, get(3)?);
        let hour = u8::try_from(hour)
            .ok()
            .filter(|h| *h < 24)
            .ok_or_else(|| unexpected(1, hour))?;
        let entry = best.entry(id).or_insert((n, last, hour));
        if (n, last) > (entry.0, entry.1) {
            *entry = (n, last, hour);
        }
    }
    Ok(best.into_iter().map(|(id, (_, _, h))| (id, h)).collect())
}

/// Each contact's most frequent value of every `keys` pair in `(now - window, now]`,
/// in one query; pairs (and contacts) without a value are absent.
pub async fn top_values(
    db: &Db,
    ids: &[i64],
    now: i64,
    window: Span,
    keys: &[(TopKey, usize)],
) -> Result<HashMap<i64, BTreeMap<TopKey, Vec<Json>>>, PersonaliseError> {
    // A SQLite JSON path cannot hold these; such a property is never found, on either database.
    let kept: Vec<&(TopKey, usize)> = keys
        .iter()
        .filter(|(k, _)| !k.property.contains(['"', '\\']))
        .collect();
    let most = kept.iter().map(|(_, n)| *n).max().unwrap_or(1).max(1);
    let keys: Vec<&TopKey> = kept.iter().map(|(k, _)| k).collect();
    if ids.is_empty() || keys.is_empty() {
        return Ok(HashMap::new());
    }
    let b = db.backend();
    let pg = b == DbBackend::Postgres;
    let since = now.saturating_sub(window.millis());
    let mut q = Sql::new();
    q.push("WITH k(i, ev, key) AS (VALUES ");
    for (i, k) in keys.iter().enumerate() {
        if i > 0 {
            q.push(", ");
        }
        let key = if pg {
            k.property.clone()
        } else {
            format!("$.\"{}\"", k.property)
        };
        q.push(&format!("(CAST({i} AS BIGINT), "))
            .bind_as(b, k.event.clone(), "text")
            .push(", ")
            .bind_as(b, key, "text")
            .push(")");
    }
    // The value's JSON type ('s', 'n', 'b'; NULL for anything else) and its text.
    let (kind, text, order) = if pg {
        (
            "CASE jsonb_typeof(e.properties -> k.key) WHEN 'string' THEN 's' WHEN 'number' THEN 'n' WHEN 'boolean' THEN 'b' END",
            "e.properties ->> k.key",
            "txt COLLATE \"C\"",
        )
    } else {
        (
            "CASE json_type(e.properties, k.key) WHEN 'text' THEN 's' WHEN 'integer' THEN 'n' WHEN 'real' THEN 'n' WHEN 'true' THEN 'b' WHEN 'false' THEN 'b' END",
            "CASE json_type(e.properties, k.key) WHEN 'true' THEN 'true' WHEN 'false' THEN 'false' ELSE CAST(json_extract(e.properties, k.key) AS TEXT) END",
            "txt",
        )
    };
    q.push(&format!(
        "), x AS (SELECT e.contact_id AS cid, k.i AS i, {kind} AS kind, {text} AS txt, e.at AS at \
         FROM events e JOIN k ON k.ev = e.name WHERE e.at > {since} AND e.at <= {now} AND e.contact_id IN "
    ));
    id_list(&mut q, ids.iter().copied());
    q.push(&format!(
        "), g AS (SELECT cid, i, kind, txt, COUNT(*) AS n, MAX(at) AS last FROM x \
         WHERE kind IS NOT NULL AND NOT (kind = 's' AND txt = '') GROUP BY cid, i, kind, txt), \
         r AS (SELECT cid, i, kind, txt, ROW_NUMBER() OVER (PARTITION BY cid, i ORDER BY n DESC, last DESC, {order}, kind) AS rn FROM g) \
         SELECT cid, i, kind, txt FROM r WHERE rn <= {most} ORDER BY cid, i, rn"
    ));
    let mut out: HashMap<i64, BTreeMap<TopKey, Vec<Json>>> = HashMap::new();
    for r in all(db, q).await? {
        let id = int(&r, 0)?.ok_or_else(|| unexpected(0, "NULL"))?;
        let i = int(&r, 1)?.ok_or_else(|| unexpected(1, "NULL"))?;
        let key = usize::try_from(i)
            .ok()
            .and_then(|i| keys.get(i))
            .ok_or_else(|| unexpected(1, i))?;
        let kind: String = r.try_get_by_index(2)?;
        let text: String = r.try_get_by_index(3)?;
        out.entry(id)
            .or_default()
            .entry((*key).clone())
            .or_default()
            .push(json_value(&kind, text)?);
    }
    Ok(out)
}

/// The template value of a property value the query returned as (JSON type, text).
fn json_value(kind: &str, text: String) -> Result<Json, PersonaliseError> {
    match kind {
        "s" => Ok(Json::String(text)),
        "b" => Ok(Json::Bool(text == "true")),
        "n" => {
            let v: f64 = text.parse().map_err(|_| unexpected(3, &text))?;
            // A whole number prints as one (`1042`, not `1042.0`), on both databases.
            if v.fract() == 0.0 && v.abs() < 9.0e15 {
                Ok(Json::from(v as i64))
            } else {
                Ok(serde_json::Number::from_f64(v).map_or(Json::Null, Json::Number))
            }
        }
        other => Err(unexpected(2, other)),
    }
}

/// A stretch `[start, end)` of instants (ms) over which a zone's UTC offset is `offset_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetSpan {
    /// First instant.
    pub start: i64,
    /// First instant after it.
    pub end: i64,
    /// Local time minus UTC, in ms.
    pub offset_ms: i64,
}

/// `zone`'s UTC offset at `at` (ms), in ms.
pub fn offset_at(zone: Tz, at: i64) -> i64 {
    DateTime::from_timestamp_millis(at).map_or(0, |t| {
        let off = zone.offset_from_utc_datetime(&t.naive_utc()).fix();
        i64::from(off.local_minus_utc()) * 1000
    })
}

/// Splits `[from, to)` where `zone`'s UTC offset changes: each span has one offset and
/// ends exactly at a transition (found by bisection to the millisecond).
pub fn offset_spans(zone: Tz, from: i64, to: i64) -> Vec<OffsetSpan> {
    let mut spans = Vec::new();
    if from >= to {
        return spans;
    }
    let mut start = from;
    let mut offset = offset_at(zone, from);
    let mut probe = from;
    while probe < to - 1 {
        probe = probe.saturating_add(PROBE_MS).min(to - 1);
        // Several transitions between two probes are found one after another.
        while offset_at(zone, probe) != offset {
            // The first instant in (start, probe] whose offset differs.
            let (mut lo, mut hi) = (start, probe);
            while hi - lo > 1 {
                let mid = lo + (hi - lo) / 2;
                if offset_at(zone, mid) == offset {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            spans.push(OffsetSpan {
                start,
                end: hi,
                offset_ms: offset,
            });
            start = hi;
            offset = offset_at(zone, hi);
        }
    }
    spans.push(OffsetSpan {
        start,
        end: to,
        offset_ms: offset,
    });
    spans
}

/// The local hour (0..23) of instant `at` at UTC offset `offset_ms`, as the query computes it.
pub fn local_hour(at: i64, offset_ms: i64) -> u8 {
    ((at + offset_ms).rem_euclid(DAY_MS) / HOUR_MS) as u8
}

/// `(id, id, ..)` with each id bound.
fn id_list(q: &mut Sql, ids: impl Iterator<Item = i64>) {
    q.push("(");
    let mut empty = true;
    for (i, id) in ids.enumerate() {
        if i > 0 {
            q.push(", ");
        }
        q.bind(id);
        empty = false;
    }
    q.push(if empty { "NULL)" } else { ")" });
}

async fn all(db: &Db, q: Sql) -> Result<Vec<QueryResult>, PersonaliseError> {
    Ok(db.conn.query_all_raw(q.build(db.backend())).await?)
}

fn unexpected(column: usize, what: impl std::fmt::Display) -> PersonaliseError {
    PersonaliseError::Unexpected(format!("`{what}` in column {column}"))
}

/// An integer column: BIGINT, or INT4 where PostgreSQL types a `CASE` of small literals so.
fn int(r: &QueryResult, i: usize) -> Result<Option<i64>, PersonaliseError> {
    if let Ok(v) = r.try_get_by_index::<Option<i64>>(i) {
        return Ok(v);
    }
    Ok(r.try_get_by_index::<Option<i32>>(i)?.map(i64::from))
}

/// A number column that SQLite may hand back as an integer (`COALESCE(SUM(..), 0)` is 0).
fn float(r: &QueryResult, i: usize) -> Result<Option<f64>, PersonaliseError> {
    if let Ok(v) = r.try_get_by_index::<Option<f64>>(i) {
        return Ok(v);
    }
    Ok(int(r, i)?.map(|v| v as f64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_db::on_both_databases;

    use herald_domain::config::Timezone;
    use herald_domain::segment::parse;
    use sea_orm::Value;
    use serde_json::json;

    use crate::segment_sql::count_sql;

    /// 2026-01-01T00:00:00Z.
    const NOW: i64 = 1_767_225_600_000;
    const MIN_MS: i64 = 60_000;

    fn at(rfc3339: &str) -> i64 {
        DateTime::parse_from_rfc3339(rfc3339)
            .unwrap()
            .timestamp_millis()
    }

    // -----------------------------------------------------------------------
    // Time zone arithmetic, no database.

    #[test]
    fn spans_end_exactly_at_dst_transitions() {
        let ny: Tz = "America/New_York".parse().unwrap();
        let from = at("2026-01-01T00:00:00Z");
        let to = at("2027-01-01T00:00:00Z");
        let spans = offset_spans(ny, from, to);
        let h = |n: i64| n * HOUR_MS;
        assert_eq!(
            spans,
            [
                OffsetSpan {
                    start: from,
                    end: at("2026-03-08T07:00:00Z"),
                    offset_ms: -h(5)
                },
                OffsetSpan {
                    start: at("2026-03-08T07:00:00Z"),
                    end: at("2026-11-01T06:00:00Z"),
                    offset_ms: -h(4)
                },
                OffsetSpan {
                    start: at("2026-11-01T06:00:00Z"),
                    end: to,
                    offset_ms: -h(5)
                },
            ]
        );
        // No DST: one span; an empty range: none.
        assert_eq!(offset_spans(chrono_tz::Asia::Shanghai, from, to).len(), 1);
        assert_eq!(
            offset_spans(chrono_tz::Asia::Kolkata, from, to)[0].offset_ms,
            19_800_000
        );
        assert!(offset_spans(ny, to, to).is_empty());
        // A span boundary that lands on a probe, and a range shorter than a probe.
        let t = at("2026-03-08T07:00:00Z");
        assert_eq!(offset_spans(ny, t - PROBE_MS, t).len(), 1);
        assert_eq!(offset_spans(ny, t - 1, t + 1).len(), 2);
    }

    #[test]
    fn span_hours_match_the_time_zone_database_around_every_transition() {
        use chrono::Timelike;
        for name in [
            "America/New_York",
            "Europe/Berlin",
            "Australia/Lord_Howe",
            "Asia/Kathmandu",
        ] {
            let zone: Tz = name.parse().unwrap();
            let (from, to) = (at("2025-06-01T00:00:00Z"), at("2027-06-01T00:00:00Z"));
            let spans = offset_spans(zone, from, to);
            assert!(
                spans
                    .windows(2)
                    .all(|w| w[0].end == w[1].start && w[0].offset_ms != w[1].offset_ms)
            );
            for s in &spans {
                // Either side of every boundary, and a few minutes in.
                for t in [
                    s.start,
                    s.start + 7 * MIN_MS,
                    s.end - 1,
                    s.end - 13 * MIN_MS,
                ] {
                    if t < s.start || t >= s.end {
                        continue;
                    }
                    let want = DateTime::from_timestamp_millis(t)
                        .unwrap()
                        .with_timezone(&zone)
                        .hour();
                    assert_eq!(u32::from(local_hour(t, s.offset_ms)), want, "{name} at {t}");
                }
            }
        }
    }

    #[test]
    fn local_hours_wrap_around_midnight_both_ways() {
        assert_eq!(local_hour(at("2026-01-01T23:30:00Z"), 8 * HOUR_MS), 7);
        assert_eq!(local_hour(at("2026-01-01T02:30:00Z"), -5 * HOUR_MS), 21);
        assert_eq!(local_hour(-1, 0), 23);
    }

    #[test]
    fn property_values_keep_their_json_type() {
        assert_eq!(json_value("s", "tea".into()).unwrap(), json!("tea"));
        assert_eq!(json_value("n", "1042".into()).unwrap(), json!(1042));
        assert_eq!(json_value("n", "1042.0".into()).unwrap(), json!(1042));
        assert_eq!(json_value("n", "2.5".into()).unwrap(), json!(2.5));
        assert_eq!(json_value("b", "false".into()).unwrap(), json!(false));
        assert!(json_value("n", "x".into()).is_err());
    }

    // -----------------------------------------------------------------------
    // Both databases.

    /// A contact to insert: id, time zone, created (ms), events (name, at, value, properties).
    struct C {
        id: i64,
        tz: Option<&'static str>,
        events: Vec<(&'static str, i64, Option<f64>, Option<Json>)>,
    }

    fn c(id: i64, tz: Option<&'static str>) -> C {
        C {
            id,
            tz,
            events: vec![],
        }
    }

    impl C {
        fn ev(
            mut self,
            name: &'static str,
            at: i64,
            value: Option<f64>,
            props: Option<Json>,
        ) -> Self {
            self.events.push((name, at, value, props));
            self
        }
    }

    async fn seed(db: &Db, contacts: &[C]) {
        let b = db.backend();
        for c in contacts {
            let first_seen = c.events.iter().map(|e| e.1).min();
            let mut q = Sql::new();
            q.push("INSERT INTO contacts (id, external_id, timezone, attrs, first_seen_at, created_at, updated_at) VALUES (")
                .bind(c.id)
                .push(", ")
                .bind(format!("c{}", c.id))
                .push(", ")
                .bind_as(b, c.tz.map(str::to_string), "text")
                .push(", ")
                .bind_as(b, Value::Json(Some(Box::new(json!({"n": c.id})))), "jsonb")
                .push(", ")
                .bind_as(b, first_seen, "int8")
                .push(&format!(", {}, {})", NOW - 400 * DAY_MS, NOW - 400 * DAY_MS));
            exec(db, q).await;
            for (name, at, value, props) in &c.events {
                let mut q = Sql::new();
                q.push("INSERT INTO events (contact_id, name, at, value, properties, received_at) VALUES (")
                    .bind(c.id)
                    .push(", ")
                    .bind(name.to_string())
                    .push(", ")
                    .bind(*at)
                    .push(", ")
                    .bind_as(b, *value, "float8")
                    .push(", ")
                    .bind_as(b, Value::Json(props.clone().map(Box::new)), "jsonb")
                    .push(", ")
                    .bind(*at)
                    .push(")");
                exec(db, q).await;
            }
        }
    }

    async fn exec(db: &Db, q: Sql) {
        db.conn
            .execute_raw(q.build(db.backend()))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }

    fn request(top: &[(&str, &str)], window_days: i64) -> PersonalisationRequest {
        PersonalisationRequest {
            now: NOW,
            window: Span::from_days(window_days),
            default_timezone: Timezone(chrono_tz::Asia::Shanghai),
            top: top
                .iter()
                .map(|(e, p)| TopKey {
                    event: e.to_string(),
                    property: p.to_string(),
                })
                .collect(),
            top_lists: BTreeMap::new(),
            rfm_lifecycle: true,
            best_hour: true,
        }
    }

    async fn run(
        db: &Db,
        rfm: &RfmConfig,
        ids: &[(i64, Option<&str>)],
        want: &PersonalisationRequest,
    ) -> HashMap<i64, Personalisation> {
        let subjects: Vec<Subject<'_>> = ids
            .iter()
            .map(|(id, tz)| Subject {
                id: *id,
                timezone: *tz,
            })
            .collect();
        personalise(db, rfm, &LifecycleConfig::default(), &subjects, want)
            .await
            .unwrap()
    }

    fn sku(v: &str) -> Option<Json> {
        Some(json!({ "sku": v }))
    }

    fn top_of(p: &Personalisation, event: &str, property: &str) -> Option<Json> {
        p.top
            .get(&TopKey {
                event: event.into(),
                property: property.into(),
            })
            .cloned()
    }

    on_both_databases!(
        best_hour_is_local_across_dst,
        best_hour_ties_and_missing_data,
        top_values_count_ties_and_window_edges,
        rfm_and_lifecycle_match_the_segment_sql,
        composite_m_ranks_against_the_whole_base,
        only_what_is_asked_for_is_computed,
    );

    /// A campaign whose templates print none of RFM, lifecycle and best hour does
    /// not pay for their queries; a best-hour plan pays only for its own.
    async fn only_what_is_asked_for_is_computed(db: &Db) {
        let d = |days: i64| NOW - days * DAY_MS;
        seed(
            db,
            &[c(1, Some("UTC"))
                .ev("order_placed", d(3), Some(10.0), sku("tea"))
                .ev("app_open", d(1), None, None)],
        )
        .await;
        let ids = [(1, Some("UTC"))];
        let all = run(
            db,
            &RfmConfig::default(),
            &ids,
            &request(&[("order_placed", "sku")], 30),
        )
        .await;
        assert!(
            all[&1].rfm.is_some() && all[&1].lifecycle.is_some() && all[&1].best_hour.is_some()
        );
        let only_top = PersonalisationRequest {
            rfm_lifecycle: false,
            best_hour: false,
            ..request(&[("order_placed", "sku")], 30)
        };
        let got = run(db, &RfmConfig::default(), &ids, &only_top).await;
        assert_eq!(
            got[&1],
            Personalisation {
                top: all[&1].top.clone(),
                ..Default::default()
            }
        );
        assert_eq!(top_of(&got[&1], "order_placed", "sku"), Some(json!("tea")));
        let hour = PersonalisationRequest {
            rfm_lifecycle: false,
            ..request(&[], 30)
        };
        let got = run(db, &RfmConfig::default(), &ids, &hour).await;
        assert_eq!(
            got[&1],
            Personalisation {
                best_hour: all[&1].best_hour,
                ..Default::default()
            }
        );
    }

    /// New York: 14:30 local is 19:30 UTC in winter and 18:30 UTC in summer. A UTC-hour
    /// histogram would split them; the local one counts three events at 14.
    async fn best_hour_is_local_across_dst(db: &Db) {
        let ny = Some("America/New_York");
        seed(
            db,
            &[
                c(1, ny)
                    .ev("app_open", at("2025-12-10T19:30:00Z"), None, None)
                    .ev("app_open", at("2025-07-10T18:30:00Z"), None, None)
                    .ev("login", at("2025-03-09T18:30:00Z"), None, None)
                    .ev("app_open", at("2025-12-11T18:45:00Z"), None, None)
                    .ev("app_open", at("2025-12-12T18:50:00Z"), None, None),
                // The fall-back hour happens twice: 01:xx local both times.
                c(2, ny)
                    .ev("app_open", at("2025-11-02T05:30:00Z"), None, None)
                    .ev("app_open", at("2025-11-02T06:30:00Z"), None, None)
                    .ev("app_open", at("2025-11-03T12:00:00Z"), None, None),
                // Kathmandu is UTC+05:45: 18:20 UTC is 00:05 the next day.
                c(3, Some("Asia/Kathmandu")).ev("app_open", at("2025-12-01T18:20:00Z"), None, None),
            ],
        )
        .await;
        let want = request(&[], 365);
        let got = run(
            db,
            &RfmConfig::default(),
            &[(1, ny), (2, ny), (3, Some("Asia/Kathmandu"))],
            &want,
        )
        .await;
        assert_eq!(got[&1].best_hour, Some(14), "{:?}", got[&1]);
        assert_eq!(got[&2].best_hour, Some(1));
        assert_eq!(got[&3].best_hour, Some(0));
    }

    async fn best_hour_ties_and_missing_data(db: &Db) {
        seed(
            db,
            &[
                // Two events at 09 and two at 20 (Shanghai, the default): the hour of the most
                // recent event wins the tie, whichever order they were recorded in.
                c(1, None)
                    .ev("a", at("2025-12-10T01:00:00Z"), None, None)
                    .ev("a", at("2025-12-12T12:00:00Z"), None, None)
                    .ev("a", at("2025-12-13T12:00:00Z"), None, None)
                    .ev("a", at("2025-12-14T01:00:00Z"), None, None),
                // An unknown zone name falls back to the default too.
                c(2, Some("Mars/Olympus")).ev("a", at("2025-12-10T01:00:00Z"), None, None),
                // Events only outside the window (at the exclusive edge, in the future): none.
                c(3, Some("UTC")).ev("a", NOW - 30 * DAY_MS, None, None).ev(
                    "a",
                    NOW + 1,
                    None,
                    None,
                ),
                // Exactly `now` is inside.
                c(4, Some("UTC")).ev("a", NOW, None, None),
                // No events at all.
                c(5, Some("UTC")),
            ],
        )
        .await;
        let want = request(&[], 30);
        let ids = [
            (1, None),
            (2, Some("Mars/Olympus")),
            (3, Some("UTC")),
            (4, Some("UTC")),
            (5, Some("UTC")),
        ];
        let got = run(db, &RfmConfig::default(), &ids, &want).await;
        assert_eq!(got[&1].best_hour, Some(9));
        assert_eq!(got[&2].best_hour, Some(9));
        assert_eq!(got[&3].best_hour, None);
        assert_eq!(got[&4].best_hour, Some(0));
        assert_eq!(
            got[&5],
            Personalisation {
                lifecycle: Some(Lifecycle::Churned),
                ..Default::default()
            }
        );
        // Nothing is asked of the database for an empty page.
        assert!(run(db, &RfmConfig::default(), &[], &want).await.is_empty());
    }

    async fn top_values_count_ties_and_window_edges(db: &Db) {
        let d = |days: i64| NOW - days * DAY_MS;
        seed(
            db,
            &[
                // mug twice, tea once: mug; other events and properties do not count.
                c(1, None)
                    .ev("order_placed", d(5), Some(10.0), sku("tea"))
                    .ev("order_placed", d(50), Some(10.0), sku("mug"))
                    .ev("order_placed", d(60), Some(10.0), sku("mug"))
                    .ev("app_open", d(1), None, sku("tea"))
                    .ev("app_open", d(2), None, sku("tea"))
                    .ev("order_placed", d(3), None, Some(json!({"colour": "red"}))),
                // One each: the most recent wins; the same instant: the smaller text.
                c(2, None)
                    .ev("order_placed", d(20), None, sku("b-kettle"))
                    .ev("order_placed", d(10), None, sku("z-pot")),
                c(3, None).ev("order_placed", d(10), None, sku("b")).ev(
                    "order_placed",
                    d(10),
                    None,
                    sku("a"),
                ),
                // The window is (now - 30d, now]: the edge and the future are out.
                c(4, None)
                    .ev("order_placed", d(30), None, sku("old"))
                    .ev("order_placed", d(30), None, sku("old"))
                    .ev("order_placed", NOW + 1, None, sku("future"))
                    .ev("order_placed", NOW, None, sku("now")),
                // Numbers stay numbers; blanks, nulls and objects are not values.
                c(5, None)
                    .ev(
                        "order_placed",
                        d(1),
                        None,
                        Some(json!({"sku": 1042, "gift": true})),
                    )
                    .ev(
                        "order_placed",
                        d(2),
                        None,
                        Some(json!({"sku": "", "gift": null})),
                    )
                    .ev(
                        "order_placed",
                        d(3),
                        None,
                        Some(json!({"sku": "", "gift": {"x": 1}})),
                    ),
                // No events: nothing.
                c(6, None),
            ],
        )
        .await;
        let want = request(
            &[
                ("order_placed", "sku"),
                ("order_placed", "gift"),
                ("app_open", "sku"),
            ],
            30,
        );
        let ids: Vec<(i64, Option<&str>)> = (1..=6).map(|i| (i, None)).collect();
        let got = run(db, &RfmConfig::default(), &ids, &want).await;
        assert_eq!(
            top_of(&got[&1], "order_placed", "sku"),
            Some(json!("tea")),
            "30 days"
        );
        assert_eq!(top_of(&got[&1], "app_open", "sku"), Some(json!("tea")));
        assert_eq!(top_of(&got[&1], "order_placed", "gift"), None);
        assert_eq!(
            top_of(&got[&2], "order_placed", "sku"),
            Some(json!("z-pot"))
        );
        assert_eq!(top_of(&got[&3], "order_placed", "sku"), Some(json!("a")));
        assert_eq!(top_of(&got[&4], "order_placed", "sku"), Some(json!("now")));
        assert_eq!(top_of(&got[&5], "order_placed", "sku"), Some(json!(1042)));
        assert_eq!(top_of(&got[&5], "order_placed", "gift"), Some(json!(true)));
        assert!(got[&6].top.is_empty());
        // A year's window sees contact 1's mugs.
        let got = run(
            db,
            &RfmConfig::default(),
            &ids,
            &request(&[("order_placed", "sku")], 365),
        )
        .await;
        assert_eq!(top_of(&got[&1], "order_placed", "sku"), Some(json!("mug")));
        assert_eq!(top_of(&got[&4], "order_placed", "sku"), Some(json!("old")));
        // Only the pairs asked for are fetched.
        let got = run(db, &RfmConfig::default(), &ids, &request(&[], 365)).await;
        assert!(got.values().all(|p| p.top.is_empty()));
        // `(top "order_placed" "sku" N)`: the first N in the same order as the
        // one-item form (count, then the most recent, then the smaller text),
        // and asking for it alone leaves `top.*` empty.
        let key = TopKey {
            event: "order_placed".into(),
            property: "sku".into(),
        };
        let lists = PersonalisationRequest {
            top_lists: BTreeMap::from([(key.clone(), 2)]),
            ..request(&[], 365)
        };
        let got = run(db, &RfmConfig::default(), &ids, &lists).await;
        let list = |id: i64| got[&id].top_lists.get(&key).cloned().unwrap_or_default();
        assert_eq!(list(1), [json!("mug"), json!("tea")]);
        assert_eq!(list(2), [json!("z-pot"), json!("b-kettle")]);
        assert_eq!(list(3), [json!("a"), json!("b")]);
        assert_eq!(list(5), [json!(1042)]);
        assert!(list(6).is_empty());
        assert!(got.values().all(|p| p.top.is_empty()));
        let both = PersonalisationRequest {
            top_lists: BTreeMap::from([(key.clone(), 3)]),
            ..request(&[("order_placed", "sku")], 365)
        };
        let got = run(db, &RfmConfig::default(), &ids, &both).await;
        assert_eq!(top_of(&got[&1], "order_placed", "sku"), Some(json!("mug")));
        assert_eq!(got[&4].top_lists[&key], [json!("old"), json!("now")]);
    }

    /// `rfm` and `lifecycle` equal what the filters see: every template value, tested as a
    /// filter, selects the contact.
    async fn rfm_and_lifecycle_match_the_segment_sql(db: &Db) {
        let d = |days: i64| NOW - days * DAY_MS;
        seed(
            db,
            &[
                c(1, None)
                    .ev("order_placed", d(31), Some(250.0), None)
                    .ev("order_placed", d(100), Some(300.5), None)
                    .ev("order_placed", d(400), Some(1000.0), None),
                c(2, None).ev("order_placed", d(2), None, None),
                c(3, None).ev("login", d(10), None, None),
            ],
        )
        .await;
        let rfm = RfmConfig::default();
        let got = run(
            db,
            &rfm,
            &[(1, None), (2, None), (3, None)],
            &request(&[], 365),
        )
        .await;
        assert_eq!(
            got[&1].rfm,
            Some(Rfm {
                r: 4,
                f: 2,
                m: 3,
                r_days: 31,
                f_count: 2,
                m_value: 550.5
            })
        );
        assert_eq!(got[&1].lifecycle, Some(Lifecycle::Dormant));
        assert_eq!(
            got[&2].rfm,
            Some(Rfm {
                r: 5,
                f: 1,
                m: 1,
                r_days: 2,
                f_count: 1,
                m_value: 0.0
            })
        );
        assert_eq!(got[&2].lifecycle, Some(Lifecycle::Active));
        assert_eq!(got[&3].rfm, None);
        assert_eq!(got[&3].lifecycle, Some(Lifecycle::Silent));
        let life = LifecycleConfig::default();
        let ctx = SegmentContext::new(db.backend(), NOW, &rfm, &life);
        for (id, p) in &got {
            let mut src = format!(
                "attrs.n == {id} and lifecycle == \"{}\"",
                p.lifecycle.unwrap()
            );
            if let Some(r) = p.rfm {
                src += &format!(
                    " and rfm.r == {} and rfm.f == {} and rfm.m == {} and rfm.r_days == {} and rfm.f_count == {} and rfm.m_value == {}",
                    r.r, r.f, r.m, r.r_days, r.f_count, r.m_value
                );
            }
            let q = count_sql(&parse(&src).unwrap(), &ctx).unwrap();
            let rows = all(db, q).await.unwrap();
            assert_eq!(int(&rows[0], 0).unwrap(), Some(1), "{src}");
        }
    }

    /// A page of one contact gets the same composite M as the whole base does.
    async fn composite_m_ranks_against_the_whole_base(db: &Db) {
        let d = |days: i64| NOW - days * DAY_MS;
        let contacts: Vec<C> = (1..=5)
            .map(|i| c(i, None).ev("order_placed", d(10), Some(100.0 * i as f64), None))
            .collect();
        seed(db, &contacts).await;
        let rfm = RfmConfig {
            monetary_weights: Some(BTreeMap::from([("sum:order_placed".to_string(), 1.0)])),
            monetary_composite: Some([20.0, 40.0, 60.0, 80.0]),
            ..RfmConfig::default()
        };
        let want = request(&[], 365);
        let all_ids: Vec<(i64, Option<&str>)> = (1..=5).map(|i| (i, None)).collect();
        let whole = run(db, &rfm, &all_ids, &want).await;
        // Percent ranks 0, 25, 50, 75, 100 score 1, 2, 3, 4, 5.
        let ms: Vec<u8> = (1..=5).map(|i| whole[&i].rfm.unwrap().m).collect();
        assert_eq!(ms, [1, 2, 3, 4, 5]);
        for i in 1..=5 {
            let alone = run(db, &rfm, &[(i, None)], &want).await;
            assert_eq!(alone[&i].rfm, whole[&i].rfm, "contact {i} alone");
        }
    }
}
