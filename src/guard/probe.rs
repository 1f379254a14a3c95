//! A linear probe: logistic regression on a frozen model's hidden states, fitted to texts the
//! constitution's prompt sets already tag (`kind: harmful | benign`). It trains nothing inside
//! the model and costs one forward per text, and the hidden state of even the 135M default
//! model separates harmful requests from their benign look-alikes far better than its answers
//! do: in a first measurement (SmolLM2-135M, the mean final hidden state over a chat-framed
//! prompt, fitted on `safety-train`'s 239 prompts) the held-out sets scored AUROC 0.95, and 0.89
//! with each topic left out of the fit in turn — where the 135M judge reading the same texts is
//! at chance. Features are standardized with the fit's own mean and spread, kept in the probe.

/// Why a probe could not be fitted.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ProbeError {
    #[error("no examples to fit a probe on")]
    Empty,
    #[error("example {index} has {got} features, the first has {expected}")]
    Ragged {
        index: usize,
        got: usize,
        expected: usize,
    },
    #[error("every example is labelled {label}: a probe needs both kinds")]
    OneClass { label: bool },
    #[error("{what} must be positive and finite, not {value}")]
    Setting { what: &'static str, value: f64 },
}

/// How a probe is fitted: full-batch gradient descent on the mean logistic loss plus
/// `l2 / 2 · |w|²` (the bias unpenalized).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FitSettings {
    pub l2: f64,
    pub steps: usize,
    pub learning_rate: f64,
}

impl Default for FitSettings {
    /// What the first measurement used: on standardized features the loss is smooth enough for a
    /// fixed rate, and `l2 = 0.1` kept held-out accuracy highest among 1e-3, 1e-2 and 1e-1.
    fn default() -> Self {
        FitSettings {
            l2: 0.1,
            steps: 400,
            learning_rate: 0.1,
        }
    }
}

/// `p(unsafe | x) = σ(w · (x − mean) / scale + b)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    pub mean: Vec<f64>,
    pub scale: Vec<f64>,
    pub weight: Vec<f64>,
    pub bias: f64,
}

impl Probe {
    /// Fits a probe to `features` (one row per text) and `labels` (true: the kind to detect).
    pub fn fit(
        features: &[Vec<f32>],
        labels: &[bool],
        settings: FitSettings,
    ) -> Result<Probe, ProbeError> {
        for (what, value) in [
            ("l2", settings.l2),
            ("learning_rate", settings.learning_rate),
        ] {
            // An l2 of 0 is allowed: no penalty.
            let bad =
                !value.is_finite() || value < 0.0 || (what == "learning_rate" && value == 0.0);
            if bad {
                return Err(ProbeError::Setting { what, value });
            }
        }
        let first = features.first().ok_or(ProbeError::Empty)?;
        let d = first.len();
        if let Some((index, row)) = features.iter().enumerate().find(|(_, r)| r.len() != d) {
            return Err(ProbeError::Ragged {
                index,
                got: row.len(),
                expected: d,
            });
        }
        if labels.len() != features.len() || labels.iter().all(|&l| l == labels[0]) {
            return Err(ProbeError::OneClass {
                label: labels.first().copied().unwrap_or(false),
            });
        }
        let n = features.len() as f64;
        let mean: Vec<f64> = (0..d)
            .map(|j| features.iter().map(|r| f64::from(r[j])).sum::<f64>() / n)
            .collect();
        let scale: Vec<f64> = (0..d)
            .map(|j| {
                let var = features
                    .iter()
                    .map(|r| (f64::from(r[j]) - mean[j]).powi(2))
                    .sum::<f64>()
                    / n;
                // A constant feature carries nothing: scale 1 keeps it at 0.
                if var > 1e-12 {
                    var.sqrt()
                } else {
                    1.0
                }
            })
            .collect();
        let mut probe = Probe {
            mean,
            scale,
            weight: vec![0.0; d],
            bias: 0.0,
        };
        let z: Vec<Vec<f64>> = features.iter().map(|r| probe.standardize(r)).collect();
        for _ in 0..settings.steps {
            let (gw, gb) = probe.loss_gradient(&z, labels, settings.l2);
            probe
                .weight
                .iter_mut()
                .zip(&gw)
                .for_each(|(w, g)| *w -= settings.learning_rate * g);
            probe.bias -= settings.learning_rate * gb;
        }
        Ok(probe)
    }

    fn standardize(&self, x: &[f32]) -> Vec<f64> {
        x.iter()
            .zip(self.mean.iter().zip(&self.scale))
            .map(|(&v, (m, s))| (f64::from(v) - m) / s)
            .collect()
    }

    fn logit_standardized(&self, z: &[f64]) -> f64 {
        z.iter().zip(&self.weight).map(|(a, w)| a * w).sum::<f64>() + self.bias
    }

    /// The gradient of the fit's objective at the current weights, on standardized rows.
    fn loss_gradient(&self, z: &[Vec<f64>], labels: &[bool], l2: f64) -> (Vec<f64>, f64) {
        let n = z.len() as f64;
        let mut gw: Vec<f64> = self.weight.iter().map(|w| l2 * w).collect();
        let mut gb = 0.0;
        for (row, &label) in z.iter().zip(labels) {
            let p = sigmoid(self.logit_standardized(row));
            let d = (p - f64::from(u8::from(label))) / n;
            gw.iter_mut().zip(row).for_each(|(g, v)| *g += d * v);
            gb += d;
        }
        (gw, gb)
    }

    /// The log-odds that `x` is of the detected kind.
    pub fn logit(&self, x: &[f32]) -> f64 {
        self.logit_standardized(&self.standardize(x))
    }

    /// The probability that `x` is of the detected kind.
    pub fn probability(&self, x: &[f32]) -> f64 {
        sigmoid(self.logit(x))
    }
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// The area under the ROC curve of `scores` (score, is it the detected kind): the probability
/// that a random positive scores above a random negative, ties counting half. `None` without
/// both kinds.
pub fn auroc(scores: &[(f64, bool)]) -> Option<f64> {
    let positives = scores.iter().filter(|s| s.1).count();
    let negatives = scores.len() - positives;
    if positives == 0 || negatives == 0 {
        return None;
    }
    // Mann–Whitney U from ranks, tied scores sharing their mean rank.
    let mut sorted: Vec<(f64, bool)> = scores.to_vec();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < sorted.len() {
        let mut j = i;
        while j < sorted.len() && sorted[j].0 == sorted[i].0 {
            j += 1;
        }
        let mean_rank = (i + 1 + j) as f64 / 2.0;
        rank_sum += mean_rank * sorted[i..j].iter().filter(|s| s.1).count() as f64;
        i = j;
    }
    let (p, n) = (positives as f64, negatives as f64);
    Some((rank_sum - p * (p + 1.0) / 2.0) / (p * n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Two clouds apart along one random direction, plus noise in every dimension.
    fn clouds(n: usize, d: usize, gap: f32, seed: u64) -> (Vec<Vec<f32>>, Vec<bool>) {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let direction: Vec<f32> = (0..d).map(|i| if i % 3 == 0 { 1.0 } else { 0.0 }).collect();
        let mut x = Vec::new();
        let mut y = Vec::new();
        for i in 0..n {
            let label = i % 2 == 0;
            let shift = if label { gap } else { -gap };
            x.push(
                (0..d)
                    .map(|j| 5.0 + shift * direction[j] + rng.gen_range(-1.0..1.0))
                    .collect(),
            );
            y.push(label);
        }
        (x, y)
    }

    #[test]
    fn a_probe_separates_what_is_separable_on_texts_it_never_saw() {
        let (x, y) = clouds(80, 12, 0.6, 1);
        let probe = Probe::fit(&x, &y, FitSettings::default()).unwrap();
        let (tx, ty) = clouds(200, 12, 0.6, 2);
        let scores: Vec<(f64, bool)> = tx.iter().map(|r| probe.logit(r)).zip(ty).collect();
        let area = auroc(&scores).unwrap();
        assert!(area > 0.95, "held-out AUROC {area}");
        let p = probe.probability(&tx[0]);
        assert!((0.0..=1.0).contains(&p));
    }

    #[test]
    fn the_fit_reaches_the_objectives_minimum() {
        let (x, y) = clouds(60, 5, 0.3, 3);
        let settings = FitSettings {
            steps: 4000,
            ..FitSettings::default()
        };
        let probe = Probe::fit(&x, &y, settings).unwrap();
        let z: Vec<Vec<f64>> = x.iter().map(|r| probe.standardize(r)).collect();
        let (gw, gb) = probe.loss_gradient(&z, &y, settings.l2);
        let norm = (gw.iter().map(|g| g * g).sum::<f64>() + gb * gb).sqrt();
        assert!(norm < 1e-6, "gradient norm {norm} at the end of the fit");
    }

    #[test]
    fn auroc_counts_ties_half_and_needs_both_kinds() {
        assert_eq!(auroc(&[(1.0, true), (0.0, false)]), Some(1.0));
        assert_eq!(auroc(&[(0.0, true), (1.0, false)]), Some(0.0));
        assert_eq!(auroc(&[(0.5, true), (0.5, false)]), Some(0.5));
        // 3 positives × 2 negatives: wins 2 + 1.5 + 0 = 3.5 of 6.
        let s = [
            (3.0, true),
            (2.0, true),
            (0.0, true),
            (2.0, false),
            (1.0, false),
        ];
        assert_eq!(auroc(&s), Some(3.5 / 6.0));
        assert_eq!(auroc(&[(1.0, true)]), None);
    }

    #[test]
    fn bad_input_is_refused_by_name() {
        let s = FitSettings::default();
        assert_eq!(Probe::fit(&[], &[], s), Err(ProbeError::Empty));
        let ragged = vec![vec![1.0, 2.0], vec![1.0]];
        assert_eq!(
            Probe::fit(&ragged, &[true, false], s),
            Err(ProbeError::Ragged {
                index: 1,
                got: 1,
                expected: 2
            })
        );
        let same = vec![vec![1.0], vec![2.0]];
        assert_eq!(
            Probe::fit(&same, &[true, true], s),
            Err(ProbeError::OneClass { label: true })
        );
        let bad = FitSettings {
            learning_rate: 0.0,
            ..s
        };
        assert!(matches!(
            Probe::fit(&same, &[true, false], bad),
            Err(ProbeError::Setting {
                what: "learning_rate",
                ..
            })
        ));
    }
}
