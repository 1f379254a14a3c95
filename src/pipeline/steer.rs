//! `tenets steer`: steering vectors from preference pairs, with no training. The native forward
//! runs each pair's chosen and rejected answer after their prompt, keeps the residual stream
//! after every block, and averages it over each answer's tokens; a layer's direction is the mean
//! of the pairs' differences (chosen − rejected), or their first principal component scaled to
//! the same mean projection. Written as llama.cpp's control-vector GGUF
//! ([`crate::model::steer`]); `tenets score --control-vector` applies one.

use std::path::PathBuf;

use super::{check_out_folder, native_compute, progress_bar, setting, PipelineError};
use crate::model::steer::{self, ControlVector};
use crate::model::Model;
use crate::quant::matmul::Compute;
use crate::settings::{KernelChoice, ModelSettings, RunSettings};

/// How a layer's direction is made from the pairs' differences.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// The mean difference (chosen − rejected).
    Mean,
    /// The first principal component of the differences, pointed and scaled to their mean
    /// projection on it.
    Pca,
}

/// `tenets steer`'s command line.
#[derive(clap::Args, Debug, Clone)]
pub struct SteerOptions {
    /// The model to steer, and the threads it computes on.
    #[command(flatten)]
    pub model: ModelSettings,
    /// The pairs the directions are computed from.
    #[command(flatten)]
    pub source: super::PairSource,
    /// The control vector to write (GGUF).
    #[arg(long)]
    pub out: PathBuf,
    /// Blocks to steer, FIRST-LAST (0-based; block 0 cannot be) [default: 1 to the last]
    #[arg(long, value_name = "FIRST-LAST", value_parser = crate::settings::parse_layer_range)]
    pub layers: Option<(usize, usize)>,
    #[arg(long, value_enum, default_value_t = Method::Mean)]
    pub method: Method,
    /// Most tokens of prompt + answer (longer prompts keep their end).
    #[arg(long, default_value_t = 1024)]
    pub max_length: usize,
    /// Native kernels [default: the fastest this CPU runs]
    #[arg(long, value_enum, default_value_t = KernelChoice::Auto)]
    pub kernel: KernelChoice,
    #[command(flatten)]
    pub run: RunSettings,
}

/// What `tenets steer` wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SteerSummary {
    pub pairs: usize,
    pub method: Method,
    pub out: PathBuf,
    /// Per steered block: its direction's norm, and the share of pairs whose own difference
    /// points the same way (a projection above 0) — how much the pairs agree.
    pub layers: Vec<LayerFigures>,
}

#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct LayerFigures {
    pub layer: usize,
    pub norm: f64,
    pub agreement: f64,
}

/// Computes and writes the steering vector.
pub async fn steer(o: &SteerOptions) -> Result<SteerSummary, PipelineError> {
    o.model.check()?;
    o.source.check()?;
    if o.max_length < 8 {
        return Err(setting(format!(
            "--max-length must be at least 8, got {}",
            o.max_length
        )));
    }
    check_out_folder("--out", &o.out)?;
    let model_path = o.model.model_path()?;
    let model = Model::open(&model_path)?;
    let layers = model.config().layers;
    let (first, last) = o.layers.unwrap_or((1, layers.saturating_sub(1)));
    if first == 0 || last >= layers {
        return Err(setting(format!(
            "--layers {first}-{last}: this model's steerable blocks are 1 to {} (block 0's output \
             is never steered, as in llama.cpp)",
            layers.saturating_sub(1)
        )));
    }
    let examples = o.source.examples().await?;
    if let Some(e) = examples.iter().find(|e| e.rejected.is_none()) {
        return Err(setting(format!(
            "{}: a steering vector is made from pairs, and this row has no `rejected` answer",
            e.origin
        )));
    }
    if examples.is_empty() {
        return Err(setting("no pairs to compute a steering vector from"));
    }
    let (items, _) =
        super::train::tokenize(o.max_length, o.max_length / 2, &model_path, &examples)?;
    let compute = native_compute(&o.model, o.kernel)?;

    // Per pair and layer: mean residual over the chosen answer's tokens minus the rejected's.
    let e = model.config().embedding;
    let bar = progress_bar(o.run.quiet, items.len() as u64, "pairs");
    bar.set_message("residual streams");
    let mut differences: Vec<Vec<Vec<f32>>> = vec![Vec::new(); layers];
    for item in &items {
        let rejected = item.rejected.as_deref().unwrap_or_default();
        let chosen = answer_means(&model, &compute, &item.chosen, item.prompt_len)?;
        let rejected = answer_means(&model, &compute, rejected, item.prompt_len)?;
        for (l, (c, r)) in chosen.iter().zip(&rejected).enumerate() {
            differences[l].push(c.iter().zip(r).map(|(a, b)| a - b).collect());
        }
        bar.inc(1);
    }
    bar.finish_and_clear();

    let mut vector = ControlVector {
        directions: vec![None; layers],
    };
    let mut figures = Vec::new();
    for (l, diffs) in differences.iter().enumerate().take(last + 1).skip(first) {
        let direction = match o.method {
            Method::Mean => mean(diffs, e),
            Method::Pca => principal(diffs, e),
        };
        let norm = direction
            .iter()
            .map(|x| f64::from(*x) * f64::from(*x))
            .sum::<f64>()
            .sqrt();
        let agree = diffs.iter().filter(|d| dot(d, &direction) > 0.0).count();
        figures.push(LayerFigures {
            layer: l,
            norm,
            agreement: agree as f64 / diffs.len().max(1) as f64,
        });
        vector.directions[l] = Some(direction);
    }
    steer::write(&model, &vector, &o.out).map_err(|e| setting(e.to_string()))?;
    Ok(SteerSummary {
        pairs: items.len(),
        method: o.method,
        out: o.out.clone(),
        layers: figures,
    })
}

/// The residual stream after each block, averaged over the answer's rows (`tokens` after the
/// first `prompt_len`).
fn answer_means(
    model: &Model,
    compute: &Compute,
    tokens: &[u32],
    prompt_len: usize,
) -> Result<Vec<Vec<f32>>, PipelineError> {
    let e = model.config().embedding;
    let residuals = model.residual_stream(compute, tokens, None)?;
    let rows = tokens.len().saturating_sub(prompt_len).max(1);
    let start = tokens.len() - rows;
    Ok(residuals
        .iter()
        .map(|x| {
            let mut m = vec![0.0f32; e];
            for row in x[start * e..].chunks_exact(e) {
                m.iter_mut()
                    .zip(row)
                    .for_each(|(s, v)| *s += v / rows as f32);
            }
            m
        })
        .collect())
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum()
}

fn mean(rows: &[Vec<f32>], e: usize) -> Vec<f32> {
    let mut m = vec![0.0f64; e];
    for r in rows {
        m.iter_mut().zip(r).for_each(|(s, v)| *s += f64::from(*v));
    }
    let n = rows.len().max(1) as f64;
    m.into_iter().map(|s| (s / n) as f32).collect()
}

/// The first principal component of `rows` (uncentred, as repeng's PCA of differences is:
/// the direction the differences share), by power iteration on `RᵀR`; pointed to where the
/// mean difference points and scaled to the rows' mean projection on it.
pub fn principal(rows: &[Vec<f32>], e: usize) -> Vec<f32> {
    let m = mean(rows, e);
    let mut v: Vec<f64> = m.iter().map(|&x| f64::from(x)).collect();
    if v.iter().all(|x| *x == 0.0) {
        v = vec![1.0; e];
    }
    for _ in 0..100 {
        let mut next = vec![0.0f64; e];
        for r in rows {
            let p: f64 = r.iter().zip(&v).map(|(a, b)| f64::from(*a) * b).sum();
            next.iter_mut()
                .zip(r)
                .for_each(|(s, a)| *s += p * f64::from(*a));
        }
        let norm = next.iter().map(|x| x * x).sum::<f64>().sqrt();
        if norm == 0.0 {
            return m;
        }
        v = next.into_iter().map(|x| x / norm).collect();
    }
    let unit: Vec<f32> = v.iter().map(|&x| x as f32).collect();
    let sign = if dot(&m, &unit) < 0.0 { -1.0 } else { 1.0 };
    let projection = rows.iter().map(|r| dot(r, &unit)).sum::<f64>() / rows.len().max(1) as f64;
    let scale = (sign * projection) as f32;
    unit.iter().map(|x| x * sign as f32 * scale.abs()).collect()
}

/// The summary as text.
pub fn render(s: &SteerSummary) -> String {
    let mut out = format!(
        "steering vector from {} pair(s) ({:?}): {} block(s), written to {}\n",
        s.pairs,
        s.method,
        s.layers.len(),
        s.out.display()
    );
    for f in &s.layers {
        out.push_str(&format!(
            "  block {:>3}: norm {:8.3}, pairs agreeing {:5.1}%\n",
            f.layer,
            f.norm,
            100.0 * f.agreement
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_principal_direction_is_the_shared_one() {
        // Differences along (1, 1) with noise across it: the component is (1, 1)/√2, pointed
        // like the mean, scaled to the mean projection √2.
        let rows = vec![vec![1.2f32, 0.8], vec![0.8, 1.2], vec![1.0, 1.0]];
        let v = principal(&rows, 2);
        assert!(
            (v[0] - 1.0).abs() < 1e-4 && (v[1] - 1.0).abs() < 1e-4,
            "{v:?}"
        );
        let flipped: Vec<Vec<f32>> = rows
            .iter()
            .map(|r| r.iter().map(|x| -x).collect())
            .collect();
        let w = principal(&flipped, 2);
        assert!(
            (w[0] + 1.0).abs() < 1e-4 && (w[1] + 1.0).abs() < 1e-4,
            "{w:?}"
        );
        assert_eq!(mean(&rows, 2), vec![1.0, 1.0]);
    }
}
