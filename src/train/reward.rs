//! The reward model's own parts (RLHF's stage 2, RL-CAI's preference model): a linear head on
//! the final hidden state of an answer's last token, and the Bradley–Terry loss on a pair's two
//! rewards with the soft label from `tenets label`. The body is the frozen base with LoRA, run
//! by [`crate::model::Model::forward_hidden_traced`]; this file is the arithmetic on top, each
//! forward beside its backward.
//!
//! With rewards `r_c`, `r_r` and the label `ℓ = p(chosen ≻ rejected)`:
//! `loss = −ℓ·log σ(r_c − r_r) − (1−ℓ)·log σ(r_r − r_c)`, whose gradient with respect to `r_c`
//! is `σ(r_c − r_r) − ℓ` (and its negative for `r_r`).
//!
//! The file a trained reward model lives in is tenets' adapter GGUF with the head as one more
//! tensor, [`HEAD_TENSOR`], and `tenets.reward.*` metadata saying so ([`write`], [`read`]).
//! llama.cpp does not load it (its adapter loader refuses a tensor it does not know, and the
//! adapters alone are no policy): tenets refuses it by name wherever an adapter is expected.

use std::path::{Path, PathBuf};

use crate::gguf::{Gguf, GgufError, Value};
use crate::model::adapter_gguf::{self, AdapterError};
use crate::model::{Adapters, Model};
use crate::quant::{dequantize_row, QuantType};

/// The head's tensor: `[embedding, 1]` in ggml's order, f32 (transformers' `score.weight` is
/// `[1, embedding]`).
pub const HEAD_TENSOR: &str = "score.weight";

/// The metadata key that makes an adapter file a reward model: it names the head's tensor.
pub const HEAD_KEY: &str = adapter_gguf::REWARD_HEAD_KEY;

/// A trained reward model: the adapters on the frozen base and the head on top.
#[derive(Debug, Clone)]
pub struct RewardModel {
    pub adapters: Adapters,
    pub head: ScalarHead,
    /// What training measured, as the file records it.
    pub facts: RewardFacts,
}

/// What a reward model's file records about its training, beside the weights.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct RewardFacts {
    /// `general.name` of the base it was trained on, where the base has one.
    pub base_name: Option<String>,
    /// Pairs trained on, and held out.
    pub train_pairs: u64,
    pub held_out_pairs: u64,
    /// On the held-out pairs: how often the chosen answer scored higher.
    pub held_out_accuracy: Option<f64>,
    /// Mean and standard deviation of the rewards of the training answers (both sides), so a
    /// score can be read against them; unknown when the run skipped its final evaluation.
    pub reward_mean: Option<f64>,
    pub reward_std: Option<f64>,
}

/// Why a reward model file cannot be written or read.
#[derive(Debug, thiserror::Error)]
pub enum RewardFileError {
    #[error(transparent)]
    Adapter(#[from] AdapterError),
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// Writes a reward model for `model`: the adapter GGUF, the head and its facts.
pub fn write(
    model: &Model,
    adapters: &Adapters,
    head: &ScalarHead,
    facts: &RewardFacts,
    path: &Path,
) -> Result<(), RewardFileError> {
    let e = model.config().embedding;
    if head.weight.len() != e {
        return Err(RewardFileError::Invalid {
            path: path.to_path_buf(),
            message: format!("the head is {} wide, the model {e}", head.weight.len()),
        });
    }
    let mut w = adapter_gguf::writer(model, adapters, path)?;
    let put = |w: &mut crate::gguf::writer::GgufWriter, key: &str, value: Value| {
        w.metadata(key, value).map_err(AdapterError::from)
    };
    put(
        &mut w,
        "general.name",
        Value::String("tenets reward model".into()),
    )?;
    put(&mut w, HEAD_KEY, Value::String(HEAD_TENSOR.into()))?;
    if let Some(name) = &facts.base_name {
        put(
            &mut w,
            "tenets.reward.base_name",
            Value::String(name.clone()),
        )?;
    }
    put(
        &mut w,
        "tenets.reward.train_pairs",
        Value::U64(facts.train_pairs),
    )?;
    put(
        &mut w,
        "tenets.reward.held_out_pairs",
        Value::U64(facts.held_out_pairs),
    )?;
    if let Some(a) = facts.held_out_accuracy {
        put(&mut w, "tenets.reward.held_out_accuracy", Value::F64(a))?;
    }
    if let (Some(mean), Some(std)) = (facts.reward_mean, facts.reward_std) {
        put(&mut w, "tenets.reward.mean", Value::F64(mean))?;
        put(&mut w, "tenets.reward.std", Value::F64(std))?;
    }
    let bytes = head.weight.iter().flat_map(|v| v.to_le_bytes()).collect();
    w.tensor(HEAD_TENSOR, &[e as u64, 1], QuantType::F32, bytes)
        .map_err(AdapterError::from)?;
    w.write(path).map_err(AdapterError::from)?;
    Ok(())
}

/// Reads a reward model written by [`write`] for `model`. A plain adapter (no head), a head of
/// the wrong width or a file for another model's shapes is an error that says which.
pub fn read(model: &Model, path: &Path) -> Result<RewardModel, RewardFileError> {
    let invalid = |message: String| RewardFileError::Invalid {
        path: path.to_path_buf(),
        message,
    };
    let g = Gguf::open(path)?;
    let head_name = match g.get(HEAD_KEY).and_then(Value::as_str) {
        Some(name) => name.to_string(),
        None => {
            return Err(invalid(format!(
                "not a reward model (no `{HEAD_KEY}`): a plain adapter scores nothing; train one \
                 with `tenets reward train`"
            )))
        }
    };
    let t = g
        .tensor(&head_name)
        .ok_or_else(|| invalid(format!("the head tensor `{head_name}` is missing")))?;
    let e = model.config().embedding;
    if t.elements() != e as u64 {
        return Err(invalid(format!(
            "the head `{head_name}` has {} values; this model's hidden state is {e} wide (a \
             reward model for another base?)",
            t.elements()
        )));
    }
    let mut weight = vec![0.0; e];
    dequantize_row(t.kind, g.data(t), &mut weight)
        .map_err(|err| invalid(format!("tensor `{head_name}`: {err}")))?;
    if weight.iter().any(|w| !w.is_finite()) {
        return Err(invalid(format!(
            "the head `{head_name}` holds non-finite values"
        )));
    }
    let adapters = adapter_gguf::read_from(model, &g, path, &[head_name.as_str()])?;
    let f64_of = |key: &str| g.get(key).and_then(Value::as_f64);
    let u64_of = |key: &str| g.get(key).and_then(Value::as_u64).unwrap_or(0);
    let facts = RewardFacts {
        base_name: g
            .get("tenets.reward.base_name")
            .and_then(Value::as_str)
            .map(str::to_string),
        train_pairs: u64_of("tenets.reward.train_pairs"),
        held_out_pairs: u64_of("tenets.reward.held_out_pairs"),
        held_out_accuracy: f64_of("tenets.reward.held_out_accuracy"),
        reward_mean: f64_of("tenets.reward.mean"),
        reward_std: f64_of("tenets.reward.std"),
    };
    let base = model.gguf().get("general.name").and_then(Value::as_str);
    if let (Some(trained), Some(base)) = (&facts.base_name, base) {
        if trained != base {
            tracing::warn!(
                reward_model = %path.display(),
                trained_on = %trained,
                base = %base,
                "the reward model was trained on a base of another name (the shapes fit)"
            );
        }
    }
    Ok(RewardModel {
        adapters,
        head: ScalarHead { weight },
        facts,
    })
}

/// `r = w · h` on a hidden state `h` (the final norm's output, `embedding` wide). No bias, as
/// transformers' `score` head has none: the Bradley–Terry loss sees only reward differences, so a
/// bias would never get a gradient.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalarHead {
    pub weight: Vec<f32>,
}

/// The head's gradient, `∂loss/∂w`.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalarHeadGrads {
    pub weight: Vec<f32>,
}

impl ScalarHead {
    /// A head of zeros (every answer scores 0 until trained — the loss starts at ln 2, as DPO's
    /// does), `embedding` wide.
    pub fn zeros(embedding: usize) -> Self {
        ScalarHead {
            weight: vec![0.0; embedding],
        }
    }

    /// The reward of one hidden state, summed in f64.
    pub fn forward(&self, hidden: &[f32]) -> f64 {
        self.weight
            .iter()
            .zip(hidden)
            .map(|(&w, &h)| f64::from(w) * f64::from(h))
            .sum()
    }

    /// Given `d = ∂loss/∂r` for the reward of `hidden`: adds the head's gradient into `grads`
    /// and returns `∂loss/∂hidden` (`d · w`), which goes on down through the body.
    pub fn backward(&self, hidden: &[f32], d: f64, grads: &mut ScalarHeadGrads) -> Vec<f32> {
        let d32 = d as f32;
        grads
            .weight
            .iter_mut()
            .zip(hidden)
            .for_each(|(g, &h)| *g += d32 * h);
        self.weight.iter().map(|&w| d32 * w).collect()
    }

    pub fn zero_grads(&self) -> ScalarHeadGrads {
        ScalarHeadGrads {
            weight: vec![0.0; self.weight.len()],
        }
    }
}

/// One pair's Bradley–Terry loss and its gradient with respect to the two rewards.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PairReward {
    pub loss: f64,
    /// ∂loss/∂r_chosen; ∂loss/∂r_rejected is its negative.
    pub d_chosen: f64,
    /// σ(r_c − r_r): the model's probability that the chosen answer is the better one.
    pub p_chosen: f64,
}

/// [`PairReward`] of rewards `chosen`, `rejected` under the label `label` (1 = chosen is
/// better for certain, 0.5 = no preference).
pub fn bradley_terry(chosen: f64, rejected: f64, label: f64) -> PairReward {
    let m = chosen - rejected;
    let loss = -label * super::dpo::log_sigmoid(m) - (1.0 - label) * super::dpo::log_sigmoid(-m);
    let p = super::dpo::sigmoid(m);
    PairReward {
        loss,
        d_chosen: p - label,
        p_chosen: p,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bradley_terry_gradient_matches_finite_differences() {
        for &(c, r, label) in &[(0.3, -0.2, 1.0), (-1.5, 2.0, 0.8), (40.0, -40.0, 0.3)] {
            let bt = bradley_terry(c, r, label);
            let eps = 1e-6;
            let dc = (bradley_terry(c + eps, r, label).loss
                - bradley_terry(c - eps, r, label).loss)
                / (2.0 * eps);
            let dr = (bradley_terry(c, r + eps, label).loss
                - bradley_terry(c, r - eps, label).loss)
                / (2.0 * eps);
            assert!(
                (bt.d_chosen - dc).abs() < 1e-6,
                "{c} {r} {label}: {bt:?} vs {dc}"
            );
            assert!((-bt.d_chosen - dr).abs() < 1e-6, "{c} {r} {label}: vs {dr}");
            assert!(bt.loss.is_finite());
        }
        // Equal rewards: ln 2 whatever the label.
        assert!((bradley_terry(0.7, 0.7, 0.9).loss - std::f64::consts::LN_2).abs() < 1e-12);
    }

    #[test]
    fn head_backward_matches_finite_differences() {
        let e = 6;
        let hidden: Vec<f32> = (0..e).map(|i| 0.3 * i as f32 - 0.7).collect();
        let other: Vec<f32> = (0..e).map(|i| 0.5 - 0.2 * i as f32).collect();
        let head = ScalarHead {
            weight: (0..e).map(|i| 0.1 * i as f32 - 0.2).collect(),
        };
        let label = 0.9;
        let loss = |head: &ScalarHead, h: &[f32]| {
            bradley_terry(head.forward(h), head.forward(&other), label).loss
        };
        let bt = bradley_terry(head.forward(&hidden), head.forward(&other), label);
        let mut grads = head.zero_grads();
        let dh = head.backward(&hidden, bt.d_chosen, &mut grads);
        head.backward(&other, -bt.d_chosen, &mut grads);
        let eps = 1e-3f32;
        let close = |a: f32, b: f64, what: &str| {
            assert!((f64::from(a) - b).abs() < 1e-4, "{what}: {a} vs {b}");
        };
        for i in 0..e {
            let (mut up, mut down) = (head.clone(), head.clone());
            up.weight[i] += eps;
            down.weight[i] -= eps;
            let fd = (loss(&up, &hidden) - loss(&down, &hidden)) / (2.0 * f64::from(eps));
            close(grads.weight[i], fd, "weight");
            let (mut hu, mut hd) = (hidden.clone(), hidden.clone());
            hu[i] += eps;
            hd[i] -= eps;
            let fd = (loss(&head, &hu) - loss(&head, &hd)) / (2.0 * f64::from(eps));
            close(dh[i], fd, "hidden");
        }
    }
}
