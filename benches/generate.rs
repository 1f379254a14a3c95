//! Generate throughput against its ceiling, measured in one run on the same model and threads.
//!
//! 1. Anchor: a plain llama-cpp-2 loop that prefills N chat prompts and decodes N sequences
//!    together in every batch, each for as many tokens as a whole chain may generate (3 turns of
//!    `max_tokens`), so its contexts grow as the chains' do — the most tokens/s this machine's
//!    llama.cpp gives at this batch width and length.
//! 2. `tenets generate` on the same prompts (answer → critique → revision, greedy, --parallel N).
//! 3. A second anchor for the same job done the plain way: 16 sequences in one batch, each turn
//!    re-encoding the whole conversation (answer, then critique, then revision), greedy.
//! 4. From the run's store: conversation tokens in the critique and revision turns, and how many
//!    of them were actually decoded (the rest came from the KV cache).
//!
//! Run: `cargo bench --bench generate` (env: BENCH_PARALLEL=16, BENCH_MAX_TOKENS=96,
//! BENCH_PROMPTS=BENCH_PARALLEL). With more prompts than sequences (the demo job: 64 prompts,
//! `--parallel 16`, `--max-tokens 128`) tenets runs them all, refilling slots as chains end; the
//! anchors decode the first BENCH_PARALLEL (their rates do not depend on how many).

mod common;

use common::env_usize;

use std::time::Instant;

use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::sampling::LlamaSampler;
use tenets::chat::Message;
use tenets::engine::{self, batch, EngineConfig, StopSignal};
use tenets::pipeline::{self, GenerateOptions};
use tenets::prompt;

/// The anchor: N sequences, prefill then lockstep decode of `max_tokens` each (EOG ignored, so
/// every sequence decodes the full count).
fn plain_batched_decode(
    config: &EngineConfig,
    prompts: &[Vec<Message>],
    max_tokens: usize,
) -> (u64, f64) {
    let model = engine::load_model(config).expect("model");
    let chat = engine::chat_template(&model).expect("chat template");
    let mut ctx = batch::new_context(&model, config).expect("context");
    let started = Instant::now();
    let mut batch = LlamaBatch::new(config.batch_tokens, 1);
    let mut positions = Vec::new();
    let mut samplers: Vec<LlamaSampler> = Vec::new();
    let mut next = Vec::new();
    // Prefill one sequence per decode call, sampling its first token right away.
    for (seq, messages) in prompts.iter().enumerate() {
        let tokens = engine::tokenize_segments(&model, &chat.render(messages, true).unwrap());
        batch.clear();
        for (i, t) in tokens.iter().enumerate() {
            batch
                .add(*t, i as i32, &[seq as i32], i + 1 == tokens.len())
                .unwrap();
        }
        ctx.decode(&mut batch).unwrap();
        let mut sampler = LlamaSampler::greedy();
        next.push(sampler.sample(&ctx, batch.n_tokens() - 1));
        samplers.push(sampler);
        positions.push(tokens.len() as i32);
    }
    let mut generated = prompts.len() as u64;
    for _ in 1..max_tokens {
        batch.clear();
        for seq in 0..prompts.len() {
            batch
                .add(next[seq], positions[seq], &[seq as i32], true)
                .unwrap();
            positions[seq] += 1;
        }
        ctx.decode(&mut batch).unwrap();
        for seq in 0..prompts.len() {
            next[seq] = samplers[seq].sample(&ctx, seq as i32);
        }
        generated += prompts.len() as u64;
    }
    (generated, started.elapsed().as_secs_f64())
}

/// The same answer → critique → revision job without KV reuse or continuous batching: each turn
/// clears the cache, encodes every conversation in full, and decodes all sequences in lockstep
/// until each has stopped or reached `max_tokens`.
fn plain_reencoding_job(
    config: &EngineConfig,
    prompts: &[Vec<Message>],
    requests: &[(String, String)],
    max_tokens: usize,
) -> (u64, u64, f64) {
    let model = engine::load_model(config).expect("model");
    let chat = engine::chat_template(&model).expect("chat template");
    let mut ctx = batch::new_context(&model, config).expect("context");
    let vocab = model.vocab();
    let started = Instant::now();
    let mut conversations: Vec<Vec<Message>> = prompts.to_vec();
    let (mut generated, mut encoded) = (0u64, 0u64);
    let mut batch = LlamaBatch::new(config.batch_tokens, 1);
    for turn in 0..3 {
        if turn > 0 {
            for (conversation, (critique, revision)) in conversations.iter_mut().zip(requests) {
                let request = if turn == 1 { critique } else { revision };
                conversation.push(Message::user(request.clone()));
            }
        }
        ctx.clear_kv_cache();
        let n = conversations.len();
        let mut positions = vec![0i32; n];
        let mut next = vec![None; n];
        let mut samplers: Vec<LlamaSampler> = (0..n).map(|_| LlamaSampler::greedy()).collect();
        let mut texts = vec![Vec::new(); n];
        for (seq, conversation) in conversations.iter().enumerate() {
            let tokens =
                engine::tokenize_segments(&model, &chat.render(conversation, true).unwrap());
            encoded += tokens.len() as u64;
            for chunk in tokens.chunks(config.batch_tokens) {
                batch.clear();
                for t in chunk {
                    let last = positions[seq] as usize + 1 == tokens.len();
                    batch.add(*t, positions[seq], &[seq as i32], last).unwrap();
                    positions[seq] += 1;
                }
                ctx.decode(&mut batch).unwrap();
            }
            next[seq] = Some(samplers[seq].sample(&ctx, batch.n_tokens() - 1));
        }
        for _ in 0..max_tokens {
            batch.clear();
            let mut rows = Vec::new();
            for seq in 0..n {
                if let Some(t) = next[seq] {
                    if vocab.is_eog(t) || texts[seq].len() >= max_tokens {
                        next[seq] = None;
                        continue;
                    }
                    texts[seq].push(t);
                    generated += 1;
                    batch.add(t, positions[seq], &[seq as i32], true).unwrap();
                    positions[seq] += 1;
                    rows.push(seq);
                }
            }
            if rows.is_empty() {
                break;
            }
            ctx.decode(&mut batch).unwrap();
            for (row, seq) in rows.into_iter().enumerate() {
                next[seq] = Some(samplers[seq].sample(&ctx, row as i32));
            }
        }
        for (conversation, tokens) in conversations.iter_mut().zip(&texts) {
            let bytes: Vec<u8> = tokens
                .iter()
                .flat_map(|t| vocab.token_to_piece(*t, false, None))
                .collect();
            conversation.push(Message::assistant(String::from_utf8_lossy(&bytes)));
        }
    }
    (generated, encoded, started.elapsed().as_secs_f64())
}

fn main() {
    let parallel = env_usize("BENCH_PARALLEL", 16);
    let max_tokens = env_usize("BENCH_MAX_TOKENS", 96);
    let prompts = env_usize("BENCH_PROMPTS", parallel).max(parallel);
    let threads = env_usize("BENCH_THREADS", engine::default_threads());
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let model_path = tenets::models::default_model_path();
    assert!(
        model_path.exists(),
        "run scripts/fetch-model first ({})",
        model_path.display()
    );

    // The first BENCH_PROMPTS bundled prompts for tenets, the first N of them for the anchors.
    let set = prompt::load(&root.join("prompts/sets/demo.jsonl")).expect("prompts");
    let mut items = set.items;
    assert!(
        items.len() >= prompts,
        "the demo set has {} prompts",
        items.len()
    );
    items.truncate(prompts);
    let dir = tempfile::tempdir().expect("tempdir");
    let prompt_file = dir.path().join("bench.jsonl");
    let body: String = items
        .iter()
        .map(|i| format!("{}\n", serde_json::json!({ "messages": i.messages })))
        .collect();
    std::fs::write(&prompt_file, body).expect("write prompts");

    let mut config = EngineConfig::new(&model_path);
    config.parallel = parallel;
    config.threads = threads;
    config.ctx_per_sequence = 2048;
    let messages: Vec<Vec<Message>> = items[..parallel]
        .iter()
        .map(|i| i.messages.clone())
        .collect();
    // tenets first, then the anchors, each from a fresh model load.
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let db = dir.path().join("bench.db");
    let mut options = GenerateOptions::new(
        &model_path,
        &root.join("constitutions/harmless-helpful.yaml"),
        &prompt_file,
        &db,
    );
    options.parallel = parallel;
    options.max_tokens = max_tokens;
    options.temperature = 0.0;
    options.threads = threads;
    options.rounds = 1;
    let summary = runtime
        .block_on(pipeline::generate(&options, StopSignal::default()))
        .expect("generate");
    let rate = summary.generated_tokens as f64 / summary.seconds;

    let (anchor_tokens, anchor_secs) = plain_batched_decode(&config, &messages, 3 * max_tokens);
    let anchor_rate = anchor_tokens as f64 / anchor_secs;

    // The plain job uses the same principles tenets samples for each prompt.
    let constitution =
        tenets::constitution::Constitution::load(&root.join("constitutions/harmless-helpful.yaml"))
            .expect("constitution");
    let templates = tenets::turns::TurnTemplates::bundled().expect("templates");
    let requests: Vec<(String, String)> = items[..parallel]
        .iter()
        .map(|item| {
            let p = constitution.sample_principles(42, &item.id, 1)[0];
            let render = |t| templates.render(t, &constitution, p, 1, 1).expect("render");
            (
                render(tenets::turns::Turn::Critique),
                render(tenets::turns::Turn::Revision),
            )
        })
        .collect();
    let (plain_tokens, plain_encoded, plain_secs) =
        plain_reencoding_job(&config, &messages, &requests, max_tokens);
    let plain_rate = plain_tokens as f64 / plain_secs;

    let (prompt_tokens, prefill_tokens): (i64, i64) = runtime.block_on(async {
        let store = tenets::store::Store::open_existing(&db).await.expect("db");
        let row = sqlx::query_as(
            "SELECT SUM(prompt_tokens), SUM(prefill_tokens) FROM steps WHERE stage != 'answer'",
        )
        .fetch_one(store.pool())
        .await
        .expect("query");
        store.close().await;
        row
    });

    println!(
        "generate bench: {prompts} prompts, {parallel} sequences, ≤{max_tokens} new tokens a turn, {threads} threads"
    );
    println!(
        "  anchor  plain llama-cpp-2 batched decode, {} tokens a sequence: {anchor_tokens} tokens in {anchor_secs:.1} s = {anchor_rate:.1} tok/s",
        3 * max_tokens
    );
    println!(
        "  tenets  generate (answer+critique+revision): {} tokens in {:.1} s = {rate:.1} tok/s  ({} steps, {:.1} sequences per batch on average, {} prompt tokens decoded)",
        summary.generated_tokens, summary.seconds, summary.steps_written, summary.mean_batch_width, summary.prefilled_tokens
    );
    println!(
        "          of which {:.1} s inside llama.cpp decode",
        summary.decode_seconds
    );
    println!(
        "  plain   same job re-encoding each turn: {plain_tokens} tokens in {plain_secs:.1} s = {plain_rate:.1} tok/s ({plain_encoded} prompt tokens encoded)"
    );
    println!(
        "  ratio   tenets / anchor tok/s = {:.2}×",
        rate / anchor_rate
    );
    println!(
        "  ratio   tenets / plain job: {:.2}× the tok/s, {:.2}× the wall time",
        rate / plain_rate,
        summary.seconds / plain_secs
    );
    println!(
        "  reuse   critique+revision turns decoded {prefill_tokens} of {prompt_tokens} conversation tokens = {:.2}× of re-encoding",
        prefill_tokens as f64 / prompt_tokens.max(1) as f64
    );
}
