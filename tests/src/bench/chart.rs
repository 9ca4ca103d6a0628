//! `report.svg`: two panels side by side — median req/s per arm (left) and median p99 latency per arm (right) for
//! the HTTP workloads, as grouped bars with a thin min–max whisker.
//!
//! Drawn with plotters' SVG backend and no font feature: without `ttf`/`ab_glyph`, plotters sizes text with a
//! built-in estimate and the SVG backend writes it as `<text>` elements the viewer renders, so no system font or
//! font crate is needed.
use std::path::Path;

use anyhow::{Context as _, Result};
use plotters::{coord::Shift, prelude::*};

use super::{
    model::Results,
    report::{self, Aggregate, Kind, Report, Spread},
};

const SIZE: (u32, u32) = (1200, 500);

/// One colour per arm in report order (direct grey, iptables orange, ebpf blue, ebpf+splice green), then others.
const PALETTE: [RGBColor; 6] =
    [RGBColor(130, 130, 130), RGBColor(230, 120, 30), RGBColor(40, 100, 200), RGBColor(40, 160, 80), RGBColor(160, 60, 160), RGBColor(200, 50, 50)];

pub fn write_svg(path: &Path, results: &Results) -> Result<()> {
    std::fs::write(path, render_svg(results)?).with_context(|| format!("writing {}", path.display()))
}

/// The chart as an SVG document.
pub fn render_svg(results: &Results) -> Result<String> {
    let report = report::aggregate(results);
    let workloads: Vec<&str> =
        report.workloads.iter().map(String::as_str).filter(|w| report::kind(w) == Kind::Http && has_data(&report, w)).collect();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE)?;
        let mode = if report.info.quick { " — quick run (smoke test)" } else { "" };
        let title = format!("keel benchmark: HTTP workloads, median per arm (whiskers: min–max over repetitions){mode}");
        let root = root.titled(&title, ("sans-serif", 22))?;
        let (left, right) = root.split_horizontally(SIZE.0 / 2);
        panel(&left, &report, &workloads, "Requests/s (higher is better)", "requests/s", |a| a.requests_per_s)?;
        panel(&right, &report, &workloads, "p99 latency (lower is better)", "p99 latency, ms", |a| a.p99_ms)?;
        root.present()?;
    }
    Ok(svg)
}

/// The chart shows the single-node arms (`report.arms`); the cross-node ones are in report.md's own section.
fn has_data(report: &Report, workload: &str) -> bool {
    report.rows.iter().any(|r| r.workload == workload && r.requests_per_s.is_some() && report.arms.contains(&r.arm))
}

/// Workload `i` spans x ∈ [i·SPAN, (i+1)·SPAN); its arms' bars share the middle 80% of that span. Integer x
/// because plotters only lets custom key points (one tick per workload) be labelled on integer axes.
const SPAN: i32 = 1000;

fn panel(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    report: &Report,
    workloads: &[&str],
    caption: &str,
    y_desc: &str,
    value: fn(&Aggregate) -> Option<Spread>,
) -> Result<()> {
    let arms: Vec<&str> =
        report.arms.iter().map(String::as_str).filter(|a| workloads.iter().any(|w| report.get(w, a).and_then(value).is_some())).collect();
    let y_max = workloads.iter().flat_map(|w| arms.iter().filter_map(move |a| report.get(w, a).and_then(value))).map(|s| s.max).fold(0.0, f64::max);
    // Headroom for the legend above the tallest whisker.
    let y_top = if y_max > 0.0 { y_max * 1.3 } else { 1.0 };
    let n = workloads.len().max(1) as i32;
    let x = (0..n * SPAN).with_key_points((0..n).map(|i| i * SPAN + SPAN / 2).collect());
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(75)
        .build_cartesian_2d(x, 0.0..y_top)?;
    let label = |x: &i32| workloads.get((x / SPAN) as usize).map_or(String::new(), |w| w.to_string());
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_desc("workload")
        .y_desc(y_desc)
        .x_label_formatter(&label)
        .y_label_formatter(&|y: &f64| report::num(*y))
        .label_style(("sans-serif", 12))
        .draw()?;
    if workloads.is_empty() {
        chart.draw_series(std::iter::once(Text::new("no HTTP samples", (SPAN / 3, y_top / 2.0), ("sans-serif", 16))))?;
        return Ok(());
    }
    let width = SPAN * 8 / 10 / arms.len().max(1) as i32;
    for (j, arm) in arms.iter().enumerate() {
        let known = report.arms.iter().position(|a| a == arm).unwrap_or(j);
        let color = PALETTE[known % PALETTE.len()];
        let mut bars = Vec::new();
        let mut whiskers = Vec::new();
        for (i, w) in workloads.iter().enumerate() {
            let Some(s) = report.get(w, arm).and_then(value) else {
                continue;
            };
            let x0 = i as i32 * SPAN + SPAN / 10 + j as i32 * width;
            bars.push(Rectangle::new([(x0, 0.0), (x0 + width * 9 / 10, s.median)], color.filled()));
            let mid = x0 + width * 9 / 20;
            whiskers.push(PathElement::new(vec![(mid, s.min), (mid, s.max)], BLACK.stroke_width(1)));
        }
        chart.draw_series(bars)?.label(*arm).legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
        chart.draw_series(whiskers)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::report::tests::synthetic;

    #[test]
    fn draws_both_panels_with_labels_and_legend() {
        let svg = render_svg(&synthetic()).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..80.min(svg.len())]);
        for text in ["Requests/s", "p99 latency", "keepalive-c32", "newconn-c32", "iptables", "ebpf+splice", "direct"] {
            assert!(svg.contains(text), "{text} missing from the SVG");
        }
        assert!(svg.matches("<rect").count() > 20, "expected bars");
    }

    #[test]
    fn an_empty_run_still_renders() {
        let svg = render_svg(&Results::default()).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("no HTTP samples"));
    }
}
