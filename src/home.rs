//! Where tenets keeps things on this machine: the default model's cache location and the
//! bundled evaluation prompt sets.
//!
//! `scripts/fetch-model` (run by `scripts/setup`) fetches the default model
//! (SmolLM2-135M-Instruct, Q4_1) and a second test model into a git-ignored `models/` folder of
//! the checkout; `TENETS_MODEL` points the default anywhere else.

use std::path::PathBuf;

/// File name of the default model.
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// File name of the second test model: another architecture (Gemma 3 270M, a base model) with
/// K-quants (Q4_K_M: Q4_K, Q5_0, Q6_K, Q8_0).
pub const SECOND_MODEL_FILE: &str = "gemma-3-270m-q4_k_m.gguf";

/// The default model's path: `$TENETS_MODEL`, else `models/<file>` under `$TENETS_HOME` or the
/// crate's directory.
pub fn default_model_path() -> PathBuf {
    if let Some(path) = std::env::var_os("TENETS_MODEL") {
        return PathBuf::from(path);
    }
    models_dir().join(DEFAULT_MODEL_FILE)
}

/// The folder `scripts/fetch-model` fills: `models/` under `$TENETS_HOME` or the crate's directory.
pub fn models_dir() -> PathBuf {
    home().join("models")
}

/// `$TENETS_HOME`, or the crate's directory.
pub fn home() -> PathBuf {
    std::env::var_os("TENETS_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// The held-out evaluation sets we ship (never used for training data): harmful-sounding
/// prompts by restricted topic and attack style, and benign look-alikes.
pub fn bundled_eval_sets() -> Vec<PathBuf> {
    let sets = home().join("prompts").join("sets");
    vec![
        sets.join("eval-harmful.jsonl"),
        sets.join("eval-benign.jsonl"),
    ]
}
