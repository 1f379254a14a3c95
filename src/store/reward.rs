//! A reward model's scores of answers: one row per (reward model, prompt + answer), so a rerun
//! of `tenets reward score` skips what is scored and export finds a pair's two scores.

use std::collections::HashMap;

use sqlx::Row;

use super::{Store, StoreError};

/// A reward model as a database records it: its file, its base and what its training
/// measured.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RewardModelRecord {
    pub sha256: String,
    pub path: String,
    pub base_sha256: String,
    pub train_pairs: Option<i64>,
    pub held_out_pairs: Option<i64>,
    /// How often the chosen answer of a held-out pair scored higher.
    pub held_out_accuracy: Option<f64>,
}

impl Store {
    /// Records a reward model; a rerun keeps its row and refreshes what its training measured.
    pub async fn upsert_reward_model(&self, rm: &RewardModelRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO reward_models (sha256, path, base_sha256, train_pairs, held_out_pairs, \
             held_out_accuracy) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (sha256) DO UPDATE SET \
             train_pairs = excluded.train_pairs, held_out_pairs = excluded.held_out_pairs, \
             held_out_accuracy = excluded.held_out_accuracy",
        )
        .bind(&rm.sha256)
        .bind(&rm.path)
        .bind(&rm.base_sha256)
        .bind(rm.train_pairs)
        .bind(rm.held_out_pairs)
        .bind(rm.held_out_accuracy)
        .execute(self.pool())
        .await
        .map_err(self.err())?;
        Ok(())
    }

    /// The reward model that picked an evaluation's candidate answers (best-of-N), if one did.
    pub async fn eval_reward_model(
        &self,
        eval_id: &str,
    ) -> Result<Option<RewardModelRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT r.sha256, r.path, r.base_sha256, r.train_pairs, r.held_out_pairs, \
             r.held_out_accuracy FROM evals e JOIN reward_models r \
             ON e.candidate_selection LIKE '%' || r.sha256 WHERE e.id = ?",
        )
        .bind(eval_id)
        .fetch_optional(self.pool())
        .await
        .map_err(self.err())?;
        Ok(row.map(|r| RewardModelRecord {
            sha256: r.get(0),
            path: r.get(1),
            base_sha256: r.get(2),
            train_pairs: r.get(3),
            held_out_pairs: r.get(4),
            held_out_accuracy: r.get(5),
        }))
    }

    /// Every score stored for the reward model `sha256`, by text hash.
    pub async fn reward_scores(&self, sha256: &str) -> Result<HashMap<String, f64>, StoreError> {
        self.keyed_values(
            "SELECT text_sha256, score FROM reward_scores WHERE reward_model_sha256 = ?",
            sha256,
        )
        .await
    }

    /// The scores of the reward model that scored this database last, and its SHA-256; none
    /// where no reward model has scored it.
    pub async fn latest_reward_scores(
        &self,
    ) -> Result<Option<(String, HashMap<String, f64>)>, StoreError> {
        let latest = sqlx::query(
            "SELECT reward_model_sha256 FROM reward_scores ORDER BY created_at DESC, rowid DESC \
             LIMIT 1",
        )
        .fetch_optional(self.pool())
        .await
        .map_err(self.err())?;
        match latest {
            Some(row) => {
                let sha: String = row.get(0);
                let scores = self.reward_scores(&sha).await?;
                Ok(Some((sha, scores)))
            }
            None => Ok(None),
        }
    }

    /// Stores scores of the reward model `sha256` (one transaction).
    pub async fn put_reward_scores(
        &self,
        sha256: &str,
        scores: &[(String, f64)],
    ) -> Result<(), StoreError> {
        self.put_keyed_values(
            "INSERT OR REPLACE INTO reward_scores (reward_model_sha256, text_sha256, score) \
             VALUES (?, ?, ?)",
            sha256,
            scores,
        )
        .await
    }

    /// `(key, value)` rows of one owner: `sql` selects the two columns, binding the owner.
    pub(super) async fn keyed_values(
        &self,
        sql: &str,
        owner: &str,
    ) -> Result<HashMap<String, f64>, StoreError> {
        let rows = sqlx::query(sql)
            .bind(owner)
            .fetch_all(self.pool())
            .await
            .map_err(self.err())?;
        Ok(rows
            .into_iter()
            .map(|r| (r.get::<String, _>(0), r.get::<f64, _>(1)))
            .collect())
    }

    /// Stores `(key, value)` rows of one owner in one transaction: `sql` inserts a row,
    /// binding the owner, the key and the value.
    pub(super) async fn put_keyed_values(
        &self,
        sql: &str,
        owner: &str,
        values: &[(String, f64)],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await.map_err(self.err())?;
        for (key, value) in values {
            sqlx::query(sql)
                .bind(owner)
                .bind(key)
                .bind(value)
                .execute(&mut *tx)
                .await
                .map_err(self.err())?;
        }
        tx.commit().await.map_err(self.err())
    }
}
