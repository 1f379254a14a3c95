//! `--backend openai` against a real OpenAI-compatible server on loopback: llama-cpp-python's
//! server (installed by `scripts/openai-server-setup`) serving the default model. Generate,
//! critique and revise over chat completions; a request the server refuses fails its prompt
//! alone; transient errors (503 from a flaky proxy in front of the server) are retried; an
//! outage mid-run stops the run and a rerun after it completes every prompt exactly once per
//! stage; labels are read from the server's log-probabilities, both orders.

use crate::common;
use common::text;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The Python that has llama-cpp-python's server, where this machine has it; `.ci/run`
/// installs it and sets TENETS_REQUIRE_OPENAI_SERVER so that there it is never skipped.
fn server_python() -> Option<PathBuf> {
    let python = std::env::var_os("TENETS_OPENAI_SERVER_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| common::repo(".venv-openai-server/bin/python"));
    let usable = python.exists()
        && Command::new(&python)
            .args(["-c", "import llama_cpp.server"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    if usable {
        return Some(python);
    }
    assert!(
        std::env::var_os("TENETS_REQUIRE_OPENAI_SERVER").is_none(),
        "TENETS_REQUIRE_OPENAI_SERVER is set but {} has no llama_cpp.server \
         (run scripts/openai-server-setup)",
        python.display()
    );
    eprintln!("no OpenAI-compatible test server here (scripts/openai-server-setup): skipped");
    None
}

/// llama-cpp-python's server on a loopback port, killed when dropped.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(python: &Path, port: u16, log: &Path) -> Server {
        let log = std::fs::File::create(log).unwrap();
        let child = Command::new(python)
            .args(["-m", "llama_cpp.server", "--model"])
            .arg(common::model())
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--n_ctx", "2048", "--n_threads", "1", "--verbose", "false"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let server = Server { child, port };
        let started = Instant::now();
        while !server.answers() {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "the server did not come up"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
        server
    }

    fn answers(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let request = "GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        let mut reply = String::new();
        s.write_all(request.as_bytes()).is_ok()
            && s.read_to_string(&mut reply).is_ok()
            && reply.starts_with("HTTP/1.1 200")
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A proxy in front of the server that answers the first `fail` connections with
/// `503 Service Unavailable` and passes every later one through.
fn flaky_proxy(upstream: u16, fail: usize) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let refused = Arc::new(AtomicUsize::new(0));
    let counter = refused.clone();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(mut client) = client else { continue };
            if counter.load(Ordering::SeqCst) < fail {
                counter.fetch_add(1, Ordering::SeqCst);
                let mut buf = [0u8; 65536];
                let _ = client.set_read_timeout(Some(Duration::from_millis(200)));
                let _ = client.read(&mut buf);
                let _ = client.write_all(
                    b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 0\r\n\
                      Content-Length: 4\r\nConnection: close\r\n\r\nbusy",
                );
                continue;
            }
            let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                continue;
            };
            let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let (mut c1, mut s1) = (client, server);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c1, &mut s1);
                let _ = s1.shutdown(std::net::Shutdown::Write);
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut s2, &mut c2);
                let _ = c2.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    (port, refused)
}

fn tenets(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tenets"))
        .args(args)
        .output()
        .unwrap()
}

fn generate_args<'a>(url: &'a str, prompts: &'a str, db: &'a str) -> Vec<&'a str> {
    vec![
        "generate",
        "--backend",
        "openai",
        "--base-url",
        url,
        "--constitution",
        "constitutions/harmless-helpful.yaml",
        "--prompts",
        prompts,
        "--db",
        db,
        "--max-tokens",
        "16",
        "--parallel",
        "2",
        "--retries",
        "2",
        "--request-timeout",
        "60",
        "--quiet",
    ]
}

/// `tenets label` through the server at `url`, one question a pair.
fn label_args<'a>(url: &'a str, db: &'a str) -> Vec<&'a str> {
    vec![
        "label",
        "--db",
        db,
        "--backend",
        "openai",
        "--base-url",
        url,
        "--questions",
        "1",
        // Each known-answer pair would be a request too; calibration is `it::safer`'s.
        "--no-calibrate",
    ]
}

fn count(db: &Path, sql: &str) -> i64 {
    first_number(common::query(db, sql))
}

/// The first column of the first row as a number; -1 when there is none.
fn first_number(rows: Vec<Vec<String>>) -> i64 {
    rows.first()
        .and_then(|r| r.first())
        .and_then(|v| v.parse().ok())
        .unwrap_or(-1)
}

#[test]
fn an_openai_compatible_server_generates_judges_retries_and_survives_an_outage() {
    let Some(python) = server_python() else {
        return;
    };
    std::env::set_current_dir(common::repo(".")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let log = dir.path().join("server.log");
    let mut server = Server::start(&python, port, &log);
    let url = server.url();

    // 1. Generate over chat completions; one prompt is longer than the server's context, which
    //    the server refuses (HTTP 400): that prompt fails alone, with the reason stored.
    let mut prompts = common::prompts(3);
    prompts.push("word ".repeat(3000));
    let file = common::write_prompts(dir.path(), "p.jsonl", &prompts);
    let db = dir.path().join("remote.db");
    let (file_s, db_s) = (file.display().to_string(), db.display().to_string());
    let out = tenets(&generate_args(&url, &file_s, &db_s));
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(count(&db, "SELECT COUNT(*) FROM steps"), 9);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM pairs"), 3);
    let failures = common::query(&db, "SELECT reason FROM failures");
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(
        failures[0][0].contains("HTTP 400") && failures[0][0].contains("context"),
        "{failures:?}"
    );
    // The run records the server's model, not a file.
    let model = common::query(&db, "SELECT model_path FROM runs");
    assert!(
        model[0][0].contains("SmolLM2") && model[0][0].contains(&url),
        "{model:?}"
    );
    // A rerun asks nothing again that is stored (only the refused prompt, refused again).
    let again = tenets(&generate_args(&url, &file_s, &db_s));
    assert!(again.status.success(), "{}", text(&again));
    assert!(
        text(&again).contains("3 already complete"),
        "{}",
        text(&again)
    );
    assert_eq!(count(&db, "SELECT COUNT(*) FROM steps"), 9);

    // 2. Labels from the server's log-probabilities, both orders, the swap undone.
    let out = tenets(
        &[
            &label_args(&url, &db_s)[..],
            &["--parallel", "2", "--quiet"],
        ]
        .concat(),
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(count(&db, "SELECT COUNT(*) FROM labels"), 3);
    let judgments = common::query(
        &db,
        "SELECT swapped, mass_a, mass_b, p_a, p_chosen FROM judgments",
    );
    assert_eq!(judgments.len(), 6);
    for j in &judgments {
        let v: Vec<f64> = j.iter().map(|x| x.parse().unwrap()).collect();
        let (swapped, mass_a, mass_b, p_a, p_chosen) = (v[0] == 1.0, v[1], v[2], v[3], v[4]);
        assert!(
            mass_a + mass_b > 0.0,
            "the server's top log-probs hold A or B: {j:?}"
        );
        assert!((p_a - mass_a / (mass_a + mass_b)).abs() < 1e-9, "{j:?}");
        let want = if swapped { 1.0 - p_a } else { p_a };
        assert!((p_chosen - want).abs() < 1e-9, "{j:?}");
    }
    // `--cot` needs the local engine: refused up front, nothing written.
    let cot = tenets(&[
        "label",
        "--db",
        &db_s,
        "--backend",
        "openai",
        "--base-url",
        &url,
        "--cot",
    ]);
    assert!(!cot.status.success());
    assert!(text(&cot).contains("--cot"), "{}", text(&cot));

    // 3. Transient failures are retried: two 503s, then the request goes through.
    let (proxy, refused) = flaky_proxy(port, 2);
    let proxy_url = format!("http://127.0.0.1:{proxy}/v1");
    let one = common::write_prompts(dir.path(), "one.jsonl", &["Name a colour.".to_string()]);
    let one_db = dir.path().join("retry.db");
    let (one_s, one_db_s) = (one.display().to_string(), one_db.display().to_string());
    let mut args = generate_args(&proxy_url, &one_s, &one_db_s);
    let at = args.iter().position(|a| *a == "--retries").unwrap();
    args[at + 1] = "3";
    args.extend(["--rounds", "0"]);
    let out = tenets(&args);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(refused.load(Ordering::SeqCst), 2);
    assert_eq!(count(&one_db, "SELECT COUNT(*) FROM steps"), 1);

    // 4. An outage mid-run: the server dies after a few steps; the run stops with a clear
    //    error and keeps what it finished; once the server is back, the same command
    //    completes every prompt exactly once per stage.
    let many = common::write_prompts(dir.path(), "many.jsonl", &common::prompts(8));
    let out_db = dir.path().join("outage.db");
    let (many_s, out_db_s) = (many.display().to_string(), out_db.display().to_string());
    let args = generate_args(&url, &many_s, &out_db_s);
    let run = Command::new(env!("CARGO_BIN_EXE_tenets"))
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let steps_so_far = || first_number(common::poll(&out_db, "SELECT COUNT(*) FROM steps"));
    while steps_so_far() < 4 {
        assert!(started.elapsed() < Duration::from_secs(240), "no progress");
        std::thread::sleep(Duration::from_millis(100));
    }
    server.kill();
    let stopped = run.wait_with_output().unwrap();
    assert!(!stopped.status.success(), "{}", text(&stopped));
    assert!(
        text(&stopped).contains("rerun the same command to resume"),
        "{}",
        text(&stopped)
    );
    let kept = count(&out_db, "SELECT COUNT(*) FROM steps");
    assert!((4..24).contains(&kept), "{kept}");
    assert_eq!(
        common::query(&out_db, "PRAGMA integrity_check"),
        vec![vec!["ok".to_string()]]
    );
    let _server = Server::start(&python, port, &dir.path().join("server2.log"));
    let resumed = tenets(&args);
    assert!(resumed.status.success(), "{}", text(&resumed));
    assert_eq!(count(&out_db, "SELECT COUNT(*) FROM steps"), 24);
    assert_eq!(
        count(
            &out_db,
            "SELECT COUNT(*) FROM (SELECT DISTINCT prompt_id, stage, round FROM steps)"
        ),
        24
    );
    assert_eq!(count(&out_db, "SELECT COUNT(*) FROM pairs"), 8);
    assert_eq!(count(&out_db, "SELECT COUNT(*) FROM failures"), 0);
}

#[test]
fn remote_flags_are_checked_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("x.db");
    let db_s = db.display().to_string();
    let prompts = common::repo("prompts/sets/demo.jsonl")
        .display()
        .to_string();
    let constitution = common::repo("constitutions/harmless-helpful.yaml")
        .display()
        .to_string();
    let base = [
        "generate",
        "--constitution",
        &constitution,
        "--prompts",
        &prompts,
        "--db",
        &db_s,
    ];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--backend", "openai"], "--base-url"),
        (
            vec!["--base-url", "http://127.0.0.1:9/v1"],
            "--backend openai",
        ),
        (
            vec![
                "--backend",
                "openai",
                "--base-url",
                "http://127.0.0.1:9/v1",
                "--api-key-env",
                "TENETS_TEST_NO_SUCH_VARIABLE",
            ],
            "TENETS_TEST_NO_SUCH_VARIABLE",
        ),
        (
            vec!["--backend", "openai", "--base-url", "ftp://example/v1"],
            "http://",
        ),
        // Nothing listens on port 9: reported after the retries, nothing written.
        (
            vec![
                "--backend",
                "openai",
                "--base-url",
                "http://127.0.0.1:9/v1",
                "--retries",
                "0",
            ],
            "cannot be reached",
        ),
    ];
    for (extra, needle) in cases {
        let mut args: Vec<&str> = base.to_vec();
        args.extend(extra.iter());
        let out = tenets(&args);
        assert!(!out.status.success(), "{args:?}");
        assert!(text(&out).contains(needle), "{args:?}: {}", text(&out));
        assert!(!text(&out).contains("panicked"), "{}", text(&out));
        assert!(!db.exists(), "{args:?} created {}", db.display());
    }
}

/// A stand-in for an OpenAI-compatible server: it lists one model, answers every generation with
/// a short reply that repeats whether its conversation mentions SILENT, and answers a judge's
/// request with log-probabilities for "A" and "B" — except when the conversation mentions
/// SILENT: then its top log-probabilities hold neither letter (as a chatty judge's do).
fn fake_judge_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(mut client) = client else { continue };
            let Some((head, body)) = read_request(&mut client) else {
                continue;
            };
            let reply = if head.starts_with("GET") {
                serde_json::json!({"object": "list", "data": [{"id": "fake-judge"}]})
            } else {
                let request: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                let silent = request["messages"].to_string().contains("SILENT");
                // The first answer and the later turns differ, so a pair's two answers do.
                let turns = request["messages"].as_array().map_or(0, Vec::len);
                let content = match (silent, turns <= 2) {
                    (true, true) => "SILENT.",
                    (true, false) => "A SILENT revision, longer than the first answer was.",
                    (false, true) => "Blue.",
                    (false, false) => "A revised answer, longer than the first answer was.",
                };
                let mut choice = serde_json::json!({
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                });
                if request["logprobs"] == true {
                    let top = if silent {
                        serde_json::json!([{"token": "I", "logprob": -0.05}, {"token": "Well", "logprob": -3.2}])
                    } else {
                        serde_json::json!([{"token": "A", "logprob": -0.2}, {"token": "B", "logprob": -1.6}])
                    };
                    choice["logprobs"] = serde_json::json!({"content": [{"token": top[0]["token"], "logprob": -0.1, "top_logprobs": top}]});
                }
                serde_json::json!({
                    "object": "chat.completion",
                    "model": "fake-judge",
                    "choices": [choice],
                    "usage": {"prompt_tokens": 12, "completion_tokens": 3},
                })
            };
            let body = reply.to_string();
            let _ = write!(
                client,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

/// One HTTP request: (head, body).
fn read_request(client: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let _ = client.set_read_timeout(Some(Duration::from_secs(10)));
    let mut bytes = Vec::new();
    let mut buf = [0u8; 8192];
    let split = loop {
        let n = client.read(&mut buf).ok().filter(|&n| n > 0)?;
        bytes.extend_from_slice(&buf[..n]);
        if let Some(at) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let head = String::from_utf8_lossy(&bytes[..split]).into_owned();
    let length = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())
                .flatten()
        })
        .unwrap_or(0);
    while bytes.len() < split + length {
        let n = client.read(&mut buf).ok().filter(|&n| n > 0)?;
        bytes.extend_from_slice(&buf[..n]);
    }
    Some((head, bytes[split..split + length].to_vec()))
}

/// A judge that puts no probability on "A" or "B" has not answered: its judgments are kept and
/// counted (stats, the export report) but left out of the labels and the means — never read as
/// an even 0.5. A pair none of whose judgments answered has no label, and export leaves it out
/// by name.
#[test]
fn a_judge_that_names_no_letter_is_counted_not_averaged_in() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{}/v1", fake_judge_server());
    let prompts = common::write_prompts(
        dir.path(),
        "p.jsonl",
        &[
            "Name a colour.".to_string(),
            "Say SILENT things.".to_string(),
            "Name a fruit.".to_string(),
        ],
    );
    let db = dir.path().join("judge.db");
    let (prompts_s, db_s) = (prompts.display().to_string(), db.display().to_string());
    let out = tenets(&generate_args(&url, &prompts_s, &db_s));
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(count(&db, "SELECT COUNT(*) FROM pairs"), 3);
    let out = tenets(&[&label_args(&url, &db_s)[..], &["--parallel", "1"]].concat());
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("2 judgment(s) put no probability on \"A\" or \"B\"")
            && text(&out).contains("1 pair(s) got no answer at all"),
        "{}",
        text(&out)
    );
    // Stored: the masses as read, no probability, the reason.
    let unanswered = common::query(
        &db,
        "SELECT mass_a, mass_b, p_a IS NULL, p_chosen IS NULL, no_answer FROM judgments \
         WHERE no_answer IS NOT NULL",
    );
    assert_eq!(unanswered.len(), 2, "{unanswered:?}");
    for row in &unanswered {
        assert_eq!(row, &["0", "0", "1", "1", "no-mass"].map(String::from));
    }
    let labels = common::query(
        &db,
        "SELECT p_chosen IS NULL, judgments, unanswered FROM labels ORDER BY p_chosen IS NULL",
    );
    assert_eq!(
        labels,
        vec![
            vec!["0".to_string(), "2".into(), "0".into()],
            vec!["0".to_string(), "2".into(), "0".into()],
            vec!["1".to_string(), "0".into(), "2".into()],
        ]
    );
    // The means are over the answers: P(A) is the same in every answered judgment.
    let p_a = (-0.2f64).exp() / ((-0.2f64).exp() + (-1.6f64).exp());
    let out = tenets(&["stats", "--json", "--db", &db_s]);
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let judge = &stats["judges"][0];
    assert_eq!(judge["unanswered_judgments"], 2);
    assert_eq!(judge["pairs_without_answer"], 1);
    assert_eq!(judge["labeled_pairs"], 2);
    assert!(
        (judge["mean_p_a"].as_f64().unwrap() - p_a).abs() < 1e-9,
        "{judge}"
    );
    let out = tenets(&["stats", "--db", &db_s]);
    assert!(text(&out).contains("no answer"), "{}", text(&out));
    // Export leaves the unanswered pair out, and says why.
    let exported = dir.path().join("dpo.jsonl");
    let out = tenets(&[
        "export",
        "--db",
        &db_s,
        "--kind",
        "dpo",
        "--trust-judge",
        "-o",
        &exported.display().to_string(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("the judge gave no answer"),
        "{}",
        text(&out)
    );
    let rows = std::fs::read_to_string(&exported).unwrap();
    assert_eq!(rows.lines().count(), 2);
    assert!(!rows.contains("SILENT"));
}
