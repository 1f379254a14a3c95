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
}
