//! AI feedback: a judge model's preference between the two answers of a pair.
//!
//! The judge reads a multiple-choice frame (the conversation, a comparison question from the
//! constitution, options (A) and (B)) and is asked for the letter; nothing is sampled. The
//! probability llama.cpp gives every token form of "A" and of "B" at the answer position is summed
//! and normalised to P(A), P(B). Each question is asked in both orders and the swap undone, so
//! a judge that favours a position cancels out; the soft label p(chosen ≻ rejected) is the mean
//! over `k` seeded questions × 2 orders. This module holds the judge's pieces; the run that
//! drives them over a database is [`crate::pipeline::label`].

pub mod calibration;
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

impl CotSettings {
    /// Reasoning tokens by default.
    pub const DEFAULT_TOKENS: usize = 192;

    /// The settings make sense: `--cot-tokens` at least 1, and a clamp `LOW,HIGH` of finite
    /// numbers with 0 ≤ LOW ≤ 0.5 ≤ HIGH ≤ 1 (a clamp that leaves out 0.5 would turn every
    /// judgment into a verdict, one that leaves [0, 1] is no probability).
    pub fn check(&self) -> Result<(), String> {
        if self.max_tokens == 0 {
            return Err("--cot-tokens must be at least 1".into());
        }
        let (low, high) = self.clamp;
        // `contains` is false for NaN, so the ranges also require finite numbers.
        if !((0.0..=0.5).contains(&low) && (0.5..=1.0).contains(&high)) {
            return Err(format!(
                "--cot-clamp {low},{high}: need finite numbers with 0 ≤ LOW ≤ 0.5 ≤ HIGH ≤ 1 \
                 (for example 0.4,0.6)"
            ));
        }
        Ok(())
    }
}

impl Default for CotSettings {
    fn default() -> Self {
        CotSettings {
            max_tokens: Self::DEFAULT_TOKENS,
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

/// Why a judgment holds no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum NoAnswer {
    /// The judge put no probability on "A" or "B" (a remote judge whose top log-probs hold
    /// neither letter, say).
    NoMass,
    /// The probe came back without one finite, non-negative mass for each letter.
    Malformed,
}

impl NoAnswer {
    /// The name the database stores.
    pub fn as_str(self) -> &'static str {
        match self {
            NoAnswer::NoMass => "no-mass",
            NoAnswer::Malformed => "malformed",
        }
    }
}

/// The probabilities of an answered judgment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Answer {
    /// P(A) among the two answers.
    pub p_a: f64,
    /// p(chosen ≻ rejected): P(A) when (A) is the chosen answer, P(B) when the order is swapped.
    pub p_chosen: f64,
}

/// One judgment read from the probability masses of "A" and "B".
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    pub mass_a: f64,
    pub mass_b: f64,
    /// The judge's answer, or why there is none: a judge that put no probability on either
    /// letter did not say 50:50, it said nothing, and is left out of labels and rates.
    pub answer: Result<Answer, NoAnswer>,
}

impl Verdict {
    /// Reads a probe's masses `[A, B]`; `clamp` bounds P(A) (chain-of-thought judgments), the
    /// masses stay as read.
    pub fn read(masses: &[f64], swapped: bool, clamp: Option<(f64, f64)>) -> Self {
        let &[mass_a, mass_b] = masses else {
            return Verdict {
                mass_a: 0.0,
                mass_b: 0.0,
                answer: Err(NoAnswer::Malformed),
            };
        };
        let valid = |m: f64| m.is_finite() && m >= 0.0;
        let total = mass_a + mass_b;
        let answer = if !(valid(mass_a) && valid(mass_b)) {
            Err(NoAnswer::Malformed)
        } else if total <= 0.0 {
            Err(NoAnswer::NoMass)
        } else {
            // max/min rather than `clamp`, which panics on a bad range: the settings were
            // checked ([`CotSettings::check`]), and a judgment never brings a run down.
            let p_a = mass_a / total;
            let p_a = match clamp {
                Some((low, high)) => p_a.max(low).min(high),
                None => p_a,
            };
            Ok(Answer {
                p_a,
                p_chosen: if swapped { 1.0 - p_a } else { p_a },
            })
        };
        let keep = |m: f64| if valid(m) { m } else { 0.0 };
        Verdict {
            mass_a: keep(mass_a),
            mass_b: keep(mass_b),
            answer,
        }
    }
}

/// A pair's label from its judgments.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Combined {
    /// Mean p(chosen ≻ rejected) over the answered judgments; `None` when none answered.
    pub p_chosen: Option<f64>,
    pub answered: usize,
    pub unanswered: usize,
    /// Questions whose two orders both answered and picked different winners.
    pub order_disagreements: usize,
}

/// A pair's label from its judgments `(question id, swapped, p_chosen or no answer)`.
pub fn combine(judgments: &[(String, bool, Option<f64>)]) -> Combined {
    let answered: Vec<f64> = judgments.iter().filter_map(|j| j.2).collect();
    let mut order_disagreements = 0;
    for (q, _, p) in judgments.iter().filter(|j| !j.1) {
        let other = judgments.iter().find(|j| &j.0 == q && j.1);
        if let (Some(p), Some((_, _, Some(o)))) = (p, other) {
            if (*p > 0.5) != (*o > 0.5) {
                order_disagreements += 1;
            }
        }
    }
    Combined {
        p_chosen: (!answered.is_empty())
            .then(|| answered.iter().sum::<f64>() / answered.len() as f64),
        answered: answered.len(),
        unanswered: judgments.len() - answered.len(),
        order_disagreements,
    }
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
        let answer = |v: Verdict| v.answer.unwrap();
        let straight = answer(Verdict::read(&[0.6, 0.2], false, None));
        assert!((straight.p_a - 0.75).abs() < 1e-12 && (straight.p_chosen - 0.75).abs() < 1e-12);
        let swapped = answer(Verdict::read(&[0.6, 0.2], true, None));
        assert!((swapped.p_chosen - 0.25).abs() < 1e-12);
        // Chain-of-thought answers are clamped, then the swap is undone.
        let cot = Verdict::read(&[0.6, 0.2], true, Some((0.4, 0.6)));
        assert!(
            (answer(cot).p_a - 0.6).abs() < 1e-12 && (answer(cot).p_chosen - 0.4).abs() < 1e-12
        );
        assert_eq!((cot.mass_a, cot.mass_b), (0.6, 0.2));
    }

    #[test]
    fn a_judge_that_names_no_letter_gives_no_answer_not_an_even_one() {
        let zero = Verdict::read(&[0.0, 0.0], false, None);
        assert_eq!(zero.answer, Err(NoAnswer::NoMass));
        assert_eq!((zero.mass_a, zero.mass_b), (0.0, 0.0));
        // A probe of the wrong length (it used to read as masses (0, 0), then P(A) = 0.5).
        for masses in [&[][..], &[0.7][..], &[0.5, 0.2, 0.1][..]] {
            assert_eq!(
                Verdict::read(masses, false, None).answer,
                Err(NoAnswer::Malformed),
                "{masses:?}"
            );
        }
        for masses in [[f64::NAN, 0.4], [0.3, f64::INFINITY], [-0.1, 0.5]] {
            let v = Verdict::read(&masses, true, Some((0.4, 0.6)));
            assert_eq!(v.answer, Err(NoAnswer::Malformed), "{masses:?}");
        }
    }

    #[test]
    fn labels_average_the_answered_judgments_and_count_disagreements() {
        let j = |q: &str, s: bool, p: Option<f64>| (q.to_string(), s, p);
        let c = combine(&[
            j("x", false, Some(0.9)),
            j("x", true, Some(0.7)),
            j("y", false, Some(0.8)),
            j("y", true, Some(0.2)),
        ]);
        assert!((c.p_chosen.unwrap() - 0.65).abs() < 1e-12);
        assert_eq!((c.answered, c.unanswered, c.order_disagreements), (4, 0, 1));
        // Judgments without an answer are counted, not averaged in as 0.5.
        let c = combine(&[
            j("x", false, Some(0.9)),
            j("x", true, None),
            j("y", false, None),
            j("y", true, Some(0.7)),
        ]);
        assert!((c.p_chosen.unwrap() - 0.8).abs() < 1e-12);
        assert_eq!((c.answered, c.unanswered, c.order_disagreements), (2, 2, 0));
        let none = combine(&[j("x", false, None), j("x", true, None)]);
        assert_eq!(none.p_chosen, None);
        assert_eq!((none.answered, none.unanswered), (0, 2));
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
