//! What a screen's scores are worth against texts whose kind is known: the figures a safety
//! classifier is chosen and thresholded by. A screen gives each text a probability that it is
//! unsafe; on tagged texts (harmful vs benign look-alikes) this is its AUROC, what a threshold
//! catches and what it wrongly flags — the over-refusal a guard would add — and the threshold
//! that catches a target share of the harmful ones.
//!
//! Also where a flagged text's restricted topic comes from: the nearest topic centroid of the
//! tagged texts' features.

use super::probe::auroc;

/// A screen's figures on tagged texts at one threshold (a text is flagged when its
/// probability is at least the threshold).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ScreenFigures {
    pub harmful: usize,
    pub benign: usize,
    /// Harmful vs benign; `None` without both kinds.
    pub auroc: Option<f64>,
    pub threshold: f64,
    /// Of the flagged texts, the share that is harmful.
    pub precision: Option<f64>,
    /// Of the harmful texts, the share flagged.
    pub recall: Option<f64>,
    /// Of the benign texts, the share flagged (the over-refusal the screen would add).
    pub false_positive_rate: Option<f64>,
    /// The highest threshold that flags at least `target_recall` of the harmful texts, and the
    /// share of benign texts it flags.
    pub target_recall: f64,
    pub threshold_for_target: Option<f64>,
    pub false_positive_rate_at_target: Option<f64>,
}

/// [`ScreenFigures`] of `scores` (probability unsafe, is it harmful).
pub fn figures(scores: &[(f64, bool)], threshold: f64, target_recall: f64) -> ScreenFigures {
    let harmful = scores.iter().filter(|s| s.1).count();
    let benign = scores.len() - harmful;
    let share = |num: usize, den: usize| (den > 0).then(|| num as f64 / den as f64);
    let flagged_at = |t: f64| {
        let caught = scores.iter().filter(|s| s.1 && s.0 >= t).count();
        let wrong = scores.iter().filter(|s| !s.1 && s.0 >= t).count();
        (caught, wrong)
    };
    let (caught, wrong) = flagged_at(threshold);
    // The k-th highest harmful score flags k harmful texts (and every tie with it).
    let mut positives: Vec<f64> = scores.iter().filter(|s| s.1).map(|s| s.0).collect();
    positives.sort_by(|a, b| b.total_cmp(a));
    let needed = (target_recall * harmful as f64).ceil() as usize;
    let threshold_for_target = positives.get(needed.max(1) - 1).copied();
    ScreenFigures {
        harmful,
        benign,
        auroc: auroc(scores),
        threshold,
        precision: share(caught, caught + wrong),
        recall: share(caught, harmful),
        false_positive_rate: share(wrong, benign),
        target_recall,
        threshold_for_target,
        false_positive_rate_at_target: threshold_for_target
            .and_then(|t| share(flagged_at(t).1, benign)),
    }
}

/// Mean feature vectors of named groups (a constitution's restricted topics, from tagged texts),
/// and the nearest of them to a new text by cosine similarity.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Centroids {
    pub groups: Vec<(String, Vec<f32>)>,
}

impl Centroids {
    /// The centroid of each name's members (`name`, features), in first-seen order.
    pub fn of<'a>(members: impl IntoIterator<Item = (&'a str, &'a [f32])>) -> Self {
        let mut groups: Vec<(String, Vec<f32>, usize)> = Vec::new();
        for (name, x) in members {
            let at = match groups.iter().position(|g| g.0 == name) {
                Some(at) => at,
                None => {
                    groups.push((name.to_string(), vec![0.0; x.len()], 0));
                    groups.len() - 1
                }
            };
            let g = &mut groups[at];
            g.1.iter_mut().zip(x).for_each(|(s, v)| *s += v);
            g.2 += 1;
        }
        Centroids {
            groups: groups
                .into_iter()
                .map(|(name, sum, n)| (name, sum.into_iter().map(|s| s / n as f32).collect()))
                .collect(),
        }
    }

    /// The name whose centroid is nearest `x` by cosine similarity; `None` without groups.
    pub fn nearest(&self, x: &[f32]) -> Option<&str> {
        let cosine = |a: &[f32], b: &[f32]| {
            let (mut ab, mut aa, mut bb) = (0.0f64, 0.0f64, 0.0f64);
            for (&p, &q) in a.iter().zip(b) {
                ab += f64::from(p) * f64::from(q);
                aa += f64::from(p) * f64::from(p);
                bb += f64::from(q) * f64::from(q);
            }
            ab / (aa.sqrt() * bb.sqrt()).max(1e-30)
        };
        self.groups
            .iter()
            .map(|(name, c)| (name.as_str(), cosine(x, c)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(name, _)| name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_count_what_a_threshold_catches_and_wrongly_flags() {
        let scores = [
            (0.9, true),
            (0.8, true),
            (0.6, false),
            (0.4, true),
            (0.3, false),
            (0.1, false),
        ];
        let f = figures(&scores, 0.5, 1.0);
        assert_eq!((f.harmful, f.benign), (3, 3));
        assert_eq!(f.precision, Some(2.0 / 3.0));
        assert_eq!(f.recall, Some(2.0 / 3.0));
        assert_eq!(f.false_positive_rate, Some(1.0 / 3.0));
        // Catching every harmful text takes the threshold down to 0.4, which flags 0.6 too.
        assert_eq!(f.threshold_for_target, Some(0.4));
        assert_eq!(f.false_positive_rate_at_target, Some(1.0 / 3.0));
        assert_eq!(f.auroc, Some(8.0 / 9.0));
        // Two thirds: the second-highest harmful score.
        assert_eq!(figures(&scores, 0.5, 0.6).threshold_for_target, Some(0.8));
        let none = figures(&[(0.2, false)], 0.5, 0.9);
        assert_eq!(
            (none.auroc, none.recall, none.threshold_for_target),
            (None, None, None)
        );
    }

    #[test]
    fn the_nearest_centroid_is_by_direction() {
        let a = [1.0f32, 0.0];
        let b = [0.0f32, 1.0];
        let c = [3.0f32, 0.2];
        let centroids = Centroids::of([("x", &a[..]), ("y", &b[..]), ("x", &c[..])]);
        assert_eq!(centroids.groups[0].1, vec![2.0, 0.1]);
        assert_eq!(centroids.nearest(&[10.0, 1.0]), Some("x"));
        assert_eq!(centroids.nearest(&[0.1, 5.0]), Some("y"));
        assert_eq!(Centroids::default().nearest(&a), None);
    }
}
