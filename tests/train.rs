//! `tenets train` end to end on the default model: it learns the shared fixture's preferences
//! (TRL conversational format), writes adapters llama.cpp and PEFT load, resumes after kill -9
//! retracing the same loss curve, trains SFT and from a tenets database, and names bad input.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Model runs take every core: tests in this binary take turns.
static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The 64 pairs trainers are compared on (a copy of `../shared/fixtures/dpo-pairs-64.jsonl`,
/// kept in the repository so a clean clone tests alone).
fn fixture() -> PathBuf {
    common::repo("tests/fixtures/dpo-pairs-64.jsonl")
}

#[test]
fn the_fixture_is_the_shared_one() {
    let shared = common::repo("../shared/fixtures/dpo-pairs-64.jsonl");
    if shared.exists() {
        assert_eq!(
            std::fs::read(shared).unwrap(),
            std::fs::read(fixture()).unwrap()
        );
    }
}

/// The first `n` rows of the fixture, as a file in `dir`.
fn fixture_head(dir: &Path, n: usize) -> PathBuf {
    let text = std::fs::read_to_string(fixture()).unwrap();
    let head: String = text.lines().take(n).map(|l| format!("{l}\n")).collect();
    let path = dir.join(format!("pairs-{n}.jsonl"));
    std::fs::write(&path, head).unwrap();
    path
}

fn train_command(data: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tenets"));
    cmd.arg("train")
        .arg("--model")
        .arg(common::model())
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(out)
        .args(["--quiet", "--json"])
        .args(extra);
    cmd
}

fn run(mut cmd: Command) -> Output {
    cmd.output().unwrap()
}

fn summary(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "train failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// `(step, loss)` of every recorded step of the only run in `db` (none while the run is still
/// creating its database).
fn losses(db: &Path) -> Vec<(i64, f64)> {
    let conn = common::poll(db, "SELECT step, loss FROM train_steps ORDER BY step");
    conn.iter()
        .map(|r| (r[0].parse().unwrap(), r[1].parse().unwrap()))
        .collect()
}

#[test]
fn dpo_learns_the_fixture_and_writes_adapters_llama_cpp_and_peft_load() {
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("adapter.gguf");
    // One epoch over the 64 pairs: 16 steps of 4.
    let s = summary(&run(train_command(
        &fixture(),
        &out,
        &["--max-length", "256", "--lr", "1e-3", "--steps", "16"],
    )));
    println!("{}", serde_json::to_string_pretty(&s).unwrap());
    let final_scores = &s["final_scores"];
    let accuracy = final_scores["accuracy"].as_f64().unwrap();
    let loss = final_scores["loss"].as_f64().unwrap();
    assert!(
        accuracy >= 0.9,
        "reward accuracy {accuracy} on the 64 pairs"
    );
    assert!(loss < 0.3, "DPO loss {loss} on the 64 pairs");

    // A fresh adapter (B = 0) is the reference: the first step's loss is exactly ln 2.
    let db = dir.path().join("adapter.train.db");
    let curve = losses(&db);
    assert_eq!(curve.len(), 16);
    assert_eq!(curve[0].1, std::f64::consts::LN_2);

    // Metrics CSV (a header and a row per step) and the curves.
    let csv = std::fs::read_to_string(dir.path().join("adapter.metrics.csv")).unwrap();
    assert_eq!(csv.lines().count(), 17);
    assert!(csv.starts_with("step,loss,reward_chosen,reward_rejected,margin,accuracy"));
    let svg = std::fs::read_to_string(dir.path().join("adapter.curves.svg")).unwrap();
    assert!(svg.contains("reward margin"));

    // PEFT: every projection of every layer, HF names and shapes, and the config.
    let peft = dir.path().join("adapter.peft");
    let bytes = std::fs::read(peft.join("adapter_model.safetensors")).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(tensors.len(), 30 * 7 * 2);
    let a = tensors
        .tensor("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight")
        .unwrap();
    assert_eq!(a.shape(), &[8, 576]);
    let b = tensors
        .tensor("base_model.model.model.layers.29.mlp.down_proj.lora_B.weight")
        .unwrap();
    assert_eq!(b.shape(), &[576, 8]);
    let config: Value =
        serde_json::from_slice(&std::fs::read(peft.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["r"], 8);
    assert_eq!(config["target_modules"].as_array().unwrap().len(), 7);

    // llama.cpp applies the trained adapter, and under it the chosen answer gains on the
    // rejected one (DPO moves the margin; both may fall).
    let first: Value = serde_json::from_str(
        std::fs::read_to_string(fixture())
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    let score = |answer: &str, lora: Option<&Path>| -> f64 {
        let chat = dir.path().join(format!("{answer}.json"));
        let messages: Vec<Value> = first["prompt"]
            .as_array()
            .unwrap()
            .iter()
            .chain(first[answer].as_array().unwrap())
            .cloned()
            .collect();
        std::fs::write(&chat, serde_json::to_vec(&messages).unwrap()).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tenets"));
        cmd.arg("score")
            .arg("--model")
            .arg(common::model())
            .args(["--engine", "llama", "--json", "--chat-file"])
            .arg(&chat);
        if let Some(lora) = lora {
            cmd.arg("--lora").arg(lora);
        }
        let output = cmd.output().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let report: Value = serde_json::from_slice(&output.stdout).unwrap();
        report["sum_logprob"].as_f64().unwrap()
    };
    let chosen = score("chosen", Some(&out)) - score("chosen", None);
    let rejected = score("rejected", Some(&out)) - score("rejected", None);
    println!(
        "under llama.cpp the adapter moves chosen by {chosen:.2} nats, rejected by {rejected:.2}"
    );
    assert!(
        chosen - rejected > 5.0,
        "chosen {chosen}, rejected {rejected}"
    );

    // `tenets generate --lora` decodes with it, and the run records which adapter it was.
    let prompts = common::write_prompts(dir.path(), "p.jsonl", &common::prompts(2));
    let db = dir.path().join("gen.db");
    let output = Command::new(env!("CARGO_BIN_EXE_tenets"))
        .arg("generate")
        .arg("--model")
        .arg(common::model())
        .arg("--constitution")
        .arg(common::repo("constitutions/harmless-helpful.yaml"))
        .arg("--prompts")
        .arg(&prompts)
        .arg("--db")
        .arg(&db)
        .args(["--quiet", "--max-tokens", "16", "--ctx", "1024", "--lora"])
        .arg(&out)
        .args(["--lora-scale", "0.5"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let runs = common::query(&db, "SELECT lora_sha256, lora_scale FROM runs");
    let sha = tenets::hash::of_file(&out).unwrap();
    assert_eq!(runs, vec![vec![sha, "0.5".to_string()]]);
}

#[test]
fn kill_9_then_resume_retraces_the_uninterrupted_loss_curve() {
    // With LoRA dropout on: its masks are drawn from the seed and the step, so they repeat too.
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let data = fixture_head(dir.path(), 8);
    let settings = [
        "--max-length",
        "128",
        "--batch",
        "2",
        "--steps",
        "8",
        "--save-every",
        "2",
        "--lr",
        "1e-3",
        "--lora-dropout",
        "0.1",
        "--no-final-eval",
    ];
    let whole = dir.path().join("whole.gguf");
    summary(&run(train_command(&data, &whole, &settings)));
    let expected = losses(&dir.path().join("whole.train.db"));
    assert_eq!(expected.len(), 8);

    let out = dir.path().join("cut.gguf");
    let db = dir.path().join("cut.train.db");
    let mut child = train_command(&data, &out, &settings)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    while losses(&db).len() < 3 && Instant::now() < deadline {
        assert!(child.try_wait().unwrap().is_none(), "finished too early");
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let before = losses(&db).len();
    assert!((3..8).contains(&before), "{before} steps before the kill");
    assert!(!out.exists(), "no adapter is written before the run ends");

    // The same command without --resume refuses to overwrite the run.
    let again = run(train_command(&data, &out, &settings));
    assert!(!again.status.success());
    let message = String::from_utf8_lossy(&again.stderr);
    assert!(message.contains("--resume"), "{message}");

    let resumed = summary(&run(train_command(
        &data,
        &out,
        &[&settings[..], &["--resume"]].concat(),
    )));
    let from = resumed["resumed_from"].as_u64().unwrap();
    assert!(from >= 2 && from as usize <= before, "resumed from {from}");
    assert_eq!(resumed["steps_run"].as_u64().unwrap(), 8 - from);
    let got = losses(&db);
    assert_eq!(got.len(), 8);
    for ((step, a), (_, b)) in got.iter().zip(&expected) {
        assert!(
            (a - b).abs() <= 1e-9,
            "step {step}: {a} resumed vs {b} uninterrupted"
        );
    }
    assert!(out.exists());
    // `tenets stats` shows the training run.
    let stats = Command::new(env!("CARGO_BIN_EXE_tenets"))
        .args(["stats", "--json", "--db"])
        .arg(&db)
        .output()
        .unwrap();
    let stats: Value = serde_json::from_slice(&stats.stdout).unwrap();
    let t = &stats["trainings"][0];
    assert_eq!(
        (t["steps_done"].as_i64(), t["total_steps"].as_i64()),
        (Some(8), Some(8))
    );
    assert_eq!(
        (t["objective"].as_str(), t["finished"].as_bool()),
        (Some("dpo"), Some(true))
    );
    // Resuming a finished run redoes nothing.
    let done = summary(&run(train_command(
        &data,
        &out,
        &[&settings[..], &["--resume"]].concat(),
    )));
    assert_eq!(done["steps_run"].as_u64().unwrap(), 0);
}

#[test]
fn killed_at_ten_moments_the_resumed_run_retraces_the_loss_curve() {
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let data = fixture_head(dir.path(), 8);
    let settings = [
        "--max-length",
        "128",
        "--batch",
        "2",
        "--steps",
        "40",
        "--save-every",
        "1",
        "--lr",
        "1e-3",
        "--no-final-eval",
        "--resume",
    ];
    let whole = dir.path().join("whole.gguf");
    summary(&run(train_command(&data, &whole, &settings)));
    let expected = losses(&dir.path().join("whole.train.db"));
    assert_eq!(expected.len(), 40);

    // Ten kills at moments from "still loading" to "mid-step", in a fixed pseudo-random order.
    let out = dir.path().join("cut.gguf");
    let db = dir.path().join("cut.train.db");
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut kills = 0;
    for _ in 0..10 {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let delay = Duration::from_millis(150 + (state >> 33) % 1100);
        let mut child = train_command(&data, &out, &settings)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            kills += 1;
        }
        child.wait().unwrap();
    }
    assert_eq!(kills, 10, "the run finished before ten kills");
    let before = losses(&db).len();
    assert!(before < 40, "{before} steps done before the last resume");
    summary(&run(train_command(&data, &out, &settings)));
    let got = losses(&db);
    assert_eq!(got.len(), 40);
    for ((step, a), (_, b)) in got.iter().zip(&expected) {
        assert!(
            (a - b).abs() <= 1e-9,
            "step {step}: {a} after ten kills vs {b} uninterrupted"
        );
    }
    assert!(out.exists());
}

#[test]
fn ctrl_c_saves_a_checkpoint_at_the_last_step_and_resume_finishes() {
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let data = fixture_head(dir.path(), 6);
    let settings = [
        "--max-length",
        "96",
        "--batch",
        "2",
        "--steps",
        "6",
        "--save-every",
        "100",
        "--no-final-eval",
    ];
    let out = dir.path().join("int.gguf");
    let db = dir.path().join("int.train.db");
    let child = train_command(&data, &out, &settings)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    while losses(&db).len() < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let output = child.wait_with_output().unwrap();
    assert_eq!(
        output.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // The checkpoint is the last completed step, though --save-every would not have saved it.
    let done = losses(&db).len();
    let saved = common::query(&db, "SELECT step FROM train_checkpoints");
    assert_eq!(saved, vec![vec![done.to_string()]]);
    assert!(done < 6, "stopped after {done} steps");
    let resumed = summary(&run(train_command(
        &data,
        &out,
        &[&settings[..], &["--resume"]].concat(),
    )));
    assert_eq!(resumed["resumed_from"].as_u64().unwrap() as usize, done);
    assert_eq!(losses(&db).len(), 6);
    assert!(out.exists());
}

#[test]
fn sft_on_conversations_lowers_the_loss() {
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    // `messages` rows: the chosen answers as conversations.
    let text = std::fs::read_to_string(fixture()).unwrap();
    let rows: String = text
        .lines()
        .take(6)
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            let messages: Vec<Value> = v["prompt"]
                .as_array()
                .unwrap()
                .iter()
                .chain(v["chosen"].as_array().unwrap())
                .cloned()
                .collect();
            format!("{}\n", serde_json::json!({ "messages": messages }))
        })
        .collect();
    let data = dir.path().join("sft.jsonl");
    std::fs::write(&data, rows).unwrap();
    let out = dir.path().join("sft.gguf");
    let s = summary(&run(train_command(
        &data,
        &out,
        &[
            "--objective",
            "sft",
            "--max-length",
            "128",
            "--batch",
            "3",
            "--steps",
            "6",
            "--lr",
            "1e-3",
        ],
    )));
    let curve = losses(&dir.path().join("sft.train.db"));
    println!("SFT losses: {curve:?}");
    assert_eq!(curve.len(), 6);
    let final_loss = s["final_scores"]["loss"].as_f64().unwrap();
    assert!(
        final_loss < curve[0].1 * 0.8,
        "final {final_loss}, first {}",
        curve[0].1
    );
    assert!(s["final_scores"]["accuracy"].is_null());

    // Preference losses need pairs: conversations are refused, by name.
    let refused = run(train_command(&data, &dir.path().join("x.gguf"), &[]));
    assert!(!refused.status.success());
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(message.contains("no `rejected` answer"), "{message}");
}

#[test]
fn bad_training_input_is_named_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"prompt\": \"hi\", \"chosen\": \"a\", \"rejected\": \"b\"}\n{\"prompt\": \"hi\", \"chosen\": 5, \"rejected\": \"b\"}\n",
    )
    .unwrap();
    let good = fixture_head(dir.path(), 2);
    let out = dir.path().join("a.gguf");
    let cases: Vec<(PathBuf, Vec<&str>, &str)> = vec![
        (
            bad.clone(),
            vec![],
            "bad.jsonl:2: field `chosen`: expected a string",
        ),
        (
            dir.path().join("missing.jsonl"),
            vec![],
            "cannot read training data",
        ),
        (
            good.clone(),
            vec!["--targets", "q,zz"],
            "unknown projection `zz`",
        ),
        (
            good.clone(),
            vec!["--batch", "0"],
            "--batch must be positive",
        ),
        (good.clone(), vec!["--max-length", "4"], "--max-length"),
    ];
    for (data, extra, expected) in cases {
        let output = run(train_command(&data, &out, &extra));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{extra:?} succeeded");
        assert!(stderr.contains(expected), "{extra:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(!out.exists() && !dir.path().join("a.train.db").exists());
    }
    let output = run(train_command(&good, &dir.path().join("a.bin"), &[]));
    assert!(String::from_utf8_lossy(&output.stderr).contains("name it *.gguf"));
    let output = run(train_command(
        &good,
        &dir.path().join("nowhere/a.gguf"),
        &[],
    ));
    assert!(String::from_utf8_lossy(&output.stderr).contains("the folder does not exist"));
}
