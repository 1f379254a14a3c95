//! What `tenets export` reads: every candidate pair with its two answers, its latest judge's
//! label and its run's provenance, in a stable order. Typed rows; the orientation, filters and
//! ranking are [`crate::export`]'s.

use serde::Serialize;
use sqlx::Row;

use super::{Store, StoreError};

/// What a generate run was: its model, template, constitution and sampling settings — the
/// provenance every exported row carries.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunSettings {
    pub run_id: String,
    pub model_sha256: String,
    pub chat_template_sha256: String,
    pub constitution: String,
    pub constitution_sha256: String,
    pub template_sha256: String,
    pub rounds: i64,
    pub samples: i64,
    pub temperature: f64,
    pub top_p: f64,
    pub max_tokens: i64,
    pub seed: i64,
}

/// One candidate pair as stored.
#[derive(Debug, Clone)]
pub struct CandidateRow {
    pub prompt_id: String,
    /// The prompt's messages, as stored (JSON).
    pub messages_json: String,
    pub kind: Option<String>,
    /// The prompt's topic, when its file gave one.
    pub topic: Option<String>,
    pub run: RunSettings,
    /// The run's constitution as it stored it (JSON): its refusal guidance makes safety rows.
    pub constitution_json: String,
    pub strategy: String,
    /// The pair's first step (the revision; for sampled pairs the lower sample) and second:
    /// (output, finish, round).
    pub first: (String, String, i64),
    pub second: (String, String, i64),
    /// The principles of the prompt's critique rounds, in order (a JSON array).
    pub principles_json: String,
    /// The latest judge's p(first ≻ second) (NULL: it gave no answer), and that judge.
    pub p_first: Option<f64>,
    pub judge_id: Option<String>,
}

impl Store {
    /// Every candidate pair, ordered by run, then prompt file order, then strategy.
    pub async fn candidate_pairs(&self) -> Result<Vec<CandidateRow>, StoreError> {
        let sql = "SELECT p.id, p.messages, p.kind, r.id, r.model_sha256, r.chat_template_sha256, \
                   r.constitution_name, r.constitution_sha256, r.template_sha256, r.rounds, \
                   r.temperature, r.top_p, r.max_tokens, r.seed, \
                   c.output, c.finish, a.output, a.finish, \
                   (SELECT json_group_array(principle_id) FROM \
                      (SELECT principle_id FROM steps s WHERE s.run_id = pr.run_id \
                       AND s.prompt_id = pr.prompt_id AND s.stage = 'critique' ORDER BY s.round)), \
                   (SELECT l.p_chosen FROM labels l JOIN judges j ON j.id = l.judge_id \
                      WHERE l.pair_id = pr.id ORDER BY j.created_at DESC, j.id LIMIT 1), \
                   (SELECT l.judge_id FROM labels l JOIN judges j ON j.id = l.judge_id \
                      WHERE l.pair_id = pr.id ORDER BY j.created_at DESC, j.id LIMIT 1), \
                   pr.strategy, c.round, a.round, r.samples, p.topic, r.constitution_json \
                   FROM pairs pr \
                   JOIN prompts p ON p.id = pr.prompt_id \
                   JOIN runs r ON r.id = pr.run_id \
                   JOIN steps c ON c.id = pr.chosen_step \
                   JOIN steps a ON a.id = pr.rejected_step \
                   ORDER BY r.created_at, p.source, p.line, pr.strategy";
        let rows = sqlx::query(sql)
            .fetch_all(self.pool())
            .await
            .map_err(self.err())?;
        Ok(rows
            .iter()
            .map(|r| CandidateRow {
                prompt_id: r.get(0),
                messages_json: r.get(1),
                kind: r.get(2),
                run: RunSettings {
                    run_id: r.get(3),
                    model_sha256: r.get(4),
                    chat_template_sha256: r.get(5),
                    constitution: r.get(6),
                    constitution_sha256: r.get(7),
                    template_sha256: r.get(8),
                    rounds: r.get(9),
                    samples: r.get(24),
                    temperature: r.get(10),
                    top_p: r.get(11),
                    max_tokens: r.get(12),
                    seed: r.get(13),
                },
                first: (r.get(14), r.get(15), r.get(22)),
                second: (r.get(16), r.get(17), r.get(23)),
                principles_json: r.get(18),
                p_first: r.get(19),
                judge_id: r.get(20),
                strategy: r.get(21),
                topic: r.get(25),
                constitution_json: r.get(26),
            })
            .collect())
    }

    /// Every first answer in the store — (prompt, run, text) — oldest run first: what other
    /// runs (an adapter's, say) answered the same prompts.
    pub async fn answers(&self) -> Result<Vec<(String, String, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT s.prompt_id, s.run_id, s.output FROM steps s JOIN runs r ON r.id = s.run_id \
             WHERE s.stage = 'answer' ORDER BY r.created_at, r.id, s.prompt_id, s.round",
        )
        .fetch_all(self.pool())
        .await
        .map_err(self.err())?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
    }
}
