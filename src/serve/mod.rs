//! `tenets serve`: the constitution enforced at inference behind an OpenAI-compatible API.
//!
//! Requests become engine sessions ([`exchange`]) on the same continuous-batching llama.cpp
//! engine `generate` uses — concurrent requests share its batches and KV cache, with the
//! adapter and control vector applied as loaded. Around the model sit the constitution's
//! guards: the input screen (a flagged user turn gets the principled refusal, nothing is
//! generated), the output screen (refuse, or critique and revise first), banned phrases the
//! sampler cannot complete, and grammars for requests that ask for JSON. Every decision is
//! committed to the SQLite log before the response's last byte ([`http`]); the wire format
//! and its errors are [`api`].

pub mod api;
pub mod exchange;
pub mod http;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::constitution::guard::{InputAction, OutputAction};
use crate::constitution::Constitution;
use crate::engine::constrain::PhraseBan;
use crate::engine::{self, Counters, EngineConfig, Sampling, Session, StopSignal};
use crate::guard::rules::PatternScreen;
use crate::pipeline::PipelineError;
use crate::settings::{AdapterSettings, EngineSettings, ModelSettings};
use crate::store::Store;
use crate::turns::TurnTemplates;

/// Everything `tenets serve` needs: its command line.
#[derive(clap::Args, Debug, Clone)]
pub struct ServeOptions {
    #[command(flatten)]
    pub engine: EngineSettings,
    /// Constitution (YAML) whose `guard:` section is enforced, or a bundled one by name.
    #[arg(long)]
    pub constitution: PathBuf,
    /// The decision log (SQLite): every request, what the guards decided, and why.
    #[arg(long)]
    pub db: PathBuf,
    /// The adapter and control vector every request is decoded with.
    #[command(flatten)]
    pub adapter: AdapterSettings,
    /// The input screen: `refuse` flagged user turns, or `off` [default: the constitution's
    /// `guard.input`].
    #[arg(long, value_enum)]
    pub input_guard: Option<InputGuard>,
    /// The output screen: `refuse`, `revise` (critique and revise first) or `off` [default:
    /// the constitution's `guard.output`].
    #[arg(long, value_enum)]
    pub output_guard: Option<OutputGuard>,
    /// The learned input screen: `probe` (fitted at start on --fit-on) or `off` [default: the
    /// constitution's `guard.classifier`, when it has one].
    #[arg(long, value_enum)]
    pub classifier: Option<ClassifierChoice>,
    /// Tagged prompts the probe is fitted on [default: the constitution's
    /// `guard.classifier.fit_on`, else safety-train].
    #[arg(long)]
    pub fit_on: Option<PathBuf>,
    /// Flag a user turn at or above this probability [default: the constitution's, else 0.5].
    #[arg(long)]
    pub classifier_threshold: Option<f64>,
    /// A phrase the model can never write, besides the constitution's `banned_phrases`
    /// (repeatable).
    #[arg(long = "ban", value_name = "PHRASE")]
    pub ban: Vec<String>,
    /// Directory with critique.jinja and revision.jinja for the output screen's revisions
    /// [default: the bundled templates].
    #[arg(long)]
    pub templates: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0: any free port; the address is printed).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Environment variable holding the API key clients must send as a bearer token [default:
    /// no key].
    #[arg(long, value_name = "VAR")]
    pub api_key_env: Option<String>,
    /// The model's id in the API [default: the model file's name without .gguf].
    #[arg(long)]
    pub served_name: Option<String>,
    /// New tokens per answer when a request gives no max_tokens.
    #[arg(long, default_value_t = 512)]
    pub max_tokens: usize,
    /// Sampling temperature when a request gives none (0: greedy).
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f32,
    /// Nucleus sampling when a request gives no top_p.
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// No progress bar while the input classifier is fitted.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputGuard {
    Refuse,
    Off,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClassifierChoice {
    Probe,
    Off,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputGuard {
    Refuse,
    Revise,
    Off,
}

impl ServeOptions {
    /// The defaults of `tenets serve` for `model`, `constitution` and decision log `db`.
    pub fn new(
        model: &std::path::Path,
        constitution: &std::path::Path,
        db: &std::path::Path,
    ) -> Self {
        let mut o: Self = crate::settings::from_flags(&["--constitution", "-", "--db", "-"]);
        o.engine.model = ModelSettings::of(model);
        o.constitution = constitution.to_path_buf();
        o.db = db.to_path_buf();
        o
    }

    fn check(&self) -> Result<(), PipelineError> {
        self.engine.check()?;
        self.adapter.check()?;
        let bad = |m: &str| Err(PipelineError::Setting(m.to_string()));
        if self.max_tokens == 0 {
            return bad("--max-tokens must be at least 1");
        }
        if self.max_tokens >= self.engine.ctx {
            return bad("--max-tokens must be below --ctx (the prompt needs room too)");
        }
        if !(self.temperature.is_finite() && (0.0..=2.0).contains(&self.temperature)) {
            return bad("--temperature must be between 0 and 2");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("--top-p must be in (0, 1]");
        }
        if self
            .classifier_threshold
            .is_some_and(|t| !(t > 0.0 && t < 1.0))
        {
            return bad("--classifier-threshold must be between 0 and 1 (exclusive)");
        }
        if self.ban.iter().any(|b| b.trim().is_empty()) {
            return bad("--ban needs a phrase (an empty one would ban nothing)");
        }
        Ok(())
    }

    /// The API key clients must send, read from `--api-key-env` once at start.
    fn api_key(&self) -> Result<Option<String>, PipelineError> {
        let Some(var) = &self.api_key_env else {
            return Ok(None);
        };
        match std::env::var(var) {
            Ok(key) if !key.trim().is_empty() => Ok(Some(key.trim().to_string())),
            _ => Err(PipelineError::Setting(format!(
                "--api-key-env {var}: the variable is not set (or empty); export the key there"
            ))),
        }
    }
}

/// Everything a request handler reads.
pub struct ServeState {
    pub jobs: mpsc::Sender<Box<dyn Session>>,
    pub guards: Arc<exchange::Guards>,
    pub ban: Arc<PhraseBan>,
    pub store: Store,
    pub model_name: String,
    pub model_sha256: String,
    pub constitution_sha256: String,
    pub api_key: Option<String>,
    pub sampling: Sampling,
    pub max_tokens: usize,
    pub ctx_per_sequence: usize,
    pub parallel: usize,
    pub started: u64,
    /// Requests being answered now.
    pub in_flight: std::sync::atomic::AtomicUsize,
}

/// Runs the server until `stop` drains it (Ctrl-C): requests in flight finish, then the engine
/// stops. `on_listen` is told the bound address (with `--port 0`, the port the system chose).
pub async fn serve(
    options: &ServeOptions,
    stop: StopSignal,
    on_listen: impl FnOnce(SocketAddr),
) -> Result<(), PipelineError> {
    options.check()?;
    let model = options.engine.model.model_path()?;
    engine::check_model_file(&model)?;
    let constitution_path =
        crate::pipeline::resolve_bundled(&options.constitution, crate::bundled::CONSTITUTIONS)?;
    let constitution = Constitution::load(&constitution_path)?;
    let screen = PatternScreen::new(&constitution).map_err(PipelineError::Setting)?;
    let templates = match &options.templates {
        Some(dir) => TurnTemplates::from_dir(dir)?,
        None => TurnTemplates::bundled()?,
    };
    templates.check(&constitution)?;
    let guard = constitution.guard.clone();
    let input = match options.input_guard {
        Some(InputGuard::Off) => false,
        Some(InputGuard::Refuse) => true,
        None => guard.input == InputAction::Refuse,
    };
    let output = match options.output_guard {
        Some(OutputGuard::Refuse) => OutputAction::Refuse,
        Some(OutputGuard::Revise) => OutputAction::Revise,
        Some(OutputGuard::Off) => OutputAction::Off,
        None => guard.output,
    };
    let asked = !constitution.guard.is_empty()
        || options.input_guard.is_some()
        || options.output_guard.is_some();
    let learned = match options.classifier {
        Some(choice) => choice == ClassifierChoice::Probe,
        None => guard.classifier.is_some(),
    };
    let unscreened = (input && !learned && !screen.screens(crate::guard::rules::Side::Input))
        || (output != OutputAction::Off && !screen.screens(crate::guard::rules::Side::Output));
    if asked && unscreened {
        tracing::warn!(
            "the constitution {} has no guard rules for a screen that is on: it passes \
             everything (add `guard.rules`)",
            constitution_path.display()
        );
    }
    let mut phrases = guard.banned_phrases.clone();
    phrases.extend(options.ban.iter().cloned());
    if let Some(path) = &options.adapter.lora {
        engine::check_adapter_file(path)?;
    }
    let control = options.adapter.control();
    if let Some(setting) = &control {
        engine::control::read(setting, &model)?;
    }
    let api_key = options.api_key()?;
    // The learned input screen, fitted before the engine starts (it reads the model natively).
    let classifier = match (options.classifier, &guard.classifier) {
        (Some(ClassifierChoice::Off), _) | (None, None) => None,
        (Some(ClassifierChoice::Probe), _) | (None, Some(_)) => {
            let from = guard.classifier.as_ref();
            let fit_on = options.fit_on.clone().unwrap_or_else(|| {
                PathBuf::from(from.map_or("safety-train", |c| c.fit_on.as_str()))
            });
            let threshold = options
                .classifier_threshold
                .unwrap_or_else(|| from.map_or(0.5, |c| c.threshold));
            if constitution.refusals.is_empty() {
                return Err(PipelineError::Setting(format!(
                    "--classifier probe: {} has no `refusals` for a flagged turn to cite",
                    constitution_path.display()
                )));
            }
            let model_settings = options.engine.model.clone();
            let fit_constitution = constitution.clone();
            let quiet = options.quiet;
            let screen = tokio::task::spawn_blocking(move || {
                let bar = crate::pipeline::progress_bar(quiet, 0, "prompts");
                bar.set_message("fitting the input classifier");
                let fitted = crate::pipeline::classify::ProbeScreen::fit(
                    &model_settings,
                    crate::settings::KernelChoice::Auto,
                    &fit_on,
                    &fit_constitution,
                    |done, total| {
                        bar.set_length(total as u64);
                        bar.set_position(done as u64);
                    },
                );
                bar.finish_and_clear();
                fitted
            })
            .await
            .map_err(|e| PipelineError::Internal(format!("fitting the classifier: {e}")))??;
            tracing::info!(
                prompts = screen.fit_prompts,
                threshold,
                "input classifier fitted"
            );
            Some(exchange::InputClassifier {
                screen: std::sync::Mutex::new(screen),
                threshold,
            })
        }
    };
    let model_name = options.served_name.clone().unwrap_or_else(|| {
        model
            .file_stem()
            .map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned())
    });

    // The address is taken before the log is made: a port in use leaves nothing behind.
    let address = format!("{}:{}", options.host, options.port);
    let listener = tokio::net::TcpListener::bind(&address)
        .await
        .map_err(|e| PipelineError::Setting(format!("cannot listen on {address}: {e}")))?;
    let bound = listener
        .local_addr()
        .map_err(|e| PipelineError::Setting(format!("cannot listen on {address}: {e}")))?;
    // The log is claimed before the model loads: a second server on it is refused.
    let store = Store::open(&options.db).await?;
    let _claim = crate::store::WriterLock::acquire(&options.db, "serve")?;
    let model_sha256 = store.model_sha256(&model).await?;

    let sampling = Sampling {
        temperature: options.temperature,
        top_p: options.top_p,
    };
    let config = EngineConfig {
        lora: options.adapter.lora_config(),
        control,
        ..options.engine.config(&model)
    };
    let ctx_per_sequence = config.ctx_per_sequence;
    let parallel = config.parallel;
    let (jobs_tx, jobs_rx) = mpsc::channel::<Box<dyn Session>>(parallel * 4);
    let counters = Arc::new(Counters::default());
    // The engine is never drained by a stop request: it serves until every handler is done
    // and the last sender of its channel is gone, so a revision round in flight completes.
    let ((ban, _), engine_task) = engine::start_local(
        config,
        sampling,
        jobs_rx,
        StopSignal::default(),
        counters,
        move |model| {
            let vocab = model.vocab();
            let pieces: Vec<Vec<u8>> = (0..model.n_vocab())
                .map(|id| vocab.token_to_piece(llama_cpp_2::token::LlamaToken(id), false, None))
                .collect();
            Ok(Arc::new(PhraseBan::new(&pieces, &phrases)))
        },
    )
    .await?;

    let state = Arc::new(ServeState {
        jobs: jobs_tx,
        constitution_sha256: constitution.guard_hash(),
        guards: Arc::new(exchange::Guards {
            constitution,
            screen,
            classifier,
            templates,
            input,
            output,
            revise_rounds: guard.revise_rounds,
        }),
        ban,
        store: store.clone(),
        model_name,
        model_sha256,
        api_key,
        sampling,
        max_tokens: options.max_tokens,
        ctx_per_sequence,
        parallel,
        started: http::unix_now(),
        in_flight: Default::default(),
    });
    on_listen(bound);
    let shutdown = {
        let stop = stop.clone();
        async move {
            while !stop.draining() {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    };
    let app = http::router(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| PipelineError::Setting(format!("the server failed: {e}")))?;
    // Every handler has returned and dropped its sender: the engine's channel closes.
    match engine_task.await {
        Ok(result) => result?,
        Err(e) => {
            return Err(PipelineError::Setting(format!(
                "the engine thread failed: {e}"
            )))
        }
    }
    store.close().await;
    Ok(())
}
