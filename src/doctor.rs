//! `tenets doctor`: what this build and this machine can do, before an overnight run finds out —
//! GPU backends compiled in and the devices llama.cpp sees, CPU features and the kernels they
//! select, threads, the model's metadata (and whether both engines read it), whether layers would
//! be offloaded, and SQLite's version. Every check is a line with a verdict; the command fails
//! only on what would stop a run.

use std::path::Path;

use serde::Serialize;

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub value: String,
    /// False when this would stop a run.
    pub ok: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    pub fn usable(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }

    pub fn render(&self) -> String {
        let width = self.checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
        let mut out = String::new();
        for c in &self.checks {
            out += &format!(
                "{} {:<width$}  {}\n",
                if c.ok { "ok  " } else { "FAIL" },
                c.name,
                c.value
            );
        }
        out += if self.usable() {
            "usable\n"
        } else {
            "not usable: see FAIL above\n"
        };
        out
    }
}

fn check(checks: &mut Vec<Check>, name: &str, value: impl Into<String>, ok: bool) {
    checks.push(Check {
        name: name.to_string(),
        value: value.into(),
        ok,
    });
}

/// `tenets doctor`'s command line: the model and settings a run would use.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct DoctorOptions {
    #[command(flatten)]
    pub model: crate::settings::ModelSettings,
    /// The offload a run would ask for.
    #[arg(long, default_value_t = 0)]
    pub gpu_layers: u32,
    #[command(flatten)]
    pub run: crate::settings::RunSettings,
}

/// Runs every check on what `options` would run with.
pub async fn check_machine(options: &DoctorOptions) -> Report {
    let model = options
        .model
        .model
        .clone()
        .unwrap_or_else(crate::home::default_model_path);
    run(&model, options.gpu_layers, options.model.threads).await
}

/// Runs every check; `model` is the model a run would use, `gpu_layers` the offload it would ask.
pub async fn run(model: &Path, gpu_layers: u32, threads: Option<usize>) -> Report {
    let mut checks = Vec::new();
    check(&mut checks, "tenets", env!("CARGO_PKG_VERSION"), true);

    // Build: which llama.cpp backends are compiled in.
    let mut compiled = vec!["cpu"];
    if cfg!(feature = "cuda") {
        compiled.push("cuda");
    }
    if cfg!(feature = "vulkan") {
        compiled.push("vulkan");
    }
    if cfg!(feature = "metal") {
        compiled.push("metal");
    }
    check(
        &mut checks,
        "backends compiled in",
        compiled.join(", "),
        true,
    );
    // Always there: generate and label through a server instead of llama.cpp here.
    check(
        &mut checks,
        "remote engine",
        "OpenAI-compatible servers (--backend openai --base-url URL; http and https)",
        true,
    );

    // CPU: features llama.cpp and our kernels use.
    let cores = crate::settings::default_threads();
    let threads = threads.unwrap_or(cores);
    check(
        &mut checks,
        "cpu",
        format!(
            "{} ({}), {cores} core(s) available",
            std::env::consts::ARCH,
            cpu_features().join(" ")
        ),
        true,
    );
    check(
        &mut checks,
        "threads",
        if threads > cores {
            format!(
                "{threads} asked for, {cores} cores: more compute threads than cores make \
                 llama.cpp spin-wait (many times slower)"
            )
        } else {
            format!("{threads} of {cores} cores")
        },
        threads <= cores,
    );
    check(
        &mut checks,
        "trainer kernels",
        format!("{:?}", crate::quant::matmul::Kernel::detect()),
        true,
    );

    // llama.cpp: the backend and the devices it sees.
    let (offload, devices) = match crate::engine::backend() {
        Ok(backend) => {
            let devices: Vec<String> = llama_cpp_2::list_llama_ggml_backend_devices()
                .into_iter()
                .map(|d| {
                    format!(
                        "{} ({}, {}, {} MiB free)",
                        d.name,
                        d.backend,
                        d.description,
                        d.memory_free / (1 << 20)
                    )
                })
                .collect();
            check(&mut checks, "llama.cpp", "initialised", true);
            (backend.supports_gpu_offload(), devices)
        }
        Err(e) => {
            check(&mut checks, "llama.cpp", e.to_string(), false);
            (false, Vec::new())
        }
    };
    check(
        &mut checks,
        "devices",
        if devices.is_empty() {
            "none listed".to_string()
        } else {
            devices.join("; ")
        },
        true,
    );
    let offload_line = match (gpu_layers, offload) {
        (0, true) => "possible (pass --gpu-layers N)".to_string(),
        (0, false) => "no: CPU only (rebuild with --features cuda, vulkan or metal)".to_string(),
        (n, true) => format!("yes: {n} layer(s) would go to the GPU"),
        (n, false) => format!(
            "no: --gpu-layers {n} asked for, but this build has no GPU backend; it would run on the CPU"
        ),
    };
    check(&mut checks, "offload", offload_line, true);

    // The model: both engines' readers.
    model_checks(&mut checks, model);

    // SQLite.
    let sqlite = sqlite_version().await;
    check(
        &mut checks,
        "sqlite",
        sqlite.clone().unwrap_or_else(|e| e),
        sqlite.is_ok(),
    );
    Report { checks }
}

fn model_checks(checks: &mut Vec<Check>, model: &Path) {
    let name = "model";
    if !model.exists() {
        check(
            checks,
            name,
            format!(
                "{} not found: run `tenets fetch-model` (or scripts/setup), or pass --model FILE.gguf",
                model.display()
            ),
            false,
        );
        return;
    }
    let gguf = match crate::gguf::Gguf::open(model) {
        Ok(g) => g,
        Err(e) => {
            check(checks, name, e.to_string(), false);
            return;
        }
    };
    let size = std::fs::metadata(model).map_or(0, |m| m.len());
    let text = |key: &str| {
        gguf.get(key)
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| "?".into())
    };
    check(
        checks,
        name,
        format!(
            "{} ({:.0} MB): {} \"{}\"",
            model.display(),
            size as f64 / 1e6,
            gguf.architecture().unwrap_or("?"),
            text("general.name")
        ),
        true,
    );
    let template = gguf.get("tokenizer.chat_template").is_some();
    check(
        checks,
        "chat template",
        if template {
            "in the GGUF metadata"
        } else {
            "none: base models need --templates with their own framing, and chat turns cannot be rendered"
        },
        template,
    );
    // The whole load (metadata, every tensor's name, shape and type), not only the metadata: a
    // file that fails here fails `train` and `score --engine native` the same way.
    match crate::model::Model::load(gguf) {
        Ok(m) => {
            let c = m.config();
            check(
                checks,
                "native engine",
                format!(
                    "runs it ({}): {} layers, {} heads ({} kv), embedding {}, vocabulary {} \
                     (score, train)",
                    c.architecture.name(),
                    c.layers,
                    c.heads,
                    c.kv_heads,
                    c.embedding,
                    c.vocab
                ),
                true,
            )
        }
        // Generation does not need the native engine: a warning, not a failure.
        Err(e) => check(
            checks,
            "native engine",
            format!("cannot train or score this model natively: {e}"),
            true,
        ),
    }
}

async fn sqlite_version() -> Result<String, String> {
    crate::store::sqlite_version()
        .await
        .map_err(|e| e.to_string())
}

#[cfg(target_arch = "x86_64")]
fn cpu_features() -> Vec<&'static str> {
    let mut out = Vec::new();
    macro_rules! probe {
        ($($f:tt),*) => {$(
            if std::arch::is_x86_feature_detected!($f) {
                out.push($f);
            }
        )*};
    }
    probe!(
        "sse4.2",
        "avx",
        "avx2",
        "fma",
        "f16c",
        "avx512f",
        "avx512bw",
        "avx512vnni"
    );
    out
}

#[cfg(not(target_arch = "x86_64"))]
fn cpu_features() -> Vec<&'static str> {
    Vec::new()
}

/// The default model a run would use, for `doctor` without `--model`.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_model_fails_and_says_what_to_do() {
        let mut checks = Vec::new();
        model_checks(&mut checks, Path::new("/nonexistent/m.gguf"));
        assert!(!checks[0].ok);
        assert!(checks[0].value.contains("scripts/setup"), "{:?}", checks[0]);
    }

    #[test]
    fn a_file_that_is_not_gguf_fails_with_the_reader_s_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        std::fs::write(&path, b"not a model at all").unwrap();
        let mut checks = Vec::new();
        model_checks(&mut checks, &path);
        assert!(!checks[0].ok);
        assert!(checks[0].value.contains("m.gguf"), "{:?}", checks[0]);
    }
}
