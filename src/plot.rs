//! Training curves as SVG (plotters): loss per step, and for preference losses the reward margin
//! and batch accuracy — what a user checks first after an overnight run.

use std::path::{Path, PathBuf};

use plotters::prelude::*;

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
    let fail = |e: &dyn std::fmt::Display| PlotError {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
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
    crate::atomic::write(path, svg.as_bytes()).map_err(|e| fail(&e))
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
}
