//! `tenets serve`'s decision log: one typed row per completion, and the guard rates `tenets
//! stats` and the report read back.

use serde::Serialize;
use sqlx::Row;

use super::{Store, StoreError};

/// One served completion and what the guards decided about it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GuardDecisionRecord {
    /// The response's id (`chatcmpl-…`).
    pub id: String,
    pub model: String,
    pub model_sha256: String,
    pub constitution: String,
    pub constitution_sha256: String,
    /// `answered`, `refused`, `revised`, `failed` or `cancelled`.
    pub outcome: String,
    /// The guard that fired: `input` or `output`.
    pub guard: Option<String>,
    pub rule: Option<String>,
    pub principle: Option<String>,
    pub topic: Option<String>,
    pub matched: Option<String>,
    /// The classifier's probability, when a classifier flagged it.
    pub score: Option<f64>,
    pub revise_rounds: i64,
    /// `json_schema`, `json_object` or None.
    pub constrained: Option<String>,
    pub stream: bool,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub finish: Option<String>,
    pub latency_ms: i64,
    pub prompt: String,
    pub answer: String,
}

/// The guard rates over every logged completion.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GuardStats {
    pub requests: i64,
    /// Completions by outcome (answered, refused, revised, failed, cancelled).
    pub outcomes: Vec<super::stats::Count>,
    /// Refusals and revisions by guard and principle (`input · illegal-acts`).
    pub fired: Vec<super::stats::Count>,
    pub refused_input: i64,
    pub refused_output: i64,
    pub revised: i64,
    pub streamed: i64,
    pub constrained: i64,
    pub completion_tokens: i64,
    /// Median and 95th-percentile latency of answered requests, in milliseconds.
    pub latency_p50_ms: Option<i64>,
    pub latency_p95_ms: Option<i64>,
}

impl Store {
    /// Logs one decision (committed when this returns).
    pub async fn put_guard_decision(&self, d: &GuardDecisionRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT OR REPLACE INTO guard_decisions (id, model, model_sha256, constitution, \
             constitution_sha256, outcome, guard, rule, principle, topic, matched, score, \
             revise_rounds, constrained, stream, prompt_tokens, completion_tokens, finish, \
             latency_ms, prompt, answer) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&d.id)
        .bind(&d.model)
        .bind(&d.model_sha256)
        .bind(&d.constitution)
        .bind(&d.constitution_sha256)
        .bind(&d.outcome)
        .bind(&d.guard)
        .bind(&d.rule)
        .bind(&d.principle)
        .bind(&d.topic)
        .bind(&d.matched)
        .bind(d.score)
        .bind(d.revise_rounds)
        .bind(&d.constrained)
        .bind(d.stream)
        .bind(d.prompt_tokens)
        .bind(d.completion_tokens)
        .bind(&d.finish)
        .bind(d.latency_ms)
        .bind(&d.prompt)
        .bind(&d.answer)
        .execute(self.pool())
        .await
        .map_err(self.err())?;
        Ok(())
    }

    /// The guard rates, or None when nothing was served into this database.
    pub async fn guard_stats(&self) -> Result<Option<GuardStats>, StoreError> {
        // Every total in one pass over the log.
        let totals = sqlx::query(
            "SELECT COUNT(*), \
             COALESCE(SUM(outcome = 'refused' AND guard = 'input'), 0), \
             COALESCE(SUM(outcome = 'refused' AND guard = 'output'), 0), \
             COALESCE(SUM(outcome = 'revised'), 0), COALESCE(SUM(stream), 0), \
             COALESCE(SUM(constrained IS NOT NULL), 0), COALESCE(SUM(completion_tokens), 0) \
             FROM guard_decisions",
        )
        .fetch_one(self.pool())
        .await
        .map_err(self.err())?;
        let requests: i64 = totals.get(0);
        if requests == 0 {
            return Ok(None);
        }
        let counts = |sql: &'static str| async move {
            let rows = sqlx::query(sql)
                .fetch_all(self.pool())
                .await
                .map_err(self.err())?;
            Ok::<_, StoreError>(
                rows.into_iter()
                    .map(|r| super::stats::Count {
                        name: r.get(0),
                        count: r.get(1),
                    })
                    .collect::<Vec<_>>(),
            )
        };
        let latencies: Vec<i64> = sqlx::query_scalar(
            "SELECT latency_ms FROM guard_decisions WHERE outcome IN ('answered', 'revised') \
             ORDER BY latency_ms",
        )
        .fetch_all(self.pool())
        .await
        .map_err(self.err())?;
        let quantile = |q: f64| {
            (!latencies.is_empty()).then(|| {
                let i = ((latencies.len() - 1) as f64 * q).round() as usize;
                latencies[i]
            })
        };
        Ok(Some(GuardStats {
            requests,
            outcomes: counts(
                "SELECT outcome, COUNT(*) FROM guard_decisions GROUP BY outcome \
                 ORDER BY COUNT(*) DESC, outcome",
            )
            .await?,
            fired: counts(
                "SELECT guard || ' · ' || COALESCE(principle, '?'), COUNT(*) FROM \
                 guard_decisions WHERE guard IS NOT NULL GROUP BY 1 ORDER BY 2 DESC, 1",
            )
            .await?,
            refused_input: totals.get(1),
            refused_output: totals.get(2),
            revised: totals.get(3),
            streamed: totals.get(4),
            constrained: totals.get(5),
            completion_tokens: totals.get(6),
            latency_p50_ms: quantile(0.5),
            latency_p95_ms: quantile(0.95),
        }))
    }
}
