//! Starting an engine for a stage: llama.cpp on a thread of its own, or a connected remote
//! server's workers. Either way the stage gets back what it needs to record the run (the model,
//! its chat template) and an [`EngineTask`] that serves the sessions it sends until it closes
//! the channel; every failure is an [`EngineError`].

use std::sync::Arc;

use llama_cpp_2::model::LlamaModel;
use tokio::sync::{mpsc, oneshot};

use super::batch;
use super::remote::{RemoteConfig, RemoteEngine};
use super::session::{Counters, Sampling, Session, StopSignal};
use super::{EngineConfig, EngineError, ServedModel};

/// The engine's thread: its result once every session is done.
pub type EngineTask = tokio::task::JoinHandle<Result<(), EngineError>>;

/// Starts llama.cpp on a thread of its own ([`super::on_own_thread`]): it loads the model,
/// hands back what `ready` makes of it (a judge's answer tokens …) with the hash of the chat
/// template it frames every turn with, then serves the sessions sent on `jobs` until that
/// channel closes. A model that cannot load is an error here, before any session is sent.
pub async fn start_local<R: Send + 'static>(
    config: EngineConfig,
    sampling: Sampling,
    jobs: mpsc::Receiver<Box<dyn Session>>,
    stop: StopSignal,
    counters: Arc<Counters>,
    ready: impl FnOnce(&LlamaModel) -> Result<R, EngineError> + Send + 'static,
) -> Result<((R, String), EngineTask), EngineError> {
    let (ready_tx, ready_rx) = oneshot::channel::<(R, String)>();
    let task = tokio::task::spawn_blocking(move || {
        super::on_own_thread(move || {
            serve_local(config, sampling, jobs, stop, counters, ready, ready_tx)
        })?
    });
    match ready_rx.await {
        Ok(made) => Ok((made, task)),
        Err(_) => Err(match task.await {
            Ok(Err(e)) => e,
            Ok(Ok(())) => EngineError::Backend("the engine stopped before it started".into()),
            Err(e) => EngineError::Backend(format!("the engine thread failed: {e}")),
        }),
    }
}

/// The llama.cpp thread: loads the model, reports what `ready` made of it and the chat
/// template's hash, then serves sessions until `jobs` closes.
fn serve_local<R>(
    config: EngineConfig,
    sampling: Sampling,
    jobs: mpsc::Receiver<Box<dyn Session>>,
    stop: StopSignal,
    counters: Arc<Counters>,
    ready: impl FnOnce(&LlamaModel) -> Result<R, EngineError>,
    ready_tx: oneshot::Sender<(R, String)>,
) -> Result<(), EngineError> {
    let mut model = super::load_model(&config)?;
    let mut lora = super::load_lora(&mut model, &config)?;
    let control = match &config.control {
        Some(setting) => Some(super::control::read(setting, &config.model_path)?),
        None => None,
    };
    let made = ready(&model)?;
    // The engine frames every turn with the model's own chat template.
    let chat = super::chat_template(&model)?;
    let mut ctx = batch::new_context(&model, &config)?;
    if let Some((adapter, scale)) = lora.as_mut() {
        ctx.lora_adapter_set(adapter, *scale)
            .map_err(|e| EngineError::Context(format!("cannot apply the LoRA adapter: {e}")))?;
    }
    if let Some(vector) = &control {
        super::control::apply(&ctx, &model, vector)?;
    }
    if ready_tx
        .send((made, chat.source_hash().to_string()))
        .is_err()
    {
        return Ok(());
    }
    batch::run(
        &model, &chat, &mut ctx, &config, &sampling, jobs, &stop, &counters,
    )
}

/// Connects to an OpenAI-compatible server (blocking HTTP, off the async threads): an address
/// that does not answer is an error before anything is written.
pub async fn connect_remote(config: RemoteConfig) -> Result<RemoteEngine, EngineError> {
    tokio::task::spawn_blocking(move || RemoteEngine::connect(config))
        .await
        .map_err(|e| EngineError::Remote(format!("the connecting thread failed: {e}")))?
}

/// Starts a connected remote engine on its own thread (its workers block on HTTP); it serves
/// the sessions sent on `jobs` until that channel closes. Returns the model it serves.
pub fn start_remote(
    engine: RemoteEngine,
    sampling: Sampling,
    jobs: mpsc::Receiver<Box<dyn Session>>,
    stop: StopSignal,
    counters: Arc<Counters>,
) -> (ServedModel, EngineTask) {
    let served = engine.identity();
    tracing::info!(model = engine.model(), "remote engine");
    let task = tokio::task::spawn_blocking(move || engine.run(&sampling, jobs, &stop, &counters));
    (served, task)
}
