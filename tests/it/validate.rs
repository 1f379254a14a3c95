//! Constitution validation: a corpus of broken files, each naming the problems it must produce
//! (`# expect: LINE:COL: message` lines at its top), the bundled constitutions, and the CLI's
//! `file:line:col: message` output and exit code.

use std::path::{Path, PathBuf};
use std::process::Command;

use tenets::constitution::Constitution;

fn corpus() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bad-constitutions");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("fixture directory")
        .map(|e| e.expect("dir entry").path())
        .collect();
    files.sort();
    files
}

/// `(line, col, message)` expectations from a fixture's header.
fn expectations(text: &str) -> Vec<(usize, usize, String)> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# expect: "))
        .map(|rest| {
            let mut parts = rest.splitn(3, ':');
            let line = parts.next().unwrap().trim().parse().unwrap();
            let col = parts.next().unwrap().trim().parse().unwrap();
            (line, col, parts.next().unwrap().trim().to_string())
        })
        .collect()
}

#[test]
fn every_broken_constitution_reports_its_problems_where_they_are() {
    let files = corpus();
    assert!(files.len() >= 15, "corpus has {} files", files.len());
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let expected = expectations(&text);
        assert!(
            !expected.is_empty(),
            "{} has no expectations",
            file.display()
        );
        let err = Constitution::load(&file).expect_err(&format!("{} should fail", file.display()));
        let problems = err.problems();
        for (line, col, message) in &expected {
            assert!(
                problems.iter().any(|p| p.line == *line
                    && p.col == *col
                    && p.message.contains(message.as_str())),
                "{}: expected {line}:{col}: {message}\n got: {problems:#?}",
                file.display()
            );
        }
        // The rendered error names the file on every line.
        for line in err.to_string().lines() {
            assert!(line.starts_with(&file.display().to_string()), "{line}");
        }
    }
}

#[test]
fn bundled_constitutions_are_valid_and_substantial() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("constitutions");
    let general = Constitution::load(&dir.join("harmless-helpful.yaml")).unwrap();
    assert!(general.principles.len() >= 12);
    // Principles against over-refusal and preachiness are part of it.
    for id in ["needless-refusal", "not-preachy"] {
        assert!(general.principle(id).is_some(), "{id}");
    }
    assert!(!general.comparisons.is_empty());
    assert!(!general.topics.allowed.is_empty() && !general.topics.restricted.is_empty());
    let medical = Constitution::load(&dir.join("medical-info.yaml")).unwrap();
    assert!(medical.principles.len() >= 4);
}

#[test]
fn cli_validate_prints_file_line_col_and_fails() {
    let bad = corpus()
        .into_iter()
        .find(|p| p.to_string_lossy().contains("01-unknown-field"))
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tenets"))
        .arg("validate")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{}:7:5: unknown field", bad.display())),
        "{stderr}"
    );

    let good = Path::new(env!("CARGO_MANIFEST_DIR")).join("constitutions/harmless-helpful.yaml");
    let out = Command::new(env!("CARGO_BIN_EXE_tenets"))
        .arg("validate")
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn not_utf8_is_reported_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("latin1.yaml");
    std::fs::write(&path, b"name: t\ndescription: caf\xe9\n").unwrap();
    let err = Constitution::load(&path).unwrap_err();
    assert_eq!(err.problems()[0].line, 2);
    assert!(err.problems()[0].message.contains("UTF-8"));
}

#[test]
fn init_writes_a_valid_starter_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_tenets"))
            .args(["init", "mine"])
            .current_dir(dir.path())
            .output()
            .unwrap()
    };
    assert!(run().status.success());
    Constitution::load(&dir.path().join("mine.yaml")).unwrap();
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("constitution.schema.json")).unwrap(),
    )
    .unwrap();
    assert!(schema["properties"]["principles"].is_object());
    let again = run();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
}

#[test]
fn schema_command_prints_json_schema() {
    let out = Command::new(env!("CARGO_BIN_EXE_tenets"))
        .arg("schema")
        .output()
        .unwrap();
    assert!(out.status.success());
    let schema: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(schema["additionalProperties"], serde_json::json!(false));
    let weight = &schema["definitions"]["Principle"]["properties"]["weight"];
    assert_eq!(weight["exclusiveMinimum"], serde_json::json!(0.0));
}

#[test]
fn the_committed_schema_file_matches_the_code() {
    // The bundled constitutions point editors at ./constitution.schema.json; keep it current
    // with `tenets schema > constitution.schema.json`.
    let committed: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("constitution.schema.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(committed, tenets::constitution::json_schema());
}
