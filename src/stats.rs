//! `tenets stats`: what a database holds — per run, steps per stage and principle, pairs,
//! truncations, failures and their reasons, token counts (and how much the KV cache saved); per
//! judge (`tenets label`), labels, how often the revision won, and the judge's position bias.

use serde::Serialize;

use crate::filters::{is_refusal, similar_at_least, PairFilters};
use crate::store::stats::RunCounts;
pub use crate::store::stats::{Count, JudgeStats, TrainingStats};
use crate::store::{Store, StoreError};

#[derive(Debug, Clone, Serialize)]
pub struct RunStats {
    pub run_id: String,
    pub created_at: String,
    pub constitution: String,
    pub model_sha256: String,
    pub rounds: i64,
    /// Answers sampled per prompt (above 1: candidate pairs of strategy `sampled`).
    pub samples: i64,
    pub stages: Vec<Count>,
    pub principles: Vec<Count>,
    pub pairs: i64,
    /// Of `pairs`, candidate pairs of sampled answers.
    pub sampled_pairs: i64,
    pub truncated: i64,
    /// Quality filters: revisions whose preamble was stripped; pairs `export` drops by default
    /// because an answer was truncated, or because the two answers are near-identical.
    pub preambles_stripped: i64,
    /// Prompts left out as exact or near duplicates of another.
    pub duplicate_prompts: i64,
    pub near_duplicate_prompts: i64,
    pub pairs_truncated: i64,
    pub pairs_near_identical: i64,
    /// Pairs of benign prompts whose revision refuses (export never emits them as chosen).
    pub benign_refused: i64,
    pub failures: Vec<Count>,
    pub generated_tokens: i64,
    /// Conversation tokens of critique/revision turns, and how many of them were decoded.
    pub followup_prompt_tokens: i64,
    pub followup_prefill_tokens: i64,
}

/// Everything `tenets stats` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    pub runs: Vec<RunStats>,
    pub judges: Vec<JudgeStats>,
    pub trainings: Vec<TrainingStats>,
    /// `tenets eval` evaluations, with their figures.
    pub evaluations: Vec<crate::eval::results::EvalResults>,
    /// `tenets serve`'s decision log: what the guards did to the requests it answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guard: Option<crate::store::GuardStats>,
}

pub async fn collect(store: &Store) -> Result<Stats, StoreError> {
    Ok(Stats {
        runs: collect_runs(store).await?,
        judges: store.judges().await?,
        trainings: store.trainings().await?,
        evaluations: collect_evaluations(store).await?,
        guard: store.guard_stats().await?,
    })
}

async fn collect_evaluations(
    store: &Store,
) -> Result<Vec<crate::eval::results::EvalResults>, StoreError> {
    let mut out = Vec::new();
    for (id, _) in store.evals().await? {
        out.push(crate::eval::results::load(store, &id).await?);
    }
    Ok(out)
}

async fn collect_runs(store: &Store) -> Result<Vec<RunStats>, StoreError> {
    let mut out = Vec::new();
    for run in store.runs().await? {
        let id = run.run_id.as_str();
        let stages = store.run_counts(id, RunCounts::Stages).await?;
        let principles = store.run_counts(id, RunCounts::Principles).await?;
        let failures = store.run_counts(id, RunCounts::Failures).await?;
        let totals = store.run_totals(id).await?;
        let defaults = PairFilters::default();
        let (mut pairs_truncated, mut pairs_near_identical, mut benign_refused) = (0, 0, 0);
        for p in store.run_pair_texts(id).await? {
            let revision = p.strategy == "revision";
            if revision && p.kind.as_deref() == Some("benign") && is_refusal(&p.chosen) {
                benign_refused += 1;
            }
            if p.chosen_finish != "stop" || p.rejected_finish != "stop" {
                pairs_truncated += 1;
            }
            if similar_at_least(&p.chosen, &p.rejected, defaults.max_similarity) {
                pairs_near_identical += 1;
            }
        }
        out.push(RunStats {
            stages,
            principles,
            pairs: totals.pairs,
            sampled_pairs: totals.sampled_pairs,
            truncated: totals.truncated_steps,
            preambles_stripped: totals.preambles_stripped,
            duplicate_prompts: totals.duplicate_prompts,
            near_duplicate_prompts: totals.near_duplicate_prompts,
            pairs_truncated,
            pairs_near_identical,
            benign_refused,
            failures,
            generated_tokens: totals.generated_tokens,
            followup_prompt_tokens: totals.followup_prompt_tokens,
            followup_prefill_tokens: totals.followup_prefill_tokens,
            run_id: run.run_id,
            created_at: run.created_at,
            constitution: run.constitution,
            model_sha256: run.model_sha256,
            rounds: run.rounds,
            samples: run.samples,
        });
    }
    Ok(out)
}

/// The first `n` characters of a hash, for display.
fn short(hash: &str, n: usize) -> &str {
    hash.get(..n).unwrap_or(hash)
}

/// `tenets serve`'s guard rates: each outcome's share of the requests, and which guard fired
/// for which principle.
fn render_guard(s: &mut String, g: &crate::store::GuardStats) {
    use std::fmt::Write;
    let share = |n: i64| 100.0 * n as f64 / g.requests.max(1) as f64;
    let _ = writeln!(
        s,
        "served requests {}  (tenets serve's decision log)",
        g.requests
    );
    for c in &g.outcomes {
        let _ = writeln!(
            s,
            "  {:<10} {:>6}  ({:.1}%)",
            c.name,
            c.count,
            share(c.count)
        );
    }
    let _ = writeln!(
        s,
        "  guards: input refused {} ({:.1}%), output refused {} ({:.1}%), revised {} ({:.1}%)",
        g.refused_input,
        share(g.refused_input),
        g.refused_output,
        share(g.refused_output),
        g.revised,
        share(g.revised)
    );
    for c in &g.fired {
        let _ = writeln!(s, "    {:<40} {:>6}", c.name, c.count);
    }
    let latency = match (g.latency_p50_ms, g.latency_p95_ms) {
        (Some(p50), Some(p95)) => format!("; latency p50 {p50} ms, p95 {p95} ms"),
        _ => String::new(),
    };
    let _ = writeln!(
        s,
        "  {} streamed, {} with a JSON grammar; {} tokens generated{latency}",
        g.streamed, g.constrained, g.completion_tokens
    );
}

/// A plain-text view for the terminal.
pub fn render(stats: &Stats) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    if stats.runs.is_empty()
        && stats.trainings.is_empty()
        && stats.evaluations.is_empty()
        && stats.guard.is_none()
    {
        return "no runs in this database\n".into();
    }
    if let Some(guard) = &stats.guard {
        render_guard(&mut s, guard);
    }
    for run in &stats.runs {
        let _ = writeln!(
            s,
            "run {}  ({}, constitution {}, model {}…, {} round(s))",
            short(&run.run_id, 16),
            run.created_at,
            run.constitution,
            short(&run.model_sha256, 12),
            run.rounds
        );
        for c in &run.stages {
            let _ = writeln!(s, "  {:<10} {:>6}", c.name, c.count);
        }
        if run.samples > 1 {
            let _ = writeln!(
                s,
                "  {:<10} {:>6}  ({} sampled answers per prompt)",
                "pairs", run.pairs, run.samples
            );
            let _ = writeln!(
                s,
                "  {:<10} {:>6}  (every two samples of a prompt; export ranks them)",
                "sampled", run.sampled_pairs
            );
        } else {
            let _ = writeln!(s, "  {:<10} {:>6}", "pairs", run.pairs);
        }
        let _ = writeln!(
            s,
            "  {:<10} {:>6}  (hit max tokens or context)",
            "truncated", run.truncated
        );
        let _ = writeln!(
            s,
            "  filters: {} duplicate and {} near-duplicate prompt(s) left out; {} revision \
             preamble(s) stripped; export drops by default {} pair(s) with a truncated answer, \
             {} with near-identical answers and {} whose revision refuses a benign prompt",
            run.duplicate_prompts,
            run.near_duplicate_prompts,
            run.preambles_stripped,
            run.pairs_truncated,
            run.pairs_near_identical,
            run.benign_refused
        );
        if !run.principles.is_empty() {
            let _ = writeln!(s, "  critiques per principle:");
            for c in &run.principles {
                let _ = writeln!(s, "    {:<28} {:>6}", c.name, c.count);
            }
        }
        if run.failures.is_empty() {
            let _ = writeln!(s, "  failures: none");
        } else {
            let _ = writeln!(s, "  failures:");
            for c in &run.failures {
                let _ = writeln!(s, "    {:>4} × {}", c.count, c.name);
            }
        }
        let saved = if run.followup_prompt_tokens > 0 {
            run.followup_prefill_tokens as f64 / run.followup_prompt_tokens as f64
        } else {
            0.0
        };
        let _ = writeln!(
            s,
            "  tokens: {} generated; follow-up turns decoded {} of {} conversation tokens ({:.2}×)",
            run.generated_tokens, run.followup_prefill_tokens, run.followup_prompt_tokens, saved
        );
    }
    for judge in &stats.judges {
        let _ = writeln!(
            s,
            "judge {}  ({}, model {}…, {} question(s) × 2 orders per pair)",
            short(&judge.judge_id, 16),
            judge.created_at,
            short(&judge.model_sha256, 12),
            judge.questions_per_pair
        );
        let _ = writeln!(
            s,
            "  {} pairs labeled ({} judgments); within 0.1 of even in {}",
            judge.labeled_pairs, judge.judgments, judge.near_even
        );
        if judge.labeled_pairs > judge.sampled_labeled {
            let _ = writeln!(
                s,
                "  revision pairs: revision preferred in {} of {}, mean p(revision ≻ answer) {:.3}",
                judge.revision_preferred,
                judge.labeled_pairs - judge.sampled_labeled,
                judge.mean_p_revision
            );
        }
        if judge.sampled_labeled > 0 {
            let _ = writeln!(
                s,
                "  sampled pairs: {} (ranked at export)",
                judge.sampled_labeled
            );
        }
        let _ = writeln!(
            s,
            "  orders disagree on {:.1}% of questions; mean P(A) {:.3}; answer mass {:.3}",
            100.0 * judge.order_disagreement,
            judge.mean_p_a,
            judge.mean_answer_mass
        );
        let _ = match &judge.calibration {
            Some(c) => writeln!(
                s,
                "  calibration: {} — {}",
                c.describe(),
                if c.trusted() {
                    "trusted"
                } else {
                    "not trusted (export/train need --trust-judge or --hard-labels)"
                }
            ),
            None => writeln!(s, "  calibration: none (export/train need --trust-judge)"),
        };
        if judge.unanswered_judgments > 0 {
            let _ = writeln!(
                s,
                "  no answer (no probability on \"A\" or \"B\"): {} judgment(s), left out of \
                 the labels; {} pair(s) without any answer, and so without a label",
                judge.unanswered_judgments, judge.pairs_without_answer
            );
        }
    }
    for t in &stats.trainings {
        let _ = writeln!(
            s,
            "training {}  ({}, {} on {} examples from {})",
            short(&t.run_id, 16),
            t.created_at,
            t.objective,
            t.examples,
            t.data_source
        );
        let state = if t.finished {
            "finished".to_string()
        } else {
            match t.checkpoint_step {
                Some(c) => format!("checkpoint at step {c}: --resume continues"),
                None => "no checkpoint yet".to_string(),
            }
        };
        let _ = writeln!(
            s,
            "  step {}/{} ({state}); last loss {}",
            t.steps_done,
            t.total_steps,
            t.last_loss.map_or("-".into(), |l| format!("{l:.4}"))
        );
        if let Some(loss) = t.final_loss {
            let _ = writeln!(
                s,
                "  all examples: loss {loss:.4}{}",
                t.final_accuracy
                    .map_or(String::new(), |a| format!(", reward accuracy {a:.3}"))
            );
        }
    }
    for e in &stats.evaluations {
        let _ = writeln!(
            s,
            "evaluation {}  ({}, \"{}\", {} prompts)",
            short(&e.eval_id, 16),
            e.created_at,
            e.name,
            e.prompts
        );
        let sides = [
            ("base", Some(&e.base)),
            ("adapter", e.adapter_rates.as_ref()),
        ];
        for (side, rates) in sides {
            if let Some(r) = rates {
                let _ = writeln!(
                    s,
                    "  {side:<8} harmful compliance {}; over-refusal {}{}",
                    r.harmful_compliance.display(),
                    r.over_refusal.display(),
                    if r.no_verdict > 0 {
                        format!("; no verdict on {} answer(s), left out", r.no_verdict)
                    } else {
                        String::new()
                    }
                );
            }
        }
        if let Some(w) = &e.win_rate {
            let _ = writeln!(s, "  p(adapter ≻ base) {}", w.preference.display());
        }
        if e.unanswered.judgments > 0 {
            let _ = writeln!(
                s,
                "  comparisons without an answer: {} judgment(s), {} prompt(s) with none (left \
                 out of the win rate)",
                e.unanswered.judgments, e.unanswered.prompts
            );
        }
    }
    s
}
