//! `herald import contacts|events FILE`: CSV or NDJSON, streamed in batches
//! (never the whole file in memory), upserted by `external_id`. A bad row is
//! reported with its line number and reason; every good row is kept. Goal
//! events are attributed to campaign messages batch by batch, as `POST /events` does.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{DateTime, NaiveDate, Utc};
use herald_domain::address::{E164Phone, EmailAddress};
use herald_domain::config::{AttrType, canonical_number, infer_cell};
use sea_orm::{ConnectionTrait, DbBackend, Value};
use serde_json::{Map, Value as Json};

use crate::contacts::{DIGEST_PREFIX, KEYED_DIGEST_PREFIX, address_digest};
use crate::db::Db;
use crate::sql::Sql;
use crate::tracking::{GoalSpec, TrackingError, attribute_events};

mod seen_ids;
use seen_ids::SeenIds;

/// Contact rows per INSERT on SQLite (12 values each; SQLite allows 32,766 parameters).
pub const CONTACT_BATCH: usize = 1000;
/// Contact rows per INSERT on PostgreSQL, where arrays carry them (no parameter limit).
pub const CONTACT_BATCH_PG: usize = 2000;
/// Event rows per INSERT.
pub const EVENT_BATCH: usize = 2000;
/// Row errors kept for the report; beyond, only counted.
pub const MAX_REPORTED_ERRORS: usize = 1000;
/// Row warnings kept for the report; beyond, only counted.
pub const MAX_REPORTED_WARNINGS: usize = 1000;

/// One rejected row.
#[derive(Debug, Clone, PartialEq)]
pub struct RowError {
    /// 1-based line in the file (the header is line 1 of a CSV).
    pub line: u64,
    /// Why it was rejected.
    pub message: String,
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImportReport {
    /// Rows stored.
    pub accepted: u64,
    /// Rows rejected in all.
    pub rejected: u64,
    /// The first rejected rows, with reasons.
    pub errors: Vec<RowError>,
    /// Rows stored with a warning in all (a contact's `external_id` repeated
    /// in the file).
    pub warned: u64,
    /// The first warnings, by line.
    pub warnings: Vec<RowError>,
}

impl ImportReport {
    fn reject(&mut self, line: u64, message: String) {
        self.rejected += 1;
        if self.errors.len() < MAX_REPORTED_ERRORS {
            self.errors.push(RowError { line, message });
        }
    }

    fn warn(&mut self, line: u64, message: String) {
        self.warned += 1;
        if self.warnings.len() < MAX_REPORTED_WARNINGS {
            self.warnings.push(RowError { line, message });
        }
    }
}

/// The warning for a repeated external id: both lines, and which one wins.
fn repeated_id_warning(id: &str, earlier: u64, line: u64) -> String {
    format!(
        "external_id `{id}` is also on line {earlier}: line {line} is kept (its empty cells keep line {earlier}'s values)"
    )
}

/// Why an import stopped (row problems do not stop it).
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The CSV header is unusable.
    #[error("{0}")]
    Header(String),
    /// The database failed.
    #[error("database error: {0}")]
    Db(#[from] sea_orm::DbErr),
    /// Events were stored but their conversions could not be written;
    /// importing the file again (with event ids) recomputes them.
    #[error("attributing conversions failed: {0}")]
    Attribution(#[from] TrackingError),
}

/// The file formats import reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Comma-separated with a header row.
    Csv,
    /// One JSON object per line.
    Ndjson,
}

impl Format {
    /// The format by file extension: `.ndjson`, `.jsonl`, `.json` are NDJSON; the rest CSV.
    pub fn from_path(path: &Path) -> Self {
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(|e| e.to_ascii_lowercase())
        {
            Some(e) if e == "ndjson" || e == "jsonl" || e == "json" => Format::Ndjson,
            _ => Format::Csv,
        }
    }
}

/// A contact row, validated.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContactRow {
    /// The app's id.
    pub external_id: String,
    /// Email, if given.
    pub email: Option<String>,
    /// Phone (E.164), if given.
    pub phone: Option<String>,
    /// IANA zone, if given.
    pub timezone: Option<String>,
    /// Locale, if given.
    pub locale: Option<String>,
    /// Replaces stored tags when given.
    pub tags: Option<Vec<String>>,
    /// Email consent, if given.
    pub consent_email: Option<bool>,
    /// SMS consent, if given.
    pub consent_sms: Option<bool>,
    /// Push consent, if given.
    pub consent_push: Option<bool>,
    /// A push token, if given.
    pub push_token: Option<String>,
    /// Its platform.
    pub push_platform: Option<String>,
    /// Attributes to merge shallowly (no nulls).
    pub attrs: Map<String, Json>,
}

/// An event row, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRow {
    /// Whose event.
    pub external_id: String,
    /// What happened.
    pub name: String,
    /// When (ms).
    pub at: i64,
    /// Money, if any.
    pub value: Option<f64>,
    /// Idempotency key.
    pub event_id: Option<String>,
    /// Properties.
    pub properties: Map<String, Json>,
}

const CONTACT_COLUMNS: [&str; 11] = [
    "external_id",
    "email",
    "phone",
    "timezone",
    "locale",
    "tags",
    "consent_email",
    "consent_sms",
    "consent_push",
    "push_token",
    "push_platform",
];

/// A CSV cell of an event as JSON: canonical numbers stay numbers ("02134" stays text).
/// Contact attributes are typed by [`attr_value`] instead.
pub fn cell_value(cell: &str) -> Json {
    canonical_number(cell).unwrap_or_else(|| Json::String(cell.to_string()))
}

/// A contact attribute cell as JSON: by its declared type when `[contacts.attrs]`
/// declares one (the error names the column), else typed on its own.
pub fn attr_value(
    types: &BTreeMap<String, AttrType>,
    column: &str,
    cell: &str,
) -> Result<Json, String> {
    match types.get(column) {
        Some(ty) => ty
            .convert(cell)
            .map_err(|m| format!("column `{column}`: {m}")),
        None => Ok(infer_cell(cell)),
    }
}

/// A top-level NDJSON attribute checked against its declared type: a value
/// of that JSON type is kept, text is converted as a CSV cell would be.
fn json_attr_value(
    types: &BTreeMap<String, AttrType>,
    key: &str,
    value: Json,
) -> Result<Json, String> {
    let Some(ty) = types.get(key) else {
        return Ok(value);
    };
    match (ty, value) {
        (_, Json::Null) => Ok(Json::Null),
        (AttrType::Bool, v @ Json::Bool(_)) | (AttrType::Number, v @ Json::Number(_)) => Ok(v),
        (AttrType::String, Json::String(s)) => Ok(Json::String(s)),
        (_, Json::String(s)) => ty
            .convert(s.trim())
            .map_err(|m| format!("`attrs.{key}`: {m}")),
        (AttrType::Bool, Json::Number(n)) => ty
            .convert(&n.to_string())
            .map_err(|m| format!("`attrs.{key}`: {m}")),
        (_, other) => Err(format!("`attrs.{key}` is declared {ty}, not {other}")),
    }
}

/// Whether `map` holds a null at any depth of objects.
fn has_nulls(map: &Map<String, Json>) -> bool {
    map.values().any(|v| match v {
        Json::Null => true,
        Json::Object(o) => has_nulls(o),
        _ => false,
    })
}

/// Removes nulls from objects, recursively: a null means "keep what is stored".
fn strip_nulls(map: Map<String, Json>) -> Map<String, Json> {
    // Most rows have none: rebuilding the map anyway cost a tenth of the import's CPU.
    if !has_nulls(&map) {
        return map;
    }
    map.into_iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| {
            let v = match v {
                Json::Object(o) => Json::Object(strip_nulls(o)),
                other => other,
            };
            (k, v)
        })
        .collect()
}

fn parse_bool(column: &str, s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "1" => Ok(true),
        "false" | "no" | "0" => Ok(false),
        _ => Err(format!("column `{column}`: `{s}` is not true or false")),
    }
}

fn non_empty(s: Option<&str>) -> Option<String> {
    s.map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

impl ContactRow {
    /// Checks addresses, zone and consent; the error names the column.
    fn validate(mut self) -> Result<Self, String> {
        if self.external_id.trim().is_empty() {
            return Err("`external_id` is missing".into());
        }
        if self.external_id.trim().len() != self.external_id.len() {
            self.external_id = self.external_id.trim().to_string();
        }
        // Keep the given string when parsing did not change it: one allocation fewer a row.
        if let Some(e) = &mut self.email {
            let parsed = EmailAddress::parse(e).map_err(|m| format!("column `email`: {m}"))?;
            if parsed.as_str() != e.as_str() {
                *e = parsed.as_str().to_string();
            }
        }
        if let Some(p) = &mut self.phone {
            let parsed = E164Phone::parse(p).map_err(|m| format!("column `phone`: {m}"))?;
            if parsed.as_str() != p.as_str() {
                *p = parsed.as_str().to_string();
            }
        }
        if let Some(tz) = &self.timezone
            && tz.parse::<chrono_tz::Tz>().is_err()
        {
            return Err(format!(
                "column `timezone`: unknown time zone `{tz}`; use an IANA name like Asia/Shanghai"
            ));
        }
        if self.push_platform.is_some() && self.push_token.is_none() {
            return Err("`push_platform` is given without a `push_token`".into());
        }
        self.attrs = strip_nulls(std::mem::take(&mut self.attrs));
        Ok(self)
    }

    /// Folds a later row for the same contact into this one (later non-empty values win).
    fn absorb(&mut self, later: ContactRow) {
        macro_rules! take {
            ($($f:ident),*) => { $( if later.$f.is_some() { self.$f = later.$f; } )* };
        }
        take!(
            email,
            phone,
            timezone,
            locale,
            tags,
            consent_email,
            consent_sms,
            consent_push,
            push_token,
            push_platform
        );
        self.attrs.extend(later.attrs);
    }
}

fn parse_at(s: &str) -> Result<i64, String> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp_millis());
    }
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(d
            .and_hms_opt(0, 0, 0)
            .map_or(0, |t| t.and_utc().timestamp_millis()));
    }
    Err(format!(
        "column `at`: `{s}` is not an RFC 3339 instant (like 2026-11-23T10:00:00Z or 2026-11-23T18:00:00+08:00) or a date (2026-11-23)"
    ))
}

fn event_from_parts(
    external_id: Option<String>,
    name: Option<String>,
    at: Option<String>,
    value: Option<Json>,
    event_id: Option<String>,
    properties: Map<String, Json>,
    received_at: Option<i64>,
) -> Result<EventRow, String> {
    let external_id = non_empty(external_id.as_deref()).ok_or("`external_id` is missing")?;
    let name = non_empty(name.as_deref()).ok_or("`name` is missing")?;
    let at = match (non_empty(at.as_deref()), received_at) {
        (Some(at), _) => parse_at(&at)?,
        (None, Some(received)) => received,
        (None, None) => return Err("`at` is missing".into()),
    };
    let value = match value {
        None | Some(Json::Null) => None,
        Some(Json::Number(n)) => n.as_f64(),
        Some(Json::String(s)) if s.trim().is_empty() => None,
        Some(Json::String(s)) => Some(
            s.trim()
                .parse::<f64>()
                .ok()
                .filter(|f| f.is_finite())
                .ok_or_else(|| format!("column `value`: `{s}` is not a number"))?,
        ),
        Some(other) => return Err(format!("column `value`: {other} is not a number")),
    };
    Ok(EventRow {
        external_id,
        name,
        at,
        value,
        event_id: non_empty(event_id.as_deref()),
        properties: strip_nulls(properties),
    })
}

/// Reads rows of `path` and hands them to `sink` in batches; returns the report.
/// `progress` is told how many bytes were read so far.
#[allow(clippy::too_many_arguments)]
async fn stream_rows<T, F, J, S, Fut>(
    path: &Path,
    batch: usize,
    lanes: usize,
    key: fn(&T) -> &str,
    parse_csv: F,
    parse_json: J,
    db: &Db,
    sink: S,
    encoding: Option<&'static crate::decode::Encoding>,
    repeats_in_memory: Option<usize>,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<ImportReport, ImportError>
where
    F: Fn(&csv::StringRecord, &csv::StringRecord) -> Result<T, String>,
    J: Fn(Map<String, Json>) -> Result<T, String>,
    S: Fn(Db, Vec<T>) -> Fut,
    Fut: Future<Output = Result<u64, ImportError>> + Send + 'static,
{
    let io_err = |e| ImportError::Io {
        path: path.display().to_string(),
        source: e,
    };
    let file = File::open(path).map_err(io_err)?;
    let file = crate::decode::utf8_reader(file, encoding).map_err(io_err)?;
    // Why a line is not UTF-8, worked out once, from the file's start.
    let mut not_utf8: Option<String> = None;
    let mut not_utf8_hint = || {
        not_utf8
            .get_or_insert_with(|| {
                let mut start = Vec::with_capacity(crate::decode::SNIFF_BYTES);
                let _ = File::open(path).and_then(|f| {
                    f.take(crate::decode::SNIFF_BYTES as u64)
                        .read_to_end(&mut start)
                });
                crate::decode::not_utf8_hint(&start)
            })
            .clone()
    };
    // A byte invalid in the given encoding decoded to U+FFFD: that row is refused.
    let garbled = |text: &str| {
        encoding.is_some_and(|e| e != encoding_rs::UTF_8)
            && text.contains(crate::decode::REPLACEMENT)
    };
    let garbled_message = || {
        format!(
            "holds bytes that are not valid {}; is that the file's encoding?",
            encoding.map_or("UTF-8", |e| e.name())
        )
    };
    let mut report = ImportReport::default();
    // For contacts, a key seen before is merged and warned of; the ids seen
    // are held in memory up to `repeats_in_memory`, then written out.
    let mut seen = repeats_in_memory.map(SeenIds::new);
    let spill_err = |e: std::io::Error| ImportError::Io {
        path: format!(
            "{} (its repeated-id list, written to the temporary directory {})",
            path.display(),
            std::env::temp_dir().display()
        ),
        source: e,
    };
    let mut check_repeat = |report: &mut ImportReport, row: &T, line: u64| {
        if let Some(seen) = seen.as_mut() {
            let id = key(row);
            if let Some(earlier) = seen.repeat(lane_hash(id), id, line).map_err(spill_err)? {
                report.warn(line, repeated_id_warning(id, earlier, line));
            }
        }
        Ok::<(), ImportError>(())
    };
    let mut rows = Lanes::new(lanes, batch, key, sink, db.clone());
    match Format::from_path(path) {
        Format::Csv => {
            let mut rdr = csv::ReaderBuilder::new()
                .flexible(true)
                .trim(csv::Trim::Headers)
                .from_reader(BufReader::with_capacity(1 << 16, file));
            let headers = rdr
                .headers()
                .map_err(|e| {
                    ImportError::Header(format!(
                        "{}: cannot read the CSV header: {e}",
                        path.display()
                    ))
                })?
                .clone();
            if !headers.iter().any(|h| h == "external_id") {
                return Err(ImportError::Header(format!(
                    "{}: the CSV header has no `external_id` column (it has: {})",
                    path.display(),
                    headers.iter().collect::<Vec<_>>().join(", ")
                )));
            }
            let mut record = csv::StringRecord::new();
            loop {
                let line = rdr.position().line();
                match rdr.read_record(&mut record) {
                    Ok(false) => break,
                    Ok(true) => {
                        let line = record.position().map_or(line, |p| p.line());
                        if record.len() != headers.len() {
                            report.reject(
                                line,
                                format!(
                                    "has {} cells but the header has {}",
                                    record.len(),
                                    headers.len()
                                ),
                            );
                            continue;
                        }
                        if record.iter().any(garbled) {
                            report.reject(line, garbled_message());
                            continue;
                        }
                        match parse_csv(&headers, &record) {
                            Ok(r) => {
                                check_repeat(&mut report, &r, line)?;
                                rows.push(r).await?
                            }
                            Err(m) => report.reject(line, m),
                        }
                    }
                    Err(e) => {
                        let line = e.position().map_or(line, |p| p.line());
                        if matches!(e.kind(), csv::ErrorKind::Utf8 { .. }) {
                            report
                                .reject(line, format!("unreadable CSV: {e}; {}", not_utf8_hint()));
                        } else {
                            report.reject(line, format!("unreadable CSV: {e}"));
                        }
                        if !matches!(
                            e.kind(),
                            csv::ErrorKind::Utf8 { .. } | csv::ErrorKind::UnequalLengths { .. }
                        ) {
                            break;
                        }
                    }
                }
                if rows.flushed > 0 {
                    report.accepted += std::mem::take(&mut rows.flushed);
                    progress(rdr.position().byte());
                }
            }
        }
        Format::Ndjson => {
            let mut rdr = BufReader::with_capacity(1 << 16, file);
            let mut buf = Vec::new();
            let mut line_no = 0u64;
            let mut bytes = 0u64;
            loop {
                buf.clear();
                let n = rdr.by_ref().read_until(b'\n', &mut buf).map_err(io_err)?;
                if n == 0 {
                    break;
                }
                line_no += 1;
                bytes += n as u64;
                let text = match std::str::from_utf8(&buf) {
                    Ok(t) if garbled(t) => {
                        report.reject(line_no, garbled_message());
                        continue;
                    }
                    Ok(t) => t.trim(),
                    Err(_) => {
                        report.reject(line_no, format!("not UTF-8 text; {}", not_utf8_hint()));
                        continue;
                    }
                };
                if text.is_empty() {
                    continue;
                }
                match serde_json::from_str::<Json>(text) {
                    Ok(Json::Object(map)) => match parse_json(map) {
                        Ok(r) => {
                            check_repeat(&mut report, &r, line_no)?;
                            rows.push(r).await?
                        }
                        Err(m) => report.reject(line_no, m),
                    },
                    Ok(_) => report.reject(line_no, "a line must be one JSON object".into()),
                    Err(e) => report.reject(line_no, format!("invalid JSON: {e}")),
                }
                if rows.flushed > 0 {
                    report.accepted += std::mem::take(&mut rows.flushed);
                    progress(bytes);
                }
            }
        }
    }
    report.accepted += rows.finish().await?;
    if let Some(seen) = seen {
        // Repeats across the stretches written out; the warnings stay in
        // line order, the first MAX_REPORTED_WARNINGS of them kept.
        let (count, first) = seen.finish(MAX_REPORTED_WARNINGS).map_err(spill_err)?;
        if count > 0 {
            report.warned += count;
            report.warnings.extend(first.into_iter().map(|r| RowError {
                line: r.line,
                message: repeated_id_warning(&r.id, r.earlier, r.line),
            }));
            report.warnings.sort_by_key(|w| w.line);
            report.warnings.truncate(MAX_REPORTED_WARNINGS);
        }
    }
    Ok(report)
}

/// One batch written while the next is parsed: parsing and the database
/// overlap on two cores, and batches still land in file order (a later row
/// for the same contact wins), with at most two batches in memory.
#[derive(Default)]
struct Pipeline {
    pending: Option<tokio::task::JoinHandle<Result<u64, ImportError>>>,
}

impl Pipeline {
    /// Waits for the batch in flight, then starts `next`; returns the rows the finished one stored.
    async fn push(
        &mut self,
        next: impl Future<Output = Result<u64, ImportError>> + Send + 'static,
    ) -> Result<u64, ImportError> {
        let done = self.drain().await?;
        self.pending = Some(tokio::spawn(next));
        Ok(done)
    }

    /// Waits for the batch in flight.
    async fn drain(&mut self) -> Result<u64, ImportError> {
        match self.pending.take() {
            None => Ok(0),
            Some(h) => h.await.map_err(|e| {
                ImportError::Db(sea_orm::DbErr::Custom(format!("import task failed: {e}")))
            })?,
        }
    }
}

/// Rows split into lanes by a key (the external id), each lane batching into
/// its own [`Pipeline`]: on PostgreSQL four lanes keep backends busy (measured: 2 lanes 80k,
/// 4 lanes 91k rows/s on 2 cores), and
/// since a key always takes the same lane, rows of one contact still land in
/// file order and concurrent statements never touch the same contact.
struct Lanes<T, S> {
    lanes: Vec<(Vec<T>, Pipeline)>,
    batch: usize,
    key: fn(&T) -> &str,
    sink: S,
    db: Db,
    /// Rows stored since the caller last took this count.
    flushed: u64,
}

/// FNV-1a over external ids: lanes and batch-local maps need a spread, not
/// resistance to crafted keys, and SipHash showed in the import's profile.
struct Fnv(u64);

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0100_0000_01b3;

impl Default for Fnv {
    fn default() -> Self {
        Fnv(FNV_OFFSET)
    }
}

impl std::hash::Hasher for Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(FNV_PRIME);
        }
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

fn lane_hash(key: &str) -> u64 {
    use std::hash::Hasher;
    let mut h = Fnv::default();
    h.write(key.as_bytes());
    h.finish()
}

impl<T, S, Fut> Lanes<T, S>
where
    S: Fn(Db, Vec<T>) -> Fut,
    Fut: Future<Output = Result<u64, ImportError>> + Send + 'static,
{
    fn new(lanes: usize, batch: usize, key: fn(&T) -> &str, sink: S, db: Db) -> Self {
        Self {
            lanes: (0..lanes.max(1))
                .map(|_| (Vec::with_capacity(batch), Pipeline::default()))
                .collect(),
            batch,
            key,
            sink,
            db,
            flushed: 0,
        }
    }

    async fn push(&mut self, row: T) -> Result<(), ImportError> {
        let i = if self.lanes.len() == 1 {
            0
        } else {
            (lane_hash((self.key)(&row)) % self.lanes.len() as u64) as usize
        };
        let (buf, pipe) = &mut self.lanes[i];
        buf.push(row);
        if buf.len() >= self.batch {
            let rows = std::mem::replace(buf, Vec::with_capacity(self.batch));
            self.flushed += pipe.push((self.sink)(self.db.clone(), rows)).await?;
        }
        Ok(())
    }

    async fn finish(mut self) -> Result<u64, ImportError> {
        let mut done = self.flushed;
        for (buf, pipe) in &mut self.lanes {
            if !buf.is_empty() {
                done += pipe
                    .push((self.sink)(self.db.clone(), std::mem::take(buf)))
                    .await?;
            }
        }
        for (_, pipe) in &mut self.lanes {
            done += pipe.drain().await?;
        }
        Ok(done)
    }
}

fn contact_from_csv(
    types: &BTreeMap<String, AttrType>,
    headers: &csv::StringRecord,
    rec: &csv::StringRecord,
) -> Result<ContactRow, String> {
    let mut row = ContactRow::default();
    for (h, cell) in headers.iter().zip(rec.iter()) {
        let cell = cell.trim();
        if cell.is_empty() {
            // An empty cell keeps the stored value.
            continue;
        }
        let s = || Some(cell.to_string());
        match h {
            "external_id" => row.external_id = cell.to_string(),
            "email" => row.email = s(),
            "phone" => row.phone = s(),
            "timezone" => row.timezone = s(),
            "locale" => row.locale = s(),
            "tags" => {
                row.tags = Some(
                    cell.split(';')
                        .map(str::trim)
                        .filter(|t| !t.is_empty())
                        .map(str::to_string)
                        .collect(),
                )
            }
            "consent_email" => row.consent_email = Some(parse_bool(h, cell)?),
            "consent_sms" => row.consent_sms = Some(parse_bool(h, cell)?),
            "consent_push" => row.consent_push = Some(parse_bool(h, cell)?),
            "push_token" => row.push_token = s(),
            "push_platform" => row.push_platform = s(),
            other => {
                row.attrs
                    .insert(other.to_string(), attr_value(types, other, cell)?);
            }
        }
    }
    row.validate()
}

fn json_str(map: &mut Map<String, Json>, key: &str) -> Result<Option<String>, String> {
    match map.remove(key) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(s)) => Ok(non_empty(Some(&s))),
        Some(Json::Number(n)) => Ok(Some(n.to_string())),
        Some(other) => Err(format!("`{key}` must be a string, not {other}")),
    }
}

fn json_bool(map: &mut Map<String, Json>, key: &str) -> Result<Option<bool>, String> {
    match map.remove(key) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::Bool(b)) => Ok(Some(b)),
        Some(Json::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Json::String(s)) => parse_bool(key, &s).map(Some),
        Some(other) => Err(format!("`{key}` must be true or false, not {other}")),
    }
}

fn contact_from_json(
    types: &BTreeMap<String, AttrType>,
    mut map: Map<String, Json>,
) -> Result<ContactRow, String> {
    let tags = match map.remove("tags") {
        None | Some(Json::Null) => None,
        Some(Json::Array(items)) => Some(
            items
                .into_iter()
                .map(|t| match t {
                    Json::String(s) => Ok(s),
                    other => Err(format!("`tags` must hold strings, not {other}")),
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
        Some(Json::String(s)) => Some(
            s.split(';')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_string)
                .collect(),
        ),
        Some(other) => Err(format!("`tags` must be a list of strings, not {other}"))?,
    };
    let attrs = match map.remove("attrs") {
        None | Some(Json::Null) => Map::new(),
        Some(Json::Object(o)) if types.is_empty() => o,
        Some(Json::Object(o)) => o
            .into_iter()
            .map(|(k, v)| json_attr_value(types, &k, v).map(|v| (k, v)))
            .collect::<Result<_, _>>()?,
        Some(other) => return Err(format!("`attrs` must be an object, not {other}")),
    };
    let row = ContactRow {
        external_id: json_str(&mut map, "external_id")?.unwrap_or_default(),
        email: json_str(&mut map, "email")?,
        phone: json_str(&mut map, "phone")?,
        timezone: json_str(&mut map, "timezone")?,
        locale: json_str(&mut map, "locale")?,
        tags,
        consent_email: json_bool(&mut map, "consent_email")?,
        consent_sms: json_bool(&mut map, "consent_sms")?,
        consent_push: json_bool(&mut map, "consent_push")?,
        push_token: json_str(&mut map, "push_token")?,
        push_platform: json_str(&mut map, "push_platform")?,
        attrs,
    };
    if let Some(k) = map.keys().next() {
        return Err(format!(
            "unknown key `{k}`; contact keys are {} and `attrs` (an object)",
            CONTACT_COLUMNS.join(", ")
        ));
    }
    row.validate()
}

fn event_from_csv(
    headers: &csv::StringRecord,
    rec: &csv::StringRecord,
) -> Result<EventRow, String> {
    let (mut eid, mut name, mut at, mut value, mut event_id) = (None, None, None, None, None);
    let mut props = Map::new();
    for (h, cell) in headers.iter().zip(rec.iter()) {
        let c = Some(cell.to_string());
        match h {
            "external_id" => eid = c,
            "name" => name = c,
            "at" => at = c,
            "value" => value = c.map(Json::String),
            "event_id" => event_id = c,
            other if !cell.trim().is_empty() => {
                props.insert(other.to_string(), cell_value(cell.trim()));
            }
            _ => {}
        }
    }
    event_from_parts(eid, name, at, value, event_id, props, None)
}

/// One event from a JSON object, checked as `herald import events` checks an
/// NDJSON line; `received_at` (for `POST /events`) stands in for a missing `at`.
pub fn event_from_json(
    mut map: Map<String, Json>,
    received_at: Option<i64>,
) -> Result<EventRow, String> {
    let props = match map.remove("properties") {
        None | Some(Json::Null) => Map::new(),
        Some(Json::Object(o)) => o,
        Some(other) => return Err(format!("`properties` must be an object, not {other}")),
    };
    let eid = json_str(&mut map, "external_id")?;
    let name = json_str(&mut map, "name")?;
    let at = json_str(&mut map, "at")?;
    let value = map.remove("value");
    let event_id = json_str(&mut map, "event_id")?;
    if let Some(k) = map.keys().next() {
        return Err(format!(
            "unknown key `{k}`; event keys are external_id, name, at, value, event_id, properties"
        ));
    }
    event_from_parts(eid, name, at, value, event_id, props, received_at)
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

fn json_text(v: Json) -> Value {
    Value::Json(Some(Box::new(v)))
}

/// What the batches of one contact import share.
struct ContactBatches {
    /// Digests of forgotten contacts' suppressed addresses, if there are any.
    digests: Option<HashSet<String>>,
    /// No batch has met a stored contact yet (PostgreSQL): see [`upsert_contacts_pg`].
    all_new: AtomicBool,
}

async fn flush_contacts(
    db: Db,
    rows: Vec<ContactRow>,
    shared: Arc<ContactBatches>,
) -> Result<u64, ImportError> {
    let n = rows.len() as u64;
    let order = fold_duplicates(rows);
    let returning = shared.digests.as_ref().map_or_else(Vec::new, |d| {
        returning_addresses(d, db.digest_keys(), &order)
    });
    upsert_contacts(&db, order, &shared.all_new).await?;
    restore_suppressions(&db, &returning).await?;
    Ok(n)
}

/// Folds rows of one external id into the first (later values win), in file
/// order: PostgreSQL refuses to upsert one key twice in a statement. Lanes
/// rarely hold a repeat, so the common case only looks.
fn fold_duplicates(rows: Vec<ContactRow>) -> Vec<ContactRow> {
    let mut first: HashMap<&str, usize, std::hash::BuildHasherDefault<Fnv>> =
        HashMap::with_capacity_and_hasher(rows.len(), Default::default());
    // For each row, the earlier row it folds into.
    let mut into: Vec<(usize, usize)> = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        if let Some(&j) = first.get(r.external_id.as_str()) {
            into.push((i, j));
        } else {
            first.insert(r.external_id.as_str(), i);
        }
    }
    drop(first);
    if into.is_empty() {
        return rows;
    }
    let mut slots: Vec<Option<ContactRow>> = rows.into_iter().map(Some).collect();
    for (i, j) in into {
        if let Some(later) = slots[i].take()
            && let Some(target) = slots[j].as_mut()
        {
            target.absorb(later);
        }
    }
    slots.into_iter().flatten().collect()
}

/// The digests that suppressions of forgotten contacts were kept under
/// (`crate::contacts`), or `None` when there are none, which is the usual
/// case and costs the import nothing further.
async fn forgotten_digests(db: &Db) -> Result<Option<HashSet<String>>, ImportError> {
    let mut q = Sql::new();
    q.push("SELECT DISTINCT address FROM suppressions WHERE address LIKE ")
        .bind(format!("{DIGEST_PREFIX}%"))
        .push(" OR address LIKE ")
        .bind(format!("{KEYED_DIGEST_PREFIX}%"));
    let rows = db.conn.query_all_raw(q.build(db.backend())).await?;
    let set: HashSet<String> = rows
        .iter()
        .map(|r| r.try_get_by_index::<String>(0))
        .collect::<Result<_, _>>()?;
    Ok((!set.is_empty()).then_some(set))
}

/// (external id, address, digest) of each address in `rows` that a
/// forgotten contact's suppression was kept under.
/// Keyed digests are recognised under every key in `keys` (current and
/// previous secrets); plain ones, of earlier versions, always.
fn returning_addresses(
    digests: &HashSet<String>,
    keys: Option<&crate::contacts::DigestKeys>,
    rows: &[ContactRow],
) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for r in rows {
        for a in [&r.email, &r.phone, &r.push_token].into_iter().flatten() {
            let candidates = match keys {
                Some(k) => k.candidates(a),
                None => vec![address_digest(a)],
            };
            for d in candidates {
                if digests.contains(&d) {
                    out.push((r.external_id.clone(), a.clone(), d));
                }
            }
        }
    }
    out
}

/// Suppresses again, for the imported contact and by plain address, each
/// address that a forgotten contact had suppressed: a person who asked to
/// be forgotten after unsubscribing is not mailed when imported again.
async fn restore_suppressions(
    db: &Db,
    returning: &[(String, String, String)],
) -> Result<(), ImportError> {
    let b = db.backend();
    let now = now_ms();
    for (eid, address, digest) in returning {
        let mut q = Sql::new();
        q.push("INSERT INTO suppressions (channel, address, contact_id, topic, reason, source, created_at) SELECT s.channel, ")
            .bind(address.clone())
            .push(", c.id, s.topic, s.reason, s.source, ")
            .bind(now)
            .push(" FROM suppressions s JOIN contacts c ON c.external_id = ")
            .bind(eid.clone())
            .push(" WHERE s.address = ")
            .bind(digest.clone())
            .push(" AND NOT EXISTS (SELECT 1 FROM suppressions t WHERE t.channel = s.channel AND t.address = ")
            .bind(address.clone())
            .push(" AND t.contact_id = c.id AND t.reason = s.reason AND (t.topic = s.topic OR (t.topic IS NULL AND s.topic IS NULL)))");
        db.conn.execute_raw(q.build(b)).await?;
    }
    Ok(())
}

/// Upserts validated contact rows (distinct external ids), plus their push
/// tokens. On PostgreSQL the batch commits asynchronously: the import makes
/// it durable when it ends ([`make_durable`]).
async fn upsert_contacts(
    db: &Db,
    rows: Vec<ContactRow>,
    all_new: &AtomicBool,
) -> Result<(), ImportError> {
    if rows.is_empty() {
        return Ok(());
    }
    let b = db.backend();
    let now = now_ms();
    if b == DbBackend::Postgres {
        return upsert_contacts_pg(db, &rows, now, all_new).await;
    }
    let mut tokens: Vec<(String, String, Option<String>)> = rows
        .iter()
        .filter_map(|r| {
            r.push_token
                .clone()
                .map(|t| (r.external_id.clone(), t, r.push_platform.clone()))
        })
        .collect();
    tokens.sort_by(|a, b| a.1.cmp(&b.1));
    let mut q = Sql::new();
    q.push("INSERT INTO contacts (external_id, email, phone, timezone, locale, attrs, tags, consent_email, consent_sms, consent_push, created_at, updated_at) VALUES ");
    for (i, r) in rows.into_iter().enumerate() {
        if i > 0 {
            q.push(",");
        }
        q.push("(").bind(r.external_id).push(",");
        q.bind(r.email).push(",").bind(r.phone).push(",");
        q.bind(r.timezone).push(",").bind(r.locale).push(",");
        q.bind(json_text(Json::Object(r.attrs))).push(",");
        q.bind(Value::Json(r.tags.map(|t| Box::new(Json::from(t)))))
            .push(",");
        q.bind(r.consent_email)
            .push(",")
            .bind(r.consent_sms)
            .push(",")
            .bind(r.consent_push)
            .push(",");
        q.bind(now).push(",").bind(now).push(")");
    }
    q.push(&contact_conflict_clause(b));
    db.conn.execute_raw(q.build(b)).await?;
    if tokens.is_empty() {
        return Ok(());
    }
    let mut q = Sql::new();
    q.push("INSERT INTO push_tokens (contact_id, token, platform, created_at) SELECT c.id, x.column2, x.column3, x.column4 FROM (VALUES ");
    for (i, (eid, token, platform)) in tokens.into_iter().enumerate() {
        if i > 0 {
            q.push(",");
        }
        q.push("(").bind(eid).push(",").bind(token).push(",");
        q.bind_as(b, platform, "text").push(",").bind(now).push(")");
    }
    q.push(") AS x JOIN contacts c ON c.external_id = x.column1 WHERE true");
    q.push(TOKEN_CONFLICT);
    db.conn.execute_raw(q.build(b)).await?;
    Ok(())
}

/// A token seen again moves to its latest contact and is valid again.
const TOKEN_CONFLICT: &str = " ON CONFLICT (token) DO UPDATE SET contact_id = excluded.contact_id, platform = COALESCE(excluded.platform, push_tokens.platform), invalid_at = NULL";

/// The conflict clause shared by both databases' contact upserts.
fn contact_conflict_clause(b: DbBackend) -> String {
    let mut s = String::from(" ON CONFLICT (external_id) DO UPDATE SET ");
    for col in [
        "email",
        "phone",
        "timezone",
        "locale",
        "tags",
        "consent_email",
        "consent_sms",
        "consent_push",
    ] {
        s.push_str(&format!(
            "{col} = COALESCE(excluded.{col}, contacts.{col}), "
        ));
    }
    // Shallow merge: the row's keys replace the stored ones; other stored keys stay.
    s.push_str(match b {
        DbBackend::Postgres => "attrs = contacts.attrs || excluded.attrs, ",
        _ => "attrs = json_patch((SELECT json_group_object(key, value) FROM json_each(contacts.attrs) WHERE key NOT IN (SELECT key FROM json_each(excluded.attrs))), excluded.attrs), ",
    });
    s.push_str("updated_at = excluded.updated_at");
    s
}

/// The columns a contact upsert writes, in the order of its arrays.
const CONTACT_INSERT: &str = "INSERT INTO contacts (external_id, email, phone, timezone, locale, attrs, tags, consent_email, consent_sms, consent_push, created_at, updated_at) \
     SELECT u.*, $11, $11 FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::jsonb[], $7::jsonb[], $8::bool[], $9::bool[], $10::bool[]) AS u";

fn sqlx_err(e: impl std::fmt::Display) -> ImportError {
    ImportError::Db(sea_orm::DbErr::Custom(e.to_string()))
}

/// A JSON value written straight into the statement's buffer in jsonb's
/// binary form (a version byte, then the text). sqlx's own `Json` serialises
/// into a fresh buffer and registers a patch for every element; for the
/// arrays of an import those allocations were a fifth of herald's CPU.
struct Jsonb<'a, T: serde::Serialize>(&'a T);

/// Bytes a contact row takes in the upsert's arrays, about: 12 values with
/// their lengths, a few attrs; a bigger batch only makes the buffer grow.
const PG_ROW_BYTES: usize = 256;
/// Bytes a push token takes in the upsert's arrays, about.
const PG_TOKEN_BYTES: usize = 96;

/// jsonb's binary format version.
const JSONB_VERSION: u8 = 1;

impl<T: serde::Serialize> sea_orm::sqlx::Type<sea_orm::sqlx::Postgres> for Jsonb<'_, T> {
    fn type_info() -> sea_orm::sqlx::postgres::PgTypeInfo {
        <Json as sea_orm::sqlx::Type<sea_orm::sqlx::Postgres>>::type_info()
    }
}

impl<T: serde::Serialize> sea_orm::sqlx::postgres::PgHasArrayType for Jsonb<'_, T> {
    fn array_type_info() -> sea_orm::sqlx::postgres::PgTypeInfo {
        <Json as sea_orm::sqlx::postgres::PgHasArrayType>::array_type_info()
    }
}

impl<T: serde::Serialize> sea_orm::sqlx::Encode<'_, sea_orm::sqlx::Postgres> for Jsonb<'_, T> {
    fn encode_by_ref(
        &self,
        buf: &mut sea_orm::sqlx::postgres::PgArgumentBuffer,
    ) -> Result<sea_orm::sqlx::encode::IsNull, sea_orm::sqlx::error::BoxDynError> {
        buf.push(JSONB_VERSION);
        serde_json::to_writer(&mut **buf, self.0)?;
        Ok(sea_orm::sqlx::encode::IsNull::No)
    }
}

/// PostgreSQL: one statement over array parameters (`UNNEST`) instead of 12
/// scalars a row, so PostgreSQL parses and plans a small statement (1.5 to 2
/// times faster). The arrays are encoded straight from the rows, and the
/// push tokens ride in the same statement, joined to the contacts it
/// returns: no round trip and no index lookup by external id for them.
///
/// Until a batch meets a stored contact or push token, batches are plain
/// INSERTs: `ON CONFLICT` costs PostgreSQL a quarter more per row, and a
/// first import meets no conflict. The first unique violation rolls that
/// batch back, and it and every later batch upsert instead: the same result
/// either way.
///
/// Each batch commits asynchronously (`synchronous_commit = off`): waiting
/// for the WAL flush of every batch left both cores idle for a sixth of the
/// import, and [`make_durable`] flushes them all when the import ends.
async fn upsert_contacts_pg(
    db: &Db,
    rows: &[ContactRow],
    now: i64,
    all_new: &AtomicBool,
) -> Result<(), ImportError> {
    if all_new.load(Ordering::Relaxed) {
        match write_contacts_pg(db, rows, now, false).await {
            Ok(()) => return Ok(()),
            Err(e)
                if e.as_database_error()
                    .is_some_and(|d| d.is_unique_violation()) =>
            {
                all_new.store(false, Ordering::Relaxed);
            }
            Err(e) => return Err(sqlx_err(e)),
        }
    }
    write_contacts_pg(db, rows, now, true)
        .await
        .map_err(sqlx_err)
}

/// One batch of contacts and their push tokens in one statement and one
/// asynchronously committed transaction; `upsert` adds the conflict clauses.
async fn write_contacts_pg(
    db: &Db,
    rows: &[ContactRow],
    now: i64,
    upsert: bool,
) -> Result<(), sea_orm::sqlx::Error> {
    use sea_orm::sqlx::Arguments;
    use sea_orm::sqlx::postgres::PgBindIterExt;
    // Two lanes may write at once; taking shared tokens in one order means they wait, never deadlock.
    let mut tokens: Vec<&ContactRow> = rows.iter().filter(|r| r.push_token.is_some()).collect();
    tokens.sort_by(|a, b| a.push_token.cmp(&b.push_token));
    // One allocation for the whole message, sized for a typical row: growing
    // it by doubling cost more in reallocations than the copying.
    let mut args = sea_orm::sqlx::postgres::PgArguments::default();
    args.reserve(
        14,
        rows.len() * PG_ROW_BYTES + tokens.len() * PG_TOKEN_BYTES,
    );
    let enc = sea_orm::sqlx::Error::Encode;
    args.add(rows.iter().map(|r| r.external_id.as_str()).bind_iter())
        .map_err(enc)?;
    args.add(rows.iter().map(|r| r.email.as_deref()).bind_iter())
        .map_err(enc)?;
    args.add(rows.iter().map(|r| r.phone.as_deref()).bind_iter())
        .map_err(enc)?;
    args.add(rows.iter().map(|r| r.timezone.as_deref()).bind_iter())
        .map_err(enc)?;
    args.add(rows.iter().map(|r| r.locale.as_deref()).bind_iter())
        .map_err(enc)?;
    args.add(rows.iter().map(|r| Jsonb(&r.attrs)).bind_iter())
        .map_err(enc)?;
    args.add(rows.iter().map(|r| r.tags.as_ref().map(Jsonb)).bind_iter())
        .map_err(enc)?;
    args.add(rows.iter().map(|r| r.consent_email).bind_iter())
        .map_err(enc)?;
    args.add(rows.iter().map(|r| r.consent_sms).bind_iter())
        .map_err(enc)?;
    args.add(rows.iter().map(|r| r.consent_push).bind_iter())
        .map_err(enc)?;
    args.add(now).map_err(enc)?;
    let (conflict, token_conflict) = if upsert {
        (contact_conflict_clause(DbBackend::Postgres), TOKEN_CONFLICT)
    } else {
        (String::new(), "")
    };
    let sql = if tokens.is_empty() {
        format!("{CONTACT_INSERT}{conflict}")
    } else {
        args.add(tokens.iter().map(|r| r.external_id.as_str()).bind_iter())
            .map_err(enc)?;
        args.add(tokens.iter().map(|r| r.push_token.as_deref()).bind_iter())
            .map_err(enc)?;
        args.add(
            tokens
                .iter()
                .map(|r| r.push_platform.as_deref())
                .bind_iter(),
        )
        .map_err(enc)?;
        format!(
            "WITH c AS ({CONTACT_INSERT}{conflict} RETURNING id, external_id) \
             INSERT INTO push_tokens (contact_id, token, platform, created_at) SELECT c.id, t.token, t.platform, $11 \
             FROM UNNEST($12::text[], $13::text[], $14::text[]) AS t(eid, token, platform) JOIN c ON c.external_id = t.eid ORDER BY t.token{token_conflict}"
        )
    };
    drop(tokens);
    let mut tx = db
        .conn
        .get_postgres_connection_pool()
        .begin_with("BEGIN; SET LOCAL synchronous_commit = off")
        .await?;
    sea_orm::sqlx::query_with(sea_orm::sqlx::AssertSqlSafe(sql), args)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

/// Makes every asynchronously committed batch durable before the import
/// reports success: a transaction that takes an id commits synchronously,
/// and PostgreSQL flushes the WAL up to that commit, all earlier batches
/// included. A crash before this point loses at most the last moments of an
/// import that had not finished, which importing the file again repairs.
async fn make_durable(db: &Db) -> Result<(), ImportError> {
    if db.backend() != DbBackend::Postgres {
        return Ok(());
    }
    let mut tx = db
        .conn
        .get_postgres_connection_pool()
        .begin()
        .await
        .map_err(sqlx_err)?;
    sea_orm::sqlx::query("SELECT txid_current()")
        .execute(&mut *tx)
        .await
        .map_err(sqlx_err)?;
    tx.commit().await.map_err(sqlx_err)
}

async fn flush_events(
    db: Db,
    rows: Vec<EventRow>,
    goals: Arc<[GoalSpec]>,
) -> Result<u64, ImportError> {
    insert_events(&db, &rows).await?;
    // Recomputed from the events table, so a replayed batch (deduplicated by
    // event id) changes nothing, and events repeated without an id count as
    // often as they were stored.
    attribute_events(&db, &goals, &rows).await?;
    Ok(rows.len() as u64)
}

/// Inserts validated events, creating bare contacts for unknown ids; an event id seen before is skipped.
pub async fn insert_events(db: &Db, rows: &[EventRow]) -> Result<(), ImportError> {
    if rows.is_empty() {
        return Ok(());
    }
    let b = db.backend();
    let now = now_ms();
    let mut first: HashMap<&str, i64> = HashMap::new();
    for r in rows {
        let e = first.entry(r.external_id.as_str()).or_insert(r.at);
        *e = (*e).min(r.at);
    }
    let mut q = Sql::new();
    q.push(
        "INSERT INTO contacts (external_id, attrs, created_at, updated_at, first_seen_at) VALUES ",
    );
    for (i, (eid, at)) in first.iter().enumerate() {
        if i > 0 {
            q.push(",");
        }
        q.push("(")
            .bind(eid.to_string())
            .push(",")
            .bind(json_text(Json::Object(Map::new())))
            .push(",");
        q.bind(now)
            .push(",")
            .bind(now)
            .push(",")
            .bind(*at)
            .push(")");
    }
    q.push(" ON CONFLICT (external_id) DO UPDATE SET first_seen_at = CASE WHEN contacts.first_seen_at IS NULL OR contacts.first_seen_at > excluded.first_seen_at THEN excluded.first_seen_at ELSE contacts.first_seen_at END");
    db.conn.execute_raw(q.build(b)).await?;

    let mut q = Sql::new();
    q.push("INSERT INTO events (contact_id, name, at, value, properties, event_id, received_at) SELECT c.id, x.column2, x.column3, x.column4, x.column5, x.column6, x.column7 FROM (VALUES ");
    for (i, r) in rows.iter().enumerate() {
        if i > 0 {
            q.push(",");
        }
        q.push("(")
            .bind(r.external_id.clone())
            .push(",")
            .bind(r.name.clone())
            .push(",")
            .bind(r.at)
            .push(",");
        q.bind_as(b, r.value, "float8").push(",");
        let props =
            (!r.properties.is_empty()).then(|| Box::new(Json::Object(r.properties.clone())));
        q.bind_as(b, Value::Json(props), "jsonb").push(",");
        q.bind_as(b, r.event_id.clone(), "text")
            .push(",")
            .bind(now)
            .push(")");
    }
    q.push(") AS x JOIN contacts c ON c.external_id = x.column1 WHERE true ON CONFLICT (event_id) DO NOTHING");
    db.conn.execute_raw(q.build(b)).await?;
    Ok(())
}

/// How an import reads its file and types contact attributes.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// Declared attribute types (`[contacts.attrs]`); other attributes type themselves.
    pub attr_types: BTreeMap<String, AttrType>,
    /// The file's text encoding (`--encoding`); `None`: UTF-8. A byte-order
    /// mark decides over it (see [`crate::decode`]).
    pub encoding: Option<&'static crate::decode::Encoding>,
    /// External ids held in memory to find a contact repeated in the file,
    /// before they are written out to a temporary file; `None`: about
    /// 250,000 (some 30 MB). Tests lower it to reach the written-out path.
    pub repeats_in_memory: Option<usize>,
}

/// Imports contacts from a CSV or NDJSON file, attributes typed on their own.
pub async fn import_contacts(
    db: &Db,
    path: &Path,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<ImportReport, ImportError> {
    import_contacts_with(db, path, &ImportOptions::default(), progress).await
}

/// Imports contacts from a CSV or NDJSON file as `options` say.
pub async fn import_contacts_with(
    db: &Db,
    path: &Path,
    options: &ImportOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<ImportReport, ImportError> {
    let types = &options.attr_types;
    let shared = Arc::new(ContactBatches {
        digests: forgotten_digests(db).await?,
        all_new: AtomicBool::new(true),
    });
    let report = stream_rows(
        path,
        if db.backend() == DbBackend::Postgres {
            CONTACT_BATCH_PG
        } else {
            CONTACT_BATCH
        },
        if db.backend() == DbBackend::Postgres {
            4
        } else {
            1
        },
        |r: &ContactRow| r.external_id.as_str(),
        |h: &csv::StringRecord, r: &csv::StringRecord| contact_from_csv(types, h, r),
        |map| contact_from_json(types, map),
        db,
        move |db, rows| flush_contacts(db, rows, shared.clone()),
        options.encoding,
        Some(options.repeats_in_memory.unwrap_or(seen_ids::IN_MEMORY)),
        progress,
    )
    .await?;
    make_durable(db).await?;
    refresh_statistics(db, CONTACT_TABLES).await?;
    Ok(report)
}

/// The tables a contacts import writes.
const CONTACT_TABLES: &[&str] = &["contacts", "push_tokens", "suppressions"];

/// The tables an events import writes (an event for an unknown contact
/// creates a bare contact).
const EVENT_TABLES: &[&str] = &["events", "contacts"];

/// Refreshes PostgreSQL's statistics of `tables` after a bulk import:
/// autovacuum may be off or late, and a segment query planned on the
/// statistics of an empty table (a few rows guessed) ran for minutes after a
/// 1,000,000-contact import. `ANALYZE` reads a sample: a fraction of a
/// second at that size. SQLite plans from its indexes' shape and needs nothing.
pub async fn refresh_statistics(db: &Db, tables: &[&str]) -> Result<(), ImportError> {
    if db.backend() != DbBackend::Postgres || tables.is_empty() {
        return Ok(());
    }
    // The names are this module's constants, never input.
    db.conn
        .execute_unprepared(&format!("ANALYZE {}", tables.join(", ")))
        .await?;
    Ok(())
}

/// Imports events from a CSV or NDJSON file without attributing them to
/// any campaign (for data that predates every send, like the demo's history).
pub async fn import_events(
    db: &Db,
    path: &Path,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<ImportReport, ImportError> {
    import_events_with_goals(db, path, &[], progress).await
}

/// Imports events from a CSV or NDJSON file and, after each batch is stored,
/// attributes its goal events to the messages of `goals`' campaigns (SPEC
/// section 5), exactly as `POST /events` does.
pub async fn import_events_with_goals(
    db: &Db,
    path: &Path,
    goals: &[GoalSpec],
    progress: &(dyn Fn(u64) + Sync),
) -> Result<ImportReport, ImportError> {
    import_events_with(db, path, goals, &ImportOptions::default(), progress).await
}

/// [`import_events_with_goals`], reading the file as `options` say.
pub async fn import_events_with(
    db: &Db,
    path: &Path,
    goals: &[GoalSpec],
    options: &ImportOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<ImportReport, ImportError> {
    let goals: Arc<[GoalSpec]> = goals.into();
    let report = stream_rows(
        path,
        EVENT_BATCH,
        1,
        |r: &EventRow| r.external_id.as_str(),
        event_from_csv,
        |map| event_from_json(map, None),
        db,
        move |db, rows| flush_events(db, rows, goals.clone()),
        options.encoding,
        None,
        progress,
    )
    .await?;
    refresh_statistics(db, EVENT_TABLES).await?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_keep_numbers_as_numbers_but_not_zip_codes() {
        assert_eq!(cell_value("42"), Json::from(42));
        assert_eq!(cell_value("-3.5"), Json::from(-3.5));
        assert_eq!(cell_value("0"), Json::from(0));
        assert_eq!(cell_value("02134"), Json::from("02134"));
        assert_eq!(cell_value("1e5"), Json::from("1e5"));
        assert_eq!(cell_value("guangdong"), Json::from("guangdong"));
    }

    #[test]
    fn event_times_accept_rfc3339_or_a_date_at_midnight_utc() {
        assert_eq!(parse_at("2026-01-02").unwrap(), 1_767_312_000_000);
        assert_eq!(
            parse_at("2026-01-02T08:00:00+08:00").unwrap(),
            1_767_312_000_000
        );
        assert!(
            parse_at("2026-01-02 08:00")
                .unwrap_err()
                .contains("RFC 3339")
        );
    }

    #[test]
    fn contact_rows_name_the_bad_column() {
        let h = csv::StringRecord::from(vec!["external_id", "email", "consent_sms", "region"]);
        let ok = contact_from_csv(
            &BTreeMap::new(),
            &h,
            &csv::StringRecord::from(vec!["c1", "A@X.COM", "yes", "guangdong"]),
        )
        .unwrap();
        assert_eq!(ok.email.as_deref(), Some("A@x.com"));
        assert_eq!(ok.consent_sms, Some(true));
        assert_eq!(ok.attrs["region"], Json::from("guangdong"));
        let bad = contact_from_csv(
            &BTreeMap::new(),
            &h,
            &csv::StringRecord::from(vec!["c2", "nope", "", ""]),
        )
        .unwrap_err();
        assert!(bad.starts_with("column `email`"), "{bad}");
        let bad = contact_from_csv(
            &BTreeMap::new(),
            &h,
            &csv::StringRecord::from(vec!["c3", "", "maybe", ""]),
        )
        .unwrap_err();
        assert!(bad.contains("consent_sms"), "{bad}");
        let bad = contact_from_csv(
            &BTreeMap::new(),
            &h,
            &csv::StringRecord::from(vec!["", "a@x.com", "", ""]),
        )
        .unwrap_err();
        assert!(bad.contains("external_id"), "{bad}");
    }

    #[test]
    fn attribute_cells_follow_declared_types_or_their_own() {
        let h = csv::StringRecord::from(vec!["external_id", "vip", "score", "member"]);
        let none = BTreeMap::new();
        let row = |types: &BTreeMap<String, AttrType>, cells: Vec<&str>| {
            contact_from_csv(types, &h, &csv::StringRecord::from(cells))
        };
        let r = row(&none, vec!["c1", "TRUE", "7", "yes"]).unwrap();
        assert_eq!(r.attrs["vip"], Json::Bool(true));
        assert_eq!(r.attrs["score"], Json::from(7));
        assert_eq!(r.attrs["member"], Json::from("yes"));
        let declared: BTreeMap<String, AttrType> = [
            ("member".to_string(), AttrType::Bool),
            ("score".to_string(), AttrType::String),
        ]
        .into();
        let r = row(&declared, vec!["c1", "false", "7", "No"]).unwrap();
        assert_eq!(r.attrs["vip"], Json::Bool(false));
        assert_eq!(r.attrs["score"], Json::from("7"));
        assert_eq!(r.attrs["member"], Json::Bool(false));
        let bad = row(&declared, vec!["c2", "", "", "maybe"]).unwrap_err();
        assert!(
            bad.starts_with("column `member`: `maybe` is not a boolean"),
            "{bad}"
        );
        let m: Map<String, Json> =
            serde_json::from_str(r#"{"external_id":"c1","attrs":{"member":"yes","x":"yes"}}"#)
                .unwrap();
        let r = contact_from_json(&declared, m).unwrap();
        assert_eq!(
            Json::Object(r.attrs),
            serde_json::json!({"member": true, "x": "yes"})
        );
    }

    #[test]
    fn repeated_contacts_in_a_batch_fold_into_the_first_in_file_order() {
        let row = |eid: &str, email: Option<&str>, phone: Option<&str>, attr: (&str, i64)| {
            let mut attrs = Map::new();
            attrs.insert(attr.0.to_string(), Json::from(attr.1));
            ContactRow {
                external_id: eid.into(),
                email: email.map(str::to_string),
                phone: phone.map(str::to_string),
                attrs,
                ..ContactRow::default()
            }
        };
        let folded = fold_duplicates(vec![
            row("c1", Some("a@x.com"), None, ("n", 1)),
            row("c2", None, None, ("n", 2)),
            row("c1", Some("b@x.com"), Some("+8613800138000"), ("m", 3)),
            row("c1", None, None, ("n", 4)),
        ]);
        assert_eq!(folded.len(), 2);
        assert_eq!(folded[0].external_id, "c1");
        assert_eq!(folded[0].email.as_deref(), Some("b@x.com"));
        assert_eq!(folded[0].phone.as_deref(), Some("+8613800138000"));
        assert_eq!(
            Json::Object(folded[0].attrs.clone()),
            serde_json::json!({"n": 4, "m": 3})
        );
        assert_eq!(folded[1].external_id, "c2");
        let alone = fold_duplicates(vec![row("c9", None, None, ("n", 1))]);
        assert_eq!(alone[0].external_id, "c9");
    }

    #[test]
    fn lanes_spread_keys() {
        let mut counts = [0usize; 4];
        for i in 0..4000 {
            counts[(lane_hash(&format!("u{i:07}")) % 4) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
    }

    #[test]
    fn ndjson_attrs_drop_nulls_and_unknown_keys_are_refused() {
        let m: Map<String, Json> =
            serde_json::from_str(r#"{"external_id":"c1","attrs":{"a":null,"b":{"c":null,"d":1}}}"#)
                .unwrap();
        let r = contact_from_json(&BTreeMap::new(), m).unwrap();
        assert_eq!(Json::Object(r.attrs), serde_json::json!({"b": {"d": 1}}));
        let m: Map<String, Json> =
            serde_json::from_str(r#"{"external_id":"c1","emial":"a@x.com"}"#).unwrap();
        assert!(
            contact_from_json(&BTreeMap::new(), m)
                .unwrap_err()
                .contains("unknown key `emial`")
        );
    }
}

#[cfg(test)]
mod repeated_id_tests {
    use super::*;
    use crate::test_db::on_both_databases;

    /// A file longer than the ids held in memory: repeats within a stretch
    /// and across stretches written out are both warned of, with the line
    /// last seen, in line order, and the rows are merged as always.
    async fn repeats_across_written_out_stretches_are_warned_of(db: &Db) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("contacts.csv");
        let mut text = String::from("external_id,email\n");
        for i in 0..300 {
            text.push_str(&format!("c{i},c{i}@example.com\n"));
        }
        // Line 302: c0 again (first seen on line 2, far behind); line 303:
        // c299 again (line 301, in the same stretch); line 304: c0 again.
        text.push_str("c0,c0@work.example.com\nc299,\nc0,\n");
        std::fs::write(&path, text).unwrap();
        let options = ImportOptions {
            repeats_in_memory: Some(50),
            ..ImportOptions::default()
        };
        let report = import_contacts_with(db, &path, &options, &|_| {})
            .await
            .unwrap();
        assert_eq!(report.accepted, 303);
        assert_eq!(report.warned, 3);
        let lines: Vec<(u64, &str)> = report
            .warnings
            .iter()
            .map(|w| (w.line, w.message.as_str()))
            .collect();
        assert_eq!(
            lines,
            [
                (
                    302,
                    "external_id `c0` is also on line 2: line 302 is kept (its empty cells keep line 2's values)"
                ),
                (
                    303,
                    "external_id `c299` is also on line 301: line 303 is kept (its empty cells keep line 301's values)"
                ),
                (
                    304,
                    "external_id `c0` is also on line 302: line 304 is kept (its empty cells keep line 302's values)"
                ),
            ]
        );
        let mut q = Sql::new();
        q.push("SELECT COUNT(*), MAX(CASE WHEN external_id = 'c0' THEN email END) FROM contacts");
        let row = db
            .conn
            .query_one_raw(q.build(db.backend()))
            .await
            .unwrap()
            .unwrap();
        let (n, email): (i64, String) = row.try_get_many_by_index().unwrap();
        assert_eq!((n, email.as_str()), (300, "c0@work.example.com"));
    }

    on_both_databases!(repeats_across_written_out_stretches_are_warned_of);
}
