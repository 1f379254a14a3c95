//! The reward model's own parts (RLHF's stage 2, RL-CAI's preference model): a linear head on
//! the final hidden state of an answer's last token, and the Bradley–Terry loss on a pair's two
//! rewards with the soft label from `tenets label`. The body is the frozen base with LoRA, run
//! by [`crate::model::Model::forward_hidden_traced`]; this file is the arithmetic on top, each
//! forward beside its backward.
//!
//! With rewards `r_c`, `r_r` and the label `ℓ = p(chosen ≻ rejected)`:
//! `loss = −ℓ·log σ(r_c − r_r) − (1−ℓ)·log σ(r_r − r_c)`, whose gradient with respect to `r_c`
//! is `σ(r_c − r_r) − ℓ` (and its negative for `r_r`).

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
