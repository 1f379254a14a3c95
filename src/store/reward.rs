//! A reward model's scores of answers: one row per (reward model, prompt + answer), so a rerun
//! of `tenets reward score` skips what is scored and export finds a pair's two scores.

use std::collections::HashMap;

use sqlx::Row;

use super::{Store, StoreError};

impl Store {
    /// Records a reward model (once; a rerun finds it).
    pub async fn upsert_reward_model(
        &self,
        sha256: &str,
        path: &str,
        base_sha256: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT OR IGNORE INTO reward_models (sha256, path, base_sha256) VALUES (?, ?, ?)",
        )
        .bind(sha256)
        .bind(path)
        .bind(base_sha256)
        .execute(self.pool())
        .await
        .map_err(self.err())?;
        Ok(())
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
