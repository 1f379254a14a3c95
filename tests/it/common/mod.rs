//! Helpers shared by the integration tests that drive the real default model.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use tenets::pipeline::GenerateOptions;

/// Model runs take every core: tests in one binary take turns (never oversubscribe).
pub static MODEL_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The default model; the tests need it (scripts/setup or scripts/fetch-model fetches it).
pub fn model() -> PathBuf {
    let path = tenets::home::default_model_path();
    assert!(
        path.exists(),
        "default model not found at {}: run scripts/fetch-model first",
        path.display()
    );
    path
}

/// The second test model (Gemma 3 270M Q4_K_M), fetched by scripts/fetch-model.
pub fn second_model() -> PathBuf {
    let path = tenets::home::models_dir().join(tenets::home::SECOND_MODEL_FILE);
    assert!(
        path.exists(),
        "second test model not found at {}: run scripts/fetch-model first",
        path.display()
    );
    path
}

pub fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// A command's stdout then stderr, as text.
pub fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Writes `prompts` as a JSONL prompt file.
pub fn write_prompts(dir: &Path, name: &str, prompts: &[String]) -> PathBuf {
    let path = dir.join(name);
    let body: String = prompts
        .iter()
        .map(|p| format!("{}\n", serde_json::json!({ "prompt": p })))
        .collect();
    std::fs::write(&path, body).unwrap();
    path
}

/// Small, fast settings on the real model.
pub fn options(prompts: &Path, db: &Path) -> GenerateOptions {
    let mut o = GenerateOptions::new(
        &model(),
        &repo("constitutions/harmless-helpful.yaml"),
        prompts,
        db,
    );
    o.max_tokens = 24;
    o.engine.ctx = 1024;
    o.run.quiet = true;
    o
}

/// Distinct, ordinary prompts.
pub fn prompts(n: usize) -> Vec<String> {
    let topics = [
        "the moon",
        "bread",
        "rivers",
        "chess",
        "bicycles",
        "tea",
        "volcanoes",
        "owls",
        "glass",
        "maps",
        "bees",
        "clocks",
    ];
    (0..n)
        .map(|i| {
            format!(
                "Tell me one fact about {} (#{i}).",
                topics[i % topics.len()]
            )
        })
        .collect()
}

/// A read-only query through sqlx, rows as strings (the tests need no other driver); no rows
/// when the database cannot be opened; a failing query panics with its reason.
pub fn query(db: &Path, sql: &str) -> Vec<Vec<String>> {
    read(db, sql).unwrap_or_else(|e| panic!("{}: {sql}: {e}", db.display()))
}

/// [`query`] for watching a database another process is still creating: no rows while its
/// tables do not exist yet.
pub fn poll(db: &Path, sql: &str) -> Vec<Vec<String>> {
    read(db, sql).unwrap_or_default()
}

fn read(db: &Path, sql: &str) -> Result<Vec<Vec<String>>, sqlx::Error> {
    use sqlx::Row;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(db)
            .read_only(true);
        let Ok(pool) = sqlx::SqlitePool::connect_with(options).await else {
            return Ok(Vec::new());
        };
        let rows = sqlx::query(sql).fetch_all(&pool).await?;
        let out = rows
            .iter()
            .map(|r| {
                (0..r.columns().len())
                    .map(|i| {
                        r.try_get::<f64, _>(i)
                            .map(|v| v.to_string())
                            .or_else(|_| r.try_get::<i64, _>(i).map(|v| v.to_string()))
                            .or_else(|_| r.try_get::<String, _>(i))
                            .unwrap_or_default()
                    })
                    .collect()
            })
            .collect();
        pool.close().await;
        Ok(out)
    })
}

/// A connection of the test's own to a database (the store keeps its connection to itself):
/// for assertions, and for tests that simulate a crash by removing rows.
pub async fn connect(db: &Path) -> sqlx::SqlitePool {
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(db)
        .busy_timeout(std::time::Duration::from_secs(10));
    sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", db.display()))
}

/// Runs statements on a database (tests that simulate a crash by removing rows).
pub fn execute(db: &Path, sql: &str) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let options = sqlx::sqlite::SqliteConnectOptions::new().filename(db);
        let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
        sqlx::raw_sql(sql).execute(&pool).await.unwrap();
        pool.close().await;
    })
}

/// A small random model of `arch` in f32 with the default model's tokenizer (so llama.cpp loads
/// it): 6 layers, so a Gemma 3 model has five sliding-window layers (window 8) and one global.
/// Each family's quirks are in the tensors its converter writes: `qwen2` has q/k/v biases,
/// `qwen3` per-head q/k norms, `phi3` fused `attn_qkv` and gate-up `ffn_up` with LongRoPE
/// factors and magnitude, `gemma2` post-norms and low softcaps (4 on attention scores, 6
/// on logits, so that both bend), and `llama3` is a `llama` file with Llama 3.1's RoPE frequency
/// factors (`rope_freqs.weight`, from its formula with the original context shrunk to 32 so
/// that the factors bend frequencies a 48-token text turns through).
/// `embedding_rows` gives it fewer embedding rows than its tokenizer has tokens (a file
/// llama.cpp refuses to run, whose tokenizer the native engine still uses).
pub fn tiny_model(dst: &Path, arch: &str, embedding_rows: Option<u64>) {
    synthetic_model(dst, arch, embedding_rows, false);
}

/// [`tiny_model`] at sizes the K-quants take (embedding 256, heads of 64, feed-forward 512)
/// in a quantization mix like the converters' Q4_K_M: the tied embedding and every other layer's
/// `attn_v`/`ffn_down` in Q6_K, the other projections in Q4_K — except that layers 1 to 4 use
/// Q5_K, Q8_0, F16 and BF16 instead, so one file holds every kind a real one may; norms,
/// biases and RoPE factors in F32.
pub fn tiny_quantized_model(dst: &Path, arch: &str) {
    synthetic_model(dst, arch, None, true);
}

fn synthetic_model(dst: &Path, arch: &str, embedding_rows: Option<u64>, quantized: bool) {
    use rand::{Rng, SeedableRng};
    use tenets::gguf::writer::GgufWriter;
    use tenets::gguf::{Gguf, Value};
    use tenets::quant::QuantType;
    let tokenizer = Gguf::open(&model()).unwrap();
    let vocab =
        embedding_rows.unwrap_or_else(|| tokenizer.tensor("token_embd.weight").unwrap().dims[1]);
    let mut w = GgufWriter::new();
    for (key, value) in &tokenizer.metadata {
        if key.starts_with("tokenizer.") {
            w.metadata(key, value.clone()).unwrap();
        }
    }
    let (arch, llama3) = match arch {
        "llama3" => ("llama", true),
        other => (other, false),
    };
    let gemma = arch.starts_with("gemma");
    // Heads of 32 beside an embedding of 64, except in Qwen2, whose loader wants
    // heads × head size = embedding (its output projection is square).
    let head_dim = match (quantized, arch) {
        (true, _) => 64u64,
        (false, "qwen2" | "phi3") => 16,
        (false, _) => 32,
    };
    let (embd, ff) = if quantized {
        (256, 512)
    } else {
        (64u64, 96u64)
    };
    let (layers, heads, kv_heads) = (6u64, 4u64, 2u64);
    let mut meta = |k: &str, v: Value| w.metadata(&format!("{arch}.{k}"), v).unwrap();
    meta("context_length", Value::U32(512));
    meta("embedding_length", Value::U32(embd as u32));
    meta("block_count", Value::U32(layers as u32));
    meta("feed_forward_length", Value::U32(ff as u32));
    meta("attention.head_count", Value::U32(heads as u32));
    meta("attention.head_count_kv", Value::U32(kv_heads as u32));
    meta("attention.key_length", Value::U32(head_dim as u32));
    meta("attention.value_length", Value::U32(head_dim as u32));
    meta("attention.layer_norm_rms_epsilon", Value::F32(1e-6));
    meta("rope.freq_base", Value::F32(if gemma { 1e6 } else { 1e4 }));
    meta("rope.dimension_count", Value::U32(head_dim as u32));
    if gemma {
        meta("attention.sliding_window", Value::U32(8));
    }
    if arch == "phi3" {
        // LongRoPE as Phi-3-mini-128k's converter writes it: a magnitude, the original context
        // (llama.cpp reads the short factors up to it), and a sliding window llama.cpp ignores.
        meta("rope.scaling.attn_factor", Value::F32(1.19));
        meta("rope.scaling.original_context_length", Value::U32(512));
        meta("attention.sliding_window", Value::U32(2047));
    }
    if arch == "gemma2" {
        // Caps low enough to bend this model's scores and logits.
        meta("attn_logit_softcapping", Value::F32(4.0));
        meta("final_logit_softcapping", Value::F32(6.0));
    }
    w.metadata("general.architecture", Value::String(arch.into()))
        .unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    // A vector (norm weights, biases) in F32, `around ± spread`.
    let mut add = |w: &mut GgufWriter, name: &str, dims: &[u64], around: f32, spread: f32| {
        let n: u64 = dims.iter().product();
        let bytes = (0..n)
            .flat_map(|_| (around + rng.gen_range(-spread..spread)).to_le_bytes())
            .collect();
        w.tensor(name, dims, QuantType::F32, bytes).unwrap();
    };
    // A matrix: F32 like a vector, or random blocks of `kind` whose weights spread as far.
    let mut seed = 100;
    let mut matrix =
        |w: &mut GgufWriter, name: &str, dims: &[u64], spread: f32, kind: QuantType| {
            let n: u64 = dims.iter().product();
            if kind == QuantType::F32 {
                add(w, name, dims, 0.0, spread);
            } else {
                seed += 1;
                let bytes = tenets::quant::random_weights(kind, n as usize, seed, spread);
                w.tensor(name, dims, kind, bytes).unwrap();
            }
        };
    let (q, kv) = (heads * head_dim, kv_heads * head_dim);
    let (rest, more_bits) = match quantized {
        true => (QuantType::Q4K, QuantType::Q6K),
        false => (QuantType::F32, QuantType::F32),
    };
    // Weights of a realistic size for the fan-in: the quantized model's inputs are 4× wider
    // (hotter weights make every token's distribution so peaked that llama.cpp's own rounding
    // of activations moves log-probs by nats).
    let fan: f32 = if quantized { 0.25 } else { 1.0 };
    matrix(
        &mut w,
        "token_embd.weight",
        &[embd, vocab],
        0.5 * fan.sqrt(),
        more_bits,
    );
    for l in 0..layers {
        let kind = match (quantized, l) {
            (true, 1) => QuantType::Q5K,
            (true, 2) => QuantType::Q8_0,
            (true, 3) => QuantType::F16,
            (true, 4) => QuantType::BF16,
            _ => rest,
        };
        let bits = if l % 2 == 0 { more_bits } else { kind };
        let n = |t: &str| format!("blk.{l}.{t}.weight");
        if arch == "phi3" {
            // Phi-3's converter keeps q/k/v in one weight and gate/up in another.
            matrix(&mut w, &n("attn_qkv"), &[embd, q + 2 * kv], 0.3 * fan, kind);
            matrix(&mut w, &n("ffn_up"), &[embd, 2 * ff], 0.3 * fan, kind);
        } else {
            matrix(&mut w, &n("attn_q"), &[embd, q], 0.3 * fan, kind);
            matrix(&mut w, &n("attn_k"), &[embd, kv], 0.3 * fan, kind);
            matrix(&mut w, &n("attn_v"), &[embd, kv], 0.3 * fan, bits);
            matrix(&mut w, &n("ffn_gate"), &[embd, ff], 0.3 * fan, kind);
            matrix(&mut w, &n("ffn_up"), &[embd, ff], 0.3 * fan, kind);
        }
        matrix(&mut w, &n("attn_output"), &[q, embd], 0.2 * fan, kind);
        matrix(&mut w, &n("ffn_down"), &[ff, embd], 0.2 * fan, bits);
    }
    add(&mut w, "output_norm.weight", &[embd], 1.0, 0.2);
    for l in 0..layers {
        let n = |t: &str| format!("blk.{l}.{t}.weight");
        add(&mut w, &n("attn_norm"), &[embd], 1.0, 0.2);
        add(&mut w, &n("ffn_norm"), &[embd], 1.0, 0.2);
        if arch == "gemma3" || arch == "qwen3" {
            add(&mut w, &n("attn_q_norm"), &[head_dim], 1.0, 0.2);
            add(&mut w, &n("attn_k_norm"), &[head_dim], 1.0, 0.2);
        }
        if gemma {
            add(&mut w, &n("post_attention_norm"), &[embd], 1.0, 0.2);
            add(&mut w, &n("post_ffw_norm"), &[embd], 1.0, 0.2);
        }
        if arch == "qwen2" {
            let b = |t: &str| format!("blk.{l}.{t}.bias");
            add(&mut w, &b("attn_q"), &[q], 0.0, 0.5);
            add(&mut w, &b("attn_k"), &[kv], 0.0, 0.5);
            add(&mut w, &b("attn_v"), &[kv], 0.0, 0.5);
        }
    }
    if arch == "phi3" {
        // Short factors near 1, long ones far from them: reading the wrong ones shows.
        let factors = |f: &dyn Fn(u64) -> f32| -> Vec<u8> {
            (0..head_dim / 2).flat_map(|i| f(i).to_le_bytes()).collect()
        };
        let short = factors(&|i| 1.0 + 0.15 * i as f32);
        let long = factors(&|i| 4.0 + 2.0 * i as f32);
        w.tensor(
            "rope_factors_short.weight",
            &[head_dim / 2],
            QuantType::F32,
            short,
        )
        .unwrap();
        w.tensor(
            "rope_factors_long.weight",
            &[head_dim / 2],
            QuantType::F32,
            long,
        )
        .unwrap();
    }
    if llama3 {
        let bytes = llama3_rope_factors(head_dim as usize, 1e4, 32.0)
            .into_iter()
            .flat_map(f32::to_le_bytes)
            .collect();
        w.tensor("rope_freqs.weight", &[head_dim / 2], QuantType::F32, bytes)
            .unwrap();
    }
    w.write(dst).unwrap();
}

/// Llama 3.1's RoPE frequency factors (factor 8, low/high frequency factors 1 and 4) for a
/// head of `dims` at `base`, as its converter computes them from `original_context`: high
/// frequencies kept, low ones slowed eightfold, a smooth ramp between.
pub fn llama3_rope_factors(dims: usize, base: f64, original_context: f64) -> Vec<f32> {
    let (factor, low, high) = (8.0, 1.0, 4.0);
    let (low_wavelen, high_wavelen) = (original_context / low, original_context / high);
    (0..dims / 2)
        .map(|i| {
            let freq = base.powf(-2.0 * i as f64 / dims as f64);
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            let f = if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                factor
            } else {
                let smooth = (original_context / wavelen - low) / (high - low);
                1.0 / ((1.0 - smooth) / factor + smooth)
            };
            f as f32
        })
        .collect()
}

/// A copy of `src` with metadata entries added (or replaced) and extra f32 tensors.
pub fn extended_copy(
    src: &Path,
    dst: &Path,
    metadata: &[(&str, tenets::gguf::Value)],
    tensors: &[(&str, u64)],
) {
    use tenets::gguf::writer::GgufWriter;
    use tenets::gguf::Gguf;
    use tenets::quant::QuantType;
    let g = Gguf::open(src).unwrap();
    let mut w = GgufWriter::new();
    for (key, value) in &g.metadata {
        if !metadata.iter().any(|(k, _)| k == key) {
            w.metadata(key, value.clone()).unwrap();
        }
    }
    for (key, value) in metadata {
        w.metadata(key, value.clone()).unwrap();
    }
    for t in &g.tensors {
        w.tensor(&t.name, &t.dims, t.kind, g.data(t).to_vec())
            .unwrap();
    }
    for &(name, len) in tensors {
        let bytes = (0..len).flat_map(|_| 1.0f32.to_le_bytes()).collect();
        w.tensor(name, &[len], QuantType::F32, bytes).unwrap();
    }
    w.write(dst).unwrap();
}

/// The Python of the tests' own environment (`scripts/python-test-setup`: jinja2 and
/// `datasets`, to compare against what Hugging Face renders and loads). `None` skips the check
/// where it is not installed, unless `TENETS_REQUIRE_PYTHON` is set (as CI does): then a
/// missing environment fails.
pub fn test_python() -> Option<PathBuf> {
    let python = repo(".venv-tests/bin/python");
    if python.exists() {
        return Some(python);
    }
    assert!(
        std::env::var_os("TENETS_REQUIRE_PYTHON").is_none(),
        "{} is missing: run scripts/python-test-setup",
        python.display()
    );
    eprintln!(
        "skipped: {} is missing (run scripts/python-test-setup)",
        python.display()
    );
    None
}

/// Runs `python` with `args` (a script under tests/python/ and its arguments, or `-c CODE`),
/// `stdin` in; its stdout read as JSON.
pub fn run_python(
    python: &Path,
    args: &[&dyn AsRef<std::ffi::OsStr>],
    stdin: &str,
) -> serde_json::Value {
    use std::io::Write;
    let mut child = std::process::Command::new(python)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}: {}",
        python.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A script of tests/python/.
pub fn python_script(name: &str) -> PathBuf {
    repo(&format!("tests/python/{name}"))
}
