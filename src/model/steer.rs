//! Control vectors (steering): a direction per layer added to the residual stream after that
//! layer's block, at every position — no training, no weights changed. The file is llama.cpp's
//! `--control-vector` GGUF: `general.architecture = controlvector`, `controlvector.model_hint`
//! (the base's architecture), `controlvector.layer_count`, and one f32 tensor `direction.N` of
//! `n_embd` values per steered layer. The meaning is llama.cpp's: `direction.N` is added to the
//! output of block `N` (0-based), so block 0 is never steered and `direction.0` is refused.

use std::path::{Path, PathBuf};

use super::Model;
use crate::gguf::writer::{GgufWriter, WriteError};
use crate::gguf::{Gguf, GgufError, Value};
use crate::quant::{dequantize_row, QuantType};

/// One direction per layer (index `l`: added after block `l`), `None` where a layer is not
/// steered.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ControlVector {
    pub directions: Vec<Option<Vec<f32>>>,
}

#[derive(Debug, thiserror::Error)]
pub enum SteerError {
    #[error(transparent)]
    Read(#[from] GgufError),
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl ControlVector {
    /// The direction added after block `layer`, if any.
    pub fn at(&self, layer: usize) -> Option<&[f32]> {
        self.directions.get(layer).and_then(|d| d.as_deref())
    }

    /// Every direction times `scale` (llama.cpp's `--control-vector-scaled FILE SCALE`).
    pub fn scaled(&self, scale: f32) -> Self {
        ControlVector {
            directions: self
                .directions
                .iter()
                .map(|d| d.as_ref().map(|v| v.iter().map(|x| x * scale).collect()))
                .collect(),
        }
    }

    /// Only the layers `first..=last` steered (llama.cpp's `--control-vector-layer-range`).
    pub fn within(&self, first: usize, last: usize) -> Self {
        ControlVector {
            directions: self
                .directions
                .iter()
                .enumerate()
                .map(|(l, d)| d.clone().filter(|_| (first..=last).contains(&l)))
                .collect(),
        }
    }

    /// The steered layers.
    pub fn layers(&self) -> Vec<usize> {
        (0..self.directions.len())
            .filter(|&l| self.at(l).is_some())
            .collect()
    }

    /// The vector as llama.cpp's `llama_set_adapter_cvec` takes it: `embedding` values per
    /// block from block 1 on (zeros where a block is not steered), and the first and last
    /// steered block. `None` when no block is steered.
    pub fn llama_layout(&self, embedding: usize) -> Option<(Vec<f32>, usize, usize)> {
        // Block 0 has no place in llama.cpp's layout (its data starts at block 1).
        let layers: Vec<usize> = self.layers().into_iter().filter(|&l| l > 0).collect();
        let (&first, &last) = (layers.first()?, layers.last()?);
        let mut data = vec![0.0; last * embedding];
        for l in first..=last {
            if let Some(d) = self.at(l) {
                data[(l - 1) * embedding..l * embedding].copy_from_slice(d);
            }
        }
        Some((data, first, last))
    }
}

/// Writes `vector` for `model` as a llama.cpp control-vector GGUF.
pub fn write(model: &Model, vector: &ControlVector, path: &Path) -> Result<(), SteerError> {
    let e = model.config().embedding;
    let invalid = |message: String| SteerError::Invalid {
        path: path.to_path_buf(),
        message,
    };
    if vector.directions.first().is_some_and(Option::is_some) {
        return Err(invalid(
            "block 0's output cannot be steered (llama.cpp starts at direction.1)".into(),
        ));
    }
    let layers = vector.layers();
    if layers.is_empty() {
        return Err(invalid("no layer to steer".into()));
    }
    let mut w = GgufWriter::new();
    w.metadata(
        "general.architecture",
        Value::String("controlvector".into()),
    )?;
    w.metadata(
        "controlvector.model_hint",
        Value::String(model.config().architecture.name().into()),
    )?;
    w.metadata("controlvector.layer_count", Value::I32(layers.len() as i32))?;
    for l in layers {
        let d = vector.at(l).unwrap_or_default();
        if d.len() != e || d.iter().any(|x| !x.is_finite()) {
            return Err(invalid(format!(
                "direction.{l}: {} values (finite: {}), the model's hidden state is {e} wide",
                d.len(),
                d.iter().all(|x| x.is_finite())
            )));
        }
        let bytes = d.iter().flat_map(|v| v.to_le_bytes()).collect();
        w.tensor(
            &format!("direction.{l}"),
            &[e as u64],
            QuantType::F32,
            bytes,
        )?;
    }
    w.write(path)?;
    Ok(())
}

/// What a control vector must fit: the model's hidden width, its block count and its
/// architecture's name (a vector naming another only warns: llama.cpp checks the shapes alone).
#[derive(Debug, Clone, Copy)]
pub struct Shape<'a> {
    pub embedding: usize,
    pub layers: usize,
    pub architecture: &'a str,
}

impl<'a> Shape<'a> {
    pub fn of(model: &'a Model) -> Self {
        Shape {
            embedding: model.config().embedding,
            layers: model.config().layers,
            architecture: model.config().architecture.name(),
        }
    }
}

/// Reads a control-vector GGUF (tenets' or another tool's) for `model`: every tensor must be a
/// `direction.N` of the model's width for one of its blocks `1..layers`.
pub fn read(model: &Model, path: &Path) -> Result<ControlVector, SteerError> {
    read_for(Shape::of(model), path)
}

/// [`read`] for a model known only by its [`Shape`] (llama.cpp's engine, which loads the
/// model itself).
pub fn read_for(shape: Shape<'_>, path: &Path) -> Result<ControlVector, SteerError> {
    let invalid = |message: String| SteerError::Invalid {
        path: path.to_path_buf(),
        message,
    };
    let g = Gguf::open(path)?;
    if g.architecture() != Some("controlvector") {
        return Err(invalid(format!(
            "not a control vector (general.architecture is `{}`, not `controlvector`)",
            g.architecture().unwrap_or("missing")
        )));
    }
    let (e, layers) = (shape.embedding, shape.layers);
    let mut directions: Vec<Option<Vec<f32>>> = vec![None; layers];
    for t in &g.tensors {
        let layer: usize = t
            .name
            .strip_prefix("direction.")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| invalid(format!("tensor `{}` is not a `direction.N`", t.name)))?;
        if layer == 0 || layer >= layers {
            return Err(invalid(format!(
                "`{}`: this model's steerable blocks are 1..{} (it has {layers} layers; block 0 \
                 is never steered) — a vector for another model?",
                t.name,
                layers - 1
            )));
        }
        if t.elements() != e as u64 {
            return Err(invalid(format!(
                "`{}` has {} values; this model's hidden state is {e} wide (a vector for \
                 another model?)",
                t.name,
                t.elements()
            )));
        }
        let mut d = vec![0.0; e];
        dequantize_row(t.kind, g.data(t), &mut d)
            .map_err(|err| invalid(format!("`{}`: {err}", t.name)))?;
        if d.iter().any(|x| !x.is_finite()) {
            return Err(invalid(format!("`{}` holds non-finite values", t.name)));
        }
        // llama.cpp sums the directions a file repeats for a layer.
        match &mut directions[layer] {
            Some(sum) => sum.iter_mut().zip(&d).for_each(|(s, x)| *s += x),
            slot => *slot = Some(d),
        }
    }
    let hint = g.get("controlvector.model_hint").and_then(Value::as_str);
    let arch = shape.architecture;
    if hint.is_some_and(|h| h != arch) {
        tracing::warn!(
            vector = %path.display(),
            hint = hint.unwrap_or_default(),
            arch,
            "the control vector names another architecture (its shapes fit this model)"
        );
    }
    let vector = ControlVector { directions };
    if vector.layers().is_empty() {
        return Err(invalid("no `direction.N` tensors".into()));
    }
    Ok(vector)
}

/// `FILE[:SCALE]` as a path and a scale (1 without one). A path that itself holds a colon keeps
/// it where the part after the last colon is not a number.
pub fn parse_scaled(arg: &str) -> (PathBuf, f32) {
    match arg.rsplit_once(':') {
        Some((path, scale)) if !path.is_empty() => match scale.parse::<f32>() {
            Ok(s) if s.is_finite() => (PathBuf::from(path), s),
            _ => (PathBuf::from(arg), 1.0),
        },
        _ => (PathBuf::from(arg), 1.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaling_and_ranges_keep_the_layers_apart() {
        let v = ControlVector {
            directions: vec![None, Some(vec![1.0, -2.0]), None, Some(vec![0.5, 0.5])],
        };
        assert_eq!(v.layers(), vec![1, 3]);
        assert_eq!(v.scaled(-2.0).at(1), Some(&[-2.0, 4.0][..]));
        assert_eq!(v.within(2, 3).layers(), vec![3]);
        assert_eq!(v.at(7), None);
        let (data, first, last) = v.llama_layout(2).unwrap();
        assert_eq!((first, last), (1, 3));
        assert_eq!(data, vec![1.0, -2.0, 0.0, 0.0, 0.5, 0.5]);
        assert_eq!(ControlVector::default().llama_layout(2), None);
        assert_eq!(parse_scaled("v.gguf:0.5"), (PathBuf::from("v.gguf"), 0.5));
        assert_eq!(parse_scaled("v.gguf:-4"), (PathBuf::from("v.gguf"), -4.0));
        assert_eq!(parse_scaled("v.gguf"), (PathBuf::from("v.gguf"), 1.0));
        assert_eq!(parse_scaled("c:/x.gguf"), (PathBuf::from("c:/x.gguf"), 1.0));
    }
}
