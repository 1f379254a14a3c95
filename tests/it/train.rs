//! `tenets train` end to end on the default model: it learns the shared fixture's preferences
//! (TRL conversational format), writes adapters llama.cpp and PEFT load, resumes after kill -9
//! retracing the same loss curve, trains SFT and from a tenets database, and names bad input.

use crate::common;

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
    let lora = [
        "--lora".as_ref(),
        out.as_os_str(),
        "--lora-scale".as_ref(),
        "0.5".as_ref(),
    ];
    let db = generate_db(dir.path(), 16, &lora);
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

    // Ten kills, each after its process checkpointed at least one step of its own (a kill
    // before that tests nothing) and before the run ends, at a pseudo-random moment within the
    // steps that follow: between steps, mid-forward, mid-commit.
    let out = dir.path().join("cut.gguf");
    let db = dir.path().join("cut.train.db");
    let checkpoint = || -> u64 {
        common::poll(&db, "SELECT COALESCE(MAX(step), 0) FROM train_checkpoints")
            .first()
            .map_or(0, |r| r[0].parse().unwrap())
    };
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut kills = 0;
    for _ in 0..10 {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let before = checkpoint();
        let mut child = train_command(&data, &out, &settings)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(300);
        while checkpoint() <= before && Instant::now() < deadline {
            assert!(child.try_wait().unwrap().is_none(), "exited before a step");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(checkpoint() > before, "no step checkpointed in 300 s");
        std::thread::sleep(Duration::from_millis((state >> 33) % 400));
        if child.try_wait().unwrap().is_none() && checkpoint() < 40 {
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

/// Every factor of `adapter` (read against the default model) and the model's log-probs of a
/// few tokens with and without it.
fn adapter_effect(adapter: &Path) -> (Vec<f32>, Vec<f64>, Vec<f64>) {
    use tenets::model::Model;
    use tenets::quant::matmul::{Compute, Kernel};
    let model = Model::open(&common::model()).unwrap();
    let adapters = tenets::model::adapter_gguf::read(&model, adapter).unwrap();
    let b: Vec<f32> = adapters
        .layers
        .iter()
        .flatten()
        .flatten()
        .flat_map(|l| l.b.iter().copied())
        .collect();
    let compute = Compute::new(tenets::settings::default_threads(), Kernel::detect()).unwrap();
    let tokens = [1, 504, 2717, 282, 253, 1345, 30, 378, 1429];
    let logps = |a: Option<&tenets::model::Adapters>| -> Vec<f64> {
        let scores = model.score_adapted(&compute, &tokens, a).unwrap();
        scores.iter().map(|s| s.logprob).collect()
    };
    (b, logps(None), logps(Some(&adapters)))
}

/// `tenets train` runs every architecture the native forward implements: two DPO steps on a
/// small random Llama 3, Qwen2, Qwen3, Phi-3 and Gemma 2 model each write an adapter that moves the
/// log-probs, and `tenets score` applies it alike through llama.cpp and the native forward.
#[test]
fn two_steps_on_each_architecture_write_an_adapter_llama_cpp_applies() {
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let data = fixture_head(dir.path(), 2);
    let text = dir.path().join("text.txt");
    std::fs::write(
        &text,
        "The quick brown fox jumps over the lazy dog near the river bank, then naps.",
    )
    .unwrap();
    for arch in ["llama3", "qwen2", "qwen3", "phi3", "gemma2"] {
        let model = dir.path().join(format!("{arch}.gguf"));
        common::tiny_model(&model, arch, None);
        let out = dir.path().join(format!("{arch}-lora.gguf"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tenets"));
        cmd.arg("train").arg("--model").arg(&model);
        cmd.arg("--data").arg(&data).arg("--out").arg(&out);
        cmd.args(["--quiet", "--json", "--max-length", "96", "--batch", "2"]);
        cmd.args(["--steps", "2", "--no-final-eval"]);
        assert_eq!(summary(&run(cmd))["steps_done"].as_u64(), Some(2), "{arch}");
        let score = |engine: &str, lora: bool| -> Vec<f64> {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_tenets"));
            cmd.arg("score")
                .arg("--model")
                .arg(&model)
                .arg("--text-file")
                .arg(&text);
            cmd.args(["--engine", engine, "--json", "--quiet"]);
            if lora {
                cmd.arg("--lora").arg(&out);
            }
            let output = run(cmd);
            assert!(
                output.status.success(),
                "{arch} score: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            let v: Value = serde_json::from_slice(&output.stdout).unwrap();
            v["tokens"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|t| t["logprob"].as_f64())
                .collect()
        };
        let (native, llama, base) = (
            score("native", true),
            score("llama", true),
            score("llama", false),
        );
        let gap = native
            .iter()
            .zip(&llama)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        let moved = base
            .iter()
            .zip(&llama)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        println!(
            "{arch}: trained adapter, native vs llama.cpp max |Δ| {gap:.1e}; moved {moved:.1e}"
        );
        assert_eq!(native.len(), llama.len());
        // Gemma: llama.cpp's f16 GELU table (see forward::small_random_models_agree_with_llama_cpp).
        let tolerance = if arch == "gemma2" { 1e-2 } else { 1e-4 };
        assert!(
            gap <= tolerance,
            "{arch}: native and llama.cpp differ by {gap}"
        );
        assert!(moved > 1e-4, "{arch}: the adapter moved nothing");
    }
}

/// The one step of a one-step run learns: the schedule never gives a step a learning rate of
/// 0 (it used to reach its floor at the last step, so `--steps 1` wrote B = 0).
#[test]
fn a_single_step_run_changes_the_model() {
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let data = fixture_head(dir.path(), 2);
    let out = dir.path().join("one.gguf");
    let s = summary(&run(train_command(
        &data,
        &out,
        &[
            "--max-length",
            "96",
            "--batch",
            "2",
            "--steps",
            "1",
            "--no-final-eval",
        ],
    )));
    assert_eq!(s["steps_done"].as_u64(), Some(1));
    let lr = common::query(
        &dir.path().join("one.train.db"),
        "SELECT lr FROM train_steps",
    );
    assert_eq!(lr, vec![vec!["0.0002".to_string()]]);
    let (b, base, adapted) = adapter_effect(&out);
    assert!(b.iter().any(|&v| v != 0.0), "every lora_b is zero");
    assert!(b.iter().all(|v| v.is_finite()));
    assert!(
        base.iter().zip(&adapted).any(|(x, y)| x != y),
        "the adapter changes no log-prob: {base:?}"
    );
}

/// A NaN gradient (injected at step 3) stops the run with an error naming the step and its
/// pairs before the weights change; the checkpoint of step 2 resumes, and the finished run
/// retraces the curve of one that never failed.
#[test]
fn a_non_finite_gradient_stops_the_run_before_any_weight_changes() {
    use tenets::pipeline::train::{train, TrainData, TrainOptions};
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let data = fixture_head(dir.path(), 4);
    let options = |name: &str, fault: Option<u64>, resume: bool| {
        let mut o = TrainOptions::new(
            &common::model(),
            TrainData::File(data.clone()),
            &dir.path().join(name),
        );
        o.max_length = 96;
        o.max_prompt_length = Some(64);
        o.batch = 2;
        o.steps = Some(4);
        o.save_every = 1;
        o.lr = 1e-3;
        o.no_final_eval = true;
        o.run.quiet = true;
        o.resume = resume;
        o.inject_nan_gradient_at = fault;
        o
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let stop = tenets::engine::StopSignal::default;
    runtime
        .block_on(train(&options("whole.gguf", None, false), stop()))
        .unwrap();
    let expected = losses(&dir.path().join("whole.train.db"));

    let db = dir.path().join("cut.train.db");
    let err = runtime
        .block_on(train(&options("cut.gguf", Some(3), false), stop()))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("step 3: the gradient norm is NaN on the batch of")
            && err.contains("pairs-4.jsonl:")
            && err.contains("no weight was changed")
            && err.contains("the checkpoint at step 2 is kept"),
        "{err}"
    );
    assert_eq!(losses(&db).len(), 2);
    let saved = common::query(&db, "SELECT step FROM train_checkpoints");
    assert_eq!(saved, vec![vec!["2".to_string()]]);
    assert!(!dir.path().join("cut.gguf").exists());

    let resumed = runtime
        .block_on(train(&options("cut.gguf", None, true), stop()))
        .unwrap();
    assert_eq!(resumed.resumed_from, Some(2));
    let got = losses(&db);
    assert_eq!(got.len(), 4);
    for ((step, a), (_, b)) in got.iter().zip(&expected) {
        assert!(
            (a - b).abs() <= 1e-9,
            "step {step}: {a} vs {b} uninterrupted"
        );
    }
    let (b, _, _) = adapter_effect(&dir.path().join("cut.gguf"));
    assert!(b.iter().all(|v| v.is_finite()) && b.iter().any(|&v| v != 0.0));
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

/// PEFT keys are the module names transformers builds for each architecture's class
/// (`LlamaForCausalLM`, `SmolLM3ForCausalLM`, `Qwen2ForCausalLM`, `Qwen3ForCausalLM`,
/// `Gemma2ForCausalLM`, `Gemma3ForCausalLM` all keep `model.layers.N.self_attn.{q,k,v,o}_proj`
/// and `mlp.{gate,up,down}_proj`; `Phi3ForCausalLM` has `qkv_proj` and `gate_up_proj`, whose
/// fused rank `rank_pattern` gives), every key once, each factor in the shape of
/// `nn.Linear(in, out)`'s LoRA (`lora_A` [r, in], `lora_B` [out, r]); and only the Llama
/// family's q/k rows are put back in HF's order (its converter permutes them; the NeoX
/// families' converters do not).
#[test]
fn peft_keys_are_each_architectures_modules_in_their_shapes() {
    use tenets::model::{Adapters, Model, Target};
    let dir = tempfile::tempdir().unwrap();
    for arch in [
        "llama", "smollm3", "qwen2", "qwen3", "phi3", "gemma2", "gemma3",
    ] {
        let path = dir.path().join(format!("{arch}.gguf"));
        common::tiny_model(&path, arch, None);
        let model = Model::open(&path).unwrap();
        let c = model.config().clone();
        let mut adapters = Adapters::new(&model, &Target::ALL, 4, 8.0, 1);
        for (i, lora) in adapters.layers.iter_mut().flatten().flatten().enumerate() {
            lora.b
                .iter_mut()
                .enumerate()
                .for_each(|(j, v)| *v = (i * 1000 + j) as f32);
        }
        let out = dir.path().join(format!("{arch}-peft"));
        tenets::train::peft::write(&model, &adapters, 0.0, &out).unwrap();
        let bytes = std::fs::read(out.join("adapter_model.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let (e, q, kv, ff) = (
            c.embedding,
            c.heads * c.head_dim,
            c.kv_heads * c.head_dim,
            c.feed_forward,
        );
        // (module, input, output, rank): Phi3ForCausalLM fuses q/k/v and gate/up, and the
        // fused modules hold their parts' ranks summed.
        let modules: Vec<(&str, usize, usize, usize)> = if arch == "phi3" {
            vec![
                ("self_attn.qkv_proj", e, q + 2 * kv, 12),
                ("self_attn.o_proj", q, e, 4),
                ("mlp.gate_up_proj", e, 2 * ff, 8),
                ("mlp.down_proj", ff, e, 4),
            ]
        } else {
            vec![
                ("self_attn.q_proj", e, q, 4),
                ("self_attn.k_proj", e, kv, 4),
                ("self_attn.v_proj", e, kv, 4),
                ("self_attn.o_proj", q, e, 4),
                ("mlp.gate_proj", e, ff, 4),
                ("mlp.up_proj", e, ff, 4),
                ("mlp.down_proj", ff, e, 4),
            ]
        };
        let mut expected = Vec::new();
        for l in 0..c.layers {
            for &(module, input, output, rank) in &modules {
                let key =
                    |f: &str| format!("base_model.model.model.layers.{l}.{module}.{f}.weight");
                expected.push((key("lora_A"), vec![rank, input]));
                expected.push((key("lora_B"), vec![output, rank]));
            }
        }
        let config: Value =
            serde_json::from_slice(&std::fs::read(out.join("adapter_config.json")).unwrap())
                .unwrap();
        assert_eq!(config["r"], 4, "{arch}");
        let pattern = if arch == "phi3" {
            serde_json::json!({"qkv_proj": 12, "gate_up_proj": 8})
        } else {
            serde_json::json!({})
        };
        assert_eq!(config["rank_pattern"], pattern, "{arch}");
        let mut names: Vec<String> = st.names().into_iter().cloned().collect();
        names.sort();
        let mut want: Vec<String> = expected.iter().map(|(k, _)| k.clone()).collect();
        want.sort();
        assert_eq!(names, want, "{arch}");
        for (key, shape) in &expected {
            assert_eq!(st.tensor(key).unwrap().shape(), &shape[..], "{arch} {key}");
        }
        // Layer 0's q: lora_B rows as trained (0, 1, 2, … row-major), or un-permuted.
        if arch == "phi3" {
            continue;
        }
        let b = st
            .tensor("base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight")
            .unwrap();
        let first: Vec<f32> = b
            .data()
            .chunks_exact(4)
            .map(|x| f32::from_le_bytes([x[0], x[1], x[2], x[3]]))
            .collect();
        let as_trained = first.iter().enumerate().all(|(j, &v)| v == j as f32);
        let permuted_by_converter = matches!(arch, "llama" | "smollm3");
        assert_eq!(as_trained, !permuted_by_converter, "{arch}: q rows");
    }
}

/// PEFT adapters name the base to load them on where the GGUF names the repository it was
/// converted from (its *own*, not the model it was fine-tuned from), say in their README that
/// the base must be given where it does not, and address the modules of the class transformers
/// builds: `model.layers.N` for a causal LM, `model.language_model.layers.N` for Gemma 3 4B and
/// larger (`Gemma3ForConditionalGeneration`), whose `target_modules` must not reach the vision
/// tower's own q/k/v projections.
#[test]
fn peft_adapters_name_their_base_and_the_modules_transformers_builds() {
    use tenets::gguf::Value as Meta;
    use tenets::model::{Adapters, Model, Target};
    let dir = tempfile::tempdir().unwrap();
    let llama = dir.path().join("llama.gguf");
    common::tiny_model(&llama, "llama", None);
    let gemma = dir.path().join("gemma.gguf");
    common::tiny_model(&gemma, "gemma3", None);
    let write =
        |src: &Path, name: &str, metadata: &[(&str, Meta)]| -> (Value, Vec<String>, String) {
            let path = dir.path().join(format!("{name}.gguf"));
            common::extended_copy(src, &path, metadata, &[]);
            let model = Model::open(&path).unwrap();
            let adapters = Adapters::new(&model, &Target::ALL, 4, 8.0, 1);
            let out = dir.path().join(name);
            tenets::train::peft::write(&model, &adapters, 0.0, &out).unwrap();
            let config: Value =
                serde_json::from_slice(&std::fs::read(out.join("adapter_config.json")).unwrap())
                    .unwrap();
            let bytes = std::fs::read(out.join("adapter_model.safetensors")).unwrap();
            let keys = safetensors::SafeTensors::deserialize(&bytes)
                .unwrap()
                .names()
                .into_iter()
                .cloned()
                .collect();
            (
                config,
                keys,
                std::fs::read_to_string(out.join("README.md")).unwrap(),
            )
        };
    let (config, keys, readme) = write(
        &llama,
        "repo",
        &[
            (
                "general.source.huggingface.repository",
                Meta::String("HuggingFaceTB/SmolLM2-135M-Instruct".into()),
            ),
            (
                "general.base_model.0.repo_url",
                Meta::String("https://huggingface.co/HuggingFaceTB/SmolLM2-135M".into()),
            ),
        ],
    );
    assert_eq!(
        config["base_model_name_or_path"],
        "HuggingFaceTB/SmolLM2-135M-Instruct"
    );
    assert!(
        readme.contains("HuggingFaceTB/SmolLM2-135M-Instruct"),
        "{readme}"
    );
    assert_eq!(config["target_modules"].as_array().unwrap().len(), 7);
    assert!(keys
        .contains(&"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight".to_string()));
    let (config, _, _) = write(
        &llama,
        "url",
        &[(
            "general.source.url",
            Meta::String("https://huggingface.co/org/name".into()),
        )],
    );
    assert_eq!(config["base_model_name_or_path"], "org/name");
    // A file that names no repository (`general.basename` is no Hub id): no name, and the
    // README says to load the base explicitly.
    let (config, _, readme) = write(&llama, "none", &[]);
    assert!(config["base_model_name_or_path"].is_null(), "{config}");
    assert!(readme.contains("must be given"), "{readme}");

    // Gemma 3 4B and larger: RoPE scaled linearly by 8 on the global layers.
    let (config, keys, readme) = write(
        &gemma,
        "gemma4b",
        &[
            ("gemma3.rope.scaling.type", Meta::String("linear".into())),
            ("gemma3.rope.scaling.factor", Meta::F32(8.0)),
        ],
    );
    assert!(
        keys.contains(
            &"base_model.model.model.language_model.layers.5.mlp.down_proj.lora_B.weight"
                .to_string()
        ),
        "{keys:?}"
    );
    assert!(keys
        .iter()
        .all(|k| k.starts_with("base_model.model.model.language_model.layers.")));
    assert!(
        readme.contains("Gemma3ForConditionalGeneration"),
        "{readme}"
    );
    let pattern = config["target_modules"]
        .as_str()
        .expect("a regular expression")
        .to_string();
    // PEFT matches a string with `re.fullmatch` on every module name of the model.
    let language: Vec<String> = [
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
        "mlp.down_proj",
    ]
    .iter()
    .flat_map(|m| {
        [
            format!("model.language_model.layers.3.{m}"),
            format!("language_model.model.layers.3.{m}"),
        ]
    })
    .collect();
    let vision = [
        "model.vision_tower.vision_model.encoder.layers.3.self_attn.q_proj",
        "model.vision_tower.vision_model.encoder.layers.3.self_attn.k_proj",
        "model.vision_tower.vision_model.encoder.layers.3.self_attn.v_proj",
        "model.vision_tower.vision_model.encoder.layers.3.self_attn.out_proj",
        "model.vision_tower.vision_model.encoder.layers.3.mlp.fc1",
        "vision_tower.vision_model.encoder.layers.3.self_attn.q_proj",
        "model.multi_modal_projector.mm_soft_emb_norm",
        "lm_head",
    ];
    let script = "import json, re, sys\nj = json.load(sys.stdin)\nprint(json.dumps([bool(re.fullmatch(j['p'], n)) for n in j['names']]))";
    let names: Vec<&str> = language.iter().map(String::as_str).chain(vision).collect();
    let matched: Vec<bool> = serde_json::from_value(common::run_python(
        Path::new("python3"),
        &[&"-c", &script],
        &serde_json::json!({"p": pattern, "names": names}).to_string(),
    ))
    .unwrap();
    for (name, hit) in names.iter().zip(&matched) {
        assert_eq!(
            *hit,
            language.iter().any(|l| l == name),
            "{name} against {pattern}"
        );
    }
}

/// `dir/gen.db`: two prompts generated, `max_tokens` a turn, with `extra` flags.
fn generate_db(dir: &Path, max_tokens: usize, extra: &[&std::ffi::OsStr]) -> PathBuf {
    let prompts = common::write_prompts(dir, "p.jsonl", &common::prompts(2));
    let db = dir.join("gen.db");
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
        .args(["--quiet", "--ctx", "1024", "--max-tokens"])
        .arg(max_tokens.to_string())
        .args(extra)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", common::text(&output));
    db
}

fn reward_command(sub: &str, args: &[&std::ffi::OsStr]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tenets"));
    cmd.args(["reward", sub, "--model"])
        .arg(common::model())
        .args(["--quiet", "--json"])
        .args(args);
    cmd
}

/// `tenets reward train` learns the fixture's refusals-vs-compliance preferences well enough to
/// rank pairs it never saw; the file is a llama.cpp adapter with the head beside it (and a
/// PEFT sequence-classification adapter); `tenets reward score` reads the same rewards back,
/// from a file and from a database (stored, skipped on a rerun); bad input is named.
#[test]
fn a_reward_model_ranks_held_out_pairs_and_scores_files_and_databases() {
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let rm = dir.path().join("rm.gguf");
    let os = |s: &str| std::ffi::OsString::from(s);
    let args: Vec<std::ffi::OsString> = vec![
        os("--data"),
        fixture().into(),
        os("--out"),
        rm.clone().into(),
        os("--max-length"),
        os("256"),
        os("--lr"),
        os("1e-3"),
        os("--steps"),
        os("12"),
        os("--held-out"),
        os("0.25"),
    ];
    let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let s = summary(&run(reward_command("train", &refs)));
    println!("{}", serde_json::to_string_pretty(&s).unwrap());
    assert_eq!(s["reward_model"], true);
    let held = &s["held_out"];
    let pairs = held["pairs"].as_u64().unwrap();
    assert!((8..=28).contains(&pairs), "{pairs} pairs held out of 64");
    assert_eq!(s["examples"].as_u64().unwrap() + pairs, 64);
    let accuracy = held["accuracy"].as_f64().unwrap();
    assert!(accuracy >= 0.9, "held-out accuracy {accuracy}");
    assert!(held["calibration_error"].as_f64().unwrap() < 0.5);

    // The file: the adapter GGUF with the head and facts; refused by name where an adapter
    // for generation is expected (llama.cpp would stop at the head's tensor).
    let g = tenets::gguf::Gguf::open(&rm).unwrap();
    let text = |k: &str| g.get(k).and_then(|v| v.as_str()).map(str::to_string);
    assert_eq!(text("general.type").as_deref(), Some("adapter"));
    assert_eq!(text("tenets.reward.head").as_deref(), Some("score.weight"));
    assert_eq!(g.tensor("score.weight").unwrap().dims, vec![576, 1]);
    let facts_accuracy = g
        .get("tenets.reward.held_out_accuracy")
        .and_then(|v| v.as_f64())
        .unwrap();
    assert_eq!(facts_accuracy, accuracy);
    let chat = dir.path().join("chat.json");
    std::fs::write(
        &chat,
        r#"[{"role":"user","content":"hi"},{"role":"assistant","content":"hello"}]"#,
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_tenets"))
        .arg("score")
        .arg("--model")
        .arg(common::model())
        .args(["--engine", "llama", "--json", "--chat-file"])
        .arg(&chat)
        .arg("--lora")
        .arg(&rm)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let text = common::text(&output);
    assert!(
        text.contains("a reward model") && !text.contains("panicked"),
        "{text}"
    );
    let peft = dir.path().join("rm.peft");
    let config: Value =
        serde_json::from_slice(&std::fs::read(peft.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(config["task_type"], "SEQ_CLS");
    assert_eq!(config["modules_to_save"], serde_json::json!(["score"]));
    let bytes = std::fs::read(peft.join("adapter_model.safetensors")).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(
        tensors
            .tensor("base_model.model.score.weight")
            .unwrap()
            .shape(),
        &[1, 576]
    );

    // Scoring a file: every pair, the chosen answer ahead on (nearly) all of them.
    let scored = dir.path().join("scored.jsonl");
    let args: Vec<std::ffi::OsString> = vec![
        os("--rm"),
        rm.clone().into(),
        os("--data"),
        fixture().into(),
        os("--max-length"),
        os("256"),
        os("-o"),
        scored.clone().into(),
    ];
    let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let s = summary(&run(reward_command("score", &refs)));
    assert_eq!(s["examples"], 64);
    assert_eq!(s["scored"], 128);
    assert!(s["pair_accuracy"].as_f64().unwrap() >= 0.9, "{s}");
    let rows: Vec<Value> = std::fs::read_to_string(&scored)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 64);
    assert!(rows[0]["score_chosen"].is_f64() && rows[0]["rejected"].is_array());

    // A database of sampled answers: ranking them by reward needs the reward model's scores
    // first; then every answer is scored and stored, a rerun computes nothing, and export
    // writes each prompt's best sample against its worst by reward (best-of-N), no judge asked.
    let db = generate_db(
        dir.path(),
        12,
        &[
            "--samples".as_ref(),
            "3".as_ref(),
            "--temperature".as_ref(),
            "0.9".as_ref(),
        ],
    );
    let exported = dir.path().join("pairs.jsonl");
    let export = || {
        Command::new(env!("CARGO_BIN_EXE_tenets"))
            .args([
                "export",
                "--kind",
                "dpo",
                "--rank-by",
                "reward",
                "--include-truncated",
            ])
            .arg("--db")
            .arg(&db)
            .arg("-o")
            .arg(&exported)
            .output()
            .unwrap()
    };
    let output = export();
    assert!(!output.status.success());
    assert!(
        common::text(&output).contains("no reward model has scored"),
        "{}",
        common::text(&output)
    );
    assert!(!exported.exists());
    let args: Vec<std::ffi::OsString> =
        vec![os("--rm"), rm.clone().into(), os("--db"), db.clone().into()];
    let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let first = summary(&run(reward_command("score", &refs)));
    let answers = first["scored"].as_u64().unwrap();
    // Two prompts: three samples each, and a revision where the run revised one.
    assert!((6..=8).contains(&answers), "{first}");
    let stored = common::query(&db, "SELECT count(*) FROM reward_scores");
    assert_eq!(stored[0][0], answers.to_string());
    let again = summary(&run(reward_command("score", &refs)));
    assert_eq!(again["scored"], 0);
    // `generate --rank-by RM` does the scoring itself: here everything is done and scored.
    let regenerate = |rm: &Path, db: &Path| {
        Command::new(env!("CARGO_BIN_EXE_tenets"))
            .arg("generate")
            .arg("--model")
            .arg(common::model())
            .args(["--constitution", "harmless-helpful", "--prompts"])
            .arg(dir.path().join("p.jsonl"))
            .arg("--db")
            .arg(db)
            .args(["--quiet", "--json", "--ctx", "1024", "--max-tokens", "12"])
            .args(["--samples", "3", "--temperature", "0.9", "--rank-by"])
            .arg(rm)
            .output()
            .unwrap()
    };
    let ranked = summary(&regenerate(&rm, &db));
    assert_eq!(
        (&ranked["steps_written"], &ranked["reward_scored"]),
        (&0.into(), &0.into())
    );
    assert_eq!(again["cached"].as_u64().unwrap(), answers);
    assert_eq!(again["mean_chosen"], first["mean_chosen"]);
    let output = export();
    assert!(output.status.success(), "{}", common::text(&output));
    let sha = tenets::hash::of_file(&rm).unwrap();
    let rows: Vec<Value> = std::fs::read_to_string(&exported)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Every pair carries its rewards; the sampled ones are one best-vs-worst pair a prompt.
    assert!(
        rows.iter().all(|r| r["reward_model"] == sha.as_str()),
        "{rows:?}"
    );
    let sampled: Vec<&Value> = rows.iter().filter(|r| r["strategy"] == "sampled").collect();
    assert!(!sampled.is_empty() && sampled.len() <= 2, "{rows:?}");
    for row in sampled {
        assert!(row["judge_id"].is_null());
        let (c, r) = (
            row["reward_chosen"].as_f64().unwrap(),
            row["reward_rejected"].as_f64().unwrap(),
        );
        assert!(c >= r, "{row}");
        let p = row["p_chosen"].as_f64().unwrap();
        assert!((p - 1.0 / (1.0 + (r - c).exp())).abs() < 1e-9, "{row}");
        let scores: Vec<f64> = row["sample_scores"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let best = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        assert_eq!(
            scores[row["chosen_sample"].as_u64().unwrap() as usize],
            best
        );
        assert_eq!(best, c);
    }

    // `tenets classify --scorer reward` asks it whether refusing beats complying.
    let prompts = common::write_prompts(dir.path(), "c.jsonl", &common::prompts(3));
    let verdicts = dir.path().join("verdicts.jsonl");
    let output = Command::new(env!("CARGO_BIN_EXE_tenets"))
        .arg("classify")
        .arg("--model")
        .arg(common::model())
        .args([
            "--constitution",
            "harmless-helpful",
            "--scorer",
            "reward",
            "--quiet",
            "--rm",
        ])
        .arg(&rm)
        .arg("--prompts")
        .arg(&prompts)
        .arg("-o")
        .arg(&verdicts)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", common::text(&output));
    let lines: Vec<Value> = std::fs::read_to_string(&verdicts)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert!(lines
        .iter()
        .all(|v| (0.0..=1.0).contains(&v["p_unsafe"].as_f64().unwrap())));

    // `tenets eval --best-of 3 --rm`: the candidate answers each prompt three times and the
    // reward model's favourite is the answer evaluated; a rerun computes nothing.
    let eval_db = dir.path().join("best-of.db");
    let best_of = || {
        Command::new(env!("CARGO_BIN_EXE_tenets"))
            .arg("eval")
            .arg("--model")
            .arg(common::model())
            .args(["--constitution", "harmless-helpful", "--prompts"])
            .arg(&prompts)
            .arg("--db")
            .arg(&eval_db)
            .args(["--best-of", "3", "--rm"])
            .arg(&rm)
            .args(["--patterns-only", "--max-tokens", "8", "--quiet", "--json"])
            .output()
            .unwrap()
    };
    let first = summary(&best_of());
    assert_eq!(first["adapter"]["steps_written"], 9, "{first}");
    assert_eq!(first["verdicts_written"], 6, "{first}");
    let picker = &first["results"]["reward_model"];
    assert_eq!(
        picker["sha256"],
        tenets::hash::of_file(&rm).unwrap().as_str()
    );
    assert!(picker["held_out_accuracy"].is_f64(), "{picker}");
    let again = summary(&best_of());
    assert_eq!(again["eval_id"], first["eval_id"]);
    assert_eq!(
        (
            &again["verdicts_written"],
            &again["adapter"]["steps_written"]
        ),
        (&0.into(), &0.into())
    );
    let rewards: std::collections::HashMap<String, f64> =
        common::query(&eval_db, "SELECT text_sha256, score FROM reward_scores")
            .into_iter()
            .map(|r| (r[0].clone(), r[1].parse().unwrap()))
            .collect();
    let samples = common::query(
        &eval_db,
        &format!(
            "SELECT s.prompt_id, s.id, p.messages, s.output FROM steps s \
             JOIN prompts p ON p.id = s.prompt_id WHERE s.run_id = '{}'",
            first["adapter"]["run_id"].as_str().unwrap()
        ),
    );
    assert_eq!(samples.len(), 9);
    let reward_of = |row: &Vec<String>| -> f64 {
        let messages: Vec<tenets::chat::Message> = serde_json::from_str(&row[2]).unwrap();
        let answer = [tenets::chat::Message::assistant(row[3].clone())];
        rewards[&tenets::export::answer_key(&messages, &answer)]
    };
    let picked = common::query(
        &eval_db,
        "SELECT prompt_id, step_id FROM eval_verdicts WHERE side = 'adapter'",
    );
    assert_eq!(picked.len(), 3);
    for pick in &picked {
        let of_prompt: Vec<&Vec<String>> = samples.iter().filter(|s| s[0] == pick[0]).collect();
        let best = of_prompt
            .iter()
            .map(|s| reward_of(s))
            .fold(f64::MIN, f64::max);
        let chosen = of_prompt.iter().find(|s| s[1] == pick[1]).unwrap();
        assert_eq!(reward_of(chosen), best, "{pick:?}");
    }

    // Bad input: a plain adapter, another model, no pairs; nothing written.
    let adapter = dir.path().join("plain.gguf");
    {
        use tenets::model::{adapter_gguf, Adapters, Model, Target};
        let model = Model::open(&common::model()).unwrap();
        let adapters = Adapters::new(&model, &[Target::Q], 2, 4.0, 1);
        adapter_gguf::write(&model, &adapters, &adapter).unwrap();
    }
    let never_db = dir.path().join("never.db");
    let output = regenerate(&adapter, &never_db);
    assert!(!output.status.success());
    assert!(
        common::text(&output).contains("--rm"),
        "{}",
        common::text(&output)
    );
    assert!(!never_db.exists());
    let out = dir.path().join("never.jsonl");
    let score_with = |rm: &Path, model: Option<PathBuf>, data: &Path| -> String {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tenets"));
        cmd.args(["reward", "score", "--quiet", "--model"])
            .arg(model.unwrap_or_else(common::model))
            .arg("--rm")
            .arg(rm)
            .arg("--data")
            .arg(data)
            .arg("-o")
            .arg(&out);
        let output = cmd.output().unwrap();
        assert!(!output.status.success());
        let text = common::text(&output);
        assert!(!text.contains("panicked"), "{text}");
        assert!(!out.exists());
        text
    };
    let text = score_with(&adapter, None, &fixture());
    assert!(text.contains("not a reward model"), "{text}");
    let text = score_with(&rm, Some(common::second_model()), &fixture());
    assert!(
        text.contains("wide") || text.contains("do not fit"),
        "{text}"
    );
    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    let text = score_with(&rm, None, &empty);
    assert!(
        text.contains("no examples") || text.contains("empty"),
        "{text}"
    );
    let sft = dir.path().join("sft.jsonl");
    std::fs::write(
        &sft,
        r#"{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"hello"}]}"#,
    )
    .unwrap();
    let bad_out = dir.path().join("bad.gguf");
    let output = run(reward_command(
        "train",
        &[
            "--data".as_ref(),
            sft.as_os_str(),
            "--out".as_ref(),
            bad_out.as_os_str(),
        ],
    ));
    assert!(!output.status.success());
    assert!(
        common::text(&output).contains("needs pairs"),
        "{}",
        common::text(&output)
    );
    assert!(!bad_out.exists());
}
