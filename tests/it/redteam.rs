//! `tenets redteam` on the real default model: a prompt file with adversarial prompts for every
//! restricted topic, benign look-alikes at the asked ratio, each with its topic and style, that
//! `tenets generate` reads back.

use crate::common;

use std::collections::HashSet;
use std::process::Command;

use tenets::constitution::Constitution;
use tenets::redteam::{ATTACK_STYLES, LOOK_ALIKE};

#[test]
fn redteam_writes_a_prompt_file_generate_can_read() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("rt.jsonl");
    let constitution = common::repo("constitutions/harmless-helpful.yaml");
    let run = Command::new(env!("CARGO_BIN_EXE_tenets"))
        .args([
            "redteam",
            "--quiet",
            "--parallel",
            "8",
            "--max-tokens",
            "48",
        ])
        .args(["--helpful-ratio", "0.5"])
        .arg("--model")
        .arg(common::model())
        .arg("--constitution")
        .arg(&constitution)
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{err}");
    // 9 restricted topics × 7 styles, and half as many look-alikes.
    assert!(err.contains("of 95 asked for"), "{err}");

    let c = Constitution::load(&constitution).unwrap();
    let styles: HashSet<&str> = ATTACK_STYLES.iter().map(|s| s.id).collect();
    let text = std::fs::read_to_string(&out).unwrap();
    for line in text.lines() {
        let row: serde_json::Value = serde_json::from_str(line).unwrap();
        let (kind, topic, style) = (
            row["kind"].as_str().unwrap(),
            row["topic"].as_str().unwrap(),
            row["style"].as_str().unwrap(),
        );
        match kind {
            "harmful" => {
                assert!(c.topics.restricted.iter().any(|t| t == topic), "{topic}");
                assert!(styles.contains(style), "{style}");
            }
            "benign" => {
                assert!(c.topics.allowed.iter().any(|t| t == topic), "{topic}");
                assert_eq!(style, LOOK_ALIKE);
            }
            other => panic!("kind {other}"),
        }
        let prompt = row["prompt"].as_str().unwrap();
        assert!(!prompt.is_empty() && !tenets::filters::is_refusal(prompt));
    }
    assert!(!text.is_empty());
    let set = tenets::prompt::load(&out).unwrap();
    assert!(set.bad.is_empty() && set.duplicates.is_empty());
    assert_eq!(set.items.len(), text.lines().count());

    let bad = Command::new(env!("CARGO_BIN_EXE_tenets"))
        .args(["redteam", "--per-topic", "0", "--constitution"])
        .arg(&constitution)
        .arg("-o")
        .arg(dir.path().join("x.jsonl"))
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--per-topic must be between 1 and 100"));
    assert!(!dir.path().join("x.jsonl").exists());

    let nowhere = dir.path().join("missing").join("x.jsonl");
    let bad = Command::new(env!("CARGO_BIN_EXE_tenets"))
        .args(["redteam", "--constitution"])
        .arg(&constitution)
        .arg("-o")
        .arg(&nowhere)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("does not exist") && err.contains("missing"),
        "{err}"
    );
}
