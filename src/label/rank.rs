//! The ranking pass of the `sampled` strategy (RL-CAI): a prompt's sampled answers ordered by
//! the judge's pairwise labels.
//!
//! Every two samples of a prompt are a candidate pair, labeled like any other (both orders, k
//! questions). A sample's score is its mean probability of beating each of the others (a Borda
//! count on soft labels: robust to one odd judgment, needs no fitting). The best sample is the
//! highest score, the worst the lowest; ties go to the earlier sample for best and the later for
//! worst, so the two differ whenever there are two samples.

/// A prompt's samples, scored.
#[derive(Debug, Clone, PartialEq)]
pub struct Ranking {
    /// Per sample: mean p(this sample ≻ another).
    pub scores: Vec<f64>,
    pub best: usize,
    pub worst: usize,
}

/// Ranks `samples` answers from `judged` pairs `(i, j, p(i ≻ j))`. `None` unless every pair of
/// samples is judged exactly once (a ranking from part of the comparisons would favour the
/// samples judged so far) or a sample index is out of range.
pub fn rank(samples: usize, judged: &[(usize, usize, f64)]) -> Option<Ranking> {
    if samples < 2 || judged.len() != samples * (samples - 1) / 2 {
        return None;
    }
    let mut seen = vec![vec![false; samples]; samples];
    let mut wins = vec![0.0; samples];
    for &(i, j, p) in judged {
        if i >= samples || j >= samples || i == j || seen[i][j] || !p.is_finite() {
            return None;
        }
        seen[i][j] = true;
        seen[j][i] = true;
        wins[i] += p;
        wins[j] += 1.0 - p;
    }
    let scores: Vec<f64> = wins.iter().map(|w| w / (samples - 1) as f64).collect();
    let mut best = 0;
    let mut worst = samples - 1;
    for (k, &s) in scores.iter().enumerate() {
        if s > scores[best] {
            best = k;
        }
    }
    for (k, &s) in scores.iter().enumerate().rev() {
        if s < scores[worst] {
            worst = k;
        }
    }
    Some(Ranking {
        scores,
        best,
        worst,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clear_order_is_found() {
        // 2 ≻ 0 ≻ 1, with soft labels.
        let judged = [(0, 1, 0.8), (0, 2, 0.3), (1, 2, 0.1)];
        let r = rank(3, &judged).unwrap();
        assert_eq!((r.best, r.worst), (2, 1));
        assert!((r.scores[0] - 0.55).abs() < 1e-12);
        assert!((r.scores[1] - 0.15).abs() < 1e-12);
        assert!((r.scores[2] - 0.8).abs() < 1e-12);
        // Scores of a full round robin average to 0.5.
        let mean: f64 = r.scores.iter().sum::<f64>() / 3.0;
        assert!((mean - 0.5).abs() < 1e-12);
    }

    #[test]
    fn ties_keep_best_and_worst_apart() {
        let r = rank(2, &[(0, 1, 0.5)]).unwrap();
        assert_eq!((r.best, r.worst), (0, 1));
        let r = rank(3, &[(0, 1, 0.5), (0, 2, 0.5), (1, 2, 0.5)]).unwrap();
        assert_eq!((r.best, r.worst), (0, 2));
    }

    #[test]
    fn a_partial_or_malformed_round_robin_is_not_ranked() {
        assert_eq!(rank(3, &[(0, 1, 0.9), (0, 2, 0.9)]), None);
        assert_eq!(rank(2, &[(0, 1, 0.9), (1, 0, 0.2)]), None);
        assert_eq!(rank(3, &[(0, 1, 0.9), (0, 1, 0.9), (1, 2, 0.5)]), None);
        assert_eq!(rank(2, &[(0, 2, 0.9)]), None);
        assert_eq!(rank(2, &[(0, 1, f64::NAN)]), None);
        assert_eq!(rank(1, &[]), None);
    }
}
