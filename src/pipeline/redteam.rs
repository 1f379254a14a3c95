//! `tenets redteam`: the model writes new prompts (see [`crate::redteam`] for what is asked and
//! kept), batched over `--parallel` sequences like every other stage, sampled with each request's
//! own seed so a rerun writes the same file.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use super::{join_stages, progress_bar, PipelineError};
use crate::chat::Message;
use crate::constitution::Constitution;
use crate::engine::session::{self, Counters, Finish, Next, Sampling};
use crate::engine::{self, Session, StopSignal, TurnFailure, TurnOutput, TurnRequest};
use crate::hash;
use crate::redteam::{self, GeneratedPrompt, Rejected, Request};
use crate::settings::{EngineSettings, RunSettings};

#[derive(clap::Args, Debug, Clone)]
// A negative number is a value (for the range check to name), not a flag.
#[command(allow_negative_numbers = true)]
pub struct RedteamOptions {
    #[command(flatten)]
    pub engine: EngineSettings,
    /// Constitution (YAML), or a bundled one by name: harmless-helpful, medical-info.
    #[arg(long)]
    pub constitution: PathBuf,
    /// The prompt file to write (JSONL: prompt, kind, topic, style).
    #[arg(short, long)]
    pub out: PathBuf,
    /// Adversarial prompts per restricted topic and attack style.
    #[arg(long, default_value_t = 1)]
    pub per_topic: usize,
    /// Benign look-alike prompts per adversarial one.
    #[arg(long, default_value_t = 1.0)]
    pub helpful_ratio: f64,
    #[arg(long, default_value_t = 0.9)]
    pub temperature: f32,
    #[arg(long, default_value_t = 96)]
    pub max_tokens: usize,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    #[command(flatten)]
    pub run: RunSettings,
}

impl RedteamOptions {
    /// The defaults of `tenets redteam` for these inputs.
    pub fn new(
        model: impl Into<PathBuf>,
        constitution: impl Into<PathBuf>,
        out: impl Into<PathBuf>,
    ) -> Self {
        let mut o: Self = crate::settings::from_flags(&["--constitution", "-", "--out", "-"]);
        o.engine.model = crate::settings::ModelSettings::of(model);
        o.constitution = constitution.into();
        o.out = out.into();
        o
    }
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RedteamSummary {
    pub requested: usize,
    pub kept_harmful: usize,
    pub kept_benign: usize,
    pub rejected: BTreeMap<Rejected, usize>,
    pub seconds: f64,
}

/// One request: a single generated turn, its text sent back.
struct Ask {
    /// The turn still to ask: the request, its conversation and its sampling seed.
    pending: Option<(Request, Vec<Message>, u32)>,
    /// The request whose turn is in flight.
    asked: Option<Request>,
    max_tokens: usize,
    results: mpsc::Sender<(Request, String, bool)>,
}

impl Session for Ask {
    fn next_turn(&mut self) -> Next {
        match self.pending.take() {
            Some((request, messages, seed)) => {
                self.asked = Some(request);
                Next::Turn(TurnRequest {
                    messages,
                    reply_prefix: String::new(),
                    max_tokens: self.max_tokens,
                    seed,
                    probe: None,
                    options: crate::engine::TurnOptions::default(),
                })
            }
            None => Next::Done,
        }
    }

    fn finish_turn(&mut self, outcome: Result<TurnOutput, TurnFailure>) -> oneshot::Receiver<bool> {
        if let (Some(request), Ok(output)) = (self.asked.take(), outcome) {
            let truncated = output.finish != Finish::Stop;
            let _ = self
                .results
                .blocking_send((request, output.text, truncated));
        }
        // One turn per request: the session ends here.
        session::resolved(false)
    }
}

/// A redteam run's summary as text.
pub fn render(s: &RedteamSummary, out: &std::path::Path) -> String {
    let mut text = format!(
        "wrote {} prompts ({} adversarial, {} benign look-alikes) of {} asked for to {} in \
         {:.1} s\n",
        s.kept_harmful + s.kept_benign,
        s.kept_harmful,
        s.kept_benign,
        s.requested,
        out.display(),
        s.seconds
    );
    for (reason, count) in &s.rejected {
        text += &format!("  not kept {count}: {reason:?}\n");
    }
    text
}

pub async fn redteam(
    options: &RedteamOptions,
    stop: StopSignal,
) -> Result<RedteamSummary, PipelineError> {
    let started = Instant::now();
    let bad = |m: &str| Err(PipelineError::Setting(m.to_string()));
    if options.per_topic == 0 || options.per_topic > 100 {
        return bad("--per-topic must be between 1 and 100");
    }
    if !(options.helpful_ratio.is_finite() && (0.0..=10.0).contains(&options.helpful_ratio)) {
        return bad("--helpful-ratio must be between 0 and 10");
    }
    options.engine.check()?;
    if options.max_tokens == 0 {
        return bad("--max-tokens must be at least 1");
    }
    // The file is written at the end: a missing folder must fail now, not after the model ran.
    let folder = match options.out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !folder.is_dir() {
        return Err(PipelineError::Setting(format!(
            "cannot write {}: folder {} does not exist",
            options.out.display(),
            folder.display()
        )));
    }
    let constitution_path =
        super::resolve_bundled(&options.constitution, crate::bundled::CONSTITUTIONS)?;
    let constitution = Constitution::load(&constitution_path)?;
    if constitution.topics.restricted.is_empty() {
        return Err(PipelineError::Setting(format!(
            "{}: `topics.restricted` is empty: there is nothing to red-team",
            constitution_path.display()
        )));
    }
    let model = options.engine.model.model_path()?;
    engine::check_model_file(&model)?;
    let plan = redteam::plan(
        &constitution.topics.restricted,
        &constitution.topics.allowed,
        options.per_topic,
        options.helpful_ratio,
    );
    let config = options.engine.config(&model);
    let sampling = Sampling {
        temperature: options.temperature,
        top_p: 0.95,
    };
    let (jobs_tx, jobs_rx) = mpsc::channel::<Box<dyn Session>>(options.engine.parallel * 2);
    let counters = Arc::new(Counters::default());
    let (_, engine_task) = engine::start_local(
        config,
        sampling,
        jobs_rx,
        stop.clone(),
        counters,
        |_| Ok(()),
    )
    .await?;

    let (results_tx, mut results_rx) =
        mpsc::channel::<(Request, String, bool)>(options.engine.parallel * 2);
    let progress = progress_bar(options.run.quiet, plan.len() as u64, "prompts");
    let collector = {
        let progress = progress.clone();
        tokio::spawn(async move {
            let mut outputs = Vec::new();
            while let Some(output) = results_rx.recv().await {
                progress.inc(1);
                outputs.push(output);
            }
            Ok::<_, PipelineError>(outputs)
        })
    };
    let requested = plan.len();
    for (i, request) in plan.into_iter().enumerate() {
        let messages = vec![Message::user(request.instruction.clone())];
        // Each request has its own seed: the same file on every rerun, whatever the batching.
        let seed = hash::of_parts(&[
            &options.seed.to_string(),
            &i.to_string(),
            &request.instruction,
        ]);
        let seed = u32::from_str_radix(&seed[..8], 16).unwrap_or(0);
        let ask = Ask {
            pending: Some((request, messages, seed)),
            asked: None,
            max_tokens: options.max_tokens,
            results: results_tx.clone(),
        };
        if stop.draining() || jobs_tx.send(Box::new(ask)).await.is_err() {
            break;
        }
    }
    drop(results_tx);
    drop(jobs_tx);
    let outputs = join_stages(engine_task, collector).await?;
    progress.finish_and_clear();
    let (kept, rejected) = redteam::keep(outputs);
    redteam::write(&options.out, &kept)?;
    Ok(RedteamSummary {
        requested,
        kept_harmful: kept
            .iter()
            .filter(|p: &&GeneratedPrompt| p.kind == "harmful")
            .count(),
        kept_benign: kept.iter().filter(|p| p.kind == "benign").count(),
        rejected,
        seconds: started.elapsed().as_secs_f64(),
    })
}
