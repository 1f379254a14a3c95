//! `tenets generate`: prompts → answer → (critique → revision) × rounds → SQLite.
//!
//! The prompts become [`Chain`]s (one per prompt, the steps already stored replayed into it) fed
//! through a bounded queue to the engine (llama.cpp's continuous batching, or a remote server);
//! the engine hands every finished turn to the store writer, which commits it and only then lets
//! that chain ask for its next turn.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use indicatif::ProgressBar;
use tokio::sync::mpsc;

use super::chain::{Chain, RunContext, Write};
use super::writer::{self, Commit};
use super::PipelineError;
use super::{check_prompt_sets, join_stages, progress_bar, resolve_bundled, round6, tick};
use crate::constitution::Constitution;
use crate::engine::StopSignal;
use crate::engine::{self, Backend, Counters, EngineConfig, Sampling, ServedModel, Session};
use crate::prompt;
use crate::settings::{
    AdapterSettings, BackendSettings, EngineSettings, ModelSettings, RunSettings,
};
use crate::store::{ControlRecord, RunRecord, Store, StoreError};
use crate::turns::TurnTemplates;

/// Everything `tenets generate` needs: its command line.
#[derive(clap::Args, Debug, Clone)]
// A negative number is a value (for the range check to name), not a flag.
#[command(allow_negative_numbers = true)]
pub struct GenerateOptions {
    #[command(flatten)]
    pub engine: EngineSettings,
    #[command(flatten)]
    pub backend: BackendSettings,
    /// Constitution (YAML), or a bundled one by name: harmless-helpful, medical-info.
    #[arg(long)]
    pub constitution: PathBuf,
    /// Prompt file: .jsonl (prompt or messages), .csv (prompt column), .parquet, or text; or a
    /// bundled set by name: demo, safety-train, eval-harmful, eval-benign.
    #[arg(long)]
    pub prompts: PathBuf,
    #[arg(long)]
    pub db: PathBuf,
    /// Directory with critique.jinja and revision.jinja [default: the bundled templates]
    #[arg(long)]
    pub templates: Option<PathBuf>,
    /// Critique/revision rounds per prompt (0-4; 0: answers only, no revision pairs).
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    /// Answers sampled per prompt (1-8; above 1 needs --temperature > 0): every two of them
    /// become a candidate pair (strategy `sampled`, RL-CAI) for `tenets label` to rank.
    #[arg(long, default_value_t = 1)]
    pub samples: usize,
    /// Most new tokens per turn.
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// 0 for greedy decoding.
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f32,
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    #[command(flatten)]
    pub adapter: AdapterSettings,
    /// Then score every answer with this reward model (`tenets reward train`), as `tenets
    /// reward score --db` does, so `export --rank-by reward` keeps each prompt's best sample
    /// against its worst (best-of-N).
    #[arg(long, value_name = "RM.gguf")]
    pub rank_by: Option<PathBuf>,
    /// Stop before anything runs if any prompt line is bad.
    #[arg(long)]
    pub strict: bool,
    /// Only shard I of N of the prompts (by content hash), for array jobs; `tenets merge` joins
    /// the shards' databases. The run id leaves it out, so shards merge into one run.
    #[arg(long, value_parser = crate::settings::parse_shard, value_name = "I/N")]
    pub shard: Option<(usize, usize)>,
    #[command(flatten)]
    pub run: RunSettings,
}

impl GenerateOptions {
    /// The defaults of `tenets generate` for these inputs, on llama.cpp with `model`.
    pub fn new(model: &Path, constitution: &Path, prompts: &Path, db: &Path) -> Self {
        let mut o: Self =
            crate::settings::from_flags(&["--constitution", "-", "--prompts", "-", "--db", "-"]);
        o.engine.model = ModelSettings::of(model);
        o.constitution = constitution.to_path_buf();
        o.prompts = prompts.to_path_buf();
        o.db = db.to_path_buf();
        o
    }

    fn check(&self) -> Result<(), PipelineError> {
        self.engine.check()?;
        self.adapter.check()?;
        let bad = |m: &str| Err(PipelineError::Setting(m.to_string()));
        // 0 rounds: answers only (what `tenets eval` asks for).
        if self.rounds > 4 {
            return bad("--rounds must be between 0 (answers only) and 4");
        }
        if self.samples == 0 || self.samples > MAX_SAMPLES {
            return bad(&format!("--samples must be between 1 and {MAX_SAMPLES}"));
        }
        if self.max_tokens == 0 {
            return bad("--max-tokens must be at least 1");
        }
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad("--temperature must be 0 or more");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("--top-p must be in (0, 1]");
        }
        if self.samples > 1 && self.temperature == 0.0 {
            return bad(
                "--samples above 1 needs --temperature above 0 (greedy samples are all alike)",
            );
        }
        if let Some((i, n)) = self.shard {
            if n == 0 || i >= n {
                return bad("--shard must be i/N with 0 ≤ i < N");
            }
        }
        Ok(())
    }

    /// The constitution file: the one named, or the bundled one of that name.
    pub fn constitution_path(&self) -> Result<PathBuf, PipelineError> {
        resolve_bundled(&self.constitution, crate::bundled::CONSTITUTIONS)
    }
}

/// The most answers a run samples per prompt (their pairs grow as N·(N−1)/2).
pub const MAX_SAMPLES: usize = 8;

/// What a generate run did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct GenerateSummary {
    pub run_id: String,
    pub prompts: usize,
    pub already_complete: usize,
    pub steps_written: usize,
    pub failures: usize,
    pub bad_lines: usize,
    /// Prompts left out as exact or near duplicates of another.
    pub duplicates: usize,
    pub generated_tokens: u64,
    pub prefilled_tokens: u64,
    /// Mean number of sequences sampled per llama.cpp batch.
    pub mean_batch_width: f64,
    /// Seconds inside llama.cpp's decode calls.
    pub decode_seconds: f64,
    /// Mean number of graph computes llama.cpp split each batch into (1 is best).
    pub mean_graphs_per_batch: f64,
    pub seconds: f64,
    /// True when a stop request ended the run before every prompt was done.
    pub interrupted: bool,
    /// With --rank-by: answers the reward model scored now (a rerun scores only new ones).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reward_scored: Option<usize>,
}

/// Runs (or resumes) generation. `stop` lets the caller drain or abort it (Ctrl-C).
pub async fn generate(
    options: &GenerateOptions,
    stop: StopSignal,
) -> Result<GenerateSummary, PipelineError> {
    options.check()?;
    // Everything that can be wrong with the inputs is found before the model loads.
    let constitution = Constitution::load(&options.constitution_path()?)?;
    let prompt_set = prompt::load(&resolve_bundled(
        &options.prompts,
        crate::bundled::PROMPT_SETS,
    )?)?;
    check_prompt_sets(std::slice::from_ref(&prompt_set), options.strict)?;
    let model = options.engine.model.model_path();
    if let (Some(rm), Ok(model)) = (&options.rank_by, &model) {
        super::reward::check_reward_model(model, rm)?;
    }
    let mut summary = generate_sets(options, &constitution, vec![prompt_set], stop).await?;
    if let (Some(rm), false) = (&options.rank_by, summary.interrupted) {
        let mut score = super::reward::RewardScoreOptions::new(&model?, rm);
        score.db = Some(options.db.clone());
        score.model.threads = options.engine.model.threads;
        score.run.quiet = options.run.quiet;
        summary.reward_scored = Some(super::reward::score(&score).await?.scored);
    }
    Ok(summary)
}

/// A generate run's summary as text.
pub fn render_generate(s: &GenerateSummary) -> String {
    let mut out = format!(
        "run {}: {} prompts ({} already complete), {} steps written, {} failed, {} tokens in \
         {:.1} s ({:.1} tok/s)\n",
        &s.run_id[..16.min(s.run_id.len())],
        s.prompts,
        s.already_complete,
        s.steps_written,
        s.failures,
        s.generated_tokens,
        s.seconds,
        s.generated_tokens as f64 / s.seconds.max(1e-9),
    );
    if s.duplicates > 0 || s.bad_lines > 0 {
        out += &format!(
            "left out: {} duplicate or near-duplicate prompt(s), {} bad line(s) (see `tenets \
             stats`)\n",
            s.duplicates, s.bad_lines
        );
    }
    if let Some(n) = s.reward_scored {
        out += &format!(
            "reward model: {n} answer(s) scored; `tenets export --rank-by reward` ranks the \
             samples by it\n"
        );
    }
    out
}

/// Generation over prompt sets already read (and checked) with a constitution already loaded
/// (`options.constitution` is not read again): a prompt in two sets runs once.
pub async fn generate_sets(
    options: &GenerateOptions,
    constitution: &Constitution,
    sets: Vec<prompt::PromptSet>,
    stop: StopSignal,
) -> Result<GenerateSummary, PipelineError> {
    options.check()?;
    let started = Instant::now();
    let constitution = constitution.clone();
    let templates = match &options.templates {
        Some(dir) => TurnTemplates::from_dir(dir)?,
        None => TurnTemplates::bundled()?,
    };
    templates.check(&constitution)?;
    let (backend, model) = options.backend.resolve_with(&options.engine.model)?;
    let model = model.unwrap_or_default();
    let remote = match backend {
        Backend::Local => {
            engine::check_model_file(&model)?;
            None
        }
        Backend::OpenAi(remote) => {
            if options.adapter.lora.is_some() {
                return Err(PipelineError::Setting(
                    "--lora applies an adapter in the local engine; serve the adapter from \
                     the server instead"
                        .into(),
                ));
            }
            if options.adapter.control_vector.is_some() {
                return Err(PipelineError::Setting(
                    "--control-vector steers the local engine; give the vector to the server \
                     instead"
                        .into(),
                ));
            }
            let mut remote = remote.clone();
            remote.concurrency = options.engine.parallel;
            // The server is asked first: an address that does not answer leaves no database.
            Some(engine::connect_remote(remote).await?)
        }
    };
    let lora = match &options.adapter.lora {
        Some(path) => {
            engine::check_adapter_file(path)?;
            let sha = crate::hash::of_file(path).map_err(|e| {
                PipelineError::Setting(format!("cannot read --lora {}: {e}", path.display()))
            })?;
            Some((sha, round6(options.adapter.lora_scale)))
        }
        None => None,
    };
    // The vector is read and checked against the model before any database is touched.
    let control = match options.adapter.control() {
        Some(setting) => {
            engine::control::read(&setting, &model)?;
            let sha256 = crate::hash::of_file(&setting.path).map_err(|e| {
                PipelineError::Setting(format!(
                    "cannot read --control-vector {}: {e}",
                    setting.path.display()
                ))
            })?;
            let record = ControlRecord {
                sha256,
                scale: round6(setting.scale),
                layers: setting.layers.map(|(a, b)| format!("{a}-{b}")),
            };
            Some((setting, record))
        }
        None => None,
    };
    if sets.iter().all(|s| s.items.is_empty()) {
        let files: Vec<String> = sets.iter().map(|s| s.path.display().to_string()).collect();
        return Err(PipelineError::Setting(format!(
            "no prompts in {}",
            files.join(", ")
        )));
    }
    let store = Store::open(&options.db).await?;
    // One writer per database: a second generate on it is refused, not interleaved.
    let _claim = crate::store::WriterLock::acquire(&options.db, "generate")?;

    let sampling = Sampling {
        temperature: options.temperature,
        top_p: options.top_p,
    };
    let (jobs_tx, jobs_rx) = mpsc::channel::<Box<dyn Session>>(options.engine.parallel * 2);
    let counters = Arc::new(Counters::default());
    let (served, engine_task) = match remote {
        None => {
            // The engine thread loads the model, reports its chat template, then serves chains.
            let config = EngineConfig {
                lora: options.adapter.lora_config(),
                control: control.as_ref().map(|(setting, _)| setting.clone()),
                ..options.engine.config(&model)
            };
            // The model file is hashed while the engine loads it (each takes a fraction of a
            // second on the default model, more on big ones).
            let (model_sha256, started) = tokio::join!(
                store.model_sha256(&model),
                engine::start_local(
                    config,
                    sampling,
                    jobs_rx,
                    stop.clone(),
                    counters.clone(),
                    |_| Ok(()),
                )
            );
            let (((), chat_hash), engine_task) = started?;
            let model_sha256 = model_sha256?;
            let served = ServedModel {
                model_path: model.display().to_string(),
                model_sha256,
                chat_template_sha256: chat_hash,
            };
            (served, engine_task)
        }
        Some(remote) => {
            engine::start_remote(remote, sampling, jobs_rx, stop.clone(), counters.clone())
        }
    };

    let run = RunRecord {
        model_path: served.model_path,
        model_sha256: served.model_sha256,
        chat_template_sha256: served.chat_template_sha256,
        constitution_name: constitution.name.clone(),
        constitution_sha256: constitution.content_hash(),
        constitution_json: serde_json::to_string(&constitution).unwrap_or_default(),
        template_sha256: templates.hash().to_string(),
        rounds: options.rounds as i64,
        temperature: round6(options.temperature),
        top_p: round6(options.top_p),
        max_tokens: options.max_tokens as i64,
        seed: options.seed as i64,
        lora,
        samples: options.samples as i64,
        control: control.map(|(_, record)| record),
    };
    let run_id = store.upsert_run(&run).await?;
    let mut items: Vec<prompt::PromptItem> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let (mut bad_lines, mut duplicates) = (0, 0);
    let in_shard = |item: &prompt::PromptItem| match options.shard {
        Some((i, n)) => prompt::shard_of(&item.id, n) == i,
        None => true,
    };
    for set in sets {
        let source = set.path.display().to_string();
        let kept: Vec<prompt::PromptItem> = set.items.into_iter().filter(in_shard).collect();
        store.upsert_prompts(&kept, &source).await?;
        for d in &set.duplicates {
            tracing::warn!(
                "skipped {source}:{}: {} of line {}",
                d.line,
                if d.exact {
                    "duplicate"
                } else {
                    "near-duplicate"
                },
                d.of_line
            );
        }
        store
            .record_dropped_prompts(&run_id, &source, &set.duplicates)
            .await?;
        bad_lines += set.bad.len();
        duplicates += set.duplicates.len();
        items.extend(kept.into_iter().filter(|item| seen.insert(item.id.clone())));
    }
    let mut stored = store.steps_of_run(&run_id).await?;
    tracing::info!(run = %run_id, prompts = items.len(), "generate");

    let (writer_tx, inbox) = writer::channel::<Write>(options.engine.parallel * 2);
    let context = Arc::new(RunContext {
        run_id: run_id.clone(),
        constitution,
        templates,
        rounds: options.rounds,
        samples: options.samples,
        max_tokens: options.max_tokens,
        seed: options.seed,
        writer: writer_tx,
    });

    // Build chains; the ones already complete are counted and skipped.
    let steps_per_chain = context.plan().len();
    let mut chains = Vec::new();
    let mut summary = GenerateSummary {
        run_id: run_id.clone(),
        prompts: items.len(),
        bad_lines,
        duplicates,
        ..GenerateSummary::default()
    };
    let mut remaining_steps = 0;
    for item in items {
        let steps = stored.remove(&item.id).unwrap_or_default();
        let chain = Chain::new(context.clone(), item, steps);
        if chain.is_complete() {
            summary.already_complete += 1;
        } else {
            remaining_steps += steps_per_chain - chain.done_len();
            chains.push(chain);
        }
    }

    let progress = progress_bar(options.run.quiet, remaining_steps as u64, "steps");
    let writer = writer::spawn(
        inbox,
        StepWriter {
            store: store.clone(),
            run_id: run_id.clone(),
            progress: progress.clone(),
            steps: 0,
            failures: 0,
        },
        stop.clone(),
    );
    let ticker = tokio::spawn(tick(progress.clone(), counters.clone()));
    drop(context);

    // The feeding stage: a bounded queue, so chains are handed over as slots free up.
    let mut feed = chains.into_iter();
    for chain in feed.by_ref() {
        if stop.draining() || jobs_tx.send(Box::new(chain)).await.is_err() {
            break;
        }
    }
    // Chains never handed over hold the writer's sender: drop them, or the writer never ends.
    drop(feed);
    drop(jobs_tx);

    // Chains (and with them the writer's senders) are gone once the engine returns.
    let StepWriter {
        steps: steps_written,
        failures,
        ..
    } = join_stages(engine_task, writer).await?;
    ticker.abort();
    progress.finish_and_clear();

    summary.steps_written = steps_written;
    summary.failures = failures;
    summary.generated_tokens = counters.generated.load(Ordering::Relaxed);
    summary.prefilled_tokens = counters.prefilled.load(Ordering::Relaxed);
    summary.mean_batch_width = counters.sampled.load(Ordering::Relaxed) as f64
        / counters.batches.load(Ordering::Relaxed).max(1) as f64;
    summary.mean_graphs_per_batch = counters.graphs.load(Ordering::Relaxed) as f64
        / counters.batches.load(Ordering::Relaxed).max(1) as f64;
    summary.decode_seconds = counters.decode_micros.load(Ordering::Relaxed) as f64 / 1e6;
    summary.seconds = started.elapsed().as_secs_f64();
    summary.interrupted = stop.draining();
    tracing::info!(
        seconds = summary.seconds,
        decode_seconds = summary.decode_seconds,
        mean_batch_width = summary.mean_batch_width,
        mean_graphs_per_batch = summary.mean_graphs_per_batch,
        generated = summary.generated_tokens,
        prefilled = summary.prefilled_tokens,
        "generate finished"
    );
    store.close().await;
    Ok(summary)
}

/// Commits generate's writes: each step (with the chain's pairs when it completes it), and each
/// failure, which ends its chain.
struct StepWriter {
    store: Store,
    run_id: String,
    progress: ProgressBar,
    steps: usize,
    failures: usize,
}

impl Commit<Write> for StepWriter {
    async fn commit(&mut self, write: Write) -> Result<bool, StoreError> {
        match write {
            Write::Step { step, pairs } => {
                self.store.commit_step(&step, &pairs).await?;
                self.steps += 1;
                self.progress.inc(1);
                Ok(true)
            }
            Write::Failure {
                prompt_id,
                stage,
                round,
                reason,
            } => {
                tracing::warn!(prompt = %prompt_id, stage, round, "failed: {reason}");
                self.progress.println(format!(
                    "prompt {}… failed at {stage}: {reason}",
                    prompt_id.get(..12).unwrap_or(&prompt_id)
                ));
                self.failures += 1;
                self.store
                    .record_failure(&self.run_id, &prompt_id, &stage, round, &reason)
                    .await?;
                Ok(false)
            }
        }
    }
}
