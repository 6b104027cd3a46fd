//! What `herald segment preview` and the console's segments page show of a
//! filter: its member count, the R x F grid of its members, how many are in
//! each lifecycle stage, and a sample. One function for both, so the page
//! and the command count alike; every figure comes from the segment SQL the
//! planner uses ([`crate::segment_sql`]).

use std::collections::BTreeMap;

use herald_domain::segment::{Expr, Lifecycle};
use herald_engine::store::{AudienceMember, Store, StoreError};
use sea_orm::ConnectionTrait;

use crate::Db;
use crate::segment_sql::{
    IdRange, SegmentContext, Unsupported, append, compile, compile_range, count_sql, rfm_scores_sql,
};
use crate::sql::Sql;
use crate::store::SqlStore;

/// A segment as it stands at one instant.
#[derive(Debug, Clone)]
pub struct SegmentPreview {
    /// Contacts the filter takes (forgotten ones never count).
    pub members: i64,
    /// (R score, F score) -> members with those scores; members who never
    /// bought have no scores and are in [`SegmentPreview::without_rfm`].
    pub rf_grid: BTreeMap<(i64, i64), i64>,
    /// Members without an R and F score (no purchase in the RFM window).
    pub without_rfm: i64,
    /// Members in each lifecycle stage, in [`Lifecycle::ALL`]'s order.
    pub lifecycle: Vec<(Lifecycle, i64)>,
    /// The first members in contact id order, at most the asked-for limit.
    pub sample: Vec<AudienceMember>,
}

/// Why a preview could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PreviewError {
    /// The filter cannot be written as SQL.
    #[error(transparent)]
    Unsupported(#[from] Unsupported),
    /// The database refused or failed.
    #[error("database error: {0}")]
    Db(#[from] sea_orm::DbErr),
    /// The store's audience query failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

async fn scalar(store: &SqlStore, q: Sql) -> Result<i64, sea_orm::DbErr> {
    scalar_on(store.db(), q).await
}

async fn scalar_on(db: &Db, q: Sql) -> Result<i64, sea_orm::DbErr> {
    let rows = db.conn.query_all_raw(q.build(db.backend())).await?;
    rows.first()
        .map(|r| r.try_get_by_index::<i64>(0))
        .transpose()
        .map(|n| n.unwrap_or(0))
}

/// A score column: INT4 on PostgreSQL, INTEGER on SQLite.
fn score(r: &sea_orm::QueryResult, i: usize) -> Result<Option<i64>, sea_orm::DbErr> {
    if let Ok(v) = r.try_get_by_index::<Option<i32>>(i) {
        return Ok(v.map(i64::from));
    }
    r.try_get_by_index::<Option<i64>>(i)
}

/// (r, f) -> members of `filter` with those scores at `now`.
async fn rf_grid(
    store: &SqlStore,
    filter: &Expr,
    now: i64,
) -> Result<BTreeMap<(i64, i64), i64>, PreviewError> {
    let ctx = store.segment_context(now);
    let members = compile(filter, &ctx)?;
    let mut q = Sql::new();
    q.push("SELECT s.r, s.f, COUNT(*) FROM (");
    append(&mut q, rfm_scores_sql(&ctx)?);
    q.push(") s JOIN (SELECT c.id FROM contacts c");
    append(&mut q, members.joins);
    q.push(" WHERE c.forgotten_at IS NULL AND ");
    append(&mut q, members.cond);
    q.push(") m ON m.id = s.id GROUP BY s.r, s.f");
    let db = store.db();
    let rows = db.conn.query_all_raw(q.build(db.backend())).await?;
    let mut grid = BTreeMap::new();
    for r in rows {
        let (rs, fs, n) = (score(&r, 0)?, score(&r, 1)?, r.try_get_by_index::<i64>(2)?);
        if let (Some(rs), Some(fs)) = (rs, fs) {
            *grid.entry((rs, fs)).or_insert(0) += n;
        }
    }
    Ok(grid)
}

/// `filter` and `lifecycle == stage`.
fn in_stage(filter: &Expr, stage: Lifecycle) -> Expr {
    let text = format!("lifecycle == \"{}\"", stage.as_str());
    let stage = herald_domain::segment::parse(&text).expect("a stage comparison always parses");
    Expr::And {
        lhs: Box::new(filter.clone()),
        rhs: Box::new(stage),
        span: filter.span(),
    }
}

/// How many contacts `filter` takes at `now`.
pub async fn count(store: &SqlStore, filter: &Expr, now: i64) -> Result<i64, PreviewError> {
    let ctx = store.segment_context(now);
    Ok(scalar(store, count_sql(filter, &ctx)?).await?)
}

/// The first `limit` members of `filter` at `now`, in contact id order: a
/// page of the planner's audience query, bounded by `limit` (the console
/// reads it live beside stored counts, so a forgotten contact never shows
/// from a stored copy).
pub async fn sample(
    store: &SqlStore,
    filter: &Expr,
    now: i64,
    limit: u32,
) -> Result<Vec<AudienceMember>, PreviewError> {
    Ok(store
        .audience_page(filter, now, None, 0, limit, None)
        .await?)
}

/// How many contacts `filter` takes under `ctx` (an instant and RFM and
/// lifecycle settings of the caller's choosing: the benchmarks' fixed ones).
pub async fn count_in(
    db: &Db,
    filter: &Expr,
    ctx: &SegmentContext<'_>,
) -> Result<i64, PreviewError> {
    Ok(scalar_on(db, count_sql(filter, ctx)?).await?)
}

/// Whether contact `id` is in `filter` at `now`: the segment's query
/// restricted to that one contact (`herald preview` says so above the messages).
pub async fn contains(
    store: &SqlStore,
    filter: &Expr,
    id: i64,
    now: i64,
) -> Result<bool, PreviewError> {
    let ctx = store.segment_context(now);
    let only = IdRange {
        after: id - 1,
        up_to: id,
    };
    let compiled = compile_range(filter, &ctx, Some(only))?;
    let mut q = Sql::new();
    q.push("SELECT COUNT(*) FROM contacts c");
    append(&mut q, compiled.joins);
    q.push(" WHERE c.forgotten_at IS NULL AND c.id = ")
        .bind(id)
        .push(" AND ");
    append(&mut q, compiled.cond);
    Ok(scalar(store, q).await? == 1)
}

/// The preview of `filter` at `now`, with a sample of at most `limit` members.
pub async fn preview(
    store: &SqlStore,
    filter: &Expr,
    now: i64,
    limit: u32,
) -> Result<SegmentPreview, PreviewError> {
    let ctx = store.segment_context(now);
    let members = count(store, filter, now).await?;
    let mut lifecycle = Vec::with_capacity(Lifecycle::ALL.len());
    for stage in Lifecycle::ALL {
        let n = scalar(store, count_sql(&in_stage(filter, stage), &ctx)?).await?;
        lifecycle.push((stage, n));
    }
    let rf_grid = rf_grid(store, filter, now).await?;
    let without_rfm = members - rf_grid.values().sum::<i64>();
    let sample = sample(store, filter, now, limit).await?;
    Ok(SegmentPreview {
        members,
        rf_grid,
        without_rfm,
        lifecycle,
        sample,
    })
}
