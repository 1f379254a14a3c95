//! `tenets train`: preference pairs (or SFT conversations) in, a LoRA adapter out.
//!
//! The data (a TRL-format file, or the pairs of a tenets database) is framed by the model's own
//! chat template and tokenized by llama.cpp's tokenizer; the base model's reference log-probs are
//! computed once by the native forward and cached in SQLite; then [`Trainer`] steps run, each
//! step's metrics committed before the next begins and a checkpoint (adapters, optimiser state,
//! step) saved every `save_every` steps. After kill -9, `--resume` continues from the last
//! checkpoint and — batches being a function of the seed and the step — retraces the same loss
//! curve. At the end: the adapter as GGUF (llama.cpp) and PEFT safetensors, the metrics as CSV,
//! and the curves as SVG.

use std::path::{Path, PathBuf};
use std::time::Instant;

use llama_cpp_2::model::LlamaModel;

use super::{check_out_folder, native_compute, progress_bar, setting, PipelineError};
use crate::chat::{ChatTemplate, Message};
use crate::dataset::{self, Example};
use crate::engine::{self, StopSignal};
use crate::export::{self, Kind};
use crate::filters::PairFilters;
use crate::hash;
use crate::model::adapter_gguf;
use crate::model::{AdapterGrads, Adapters, Model, Target};
use crate::quant::matmul::Compute;
use crate::settings::{KernelChoice, ModelSettings, RunSettings};
use crate::store::{FinalScores, Store, TrainRunRecord, TrainStepRecord};
use crate::train::optim::{AdamW, Schedule};
use crate::train::reward::{self, RewardFacts, ScalarHead};
use crate::train::trainer::{self, Hyper, Item, Loss, TrainError, Trainer};

/// Where the examples come from.
#[derive(Debug, Clone)]
pub enum TrainData {
    /// A JSONL or Parquet file in TRL's formats.
    File(PathBuf),
    /// The pairs (or, for SFT, the conversations) of a tenets database, as `export` gives them.
    Db(PathBuf),
}

/// Everything `tenets train` needs: its command line.
#[derive(clap::Args, Debug, Clone)]
// A negative number is a value (for the range check to name), not a flag.
#[command(allow_negative_numbers = true)]
pub struct TrainOptions {
    /// The base model (stays quantized and frozen), and the threads it computes on.
    #[command(flatten)]
    pub model: ModelSettings,
    /// Training data: JSONL or Parquet in TRL's format (prompt/chosen/rejected, or messages).
    #[arg(long, required_unless_present = "db", conflicts_with = "db")]
    pub data: Option<PathBuf>,
    /// A tenets database: train on its (labelled) pairs, as `tenets export` would write them.
    #[arg(long)]
    pub db: Option<PathBuf>,
    /// The adapter to write (GGUF, for llama.cpp); PEFT files, metrics CSV and curves go beside it.
    #[arg(long)]
    pub out: PathBuf,
    /// Database for runs, metrics, checkpoints and cached reference log-probs
    /// [default: the --db database, else OUT.train.db]
    #[arg(long)]
    pub state: Option<PathBuf>,
    #[arg(long = "objective", value_enum, default_value = "dpo")]
    pub loss: Loss,
    /// Optimiser steps [default: --epochs passes over the data]
    #[arg(long)]
    pub steps: Option<u64>,
    #[arg(long, default_value_t = 1.0)]
    pub epochs: f64,
    /// Examples per micro-batch (each runs at its own length: nothing is padded).
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Micro-batches per optimiser step.
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    /// Peak learning rate (AdamW, linear warmup, cosine decay towards 0).
    #[arg(long, default_value_t = 2e-4)]
    pub lr: f64,
    /// Warmup steps [default: a tenth of the run, at most 100]
    #[arg(long)]
    pub warmup: Option<u64>,
    /// DPO/IPO/hinge strength.
    #[arg(long, default_value_t = 0.1)]
    pub beta: f64,
    #[arg(long, default_value_t = 8)]
    pub rank: usize,
    #[arg(long, default_value_t = 16.0)]
    pub alpha: f32,
    /// Dropout on the adapters' inputs while training (PEFT's lora_dropout).
    #[arg(long = "lora-dropout", default_value_t = 0.0)]
    pub dropout: f32,
    /// Projections to adapt (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "q,k,v,o,gate,up,down", value_parser = parse_target)]
    pub targets: Vec<Target>,
    /// Most tokens of prompt + answer.
    #[arg(long, default_value_t = 1024)]
    pub max_length: usize,
    /// Most prompt tokens; longer prompts keep their end [default: half of --max-length]
    #[arg(long)]
    pub max_prompt_length: Option<usize>,
    /// Clip the global gradient norm to this (0: off).
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f64,
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Save a checkpoint every N steps (and at the end).
    #[arg(long, default_value_t = 25)]
    pub save_every: u64,
    /// Continue this run from its last checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Start from this adapter (GGUF; e.g. an SFT run's) instead of a fresh one: its rank,
    /// alpha and targets replace --rank, --alpha and --targets, and preference losses measure
    /// against it (the reference model is the base with this adapter), as DPO after SFT does.
    #[arg(long, value_name = "ADAPTER")]
    pub init_adapter: Option<PathBuf>,
    /// With --db: which of its pairs to train on (the filters of `tenets export`).
    #[command(flatten)]
    pub filters: PairFilters,
    /// Hold out this fraction of the prompts (all pairs of a prompt on one side) from training
    /// and report loss, accuracy and calibration on them at the end [default: 0.1 for
    /// --objective reward, else 0]
    #[arg(long, value_name = "FRACTION")]
    pub held_out: Option<f64>,
    /// Skip scoring every example with the trained adapter at the end.
    #[arg(long)]
    pub no_final_eval: bool,
    /// Native kernels [default: the fastest this CPU runs]
    #[arg(long, value_enum, default_value_t = KernelChoice::Auto)]
    pub kernel: KernelChoice,
    #[command(flatten)]
    pub run: RunSettings,
    /// Fault injection for tests of the non-finite-gradient guard: the gradients of this step
    /// are made NaN before the update. No flag sets it.
    #[arg(skip)]
    #[doc(hidden)]
    pub inject_nan_gradient_at: Option<u64>,
}

/// `--targets`' projections.
fn parse_target(name: &str) -> Result<Target, String> {
    Target::parse(name.trim()).ok_or_else(|| {
        format!(
            "unknown projection `{}` (choose from q,k,v,o,gate,up,down)",
            name.trim()
        )
    })
}

impl TrainOptions {
    /// The defaults of `tenets train` on `model` and `data`, writing `out`.
    pub fn new(model: &Path, data: TrainData, out: &Path) -> Self {
        let mut o: Self = crate::settings::from_flags(&["--data", "-", "--out", "-"]);
        o.model = ModelSettings::of(model);
        (o.data, o.db) = match data {
            TrainData::File(p) => (Some(p), None),
            TrainData::Db(p) => (None, Some(p)),
        };
        o.out = out.to_path_buf();
        o
    }

    /// Where the examples come from.
    pub fn data(&self) -> TrainData {
        match (&self.data, &self.db) {
            (Some(file), _) => TrainData::File(file.clone()),
            (None, Some(db)) => TrainData::Db(db.clone()),
            // clap requires one; a library caller without either trains on nothing.
            (None, None) => TrainData::File(PathBuf::new()),
        }
    }

    /// The fraction of prompts held out of training.
    pub fn held_out_fraction(&self) -> f64 {
        self.held_out
            .unwrap_or(if self.loss == Loss::Reward { 0.1 } else { 0.0 })
    }

    pub fn max_prompt_length(&self) -> usize {
        self.max_prompt_length.unwrap_or(self.max_length / 2)
    }

    /// The adapted projections, each once, in the order given.
    fn target_list(&self) -> Vec<Target> {
        let mut out: Vec<Target> = Vec::new();
        for &t in &self.targets {
            if !out.contains(&t) {
                out.push(t);
            }
        }
        out
    }

    /// The state database for these options.
    pub fn state_path(&self) -> PathBuf {
        match (&self.state, self.data()) {
            (Some(p), _) => p.clone(),
            (None, TrainData::Db(db)) => db,
            (None, TrainData::File(_)) => sibling(&self.out, "train.db"),
        }
    }

    /// Every file the run writes besides the adapter: (PEFT folder, metrics CSV, plot).
    pub fn outputs(&self) -> (PathBuf, PathBuf, PathBuf) {
        (
            sibling(&self.out, "peft"),
            sibling(&self.out, "metrics.csv"),
            sibling(&self.out, "curves.svg"),
        )
    }
}

/// `dir/adapter.gguf` → `dir/adapter.<suffix>`.
fn sibling(out: &Path, suffix: &str) -> PathBuf {
    let stem = out.file_stem().unwrap_or_default().to_string_lossy();
    out.with_file_name(format!("{stem}.{suffix}"))
}

/// What a training run did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TrainSummary {
    pub run_id: String,
    pub state: PathBuf,
    pub examples: usize,
    /// Examples cut to fit `max_length`.
    pub truncated: usize,
    pub total_steps: u64,
    /// Steps done when this invocation ended.
    pub steps_done: u64,
    /// The checkpoint this invocation resumed from.
    pub resumed_from: Option<u64>,
    /// Steps this invocation computed, and their throughput.
    pub steps_run: u64,
    pub tokens_per_second: f64,
    pub seconds_per_example: f64,
    /// How those steps' seconds split between the parts of the work.
    pub step_split: StepSplit,
    pub reference_computed: usize,
    /// Time spent computing reference log-probs (once per example and model).
    pub reference_seconds: f64,
    pub last: Option<TrainStepRecord>,
    pub final_scores: Option<FinalScores>,
    /// The same on the held-out pairs, with calibration.
    pub held_out: Option<HeldOutScores>,
    /// Stopped early (Ctrl-C) after saving a checkpoint.
    pub stopped: bool,
    pub adapter: Option<PathBuf>,
    /// The file is a reward model (an adapter with a scalar head).
    pub reward_model: bool,
    pub peft: Option<PathBuf>,
    pub metrics_csv: PathBuf,
    pub plot: Option<PathBuf>,
    /// The process's peak resident memory (Linux), in MiB.
    pub peak_rss_mib: Option<f64>,
}

/// How the trained adapter (or reward model) scores pairs it never trained on.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct HeldOutScores {
    pub pairs: usize,
    pub loss: f64,
    /// How often the chosen answer's reward beats the rejected one's.
    pub accuracy: f64,
    pub margin: f64,
    /// Expected calibration error of `σ(margin)` as the probability that the chosen answer is
    /// the better one, against the labels (10 equal-width bins).
    pub calibration_error: f64,
}

/// Expected calibration error of predicted probabilities `p` against (soft) labels, over 10
/// equal-width bins: the mean over pairs of |mean p − mean label| in each pair's bin.
pub fn calibration_error(pairs: &[(f64, f64)]) -> f64 {
    let mut bins = [(0usize, 0.0f64, 0.0f64); 10];
    for &(p, label) in pairs {
        let b = &mut bins[((p.clamp(0.0, 1.0) * 10.0) as usize).min(9)];
        b.0 += 1;
        b.1 += p;
        b.2 += label;
    }
    let n = pairs.len().max(1) as f64;
    bins.iter()
        .filter(|b| b.0 > 0)
        // (n_b / N)·|mean p − mean label| = |Σ p − Σ label| / N.
        .map(|&(_, p, label)| (p - label).abs() / n)
        .sum()
}

/// Seconds of the steps an invocation ran, by part: products with the frozen quantized weights
/// (forward and backward), the output head (logits, softmax, its backward), attention, and
/// everything else (the adapters' own products, norms, RoPE, activations, the optimiser).
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct StepSplit {
    pub kernels: f64,
    pub head: f64,
    pub attention: f64,
    pub other: f64,
}

impl StepSplit {
    fn of(parts: crate::model::profile::PartSeconds, seconds: f64) -> Self {
        StepSplit {
            kernels: parts.kernels,
            head: parts.head,
            attention: parts.attention,
            other: (seconds - parts.total()).max(0.0),
        }
    }
}

/// This process's peak resident set size (`VmHWM`), in MiB, where the system reports it.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// Runs (or resumes) a training run. `stop` is checked between steps: once it drains (Ctrl-C),
/// the run saves a checkpoint and returns with `stopped`.
pub async fn train(
    options: &TrainOptions,
    stop: StopSignal,
) -> Result<TrainSummary, PipelineError> {
    check(options)?;
    let model_path = options.model.model_path()?;
    let examples = load_examples(options).await?;
    let (all_items, truncated) = tokenize(
        options.max_length,
        options.max_prompt_length(),
        &model_path,
        &examples,
    )?;
    let data_sha256 = hash::of_json(
        &all_items
            .iter()
            .map(|i| (&i.chosen, &i.rejected, i.prompt_len, i.label))
            .collect::<Vec<_>>(),
    );
    let Split {
        train: items,
        held_out,
        origins,
    } = hold_out(options, all_items, &examples)?;
    // The native model and threads before any database is touched: a model the forward cannot
    // run leaves nothing behind.
    let model = Model::open(&model_path)?;
    let init = match &options.init_adapter {
        Some(path) => Some(adapter_gguf::read(&model, path).map_err(|e| {
            PipelineError::Setting(format!("--init-adapter {}: {e}", path.display()))
        })?),
        None => None,
    };
    let compute = native_compute(&options.model, options.kernel)?;
    let state = options.state_path();
    let store = Store::open(&state).await?;
    let model_sha256 = store.model_sha256(&model_path).await?;
    // The adapter a run starts from is part of its reference model: cached reference log-probs
    // are keyed by both hashes, so they are never mixed with the bare base's.
    let init_sha256 = match &options.init_adapter {
        Some(path) => Some(store.model_sha256(path).await?),
        None => None,
    };
    let reference_key = match &init_sha256 {
        Some(sha) => format!("{model_sha256}+lora:{sha}"),
        None => model_sha256.clone(),
    };

    let per_step = options.batch * options.grad_accum;
    let total_steps = options.steps.unwrap_or_else(|| {
        ((options.epochs * items.len() as f64) / per_step as f64)
            .ceil()
            .max(1.0) as u64
    });
    let warmup = options
        .warmup
        .unwrap_or((total_steps / 10).min(100))
        .min(total_steps);
    let hyper = Hyper {
        loss: options.loss,
        beta: options.beta,
        schedule: Schedule {
            peak: options.lr,
            floor: 0.0,
            warmup,
            total: total_steps,
        },
        optimizer: AdamW {
            weight_decay: options.weight_decay,
            ..AdamW::default()
        },
        max_grad_norm: options.max_grad_norm,
        dropout: options.dropout,
        seed: options.seed,
    };
    // An adapter a run starts from brings its own rank, alpha and targets: the record says
    // what was trained, not what the flags would have made.
    let (rank, alpha, targets) = init.as_ref().and_then(|a| a.shape()).unwrap_or((
        options.rank,
        options.alpha,
        options.target_list(),
    ));
    let settings = serde_json::json!({
        "loss": options.loss.name(),
        "beta": options.beta,
        "lr": options.lr,
        "warmup": warmup,
        "schedule": "cosine",
        "batch": options.batch,
        "grad_accum": options.grad_accum,
        "rank": rank,
        "alpha": alpha,
        "dropout": options.dropout,
        "targets": targets.iter().map(|t| t.name()).collect::<Vec<_>>(),
        "max_length": options.max_length,
        "max_prompt_length": options.max_prompt_length(),
        "max_grad_norm": options.max_grad_norm,
        "weight_decay": options.weight_decay,
        "seed": options.seed,
        "init_adapter": init_sha256,
        "held_out": options.held_out_fraction(),
    });
    let record = TrainRunRecord {
        model_path: model_path.display().to_string(),
        model_sha256: model_sha256.clone(),
        data_source: match &options.data() {
            TrainData::File(p) | TrainData::Db(p) => p.display().to_string(),
        },
        data_sha256,
        settings,
        examples: items.len(),
        total_steps,
    };
    let run_id = record.id();
    let checkpoint = store.train_checkpoint(&run_id).await?;
    let recorded = store.train_steps(&run_id).await?;
    if !options.resume && (checkpoint.is_some() || !recorded.is_empty()) {
        let at = checkpoint.as_ref().map_or(0, |c| c.0);
        return Err(setting(format!(
            "{} already holds this training run ({} of {total_steps} steps recorded, checkpoint \
             at step {at}): pass --resume to continue it, or --state/--out elsewhere to start over",
            state.display(),
            recorded.len()
        )));
    }
    if options.resume && checkpoint.is_none() && recorded.is_empty() {
        let others = store.unfinished_train_runs().await?;
        if !others.is_empty() {
            tracing::warn!(
                "--resume: no run with these settings and data in {}; {} unfinished run(s) there \
                 differ in settings or data (first {}), so a new run starts",
                state.display(),
                others.len(),
                &others[0][..12.min(others[0].len())]
            );
        }
    }
    store.upsert_train_run(&record).await?;
    tracing::info!(
        run = %&run_id[..12],
        examples = items.len(),
        total_steps,
        "training run"
    );

    let handle = tokio::runtime::Handle::current();
    let options = options.clone();
    let job = Job {
        options,
        store,
        handle,
        model,
        compute,
        hyper,
        run_id,
        reference_key,
        init,
        checkpoint,
        total_steps,
        stop,
        origins,
        held_out,
    };
    let (summary_parts, state) = tokio::task::spawn_blocking(move || {
        let state = job.store.path().to_path_buf();
        (job.run(items), state)
    })
    .await
    .map_err(|e| PipelineError::Internal(format!("training thread failed: {e}")))?;
    let mut summary = summary_parts?;
    summary.truncated = truncated;
    summary.state = state;
    Ok(summary)
}

fn check(o: &TrainOptions) -> Result<(), PipelineError> {
    let positive = [
        ("--batch", o.batch as f64),
        ("--grad-accum", o.grad_accum as f64),
        ("--rank", o.rank as f64),
        ("--lr", o.lr),
        ("--epochs", o.epochs),
        ("--save-every", o.save_every as f64),
        ("--alpha", f64::from(o.alpha)),
    ];
    for (flag, v) in positive {
        if !(v > 0.0 && v.is_finite()) {
            return Err(setting(format!("{flag} must be positive, got {v}")));
        }
    }
    if o.steps == Some(0) {
        return Err(setting("--steps must be at least 1"));
    }
    if !(o.beta > 0.0 && o.beta.is_finite()) {
        return Err(setting(format!("--beta must be positive, got {}", o.beta)));
    }
    if !(0.0..1.0).contains(&o.dropout) {
        return Err(setting(format!(
            "--lora-dropout must be in [0, 1), got {}",
            o.dropout
        )));
    }
    o.model.check()?;
    o.filters.check_settings().map_err(setting)?;
    if o.db.is_none() && o.filters != PairFilters::default() {
        return Err(setting(
            "--include-truncated, --max-similarity, --min-margin, --helpful-ratio and \
             --sampled-pairs choose a database's pairs: they need --db",
        ));
    }
    if o.targets.is_empty() {
        return Err(setting("--targets names no projection"));
    }
    let prompt_length = o.max_prompt_length();
    if o.max_length < 8 || prompt_length < 1 || prompt_length >= o.max_length {
        return Err(setting(format!(
            "need 1 ≤ --max-prompt-length < --max-length (≥ 8); got {prompt_length} and {}",
            o.max_length
        )));
    }
    if !(0.0..=1.0).contains(&o.weight_decay) || o.max_grad_norm.is_nan() || o.max_grad_norm < 0.0 {
        return Err(setting(
            "--weight-decay must be in [0, 1] and --max-grad-norm ≥ 0",
        ));
    }
    let held_out = o.held_out_fraction();
    if !(0.0..=0.5).contains(&held_out) {
        return Err(setting(format!(
            "--held-out is the fraction of prompts kept out of training, in [0, 0.5]; got {held_out}"
        )));
    }
    check_out_folder("--out", &o.out)?;
    if o.out.extension().and_then(|e| e.to_str()) != Some("gguf") {
        return Err(setting(format!(
            "--out {}: the adapter is a GGUF file; name it *.gguf",
            o.out.display()
        )));
    }
    Ok(())
}

/// The examples, from a file or a database; preference losses need every one to be a pair.
async fn load_examples(options: &TrainOptions) -> Result<Vec<Example>, PipelineError> {
    let examples = match &options.data() {
        TrainData::File(path) => dataset::load(path)?,
        TrainData::Db(db) => {
            let store = Store::open_existing(db).await?;
            let kind = match options.loss {
                Loss::Sft => Kind::Sft,
                Loss::Preference(_) | Loss::Reward => Kind::Dpo,
            };
            let rows = export::rows(&store, kind, &options.filters).await?;
            for (reason, count) in &rows.dropped {
                tracing::info!(?reason, count, "pairs left out by the export filters");
            }
            let examples: Vec<Example> = rows
                .rows
                .iter()
                .enumerate()
                .map(|(i, row)| row.to_example(format!("{} pair {}", db.display(), i + 1)))
                .collect();
            if examples.is_empty() {
                return Err(setting(format!(
                    "{} has no {} rows to train on (run `tenets generate`, and `tenets label` for \
                     labelled pairs, first)",
                    db.display(),
                    if kind == Kind::Sft { "SFT" } else { "DPO" }
                )));
            }
            examples
        }
    };
    if options.loss.needs_pairs() {
        let unpaired: Vec<&str> = examples
            .iter()
            .filter(|e| e.rejected.is_none())
            .map(|e| e.origin.as_str())
            .collect();
        if let Some(first) = unpaired.first() {
            return Err(setting(format!(
                "--objective {} needs pairs, but {} example(s) have no `rejected` answer (first: \
                 {first}); use --objective sft for conversations",
                options.loss.name(),
                unpaired.len()
            )));
        }
    }
    Ok(examples)
}

/// Splits the items into those trained on and those held out (`--held-out`): by a hash of each
/// prompt's tokens, so every pair of one prompt lands on the same side and the split is the
/// same on every run.
fn hold_out(
    options: &TrainOptions,
    items: Vec<Item>,
    examples: &[Example],
) -> Result<Split, PipelineError> {
    let fraction = options.held_out_fraction();
    let (mut train, mut held, mut origins) = (Vec::new(), Vec::new(), Vec::new());
    for (item, example) in items.into_iter().zip(examples) {
        let prompt: Vec<String> = item.chosen[..item.prompt_len]
            .iter()
            .map(u32::to_string)
            .collect();
        let digest = hash::of_parts(&["held-out", &prompt.join(",")]);
        let draw = u64::from_str_radix(&digest[..16], 16).unwrap_or(0) as f64 / u64::MAX as f64;
        if draw < fraction {
            held.push(item);
        } else {
            train.push(item);
            origins.push(example.origin.clone());
        }
    }
    if train.is_empty() {
        return Err(setting(format!(
            "--held-out {fraction} keeps every example out of training ({} held out); lower it \
             or add prompts",
            held.len()
        )));
    }
    if fraction > 0.0 && held.is_empty() {
        tracing::warn!(
            fraction,
            "--held-out: no prompt fell on the held-out side (too few prompts); nothing is held out"
        );
    }
    Ok(Split {
        train,
        held_out: held,
        origins,
    })
}

/// The items trained on, those held out, and where each trained one came from.
struct Split {
    train: Vec<Item>,
    held_out: Vec<Item>,
    origins: Vec<String>,
}

/// Frames every example with the model's chat template and tokenizes it; returns the items and
/// how many were cut to fit `max_length` tokens in all, of which at most `max_prompt_length`
/// prompt.
pub(super) fn tokenize(
    max_length: usize,
    max_prompt_length: usize,
    model_path: &Path,
    examples: &[Example],
) -> Result<(Vec<Item>, usize), PipelineError> {
    let llama = engine::load_vocab(model_path)?;
    let template = engine::chat_template(&llama)?;
    let mut items = Vec::with_capacity(examples.len());
    let mut truncated = 0;
    for ex in examples {
        let bad = |m: String| PipelineError::Train(format!("{}: {m}", ex.origin));
        let mut prompt = prompt_tokens(&llama, &template, &ex.prompt).map_err(bad)?;
        let chosen = completion_tokens(&llama, &template, &ex.prompt, &ex.chosen).map_err(bad)?;
        let rejected = match &ex.rejected {
            Some(r) => Some(completion_tokens(&llama, &template, &ex.prompt, r).map_err(bad)?),
            None => None,
        };
        // As TRL does: the prompt keeps its end, then the answers are cut to fit.
        let mut cut = false;
        if prompt.len() > max_prompt_length {
            prompt.drain(..prompt.len() - max_prompt_length);
            cut = true;
        }
        let room = max_length - prompt.len();
        let mut fit = |answer: Vec<u32>| {
            let mut answer = answer;
            if answer.len() > room {
                answer.truncate(room);
                cut = true;
            }
            [prompt.as_slice(), &answer].concat()
        };
        let chosen = fit(chosen);
        let rejected = rejected.map(&mut fit);
        truncated += usize::from(cut);
        items.push(Item {
            chosen,
            rejected,
            prompt_len: prompt.len(),
            label: ex.label,
            reference: None,
        });
    }
    if truncated > 0 {
        tracing::warn!(
            truncated,
            max_length,
            "example(s) were cut to fit --max-length / --max-prompt-length"
        );
    }
    Ok((items, truncated))
}

fn prompt_tokens(
    llama: &LlamaModel,
    template: &ChatTemplate,
    prompt: &[Message],
) -> Result<Vec<u32>, String> {
    let segments = template.render(prompt, true).map_err(|e| e.to_string())?;
    Ok(ids(engine::tokenize_segments(llama, &segments)))
}

/// The tokens the template adds after the prompt for `completion`: the conversation rendered
/// with it, less the prompt rendered with its generation prompt. Tokenized apart from the prompt,
/// as TRL does, so the boundary is exact.
fn completion_tokens(
    llama: &LlamaModel,
    template: &ChatTemplate,
    prompt: &[Message],
    completion: &[Message],
) -> Result<Vec<u32>, String> {
    let head = template
        .render_text(prompt, true)
        .map_err(|e| e.to_string())?;
    let full: Vec<Message> = prompt.iter().chain(completion).cloned().collect();
    let segments = template.render(&full, false).map_err(|e| e.to_string())?;
    let text: String = segments.iter().map(|s| s.text.as_str()).collect();
    if !text.starts_with(&head) {
        return Err(
            "the model's chat template renders the prompt differently once the answer \
                    follows, so the answer cannot be split from it"
                .into(),
        );
    }
    let vocab = llama.vocab();
    let mut skip = head.len();
    let mut tokens = Vec::new();
    for s in &segments {
        let rest = if skip >= s.text.len() {
            skip -= s.text.len();
            continue;
        } else {
            &s.text[std::mem::take(&mut skip)..]
        };
        tokens.extend(ids(vocab.tokenize(rest.as_bytes(), false, s.from_template)));
    }
    if tokens.is_empty() {
        return Err("the answer is empty".into());
    }
    Ok(tokens)
}

fn ids(tokens: Vec<llama_cpp_2::token::LlamaToken>) -> Vec<u32> {
    tokens.into_iter().map(|t| t.0 as u32).collect()
}

/// The keys of an item's cached reference log-probs (chosen, rejected): the answers are scored
/// together, packed around their prompt, so both keys hash the whole item.
fn reference_keys(item: &Item) -> (String, String) {
    let mut bytes = Vec::with_capacity((item.tokens() + 2) * 4);
    bytes.extend_from_slice(&(item.prompt_len as u64).to_le_bytes());
    for t in &item.chosen {
        bytes.extend_from_slice(&t.to_le_bytes());
    }
    bytes.extend_from_slice(&u64::MAX.to_le_bytes());
    for t in item.rejected.iter().flatten() {
        bytes.extend_from_slice(&t.to_le_bytes());
    }
    let item = hex::encode(bytes);
    (
        hash::of_parts(&["packed-pair", "chosen", &item]),
        hash::of_parts(&["packed-pair", "rejected", &item]),
    )
}

/// The training job proper, run on a blocking thread (the compute is synchronous; the store is
/// reached through the runtime's handle).
struct Job {
    options: TrainOptions,
    store: Store,
    handle: tokio::runtime::Handle,
    model: Model,
    compute: Compute,
    hyper: Hyper,
    run_id: String,
    /// The reference model's key in the log-prob cache: the base's hash, with the initial
    /// adapter's when there is one.
    reference_key: String,
    /// The adapter the run starts from (and measures against), if any.
    init: Option<Adapters>,
    checkpoint: Option<(u64, Vec<u8>)>,
    total_steps: u64,
    stop: StopSignal,
    /// Where each training example came from (`file:line`), for messages about it.
    origins: Vec<String>,
    /// Pairs kept out of training, scored at the end.
    held_out: Vec<Item>,
}

impl Job {
    fn run(mut self, mut items: Vec<Item>) -> Result<TrainSummary, PipelineError> {
        let o = &self.options;
        let started = Instant::now();
        let mut held_out = std::mem::take(&mut self.held_out);
        let reference_computed = match o.loss {
            Loss::Preference(_) => self.references(&mut items)? + self.references(&mut held_out)?,
            Loss::Sft | Loss::Reward => 0,
        };
        let reference_seconds = started.elapsed().as_secs_f64();
        let adapters = match &self.init {
            Some(init) => init.clone(),
            None => Adapters::new(&self.model, &o.target_list(), o.rank, o.alpha, o.seed),
        };
        let mut trainer = match o.loss {
            Loss::Reward => {
                Trainer::with_head(adapters, ScalarHead::zeros(self.model.config().embedding))
            }
            _ => Trainer::new(adapters),
        };
        let resumed_from = match &self.checkpoint {
            Some((step, state)) => {
                trainer
                    .restore(state)
                    .map_err(|e| PipelineError::Train(e.to_string()))?;
                tracing::info!(step, "resuming from checkpoint");
                Some(*step)
            }
            None => None,
        };
        let (_, csv_path, plot_path) = o.outputs();
        let per_step = o.batch * o.grad_accum;
        let bar = progress_bar(o.run.quiet, self.total_steps, "steps");
        bar.set_position(trainer.step);
        let (mut steps_run, mut tokens_run, mut seconds_run, mut examples_run) =
            (0u64, 0usize, 0.0f64, 0usize);
        let mut last = None;
        let mut stopped = false;
        let mut parts = crate::model::profile::PartSeconds::default();
        while trainer.step < self.total_steps {
            if self.stop.draining() {
                stopped = true;
                break;
            }
            let step = trainer.step + 1;
            let indices = trainer::batch_indices(items.len(), per_step, step, o.seed);
            let batch: Vec<&Item> = indices.iter().map(|&i| &items[i]).collect();
            let started = Instant::now();
            let spent_before = self.model.time_spent();
            let stepped = trainer
                .gradients(&self.model, &self.compute, &self.hyper, &batch)
                .and_then(|mut gradients| {
                    if o.inject_nan_gradient_at == Some(step) {
                        poison(&mut gradients.grads);
                    }
                    trainer.apply(&self.hyper, gradients)
                });
            let metrics = match stepped {
                Ok(metrics) => metrics,
                Err(e) => {
                    // Nothing of this step reached the weights: the last completed one is the
                    // checkpoint a rerun with --resume continues from.
                    self.checkpoint_last(&trainer, last.as_ref())?;
                    bar.abandon();
                    return Err(self.step_error(step, &indices, e));
                }
            };
            let seconds = started.elapsed().as_secs_f64();
            let spent = self.model.time_spent().since(spent_before);
            let record = TrainStepRecord {
                step,
                loss: metrics.loss,
                reward_chosen: metrics.reward_chosen,
                reward_rejected: metrics.reward_rejected,
                margin: metrics.margin,
                accuracy: metrics.accuracy,
                logp_chosen: metrics.logp_chosen,
                logp_rejected: metrics.logp_rejected,
                grad_norm: metrics.grad_norm,
                lr: metrics.lr,
                tokens: metrics.tokens as u64,
                seconds,
            };
            let save = step.is_multiple_of(o.save_every) || step == self.total_steps;
            let state = save.then(|| trainer.to_bytes());
            self.handle.block_on(self.store.commit_train_step(
                &self.run_id,
                &record,
                state.as_deref(),
            ))?;
            steps_run += 1;
            tokens_run += metrics.tokens;
            seconds_run += seconds;
            parts = parts.plus(spent);
            examples_run += batch.len();
            bar.set_position(step);
            bar.set_message(format!(
                "loss {:.4}{}  {:.0} tok/s",
                record.loss,
                record
                    .accuracy
                    .map_or(String::new(), |a| format!("  acc {a:.2}")),
                tokens_run as f64 / seconds_run.max(1e-9)
            ));
            if save {
                self.write_csv(&csv_path)?;
            }
            last = Some(record);
        }
        if stopped {
            self.checkpoint_last(&trainer, last.as_ref())?;
        }
        bar.finish_and_clear();
        self.write_csv(&csv_path)?;
        let mut summary = TrainSummary {
            run_id: self.run_id.clone(),
            state: PathBuf::new(),
            examples: items.len(),
            truncated: 0,
            total_steps: self.total_steps,
            steps_done: trainer.step,
            resumed_from,
            steps_run,
            tokens_per_second: tokens_run as f64 / seconds_run.max(1e-9),
            seconds_per_example: seconds_run / examples_run.max(1) as f64,
            step_split: StepSplit::of(parts, seconds_run),
            reference_computed,
            reference_seconds,
            last: last.or_else(|| {
                self.handle
                    .block_on(self.store.train_steps(&self.run_id))
                    .ok()
                    .and_then(|s| s.last().copied())
            }),
            final_scores: None,
            held_out: None,
            stopped,
            adapter: None,
            reward_model: o.loss == Loss::Reward,
            peft: None,
            metrics_csv: csv_path,
            plot: None,
            peak_rss_mib: None,
        };
        if stopped {
            summary.peak_rss_mib = peak_rss_mib();
            return Ok(summary);
        }
        // A reward model's file records its rewards' spread over the training answers, so
        // its evaluation runs even when the run's scores are already stored.
        let stored = self
            .handle
            .block_on(self.store.train_run_finished(&self.run_id))?;
        let evaluation = match (&stored, o.no_final_eval, o.loss) {
            (_, true, _) | (Some(Some(_)), _, Loss::Sft | Loss::Preference(_)) => None,
            _ => Some(self.evaluate(&trainer, &items, "final evaluation")?),
        };
        let final_scores = match stored {
            Some(Some(scores)) => Some(scores),
            _ => evaluation.as_ref().map(Evaluation::scores),
        };
        if !held_out.is_empty() && !o.no_final_eval {
            let e = self.evaluate(&trainer, &held_out, "held-out pairs")?;
            summary.held_out = Some(HeldOutScores {
                pairs: held_out.len(),
                loss: e.loss,
                accuracy: e.accuracy.unwrap_or(0.0),
                margin: e.margin.unwrap_or(0.0),
                calibration_error: e.calibration_error.unwrap_or(0.0),
            });
        }
        self.handle.block_on(
            self.store
                .finish_train_run(&self.run_id, final_scores.as_ref()),
        )?;
        summary.final_scores = final_scores;
        match &trainer.head {
            Some(head) => {
                let rewards = evaluation.map(|e| e.rewards).unwrap_or_default();
                let spread = (!rewards.is_empty()).then(|| mean_std(&rewards));
                let facts = RewardFacts {
                    base_name: self
                        .model
                        .gguf()
                        .get("general.name")
                        .and_then(crate::gguf::Value::as_str)
                        .map(str::to_string),
                    train_pairs: items.len() as u64,
                    held_out_pairs: held_out.len() as u64,
                    held_out_accuracy: summary.held_out.map(|h| h.accuracy),
                    reward_mean: spread.map(|s| s.0),
                    reward_std: spread.map(|s| s.1),
                };
                reward::write(&self.model, &trainer.adapters, head, &facts, &o.out)
                    .map_err(|e| PipelineError::Train(e.to_string()))?;
            }
            None => adapter_gguf::write(&self.model, &trainer.adapters, &o.out)
                .map_err(|e| PipelineError::Train(e.to_string()))?,
        }
        summary.adapter = Some(o.out.clone());
        let steps = self.handle.block_on(self.store.train_steps(&self.run_id))?;
        crate::plot::training_curves(&steps, o.loss.name(), &plot_path)
            .map_err(|e| PipelineError::Train(e.to_string()))?;
        summary.plot = Some(plot_path);
        let (peft_dir, _, _) = o.outputs();
        match &trainer.head {
            Some(head) => crate::train::peft::write_reward(
                &self.model,
                &trainer.adapters,
                head,
                o.dropout,
                &peft_dir,
            ),
            None => crate::train::peft::write(&self.model, &trainer.adapters, o.dropout, &peft_dir),
        }
        .map_err(|e| PipelineError::Train(e.to_string()))?;
        summary.peft = Some(peft_dir);
        summary.peak_rss_mib = peak_rss_mib();
        Ok(summary)
    }

    /// Makes the last step this invocation completed (`last`) the checkpoint, so a stopped or
    /// failed run redoes nothing that was done (`--save-every` may not have saved it).
    fn checkpoint_last(
        &self,
        trainer: &Trainer,
        last: Option<&TrainStepRecord>,
    ) -> Result<(), PipelineError> {
        if let Some(record) = last.filter(|_| trainer.step > 0) {
            self.handle.block_on(self.store.commit_train_step(
                &self.run_id,
                record,
                Some(&trainer.to_bytes()),
            ))?;
        }
        Ok(())
    }

    /// What a failed step says: the step, the examples of its batch, and what was kept.
    fn step_error(&self, step: u64, indices: &[usize], e: TrainError) -> PipelineError {
        let kept = match step - 1 {
            0 => "nothing was trained yet".to_string(),
            done => format!("the checkpoint at step {done} is kept (rerun with --resume)"),
        };
        PipelineError::Train(match e {
            TrainError::NonFinite { index, value } => format!(
                "step {step}: the loss is {value} on the example at {}; lower --lr or check that \
                 example ({kept})",
                self.origins[indices[index]]
            ),
            TrainError::NonFiniteGradient { norm } => {
                let mut examples: Vec<&str> =
                    indices.iter().map(|&i| self.origins[i].as_str()).collect();
                examples.dedup();
                format!(
                    "step {step}: the gradient norm is {norm} on the batch of {}; no weight was \
                     changed and {kept}; lower --lr or check those examples",
                    examples.join(", ")
                )
            }
            other => format!("step {step}: {other}"),
        })
    }

    /// Fills every item's reference log-probs: from the cache, or computed (and cached, a batch
    /// at a time, so an interrupted pass keeps what it did). Returns how many it computed.
    fn references(&self, items: &mut [Item]) -> Result<usize, PipelineError> {
        let cached = self
            .handle
            .block_on(self.store.reference_logps(&self.reference_key))?;
        let mut missing = Vec::new();
        for (i, item) in items.iter_mut().enumerate() {
            let (kc, kr) = reference_keys(item);
            match (cached.get(&kc), cached.get(&kr)) {
                (Some(&c), Some(&r)) => item.reference = Some((c, r)),
                _ => missing.push(i),
            }
        }
        if missing.is_empty() {
            return Ok(0);
        }
        let bar = progress_bar(
            self.options.run.quiet,
            missing.len() as u64,
            "reference pairs",
        );
        bar.set_message(if self.init.is_some() {
            "reference (initial adapter) log-probs, computed once"
        } else {
            "base model log-probs, computed once"
        });
        for chunk in missing.chunks(8) {
            let batch: Vec<&Item> = chunk.iter().map(|&i| &items[i]).collect();
            let logps =
                trainer::reference_logps(&self.model, &self.compute, self.init.as_ref(), &batch)?;
            let mut rows = Vec::new();
            for (&i, (c, r)) in chunk.iter().zip(logps) {
                let item = &mut items[i];
                let (kc, kr) = reference_keys(item);
                rows.push((kc, c));
                rows.push((kr, r));
                item.reference = Some((c, r));
                bar.inc(1);
            }
            self.handle
                .block_on(self.store.put_reference_logps(&self.reference_key, &rows))?;
            if self.stop.draining() {
                bar.abandon();
                return Err(PipelineError::Train(
                    "stopped while computing reference log-probs (those done are kept)".into(),
                ));
            }
        }
        bar.finish_and_clear();
        Ok(missing.len())
    }

    /// `items` scored with the trained adapter (and head): mean loss, and for pairs accuracy,
    /// mean margin and calibration; a reward model's rewards of every answer.
    fn evaluate(
        &self,
        trainer: &Trainer,
        items: &[Item],
        what: &'static str,
    ) -> Result<Evaluation, PipelineError> {
        let bar = progress_bar(self.options.run.quiet, items.len() as u64, "examples");
        bar.set_message(what);
        let (mut loss, mut correct, mut margin) = (0.0, 0usize, 0.0);
        let mut predicted = Vec::new();
        let mut rewards = Vec::new();
        for chunk in items.chunks(8) {
            let batch: Vec<&Item> = chunk.iter().collect();
            let scores = trainer.score_items(&self.model, &self.compute, &self.hyper, &batch)?;
            for (s, item) in scores.iter().zip(chunk) {
                loss += s.loss;
                if let Some(m) = s.margin {
                    margin += m;
                    correct += usize::from(m > 0.0);
                    predicted.push((crate::train::dpo::sigmoid(m), item.label));
                }
                if let Some((c, r)) = s.rewards {
                    rewards.extend([c, r]);
                }
                bar.inc(1);
            }
        }
        bar.finish_and_clear();
        let n = items.len().max(1) as f64;
        let pairs = self.options.loss.needs_pairs();
        Ok(Evaluation {
            loss: loss / n,
            accuracy: pairs.then_some(correct as f64 / n),
            margin: pairs.then_some(margin / n),
            calibration_error: pairs.then(|| calibration_error(&predicted)),
            rewards,
        })
    }

    fn write_csv(&self, path: &Path) -> Result<(), PipelineError> {
        let steps = self.handle.block_on(self.store.train_steps(&self.run_id))?;
        let mut w = csv::Writer::from_writer(Vec::new());
        let fail = |e: String| PipelineError::Train(format!("{}: {e}", path.display()));
        for s in &steps {
            w.serialize(s).map_err(|e| fail(e.to_string()))?;
        }
        if steps.is_empty() {
            w.write_record([
                "step",
                "loss",
                "reward_chosen",
                "reward_rejected",
                "margin",
                "accuracy",
                "logp_chosen",
                "logp_rejected",
                "grad_norm",
                "lr",
                "tokens",
                "seconds",
            ])
            .map_err(|e| fail(e.to_string()))?;
        }
        let bytes = w.into_inner().map_err(|e| fail(e.to_string()))?;
        export::write_atomically(path, &bytes)?;
        Ok(())
    }
}

/// What [`Job::evaluate`] measured.
struct Evaluation {
    loss: f64,
    accuracy: Option<f64>,
    margin: Option<f64>,
    calibration_error: Option<f64>,
    rewards: Vec<f64>,
}

impl Evaluation {
    fn scores(&self) -> FinalScores {
        FinalScores {
            loss: self.loss,
            accuracy: self.accuracy,
            margin: self.margin,
        }
    }
}

/// Mean and (population) standard deviation (of at least one value).
fn mean_std(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

/// Makes the gradients NaN, every A factor's (the fault
/// [`TrainOptions::inject_nan_gradient_at`] injects).
fn poison(grads: &mut AdapterGrads) {
    for g in grads.layers.iter_mut().flatten().flatten() {
        g.a.fill(f32::NAN);
    }
}

/// The summary as text.
pub fn render(s: &TrainSummary) -> String {
    let mut out = format!(
        "training run {} ({}): {} examples{}, step {}/{}",
        &s.run_id[..12.min(s.run_id.len())],
        s.state.display(),
        s.examples,
        if s.truncated > 0 {
            format!(" ({} cut to fit)", s.truncated)
        } else {
            String::new()
        },
        s.steps_done,
        s.total_steps
    );
    if let Some(from) = s.resumed_from {
        out.push_str(&format!(", resumed from step {from}"));
    }
    out.push('\n');
    if s.reference_computed > 0 {
        out.push_str(&format!(
            "reference log-probs computed for {} example(s) in {:.1} s (cached for later runs)\n",
            s.reference_computed, s.reference_seconds
        ));
    }
    if s.steps_run > 0 {
        out.push_str(&format!(
            "{} step(s) this time: {:.1} tokens/s, {:.2} s per example\n",
            s.steps_run, s.tokens_per_second, s.seconds_per_example
        ));
        let t = &s.step_split;
        let all = (t.kernels + t.head + t.attention + t.other).max(1e-9);
        // A reward model never runs the output head.
        let head = match t.head > 0.0 {
            true => format!(", output head {:.0}%", 100.0 * t.head / all),
            false => String::new(),
        };
        out.push_str(&format!(
            "step time: quantized products {:.0}%{head}, attention {:.0}%, other {:.0}%\n",
            100.0 * t.kernels / all,
            100.0 * t.attention / all,
            100.0 * t.other / all
        ));
    }
    if let Some(l) = &s.last {
        out.push_str(&format!("last step: loss {:.4}", l.loss));
        if let (Some(m), Some(a)) = (l.margin, l.accuracy) {
            out.push_str(&format!(", margin {m:.3}, accuracy {a:.2}"));
        }
        out.push('\n');
    }
    if let Some(f) = &s.final_scores {
        out.push_str(&format!("all examples: loss {:.4}", f.loss));
        if let (Some(a), Some(m)) = (f.accuracy, f.margin) {
            out.push_str(&format!(", reward accuracy {a:.3}, mean margin {m:.3}"));
        }
        out.push('\n');
    }
    if let Some(h) = &s.held_out {
        out.push_str(&format!(
            "held-out pairs ({}): loss {:.4}, accuracy {:.3}, mean margin {:.3}, calibration \
             error {:.3}\n",
            h.pairs, h.loss, h.accuracy, h.margin, h.calibration_error
        ));
    }
    if s.stopped {
        out.push_str("stopped: the checkpoint is saved; rerun with --resume to continue\n");
    }
    if let Some(mib) = s.peak_rss_mib {
        out.push_str(&format!("peak memory: {mib:.0} MiB\n"));
    }
    for (what, path) in [
        (
            if s.reward_model {
                "reward model (GGUF)"
            } else {
                "adapter (GGUF)"
            },
            s.adapter.as_ref(),
        ),
        ("adapter (PEFT)", s.peft.as_ref()),
        ("metrics", Some(&s.metrics_csv)),
        ("curves", s.plot.as_ref()),
    ] {
        if let Some(p) = path {
            out.push_str(&format!("{what}: {}\n", p.display()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_out_prompts_keep_all_their_pairs_on_one_side_on_every_run() {
        let mut options = TrainOptions::new(
            Path::new("m.gguf"),
            TrainData::File("d".into()),
            Path::new("a.gguf"),
        );
        options.loss = Loss::Reward;
        assert_eq!(options.held_out_fraction(), 0.1);
        options.held_out = Some(0.3);
        // 40 prompts, two pairs each.
        let mut items = Vec::new();
        let mut examples = Vec::new();
        for p in 0..40u32 {
            for answer in [7u32, 8] {
                items.push(Item {
                    chosen: vec![p, p + 1000, answer],
                    rejected: Some(vec![p, p + 1000, answer + 2]),
                    prompt_len: 2,
                    label: 1.0,
                    reference: None,
                });
                examples.push(Example {
                    origin: format!("d:{p}:{answer}"),
                    prompt: Vec::new(),
                    chosen: Vec::new(),
                    rejected: None,
                    label: 1.0,
                });
            }
        }
        let split = hold_out(&options, items.clone(), &examples).unwrap();
        assert_eq!(split.train.len() + split.held_out.len(), 80);
        assert_eq!(split.origins.len(), split.train.len());
        // About 30% of the prompts, each with both its pairs.
        assert!(
            (10..=40).contains(&split.held_out.len()),
            "{}",
            split.held_out.len()
        );
        for held in &split.held_out {
            let prompt = &held.chosen[..2];
            assert!(split.train.iter().all(|t| &t.chosen[..2] != prompt));
        }
        let again = hold_out(&options, items, &examples).unwrap();
        assert_eq!(again.held_out, split.held_out);
    }

    #[test]
    fn calibration_error_weighs_each_bin_by_its_pairs() {
        // Perfectly calibrated: each bin's mean prediction is its mean label.
        assert!(calibration_error(&[(0.95, 1.0), (0.95, 0.9), (0.25, 0.25)]) < 1e-12);
        // Sure and wrong: the whole gap.
        assert!((calibration_error(&[(0.99, 0.0), (0.99, 0.0)]) - 0.99).abs() < 1e-12);
        // Two bins: |0.9 − 1| over 3 pairs in one, |0.1 − 1| for the one pair in the other.
        let ece = calibration_error(&[(0.9, 1.0), (0.9, 1.0), (0.9, 1.0), (0.1, 1.0)]);
        assert!((ece - (3.0 * 0.1 + 0.9) / 4.0).abs() < 1e-12, "{ece}");
        assert_eq!(calibration_error(&[]), 0.0);
        assert_eq!(mean_std(&[1.0, 3.0]), (2.0, 1.0));
    }
}
