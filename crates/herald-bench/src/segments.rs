//! The body of `herald-bench segments`: generates N contacts and M events
//! with realistic skew (many one-off buyers, a few heavy ones, seasonal
//! timing), reproducible from a seed, loads them fast (COPY on PostgreSQL,
//! batched inserts on SQLite), then times segment counts and RFM scoring
//! next to hand-written SQL for the same question, and a full audience scan.

use std::fmt;
use std::time::Instant;

use herald_domain::config::{LifecycleConfig, RfmConfig};
use herald_domain::segment::{Expr, parse};
use herald_engine::store::Store;
use sea_orm::DbBackend;

use herald_storage::Db;
use herald_storage::bench::{self, BenchContact as ContactOut, BenchEvent as EventOut};
use herald_storage::segment_sql::{DAY_MS, SegmentContext, count_sql, rfm_grid_sql};
use herald_storage::sql::Sql;
use herald_storage::store::SqlStore;

/// The snapshot instant every bench query uses (2026-11-30T00:00:00Z), so a seed gives the same answers.
pub const BENCH_NOW: i64 = 1_795_996_800_000;
/// How far back the generated history goes.
const HISTORY_DAYS: f64 = 3.0 * 365.0;
/// Contacts generated and loaded per chunk.
const CHUNK_CONTACTS: usize = 20_000;
/// Timed runs per query; the fastest counts (the first warms the cache).
const RUNS: usize = 3;
/// Page size of the audience scan (the engine's planning page).
const SCAN_PAGE: u32 = 2000;
/// Purchase event, as in SPEC's examples.
const PURCHASE: &str = "order_placed";

/// SPEC's `lapsed_buyers` segment.
pub const LAPSED_BUYERS: &str = "attrs.region == \"guangdong\" and days_since(\"order_placed\") between 90 and 150 and count(\"order_placed\", \"365d\") >= 2 and not has_tag(\"wholesale\")";
/// The RFM segment of the issue.
pub const RFM_CHAMPIONS: &str = "rfm.r >= 4 and rfm.f >= 4";
/// The overdue segment of the issue.
pub const OVERDUE: &str = "overdue(\"order_placed\") > 2";
/// The filter of the audience scan: every contact who ever bought (about two thirds of the base).
pub const SCAN_FILTER: &str = "rfm.r >= 1";

/// What to generate.
#[derive(Debug, Clone, Copy)]
pub struct BenchOptions {
    /// Contacts.
    pub contacts: usize,
    /// Events (exactly).
    pub events: usize,
    /// Seed of the generator.
    pub seed: u64,
}

/// Why the benchmark stopped.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The database failed.
    #[error("database error: {0}")]
    Db(String),
    /// Herald and the hand-written SQL disagree: a bug.
    #[error("{name}: herald found {herald}, the hand-written SQL {hand}")]
    Mismatch {
        /// Which question.
        name: String,
        /// Herald's answer.
        herald: String,
        /// The hand-written answer.
        hand: String,
    },
}

fn db_err(e: impl fmt::Display) -> BenchError {
    BenchError::Db(e.to_string())
}

/// One timed question.
#[derive(Debug, Clone)]
pub struct BenchRow {
    /// What was asked.
    pub name: String,
    /// The answer (both agree).
    pub answer: String,
    /// herald's compiled query, fastest of the runs, in ms.
    pub herald_ms: f64,
    /// The hand-written query, fastest of the runs, in ms.
    pub hand_ms: f64,
}

/// The full audience scan through `audience_page`.
#[derive(Debug, Clone, Default)]
pub struct ScanReport {
    /// The filter.
    pub filter: String,
    /// Members read.
    pub members: u64,
    /// Pages (calls of `audience_page`).
    pub pages: u64,
    /// Wall time in ms.
    pub ms: f64,
    /// Resident memory before the scan, bytes (Linux).
    pub rss_before: Option<u64>,
    /// Peak resident memory during the scan, bytes (Linux; reset before it where the kernel allows).
    pub peak_rss: Option<u64>,
}

/// Everything `bench_segments` measured.
#[derive(Debug, Clone)]
pub struct BenchReport {
    /// `sqlite` or `postgres`.
    pub backend: &'static str,
    /// What was generated.
    pub options: BenchOptions,
    /// Purchases among the events.
    pub purchases: u64,
    /// Time to generate and load, ms.
    pub load_ms: f64,
    /// Time to build statistics after loading (ANALYZE), ms.
    pub analyze_ms: f64,
    /// Timed questions.
    pub rows: Vec<BenchRow>,
    /// The audience scan.
    pub scan: ScanReport,
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &self.options;
        writeln!(
            f,
            "{}: {} contacts, {} events ({} purchases), seed {}; loaded in {:.1} s, analyzed in {:.1} s",
            self.backend,
            o.contacts,
            o.events,
            self.purchases,
            o.seed,
            self.load_ms / 1000.0,
            self.analyze_ms / 1000.0
        )?;
        writeln!(
            f,
            "{:<34} {:>12} {:>11} {:>11} {:>7}",
            "question", "answer", "herald ms", "by hand ms", "ratio"
        )?;
        for r in &self.rows {
            writeln!(
                f,
                "{:<34} {:>12} {:>11.0} {:>11.0} {:>7.2}",
                r.name,
                r.answer,
                r.herald_ms,
                r.hand_ms,
                r.herald_ms / r.hand_ms.max(0.001)
            )?;
        }
        let mb =
            |b: Option<u64>| b.map_or("?".to_string(), |b| format!("{:.0} MB", b as f64 / 1e6));
        write!(
            f,
            "audience scan `{}`: {} members in {} pages, {:.1} s; RSS {} before, peak {}",
            self.scan.filter,
            self.scan.members,
            self.scan.pages,
            self.scan.ms / 1000.0,
            mb(self.scan.rss_before),
            mb(self.scan.peak_rss)
        )
    }
}

/// SplitMix64: a tiny, well-mixed generator whose output never changes with a crate version.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed)
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    fn f(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Standard normal (Box-Muller).
    fn normal(&mut self) -> f64 {
        let u = self.f().max(1e-12);
        let v = self.f();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    /// One of `items` by weight.
    fn pick<'a, T>(&mut self, items: &'a [(T, f64)]) -> &'a T {
        let total: f64 = items.iter().map(|i| i.1).sum();
        let mut x = self.f() * total;
        for (item, w) in items {
            if x < *w {
                return item;
            }
            x -= w;
        }
        &items[items.len() - 1].0
    }
}

/// How a contact buys.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Buyer {
    Never,
    OneOff,
    Regular,
    Heavy,
}

/// One generated contact, drawn from its own seeded stream so that passes agree.
#[derive(Debug)]
struct Plan {
    rng: Rng,
    buyer: Buyer,
    weight: f64,
}

fn plan(seed: u64, i: usize) -> Plan {
    let mut rng = Rng::new(seed ^ (i as u64).wrapping_mul(0xA24B_AED4_963E_E407));
    rng.next();
    let x = rng.f();
    let buyer = if x < 0.35 {
        Buyer::Never
    } else if x < 0.80 {
        Buyer::OneOff
    } else if x < 0.97 {
        Buyer::Regular
    } else {
        Buyer::Heavy
    };
    let factor = match buyer {
        Buyer::Heavy => 5.0,
        Buyer::Regular => 1.5,
        _ => 1.0,
    };
    let weight = (1.0 * rng.normal()).exp() * factor;
    Plan { rng, buyer, weight }
}

/// How much more likely an instant is than average: November and December sales, a June bump.
fn season(at: i64) -> f64 {
    let day_of_year = (at / DAY_MS).rem_euclid(365) as f64;
    let month = (day_of_year / 30.45) as u32; // 0 = January, near enough
    match month {
        10 | 11 => 2.2,
        5 => 1.4,
        _ => 1.0,
    }
}

/// An instant in [from, to] with seasonal density.
fn seasonal_instant(rng: &mut Rng, from: i64, to: i64) -> i64 {
    let span = (to - from).max(1) as f64;
    loop {
        let at = from + (rng.f() * span) as i64;
        if rng.f() * 2.2 < season(at) {
            return at;
        }
    }
}

/// Generates contact `i` (ids from 1) with `n` events.
fn generate(p: &mut Plan, id: i64, n: usize, events: &mut Vec<EventOut>) -> ContactOut {
    let rng = &mut p.rng;
    let age = HISTORY_DAYS * rng.f().powf(1.3);
    let created_at = BENCH_NOW - (age * DAY_MS as f64) as i64;
    // Many stop coming back; the rest are still around.
    let end = if rng.f() < 0.45 {
        created_at + (rng.f() * (BENCH_NOW - created_at) as f64) as i64
    } else {
        BENCH_NOW
    };
    let purchases = match p.buyer {
        Buyer::Never => 0,
        Buyer::OneOff => n.min(1),
        Buyer::Regular => (n as f64 * 0.3).round().max(2.0) as usize,
        Buyer::Heavy => (n as f64 * 0.5).round() as usize,
    }
    .min(n);
    let start_len = events.len();
    if p.buyer == Buyer::OneOff {
        for _ in 0..purchases {
            let at = seasonal_instant(rng, created_at, end);
            events.push(purchase(rng, id, at, 1.0));
        }
    } else if purchases > 0 {
        // Regular buyers keep a personal rhythm (weekly to quarterly), with jitter.
        let cycle_days = [7.0, 14.0, 30.0, 45.0, 90.0][rng.below(5) as usize];
        let cycle = cycle_days * DAY_MS as f64;
        let mut at = end - (rng.f() * cycle) as i64;
        let big = if p.buyer == Buyer::Heavy { 3.0 } else { 1.0 };
        for _ in 0..purchases {
            events.push(purchase(rng, id, at.max(created_at), big));
            at -= (cycle * (0.6 + 0.8 * rng.f())) as i64;
        }
    }
    let names = [("app_open", 0.65), ("login", 0.25), ("page_view", 0.10)];
    for _ in purchases..n {
        let name = *rng.pick(&names);
        let at = seasonal_instant(rng, created_at, end);
        events.push(EventOut {
            contact_id: id,
            name,
            at,
            value: None,
            sku: None,
        });
    }
    let first_seen_at = events[start_len..].iter().map(|e| e.at).min();
    let regions = [
        ("guangdong", 0.20),
        ("zhejiang", 0.14),
        ("jiangsu", 0.12),
        ("shanghai", 0.10),
        ("beijing", 0.10),
        ("sichuan", 0.08),
        ("hubei", 0.07),
        ("fujian", 0.07),
        ("shandong", 0.07),
        ("henan", 0.05),
    ];
    let region = rng.pick(&regions);
    let referrals = (-(rng.f().max(1e-9)).ln() * 1.5) as u32;
    let plan_name = if rng.f() < 0.2 { "pro" } else { "free" };
    let tags = match rng.f() {
        x if x < 0.03 => Some("[\"wholesale\"]"),
        x if x < 0.07 => Some("[\"vip\"]"),
        _ => None,
    };
    ContactOut {
        id,
        email: (rng.f() < 0.92).then(|| format!("u{id}@example.com")),
        phone: (rng.f() < 0.55).then(|| format!("+86138{id:08}")),
        timezone: if rng.f() < 0.85 {
            "Asia/Shanghai"
        } else {
            "Asia/Hong_Kong"
        },
        locale: if rng.f() < 0.8 { "zh-CN" } else { "en-US" },
        attrs: format!(
            "{{\"region\":\"{region}\",\"referrals\":{referrals},\"plan\":\"{plan_name}\"}}"
        ),
        tags,
        consent_sms: rng.f() < 0.5,
        first_seen_at,
        created_at,
    }
}

fn purchase(rng: &mut Rng, id: i64, at: i64, big: f64) -> EventOut {
    let value = ((60.0f64.ln() + 0.8 * rng.normal()).exp() * big * 100.0).round() / 100.0;
    // A few SKUs sell most (Zipf-like).
    let sku = (500.0 * rng.f().powi(3)) as u32;
    EventOut {
        contact_id: id,
        name: PURCHASE,
        at,
        value: Some(value),
        sku: Some(sku),
    }
}

/// Empties `db` and loads a generated data set; returns the number of purchases.
pub async fn load(db: &Db, o: &BenchOptions) -> Result<u64, BenchError> {
    db.truncate_all().await.map_err(db_err)?;
    // First pass: each contact's weight, so that event counts add up to exactly `o.events`.
    let weights: Vec<f32> = (0..o.contacts)
        .map(|i| plan(o.seed, i).weight as f32)
        .collect();
    let total: f64 = weights.iter().map(|w| f64::from(*w)).sum();
    let mut cumulative = 0.0f64;
    let mut assigned = 0usize;
    let mut purchases = 0u64;
    let mut contacts = Vec::with_capacity(CHUNK_CONTACTS);
    let mut events = Vec::new();
    for (i, w) in weights.iter().enumerate() {
        cumulative += f64::from(*w);
        let upto = if i + 1 == o.contacts {
            o.events
        } else {
            ((cumulative / total) * o.events as f64) as usize
        };
        let n = upto.saturating_sub(assigned);
        assigned += n;
        let mut p = plan(o.seed, i);
        contacts.push(generate(&mut p, i as i64 + 1, n, &mut events));
        if contacts.len() == CHUNK_CONTACTS || i + 1 == o.contacts {
            purchases += events.iter().filter(|e| e.name == PURCHASE).count() as u64;
            bench::load_rows(db, &contacts, &events)
                .await
                .map_err(db_err)?;
            contacts.clear();
            events.clear();
        }
    }
    bench::reset_contact_ids(db).await.map_err(db_err)?;
    Ok(purchases)
}

/// The rows of `q` as text, for comparing answers.
async fn answer(db: &Db, q: Sql) -> Result<(Vec<String>, f64), BenchError> {
    let t = Instant::now();
    let rows = bench::answer(db, q).await.map_err(db_err)?;
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    Ok((rows, ms))
}

/// Statistics for the planners (and, on PostgreSQL, the visibility map for index-only scans).
pub async fn analyze(db: &Db) -> Result<(), BenchError> {
    bench::analyze(db).await.map_err(db_err)
}

fn hand_sql(b: DbBackend, name: &str) -> String {
    bench::hand_written(b, name, BENCH_NOW)
}

/// Times herald's query and the hand-written one, `RUNS` times each, alternating.
async fn timed(db: &Db, name: &str, herald: Sql, hand: String) -> Result<BenchRow, BenchError> {
    let (mut herald_ms, mut hand_ms) = (f64::MAX, f64::MAX);
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        let (rows, ms) = answer(db, herald.clone()).await?;
        herald_ms = herald_ms.min(ms);
        a = rows;
        let mut h = Sql::new();
        h.push(&hand);
        let (rows, ms) = answer(db, h).await?;
        hand_ms = hand_ms.min(ms);
        b = rows;
    }
    if a != b {
        return Err(BenchError::Mismatch {
            name: name.into(),
            herald: a.join(";"),
            hand: b.join(";"),
        });
    }
    let answer = if a.len() == 1 {
        a[0].clone()
    } else {
        format!("{} rows", a.len())
    };
    Ok(BenchRow {
        name: name.into(),
        answer,
        herald_ms,
        hand_ms,
    })
}

/// Resident memory now and its high-water mark, bytes (Linux).
fn rss() -> (Option<u64>, Option<u64>) {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return (None, None);
    };
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Times the questions of issue 4 on data already in `db` (see [`load`]).
pub async fn measure(db: &Db, log: &(dyn Fn(&str) + Sync)) -> Result<Vec<BenchRow>, BenchError> {
    let b = db.backend();
    let rfm = RfmConfig::default();
    let lifecycle = LifecycleConfig::default();
    let ctx = SegmentContext::new(b, BENCH_NOW, &rfm, &lifecycle);
    let mut rows = Vec::new();
    for (name, src) in [
        ("lapsed_buyers", LAPSED_BUYERS),
        ("rfm", RFM_CHAMPIONS),
        ("overdue", OVERDUE),
    ] {
        let expr = filter(src)?;
        let q = count_sql(&expr, &ctx).map_err(db_err)?;
        let row = timed(db, &format!("count {name}"), q, hand_sql(b, name)).await?;
        log(&format!("{name}: {row:?}"));
        rows.push(row);
    }
    let q = rfm_grid_sql(&ctx).map_err(db_err)?;
    let row = timed(db, "RFM grid of the whole base", q, hand_sql(b, "grid")).await?;
    log(&format!("grid: {row:?}"));
    rows.push(row);
    Ok(rows)
}

fn filter(src: &str) -> Result<Expr, BenchError> {
    parse(src).map_err(|e| db_err(format!("{src}: {e:?}")))
}

/// Scans the whole audience of `src` through `audience_page`, as a run's planning does.
pub async fn scan(db: &Db, src: &str) -> Result<ScanReport, BenchError> {
    let store = SqlStore::new(db.clone());
    let expr = filter(src)?;
    // Writing 5 to clear_refs resets the high-water mark (Linux), so the peak is the scan's own.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let (rss_before, _) = rss();
    let t = Instant::now();
    let (mut after, mut members, mut pages) = (0, 0u64, 0u64);
    loop {
        let page = store
            .audience_page(&expr, BENCH_NOW, None, after, SCAN_PAGE, None)
            .await
            .map_err(db_err)?;
        pages += 1;
        let Some(last) = page.last() else { break };
        after = last.contact_id;
        members += page.len() as u64;
    }
    let (_, peak_rss) = rss();
    Ok(ScanReport {
        filter: src.into(),
        members,
        pages,
        ms: t.elapsed().as_secs_f64() * 1000.0,
        rss_before,
        peak_rss,
    })
}

/// `herald-bench segments`: empties `db`, loads a generated data set, and measures.
pub async fn bench_segments(
    db: &Db,
    options: BenchOptions,
    log: &(dyn Fn(&str) + Sync),
) -> Result<BenchReport, BenchError> {
    let t = Instant::now();
    log(&format!(
        "generating and loading {} contacts and {} events (seed {})",
        options.contacts, options.events, options.seed
    ));
    let purchases = load(db, &options).await?;
    let load_ms = t.elapsed().as_secs_f64() * 1000.0;
    let t = Instant::now();
    analyze(db).await?;
    let analyze_ms = t.elapsed().as_secs_f64() * 1000.0;
    let rows = measure(db, log).await?;
    let scan = scan(db, SCAN_FILTER).await?;
    Ok(BenchReport {
        backend: if db.backend() == DbBackend::Postgres {
            "postgres"
        } else {
            "sqlite"
        },
        options,
        purchases,
        load_ms,
        analyze_ms,
        rows,
        scan,
    })
}
