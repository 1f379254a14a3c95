//! The llama.cpp engine: one model, one context, many sequences decoded together.
//!
//! [`batch::run`] owns the model on an OS thread of its own ([`on_own_thread`]: llama.cpp
//! contexts are not `Send`, and its OpenMP workers must not outlive a run) and drives
//! [`Session`]s — conversations that ask for one turn at a time ([`session`]) — with continuous
//! batching; [`remote`] drives the same sessions on an OpenAI-compatible server, and [`start`]
//! starts either for a stage. The engine knows tokens, KV cache and sampling; what a turn means
//! (answer, critique, revision, a judge's letter) belongs to the pipeline.

pub mod batch;
pub mod constrain;
pub mod control;
pub mod logprobs;
pub mod remote;
pub mod session;
pub mod start;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;

use crate::chat::{ChatTemplate, Segment, CHATML};

pub use session::{
    Counters, Finish, Next, Probe, Sampling, Session, StopSignal, TurnFailure, TurnOptions,
    TurnOutput, TurnRequest,
};
pub use start::{connect_remote, start_local, start_remote, EngineTask};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("model file {path}: {message}")]
    Model { path: PathBuf, message: String },
    #[error("llama.cpp backend: {0}")]
    Backend(String),
    #[error("llama.cpp context: {0}")]
    Context(String),
    #[error("llama.cpp decode failed: {0}")]
    Decode(String),
    #[error(transparent)]
    Chat(#[from] crate::chat::ChatError),
    #[error("remote engine: {0}")]
    Remote(String),
}

/// Which engine serves a run's sessions.
#[derive(Debug, Clone, Default)]
pub enum Backend {
    /// llama.cpp in this process, on the run's GGUF model.
    #[default]
    Local,
    /// An OpenAI-compatible server ([`remote`]).
    OpenAi(remote::RemoteConfig),
}

/// The model that serves a run, as the run's records name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedModel {
    pub model_path: String,
    pub model_sha256: String,
    pub chat_template_sha256: String,
}

/// How to load and run the model.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub model_path: PathBuf,
    /// Layers to offload to a GPU (0: CPU only).
    pub gpu_layers: u32,
    /// Compute threads; never more than the free cores (llama.cpp threads spin-wait).
    pub threads: usize,
    /// Sequences decoded together in each batch.
    pub parallel: usize,
    /// Context length available to each sequence, in tokens.
    pub ctx_per_sequence: usize,
    /// Largest number of tokens in one llama.cpp batch.
    pub batch_tokens: usize,
    /// A LoRA adapter (GGUF) applied to every sequence, and its scale.
    pub lora: Option<(PathBuf, f32)>,
    /// A control vector added to every sequence's residual stream.
    pub control: Option<control::ControlSetting>,
}

impl EngineConfig {
    pub fn new(model_path: impl Into<PathBuf>) -> Self {
        EngineConfig {
            model_path: model_path.into(),
            gpu_layers: 0,
            threads: default_threads(),
            parallel: 8,
            ctx_per_sequence: 2048,
            batch_tokens: 512,
            lora: None,
            control: None,
        }
    }
}

/// The cores this process may use (llama.cpp's threads spin-wait: never more).
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Runs `work` (llama.cpp decoding) on a thread of its own, which ends with it.
///
/// llama.cpp computes on OpenMP, whose worker threads belong to the thread that first computed
/// with them and live as long as that thread does. libgomp counts every worker in the process:
/// once there are more than cores, its barriers stop spinning and sleep instead, and a token
/// costs about a fifth more (measured here: 6.51 ms on a spawned thread while the main thread's
/// workers lingered from an earlier run, 5.36 and 4.89 ms on the main thread before and after).
/// A thread that ends takes its workers with it, so engines run one after another in a process
/// (`tenets loop`, a bench against its anchor, a pool thread reused by tokio) never slow each
/// other down.
pub fn on_own_thread<R: Send>(work: impl FnOnce() -> R + Send) -> Result<R, EngineError> {
    std::thread::scope(|scope| {
        let handle = std::thread::Builder::new()
            .name("llama-engine".into())
            .spawn_scoped(scope, work)
            .map_err(|e| EngineError::Backend(format!("cannot start the engine thread: {e}")))?;
        match handle.join() {
            Ok(result) => Ok(result),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();

/// The process-wide llama.cpp backend (it may be initialised only once per process).
pub fn backend() -> Result<&'static LlamaBackend, EngineError> {
    BACKEND
        .get_or_init(|| {
            llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
            LlamaBackend::init().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| EngineError::Backend(e.clone()))
}

/// Whether this build can offload layers to a GPU.
pub fn gpu_offload_available() -> Result<bool, EngineError> {
    Ok(backend()?.supports_gpu_offload())
}

/// Checks the file before llama.cpp sees it (and before a run writes anything): the header,
/// metadata and every tensor's extent are read with tenets' bounds-checked GGUF reader, so a
/// wrong, truncated or corrupt file gets a message that says what is wrong and where.
pub fn check_model_file(path: &Path) -> Result<(), EngineError> {
    crate::gguf::Gguf::open(path)
        .map(drop)
        .map_err(|e| EngineError::Model {
            path: path.to_path_buf(),
            message: strip_path(&e.to_string(), path),
        })
}

/// Checks that `path` is a GGUF LoRA adapter (what `tenets train` or llama.cpp's converter
/// writes) and not a reward model, before anything loads or any database is touched.
pub fn check_adapter_file(path: &Path) -> Result<(), EngineError> {
    let gguf = crate::gguf::Gguf::open(path).map_err(|e| EngineError::Model {
        path: path.to_path_buf(),
        message: strip_path(&e.to_string(), path),
    })?;
    // A reward model is an adapter with a head llama.cpp would stop at (with a message about
    // a tensor's suffix); its adapters alone are no policy.
    if gguf
        .get(crate::model::adapter_gguf::REWARD_HEAD_KEY)
        .is_some()
    {
        return Err(EngineError::Model {
            path: path.to_path_buf(),
            message: crate::model::adapter_gguf::REWARD_MODEL_NOT_ADAPTER.into(),
        });
    }
    let text = |key: &str| gguf.get(key).and_then(|v| v.as_str()).unwrap_or("none");
    if text("general.type") != "adapter" || text("adapter.type") != "lora" {
        return Err(EngineError::Model {
            path: path.to_path_buf(),
            message: format!(
                "not a LoRA adapter (general.type is `{}`, adapter.type `{}`): pass a file \
                 written by `tenets train` or llama.cpp's convert_lora_to_gguf.py",
                text("general.type"),
                text("adapter.type")
            ),
        });
    }
    Ok(())
}

/// The GGUF reader's messages start with the path; the model error adds it again.
fn strip_path(message: &str, path: &Path) -> String {
    let prefix = format!("{}: ", path.display());
    message.strip_prefix(&prefix).unwrap_or(message).to_string()
}

/// Loads a model file with the configured offload.
pub fn load_model(config: &EngineConfig) -> Result<LlamaModel, EngineError> {
    check_model_file(&config.model_path)?;
    let backend = backend()?;
    if config.gpu_layers > 0 && !backend.supports_gpu_offload() {
        tracing::warn!(
            "--gpu-layers {} was asked for, but this build of tenets has no GPU backend: \
             running on the CPU. Rebuild with `--features cuda`, `vulkan` or `metal`.",
            config.gpu_layers
        );
    }
    let params = LlamaModelParams::default().with_n_gpu_layers(config.gpu_layers);
    LlamaModel::load_from_file(backend, &config.model_path, &params).map_err(|e| {
        EngineError::Model {
            path: config.model_path.clone(),
            message: format!("llama.cpp could not load it ({e}); see the log above for why"),
        }
    })
}

/// Loads only a model file's vocabulary and metadata (tokenizer, chat template): no weights.
pub fn load_vocab(path: &Path) -> Result<LlamaModel, EngineError> {
    check_model_file(path)?;
    let params = LlamaModelParams::default().with_vocab_only(true);
    LlamaModel::load_from_file(backend()?, path, &params).map_err(|e| EngineError::Model {
        path: path.to_path_buf(),
        message: format!("llama.cpp could not read its vocabulary ({e})"),
    })
}

/// Loads the configured LoRA adapter into `model` (llama.cpp frees it with the model).
pub fn load_lora(
    model: &mut LlamaModel,
    config: &EngineConfig,
) -> Result<Option<(llama_cpp_2::model::LlamaLoraAdapter, f32)>, EngineError> {
    let Some((path, scale)) = &config.lora else {
        return Ok(None);
    };
    check_model_file(path)?;
    check_adapter_file(path)?;
    let adapter = model
        .lora_adapter_init(path)
        .map_err(|e| EngineError::Model {
            path: path.clone(),
            message: format!(
                "llama.cpp could not load it as a LoRA adapter for {} ({e}); see the log above",
                config.model_path.display()
            ),
        })?;
    Ok(Some((adapter, *scale)))
}

/// The model's chat template (from GGUF metadata), or ChatML when it has none.
pub fn chat_template(model: &LlamaModel) -> Result<ChatTemplate, EngineError> {
    let vocab = model.vocab();
    let piece =
        |t: LlamaToken| String::from_utf8_lossy(&vocab.token_to_piece(t, true, None)).into_owned();
    let bos = piece(vocab.bos());
    let eos = piece(vocab.eos());
    let source = match model
        .chat_template(None)
        .ok()
        .and_then(|t| t.to_string().ok())
    {
        Some(s) => s,
        None => {
            tracing::warn!("the model has no chat template; using ChatML");
            CHATML.to_string()
        }
    };
    Ok(ChatTemplate::new_or_chatml(&source, &bos, &eos))
}

/// Tokenizes rendered conversation segments: special tokens are parsed in template text only,
/// never in message content. A BOS token is added when the model wants one and the template
/// did not already write it.
pub fn tokenize_segments(model: &LlamaModel, segments: &[Segment]) -> Vec<LlamaToken> {
    let vocab = model.vocab();
    let mut tokens = Vec::new();
    if vocab.should_add_bos() {
        let bos = vocab.bos();
        let bos_text = vocab.token_to_piece(bos, true, None);
        let starts_with_bos = segments
            .first()
            .is_some_and(|s| s.from_template && s.text.as_bytes().starts_with(&bos_text));
        if !starts_with_bos || bos_text.is_empty() {
            tokens.push(bos);
        }
    }
    for s in segments {
        tokens.extend(vocab.tokenize(s.text.as_bytes(), false, s.from_template));
    }
    tokens
}

#[cfg(test)]
mod tests {
    use super::on_own_thread;

    #[test]
    fn own_thread_returns_the_result_and_passes_panics_on() {
        let caller = std::thread::current().id();
        let (value, worker) =
            on_own_thread(|| (41 + 1, std::thread::current().id())).expect("thread");
        assert_eq!(value, 42);
        assert_ne!(worker, caller);
        let panicked = std::panic::catch_unwind(|| on_own_thread(|| panic!("engine failed")));
        assert!(panicked.is_err());
    }
}
