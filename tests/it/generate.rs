//! End to end on the real default model: generate with 2 rounds and 4 parallel sequences,
//! resume, export in both formats, template-looking user text kept verbatim, and a prompt too
//! long for its context failing alone.

use crate::common;

use std::collections::HashMap;

use polars::prelude::SerReader;
use sqlx::Row;
use tenets::engine::StopSignal;
use tenets::export::{self, Format, Kind};
use tenets::filters::{Dropped, PairFilters};
use tenets::pipeline;
use tenets::store::Store;

const TEMPLATE_PROMPT: &str = "Explain {{ user.name }} and {% if x %}yes{% endif %} in Jinja. {#";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_resume_and_export() {
    let _one_at_a_time = common::MODEL_LOCK.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut texts = common::prompts(7);
    texts.push(TEMPLATE_PROMPT.to_string());
    // An exact repeat and a near one (case and punctuation): left out, and recorded.
    texts.push(texts[0].clone());
    texts.push(texts[1].to_uppercase().replace('.', "!"));
    let prompts = common::write_prompts(dir.path(), "p.jsonl", &texts);
    let db = dir.path().join("out.db");
    let mut options = common::options(&prompts, &db);
    options.rounds = 2;
    options.engine.parallel = 4;

    let summary = pipeline::generate(&options, StopSignal::default())
        .await
        .unwrap();
    assert_eq!(summary.prompts, 8);
    assert_eq!(summary.duplicates, 2);
    assert_eq!(summary.steps_written, 8 * 5);
    assert_eq!(summary.failures, 0);
    assert!(!summary.interrupted);

    let store = Store::open_existing(&db).await.unwrap();
    let conn = common::connect(&db).await;
    let dropped = sqlx::query(
        "SELECT d.line, d.reason, p.line FROM dropped_prompts d \
         JOIN prompts p ON p.id = d.matched_prompt_id ORDER BY d.line",
    )
    .fetch_all(&conn)
    .await
    .unwrap();
    let dropped: Vec<(i64, String, i64)> = dropped
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        dropped,
        vec![(9, "duplicate".into(), 1), (10, "near-duplicate".into(), 2)]
    );
    let stats = tenets::stats::collect(&store).await.unwrap();
    assert_eq!(
        (
            stats.runs[0].duplicate_prompts,
            stats.runs[0].near_duplicate_prompts
        ),
        (1, 1)
    );
    // Every prompt: one answer, two critiques, two revisions, one pair.
    let rows =
        sqlx::query("SELECT prompt_id, stage, COUNT(*) FROM steps GROUP BY prompt_id, stage")
            .fetch_all(&conn)
            .await
            .unwrap();
    let mut per_prompt: HashMap<String, HashMap<String, i64>> = HashMap::new();
    for r in rows {
        per_prompt
            .entry(r.get(0))
            .or_default()
            .insert(r.get(1), r.get(2));
    }
    assert_eq!(per_prompt.len(), 8);
    for stages in per_prompt.values() {
        assert_eq!(stages["answer"], 1);
        assert_eq!(stages["critique"], 2);
        assert_eq!(stages["revision"], 2);
    }
    let pairs: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM pairs")
        .fetch_one(&conn)
        .await
        .unwrap();
    assert_eq!(pairs, 8);
    // Critiques name the principle they used; the answer names none.
    let unnamed: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM steps WHERE (stage = 'answer') != (principle_id IS NULL)",
    )
    .fetch_one(&conn)
    .await
    .unwrap();
    assert_eq!(unnamed, 0);

    // Follow-up turns reuse the KV cache: far fewer tokens decoded than the conversation holds.
    let (prompt_tokens, prefill_tokens): (i64, i64) = sqlx::query_as(
        "SELECT SUM(prompt_tokens), SUM(prefill_tokens) FROM steps WHERE stage != 'answer'",
    )
    .fetch_one(&conn)
    .await
    .unwrap();
    assert!(
        (prefill_tokens as f64) < 0.5 * prompt_tokens as f64,
        "decoded {prefill_tokens} of {prompt_tokens}"
    );

    // User text that looks like a template is stored byte for byte.
    let stored: Vec<String> = sqlx::query_scalar("SELECT messages FROM prompts")
        .fetch_all(&conn)
        .await
        .unwrap();
    assert!(stored.iter().any(|m| {
        let messages: Vec<tenets::chat::Message> = serde_json::from_str(m).unwrap();
        messages[0].content == TEMPLATE_PROMPT
    }));

    // JSONL export: TRL conversational columns plus provenance; the template prompt intact.
    let jsonl = dir.path().join("dpo.jsonl");
    // Answers of ≤ 24 tokens are mostly cut off: keep them here, where the format is the point.
    let everything = PairFilters {
        include_truncated: true,
        max_similarity: 1.01,
        ..Default::default()
    };
    let n = export::export(&store, Kind::Dpo, Format::Jsonl, &everything, &jsonl)
        .await
        .unwrap()
        .rows
        .len();
    assert_eq!(n, 8);
    // By default, pairs with a truncated answer are left out and counted.
    let filtered = export::export(
        &store,
        Kind::Dpo,
        Format::Jsonl,
        &PairFilters::default(),
        &dir.path().join("f.jsonl"),
    )
    .await
    .unwrap();
    let truncated: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM pairs pr JOIN steps c ON c.id = pr.chosen_step \
         JOIN steps a ON a.id = pr.rejected_step WHERE c.finish != 'stop' OR a.finish != 'stop'",
    )
    .fetch_one(&conn)
    .await
    .unwrap();
    assert_eq!(
        filtered
            .dropped
            .get(&Dropped::Truncated)
            .copied()
            .unwrap_or(0) as i64,
        truncated
    );
    assert_eq!(
        filtered.rows.len() + filtered.dropped.values().sum::<usize>(),
        8
    );
    let text = std::fs::read_to_string(&jsonl).unwrap();
    let rows: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for row in &rows {
        for key in [
            "prompt",
            "chosen",
            "rejected",
            "prompt_id",
            "run_id",
            "model_sha256",
            "constitution_sha256",
            "template_sha256",
            "principles",
            "seed",
            "temperature",
        ] {
            assert!(row.get(key).is_some(), "missing {key} in {row}");
        }
        assert_eq!(row["chosen"][0]["role"], "assistant");
        assert_eq!(row["principles"].as_array().unwrap().len(), 2);
    }
    assert!(rows
        .iter()
        .any(|r| r["prompt"][0]["content"].as_str() == Some(TEMPLATE_PROMPT)));

    // Parquet exports read back with the right columns and types.
    for (kind, columns) in [
        (
            Kind::Dpo,
            vec!["prompt", "chosen", "rejected", "run_id", "principles"],
        ),
        (Kind::Sft, vec!["messages", "run_id", "principles"]),
    ] {
        let path = dir.path().join(format!("{kind:?}.parquet"));
        assert_eq!(
            export::export(&store, kind, Format::Parquet, &everything, &path)
                .await
                .unwrap()
                .rows
                .len(),
            8
        );
        let df = polars::prelude::ParquetReader::new(std::fs::File::open(&path).unwrap())
            .finish()
            .unwrap();
        assert_eq!(df.height(), 8);
        for c in columns {
            let column = df.column(c).unwrap_or_else(|_| panic!("no column {c}"));
            if c == "prompt" || c == "messages" || c == "chosen" {
                assert!(
                    matches!(column.dtype(), polars::prelude::DataType::List(_)),
                    "{c}: {:?}",
                    column.dtype()
                );
            }
        }
    }
    store.close().await;

    // The same command again finds everything done and writes nothing.
    let again = pipeline::generate(&options, StopSignal::default())
        .await
        .unwrap();
    assert_eq!(again.run_id, summary.run_id);
    assert_eq!(again.already_complete, 8);
    assert_eq!(again.steps_written, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prompt_too_long_for_the_context_fails_alone() {
    let _one_at_a_time = common::MODEL_LOCK.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut texts = common::prompts(3);
    texts.insert(1, "word ".repeat(600));
    let prompts = common::write_prompts(dir.path(), "p.jsonl", &texts);
    let db = dir.path().join("out.db");
    let mut options = common::options(&prompts, &db);
    options.engine.ctx = 256;
    options.engine.parallel = 2;

    let summary = pipeline::generate(&options, StopSignal::default())
        .await
        .unwrap();
    assert_eq!(summary.failures, 1);
    let conn = common::connect(&db).await;
    let reasons: Vec<(String, String)> = sqlx::query_as("SELECT stage, reason FROM failures")
        .fetch_all(&conn)
        .await
        .unwrap();
    assert_eq!(reasons.len(), 1);
    assert_eq!(reasons[0].0, "answer");
    assert!(reasons[0].1.contains("context"), "{}", reasons[0].1);
    let pairs: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM pairs")
        .fetch_one(&conn)
        .await
        .unwrap();
    assert_eq!(pairs, 3);
}

/// A session of one probe turn: the probabilities of answers "A" and "B" after its conversation.
struct ProbeSession {
    request: Option<tenets::engine::session::TurnRequest>,
    results: std::sync::mpsc::Sender<(usize, tenets::engine::session::TurnOutput)>,
    index: usize,
}

impl tenets::engine::session::Session for ProbeSession {
    fn next_turn(&mut self) -> tenets::engine::session::Next {
        match self.request.take() {
            Some(request) => tenets::engine::session::Next::Turn(request),
            None => tenets::engine::session::Next::Done,
        }
    }
    fn finish_turn(
        &mut self,
        outcome: Result<tenets::engine::session::TurnOutput, tenets::engine::session::TurnFailure>,
    ) -> tokio::sync::oneshot::Receiver<bool> {
        self.results
            .send((self.index, outcome.expect("probe turn")))
            .unwrap();
        tenets::engine::session::resolved(true)
    }
}

/// Conversations that open alike: with several sequences the later ones copy the first one's
/// KV for the shared opening instead of decoding it, and must read the same probabilities as
/// with one sequence, where each conversation is decoded after the one before.
#[test]
fn a_copied_shared_prefix_gives_the_same_probabilities() {
    use tenets::chat::Message;
    use tenets::engine::{self, batch, session};

    let system = "You are a careful assistant. Every question about the natural world has two \
                  options: reply (A) for yes or (B) for no, with the letter only.";
    let questions = [
        "Is the sun a star?",
        "Do fish breathe through gills?",
        "Does ice float on water?",
        "Can a whale fly?",
    ];
    let run = |parallel: usize| {
        let mut config = engine::EngineConfig::new(common::model());
        config.parallel = parallel;
        config.ctx_per_sequence = 256;
        config.threads = tenets::settings::default_threads();
        engine::on_own_thread(|| {
            let model = engine::load_model(&config).unwrap();
            let chat = engine::chat_template(&model).unwrap();
            let mut ctx = batch::new_context(&model, &config).unwrap();
            let probe = std::sync::Arc::new(session::Probe {
                answers: vec!["A".into(), "B".into()],
                tokens: tenets::label::AnswerTokens::of(&model).sets(),
            });
            let (jobs_tx, jobs) = tokio::sync::mpsc::channel(questions.len());
            let (results_tx, results) = std::sync::mpsc::channel();
            for (index, question) in questions.iter().enumerate() {
                let session = ProbeSession {
                    request: Some(session::TurnRequest {
                        messages: vec![Message::new("system", system), Message::user(*question)],
                        reply_prefix: tenets::label::ANSWER_PREFIX.into(),
                        max_tokens: 1,
                        seed: 0,
                        probe: Some(probe.clone()),
                        options: session::TurnOptions::default(),
                    }),
                    results: results_tx.clone(),
                    index,
                };
                jobs_tx
                    .try_send(Box::new(session) as Box<dyn session::Session>)
                    .unwrap();
            }
            drop(jobs_tx);
            let counters = session::Counters::default();
            batch::run(
                &model,
                &chat,
                &mut ctx,
                &config,
                &session::Sampling::GREEDY,
                jobs,
                &StopSignal::default(),
                &counters,
            )
            .unwrap();
            drop(results_tx);
            let mut outputs: Vec<_> = results.iter().collect();
            outputs.sort_by_key(|(index, _)| *index);
            outputs
                .into_iter()
                .map(|(_, output)| output)
                .collect::<Vec<_>>()
        })
        .unwrap()
    };
    let one = run(1);
    let shared = run(4);
    // One sequence: the first conversation decodes everything; each later one keeps the
    // opening its predecessor left in the cache.
    let opening = one[1].prompt_tokens - one[1].prefill_tokens;
    assert!(opening >= 30, "the shared opening is {opening} tokens");
    for (a, b) in one.iter().zip(&shared) {
        assert_eq!(a.prompt_tokens, b.prompt_tokens);
        assert_eq!(a.probe_mass.len(), 2);
        for (p, q) in a.probe_mass.iter().zip(&b.probe_mass) {
            assert!(
                (p - q).abs() < 0.02,
                "{:?} vs {:?}",
                a.probe_mass,
                b.probe_mass
            );
        }
    }
    // Four sequences: the first decodes everything, the others copy its opening.
    assert_eq!(shared[0].prefill_tokens, shared[0].prompt_tokens);
    for output in &shared[1..] {
        assert_eq!(output.prefill_tokens, output.prompt_tokens - opening);
    }
    // The readings are not empty: the letters hold much of the mass.
    for output in &one {
        let mass: f64 = output.probe_mass.iter().sum();
        assert!(mass > 0.2, "{:?}", output.probe_mass);
    }
}
