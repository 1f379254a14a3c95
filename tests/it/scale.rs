//! Past one machine: `--shard i/N` splits a prompt file into disjoint parts that array-job tasks
//! generate into their own databases, `tenets merge` joins them without duplicates, and
//! `tenets doctor` says what this build and machine can do.

use crate::common;

use std::path::Path;
use std::process::Command;

/// Model runs take every core: tests in this binary take turns.
static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn tenets() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tenets"))
}

fn generate_shard(prompts: &Path, db: &Path, shard: &str) {
    let output = tenets()
        .args([
            "generate",
            "--quiet",
            "--max-tokens",
            "16",
            "--parallel",
            "4",
        ])
        .args(["--shard", shard])
        .arg("--model")
        .arg(common::model())
        .arg("--constitution")
        .arg(common::repo("constitutions/harmless-helpful.yaml"))
        .arg("--prompts")
        .arg(prompts)
        .arg("--db")
        .arg(db)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn count(db: &Path, sql: &str) -> i64 {
    common::query(db, sql)[0][0].parse().unwrap()
}

#[test]
fn shards_partition_the_prompts_and_merge_back_without_duplicates() {
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let prompts = common::write_prompts(dir.path(), "p.jsonl", &common::prompts(9));
    let shards: Vec<_> = (0..3)
        .map(|i| {
            let db = dir.path().join(format!("shard-{i}.db"));
            generate_shard(&prompts, &db, &format!("{i}/3"));
            db
        })
        .collect();
    // Disjoint and complete: each prompt in exactly one shard.
    let per_shard: Vec<i64> = shards
        .iter()
        .map(|db| count(db, "SELECT COUNT(*) FROM steps WHERE stage = 'answer'"))
        .collect();
    assert_eq!(per_shard.iter().sum::<i64>(), 9, "{per_shard:?}");
    // Every shard is the same run (the shard is not part of the run's identity).
    let run = |db: &Path| common::query(db, "SELECT id FROM runs")[0][0].clone();
    assert!(shards.iter().all(|db| run(db) == run(&shards[0])));

    let all = dir.path().join("all.db");
    let mut args: Vec<&std::ffi::OsStr> = shards.iter().map(|p| p.as_os_str()).collect();
    // A shard given twice adds nothing the second time.
    args.push(shards[0].as_os_str());
    let output = tenets()
        .arg("merge")
        .args(&args)
        .arg("-o")
        .arg(&all)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{err}");
    assert!(err.contains("nothing new"), "{err}");
    for (stage, n) in [("answer", 9), ("critique", 9), ("revision", 9)] {
        assert_eq!(
            count(
                &all,
                &format!("SELECT COUNT(*) FROM steps WHERE stage = '{stage}'")
            ),
            n,
            "{stage}"
        );
    }
    assert_eq!(count(&all, "SELECT COUNT(*) FROM pairs"), 9);
    assert_eq!(
        count(&all, "SELECT COUNT(DISTINCT prompt_id) FROM pairs"),
        9
    );
    assert_eq!(count(&all, "SELECT COUNT(*) FROM runs"), 1);
    assert_eq!(
        common::query(&all, "PRAGMA integrity_check"),
        vec![vec!["ok"]]
    );

    // The merged database is an ordinary one: export reads it.
    let out = dir.path().join("all.jsonl");
    let status = tenets()
        .args([
            "export",
            "--include-truncated",
            "--max-similarity",
            "1",
            "--db",
        ])
        .arg(&all)
        .arg("-o")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let rows = std::fs::read_to_string(&out).unwrap().lines().count();
    assert!((1..=9).contains(&rows), "{rows} rows");

    // An existing output is never overwritten, and a bad source leaves nothing behind.
    let again = tenets()
        .arg("merge")
        .arg(&shards[1])
        .arg("-o")
        .arg(&all)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    let bogus = dir.path().join("bogus.db");
    std::fs::write(&bogus, b"this is not a database at all, not even close").unwrap();
    let fresh = dir.path().join("fresh.db");
    let bad = tenets()
        .arg("merge")
        .arg(&shards[1])
        .arg(&bogus)
        .arg("-o")
        .arg(&fresh)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("bogus.db"));
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("fresh"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn bad_shards_are_refused() {
    for shard in ["3/3", "1/0", "x/2", "1"] {
        let output = tenets()
            .args([
                "generate",
                "--constitution",
                "c.yaml",
                "--prompts",
                "p.jsonl",
            ])
            .args(["--db", "x.db", "--shard", shard])
            .output()
            .unwrap();
        assert!(!output.status.success(), "{shard}");
        let err = String::from_utf8_lossy(&output.stderr);
        assert!(
            err.contains("--shard") && err.contains(shard),
            "{shard}: {err}"
        );
    }
}

#[test]
fn doctor_reports_the_build_the_machine_and_the_model() {
    let output = tenets()
        .args(["doctor", "--json", "--model"])
        .arg(common::model())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let checks = report["checks"].as_array().unwrap();
    let value = |name: &str| {
        checks
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no {name} check"))["value"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(value("backends compiled in").contains("cpu"));
    assert!(value("model").contains("llama"), "{}", value("model"));
    assert!(
        value("native engine").contains("30 layers"),
        "{}",
        value("native engine")
    );
    assert!(value("chat template").contains("GGUF"));
    assert!(value("sqlite").starts_with('3'), "{}", value("sqlite"));
    assert!(value("offload").contains("CPU only") || value("offload").contains("possible"));

    // For any GGUF: whether the native engine (and so `train`) runs it, and if not, what it
    // lacks, by name.
    let dir = tempfile::tempdir().unwrap();
    let phi3 = dir.path().join("phi3.gguf");
    common::tiny_model(&phi3, "phi3", None);
    let yarn = dir.path().join("yarn.gguf");
    common::extended_copy(
        &phi3,
        &yarn,
        &[(
            "phi3.rope.scaling.type",
            tenets::gguf::Value::String("yarn".into()),
        )],
        &[],
    );
    let native = |model: &std::path::Path| {
        let output = tenets()
            .args(["doctor", "--json", "--model"])
            .arg(model)
            .output()
            .unwrap();
        let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        let checks = report["checks"].as_array().unwrap().clone();
        let line = checks
            .iter()
            .find(|c| c["name"] == "native engine")
            .unwrap();
        line["value"].as_str().unwrap().to_string()
    };
    let runs = native(&phi3);
    assert!(runs.starts_with("runs it (phi3): 6 layers"), "{runs}");
    let lacks = native(&yarn);
    assert!(
        lacks.contains("cannot train or score this model natively")
            && lacks.contains("RoPE scaling `yarn`"),
        "{lacks}"
    );

    // Asking for offload in a CPU build is reported, not fatal; a missing model is fatal.
    let offload = tenets()
        .args(["doctor", "--gpu-layers", "99", "--model"])
        .arg(common::model())
        .output()
        .unwrap();
    assert!(offload.status.success());
    let missing = tenets()
        .args(["doctor", "--model", "/nonexistent/m.gguf"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(1));
    let text = String::from_utf8_lossy(&missing.stdout);
    assert!(
        text.contains("FAIL") && text.contains("/nonexistent/m.gguf"),
        "{text}"
    );
}
