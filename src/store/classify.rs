//! A safety classifier's runs over a database (`tenets classify --db`): its settings, what it
//! flagged and its figures on the tagged prompts, one row per setting, for `tenets report`.

use sqlx::Row;

use super::{Store, StoreError};

/// One classifier run as stored.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ClassifierRunRecord {
    /// `probe`, `reward` or `judge`.
    pub scorer: String,
    /// What the scorer was fitted on (the probe's fit set) or read with (the reward model).
    pub scorer_input: String,
    pub model_sha256: String,
    pub threshold: f64,
    /// `prompt`, `answer` or `both`.
    pub target: String,
    pub prompts: i64,
    pub flagged: i64,
    pub answers: i64,
    pub answers_flagged: i64,
    /// The figures on the tagged prompts (`guard::screen::ScreenFigures` as JSON).
    pub figures_json: Option<String>,
}

impl ClassifierRunRecord {
    /// The run's id: its settings (a rerun with the same ones replaces its row).
    pub fn id(&self) -> String {
        crate::hash::of_parts(&[
            &self.scorer,
            &self.scorer_input,
            &self.model_sha256,
            &format!("{:.6}", self.threshold),
            &self.target,
        ])
    }
}

impl Store {
    /// Records a classifier run, replacing an earlier one with the same settings.
    pub async fn put_classifier_run(&self, run: &ClassifierRunRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT OR REPLACE INTO classifier_runs (id, scorer, scorer_input, model_sha256, \
             threshold, target, prompts, flagged, answers, answers_flagged, figures_json) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(run.id())
        .bind(&run.scorer)
        .bind(&run.scorer_input)
        .bind(&run.model_sha256)
        .bind(run.threshold)
        .bind(&run.target)
        .bind(run.prompts)
        .bind(run.flagged)
        .bind(run.answers)
        .bind(run.answers_flagged)
        .bind(&run.figures_json)
        .execute(self.pool())
        .await
        .map_err(self.err())?;
        Ok(())
    }

    /// Every classifier run, oldest first.
    pub async fn classifier_runs(&self) -> Result<Vec<ClassifierRunRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT scorer, scorer_input, model_sha256, threshold, target, prompts, flagged, \
             answers, answers_flagged, figures_json FROM classifier_runs ORDER BY created_at, id",
        )
        .fetch_all(self.pool())
        .await
        .map_err(self.err())?;
        Ok(rows
            .into_iter()
            .map(|r| ClassifierRunRecord {
                scorer: r.get(0),
                scorer_input: r.get(1),
                model_sha256: r.get(2),
                threshold: r.get(3),
                target: r.get(4),
                prompts: r.get(5),
                flagged: r.get(6),
                answers: r.get(7),
                answers_flagged: r.get(8),
                figures_json: r.get(9),
            })
            .collect())
    }
}
