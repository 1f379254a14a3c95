//! Charts as SVG (plotters): training curves (loss per step, and for preference losses the reward
//! margin and batch accuracy — what a user checks first after an overnight run), histograms,
//! count bars and rates with their confidence intervals for the report; and SVG → PNG (resvg).

use std::path::{Path, PathBuf};

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::store::TrainStepRecord;

#[derive(Debug, thiserror::Error)]
#[error("cannot draw {path}: {message}")]
pub struct PlotError {
    path: PathBuf,
    message: String,
}

/// A panel: its caption, its points and their colour.
type Curve = (String, Vec<(f64, f64)>, RGBColor);

/// Writes the curves of `steps` to `path` (atomically).
pub fn training_curves(
    steps: &[TrainStepRecord],
    objective: &str,
    path: &Path,
) -> Result<(), PlotError> {
    let svg = training_curves_svg(steps, objective).map_err(|message| PlotError {
        path: path.to_path_buf(),
        message,
    })?;
    crate::atomic::write(path, svg.as_bytes()).map_err(|e| PlotError {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// The curves of `steps` as an SVG document.
pub fn training_curves_svg(steps: &[TrainStepRecord], objective: &str) -> Result<String, String> {
    let fail = |e: &dyn std::fmt::Display| e.to_string();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (960, 720)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| fail(&e))?;
        let preference = steps.iter().any(|s| s.margin.is_some());
        let panels = if preference {
            root.split_evenly((3, 1))
        } else {
            vec![root.clone()]
        };
        let series = |f: fn(&TrainStepRecord) -> Option<f64>| -> Vec<(f64, f64)> {
            steps
                .iter()
                .filter_map(|s| f(s).map(|v| (s.step as f64, v)))
                .collect()
        };
        let mut charts: Vec<Curve> =
            vec![(format!("{objective} loss"), series(|s| Some(s.loss)), BLUE)];
        if preference {
            charts.push(("reward margin".into(), series(|s| s.margin), RED));
            charts.push(("batch accuracy".into(), series(|s| s.accuracy), GREEN));
        }
        for (area, (name, points, color)) in panels.iter().zip(charts) {
            let last_step = steps.last().map_or(1.0, |s| s.step as f64).max(1.0);
            let (lo, hi) = points
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &(_, v)| {
                    (lo.min(v), hi.max(v))
                });
            let (lo, hi) = if lo.is_finite() && hi > lo {
                let pad = (hi - lo) * 0.05;
                (lo - pad, hi + pad)
            } else if lo.is_finite() {
                (lo - 0.5, lo + 0.5)
            } else {
                (0.0, 1.0)
            };
            let mut chart = ChartBuilder::on(area)
                .caption(&name, ("sans-serif", 18))
                .margin(8)
                .x_label_area_size(28)
                .y_label_area_size(56)
                .build_cartesian_2d(0.0..last_step, lo..hi)
                .map_err(|e| fail(&e))?;
            chart
                .configure_mesh()
                .x_desc("step")
                .light_line_style(WHITE.mix(0.0))
                .draw()
                .map_err(|e| fail(&e))?;
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))
                .map_err(|e| fail(&e))?;
        }
        root.present().map_err(|e| fail(&e))?;
    }
    Ok(svg)
}

/// A histogram of values in [0, 1] (`bins` equal bins), as an SVG document.
pub fn histogram_svg(
    values: &[f64],
    bins: usize,
    caption: &str,
    x_desc: &str,
) -> Result<String, String> {
    let fail = |e: &dyn std::fmt::Display| e.to_string();
    let bins = bins.max(1);
    let mut counts = vec![0u32; bins];
    for v in values.iter().filter(|v| v.is_finite()) {
        let i = ((v.clamp(0.0, 1.0) * bins as f64) as usize).min(bins - 1);
        counts[i] += 1;
    }
    let top = counts.iter().copied().max().unwrap_or(0).max(1);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (640, 320)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| fail(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(caption, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(48)
            .build_cartesian_2d(0.0..1.0, 0u32..top + top / 10 + 1)
            .map_err(|e| fail(&e))?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc("count")
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(|e| fail(&e))?;
        let width = 1.0 / bins as f64;
        chart
            .draw_series(counts.iter().enumerate().map(|(i, &c)| {
                let x = i as f64 * width;
                Rectangle::new([(x, 0), (x + width, c)], BLUE.mix(0.6).filled())
            }))
            .map_err(|e| fail(&e))?;
        root.present().map_err(|e| fail(&e))?;
    }
    Ok(svg)
}

/// Horizontal bars for named counts (largest first), as an SVG document.
pub fn count_bars_svg(counts: &[(String, i64)], caption: &str) -> Result<String, String> {
    let fail = |e: &dyn std::fmt::Display| e.to_string();
    let mut rows: Vec<&(String, i64)> = counts.iter().collect();
    rows.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let n = rows.len().max(1);
    let top = rows.iter().map(|r| r.1).max().unwrap_or(0).max(1);
    let mut svg = String::new();
    {
        let height = 60 + 22 * n as u32;
        let root = SVGBackend::with_string(&mut svg, (640, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| fail(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(caption, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(28)
            .y_label_area_size(8)
            .build_cartesian_2d(0i64..top * 9 / 5 + 1, 0.0..n as f64)
            .map_err(|e| fail(&e))?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .disable_y_axis()
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(|e| fail(&e))?;
        chart
            .draw_series(rows.iter().enumerate().map(|(i, r)| {
                let y = i as f64;
                Rectangle::new([(0, y + 0.15), (r.1, y + 0.85)], GREEN.mix(0.6).filled())
            }))
            .map_err(|e| fail(&e))?;
        // Category names beside their bars (plotters labels only numeric ticks).
        let label =
            TextStyle::from(("sans-serif", 13).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
        chart
            .draw_series(rows.iter().enumerate().map(|(i, r)| {
                Text::new(
                    format!(" {} ({})", r.0, r.1),
                    (r.1, i as f64 + 0.5),
                    label.clone(),
                )
            }))
            .map_err(|e| fail(&e))?;
        root.present().map_err(|e| fail(&e))?;
    }
    Ok(svg)
}

/// One bar of [`rate_bars_svg`]: a rate in [0, 1] with its interval.
#[derive(Debug, Clone)]
pub struct RateBar {
    pub group: String,
    pub series: String,
    pub rate: f64,
    pub low: f64,
    pub high: f64,
}

/// Grouped vertical bars of rates with interval whiskers (one colour per series), as an SVG
/// document: the evaluation's base-vs-adapter (or round-by-round) chart.
pub fn rate_bars_svg(bars: &[RateBar], caption: &str) -> Result<String, String> {
    let fail = |e: &dyn std::fmt::Display| e.to_string();
    let mut groups: Vec<&str> = Vec::new();
    let mut series: Vec<&str> = Vec::new();
    for b in bars {
        if !groups.contains(&b.group.as_str()) {
            groups.push(&b.group);
        }
        if !series.contains(&b.series.as_str()) {
            series.push(&b.series);
        }
    }
    let palette = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (720, 360)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| fail(&e))?;
        let n = groups.len().max(1);
        let mut chart = ChartBuilder::on(&root)
            .caption(caption, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(8)
            .y_label_area_size(48)
            .build_cartesian_2d(0.0..n as f64, 0.0..1.08)
            .map_err(|e| fail(&e))?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .disable_x_axis()
            .light_line_style(WHITE.mix(0.0))
            .y_desc("rate")
            .draw()
            .map_err(|e| fail(&e))?;
        // Group names over their bars (plotters labels only numeric ticks).
        let label =
            TextStyle::from(("sans-serif", 14).into_font()).pos(Pos::new(HPos::Center, VPos::Top));
        chart
            .draw_series(
                groups
                    .iter()
                    .enumerate()
                    .map(|(i, g)| Text::new(g.to_string(), (i as f64 + 0.5, 1.07), label.clone())),
            )
            .map_err(|e| fail(&e))?;
        let width = 0.8 / series.len().max(1) as f64;
        for (s, name) in series.iter().enumerate() {
            let color = palette[s % palette.len()];
            let mine: Vec<(f64, &RateBar)> = bars
                .iter()
                .filter(|b| b.series == *name)
                .filter_map(|b| {
                    let g = groups.iter().position(|g| *g == b.group)?;
                    Some((g as f64 + 0.1 + s as f64 * width, b))
                })
                .collect();
            chart
                // A rate of 0 has no bar (an empty rectangle is invalid SVG to renderers);
                // its interval still shows.
                .draw_series(mine.iter().filter(|(_, b)| b.rate > 0.0).map(|(x, b)| {
                    Rectangle::new(
                        [(*x, 0.0), (x + width * 0.9, b.rate)],
                        color.mix(0.6).filled(),
                    )
                }))
                .map_err(|e| fail(&e))?
                .label(name.to_string())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled())
                });
            chart
                .draw_series(mine.iter().map(|(x, b)| {
                    let mid = x + width * 0.45;
                    PathElement::new(vec![(mid, b.low), (mid, b.high)], BLACK.stroke_width(1))
                }))
                .map_err(|e| fail(&e))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| fail(&e))?;
        root.present().map_err(|e| fail(&e))?;
    }
    Ok(svg)
}

/// Renders an SVG document to PNG with the system's fonts (what the report writes beside its
/// HTML for slides and issues).
pub fn svg_to_png(svg: &str) -> Result<Vec<u8>, String> {
    let mut options = resvg::usvg::Options::default();
    let fonts = options.fontdb_mut();
    fonts.load_system_fonts();
    // The charts ask for "sans-serif": point it at a sans face the system has.
    let families: Vec<String> = fonts
        .faces()
        .flat_map(|f| f.families.iter().map(|(name, _)| name.clone()))
        .collect();
    let preferred = [
        "DejaVu Sans",
        "Liberation Sans",
        "Noto Sans",
        "Arial",
        "Helvetica",
    ];
    if let Some(family) = preferred
        .iter()
        .find(|p| families.iter().any(|f| f == *p))
        .map(|p| p.to_string())
        .or_else(|| families.first().cloned())
    {
        fonts.set_sans_serif_family(family);
    }
    let tree = resvg::usvg::Tree::from_str(svg, &options).map_err(|e| e.to_string())?;
    let size = tree.size().to_int_size();
    let mut pixmap =
        resvg::tiny_skia::Pixmap::new(size.width(), size.height()).ok_or("the SVG has no area")?;
    resvg::render(
        &tree,
        resvg::tiny_skia::Transform::default(),
        &mut pixmap.as_mut(),
    );
    pixmap.encode_png().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_loss_and_margin_curves() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.svg");
        let steps: Vec<TrainStepRecord> = (1..=20)
            .map(|i| TrainStepRecord {
                step: i,
                loss: 0.7 / i as f64,
                margin: Some(i as f64 * 0.1),
                accuracy: Some(0.5 + i as f64 / 40.0),
                ..TrainStepRecord::default()
            })
            .collect();
        training_curves(&steps, "dpo", &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..40]);
        for caption in ["dpo loss", "reward margin", "batch accuracy"] {
            assert!(svg.contains(caption), "{caption}");
        }
        // One 2-px line per curve (the mesh lines are thinner).
        assert_eq!(svg.matches("stroke-width=\"2\"").count(), 3);
    }

    #[test]
    fn report_charts_draw_and_rasterise() {
        let hist = histogram_svg(&[0.1, 0.5, 0.55, 0.9, 1.0], 10, "labels", "p").unwrap();
        assert!(hist.contains("labels"));
        let bars = count_bars_svg(&[("harm".into(), 3), ("help".into(), 5)], "principles").unwrap();
        assert!(bars.contains("harm") && bars.contains("help"));
        let rates = rate_bars_svg(
            &[
                RateBar {
                    group: "over-refusal".into(),
                    series: "base".into(),
                    rate: 0.2,
                    low: 0.1,
                    high: 0.4,
                },
                RateBar {
                    group: "over-refusal".into(),
                    series: "adapter".into(),
                    rate: 0.1,
                    low: 0.02,
                    high: 0.3,
                },
            ],
            "rates",
        )
        .unwrap();
        assert!(rates.contains("adapter") && rates.contains("over-refusal"));
        let png = svg_to_png(&rates).unwrap();
        assert_eq!(&png[1..4], b"PNG");
        assert!(png.len() > 1000);
    }
}
