//! The trainer's tables: cached reference log-probs, training runs, per-step metrics and the
//! latest checkpoint of each run.

use sqlx::Row;

use super::{Store, StoreError};

/// What identifies a training run; its id is the hash of all of it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TrainRunRecord {
    pub model_path: String,
    pub model_sha256: String,
    pub data_source: String,
    pub data_sha256: String,
    pub settings: serde_json::Value,
    pub examples: usize,
    pub total_steps: u64,
}

impl TrainRunRecord {
    /// Paths are where things were found, not what they are: they stay out of the id.
    pub fn id(&self) -> String {
        crate::hash::of_json(&serde_json::json!({
            "model": self.model_sha256,
            "data": self.data_sha256,
            "settings": self.settings,
            "steps": self.total_steps,
        }))
    }
}

/// One step's metrics as stored.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct TrainStepRecord {
    pub step: u64,
    pub loss: f64,
    pub reward_chosen: Option<f64>,
    pub reward_rejected: Option<f64>,
    pub margin: Option<f64>,
    pub accuracy: Option<f64>,
    pub logp_chosen: f64,
    pub logp_rejected: Option<f64>,
    pub grad_norm: f64,
    pub lr: f64,
    pub tokens: u64,
    pub seconds: f64,
}

/// A run's final evaluation over all its examples.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct FinalScores {
    pub loss: f64,
    pub accuracy: Option<f64>,
    pub margin: Option<f64>,
}

impl Store {
    /// Cached reference log-probs of `sequences` (hashes) under a model; absent ones are missing.
    pub async fn reference_logps(
        &self,
        model_sha256: &str,
    ) -> Result<std::collections::HashMap<String, f64>, StoreError> {
        self.keyed_values(
            "SELECT sequence_sha256, logp FROM reference_logps WHERE model_sha256 = ?",
            model_sha256,
        )
        .await
    }

    /// Stores reference log-probs (one transaction).
    pub async fn put_reference_logps(
        &self,
        model_sha256: &str,
        values: &[(String, f64)],
    ) -> Result<(), StoreError> {
        self.put_keyed_values(
            "INSERT OR REPLACE INTO reference_logps (model_sha256, sequence_sha256, logp) \
             VALUES (?, ?, ?)",
            model_sha256,
            values,
        )
        .await
    }

    /// Records a run (once; a rerun finds it).
    pub async fn upsert_train_run(&self, run: &TrainRunRecord) -> Result<String, StoreError> {
        let id = run.id();
        sqlx::query(
            "INSERT OR IGNORE INTO train_runs (id, model_path, model_sha256, data_source, \
             data_sha256, settings_json, examples, total_steps) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&id)
        .bind(&run.model_path)
        .bind(&run.model_sha256)
        .bind(&run.data_source)
        .bind(&run.data_sha256)
        .bind(run.settings.to_string())
        .bind(run.examples as i64)
        .bind(run.total_steps as i64)
        .execute(self.pool())
        .await
        .map_err(self.err())?;
        Ok(id)
    }

    /// The steps a run has recorded, in order.
    pub async fn train_steps(&self, run_id: &str) -> Result<Vec<TrainStepRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT step, loss, reward_chosen, reward_rejected, margin, accuracy, logp_chosen, \
             logp_rejected, grad_norm, lr, tokens, seconds FROM train_steps WHERE run_id = ? \
             ORDER BY step",
        )
        .bind(run_id)
        .fetch_all(self.pool())
        .await
        .map_err(self.err())?;
        Ok(rows
            .into_iter()
            .map(|r| TrainStepRecord {
                step: r.get::<i64, _>(0) as u64,
                loss: r.get(1),
                reward_chosen: r.get(2),
                reward_rejected: r.get(3),
                margin: r.get(4),
                accuracy: r.get(5),
                logp_chosen: r.get(6),
                logp_rejected: r.get(7),
                grad_norm: r.get(8),
                lr: r.get(9),
                tokens: r.get::<i64, _>(10) as u64,
                seconds: r.get(11),
            })
            .collect())
    }

    /// Records a step's metrics and, when `checkpoint` is given, the run's new checkpoint — in
    /// one transaction, so a checkpoint never runs ahead of the metrics it follows.
    pub async fn commit_train_step(
        &self,
        run_id: &str,
        record: &TrainStepRecord,
        checkpoint: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await.map_err(self.err())?;
        sqlx::query(
            "INSERT OR REPLACE INTO train_steps (run_id, step, loss, reward_chosen, \
             reward_rejected, margin, accuracy, logp_chosen, logp_rejected, grad_norm, lr, \
             tokens, seconds) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(run_id)
        .bind(record.step as i64)
        .bind(record.loss)
        .bind(record.reward_chosen)
        .bind(record.reward_rejected)
        .bind(record.margin)
        .bind(record.accuracy)
        .bind(record.logp_chosen)
        .bind(record.logp_rejected)
        .bind(record.grad_norm)
        .bind(record.lr)
        .bind(record.tokens as i64)
        .bind(record.seconds)
        .execute(&mut *tx)
        .await
        .map_err(self.err())?;
        if let Some(state) = checkpoint {
            sqlx::query(
                "INSERT OR REPLACE INTO train_checkpoints (run_id, step, state) VALUES (?, ?, ?)",
            )
            .bind(run_id)
            .bind(record.step as i64)
            .bind(state)
            .execute(&mut *tx)
            .await
            .map_err(self.err())?;
        }
        tx.commit().await.map_err(self.err())
    }

    /// A run's latest checkpoint: `(step, state)`.
    pub async fn train_checkpoint(
        &self,
        run_id: &str,
    ) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        let row = sqlx::query("SELECT step, state FROM train_checkpoints WHERE run_id = ?")
            .bind(run_id)
            .fetch_optional(self.pool())
            .await
            .map_err(self.err())?;
        Ok(row.map(|r| (r.get::<i64, _>(0) as u64, r.get::<Vec<u8>, _>(1))))
    }

    /// Marks a run finished with its final scores.
    pub async fn finish_train_run(
        &self,
        run_id: &str,
        scores: Option<&FinalScores>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE train_runs SET finished_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), \
             final_loss = ?, final_accuracy = ?, final_margin = ? WHERE id = ?",
        )
        .bind(scores.map(|s| s.loss))
        .bind(scores.and_then(|s| s.accuracy))
        .bind(scores.and_then(|s| s.margin))
        .bind(run_id)
        .execute(self.pool())
        .await
        .map_err(self.err())?;
        Ok(())
    }

    /// Ids of the runs not finished yet, oldest first.
    pub async fn unfinished_train_runs(&self) -> Result<Vec<String>, StoreError> {
        sqlx::query_scalar(
            "SELECT id FROM train_runs WHERE finished_at IS NULL ORDER BY created_at, id",
        )
        .fetch_all(self.pool())
        .await
        .map_err(self.err())
    }

    /// Whether a run finished, and its final scores.
    pub async fn train_run_finished(
        &self,
        run_id: &str,
    ) -> Result<Option<Option<FinalScores>>, StoreError> {
        let row = sqlx::query(
            "SELECT finished_at, final_loss, final_accuracy, final_margin FROM train_runs \
             WHERE id = ?",
        )
        .bind(run_id)
        .fetch_optional(self.pool())
        .await
        .map_err(self.err())?;
        Ok(row.and_then(|r| {
            r.get::<Option<String>, _>(0)?;
            Some(r.get::<Option<f64>, _>(1).map(|loss| FinalScores {
                loss,
                accuracy: r.get(2),
                margin: r.get(3),
            }))
        }))
    }
}
