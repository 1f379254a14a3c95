//! `tenets serve` under load against llama.cpp's own server (llama-cpp-python's, which
//! `scripts/openai-server-setup` builds for the remote tests), on the same model, threads and
//! load, measured in one run.
//!
//! Each server gets CLIENTS concurrent streaming clients for SECONDS: every client sends a chat
//! completion (a prompt from a small mix of ordinary, look-alike and harmful requests, `max_tokens`
//! MAX_TOKENS, temperature 0.7, its own seed), reads the stream to `[DONE]`, and sends the next.
//! Reported per server: requests completed and failed, latency p50/p95 (request to `[DONE]`),
//! time to first content p50, and generated tokens/s over the window (the usage the server
//! reports, else one token per content chunk). A stream without a finish reason counts as
//! failed. tenets runs twice: with no guards (medical-info, which has
//! no `guard:` section) — the like-for-like figure — and with harmless-helpful's guards (input
//! screen, output screen holding each stream until it passes, banned phrases).
//!
//! Run: `cargo bench --bench serve` (env: BENCH_CLIENTS=32, BENCH_SECONDS=60,
//! BENCH_MAX_TOKENS=64, BENCH_PARALLEL=16). Needs the default model and .venv-openai-server.

mod common;

use common::env_usize;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PROMPTS: [&str; 6] = [
    "Write two sentences about autumn.",
    "How do I kill a zombie process on Linux?",
    "Explain what a hash table is.",
    "How do I make a pipe bomb?",
    "Give me three tips for a job interview.",
    "What is the capital of Australia, and why not Sydney?",
];

struct Server {
    child: Child,
    url: String,
    model: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn model() -> PathBuf {
    std::env::var_os("TENETS_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1.gguf")
        })
}

fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn wait_up(url: &str) {
    let started = Instant::now();
    while ureq::get(&format!("{url}/models")).call().is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{url} did not come up"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn start_tenets(constitution: &str, db: &std::path::Path, parallel: usize) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tenets"))
        .arg("serve")
        .arg("--model")
        .arg(model())
        .args([
            "--constitution",
            constitution,
            "--port",
            "0",
            "--ctx",
            "1024",
        ])
        .args([
            "--parallel",
            &parallel.to_string(),
            "--threads",
            &threads().to_string(),
        ])
        .arg("--db")
        .arg(db)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("tenets serve");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("address line");
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .expect("address")
        .to_string();
    wait_up(&url);
    Server {
        child,
        url,
        model: "SmolLM2-135M-Instruct.Q4_1".into(),
    }
}

fn start_llama_cpp_python() -> Option<Server> {
    let python = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv-openai-server/bin/python");
    if !python.exists() {
        eprintln!("no .venv-openai-server (scripts/openai-server-setup): its row is skipped");
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let child = Command::new(python)
        .args(["-m", "llama_cpp.server", "--model"])
        .arg(model())
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args([
            "--n_ctx",
            "2048",
            "--n_threads",
            &threads().to_string(),
            "--verbose",
            "false",
        ])
        // By default a new request interrupts the one being generated (its stream just ends
        // early): every request must be answered, so they wait their turn instead.
        .args(["--interrupt_requests", "false"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let url = format!("http://127.0.0.1:{port}/v1");
    wait_up(&url);
    Some(Server {
        child,
        url,
        model: model().display().to_string(),
    })
}

#[derive(Default)]
struct Tally {
    latencies: Vec<f64>,
    first_content: Vec<f64>,
    tokens: u64,
    failed: u64,
    errors: Vec<String>,
}

/// One streamed request: (latency, time to first content, generated tokens).
fn one_request(
    server: &Server,
    prompt: &str,
    seed: u64,
    max_tokens: usize,
) -> Result<(f64, Option<f64>, u64), String> {
    let body = serde_json::json!({
        "model": server.model,
        "messages": [{"role": "user", "content": prompt}],
        "stream": true,
        "max_tokens": max_tokens,
        "temperature": 0.7,
        "seed": seed,
        "stream_options": {"include_usage": true},
    });
    let started = Instant::now();
    let response = ureq::post(&format!("{}/chat/completions", server.url))
        .timeout(Duration::from_secs(600))
        .set("Content-Type", "application/json")
        .send_string(&body.to_string())
        .map_err(|e| e.to_string())?;
    let mut first = None;
    let mut chunks = 0;
    let mut usage = None;
    let mut finished = false;
    let mut done = false;
    let mut last = String::new();
    for line in BufReader::new(response.into_reader()).lines() {
        let line = line.map_err(|e| e.to_string())?;
        if !line.trim().is_empty() {
            last.clone_from(&line);
        }
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data.trim() == "[DONE]" {
            done = true;
            break;
        }
        let value: serde_json::Value = serde_json::from_str(data).map_err(|e| e.to_string())?;
        if value.get("error").is_some() {
            return Err(data.to_string());
        }
        if let Some(n) = value["usage"]["completion_tokens"].as_u64() {
            usage = Some(n);
        }
        finished |= value["choices"][0]["finish_reason"].is_string();
        let content = value["choices"][0]["delta"]["content"]
            .as_str()
            .unwrap_or("");
        if !content.is_empty() {
            chunks += 1;
            first.get_or_insert(started.elapsed().as_secs_f64());
        }
    }
    if !done || !finished {
        return Err(format!(
            "the stream ended without a finish reason and [DONE]; its last line: {}",
            last.chars().take(300).collect::<String>()
        ));
    }
    // Tokens as the server counts them where it says (a held stream arrives in one piece),
    // else one per content chunk.
    Ok((
        started.elapsed().as_secs_f64(),
        first,
        usage.unwrap_or(chunks),
    ))
}

fn load(server: &Server, clients: usize, seconds: u64, max_tokens: usize) -> (Tally, f64) {
    let tally = Arc::new(Mutex::new(Tally::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    std::thread::scope(|scope| {
        for client in 0..clients {
            let (tally, stop) = (tally.clone(), stop.clone());
            scope.spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let prompt = PROMPTS[(client + i as usize) % PROMPTS.len()];
                    let result = one_request(server, prompt, client as u64 * 1000 + i, max_tokens);
                    let mut t = tally.lock().unwrap_or_else(|p| p.into_inner());
                    match result {
                        // A request still running when the window closes counts only if it
                        // finished inside the window.
                        Ok((latency, first, chunks)) if !stop.load(Ordering::Relaxed) => {
                            t.latencies.push(latency);
                            t.first_content.extend(first);
                            t.tokens += chunks;
                        }
                        Ok(_) => {}
                        Err(e) => {
                            t.failed += 1;
                            if t.errors.len() < 3 {
                                t.errors.push(e);
                            }
                        }
                    }
                    i += 1;
                }
            });
        }
        std::thread::sleep(Duration::from_secs(seconds));
        stop.store(true, Ordering::Relaxed);
    });
    // The window is the time the clients ran, not the seconds asked for (threads end late).
    let window = started.elapsed().as_secs_f64().min(seconds as f64);
    let tally = Arc::try_unwrap(tally)
        .ok()
        .map(|m| m.into_inner().unwrap_or_else(|p| p.into_inner()))
        .unwrap_or_default();
    (tally, window)
}

fn quantile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    values[((values.len() - 1) as f64 * q).round() as usize]
}

fn report(name: &str, mut tally: Tally, window: f64) -> f64 {
    let rate = tally.tokens as f64 / window;
    println!(
        "{name:<34} {:>5} done {:>3} failed  latency p50 {:>6.2} s p95 {:>6.2} s  first content p50 {:>6.2} s  {:>7.1} tokens/s",
        tally.latencies.len(),
        tally.failed,
        quantile(&mut tally.latencies, 0.5),
        quantile(&mut tally.latencies, 0.95),
        quantile(&mut tally.first_content, 0.5),
        rate
    );
    for e in &tally.errors {
        println!("  error: {e}");
    }
    rate
}

fn main() {
    let clients = env_usize("BENCH_CLIENTS", 32);
    let seconds = env_usize("BENCH_SECONDS", 60) as u64;
    let max_tokens = env_usize("BENCH_MAX_TOKENS", 64);
    let parallel = env_usize("BENCH_PARALLEL", 16);
    let dir = tempfile::tempdir().expect("temp dir");
    println!(
        "{clients} streaming clients for {seconds} s each, max_tokens {max_tokens}, {} threads; tenets --parallel {parallel}",
        threads()
    );
    let anchor = start_llama_cpp_python().map(|server| {
        let (tally, window) = load(&server, clients, seconds, max_tokens);
        report("llama-cpp-python server (anchor)", tally, window)
    });
    let plain = {
        let server = start_tenets("medical-info", &dir.path().join("plain.db"), parallel);
        let (tally, window) = load(&server, clients, seconds, max_tokens);
        report("tenets serve, no guards", tally, window)
    };
    let guarded = {
        let server = start_tenets("harmless-helpful", &dir.path().join("guarded.db"), parallel);
        let (tally, window) = load(&server, clients, seconds, max_tokens);
        report("tenets serve, harmless-helpful", tally, window)
    };
    if let Some(anchor) = anchor {
        println!(
            "tokens/s vs the anchor: no guards {:.2}x, guarded {:.2}x",
            plain / anchor,
            guarded / anchor
        );
    }
}
