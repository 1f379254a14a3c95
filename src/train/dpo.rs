//! Preference losses on sequence log-probabilities: DPO with soft labels (cDPO: the label from
//! `tenets label` as the target probability), IPO and hinge. The reference model is the base
//! without the adapter; its log-probs come in precomputed. Each loss returns its value and its
//! gradient with respect to the policy's two log-probs — all the backward pass needs from it.
//!
//! With `m = (π_c − r_c) − (π_r − r_r)` (policy minus reference, chosen minus rejected) and the
//! label `ℓ = p(chosen ≻ rejected)`:
//! - DPO: `−ℓ·log σ(βm) − (1−ℓ)·log σ(−βm)`; exactly ln 2 while the policy is the reference.
//! - IPO: `(m − (2ℓ−1)/(2β))²` (ℓ = 1 gives IPO's `(m − 1/(2β))²`).
//! - hinge: `ℓ·max(0, 1 − βm) + (1−ℓ)·max(0, 1 + βm)`.
//!
//! [`super::trainer`] runs pairs through the model and turns these gradients into every adapter
//! factor's.

/// Which preference loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Objective {
    Dpo,
    Ipo,
    Hinge,
}

/// Summed log-probabilities of one pair's response tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PairLogps {
    pub policy_chosen: f64,
    pub policy_rejected: f64,
    pub reference_chosen: f64,
    pub reference_rejected: f64,
}

/// A pair's loss, its gradient and the usual metrics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PairLoss {
    pub loss: f64,
    /// ∂loss/∂policy_chosen and ∂loss/∂policy_rejected.
    pub d_chosen: f64,
    pub d_rejected: f64,
    /// β·(π − r) for each answer: DPO's implicit rewards.
    pub reward_chosen: f64,
    pub reward_rejected: f64,
}

impl PairLoss {
    pub fn margin(&self) -> f64 {
        self.reward_chosen - self.reward_rejected
    }
}

/// `log σ(x)` without overflow (and exactly −ln 2 at 0).
pub(crate) fn log_sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        -(1.0 + (-x).exp()).ln()
    } else {
        x - (1.0 + x.exp()).ln()
    }
}

pub(crate) fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// The loss of one pair with label `label` (in [0, 1]) and strength `beta`.
pub fn pair_loss(objective: Objective, beta: f64, label: f64, logps: PairLogps) -> PairLoss {
    let chosen = logps.policy_chosen - logps.reference_chosen;
    let rejected = logps.policy_rejected - logps.reference_rejected;
    let m = chosen - rejected;
    // ∂loss/∂m; ∂m/∂π_c = 1, ∂m/∂π_r = −1.
    let (loss, dm) = match objective {
        Objective::Dpo => {
            let h = beta * m;
            // −ℓ·log σ(h) − (1−ℓ)·log σ(−h), using log σ(h) − log σ(−h) = h: stable, and
            // exactly ln 2 at h = 0 whatever the label.
            let loss = -log_sigmoid(-h) - label * h;
            (loss, beta * (sigmoid(h) - label))
        }
        Objective::Ipo => {
            let target = (2.0 * label - 1.0) / (2.0 * beta);
            ((m - target).powi(2), 2.0 * (m - target))
        }
        Objective::Hinge => {
            let (up, down) = (1.0 - beta * m, 1.0 + beta * m);
            let loss = label * up.max(0.0) + (1.0 - label) * down.max(0.0);
            let dm = -beta * label * f64::from(u8::from(up > 0.0))
                + beta * (1.0 - label) * f64::from(u8::from(down > 0.0));
            (loss, dm)
        }
    };
    PairLoss {
        loss,
        d_chosen: dm,
        d_rejected: -dm,
        reward_chosen: beta * chosen,
        reward_rejected: beta * rejected,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logps(pc: f64, pr: f64) -> PairLogps {
        PairLogps {
            policy_chosen: pc,
            policy_rejected: pr,
            reference_chosen: -12.0,
            reference_rejected: -15.0,
        }
    }

    #[test]
    fn dpo_starts_at_ln_2_whatever_the_label() {
        for label in [1.0, 0.8, 0.5, 0.0] {
            let l = pair_loss(Objective::Dpo, 0.1, label, logps(-12.0, -15.0));
            assert_eq!(l.loss, std::f64::consts::LN_2);
            assert_eq!(l.margin(), 0.0);
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        for objective in [Objective::Dpo, Objective::Ipo, Objective::Hinge] {
            for label in [1.0, 0.7, 0.3] {
                for (pc, pr) in [(-11.0, -16.0), (-13.0, -14.0), (-12.5, -15.2)] {
                    // β = 0.3 keeps these points off the hinge's kinks.
                    let l = pair_loss(objective, 0.3, label, logps(pc, pr));
                    let h = 1e-6;
                    let f = |pc, pr| pair_loss(objective, 0.3, label, logps(pc, pr)).loss;
                    let dc = (f(pc + h, pr) - f(pc - h, pr)) / (2.0 * h);
                    let dr = (f(pc, pr + h) - f(pc, pr - h)) / (2.0 * h);
                    assert!(
                        (l.d_chosen - dc).abs() < 1e-6,
                        "{objective:?} {label}: {} vs {dc}",
                        l.d_chosen
                    );
                    assert!((l.d_rejected - dr).abs() < 1e-6, "{objective:?} {label}");
                }
            }
        }
    }

    #[test]
    fn a_label_of_one_half_wants_no_preference() {
        let l = pair_loss(Objective::Dpo, 0.1, 0.5, logps(-12.0, -15.0));
        assert_eq!((l.d_chosen, l.d_rejected), (0.0, 0.0));
        let l = pair_loss(Objective::Dpo, 0.1, 1.0, logps(-12.0, -15.0));
        assert!(
            l.d_chosen < 0.0 && l.d_rejected > 0.0,
            "raise chosen, lower rejected"
        );
        let ipo = pair_loss(Objective::Ipo, 0.5, 0.5, logps(-12.0, -15.0));
        assert_eq!(ipo.loss, 0.0);
    }

    #[test]
    fn extreme_margins_stay_finite() {
        let l = pair_loss(Objective::Dpo, 1.0, 1.0, logps(-1000.0, 1000.0));
        assert!(l.loss.is_finite() && l.loss > 1000.0);
        let l = pair_loss(Objective::Dpo, 1.0, 1.0, logps(1000.0, -1000.0));
        assert!(l.loss.is_finite() && l.loss >= 0.0);
    }
}
