//! `tenets stats`: what a database holds — per run, steps per stage and principle, pairs,
//! truncations, failures and their reasons, token counts (and how much the KV cache saved).

use serde::Serialize;
use sqlx::Row;

use crate::store::{Store, StoreError};

#[derive(Debug, Clone, Serialize)]
pub struct RunStats {
    pub run_id: String,
    pub created_at: String,
    pub constitution: String,
    pub model_sha256: String,
    pub rounds: i64,
    pub stages: Vec<Count>,
    pub principles: Vec<Count>,
    pub pairs: i64,
    pub truncated: i64,
    pub failures: Vec<Count>,
    pub generated_tokens: i64,
    /// Conversation tokens of critique/revision turns, and how many of them were decoded.
    pub followup_prompt_tokens: i64,
    pub followup_prefill_tokens: i64,
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

pub async fn collect(store: &Store) -> Result<Vec<RunStats>, StoreError> {
    let runs = sqlx::query(
        "SELECT id, created_at, constitution_name, model_sha256, rounds FROM runs ORDER BY created_at",
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
               (SELECT COALESCE(SUM(prefill_tokens), 0) FROM steps WHERE run_id = ?1 AND stage != 'answer')",
        )
        .bind(&run_id)
        .fetch_one(store.pool())
        .await
        .map_err(store.err())?;
        out.push(RunStats {
            run_id,
            created_at: run.get(1),
            constitution: run.get(2),
            model_sha256: run.get(3),
            rounds: run.get(4),
            stages,
            principles,
            pairs: totals.get(0),
            truncated: totals.get(1),
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
pub fn render(stats: &[RunStats]) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    if stats.is_empty() {
        return "no runs in this database\n".into();
    }
    for run in stats {
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
        let _ = writeln!(s, "  {:<10} {:>6}", "pairs", run.pairs);
        let _ = writeln!(
            s,
            "  {:<10} {:>6}  (hit max tokens or context)",
            "truncated", run.truncated
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
    s
}
