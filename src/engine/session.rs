//! The session protocol between the stages and an engine: a [`Session`] is a conversation the
//! engine drives one turn at a time ([`TurnRequest`] in, [`TurnOutput`] out), waiting after each
//! turn until the stage says the result is durable. Both engines speak it — llama.cpp's
//! continuous batching ([`super::batch`]) and an OpenAI-compatible server ([`super::remote`]) —
//! and every stage (generate's chains, label's pairs, eval's verdicts, redteam's requests) is
//! written against it alone, so a stage never knows which engine serves it.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use llama_cpp_2::token::LlamaToken;
use tokio::sync::oneshot;

use crate::chat::Message;

/// Sampling settings shared by every turn of a run.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Sampling {
    /// 0 means greedy.
    pub temperature: f32,
    pub top_p: f32,
}

impl Sampling {
    /// What judges use: nothing is sampled, answers are read from probabilities.
    pub const GREEDY: Sampling = Sampling {
        temperature: 0.0,
        top_p: 1.0,
    };
}

/// One turn for the model to generate.
#[derive(Debug, Clone)]
pub struct TurnRequest {
    /// The whole conversation so far, ending in a user turn. The engine frames it: llama.cpp
    /// with the model's chat template, a remote server with its own.
    pub messages: Vec<Message>,
    /// Text the assistant's reply starts with (a judge's "The answer is: ("), or empty. It is
    /// data: special-token text in it is not parsed.
    pub reply_prefix: String,
    pub max_tokens: usize,
    pub seed: u32,
    /// When set, nothing is generated: the turn reports the probability of each answer at the
    /// position after the conversation (a judge reading its answer, see `label`).
    pub probe: Option<Arc<Probe>>,
    /// What this turn asks beyond the run's settings (a served request's own).
    pub options: TurnOptions,
}

/// A turn's own settings: what `tenets serve` passes from a request. The stages leave it empty.
#[derive(Debug, Clone, Default)]
pub struct TurnOptions {
    /// Sampling for this turn instead of the run's.
    pub sampling: Option<Sampling>,
    /// A GBNF grammar (root rule `root`) every generated token must follow.
    pub grammar: Option<String>,
    /// Phrases the turn cannot write (llama.cpp engine only).
    pub ban: Option<Arc<super::constrain::PhraseBan>>,
    /// Each piece of text as it is generated (the whole text still comes with the output).
    pub stream: Option<tokio::sync::mpsc::UnboundedSender<String>>,
}

/// The answers a probe turn reads, e.g. "A" and "B".
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Probe {
    /// Each answer as text: what a remote server's returned tokens are matched against.
    pub answers: Vec<String>,
    /// Each answer's single-token forms in the local model's vocabulary (empty for a remote).
    pub tokens: Vec<Vec<LlamaToken>>,
}

/// Why generation of a turn stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// The model ended its turn.
    Stop,
    /// `max_tokens` was reached.
    Length,
    /// The sequence's context was full.
    Context,
}

impl Finish {
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
            Finish::Context => "context",
        }
    }
}

#[derive(Debug, Clone)]
pub struct TurnOutput {
    pub text: String,
    pub finish: Finish,
    /// Tokens of the rendered conversation before this turn.
    pub prompt_tokens: usize,
    /// Of those, the ones actually decoded (the rest came from the KV cache).
    pub prefill_tokens: usize,
    pub generated_tokens: usize,
    /// For a probe turn: the probability of each of its token sets (summed over the set).
    pub probe_mass: Vec<f64>,
}

/// A turn that could not run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TurnFailure {
    PromptTooLong {
        tokens: usize,
        limit: usize,
    },
    /// The chat template could not frame the conversation.
    Template(String),
    /// A remote server refused the request (not a transient error: those are retried).
    Remote(String),
    /// The turn's grammar could not be compiled.
    Grammar(String),
}

impl std::fmt::Display for TurnFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TurnFailure::PromptTooLong { tokens, limit } => write!(
                f,
                "conversation is {tokens} tokens; the per-sequence context holds {limit} \
                 (raise --ctx or shorten the prompt)"
            ),
            TurnFailure::Template(e) => write!(f, "chat template: {e}"),
            TurnFailure::Remote(e) => write!(f, "server: {e}"),
            TurnFailure::Grammar(e) => write!(f, "grammar: {e}"),
        }
    }
}

/// What a session wants next.
pub enum Next {
    Turn(TurnRequest),
    /// Wait for the receiver (true: ask again; false: the session is over).
    Wait(oneshot::Receiver<bool>),
    Done,
}

/// A receiver that has already answered `go_on`: for a session with nothing to wait for.
pub fn resolved(go_on: bool) -> oneshot::Receiver<bool> {
    let (tx, rx) = oneshot::channel();
    let _ = tx.send(go_on);
    rx
}

/// A conversation the engine drives one turn at a time.
pub trait Session: Send {
    fn next_turn(&mut self) -> Next;
    /// Takes the outcome of the turn; the receiver resolves once it is durable (true to go on).
    fn finish_turn(&mut self, outcome: Result<TurnOutput, TurnFailure>) -> oneshot::Receiver<bool>;
    /// Whether nobody wants this session's result any more (a served client hung up): the
    /// engine then stops its turn and frees the slot. Stages' sessions are never abandoned.
    fn abandoned(&self) -> bool {
        false
    }
}

/// Shared stop request: run, drain (finish in-flight turns, start nothing), or abort now.
#[derive(Debug, Clone, Default)]
pub struct StopSignal(Arc<AtomicU8>);

impl StopSignal {
    const RUN: u8 = 0;
    const DRAIN: u8 = 1;
    const ABORT: u8 = 2;

    pub fn drain(&self) {
        let _ = self
            .0
            .compare_exchange(Self::RUN, Self::DRAIN, Ordering::SeqCst, Ordering::SeqCst);
    }
    pub fn abort(&self) {
        self.0.store(Self::ABORT, Ordering::SeqCst);
    }
    pub fn draining(&self) -> bool {
        self.0.load(Ordering::SeqCst) >= Self::DRAIN
    }
    pub fn aborted(&self) -> bool {
        self.0.load(Ordering::SeqCst) >= Self::ABORT
    }
}

/// Running totals, readable while the engine works (for progress display).
#[derive(Debug, Default)]
pub struct Counters {
    pub generated: AtomicU64,
    pub prefilled: AtomicU64,
    /// llama.cpp decode calls, and the sequences sampled in them (mean batch width).
    pub batches: AtomicU64,
    pub sampled: AtomicU64,
    /// Time spent inside llama.cpp's decode, in microseconds.
    pub decode_micros: AtomicU64,
    /// Graph computes those decode calls split into (see [`super::batch::graph_count`]).
    pub graphs: AtomicU64,
}
