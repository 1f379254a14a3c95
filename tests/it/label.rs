//! `tenets label` on the real default model: the answer-token sets, both orders with the swap
//! undone, labels that are the mean of their stored parts, durability and resume (a pair whose
//! judgments were only partly stored, and a SIGKILL mid-run), and export of the soft labels.

use crate::common;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sqlx::Row;
use tenets::engine::{self, EngineConfig, StopSignal};
use tenets::label::AnswerTokens;
use tenets::pipeline::label::{label, LabelOptions};
use tenets::store::Store;

#[test]
fn answer_tokens_of_the_default_model() {
    let model = engine::load_model(&EngineConfig::new(common::model())).unwrap();
    let answers = AnswerTokens::of(&model);
    let piece =
        |t| String::from_utf8_lossy(&model.vocab().token_to_piece(t, true, None)).into_owned();
    let a: Vec<String> = answers.a.iter().map(|&t| piece(t)).collect();
    let b: Vec<String> = answers.b.iter().map(|&t| piece(t)).collect();
    // SmolLM2's BPE holds the bare letter and the letter after a space as single tokens.
    assert!(
        a.contains(&"A".to_string()) && a.contains(&" A".to_string()),
        "{a:?}"
    );
    assert!(
        b.contains(&"B".to_string()) && b.contains(&" B".to_string()),
        "{b:?}"
    );
    for (letter, forms) in [("A", &a), ("B", &b)] {
        for f in forms.iter() {
            let bare: String = f.chars().filter(|c| !" ().".contains(*c)).collect();
            assert_eq!(bare, letter, "{f:?} is not a form of {letter}");
        }
    }
    assert!(answers.a.iter().all(|t| !answers.b.contains(t)));
}

async fn generate_pairs(dir: &Path, n: usize) -> std::path::PathBuf {
    let prompts = common::write_prompts(dir, "p.jsonl", &common::prompts(n));
    let db = dir.join("run.db");
    let mut options = common::options(&prompts, &db);
    options.engine.parallel = 4;
    tenets::pipeline::generate(&options, StopSignal::default())
        .await
        .unwrap();
    db
}

fn label_options(db: &Path) -> LabelOptions {
    let mut o = LabelOptions::new(db);
    o.engine.parallel = 4;
    o.engine.ctx = 1024;
    o.questions = 2;
    // Label mechanics here; calibration is `it::safer`'s (and these judges' labels are used
    // with --trust-judge below).
    o.no_calibrate = true;
    o
}

#[tokio::test(flavor = "multi_thread")]
async fn labels_are_both_orders_durable_and_resume() {
    let _guard = common::MODEL_LOCK.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let db = generate_pairs(dir.path(), 6).await;

    let first = label(&label_options(&db), StopSignal::default())
        .await
        .unwrap();
    assert_eq!(
        (first.pairs, first.labels_written, first.judgments_written),
        (6, 6, 24)
    );
    assert_eq!(first.failures, 0);

    let store = Store::open_existing(&db).await.unwrap();
    let conn = common::connect(&db).await;
    let rows = sqlx::query(
        "SELECT pair_id, question_id, swapped, mass_a, mass_b, p_a, p_chosen FROM judgments",
    )
    .fetch_all(&conn)
    .await
    .unwrap();
    let mut by_pair: HashMap<String, Vec<(String, bool, Option<f64>)>> = HashMap::new();
    for r in &rows {
        let (ma, mb, pa, pc): (f64, f64, f64, f64) = (r.get(3), r.get(4), r.get(5), r.get(6));
        let swapped = r.get::<i64, _>(2) == 1;
        assert!(ma >= 0.0 && mb >= 0.0 && ma + mb <= 1.0 + 1e-9 && ma + mb > 0.0);
        assert!(
            (pa - ma / (ma + mb)).abs() < 1e-9,
            "P(A) is A's share of the A/B mass"
        );
        // P(A) + P(B) = 1 within each order, and the swap is undone for p_chosen.
        let want = if swapped { 1.0 - pa } else { pa };
        assert!((pc - want).abs() < 1e-9);
        by_pair
            .entry(r.get(0))
            .or_default()
            .push((r.get(1), swapped, Some(pc)));
    }
    assert_eq!(by_pair.len(), 6);
    let labels =
        sqlx::query("SELECT pair_id, p_chosen, judgments, order_disagreements FROM labels")
            .fetch_all(&conn)
            .await
            .unwrap();
    for l in &labels {
        let parts = &by_pair[&l.get::<String, _>(0)];
        // Two questions, each asked in both orders.
        assert_eq!(parts.len(), 4);
        for (q, swapped, _) in parts {
            assert!(parts.iter().any(|(q2, s2, _)| q2 == q && s2 != swapped));
        }
        let mean = parts.iter().filter_map(|p| p.2).sum::<f64>() / 4.0;
        assert!(
            (l.get::<f64, _>(1) - mean).abs() < 1e-9,
            "the label is the mean of its parts"
        );
        let combined = tenets::label::combine(parts);
        assert_eq!(l.get::<i64, _>(3), combined.order_disagreements as i64);
        assert_eq!((combined.answered, combined.unanswered), (4, 0));
    }

    // A rerun finds everything done.
    let again = label(&label_options(&db), StopSignal::default())
        .await
        .unwrap();
    assert_eq!((again.already_labeled, again.judgments_written), (6, 0));

    // A pair whose label and one judgment were lost (a crash between commits) is completed with
    // exactly the missing judgment; its label is again the mean of its four parts. (The redone
    // judgment decodes in another batch layout, so it matches the lost one only closely.)
    let pair: String = labels[0].get(0);
    let before: f64 = labels[0].get(1);
    sqlx::query("DELETE FROM labels WHERE pair_id = ?")
        .bind(&pair)
        .execute(&conn)
        .await
        .unwrap();
    sqlx::query(
        "DELETE FROM judgments WHERE id = (SELECT id FROM judgments WHERE pair_id = ? LIMIT 1)",
    )
    .bind(&pair)
    .execute(&conn)
    .await
    .unwrap();
    store.close().await;
    let resumed = label(&label_options(&db), StopSignal::default())
        .await
        .unwrap();
    assert_eq!((resumed.judgments_written, resumed.labels_written), (1, 1));
    let store = Store::open_existing(&db).await.unwrap();
    let conn = common::connect(&db).await;
    let after: f64 = sqlx::query_scalar("SELECT p_chosen FROM labels WHERE pair_id = ?")
        .bind(&pair)
        .fetch_one(&conn)
        .await
        .unwrap();
    let parts: Vec<f64> = sqlx::query_scalar("SELECT p_chosen FROM judgments WHERE pair_id = ?")
        .bind(&pair)
        .fetch_all(&conn)
        .await
        .unwrap();
    assert_eq!(parts.len(), 4);
    assert!((after - parts.iter().sum::<f64>() / 4.0).abs() < 1e-9);
    assert!((after - before).abs() < 0.05, "{before} vs {after}");
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM judgments")
        .fetch_one(&conn)
        .await
        .unwrap();
    assert_eq!(count, 24);

    // Export orients each pair by its label.
    let out = dir.path().join("dpo.jsonl");
    let everything = tenets::filters::PairFilters {
        include_truncated: true,
        max_similarity: 1.01,
        trust_judge: true,
        ..Default::default()
    };
    tenets::export::export(
        &store,
        tenets::export::Kind::Dpo,
        tenets::export::Format::Jsonl,
        &everything,
        &out,
    )
    .await
    .unwrap();
    let text = std::fs::read_to_string(&out).unwrap();
    let mut labeled = Vec::new();
    for line in text.lines() {
        let row: serde_json::Value = serde_json::from_str(line).unwrap();
        // `p_chosen`, not `label`: TRL's `label` is KTO's boolean desirability.
        assert!(row.get("label").is_none(), "{row}");
        let l = row["p_chosen"].as_f64().unwrap();
        assert!((0.5..=1.0).contains(&l));
        assert!((row["weight"].as_f64().unwrap() - (2.0 * l - 1.0)).abs() < 1e-9);
        assert!(row["judge_id"].is_string() && row["chosen_is_revision"].is_boolean());
        labeled.push((row, l));
    }
    assert_eq!(labeled.len(), 6);
    let parquet = dir.path().join("dpo.parquet");
    tenets::export::export(
        &store,
        tenets::export::Kind::Dpo,
        tenets::export::Format::Parquet,
        &everything,
        &parquet,
    )
    .await
    .unwrap();
    store.close().await;

    // Hugging Face `datasets` (what TRL loads with) reads both files: the same columns, and
    // the conversations as lists of {role, content}.
    if let Some(python) = common::test_python() {
        let script = common::python_script("load_exports.py");
        let loaded = common::run_python(&python, &[&script, &out, &parquet], "");
        for format in ["jsonl", "parquet"] {
            let d = &loaded[format];
            assert_eq!(d["rows"], 6, "{format}");
            let columns: Vec<&str> = d["columns"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c.as_str().unwrap())
                .collect();
            for column in [
                "prompt", "chosen", "rejected", "p_chosen", "weight", "judge_id",
            ] {
                assert!(columns.contains(&column), "{format}: {columns:?}");
            }
            assert!(!columns.contains(&"label"), "{format}: {columns:?}");
            let first = &labeled[0].0;
            for field in ["prompt", "chosen", "rejected"] {
                assert_eq!(d[field], first[field], "{format}: {field}");
            }
            assert_eq!(d["chosen"][0]["role"], "assistant");
            let values: Vec<f64> = serde_json::from_value(d["p_chosen"].clone()).unwrap();
            for (got, (_, want)) in values.iter().zip(&labeled) {
                assert!((got - want).abs() < 1e-12, "{format}: {got} vs {want}");
            }
        }
    }

    // `tenets train --db` trains on the same pairs, with their soft labels.
    let mut train = tenets::pipeline::train::TrainOptions::new(
        &common::model(),
        tenets::pipeline::train::TrainData::Db(db.clone()),
        &dir.path().join("from-db.gguf"),
    );
    train.filters = everything;
    train.steps = Some(1);
    train.batch = 6;
    train.max_length = 128;
    train.max_prompt_length = Some(64);
    train.no_final_eval = true;
    train.run.quiet = true;
    let trained = tenets::pipeline::train::train(&train, StopSignal::default())
        .await
        .unwrap();
    assert_eq!(trained.examples, 6);
    assert_eq!(trained.steps_done, 1);
    assert_eq!(trained.reference_computed, 6);
    assert_eq!(
        trained.state, db,
        "runs and metrics go into the same database"
    );
    // Each pair's first loss is ln 2 exactly; their mean over 6 to rounding.
    assert!((trained.last.unwrap().loss - std::f64::consts::LN_2).abs() < 1e-12);
    assert!(dir.path().join("from-db.gguf").exists());
}

/// SIGKILL in the middle of a label run, then the same command: every pair labeled once, every
/// judgment once, the database intact.
#[tokio::test(flavor = "multi_thread")]
async fn label_survives_kill_9() {
    let _guard = common::MODEL_LOCK.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let db = generate_pairs(dir.path(), 12).await;
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_tenets"))
            .args([
                "label",
                "--no-calibrate",
                "--quiet",
                "--parallel",
                "4",
                "--ctx",
                "1024",
                "--db",
            ])
            .arg(&db)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let count = |sql: &'static str| {
        let db = db.clone();
        async move {
            let store = Store::open_existing(&db).await.unwrap();
            let conn = common::connect(&db).await;
            let n: i64 = sqlx::query_scalar(sql).fetch_one(&conn).await.unwrap_or(0);
            store.close().await;
            n
        }
    };
    let mut child = run();
    let deadline = Instant::now() + Duration::from_secs(300);
    while count("SELECT COUNT(*) FROM judgments").await < 10 {
        assert!(Instant::now() < deadline, "no progress");
        assert!(
            child.try_wait().unwrap().is_none(),
            "label ended before the kill"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let killed_at = count("SELECT COUNT(*) FROM judgments").await;
    assert!(killed_at < 48, "the run finished before the kill");

    let out = run().wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(count("SELECT COUNT(*) FROM judgments").await, 48);
    assert_eq!(count("SELECT COUNT(*) FROM labels").await, 12);
    assert_eq!(
        count(
            "SELECT COUNT(*) FROM (SELECT 1 FROM judgments GROUP BY pair_id, question_id, swapped)"
        )
        .await,
        48
    );
    let store = Store::open_existing(&db).await.unwrap();
    assert_eq!(store.integrity_check().await.unwrap(), "ok");
    store.close().await;
}

/// Chain of thought: the judge reasons first (stored with the judgment), and P(A) is clamped.
#[tokio::test(flavor = "multi_thread")]
async fn chain_of_thought_judgments_keep_their_reasoning_and_are_clamped() {
    let _guard = common::MODEL_LOCK.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let db = generate_pairs(dir.path(), 3).await;
    let mut options = label_options(&db);
    options.questions = 1;
    options.cot = true;
    options.cot_tokens = 16;
    options.cot_clamp = (0.4, 0.6);
    let summary = label(&options, StopSignal::default()).await.unwrap();
    assert_eq!((summary.judgments_written, summary.labels_written), (6, 3));
    let store = Store::open_existing(&db).await.unwrap();
    let conn = common::connect(&db).await;
    let rows =
        sqlx::query("SELECT reasoning, mass_a, mass_b, p_a, p_chosen, swapped FROM judgments")
            .fetch_all(&conn)
            .await
            .unwrap();
    for r in &rows {
        let reasoning: Option<String> = r.get(0);
        assert!(
            reasoning.is_some_and(|t| !t.is_empty()),
            "reasoning is stored"
        );
        let (ma, mb, pa, pc): (f64, f64, f64, f64) = (r.get(1), r.get(2), r.get(3), r.get(4));
        assert!((0.4..=0.6).contains(&pa), "P(A) {pa} is clamped");
        assert!((pa - (ma / (ma + mb)).clamp(0.4, 0.6)).abs() < 1e-9);
        let want = if r.get::<i64, _>(5) == 1 {
            1.0 - pa
        } else {
            pa
        };
        assert!((pc - want).abs() < 1e-9);
    }
    let cot: i64 = sqlx::query_scalar("SELECT cot_tokens FROM judges")
        .fetch_one(&conn)
        .await
        .unwrap();
    assert_eq!(cot, 16);
    store.close().await;
}

/// RL-CAI's `sampled` strategy end to end: N answers per prompt at temperature > 0, every two a
/// candidate pair, all labeled, ranked at export into best vs worst (or every pair).
#[tokio::test(flavor = "multi_thread")]
async fn sampled_answers_are_paired_labeled_and_ranked() {
    use tenets::export::{self, Format, Kind};
    use tenets::filters::{PairFilters, SampledPairs};
    let dir = tempfile::tempdir().unwrap();
    let prompts = common::write_prompts(dir.path(), "p.jsonl", &common::prompts(3));
    let db = dir.path().join("sampled.db");
    let mut options = common::options(&prompts, &db);
    options.engine.parallel = 4;
    options.rounds = 0;
    options.samples = 3;
    options.temperature = 1.0;
    let summary = tenets::pipeline::generate(&options, StopSignal::default())
        .await
        .unwrap();
    assert_eq!(summary.steps_written, 9, "{summary:?}");
    // A rerun finds every sample stored.
    let again = tenets::pipeline::generate(&options, StopSignal::default())
        .await
        .unwrap();
    assert_eq!((again.steps_written, again.already_complete), (0, 3));

    let store = Store::open_existing(&db).await.unwrap();
    let conn = common::connect(&db).await;
    let answers = sqlx::query(
        "SELECT prompt_id, round, seed, output FROM steps WHERE stage = 'answer' ORDER BY prompt_id, round",
    )
    .fetch_all(&conn)
    .await
    .unwrap();
    assert_eq!(answers.len(), 9);
    let mut by_prompt: HashMap<String, Vec<(i64, i64)>> = HashMap::new();
    for r in &answers {
        by_prompt
            .entry(r.get(0))
            .or_default()
            .push((r.get(1), r.get(2)));
    }
    for samples in by_prompt.values() {
        let rounds: Vec<i64> = samples.iter().map(|s| s.0).collect();
        assert_eq!(rounds, vec![0, 1, 2]);
        let mut seeds: Vec<i64> = samples.iter().map(|s| s.1).collect();
        seeds.dedup();
        assert_eq!(seeds.len(), 3, "each sample has its own seed");
    }
    let strategies: Vec<String> =
        sqlx::query_scalar("SELECT strategy FROM pairs ORDER BY prompt_id, strategy")
            .fetch_all(&conn)
            .await
            .unwrap();
    assert_eq!(strategies.len(), 9);
    for three in strategies.chunks(3) {
        assert_eq!(three, ["sampled:0-1", "sampled:0-2", "sampled:1-2"]);
    }
    // Before labeling nothing can be ranked, and export says so.
    let unranked = export::rows(&store, Kind::Dpo, &PairFilters::default())
        .await
        .unwrap();
    assert!(unranked.rows.is_empty());
    assert_eq!(
        unranked.dropped.get(&tenets::filters::Dropped::Unranked),
        Some(&9)
    );
    store.close().await;

    let summary = label(&label_options(&db), StopSignal::default())
        .await
        .unwrap();
    assert_eq!(summary.labels_written, 9, "{summary:?}");

    // Rank from the stored labels here and compare with what export chose.
    let store = Store::open_existing(&db).await.unwrap();
    let conn = common::connect(&db).await;
    let labels = sqlx::query(
        "SELECT pr.prompt_id, c.round, a.round, l.p_chosen FROM labels l \
         JOIN pairs pr ON pr.id = l.pair_id \
         JOIN steps c ON c.id = pr.chosen_step JOIN steps a ON a.id = pr.rejected_step",
    )
    .fetch_all(&conn)
    .await
    .unwrap();
    let mut scores: HashMap<String, [f64; 3]> = HashMap::new();
    let mut direct: HashMap<(String, i64, i64), f64> = HashMap::new();
    for r in &labels {
        let (prompt, i, j, p): (String, i64, i64, f64) = (r.get(0), r.get(1), r.get(2), r.get(3));
        let s = scores.entry(prompt.clone()).or_default();
        s[i as usize] += p / 2.0;
        s[j as usize] += (1.0 - p) / 2.0;
        direct.insert((prompt, i, j), p);
    }
    let everything = PairFilters {
        include_truncated: true,
        max_similarity: 1.01,
        trust_judge: true,
        ..Default::default()
    };
    let best_worst = export::rows(&store, Kind::Dpo, &everything).await.unwrap();
    let dropped: usize = best_worst.dropped.values().sum();
    assert_eq!(
        best_worst.rows.len() + dropped,
        9,
        "{:?}",
        best_worst.dropped
    );
    assert_eq!(
        best_worst
            .dropped
            .get(&tenets::filters::Dropped::NotBestWorst),
        Some(&6)
    );
    for row in &best_worst.rows {
        let row = row.dpo().expect("a DPO row");
        let prompt = row.provenance.prompt_id.clone();
        let s = scores[&prompt];
        let (best, worst) = (row.chosen_sample.unwrap(), row.rejected_sample.unwrap());
        let top = s.iter().cloned().fold(f64::MIN, f64::max);
        let bottom = s.iter().cloned().fold(f64::MAX, f64::min);
        assert!((s[best as usize] - top).abs() < 1e-9, "{s:?} {row:?}");
        assert!((s[worst as usize] - bottom).abs() < 1e-9, "{s:?} {row:?}");
        assert_eq!(row.strategy, "sampled");
        assert_eq!(row.provenance.run.samples, 3);
        let scored = row.sample_scores.as_ref().unwrap();
        for (a, b) in scored.iter().zip(s.iter()) {
            assert!((a - b).abs() < 1e-9);
        }
        // The label is the direct judgment of best against worst, oriented.
        let key = (prompt, best.min(worst), best.max(worst));
        let p = direct[&key];
        let want = if best < worst { p } else { 1.0 - p };
        assert!((row.p_chosen.unwrap() - want).abs() < 1e-9);
        assert!(want >= 0.5);
    }
    // Every pair, each oriented by its own label.
    let all = PairFilters {
        sampled_pairs: SampledPairs::All,
        ..everything.clone()
    };
    let rows = export::rows(&store, Kind::Dpo, &all).await.unwrap();
    assert_eq!(rows.rows.len(), 9, "{:?}", rows.dropped);
    assert!(rows
        .rows
        .iter()
        .all(|r| r.dpo().and_then(|r| r.p_chosen).unwrap() >= 0.5));
    // Parquet takes the same rows (sampled columns and all).
    let parquet = dir.path().join("sampled.parquet");
    let written = export::export(&store, Kind::Dpo, Format::Parquet, &all, &parquet)
        .await
        .unwrap();
    assert_eq!(written.rows.len(), 9);
    assert!(std::fs::metadata(&parquet).unwrap().len() > 0);
    // SFT rows are final revisions: a sampled-only run has none.
    let sft = export::rows(&store, Kind::Sft, &everything).await.unwrap();
    assert!(sft.rows.is_empty());
    store.close().await;
}
