//! The segments pages: every configured segment with its member count,
//! and one segment's member count, R x F grid (a heat map), lifecycle
//! stages (bars) and a sample of members linking to their contact pages.
//! A box tries a filter: it is checked as `herald check` checks a
//! segment's `where` (grammar, declared and observed attribute types, SQL
//! for both databases), its error shown rustc-style with the caret under
//! the mistake, and counted. Every figure comes from
//! [`herald_storage::segment_preview`], the function `herald segment
//! preview` prints, so the page and the command agree; a configured
//! segment's count, grid and stages as stored by the refresh job
//! ([`super::figures`], their age shown), its sample and a tried filter live.

use std::fmt::Write as _;

use axum::Extension;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use herald_domain::config::{ConfigSet, check_filter_text};
use herald_domain::diagnostic::Diagnostic;
use herald_domain::segment::Expr;
use herald_engine::store::AudienceMember;
use herald_storage::observed::FilterTypes;
use herald_storage::segment_preview;
use herald_storage::segment_sql::compiles_on_both;
use herald_storage::store::SqlStore;

use super::chart;
use super::figures::{self, Figures, Key, SegmentFigures};
use super::html::{esc, page, table};
use super::report::segment;
use super::{Signed, csrf_of, html, settings};
use crate::AppState;

/// Members shown in a segment's sample.
const SAMPLE: u32 = 20;
/// The file name a tried filter's errors point at.
const TRIED: &str = "filter";
/// The longest filter the box takes (a form field, not a file).
const MAX_FILTER: usize = 4096;

/// A store that counts with the config's `[rfm]` and `[lifecycle]`, as the
/// planner does.
pub(super) fn store(st: &AppState, cfg: &ConfigSet) -> SqlStore {
    SqlStore::with_segment_config(
        st.db().clone(),
        cfg.herald.rfm.clone(),
        cfg.herald.lifecycle.clone(),
    )
}

fn no_config(csrf: &str) -> Response {
    html(
        StatusCode::OK,
        page(
            "Segments",
            Some(csrf),
            "<p>This server was started without the config: run <code>herald serve</code> or <code>herald run</code> to see segments.</p>",
        ),
    )
}

/// What `herald check` says of `text` as a segment's `where`, rustc-style
/// (`filter:LINE:COL`, the line and a caret), or the checked filter; the
/// outer error is the database's (reading the stored types), not the
/// filter's.
async fn check(
    st: &AppState,
    cfg: &ConfigSet,
    text: &str,
) -> Result<Result<Expr, String>, Box<dyn std::error::Error + Send + Sync>> {
    let refused =
        |e: herald_domain::segment::FilterError| Err(e.into_diagnostic(TRIED, text, 0).to_string());
    let expr = match check_filter_text(text, &cfg.herald) {
        Ok(expr) => expr,
        Err(e) => return Ok(refused(e)),
    };
    // The checks of `herald check`, for one filter: it compiles for both
    // databases, and its literals can match the types the stored contacts
    // hold for undeclared attributes.
    if let Err(e) = compiles_on_both(&expr, &cfg.herald.rfm, &cfg.herald.lifecycle) {
        return Ok(Err(Diagnostic::new(
            TRIED,
            text,
            0..text.len(),
            e.to_string(),
        )
        .to_string()));
    }
    let types = FilterTypes::of(st.db(), &cfg.herald.contacts.attrs, [&expr]).await?;
    if let Err(e) = types.check(&expr, text) {
        return Ok(refused(e));
    }
    Ok(Ok(expr))
}

/// The stored shape of a preview (of the filter `source`).
pub(super) fn figures_of(source: String, p: &segment_preview::SegmentPreview) -> SegmentFigures {
    SegmentFigures {
        source,
        members: p.members,
        grid: p.rf_grid.iter().map(|(&(r, f), &n)| (r, f, n)).collect(),
        without_rfm: p.without_rfm,
        stages: p
            .lifecycle
            .iter()
            .map(|(s, n)| (s.as_str().to_string(), *n))
            .collect(),
    }
}

/// The box that tries a filter, holding `value`.
fn try_form(value: &str) -> String {
    format!(
        "<form method=\"get\" action=\"/console/segments\" class=\"try\">\
         <label for=\"filter\">Try a filter (the <code>where</code> of a segment)</label>\
         <input id=\"filter\" name=\"filter\" value=\"{}\" maxlength=\"{MAX_FILTER}\" spellcheck=\"false\" \
         autocomplete=\"off\" placeholder=\"lifecycle == &quot;active&quot; and rfm.r &gt;= 4\" required> \
         <button type=\"submit\">Check and count</button></form>",
        esc(value)
    )
}

/// The figures of a segment: count, heat map, stages and sample. `key`
/// keeps the charts' ids apart on one page; `at` is when they were counted.
fn preview_html(
    p: &SegmentFigures,
    sample: &[AudienceMember],
    key: &str,
    tz: chrono_tz::Tz,
    at: i64,
) -> String {
    let mut out = String::new();
    let when = chrono::DateTime::from_timestamp_millis(at)
        .map(|d| {
            d.with_timezone(&tz)
                .format("%Y-%m-%d %H:%M:%S %Z")
                .to_string()
        })
        .unwrap_or_default();
    let _ = write!(
        out,
        "<p class=\"members\">Members: <strong id=\"members-{key}\">{}</strong> \
         <span class=\"muted\">(counted {}; {} never bought in the RFM window)</span></p>",
        p.members,
        esc(&when),
        p.without_rfm
    );
    let grid: std::collections::BTreeMap<(i64, i64), i64> =
        p.grid.iter().map(|&(r, f, n)| ((r, f), n)).collect();
    let _ = write!(
        out,
        "<div class=\"pair\"><figure>{}<figcaption>R x F grid of members: R 5 bought most recently, F 5 most often; \
         {} members without a purchase are not in it.</figcaption></figure>",
        chart::heatmap(
            "R x F grid of members as a heat map",
            &format!("grid-{key}"),
            &grid
        ),
        p.without_rfm
    );
    let stages = &p.stages;
    let _ = write!(
        out,
        "<figure>{}<figcaption>Members by lifecycle stage.</figcaption></figure></div>",
        chart::hbars(
            "Members by lifecycle stage",
            &format!("stages-{key}"),
            stages
        )
    );
    let rows: Vec<Vec<String>> = stages
        .iter()
        .map(|(s, n)| vec![esc(s), n.to_string()])
        .collect();
    out.push_str(&table("Lifecycle stages", &["stage", "members"], &rows));
    let rows: Vec<Vec<String>> = sample
        .iter()
        .map(|m| {
            vec![
                format!(
                    "<a href=\"/console/contacts/{}\">{}</a>",
                    segment(&m.external_id),
                    esc(&m.external_id)
                ),
                esc(m.email.as_deref().unwrap_or("")),
                esc(m.phone.as_deref().unwrap_or("")),
                esc(m.timezone.as_deref().unwrap_or("")),
            ]
        })
        .collect();
    out.push_str(&table(
        &format!("Sample: the first {} members", sample.len()),
        &["contact", "email", "phone", "time zone"],
        &rows,
    ));
    out
}

/// `GET /console/segments[?filter=TEXT]`: every segment with its count; the
/// box, and what it says of the filter tried.
pub(crate) async fn segments_page(
    State(st): State<AppState>,
    Extension(Signed(session)): Extension<Signed>,
    RawQuery(raw): RawQuery,
) -> Response {
    let csrf = csrf_of(&st, &session);
    let Some(console) = settings(&st) else {
        return crate::not_found();
    };
    let Some(cfg) = console.config.clone() else {
        return no_config(&csrf);
    };
    let tried = raw
        .and_then(|q| {
            form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .find(|(k, _)| k == "filter")
                .map(|(_, v)| v)
        })
        .filter(|v| !v.trim().is_empty());
    let now = crate::now_ms();
    let store = store(&st, &cfg);
    let mut body = try_form(tried.as_deref().unwrap_or(""));
    let mut status = StatusCode::OK;
    if let Some(text) = &tried {
        body.push_str("<section aria-labelledby=\"tried\"><h2 id=\"tried\">The filter tried</h2>");
        if text.len() > MAX_FILTER {
            status = StatusCode::BAD_REQUEST;
            let _ = write!(
                body,
                "<p class=\"error\" role=\"alert\">The filter is longer than {MAX_FILTER} bytes: write it as a segment file.</p>"
            );
        } else {
            match check(&st, &cfg, text).await {
                Err(e) => return crate::internal_error(e),
                Ok(Err(diagnostic)) => {
                    status = StatusCode::UNPROCESSABLE_ENTITY;
                    let _ = write!(
                        body,
                        "<p class=\"error\">herald check would refuse it:</p><pre class=\"diagnostic\" role=\"alert\">{}</pre>",
                        esc(&diagnostic)
                    );
                }
                Ok(Ok(expr)) => match segment_preview::preview(&store, &expr, now, SAMPLE).await {
                    Ok(p) => body.push_str(&preview_html(
                        &figures_of(String::new(), &p),
                        &p.sample,
                        "tried",
                        console.timezone,
                        now,
                    )),
                    Err(e) => return crate::internal_error(e),
                },
            }
        }
        body.push_str("</section>");
    }
    let mut rows = Vec::new();
    // The page's age is its oldest figure's; any counted live makes it "just now".
    let (mut oldest, mut live): (Option<i64>, bool) = (None, false);
    for s in cfg.segments.values() {
        // The stored count when it is of this filter; else counted live.
        let stored = match figures::read::<SegmentFigures>(&st, &Key::Segment(s.name.clone())).await
        {
            Ok(f) => f.filter(|f| f.value.source == s.source),
            Err(e) => return crate::internal_error(e),
        };
        let (n, at) = match stored {
            Some(f) => (f.value.members, f.counted_at),
            None => match segment_preview::count(&store, &s.filter, now).await {
                Ok(n) => (n, None),
                Err(e) => return crate::internal_error(e),
            },
        };
        match at {
            Some(at) => oldest = Some(oldest.map_or(at, |o: i64| o.min(at))),
            None => live = true,
        }
        let n = n.to_string();
        rows.push(vec![
            format!(
                "<a href=\"/console/segments/{}\">{}</a>",
                segment(&s.name),
                esc(&s.name)
            ),
            esc(&s.description),
            format!("<code>{}</code>", esc(&s.source)),
            n,
        ]);
    }
    if rows.is_empty() {
        body.push_str("<p>No segments are configured (<code>config/segments/*.toml</code>).</p>");
    } else {
        body.push_str(&figures::age_note(
            console.timezone,
            oldest.filter(|_| !live),
            now,
        ));
        body.push_str(&table(
            "Segments",
            &["segment", "what for", "where", "members"],
            &rows,
        ));
    }
    html(status, page("Segments", Some(&csrf), &body))
}

/// `GET /console/segments/{name}`: one segment as `herald segment preview` shows it.
pub(crate) async fn segment_page(
    State(st): State<AppState>,
    Extension(Signed(session)): Extension<Signed>,
    Path(name): Path<String>,
) -> Response {
    let csrf = csrf_of(&st, &session);
    let Some(console) = settings(&st) else {
        return crate::not_found();
    };
    let Some(cfg) = console.config.clone() else {
        return no_config(&csrf);
    };
    let Some(seg) = cfg.segments.get(&name) else {
        return crate::not_found();
    };
    let now = crate::now_ms();
    let key = Key::Segment(name.clone());
    let stored = match figures::read::<SegmentFigures>(&st, &key).await {
        Ok(f) => f.filter(|f| f.value.source == seg.source),
        Err(e) => return crate::internal_error(e),
    };
    let p = match stored {
        Some(f) => f,
        None => {
            let t = std::time::Instant::now();
            match figures::count_segment(&st, &name, now).await {
                Ok(Some(value)) => {
                    figures::keep(&st, &key, &value, now, t.elapsed()).await;
                    Figures {
                        value,
                        counted_at: None,
                    }
                }
                Ok(None) => return crate::not_found(),
                Err(e) => return crate::internal_error(e),
            }
        }
    };
    // The sample live: one page of the audience query, `SAMPLE` long.
    let sample = match segment_preview::sample(&store(&st, &cfg), &seg.filter, now, SAMPLE).await {
        Ok(s) => s,
        Err(e) => return crate::internal_error(e),
    };
    let mut body = figures::age_note(console.timezone, p.counted_at, now);
    if !seg.description.is_empty() {
        let _ = write!(body, "<p>{}</p>", esc(&seg.description));
    }
    let _ = write!(
        body,
        "<p>Where <code>{}</code> <span class=\"muted\">({})</span></p>",
        esc(&seg.source),
        esc(&seg.file)
    );
    body.push_str(&preview_html(
        &p.value,
        &sample,
        "segment",
        console.timezone,
        p.counted_at.unwrap_or(now),
    ));
    body.push_str(&try_form(&seg.source));
    html(
        StatusCode::OK,
        page(&format!("Segment: {name}"), Some(&csrf), &body),
    )
}
