//! Helpers shared by the integration tests that drive the real default model.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use tenets::pipeline::GenerateOptions;

/// Model runs take every core: tests in one binary take turns (never oversubscribe).
pub static MODEL_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The default model; the tests need it (scripts/setup or scripts/fetch-model fetches it).
pub fn model() -> PathBuf {
    let path = tenets::models::default_model_path();
    assert!(
        path.exists(),
        "default model not found at {}: run scripts/fetch-model first",
        path.display()
    );
    path
}

/// The second test model (Gemma 3 270M Q4_K_M), fetched by scripts/fetch-model.
pub fn second_model() -> PathBuf {
    let path = tenets::models::models_dir().join(tenets::models::SECOND_MODEL_FILE);
    assert!(
        path.exists(),
        "second test model not found at {}: run scripts/fetch-model first",
        path.display()
    );
    path
}

pub fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Writes `prompts` as a JSONL prompt file.
pub fn write_prompts(dir: &Path, name: &str, prompts: &[String]) -> PathBuf {
    let path = dir.join(name);
    let body: String = prompts
        .iter()
        .map(|p| format!("{}\n", serde_json::json!({ "prompt": p })))
        .collect();
    std::fs::write(&path, body).unwrap();
    path
}

/// Small, fast settings on the real model.
pub fn options(prompts: &Path, db: &Path) -> GenerateOptions {
    let mut o = GenerateOptions::new(
        &model(),
        &repo("constitutions/harmless-helpful.yaml"),
        prompts,
        db,
    );
    o.max_tokens = 24;
    o.ctx_per_sequence = 1024;
    o.threads = tenets::engine::default_threads();
    o
}

/// Distinct, ordinary prompts.
pub fn prompts(n: usize) -> Vec<String> {
    let topics = [
        "the moon",
        "bread",
        "rivers",
        "chess",
        "bicycles",
        "tea",
        "volcanoes",
        "owls",
        "glass",
        "maps",
        "bees",
        "clocks",
    ];
    (0..n)
        .map(|i| {
            format!(
                "Tell me one fact about {} (#{i}).",
                topics[i % topics.len()]
            )
        })
        .collect()
}

/// A read-only query through sqlx, rows as strings (the tests need no other driver); no rows
/// when the database cannot be opened; a failing query panics with its reason.
pub fn query(db: &Path, sql: &str) -> Vec<Vec<String>> {
    read(db, sql).unwrap_or_else(|e| panic!("{}: {sql}: {e}", db.display()))
}

/// [`query`] for watching a database another process is still creating: no rows while its
/// tables do not exist yet.
pub fn poll(db: &Path, sql: &str) -> Vec<Vec<String>> {
    read(db, sql).unwrap_or_default()
}

fn read(db: &Path, sql: &str) -> Result<Vec<Vec<String>>, sqlx::Error> {
    use sqlx::Row;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(db)
            .read_only(true);
        let Ok(pool) = sqlx::SqlitePool::connect_with(options).await else {
            return Ok(Vec::new());
        };
        let rows = sqlx::query(sql).fetch_all(&pool).await?;
        let out = rows
            .iter()
            .map(|r| {
                (0..r.columns().len())
                    .map(|i| {
                        r.try_get::<f64, _>(i)
                            .map(|v| v.to_string())
                            .or_else(|_| r.try_get::<i64, _>(i).map(|v| v.to_string()))
                            .or_else(|_| r.try_get::<String, _>(i))
                            .unwrap_or_default()
                    })
                    .collect()
            })
            .collect();
        pool.close().await;
        Ok(out)
    })
}

/// Runs statements on a database (tests that simulate a crash by removing rows).
pub fn execute(db: &Path, sql: &str) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let options = sqlx::sqlite::SqliteConnectOptions::new().filename(db);
        let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
        sqlx::raw_sql(sql).execute(&pool).await.unwrap();
        pool.close().await;
    })
}
