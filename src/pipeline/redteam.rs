//! `tenets redteam`: the model writes new prompts (see [`crate::redteam`] for what is asked and
//! kept), batched over `--parallel` sequences like every other stage, sampled with each request's
//! own seed so a rerun writes the same file.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use super::{join_stages, progress_bar, start_engine, PipelineError};
use crate::chat::Message;
use crate::constitution::Constitution;
use crate::engine::batch::{self, Counters, Finish, Next, Sampling};
use crate::engine::{
    self, EngineConfig, Session, StopSignal, TurnFailure, TurnOutput, TurnRequest,
};
use crate::hash;
use crate::redteam::{self, GeneratedPrompt, Rejected, Request};

#[derive(Debug, Clone)]
pub struct RedteamOptions {
    pub model: PathBuf,
    pub constitution: PathBuf,
    pub out: PathBuf,
    /// Adversarial prompts asked for per restricted topic and attack style.
    pub per_topic: usize,
    /// Benign look-alike prompts per adversarial one.
    pub helpful_ratio: f64,
    pub temperature: f32,
    pub max_tokens: usize,
    pub seed: u64,
    pub parallel: usize,
    pub threads: usize,
    pub gpu_layers: u32,
    pub quiet: bool,
}

impl RedteamOptions {
    pub fn new(
        model: impl Into<PathBuf>,
        constitution: impl Into<PathBuf>,
        out: impl Into<PathBuf>,
    ) -> Self {
        RedteamOptions {
            model: model.into(),
            constitution: constitution.into(),
            out: out.into(),
            per_topic: 1,
            helpful_ratio: 1.0,
            temperature: 0.9,
            max_tokens: 96,
            seed: 42,
            parallel: 8,
            threads: engine::default_threads(),
            gpu_layers: 0,
            quiet: true,
        }
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
        batch::resolved(false)
    }
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
    if options.parallel == 0
        || options.parallel > 256
        || options.threads == 0
        || options.max_tokens == 0
    {
        return bad(
            "--parallel, --threads and --max-tokens must be at least 1 (--parallel at most 256)",
        );
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
    let constitution = Constitution::load(&options.constitution)?;
    if constitution.topics.restricted.is_empty() {
        return Err(PipelineError::Setting(format!(
            "{}: `topics.restricted` is empty: there is nothing to red-team",
            options.constitution.display()
        )));
    }
    engine::check_model_file(&options.model)?;
    let plan = redteam::plan(
        &constitution.topics.restricted,
        &constitution.topics.allowed,
        options.per_topic,
        options.helpful_ratio,
    );
    let config = EngineConfig {
        gpu_layers: options.gpu_layers,
        threads: options.threads,
        parallel: options.parallel,
        ctx_per_sequence: 1024,
        ..EngineConfig::new(options.model.clone())
    };
    let sampling = Sampling {
        temperature: options.temperature,
        top_p: 0.95,
    };
    let (jobs_tx, jobs_rx) = mpsc::channel::<Box<dyn Session>>(options.parallel * 2);
    let counters = Arc::new(Counters::default());
    let (_, engine_task) =
        start_engine(
            config,
            sampling,
            jobs_rx,
            stop.clone(),
            counters,
            |_| Ok(()),
        )
        .await?;

    let (results_tx, mut results_rx) =
        mpsc::channel::<(Request, String, bool)>(options.parallel * 2);
    let progress = progress_bar(options.quiet, plan.len() as u64, "prompts");
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
