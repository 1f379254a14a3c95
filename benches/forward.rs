//! The native forward against llama.cpp on the same model, text and threads, in one run:
//!
//! - prompt processing: all tokens in one pass, logits of the last one (llama.cpp: one batch
//!   decode; native: `Model::hidden` + the head on the last row);
//! - scoring: log-probs at every position (llama.cpp with logits for every token; native
//!   `Model::score`) — what `tenets score` and the trainer do;
//! - peak RSS of a process that only opens the model and scores the tokens natively, against
//!   the model file size: the weights stay quantized and mapped.
//!
//! Run: `cargo bench --bench forward` (env: BENCH_TOKENS=512, BENCH_THREADS=all cores,
//! BENCH_MODELS=paths separated by `:`; default the two test models).

mod common;

use common::{best, env_usize, peak_rss_mib};

use std::path::{Path, PathBuf};

use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::token::LlamaToken;
use tenets::engine::{self, batch, EngineConfig};
use tenets::model::Model;
use tenets::quant::matmul::{Compute, Kernel};
use tenets::score::{self, ScoreInput};

/// Peak RSS of a fresh process that opens the model and scores `n` tokens natively — nothing
/// else in it (this binary again, with `BENCH_RSS_CHILD` set).
fn native_peak_rss(path: &Path, n: usize, threads: usize) -> f64 {
    let out = std::process::Command::new(std::env::current_exe().expect("bench binary"))
        .env("BENCH_RSS_CHILD", path)
        .env("BENCH_TOKENS", n.to_string())
        .env("BENCH_THREADS", threads.to_string())
        .output()
        .expect("child");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(f64::NAN)
}

fn rss_child(path: &Path, n: usize, threads: usize) {
    let compute = Compute::new(threads, Kernel::detect()).expect("threads");
    let model = Model::open(path).expect("native model");
    let vocab = model.config().vocab as u32;
    let tokens: Vec<u32> = (0..n as u32).map(|i| (i * 7919 + 13) % vocab).collect();
    model.score(&compute, &tokens).expect("score");
    println!("{}", peak_rss_mib());
}

fn text() -> String {
    ["printing-press", "sourdough", "rust-errors"]
        .iter()
        .map(|n| {
            std::fs::read_to_string(
                Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/texts/{n}.txt")),
            )
            .unwrap()
        })
        .collect::<Vec<_>>()
        .join("\n\n")
}

fn bench_model(path: &Path, n_tokens: usize, threads: usize) {
    let config = EngineConfig {
        threads,
        ..EngineConfig::new(path)
    };
    let tokens: Vec<u32> = {
        let llama = engine::load_model(&config).expect("model");
        let all = score::tokenize(&llama, &ScoreInput::Text(text())).expect("tokens");
        all[..n_tokens.min(all.len())].to_vec()
    };
    let n = tokens.len();
    let file_mib = std::fs::metadata(path).map_or(0.0, |m| m.len() as f64 / 1048576.0);
    println!(
        "\n{} ({file_mib:.0} MiB), {n} tokens, {threads} threads",
        path.display()
    );

    let compute = Compute::new(threads, Kernel::detect()).expect("threads");
    let model = Model::open(path).expect("native model");
    let native_pp = best(3, || {
        let hidden = model.hidden(&compute, &tokens).unwrap();
        let e = model.config().embedding;
        model.logits(&compute, &hidden[(n - 1) * e..]).unwrap();
    });
    let native_score = best(3, || {
        model.score(&compute, &tokens).unwrap();
    });
    drop(model);
    let native_rss = native_peak_rss(path, n, threads);

    let llama = engine::load_model(&config).expect("model");
    let ids: Vec<LlamaToken> = tokens.iter().map(|&t| LlamaToken(t as i32)).collect();
    let pp_config = EngineConfig {
        parallel: 1,
        ctx_per_sequence: n.next_multiple_of(256),
        batch_tokens: n,
        ..config.clone()
    };
    let mut ctx = batch::new_context(&llama, &pp_config).expect("context");
    let llama_pp = best(3, || {
        ctx.clear_kv_cache();
        let mut b = LlamaBatch::new(n, 1);
        for (i, &t) in ids.iter().enumerate() {
            b.add(t, i as i32, &[0], i + 1 == n).unwrap();
        }
        ctx.decode(&mut b).unwrap();
    });
    drop(ctx);
    let llama_score = best(3, || {
        engine::logprobs::score_tokens(&llama, &config, &ids).unwrap();
    });

    let rate = |s: f64| n as f64 / s;
    println!(
        "prompt processing: native {:7.1} tok/s   llama.cpp {:7.1} tok/s   → {:.2}×",
        rate(native_pp),
        rate(llama_pp),
        llama_pp / native_pp
    );
    println!(
        "scoring (all logits): native {:7.1} tok/s   llama.cpp {:7.1} tok/s   → {:.2}×",
        rate(native_score),
        rate(llama_score),
        llama_score / native_score
    );
    println!(
        "native peak RSS (a process that only scores {n} tokens) {native_rss:.0} MiB = model file {file_mib:.0} MiB + {:.0} MiB",
        native_rss - file_mib
    );
}

fn main() {
    let threads = env_usize("BENCH_THREADS", tenets::settings::default_threads());
    let n_tokens = env_usize("BENCH_TOKENS", 512);
    if let Ok(path) = std::env::var("BENCH_RSS_CHILD") {
        rss_child(Path::new(&path), n_tokens, threads);
        return;
    }
    let models: Vec<PathBuf> = match std::env::var("BENCH_MODELS") {
        Ok(v) => v.split(':').map(PathBuf::from).collect(),
        Err(_) => vec![
            tenets::home::default_model_path(),
            tenets::home::models_dir().join(tenets::home::SECOND_MODEL_FILE),
        ],
    };
    for path in models.iter().filter(|p| p.exists()) {
        bench_model(path, n_tokens, threads);
    }
}
