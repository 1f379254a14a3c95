//! The embedded trainer on issue 5's measurement: the shared 64-pair fixture (TRL conversational
//! format), each model below, LoRA r=8 / alpha 16 on all seven projections, batch 4, max length
//! 256, DPO. Measured in one run:
//!
//! - tenets: `tenets train` for `BENCH_STEPS` steps (default 16, one epoch) in a child process on
//!   a fresh state database: real tokens/s (tokens of the chosen and rejected sequences, prompt
//!   counted in both, as TRL counts non-padding tokens), seconds per pair, peak RSS; the one-time
//!   reference pass (cached for later runs) apart, and a whole-command figure that includes it;
//! - anchor, always: llama.cpp scoring the same conversations (forward with logits at every
//!   position, no training) with the same threads — how fast this machine is right now
//!   (`BENCH_ANCHOR_PAIRS` of them, default all 64);
//! - TRL, when `BENCH_TRL_PYTHON` names a Python with torch, transformers, peft and trl:
//!   `benches/anchors/trl_dpo.py` on the same data and settings (`BENCH_TRL_STEPS`, default 6;
//!   `BENCH_TRL_PRECISION`: `fp32`, the default, `bf16` — TRL's own default autocast — or both).
//!
//! Each of `BENCH_MODELS` (comma-separated; default `smollm2,qwen2.5-0.5b`) is measured so:
//! `smollm2` is the default model; `qwen2.5-0.5b` and `qwen2.5-1.5b` are synthetic files with
//! those models' shapes (the 151,936-token vocabulary, so the output head is a large share of
//! the work), tensor names and llama.cpp's Q4_K_M mix, written by `common::synthetic` — the
//! same file for tenets, llama.cpp and TRL (transformers dequantizes it to fp32).
//!
//! Run: `cargo bench --bench train` (env: BENCH_THREADS = all cores; BENCH_KERNEL = the `--kernel`
//! of `tenets train`, default the fastest this CPU runs).

mod common;

use common::synthetic;

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use common::env_usize;
use serde_json::Value;
use tenets::chat::Message;
use tenets::engine::{self, EngineConfig};
use tenets::score::{self, ScoreInput};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dpo-pairs-64.jsonl")
}

/// The chosen and rejected conversations of every pair.
fn conversations() -> Vec<Vec<Message>> {
    let text = std::fs::read_to_string(fixture()).expect("fixture");
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let row: Value = serde_json::from_str(line).expect("fixture row");
        let prompt: Vec<Message> = serde_json::from_value(row["prompt"].clone()).expect("prompt");
        for answer in ["chosen", "rejected"] {
            let tail: Vec<Message> = serde_json::from_value(row[answer].clone()).expect("answer");
            out.push(prompt.iter().chain(&tail).cloned().collect());
        }
    }
    out
}

/// llama.cpp scoring every conversation: (tokens, seconds).
fn llama_anchor(model: &std::path::Path, threads: usize) -> (usize, f64) {
    let config = EngineConfig {
        threads,
        ..EngineConfig::new(model)
    };
    let llama = engine::load_model(&config).expect("llama.cpp model");
    // A rate needs no more than a sample at the larger sizes: BENCH_ANCHOR_PAIRS of the 64.
    let pairs = env_usize("BENCH_ANCHOR_PAIRS", 64);
    let sequences: Vec<Vec<llama_cpp_2::token::LlamaToken>> = conversations()
        .into_iter()
        .take(2 * pairs)
        .map(|c| {
            score::tokenize(&llama, &ScoreInput::Chat(c))
                .expect("tokenize")
                .into_iter()
                .map(|t| llama_cpp_2::token::LlamaToken(t as i32))
                .collect()
        })
        .collect();
    let started = Instant::now();
    let mut tokens = 0;
    for s in &sequences {
        engine::logprobs::score_tokens(&llama, &config, s).expect("llama.cpp score");
        tokens += s.len();
    }
    (tokens, started.elapsed().as_secs_f64())
}

fn main() {
    let threads = env_usize("BENCH_THREADS", tenets::settings::default_threads());
    let steps = env_usize("BENCH_STEPS", 16);
    let models = std::env::var("BENCH_MODELS").unwrap_or_else(|_| "smollm2,qwen2.5-0.5b".into());
    let default_model = tenets::home::default_model_path();
    assert!(default_model.exists(), "run scripts/fetch-model first");
    let dir = tempfile::tempdir().expect("temp dir");
    let shapes = [synthetic::QWEN2_5_0_5B, synthetic::QWEN2_5_1_5B];
    let names: Vec<&str> = models
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .collect();
    // Every name checked before the first hour of measuring.
    if let Some(bad) = names
        .iter()
        .find(|n| **n != "smollm2" && !shapes.iter().any(|s| s.name == **n))
    {
        panic!("BENCH_MODELS: unknown model {bad:?} (smollm2, qwen2.5-0.5b, qwen2.5-1.5b)");
    }
    println!("train bench: {threads} threads, {steps} steps, 64 pairs");
    for name in names {
        let model = match shapes.iter().find(|s| s.name == name) {
            None => default_model.clone(),
            Some(&shape) => {
                let other = shape.name;
                // Under target/, not a temporary folder: left for a look after the run
                // (rewritten by each run, so never stale).
                let folder = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-models");
                std::fs::create_dir_all(&folder).expect("target/bench-models");
                let path = folder.join(format!("{other}-synthetic-Q4_K_M.gguf"));
                synthetic::write_qwen2(&path, shape, &default_model);
                path
            }
        };
        println!("\n== {name} ({})", model.display());
        bench_model(&model, threads, steps, dir.path());
    }
}

/// The three measurements of one model: llama.cpp's forward, `tenets train`, TRL.
fn bench_model(model: &std::path::Path, threads: usize, steps: usize, dir: &std::path::Path) {
    let (anchor_tokens, anchor_seconds) = llama_anchor(model, threads);
    let anchor_rate = anchor_tokens as f64 / anchor_seconds;
    println!(
        "anchor  llama.cpp forward (all logits) over the same conversations: {anchor_rate:.1} tokens/s"
    );

    let out = dir.join("bench.gguf");
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_tenets"))
        .arg("train")
        .arg("--model")
        .arg(model)
        .arg("--data")
        .arg(fixture())
        .arg("--out")
        .arg(&out)
        .args([
            "--quiet",
            "--json",
            "--no-final-eval",
            "--max-length",
            "256",
        ])
        .args(["--batch", "4", "--rank", "8", "--alpha", "16"])
        .args([
            "--steps",
            &steps.to_string(),
            "--threads",
            &threads.to_string(),
        ])
        .args(
            std::env::var("BENCH_KERNEL")
                .map(|k| vec!["--kernel".to_string(), k])
                .unwrap_or_default(),
        )
        .output()
        .expect("tenets train");
    let wall = started.elapsed().as_secs_f64();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let s: Value = serde_json::from_slice(&output.stdout).expect("summary");
    let rate = s["tokens_per_second"].as_f64().unwrap_or(f64::NAN);
    let per_pair = s["seconds_per_example"].as_f64().unwrap_or(f64::NAN);
    let reference = s["reference_seconds"].as_f64().unwrap_or(f64::NAN);
    let rss = s["peak_rss_mib"].as_f64().unwrap_or(f64::NAN);
    let steps_run = s["steps_run"].as_f64().unwrap_or(f64::NAN);
    let trained_tokens = rate * per_pair * 4.0 * steps_run;
    println!(
        "tenets  train: {rate:.1} real tokens/s, {per_pair:.2} s/pair, peak RSS {rss:.0} MiB; \
         reference pass {reference:.1} s once; whole command {wall:.1} s \
         ({:.1} tokens/s counting the reference pass and loading)",
        trained_tokens / wall
    );
    let split = &s["step_split"];
    let part = |k: &str| split[k].as_f64().unwrap_or(f64::NAN);
    let all = ["kernels", "head", "attention", "other"]
        .iter()
        .map(|k| part(k))
        .sum::<f64>();
    println!(
        "tenets  step time: quantized products {:.0}%, output head {:.0}%, attention {:.0}%, \
         other {:.0}% (adapters, norms, RoPE, activations, optimiser)",
        100.0 * part("kernels") / all,
        100.0 * part("head") / all,
        100.0 * part("attention") / all,
        100.0 * part("other") / all
    );
    println!(
        "ratio   training / llama.cpp forward on this machine now: {:.2}×",
        rate / anchor_rate
    );

    let Ok(python) = std::env::var("BENCH_TRL_PYTHON") else {
        println!(
            "TRL     not run (set BENCH_TRL_PYTHON to a Python with torch, transformers, peft, trl \
             and gguf)"
        );
        return;
    };
    let trl_steps = env_usize("BENCH_TRL_STEPS", 6);
    // fp32 by default; `fp32,bf16` measures TRL's default bf16 autocast as well.
    let precisions = std::env::var("BENCH_TRL_PRECISION").unwrap_or_else(|_| "fp32".into());
    for precision in precisions.split(',').map(str::trim) {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/anchors/trl_dpo.py");
        let output = Command::new(&python)
            .arg(script)
            .arg(model)
            .arg(fixture())
            .arg(trl_steps.to_string())
            .arg(threads.to_string())
            .arg(precision)
            .output()
            .expect("python");
        let stdout = String::from_utf8_lossy(&output.stdout);
        match stdout
            .lines()
            .last()
            .and_then(|l| serde_json::from_str::<Value>(l).ok())
        {
            Some(t) => {
                let trl_rate = t["tokens_per_second"].as_f64().unwrap_or(f64::NAN);
                let trl_rss = t["peak_rss_mib"].as_f64().unwrap_or(f64::NAN);
                println!(
                    "TRL     DPOTrainer + PEFT ({precision}): {trl_rate:.1} real tokens/s, {:.2} s/pair, \
                     peak RSS {trl_rss:.0} MiB",
                    t["seconds_per_pair"].as_f64().unwrap_or(f64::NAN),
                );
                println!(
                    "ratio   tenets / TRL ({precision}): {:.2}× tokens/s, {:.2}× peak RSS",
                    rate / trl_rate,
                    rss / trl_rss
                );
            }
            None => println!(
                "TRL     ({precision}) did not run: {}",
                String::from_utf8_lossy(&output.stderr)
                    .lines()
                    .last()
                    .unwrap_or("no output")
            ),
        }
    }
}
