//! An installed binary finds its data wherever it runs: a copy of `tenets` in an empty folder,
//! with `$HOME` an empty folder of its own and no `TENETS_*` or `XDG_*` variables (so nothing
//! can lead it back to this checkout), writes and checks a constitution, fetches the default
//! model into its data folder (from a local copy: no test uses the network), passes `doctor`,
//! and runs the demo job — generate on the bundled constitution and prompts, stats, export,
//! train — on a shard of the demo prompts.

use crate::common;
use common::text;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

struct Installed {
    bin: PathBuf,
    home: tempfile::TempDir,
    work: tempfile::TempDir,
    _bin_dir: tempfile::TempDir,
}

impl Installed {
    fn new() -> Self {
        let bin_dir = tempfile::tempdir().unwrap();
        let bin = bin_dir.path().join("tenets");
        std::fs::copy(env!("CARGO_BIN_EXE_tenets"), &bin).unwrap();
        Installed {
            bin,
            home: tempfile::tempdir().unwrap(),
            work: tempfile::tempdir().unwrap(),
            _bin_dir: bin_dir,
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(&self.bin);
        for var in [
            "TENETS_HOME",
            "TENETS_MODEL",
            "XDG_DATA_HOME",
            "XDG_CONFIG_HOME",
            "CARGO_MANIFEST_DIR",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("HOME", self.home.path())
            .current_dir(self.work.path())
            .args(args)
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        text(&out)
    }

    fn data(&self) -> PathBuf {
        self.home.path().join(".local/share/tenets")
    }
}

#[test]
fn an_installed_binary_finds_its_data() {
    let _guard = common::MODEL_LOCK.blocking_lock();
    let t = Installed::new();
    t.ok(&["init", "my-values"]);
    t.ok(&["validate", "my-values.yaml"]);

    // No model yet: doctor says how to get one, and fails.
    let out = t.run(&["doctor"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("tenets fetch-model"), "{}", text(&out));
    let fetched = t.ok(&["fetch-model", "--from", common::model().to_str().unwrap()]);
    let model = t
        .data()
        .join("models")
        .join(tenets::home::DEFAULT_MODEL_FILE);
    assert!(fetched.contains(&model.display().to_string()), "{fetched}");
    assert!(model.is_file());
    // A file that is not the model is refused, and nothing is written.
    let wrong = t.work.path().join("my-values.yaml");
    let out = t.run(&[
        "fetch-model",
        "gemma3-270m",
        "--from",
        wrong.to_str().unwrap(),
    ]);
    assert!(
        !out.status.success() && text(&out).contains("SHA-256"),
        "{}",
        text(&out)
    );
    assert!(!t
        .data()
        .join("models")
        .join(tenets::home::SECOND_MODEL_FILE)
        .exists());
    t.ok(&["doctor"]);

    // The demo job on an eighth of the bundled demo prompts, by the names the bundled files go
    // by (the checkout path of the constitution resolves to the bundled one here).
    t.ok(&[
        "generate",
        "--constitution",
        "constitutions/harmless-helpful.yaml",
        "--prompts",
        "demo",
        "--db",
        "demo.db",
        "--shard",
        "0/8",
        "--max-tokens",
        "6",
        "--parallel",
        "8",
        "--quiet",
    ]);
    let bundled = t.data().join("bundled").join(env!("CARGO_PKG_VERSION"));
    assert!(bundled
        .join("constitutions/harmless-helpful.yaml")
        .is_file());
    assert!(bundled.join("prompts/sets/demo.jsonl").is_file());
    assert!(t.ok(&["stats", "--db", "demo.db"]).contains("revision"));
    t.ok(&[
        "export",
        "--db",
        "demo.db",
        "--include-truncated",
        "-o",
        "demo-dpo.jsonl",
    ]);
    let rows = std::fs::read_to_string(t.work.path().join("demo-dpo.jsonl")).unwrap();
    assert!(rows.lines().count() >= 2, "{rows}");
    t.ok(&[
        "train",
        "--db",
        "demo.db",
        "--include-truncated",
        "--out",
        "demo-adapter.gguf",
        "--steps",
        "1",
        "--max-length",
        "256",
        "--no-final-eval",
        "--quiet",
    ]);
    assert!(Path::new(t.work.path()).join("demo-adapter.gguf").is_file());
}
