//! The latency-distribution plot (SVG): percentile curves of the round trip
//! (64 B, one session) and of new-session setup, one line per path.
//!
//! The x axis counts nines (0 = p0, 1 = p90, 2 = p99, 3 = p99.9, …) so the
//! tail gets as much room as the median; the y axis is logarithmic.

use std::path::Path;

use plotters::prelude::*;

use crate::report::Curve;

const MAX_NINES: f64 = 5.0;

fn nines(percentile: f64) -> f64 {
    let missing = (1.0 - percentile / 100.0).max(10f64.powf(-MAX_NINES));
    -missing.log10()
}

fn nines_label(x: f64) -> String {
    match x.round() as i32 {
        0 => "p0".into(),
        1 => "p90".into(),
        2 => "p99".into(),
        3 => "p99.9".into(),
        4 => "p99.99".into(),
        _ => "max".into(),
    }
}

const COLORS: [RGBColor; 6] = [
    RGBColor(0x33, 0x33, 0x33),
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x94, 0x67, 0xbd),
];

/// Draw one panel per chart name found in `curves`, in the order given.
pub fn write_svg(file: &Path, charts: &[(&str, &str)], curves: &[Curve]) -> anyhow::Result<()> {
    let panels: Vec<_> = charts
        .iter()
        .filter(|(name, _)| curves.iter().any(|c| c.chart == *name))
        .collect();
    anyhow::ensure!(!panels.is_empty(), "nothing to plot");
    let root = SVGBackend::new(file, (900, 420 * panels.len() as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let areas = root.split_evenly((panels.len(), 1));
    for (area, (name, title)) in areas.iter().zip(panels) {
        let mine: Vec<&Curve> = curves.iter().filter(|c| c.chart == *name).collect();
        let values = mine.iter().flat_map(|c| c.points.iter().map(|p| p.1));
        let (lo, hi) = values.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
        let (lo, hi) = ((lo * 0.8).max(0.1), hi * 1.25);
        let mut chart = ChartBuilder::on(area)
            .caption(*title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..MAX_NINES, (lo..hi).log_scale())?;
        chart
            .configure_mesh()
            .x_labels(6)
            .x_label_formatter(&|x| nines_label(*x))
            .y_label_formatter(&|y| format!("{y:.0}"))
            .x_desc("percentile")
            .y_desc("latency (µs)")
            .draw()?;
        for (i, c) in mine.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            chart
                .draw_series(LineSeries::new(
                    c.points.iter().map(|&(p, v)| (nines(p), v)),
                    color.stroke_width(2),
                ))?
                .label(c.label.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_an_svg_with_every_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("p.svg");
        let curve = |label: &str, k: f64| Curve {
            chart: "rtt".into(),
            label: label.into(),
            points: vec![
                (0.0, 10.0 * k),
                (50.0, 20.0 * k),
                (99.0, 40.0 * k),
                (100.0, 90.0 * k),
            ],
        };
        write_svg(
            &file,
            &[("rtt", "round trips"), ("none", "absent")],
            &[curve("direct", 1.0), curve("hsmgate", 2.0)],
        )
        .expect("plot");
        let svg = std::fs::read_to_string(&file).expect("svg");
        assert!(svg.contains("<svg") && svg.contains("hsmgate") && svg.contains("direct"));
        assert!(svg.contains("p99.9"));
    }

    #[test]
    fn nines_map_percentiles() {
        assert_eq!(nines(0.0), 0.0);
        assert!((nines(99.0) - 2.0).abs() < 1e-9);
        assert_eq!(nines(100.0), MAX_NINES);
    }
}
