//! Using tenets as a library: run the generate pipeline on a few prompts and print each pair.
//!
//! `cargo run --release --example library -- [PROMPTS.jsonl]` (default: 4 bundled prompts).

use std::path::Path;

use tenets::engine::StopSignal;
use tenets::export::{self, Kind};
use tenets::pipeline::{self, GenerateOptions};
use tenets::store::Store;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir()?;
    let prompts = match std::env::args().nth(1) {
        Some(path) => path.into(),
        None => {
            // The first two harmful-sounding and first two benign bundled prompts.
            let all = std::fs::read_to_string(root.join("prompts/sets/demo.jsonl"))?;
            let lines: Vec<&str> = all.lines().collect();
            let picked = [lines[0], lines[1], lines[28], lines[29]].join("\n");
            let path = dir.path().join("prompts.jsonl");
            std::fs::write(&path, picked + "\n")?;
            path
        }
    };
    let db = dir.path().join("example.db");
    let mut options = GenerateOptions::new(
        &tenets::home::default_model_path(),
        &root.join("constitutions/harmless-helpful.yaml"),
        &prompts,
        &db,
    );
    options.max_tokens = 96;
    options.run.quiet = false;
    let summary = pipeline::generate(&options, StopSignal::default()).await?;
    println!(
        "{} steps in {:.1} s",
        summary.steps_written, summary.seconds
    );

    let store = Store::open_existing(&db).await?;
    let filters = tenets::filters::PairFilters::default();
    for row in export::rows(&store, Kind::Dpo, &filters).await?.rows {
        let Some(row) = row.dpo() else { continue };
        println!("\nPROMPT:   {}", row.prompt[0].content);
        println!("REJECTED: {}", row.rejected[0].content);
        println!(
            "CHOSEN:   {}  (principles {})",
            row.chosen[0].content,
            row.provenance.principles.join(", ")
        );
    }
    store.close().await;
    Ok(())
}
