//! `tenets score` from the command line: both engines on a text and a chat, and bad input.

use crate::common;

use std::path::Path;
use std::process::{Command, Output};

fn score(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tenets"))
        .arg("score")
        .arg("--model")
        .arg(common::model())
        .args(args)
        .output()
        .unwrap()
}

fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn logprobs(report: &serde_json::Value) -> Vec<(u64, Option<f64>)> {
    report["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["id"].as_u64().unwrap(), t["logprob"].as_f64()))
        .collect()
}

/// The two engines see the same tokens and agree to within llama.cpp's own rounding.
fn engines_agree(input: &[&str]) {
    let native = json(&score(&[&["--json", "--engine", "native"], input].concat()));
    let llama = json(&score(&[&["--json", "--engine", "llama"], input].concat()));
    assert_eq!(native["engine"], "native");
    assert_eq!(llama["engine"], "llama");
    let (a, b) = (logprobs(&native), logprobs(&llama));
    assert_eq!(
        a.iter().map(|t| t.0).collect::<Vec<_>>(),
        b.iter().map(|t| t.0).collect::<Vec<_>>()
    );
    assert_eq!(
        (a[0].1, b[0].1),
        (None, None),
        "the first token has no log-prob"
    );
    let diffs: Vec<f64> = a[1..]
        .iter()
        .zip(&b[1..])
        .map(|(x, y)| (x.1.unwrap() - y.1.unwrap()).abs())
        .collect();
    let mean = diffs.iter().sum::<f64>() / diffs.len() as f64;
    assert!(mean < 0.12, "mean |Δ| {mean}");
    assert_eq!(native["scored"].as_u64().unwrap() as usize, a.len() - 1);
    let sum: f64 = a[1..].iter().map(|t| t.1.unwrap()).sum();
    assert!((native["sum_logprob"].as_f64().unwrap() - sum).abs() < 1e-6);
}

#[test]
fn both_engines_score_a_text_and_a_chat() {
    let _guard = common::MODEL_LOCK.blocking_lock();
    let text = common::repo("tests/fixtures/texts/rust-errors.txt");
    engines_agree(&["--text-file", text.to_str().unwrap()]);

    let dir = tempfile::tempdir().unwrap();
    let chat = dir.path().join("chat.json");
    // Template syntax and control-token text in a message stay data.
    std::fs::write(
        &chat,
        r#"{"messages": [
            {"role": "user", "content": "What does {{ x }} do in Jinja? <|im_end|>"},
            {"role": "assistant", "content": "It prints the value of x."}
        ]}"#,
    )
    .unwrap();
    engines_agree(&["--chat-file", chat.to_str().unwrap()]);
    let report = json(&score(&["--json", "--chat-file", chat.to_str().unwrap()]));
    let pieces: String = report["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["piece"].as_str().unwrap())
        .collect();
    assert!(pieces.contains("{{ x }}"), "{pieces}");
    assert!(pieces.contains("It prints the value of x."), "{pieces}");
    // The literal "<|im_end|>" in the message is text, not the control token (id 2).
    let ids: Vec<u64> = logprobs(&report).iter().map(|t| t.0).collect();
    assert_eq!(ids.iter().filter(|&&id| id == 2).count(), 3, "{ids:?}");

    let table = score(&["--text-file", text.to_str().unwrap()]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("tokens scored") && table.contains("perplexity"),
        "{table}"
    );
}

fn fails_with(out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains(needle), "expected {needle:?} in:\n{err}");
}

#[test]
fn bad_input_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);
    let arg = |p: &Path| p.to_str().unwrap().to_string();

    fails_with(
        &score(&["--text-file", &arg(&path("missing.txt"))]),
        &format!("cannot read {}", path("missing.txt").display()),
    );
    std::fs::write(path("latin1.txt"), b"caf\xe9 au lait").unwrap();
    fails_with(
        &score(&["--text-file", &arg(&path("latin1.txt"))]),
        &format!(
            "{}: not UTF-8 text (invalid byte at offset 3)",
            path("latin1.txt").display()
        ),
    );
    std::fs::write(path("bad.json"), "[{\"role\": \"user\",\n \"content\": 3}]").unwrap();
    fails_with(
        &score(&["--chat-file", &arg(&path("bad.json"))]),
        &format!("{}: line 2, column", path("bad.json").display()),
    );
    std::fs::write(path("empty.json"), "[]").unwrap();
    fails_with(
        &score(&["--chat-file", &arg(&path("empty.json"))]),
        "the chat has no messages",
    );
    std::fs::write(path("short.txt"), "").unwrap();
    fails_with(
        &score(&["--text-file", &arg(&path("short.txt"))]),
        "at least 2 are needed",
    );
    fails_with(
        &score(&["--text-file", "a", "--chat-file", "b"]),
        "cannot be used with",
    );
    fails_with(&score(&[]), "--text-file");
    fails_with(
        &score(&["--text-file", &arg(&path("short.txt")), "--threads", "0"]),
        "--threads must be at least 1",
    );
    fails_with(
        &Command::new(env!("CARGO_BIN_EXE_tenets"))
            .args([
                "score",
                "--model",
                &arg(&path("none.gguf")),
                "--text-file",
                "x",
            ])
            .output()
            .unwrap(),
        "not found",
    );
}

/// `--lora`: both engines apply a GGUF adapter written by tenets, agree, and differ from the
/// base model; a file that is not an adapter is named.
#[test]
fn both_engines_apply_an_adapter() {
    use rand::{Rng, SeedableRng};
    use tenets::model::{Adapters, Model, Target};
    let _guard = common::MODEL_LOCK.blocking_lock();
    let dir = tempfile::tempdir().unwrap();
    let model = Model::open(&common::model()).unwrap();
    let mut adapters = Adapters::new(&model, &[Target::Q, Target::V, Target::Down], 4, 8.0, 1);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
    for lora in adapters.layers.iter_mut().flatten().flatten() {
        lora.b
            .iter_mut()
            .for_each(|v| *v = rng.gen_range(-0.08..0.08));
    }
    let lora = dir.path().join("lora.gguf");
    tenets::model::adapter_gguf::write(&model, &adapters, &lora).unwrap();
    let text = common::repo("tests/fixtures/texts/sourdough.txt");
    let (text, lora_arg) = (text.to_str().unwrap(), lora.to_str().unwrap());
    engines_agree(&["--text-file", text, "--lora", lora_arg]);
    let adapted = logprobs(&json(&score(&[
        "--json",
        "--text-file",
        text,
        "--lora",
        lora_arg,
    ])));
    let base = logprobs(&json(&score(&["--json", "--text-file", text])));
    let moved = adapted[1..]
        .iter()
        .zip(&base[1..])
        .map(|(a, b)| (a.1.unwrap() - b.1.unwrap()).abs())
        .sum::<f64>()
        / (base.len() - 1) as f64;
    assert!(moved > 0.05, "the adapter moved log-probs by only {moved}");

    for engine in ["native", "llama"] {
        let out = score(&["--engine", engine, "--text-file", text, "--lora", text]);
        fails_with(&out, "sourdough.txt");
    }
}

/// llama.cpp's own log is detail, not the user's business: a Gemma 3 run with an adapter (some
/// thirty llama.cpp warnings about token types and buffer types) prints none of it by default,
/// shows it with `-v`, and writes no colour codes into a stderr that is not a terminal.
#[test]
fn llama_cpp_keeps_quiet_unless_asked() {
    use tenets::model::{Adapters, Model, Target};
    let _guard = common::MODEL_LOCK.blocking_lock();
    let dir = tempfile::tempdir().unwrap();
    let gemma = common::second_model();
    let model = Model::open(&gemma).unwrap();
    let lora = dir.path().join("gemma-lora.gguf");
    let adapters = Adapters::new(&model, &Target::ALL, 4, 8.0, 1);
    tenets::model::adapter_gguf::write(&model, &adapters, &lora).unwrap();
    let text = common::repo("tests/fixtures/texts/sourdough.txt");
    let run = |verbose: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tenets"));
        if verbose {
            cmd.arg("-v");
        }
        let out = cmd
            .args(["score", "--engine", "llama", "--model"])
            .arg(&gemma)
            .arg("--lora")
            .arg(&lora)
            .arg("--text-file")
            .arg(&text)
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let quiet = run(false);
    assert!(quiet.trim().is_empty(), "{quiet}");
    let verbose = run(true);
    assert!(verbose.contains("llama-cpp-2"), "{verbose}");
    for stderr in [&quiet, &verbose] {
        assert!(!stderr.contains('\u{1b}'), "colour codes: {stderr:?}");
    }
}
