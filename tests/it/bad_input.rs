//! The bad-input corpus: hostile and broken constitutions, prompt files, models, adapters,
//! datasets, flags and databases. Every case must fail with a clear message naming the input
//! (and the place, where there is one), a non-zero exit and no panic, and leave every file that
//! was there before exactly as it was — nothing created, nothing half-written.

use crate::common;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Command;

/// The files the cases use, written once into a temporary folder.
struct Corpus {
    dir: tempfile::TempDir,
}

impl Corpus {
    fn new() -> Self {
        let corpus = Corpus {
            dir: tempfile::tempdir().unwrap(),
        };
        let good =
            std::fs::read_to_string(common::repo("constitutions/harmless-helpful.yaml")).unwrap();
        // Constitutions.
        let mut bomb = String::from(
            "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
        );
        let mut previous = 'a';
        for name in "bcdefghi".chars() {
            let refs = vec![format!("*{previous}"); 9].join(",");
            bomb += &format!("{name}: &{name} [{refs}]\n");
            previous = name;
        }
        bomb += "name: bomb\nprinciples: *i\n";
        corpus.write("bomb.yaml", bomb.as_bytes());
        let huge = format!("name: \"{}\"\nprinciples: []\n", "x".repeat(20 << 20));
        corpus.write("huge.yaml", huge.as_bytes());
        let deep = format!(
            "name: x\nprinciples: {}{}\n",
            "[".repeat(50_000),
            "]".repeat(50_000)
        );
        corpus.write("deep.yaml", deep.as_bytes());
        corpus.write("latin1.yaml", b"name: caf\xe9\nprinciples: []\n");
        corpus.write("empty.yaml", b"");
        corpus.write("binary.yaml", &[0u8, 159, 146, 150, 0, 1, 2, 255]);
        corpus.write("tabs.yaml", b"name: x\nprinciples:\n\t- id: a\n");
        corpus.write(
            "types.yaml",
            good.replacen("name: harmless-helpful", "name: [1, 2]", 1)
                .as_bytes(),
        );
        corpus.write(
            "unknown.yaml",
            good.replacen("principles:", "principels: []\nprinciples:", 1)
                .as_bytes(),
        );
        corpus.write(
            "weight.yaml",
            good.replacen("  - id: ", "  - weight: -1\n    id: ", 1)
                .as_bytes(),
        );
        let first = good.find("  - id: ").unwrap();
        let line_end = first + good[first..].find('\n').unwrap();
        let id_line = &good[first..line_end];
        corpus.write(
            "duplicate.yaml",
            good.replacen(
                "  - id: ",
                &format!("{id_line}\n    critique_request: a\n    revision_request: b\n  - id: "),
                1,
            )
            .as_bytes(),
        );
        corpus.write("noprinciples.yaml", b"name: x\nprinciples: []\n");
        corpus.write("scalar.yaml", b"just a string\n");
        // Prompt files.
        corpus.write("good.jsonl", b"{\"prompt\": \"hello\"}\n");
        corpus.write("badjson.jsonl", b"{\"prompt\": \"ok\"}\n{\"prompt\": \n");
        corpus.write(
            "encoding.jsonl",
            b"{\"prompt\": \"ok\"}\n{\"prompt\": \"caf\xe9\"}\n",
        );
        let long = format!(
            "{{\"prompt\": \"ok\"}}\n{{\"prompt\": \"{}\"}}\n",
            "x".repeat(300_000)
        );
        corpus.write("oversize.jsonl", long.as_bytes());
        corpus.write(
            "role.jsonl",
            b"{\"messages\": [{\"role\": \"wizard\", \"content\": \"x\"}]}\n",
        );
        corpus.write("array.jsonl", b"[1, 2, 3]\n");
        corpus.write("nocolumn.csv", b"text\nhello\n");
        corpus.write("encoding.csv", b"prompt\nok\n\xff\xfe bad\n");
        corpus.write("corrupt.parquet", b"PAR1 this is not parquet");
        corpus.write("blank.jsonl", b"\n\n");
        // Models and adapters.
        let model = std::fs::read(common::model()).unwrap();
        corpus.write("truncated.gguf", &model[..100_000]);
        corpus.write("magic.gguf", b"GGUX\x03\x00\x00\x00\x00\x00\x00\x00");
        corpus.write("zero.gguf", b"");
        let mut counts = b"GGUF".to_vec();
        counts.extend_from_slice(&3u32.to_le_bytes());
        counts.extend_from_slice(&1_000_000_000_000u64.to_le_bytes());
        counts.extend_from_slice(&1u64.to_le_bytes());
        corpus.write("counts.gguf", &counts);
        std::fs::create_dir(corpus.path("folder.gguf")).unwrap();
        // Small llama files whose features the native forward does not implement: LongRoPE's
        // factors on a llama, and a tokenizer larger than the embedding table.
        let tiny = tempfile::tempdir().unwrap();
        common::tiny_model(&tiny.path().join("t.gguf"), "llama", None);
        common::extended_copy(
            &tiny.path().join("t.gguf"),
            &corpus.path("longrope.gguf"),
            &[],
            &[("rope_factors_long.weight", 16)],
        );
        common::tiny_model(&corpus.path("smallembd.gguf"), "llama", Some(256));
        // Datasets.
        corpus.write(
            "pairs-bad.jsonl",
            b"{\"prompt\": \"p\", \"chosen\": \"c\"}\n",
        );
        corpus.write(
            "pairs-good.jsonl",
            b"{\"prompt\": \"p\", \"chosen\": \"c\", \"rejected\": \"r\"}\n",
        );
        corpus.write("text.txt", b"Hello there.");
        corpus.write(
            "pairs-label.jsonl",
            b"{\"prompt\": \"p\", \"chosen\": \"c\", \"rejected\": \"r\", \"label\": 7}\n",
        );
        // Databases.
        corpus.write(
            "garbage.db",
            b"this is not a SQLite database, and it must stay exactly so",
        );
        corpus
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, bytes: &[u8]) {
        std::fs::write(self.path(name), bytes).unwrap();
    }

    /// Every file in the folder and its bytes (folders as empty).
    fn snapshot(&self) -> BTreeMap<String, Vec<u8>> {
        std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let name = e.file_name().to_string_lossy().into_owned();
                let bytes = if e.path().is_dir() {
                    Vec::new()
                } else {
                    std::fs::read(e.path()).unwrap()
                };
                (name, bytes)
            })
            .collect()
    }
}

/// One case: a command line, and what its message must name.
struct Case {
    name: &'static str,
    args: Vec<OsString>,
    expect: Vec<String>,
}

fn case(name: &'static str, args: &[&dyn AsRef<std::ffi::OsStr>], expect: &[&str]) -> Case {
    Case {
        name,
        args: args.iter().map(|a| a.as_ref().to_os_string()).collect(),
        expect: expect.iter().map(|s| s.to_string()).collect(),
    }
}

#[test]
fn every_bad_input_fails_clearly_and_changes_nothing() {
    let c = Corpus::new();
    let p = |n: &str| c.path(n);
    let model = common::model();
    let constitution = common::repo("constitutions/harmless-helpful.yaml");
    let generate = |extra: &[&dyn AsRef<std::ffi::OsStr>]| -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "generate".into(),
            "--quiet".into(),
            "--model".into(),
            model.clone().into(),
            "--constitution".into(),
            constitution.clone().into(),
            "--prompts".into(),
            p("good.jsonl").into(),
            "--db".into(),
            p("new.db").into(),
        ];
        // A case's flag replaces the default's value (clap refuses a flag given twice); other
        // flags are added.
        let mut i = 0;
        while i < extra.len() {
            let flag = extra[i].as_ref().to_os_string();
            let value = extra
                .get(i + 1)
                .map(|v| v.as_ref().to_os_string())
                .filter(|v| !v.to_string_lossy().starts_with("--"));
            i += 1 + usize::from(value.is_some());
            match (args.iter().position(|a| *a == flag), value) {
                (Some(pos), Some(value)) => args[pos + 1] = value,
                (_, value) => {
                    args.push(flag);
                    args.extend(value);
                }
            }
        }
        args
    };
    let with = |name: &'static str, args: Vec<OsString>, expect: &[&str]| Case {
        name,
        args,
        expect: expect.iter().map(|s| s.to_string()).collect(),
    };

    let mut cases = vec![
        // Constitutions (validate reads them as authors do).
        case(
            "alias bomb",
            &[&"validate", &p("bomb.yaml")],
            &["bomb.yaml:", "aliases"],
        ),
        case(
            "huge scalar",
            &[&"validate", &p("huge.yaml")],
            &["huge.yaml:2:", "principles"],
        ),
        case(
            "deep nesting",
            &[&"validate", &p("deep.yaml")],
            &["deep.yaml:2:", "recursion"],
        ),
        case(
            "latin-1 bytes",
            &[&"validate", &p("latin1.yaml")],
            &["latin1.yaml:1:", "UTF-8"],
        ),
        case(
            "empty constitution",
            &[&"validate", &p("empty.yaml")],
            &["empty.yaml"],
        ),
        case(
            "binary constitution",
            &[&"validate", &p("binary.yaml")],
            &["binary.yaml"],
        ),
        case(
            "tab indentation",
            &[&"validate", &p("tabs.yaml")],
            &["tabs.yaml:3:"],
        ),
        case(
            "wrong type",
            &[&"validate", &p("types.yaml")],
            &["types.yaml:", "name"],
        ),
        case(
            "unknown field",
            &[&"validate", &p("unknown.yaml")],
            &["unknown.yaml:", "principels"],
        ),
        case(
            "negative weight",
            &[&"validate", &p("weight.yaml")],
            &["weight.yaml:", "weight"],
        ),
        case(
            "duplicate id",
            &[&"validate", &p("duplicate.yaml")],
            &["duplicate.yaml:", "duplicate"],
        ),
        case(
            "no principles",
            &[&"validate", &p("noprinciples.yaml")],
            &["noprinciples.yaml:2:", "principles"],
        ),
        case(
            "a scalar document",
            &[&"validate", &p("scalar.yaml")],
            &["scalar.yaml:1:"],
        ),
        case(
            "missing constitution",
            &[&"validate", &p("absent.yaml")],
            &["absent.yaml"],
        ),
        with(
            "generate with a bomb",
            generate(&[&"--constitution", &p("bomb.yaml")]),
            &["bomb.yaml:"],
        ),
        // Prompt files (--strict: a bad line stops everything).
        with(
            "bad JSON line",
            generate(&[&"--prompts", &p("badjson.jsonl"), &"--strict"]),
            &["badjson.jsonl:2:", "invalid JSON"],
        ),
        with(
            "bad encoding",
            generate(&[&"--prompts", &p("encoding.jsonl"), &"--strict"]),
            &["encoding.jsonl:2:", "UTF-8"],
        ),
        with(
            "oversize line",
            generate(&[&"--prompts", &p("oversize.jsonl"), &"--strict"]),
            &["oversize.jsonl:2:", "byte limit"],
        ),
        with(
            "unknown role",
            generate(&[&"--prompts", &p("role.jsonl"), &"--strict"]),
            &["role.jsonl:1:", "role"],
        ),
        with(
            "not an object",
            generate(&[&"--prompts", &p("array.jsonl"), &"--strict"]),
            &["array.jsonl:1:"],
        ),
        with(
            "CSV without prompt column",
            generate(&[&"--prompts", &p("nocolumn.csv")]),
            &["nocolumn.csv", "prompt"],
        ),
        with(
            "CSV bad encoding",
            generate(&[&"--prompts", &p("encoding.csv"), &"--strict"]),
            &["encoding.csv:3:", "UTF-8"],
        ),
        with(
            "corrupt Parquet",
            generate(&[&"--prompts", &p("corrupt.parquet")]),
            &["corrupt.parquet", "Parquet"],
        ),
        with(
            "missing prompt file",
            generate(&[&"--prompts", &p("absent.jsonl")]),
            &["absent.jsonl"],
        ),
        with(
            "no prompts at all",
            generate(&[&"--prompts", &p("blank.jsonl")]),
            &["blank.jsonl"],
        ),
        // Models and adapters.
        with(
            "truncated GGUF",
            generate(&[&"--model", &p("truncated.gguf")]),
            &["truncated.gguf", "truncated at byte"],
        ),
        with(
            "bad magic",
            generate(&[&"--model", &p("magic.gguf")]),
            &["magic.gguf", "not a GGUF"],
        ),
        with(
            "empty GGUF",
            generate(&[&"--model", &p("zero.gguf")]),
            &["zero.gguf", "not a GGUF"],
        ),
        with(
            "impossible tensor count",
            generate(&[&"--model", &p("counts.gguf")]),
            &["counts.gguf", "tensors"],
        ),
        with(
            "a folder as the model",
            generate(&[&"--model", &p("folder.gguf")]),
            &["folder.gguf", "folder"],
        ),
        with(
            "missing model",
            generate(&[&"--model", &p("absent.gguf")]),
            &["absent.gguf"],
        ),
        with(
            "truncated adapter",
            generate(&[&"--lora", &p("truncated.gguf")]),
            &["truncated.gguf", "truncated at byte"],
        ),
        with(
            "a model as the adapter",
            generate(&[&"--lora", &model]),
            &["not a LoRA adapter"],
        ),
        case(
            "score with a corrupt model",
            &[
                &"score",
                &"--model",
                &p("truncated.gguf"),
                &"--text-file",
                &p("text.txt"),
            ],
            &["truncated.gguf"],
        ),
        // Flags.
        with(
            "no parallel slots",
            generate(&[&"--parallel", &"0"]),
            &["--parallel"],
        ),
        with(
            "negative temperature",
            generate(&[&"--temperature", &"-1"]),
            &["--temperature"],
        ),
        with("top-p over 1", generate(&[&"--top-p", &"2"]), &["--top-p"]),
        with(
            "too many rounds",
            generate(&[&"--rounds", &"9"]),
            &["--rounds"],
        ),
        with(
            "greedy samples",
            generate(&[
                &"--samples",
                &"3",
                &"--temperature",
                &"0",
                &"--rounds",
                &"0",
            ]),
            &["--samples", "--temperature"],
        ),
        with(
            "too many samples",
            generate(&[&"--samples", &"99", &"--rounds", &"0"]),
            &["--samples"],
        ),
        with(
            "zero threads",
            generate(&[&"--threads", &"0"]),
            &["--threads"],
        ),
        with("tiny context", generate(&[&"--ctx", &"10"]), &["--ctx"]),
        with(
            "shard out of range",
            generate(&[&"--shard", &"5/2"]),
            &["--shard", "5/2"],
        ),
        with(
            "unknown flag",
            generate(&[&"--temprature", &"1"]),
            &["--temprature"],
        ),
        case(
            "train without data",
            &[&"train", &"--out", &p("a.gguf")],
            &["--data"],
        ),
        case(
            "train on half pairs",
            &[
                &"train",
                &"--data",
                &p("pairs-bad.jsonl"),
                &"--out",
                &p("a.gguf"),
            ],
            &["pairs-bad.jsonl:1", "rejected"],
        ),
        case(
            "train with a label out of range",
            &[
                &"train",
                &"--data",
                &p("pairs-label.jsonl"),
                &"--out",
                &p("a.gguf"),
            ],
            &["pairs-label.jsonl:1", "label"],
        ),
        case(
            "train on a corrupt model",
            &[
                &"train",
                &"--model",
                &p("truncated.gguf"),
                &"--data",
                &p("pairs-good.jsonl"),
                &"--out",
                &p("a.gguf"),
            ],
            &["truncated.gguf"],
        ),
        // Databases.
        with(
            "a database that is not one",
            generate(&[&"--db", &p("garbage.db")]),
            &["garbage.db", "not a database"],
        ),
        with(
            "a database in a missing folder",
            generate(&[&"--db", &p("nowhere/x.db")]),
            &["nowhere", "does not exist"],
        ),
        with(
            "an unwritable database place",
            generate(&[&"--db", &"/proc/tenets-test.db"]),
            &["/proc/tenets-test.db"],
        ),
        case(
            "stats of a missing database",
            &[&"stats", &"--db", &p("absent.db")],
            &["absent.db", "does not exist"],
        ),
        case(
            "stats of garbage",
            &[&"stats", &"--db", &p("garbage.db")],
            &["garbage.db"],
        ),
        case(
            "export from garbage",
            &[
                &"export",
                &"--db",
                &p("garbage.db"),
                &"-o",
                &p("nowhere/x.jsonl"),
            ],
            &["garbage.db"],
        ),
        case(
            "merge garbage",
            &[&"merge", &p("garbage.db"), &"-o", &p("merged.db")],
            &["garbage.db"],
        ),
        case(
            "label a missing database",
            &[&"label", &"--db", &p("absent.db")],
            &["absent.db"],
        ),
        case(
            "label with a reversed --cot-clamp",
            &[
                &"label",
                &"--db",
                &p("absent.db"),
                &"--cot",
                &"--cot-clamp",
                &"0.6,0.4",
            ],
            &["--cot-clamp 0.6,0.4", "0 ≤ LOW ≤ 0.5 ≤ HIGH ≤ 1"],
        ),
        case(
            "label with a NaN in --cot-clamp",
            &[
                &"label",
                &"--db",
                &p("absent.db"),
                &"--cot",
                &"--cot-clamp",
                &"nan,0.6",
            ],
            &["--cot-clamp NaN,0.6"],
        ),
        case(
            "label with a --cot-clamp past 1",
            &[
                &"label",
                &"--db",
                &p("absent.db"),
                &"--cot",
                &"--cot-clamp",
                &"0.2,1.5",
            ],
            &["--cot-clamp 0.2,1.5"],
        ),
        case(
            "score a model with LongRoPE factors on a llama natively",
            &[
                &"score",
                &"--engine",
                &"native",
                &"--model",
                &p("longrope.gguf"),
                &"--text-file",
                &p("text.txt"),
            ],
            &["longrope.gguf", "tensor `rope_factors_long.weight`"],
        ),
        case(
            "score a model whose tokenizer outgrows its embedding table",
            &[
                &"score",
                &"--engine",
                &"native",
                &"--model",
                &p("smallembd.gguf"),
                &"--text-file",
                &p("text.txt"),
            ],
            &["smallembd.gguf", "embedding table has only 256 rows"],
        ),
        case(
            "report on garbage",
            &[&"report", &"--db", &p("garbage.db"), &"-o", &p("r.html")],
            &["garbage.db"],
        ),
        case(
            "eval with a corrupt adapter",
            &[
                &"eval",
                &"--constitution",
                &constitution,
                &"--lora",
                &p("truncated.gguf"),
                &"--db",
                &p("e.db"),
            ],
            &["truncated.gguf"],
        ),
        case(
            "eval on prompts it was trained on",
            &[
                &"eval",
                &"--constitution",
                &constitution,
                &"--prompts",
                &p("good.jsonl"),
                &"--trained-on",
                &p("good.jsonl"),
                &"--db",
                &p("e.db"),
            ],
            &[
                "1 evaluation prompt(s) were trained on",
                "good.jsonl:1: also in the training prompts at",
            ],
        ),
    ];
    // `tenets serve`: a bad flag, constitution or port stops it before anything listens and
    // before its decision log exists.
    let good = std::fs::read_to_string(&constitution).unwrap();
    c.write(
        "badguard.yaml",
        good.replacen("'\\bhide income\\b'", "'(hide income'", 1)
            .as_bytes(),
    );
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port().to_string();
    let serve = |extra: &[&dyn AsRef<std::ffi::OsStr>]| -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "serve".into(),
            "--model".into(),
            model.clone().into(),
            "--db".into(),
            p("serve.db").into(),
        ];
        args.extend(extra.iter().map(|a| a.as_ref().to_os_string()));
        if !extra.iter().any(|a| a.as_ref() == "--constitution") {
            args.extend([
                "--constitution".into(),
                constitution.clone().into_os_string(),
            ]);
        }
        if !extra.iter().any(|a| a.as_ref() == "--port") {
            args.extend(["--port".into(), "0".into()]);
        }
        args
    };
    cases.extend([
        with(
            "serve: an unset key variable",
            serve(&[&"--api-key-env", &"TENETS_NO_SUCH_KEY_VAR"]),
            &["TENETS_NO_SUCH_KEY_VAR", "not set"],
        ),
        with(
            "serve: max tokens not below the context",
            serve(&[&"--max-tokens", &"4096", &"--ctx", &"1024"]),
            &["--max-tokens", "--ctx"],
        ),
        with(
            "serve: a classifier threshold outside (0, 1)",
            serve(&[&"--classifier-threshold", &"1.5"]),
            &["--classifier-threshold"],
        ),
        with(
            "serve: an empty banned phrase",
            serve(&[&"--ban", &" "]),
            &["--ban"],
        ),
        with(
            "serve: a guard rule that is no regular expression",
            serve(&[&"--constitution", &p("badguard.yaml")]),
            &["badguard.yaml:", "guard.rules[", "not a regular expression"],
        ),
        with(
            "serve: a fit set without tags",
            serve(&[&"--classifier", &"probe", &"--fit-on", &p("good.jsonl")]),
            &["--fit-on", "kind: harmful"],
        ),
        with(
            "serve: a port in use",
            serve(&[&"--port", &taken_port]),
            &["cannot listen on", taken_port.as_str()],
        ),
    ]);
    // A full disk: a 1 MiB tmpfs, where this machine lets a test mount one.
    let small = tempfile::tempdir().unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(small.path())
        .output()
        .is_ok_and(|o| o.status.success());
    if mounted {
        let db = small.path().join("full.db");
        cases.push(with(
            "a full disk",
            generate(&[&"--db", &db, &"--max-tokens", &"4"]),
            &["full.db"],
        ));
        // Fill it first, so the database's first pages do not fit.
        let _ = std::fs::write(small.path().join("filler"), vec![0u8; 1 << 20]);
    } else {
        eprintln!("no tmpfs could be mounted here: the full-disk case is skipped");
    }

    assert!(cases.len() >= 40, "{} cases", cases.len());
    let before = c.snapshot();
    let mut failures = Vec::new();
    for case in &cases {
        let output = Command::new(env!("CARGO_BIN_EXE_tenets"))
            .args(&case.args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&output.stderr).into_owned();
        let problems: Vec<String> = [
            output.status.success().then(|| "it succeeded".to_string()),
            err.contains("panicked").then(|| "it panicked".to_string()),
        ]
        .into_iter()
        .flatten()
        .chain(
            case.expect
                .iter()
                .filter(|e| !err.contains(e.as_str()))
                .map(|e| format!("the message lacks {e:?}")),
        )
        .collect();
        if !problems.is_empty() {
            failures.push(format!("{}: {}\n{err}", case.name, problems.join("; ")));
        }
        // Nothing written, nothing changed — after every case, not only at the end.
        let after = c.snapshot();
        if after != before {
            let changed: Vec<&String> = after
                .keys()
                .chain(before.keys())
                .filter(|k| after.get(*k) != before.get(*k))
                .collect();
            failures.push(format!(
                "{}: files changed or appeared: {changed:?}",
                case.name
            ));
            break;
        }
    }
    if mounted {
        let _ = Command::new("umount").arg(small.path()).status();
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
