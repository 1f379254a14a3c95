//! Per-token log-probabilities of a text or a chat under a model, from the native forward
//! ([`crate::model`]) or from llama.cpp ([`crate::engine::logprobs`]) — `tenets score`, the
//! check a user runs to see that the two agree on their own model, and what the trainer's
//! reference log-probs are checked with.
//!
//! Text is tokenized by llama.cpp's tokenizer for both engines (the same tokens go to both), with
//! special-token parsing off: user text is data. A chat goes through the model's own template.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::chat::Message;
use crate::engine::control::ControlSetting;
use crate::engine::{self, EngineConfig, EngineError};
use crate::model::adapter_gguf;
use crate::model::{Model, ModelError, TokenScore};
use crate::quant::matmul::{Compute, MatmulError};
use crate::settings::{KernelChoice, ModelSettings, RunSettings};

/// Which implementation computes the log-probs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ScoreEngine {
    /// tenets' own forward over the quantized weights (f32 activations).
    Native,
    /// llama.cpp through llama-cpp-2 (f32 KV cache, no flash attention: its most exact mode).
    Llama,
}

impl ScoreEngine {
    pub fn name(self) -> &'static str {
        match self {
            ScoreEngine::Native => "native",
            ScoreEngine::Llama => "llama",
        }
    }
}

/// What to score.
#[derive(Debug, Clone)]
pub enum ScoreInput {
    /// Plain text (a BOS token first when the model wants one).
    Text(String),
    /// A conversation, framed by the model's chat template.
    Chat(Vec<Message>),
}

#[derive(Debug, thiserror::Error)]
pub enum ScoreError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    ChatFile { path: PathBuf, message: String },
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Matmul(#[from] MatmulError),
    #[error(transparent)]
    Adapter(#[from] crate::model::adapter_gguf::AdapterError),
    #[error(transparent)]
    ControlVector(#[from] crate::model::steer::SteerError),
    /// A setting this engine cannot honour.
    #[error("{0}")]
    Unsupported(String),
    #[error("the input is {0} token(s): at least 2 are needed to score anything")]
    TooShort(usize),
    #[error("give --text-file or --chat-file")]
    NoInput,
    #[error(transparent)]
    Settings(#[from] crate::settings::SettingsError),
    #[error(
        "{model}: the tokenizer gave token {token} ({piece:?}), but the model's embedding table \
         has only {rows} rows: the file's tokenizer and weights do not belong together"
    )]
    Token {
        model: PathBuf,
        token: u32,
        piece: String,
        rows: usize,
    },
}

/// How to score, and what: the command line of `tenets score`.
#[derive(clap::Args, Debug, Clone)]
pub struct ScoreOptions {
    #[command(flatten)]
    pub model: ModelSettings,
    /// native: tenets' own forward over the quantized weights; llama: llama.cpp.
    #[arg(long, value_enum, default_value_t = ScoreEngine::Native)]
    pub engine: ScoreEngine,
    /// A UTF-8 text file, scored as it is.
    #[arg(
        long,
        required_unless_present = "chat_file",
        conflicts_with = "chat_file"
    )]
    pub text_file: Option<PathBuf>,
    /// A JSON chat ([{"role": ..., "content": ...}, ...]), framed by the model's chat template.
    #[arg(long)]
    pub chat_file: Option<PathBuf>,
    /// Native engine kernels [default: the fastest this CPU runs]
    #[arg(long, value_enum, default_value_t = KernelChoice::Auto)]
    pub kernel: KernelChoice,
    /// A GGUF LoRA adapter to apply (both engines).
    #[arg(long)]
    pub lora: Option<PathBuf>,
    /// A control vector (`tenets steer`, or llama.cpp's format) to add, at SCALE (default 1;
    /// negative steers away): `V.gguf[:SCALE]`.
    #[arg(long, value_name = "V.gguf[:SCALE]")]
    pub control_vector: Option<String>,
    /// Steer only the blocks FIRST-LAST (0-based, inclusive) of the control vector.
    #[arg(long, value_name = "FIRST-LAST", value_parser = crate::settings::parse_layer_range)]
    pub control_layers: Option<(usize, usize)>,
    #[command(flatten)]
    pub run: RunSettings,
}

impl ScoreOptions {
    /// `tenets score`'s defaults for `model` with `engine` (and no input file).
    pub fn new(model: impl Into<PathBuf>, engine: ScoreEngine) -> Self {
        ScoreOptions {
            model: ModelSettings::of(model),
            engine,
            text_file: None,
            chat_file: None,
            kernel: KernelChoice::Auto,
            lora: None,
            control_vector: None,
            control_layers: None,
            run: RunSettings::default(),
        }
    }

    /// What `--text-file` or `--chat-file` holds.
    pub fn input(&self) -> Result<ScoreInput, ScoreError> {
        match (&self.text_file, &self.chat_file) {
            (Some(path), _) => {
                let bytes = std::fs::read(path).map_err(|source| ScoreError::Io {
                    path: path.clone(),
                    source,
                })?;
                let text = String::from_utf8(bytes).map_err(|e| ScoreError::ChatFile {
                    path: path.clone(),
                    message: format!(
                        "not UTF-8 text (invalid byte at offset {})",
                        e.utf8_error().valid_up_to()
                    ),
                })?;
                Ok(ScoreInput::Text(text))
            }
            (None, Some(path)) => Ok(ScoreInput::Chat(read_chat_file(path)?)),
            (None, None) => Err(ScoreError::NoInput),
        }
    }
}

/// One token and, from the second on, how the model scored it.
#[derive(Debug, Clone, Serialize)]
pub struct ScoredToken {
    pub id: u32,
    pub piece: String,
    /// log p(token | tokens before it); absent for the first token.
    pub logprob: Option<f64>,
    /// The model's most likely token at this position, and its log-probability.
    pub top: Option<u32>,
    pub top_logprob: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScoreReport {
    pub engine: &'static str,
    pub model: String,
    pub tokens: Vec<ScoredToken>,
    /// Tokens with a log-probability (all but the first).
    pub scored: usize,
    pub sum_logprob: f64,
    pub mean_logprob: f64,
    pub perplexity: f64,
    /// Time spent computing (model load and tokenization excluded).
    pub seconds: f64,
    pub tokens_per_second: f64,
}

/// Reads a chat file: a JSON array of `{"role", "content"}` messages, or an object with such
/// an array under `messages`.
pub fn read_chat_file(path: &Path) -> Result<Vec<Message>, ScoreError> {
    let text = std::fs::read_to_string(path).map_err(|source| ScoreError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct ChatObject {
        messages: Vec<Message>,
    }
    let bad = |message: String| ScoreError::ChatFile {
        path: path.to_path_buf(),
        message,
    };
    let expected =
        "expected a JSON array of {\"role\", \"content\"} messages (or {\"messages\": [...]})";
    let parsed = if text.trim_start().starts_with('{') {
        serde_json::from_str::<ChatObject>(&text).map(|c| c.messages)
    } else {
        serde_json::from_str::<Vec<Message>>(&text)
    };
    let messages = parsed.map_err(|e| {
        // serde_json ends its message with the position, which is already said first.
        let text = e.to_string();
        let detail = text
            .rsplit_once(" at line ")
            .map_or(text.as_str(), |(d, _)| d);
        bad(format!(
            "line {}, column {}: {detail} ({expected})",
            e.line(),
            e.column()
        ))
    })?;
    if messages.is_empty() {
        return Err(bad("the chat has no messages".into()));
    }
    Ok(messages)
}

/// Tokenizes the input with the model's tokenizer (and chat template).
pub fn tokenize(
    model: &llama_cpp_2::model::LlamaModel,
    input: &ScoreInput,
) -> Result<Vec<u32>, ScoreError> {
    let tokens = match input {
        ScoreInput::Text(text) => {
            let vocab = model.vocab();
            vocab.tokenize(text.as_bytes(), vocab.should_add_bos(), false)
        }
        ScoreInput::Chat(messages) => {
            let template = engine::chat_template(model)?;
            let segments = template
                .render(messages, false)
                .map_err(EngineError::from)?;
            engine::tokenize_segments(model, &segments)
        }
    };
    Ok(tokens.into_iter().map(|t| t.0 as u32).collect())
}

/// `tenets score`: the settings and the model first, then the input file, then the scores.
pub fn run(options: &ScoreOptions) -> Result<ScoreReport, ScoreError> {
    options.model.check()?;
    options.model.model_path()?;
    score(options, &options.input()?)
}

/// Scores the input with the chosen engine.
pub fn score(options: &ScoreOptions, input: &ScoreInput) -> Result<ScoreReport, ScoreError> {
    options.model.check()?;
    let model_path = options.model.model_path()?;
    if options.control_layers.is_some() && options.control_vector.is_none() {
        return Err(ScoreError::Unsupported(
            "--control-layers chooses the blocks of --control-vector; give one".into(),
        ));
    }
    let config = EngineConfig {
        threads: options.model.threads(),
        control: options
            .control_vector
            .as_deref()
            .map(|arg| ControlSetting::parse(arg, options.control_layers)),
        ..EngineConfig::new(&model_path)
    };
    // The native engine takes only the tokenizer from llama.cpp, so a file llama.cpp would
    // refuse to run (say, a tokenizer larger than the embedding table) still gets our own check.
    let mut llama = match options.engine {
        ScoreEngine::Llama => engine::load_model(&config)?,
        ScoreEngine::Native => engine::load_vocab(&model_path)?,
    };
    let tokens = tokenize(&llama, input)?;
    if tokens.len() < 2 {
        return Err(ScoreError::TooShort(tokens.len()));
    }
    let started = Instant::now();
    let scores = match options.engine {
        ScoreEngine::Llama => {
            let ids: Vec<_> = tokens
                .iter()
                .map(|&t| llama_cpp_2::token::LlamaToken(t as i32))
                .collect();
            match &options.lora {
                Some(lora) => {
                    engine::logprobs::score_tokens_with_lora(&mut llama, &config, &ids, lora, 1.0)?
                }
                None => engine::logprobs::score_tokens(&llama, &config, &ids)?,
            }
        }
        ScoreEngine::Native => {
            let compute = Compute::new(options.model.threads(), options.kernel.kernel())?;
            let model = Model::open(&model_path)?;
            let adapters = match &options.lora {
                Some(lora) => Some(adapter_gguf::read(&model, lora)?),
                None => None,
            };
            // The same reading and checks as llama.cpp's engine: one vector, two engines.
            let steer = match &config.control {
                Some(setting) => Some(engine::control::read(setting, &model_path)?),
                None => None,
            };
            match model.score_steered(&compute, &tokens, adapters.as_ref(), steer.as_ref()) {
                Err(ModelError::Token { path, token, vocab }) => {
                    return Err(ScoreError::Token {
                        model: path,
                        token,
                        piece: piece(&llama, token),
                        rows: vocab,
                    })
                }
                scores => scores?,
            }
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    Ok(report(
        options,
        &model_path,
        &tokens,
        &scores,
        seconds,
        |t| piece(&llama, t),
    ))
}

/// The text of token `t`.
fn piece(llama: &llama_cpp_2::model::LlamaModel, t: u32) -> String {
    let token = llama_cpp_2::token::LlamaToken(t as i32);
    String::from_utf8_lossy(&llama.vocab().token_to_piece(token, true, None)).into_owned()
}

fn report(
    options: &ScoreOptions,
    model: &Path,
    tokens: &[u32],
    scores: &[TokenScore],
    seconds: f64,
    piece: impl Fn(u32) -> String,
) -> ScoreReport {
    let mut out = vec![ScoredToken {
        id: tokens[0],
        piece: piece(tokens[0]),
        logprob: None,
        top: None,
        top_logprob: None,
    }];
    out.extend(tokens[1..].iter().zip(scores).map(|(&id, s)| ScoredToken {
        id,
        piece: piece(id),
        logprob: Some(s.logprob),
        top: Some(s.top),
        top_logprob: Some(s.top_logprob),
    }));
    let sum: f64 = scores.iter().map(|s| s.logprob).sum();
    let scored = scores.len();
    let mean = sum / scored.max(1) as f64;
    ScoreReport {
        engine: options.engine.name(),
        model: model.display().to_string(),
        tokens: out,
        scored,
        sum_logprob: sum,
        mean_logprob: mean,
        perplexity: (-mean).exp(),
        seconds,
        tokens_per_second: tokens.len() as f64 / seconds.max(1e-9),
    }
}

/// A plain-text table of the report, one token a line.
pub fn render(report: &ScoreReport) -> String {
    let mut out = format!(
        "{} engine, {}\n{:>6}  {:>10}  {:>8}  token\n",
        report.engine, report.model, "pos", "logprob", "top"
    );
    for (i, t) in report.tokens.iter().enumerate() {
        let lp = t.logprob.map_or("-".to_string(), |v| format!("{v:.4}"));
        let top = match t.top {
            Some(top) if top == t.id => "=".to_string(),
            Some(top) => top.to_string(),
            None => "-".to_string(),
        };
        out.push_str(&format!("{i:>6}  {lp:>10}  {top:>8}  {:?}\n", t.piece));
    }
    out.push_str(&format!(
        "{} tokens scored: sum {:.3}, mean {:.4} nats, perplexity {:.3}; {:.2} s ({:.1} tokens/s)\n",
        report.scored,
        report.sum_logprob,
        report.mean_logprob,
        report.perplexity,
        report.seconds,
        report.tokens_per_second
    ));
    out
}
