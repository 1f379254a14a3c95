//! The optimiser and its schedule: AdamW (decoupled weight decay, bias-corrected moments), a
//! learning rate that warms up linearly and then follows a cosine towards a floor, and clipping
//! of the global gradient norm.

/// AdamW settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamW {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamW {
    fn default() -> Self {
        AdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// Moments for one parameter tensor (kept with a checkpoint so a resumed run continues exactly).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Moments {
    pub m: Vec<f32>,
    pub v: Vec<f32>,
}

impl AdamW {
    /// One update of `params` from `grads` at step `step` (1-based) with learning rate `lr`.
    pub fn step(
        &self,
        params: &mut [f32],
        grads: &[f32],
        moments: &mut Moments,
        step: u64,
        lr: f64,
    ) {
        if moments.m.len() != params.len() {
            moments.m = vec![0.0; params.len()];
            moments.v = vec![0.0; params.len()];
        }
        let (b1, b2) = (self.beta1, self.beta2);
        let c1 = 1.0 - b1.powi(step as i32);
        let c2 = 1.0 - b2.powi(step as i32);
        for (((p, &g), m), v) in params
            .iter_mut()
            .zip(grads)
            .zip(moments.m.iter_mut())
            .zip(moments.v.iter_mut())
        {
            let g = f64::from(g);
            let mn = b1 * f64::from(*m) + (1.0 - b1) * g;
            let vn = b2 * f64::from(*v) + (1.0 - b2) * g * g;
            *m = mn as f32;
            *v = vn as f32;
            let update =
                (mn / c1) / ((vn / c2).sqrt() + self.eps) + self.weight_decay * f64::from(*p);
            *p = (f64::from(*p) - lr * update) as f32;
        }
    }
}

/// Linear warmup over `warmup` steps to `peak`, then a cosine from `peak` towards `floor`,
/// which it would reach one step after `total`: as in Hugging Face's cosine schedule (whose step
/// counter starts at 0), every step of a run — the last included, and the only one of a
/// one-step run — gets a learning rate above the floor, so no step is wasted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    pub peak: f64,
    pub floor: f64,
    pub warmup: u64,
    pub total: u64,
}

impl Schedule {
    /// The learning rate of step `step` (1-based).
    pub fn lr(&self, step: u64) -> f64 {
        if self.warmup > 0 && step <= self.warmup {
            return self.peak * step as f64 / self.warmup as f64;
        }
        // Steps after the warmup, counted from 0: the first of them runs at the peak.
        let span = self.total.saturating_sub(self.warmup).max(1) as f64;
        let done = (step.saturating_sub(self.warmup + 1) as f64 / span).min(1.0);
        self.floor + 0.5 * (self.peak - self.floor) * (1.0 + (std::f64::consts::PI * done).cos())
    }
}

/// The L2 norm of all gradients together (NaN if any is NaN, infinite if any is infinite).
pub fn global_norm(grads: &[&mut [f32]]) -> f64 {
    grads
        .iter()
        .flat_map(|g| g.iter())
        .map(|&v| f64::from(v) * f64::from(v))
        .sum::<f64>()
        .sqrt()
}

/// Scales every gradient so their global L2 norm is at most `max_norm`; returns the norm before.
pub fn clip_global_norm(grads: &mut [&mut [f32]], max_norm: f64) -> f64 {
    let norm = global_norm(grads);
    if norm > max_norm && norm > 0.0 {
        let k = (max_norm / norm) as f32;
        grads
            .iter_mut()
            .for_each(|g| g.iter_mut().for_each(|v| *v *= k));
    }
    norm
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_adam_step_moves_each_weight_by_lr_against_its_gradient() {
        let mut p = vec![1.0f32, -2.0, 0.5];
        let mut moments = Moments::default();
        AdamW::default().step(&mut p, &[0.3, -4.0, 0.0], &mut moments, 1, 0.01);
        assert!((p[0] - 0.99).abs() < 1e-6 && (p[1] + 1.99).abs() < 1e-6 && p[2] == 0.5);
    }

    #[test]
    fn adamw_minimises_a_quadratic_and_decays_weights() {
        let mut p = vec![5.0f32, -3.0];
        let mut moments = Moments::default();
        let adam = AdamW::default();
        for step in 1..=500 {
            let g: Vec<f32> = p.iter().map(|&x| 2.0 * (x - 1.0)).collect();
            adam.step(&mut p, &g, &mut moments, step, 0.05);
        }
        assert!(p.iter().all(|&x| (x - 1.0).abs() < 1e-2), "{p:?}");
        let decaying = AdamW {
            weight_decay: 0.1,
            ..AdamW::default()
        };
        let mut w = vec![1.0f32];
        decaying.step(&mut w, &[0.0], &mut Moments::default(), 1, 0.1);
        assert!((w[0] - 0.99).abs() < 1e-6);
    }

    #[test]
    fn warmup_then_cosine() {
        let s = Schedule {
            peak: 1e-4,
            floor: 1e-5,
            warmup: 10,
            total: 110,
        };
        assert!((s.lr(1) - 1e-5).abs() < 1e-12);
        assert!((s.lr(10) - 1e-4).abs() < 1e-12);
        assert!((s.lr(11) - 1e-4).abs() < 1e-12);
        assert!((s.lr(61) - 5.5e-5).abs() < 1e-12);
        // The last step still learns; only past the end is the floor reached.
        assert!(s.lr(110) > 1e-5 + 1e-9);
        assert!((s.lr(111) - 1e-5).abs() < 1e-12);
        assert!((s.lr(500) - 1e-5).abs() < 1e-12);
    }

    #[test]
    fn every_step_of_a_run_has_a_learning_rate_above_the_floor() {
        for total in 1..=40u64 {
            // The trainer's default warmup (a tenth of the run), none, and a warmup as long as
            // the run.
            for warmup in [total / 10, 0, total] {
                let s = Schedule {
                    peak: 2e-4,
                    floor: 0.0,
                    warmup,
                    total,
                };
                for step in 1..=total {
                    let lr = s.lr(step);
                    assert!(
                        lr > 0.0 && lr <= 2e-4 * (1.0 + 1e-12),
                        "total {total}, warmup {warmup}: step {step} has lr {lr}"
                    );
                }
            }
        }
        let one = Schedule {
            peak: 2e-4,
            floor: 0.0,
            warmup: 0,
            total: 1,
        };
        assert_eq!(one.lr(1), 2e-4);
    }

    #[test]
    fn clipping_scales_to_the_norm() {
        let (mut a, mut b) = (vec![3.0f32], vec![4.0f32]);
        let norm = clip_global_norm(&mut [&mut a, &mut b], 1.0);
        assert_eq!(norm, 5.0);
        assert!((a[0] - 0.6).abs() < 1e-6 && (b[0] - 0.8).abs() < 1e-6);
        let mut c = vec![0.1f32];
        assert!((clip_global_norm(&mut [&mut c], 1.0) - 0.1).abs() < 1e-7);
        assert_eq!(c[0], 0.1);
    }
}
