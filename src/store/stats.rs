//! What `tenets stats` and the report read: per run, its steps, pairs and token counts; per
//! judge, the figures of its labels; per training run, its progress. Typed rows; the report
//! around them is [`crate::stats`].

use serde::Serialize;
use sqlx::Row;

use super::{Store, StoreError};

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
    /// Its accuracy on the constitution's known-answer pairs, when it was calibrated.
    pub calibration: Option<super::JudgeCalibration>,
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

/// A judge's labels summed up (`tenets label`'s closing lines).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct JudgeFigures {
    /// Mean p(chosen ≻ rejected) over the judge's labels.
    pub mean_p_chosen: f64,
    /// Share of (pair, question) whose two orders picked different winners.
    pub order_disagreement: f64,
    /// Mean P(A) over all judgments: 0.5 for a judge without a position preference.
    pub mean_p_a: f64,
    /// Mean probability the judge put on "A" or "B" at all (how well it kept to the format).
    pub mean_answer_mass: f64,
    /// Judgments where the judge put no probability on either letter (or the probe came back
    /// malformed): kept, counted, and left out of labels and means.
    pub unanswered_judgments: usize,
    /// Pairs none of whose judgments answered: they have no label under this judge.
    pub pairs_without_answer: usize,
}

/// A generate run, as `tenets stats` lists it.
#[derive(Debug, Clone)]
pub struct RunRow {
    pub run_id: String,
    pub created_at: String,
    pub constitution: String,
    pub model_sha256: String,
    pub rounds: i64,
    pub samples: i64,
}

/// A run's totals.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunTotals {
    pub pairs: i64,
    pub truncated_steps: i64,
    pub generated_tokens: i64,
    pub followup_prompt_tokens: i64,
    pub followup_prefill_tokens: i64,
    pub preambles_stripped: i64,
    pub duplicate_prompts: i64,
    pub near_duplicate_prompts: i64,
    pub sampled_pairs: i64,
}

/// A pair's two answers, their finish reasons, its prompt's kind and its strategy.
#[derive(Debug, Clone)]
pub struct PairTexts {
    pub chosen: String,
    pub chosen_finish: String,
    pub rejected: String,
    pub rejected_finish: String,
    pub kind: Option<String>,
    pub strategy: String,
}

/// What a run's steps are counted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunCounts {
    Stages,
    Principles,
    Failures,
}

impl Store {
    /// Every generate run, oldest first.
    pub async fn runs(&self) -> Result<Vec<RunRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, created_at, constitution_name, model_sha256, rounds, samples FROM runs \
             ORDER BY created_at",
        )
        .fetch_all(self.pool())
        .await
        .map_err(self.err())?;
        Ok(rows
            .iter()
            .map(|r| RunRow {
                run_id: r.get(0),
                created_at: r.get(1),
                constitution: r.get(2),
                model_sha256: r.get(3),
                rounds: r.get(4),
                samples: r.get(5),
            })
            .collect())
    }

    /// A run's steps per stage, critiques per principle, or failures per reason.
    pub async fn run_counts(&self, run_id: &str, by: RunCounts) -> Result<Vec<Count>, StoreError> {
        let sql = match by {
            RunCounts::Stages => {
                "SELECT stage, COUNT(*) FROM steps WHERE run_id = ? GROUP BY stage \
                 ORDER BY CASE stage WHEN 'answer' THEN 0 WHEN 'critique' THEN 1 ELSE 2 END"
            }
            RunCounts::Principles => {
                "SELECT principle_id, COUNT(*) FROM steps WHERE run_id = ? AND stage = 'critique' \
                 GROUP BY principle_id ORDER BY COUNT(*) DESC, principle_id"
            }
            RunCounts::Failures => {
                "SELECT reason, COUNT(*) FROM failures WHERE run_id = ? GROUP BY reason \
                 ORDER BY COUNT(*) DESC"
            }
        };
        let rows = sqlx::query(sql)
            .bind(run_id)
            .fetch_all(self.pool())
            .await
            .map_err(self.err())?;
        Ok(rows
            .into_iter()
            .map(|r| Count {
                name: r.get(0),
                count: r.get(1),
            })
            .collect())
    }

    /// A run's totals.
    pub async fn run_totals(&self, run_id: &str) -> Result<RunTotals, StoreError> {
        let r = sqlx::query(
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
        .bind(run_id)
        .fetch_one(self.pool())
        .await
        .map_err(self.err())?;
        Ok(RunTotals {
            pairs: r.get(0),
            truncated_steps: r.get(1),
            generated_tokens: r.get(2),
            followup_prompt_tokens: r.get(3),
            followup_prefill_tokens: r.get(4),
            preambles_stripped: r.get(5),
            duplicate_prompts: r.get(6),
            near_duplicate_prompts: r.get(7),
            sampled_pairs: r.get(8),
        })
    }

    /// Every pair of a run with its two answers.
    pub async fn run_pair_texts(&self, run_id: &str) -> Result<Vec<PairTexts>, StoreError> {
        let rows = sqlx::query(
            "SELECT c.output, c.finish, a.output, a.finish, p.kind, pr.strategy FROM pairs pr \
             JOIN steps c ON c.id = pr.chosen_step JOIN steps a ON a.id = pr.rejected_step \
             JOIN prompts p ON p.id = pr.prompt_id WHERE pr.run_id = ?",
        )
        .bind(run_id)
        .fetch_all(self.pool())
        .await
        .map_err(self.err())?;
        Ok(rows
            .iter()
            .map(|r| PairTexts {
                chosen: r.get(0),
                chosen_finish: r.get(1),
                rejected: r.get(2),
                rejected_finish: r.get(3),
                kind: r.get(4),
                strategy: r.get(5),
            })
            .collect())
    }

    /// Every training run, oldest first.
    pub async fn trainings(&self) -> Result<Vec<TrainingStats>, StoreError> {
        let rows = sqlx::query(
            "SELECT t.id, t.created_at, t.data_source, \
             COALESCE(json_extract(t.settings_json, '$.loss'), '?'), t.examples, \
             (SELECT COUNT(*) FROM train_steps s WHERE s.run_id = t.id), t.total_steps, \
             (SELECT step FROM train_checkpoints c WHERE c.run_id = t.id), \
             (SELECT loss FROM train_steps s WHERE s.run_id = t.id ORDER BY step DESC LIMIT 1), \
             t.finished_at IS NOT NULL, t.final_loss, t.final_accuracy \
             FROM train_runs t ORDER BY t.created_at, t.id",
        )
        .fetch_all(self.pool())
        .await
        .map_err(self.err())?;
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

    /// Every judge's figures, oldest first.
    pub async fn judges(&self) -> Result<Vec<JudgeStats>, StoreError> {
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
        .fetch_all(self.pool())
        .await
        .map_err(self.err())?;
        let mut judges: Vec<JudgeStats> = rows
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
                calibration: None,
            })
            .collect();
        for judge in &mut judges {
            judge.calibration = self.calibration(&judge.judge_id).await?;
        }
        Ok(judges)
    }

    /// One judge's figures, as `tenets label` sums them up. Means are over the judgments that
    /// answered; the answer mass is over all of them (a judgment without one has mass 0, which
    /// is the point).
    pub async fn judge_figures(&self, judge_id: &str) -> Result<JudgeFigures, StoreError> {
        let row = sqlx::query(
            "SELECT (SELECT COALESCE(AVG(p_chosen), 0.0) FROM labels WHERE judge_id = ?1), \
             (SELECT COALESCE(CAST(SUM(order_disagreements) AS REAL) / NULLIF(SUM(judgments) / 2, 0), 0.0) \
                FROM labels WHERE judge_id = ?1), \
             (SELECT COALESCE(AVG(p_a), 0.0) FROM judgments WHERE judge_id = ?1), \
             (SELECT COALESCE(AVG(mass_a + mass_b), 0.0) FROM judgments WHERE judge_id = ?1), \
             (SELECT COUNT(*) FROM judgments WHERE judge_id = ?1 AND no_answer IS NOT NULL), \
             (SELECT COUNT(*) FROM labels WHERE judge_id = ?1 AND p_chosen IS NULL)",
        )
        .bind(judge_id)
        .fetch_one(self.pool())
        .await
        .map_err(self.err())?;
        Ok(JudgeFigures {
            mean_p_chosen: row.get(0),
            order_disagreement: row.get(1),
            mean_p_a: row.get(2),
            mean_answer_mass: row.get(3),
            unanswered_judgments: row.get::<i64, _>(4) as usize,
            pairs_without_answer: row.get::<i64, _>(5) as usize,
        })
    }

    /// The label values of a judge (those with an answer).
    pub async fn label_values(&self, judge_id: &str) -> Result<Vec<f64>, StoreError> {
        sqlx::query_scalar(
            "SELECT p_chosen FROM labels WHERE judge_id = ? AND p_chosen IS NOT NULL",
        )
        .bind(judge_id)
        .fetch_all(self.pool())
        .await
        .map_err(self.err())
    }
}
