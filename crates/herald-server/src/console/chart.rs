//! A bar chart as SVG, made on the server: sends per time bucket. No
//! script, no fonts fetched; the text in it is escaped like the page's.

use std::fmt::Write as _;

use super::html::esc;

const W: f64 = 640.0;
const H: f64 = 180.0;
const LEFT: f64 = 48.0;
const BOTTOM: f64 = 24.0;
const TOP: f64 = 8.0;

/// A bar chart of `bars` (label, value), titled `title` for screen readers;
/// `first` and `last` label the ends of the time axis.
pub fn bars(title: &str, bars: &[(String, i64)], first: &str, last: &str) -> String {
    let max = bars.iter().map(|b| b.1).max().unwrap_or(0).max(1);
    let n = bars.len().max(1) as f64;
    let plot_w = W - LEFT - 4.0;
    let plot_h = H - BOTTOM - TOP;
    let slot = plot_w / n;
    let mut out = String::new();
    let _ = write!(
        out,
        "<svg role=\"img\" aria-labelledby=\"chart-title\" viewBox=\"0 0 {W} {H}\" width=\"{W}\" height=\"{H}\" xmlns=\"http://www.w3.org/2000/svg\">\
         <title id=\"chart-title\">{}</title>\
         <line class=\"axis\" x1=\"{LEFT}\" y1=\"{y0}\" x2=\"{x1}\" y2=\"{y0}\"/>\
         <line class=\"axis\" x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{LEFT}\" y2=\"{y0}\"/>\
         <text x=\"{lx}\" y=\"{ty}\" text-anchor=\"end\">{max}</text>\
         <text x=\"{lx}\" y=\"{y0}\" text-anchor=\"end\">0</text>",
        esc(title),
        y0 = TOP + plot_h,
        x1 = W - 4.0,
        lx = LEFT - 4.0,
        ty = TOP + 10.0,
    );
    for (i, (label, v)) in bars.iter().enumerate() {
        let h = plot_h * (*v as f64) / (max as f64);
        let _ = write!(
            out,
            "<rect class=\"bar\" x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\"><title>{}: {v}</title></rect>",
            LEFT + i as f64 * slot + slot * 0.1,
            TOP + plot_h - h,
            (slot * 0.8).max(0.5),
            h,
            esc(label)
        );
    }
    let _ = write!(
        out,
        "<text x=\"{LEFT}\" y=\"{H}\" dy=\"-6\">{}</text><text x=\"{}\" y=\"{H}\" dy=\"-6\" text-anchor=\"end\">{}</text></svg>",
        esc(first),
        W - 4.0,
        esc(last)
    );
    out
}

/// One arm's rate on an interval chart: its name, and the rate with the
/// low and high ends of its 95% interval (`None`: nothing to measure yet).
pub type ArmRate = (String, Option<(f64, f64, f64)>);

/// The smallest round scale (0 to this) that holds `max`.
fn scale_for(max: f64) -> f64 {
    [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0]
        .into_iter()
        .find(|s| max <= *s)
        .unwrap_or(1.0)
}

/// A percentage with two decimals.
pub fn pct(x: f64) -> String {
    format!("{:.2}%", x * 100.0)
}

/// A chart of each arm's rate as a bar with its 95% interval as a whisker,
/// all on one scale from 0; `id` names the chart's title for screen readers
/// (unique on the page).
pub fn intervals(title: &str, id: &str, arms: &[ArmRate]) -> String {
    const ROW: f64 = 30.0;
    const NAME_W: f64 = 120.0;
    const PLOT_W: f64 = 420.0;
    const WIDTH: f64 = 720.0;
    let max = arms
        .iter()
        .filter_map(|a| a.1.map(|r| r.2))
        .fold(0.0_f64, f64::max);
    let scale = scale_for(max);
    let x = |v: f64| NAME_W + PLOT_W * (v / scale).clamp(0.0, 1.0);
    let height = TOP + ROW * arms.len().max(1) as f64 + BOTTOM;
    let y0 = TOP + ROW * arms.len() as f64;
    let id = esc(id);
    let mut out = String::new();
    let _ = write!(
        out,
        "<svg role=\"img\" aria-labelledby=\"{id}\" viewBox=\"0 0 {WIDTH} {height}\" width=\"{WIDTH}\" height=\"{height}\" xmlns=\"http://www.w3.org/2000/svg\">\
         <title id=\"{id}\">{}</title>\
         <line class=\"axis\" x1=\"{NAME_W}\" y1=\"{TOP}\" x2=\"{NAME_W}\" y2=\"{y0}\"/>\
         <line class=\"axis\" x1=\"{NAME_W}\" y1=\"{y0}\" x2=\"{x1}\" y2=\"{y0}\"/>\
         <text x=\"{NAME_W}\" y=\"{height}\" dy=\"-6\" text-anchor=\"middle\">0%</text>\
         <text x=\"{x1}\" y=\"{height}\" dy=\"-6\" text-anchor=\"middle\">{}</text>",
        esc(title),
        pct(scale).replace(".00", ""),
        x1 = NAME_W + PLOT_W,
    );
    for (i, (arm, rate)) in arms.iter().enumerate() {
        let top = TOP + ROW * i as f64;
        let mid = top + ROW / 2.0;
        let _ = write!(
            out,
            "<text x=\"{:.1}\" y=\"{mid:.1}\" dy=\"4\" text-anchor=\"end\">{}</text>",
            NAME_W - 6.0,
            esc(arm)
        );
        let Some((r, lo, hi)) = *rate else {
            let _ = write!(
                out,
                "<text x=\"{:.1}\" y=\"{mid:.1}\" dy=\"4\">no data</text>",
                NAME_W + PLOT_W + 12.0
            );
            continue;
        };
        let words = format!(
            "{}: {} (95% interval {} to {})",
            arm,
            pct(r),
            pct(lo),
            pct(hi)
        );
        let _ = write!(
            out,
            "<g><title>{}</title>\
             <rect class=\"rate\" x=\"{NAME_W}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\"/>\
             <line class=\"ci\" x1=\"{:.1}\" y1=\"{mid:.1}\" x2=\"{:.1}\" y2=\"{mid:.1}\"/>\
             <line class=\"ci\" x1=\"{lx:.1}\" y1=\"{:.1}\" x2=\"{lx:.1}\" y2=\"{:.1}\"/>\
             <line class=\"ci\" x1=\"{hx:.1}\" y1=\"{:.1}\" x2=\"{hx:.1}\" y2=\"{:.1}\"/>\
             <text x=\"{:.1}\" y=\"{mid:.1}\" dy=\"4\">{} ({} to {})</text></g>",
            esc(&words),
            top + 7.0,
            x(r) - NAME_W,
            ROW - 14.0,
            x(lo),
            x(hi),
            mid - 6.0,
            mid + 6.0,
            mid - 6.0,
            mid + 6.0,
            NAME_W + PLOT_W + 12.0,
            pct(r),
            pct(lo),
            pct(hi),
            lx = x(lo),
            hx = x(hi),
        );
    }
    out.push_str("</svg>");
    out
}

/// The R x F grid as a heat map: R 5 (bought most recently) at the top,
/// F 1 to 5 left to right, each cell shaded by its share of the fullest
/// cell and labelled with its count; `id` names the title (unique on the
/// page). Shading is a presentation attribute, not a style, so the
/// console's CSP (no inline styles) lets it through.
pub fn heatmap(
    title: &str,
    id: &str,
    grid: &std::collections::BTreeMap<(i64, i64), i64>,
) -> String {
    const CELL: f64 = 56.0;
    const LEFT_M: f64 = 64.0;
    const TOP_M: f64 = 8.0;
    let width = LEFT_M + 5.0 * CELL + 8.0;
    let height = TOP_M + 5.0 * CELL + 40.0;
    let max = grid.values().copied().max().unwrap_or(0).max(1);
    let id = esc(id);
    let mut out = String::new();
    let _ = write!(
        out,
        "<svg role=\"img\" aria-labelledby=\"{id}\" viewBox=\"0 0 {width} {height}\" width=\"{width}\" height=\"{height}\" xmlns=\"http://www.w3.org/2000/svg\">\
         <title id=\"{id}\">{}</title>",
        esc(title)
    );
    for (row, r) in (1..=5i64).rev().enumerate() {
        let y = TOP_M + row as f64 * CELL;
        let _ = write!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">R {r}</text>",
            LEFT_M - 6.0,
            y + CELL / 2.0 + 4.0
        );
        for f in 1..=5i64 {
            let n = grid.get(&(r, f)).copied().unwrap_or(0);
            let share = n as f64 / max as f64;
            let x = LEFT_M + (f - 1) as f64 * CELL;
            let opacity = 0.08 + 0.92 * share;
            // Dark cells carry light text: past this shade light text has
            // the better contrast (about 4.5:1 on the light theme's accent).
            let class = if opacity > 0.72 { "hot" } else { "cool" };
            let _ = write!(
                out,
                "<g><title>R {r}, F {f}: {n} members</title>\
                 <rect class=\"cell\" x=\"{x:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{w:.1}\" fill-opacity=\"{:.3}\"/>\
                 <rect class=\"grid\" x=\"{x:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{w:.1}\"/>\
                 <text class=\"{class}\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{n}</text></g>",
                opacity,
                x + CELL / 2.0,
                y + CELL / 2.0 + 4.0,
                w = CELL - 2.0,
            );
        }
    }
    let base = TOP_M + 5.0 * CELL;
    for f in 1..=5i64 {
        let _ = write!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">F {f}</text>",
            LEFT_M + (f - 1) as f64 * CELL + CELL / 2.0,
            base + 16.0
        );
    }
    let _ = write!(
        out,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">F: how often they bought (5 most)</text></svg>",
        LEFT_M + 2.5 * CELL,
        base + 34.0
    );
    out
}

/// A horizontal bar per (label, count), on one scale from 0 to the largest;
/// `id` names the title (unique on the page).
pub fn hbars(title: &str, id: &str, rows: &[(String, i64)]) -> String {
    const ROW: f64 = 28.0;
    const NAME_W: f64 = 90.0;
    const PLOT_W: f64 = 300.0;
    const WIDTH: f64 = 460.0;
    let max = rows.iter().map(|r| r.1).max().unwrap_or(0).max(1);
    let height = TOP + ROW * rows.len().max(1) as f64 + 4.0;
    let id = esc(id);
    let mut out = String::new();
    let _ = write!(
        out,
        "<svg role=\"img\" aria-labelledby=\"{id}\" viewBox=\"0 0 {WIDTH} {height}\" width=\"{WIDTH}\" height=\"{height}\" xmlns=\"http://www.w3.org/2000/svg\">\
         <title id=\"{id}\">{}</title>\
         <line class=\"axis\" x1=\"{NAME_W}\" y1=\"{TOP}\" x2=\"{NAME_W}\" y2=\"{:.1}\"/>",
        esc(title),
        height - 4.0
    );
    for (i, (label, n)) in rows.iter().enumerate() {
        let top = TOP + ROW * i as f64;
        let w = PLOT_W * (*n as f64) / (max as f64);
        let _ = write!(
            out,
            "<g><title>{}: {n}</title>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\
             <rect class=\"bar\" x=\"{NAME_W}\" y=\"{:.1}\" width=\"{w:.1}\" height=\"{:.1}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\">{n}</text></g>",
            esc(label),
            NAME_W - 6.0,
            top + ROW / 2.0 + 4.0,
            esc(label),
            top + 5.0,
            ROW - 10.0,
            NAME_W + w + 6.0,
            top + ROW / 2.0 + 4.0,
        );
    }
    out.push_str("</svg>");
    out
}

/// One line of a [`lines`] chart: its name and its points (x, y), x rising.
pub type Series = (String, Vec<(f64, f64)>);

/// A step chart of running totals, one line per series from (0, 0) to
/// `x_max`, told apart by dash pattern as well as colour (and named at
/// the line's end), so it reads without colour; `x_unit` names the x axis.
pub fn lines(title: &str, id: &str, series: &[Series], x_max: f64, x_unit: &str) -> String {
    const WIDTH: f64 = 720.0;
    const HEIGHT: f64 = 240.0;
    const LEFT_M: f64 = 48.0;
    const RIGHT_M: f64 = 120.0;
    const BOTTOM_M: f64 = 36.0;
    let x_max = x_max.max(1.0);
    let y_max = series
        .iter()
        .flat_map(|s| s.1.iter().map(|p| p.1))
        .fold(0.0_f64, f64::max)
        .max(1.0);
    let plot_w = WIDTH - LEFT_M - RIGHT_M;
    let plot_h = HEIGHT - TOP - BOTTOM_M;
    let px = |x: f64| LEFT_M + plot_w * (x / x_max).clamp(0.0, 1.0);
    let py = |y: f64| TOP + plot_h * (1.0 - y / y_max);
    let y0 = TOP + plot_h;
    let id = esc(id);
    let mut out = String::new();
    let _ = write!(
        out,
        "<svg role=\"img\" aria-labelledby=\"{id}\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" width=\"{WIDTH}\" height=\"{HEIGHT}\" xmlns=\"http://www.w3.org/2000/svg\">\
         <title id=\"{id}\">{}</title>\
         <line class=\"axis\" x1=\"{LEFT_M}\" y1=\"{TOP}\" x2=\"{LEFT_M}\" y2=\"{y0}\"/>\
         <line class=\"axis\" x1=\"{LEFT_M}\" y1=\"{y0}\" x2=\"{:.1}\" y2=\"{y0}\"/>\
         <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{y_max}</text>\
         <text x=\"{:.1}\" y=\"{y0}\" text-anchor=\"end\">0</text>\
         <text x=\"{LEFT_M}\" y=\"{:.1}\" text-anchor=\"middle\">0</text>\
         <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{x_max} {}</text>",
        esc(title),
        LEFT_M + plot_w,
        LEFT_M - 4.0,
        TOP + 10.0,
        LEFT_M - 4.0,
        y0 + 14.0,
        LEFT_M + plot_w,
        y0 + 14.0,
        esc(x_unit),
    );
    for (i, (name, points)) in series.iter().enumerate() {
        let mut d = format!("M{:.1},{y0:.1}", px(0.0));
        let mut last_y = 0.0;
        for &(x, y) in points {
            let _ = write!(d, " H{:.1} V{:.1}", px(x), py(y));
            last_y = y;
        }
        let _ = write!(d, " H{:.1}", px(x_max));
        let _ = write!(
            out,
            "<g><title>{}: {last_y} by {x_max} {}</title>\
             <path class=\"line line-{}\" d=\"{d}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" dy=\"4\">{}: {last_y}</text></g>",
            esc(name),
            esc(x_unit),
            i % 4,
            px(x_max) + 6.0,
            py(last_y),
            esc(name),
        );
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tallest_bar_fills_the_plot_and_labels_are_escaped() {
        let svg = bars(
            "sends <per minute>",
            &[("a".into(), 5), ("<b>".into(), 10)],
            "10:00",
            "11:00",
        );
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(svg.contains("height=\"148.0\""), "{svg}");
        assert!(svg.contains("&lt;b&gt;: 10"));
        assert!(!svg.contains("<b>"));
    }

    #[test]
    fn an_interval_chart_draws_each_arm_on_one_scale() {
        let svg = intervals(
            "conversion <rate>",
            "c1",
            &[("a".into(), Some((0.1, 0.05, 0.18))), ("<b>".into(), None)],
        );
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        // 0 to 20%: the bar of 10% is half the 420-pixel plot.
        assert!(svg.contains(">20%</text>"), "{svg}");
        assert!(svg.contains("width=\"210.0\""), "{svg}");
        assert!(svg.contains("10.00% (5.00% to 18.00%)"), "{svg}");
        assert!(svg.contains("&lt;b&gt;") && !svg.contains("<b>"));
        assert!(svg.contains("no data"));
        assert!(svg.contains("aria-labelledby=\"c1\""));
    }

    #[test]
    fn no_bars_is_an_empty_chart() {
        let svg = bars("none", &[], "", "");
        assert!(!svg.contains("<rect"));
    }

    #[test]
    fn the_heat_map_shades_by_share_and_puts_r5_on_top() {
        let mut grid = std::collections::BTreeMap::new();
        grid.insert((5, 1), 10);
        grid.insert((1, 5), 5);
        let svg = heatmap("R x F <grid>", "hm", &grid);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(svg.contains("R x F &lt;grid&gt;") && !svg.contains("<grid>"));
        // 25 cells, each with its count in words.
        assert_eq!(svg.matches("<rect class=\"cell\"").count(), 25);
        assert!(svg.contains("<title>R 5, F 1: 10 members</title>"));
        assert!(svg.contains("<title>R 3, F 3: 0 members</title>"));
        // The fullest cell is fully shaded, half of it half-way, an empty one faintly.
        assert!(svg.contains("fill-opacity=\"1.000\""), "{svg}");
        assert!(svg.contains("fill-opacity=\"0.540\""), "{svg}");
        assert!(svg.contains("fill-opacity=\"0.080\""), "{svg}");
        // R 5 is the first row drawn (at the top).
        assert!(svg.find(">R 5<").unwrap() < svg.find(">R 1<").unwrap());
    }

    #[test]
    fn horizontal_bars_share_one_scale() {
        let svg = hbars(
            "stages",
            "st",
            &[
                ("<new>".into(), 4),
                ("active".into(), 8),
                ("lapsed".into(), 0),
            ],
        );
        assert!(svg.contains("width=\"150.0\""), "{svg}");
        assert!(svg.contains("width=\"300.0\""), "{svg}");
        assert!(svg.contains("width=\"0.0\""), "{svg}");
        assert!(svg.contains("&lt;new&gt;: 4") && !svg.contains("<new>"));
    }

    #[test]
    fn lines_step_up_to_each_arms_total() {
        let svg = lines(
            "conversions <so far>",
            "cum",
            &[
                ("a".into(), vec![(1.0, 2.0), (3.0, 4.0)]),
                ("<b>".into(), vec![(2.0, 1.0)]),
            ],
            4.0,
            "hours",
        );
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(svg.contains("&lt;so far&gt;") && svg.contains("&lt;b&gt;: 1"));
        assert!(!svg.contains("<b>"));
        // Arm a: flat at 0 to x 1, up to 2, along to x 3, up to 4 (the top), along to the end.
        assert!(
            svg.contains("d=\"M48.0,204.0 H186.0 V106.0 H462.0 V8.0 H600.0\""),
            "{svg}"
        );
        assert!(svg.contains("class=\"line line-1\""));
        assert!(svg.contains(">4 hours</text>"));
    }
}
