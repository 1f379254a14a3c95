//! The flag groups commands share, as the settings the library runs with.
//!
//! Every command's options are a struct of the library (`GenerateOptions`, `TrainOptions`, …)
//! that is also its command line: clap reads the flags straight into it, so a default is written
//! once — in its `#[arg]` — and a library caller's `new(…)` takes the same defaults by parsing
//! only the required flags ([`from_flags`]). Groups several commands share are flattened into
//! them: [`ModelSettings`] (the model and threads), [`EngineSettings`] (those, plus batching,
//! offload and context for the llama.cpp engine), [`BackendSettings`] (llama.cpp here, or an
//! OpenAI-compatible server), [`AdapterSettings`] (a LoRA adapter and a control vector to
//! decode with) and [`RunSettings`] (progress and output). Each group checks itself
//! once (`check`), with messages that name the flag; each command's own `check` adds its own.

use std::path::PathBuf;

use crate::engine::remote::RemoteConfig;
use crate::engine::Backend;

/// A setting that cannot be run with, said in terms of its flag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SettingsError(pub String);

fn bad<T>(message: impl Into<String>) -> Result<T, SettingsError> {
    Err(SettingsError(message.into()))
}

pub use crate::engine::default_threads;

/// Options `T` as the command line would give them for `args` — the required flags, with
/// placeholder values the caller then replaces: every other field takes its `#[arg]` default.
/// `args` are constants, never user input: a panic here is a bug in a struct's attributes,
/// caught by any test that builds it.
pub fn from_flags<T: clap::Args + clap::FromArgMatches>(args: &[&str]) -> T {
    let command = T::augment_args(clap::Command::new("tenets").no_binary_name(true));
    let matches = command
        .try_get_matches_from(args)
        .unwrap_or_else(|e| panic!("the options' defaults do not parse: {e}"));
    T::from_arg_matches(&matches).unwrap_or_else(|e| panic!("the options' defaults: {e}"))
}

/// The model a command runs, and the threads it computes on.
#[derive(clap::Args, Debug, Clone, PartialEq, Eq, Default)]
pub struct ModelSettings {
    /// GGUF model file [default: the model `tenets fetch-model` fetched, or $TENETS_MODEL]
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Compute threads [default: the available cores; never more: llama.cpp's threads spin]
    #[arg(long)]
    pub threads: Option<usize>,
}

impl ModelSettings {
    /// The settings for `model`, with default threads.
    pub fn of(model: impl Into<PathBuf>) -> Self {
        ModelSettings {
            model: Some(model.into()),
            threads: None,
        }
    }

    pub fn threads(&self) -> usize {
        self.threads.unwrap_or_else(default_threads)
    }

    pub fn check(&self) -> Result<(), SettingsError> {
        if self.threads == Some(0) {
            return bad("--threads must be at least 1");
        }
        Ok(())
    }

    /// `--model`, else the default model; either must exist.
    pub fn model_path(&self) -> Result<PathBuf, SettingsError> {
        let path = self
            .model
            .clone()
            .unwrap_or_else(crate::home::default_model_path);
        if !path.exists() {
            let hint = if self.model.is_some() {
                "check the path"
            } else {
                "run `tenets fetch-model` (or scripts/setup) to fetch the default model, or pass \
                 --model FILE.gguf"
            };
            return bad(format!("model {} not found: {hint}", path.display()));
        }
        Ok(path)
    }
}

/// What a command decodes with besides the model's own weights: a LoRA adapter and a control
/// vector, both applied by llama.cpp to every sequence (`generate`, `serve`).
#[derive(clap::Args, Debug, Clone, PartialEq)]
pub struct AdapterSettings {
    /// A LoRA adapter (GGUF, e.g. from `tenets train`) to decode with.
    #[arg(long)]
    pub lora: Option<PathBuf>,
    /// How strongly the adapter applies.
    #[arg(long, default_value_t = 1.0, requires = "lora")]
    pub lora_scale: f32,
    /// A control vector (`tenets steer`, or llama.cpp's format) added to the residual stream
    /// while decoding, at SCALE (default 1; negative steers away): `V.gguf[:SCALE]`.
    #[arg(long, value_name = "V.gguf[:SCALE]")]
    pub control_vector: Option<String>,
    /// Steer only the blocks FIRST-LAST (0-based, inclusive) of the control vector.
    #[arg(long, value_name = "FIRST-LAST", value_parser = parse_layer_range,
          requires = "control_vector")]
    pub control_layers: Option<(usize, usize)>,
}

impl Default for AdapterSettings {
    fn default() -> Self {
        from_flags(&[])
    }
}

impl AdapterSettings {
    pub fn check(&self) -> Result<(), SettingsError> {
        if !self.lora_scale.is_finite() {
            return bad("--lora-scale must be a number");
        }
        Ok(())
    }

    /// The adapter and its scale, as the engine applies them.
    pub fn lora_config(&self) -> Option<(PathBuf, f32)> {
        self.lora.clone().map(|p| (p, self.lora_scale))
    }

    /// The control vector, its scale and blocks, as the engine applies them.
    pub fn control(&self) -> Option<crate::engine::control::ControlSetting> {
        self.control_vector
            .as_ref()
            .map(|arg| crate::engine::control::ControlSetting::parse(arg, self.control_layers))
    }
}

/// How a command runs llama.cpp: its model and threads, and how many sequences, layers and
/// tokens of context.
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct EngineSettings {
    #[command(flatten)]
    pub model: ModelSettings,
    /// Sequences decoded together in each batch (requests in flight with --backend openai).
    #[arg(long, default_value_t = 8)]
    pub parallel: usize,
    /// Layers to offload to the GPU (needs a build with --features cuda, vulkan or metal).
    #[arg(long, default_value_t = 0)]
    pub gpu_layers: u32,
    /// Context tokens per sequence.
    #[arg(long, default_value_t = 2048)]
    pub ctx: usize,
}

impl Default for EngineSettings {
    fn default() -> Self {
        from_flags(&[])
    }
}

impl EngineSettings {
    pub fn check(&self) -> Result<(), SettingsError> {
        self.model.check()?;
        if self.parallel == 0 || self.parallel > 256 {
            return bad("--parallel must be between 1 and 256");
        }
        if self.ctx < 64 {
            return bad("--ctx must be at least 64 tokens");
        }
        Ok(())
    }

    /// The llama.cpp engine's configuration for `model`.
    pub fn config(&self, model: impl Into<PathBuf>) -> crate::engine::EngineConfig {
        crate::engine::EngineConfig {
            gpu_layers: self.gpu_layers,
            threads: self.model.threads(),
            parallel: self.parallel,
            ctx_per_sequence: self.ctx,
            ..crate::engine::EngineConfig::new(model)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum BackendKind {
    /// The GGUF model in this process.
    #[default]
    Llama,
    /// An OpenAI-compatible server at --base-url.
    Openai,
}

/// Which engine serves a command: llama.cpp here, or an OpenAI-compatible server (vLLM,
/// llama.cpp's llama-server, TGI, llama-cpp-python, a hosted API).
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct BackendSettings {
    /// `llama`: the GGUF model in this process; `openai`: an OpenAI-compatible server at
    /// --base-url.
    #[arg(long, value_enum, default_value_t = BackendKind::Llama)]
    pub backend: BackendKind,
    /// The server's API root, e.g. http://127.0.0.1:8000/v1 (with --backend openai).
    #[arg(long)]
    pub base_url: Option<String>,
    /// Name of the environment variable that holds the API key (sent as a Bearer token).
    #[arg(long)]
    pub api_key_env: Option<String>,
    /// The server's model name [default: the first one it lists].
    #[arg(long)]
    pub remote_model: Option<String>,
    /// Seconds one request may take before it is retried.
    #[arg(long, default_value_t = 300)]
    pub request_timeout: u64,
    /// Retries of a request after a transient failure (connection, timeout, 408, 429, 5xx).
    #[arg(long, default_value_t = 6)]
    pub retries: u32,
}

impl Default for BackendSettings {
    fn default() -> Self {
        from_flags(&[])
    }
}

impl BackendSettings {
    /// The engine these flags name (the API key read from its variable), checked.
    pub fn resolve(&self) -> Result<Backend, SettingsError> {
        match (self.backend, &self.base_url) {
            (BackendKind::Llama, None) => Ok(Backend::Local),
            (BackendKind::Llama, Some(_)) => {
                bad("--base-url is for --backend openai (the default backend is llama.cpp here)")
            }
            (BackendKind::Openai, None) => bad(
                "--backend openai needs --base-url (the API root, e.g. http://127.0.0.1:8000/v1)",
            ),
            (BackendKind::Openai, Some(url)) => {
                let api_key = match &self.api_key_env {
                    Some(var) => match std::env::var(var) {
                        Ok(key) if !key.trim().is_empty() => Some(key.trim().to_string()),
                        _ => {
                            return bad(format!(
                                "--api-key-env {var}: the environment variable is not set"
                            ))
                        }
                    },
                    None => None,
                };
                if self.request_timeout == 0 {
                    return bad("--request-timeout must be at least 1 second");
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

    /// The backend, and the local model when it is llama.cpp (`--model` is refused beside a
    /// remote backend: the server names its own).
    pub fn resolve_with(
        &self,
        model: &ModelSettings,
    ) -> Result<(Backend, Option<PathBuf>), SettingsError> {
        match self.resolve()? {
            Backend::Local => Ok((Backend::Local, Some(model.model_path()?))),
            remote if model.model.is_none() => Ok((remote, None)),
            _ => bad(
                "--model names a GGUF file for the llama backend; with --backend openai use \
                 --remote-model",
            ),
        }
    }
}

/// How a command reports: progress bars, and its summary as text or JSON.
#[derive(clap::Args, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RunSettings {
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The native kernels' choice (`--kernel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum KernelChoice {
    /// The fastest this CPU runs.
    #[default]
    Auto,
    Scalar,
    Avx2,
    Avx512,
}

impl KernelChoice {
    pub fn kernel(self) -> crate::quant::matmul::Kernel {
        use crate::quant::matmul::Kernel;
        match self {
            KernelChoice::Auto => Kernel::detect(),
            KernelChoice::Scalar => Kernel::Scalar,
            KernelChoice::Avx2 => Kernel::Avx2,
            KernelChoice::Avx512 => Kernel::Avx512,
        }
    }
}

/// `--control-layers FIRST-LAST` (and `steer --layers`): blocks, 0-based, inclusive.
pub fn parse_layer_range(text: &str) -> Result<(usize, usize), String> {
    let bad = || format!("`{text}`: give the first and last block, as 2-20");
    let (a, b) = text.split_once('-').ok_or_else(bad)?;
    let (a, b): (usize, usize) = (
        a.trim().parse().map_err(|_| bad())?,
        b.trim().parse().map_err(|_| bad())?,
    );
    if a > b {
        return Err(format!("`{text}`: the first block comes after the last"));
    }
    Ok((a, b))
}

/// `I/N` with 0 ≤ I < N (`--shard`).
pub fn parse_shard(text: &str) -> Result<(usize, usize), String> {
    let (i, n) = text
        .split_once('/')
        .ok_or_else(|| format!("`{text}`: expected I/N, e.g. 0/4"))?;
    let number = |v: &str, what: &str| {
        v.trim()
            .parse::<usize>()
            .map_err(|_| format!("`{text}`: {what} is not a number"))
    };
    let (i, n) = (number(i, "I")?, number(n, "N")?);
    if n == 0 || i >= n {
        return Err(format!("`{text}`: need 0 ≤ I < N"));
    }
    Ok((i, n))
}

/// `LOW,HIGH` (`--cot-clamp`); the range itself is checked with the other settings.
pub fn parse_pair(text: &str) -> Result<(f64, f64), String> {
    let parse = |v: &str| v.trim().parse::<f64>().map_err(|e| format!("`{v}`: {e}"));
    match text.split_once(',') {
        Some((low, high)) => Ok((parse(low)?, parse(high)?)),
        None => Err("expected LOW,HIGH (for example 0.4,0.6)".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_come_from_the_flags() {
        let e = EngineSettings::default();
        assert_eq!((e.parallel, e.gpu_layers, e.ctx), (8, 0, 2048));
        assert_eq!(e.model, ModelSettings::default());
        assert_eq!(
            BackendSettings::default()
                .resolve()
                .ok()
                .map(|b| matches!(b, Backend::Local)),
            Some(true)
        );
    }

    #[test]
    fn each_group_names_its_flag() {
        let mut e = EngineSettings {
            parallel: 0,
            ..EngineSettings::default()
        };
        assert!(e.check().unwrap_err().0.contains("--parallel"));
        e.parallel = 8;
        e.model.threads = Some(0);
        assert!(e.check().unwrap_err().0.contains("--threads"));
        let remote = BackendSettings {
            backend: BackendKind::Openai,
            ..BackendSettings::default()
        };
        assert!(remote.resolve().unwrap_err().0.contains("--base-url"));
        assert_eq!(parse_shard("1/4"), Ok((1, 4)));
        assert!(parse_shard("4/4").is_err());
        assert_eq!(parse_pair("0.4, 0.6"), Ok((0.4, 0.6)));
    }
}
