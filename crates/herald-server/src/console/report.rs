//! The A/B report page: the numbers of `herald report`, a chart per metric
//! of each arm's rate with its 95% interval, and the report's sentences,
//! with links to the same report as JSON and CSV. It reads the report
//! through the server's [`ReportSource`](crate::ReportSource) (the JSON of
//! `herald report --format json`), so the page and the command line agree;
//! only the per-arm intervals are worked out here, from the counts. The
//! comparisons table shows every metric the report compares (conversion,
//! retention, ARPU, LTV, the ratio metrics) with which interval it is
//! (fixed-horizon or sequential) and, with CUPED, the variance it removed.

use std::fmt::Write as _;

use axum::Extension;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

pub use super::chart::pct;
use super::chart::{self, ArmRate};
use super::figures::{self, Figures, Key, MINUTE_MS, ReportFigures};
use super::html::{esc, page, table};
use super::{Signed, csrf_of, html};
use crate::{AppState, ReportError};
use herald_storage::conversions::ArmConversions;

/// The report's rates: (key in `rates`, name, numerator, denominator).
pub const METRICS: [(&str, &str, &str, &str); 4] = [
    ("delivery", "Delivery rate", "delivered", "sent"),
    ("open", "Open rate", "opened", "delivered"),
    ("click", "Click rate", "clicked", "delivered"),
    ("conversion", "Conversion rate", "converted", "assigned"),
];

/// The two-sided 95% normal quantile.
const Z95: f64 = 1.959_963_984_540_054;

/// The 95% Wilson score interval of `k` successes in `n` trials; `None`
/// when `n` is 0. Wilson's stays inside 0..1 and is sound for small arms
/// and rates near 0, where the normal approximation is not.
pub fn wilson(k: u64, n: u64) -> Option<(f64, f64)> {
    if n == 0 {
        return None;
    }
    let (k, n) = (k.min(n) as f64, n as f64);
    let p = k / n;
    let z2 = Z95 * Z95;
    let denom = 1.0 + z2 / n;
    let centre = (p + z2 / (2.0 * n)) / denom;
    let half = Z95 * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt() / denom;
    Some(((centre - half).max(0.0), (centre + half).min(1.0)))
}

/// `name` made safe for one path segment.
pub fn segment(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The query's run, since and until, without empty fields (a form sends
/// every field, filled or not).
fn report_query(raw: Option<&str>) -> Vec<(String, String)> {
    raw.map(|q| {
        form_urlencoded::parse(q.as_bytes())
            .into_owned()
            .filter(|(k, v)| !v.is_empty() && ["run", "since", "until"].contains(&k.as_str()))
            .collect()
    })
    .unwrap_or_default()
}

fn encode(query: &[(String, String)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(query)
        .finish()
}

fn int(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or(0)
}

fn rate_cell(v: &Value) -> String {
    v.as_f64().map(pct).unwrap_or_default()
}

/// A metric's name on the page.
fn metric_label(metric: &str) -> &str {
    match metric {
        "conversion" => "conversion",
        "retention_d1_7" => "retention d1-7",
        "retention_d8_30" => "retention d8-30",
        "arpu" => "ARPU 30d",
        "ltv" => "LTV",
        "revenue_per_converter" => "revenue per converter",
        "clicks_per_delivered" => "clicks per delivered",
        other => other,
    }
}

/// A signed percentage with one decimal ("+12.3%").
fn signed(x: f64) -> String {
    format!("{:+.1}%", x * 100.0)
}

/// Every comparison of a scope of the report's JSON as one table: metric,
/// variant, control, lift, interval (of the report's kind), p-value (the
/// corrected one too with a correction), chance to beat and, with CUPED, the
/// share of the variance it removed. The numbers are CUPED's where adjusted.
pub fn comparisons_table(report: &Value, scope: &Value) -> String {
    let stats = &report["statistics"];
    let sequential = stats["test"] == "sequential";
    let corrected = stats["correction"].as_str().is_some_and(|c| c != "none");
    let cuped = stats["cuped_days"].is_u64();
    let mut rows = Vec::new();
    let all = ["comparisons", "results_comparisons", "metric_comparisons"]
        .iter()
        .flat_map(|k| scope[*k].as_array().into_iter().flatten());
    for c in all {
        // Conversion's CUPED comparison, where adjusted; else its own result.
        let result = if c["cuped"].is_object() {
            &c["cuped"]
        } else {
            &c["result"]
        };
        let mut row = vec![
            esc(metric_label(c["metric"].as_str().unwrap_or("?"))),
            esc(c["variant"].as_str().unwrap_or("?")),
            esc(c["control"].as_str().unwrap_or("?")),
        ];
        if result["outcome"] == "estimate" {
            let f = |k: &str| result[k].as_f64().unwrap_or(f64::NAN);
            let ci = &result["rel_ci"];
            let p = |v: &Value| {
                v.as_f64()
                    .map(|p| {
                        if p < 1e-4 {
                            format!("{p:.1e}")
                        } else {
                            format!("{p:.4}")
                        }
                    })
                    .unwrap_or_default()
            };
            row.extend([
                signed(f("rel_lift")),
                format!(
                    "{} to {}",
                    signed(ci["lower"].as_f64().unwrap_or(f64::NAN)),
                    signed(ci["upper"].as_f64().unwrap_or(f64::NAN))
                ),
                p(&result["p_value"]),
            ]);
            if corrected {
                row.push(p(&c["p_value_adjusted"]));
            }
            row.push(pct(f("chance_to_beat")));
        } else {
            row.push(esc(result["message"].as_str().unwrap_or("not enough data")));
            row.extend(std::iter::repeat_n(
                String::new(),
                3 + usize::from(corrected),
            ));
        }
        if cuped {
            row.push(
                result["variance_reduction"]
                    .as_f64()
                    .map(|v| format!("{} of the variance", signed(-v)))
                    .unwrap_or_default(),
            );
        }
        rows.push(row);
    }
    if rows.is_empty() {
        return String::new();
    }
    let mut head = vec![
        "metric",
        "variant",
        "vs",
        "lift",
        if sequential {
            "95% CI (sequential)"
        } else {
            "95% CI"
        },
        "p-value",
    ];
    if corrected {
        head.push("corrected p");
    }
    head.push("chance to beat");
    if cuped {
        head.push("CUPED");
    }
    let kind = if sequential {
        "sequential intervals and p-values: valid read every day"
    } else {
        "fixed-horizon intervals and p-values: valid read once, at the end"
    };
    let mut caption = format!("Comparisons: {kind}");
    if let Some(days) = stats["cuped_days"].as_u64() {
        let _ = write!(
            caption,
            "; CUPED-adjusted by each contact's {days} days before the message"
        );
    }
    table(&caption, &head, &rows)
}

/// What went wrong making the report, as an answer.
fn report_error(e: ReportError) -> Response {
    match e {
        ReportError::BadRequest(m) => html(
            StatusCode::BAD_REQUEST,
            page(
                "Report",
                None,
                &format!("<p class=\"error\" role=\"alert\">{}</p>", esc(&m)),
            ),
        ),
        ReportError::Failed(m) => crate::internal_error(m),
    }
}

/// The report of `name` for `query`, or the answer to give instead.
pub(crate) async fn fetch(
    st: &AppState,
    name: &str,
    query: &[(String, String)],
) -> Result<Value, Response> {
    let Some(source) = &st.inner.report else {
        return Err(html(
            StatusCode::NOT_IMPLEMENTED,
            page(
                "Report",
                None,
                "<p class=\"error\">This server makes no reports: use <code>herald report CAMPAIGN</code>.</p>",
            ),
        ));
    };
    match source.report(name, query).await {
        Ok(Some(v)) => Ok(v),
        Ok(None) => Err(crate::not_found()),
        Err(e) => Err(report_error(e)),
    }
}

/// The selector: one run, or runs started in a date range.
fn selector(name: &str, query: &[(String, String)]) -> String {
    let value = |k: &str| {
        query
            .iter()
            .rev()
            .find(|(key, _)| key == k)
            .map_or_else(String::new, |(_, v)| esc(v))
    };
    format!(
        "<form method=\"get\" action=\"/console/campaigns/{}/report\" class=\"filter\">\
         <label for=\"run\">Run</label><input id=\"run\" name=\"run\" inputmode=\"numeric\" size=\"6\" value=\"{}\">\
         <label for=\"since\">Started since</label><input id=\"since\" name=\"since\" type=\"date\" value=\"{}\">\
         <label for=\"until\">until</label><input id=\"until\" name=\"until\" type=\"date\" value=\"{}\">\
         <button type=\"submit\">Show</button> <a href=\"/console/campaigns/{}/report\">all runs</a></form>",
        segment(name),
        value("run"),
        value("since"),
        value("until"),
        segment(name),
    )
}

/// Each arm's rate of `metric` with its interval, for the chart.
pub(crate) fn arm_rates(arms: &[Value], metric: (&str, &str, &str, &str)) -> Vec<ArmRate> {
    let (key, _, num, den) = metric;
    arms.iter()
        .map(|a| {
            let name = a["arm"].as_str().unwrap_or("?").to_string();
            let rate = a["rates"][key].as_f64();
            let ci = wilson(int(a, num), int(a, den));
            (name, rate.zip(ci).map(|(r, (lo, hi))| (r, lo, hi)))
        })
        .collect()
}

/// `GET /console/campaigns/{name}/report`.
pub(crate) async fn report_page(
    State(st): State<AppState>,
    Extension(Signed(session)): Extension<Signed>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Response {
    let query = report_query(raw.as_deref());
    let csrf = csrf_of(&st, &session);
    let title = format!("Report: {name}");
    let now = crate::now_ms();
    let key = Key::Report(name.clone(), query.clone());
    let stored = match figures::read::<ReportFigures>(&st, &key).await {
        Ok(f) => f,
        Err(e) => return crate::internal_error(e),
    };
    let t = std::time::Instant::now();
    let live = match stored {
        Some(f) => Ok(Some(f)),
        None => figures::count_report(&st, &name, &query).await.map(|r| {
            r.map(|value| Figures {
                value,
                counted_at: None,
            })
        }),
    };
    let figs = match live {
        Ok(Some(f)) => f,
        Ok(None) => return crate::not_found(),
        Err(r) if r.status() == StatusCode::BAD_REQUEST => {
            let body = format!(
                "{}<p class=\"error\" role=\"alert\">That selection does not work. Change it and show again.</p>",
                selector(&name, &query)
            );
            return html(StatusCode::BAD_REQUEST, page(&title, Some(&csrf), &body));
        }
        Err(r) => return r,
    };
    if figs.counted_at.is_none() {
        figures::keep(&st, &key, &figs.value, now, t.elapsed()).await;
    }
    let tz = super::settings(&st).map_or(chrono_tz::Tz::UTC, |s| s.timezone);
    let mut body = figures::age_note(tz, figs.counted_at, now);
    let ReportFigures {
        report,
        conversions,
    } = figs.value;
    let links = encode(&query);
    let links = if links.is_empty() {
        String::new()
    } else {
        format!("?{links}")
    };
    let _ = write!(
        body,
        "<p>Made {}{}. As <a href=\"/console/campaigns/{seg}/report.json{q}\">JSON</a> \
         or <a href=\"/console/campaigns/{seg}/report.csv{q}\">CSV</a>.</p>",
        esc(report["generated_at"].as_str().unwrap_or("")),
        report["goal"]["event"]
            .as_str()
            .map_or_else(String::new, |e| format!(
                "; goal <code>{}</code> within {}",
                esc(e),
                esc(report["goal"]["within"].as_str().unwrap_or(""))
            )),
        seg = segment(&name),
        q = esc(&links),
    );
    body.push_str(&selector(&name, &query));
    let total = &report["total"];
    let arms: Vec<Value> = total["arms"].as_array().cloned().unwrap_or_default();
    let rows: Vec<Vec<String>> = arms
        .iter()
        .map(|a| {
            let mut r = vec![esc(a["arm"].as_str().unwrap_or("?"))];
            for k in [
                "assigned",
                "sent",
                "delivered",
                "opened",
                "clicked",
                "converted",
            ] {
                r.push(int(a, k).to_string());
            }
            r.push(format!("{:.2}", a["revenue"].as_f64().unwrap_or(0.0)));
            for (key, ..) in METRICS {
                r.push(rate_cell(&a["rates"][key]));
            }
            r
        })
        .collect();
    body.push_str(&table(
        &format!(
            "Arms: {} messages in {} runs",
            int(total, "messages"),
            report["runs"].as_array().map_or(0, Vec::len)
        ),
        &[
            "arm",
            "assigned",
            "sent",
            "delivered",
            "opened",
            "clicked",
            "converted",
            "revenue",
            "delivery",
            "open",
            "click",
            "conversion",
        ],
        &rows,
    ));
    body.push_str(&comparisons_table(&report, total));
    // What the report says, in its own words.
    let mut said: Vec<&str> = total["summary"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    for key in ["comparisons", "results_comparisons"] {
        said.extend(
            total[key]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c["sentence"].as_str()),
        );
    }
    said.extend(total["srm"]["sentence"].as_str());
    said.extend(
        report["notes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str),
    );
    if !said.is_empty() {
        body.push_str("<section aria-labelledby=\"verdict\"><h2 id=\"verdict\">What it says</h2><ul class=\"said\">");
        for s in said {
            let _ = write!(body, "<li>{}</li>", esc(s));
        }
        body.push_str("</ul></section>");
    }
    for metric @ (key, label, num, den) in METRICS {
        let _ = write!(
            body,
            "<h2 id=\"metric-{key}\">{label}</h2><figure>{}<figcaption>{label} of each arm ({num} / {den}), with its 95% Wilson interval.</figcaption></figure>",
            chart::intervals(
                &format!("{label} of each arm with its 95% interval"),
                &format!("chart-{key}"),
                &arm_rates(&arms, metric)
            )
        );
    }
    body.push_str(&conversions_figure(conversions, &arms));
    html(StatusCode::OK, page(&title, Some(&csrf), &body))
}

/// The report filter of the page's query (run, since, until); `None` when
/// it does not parse (the report has refused it already).
pub(crate) fn storage_filter(
    query: &[(String, String)],
) -> Option<herald_storage::report::ReportFilter> {
    use herald_storage::report::{Bound, ReportFilter, parse_instant};
    let mut f = ReportFilter::default();
    for (k, v) in query {
        match k.as_str() {
            "run" => f.run = Some(v.trim().parse().ok()?),
            "since" => f.since = Some(parse_instant(v, Bound::Since).ok()?),
            "until" => f.until = Some(parse_instant(v, Bound::Until).ok()?),
            _ => {}
        }
    }
    Some(f)
}

/// Each arm's conversions as running totals since the send, from counts in
/// buckets of one time unit, drawn `per` buckets to a step of the x axis;
/// every arm of `arms` drawn (one without a conversion flat at 0). The x
/// axis ends at the step of the latest conversion.
pub(crate) fn conversion_series(
    arms: &[Value],
    buckets: &[herald_storage::conversions::ArmConversions],
    per: i64,
) -> (Vec<chart::Series>, f64) {
    let per = per.max(1);
    let last = herald_storage::conversions::last_bucket(buckets);
    let series = arms
        .iter()
        .map(|a| {
            let name = a["arm"].as_str().unwrap_or("?").to_string();
            let mut points: Vec<(f64, f64)> = Vec::new();
            if let Some(c) = buckets.iter().find(|c| c.arm == name) {
                for (bucket, total) in c.cumulative() {
                    // A conversion in a bucket is counted by the end of its step.
                    let x = (bucket / per + 1) as f64;
                    match points.last_mut() {
                        Some(p) if p.0 == x => p.1 = total as f64,
                        _ => points.push((x, total as f64)),
                    }
                }
            }
            (name, points)
        })
        .collect();
    (series, (last / per + 1) as f64)
}

const HOUR_MS: i64 = 3_600_000;

/// The cumulative conversions chart from each arm's conversions by minute
/// since the send, or a line saying why there is none (`None`: the
/// campaign never ran, or they could not be counted).
fn conversions_figure(by_minute: Option<Vec<ArmConversions>>, arms: &[Value]) -> String {
    let Some(by_minute) = by_minute else {
        return String::new();
    };
    let mut out = "<h2 id=\"cumulative\">Conversions since the send</h2>".to_string();
    if by_minute.is_empty() {
        out.push_str("<p>No conversions yet.</p>");
        return out;
    }
    let last_hour = herald_storage::conversions::last_bucket(&by_minute) * MINUTE_MS / HOUR_MS;
    let by_hour = || -> Vec<_> {
        by_minute
            .iter()
            .map(|a| a.coarsen(HOUR_MS / MINUTE_MS))
            .collect()
    };
    // Minutes within the first three hours, days past three days, else hours.
    let (buckets, per, unit) = if last_hour < 3 {
        (by_minute, 1, "minutes since the send")
    } else if last_hour > 72 {
        (by_hour(), 24, "days since the send")
    } else {
        (by_hour(), 1, "hours since the send")
    };
    let (series, x_max) = conversion_series(arms, &buckets, per);
    let _ = write!(
        out,
        "<figure>{}<figcaption>Each arm's conversions so far, by {unit} (each message timed from its own send; a held-out one from when it would have gone).</figcaption></figure>",
        chart::lines(
            "Cumulative conversions of each arm since the send",
            "chart-cumulative",
            &series,
            x_max,
            unit
        )
    );
    out
}

/// `GET /console/campaigns/{name}/report.json`: the report as the API gives it.
pub(crate) async fn report_json(
    State(st): State<AppState>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Response {
    match fetch(&st, &name, &report_query(raw.as_deref())).await {
        Ok(v) => {
            let mut r = axum::Json(v).into_response();
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        Err(r) => r,
    }
}

/// `GET /console/campaigns/{name}/report.csv`: `herald report --format csv`.
pub(crate) async fn report_csv(
    State(st): State<AppState>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Response {
    let Some(source) = &st.inner.report else {
        return crate::not_found();
    };
    match source
        .report_csv(&name, &report_query(raw.as_deref()))
        .await
    {
        Ok(Some(csv)) => {
            let mut r = csv.into_response();
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/csv; charset=utf-8"),
            );
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            if let Ok(v) = HeaderValue::from_str(&format!(
                "attachment; filename=\"{}-report.csv\"",
                segment(&name)
            )) {
                h.insert(header::CONTENT_DISPOSITION, v);
            }
            r
        }
        Ok(None) => crate::not_found(),
        Err(e) => report_error(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_matches_a_known_interval() {
        // 10 of 100: 5.52% to 17.44% (Newcombe 1998, table I style check).
        let (lo, hi) = wilson(10, 100).unwrap();
        assert!((lo - 0.0552).abs() < 1e-4, "{lo}");
        assert!((hi - 0.1744).abs() < 1e-4, "{hi}");
        // At the edges it stays inside 0..1 and is not empty.
        let (lo, hi) = wilson(0, 20).unwrap();
        assert_eq!(lo, 0.0);
        assert!(hi > 0.1 && hi < 0.2, "{hi}");
        let (lo, hi) = wilson(20, 20).unwrap();
        assert!(lo > 0.8 && hi == 1.0);
        assert_eq!(wilson(0, 0), None);
    }

    /// A report's JSON as `herald report --format json` shapes it, cut to
    /// what the comparisons table reads.
    fn report(statistics: Value) -> Value {
        let estimate = |lift: f64, reduction: Value| {
            serde_json::json!({
                "outcome": "estimate", "rel_lift": lift,
                "rel_ci": { "lower": lift - 0.1, "upper": lift + 0.1 },
                "p_value": 0.0123, "chance_to_beat": 0.97,
                "variance_reduction": reduction,
            })
        };
        serde_json::json!({
            "statistics": statistics,
            "total": {
                "comparisons": [{
                    "metric": "conversion", "variant": "b", "control": "holdout",
                    "result": estimate(0.2, Value::Null),
                    "cuped": estimate(0.15, serde_json::json!(0.31)),
                    "p_value_adjusted": 0.0369,
                }],
                "results_comparisons": [{
                    "metric": "retention_d1_7", "variant": "b", "control": "holdout",
                    "result": { "outcome": "not_enough_data", "message": "not enough conversions to compare: the control has no conversions" },
                    "cuped": null, "p_value_adjusted": null,
                }],
                "metric_comparisons": [
                    { "metric": "arpu", "variant": "b", "control": "holdout",
                      "result": estimate(0.05, serde_json::json!(0.42)), "p_value_adjusted": 0.0369 },
                    { "metric": "revenue_per_converter", "variant": "b", "control": "holdout",
                      "result": estimate(-0.02, Value::Null), "p_value_adjusted": 0.0369 },
                ],
            },
        })
    }

    #[test]
    fn the_comparisons_table_shows_every_metric_its_interval_kind_and_cuped() {
        let r = report(serde_json::json!({
            "test": "sequential", "tuning": 5000.0, "correction": "bh", "cuped_days": 30,
        }));
        let html = comparisons_table(&r, &r["total"]);
        for want in [
            "sequential intervals and p-values: valid read every day",
            "CUPED-adjusted by each contact&#39;s 30 days before the message",
            "95% CI (sequential)",
            "corrected p",
            "<td>0.0369</td>",
            // Conversion's numbers are CUPED's, with the variance it removed.
            "<td>+15.0%</td><td>+5.0% to +25.0%</td>",
            "-31.0% of the variance",
            "ARPU 30d",
            "-42.0% of the variance",
            "revenue per converter",
            "retention d1-7",
            "the control has no conversions",
        ] {
            assert!(html.contains(want), "{want}: {html}");
        }
        assert!(
            !html.contains("+20.0%"),
            "the unadjusted lift is not shown: {html}"
        );
        // Fixed horizon, no correction, no CUPED: neither column.
        let plain = report(serde_json::json!({
            "test": "fixed_horizon", "tuning": null, "correction": "none", "cuped_days": null,
        }));
        let html = comparisons_table(&plain, &plain["total"]);
        assert!(html.contains("fixed-horizon intervals"), "{html}");
        assert!(html.contains(">95% CI<"), "{html}");
        assert!(
            !html.contains("corrected p") && !html.contains("CUPED"),
            "{html}"
        );
        assert_eq!(comparisons_table(&plain, &serde_json::json!({})), "");
    }

    #[test]
    fn a_query_keeps_only_filled_report_fields() {
        assert_eq!(
            report_query(Some("run=&since=2026-01-01&until=&x=1")),
            vec![("since".to_string(), "2026-01-01".to_string())]
        );
        assert_eq!(segment("win back/<x>"), "win%20back%2F%3Cx%3E");
    }

    #[test]
    fn conversion_series_draws_every_arm_step_by_step() {
        use herald_storage::conversions::ArmConversions;
        let arms = vec![
            serde_json::json!({"arm": "a"}),
            serde_json::json!({"arm": "holdout"}),
        ];
        let hours = vec![ArmConversions {
            arm: "a".into(),
            buckets: vec![(0, 2), (5, 1)],
        }];
        let (series, x_max) = conversion_series(&arms, &hours, 1);
        assert_eq!(x_max, 6.0);
        assert_eq!(series[0].1, vec![(1.0, 2.0), (6.0, 3.0)]);
        assert_eq!(series[1], ("holdout".to_string(), vec![]));
        // Hours drawn as days: hours 0 and 5 are day 1, hour 100 day 5.
        let days = vec![ArmConversions {
            arm: "a".into(),
            buckets: vec![(0, 2), (5, 1), (100, 4)],
        }];
        let (series, x_max) = conversion_series(&arms, &days, 24);
        assert_eq!(x_max, 5.0);
        assert_eq!(series[0].1, vec![(1.0, 3.0), (5.0, 7.0)]);
    }
}
