//! The SVG chart of a run: query latency (p50 and p99 per second, per kind, log scale), node
//! data age p99 per probe, and node/pod coverage over the window, with a vertical marker at
//! each fault.

use std::path::Path;

use plotters::prelude::*;

use super::report::Report;

const PALETTE: [RGBColor; 6] = [RGBColor(31, 119, 180), RGBColor(255, 127, 14), RGBColor(44, 160, 44), RGBColor(214, 39, 40), RGBColor(148, 103, 189), RGBColor(140, 86, 75)];

/// Draws the chart of `report` into `path`; the error says what failed.
pub fn write(report: &Report, path: &Path) -> Result<(), String> {
    let root = SVGBackend::new(path, (1200, 900)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let panels = root.split_evenly((3, 1));
    let x_max = report.measured_s.max(1.0);
    let faults: Vec<f64> = report.faults.iter().map(|f| f.outcome.at_s).collect();

    // 1. Query latency.
    let lat_max = report
        .timeline
        .query_latency
        .values()
        .flatten()
        .map(|p| p.p99_ms)
        .fold(1.0f64, f64::max)
        .max(1.0)
        * 1.5;
    let mut chart = ChartBuilder::on(&panels[0])
        .caption("query latency per second (ms, log; solid p99, thin p50)", ("sans-serif", 18))
        .margin(8)
        .x_label_area_size(28)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..x_max, (0.1f64..lat_max).log_scale())
        .map_err(|e| e.to_string())?;
    chart.configure_mesh().x_desc("seconds into the measurement").draw().map_err(|e| e.to_string())?;
    for (i, (kind, points)) in report.timeline.query_latency.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let p99: Vec<(f64, f64)> = points.iter().map(|p| (f64::from(p.t_s) + 0.5, p.p99_ms.max(0.1))).collect();
        let p50: Vec<(f64, f64)> = points.iter().map(|p| (f64::from(p.t_s) + 0.5, p.p50_ms.max(0.1))).collect();
        chart
            .draw_series(LineSeries::new(p99, color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(format!("{kind} p99"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2)));
        chart.draw_series(LineSeries::new(p50, color.stroke_width(1))).map_err(|e| e.to_string())?;
    }
    for at in &faults {
        chart.draw_series(LineSeries::new(vec![(*at, 0.1), (*at, lat_max)], BLACK.stroke_width(1))).map_err(|e| e.to_string())?;
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(|e| e.to_string())?;

    // 2. Freshness.
    let nodes = &report.timeline.node_probes;
    let age_max = nodes.iter().map(|p| p.age_p99_ms / 1000.0).fold(report.setup.resolution_s * 2.0, f64::max) * 1.1;
    let mut chart = ChartBuilder::on(&panels[1])
        .caption("node data age p99 per probe (s)", ("sans-serif", 18))
        .margin(8)
        .x_label_area_size(28)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..x_max, 0f64..age_max)
        .map_err(|e| e.to_string())?;
    chart.configure_mesh().x_desc("seconds into the measurement").draw().map_err(|e| e.to_string())?;
    chart
        .draw_series(LineSeries::new(nodes.iter().filter(|p| p.error.is_none()).map(|p| (p.t_s, p.age_p99_ms / 1000.0)), PALETTE[0].stroke_width(2)))
        .map_err(|e| e.to_string())?;
    let bound = report.coverage.fresh_bound_ms / 1000.0;
    chart.draw_series(LineSeries::new(vec![(0.0, bound), (x_max, bound)], RED.stroke_width(1))).map_err(|e| e.to_string())?;
    for at in &faults {
        chart.draw_series(LineSeries::new(vec![(*at, 0.0), (*at, age_max)], BLACK.stroke_width(1))).map_err(|e| e.to_string())?;
    }

    // 3. Coverage.
    let mut chart = ChartBuilder::on(&panels[2])
        .caption("coverage: fresh items / expected (%; blue nodes, orange pods)", ("sans-serif", 18))
        .margin(8)
        .x_label_area_size(28)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..x_max, 0f64..105f64)
        .map_err(|e| e.to_string())?;
    chart.configure_mesh().x_desc("seconds into the measurement").draw().map_err(|e| e.to_string())?;
    chart.draw_series(LineSeries::new(nodes.iter().map(|p| (p.t_s, p.coverage_percent())), PALETTE[0].stroke_width(2))).map_err(|e| e.to_string())?;
    chart
        .draw_series(LineSeries::new(report.timeline.pod_probes.iter().map(|p| (p.t_s, p.coverage_percent())), PALETTE[1].stroke_width(2)))
        .map_err(|e| e.to_string())?;
    for at in &faults {
        chart.draw_series(LineSeries::new(vec![(*at, 0.0), (*at, 105.0)], BLACK.stroke_width(1))).map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}
