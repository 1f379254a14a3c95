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
    pub adapter_run_id: Option<String>,
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
}

impl EvalRecord {
    /// The name and paths are labels, not identity: they stay out of the id.
    pub fn id(&self) -> String {
        crate::hash::of_parts(&[
            &self.base_run_id,
            self.adapter_run_id.as_deref().unwrap_or("-"),
            &self.judge_model_sha256,
            &self.chat_template_sha256,
            &self.constitution_sha256,
            &self.verdict_frame_sha256,
            &self.judge_frame_sha256,
            &self.questions.to_string(),
            &self.principle_questions.to_string(),
            &self.seed.to_string(),
            &self.prompts_sha256,
        ])
    }
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
             questions, principle_questions, seed, prompts_sha256) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
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
