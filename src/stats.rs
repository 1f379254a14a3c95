//! `tenets stats`: what a database holds — per run, steps per stage and principle, pairs,
//! truncations, failures and their reasons, token counts (and how much the KV cache saved); per
//! judge (`tenets label`), labels, how often the revision won, and the judge's position bias.

use serde::Serialize;
use sqlx::Row;

use crate::filters::{is_refusal, similar_at_least, PairFilters};
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

/// One judge's labels.
#[derive(Debug, Clone, Serialize)]
pub struct JudgeStats {
    pub judge_id: String,
    pub created_at: String,
    pub model_sha256: String,
    pub questions_per_pair: i64,
    pub labeled_pairs: i64,
    pub judgments: i64,
    /// Of `labeled_pairs`, pairs of sampled answers (the rest are revision pairs).
    pub sampled_labeled: i64,
    /// Mean p(revision ≻ original answer), over revision pairs.
    pub mean_p_revision: f64,
    /// Revision pairs where the judge preferred the revision (p > 0.5).
    pub revision_preferred: i64,
    /// Pairs whose label is within 0.1 of 0.5.
    pub near_even: i64,
    /// Share of (pair, question) whose two orders picked different winners.
    pub order_disagreement: f64,
    /// Mean P(A): 0.5 for a judge without a position preference.
    pub mean_p_a: f64,
    /// Mean probability put on "A" or "B" at all (over every judgment, unanswered ones too).
    pub mean_answer_mass: f64,
    /// Judgments with no probability on either letter (or a malformed probe): left out of the
    /// labels and of every mean but the answer mass.
    pub unanswered_judgments: i64,
    /// Pairs none of whose judgments answered: no label (not in `labeled_pairs`).
    pub pairs_without_answer: i64,
}

/// Everything `tenets stats` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    pub runs: Vec<RunStats>,
    pub judges: Vec<JudgeStats>,
    pub trainings: Vec<TrainingStats>,
    /// `tenets eval` evaluations, with their figures.
    pub evaluations: Vec<crate::eval::results::EvalResults>,
}

/// One `tenets train` run in the database.
#[derive(Debug, Clone, Serialize)]
pub struct TrainingStats {
    pub run_id: String,
    pub created_at: String,
    pub data_source: String,
    pub objective: String,
    pub examples: i64,
    pub steps_done: i64,
    pub total_steps: i64,
    /// The step of the latest checkpoint (what `--resume` continues from).
    pub checkpoint_step: Option<i64>,
    pub last_loss: Option<f64>,
    pub finished: bool,
    pub final_loss: Option<f64>,
    pub final_accuracy: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Count {
    pub name: String,
    pub count: i64,
}

async fn counts(store: &Store, sql: &str, run_id: &str) -> Result<Vec<Count>, StoreError> {
    let rows = sqlx::query(sql)
        .bind(run_id)
        .fetch_all(store.pool())
        .await
        .map_err(store.err())?;
    Ok(rows
        .into_iter()
        .map(|r| Count {
            name: r.get(0),
            count: r.get(1),
        })
        .collect())
}

pub async fn collect(store: &Store) -> Result<Stats, StoreError> {
    Ok(Stats {
        runs: collect_runs(store).await?,
        judges: collect_judges(store).await?,
        trainings: collect_trainings(store).await?,
        evaluations: collect_evaluations(store).await?,
    })
}

async fn collect_evaluations(
    store: &Store,
) -> Result<Vec<crate::eval::results::EvalResults>, StoreError> {
    let mut out = Vec::new();
    for (id, _) in crate::eval::results::list(store).await? {
        out.push(crate::eval::results::load(store, &id).await?);
    }
    Ok(out)
}

async fn collect_trainings(store: &Store) -> Result<Vec<TrainingStats>, StoreError> {
    let rows = sqlx::query(
        "SELECT t.id, t.created_at, t.data_source, \
         COALESCE(json_extract(t.settings_json, '$.loss'), '?'), t.examples, \
         (SELECT COUNT(*) FROM train_steps s WHERE s.run_id = t.id), t.total_steps, \
         (SELECT step FROM train_checkpoints c WHERE c.run_id = t.id), \
         (SELECT loss FROM train_steps s WHERE s.run_id = t.id ORDER BY step DESC LIMIT 1), \
         t.finished_at IS NOT NULL, t.final_loss, t.final_accuracy \
         FROM train_runs t ORDER BY t.created_at, t.id",
    )
    .fetch_all(store.pool())
    .await
    .map_err(store.err())?;
    Ok(rows
        .iter()
        .map(|r| TrainingStats {
            run_id: r.get(0),
            created_at: r.get(1),
            data_source: r.get(2),
            objective: r.get(3),
            examples: r.get(4),
            steps_done: r.get(5),
            total_steps: r.get(6),
            checkpoint_step: r.get(7),
            last_loss: r.get(8),
            finished: r.get(9),
            final_loss: r.get(10),
            final_accuracy: r.get(11),
        })
        .collect())
}

async fn collect_judges(store: &Store) -> Result<Vec<JudgeStats>, StoreError> {
    let rows = sqlx::query(
        "SELECT j.id, j.created_at, j.model_sha256, j.questions_per_pair, \
           (SELECT COUNT(p_chosen) FROM labels l WHERE l.judge_id = j.id), \
           (SELECT COUNT(*) FROM judgments g WHERE g.judge_id = j.id), \
           (SELECT COALESCE(AVG(p_chosen), 0.0) FROM labels l JOIN pairs pr ON pr.id = l.pair_id \
              WHERE l.judge_id = j.id AND pr.strategy = 'revision'), \
           (SELECT COUNT(*) FROM labels l JOIN pairs pr ON pr.id = l.pair_id \
              WHERE l.judge_id = j.id AND pr.strategy = 'revision' AND p_chosen > 0.5), \
           (SELECT COUNT(*) FROM labels l WHERE l.judge_id = j.id AND ABS(p_chosen - 0.5) < 0.1), \
           (SELECT COALESCE(CAST(SUM(order_disagreements) AS REAL) \
              / NULLIF(SUM(judgments) / 2, 0), 0.0) FROM labels l WHERE l.judge_id = j.id), \
           (SELECT COALESCE(AVG(p_a), 0.0) FROM judgments g WHERE g.judge_id = j.id), \
           (SELECT COALESCE(AVG(mass_a + mass_b), 0.0) FROM judgments g WHERE g.judge_id = j.id), \
           (SELECT COUNT(p_chosen) FROM labels l JOIN pairs pr ON pr.id = l.pair_id \
              WHERE l.judge_id = j.id AND pr.strategy LIKE 'sampled:%'), \
           (SELECT COUNT(*) FROM judgments g WHERE g.judge_id = j.id AND no_answer IS NOT NULL), \
           (SELECT COUNT(*) FROM labels l WHERE l.judge_id = j.id AND p_chosen IS NULL) \
         FROM judges j ORDER BY j.created_at, j.id",
    )
    .fetch_all(store.pool())
    .await
    .map_err(store.err())?;
    Ok(rows
        .into_iter()
        .map(|r| JudgeStats {
            judge_id: r.get(0),
            created_at: r.get(1),
            model_sha256: r.get(2),
            questions_per_pair: r.get(3),
            labeled_pairs: r.get(4),
            sampled_labeled: r.get(12),
            judgments: r.get(5),
            mean_p_revision: r.get(6),
            revision_preferred: r.get(7),
            near_even: r.get(8),
            order_disagreement: r.get(9),
            mean_p_a: r.get(10),
            mean_answer_mass: r.get(11),
            unanswered_judgments: r.get(13),
            pairs_without_answer: r.get(14),
        })
        .collect())
}

async fn collect_runs(store: &Store) -> Result<Vec<RunStats>, StoreError> {
    let runs = sqlx::query(
        "SELECT id, created_at, constitution_name, model_sha256, rounds, samples FROM runs \
         ORDER BY created_at",
    )
    .fetch_all(store.pool())
    .await
    .map_err(store.err())?;
    let mut out = Vec::new();
    for run in runs {
        let run_id: String = run.get(0);
        let stages = counts(
            store,
            "SELECT stage, COUNT(*) FROM steps WHERE run_id = ? GROUP BY stage \
             ORDER BY CASE stage WHEN 'answer' THEN 0 WHEN 'critique' THEN 1 ELSE 2 END",
            &run_id,
        )
        .await?;
        let principles = counts(
            store,
            "SELECT principle_id, COUNT(*) FROM steps WHERE run_id = ? AND stage = 'critique' \
             GROUP BY principle_id ORDER BY COUNT(*) DESC, principle_id",
            &run_id,
        )
        .await?;
        let failures = counts(
            store,
            "SELECT reason, COUNT(*) FROM failures WHERE run_id = ? GROUP BY reason ORDER BY COUNT(*) DESC",
            &run_id,
        )
        .await?;
        let totals = sqlx::query(
            "SELECT \
               (SELECT COUNT(*) FROM pairs WHERE run_id = ?1), \
               (SELECT COUNT(*) FROM steps WHERE run_id = ?1 AND finish != 'stop'), \
               (SELECT COALESCE(SUM(generated_tokens), 0) FROM steps WHERE run_id = ?1), \
               (SELECT COALESCE(SUM(prompt_tokens), 0) FROM steps WHERE run_id = ?1 AND stage != 'answer'), \
               (SELECT COALESCE(SUM(prefill_tokens), 0) FROM steps WHERE run_id = ?1 AND stage != 'answer'), \
               (SELECT COUNT(*) FROM steps WHERE run_id = ?1 AND preamble IS NOT NULL), \
               (SELECT COUNT(*) FROM dropped_prompts WHERE run_id = ?1 AND reason = 'duplicate'), \
               (SELECT COUNT(*) FROM dropped_prompts WHERE run_id = ?1 AND reason = 'near-duplicate'), \
               (SELECT COUNT(*) FROM pairs WHERE run_id = ?1 AND strategy LIKE 'sampled:%')",
        )
        .bind(&run_id)
        .fetch_one(store.pool())
        .await
        .map_err(store.err())?;
        let pair_rows = sqlx::query(
            "SELECT c.output, c.finish, a.output, a.finish, p.kind, pr.strategy FROM pairs pr \
             JOIN steps c ON c.id = pr.chosen_step JOIN steps a ON a.id = pr.rejected_step \
             JOIN prompts p ON p.id = pr.prompt_id WHERE pr.run_id = ?",
        )
        .bind(&run_id)
        .fetch_all(store.pool())
        .await
        .map_err(store.err())?;
        let defaults = PairFilters::default();
        let (mut pairs_truncated, mut pairs_near_identical, mut benign_refused) = (0, 0, 0);
        for r in &pair_rows {
            let (c, cf, a, af): (&str, &str, &str, &str) = (r.get(0), r.get(1), r.get(2), r.get(3));
            let revision = r.get::<&str, _>(5) == "revision";
            if revision && r.get::<Option<&str>, _>(4) == Some("benign") && is_refusal(c) {
                benign_refused += 1;
            }
            if cf != "stop" || af != "stop" {
                pairs_truncated += 1;
            }
            if similar_at_least(c, a, defaults.max_similarity) {
                pairs_near_identical += 1;
            }
        }
        out.push(RunStats {
            run_id,
            created_at: run.get(1),
            constitution: run.get(2),
            model_sha256: run.get(3),
            rounds: run.get(4),
            samples: run.get(5),
            stages,
            principles,
            pairs: totals.get(0),
            sampled_pairs: totals.get(8),
            truncated: totals.get(1),
            preambles_stripped: totals.get(5),
            duplicate_prompts: totals.get(6),
            near_duplicate_prompts: totals.get(7),
            pairs_truncated,
            pairs_near_identical,
            benign_refused,
            failures,
            generated_tokens: totals.get(2),
            followup_prompt_tokens: totals.get(3),
            followup_prefill_tokens: totals.get(4),
        });
    }
    Ok(out)
}

/// The first `n` characters of a hash, for display.
fn short(hash: &str, n: usize) -> &str {
    hash.get(..n).unwrap_or(hash)
}

/// A plain-text view for the terminal.
pub fn render(stats: &Stats) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    if stats.runs.is_empty() && stats.trainings.is_empty() && stats.evaluations.is_empty() {
        return "no runs in this database\n".into();
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
