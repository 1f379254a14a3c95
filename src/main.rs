//! The `tenets` command line: parses flags, calls the library, turns errors into messages and
//! exit codes. No logic lives here.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use tenets::constitution::{self, starter, Constitution};
use tenets::engine::remote::RemoteConfig;
use tenets::engine::{Backend, StopSignal};
use tenets::export::{self, Format, Kind};
use tenets::filters::{PairFilters, SampledPairs};
use tenets::label::CotSettings;
use tenets::pipeline::label::LabelOptions;
use tenets::pipeline::redteam::RedteamOptions;
use tenets::pipeline::{self, GenerateOptions};
use tenets::quant::matmul::Kernel;
use tenets::score::{self, ScoreEngine, ScoreInput, ScoreOptions};
use tenets::store::Store;
use tenets::{home, stats};

#[derive(Parser)]
#[command(
    name = "tenets",
    version,
    about = "Constitutional AI and RLAIF on local GGUF models"
)]
struct Cli {
    /// More log output (repeat for more); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Answer, critique and revise every prompt; stream each step into SQLite (resumable).
    Generate(GenerateArgs),
    /// Write the dataset in a database as DPO pairs or SFT conversations.
    Export {
        #[arg(long)]
        db: PathBuf,
        #[arg(long, value_enum, default_value = "dpo")]
        kind: Kind,
        #[arg(long, value_enum, default_value = "jsonl")]
        format: Format,
        #[arg(short, long)]
        out: PathBuf,
        /// Keep pairs where an answer hit the token or context limit (dropped by default).
        #[arg(long)]
        include_truncated: bool,
        /// Drop pairs whose two answers are at least this similar (1 − normalised edit distance).
        #[arg(long, default_value_t = 0.95)]
        max_similarity: f64,
        /// Drop labeled pairs whose weight (2·label − 1) is below this (kept, weighted, if unset).
        #[arg(long)]
        min_margin: Option<f64>,
        /// Benign pairs per harmful pair (by prompt kind): the larger side is subsampled.
        #[arg(long)]
        helpful_ratio: Option<f64>,
        /// Which pairs of a prompt's sampled answers (generate --samples) to export, once
        /// ranked by their labels: the best against the worst, or every pair, by its label.
        #[arg(long, value_enum, default_value = "best-worst")]
        sampled_pairs: SampledPairs,
    },
    /// Check constitution files; prints every problem as file:line:col: message.
    Validate {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print the constitution JSON Schema (for editors and yaml-language-server).
    Schema,
    /// Write a commented starter constitution NAME.yaml (and the schema next to it).
    Init { name: String },
    /// Judge every pair in a database under the constitution's comparison questions (AI feedback).
    Label(LabelArgs),
    /// Per-token log-probabilities of a text or a chat, from the native engine or llama.cpp.
    Score(ScoreArgs),
    /// Have the model write new prompts from the constitution's topics (adversarial, and benign
    /// look-alikes).
    Redteam(RedteamArgs),
    /// Train a LoRA adapter on the quantized model: DPO/IPO/hinge on pairs, or SFT (resumable).
    Train(Box<TrainArgs>),
    /// Measure a model (and an adapter against it) on held-out prompts: harmful compliance,
    /// over-refusal and an AI-judged win rate, all stored (resumable).
    Eval(Box<EvalArgs>),
    /// Iterate: generate → label → train → eval for K rounds, each round generating with the
    /// previous round's adapter; one database, one report (resumable).
    Loop(Box<LoopArgs>),
    /// Check this build and machine: GPU backends, devices, CPU features, threads, the model,
    /// whether offload would happen, SQLite (exit 0 when a run can go ahead).
    Doctor {
        /// GGUF model [default: the model fetched by scripts/setup]
        #[arg(long)]
        model: Option<PathBuf>,
        /// The offload a run would ask for.
        #[arg(long, default_value_t = 0)]
        gpu_layers: u32,
        #[arg(long)]
        threads: Option<usize>,
        #[arg(long)]
        json: bool,
    },
    /// Merge databases (shards of one job, or separate runs) into a new one, without duplicates.
    Merge {
        #[arg(required = true)]
        dbs: Vec<PathBuf>,
        #[arg(short, long)]
        out: PathBuf,
    },
    /// Write one self-contained HTML report (inline SVG, no network) over databases, and its
    /// charts as PNGs in OUT-png/.
    Report {
        /// Databases to report on (repeat the flag: a loop's rounds, data and evaluations).
        #[arg(long, required = true)]
        db: Vec<PathBuf>,
        #[arg(short, long)]
        out: PathBuf,
        /// Skip the PNG copies of the charts.
        #[arg(long)]
        no_png: bool,
    },
    /// Summarise a database: steps per stage and principle, pairs, filters, failures, judges.
    Stats {
        #[arg(long)]
        db: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
// A negative number is a value (for the range check to name), not a flag.
#[command(allow_negative_numbers = true)]
struct GenerateArgs {
    /// GGUF model file [default: the model fetched by scripts/setup]
    #[arg(long)]
    model: Option<PathBuf>,
    #[command(flatten)]
    engine: EngineArgs,
    #[arg(long)]
    constitution: PathBuf,
    /// Prompt file: .jsonl (prompt or messages), .csv (prompt column), .parquet, or text.
    #[arg(long)]
    prompts: PathBuf,
    #[arg(long)]
    db: PathBuf,
    /// Sequences decoded together in each batch.
    #[arg(long, default_value_t = 8)]
    parallel: usize,
    /// Critique/revision rounds per prompt (0-4; 0: answers only, no revision pairs).
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Answers sampled per prompt (1-8; above 1 needs --temperature > 0): every two of them
    /// become a candidate pair (strategy `sampled`, RL-CAI) for `tenets label` to rank.
    #[arg(long, default_value_t = 1)]
    samples: usize,
    /// Most new tokens per turn.
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// 0 for greedy decoding.
    #[arg(long, default_value_t = 0.7)]
    temperature: f32,
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Layers to offload to the GPU (needs a build with --features cuda, vulkan or metal).
    #[arg(long, default_value_t = 0)]
    gpu_layers: u32,
    /// Directory with critique.jinja and revision.jinja [default: the bundled templates]
    #[arg(long)]
    templates: Option<PathBuf>,
    /// Compute threads [default: the available cores]
    #[arg(long)]
    threads: Option<usize>,
    /// Context tokens per sequence.
    #[arg(long, default_value_t = 2048)]
    ctx: usize,
    /// A LoRA adapter (GGUF, e.g. from `tenets train`) to decode with.
    #[arg(long)]
    lora: Option<PathBuf>,
    /// How strongly the adapter applies.
    #[arg(long, default_value_t = 1.0, requires = "lora")]
    lora_scale: f32,
    /// Stop before anything runs if any prompt line is bad.
    #[arg(long)]
    strict: bool,
    /// Only shard I of N of the prompts (by content hash), for array jobs; `tenets merge` joins
    /// the shards' databases.
    #[arg(long, value_parser = parse_shard, value_name = "I/N")]
    shard: Option<(usize, usize)>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(clap::Args)]
// A negative number is a value (for the range check to name), not a flag.
#[command(allow_negative_numbers = true)]
struct EvalArgs {
    /// GGUF base model [default: the model fetched by scripts/setup]
    #[arg(long)]
    model: Option<PathBuf>,
    /// LoRA adapter (GGUF) to compare with the base model; without one only the base is measured.
    #[arg(long)]
    lora: Option<PathBuf>,
    #[arg(long, default_value_t = 1.0, requires = "lora")]
    lora_scale: f32,
    #[arg(long)]
    constitution: PathBuf,
    /// Held-out prompt files (repeat the flag): rows with `kind` harmful or benign, and optionally
    /// `topic` and `style` [default: prompts/sets/eval-harmful.jsonl and eval-benign.jsonl]
    #[arg(long)]
    prompts: Vec<PathBuf>,
    #[arg(long)]
    db: PathBuf,
    /// Judge model [default: the base model]
    #[arg(long)]
    judge_model: Option<PathBuf>,
    /// Directory with verdict.jinja / judge.jinja frames [default: the bundled ones]
    #[arg(long)]
    templates: Option<PathBuf>,
    /// A name for this evaluation in reports [default: the adapter's file name, or "base"]
    #[arg(long)]
    name: Option<String>,
    /// Comparison questions per prompt, each asked in both orders.
    #[arg(long, default_value_t = 2)]
    questions: usize,
    /// Principles asked as comparison questions per prompt (both orders): the win rate by
    /// principle.
    #[arg(long, default_value_t = 1)]
    principle_questions: usize,
    /// Most new tokens per answer.
    #[arg(long, default_value_t = 192)]
    max_tokens: usize,
    /// 0 for greedy decoding (the default: an evaluation measures the model, not one draw).
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    #[arg(long, default_value_t = 8)]
    parallel: usize,
    #[arg(long, default_value_t = 0)]
    gpu_layers: u32,
    #[arg(long)]
    threads: Option<usize>,
    #[arg(long, default_value_t = 2048)]
    ctx: usize,
    /// Stop before anything runs if any prompt line is bad.
    #[arg(long)]
    strict: bool,
    /// Print the summary and figures as JSON.
    #[arg(long)]
    json: bool,
    #[arg(long)]
    quiet: bool,
}

#[derive(clap::Args)]
// A negative number is a value (for the range check to name), not a flag.
#[command(allow_negative_numbers = true)]
struct LoopArgs {
    /// GGUF base model [default: the model fetched by scripts/setup]
    #[arg(long)]
    model: Option<PathBuf>,
    #[arg(long)]
    constitution: PathBuf,
    /// Training prompts (generate's input).
    #[arg(long)]
    prompts: PathBuf,
    /// Held-out evaluation prompt files (repeat the flag) [default: the bundled eval sets]
    #[arg(long)]
    eval_prompts: Vec<PathBuf>,
    /// Output directory: loop.db, adapter-round-K.gguf, report.html.
    #[arg(long)]
    dir: PathBuf,
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Critique/revision rounds per prompt when generating (1-4).
    #[arg(long, default_value_t = 1)]
    critique_rounds: usize,
    /// Most new tokens per generated turn.
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// Most new tokens per evaluation answer.
    #[arg(long, default_value_t = 192)]
    eval_max_tokens: usize,
    /// Comparison questions per pair (labeling) and per prompt (evaluation).
    #[arg(long, default_value_t = 2)]
    questions: usize,
    /// Optimiser steps per round [default: --epochs over the data]
    #[arg(long)]
    steps: Option<u64>,
    #[arg(long, default_value_t = 1.0)]
    epochs: f64,
    #[arg(long, default_value_t = 2e-4)]
    lr: f64,
    #[arg(long, default_value_t = 0.1)]
    beta: f64,
    #[arg(long, default_value_t = 8)]
    rank: usize,
    /// Longest training sequence (prompt + answer), in tokens.
    #[arg(long, default_value_t = 1024)]
    max_length: usize,
    /// Train on pairs whose answers hit the token limit too (dropped by default).
    #[arg(long)]
    include_truncated: bool,
    /// Stop after a round whose over-refusal rose by more than this (0.1 = 10 points) from the
    /// previous round.
    #[arg(long, default_value_t = 0.1)]
    max_over_refusal_increase: f64,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    #[arg(long, default_value_t = 8)]
    parallel: usize,
    #[arg(long)]
    threads: Option<usize>,
    #[arg(long)]
    json: bool,
    #[arg(long)]
    quiet: bool,
}

#[derive(clap::Args)]
// A negative number is a value (for the range check to name), not a flag.
#[command(allow_negative_numbers = true)]
struct LabelArgs {
    /// Database written by `tenets generate`.
    #[arg(long)]
    db: PathBuf,
    #[command(flatten)]
    engine: EngineArgs,
    /// Judge model [default: the model of the database's latest run]
    #[arg(long)]
    model: Option<PathBuf>,
    /// Constitution whose comparison questions are asked [default: the latest run's]
    #[arg(long)]
    constitution: Option<PathBuf>,
    /// Directory with a judge.jinja frame [default: the bundled prompts/judge.jinja]
    #[arg(long)]
    templates: Option<PathBuf>,
    /// Comparison questions asked per pair, each in both orders.
    #[arg(long, default_value_t = 2)]
    questions: usize,
    /// Chain of thought: the judge reasons before its answer is read.
    #[arg(long)]
    cot: bool,
    /// With --cot: most tokens of reasoning.
    #[arg(long, default_value_t = 192, requires = "cot")]
    cot_tokens: usize,
    /// With --cot: P(A) is clamped into LOW,HIGH (the CAI paper's 0.4,0.6).
    #[arg(long, default_value = "0.4,0.6", requires = "cot", value_parser = parse_clamp)]
    cot_clamp: (f64, f64),
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Sequences judged together in each llama.cpp batch.
    #[arg(long, default_value_t = 8)]
    parallel: usize,
    #[arg(long, default_value_t = 0)]
    gpu_layers: u32,
    /// Compute threads [default: all cores]
    #[arg(long)]
    threads: Option<usize>,
    /// Context tokens per sequence.
    #[arg(long, default_value_t = 2048)]
    ctx: usize,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(clap::Args)]
// A negative number is a value (for the range check to name), not a flag.
#[command(allow_negative_numbers = true)]
struct RedteamArgs {
    /// GGUF model file [default: the model fetched by scripts/setup]
    #[arg(long)]
    model: Option<PathBuf>,
    #[arg(long)]
    constitution: PathBuf,
    /// The prompt file to write (JSONL: prompt, kind, topic, style).
    #[arg(short, long)]
    out: PathBuf,
    /// Adversarial prompts per restricted topic and attack style.
    #[arg(long, default_value_t = 1)]
    per_topic: usize,
    /// Benign look-alike prompts per adversarial one.
    #[arg(long, default_value_t = 1.0)]
    helpful_ratio: f64,
    #[arg(long, default_value_t = 0.9)]
    temperature: f32,
    #[arg(long, default_value_t = 96)]
    max_tokens: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    #[arg(long, default_value_t = 8)]
    parallel: usize,
    /// Compute threads [default: all cores]
    #[arg(long)]
    threads: Option<usize>,
    #[arg(long, default_value_t = 0)]
    gpu_layers: u32,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(clap::Args)]
struct ScoreArgs {
    /// GGUF model file [default: the model fetched by scripts/setup]
    #[arg(long)]
    model: Option<PathBuf>,
    /// native: tenets' own forward over the quantized weights; llama: llama.cpp.
    #[arg(long, value_enum, default_value = "native")]
    engine: EngineArg,
    /// A UTF-8 text file, scored as it is.
    #[arg(
        long,
        required_unless_present = "chat_file",
        conflicts_with = "chat_file"
    )]
    text_file: Option<PathBuf>,
    /// A JSON chat ([{"role": ..., "content": ...}, ...]), framed by the model's chat template.
    #[arg(long)]
    chat_file: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Compute threads [default: all cores]
    #[arg(long)]
    threads: Option<usize>,
    /// Native engine kernels.
    #[arg(long, value_enum, default_value = "auto")]
    kernel: KernelArg,
    /// A GGUF LoRA adapter to apply (both engines).
    #[arg(long)]
    lora: Option<PathBuf>,
}

#[derive(clap::Args)]
// A negative number is a value (for the range check to name), not a flag.
#[command(allow_negative_numbers = true)]
struct TrainArgs {
    /// GGUF base model (stays quantized and frozen) [default: the model fetched by scripts/setup]
    #[arg(long)]
    model: Option<PathBuf>,
    /// Training data: JSONL or Parquet in TRL's format (prompt/chosen/rejected, or messages).
    #[arg(long, required_unless_present = "db", conflicts_with = "db")]
    data: Option<PathBuf>,
    /// A tenets database: train on its (labelled) pairs, as `tenets export` would write them.
    #[arg(long)]
    db: Option<PathBuf>,
    /// The adapter to write (GGUF, for llama.cpp); PEFT files, metrics CSV and curves go beside it.
    #[arg(long)]
    out: PathBuf,
    /// Database for runs, metrics, checkpoints and cached reference log-probs
    /// [default: the --db database, else OUT.train.db]
    #[arg(long)]
    state: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "dpo")]
    objective: ObjectiveArg,
    /// Optimiser steps [default: --epochs passes over the data]
    #[arg(long)]
    steps: Option<u64>,
    #[arg(long, default_value_t = 1.0)]
    epochs: f64,
    /// Examples per micro-batch (each runs at its own length: nothing is padded).
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Micro-batches per optimiser step.
    #[arg(long, default_value_t = 1)]
    grad_accum: usize,
    /// Peak learning rate (AdamW, linear warmup, cosine decay to 0).
    #[arg(long, default_value_t = 2e-4)]
    lr: f64,
    /// Warmup steps [default: a tenth of the run, at most 100]
    #[arg(long)]
    warmup: Option<u64>,
    /// DPO/IPO/hinge strength.
    #[arg(long, default_value_t = 0.1)]
    beta: f64,
    #[arg(long, default_value_t = 8)]
    rank: usize,
    #[arg(long, default_value_t = 16.0)]
    alpha: f32,
    /// Dropout on the adapters' inputs while training (PEFT's lora_dropout).
    #[arg(long, default_value_t = 0.0)]
    lora_dropout: f32,
    /// Projections to adapt (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "q,k,v,o,gate,up,down")]
    targets: Vec<String>,
    /// Most tokens of prompt + answer.
    #[arg(long, default_value_t = 1024)]
    max_length: usize,
    /// Most prompt tokens; longer prompts keep their end [default: half of --max-length]
    #[arg(long)]
    max_prompt_length: Option<usize>,
    /// Clip the global gradient norm to this (0: off).
    #[arg(long, default_value_t = 1.0)]
    max_grad_norm: f64,
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Save a checkpoint every N steps (and at the end).
    #[arg(long, default_value_t = 25)]
    save_every: u64,
    /// Continue this run from its last checkpoint.
    #[arg(long)]
    resume: bool,
    /// With --db: keep pairs where an answer hit the token limit (dropped by default).
    #[arg(long, requires = "db")]
    include_truncated: bool,
    /// With --db: drop labelled pairs whose weight (2·label − 1) is below this.
    #[arg(long, requires = "db")]
    min_margin: Option<f64>,
    /// Skip scoring every example with the trained adapter at the end.
    #[arg(long)]
    no_final_eval: bool,
    /// Compute threads [default: all cores]
    #[arg(long)]
    threads: Option<usize>,
    #[arg(long, value_enum, default_value = "auto")]
    kernel: KernelArg,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
    #[arg(long)]
    quiet: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ObjectiveArg {
    Dpo,
    Ipo,
    Hinge,
    Sft,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum EngineArg {
    Native,
    Llama,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum KernelArg {
    Auto,
    Scalar,
    Avx2,
    Avx512,
}

/// Our log on stderr: warnings by default, more with `-v`; `RUST_LOG` overrides. llama.cpp's
/// own log (tracing target `llama-cpp-2`) is detail — dozens of warnings about buffer types and
/// token types on an ordinary run — so only its errors show by default, its warnings with `-v`
/// and everything with `-vv`. Colours only on a terminal.
fn init_logging(verbose: u8) {
    use std::io::IsTerminal;
    let default = match verbose {
        0 => "warn,llama-cpp-2=error",
        1 => "info,llama-cpp-2=warn",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", render_error(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, each said once: library errors already include their
/// source in their message, so a cause whose text is already shown is skipped.
fn render_error(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

async fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Generate(args) => generate(args).await,
        Command::Export {
            db,
            kind,
            format,
            out,
            include_truncated,
            max_similarity,
            min_margin,
            helpful_ratio,
            sampled_pairs,
        } => {
            if helpful_ratio.is_some_and(|r| !(r.is_finite() && r >= 0.0)) {
                bail!("--helpful-ratio must be 0 or more");
            }
            if !(0.0..=1.0).contains(&max_similarity) {
                bail!("--max-similarity must be between 0 and 1");
            }
            if min_margin.is_some_and(|m| !(0.0..=1.0).contains(&m)) {
                bail!("--min-margin must be between 0 and 1");
            }
            let filters = PairFilters {
                include_truncated,
                max_similarity,
                min_margin,
                helpful_ratio,
                sampled_pairs,
            };
            let store = Store::open_existing(&db).await?;
            let exported = export::export(&store, kind, format, &filters, &out).await?;
            eprintln!("wrote {} rows to {}", exported.rows.len(), out.display());
            for (reason, count) in &exported.dropped {
                eprintln!("  dropped {count}: {}", reason.as_str());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate { files } => Ok(validate(&files)),
        Command::Schema => {
            println!(
                "{}",
                serde_json::to_string_pretty(&constitution::json_schema())?
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Init { name } => init(&name),
        Command::Label(args) => label(args).await,
        Command::Score(args) => score(args),
        Command::Redteam(args) => redteam(args).await,
        Command::Train(args) => train(*args).await,
        Command::Eval(args) => eval(*args).await,
        Command::Loop(args) => run_loop(*args).await,
        Command::Doctor {
            model,
            gpu_layers,
            threads,
            json,
        } => {
            let model = model.unwrap_or_else(tenets::doctor::default_model);
            let report = tenets::doctor::run(&model, gpu_layers, threads).await;
            print_summary(json, &report, |r| r.render())?;
            Ok(if report.usable() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Merge { dbs, out } => {
            let summary = tenets::store::merge::merge(&dbs, &out).await?;
            for pass in &summary.added {
                let rows: Vec<String> = pass
                    .tables
                    .iter()
                    .filter(|(_, n)| *n > 0)
                    .map(|(table, n)| format!("{n} {table}"))
                    .collect();
                eprintln!(
                    "{}: {}",
                    pass.source.display(),
                    if rows.is_empty() {
                        "nothing new".to_string()
                    } else {
                        rows.join(", ")
                    }
                );
            }
            eprintln!("wrote {}", summary.out.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Report { db, out, no_png } => {
            let summary = tenets::report::write(&db, &out, !no_png).await?;
            eprintln!(
                "wrote {} ({} sections) and {} PNG chart(s)",
                summary.html.display(),
                summary.sections.len(),
                summary.pngs.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Stats { db, json } => {
            let store = Store::open_existing(&db).await?;
            let stats = stats::collect(&store).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&stats)?);
            } else {
                print!("{}", stats::render(&stats));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn validate(files: &[PathBuf]) -> ExitCode {
    let mut failed = false;
    for file in files {
        match Constitution::load(file) {
            Ok(c) => println!(
                "{}: ok ({} principles, {} comparisons)",
                file.display(),
                c.principles.len(),
                c.comparisons.len()
            ),
            Err(e) => {
                failed = true;
                eprintln!("{e}");
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn init(name: &str) -> Result<ExitCode> {
    if name.is_empty() || name.contains(['/', '\\']) {
        bail!("NAME must be a plain file name, without directories");
    }
    let path = PathBuf::from(format!("{name}.yaml"));
    if path.exists() {
        bail!("{} already exists; not overwriting it", path.display());
    }
    let schema_path = Path::new(starter::SCHEMA_FILE);
    if !schema_path.exists() {
        let schema = serde_json::to_string_pretty(&constitution::json_schema())?;
        export::write_atomically(schema_path, schema.as_bytes())?;
    }
    export::write_atomically(&path, starter::starter(name).as_bytes())?;
    println!(
        "wrote {} (and {}); check it with `tenets validate {}`",
        path.display(),
        starter::SCHEMA_FILE,
        path.display()
    );
    Ok(ExitCode::SUCCESS)
}

async fn redteam(args: RedteamArgs) -> Result<ExitCode> {
    let model = model_or_default(args.model)?;
    let mut options = RedteamOptions::new(model, &args.constitution, &args.out);
    options.per_topic = args.per_topic;
    options.helpful_ratio = args.helpful_ratio;
    options.temperature = args.temperature;
    options.max_tokens = args.max_tokens;
    options.seed = args.seed;
    options.parallel = args.parallel;
    options.gpu_layers = args.gpu_layers;
    if let Some(threads) = args.threads {
        options.threads = threads;
    }
    options.quiet = args.quiet;
    let summary = pipeline::redteam::redteam(&options, stop_on_ctrl_c())
        .await
        .context("redteam failed")?;
    eprintln!(
        "wrote {} prompts ({} adversarial, {} benign look-alikes) of {} asked for to {} in {:.1} s",
        summary.kept_harmful + summary.kept_benign,
        summary.kept_harmful,
        summary.kept_benign,
        summary.requested,
        args.out.display(),
        summary.seconds
    );
    for (reason, count) in &summary.rejected {
        eprintln!("  not kept {count}: {reason:?}");
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_clamp(text: &str) -> Result<(f64, f64), String> {
    let parse = |v: &str| v.trim().parse::<f64>().map_err(|e| format!("`{v}`: {e}"));
    match text.split_once(',') {
        Some((low, high)) => Ok((parse(low)?, parse(high)?)),
        None => Err("expected LOW,HIGH (for example 0.4,0.6)".into()),
    }
}

/// First Ctrl-C: finish the turns in flight, commit them, stop. Second: stop at once.
fn stop_on_ctrl_c() -> StopSignal {
    let stop = StopSignal::default();
    let signal = stop.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("\nstopping: finishing the turns in flight (Ctrl-C again to abandon them)");
            signal.drain();
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("abandoning in-flight turns; completed work is saved");
                signal.abort();
            }
        }
    });
    stop
}

/// `--model`, or the default model; either must exist.
/// Which engine serves a command: llama.cpp here, or an OpenAI-compatible server.
#[derive(clap::Args, Debug)]
struct EngineArgs {
    /// `llama`: the GGUF model in this process; `openai`: an OpenAI-compatible server (vLLM,
    /// llama.cpp's llama-server, TGI, llama-cpp-python …) at --base-url.
    #[arg(long, value_enum, default_value = "llama")]
    backend: BackendArg,
    /// The server's API root, e.g. http://127.0.0.1:8000/v1 (with --backend openai).
    #[arg(long)]
    base_url: Option<String>,
    /// Name of the environment variable that holds the API key (sent as a Bearer token).
    #[arg(long)]
    api_key_env: Option<String>,
    /// The server's model name [default: the first one it lists].
    #[arg(long)]
    remote_model: Option<String>,
    /// Seconds one request may take before it is retried.
    #[arg(long, default_value_t = 300)]
    request_timeout: u64,
    /// Retries of a request after a transient failure (connection, timeout, 408, 429, 5xx).
    #[arg(long, default_value_t = 6)]
    retries: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum BackendArg {
    Llama,
    Openai,
}

impl EngineArgs {
    fn backend(&self) -> Result<Backend> {
        match (self.backend, &self.base_url) {
            (BackendArg::Llama, None) => Ok(Backend::Local),
            (BackendArg::Llama, Some(_)) => {
                bail!("--base-url is for --backend openai (the default backend is llama.cpp here)")
            }
            (BackendArg::Openai, None) => {
                bail!("--backend openai needs --base-url (the API root, e.g. http://127.0.0.1:8000/v1)")
            }
            (BackendArg::Openai, Some(url)) => {
                let api_key = match &self.api_key_env {
                    Some(var) => match std::env::var(var) {
                        Ok(key) if !key.trim().is_empty() => Some(key.trim().to_string()),
                        _ => bail!("--api-key-env {var}: the environment variable is not set"),
                    },
                    None => None,
                };
                if self.request_timeout == 0 {
                    bail!("--request-timeout must be at least 1 second");
                }
                let mut remote = RemoteConfig::new(url.clone());
                remote.api_key = api_key;
                remote.model = self.remote_model.clone();
                remote.timeout = std::time::Duration::from_secs(self.request_timeout);
                remote.retries = self.retries;
                Ok(Backend::OpenAi(remote))
            }
        }
    }
}

/// Prints a command's summary as JSON (`--json`) or as its terminal text.
fn print_summary<S: serde::Serialize>(
    json: bool,
    summary: &S,
    render: impl FnOnce(&S) -> String,
) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(summary)?);
    } else {
        print!("{}", render(summary));
    }
    Ok(())
}

/// The exit status of a resumable command: 130, with the way on, when a stop request ended it
/// before its work was done.
fn resumable_exit(interrupted: bool) -> ExitCode {
    if interrupted {
        eprintln!("interrupted: rerun the same command to resume");
        ExitCode::from(130)
    } else {
        ExitCode::SUCCESS
    }
}

fn model_or_default(model: Option<PathBuf>) -> Result<PathBuf> {
    let model = model.unwrap_or_else(home::default_model_path);
    if !model.exists() {
        bail!(
            "model {} not found. Run scripts/setup to fetch the default model, or pass --model FILE.gguf",
            model.display()
        );
    }
    Ok(model)
}

/// `I/N` with 0 ≤ I < N.
fn parse_shard(text: &str) -> Result<(usize, usize), String> {
    let (i, n) = text
        .split_once('/')
        .ok_or_else(|| format!("`{text}`: expected I/N, e.g. 0/4"))?;
    let i: usize = i
        .trim()
        .parse()
        .map_err(|_| format!("`{text}`: I is not a number"))?;
    let n: usize = n
        .trim()
        .parse()
        .map_err(|_| format!("`{text}`: N is not a number"))?;
    if n == 0 || i >= n {
        return Err(format!("`{text}`: need 0 ≤ I < N"));
    }
    Ok((i, n))
}

async fn label(args: LabelArgs) -> Result<ExitCode> {
    let mut options = LabelOptions::new(&args.db);
    options.backend = args.engine.backend()?;
    if matches!(options.backend, Backend::OpenAi(_)) && args.model.is_some() {
        bail!("--model names a GGUF file for the llama backend; with --backend openai use --remote-model");
    }
    options.model = args.model;
    options.constitution = args.constitution;
    options.templates = args.templates;
    options.questions = args.questions;
    options.cot = args.cot.then_some(CotSettings {
        max_tokens: args.cot_tokens,
        clamp: args.cot_clamp,
    });
    options.seed = args.seed;
    options.parallel = args.parallel;
    options.gpu_layers = args.gpu_layers;
    if let Some(threads) = args.threads {
        options.threads = threads;
    }
    options.ctx_per_sequence = args.ctx;
    options.quiet = args.quiet;
    let summary = pipeline::label::label(&options, stop_on_ctrl_c())
        .await
        .context("label failed")?;
    eprintln!(
        "judge {}: {} pairs ({} already labeled), {} judgments and {} labels written, {} failed, {:.1} s",
        &summary.judge_id[..16],
        summary.pairs,
        summary.already_labeled,
        summary.judgments_written,
        summary.labels_written,
        summary.failures,
        summary.seconds,
    );
    eprintln!(
        "labels: mean p(chosen ≻ rejected) {:.3}; orders disagree on {:.1}% of questions; mean P(A) {:.3}; answer mass {:.3}",
        summary.mean_p_chosen,
        100.0 * summary.order_disagreement,
        summary.mean_p_a,
        summary.mean_answer_mass,
    );
    if summary.unanswered_judgments > 0 {
        eprintln!(
            "warning: {} judgment(s) put no probability on \"A\" or \"B\" (left out of the labels); \
             {} pair(s) got no answer at all and have no label",
            summary.unanswered_judgments, summary.pairs_without_answer
        );
    }
    Ok(resumable_exit(summary.interrupted))
}

async fn eval(args: EvalArgs) -> Result<ExitCode> {
    use tenets::pipeline::eval::{self as evaluation, EvalOptions};
    let model = model_or_default(args.model)?;
    let prompts = if args.prompts.is_empty() {
        home::bundled_eval_sets()
    } else {
        args.prompts
    };
    let mut o = EvalOptions::new(&model, &args.constitution, prompts, &args.db);
    o.lora = args.lora;
    o.lora_scale = args.lora_scale;
    o.judge_model = args.judge_model;
    o.templates = args.templates;
    o.name = args.name;
    o.questions = args.questions;
    o.principle_questions = args.principle_questions;
    o.max_tokens = args.max_tokens;
    o.temperature = args.temperature;
    o.top_p = args.top_p;
    o.seed = args.seed;
    o.parallel = args.parallel;
    o.gpu_layers = args.gpu_layers;
    if let Some(threads) = args.threads {
        o.threads = threads;
    }
    o.ctx_per_sequence = args.ctx;
    o.strict = args.strict;
    o.quiet = args.quiet;
    let summary = evaluation::eval(&o, stop_on_ctrl_c())
        .await
        .context("eval failed")?;
    print_summary(args.json, &summary, evaluation::render)?;
    Ok(resumable_exit(summary.interrupted))
}

async fn run_loop(args: LoopArgs) -> Result<ExitCode> {
    use tenets::pipeline::iterate::{self, LoopOptions};
    let model = model_or_default(args.model)?;
    let eval_prompts = if args.eval_prompts.is_empty() {
        home::bundled_eval_sets()
    } else {
        args.eval_prompts
    };
    let mut o = LoopOptions::new(
        &model,
        &args.constitution,
        &args.prompts,
        eval_prompts,
        &args.dir,
    );
    o.rounds = args.rounds;
    o.critique_rounds = args.critique_rounds;
    o.max_tokens = args.max_tokens;
    o.eval_max_tokens = args.eval_max_tokens;
    o.questions = args.questions;
    o.train_steps = args.steps;
    o.epochs = args.epochs;
    o.lr = args.lr;
    o.beta = args.beta;
    o.rank = args.rank;
    o.max_length = args.max_length;
    o.include_truncated = args.include_truncated;
    o.max_over_refusal_increase = args.max_over_refusal_increase;
    o.seed = args.seed;
    o.parallel = args.parallel;
    if let Some(threads) = args.threads {
        o.threads = threads;
    }
    o.quiet = args.quiet;
    let summary = iterate::run(&o, stop_on_ctrl_c())
        .await
        .context("loop failed")?;
    print_summary(args.json, &summary, iterate::render)?;
    Ok(resumable_exit(summary.interrupted))
}

async fn train(args: TrainArgs) -> Result<ExitCode> {
    use tenets::model::Target;
    use tenets::pipeline::train::{self as training, TrainData, TrainOptions};
    use tenets::train::dpo::Objective;
    use tenets::train::trainer::Loss;
    let model = model_or_default(args.model)?;
    let data = match (args.data, args.db) {
        (Some(file), _) => TrainData::File(file),
        (None, Some(db)) => TrainData::Db(db),
        (None, None) => bail!("give --data FILE or --db D"),
    };
    let mut o = TrainOptions::new(&model, data, &args.out);
    o.state = args.state;
    o.loss = match args.objective {
        ObjectiveArg::Dpo => Loss::Preference(Objective::Dpo),
        ObjectiveArg::Ipo => Loss::Preference(Objective::Ipo),
        ObjectiveArg::Hinge => Loss::Preference(Objective::Hinge),
        ObjectiveArg::Sft => Loss::Sft,
    };
    o.steps = args.steps;
    o.epochs = args.epochs;
    o.batch = args.batch;
    o.grad_accum = args.grad_accum;
    o.lr = args.lr;
    o.warmup = args.warmup;
    o.beta = args.beta;
    o.rank = args.rank;
    o.alpha = args.alpha;
    o.dropout = args.lora_dropout;
    o.targets = Vec::new();
    for name in &args.targets {
        let name = name.trim();
        let target = Target::parse(name).with_context(|| {
            format!("--targets: unknown projection `{name}` (choose from q,k,v,o,gate,up,down)")
        })?;
        if !o.targets.contains(&target) {
            o.targets.push(target);
        }
    }
    o.max_length = args.max_length;
    o.max_prompt_length = args.max_prompt_length.unwrap_or(args.max_length / 2);
    o.max_grad_norm = args.max_grad_norm;
    o.weight_decay = args.weight_decay;
    o.seed = args.seed;
    o.save_every = args.save_every;
    o.resume = args.resume;
    o.filters.include_truncated = args.include_truncated;
    o.filters.min_margin = args.min_margin;
    o.final_eval = !args.no_final_eval;
    if let Some(threads) = args.threads {
        o.threads = threads;
    }
    o.kernel = kernel(args.kernel);
    o.quiet = args.quiet;

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("\nstopping after this step (a checkpoint is saved; --resume continues)");
            flag.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    });
    let summary = training::train(&o, stop).await?;
    print_summary(args.json, &summary, training::render)?;
    // Ctrl-C already said how to continue (--resume).
    Ok(if summary.stopped {
        ExitCode::from(130)
    } else {
        ExitCode::SUCCESS
    })
}

fn kernel(arg: KernelArg) -> Kernel {
    match arg {
        KernelArg::Auto => Kernel::detect(),
        KernelArg::Scalar => Kernel::Scalar,
        KernelArg::Avx2 => Kernel::Avx2,
        KernelArg::Avx512 => Kernel::Avx512,
    }
}

fn score(args: ScoreArgs) -> Result<ExitCode> {
    let model = model_or_default(args.model)?;
    let engine = match args.engine {
        EngineArg::Native => ScoreEngine::Native,
        EngineArg::Llama => ScoreEngine::Llama,
    };
    let mut options = ScoreOptions::new(model, engine);
    if let Some(threads) = args.threads {
        if threads == 0 {
            bail!("--threads must be at least 1");
        }
        options.threads = threads;
    }
    options.lora = args.lora;
    options.kernel = kernel(args.kernel);
    let input = match (args.text_file, args.chat_file) {
        (Some(path), _) => {
            let bytes =
                std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
            let text = String::from_utf8(bytes).map_err(|e| {
                anyhow::anyhow!(
                    "{}: not UTF-8 text (invalid byte at offset {})",
                    path.display(),
                    e.utf8_error().valid_up_to()
                )
            })?;
            ScoreInput::Text(text)
        }
        (None, Some(path)) => ScoreInput::Chat(score::read_chat_file(&path)?),
        (None, None) => bail!("give --text-file or --chat-file"),
    };
    let report = score::score(&options, &input)?;
    print_summary(args.json, &report, score::render)?;
    Ok(ExitCode::SUCCESS)
}

async fn generate(args: GenerateArgs) -> Result<ExitCode> {
    let backend = args.engine.backend()?;
    let model = match (&backend, args.model) {
        (Backend::Local, model) => model_or_default(model)?,
        (Backend::OpenAi(_), None) => PathBuf::new(),
        (Backend::OpenAi(_), Some(_)) => {
            bail!("--model names a GGUF file for the llama backend; with --backend openai use --remote-model")
        }
    };
    let mut options = GenerateOptions::new(&model, &args.constitution, &args.prompts, &args.db);
    options.backend = backend;
    options.parallel = args.parallel;
    options.rounds = args.rounds;
    options.samples = args.samples;
    options.max_tokens = args.max_tokens;
    options.temperature = args.temperature;
    options.top_p = args.top_p;
    options.seed = args.seed;
    options.gpu_layers = args.gpu_layers;
    options.templates = args.templates;
    if let Some(threads) = args.threads {
        options.threads = threads;
    }
    options.ctx_per_sequence = args.ctx;
    options.lora = args.lora;
    options.lora_scale = args.lora_scale;
    options.strict = args.strict;
    options.shard = args.shard;
    options.quiet = args.quiet;

    let summary = pipeline::generate(&options, stop_on_ctrl_c())
        .await
        .context("generate failed")?;
    eprintln!(
        "run {}: {} prompts ({} already complete), {} steps written, {} failed, {} tokens in {:.1} s ({:.1} tok/s)",
        &summary.run_id[..16],
        summary.prompts,
        summary.already_complete,
        summary.steps_written,
        summary.failures,
        summary.generated_tokens,
        summary.seconds,
        summary.generated_tokens as f64 / summary.seconds.max(1e-9),
    );
    if summary.duplicates > 0 || summary.bad_lines > 0 {
        eprintln!(
            "left out: {} duplicate or near-duplicate prompt(s), {} bad line(s) (see `tenets stats`)",
            summary.duplicates, summary.bad_lines
        );
    }
    Ok(resumable_exit(summary.interrupted))
}
