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
//! The shared cores' speed drifts by ±15% over minutes, so tenets and the anchor run
//! `BENCH_REPEAT` times in alternating order (tenets first, then the anchor first, …): each
//! adjacent pair gives a ratio, and the median of those is the figure to quote.
//!
//! Run: `cargo bench --bench generate` (env: BENCH_PARALLEL=16, BENCH_MAX_TOKENS=96,
//! BENCH_PROMPTS=BENCH_PARALLEL, BENCH_REPEAT=3). With more prompts than sequences (the demo job: 64 prompts,
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
) -> Measured {
    let model = engine::load_model(config).expect("model");
    let chat = engine::chat_template(&model).expect("chat template");
    let mut ctx = batch::new_context(&model, config).expect("context");
    let started = Instant::now();
    let mut batch = LlamaBatch::new(config.batch_tokens, 1);
    let mut positions = Vec::new();
    let mut samplers: Vec<LlamaSampler> = Vec::new();
    let mut next = Vec::new();
    let mut prompt_tokens = 0;
    // Prefill one sequence per decode call, sampling its first token right away.
    for (seq, messages) in prompts.iter().enumerate() {
        let tokens = engine::tokenize_segments(&model, &chat.render(messages, true).unwrap());
        prompt_tokens += tokens.len() as u64;
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
    Measured {
        generated,
        prompt_tokens,
        seconds: started.elapsed().as_secs_f64(),
    }
}

/// One measured run: tokens generated, prompt tokens decoded, wall seconds.
#[derive(Debug, Clone, Copy)]
struct Measured {
    generated: u64,
    prompt_tokens: u64,
    seconds: f64,
}

impl Measured {
    fn rate(&self) -> f64 {
        self.generated as f64 / self.seconds
    }
    /// Seconds per token that went through the model, prompt or generated.
    fn per_token(&self) -> f64 {
        self.seconds / (self.generated + self.prompt_tokens) as f64
    }
}

/// The middle value (the mean of the two middle ones for an even count).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
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
    let repeats = env_usize("BENCH_REPEAT", 3).max(1);
    let threads = env_usize("BENCH_THREADS", tenets::settings::default_threads());
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let model_path = tenets::home::default_model_path();
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
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let constitution_path = root.join("constitutions/harmless-helpful.yaml");

    // Each tenets run writes a fresh database and loads the model itself (that counts: it is
    // the whole command); each anchor run loads the model before its clock starts.
    let run_tenets = |repeat: usize| {
        let db = dir.path().join(format!("bench-{repeat}.db"));
        let mut options = GenerateOptions::new(&model_path, &constitution_path, &prompt_file, &db);
        options.engine.parallel = parallel;
        options.max_tokens = max_tokens;
        options.temperature = 0.0;
        options.engine.model.threads = Some(threads);
        options.rounds = 1;
        options.run.quiet = true;
        let summary = runtime
            .block_on(pipeline::generate(&options, StopSignal::default()))
            .expect("generate");
        (summary, db)
    };
    // The anchors decode on a thread of their own, as tenets' engine does (see
    // `engine::on_own_thread`: llama.cpp's OpenMP workers outlive a run on a thread that stays).
    let run_anchor = || {
        engine::on_own_thread(|| plain_batched_decode(&config, &messages, 3 * max_tokens))
            .expect("anchor thread")
    };
    println!(
        "generate bench: {prompts} prompts, {parallel} sequences, ≤{max_tokens} new tokens a turn, {threads} threads, {repeats} alternating runs each"
    );
    let mut ratios = Vec::new();
    let mut last_db = None;
    for repeat in 0..repeats {
        let anchor_first = repeat % 2 == 1;
        let early_anchor = anchor_first.then(run_anchor);
        let (summary, db) = run_tenets(repeat);
        let anchor = early_anchor.unwrap_or_else(run_anchor);
        let tenets = Measured {
            generated: summary.generated_tokens,
            prompt_tokens: summary.prefilled_tokens,
            seconds: summary.seconds,
        };
        let ratio = tenets.rate() / anchor.rate();
        ratios.push(ratio);
        println!(
            "  run {}  anchor  plain llama-cpp-2 batched decode, {} tokens a sequence: {} tokens in {:.1} s = {:.1} tok/s ({:.2} ms a token, {} prompt tokens)",
            repeat + 1,
            3 * max_tokens,
            anchor.generated,
            anchor.seconds,
            anchor.rate(),
            anchor.per_token() * 1e3,
            anchor.prompt_tokens
        );
        println!(
            "         tenets  generate (answer+critique+revision): {} tokens in {:.1} s = {:.1} tok/s ({:.2} ms a token, {} prompt and request tokens; {} steps, {:.1} sequences and {:.2} graphs a batch, {:.1} s inside llama.cpp decode)",
            tenets.generated,
            tenets.seconds,
            tenets.rate(),
            tenets.per_token() * 1e3,
            tenets.prompt_tokens,
            summary.steps_written,
            summary.mean_batch_width,
            summary.mean_graphs_per_batch,
            summary.decode_seconds
        );
        println!(
            "         ratio   tenets / anchor tok/s = {ratio:.2}× ({} first)",
            if anchor_first { "anchor" } else { "tenets" }
        );
        last_db = Some((summary, db));
    }
    let (summary, db) = last_db.expect("at least one run");

    // The plain job uses the same principles tenets samples for each prompt.
    let constitution =
        tenets::constitution::Constitution::load(&constitution_path).expect("constitution");
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
        engine::on_own_thread(|| plain_reencoding_job(&config, &messages, &requests, max_tokens))
            .expect("plain job thread");
    let plain_rate = plain_tokens as f64 / plain_secs;
    let rate = summary.generated_tokens as f64 / summary.seconds;

    let (prompt_tokens, prefill_tokens): (i64, i64) = runtime.block_on(async {
        let store = tenets::store::Store::open_existing(&db).await.expect("db");
        let conn = connect(&db).await;
        let row = sqlx::query_as(
            "SELECT SUM(prompt_tokens), SUM(prefill_tokens) FROM steps WHERE stage != 'answer'",
        )
        .fetch_one(&conn)
        .await
        .expect("query");
        store.close().await;
        row
    });

    println!(
        "  ratio   tenets / anchor tok/s: median {:.2}× of {} alternating pairs ({})",
        median(ratios.clone()),
        ratios.len(),
        ratios
            .iter()
            .map(|r| format!("{r:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "  plain   same job re-encoding each turn: {plain_tokens} tokens in {plain_secs:.1} s = {plain_rate:.1} tok/s ({plain_encoded} prompt tokens encoded)"
    );
    println!(
        "  ratio   tenets (last run) / plain job: {:.2}× the tok/s, {:.2}× the wall time",
        rate / plain_rate,
        summary.seconds / plain_secs
    );
    println!(
        "  reuse   critique+revision turns decoded {prefill_tokens} of {prompt_tokens} conversation tokens = {:.2}× of re-encoding",
        prefill_tokens as f64 / prompt_tokens.max(1) as f64
    );
}

/// A connection of the bench's own to a run's database, to read its counts.
async fn connect(db: &std::path::Path) -> sqlx::SqlitePool {
    let options = sqlx::sqlite::SqliteConnectOptions::new().filename(db);
    sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .expect("db")
}
