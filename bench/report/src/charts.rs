//! SVG charts drawn with `plotters`: grouped horizontal bars with min-max whiskers, a
//! latency histogram, and lines over node counts.

use std::error::Error;
use std::path::Path;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

type Res = Result<(), Box<dyn Error>>;

/// median, min, max of one bar.
pub type Bar = Option<(f64, f64, f64)>;

/// One series of a bar chart: its name and one bar per category.
pub struct Series {
    /// Legend text.
    pub name: String,
    /// One bar per category (`None` = not measured).
    pub bars: Vec<Bar>,
}

fn color(i: usize) -> RGBColor {
    const COLORS: [RGBColor; 7] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(127, 127, 127),
    ];
    COLORS[i % COLORS.len()]
}

/// Grouped horizontal bars, one group per category, whiskers from min to max; a dashed
/// line at `reference` (e.g. 1.0 for ratios) when given.
pub fn bars(
    path: &Path,
    title: &str,
    x_label: &str,
    categories: &[String],
    series: &[Series],
    reference: Option<f64>,
) -> Res {
    let rows = categories.len().max(1);
    let k = series.len().max(1);
    let height = (80 + rows * (12 + 16 * k) + 24 * k).max(220) as u32;
    let root = SVGBackend::new(path, (960, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let xmax = series
        .iter()
        .flat_map(|s| s.bars.iter().flatten().map(|b| b.2))
        .chain(reference)
        .fold(0.0f64, f64::max)
        // Room on the right for the legend.
        * if series.len() > 1 { 1.45 } else { 1.12 };
    let xmax = if xmax > 0.0 { xmax } else { 1.0 };
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(300)
        .build_cartesian_2d(0f64..xmax, 0f64..rows as f64)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(0)
        .x_desc(x_label)
        .label_style(("sans-serif", 12))
        .draw()?;
    let band = 0.8 / k as f64;
    for (si, s) in series.iter().enumerate() {
        let c = color(si);
        let mut first = true;
        for (ci, bar) in s.bars.iter().enumerate() {
            let Some((median, min, max)) = *bar else {
                continue;
            };
            // Category 0 at the top.
            let top = rows as f64 - ci as f64 - 0.1 - band * si as f64;
            let bottom = top - band * 0.9;
            let mid = (top + bottom) / 2.0;
            let rect = Rectangle::new([(0.0, bottom), (median, top)], c.filled());
            if first {
                chart
                    .draw_series(std::iter::once(rect))?
                    .label(s.name.clone())
                    .legend(move |(x, y)| {
                        Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled())
                    });
                first = false;
            } else {
                chart.draw_series(std::iter::once(rect))?;
            }
            if max > min {
                let whisker = BLACK.stroke_width(1);
                let h = band * 0.25;
                chart.draw_series([
                    PathElement::new(vec![(min, mid), (max, mid)], whisker),
                    PathElement::new(vec![(min, mid - h), (min, mid + h)], whisker),
                    PathElement::new(vec![(max, mid - h), (max, mid + h)], whisker),
                ])?;
            }
        }
    }
    if let Some(r) = reference {
        chart.draw_series(DashedLineSeries::new(
            vec![(r, 0.0), (r, rows as f64)],
            6,
            4,
            BLACK.stroke_width(1),
        ))?;
    }
    let label = ("sans-serif", 13)
        .into_font()
        .color(&BLACK)
        .pos(Pos::new(HPos::Right, VPos::Center));
    for (ci, name) in categories.iter().enumerate() {
        let y = rows as f64 - ci as f64 - 0.5;
        let (px, py) = chart.backend_coord(&(0.0, y));
        root.draw(&Text::new(name.clone(), (px - 8, py), label.clone()))?;
    }
    if series.len() > 1 || !series.is_empty() && !series[0].name.is_empty() {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 12))
            .draw()?;
    }
    root.present()?;
    Ok(())
}

/// Share of samples per latency bucket, one line per series, up to the 99.5th percentile
/// of all samples (later samples fall in the last bucket).
pub fn histogram(path: &Path, title: &str, series: &[(String, Vec<f64>)]) -> Res {
    let root = SVGBackend::new(path, (960, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut all: Vec<f64> = series.iter().flat_map(|s| s.1.iter().copied()).collect();
    all.sort_by(f64::total_cmp);
    let top = if all.is_empty() {
        1.0
    } else {
        all[((all.len() - 1) as f64 * 0.995) as usize].max(0.01) * 1.05
    };
    const BUCKETS: usize = 50;
    let width = top / BUCKETS as f64;
    let shares: Vec<Vec<(f64, f64)>> = series
        .iter()
        .map(|(_, samples)| {
            let mut counts = [0usize; BUCKETS];
            for v in samples {
                counts[((v / width) as usize).min(BUCKETS - 1)] += 1;
            }
            counts
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    (
                        (i as f64 + 0.5) * width,
                        *c as f64 * 100.0 / samples.len().max(1) as f64,
                    )
                })
                .collect()
        })
        .collect();
    let ymax = shares.iter().flatten().map(|p| p.1).fold(1.0f64, f64::max) * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..top, 0f64..ymax)?;
    chart
        .configure_mesh()
        .x_desc("latency (ms); the last bucket holds everything above")
        .y_desc("% of samples")
        .label_style(("sans-serif", 12))
        .draw()?;
    for (i, ((name, samples), points)) in series.iter().zip(&shares).enumerate() {
        let c = color(i);
        chart
            .draw_series(LineSeries::new(points.clone(), c.stroke_width(2)))?
            .label(format!("{name} ({} samples)", samples.len()))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 12))
        .draw()?;
    root.present()?;
    Ok(())
}

/// One line over node counts: name and (nodes, median, min, max) points.
pub type Line = (String, Vec<(f64, f64, f64, f64)>);

/// Lines of a figure over the node count, whiskers from min to max.
pub fn over_nodes(path: &Path, title: &str, y_label: &str, lines: &[Line]) -> Res {
    let root = SVGBackend::new(path, (960, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let ymax = lines
        .iter()
        .flat_map(|l| l.1.iter().map(|p| p.3))
        .fold(0.0f64, f64::max)
        * 1.15;
    let ymax = if ymax > 0.0 { ymax } else { 1.0 };
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(2f64..8f64, 0f64..ymax)?;
    chart
        .configure_mesh()
        .x_desc("nodes (all on one 2-core machine)")
        .y_desc(y_label)
        .x_labels(7)
        .label_style(("sans-serif", 12))
        .draw()?;
    for (i, (name, points)) in lines.iter().enumerate() {
        let c = color(i);
        chart
            .draw_series(LineSeries::new(
                points.iter().map(|p| (p.0, p.1)),
                c.stroke_width(2),
            ))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2)));
        chart.draw_series(
            points
                .iter()
                .map(|p| Circle::new((p.0, p.1), 4, c.filled())),
        )?;
        chart.draw_series(
            points
                .iter()
                .map(|p| PathElement::new(vec![(p.0, p.2), (p.0, p.3)], c.stroke_width(1))),
        )?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 12))
        .draw()?;
    root.present()?;
    Ok(())
}
