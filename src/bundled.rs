//! The files that come with tenets, compiled into the binary: the constitutions, the prompt sets
//! and (elsewhere, where they are used) the critique, revision and judge templates. A binary
//! installed anywhere has them; they are unpacked into the data folder's `bundled/` when a run
//! needs a file (the store records where a prompt came from), and a command given one by name —
//! `--constitution harmless-helpful`, `--prompts demo`, or the checkout path
//! `constitutions/harmless-helpful.yaml` where no such file is at hand — gets the bundled one.

use std::path::{Path, PathBuf};

/// One bundled file: its name, its path in the source tree, its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bundled {
    pub name: &'static str,
    pub path: &'static str,
    pub text: &'static str,
}

macro_rules! bundled {
    ($name:literal, $path:literal) => {
        Bundled {
            name: $name,
            path: $path,
            text: include_str!(concat!("../", $path)),
        }
    };
}

/// The constitutions we ship.
pub const CONSTITUTIONS: &[Bundled] = &[
    bundled!("harmless-helpful", "constitutions/harmless-helpful.yaml"),
    bundled!("medical-info", "constitutions/medical-info.yaml"),
];

/// The prompt sets we ship: the demo's prompts, and the held-out evaluation sets (never used
/// for training data).
pub const PROMPT_SETS: &[Bundled] = &[
    bundled!("demo", "prompts/sets/demo.jsonl"),
    bundled!("eval-harmful", "prompts/sets/eval-harmful.jsonl"),
    bundled!("eval-benign", "prompts/sets/eval-benign.jsonl"),
    bundled!("safety-train", "prompts/sets/safety-train.jsonl"),
];

/// The evaluation sets `eval` and `loop` use when given none.
pub const EVAL_SETS: [&str; 2] = ["eval-harmful", "eval-benign"];

/// `arg` as given when it names a file; else the bundled file among `set` that it names — by
/// name, file name or source path — unpacked; else `arg` as given (so a missing file is reported
/// under the name the user wrote).
pub fn resolve(arg: &Path, set: &[Bundled]) -> std::io::Result<PathBuf> {
    if arg.exists() {
        return Ok(arg.to_path_buf());
    }
    let text = arg.to_string_lossy();
    let found = set.iter().find(|b| {
        let file = Path::new(b.path).file_name().map(|f| f.to_string_lossy());
        b.name == text || b.path == text || file.is_some_and(|f| f == text)
    });
    match found {
        Some(bundled) => unpack(bundled),
        None => Ok(arg.to_path_buf()),
    }
}

/// The bundled file as a file in the data folder, written (whole) when it is not there as it
/// should be. The folder is per version, so an upgrade never edits a file a run refers to.
pub fn unpack(bundled: &Bundled) -> std::io::Result<PathBuf> {
    let path = crate::home::data_dir()
        .join("bundled")
        .join(env!("CARGO_PKG_VERSION"))
        .join(bundled.path);
    if std::fs::read(&path).ok().as_deref() != Some(bundled.text.as_bytes()) {
        if let Some(folder) = path.parent() {
            std::fs::create_dir_all(folder)?;
        }
        crate::atomic::write(&path, bundled.text.as_bytes())?;
    }
    Ok(path)
}

/// The bundled evaluation sets, unpacked.
pub fn eval_sets() -> std::io::Result<Vec<PathBuf>> {
    EVAL_SETS
        .iter()
        .map(|name| resolve(Path::new(name), PROMPT_SETS))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bundled_file_is_found_by_each_of_its_names() {
        for b in CONSTITUTIONS.iter().chain(PROMPT_SETS) {
            let file = Path::new(b.path).file_name().unwrap().to_str().unwrap();
            for name in [b.name, b.path, file] {
                let set = if CONSTITUTIONS.contains(b) {
                    CONSTITUTIONS
                } else {
                    PROMPT_SETS
                };
                let found = set.iter().find(|x| {
                    x.name == name
                        || x.path == name
                        || Path::new(x.path).file_name().unwrap().to_str() == Some(name)
                });
                assert_eq!(found, Some(b), "{name}");
            }
            assert!(!b.text.is_empty());
        }
    }
}
