//! Compiles a segment filter into one parameterised SQL query over
//! `contacts c`, for SQLite and PostgreSQL. Values the user wrote are always
//! bound parameters; field names come from a fixed list. Per-contact event
//! measures (counts, sums, last times, RFM, lifecycle, overdue) come from
//! derived tables grouped by contact and joined once, never from subqueries
//! run per contact row. A missing value makes its comparison NULL, and every
//! `not` reads NULL as false first: two-valued logic, whatever SQL does with NULL.
//! Numbers herald computes itself (`now`, window bounds) are inlined.

use std::cell::RefCell;

use herald_domain::config::{LifecycleConfig, RfmConfig};
use herald_domain::segment::{CmpOp, Expr, Field, Literal};
use herald_domain::types::Channel;
use sea_orm::DbBackend;

use crate::sql::Sql;

/// Milliseconds in a day.
pub const DAY_MS: i64 = 86_400_000;

/// A day in milliseconds as a double, so that day fractions divide the same
/// way on both databases (a bare `86400000.0` is NUMERIC on PostgreSQL).
const DAY_F: &str = "CAST(86400000 AS DOUBLE PRECISION)";

/// `monetary_composite` edges when `monetary_weights` is set without them.
pub const DEFAULT_COMPOSITE_EDGES: [f64; 4] = [20.0, 40.0, 60.0, 80.0];

/// A filter (or a setting) the SQL compiler cannot express.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("`{0}` is not supported in segment queries")]
pub struct Unsupported(pub String);

/// What a segment query needs besides the filter: the database, the
/// snapshot instant and the `[rfm]` and `[lifecycle]` settings.
#[derive(Debug, Clone, Copy)]
pub struct SegmentContext<'a> {
    /// The database the SQL is for.
    pub backend: DbBackend,
    /// The snapshot instant (ms since the epoch); events after it are ignored.
    pub now: i64,
    /// `[rfm]`.
    pub rfm: &'a RfmConfig,
    /// `[lifecycle]`.
    pub lifecycle: &'a LifecycleConfig,
}

impl<'a> SegmentContext<'a> {
    /// A context for `backend` at `now` with these settings.
    pub fn new(
        backend: DbBackend,
        now: i64,
        rfm: &'a RfmConfig,
        lifecycle: &'a LifecycleConfig,
    ) -> Self {
        Self {
            backend,
            now,
            rfm,
            lifecycle,
        }
    }

    fn pg(&self) -> bool {
        self.backend == DbBackend::Postgres
    }
}

/// The contact ids `(after, up_to]`: a query restricted to them aggregates only their events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    /// Exclusive lower bound.
    pub after: i64,
    /// Inclusive upper bound.
    pub up_to: i64,
}

/// A compiled filter: joins to put after `FROM contacts c`, and the condition.
#[derive(Debug, Clone, Default)]
pub struct Compiled {
    /// `LEFT JOIN (...) alias ON alias.contact_id = c.id` clauses (possibly none).
    pub joins: Sql,
    /// The condition over `c` and the joined tables, for a `WHERE` clause: it is true for
    /// members and false or NULL for the rest (wrap it in `COALESCE(.., FALSE)` elsewhere).
    pub cond: Sql,
}

/// Compiles `expr` for the whole contact base.
pub fn compile(expr: &Expr, ctx: &SegmentContext<'_>) -> Result<Compiled, Unsupported> {
    compile_range(expr, ctx, None)
}

/// Whether `expr` compiles for both databases, as `herald check` demands
/// of every filter (a config may move from SQLite to PostgreSQL).
pub fn compiles_on_both(
    expr: &Expr,
    rfm: &RfmConfig,
    lifecycle: &LifecycleConfig,
) -> Result<(), Unsupported> {
    for b in [DbBackend::Sqlite, DbBackend::Postgres] {
        compile(expr, &SegmentContext::new(b, 0, rfm, lifecycle))?;
    }
    Ok(())
}

/// Compiles `expr`; with `ids`, the derived tables aggregate only those contacts' events
/// (the caller must restrict `c.id` to the same range).
pub fn compile_range(
    expr: &Expr,
    ctx: &SegmentContext<'_>,
    ids: Option<IdRange>,
) -> Result<Compiled, Unsupported> {
    let c = Compiler::new(ctx)?;
    let mut cond = Sql::new();
    c.expr(expr, &mut cond)?;
    let skip_before = c.prune_bound(expr);
    let joins = c.joins(ids.map(Only::Range), skip_before)?;
    Ok(Compiled { joins, cond })
}

/// Compiles `expr` for the contacts `ids` only: the derived tables aggregate only
/// their events (the caller must restrict `c.id` to the same list).
pub fn compile_ids(
    expr: &Expr,
    ctx: &SegmentContext<'_>,
    ids: &[i64],
) -> Result<Compiled, Unsupported> {
    let c = Compiler::new(ctx)?;
    let mut cond = Sql::new();
    c.expr(expr, &mut cond)?;
    let skip_before = c.prune_bound(expr);
    let joins = c.joins(Some(Only::Ids(ids)), skip_before)?;
    Ok(Compiled { joins, cond })
}

/// `SELECT COUNT(*)` of the contacts (not forgotten) that match `expr`.
pub fn count_sql(expr: &Expr, ctx: &SegmentContext<'_>) -> Result<Sql, Unsupported> {
    let compiled = compile(expr, ctx)?;
    let mut q = Sql::new();
    q.push("SELECT COUNT(*) FROM contacts c");
    append(&mut q, compiled.joins);
    q.push(" WHERE c.forgotten_at IS NULL AND ");
    append(&mut q, compiled.cond);
    Ok(q)
}

/// Every contact's RFM as `(id, r, f, m, r_days, f_count, m_value)`, for contacts
/// (not forgotten) with a purchase, in id order.
pub fn rfm_scores_sql(ctx: &SegmentContext<'_>) -> Result<Sql, Unsupported> {
    let mut q = rfm_select(ctx)?;
    q.push(" ORDER BY c.id");
    Ok(q)
}

/// The R x F x M grid over the whole base: `(r, f, m, contacts)` rows.
pub fn rfm_grid_sql(ctx: &SegmentContext<'_>) -> Result<Sql, Unsupported> {
    let mut q = Sql::new();
    q.push("SELECT s.r, s.f, s.m, COUNT(*) FROM (");
    append(&mut q, rfm_select(ctx)?);
    q.push(") s GROUP BY s.r, s.f, s.m ORDER BY s.r, s.f, s.m");
    Ok(q)
}

/// RFM and lifecycle of the contacts `ids`, as `(id, r, f, m, r_days, f_count, m_value,
/// lifecycle)` rows (any order); the RFM columns are NULL for a contact without a purchase.
/// The expressions are the filters' own, so templates and segments agree to the digit. The
/// event aggregates read only these contacts' events; the composite M still ranks each of
/// them against the whole base (percentile ranks need every buyer).
pub fn personal_sql(ctx: &SegmentContext<'_>, ids: &[i64]) -> Result<Sql, Unsupported> {
    let c = Compiler::new(ctx)?;
    let mut q = Sql::new();
    q.push("SELECT c.id AS id");
    c.rfm_columns(&mut q)?;
    q.push(", ");
    c.lifecycle(&mut q);
    q.push(" AS lifecycle FROM contacts c");
    append(&mut q, c.joins(Some(Only::Ids(ids)), None)?);
    q.push(" WHERE c.id IN (");
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            q.push(", ");
        }
        q.bind(*id);
    }
    q.push(if ids.is_empty() { "NULL)" } else { ")" });
    Ok(q)
}

fn rfm_select(ctx: &SegmentContext<'_>) -> Result<Sql, Unsupported> {
    let c = Compiler::new(ctx)?;
    let mut q = Sql::new();
    q.push("SELECT c.id AS id");
    c.rfm_columns(&mut q)?;
    let r = c.agg(AggCol::Rfm(RfmCol::R));
    q.push(" FROM contacts c");
    append(&mut q, c.joins(None, None)?);
    q.push(&format!(
        " WHERE c.forgotten_at IS NULL AND {r} IS NOT NULL"
    ));
    Ok(q)
}

/// Appends `src` to `dst`, renumbering its `$n` placeholders after `dst`'s values.
pub fn append(dst: &mut Sql, src: Sql) {
    let offset = dst.values.len();
    let bytes = src.text.as_bytes();
    let mut i = 0;
    let mut start = 0;
    while i < bytes.len() {
        if bytes[i] == b'$' && bytes.get(i + 1).is_some_and(u8::is_ascii_digit) {
            dst.text.push_str(&src.text[start..i]);
            let mut j = i + 1;
            let mut n = 0usize;
            while let Some(d) = bytes.get(j).filter(|d| d.is_ascii_digit()) {
                n = n * 10 + usize::from(d - b'0');
                j += 1;
            }
            dst.text.push('$');
            dst.text.push_str(&(n + offset).to_string());
            i = j;
            start = j;
        } else {
            i += 1;
        }
    }
    dst.text.push_str(&src.text[start..]);
    dst.values.extend(src.values);
}

/// One column of the per-contact event aggregate.
#[derive(Debug, Clone, PartialEq)]
enum AggCol {
    /// Latest `at` among events with these names.
    Last(Vec<String>),
    /// Events named so with `at` above the bound (all history without one).
    Count(String, Option<i64>),
    /// Sum of their values.
    Sum(String, Option<i64>),
    /// An RFM measure or score, NULL without a purchase. Computed inside the aggregate so
    /// that a condition on it is a plain column test, which both planners see rejects
    /// contacts without a row (and PostgreSQL pushes into the grouping as HAVING).
    Rfm(RfmCol),
}

/// The RFM values `ag` can hold.
#[derive(Debug, Clone, Copy, PartialEq)]
enum RfmCol {
    R,
    F,
    M,
    FCount,
    MValue,
}

/// One measure of the composite monetary score.
#[derive(Debug, Clone, PartialEq)]
enum Measure {
    /// `sum:E`: spend on E in the RFM window.
    Sum(String),
    /// `count:E`: E's in the RFM window.
    Count(String),
    /// `attrs.PATH`: a numeric attribute (anything else is missing, ranked lowest).
    Attr(Vec<String>),
}

/// The composite measures and their weights normalised to sum 1, or `None` without `monetary_weights`.
fn composite(rfm: &RfmConfig) -> Result<Option<Vec<(Measure, f64)>>, Unsupported> {
    let Some(weights) = &rfm.monetary_weights else {
        return Ok(None);
    };
    let total: f64 = weights.values().sum();
    if weights.is_empty() || weights.values().any(|w| !w.is_finite() || *w < 0.0) || total <= 0.0 {
        return Err(Unsupported(
            "[rfm] monetary_weights: weights must be non-negative and not all zero".into(),
        ));
    }
    let mut out = Vec::with_capacity(weights.len());
    for (key, w) in weights {
        let measure = if let Some(e) = key.strip_prefix("sum:") {
            Measure::Sum(e.to_string())
        } else if let Some(e) = key.strip_prefix("count:") {
            Measure::Count(e.to_string())
        } else if let Some(p) = key.strip_prefix("attrs.") {
            Measure::Attr(p.split('.').map(str::to_string).collect())
        } else {
            return Err(Unsupported(format!(
                "[rfm] monetary_weights key `{key}` (use `sum:EVENT`, `count:EVENT` or `attrs.PATH`)"
            )));
        };
        out.push((measure, w / total));
    }
    Ok(Some(out))
}

/// What the condition needs joined.
#[derive(Debug, Default)]
struct Needs {
    /// Columns of `ag`, the per-contact event aggregate.
    agg: Vec<AggCol>,
    /// Events that `overdue` reads: table `od{i}` for the i-th.
    overdue: Vec<String>,
    /// Whether the composite monetary score (`cm`) is used.
    composite: bool,
}

struct Compiler<'a> {
    ctx: SegmentContext<'a>,
    composite: Option<Vec<(Measure, f64)>>,
    needs: RefCell<Needs>,
}

impl<'a> Compiler<'a> {
    fn new(ctx: &SegmentContext<'a>) -> Result<Self, Unsupported> {
        Ok(Self {
            ctx: *ctx,
            composite: composite(ctx.rfm)?,
            needs: RefCell::new(Needs::default()),
        })
    }

    fn pg(&self) -> bool {
        self.ctx.pg()
    }

    /// `, r, f, m, r_days, f_count, m_value`: the RFM select list.
    fn rfm_columns(&self, q: &mut Sql) -> Result<(), Unsupported> {
        for (f, name) in [
            (Field::RfmR, "r"),
            (Field::RfmF, "f"),
            (Field::RfmM, "m"),
            (Field::RfmRDays, "r_days"),
            (Field::RfmFCount, "f_count"),
            (Field::RfmMValue, "m_value"),
        ] {
            q.push(", ");
            self.num(&f, q)?;
            q.push(&format!(" AS {name}"));
        }
        Ok(())
    }

    /// The `ag` column for `col`, added on first use.
    fn agg(&self, col: AggCol) -> String {
        let mut needs = self.needs.borrow_mut();
        let i = match needs.agg.iter().position(|c| *c == col) {
            Some(i) => i,
            None => {
                needs.agg.push(col);
                needs.agg.len() - 1
            }
        };
        format!("ag.a{i}")
    }

    /// The lower bound of a window ending at `now` (exclusive), computed here, never from user text.
    fn since(&self, window: Option<herald_domain::duration::Span>) -> Option<i64> {
        window.map(|w| self.ctx.now.saturating_sub(w.secs().saturating_mul(1000)))
    }

    fn rfm_last(&self) -> String {
        self.agg(AggCol::Last(vec![self.ctx.rfm.purchase_event.clone()]))
    }

    fn rfm_window(&self) -> Option<i64> {
        self.since(Some(self.ctx.rfm.window))
    }

    fn expr(&self, e: &Expr, q: &mut Sql) -> Result<(), Unsupported> {
        match e {
            Expr::And { lhs, rhs, .. } | Expr::Or { lhs, rhs, .. } => {
                let op = if matches!(e, Expr::And { .. }) {
                    " AND "
                } else {
                    " OR "
                };
                q.push("(");
                self.expr(lhs, q)?;
                q.push(op);
                self.expr(rhs, q)?;
                q.push(")");
            }
            Expr::Not { expr, .. } => {
                // Two-valued at every `not`: a missing value made its operand NULL, which
                // must read as false before it is negated.
                q.push("(NOT COALESCE(");
                self.expr(expr, q)?;
                q.push(", FALSE))");
            }
            Expr::Compare {
                field, op, value, ..
            } => {
                self.leaf(q, |q| self.compare(&field.value, op.value, &value.value, q))?;
            }
            Expr::Between {
                field, low, high, ..
            } => {
                self.leaf(q, |q| {
                    self.compare(&field.value, CmpOp::Ge, &low.value, q)?;
                    q.push(" AND ");
                    self.compare(&field.value, CmpOp::Le, &high.value, q)
                })?;
            }
            Expr::In { field, values, .. } => {
                self.leaf(q, |q| {
                    for (i, v) in values.iter().enumerate() {
                        if i > 0 {
                            q.push(" OR ");
                        }
                        q.push("(");
                        self.compare(&field.value, CmpOp::Eq, &v.value, q)?;
                        q.push(")");
                    }
                    Ok(())
                })?;
            }
            Expr::Contains { field, needle, .. } => {
                self.leaf(q, |q| {
                    q.push(if self.pg() { "strpos(" } else { "instr(" });
                    match &field.value {
                        Field::Email | Field::Phone | Field::Timezone | Field::Locale => {
                            q.push(text_column(&field.value));
                        }
                        Field::Attr(path) => {
                            self.attr_typed("c", path, &Literal::Str(String::new()), q)?;
                        }
                        other => return Err(Unsupported(format!("{other} contains"))),
                    }
                    q.push(", ").bind(needle.value.clone()).push(") > 0");
                    Ok(())
                })?;
            }
            Expr::HasTag { tag, .. } => {
                self.leaf(q, |q| {
                    if self.pg() {
                        q.push("COALESCE(c.tags, '[]'::jsonb) @> jsonb_build_array(")
                            .bind(tag.value.clone())
                            .push("::text)");
                    } else {
                        q.push("EXISTS (SELECT 1 FROM json_each(COALESCE(c.tags, '[]')) WHERE value = ")
                            .bind(tag.value.clone())
                            .push(")");
                    }
                    Ok(())
                })?;
            }
            Expr::ChannelOk { channel, .. } => {
                self.leaf(q, |q| {
                    q.push(&channel_ok_sql(channel.value, self.ctx.backend));
                    Ok(())
                })?;
            }
            Expr::IsTrue { field, .. } => {
                self.leaf(q, |q| {
                    self.compare(&field.value, CmpOp::Eq, &Literal::Bool(true), q)
                })?;
            }
        }
        Ok(())
    }

    /// A leaf in parentheses. It is NULL when its field is missing: `and` and `or` keep a
    /// NULL from ever reading as true, `WHERE` rejects it, and `not` coalesces it first.
    /// Left bare, a condition on a derived table visibly rejects contacts without a row
    /// there, so both planners turn the `LEFT JOIN` into a join and filter before it.
    fn leaf(
        &self,
        q: &mut Sql,
        body: impl FnOnce(&mut Sql) -> Result<(), Unsupported>,
    ) -> Result<(), Unsupported> {
        q.push("(");
        body(q)?;
        q.push(")");
        Ok(())
    }

    /// Emits `<field> OP <value>`; NULL when the field is missing or of another type.
    fn compare(&self, f: &Field, op: CmpOp, v: &Literal, q: &mut Sql) -> Result<(), Unsupported> {
        let sql_op = match op {
            CmpOp::Eq => " = ",
            CmpOp::Ne => " <> ",
            CmpOp::Lt => " < ",
            CmpOp::Le => " <= ",
            CmpOp::Gt => " > ",
            CmpOp::Ge => " >= ",
        };
        let mismatch = || Unsupported(format!("{f} compared with {}", v.type_name()));
        match f {
            Field::Email | Field::Phone | Field::Timezone | Field::Locale => {
                let Literal::Str(s) = v else {
                    return Err(mismatch());
                };
                q.push(text_column(f));
                if self.pg() {
                    q.push(" COLLATE \"C\"");
                }
                q.push(sql_op).bind(s.clone());
            }
            Field::Lifecycle => {
                let Literal::Str(s) = v else {
                    return Err(mismatch());
                };
                self.lifecycle(q);
                q.push(sql_op).bind(s.clone());
            }
            Field::Attr(path) => {
                self.attr_typed("c", path, v, q)?;
                if self.pg() && matches!(v, Literal::Str(_)) {
                    q.push(" COLLATE \"C\"");
                }
                q.push(sql_op);
                match v {
                    Literal::Str(s) => q.bind(s.clone()),
                    Literal::Num(n) => q.bind(*n),
                    Literal::Bool(b) if self.pg() => q.bind(*b),
                    Literal::Bool(b) => q.bind(i64::from(*b)),
                };
            }
            _ => {
                let Literal::Num(n) = v else {
                    return Err(mismatch());
                };
                self.num(f, q)?;
                q.push(sql_op).bind(*n);
            }
        }
        Ok(())
    }

    /// Emits a numeric field's value (NULL when missing).
    fn num(&self, f: &Field, q: &mut Sql) -> Result<(), Unsupported> {
        let now = self.ctx.now;
        // `now` and the window bounds are numbers herald computed, not user text: safe to inline.
        match f {
            Field::FirstSeenDays => {
                q.push(&first_seen_days(now));
            }
            Field::Count { event, window } => {
                let col = self.agg(AggCol::Count(event.clone(), self.since(*window)));
                q.push(&format!("COALESCE({col}, 0)"));
            }
            Field::Sum { event, window } => {
                let col = self.agg(AggCol::Sum(event.clone(), self.since(*window)));
                q.push(&format!("COALESCE({col}, 0)"));
            }
            Field::DaysSince(event) => {
                let col = self.agg(AggCol::Last(vec![event.clone()]));
                q.push(&format!("(({now} - {col}) / {DAY_MS})"));
            }
            Field::Overdue(event) => {
                let i = {
                    let mut needs = self.needs.borrow_mut();
                    match needs.overdue.iter().position(|e| e == event) {
                        Some(i) => i,
                        None => {
                            needs.overdue.push(event.clone());
                            needs.overdue.len() - 1
                        }
                    }
                };
                q.push(&format!("od{i}.v"));
            }
            Field::RfmRDays => {
                let last = self.rfm_last();
                q.push(&format!("(({now} - {last}) / {DAY_MS})"));
            }
            Field::RfmR => {
                q.push(&self.agg(AggCol::Rfm(RfmCol::R)));
            }
            Field::RfmF => {
                q.push(&self.agg(AggCol::Rfm(RfmCol::F)));
            }
            Field::RfmFCount => {
                q.push(&self.agg(AggCol::Rfm(RfmCol::FCount)));
            }
            Field::RfmMValue => {
                q.push(&self.agg(AggCol::Rfm(RfmCol::MValue)));
            }
            Field::RfmM if self.composite.is_some() => {
                self.needs.borrow_mut().composite = true;
                q.push("cm.m");
            }
            Field::RfmM => {
                q.push(&self.agg(AggCol::Rfm(RfmCol::M)));
            }
            other => return Err(Unsupported(other.to_string())),
        }
        Ok(())
    }

    /// The contact's lifecycle stage; "new" takes precedence, never active is "churned".
    fn lifecycle(&self, q: &mut Sql) {
        let now = self.ctx.now;
        let l = self.ctx.lifecycle;
        let last = if l.activity_events.is_empty() {
            "CAST(NULL AS BIGINT)".to_string()
        } else {
            self.agg(AggCol::Last(l.activity_events.clone()))
        };
        q.push(&format!("(CASE WHEN {} < ", first_seen_days(now)))
            .bind(i64::from(l.new))
            .push(&format!(" THEN 'new' WHEN {last} IS NULL THEN 'churned'"));
        for (stage, limit) in [
            ("active", l.active),
            ("silent", l.silent),
            ("dormant", l.dormant),
        ] {
            q.push(&format!(" WHEN ({now} - {last}) / {DAY_MS} < "))
                .bind(i64::from(limit))
                .push(&format!(" THEN '{stage}'"));
        }
        q.push(" ELSE 'churned' END)");
    }

    /// The attribute at `path` of `table.attrs` as the SQL type of `like`, or NULL when it has
    /// another JSON type (so a wrong-typed value compares as missing, never as an error).
    fn attr_typed(
        &self,
        table: &str,
        path: &[String],
        like: &Literal,
        q: &mut Sql,
    ) -> Result<(), Unsupported> {
        if self.pg() {
            let (json_type, cast) = match like {
                Literal::Str(_) => ("string", "text"),
                Literal::Num(_) => ("number", "float8"),
                Literal::Bool(_) => ("boolean", "boolean"),
            };
            let mut args = Sql::new();
            for seg in path {
                args.push(", ").bind(seg.clone()).push("::text");
            }
            // The path is bound twice: once to test the type, once to read the value.
            q.push(&format!(
                "(CASE WHEN jsonb_typeof(jsonb_extract_path({table}.attrs"
            ));
            append(q, args.clone());
            q.push(&format!(
                ")) = '{json_type}' THEN (jsonb_extract_path_text({table}.attrs"
            ));
            append(q, args);
            q.push(&format!("))::{cast} END)"));
        } else {
            if path.iter().any(|s| s.contains(['"', '\\'])) {
                return Err(Unsupported(format!("attrs.{}", path.join("."))));
            }
            let json_path = format!(
                "$.{}",
                path.iter()
                    .map(|s| format!("\"{s}\""))
                    .collect::<Vec<_>>()
                    .join(".")
            );
            let types = match like {
                Literal::Str(_) => "('text')",
                Literal::Num(_) => "('integer', 'real')",
                Literal::Bool(_) => "('true', 'false')",
            };
            q.push(&format!("(CASE WHEN json_type({table}.attrs, "))
                .bind(json_path.clone())
                .push(&format!(") IN {types} THEN json_extract({table}.attrs, "));
            q.bind(json_path).push(") END)");
        }
        Ok(())
    }

    /// An instant before which no event can change the answer, so `ag` may skip older events
    /// (as a hand-written query reads only the last year for "bought in the last 90 days and
    /// twice this year"). It exists when every `ag` column is either windowed after it, or a
    /// latest-event time that a top-level `and` condition requires to be after it: events at
    /// or before the bound then change only contacts that condition rejects anyway.
    fn prune_bound(&self, expr: &Expr) -> Option<i64> {
        let mut guards: Vec<(Vec<String>, i64)> = Vec::new();
        self.guards(expr, &mut guards);
        let needs = self.needs.borrow();
        let mut bound = i64::MAX;
        for col in needs.agg.iter().flat_map(|c| self.parts(c)) {
            let b = match &col {
                AggCol::Last(names) => guards
                    .iter()
                    .filter(|(n, _)| n == names)
                    .map(|(_, b)| *b)
                    .max()?,
                AggCol::Count(_, since) | AggCol::Sum(_, since) => (*since)?,
                AggCol::Rfm(_) => return None,
            };
            bound = bound.min(b);
        }
        (bound < self.ctx.now).then_some(bound)
    }

    /// Collects `(event names, t)` for top-level conditions that are false unless the
    /// latest such event is after `t`.
    fn guards(&self, e: &Expr, out: &mut Vec<(Vec<String>, i64)>) {
        let (field, highest, lowest) = match e {
            Expr::And { lhs, rhs, .. } => {
                self.guards(lhs, out);
                self.guards(rhs, out);
                return;
            }
            Expr::Compare {
                field, op, value, ..
            } if field.value == Field::Lifecycle && op.value == CmpOp::Eq => {
                out.extend(self.stage_guard(std::slice::from_ref(&value.value)));
                return;
            }
            Expr::In { field, values, .. } if field.value == Field::Lifecycle => {
                let stages: Vec<Literal> = values.iter().map(|v| v.value.clone()).collect();
                out.extend(self.stage_guard(&stages));
                return;
            }
            Expr::Compare {
                field, op, value, ..
            } => {
                let Literal::Num(v) = value.value else {
                    return;
                };
                let highest = matches!(op.value, CmpOp::Eq | CmpOp::Lt | CmpOp::Le).then_some(v);
                let lowest = match op.value {
                    CmpOp::Eq | CmpOp::Ge => Some(v),
                    // `> v` on whole numbers: at least the next one above v.
                    CmpOp::Gt => Some(v.floor() + 1.0),
                    _ => None,
                };
                (&field.value, highest, lowest)
            }
            Expr::Between {
                field, low, high, ..
            } => match (&low.value, &high.value) {
                (Literal::Num(l), Literal::Num(h)) => (&field.value, Some(*h), Some(*l)),
                _ => return,
            },
            Expr::In { field, values, .. } => {
                let nums: Option<Vec<f64>> = values
                    .iter()
                    .map(|v| match v.value {
                        Literal::Num(n) => Some(n),
                        _ => None,
                    })
                    .collect();
                let Some(nums) = nums else { return };
                let highest = nums.iter().copied().reduce(f64::max);
                let lowest = nums.iter().copied().reduce(f64::min);
                (&field.value, highest, lowest)
            }
            _ => return,
        };
        let now = self.ctx.now;
        let rfm = self.ctx.rfm;
        // Whole days since the latest event at most `days`: it is after now - (days + 1) days.
        let within = |days: f64| -> Option<i64> {
            let whole = days.max(0.0).floor();
            if whole > 1e9 {
                return None;
            }
            now.checked_sub((whole as i64 + 1).checked_mul(DAY_MS)?)
        };
        let guard = match field {
            Field::DaysSince(event) => highest.and_then(within).map(|t| (vec![event.clone()], t)),
            Field::RfmRDays => highest
                .and_then(within)
                .map(|t| (vec![rfm.purchase_event.clone()], t)),
            Field::RfmR => lowest.and_then(|low| {
                // Score s or more needs at most the largest of the first 6 - s recency edges.
                let s = low.ceil();
                if s < 2.0 {
                    return None;
                }
                let n = (6.0 - s.min(5.0)) as usize;
                let days = rfm.recency_days[..n].iter().copied().max()?;
                within(f64::from(days)).map(|t| (vec![rfm.purchase_event.clone()], t))
            }),
            // At least one event in the window: the latest is inside it.
            Field::Count { event, window } => match (lowest, self.since(*window)) {
                (Some(low), Some(since)) if low > 0.0 => Some((vec![event.clone()], since)),
                _ => None,
            },
            Field::RfmFCount => match lowest {
                Some(low) if low > 0.0 => self
                    .rfm_window()
                    .map(|since| (vec![rfm.purchase_event.clone()], since)),
                _ => None,
            },
            _ => None,
        };
        out.extend(guard);
    }

    /// The guard of `lifecycle` being one of `stages`: active, silent and dormant all need
    /// activity within the dormant threshold (or a nearer one); new and churned need none.
    fn stage_guard(&self, stages: &[Literal]) -> Option<(Vec<String>, i64)> {
        let l = self.ctx.lifecycle;
        let mut days = 0u32;
        for s in stages {
            let limit = match s {
                Literal::Str(s) if s == "active" => l.active,
                Literal::Str(s) if s == "silent" => l.silent,
                Literal::Str(s) if s == "dormant" => l.dormant,
                _ => return None,
            };
            days = days.max(limit);
        }
        if l.activity_events.is_empty() {
            return None;
        }
        // Fewer than `days` whole days since the latest activity.
        let t = self
            .ctx
            .now
            .checked_sub(i64::from(days).checked_mul(DAY_MS)?)?;
        Some((l.activity_events.clone(), t))
    }

    /// The joins the condition compiled so far needs; `ag` reads only events after
    /// `skip_before` when given (see [`Compiler::prune_bound`]).
    fn joins(&self, ids: Option<Only<'_>>, skip_before: Option<i64>) -> Result<Sql, Unsupported> {
        let mut q = Sql::new();
        // The composite score ranks against the whole base, so it is built first (it may add
        // nothing to `ag`, which is per contact and may be restricted to `ids`).
        let needs = std::mem::take(&mut *self.needs.borrow_mut());
        if !needs.agg.is_empty() {
            q.push(" LEFT JOIN (");
            self.aggregate(&needs.agg, ids, skip_before, &mut q);
            q.push(") ag ON ag.contact_id = c.id");
        }
        for (i, event) in needs.overdue.iter().enumerate() {
            q.push(" LEFT JOIN (");
            self.overdue(event, ids, &mut q);
            q.push(&format!(") od{i} ON od{i}.contact_id = c.id"));
        }
        if needs.composite {
            q.push(" LEFT JOIN (");
            self.composite_table(&mut q)?;
            q.push(") cm ON cm.contact_id = c.id");
        }
        Ok(q)
    }

    /// The plain aggregates a column is computed from.
    fn parts(&self, col: &AggCol) -> Vec<AggCol> {
        let AggCol::Rfm(kind) = col else {
            return vec![col.clone()];
        };
        let p = &self.ctx.rfm.purchase_event;
        let window = self.rfm_window();
        let mut out = vec![AggCol::Last(vec![p.clone()])];
        match kind {
            RfmCol::R => {}
            RfmCol::F | RfmCol::FCount => out.push(AggCol::Count(p.clone(), window)),
            RfmCol::M | RfmCol::MValue => out.push(AggCol::Sum(p.clone(), window)),
        }
        out
    }

    /// `SELECT e.contact_id, a0, a1 .. FROM events e ... GROUP BY e.contact_id`: one pass
    /// over the events the columns read.
    fn aggregate(
        &self,
        cols: &[AggCol],
        ids: Option<Only<'_>>,
        skip_before: Option<i64>,
        q: &mut Sql,
    ) {
        let now = self.ctx.now;
        let mut names: Vec<String> = Vec::new();
        for part in cols.iter().flat_map(|c| self.parts(c)) {
            let part_names = match part {
                AggCol::Last(n) => n,
                AggCol::Count(n, _) | AggCol::Sum(n, _) => vec![n],
                AggCol::Rfm(_) => vec![],
            };
            for n in part_names {
                if !names.contains(&n) {
                    names.push(n);
                }
            }
        }
        // With one event name the WHERE clause already selects it and no column needs to test it.
        let single = names.len() == 1;
        q.push("SELECT e.contact_id");
        for (i, col) in cols.iter().enumerate() {
            q.push(", ");
            append(q, self.column(col, single));
            q.push(&format!(" AS a{i}"));
        }
        // On SQLite a unary `+` keeps `at` from choosing the index: a range on the
        // (name, at) index costs a table lookup per event (5 times slower for 90 days of
        // activity), while the covering (name, contact_id, at, value) one reads no table.
        let at = if self.pg() { "e.at" } else { "+e.at" };
        q.push(&format!(" FROM events e WHERE {at} <= {now} AND "));
        if single {
            q.push("e.name = ").bind(names[0].clone());
        } else {
            q.push("e.name IN (");
            for (k, n) in names.iter().enumerate() {
                if k > 0 {
                    q.push(", ");
                }
                q.bind(n.clone());
            }
            q.push(")");
        }
        if let Some(b) = skip_before {
            q.push(&format!(" AND {at} > {b}"));
        }
        range(ids, "e.contact_id", q);
        q.push(" GROUP BY e.contact_id");
    }

    /// One aggregate column over `events e`.
    fn column(&self, col: &AggCol, single: bool) -> Sql {
        let mut q = Sql::new();
        // `CASE WHEN <the event is one of names, after since> THEN x END`, or bare `x`.
        let when = |q: &mut Sql, names: &[String], since: Option<i64>, x: &str| {
            let mut t = Sql::new();
            if !single {
                t.push("e.name IN (");
                for (k, n) in names.iter().enumerate() {
                    if k > 0 {
                        t.push(", ");
                    }
                    t.bind(n.clone());
                }
                t.push(")");
            }
            if let Some(s) = since {
                if !t.text.is_empty() {
                    t.push(" AND ");
                }
                t.push(&format!("e.at > {s}"));
            }
            if t.text.is_empty() {
                q.push(x);
            } else {
                q.push("CASE WHEN ");
                append(q, t);
                q.push(&format!(" THEN {x} END"));
            }
        };
        match col {
            AggCol::Last(names) => {
                q.push("MAX(");
                when(&mut q, names, None, "e.at");
                q.push(")");
            }
            AggCol::Count(name, since) => {
                q.push("COUNT(");
                when(&mut q, std::slice::from_ref(name), *since, "1");
                q.push(")");
            }
            AggCol::Sum(name, since) => {
                q.push("SUM(");
                when(&mut q, std::slice::from_ref(name), *since, "e.value");
                q.push(")");
            }
            AggCol::Rfm(kind) => {
                let rfm = self.ctx.rfm;
                let parts = self.parts(col);
                let last = self.column(&parts[0], single);
                let value = parts.get(1).map(|p| self.column(p, single));
                q.push("CASE WHEN ");
                append(&mut q, last.clone());
                q.push(" IS NULL THEN NULL");
                let edge_cases = |q: &mut Sql, value: &Sql, edges: &[f64; 4], coalesce: bool| {
                    for (score, edge) in (1..=4).zip(edges) {
                        q.push(" WHEN ");
                        if coalesce {
                            q.push("COALESCE(");
                        }
                        append(q, value.clone());
                        if coalesce {
                            q.push(", 0)");
                        }
                        q.push(" <= ").bind(*edge).push(&format!(" THEN {score}"));
                    }
                    q.push(" ELSE 5");
                };
                match (kind, value) {
                    (RfmCol::R, _) => {
                        // Recency edges are inclusive upper bounds in days, best score first.
                        for (score, edge) in (2..=5).rev().zip(rfm.recency_days) {
                            q.push(&format!(" WHEN ({} - ", self.ctx.now));
                            append(&mut q, last.clone());
                            q.push(&format!(") / {DAY_MS} <= "))
                                .bind(i64::from(edge))
                                .push(&format!(" THEN {score}"));
                        }
                        q.push(" ELSE 1");
                    }
                    (RfmCol::F, Some(n)) => edge_cases(&mut q, &n, &rfm.frequency, false),
                    (RfmCol::M, Some(s)) => edge_cases(&mut q, &s, &rfm.monetary, true),
                    (RfmCol::FCount, Some(n)) => {
                        q.push(" ELSE ");
                        append(&mut q, n);
                    }
                    (_, Some(s)) => {
                        q.push(" ELSE COALESCE(");
                        append(&mut q, s);
                        q.push(", 0)");
                    }
                    (_, None) => {
                        q.push(" ELSE NULL");
                    }
                }
                q.push(" END");
            }
        }
        q
    }

    /// Per contact with at least two `event`s: overdue, the days since the last one over the
    /// median gap in days between consecutive ones (the middle gap, or the mean of the two
    /// middle ones); NULL when that median is 0. One window pass finds the gaps; each
    /// contact's gaps (whole milliseconds, so exact) are then sorted into an array (a JSON
    /// one on SQLite, which needs 3.44 for an ordered aggregate) and the middle read by
    /// position. Both databases divide the same doubles in the same order as the evaluator.
    fn overdue(&self, event: &str, ids: Option<Only<'_>>, q: &mut Sql) {
        let now = self.ctx.now;
        let (sorted, middle) = if self.pg() {
            (
                "array_agg(y.gap ORDER BY y.gap) FILTER (WHERE y.gap IS NOT NULL)",
                ["a.g[(a.n::int + 1) / 2]", "a.g[(a.n::int + 2) / 2]"],
            )
        } else {
            (
                "json_group_array(y.gap ORDER BY y.gap) FILTER (WHERE y.gap IS NOT NULL)",
                [
                    "json_extract(a.g, '$[' || ((a.n - 1) / 2) || ']')",
                    "json_extract(a.g, '$[' || (a.n / 2) || ']')",
                ],
            )
        };
        let days = |x: &str| format!("(CAST({x} AS DOUBLE PRECISION) / {DAY_F})");
        q.push(&format!(
            "SELECT a.contact_id, {} / NULLIF(({} + {}) / 2, 0) AS v FROM (SELECT y.contact_id, MAX(y.at) AS last_at, {sorted} AS g, COUNT(y.gap) AS n FROM (",
            days(&format!("{now} - a.last_at")),
            days(middle[0]),
            days(middle[1]),
        ));
        q.push("SELECT e.contact_id, e.at, e.at - LAG(e.at) OVER (PARTITION BY e.contact_id ORDER BY e.at) AS gap FROM events e WHERE e.name = ")
            .bind(event.to_string())
            .push(&format!(" AND e.at <= {now}"));
        range(ids, "e.contact_id", q);
        q.push(") y GROUP BY y.contact_id HAVING COUNT(y.gap) > 0) a");
    }

    /// Per contact with a purchase: the composite monetary score. Each measure becomes its
    /// percentile rank among the contacts (not forgotten) with a purchase,
    /// `100 * (contacts with a lower value) / (contacts - 1)` (`PERCENT_RANK`; 0 for a
    /// single contact; ties share the lower rank; a missing value ranks below every number);
    /// M is the weighted sum of the ranks, scored on `monetary_composite` edges.
    fn composite_table(&self, q: &mut Sql) -> Result<(), Unsupported> {
        let Some(measures) = &self.composite else {
            return Err(Unsupported(
                "rfm.m composite without monetary_weights".into(),
            ));
        };
        let inner = Compiler {
            ctx: self.ctx,
            composite: None,
            needs: RefCell::new(Needs::default()),
        };
        let p = &self.ctx.rfm.purchase_event;
        let window = self.rfm_window();
        let last = inner.agg(AggCol::Last(vec![p.clone()]));
        let mut values = Sql::new();
        for (k, (m, _)) in measures.iter().enumerate() {
            values.push(", ");
            match m {
                Measure::Sum(e) => {
                    let col = inner.agg(AggCol::Sum(e.clone(), window));
                    values.push(&format!("COALESCE({col}, 0)"));
                }
                Measure::Count(e) => {
                    let col = inner.agg(AggCol::Count(e.clone(), window));
                    values.push(&format!("COALESCE({col}, 0)"));
                }
                Measure::Attr(path) => {
                    inner.attr_typed("c", path, &Literal::Num(0.0), &mut values)?;
                }
            }
            values.push(&format!(" AS v{k}"));
        }
        let nulls_first = if self.pg() { " NULLS FIRST" } else { "" };
        let edges = self
            .ctx
            .rfm
            .monetary_composite
            .unwrap_or(DEFAULT_COMPOSITE_EDGES);
        q.push("SELECT x.contact_id, (CASE");
        let mut m = Sql::new();
        for (k, (_, w)) in measures.iter().enumerate() {
            if k > 0 {
                m.push(" + ");
            }
            m.bind(*w).push(&format!(" * (x.p{k} * 100)"));
        }
        for (score, edge) in (1..=4).zip(edges) {
            q.push(" WHEN ");
            append(q, m.clone());
            q.push(" <= ").bind(edge).push(&format!(" THEN {score}"));
        }
        q.push(" ELSE 5 END) AS m FROM (SELECT v.contact_id");
        for k in 0..measures.len() {
            // SQLite sorts NULL first in ascending order already.
            q.push(&format!(
                ", PERCENT_RANK() OVER (ORDER BY v.v{k}{nulls_first}) AS p{k}"
            ));
        }
        q.push(" FROM (SELECT c.id AS contact_id");
        append(q, values);
        q.push(" FROM contacts c JOIN (");
        let cols = std::mem::take(&mut inner.needs.borrow_mut().agg);
        inner.aggregate(&cols, None, None, q);
        q.push(&format!(
            ") ag ON ag.contact_id = c.id WHERE c.forgotten_at IS NULL AND {last} IS NOT NULL) v) x"
        ));
        Ok(())
    }
}

/// The contacts whose events a restricted query aggregates.
#[derive(Debug, Clone, Copy)]
enum Only<'a> {
    /// A window of ids (audience pages).
    Range(IdRange),
    /// A list of ids (personalisation of a page of recipients).
    Ids(&'a [i64]),
}

/// `AND col > after AND col <= up_to` or `AND col IN (..)` for a restricted query.
fn range(ids: Option<Only<'_>>, col: &str, q: &mut Sql) {
    match ids {
        None => {}
        Some(Only::Range(r)) => {
            q.push(&format!(" AND {col} > "))
                .bind(r.after)
                .push(&format!(" AND {col} <= "))
                .bind(r.up_to);
        }
        Some(Only::Ids(ids)) => {
            q.push(&format!(" AND {col} IN ("));
            for (i, id) in ids.iter().enumerate() {
                if i > 0 {
                    q.push(", ");
                }
                q.bind(*id);
            }
            // An empty list matches nothing (and `IN ()` is not SQL).
            q.push(if ids.is_empty() { "NULL)" } else { ")" });
        }
    }
}

fn text_column(f: &Field) -> &'static str {
    match f {
        Field::Email => "c.email",
        Field::Phone => "c.phone",
        Field::Timezone => "c.timezone",
        _ => "c.locale",
    }
}

/// Whole days since the first event (at or before `now`) or creation, whichever is earlier.
fn first_seen_days(now: i64) -> String {
    format!(
        "(({now} - CASE WHEN c.first_seen_at IS NOT NULL AND c.first_seen_at <= {now} AND c.first_seen_at < c.created_at THEN c.first_seen_at ELSE c.created_at END) / {DAY_MS})"
    )
}

/// `channel_ok(ch)`: an address, consent, and no suppression on the channel.
pub fn channel_ok_sql(channel: Channel, b: DbBackend) -> String {
    let t = if b == DbBackend::Postgres {
        "TRUE"
    } else {
        "1"
    };
    let sup = |addr: &str| {
        format!(
            "NOT EXISTS (SELECT 1 FROM suppressions s WHERE s.topic IS NULL AND s.channel IN ('{ch}', 'any') AND (s.contact_id = c.id{addr}))",
            ch = channel.as_str()
        )
    };
    match channel {
        Channel::Email => format!(
            "c.email IS NOT NULL AND COALESCE(c.consent_email, {t}) = {t} AND {}",
            sup(" OR s.address = c.email")
        ),
        Channel::Sms => format!(
            "c.phone IS NOT NULL AND COALESCE(c.consent_sms, NOT {t}) = {t} AND {}",
            sup(" OR s.address = c.phone")
        ),
        Channel::Push => format!(
            "EXISTS (SELECT 1 FROM push_tokens p WHERE p.contact_id = c.id AND p.invalid_at IS NULL) AND COALESCE(c.consent_push, {t}) = {t} AND {}",
            sup("")
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use herald_domain::segment::parse;

    const NOW: i64 = 1_767_225_600_000;

    fn compiled(src: &str, rfm: &RfmConfig) -> Compiled {
        let life = LifecycleConfig::default();
        let ctx = SegmentContext::new(DbBackend::Postgres, NOW, rfm, &life);
        compile(&parse(src).unwrap(), &ctx).unwrap()
    }

    #[test]
    fn append_renumbers_placeholders() {
        let mut a = Sql::new();
        a.push("x = ").bind(1i64);
        let mut b = Sql::new();
        b.push("y = ").bind(2i64).push(" AND z IN ($9x)").bind(3i64);
        append(&mut a, b);
        assert_eq!(a.text, "x = $1y = $2 AND z IN ($10x)$3");
        assert_eq!(a.values.len(), 3);
    }

    #[test]
    fn user_text_is_only_ever_bound() {
        let evil = "'; DROP TABLE contacts; --";
        let c = compiled(
            &format!(
                "email == \"{evil}\" or has_tag(\"{evil}\") or count(\"{evil}\") > 1 or attrs.a == \"{evil}\""
            ),
            &RfmConfig::default(),
        );
        assert!(!c.cond.text.contains("DROP") && !c.joins.text.contains("DROP"));
        let bound = c.cond.values.iter().chain(&c.joins.values);
        assert!(bound.filter(|v| format!("{v:?}").contains("DROP")).count() >= 4);
    }

    #[test]
    fn contact_fields_need_no_join() {
        let c = compiled(
            "email == \"a\" and not has_tag(\"b\") and attrs.x > 1",
            &RfmConfig::default(),
        );
        assert!(c.joins.text.is_empty());
    }

    #[test]
    fn event_measures_share_one_aggregate() {
        let c = compiled(
            "days_since(\"o\") > 3 or count(\"o\", \"30d\") > 1 or rfm.r >= 2 or lifecycle == \"new\"",
            &RfmConfig::default(),
        );
        assert_eq!(c.joins.text.matches("GROUP BY").count(), 1);
        let c = compiled(
            "overdue(\"o\") > 2 and overdue(\"o\") < 9",
            &RfmConfig::default(),
        );
        assert_eq!(c.joins.text.matches(" od0 ").count(), 1);
        assert!(!c.joins.text.contains(" od1 "));
    }

    #[test]
    fn old_events_are_skipped_only_when_they_cannot_matter() {
        let skips = |src: &str| {
            let c = compiled(src, &RfmConfig::default());
            c.joins
                .text
                .split(" AND e.at > ")
                .nth(1)
                .and_then(|rest| rest.split(|ch: char| !ch.is_ascii_digit()).next())
                .and_then(|n| n.parse::<i64>().ok())
                .map(|t| (NOW - t) / DAY_MS)
        };
        // SPEC's lapsed buyers: the count's year bounds the events read.
        assert_eq!(
            skips(
                "attrs.r == \"g\" and days_since(\"order_placed\") between 90 and 150 and count(\"order_placed\", \"365d\") >= 2"
            ),
            Some(365)
        );
        // r >= 4 means a purchase within 90 days; f reads the 365-day window.
        assert_eq!(skips("rfm.r >= 4 and rfm.f >= 4"), Some(365));
        assert_eq!(skips("days_since(\"o\") <= 10"), Some(11));
        // A bare count() over all history, an `or`, a `not` or a lower bound read everything.
        assert_eq!(skips("days_since(\"o\") <= 10 and count(\"o\") > 1"), None);
        assert_eq!(skips("days_since(\"o\") <= 10 or attrs.x == 1"), None);
        assert_eq!(skips("not days_since(\"o\") > 10"), None);
        assert_eq!(skips("days_since(\"o\") >= 10"), None);
        assert_eq!(skips("rfm.r <= 4"), None);
        assert_eq!(
            skips("lifecycle == \"new\" and days_since(\"o\") < 5"),
            None
        );
        assert_eq!(
            skips("lifecycle != \"active\" and days_since(\"o\") < 5"),
            None
        );
        // Active, silent or dormant: activity within the dormant threshold (90 days).
        assert_eq!(
            skips("lifecycle in [\"active\", \"dormant\"] and days_since(\"app_open\") < 5"),
            Some(90)
        );
        // A count of at least one in a window is a guard too.
        assert_eq!(
            skips("count(\"o\", \"30d\") >= 1 and days_since(\"o\") > 2"),
            Some(30)
        );
    }

    #[test]
    fn composite_weights_are_checked_and_normalised() {
        let mut rfm = RfmConfig {
            monetary_weights: Some(BTreeMap::from([
                ("sum:o".to_string(), 3.0),
                ("attrs.referrals".to_string(), 1.0),
            ])),
            ..RfmConfig::default()
        };
        let measures = composite(&rfm).unwrap().unwrap();
        assert_eq!(
            measures,
            vec![
                (Measure::Attr(vec!["referrals".into()]), 0.25),
                (Measure::Sum("o".into()), 0.75)
            ]
        );
        let c = compiled("rfm.m >= 4", &rfm);
        assert!(
            c.joins
                .text
                .contains("PERCENT_RANK() OVER (ORDER BY v.v0 NULLS FIRST)")
        );
        rfm.monetary_weights = Some(BTreeMap::from([("spend".to_string(), 1.0)]));
        assert!(composite(&rfm).is_err());
        rfm.monetary_weights = Some(BTreeMap::from([("sum:o".to_string(), 0.0)]));
        assert!(composite(&rfm).is_err());
    }
}
