//! Where models live on this machine: the default model's cache location.
//!
//! `scripts/setup` fetches the default model (SmolLM2-135M-Instruct, Q4_1) into a git-ignored
//! `models/` folder of the checkout; `TENETS_MODEL` points anywhere else.

use std::path::PathBuf;

/// File name of the default model.
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// The default model's path: `$TENETS_MODEL`, else `models/<file>` under `$TENETS_HOME` or the
/// crate's directory.
pub fn default_model_path() -> PathBuf {
    if let Some(path) = std::env::var_os("TENETS_MODEL") {
        return PathBuf::from(path);
    }
    let home = std::env::var_os("TENETS_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    home.join("models").join(DEFAULT_MODEL_FILE)
}
