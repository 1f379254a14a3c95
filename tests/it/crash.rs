//! Losing nothing: `tenets generate` killed with SIGKILL mid-run, then run again with the same
//! command, completes every prompt exactly once — once, or at ten moments of one run; Ctrl-C
//! (SIGINT) stops cleanly and resumes; a second generate on the same database is refused.

use crate::common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::SqlitePool;
use tenets::store::Store;

fn spawn(prompts: &Path, db: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_tenets"))
        .args([
            "generate",
            "--quiet",
            "--parallel",
            "4",
            "--max-tokens",
            "24",
            "--ctx",
            "1024",
        ])
        .arg("--model")
        .arg(common::model())
        .arg("--constitution")
        .arg(common::repo("constitutions/harmless-helpful.yaml"))
        .arg("--prompts")
        .arg(prompts)
        .arg("--db")
        .arg(db)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

async fn steps_so_far(db: &Path) -> i64 {
    if !db.exists() {
        return 0;
    }
    let options = SqliteConnectOptions::new().filename(db).read_only(true);
    let Ok(pool) = SqlitePool::connect_with(options).await else {
        return 0;
    };
    let n = sqlx::query_scalar("SELECT COUNT(*) FROM steps")
        .fetch_one(&pool)
        .await
        .unwrap_or(0);
    pool.close().await;
    n
}

/// Waits until at least `n` steps are committed (or the child exits).
async fn wait_for_steps(child: &mut Child, db: &Path, n: i64) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let done = steps_so_far(db).await;
        if done >= n || Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            return done;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn assert_complete_once(db: &Path, prompts: i64) {
    let store = Store::open_existing(db).await.unwrap();
    let conn = common::connect(db).await;
    let count = |sql: &'static str| {
        let conn = conn.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&conn)
                .await
                .unwrap()
        }
    };
    assert_eq!(
        count("SELECT COUNT(*) FROM steps WHERE stage = 'answer'").await,
        prompts
    );
    assert_eq!(
        count("SELECT COUNT(*) FROM steps WHERE stage = 'critique'").await,
        prompts
    );
    assert_eq!(
        count("SELECT COUNT(*) FROM steps WHERE stage = 'revision'").await,
        prompts
    );
    assert_eq!(count("SELECT COUNT(*) FROM pairs").await, prompts);
    assert_eq!(
        count("SELECT COUNT(DISTINCT prompt_id) FROM pairs").await,
        prompts
    );
    assert_eq!(count("SELECT COUNT(*) FROM failures").await, 0);
    assert_eq!(count("SELECT COUNT(*) FROM runs").await, 1);
    assert_eq!(store.integrity_check().await.unwrap(), "ok");
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_run_then_rerun_completes_every_prompt_once() {
    let _one_at_a_time = common::MODEL_LOCK.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let prompts = common::write_prompts(dir.path(), "p.jsonl", &common::prompts(24));
    let db = dir.path().join("crash.db");

    let mut child = spawn(&prompts, &db);
    let before_kill = wait_for_steps(&mut child, &db, 20).await;
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        before_kill >= 20,
        "only {before_kill} steps before the kill"
    );
    assert!(
        before_kill < 72,
        "the run finished before it could be killed"
    );

    let mut rerun = spawn(&prompts, &db);
    let status = rerun.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(rerun.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(status.success(), "{err}");
    assert!(err.contains("already complete"), "{err}");
    assert_complete_once(&db, 24).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_stops_cleanly_and_the_rerun_resumes() {
    let _one_at_a_time = common::MODEL_LOCK.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let prompts = common::write_prompts(dir.path(), "p.jsonl", &common::prompts(16));
    let db = dir.path().join("int.db");

    let mut child = spawn(&prompts, &db);
    wait_for_steps(&mut child, &db, 8).await;
    let interrupted = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(interrupted.success());
    let status = child.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    // Either it was stopped (exit 130, told to resume) or it had just finished.
    if status.code() == Some(130) {
        assert!(err.contains("rerun the same command to resume"), "{err}");
    } else {
        assert!(status.success(), "{err}");
    }
    // Steps in flight were finished and committed; nothing is half-written.
    let store = Store::open_existing(&db).await.unwrap();
    assert_eq!(store.integrity_check().await.unwrap(), "ok");
    store.close().await;

    let status = spawn(&prompts, &db).wait().unwrap();
    assert!(status.success());
    assert_complete_once(&db, 16).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_at_ten_moments_the_run_still_completes_every_prompt_once() {
    let _one_at_a_time = common::MODEL_LOCK.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let prompts = common::write_prompts(dir.path(), "p.jsonl", &common::prompts(48));
    let db = dir.path().join("faults.db");
    // Moments spread from "still loading the model" to "well into the run", in a fixed
    // pseudo-random order (a linear congruential sequence: the test is the same every time).
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut kills = 0;
    for _ in 0..10 {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let delay = Duration::from_millis(200 + (state >> 33) % 1800);
        let mut child = spawn(&prompts, &db);
        tokio::time::sleep(delay).await;
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            kills += 1;
        }
        child.wait().unwrap();
        // Whatever moment it died at, what is stored is whole.
        if db.exists() {
            let store = Store::open_existing(&db).await.unwrap();
            assert_eq!(store.integrity_check().await.unwrap(), "ok");
            store.close().await;
        }
    }
    assert!(kills >= 10, "the run finished after {kills} kills");
    let mut last = spawn(&prompts, &db);
    let status = last.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(last.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(status.success(), "{err}");
    assert_complete_once(&db, 48).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_generate_on_the_same_database_is_refused() {
    let _one_at_a_time = common::MODEL_LOCK.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let prompts = common::write_prompts(dir.path(), "p.jsonl", &common::prompts(16));
    let db = dir.path().join("shared.db");

    let mut first = spawn(&prompts, &db);
    wait_for_steps(&mut first, &db, 2).await;
    let second = spawn(&prompts, &db).wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "the second generate ran: {err}");
    assert!(
        err.contains("being written by another tenets process")
            && err.contains(&format!("pid {}", first.id())),
        "{err}"
    );
    // The first is unharmed and completes everything once.
    let status = first.wait().unwrap();
    assert!(status.success());
    assert_complete_once(&db, 16).await;
    // Once it is done, the database is free again.
    let again = spawn(&prompts, &db).wait().unwrap();
    assert!(again.success());
}
