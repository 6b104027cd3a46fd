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
}
