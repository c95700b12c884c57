//! The cloud comparisons' chart: for each comparison, Laminar's median throughput as a
//! multiple of rclone's best (through the proxy and direct), on a log scale, with the
//! line at 1x where they are even.

use std::path::Path;

use anyhow::Result;
use plotters::prelude::*;

use super::compare::CloudComparison;

/// The tools drawn, with their colours.
const BARS: [(&str, RGBColor); 2] = [("laminar", RGBColor(31, 119, 180)), ("laminar-direct", RGBColor(148, 103, 189))];
/// The y axis, in multiples of rclone's best.
const Y_MIN: f64 = 0.25;
const Y_MAX: f64 = 1000.0;

fn median(c: &CloudComparison, tool: &str) -> Option<f64> {
    let v: Vec<f64> = c.runs.iter().filter(|r| r.run.tool == tool).map(|r| r.run.throughput_bytes_per_second).collect();
    (!v.is_empty()).then(|| crate::report::stats(&v).0)
}

/// Laminar's median throughput over rclone's best median, per drawn tool.
fn ratios(c: &CloudComparison) -> Vec<(&'static str, f64)> {
    let best = ["rclone-default", "rclone-tuned"].iter().filter_map(|t| median(c, t)).fold(0.0f64, f64::max);
    if best <= 0.0 {
        return Vec::new();
    }
    BARS.iter().filter_map(|(tool, _)| median(c, tool).map(|m| (*tool, (m / best).clamp(Y_MIN, Y_MAX)))).collect()
}

/// Draws the chart to `path` (SVG).
pub fn chart(clouds: &[CloudComparison], path: &Path) -> Result<()> {
    let groups: Vec<(String, Vec<(&str, f64)>)> = clouds
        .iter()
        .map(|c| (format!("{} {} {}", c.workload.name, c.direction.name(), c.profile), ratios(c)))
        .collect();
    let n = groups.len().max(1);
    let width = 160 + 120 * n as u32;
    let root = SVGBackend::new(path, (width, 460)).into_drawing_area();
    let draw_err = |e: &dyn std::fmt::Display| anyhow::anyhow!("drawing {}: {e}", path.display());
    root.fill(&WHITE).map_err(|e| draw_err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Laminar's median throughput as a multiple of rclone's best (log scale)", ("sans-serif", 17))
        .margin(12)
        .x_label_area_size(90)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..n as f64, (Y_MIN..Y_MAX).log_scale())
        .map_err(|e| draw_err(&e))?;
    let labels: Vec<String> = groups.iter().map(|g| g.0.clone()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n * 2 + 1)
        .x_label_style(("sans-serif", 11).into_font().transform(FontTransform::Rotate90))
        .x_label_formatter(&|x| crate::report::group_label(&labels, *x))
        .y_desc("x rclone's best")
        .draw()
        .map_err(|e| draw_err(&e))?;
    for (t, (tool, color)) in BARS.iter().enumerate() {
        let width = 0.8 / BARS.len() as f64;
        let bars: Vec<Rectangle<(f64, f64)>> = groups
            .iter()
            .enumerate()
            .filter_map(|(g, (_, bars))| {
                let v = bars.iter().find(|b| b.0 == *tool)?.1;
                let x0 = g as f64 + 0.1 + width * t as f64;
                Some(Rectangle::new([(x0, Y_MIN), (x0 + width - 0.02, v)], color.filled()))
            })
            .collect();
        let color = *color;
        chart
            .draw_series(bars)
            .map_err(|e| draw_err(&e))?
            .label(*tool)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
    }
    chart
        .draw_series(LineSeries::new([(0.0, 1.0), (n as f64, 1.0)], BLACK.stroke_width(1)))
        .map_err(|e| draw_err(&e))?
        .label("rclone's best (1x)")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 12, y)], BLACK));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| draw_err(&e))?;
    root.present().map_err(|e| draw_err(&e))?;
    Ok(())
}
