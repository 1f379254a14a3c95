//! The evaluation tables: evaluations, their prompts, refusal verdicts per answer and the
//! adapter-vs-base comparisons (see `migrations/0007_eval.sql`).

use std::collections::HashSet;

use sqlx::Row;

use super::{Store, StoreError};

/// Which model answered: the base alone, or the base with the adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EvalSide {
    Base,
    Adapter,
}

impl EvalSide {
    pub fn as_str(self) -> &'static str {
        match self {
            EvalSide::Base => "base",
            EvalSide::Adapter => "adapter",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "base" => Some(EvalSide::Base),
            "adapter" => Some(EvalSide::Adapter),
            _ => None,
        }
    }
}

/// Everything that identifies an evaluation; its hash is the evaluation id.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EvalRecord {
    pub name: String,
    pub base_run_id: String,
    /// The candidate side's run (an adapter, a control vector or both decode it).
    pub adapter_run_id: Option<String>,
    /// The candidate's files: the adapter's path, the control vector's with its scale, or both.
    pub adapter_path: Option<String>,
    pub judge_model_path: String,
    pub judge_model_sha256: String,
    pub chat_template_sha256: String,
    pub constitution_name: String,
    pub constitution_sha256: String,
    pub constitution_json: String,
    pub verdict_frame_sha256: String,
    pub judge_frame_sha256: String,
    pub questions: i64,
    pub principle_questions: i64,
    pub seed: i64,
    pub prompts_sha256: String,
    /// How the candidate's answer to a prompt was picked among its samples (best-of-N by a
    /// reward model); `None`: its one answer.
    pub candidate_selection: Option<String>,
}

impl EvalRecord {
    /// The name and paths are labels, not identity: they stay out of the id.
    pub fn id(&self) -> String {
        let (questions, principle_questions, seed) = (
            self.questions.to_string(),
            self.principle_questions.to_string(),
            self.seed.to_string(),
        );
        let mut parts = vec![
            self.base_run_id.as_str(),
            self.adapter_run_id.as_deref().unwrap_or("-"),
            &self.judge_model_sha256,
            &self.chat_template_sha256,
            &self.constitution_sha256,
            &self.verdict_frame_sha256,
            &self.judge_frame_sha256,
            &questions,
            &principle_questions,
            &seed,
            &self.prompts_sha256,
        ];
        // Evaluations of a candidate's only answer keep the ids they always had.
        if let Some(selection) = &self.candidate_selection {
            parts.push(selection);
        }
        crate::hash::of_parts(&parts)
    }

    /// What the judge's calibration is kept under: the judge model, its chat template and the
    /// verdict frame (the only things its verdict on a known answer depends on).
    pub fn judge_key(&self) -> String {
        judge_key(
            &self.judge_model_sha256,
            &self.chat_template_sha256,
            &self.verdict_frame_sha256,
        )
    }
}

fn judge_key(model: &str, chat_template: &str, verdict_frame: &str) -> String {
    crate::hash::of_parts(&["verdict judge", model, chat_template, verdict_frame])
}

/// One answer's refusal verdict, by both judges.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct VerdictRecord {
    pub eval_id: String,
    pub side: EvalSide,
    pub prompt_id: String,
    pub step_id: String,
    /// The string-pattern judge: "comply" or "refuse".
    pub pattern: String,
    /// The judge model's verdict ("comply", "refuse" or "partial"), or why it gave none
    /// ("no-mass", "tie").
    pub judge: Result<&'static str, &'static str>,
    pub p_comply: f64,
    pub p_refuse: f64,
    pub p_partial: f64,
    pub answer_mass: f64,
}

impl Store {
    /// Records an evaluation and the prompts it covers (idempotent); returns its id. A rerun
    /// under a new name renames it.
    pub async fn upsert_eval(
        &self,
        eval: &EvalRecord,
        prompt_ids: &[String],
    ) -> Result<String, StoreError> {
        let id = eval.id();
        let mut tx = self.pool().begin().await.map_err(self.err())?;
        sqlx::query(
            "INSERT INTO evals (id, name, base_run_id, adapter_run_id, adapter_path, \
             judge_model_path, judge_model_sha256, chat_template_sha256, constitution_name, \
             constitution_sha256, constitution_json, verdict_frame_sha256, judge_frame_sha256, \
             questions, principle_questions, seed, prompts_sha256, candidate_selection) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (id) DO UPDATE SET name = excluded.name",
        )
        .bind(&id)
        .bind(&eval.name)
        .bind(&eval.base_run_id)
        .bind(&eval.adapter_run_id)
        .bind(&eval.adapter_path)
        .bind(&eval.judge_model_path)
        .bind(&eval.judge_model_sha256)
        .bind(&eval.chat_template_sha256)
        .bind(&eval.constitution_name)
        .bind(&eval.constitution_sha256)
        .bind(&eval.constitution_json)
        .bind(&eval.verdict_frame_sha256)
        .bind(&eval.judge_frame_sha256)
        .bind(eval.questions)
        .bind(eval.principle_questions)
        .bind(eval.seed)
        .bind(&eval.prompts_sha256)
        .bind(&eval.candidate_selection)
        .execute(&mut *tx)
        .await
        .map_err(self.err())?;
        for prompt in prompt_ids {
            sqlx::query("INSERT OR IGNORE INTO eval_prompts (eval_id, prompt_id) VALUES (?, ?)")
                .bind(&id)
                .bind(prompt)
                .execute(&mut *tx)
                .await
                .map_err(self.err())?;
        }
        tx.commit().await.map_err(self.err())?;
        Ok(id)
    }

    /// The (side, prompt) answers of an evaluation that already have their verdict.
    pub async fn eval_verdicts_done(
        &self,
        eval_id: &str,
    ) -> Result<HashSet<(EvalSide, String)>, StoreError> {
        let rows = sqlx::query("SELECT side, prompt_id FROM eval_verdicts WHERE eval_id = ?")
            .bind(eval_id)
            .fetch_all(self.pool())
            .await
            .map_err(self.err())?;
        Ok(rows
            .into_iter()
            .filter_map(|r| Some((EvalSide::parse(r.get(0))?, r.get(1))))
            .collect())
    }

    pub async fn commit_verdict(&self, v: &VerdictRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT OR IGNORE INTO eval_verdicts (eval_id, side, prompt_id, step_id, pattern, \
             judge, no_verdict, p_comply, p_refuse, p_partial, answer_mass) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&v.eval_id)
        .bind(v.side.as_str())
        .bind(&v.prompt_id)
        .bind(&v.step_id)
        .bind(&v.pattern)
        .bind(v.judge.ok())
        .bind(v.judge.err())
        .bind(v.p_comply)
        .bind(v.p_refuse)
        .bind(v.p_partial)
        .bind(v.answer_mass)
        .execute(self.pool())
        .await
        .map_err(self.err())?;
        Ok(())
    }
}

/// The judge model's verdict on one known-answer calibration item.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct KnownVerdictRecord {
    /// [`EvalRecord::judge_key`].
    pub judge_key: String,
    pub item_id: String,
    /// What the item tests ("refuse restricted", "help allowed").
    pub kind: String,
    /// The verdict the answer deserves: "comply" or "refuse".
    pub expected: String,
    /// As in [`VerdictRecord`].
    pub judge: Result<&'static str, &'static str>,
    pub p_comply: f64,
    pub p_refuse: f64,
    pub p_partial: f64,
    pub answer_mass: f64,
}

/// A stored calibration verdict: (item id, expected, the judge's verdict or NULL, p_refuse).
pub type KnownVerdictRow = (String, String, Option<String>, f64);

/// An evaluation's header, as its results show it.
#[derive(Debug, Clone)]
pub struct EvalHead {
    pub name: String,
    pub created_at: String,
    pub constitution: String,
    pub adapter_path: Option<String>,
    pub judge_model_path: String,
    pub prompts: usize,
    /// [`EvalRecord::judge_key`].
    pub judge_key: String,
    /// The constitution as the evaluation used it (JSON).
    pub constitution_json: String,
}

/// One stored refusal verdict with its prompt's tags and its answer's finish.
#[derive(Debug, Clone)]
pub struct VerdictRow {
    pub side: String,
    pub prompt_id: String,
    pub kind: Option<String>,
    pub topic: Option<String>,
    pub style: Option<String>,
    pub pattern: String,
    /// NULL: the judge model gave no verdict.
    pub judge: Option<String>,
    pub finish: String,
}

/// One evaluated answer with its prompt and verdicts.
#[derive(Debug, Clone)]
pub struct EvalAnswerRow {
    pub side: String,
    pub prompt_id: String,
    pub kind: Option<String>,
    /// The prompt's last user message.
    pub prompt: String,
    pub output: String,
    pub pattern: String,
    pub judge: Option<String>,
}

/// A prompt's comparison: (prompt id, p_adapter, judgments, order disagreements).
pub type ComparisonRow = (String, f64, i64, i64);

/// A comparison judgment that answered: (prompt, question, swapped, p_adapter).
pub type ComparisonJudgment = (String, String, bool, f64);

impl Store {
    /// Every evaluation in the database, oldest first: (id, name).
    pub async fn evals(&self) -> Result<Vec<(String, String)>, StoreError> {
        let rows = sqlx::query("SELECT id, name FROM evals ORDER BY created_at, id")
            .fetch_all(self.pool())
            .await
            .map_err(self.err())?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// The header of evaluation `eval_id` (an error naming it when there is none).
    pub async fn eval_head(&self, eval_id: &str) -> Result<EvalHead, StoreError> {
        let r = sqlx::query(
            "SELECT name, created_at, constitution_name, adapter_path, judge_model_path, \
             (SELECT COUNT(*) FROM eval_prompts WHERE eval_id = e.id), judge_model_sha256, \
             chat_template_sha256, verdict_frame_sha256, constitution_json FROM evals e \
             WHERE id = ?",
        )
        .bind(eval_id)
        .fetch_optional(self.pool())
        .await
        .map_err(self.err())?
        .ok_or_else(|| StoreError::Other {
            path: self.path().to_path_buf(),
            message: format!("no evaluation {eval_id}"),
        })?;
        Ok(EvalHead {
            name: r.get(0),
            created_at: r.get(1),
            constitution: r.get(2),
            adapter_path: r.get(3),
            judge_model_path: r.get(4),
            prompts: r.get::<i64, _>(5) as usize,
            judge_key: judge_key(r.get(6), r.get(7), r.get(8)),
            constitution_json: r.get(9),
        })
    }

    /// The evaluation's answers with their prompts and verdicts, by prompt id and side.
    pub async fn eval_answers(&self, eval_id: &str) -> Result<Vec<EvalAnswerRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT v.side, v.prompt_id, p.kind, p.messages, s.output, v.pattern, v.judge \
             FROM eval_verdicts v JOIN prompts p ON p.id = v.prompt_id \
             JOIN steps s ON s.id = v.step_id WHERE v.eval_id = ? ORDER BY v.prompt_id, v.side",
        )
        .bind(eval_id)
        .fetch_all(self.pool())
        .await
        .map_err(self.err())?;
        rows.iter()
            .map(|r| {
                let messages: Vec<crate::chat::Message> = serde_json::from_str(r.get::<&str, _>(3))
                    .map_err(|e| StoreError::Other {
                        path: self.path().to_path_buf(),
                        message: format!("prompt messages of {}: {e}", r.get::<&str, _>(1)),
                    })?;
                let prompt = crate::chat::last_user(&messages).to_string();
                Ok(EvalAnswerRow {
                    side: r.get(0),
                    prompt_id: r.get(1),
                    kind: r.get(2),
                    prompt,
                    output: r.get(4),
                    pattern: r.get(5),
                    judge: r.get(6),
                })
            })
            .collect()
    }

    /// The evaluation's refusal verdicts, by prompt and side.
    pub async fn eval_verdicts(&self, eval_id: &str) -> Result<Vec<VerdictRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT v.side, v.prompt_id, p.kind, p.topic, p.style, v.pattern, v.judge, s.finish \
             FROM eval_verdicts v JOIN prompts p ON p.id = v.prompt_id \
             JOIN steps s ON s.id = v.step_id WHERE v.eval_id = ? ORDER BY v.prompt_id, v.side",
        )
        .bind(eval_id)
        .fetch_all(self.pool())
        .await
        .map_err(self.err())?;
        Ok(rows
            .iter()
            .map(|r| VerdictRow {
                side: r.get(0),
                prompt_id: r.get(1),
                kind: r.get(2),
                topic: r.get(3),
                style: r.get(4),
                pattern: r.get(5),
                judge: r.get(6),
                finish: r.get(7),
            })
            .collect())
    }

    /// The evaluation's prompt comparisons that have a value (some judgment answered).
    pub async fn eval_comparisons(&self, eval_id: &str) -> Result<Vec<ComparisonRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT prompt_id, p_adapter, judgments, order_disagreements FROM eval_comparisons \
             WHERE eval_id = ? AND p_adapter IS NOT NULL ORDER BY prompt_id",
        )
        .bind(eval_id)
        .fetch_all(self.pool())
        .await
        .map_err(self.err())?;
        Ok(rows
            .into_iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect())
    }

    /// The evaluation's comparison judgments that answered.
    pub async fn eval_judgments(
        &self,
        eval_id: &str,
    ) -> Result<Vec<ComparisonJudgment>, StoreError> {
        let rows = sqlx::query(
            "SELECT prompt_id, question_id, swapped, p_adapter FROM eval_judgments \
             WHERE eval_id = ? AND p_adapter IS NOT NULL ORDER BY prompt_id, question_id, swapped",
        )
        .bind(eval_id)
        .fetch_all(self.pool())
        .await
        .map_err(self.err())?;
        Ok(rows
            .into_iter()
            .map(|r| (r.get(0), r.get(1), r.get::<i64, _>(2) == 1, r.get(3)))
            .collect())
    }

    /// (comparison judgments without an answer, prompts none of whose judgments answered).
    pub async fn eval_unanswered(&self, eval_id: &str) -> Result<(usize, usize), StoreError> {
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM eval_judgments WHERE eval_id = ?1 AND no_answer IS NOT NULL), \
             (SELECT COUNT(*) FROM eval_comparisons WHERE eval_id = ?1 AND p_adapter IS NULL)",
        )
        .bind(eval_id)
        .fetch_one(self.pool())
        .await
        .map_err(self.err())?;
        Ok((row.get::<i64, _>(0) as usize, row.get::<i64, _>(1) as usize))
    }
}

impl Store {
    /// The calibration items the judge `judge_key` has a verdict on.
    pub async fn eval_calibration_done(
        &self,
        judge_key: &str,
    ) -> Result<HashSet<String>, StoreError> {
        let rows = sqlx::query("SELECT item_id FROM eval_verdict_calibration WHERE judge_key = ?")
            .bind(judge_key)
            .fetch_all(self.pool())
            .await
            .map_err(self.err())?;
        Ok(rows.into_iter().map(|r| r.get(0)).collect())
    }

    pub async fn commit_known_verdict(&self, v: &KnownVerdictRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT OR IGNORE INTO eval_verdict_calibration (judge_key, item_id, kind, expected, \
             judge, no_verdict, p_comply, p_refuse, p_partial, answer_mass) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&v.judge_key)
        .bind(&v.item_id)
        .bind(&v.kind)
        .bind(&v.expected)
        .bind(v.judge.ok())
        .bind(v.judge.err())
        .bind(v.p_comply)
        .bind(v.p_refuse)
        .bind(v.p_partial)
        .bind(v.answer_mass)
        .execute(self.pool())
        .await
        .map_err(self.err())?;
        Ok(())
    }

    /// The judge `judge_key`'s verdicts on known answers (of any constitution), by item.
    pub async fn eval_calibration(
        &self,
        judge_key: &str,
    ) -> Result<Vec<KnownVerdictRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT item_id, expected, judge, p_refuse FROM eval_verdict_calibration \
             WHERE judge_key = ? ORDER BY item_id",
        )
        .bind(judge_key)
        .fetch_all(self.pool())
        .await
        .map_err(self.err())?;
        Ok(rows
            .into_iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect())
    }
}
