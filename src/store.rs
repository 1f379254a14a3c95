//! The SQLite store: every finished step is committed here before the next one is scheduled.
//!
//! WAL journal with `synchronous = FULL`, so a committed step survives a kill -9 or a power cut.
//! Rows are keyed by content hashes and inserted with `ON CONFLICT DO NOTHING`, so a rerun of
//! the same work can never duplicate them. Schema changes live in `migrations/`.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

use crate::hash;
use crate::prompt::PromptItem;

mod calibration;
mod classify;
mod eval;
pub mod export;
mod guard;
pub mod merge;
mod reward;
pub mod stats;
mod train;

pub use calibration::{JudgeCalibration, KindCount};
pub use classify::ClassifierRunRecord;
pub use eval::{
    EvalAnswerRow, EvalHead, EvalRecord, EvalSide, KnownVerdictRecord, KnownVerdictRow,
    VerdictRecord,
};
pub use export::{CandidateRow, RunSettings};
pub use guard::{GuardDecisionRecord, GuardStats};
pub use reward::RewardModelRecord;
pub use train::{FinalScores, TrainRunRecord, TrainStepRecord};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {path}: {source}")]
    Sqlx { path: PathBuf, source: sqlx::Error },
    #[error("database {path}: {message}")]
    Other { path: PathBuf, message: String },
    #[error("database {0} does not exist")]
    Missing(PathBuf),
    #[error(
        "database {path} is being written by another tenets process ({holder}); wait for it to \
         finish, or give this run another --db"
    )]
    Busy { path: PathBuf, holder: String },
}

/// An exclusive claim on a database for one writing command, held until dropped: a second
/// `generate` on the same database is refused instead of racing the first. It is an OS file
/// lock on `DB.lock` beside the database, so a process killed with -9 releases it; the small
/// file stays and records the last holder.
#[derive(Debug)]
pub struct WriterLock {
    _file: std::fs::File,
}

impl WriterLock {
    /// Claims `db` for `command` (what the holder's message names), or says who holds it.
    pub fn acquire(db: &Path, command: &str) -> Result<Self, StoreError> {
        use std::io::{Read, Seek, Write};
        let mut path = db.as_os_str().to_owned();
        path.push(".lock");
        let path = PathBuf::from(path);
        let other = |message: String| StoreError::Other {
            path: path.clone(),
            message,
        };
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| other(format!("cannot open the lock file: {e}")))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(StoreError::Busy {
                    path: db.to_path_buf(),
                    holder: if holder.is_empty() {
                        "unknown".into()
                    } else {
                        holder.to_string()
                    },
                });
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(other(format!("cannot lock: {e}")));
            }
        }
        let note = format!("pid {}, tenets {command}", std::process::id());
        let written = file
            .set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(note.as_bytes()));
        written.map_err(|e| other(format!("cannot write the lock file: {e}")))?;
        Ok(WriterLock { _file: file })
    }
}

/// Everything that identifies a run; its hash is the run id.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunRecord {
    pub model_path: String,
    pub model_sha256: String,
    pub chat_template_sha256: String,
    pub constitution_name: String,
    pub constitution_sha256: String,
    pub constitution_json: String,
    pub template_sha256: String,
    pub rounds: i64,
    pub temperature: f64,
    pub top_p: f64,
    pub max_tokens: i64,
    pub seed: i64,
    /// The LoRA adapter decoded with, if any: its SHA-256 and scale.
    pub lora: Option<(String, f64)>,
    /// Answers sampled per prompt (1 unless the run builds `sampled` pairs).
    pub samples: i64,
    /// The control vector decoded with, if any.
    pub control: Option<ControlRecord>,
}

/// A control vector as a run records it: the SHA-256 of its file, its scale and the blocks it
/// was cut to (`A-B`; none: every block the file steers).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ControlRecord {
    pub sha256: String,
    pub scale: f64,
    pub layers: Option<String>,
}

impl RunRecord {
    /// The run id: a hash of everything that changes what the run produces (the model path is
    /// left out: the same file moved is the same model).
    pub fn id(&self) -> String {
        let rounds = self.rounds.to_string();
        let temperature = format!("{:.6}", self.temperature);
        let top_p = format!("{:.6}", self.top_p);
        let max_tokens = self.max_tokens.to_string();
        let seed = self.seed.to_string();
        let mut parts = vec![
            self.model_sha256.as_str(),
            &self.chat_template_sha256,
            &self.constitution_sha256,
            &self.template_sha256,
            &rounds,
            &temperature,
            &top_p,
            &max_tokens,
            &seed,
        ];
        // Runs without an adapter keep the ids they always had.
        let lora = self
            .lora
            .as_ref()
            .map(|(sha, scale)| format!("lora {sha} {scale:.6}"));
        if let Some(lora) = &lora {
            parts.push(lora);
        }
        // Runs that answer once keep the ids they always had.
        let samples = format!("samples {}", self.samples);
        if self.samples > 1 {
            parts.push(&samples);
        }
        // Unsteered runs keep the ids they always had.
        let control = self.control.as_ref().map(|c| {
            format!(
                "control {} {:.6} {}",
                c.sha256,
                c.scale,
                c.layers.as_deref().unwrap_or("all")
            )
        });
        if let Some(control) = &control {
            parts.push(control);
        }
        hash::of_parts(&parts)
    }
}

/// A step as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StepRecord {
    pub run_id: String,
    pub prompt_id: String,
    pub stage: String,
    pub round: i64,
    pub principle_id: Option<String>,
    pub request: Option<String>,
    pub output: String,
    pub finish: String,
    pub prompt_tokens: i64,
    pub prefill_tokens: i64,
    pub generated_tokens: i64,
    pub seed: i64,
    pub template_sha256: String,
    /// A revision's opening line stripped by the preamble filter.
    pub preamble: Option<String>,
}

impl StepRecord {
    pub fn id(&self) -> String {
        step_id(&self.run_id, &self.prompt_id, &self.stage, self.round)
    }
}

pub fn step_id(run_id: &str, prompt_id: &str, stage: &str, round: i64) -> String {
    hash::of_parts(&[run_id, prompt_id, stage, &round.to_string()])
}

/// A candidate pair a finished chain writes: its strategy (`revision`, or `sampled:I-J`) and
/// the two steps (by id). For `revision` the first is the final revision and the second the
/// answer; for sampled pairs the order is only the sample order — the judge's label decides.
#[derive(Debug, Clone, PartialEq)]
pub struct PairLink {
    pub strategy: String,
    pub chosen_step: String,
    pub rejected_step: String,
}

/// The strategy name of the candidate pair of samples `i` and `j` (`i < j`).
pub fn sampled_strategy(i: i64, j: i64) -> String {
    format!("{SAMPLED_PREFIX}{i}-{j}")
}

/// The prefix of every sampled pair's strategy.
pub const SAMPLED_PREFIX: &str = "sampled:";

/// Everything that identifies a judge; its hash is the judge id.
#[derive(Debug, Clone, serde::Serialize)]
pub struct JudgeRecord {
    pub model_path: String,
    pub model_sha256: String,
    pub chat_template_sha256: String,
    pub constitution_sha256: String,
    pub frame_sha256: String,
    pub questions_per_pair: i64,
    pub seed: i64,
    /// Chain-of-thought: reasoning tokens (0: none) and the clamp on P(A).
    pub cot_tokens: i64,
    pub cot_clamp: Option<(f64, f64)>,
}

impl JudgeRecord {
    /// The same judge whatever path the model file had.
    pub fn id(&self) -> String {
        hash::of_parts(&[
            &self.model_sha256,
            &self.chat_template_sha256,
            &self.constitution_sha256,
            &self.frame_sha256,
            &self.questions_per_pair.to_string(),
            &self.seed.to_string(),
            &self.cot_tokens.to_string(),
            &format!("{:?}", self.cot_clamp),
        ])
    }
}

/// A pair as the judge sees it.
#[derive(Debug, Clone)]
pub struct PairForLabel {
    pub pair_id: String,
    pub messages: Vec<crate::chat::Message>,
    pub chosen: String,
    pub rejected: String,
}

/// One comparison question about one pair in one order.
#[derive(Debug, Clone)]
pub struct JudgmentRecord {
    pub judge_id: String,
    pub pair_id: String,
    pub question_id: String,
    pub swapped: bool,
    pub mass_a: f64,
    pub mass_b: f64,
    /// P(A) and p(chosen ≻ rejected), or why the judge gave no answer.
    pub answer: Result<crate::label::Answer, crate::label::NoAnswer>,
    pub prompt_tokens: i64,
    pub prefill_tokens: i64,
    /// The reasoning a chain-of-thought judgment was read after.
    pub reasoning: Option<String>,
}

impl JudgmentRecord {
    pub fn id(&self) -> String {
        hash::of_parts(&[
            &self.judge_id,
            &self.pair_id,
            &self.question_id,
            if self.swapped { "swapped" } else { "straight" },
        ])
    }
}

/// A pair's soft label under a judge.
#[derive(Debug, Clone)]
pub struct LabelRecord {
    pub judge_id: String,
    pub pair_id: String,
    /// Mean over the answered judgments; `None` when the judge answered none.
    pub p_chosen: Option<f64>,
    /// Judgments that answered, and those that did not.
    pub judgments: i64,
    pub unanswered: i64,
    pub order_disagreements: i64,
}

/// Where judgments go: a label run's (`judgments`, `labels`) or an evaluation's comparisons
/// (`eval_judgments`, `eval_comparisons`: judge = evaluation, pair = prompt, chosen = the
/// adapter's answer). The rows are the same; only the tables differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JudgmentTable {
    Labels,
    Comparisons,
}

impl JudgmentTable {
    /// (insert one judgment, insert the pair's label), binding the records' fields in order.
    fn insert_sql(self) -> (&'static str, &'static str) {
        match self {
            JudgmentTable::Labels => (
                "INSERT INTO judgments (id, judge_id, pair_id, question_id, swapped, mass_a, \
                 mass_b, p_a, p_chosen, no_answer, prompt_tokens, prefill_tokens, reasoning) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                "INSERT INTO labels (judge_id, pair_id, p_chosen, judgments, unanswered, \
                 order_disagreements) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            ),
            JudgmentTable::Comparisons => (
                "INSERT INTO eval_judgments (id, eval_id, prompt_id, question_id, swapped, mass_a, \
                 mass_b, p_a, p_adapter, no_answer, prompt_tokens, prefill_tokens, reasoning) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                "INSERT INTO eval_comparisons (eval_id, prompt_id, p_adapter, judgments, \
                 unanswered, order_disagreements) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            ),
        }
    }

    /// (stored judgments `(pair, question, swapped, p)` under an id, pairs with their label).
    fn progress_sql(self) -> (&'static str, &'static str) {
        match self {
            JudgmentTable::Labels => (
                "SELECT pair_id, question_id, swapped, p_chosen FROM judgments WHERE judge_id = ?",
                "SELECT pair_id FROM labels WHERE judge_id = ?",
            ),
            JudgmentTable::Comparisons => (
                "SELECT prompt_id, question_id, swapped, p_adapter FROM eval_judgments \
                 WHERE eval_id = ?",
                "SELECT prompt_id FROM eval_comparisons WHERE eval_id = ?",
            ),
        }
    }
}

/// Judgments already stored for one pair: (question id, swapped, p_chosen or no answer).
pub type StoredJudgments = Vec<(String, bool, Option<f64>)>;

#[derive(Clone)]
pub struct Store {
    pool: SqlitePool,
    path: PathBuf,
}

/// The SQLite library's version (what `tenets doctor` reports).
pub async fn sqlite_version() -> Result<String, sqlx::Error> {
    let pool = sqlx::SqlitePool::connect("sqlite::memory:").await?;
    let version = sqlx::query_scalar("SELECT sqlite_version()")
        .fetch_one(&pool)
        .await;
    pool.close().await;
    version
}

impl Store {
    /// Opens (creating if needed) a database and brings its schema up to date.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        Self::connect(path, true).await
    }

    /// Opens a database that must already exist (for export and stats).
    pub async fn open_existing(path: &Path) -> Result<Self, StoreError> {
        if !path.exists() {
            return Err(StoreError::Missing(path.to_path_buf()));
        }
        Self::connect(path, false).await
    }

    async fn connect(path: &Path, create: bool) -> Result<Self, StoreError> {
        let err = |source| StoreError::Sqlx {
            path: path.to_path_buf(),
            source,
        };
        if let Some(folder) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            if !folder.is_dir() {
                return Err(StoreError::Other {
                    path: path.to_path_buf(),
                    message: format!("the folder {} does not exist", folder.display()),
                });
            }
        }
        let options = SqliteConnectOptions::from_str("sqlite://")
            .map_err(err)?
            .filename(path)
            .create_if_missing(create)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        // One connection: writes are serialised anyway, and reads follow writes in order.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .map_err(err)?;
        sqlx::migrate!("./migrations")
            .run(&pool)
            .await
            .map_err(|e| StoreError::Other {
                path: path.to_path_buf(),
                message: format!("schema migration failed: {e}"),
            })?;
        Ok(Store {
            pool,
            path: path.to_path_buf(),
        })
    }

    /// Wraps a sqlx error with this database's path.
    fn err(&self) -> impl Fn(sqlx::Error) -> StoreError + '_ {
        |source| StoreError::Sqlx {
            path: self.path.clone(),
            source,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The connection: the store's alone (every statement lives in `store/`).
    fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// SHA-256 of a model file, cached by path, size and modification time.
    pub async fn model_sha256(&self, model: &Path) -> Result<String, StoreError> {
        let meta = std::fs::metadata(model).map_err(|e| StoreError::Other {
            path: self.path.clone(),
            message: format!("cannot stat model {}: {e}", model.display()),
        })?;
        let canonical = std::fs::canonicalize(model).unwrap_or_else(|_| model.to_path_buf());
        let key = canonical.display().to_string();
        let size = meta.len() as i64;
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos() as i64);
        let cached: Option<String> = sqlx::query_scalar(
            "SELECT sha256 FROM model_files WHERE path = ? AND size = ? AND mtime_ns = ?",
        )
        .bind(&key)
        .bind(size)
        .bind(mtime)
        .fetch_optional(&self.pool)
        .await
        .map_err(self.err())?;
        if let Some(sha) = cached {
            return Ok(sha);
        }
        let path = model.to_path_buf();
        let sha = tokio::task::spawn_blocking(move || hash::of_file(&path))
            .await
            .map_err(|e| StoreError::Other {
                path: self.path.clone(),
                message: e.to_string(),
            })?
            .map_err(|e| StoreError::Other {
                path: self.path.clone(),
                message: format!("cannot read model {}: {e}", model.display()),
            })?;
        sqlx::query(
            "INSERT OR REPLACE INTO model_files (path, size, mtime_ns, sha256) VALUES (?, ?, ?, ?)",
        )
        .bind(&key)
        .bind(size)
        .bind(mtime)
        .bind(&sha)
        .execute(&self.pool)
        .await
        .map_err(self.err())?;
        Ok(sha)
    }

    /// Records a run (idempotent) and returns its id.
    pub async fn upsert_run(&self, run: &RunRecord) -> Result<String, StoreError> {
        let id = run.id();
        sqlx::query(
            "INSERT INTO runs (id, model_path, model_sha256, chat_template_sha256, constitution_name, \
             constitution_sha256, constitution_json, template_sha256, rounds, temperature, top_p, \
             max_tokens, seed, lora_sha256, lora_scale, samples, control_vector_sha256, \
             control_vector_scale, control_layers) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(&id)
        .bind(&run.model_path)
        .bind(&run.model_sha256)
        .bind(&run.chat_template_sha256)
        .bind(&run.constitution_name)
        .bind(&run.constitution_sha256)
        .bind(&run.constitution_json)
        .bind(&run.template_sha256)
        .bind(run.rounds)
        .bind(run.temperature)
        .bind(run.top_p)
        .bind(run.max_tokens)
        .bind(run.seed)
        .bind(run.lora.as_ref().map(|l| l.0.clone()))
        .bind(run.lora.as_ref().map(|l| l.1))
        .bind(run.samples)
        .bind(run.control.as_ref().map(|c| c.sha256.clone()))
        .bind(run.control.as_ref().map(|c| c.scale))
        .bind(run.control.as_ref().and_then(|c| c.layers.clone()))
        .execute(&self.pool)
        .await
        .map_err(self.err())?;
        Ok(id)
    }

    /// Every prompt the database holds, with its tags, in the order its files listed them.
    pub async fn prompt_items(&self) -> Result<Vec<PromptItem>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, messages, kind, topic, style, line FROM prompts ORDER BY source, line, id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(self.err())?;
        rows.into_iter()
            .map(|r| {
                let messages: String = r.get(1);
                Ok(PromptItem {
                    id: r.get(0),
                    messages: serde_json::from_str(&messages).map_err(|e| StoreError::Other {
                        path: self.path.clone(),
                        message: format!("prompt {}: messages: {e}", r.get::<String, _>(0)),
                    })?,
                    kind: r.get(2),
                    topic: r.get(3),
                    style: r.get(4),
                    line: r.get::<i64, _>(5) as usize,
                })
            })
            .collect()
    }

    /// Records prompts (idempotent), in one transaction.
    pub async fn upsert_prompts(
        &self,
        items: &[PromptItem],
        source: &str,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(self.err())?;
        for item in items {
            sqlx::query(
                "INSERT INTO prompts (id, messages, kind, topic, style, source, line) \
                 VALUES (?, ?, ?, ?, ?, ?, ?) \
                 ON CONFLICT (id) DO UPDATE SET kind = COALESCE(excluded.kind, kind), \
                 topic = COALESCE(excluded.topic, topic), style = COALESCE(excluded.style, style)",
            )
            .bind(&item.id)
            .bind(serde_json::to_string(&item.messages).unwrap_or_default())
            .bind(&item.kind)
            .bind(&item.topic)
            .bind(&item.style)
            .bind(source)
            .bind(item.line as i64)
            .execute(&mut *tx)
            .await
            .map_err(self.err())?;
        }
        tx.commit().await.map_err(self.err())?;
        Ok(())
    }

    /// Completed steps of a run, by prompt id.
    pub async fn steps_of_run(
        &self,
        run_id: &str,
    ) -> Result<HashMap<String, Vec<StepRecord>>, StoreError> {
        let rows = sqlx::query(
            "SELECT run_id, prompt_id, stage, round, principle_id, request, output, finish, \
             prompt_tokens, prefill_tokens, generated_tokens, seed, template_sha256, preamble \
             FROM steps WHERE run_id = ? ORDER BY prompt_id, round, stage",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await
        .map_err(self.err())?;
        let mut out: HashMap<String, Vec<StepRecord>> = HashMap::new();
        for row in rows {
            let step = StepRecord {
                run_id: row.get(0),
                prompt_id: row.get(1),
                stage: row.get(2),
                round: row.get(3),
                principle_id: row.get(4),
                request: row.get(5),
                output: row.get(6),
                finish: row.get(7),
                prompt_tokens: row.get(8),
                prefill_tokens: row.get(9),
                generated_tokens: row.get(10),
                seed: row.get(11),
                template_sha256: row.get(12),
                preamble: row.get(13),
            };
            out.entry(step.prompt_id.clone()).or_default().push(step);
        }
        Ok(out)
    }

    /// Commits one step; when it completes a prompt's chain, the chain's pairs are written in
    /// the same transaction. Any earlier failure of this prompt in this run is cleared.
    pub async fn commit_step(
        &self,
        step: &StepRecord,
        pairs: &[PairLink],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(self.err())?;
        let id = step.id();
        sqlx::query(
            "INSERT INTO steps (id, run_id, prompt_id, stage, round, principle_id, request, output, \
             finish, prompt_tokens, prefill_tokens, generated_tokens, seed, template_sha256, \
             preamble) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        )
        .bind(&id)
        .bind(&step.run_id)
        .bind(&step.prompt_id)
        .bind(&step.stage)
        .bind(step.round)
        .bind(&step.principle_id)
        .bind(&step.request)
        .bind(&step.output)
        .bind(&step.finish)
        .bind(step.prompt_tokens)
        .bind(step.prefill_tokens)
        .bind(step.generated_tokens)
        .bind(step.seed)
        .bind(&step.template_sha256)
        .bind(&step.preamble)
        .execute(&mut *tx)
        .await
        .map_err(self.err())?;
        sqlx::query("DELETE FROM failures WHERE run_id = ? AND prompt_id = ?")
            .bind(&step.run_id)
            .bind(&step.prompt_id)
            .execute(&mut *tx)
            .await
            .map_err(self.err())?;
        for pair in pairs {
            let pair_id = hash::of_parts(&[&step.run_id, &step.prompt_id, &pair.strategy]);
            sqlx::query(
                "INSERT INTO pairs (id, run_id, prompt_id, strategy, chosen_step, rejected_step) \
                 VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            )
            .bind(&pair_id)
            .bind(&step.run_id)
            .bind(&step.prompt_id)
            .bind(&pair.strategy)
            .bind(&pair.chosen_step)
            .bind(&pair.rejected_step)
            .execute(&mut *tx)
            .await
            .map_err(self.err())?;
        }
        tx.commit().await.map_err(self.err())?;
        Ok(())
    }

    /// Records the prompts a run left out as duplicates (idempotent).
    pub async fn record_dropped_prompts(
        &self,
        run_id: &str,
        source: &str,
        dropped: &[crate::prompt::Duplicate],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(self.err())?;
        for d in dropped {
            sqlx::query(
                "INSERT INTO dropped_prompts (run_id, source, line, reason, matched_prompt_id) \
                 VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            )
            .bind(run_id)
            .bind(source)
            .bind(d.line as i64)
            .bind(if d.exact {
                "duplicate"
            } else {
                "near-duplicate"
            })
            .bind(&d.of_id)
            .execute(&mut *tx)
            .await
            .map_err(self.err())?;
        }
        tx.commit().await.map_err(self.err())?;
        Ok(())
    }

    /// The model file and constitution (as JSON) of the most recent run, if any; a run with
    /// critique rounds before an answer-only one (`tenets eval`'s).
    pub async fn latest_run(&self) -> Result<Option<(String, String)>, StoreError> {
        let row = sqlx::query(
            "SELECT model_path, constitution_json FROM runs \
             ORDER BY rounds > 0 DESC, created_at DESC LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(self.err())?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    /// Registers a judge (idempotent); returns its id.
    pub async fn upsert_judge(&self, judge: &JudgeRecord) -> Result<String, StoreError> {
        let id = judge.id();
        sqlx::query(
            "INSERT INTO judges (id, model_path, model_sha256, chat_template_sha256, \
             constitution_sha256, frame_sha256, questions_per_pair, seed, cot_tokens, \
             cot_clamp_low, cot_clamp_high) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT DO NOTHING",
        )
        .bind(&id)
        .bind(&judge.model_path)
        .bind(&judge.model_sha256)
        .bind(&judge.chat_template_sha256)
        .bind(&judge.constitution_sha256)
        .bind(&judge.frame_sha256)
        .bind(judge.questions_per_pair)
        .bind(judge.seed)
        .bind(judge.cot_tokens)
        .bind(judge.cot_clamp.map(|c| c.0))
        .bind(judge.cot_clamp.map(|c| c.1))
        .execute(&self.pool)
        .await
        .map_err(self.err())?;
        Ok(id)
    }

    /// Every pair with its prompt and both answers, in a stable order.
    pub async fn pairs_for_labels(&self) -> Result<Vec<PairForLabel>, StoreError> {
        let rows = sqlx::query(
            "SELECT pr.id, p.messages, c.output, a.output FROM pairs pr \
             JOIN prompts p ON p.id = pr.prompt_id \
             JOIN steps c ON c.id = pr.chosen_step \
             JOIN steps a ON a.id = pr.rejected_step \
             ORDER BY pr.created_at, pr.id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(self.err())?;
        rows.into_iter()
            .map(|r| {
                let messages =
                    serde_json::from_str(r.get::<&str, _>(1)).map_err(|e| StoreError::Other {
                        path: self.path.clone(),
                        message: format!("prompt messages of pair {}: {e}", r.get::<&str, _>(0)),
                    })?;
                Ok(PairForLabel {
                    pair_id: r.get(0),
                    messages,
                    chosen: r.get(2),
                    rejected: r.get(3),
                })
            })
            .collect()
    }

    /// Judgments stored under `id` (a judge, or an evaluation) grouped by pair, and the pairs
    /// whose label is written: what a resumed judging run has already done.
    pub async fn judgment_progress(
        &self,
        table: JudgmentTable,
        id: &str,
    ) -> Result<(HashMap<String, StoredJudgments>, HashSet<String>), StoreError> {
        let (judgments, complete) = table.progress_sql();
        let rows = sqlx::query(judgments)
            .bind(id)
            .fetch_all(&self.pool)
            .await
            .map_err(self.err())?;
        let mut grouped: HashMap<String, StoredJudgments> = HashMap::new();
        for r in rows {
            grouped.entry(r.get(0)).or_default().push((
                r.get(1),
                r.get::<i64, _>(2) == 1,
                r.get::<Option<f64>, _>(3),
            ));
        }
        let done = sqlx::query(complete)
            .bind(id)
            .fetch_all(&self.pool)
            .await
            .map_err(self.err())?
            .into_iter()
            .map(|r| r.get(0))
            .collect();
        Ok((grouped, done))
    }

    /// Commits one judgment, and the pair's label when this judgment completes it.
    pub async fn commit_judgment(
        &self,
        table: JudgmentTable,
        j: &JudgmentRecord,
        label: Option<&LabelRecord>,
    ) -> Result<(), StoreError> {
        let (insert_judgment, insert_label) = table.insert_sql();
        let mut tx = self.pool.begin().await.map_err(self.err())?;
        sqlx::query(insert_judgment)
            .bind(j.id())
            .bind(&j.judge_id)
            .bind(&j.pair_id)
            .bind(&j.question_id)
            .bind(i64::from(j.swapped))
            .bind(j.mass_a)
            .bind(j.mass_b)
            .bind(j.answer.ok().map(|a| a.p_a))
            .bind(j.answer.ok().map(|a| a.p_chosen))
            .bind(j.answer.err().map(|e| e.as_str()))
            .bind(j.prompt_tokens)
            .bind(j.prefill_tokens)
            .bind(&j.reasoning)
            .execute(&mut *tx)
            .await
            .map_err(self.err())?;
        if let Some(l) = label {
            sqlx::query(insert_label)
                .bind(&l.judge_id)
                .bind(&l.pair_id)
                .bind(l.p_chosen)
                .bind(l.judgments)
                .bind(l.unanswered)
                .bind(l.order_disagreements)
                .execute(&mut *tx)
                .await
                .map_err(self.err())?;
        }
        tx.commit().await.map_err(self.err())?;
        Ok(())
    }

    /// Records why a prompt could not go on in a run.
    pub async fn record_failure(
        &self,
        run_id: &str,
        prompt_id: &str,
        stage: &str,
        round: i64,
        reason: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT OR REPLACE INTO failures (run_id, prompt_id, stage, round, reason) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(run_id)
        .bind(prompt_id)
        .bind(stage)
        .bind(round)
        .bind(reason)
        .execute(&self.pool)
        .await
        .map_err(self.err())?;
        Ok(())
    }

    /// `PRAGMA integrity_check`'s answer ("ok" when healthy).
    pub async fn integrity_check(&self) -> Result<String, StoreError> {
        sqlx::query_scalar("PRAGMA integrity_check")
            .fetch_one(&self.pool)
            .await
            .map_err(self.err())
    }

    pub async fn close(self) {
        self.pool.close().await;
    }
}

#[cfg(test)]
mod tests {
    use sqlx::Row;

    /// Migration 9 on a database written before it: judgments with no mass on either letter
    /// (once stored as P(A) = 0.5) become "no answer" without a probability, labels are
    /// recomputed over the answered ones (none answered: no label value), and refusal verdicts
    /// with no mass or a tie lose their verdict.
    #[tokio::test]
    async fn migration_9_marks_the_judgments_that_gave_no_answer() {
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .in_memory(true)
            .foreign_keys(false);
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .unwrap();
        let run = |sql: &'static str| {
            let pool = pool.clone();
            async move { sqlx::raw_sql(sql).execute(&pool).await.unwrap() }
        };
        for sql in [
            include_str!("../migrations/0001_generate.sql"),
            include_str!("../migrations/0002_label.sql"),
            include_str!("../migrations/0003_preamble.sql"),
            include_str!("../migrations/0004_cot.sql"),
            include_str!("../migrations/0005_dropped_prompts.sql"),
            include_str!("../migrations/0006_train.sql"),
            include_str!("../migrations/0007_eval.sql"),
            include_str!("../migrations/0008_sampled.sql"),
        ] {
            run(sql).await;
        }
        run(
            "INSERT INTO judgments (id, judge_id, pair_id, question_id, swapped, mass_a, mass_b, \
             p_a, p_chosen, prompt_tokens, prefill_tokens) VALUES \
             ('a', 'j', 'p1', 'q', 0, 0.6, 0.2, 0.75, 0.75, 1, 1), \
             ('b', 'j', 'p1', 'q', 1, 0.0, 0.0, 0.5, 0.5, 1, 1), \
             ('c', 'j', 'p1', 'r', 0, 0.1, 0.3, 0.25, 0.25, 1, 1), \
             ('d', 'j', 'p1', 'r', 1, 0.0, 0.0, 0.5, 0.5, 1, 1), \
             ('e', 'j', 'p2', 'q', 0, 0.0, 0.0, 0.5, 0.5, 1, 1), \
             ('f', 'j', 'p2', 'q', 1, 0.0, 0.0, 0.5, 0.5, 1, 1); \
             INSERT INTO labels (judge_id, pair_id, p_chosen, judgments, order_disagreements) \
             VALUES ('j', 'p1', 0.5, 4, 0), ('j', 'p2', 0.5, 2, 0); \
             INSERT INTO eval_verdicts (eval_id, side, prompt_id, step_id, pattern, judge, \
             p_comply, p_refuse, p_partial, answer_mass) VALUES \
             ('e', 'base', 'x', 's', 'comply', 'comply', 0.3333, 0.3333, 0.3334, 0.0), \
             ('e', 'base', 'y', 's', 'comply', 'comply', 0.4, 0.4, 0.2, 0.5), \
             ('e', 'base', 'z', 's', 'refuse', 'refuse', 0.1, 0.8, 0.1, 0.9);",
        )
        .await;
        run(include_str!("../migrations/0009_no_answer.sql")).await;

        let rows = sqlx::query("SELECT id, p_a, p_chosen, no_answer FROM judgments ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
        type Judgment = (String, Option<f64>, Option<f64>, Option<String>);
        let judgments: Vec<Judgment> = rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect();
        assert_eq!(judgments[0], ("a".into(), Some(0.75), Some(0.75), None));
        assert_eq!(
            judgments[1],
            ("b".into(), None, None, Some("no-mass".into()))
        );
        assert_eq!(judgments[2].3, None);
        let labels: Vec<(String, Option<f64>, i64, i64)> = sqlx::query(
            "SELECT pair_id, p_chosen, judgments, unanswered FROM labels ORDER BY pair_id",
        )
        .fetch_all(&pool)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
        assert_eq!(
            labels,
            vec![("p1".into(), Some(0.5), 2, 2), ("p2".into(), None, 0, 2)]
        );
        let verdicts: Vec<(String, Option<String>, Option<String>)> = sqlx::query(
            "SELECT prompt_id, judge, no_verdict FROM eval_verdicts ORDER BY prompt_id",
        )
        .fetch_all(&pool)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
        assert_eq!(
            verdicts,
            vec![
                ("x".into(), None, Some("no-mass".into())),
                ("y".into(), None, Some("tie".into())),
                ("z".into(), Some("refuse".into()), None),
            ]
        );
    }
}
