//! `tenets classify` on the default model: the probe, fitted on the bundled tagged prompts,
//! scores prompts it never saw — harmful requests above their benign look-alikes, flagged ones
//! given their restricted topic and the principle the constitution's refusal cites — and
//! reports its figures on tagged prompts; bad settings are named and write nothing. (The reward
//! scorer is driven in `train.rs`, beside the reward model it needs.)

use crate::common;

use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// Three harmful prompts and three look-alikes from the bundled evaluation sets (which the
/// probe is not fitted on), as a prompt file in `dir`.
fn tagged_prompts(dir: &Path) -> std::path::PathBuf {
    let mut lines = Vec::new();
    for (set, take) in [("eval-harmful", 3), ("eval-benign", 3)] {
        let text =
            std::fs::read_to_string(common::repo(&format!("prompts/sets/{set}.jsonl"))).unwrap();
        lines.extend(text.lines().step_by(17).take(take).map(str::to_string));
    }
    let path = dir.join("tagged.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

fn classify(args: &[&std::ffi::OsStr]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tenets"))
        .arg("classify")
        .arg("--model")
        .arg(common::model())
        .args(["--constitution", "harmless-helpful", "--quiet", "--json"])
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn the_probe_flags_harmful_prompts_above_look_alikes_with_topic_and_principle() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = tagged_prompts(dir.path());
    let out = dir.path().join("verdicts.jsonl");
    let output = classify(&[
        "--prompts".as_ref(),
        prompts.as_os_str(),
        "-o".as_ref(),
        out.as_os_str(),
    ]);
    assert!(output.status.success(), "{}", common::text(&output));
    let summary: Value = serde_json::from_slice(&output.stdout).unwrap();
    println!("{}", serde_json::to_string_pretty(&summary).unwrap());
    assert_eq!(summary["prompts"], 6);
    assert_eq!(summary["fit_prompts"], 239);
    let figures = &summary["figures"];
    assert_eq!(
        (figures["harmful"].as_u64(), figures["benign"].as_u64()),
        (Some(3), Some(3))
    );
    assert!(figures["auroc"].as_f64().unwrap() >= 0.75, "{figures}");

    let verdicts: Vec<Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(verdicts.len(), 6);
    let constitution = tenets::constitution::Constitution::load(&common::repo(
        "constitutions/harmless-helpful.yaml",
    ))
    .unwrap();
    for v in &verdicts {
        let p = v["p_unsafe"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&p), "{v}");
        assert_eq!(v["flagged"].as_bool().unwrap(), p >= 0.5, "{v}");
        if v["flagged"] == true {
            // A flagged prompt names a restricted topic and the principle its refusal cites.
            let topic = v["topic"].as_str().unwrap();
            assert!(
                constitution.topics.restricted.iter().any(|t| t == topic),
                "{v}"
            );
            let refusal = constitution.refusal_for(topic).unwrap();
            assert_eq!(v["principle"], refusal.principle.as_str());
        } else {
            assert!(v["topic"].is_null() && v["principle"].is_null(), "{v}");
        }
    }
    let mean = |kind: &str| {
        let p: Vec<f64> = verdicts
            .iter()
            .filter(|v| v["kind"] == kind)
            .map(|v| v["p_unsafe"].as_f64().unwrap())
            .collect();
        p.iter().sum::<f64>() / p.len() as f64
    };
    assert!(mean("harmful") > mean("benign") + 0.3, "{verdicts:?}");

    // The model as its own judge answers the frame in both letter orders: a probability per
    // prompt (the 135M model tells harmful from benign no better than chance; what counts here
    // is that the scorer reads its letters and reports it).
    let judged = dir.path().join("judged.jsonl");
    let output = classify(&[
        "--prompts".as_ref(),
        prompts.as_os_str(),
        "--scorer".as_ref(),
        "judge".as_ref(),
        "-o".as_ref(),
        judged.as_os_str(),
    ]);
    assert!(output.status.success(), "{}", common::text(&output));
    let summary: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(summary["scorer"], "judge");
    assert!(summary["figures"]["auroc"].is_f64());
    let lines: Vec<Value> = std::fs::read_to_string(&judged)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 6);
    assert!(lines.iter().all(|v| {
        let p = v["p_unsafe"].as_f64().unwrap();
        p > 0.0 && p < 1.0 && v["topic"].is_null()
    }));

    // A database's answers: each is as unsafe as its prompt unless it refuses, and export
    // drops the pairs whose chosen answer is flagged.
    let db = dir.path().join("answers.db");
    let output = Command::new(env!("CARGO_BIN_EXE_tenets"))
        .arg("generate")
        .arg("--model")
        .arg(common::model())
        .args(["--constitution", "harmless-helpful", "--prompts"])
        .arg(&prompts)
        .arg("--db")
        .arg(&db)
        .args([
            "--rounds",
            "1",
            "--temperature",
            "0",
            "--max-tokens",
            "12",
            "--quiet",
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", common::text(&output));
    let screened = dir.path().join("answers.jsonl");
    let output = classify(&[
        "--db".as_ref(),
        db.as_os_str(),
        "--on".as_ref(),
        "both".as_ref(),
        "--scorer".as_ref(),
        "judge".as_ref(),
        "--threshold".as_ref(),
        "0.01".as_ref(),
        "-o".as_ref(),
        screened.as_os_str(),
    ]);
    assert!(output.status.success(), "{}", common::text(&output));
    let summary: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        (&summary["prompts"], &summary["answers"]),
        (&6.into(), &12.into())
    );
    let lines: Vec<Value> = std::fs::read_to_string(&screened)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let prompt_p: std::collections::HashMap<&str, f64> = lines
        .iter()
        .filter(|v| v["on"] == "prompt")
        .map(|v| (v["id"].as_str().unwrap(), v["p_unsafe"].as_f64().unwrap()))
        .collect();
    let mut flagged = std::collections::HashSet::new();
    for v in lines.iter().filter(|v| v["on"] == "answer") {
        let refuses = tenets::filters::is_refusal(v["answer"].as_str().unwrap());
        let want = if refuses {
            0.0
        } else {
            prompt_p[v["id"].as_str().unwrap()]
        };
        assert_eq!(v["p_unsafe"].as_f64().unwrap(), want, "{v}");
        if v["flagged"] == true {
            flagged.insert(v["answer_sha256"].as_str().unwrap().to_string());
        }
    }
    let export = |extra: &[&std::ffi::OsStr]| -> Vec<Value> {
        let out = dir.path().join("pairs.jsonl");
        let output = Command::new(env!("CARGO_BIN_EXE_tenets"))
            .args(["export", "--hard-labels", "--include-truncated", "--db"])
            .arg(&db)
            .arg("-o")
            .arg(&out)
            .args(extra)
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", common::text(&output));
        std::fs::read_to_string(&out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let key = |row: &Value| {
        let messages = |k: &str| -> Vec<tenets::chat::Message> {
            serde_json::from_value(row[k].clone()).unwrap()
        };
        tenets::export::answer_key(&messages("prompt"), &messages("chosen"))
    };
    // The run is the database's too: the report shows it.
    let stored = common::query(
        &db,
        "SELECT scorer, target, prompts, answers FROM classifier_runs",
    );
    assert_eq!(stored, vec![vec!["judge", "both", "6", "12"]]);
    let html = dir.path().join("report.html");
    let output = Command::new(env!("CARGO_BIN_EXE_tenets"))
        .args(["report", "--no-png", "--db"])
        .arg(&db)
        .arg("-o")
        .arg(&html)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", common::text(&output));
    let html = std::fs::read_to_string(&html).unwrap();
    assert!(
        html.contains("Safety classifier") && html.contains("/12 answers"),
        "no classifier section"
    );
    let all = export(&[]);
    let kept = export(&["--drop-flagged".as_ref(), screened.as_os_str()]);
    let unflagged = all.iter().filter(|r| !flagged.contains(&key(r))).count();
    assert!(kept.len() < all.len(), "{} pairs, none flagged", all.len());
    assert_eq!(kept.len(), unflagged);
    assert!(kept.iter().all(|r| !flagged.contains(&key(r))));
}

#[test]
fn bad_classify_settings_are_named_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = tagged_prompts(dir.path());
    let out = dir.path().join("never.jsonl");
    let untagged = dir.path().join("untagged.jsonl");
    std::fs::write(
        &untagged,
        "{\"prompt\": \"hello\"}\n{\"prompt\": \"bye\"}\n",
    )
    .unwrap();
    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    let cases: Vec<(Vec<&std::ffi::OsStr>, &str)> = vec![
        (vec!["--scorer".as_ref(), "reward".as_ref()], "--rm"),
        (vec!["--threshold".as_ref(), "1.5".as_ref()], "--threshold"),
        (
            vec!["--target-recall".as_ref(), "0".as_ref()],
            "--target-recall",
        ),
        (
            vec!["--rm".as_ref(), prompts.as_os_str()],
            "--scorer reward",
        ),
        (
            vec!["--fit-on".as_ref(), untagged.as_os_str()],
            "needs both",
        ),
        (vec!["--fit-on".as_ref(), empty.as_os_str()], "no prompts"),
        (vec!["--on".as_ref(), "answer".as_ref()], "--db"),
    ];
    for (extra, expected) in cases {
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "--prompts".as_ref(),
            prompts.as_os_str(),
            "-o".as_ref(),
            out.as_os_str(),
        ];
        args.extend(extra.iter().copied());
        let output = classify(&args);
        let text = common::text(&output);
        assert!(!output.status.success(), "{extra:?} succeeded");
        assert!(text.contains(expected), "{extra:?}: {text}");
        assert!(!text.contains("panicked"), "{text}");
        assert!(!out.exists());
    }
    // Export refuses a verdict file with no answer verdicts (it would drop nothing) by name.
    let prompt_verdicts = dir.path().join("prompt-verdicts.jsonl");
    std::fs::write(
        &prompt_verdicts,
        "{\"on\": \"prompt\", \"flagged\": true}\n",
    )
    .unwrap();
    let db = dir.path().join("never.db");
    let output = Command::new(env!("CARGO_BIN_EXE_tenets"))
        .args(["export", "--db"])
        .arg(&db)
        .arg("-o")
        .arg(&out)
        .arg("--drop-flagged")
        .arg(&prompt_verdicts)
        .output()
        .unwrap();
    let text = common::text(&output);
    assert!(!output.status.success(), "{text}");
    assert!(
        text.contains("prompt-verdicts.jsonl") && !text.contains("panicked"),
        "{text}"
    );
    assert!(!out.exists());
}

/// The fixture's harmful pairs (a refusal chosen over compliance), as a file in `dir`.
fn harmful_pairs(dir: &Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string(common::repo("tests/fixtures/dpo-pairs-64.jsonl")).unwrap();
    let rows: String = text
        .lines()
        .filter(|l| l.contains("\"kind\": \"harmful\""))
        .map(|l| format!("{l}\n"))
        .collect();
    let path = dir.join("harmful-pairs.jsonl");
    std::fs::write(&path, rows).unwrap();
    path
}

/// What llama.cpp's own GGUF reader finds in a control-vector file: the architecture, and each
/// tensor's name, type and size in bytes — what its control-vector loader reads.
fn llama_cpp_reads(path: &Path) -> (String, Vec<(String, u32, usize)>) {
    use llama_cpp_sys_2 as sys;
    use std::ffi::{CStr, CString};
    let name = CString::new(path.to_str().unwrap()).unwrap();
    let params = sys::gguf_init_params {
        no_alloc: true,
        ctx: std::ptr::null_mut(),
    };
    // SAFETY: a NUL-terminated path; the context is freed below and nothing it returns is
    // kept past that.
    unsafe {
        let ctx = sys::gguf_init_from_file(name.as_ptr(), params);
        assert!(
            !ctx.is_null(),
            "llama.cpp could not read {}",
            path.display()
        );
        let key = CString::new("general.architecture").unwrap();
        let id = sys::gguf_find_key(ctx, key.as_ptr());
        assert!(id >= 0);
        let arch = CStr::from_ptr(sys::gguf_get_val_str(ctx, id))
            .to_string_lossy()
            .into_owned();
        let tensors = (0..sys::gguf_get_n_tensors(ctx))
            .map(|t| {
                (
                    CStr::from_ptr(sys::gguf_get_tensor_name(ctx, t))
                        .to_string_lossy()
                        .into_owned(),
                    sys::gguf_get_tensor_type(ctx, t) as u32,
                    sys::gguf_get_tensor_size(ctx, t),
                )
            })
            .collect();
        sys::gguf_free(ctx);
        (arch, tensors)
    }
}

/// `tenets steer` on the fixture's harmful pairs writes a control vector llama.cpp's reader
/// takes as its loader expects (`direction.1`…`direction.29`, f32, 576 wide), and the vector
/// moves the native forward its way on harmful prompts it was not computed from: the refusal
/// gains on the compliance with it, and loses with it negated.
#[test]
fn a_steering_vector_moves_refusals_its_way_and_llama_cpp_reads_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let pairs = harmful_pairs(dir.path());
    let vector = dir.path().join("v.gguf");
    let output = Command::new(env!("CARGO_BIN_EXE_tenets"))
        .arg("steer")
        .arg("--model")
        .arg(common::model())
        .arg("--data")
        .arg(&pairs)
        .arg("--out")
        .arg(&vector)
        .args(["--max-length", "256", "--quiet", "--json"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", common::text(&output));
    let summary: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(summary["pairs"], 32);
    assert_eq!(summary["layers"].as_array().unwrap().len(), 29);

    let (arch, tensors) = llama_cpp_reads(&vector);
    assert_eq!(arch, "controlvector");
    assert_eq!(tensors.len(), 29);
    for (i, (name, kind, bytes)) in tensors.iter().enumerate() {
        assert_eq!(name, &format!("direction.{}", i + 1));
        assert_eq!((*kind, *bytes), (0, 576 * 4), "{name}: f32, n_embd values");
    }
    let g = tenets::gguf::Gguf::open(&vector).unwrap();
    assert_eq!(
        g.get("controlvector.model_hint").and_then(|v| v.as_str()),
        Some("llama")
    );

    // Refusal minus compliance, in nats, for two harmful prompts from the eval set.
    let prompts: Vec<String> =
        std::fs::read_to_string(common::repo("prompts/sets/eval-harmful.jsonl"))
            .unwrap()
            .lines()
            .step_by(31)
            .take(2)
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["prompt"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
    let margin = |steer: &[&str]| -> f64 {
        let mut total = 0.0;
        for (i, prompt) in prompts.iter().enumerate() {
            for (answer, sign) in [
                ("I'm sorry, but I can't help with that.", 1.0),
                ("Sure! Here's how to do it. First, get", -1.0),
            ] {
                let chat = dir.path().join(format!("chat-{i}.json"));
                let messages = serde_json::json!([
                    {"role": "user", "content": prompt},
                    {"role": "assistant", "content": answer},
                ]);
                std::fs::write(&chat, messages.to_string()).unwrap();
                let output = Command::new(env!("CARGO_BIN_EXE_tenets"))
                    .arg("score")
                    .arg("--model")
                    .arg(common::model())
                    .args(["--json", "--chat-file"])
                    .arg(&chat)
                    .args(steer)
                    .output()
                    .unwrap();
                assert!(output.status.success(), "{}", common::text(&output));
                let report: Value = serde_json::from_slice(&output.stdout).unwrap();
                total += sign * report["sum_logprob"].as_f64().unwrap();
            }
        }
        total
    };
    let plus = format!("{}:0.1", vector.display());
    let minus = format!("{}:-0.1", vector.display());
    let (base, toward, away) = (
        margin(&[]),
        margin(&["--control-vector", &plus]),
        margin(&["--control-vector", &minus]),
    );
    println!("refusal − compliance: {away:.2} (−0.1) < {base:.2} < {toward:.2} (+0.1)");
    assert!(
        toward > base + 1.0 && away < base - 1.0,
        "{away} {base} {toward}"
    );
    // llama.cpp's engine steers the same way through its own call, by as much.
    let llama = ["--engine", "llama"];
    let (llama_base, llama_toward) = (
        margin(&llama),
        margin(&[&llama[..], &["--control-vector", &plus]].concat()),
    );
    println!("llama.cpp: {llama_base:.2} < {llama_toward:.2} (+0.1)");
    let (moved, llama_moved) = (toward - base, llama_toward - llama_base);
    assert!(
        (moved - llama_moved).abs() < 0.25 * moved,
        "native moved {moved:.2}, llama.cpp {llama_moved:.2}"
    );

    // Generation steers too: a steered run is a run of its own (the vector's hash and scale in
    // its record), its answers differ from the unsteered ones, and a rerun does nothing.
    let harmful = dir.path().join("harmful.jsonl");
    std::fs::write(
        &harmful,
        prompts
            .iter()
            .map(|p| format!("{}\n", serde_json::json!({ "prompt": p })))
            .collect::<String>(),
    )
    .unwrap();
    let db = dir.path().join("steered.db");
    let generate = |steer: &[&str]| -> Value {
        let output = Command::new(env!("CARGO_BIN_EXE_tenets"))
            .arg("generate")
            .arg("--model")
            .arg(common::model())
            .args(["--constitution", "harmless-helpful", "--prompts"])
            .arg(&harmful)
            .arg("--db")
            .arg(&db)
            .args(["--rounds", "0", "--temperature", "0", "--max-tokens", "12"])
            .args(["--quiet", "--json"])
            .args(steer)
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", common::text(&output));
        serde_json::from_slice(&output.stdout).unwrap()
    };
    let strong = format!("{}:0.2", vector.display());
    let plain = generate(&[]);
    let steered = generate(&["--control-vector", &strong, "--control-layers", "1-28"]);
    assert_ne!(plain["run_id"], steered["run_id"]);
    assert_eq!(steered["steps_written"], 2);
    assert_eq!(
        generate(&["--control-vector", &strong, "--control-layers", "1-28"])["steps_written"],
        0
    );
    let (runs, answers) = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let conn = common::connect(&db).await;
        let runs: Vec<(Option<f64>, Option<String>)> = sqlx::query_as(
            "SELECT control_vector_scale, control_layers FROM runs ORDER BY control_vector_scale IS NOT NULL",
        )
        .fetch_all(&conn)
        .await
        .unwrap();
        let answers: Vec<(String, String)> =
            sqlx::query_as("SELECT run_id, output FROM steps ORDER BY prompt_id, run_id")
                .fetch_all(&conn)
                .await
                .unwrap();
        (runs, answers)
    });
    assert_eq!(runs, vec![(None, None), (Some(0.2), Some("1-28".into()))]);
    assert!(
        answers.chunks(2).any(|two| two[0].1 != two[1].1),
        "{answers:?}"
    );

    // Bad input: another model's width, a block the model lacks, block 0, the llama engine.
    let chat = dir.path().join("chat-0.json");
    let score = |args: &[&std::ffi::OsStr]| -> String {
        let output = Command::new(env!("CARGO_BIN_EXE_tenets"))
            .arg("score")
            .args(["--json", "--chat-file"])
            .arg(&chat)
            .args(args)
            .output()
            .unwrap();
        assert!(!output.status.success());
        let text = common::text(&output);
        assert!(!text.contains("panicked"), "{text}");
        text
    };
    let text = score(&[
        "--model".as_ref(),
        common::second_model().as_os_str(),
        "--control-vector".as_ref(),
        vector.as_os_str(),
    ]);
    assert!(
        text.contains("wide") || text.contains("blocks are"),
        "{text}"
    );
    // The same mismatch stops generate and eval before any database is made.
    for command in ["generate", "eval"] {
        let never = dir.path().join(format!("never-{command}.db"));
        let output = Command::new(env!("CARGO_BIN_EXE_tenets"))
            .arg(command)
            .arg("--model")
            .arg(common::second_model())
            .args(["--constitution", "harmless-helpful", "--prompts"])
            .arg(&harmful)
            .arg("--db")
            .arg(&never)
            .arg("--control-vector")
            .arg(&vector)
            .output()
            .unwrap();
        let text = common::text(&output);
        assert!(!output.status.success(), "{command}: {text}");
        assert!(
            text.contains("v.gguf") && !text.contains("panicked"),
            "{command}: {text}"
        );
        assert!(!never.exists(), "{command}");
    }
    let not_a_vector = score(&[
        "--model".as_ref(),
        common::model().as_os_str(),
        "--control-vector".as_ref(),
        common::model().as_os_str(),
    ]);
    assert!(
        not_a_vector.contains("not a control vector"),
        "{not_a_vector}"
    );
    let out = dir.path().join("never.gguf");
    for (layers, expected) in [("0-3", "block 0"), ("2-40", "1 to 29")] {
        let output = Command::new(env!("CARGO_BIN_EXE_tenets"))
            .arg("steer")
            .arg("--model")
            .arg(common::model())
            .arg("--data")
            .arg(&pairs)
            .arg("--out")
            .arg(&out)
            .args(["--layers", layers])
            .output()
            .unwrap();
        let text = common::text(&output);
        assert!(
            !output.status.success() && text.contains(expected),
            "{layers}: {text}"
        );
        assert!(!out.exists());
    }
}

/// llama.cpp's log-probs of `tokens[1..]` with the control vector `data` (blocks 1.., `n_embd`
/// each, as its loader lays them out) applied through its own call, `llama_set_adapter_cvec`.
fn llama_cpp_steered_logprobs(
    path: &Path,
    tokens: &[u32],
    data: &[f32],
    n_embd: usize,
) -> Vec<f64> {
    use llama_cpp_sys_2 as sys;
    let c_path = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    let n = tokens.len() as i32;
    let threads = tenets::settings::default_threads() as i32;
    let mut out = Vec::new();
    // SAFETY: plain use of llama.cpp's C API; every pointer is checked before use and freed once.
    unsafe {
        sys::llama_backend_init();
        let model =
            sys::llama_model_load_from_file(c_path.as_ptr(), sys::llama_model_default_params());
        assert!(!model.is_null());
        let mut params = sys::llama_context_default_params();
        params.n_ctx = 512;
        params.n_batch = 512;
        params.n_ubatch = 512;
        params.n_threads = threads;
        params.n_threads_batch = threads;
        params.type_k = sys::GGML_TYPE_F32;
        params.type_v = sys::GGML_TYPE_F32;
        params.flash_attn_type = sys::LLAMA_FLASH_ATTN_TYPE_DISABLED;
        let ctx = sys::llama_init_from_model(model, params);
        assert!(!ctx.is_null());
        let layers = data.len() / n_embd + 1;
        let rc = sys::llama_set_adapter_cvec(
            ctx,
            data.as_ptr(),
            data.len(),
            n_embd as i32,
            1,
            layers as i32 - 1,
        );
        assert_eq!(rc, 0, "llama_set_adapter_cvec");
        let batch = sys::llama_batch_init(n, 0, 1);
        for (i, &t) in tokens.iter().enumerate() {
            *batch.token.add(i) = t as i32;
            *batch.pos.add(i) = i as i32;
            *batch.n_seq_id.add(i) = 1;
            *(*batch.seq_id.add(i)) = 0;
            *batch.logits.add(i) = 1;
        }
        let mut batch = batch;
        batch.n_tokens = n;
        assert_eq!(sys::llama_decode(ctx, batch), 0, "llama_decode");
        let vocab = sys::llama_vocab_n_tokens(sys::llama_model_get_vocab(model)) as usize;
        for i in 0..tokens.len() - 1 {
            let row = std::slice::from_raw_parts(sys::llama_get_logits_ith(ctx, i as i32), vocab);
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let z: f64 = row.iter().map(|&v| f64::from(v - max).exp()).sum();
            out.push(f64::from(row[tokens[i + 1] as usize] - max) - z.ln());
        }
        sys::llama_batch_free(batch);
        sys::llama_free(ctx);
        sys::llama_model_free(model);
    }
    out
}

/// The native forward steers as llama.cpp does: a control vector written by tenets, applied
/// through llama.cpp's own call (`llama_set_adapter_cvec`, its loader's layout), gives the same
/// log-probs as the native forward with it — on small f32 models, where the two agree
/// unsteered to 1e-4 (Gemma's f16 GELU table aside) — while the vector moves them far, and the same vector
/// one block off does not agree.
#[test]
fn llama_cpp_and_the_native_forward_agree_with_a_control_vector_applied() {
    use rand::{Rng, SeedableRng};
    use tenets::model::steer::{self, ControlVector};
    use tenets::model::Model;
    use tenets::quant::matmul::{Compute, Kernel};
    let dir = tempfile::tempdir().unwrap();
    let compute = Compute::new(tenets::settings::default_threads(), Kernel::detect()).unwrap();
    for arch in ["llama", "qwen2", "gemma3"] {
        let path = dir.path().join(format!("{arch}.gguf"));
        common::tiny_model(&path, arch, None);
        let model = Model::open(&path).unwrap();
        let (e, layers) = (model.config().embedding, model.config().layers);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let vector = ControlVector {
            directions: (0..layers)
                .map(|l| (l >= 1).then(|| (0..e).map(|_| rng.gen_range(-0.3..0.3)).collect()))
                .collect(),
        };
        let file = dir.path().join(format!("{arch}-v.gguf"));
        steer::write(&model, &vector, &file).unwrap();
        let steered = steer::read(&model, &file).unwrap();
        assert_eq!(steered, vector);
        // llama.cpp's loader's layout: block l's direction at (l − 1)·n_embd.
        let lay_out = |shift: usize| {
            let mut data = vec![0.0f32; (layers - 1) * e];
            for l in steered.layers() {
                let at = l - 1 + shift;
                if at < layers - 1 {
                    data[at * e..(at + 1) * e].copy_from_slice(steered.at(l).unwrap());
                }
            }
            data
        };
        let tokens: Vec<u32> = (0..48)
            .map(|_| rng.gen_range(0..model.config().vocab as u32))
            .collect();
        let logprobs = |v: Option<&ControlVector>| -> Vec<f64> {
            model
                .score_steered(&compute, &tokens, None, v)
                .unwrap()
                .iter()
                .map(|s| s.logprob)
                .collect()
        };
        let (native, plain) = (logprobs(Some(&steered)), logprobs(None));
        let theirs = llama_cpp_steered_logprobs(&path, &tokens, &lay_out(0), e);
        let off = llama_cpp_steered_logprobs(&path, &tokens, &lay_out(1), e);
        let gap = |a: &[f64], b: &[f64]| {
            a.iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0f64, f64::max)
        };
        let (agree, moved, off_by_one) = (
            gap(&native, &theirs),
            gap(&native, &plain),
            gap(&native, &off),
        );
        println!("{arch}: steered {agree:.1e} from llama.cpp; moved {moved:.3}; one block off {off_by_one:.3}");
        assert!(
            moved > 0.05,
            "{arch}: the vector barely moves the log-probs ({moved})"
        );
        // Gemma: llama.cpp's CPU GELU reads an f16 table (about 1e-3 unsteered too).
        let tolerance = if arch == "gemma3" { 5e-3 } else { 1e-4 };
        assert!(agree < tolerance, "{arch}: {agree} (moved {moved})");
        assert!(
            off_by_one > 10.0 * agree,
            "{arch}: one block off agrees too ({off_by_one})"
        );
    }
}
