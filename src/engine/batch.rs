//! Continuous batching over one llama.cpp context.
//!
//! Each of `parallel` slots owns one llama.cpp sequence and serves one [`Session`] at a time.
//! Every step builds one batch from the next token of each decoding slot plus as many prompt
//! tokens of prefilling slots as the batch has room for, so a slot that finishes is refilled at
//! once. Before a turn is prefilled, its tokens are compared with what the slot's KV cache
//! already holds and only the new suffix is decoded: a critique turn re-uses the encoded prompt
//! and answer, and a new conversation re-uses a shared system prompt. When another slot holds a
//! longer prefix of the turn (the first conversations of a run all open with the same system
//! prompt), the slot copies that slot's KV instead of decoding the prefix again.
//!
//! With one KV stream per sequence, llama.cpp splits a batch into graph computes that each take
//! consecutive sequence ids and the same number of tokens from each; tokens go into the batch in
//! sequence order so that the split stays as small as it can (see [`graph_count`]).
//!
//! A finished turn is handed to its session, which answers with a receiver that resolves when
//! the result is durable; the slot waits for it (others keep decoding) before the next turn.

use std::num::NonZeroU32;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::data::LlamaTokenData;
use llama_cpp_2::token::data_array::LlamaTokenDataArray;
use llama_cpp_2::token::LlamaToken;
use tokio::sync::{mpsc, oneshot};

use super::constrain::PhraseBan;
use super::session::{
    Counters, Finish, Next, Probe, Sampling, Session, StopSignal, TurnFailure, TurnOutput,
    TurnRequest,
};
use super::{backend, tokenize_segments, EngineConfig, EngineError};
use crate::chat::{ChatTemplate, Segment};

struct Turn {
    max_tokens: usize,
    prompt_tokens: usize,
    prefill_tokens: usize,
    generated: usize,
    bytes: Vec<u8>,
    picker: Picker,
    probe: Option<Arc<Probe>>,
    /// Where each new piece of text goes as it is generated, and how many bytes have gone.
    stream: Option<mpsc::UnboundedSender<String>>,
    streamed: usize,
}

impl Turn {
    /// Sends the text generated since the last send, up to its last whole UTF-8 character.
    fn send_new_text(&mut self) {
        let Some(stream) = &self.stream else {
            return;
        };
        let fresh = &self.bytes[self.streamed..];
        let whole = match std::str::from_utf8(fresh) {
            Ok(_) => fresh.len(),
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            // Bytes no character can start with: sent as the replacement character.
            Err(_) => fresh.len(),
        };
        if whole > 0 {
            let _ = stream.send(String::from_utf8_lossy(&fresh[..whole]).into_owned());
            self.streamed += whole;
        }
    }
}

/// How a turn picks its next token: greedily or by the sampler chain, from the logits as the
/// model gave them, or — when the turn has a grammar or banned phrases — from the candidates
/// those allow.
struct Picker {
    choose: Choose,
    grammar: Option<LlamaSampler>,
    ban: Option<Arc<PhraseBan>>,
}

enum Choose {
    /// Temperature 0: the most likely token, read straight from the logits. llama.cpp's
    /// sampler would first copy all of them into a candidate list for every token.
    Greedy,
    Sampled(LlamaSampler),
}

impl Picker {
    fn new(
        sampling: &Sampling,
        seed: u32,
        grammar: Option<LlamaSampler>,
        ban: Option<Arc<PhraseBan>>,
    ) -> Picker {
        let choose = if sampling.temperature <= 0.0 {
            Choose::Greedy
        } else {
            Choose::Sampled(LlamaSampler::chain_simple([
                LlamaSampler::top_p(sampling.top_p, 1),
                LlamaSampler::temp(sampling.temperature),
                LlamaSampler::dist(seed),
            ]))
        };
        Picker {
            choose,
            grammar,
            ban: ban.filter(|b| !b.is_empty()),
        }
    }

    /// The next token after `written` (the turn's text so far), or None when the grammar and
    /// the banned phrases leave no token at all.
    fn pick(&mut self, ctx: &LlamaContext<'_>, row: i32, written: &[u8]) -> Option<LlamaToken> {
        let banned = self
            .ban
            .as_ref()
            .map(|b| b.banned_after(written))
            .unwrap_or_default();
        // Without a grammar, the model's own pick stands unless it is banned (rarely): only
        // then are the candidates copied out and filtered.
        if self.grammar.is_none() {
            let token = match &mut self.choose {
                Choose::Greedy => LlamaToken(argmax(ctx.get_logits_ith(row)) as i32),
                Choose::Sampled(sampler) => sampler.sample(ctx, row),
            };
            if banned.binary_search(&token.0).is_err() {
                return Some(token);
            }
        }
        let mut candidates = LlamaTokenDataArray::from_iter(
            ctx.get_logits_ith(row)
                .iter()
                .enumerate()
                .map(|(id, &logit)| LlamaTokenData::new(LlamaToken(id as i32), logit, 0.0)),
            false,
        );
        for id in banned {
            if let Some(c) = candidates.data.get_mut(id as usize) {
                c.set_logit(f32::NEG_INFINITY);
            }
        }
        if let Some(grammar) = &mut self.grammar {
            candidates.apply_sampler(grammar);
        }
        let token = match &mut self.choose {
            Choose::Greedy => {
                let (best, logit) = first_max(candidates.data.iter().map(|c| c.logit()))?;
                (logit > f32::NEG_INFINITY).then(|| candidates.data[best].id())?
            }
            Choose::Sampled(sampler) => {
                if candidates
                    .data
                    .iter()
                    .all(|c| c.logit() == f32::NEG_INFINITY)
                {
                    return None;
                }
                candidates.apply_sampler(sampler);
                let token = candidates.selected_token()?;
                sampler.accept(token);
                token
            }
        };
        if let Some(grammar) = &mut self.grammar {
            grammar.accept(token);
        }
        Some(token)
    }
}

/// The index of the largest value; the first of equals, as llama.cpp's greedy sampler picks.
fn argmax(values: &[f32]) -> usize {
    first_max(values.iter().copied()).map_or(0, |(i, _)| i)
}

/// The index and value of the first largest of `values` (NaN never wins), if any.
fn first_max(mut values: impl Iterator<Item = f32>) -> Option<(usize, f32)> {
    let mut best = (0, values.next()?);
    for (i, v) in values.enumerate() {
        if v > best.1 {
            best = (i + 1, v);
        }
    }
    Some(best)
}

enum State {
    Free,
    Ready,
    Waiting(oneshot::Receiver<bool>),
    Prefill(Turn, Vec<LlamaToken>),
    /// `next` has been sampled and is not yet in the KV cache.
    Decode(Turn, LlamaToken),
}

struct Slot {
    seq: i32,
    session: Option<Box<dyn Session>>,
    state: State,
    /// Exactly the tokens in this sequence's KV cache, position by position.
    in_kv: Vec<LlamaToken>,
}

/// Creates the context for `config` on `model`.
pub fn new_context<'m>(
    model: &'m LlamaModel,
    config: &EngineConfig,
) -> Result<LlamaContext<'m>, EngineError> {
    let per_seq = u32::try_from(config.ctx_per_sequence).unwrap_or(u32::MAX);
    let parallel = u32::try_from(config.parallel.max(1)).unwrap_or(1);
    let n_ctx = per_seq.saturating_mul(parallel);
    let threads = i32::try_from(config.threads.max(1)).unwrap_or(1);
    let batch = u32::try_from(config.batch_tokens.max(1)).unwrap_or(512);
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(n_ctx))
        .with_n_batch(batch)
        .with_n_ubatch(batch)
        .with_n_seq_max(parallel)
        .with_n_threads(threads)
        .with_n_threads_batch(threads);
    model
        .new_context(backend()?, params)
        .map_err(|e| EngineError::Context(format!("{e} (n_ctx {n_ctx}, {parallel} sequences)")))
}

/// Drives sessions from `jobs` until the channel closes and every session is done, or until
/// `stop` says otherwise.
#[allow(clippy::too_many_arguments)]
pub fn run(
    model: &LlamaModel,
    chat: &ChatTemplate,
    ctx: &mut LlamaContext<'_>,
    config: &EngineConfig,
    sampling: &Sampling,
    mut jobs: mpsc::Receiver<Box<dyn Session>>,
    stop: &StopSignal,
    counters: &Counters,
) -> Result<(), EngineError> {
    let limit = config.ctx_per_sequence;
    let mut slots: Vec<Slot> = (0..config.parallel.max(1))
        .map(|i| Slot {
            seq: i as i32,
            session: None,
            state: State::Free,
            in_kv: Vec::new(),
        })
        .collect();
    let mut batch = LlamaBatch::new(config.batch_tokens.max(1), 1);
    // The sequence of each token in `batch`, in order.
    let mut token_seqs: Vec<i32> = Vec::new();
    let mut jobs_closed = false;
    let vocab = model.vocab();

    loop {
        if stop.aborted() {
            return Ok(());
        }
        // 1. Move every slot as far as it can go without decoding. A session nobody wants any
        // more (a served client hung up) gives its slot back at once; what its KV holds stays,
        // for the next turn that shares a prefix with it.
        for slot in &mut slots {
            if slot.session.as_ref().is_some_and(|s| s.abandoned()) {
                slot.session = None;
                slot.state = State::Free;
            }
            loop {
                match std::mem::replace(&mut slot.state, State::Free) {
                    State::Free => {
                        slot.session = None;
                        if stop.draining() || jobs_closed {
                            break;
                        }
                        match jobs.try_recv() {
                            Ok(session) => {
                                slot.session = Some(session);
                                slot.state = State::Ready;
                            }
                            Err(mpsc::error::TryRecvError::Empty) => break,
                            Err(mpsc::error::TryRecvError::Disconnected) => {
                                jobs_closed = true;
                                break;
                            }
                        }
                    }
                    State::Waiting(mut rx) => match rx.try_recv() {
                        Ok(true) => slot.state = State::Ready,
                        Ok(false) | Err(oneshot::error::TryRecvError::Closed) => {}
                        Err(oneshot::error::TryRecvError::Empty) => {
                            slot.state = State::Waiting(rx);
                            break;
                        }
                    },
                    State::Ready => {
                        if stop.draining() {
                            continue; // becomes Free
                        }
                        let Some(session) = slot.session.as_mut() else {
                            continue;
                        };
                        match session.next_turn() {
                            Next::Done => {}
                            Next::Wait(rx) => slot.state = State::Waiting(rx),
                            Next::Turn(request) => {
                                slot.state = start_turn(
                                    model,
                                    chat,
                                    ctx,
                                    slot.seq,
                                    &mut slot.in_kv,
                                    request,
                                    sampling,
                                    limit,
                                )
                                .unwrap_or_else(|failure| {
                                    State::Waiting(session.finish_turn(Err(failure)))
                                });
                            }
                        }
                    }
                    busy @ (State::Prefill(..) | State::Decode(..)) => {
                        slot.state = busy;
                        break;
                    }
                }
            }
        }

        // 2. Nothing to decode: finish, or wait for commits or new work.
        let busy = slots
            .iter()
            .any(|s| matches!(s.state, State::Prefill(..) | State::Decode(..)));
        if !busy {
            let all_free = slots.iter().all(|s| matches!(s.state, State::Free));
            if all_free && (jobs_closed || stop.draining()) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_micros(500));
            continue;
        }

        // 3. One batch. Every decoding slot's next token has a place; prompt chunks share the
        // room left, in slot order. Tokens go in in sequence order, so that llama.cpp's split
        // (see `graph_count`) puts a prefilling slot's first token in the same graph as the
        // decoding slots' tokens.
        share_prefixes(ctx, &mut slots);
        let decoding = slots
            .iter()
            .filter(|s| matches!(s.state, State::Decode(..)))
            .count();
        let mut room = config.batch_tokens.max(1).saturating_sub(decoding);
        let mut takes = vec![0; slots.len()];
        for (i, slot) in slots.iter().enumerate() {
            if let State::Prefill(_, pending) = &slot.state {
                if room > 0 && !waits_for_shared_prefix(&slots, i) {
                    takes[i] = pending.len().min(room);
                    room -= takes[i];
                }
            }
        }
        batch.clear();
        token_seqs.clear();
        let mut rows: Vec<(usize, i32)> = Vec::new();
        for (i, slot) in slots.iter().enumerate() {
            match &slot.state {
                State::Decode(_, next) => {
                    add(&mut batch, *next, slot.in_kv.len() as i32, slot.seq, true)?;
                    token_seqs.push(slot.seq);
                    rows.push((i, batch.n_tokens() - 1));
                }
                State::Prefill(_, pending) if takes[i] > 0 => {
                    let base = slot.in_kv.len();
                    for (k, token) in pending[..takes[i]].iter().enumerate() {
                        let last = k + 1 == pending.len();
                        add(&mut batch, *token, (base + k) as i32, slot.seq, last)?;
                        token_seqs.push(slot.seq);
                        if last {
                            rows.push((i, batch.n_tokens() - 1));
                        }
                    }
                }
                _ => {}
            }
        }
        if batch.n_tokens() == 0 {
            // Every prefilling slot waits for a shared prefix that is not decoded yet; cannot
            // happen (the first of them never waits), but never spin on an empty batch.
            return Err(EngineError::Decode(
                "no slot could add a token to the batch".into(),
            ));
        }
        let graphs = graph_count(&token_seqs, config.batch_tokens.max(1));
        let decode_started = std::time::Instant::now();
        ctx.decode(&mut batch)
            .map_err(|e| EngineError::Decode(e.to_string()))?;
        counters.decode_micros.fetch_add(
            decode_started.elapsed().as_micros() as u64,
            Ordering::Relaxed,
        );
        counters.batches.fetch_add(1, Ordering::Relaxed);
        counters.graphs.fetch_add(graphs as u64, Ordering::Relaxed);
        counters
            .sampled
            .fetch_add(rows.len() as u64, Ordering::Relaxed);

        // 4. Account for what entered the KV cache, then sample.
        for (i, &take) in takes.iter().enumerate().filter(|(_, &t)| t > 0) {
            let slot = &mut slots[i];
            if let State::Prefill(_, pending) = &mut slot.state {
                slot.in_kv.extend(pending.drain(..take));
            }
            counters.prefilled.fetch_add(take as u64, Ordering::Relaxed);
        }
        for (i, row) in rows {
            let slot = &mut slots[i];
            let mut turn = match std::mem::replace(&mut slot.state, State::Free) {
                State::Decode(turn, next) => {
                    slot.in_kv.push(next);
                    turn
                }
                State::Prefill(turn, _) => turn,
                other => {
                    slot.state = other;
                    continue;
                }
            };
            if let Some(sets) = turn.probe.take() {
                let output = TurnOutput {
                    text: String::new(),
                    finish: Finish::Stop,
                    prompt_tokens: turn.prompt_tokens,
                    prefill_tokens: turn.prefill_tokens,
                    generated_tokens: 0,
                    probe_mass: token_set_mass(ctx.get_logits_ith(row), &sets.tokens),
                };
                slot.state = match slot.session.as_mut() {
                    Some(session) => State::Waiting(session.finish_turn(Ok(output))),
                    None => State::Free,
                };
                continue;
            }
            // The token to decode next, or why the turn ends.
            let next = match turn.picker.pick(ctx, row, &turn.bytes) {
                // The grammar and banned phrases left no token: the turn ends here.
                None => Err(Finish::Stop),
                Some(token) if vocab.is_eog(token) => Err(Finish::Stop),
                Some(token) => {
                    turn.generated += 1;
                    counters.generated.fetch_add(1, Ordering::Relaxed);
                    turn.bytes.extend(vocab.token_to_piece(token, false, None));
                    turn.send_new_text();
                    if turn.generated >= turn.max_tokens {
                        Err(Finish::Length)
                    } else if slot.in_kv.len() + 1 >= limit {
                        Err(Finish::Context)
                    } else {
                        Ok(token)
                    }
                }
            };
            slot.state = match next {
                Ok(token) => State::Decode(turn, token),
                Err(finish) => {
                    turn.stream = None;
                    let output = TurnOutput {
                        text: String::from_utf8_lossy(&turn.bytes).into_owned(),
                        finish,
                        prompt_tokens: turn.prompt_tokens,
                        prefill_tokens: turn.prefill_tokens,
                        generated_tokens: turn.generated,
                        probe_mass: Vec::new(),
                    };
                    match slot.session.as_mut() {
                        Some(session) => State::Waiting(session.finish_turn(Ok(output))),
                        None => State::Free,
                    }
                }
            };
        }
    }
}

/// Fewest tokens a copied prefix must save. Copying a sequence's KV moves its whole stream
/// (for SmolLM2 at 2048 cells, 47 MB), which costs about as much as decoding a token or two.
const MIN_SHARED_PREFIX: usize = 16;

/// The tokens a slot's untouched prefill turn covers (what its KV keeps, then what it will
/// decode); None for a slot that is not about to start prefilling a turn.
fn untouched_turn(slot: &Slot) -> Option<impl Iterator<Item = &LlamaToken> + Clone> {
    match &slot.state {
        State::Prefill(turn, pending) if pending.len() == turn.prefill_tokens => {
            Some(slot.in_kv.iter().chain(pending))
        }
        _ => None,
    }
}

fn common_prefix<'a>(
    a: impl Iterator<Item = &'a LlamaToken>,
    b: impl Iterator<Item = &'a LlamaToken>,
) -> usize {
    a.zip(b).take_while(|(x, y)| x == y).count()
}

/// Whether slot `i`, about to prefill a turn, should wait a step because an earlier slot is
/// decoding a prefix of it right now that `i` can then copy (the first wave of conversations,
/// which all open with the same system prompt).
fn waits_for_shared_prefix(slots: &[Slot], i: usize) -> bool {
    let Some(tokens) = untouched_turn(&slots[i]) else {
        return false;
    };
    let own = slots[i].in_kv.len();
    slots[..i].iter().any(|donor| match &donor.state {
        State::Prefill(_, pending) => {
            let shared = common_prefix(donor.in_kv.iter().chain(pending), tokens.clone());
            shared >= own + MIN_SHARED_PREFIX && donor.in_kv.len() < shared
        }
        _ => false,
    })
}

/// The slot whose KV holds the longest prefix of slot `i`'s untouched turn (the first of
/// equals), and that prefix's length, leaving at least one token to decode.
fn best_donor(slots: &[Slot], i: usize) -> Option<(usize, usize)> {
    let tokens = untouched_turn(&slots[i])?;
    let total = tokens.clone().count();
    slots
        .iter()
        .enumerate()
        .filter(|(d, _)| *d != i)
        .map(|(d, donor)| {
            let shared = common_prefix(donor.in_kv.iter(), tokens.clone());
            (d, shared.min(total.saturating_sub(1)))
        })
        .max_by_key(|&(d, shared)| (shared, std::cmp::Reverse(d)))
}

/// Starts each slot about to prefill a turn from the KV of the slot that holds the longest
/// prefix of it, when that saves at least [`MIN_SHARED_PREFIX`] tokens over its own cache: the
/// sequence is copied whole and cut back to the shared prefix. The copy itself happens inside
/// llama.cpp at the start of the next decode, before that decode writes anything.
fn share_prefixes(ctx: &mut LlamaContext<'_>, slots: &mut [Slot]) {
    for i in 0..slots.len() {
        let own = slots[i].in_kv.len();
        let Some((donor, shared)) = best_donor(slots, i) else {
            continue;
        };
        if shared < own + MIN_SHARED_PREFIX {
            continue;
        }
        let (donor_seq, seq) = (slots[donor].seq, slots[i].seq);
        // Whole-sequence positions (None, None): llama.cpp copies across KV streams only whole.
        if ctx.copy_kv_cache_seq(donor_seq, seq, None, None).is_err() {
            continue;
        }
        let slot = &mut slots[i];
        let State::Prefill(turn, pending) = &mut slot.state else {
            continue;
        };
        let cut = ctx
            .clear_kv_cache_seq(Some(seq as u32), Some(shared as u32), None)
            .unwrap_or(false);
        if cut {
            let copied = shared - own;
            slot.in_kv.extend(pending.drain(..copied));
            turn.prefill_tokens -= copied;
        } else {
            // A cache that cannot drop a suffix: start this sequence over from nothing.
            let _ = ctx.clear_kv_cache_seq(Some(seq as u32), None, None);
            let mut all = std::mem::take(&mut slot.in_kv);
            all.append(pending);
            turn.prefill_tokens = all.len();
            *pending = all;
        }
    }
}

/// How many graph computes llama.cpp splits a batch into, given each token's sequence in batch
/// order: a model of its equal split, which a context with one KV stream per sequence uses. A
/// micro-batch takes sequences with consecutive ids only, in the order they first appear, and
/// the same number of tokens from each (as many as the shortest has left, within `n_ubatch`).
/// Each graph compute has a fixed cost besides its tokens' (about one token's worth for SmolLM2
/// on 2 cores: 15 tokens split in two graphs took as long as 16 in one).
pub fn graph_count(token_seqs: &[i32], n_ubatch: usize) -> usize {
    let mut used = vec![false; token_seqs.len()];
    let mut left = token_seqs.len();
    let mut graphs = 0;
    while left > 0 {
        let mut set: Vec<i32> = Vec::new();
        for (i, &seq) in token_seqs.iter().enumerate() {
            if used[i] || set.contains(&seq) {
                continue;
            }
            if set.last().is_none_or(|&last| seq == last + 1) {
                set.push(seq);
            }
        }
        let remaining = |seq: i32| {
            token_seqs
                .iter()
                .zip(&used)
                .filter(|(&s, &u)| s == seq && !u)
                .count()
        };
        let shortest = set.iter().map(|&s| remaining(s)).min().unwrap_or(0);
        let each = shortest.min((n_ubatch / set.len().max(1)).max(1));
        for &seq in &set {
            let mut taken = 0;
            for (i, &s) in token_seqs.iter().enumerate() {
                if taken == each {
                    break;
                }
                if s == seq && !used[i] {
                    used[i] = true;
                    taken += 1;
                }
            }
        }
        left -= each * set.len();
        graphs += 1;
    }
    graphs
}

/// The probability of each token set under the softmax of `logits` (a token listed twice in a
/// set counts once).
pub fn token_set_mass(logits: &[f32], sets: &[Vec<LlamaToken>]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let z: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
    sets.iter()
        .map(|set| {
            let mut ids: Vec<usize> = set.iter().map(|t| t.0 as usize).collect();
            ids.sort_unstable();
            ids.dedup();
            ids.iter()
                .filter_map(|&i| logits.get(i))
                .map(|&l| f64::from(l - max).exp() / z)
                .sum()
        })
        .collect()
}

fn add(
    batch: &mut LlamaBatch,
    token: LlamaToken,
    pos: i32,
    seq: i32,
    logits: bool,
) -> Result<(), EngineError> {
    batch
        .add(token, pos, &[seq], logits)
        .map_err(|e| EngineError::Decode(e.to_string()))
}

/// Prepares a turn: tokenizes, keeps the longest cached prefix, schedules the rest.
#[allow(clippy::too_many_arguments)]
fn start_turn(
    model: &LlamaModel,
    chat: &ChatTemplate,
    ctx: &mut LlamaContext<'_>,
    seq: i32,
    in_kv: &mut Vec<LlamaToken>,
    request: TurnRequest,
    sampling: &Sampling,
    limit: usize,
) -> Result<State, TurnFailure> {
    let mut segments = chat
        .render(&request.messages, true)
        .map_err(|e| TurnFailure::Template(e.to_string()))?;
    if !request.reply_prefix.is_empty() {
        segments.push(Segment {
            text: request.reply_prefix.clone(),
            from_template: false,
        });
    }
    let tokens = tokenize_segments(model, &segments);
    if tokens.len() + 1 >= limit {
        return Err(TurnFailure::PromptTooLong {
            tokens: tokens.len(),
            limit,
        });
    }
    // Compiled before anything touches the KV cache: a grammar llama.cpp cannot parse fails
    // the turn alone.
    let grammar =
        match &request.options.grammar {
            Some(text) => Some(LlamaSampler::grammar(model, text, "root").map_err(|e| {
                TurnFailure::Grammar(format!("llama.cpp could not compile it ({e})"))
            })?),
            None => None,
        };
    let mut keep = common_prefix(in_kv.iter(), tokens.iter());
    // At least one token must be decoded to get logits for the first new token.
    keep = keep.min(tokens.len().saturating_sub(1));
    if keep < in_kv.len() {
        let removed = ctx
            .clear_kv_cache_seq(Some(seq as u32), Some(keep as u32), None)
            .unwrap_or(false);
        if !removed {
            // Some caches cannot drop a suffix: start the sequence over.
            let _ = ctx.clear_kv_cache_seq(Some(seq as u32), None, None);
            keep = 0;
        }
        in_kv.truncate(keep);
    }
    let pending = tokens[keep..].to_vec();
    let options = request.options;
    let picker = Picker::new(
        &options.sampling.unwrap_or(*sampling),
        request.seed,
        grammar,
        options.ban,
    );
    let turn = Turn {
        max_tokens: request.max_tokens.max(1),
        prompt_tokens: tokens.len(),
        prefill_tokens: pending.len(),
        generated: 0,
        bytes: Vec::new(),
        picker,
        probe: request.probe,
        stream: options.stream,
        streamed: 0,
    };
    Ok(State::Prefill(turn, pending))
}

#[cfg(test)]
mod tests {
    use super::{argmax, graph_count};

    #[test]
    fn graph_count_follows_llama_cpp_equal_split() {
        // Sixteen sequences, one token each: one graph.
        let all: Vec<i32> = (0..16).collect();
        assert_eq!(graph_count(&all, 512), 1);
        // A hole (sequence 5 idle) splits the run in two.
        let holed: Vec<i32> = (0..16).filter(|&s| s != 5).collect();
        assert_eq!(graph_count(&holed, 512), 2);
        // Sequence 5 prefilling 4 tokens after the others' single tokens: {0..5}, {6..15}, {5}.
        let mut late = holed.clone();
        late.extend([5; 4]);
        assert_eq!(graph_count(&late, 512), 3);
        // The same tokens in sequence order: {0..15} one each, then 5's other three.
        let mut ordered: Vec<i32> = (0..5).collect();
        ordered.extend([5; 4]);
        ordered.extend(6..16);
        assert_eq!(graph_count(&ordered, 512), 2);
        // Equal lengths split by n_ubatch: two sequences of 6 tokens, 4 a micro-batch → 2 each.
        let mut two = vec![0; 6];
        two.extend([1; 6]);
        assert_eq!(graph_count(&two, 4), 3);
        assert_eq!(graph_count(&[], 512), 0);
    }

    #[test]
    fn argmax_takes_the_first_of_equal_maxima() {
        assert_eq!(argmax(&[0.5, 2.0, -1.0, 2.0]), 1);
        assert_eq!(argmax(&[3.0]), 0);
        assert_eq!(argmax(&[f32::NEG_INFINITY, f32::NEG_INFINITY]), 0);
        // NaN never wins a comparison, as in llama.cpp's greedy loop.
        assert_eq!(argmax(&[1.0, f32::NAN, 4.0, f32::NAN]), 2);
        assert_eq!(argmax(&[f32::NAN, 1.0]), 0);
        assert_eq!(argmax(&[]), 0);
    }
}
