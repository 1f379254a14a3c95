//! Bad input at the command line: a clear message naming the file and place, a non-zero exit,
//! no panic, and no database created. None of these load the model.

use crate::common;

use std::path::Path;
use std::process::{Command, Output};

fn generate(dir: &Path, extra: &[&str], constitution: &Path, prompts: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tenets"))
        .arg("generate")
        .arg("--model")
        .arg(common::model())
        .arg("--constitution")
        .arg(constitution)
        .arg("--prompts")
        .arg(prompts)
        .arg("--db")
        .arg(dir.join("out.db"))
        .args(extra)
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_clean_failure(out: &Output, dir: &Path, needle: &str) {
    let err = stderr(out);
    assert!(!out.status.success(), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains(needle), "expected {needle:?} in:\n{err}");
    assert!(!dir.join("out.db").exists(), "a database was created");
}

#[test]
fn strict_stops_on_a_bad_prompt_line_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("p.jsonl");
    std::fs::write(
        &prompts,
        "{\"prompt\": \"fine\"}\n{\"prompt\": 3}\n{\"prompt\": \"also fine\"}\n",
    )
    .unwrap();
    let out = generate(
        dir.path(),
        &["--strict"],
        &common::repo("constitutions/harmless-helpful.yaml"),
        &prompts,
    );
    assert_clean_failure(
        &out,
        dir.path(),
        &format!("{}:2: invalid JSON", prompts.display()),
    );
}

#[test]
fn a_broken_constitution_is_reported_with_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let constitution = dir.path().join("c.yaml");
    std::fs::write(
        &constitution,
        "name: t\nprinciples:\n  - id: a\n    critique_request: c\n",
    )
    .unwrap();
    let prompts = common::write_prompts(dir.path(), "p.jsonl", &common::prompts(1));
    let out = generate(dir.path(), &[], &constitution, &prompts);
    assert_clean_failure(
        &out,
        dir.path(),
        &format!(
            "{}:3:5: missing field `revision_request`",
            constitution.display()
        ),
    );
}

#[test]
fn bad_flags_and_missing_files_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let constitution = common::repo("constitutions/harmless-helpful.yaml");
    let prompts = common::write_prompts(dir.path(), "p.jsonl", &common::prompts(1));

    let out = generate(dir.path(), &["--rounds", "9"], &constitution, &prompts);
    assert_clean_failure(
        &out,
        dir.path(),
        "--rounds must be between 0 (answers only) and 4",
    );

    let out = generate(dir.path(), &["--top-p", "0"], &constitution, &prompts);
    assert_clean_failure(&out, dir.path(), "--top-p");

    let out = generate(
        dir.path(),
        &[],
        &constitution,
        &dir.path().join("nope.jsonl"),
    );
    assert_clean_failure(&out, dir.path(), "nope.jsonl");

    // `reward train` names an objective it would otherwise override, and writes nothing.
    let rm = dir.path().join("rm.gguf");
    let out = Command::new(env!("CARGO_BIN_EXE_tenets"))
        .args(["reward", "train", "--objective", "sft", "--data"])
        .arg(common::repo("tests/fixtures/dpo-pairs-64.jsonl"))
        .arg("--out")
        .arg(&rm)
        .output()
        .unwrap();
    assert_clean_failure(&out, dir.path(), "--objective sft");
    assert!(!rm.exists() && !dir.path().join("rm.train.db").exists());

    let not_a_model = dir.path().join("model.gguf");
    std::fs::write(&not_a_model, b"definitely not a model").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tenets"))
        .args(["generate", "--constitution"])
        .arg(&constitution)
        .arg("--prompts")
        .arg(&prompts)
        .arg("--db")
        .arg(dir.path().join("out.db"))
        .arg("--model")
        .arg(&not_a_model)
        .output()
        .unwrap();
    assert_clean_failure(&out, dir.path(), "not a GGUF file");

    let templates = dir.path().join("templates");
    std::fs::create_dir(&templates).unwrap();
    std::fs::write(
        templates.join("critique.jinja"),
        "{{ principle.critique_requets }}",
    )
    .unwrap();
    std::fs::write(
        templates.join("revision.jinja"),
        "{{ principle.revision_request }}",
    )
    .unwrap();
    let out = generate(
        dir.path(),
        &["--templates", templates.to_str().unwrap()],
        &constitution,
        &prompts,
    );
    assert_clean_failure(&out, dir.path(), "critique.jinja");
}

#[test]
fn export_and_stats_need_an_existing_database() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("none.db");
    for args in [
        vec!["stats", "--db", missing.to_str().unwrap()],
        vec!["export", "--db", missing.to_str().unwrap(), "-o", "x.jsonl"],
        vec!["label", "--db", missing.to_str().unwrap()],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_tenets"))
            .args(&args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));
        assert!(!missing.exists());
    }
}

#[test]
fn gpu_layers_without_a_gpu_backend_warns_loudly_and_runs_on_the_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = common::write_prompts(dir.path(), "p.jsonl", &common::prompts(1));
    let out = generate(
        dir.path(),
        &["--gpu-layers", "99", "--max-tokens", "4", "--quiet"],
        &common::repo("constitutions/harmless-helpful.yaml"),
        &prompts,
    );
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    if !tenets::engine::gpu_offload_available().unwrap() {
        assert!(err.contains("no GPU backend"), "{err}");
    }
    assert!(err.contains("3 steps written"), "{err}");
}

#[test]
fn a_truncated_model_is_named_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let model = std::fs::read(common::model()).unwrap();
    let truncated = dir.path().join("truncated.gguf");
    std::fs::write(&truncated, &model[..3_000_000]).unwrap();
    let prompts = common::write_prompts(dir.path(), "p.jsonl", &common::prompts(1));
    let out = Command::new(env!("CARGO_BIN_EXE_tenets"))
        .args(["generate", "--model"])
        .arg(&truncated)
        .arg("--constitution")
        .arg(common::repo("constitutions/harmless-helpful.yaml"))
        .arg("--prompts")
        .arg(&prompts)
        .arg("--db")
        .arg(dir.path().join("out.db"))
        .output()
        .unwrap();
    assert_clean_failure(&out, dir.path(), "truncated.gguf");
    assert!(
        stderr(&out).contains("past the end of the file"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_file_that_is_not_a_database_is_named_once_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("notes.db");
    std::fs::write(&db, "my notes\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tenets"))
        .args(["stats", "--db"])
        .arg(&db)
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(err.contains(&format!("{}", db.display())), "{err}");
    assert_eq!(err.matches("file is not a database").count(), 1, "{err}");
    assert_eq!(std::fs::read_to_string(&db).unwrap(), "my notes\n");
}

#[test]
fn label_settings_and_an_empty_database_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("empty.db");
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_tenets"))
            .arg("label")
            .arg("--db")
            .arg(&db)
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&["--questions", "0"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("--questions must be at least 1"),
        "{}",
        stderr(&out)
    );
    // A database with the schema but no generate run: nothing to take a judge from.
    std::fs::write(&db, b"").unwrap();
    let out = run(&[]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("holds no generate run"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("panicked"));
    let frames = dir.path().join("frames");
    std::fs::create_dir(&frames).unwrap();
    std::fs::write(frames.join("judge.jinja"), "{{ conversation }} {{ typo }}").unwrap();
    let out = run(&[
        "--model",
        common::model().to_str().unwrap(),
        "--constitution",
        common::repo("constitutions/harmless-helpful.yaml")
            .to_str()
            .unwrap(),
        "--templates",
        frames.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("judge.jinja") && err.contains("undefined"),
        "{err}"
    );
}

/// docs/commands.md is the reference: every flag each command's `--help` lists is written in
/// that command's section, or among the flags several commands share.
#[test]
fn every_flag_in_help_is_documented() {
    let docs = std::fs::read_to_string(common::repo("docs/commands.md")).unwrap();
    // Sections by `## ` heading; a heading names the commands it covers as `tenets NAME`.
    let mut sections: Vec<(String, String)> = Vec::new();
    for block in docs.split("\n## ").skip(1) {
        let (heading, body) = block.split_once('\n').unwrap_or((block, ""));
        sections.push((heading.to_string(), body.to_string()));
    }
    let shared = sections
        .iter()
        .find(|(h, _)| h.starts_with("Flags several commands share"))
        .map(|(_, b)| b.clone())
        .expect("a section of shared flags");
    let help = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_tenets"))
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let top = help(&["--help"]);
    let commands: Vec<String> = top
        .split("Commands:")
        .nth(1)
        .unwrap()
        .lines()
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(String::from)
        .collect();
    assert!(commands.len() >= 16, "{commands:?}");
    let (mut missing, mut checked) = (Vec::new(), 0);
    for command in &commands {
        let section = sections
            .iter()
            .filter(|(h, _)| h.contains(&format!("`tenets {command}`")))
            .map(|(_, b)| b.as_str())
            .collect::<Vec<_>>()
            .join("\n");
        if section.is_empty() {
            missing.push(format!("{command}: no section"));
            continue;
        }
        // A command with subcommands (`tenets reward train`): each one's flags too.
        let own = help(&[command, "--help"]);
        let mut texts = vec![own.clone()];
        if let Some(list) = own.split("Commands:").nth(1) {
            for sub in list
                .lines()
                .skip(1)
                .take_while(|l| !l.trim().is_empty())
                .filter_map(|l| l.split_whitespace().next())
                .filter(|c| *c != "help")
            {
                texts.push(help(&[command, sub, "--help"]));
            }
        }
        for line in texts.iter().flat_map(|t| t.lines()) {
            let line = line.trim_start();
            if !line.starts_with('-') {
                continue;
            }
            // The flag part of the line: up to the first two spaces (the help text follows).
            let spec = line.split("  ").next().unwrap_or("");
            for flag in spec
                .split([',', ' '])
                .map(|w| w.trim_end_matches('.'))
                .filter(|w| w.starts_with("--") && w.len() > 2)
            {
                let documented = |text: &str| {
                    text.match_indices(flag).any(|(at, _)| {
                        // The whole flag, not the start of a longer one.
                        !text[at + flag.len()..]
                            .starts_with(|c: char| c.is_ascii_alphanumeric() || c == '-')
                    })
                };
                checked += 1;
                if !documented(&section) && !documented(&shared) {
                    missing.push(format!("{command} {flag}"));
                }
            }
        }
    }
    assert!(missing.is_empty(), "not in docs/commands.md: {missing:?}");
    assert!(checked > 150, "only {checked} flags read from --help");
}
