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
    fn no_bars_is_an_empty_chart() {
        let svg = bars("none", &[], "", "");
        assert!(!svg.contains("<rect"));
    }
}
