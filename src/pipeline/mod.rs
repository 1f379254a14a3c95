//! The commands' stages: each command that runs a model is an engine thread, a store writer and
//! progress, joined by bounded queues — a finished turn is committed before its session may ask
//! for the next ([`writer`]), so a kill -9 loses at most the turns in flight and the same command
//! resumes from the store. One file per command: [`generate`] (with [`chain`], one prompt's
//! turns), [`label`], [`eval`], [`redteam`], [`train`], and [`iterate`] (`loop`); this module
//! holds what they share.

pub mod chain;
pub mod classify;
pub mod eval;
pub mod generate;
pub mod iterate;
pub mod label;
pub mod redteam;
pub mod reward;
pub mod steer;
pub mod train;
pub mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::constitution::ConstitutionError;
use crate::engine::{Counters, EngineError, EngineTask};
use crate::prompt::{self, PromptError};
use crate::store::StoreError;
use crate::turns::TurnTemplateError;

pub use generate::{
    generate, generate_sets, render_generate, GenerateOptions, GenerateSummary, MAX_SAMPLES,
};

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Constitution(#[from] ConstitutionError),
    #[error(transparent)]
    Prompt(#[from] PromptError),
    #[error("{count} bad line(s) in the prompt file (--strict):\n{lines}")]
    StrictPrompts { count: usize, lines: String },
    #[error(transparent)]
    Template(#[from] TurnTemplateError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Export(#[from] crate::export::ExportError),
    #[error(transparent)]
    Dataset(#[from] crate::dataset::DatasetError),
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    #[error(transparent)]
    Report(#[from] crate::report::ReportError),
    #[error("training: {0}")]
    Train(String),
    #[error("invalid setting: {0}")]
    Setting(String),
    #[error("internal: {0}")]
    Internal(String),
}

/// A bad setting, named by its flag in `message`.
pub(crate) fn setting(message: impl Into<String>) -> PipelineError {
    PipelineError::Setting(message.into())
}

/// An output file's folder exists (checked before any work, so nothing is computed for a file
/// that cannot be written).
pub(crate) fn check_out_folder(flag: &str, out: &std::path::Path) -> Result<(), PipelineError> {
    let folder = out.parent().filter(|p| !p.as_os_str().is_empty());
    if folder.is_some_and(|f| !f.is_dir()) {
        return Err(setting(format!(
            "{flag} {}: the folder does not exist",
            out.display()
        )));
    }
    Ok(())
}

/// The native kernels' thread pool for a command's model settings and `--kernel`.
pub(crate) fn native_compute(
    model: &crate::settings::ModelSettings,
    kernel: crate::settings::KernelChoice,
) -> Result<crate::quant::matmul::Compute, PipelineError> {
    let threads = model.threads();
    crate::quant::matmul::Compute::new(threads, kernel.kernel()).map_err(|e| {
        PipelineError::Internal(format!("cannot start {threads} compute threads: {e}"))
    })
}

/// Where preference pairs come from, for the commands that read them besides `train`:
/// a TRL-format file, or a tenets database's pairs as `tenets export` gives them.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct PairSource {
    /// Pairs: JSONL or Parquet in TRL's formats (prompt/chosen/rejected).
    #[arg(long, required_unless_present = "db", conflicts_with = "db")]
    pub data: Option<std::path::PathBuf>,
    /// A tenets database: its pairs, as `tenets export` gives them.
    #[arg(long)]
    pub db: Option<std::path::PathBuf>,
    /// With --db: which of its pairs (the filters of `tenets export`).
    #[command(flatten)]
    pub filters: crate::filters::PairFilters,
}

impl PairSource {
    pub fn check(&self) -> Result<(), PipelineError> {
        self.filters
            .check_settings()
            .map_err(PipelineError::Setting)?;
        if self.db.is_none() && self.filters != crate::filters::PairFilters::default() {
            return Err(PipelineError::Setting(
                "the pair filters choose a database's pairs: they need --db".into(),
            ));
        }
        Ok(())
    }

    /// The file or database, for messages.
    pub fn path(&self) -> &std::path::Path {
        self.data
            .as_deref()
            .or(self.db.as_deref())
            .unwrap_or(std::path::Path::new(""))
    }

    /// Every example (from a file: pairs or not, as it holds them), each named by its origin.
    pub async fn examples(&self) -> Result<Vec<crate::dataset::Example>, PipelineError> {
        match (&self.data, &self.db) {
            (Some(file), _) => Ok(crate::dataset::load(file)?),
            (None, Some(db)) => {
                let store = crate::store::Store::open_existing(db).await?;
                let rows =
                    crate::export::rows(&store, crate::export::Kind::Dpo, &self.filters).await?;
                Ok(rows
                    .rows
                    .iter()
                    .enumerate()
                    .map(|(i, row)| row.to_example(format!("{} pair {}", db.display(), i + 1)))
                    .collect())
            }
            (None, None) => Err(PipelineError::Setting("give --data or --db".into())),
        }
    }
}

/// `path`, or the bundled file of that name among `set` ([`crate::bundled::resolve`]).
pub(crate) fn resolve_bundled(
    path: &Path,
    set: &[crate::bundled::Bundled],
) -> Result<PathBuf, PipelineError> {
    crate::bundled::resolve(path, set).map_err(|e| {
        PipelineError::Setting(format!(
            "cannot unpack the bundled {} into {}: {e}",
            path.display(),
            crate::home::data_dir().display()
        ))
    })
}

impl From<crate::settings::SettingsError> for PipelineError {
    fn from(e: crate::settings::SettingsError) -> Self {
        PipelineError::Setting(e.0)
    }
}

/// Reports the bad lines of prompt files: an error under `--strict`, warnings otherwise.
pub(crate) fn check_prompt_sets(
    sets: &[prompt::PromptSet],
    strict: bool,
) -> Result<(), PipelineError> {
    let lines: Vec<String> = sets.iter().flat_map(|set| set.report()).collect();
    if lines.is_empty() {
        return Ok(());
    }
    if strict {
        return Err(PipelineError::StrictPrompts {
            count: lines.len(),
            lines: lines.join("\n"),
        });
    }
    for line in &lines {
        tracing::warn!("skipped {line}");
    }
    Ok(())
}

/// Waits for the engine and then the store writer (which ends once every session, and with it
/// every sender, is gone); the writer's result, or the first error.
pub(crate) async fn join_stages<W>(
    engine_task: EngineTask,
    writer: tokio::task::JoinHandle<Result<W, PipelineError>>,
) -> Result<W, PipelineError> {
    let engine_result = engine_task
        .await
        .map_err(|e| PipelineError::Internal(e.to_string()))?;
    let written = writer
        .await
        .map_err(|e| PipelineError::Internal(e.to_string()))?;
    let written = written?;
    engine_result?;
    Ok(written)
}

/// The f32 flag value as the f64 a person typed (0.7, not 0.699999988).
pub(crate) fn round6(x: f32) -> f64 {
    (f64::from(x) * 1e6).round() / 1e6
}

/// A progress bar on stderr with rate and ETA (hidden under --quiet).
pub fn progress_bar(quiet: bool, total: u64, unit: &str) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            &format!("{{spinner}} [{{elapsed_precise}}] {{bar:30}} {{pos}}/{{len}} {unit}  {{msg}}  ETA {{eta}}"),
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// Updates the tokens/s shown on the bar twice a second.
async fn tick(progress: ProgressBar, counters: Arc<Counters>) {
    let mut last = (Instant::now(), 0u64);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = Instant::now();
        let generated = counters.generated.load(Ordering::Relaxed);
        let rate = (generated - last.1) as f64 / now.duration_since(last.0).as_secs_f64();
        progress.set_message(format!("{rate:.0} tok/s, {generated} tokens"));
        progress.tick();
        last = (now, generated);
    }
}
