//! AI feedback: a judge model's preference between the two answers of a pair.
//!
//! The judge reads a multiple-choice frame (the conversation, a comparison question from the
//! constitution, options (A) and (B)) and is asked for the letter; nothing is sampled. The
//! probability llama.cpp gives every token form of "A" and of "B" at the answer position is summed
//! and normalised to P(A), P(B). Each question is asked in both orders and the swap undone, so
//! a judge that favours a position cancels out; the soft label p(chosen ≻ rejected) is the mean
//! over `k` seeded questions × 2 orders. This module holds the judge's pieces; the run that
//! drives them over a database is [`crate::pipeline::label`].

pub mod frame;
pub mod rank;
#[cfg(feature = "llama")]
mod tokens;

#[cfg(feature = "llama")]
pub use tokens::{letter_tokens, AnswerTokens};

use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::constitution::Comparison;
use crate::hash;

/// Text the judge's reply starts with; the next token is its answer.
pub const ANSWER_PREFIX: &str = "The answer is: (";

/// In chain-of-thought mode the reply starts with this, the judge reasons, and then
/// [`ANSWER_PREFIX`] follows on a new paragraph.
pub const COT_PREFIX: &str = "Let's think step by step.";

/// Chain-of-thought judging: reasoning length and the clamp on its probabilities.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct CotSettings {
    /// Most tokens of reasoning before the answer is read.
    pub max_tokens: usize,
    /// P(A) after reasoning is clamped into this range (the CAI paper's [0.4, 0.6]): reasoning
    /// makes a judge overconfident, and a label should not claim more than it knows.
    pub clamp: (f64, f64),
}

impl Default for CotSettings {
    fn default() -> Self {
        CotSettings {
            max_tokens: 192,
            clamp: (0.4, 0.6),
        }
    }
}

/// The `k` comparison questions asked about a pair: drawn without replacement, seeded by the
/// judge seed and the pair, so a rerun asks the same ones.
pub fn questions_for<'c>(
    comparisons: &'c [Comparison],
    k: usize,
    seed: u64,
    pair_id: &str,
) -> Vec<&'c Comparison> {
    let digest = hash::of_parts(&[&seed.to_string(), pair_id]);
    let mut bytes = [0u8; 8];
    if let Ok(decoded) = hex::decode(&digest[..16]) {
        bytes.copy_from_slice(&decoded);
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(u64::from_le_bytes(bytes));
    let mut picked: Vec<&Comparison> = comparisons
        .choose_multiple(&mut rng, k.min(comparisons.len()))
        .collect();
    // Keep the constitution's order, so runs read naturally.
    picked.sort_by_key(|c| comparisons.iter().position(|x| x.id == c.id));
    picked
}

/// One judgment's numbers, from the probability masses of "A" and "B".
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    pub mass_a: f64,
    pub mass_b: f64,
    /// P(A) among the two answers.
    pub p_a: f64,
    /// p(chosen ≻ rejected): P(A) when (A) is the chosen answer, P(B) when the order is swapped.
    pub p_chosen: f64,
}

impl Verdict {
    /// `clamp` bounds P(A) (chain-of-thought judgments); the masses stay as read.
    pub fn new(mass_a: f64, mass_b: f64, swapped: bool, clamp: Option<(f64, f64)>) -> Self {
        let total = mass_a + mass_b;
        let p_a = if total > 0.0 { mass_a / total } else { 0.5 };
        let p_a = match clamp {
            Some((low, high)) => p_a.clamp(low, high),
            None => p_a,
        };
        Verdict {
            mass_a,
            mass_b,
            p_a,
            p_chosen: if swapped { 1.0 - p_a } else { p_a },
        }
    }
}

/// A pair's label from its judgments `(question id, swapped, p_chosen)`: the mean p_chosen, and
/// the number of questions whose two orders picked different winners.
pub fn combine(judgments: &[(String, bool, f64)]) -> (f64, usize) {
    let mean = judgments.iter().map(|j| j.2).sum::<f64>() / judgments.len().max(1) as f64;
    let mut disagreements = 0;
    for (q, _, p) in judgments.iter().filter(|j| !j.1) {
        if let Some(other) = judgments.iter().find(|j| &j.0 == q && j.1) {
            if (*p > 0.5) != (other.2 > 0.5) {
                disagreements += 1;
            }
        }
    }
    (mean, disagreements)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn comparison(id: &str) -> Comparison {
        Comparison {
            id: id.into(),
            question: format!("{id}?"),
            tags: vec![],
        }
    }

    #[test]
    fn the_swap_is_undone() {
        let straight = Verdict::new(0.6, 0.2, false, None);
        assert!((straight.p_a - 0.75).abs() < 1e-12 && (straight.p_chosen - 0.75).abs() < 1e-12);
        let swapped = Verdict::new(0.6, 0.2, true, None);
        assert!((swapped.p_chosen - 0.25).abs() < 1e-12);
        assert_eq!(Verdict::new(0.0, 0.0, false, None).p_a, 0.5);
        // Chain-of-thought answers are clamped, then the swap is undone.
        let cot = Verdict::new(0.6, 0.2, true, Some((0.4, 0.6)));
        assert!((cot.p_a - 0.6).abs() < 1e-12 && (cot.p_chosen - 0.4).abs() < 1e-12);
        assert_eq!((cot.mass_a, cot.mass_b), (0.6, 0.2));
    }

    #[test]
    fn labels_average_and_count_disagreements() {
        let j = |q: &str, s: bool, p: f64| (q.to_string(), s, p);
        let (mean, disagreements) = combine(&[
            j("x", false, 0.9),
            j("x", true, 0.7),
            j("y", false, 0.8),
            j("y", true, 0.2),
        ]);
        assert!((mean - 0.65).abs() < 1e-12);
        assert_eq!(disagreements, 1);
    }

    #[test]
    fn questions_are_seeded_per_pair_and_distinct() {
        let all: Vec<Comparison> = ["a", "b", "c", "d"].iter().map(|i| comparison(i)).collect();
        let one = questions_for(&all, 2, 7, "pair-1");
        assert_eq!(one.len(), 2);
        assert_ne!(one[0].id, one[1].id);
        assert_eq!(one, questions_for(&all, 2, 7, "pair-1"));
        assert_eq!(questions_for(&all, 9, 7, "pair-1").len(), 4);
        let spread: std::collections::HashSet<String> = (0..20)
            .flat_map(|i| questions_for(&all, 1, 7, &format!("pair-{i}")))
            .map(|c| c.id.clone())
            .collect();
        assert!(spread.len() > 1, "every pair got the same question");
    }
}
