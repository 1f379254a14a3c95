//! Confidence intervals for evaluation figures: Wilson score intervals for rates (honest at the
//! small counts and rates near 0 or 1 an evaluation set gives), and a seeded percentile bootstrap
//! for the mean of soft preferences.

use rand::{Rng, SeedableRng};

/// z for a two-sided 95% interval.
pub const Z95: f64 = 1.959_963_984_540_054;

/// A share `count / total` with its 95% Wilson interval.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Rate {
    pub count: usize,
    pub total: usize,
    pub rate: f64,
    pub low: f64,
    pub high: f64,
}

impl Rate {
    /// `count` of `total`; an empty set has rate 0 and the interval [0, 1].
    pub fn new(count: usize, total: usize) -> Self {
        let (low, high) = wilson(count, total, Z95);
        Rate {
            count,
            total,
            rate: if total == 0 {
                0.0
            } else {
                count as f64 / total as f64
            },
            low,
            high,
        }
    }

    /// "12.5% [6.1, 23.9] (3/24)".
    pub fn display(&self) -> String {
        if self.total == 0 {
            return "– (0)".into();
        }
        format!(
            "{:.1}% [{:.1}, {:.1}] ({}/{})",
            100.0 * self.rate,
            100.0 * self.low,
            100.0 * self.high,
            self.count,
            self.total
        )
    }
}

/// The Wilson score interval for `count` successes in `total` trials.
pub fn wilson(count: usize, total: usize, z: f64) -> (f64, f64) {
    if total == 0 {
        return (0.0, 1.0);
    }
    let n = total as f64;
    let p = count as f64 / n;
    let z2 = z * z;
    let centre = (p + z2 / (2.0 * n)) / (1.0 + z2 / n);
    let half = z / (1.0 + z2 / n) * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// A mean with its 95% percentile-bootstrap interval.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Mean {
    pub mean: f64,
    pub low: f64,
    pub high: f64,
    pub n: usize,
}

impl Mean {
    /// "0.542 [0.481, 0.603] (n=48)".
    pub fn display(&self) -> String {
        if self.n == 0 {
            return "– (n=0)".into();
        }
        format!(
            "{:.3} [{:.3}, {:.3}] (n={})",
            self.mean, self.low, self.high, self.n
        )
    }
}

/// The mean of `values` and a percentile bootstrap interval from `resamples` draws, seeded so
/// a report is the same every time it is written.
pub fn bootstrap_mean(values: &[f64], resamples: usize, seed: u64) -> Mean {
    let n = values.len();
    if n == 0 {
        return Mean {
            mean: 0.0,
            low: 0.0,
            high: 1.0,
            n: 0,
        };
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut means: Vec<f64> = (0..resamples.max(1))
        .map(|_| (0..n).map(|_| values[rng.gen_range(0..n)]).sum::<f64>() / n as f64)
        .collect();
    means.sort_by(f64::total_cmp);
    let at = |q: f64| means[((q * (means.len() - 1) as f64).round() as usize).min(means.len() - 1)];
    Mean {
        mean,
        low: at(0.025),
        high: at(0.975),
        n,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_matches_known_values() {
        // 3 of 24 (a textbook check, e.g. Newcombe 1998's method 3): [0.0434, 0.3100].
        let (low, high) = wilson(3, 24, Z95);
        assert!(
            (low - 0.0434).abs() < 5e-4 && (high - 0.3100).abs() < 5e-4,
            "{low} {high}"
        );
        // 0 of n has a zero lower bound and a positive upper one; n of n mirrors it.
        let (low0, high0) = wilson(0, 10, Z95);
        assert_eq!(low0, 0.0);
        assert!((high0 - 0.2775).abs() < 5e-4, "{high0}");
        let (low1, high1) = wilson(10, 10, Z95);
        assert!((low1 - (1.0 - high0)).abs() < 1e-9 && (high1 - 1.0).abs() < 1e-9);
        assert_eq!(wilson(0, 0, Z95), (0.0, 1.0));
    }

    #[test]
    fn bootstrap_brackets_the_mean_and_is_seeded() {
        let values: Vec<f64> = (0..40).map(|i| (i % 5) as f64 / 4.0).collect();
        let m = bootstrap_mean(&values, 2000, 7);
        assert!((m.mean - 0.5).abs() < 1e-12);
        assert!(m.low < m.mean && m.mean < m.high, "{m:?}");
        // Roughly mean ± 2 standard errors (sd ≈ 0.354, n = 40 → se ≈ 0.056).
        assert!((m.high - m.low - 4.0 * 0.056).abs() < 0.05, "{m:?}");
        assert_eq!(m, bootstrap_mean(&values, 2000, 7));
        let constant = bootstrap_mean(&[0.7; 5], 100, 1);
        assert_eq!((constant.low, constant.high), (0.7, 0.7));
    }
}
