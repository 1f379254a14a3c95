//! The HTTP side of `tenets serve`: routes, the bearer key, and one chat completion from
//! request to response — the input screen, the exchange on the engine, the decision committed
//! to the log, then the response (one JSON body, or server-sent events).
//!
//! A streamed response sends its headers only once the engine has produced its first piece of
//! text (or the whole outcome), so a request the engine cannot serve — a conversation longer
//! than the context, a grammar llama.cpp cannot compile — still gets a 4xx JSON error rather
//! than a stream that breaks. With an output screen on, text is held until the screen has
//! passed it: a client never sees words that are then taken back.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::UnboundedReceiverStream;

use super::api::{
    finish_reason, message_json, ApiError, ChatRequest, ChatTurn, Decision, Format, Usage,
};
use super::exchange::{Exchange, Outcome};
use super::ServeState;
use crate::engine::session::{TurnFailure, TurnOptions};
use crate::guard::rules::{refusal, Flag};
use crate::store::GuardDecisionRecord;

pub fn router(state: Arc<ServeState>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .fallback(not_found)
        .with_state(state)
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn health(State(state): State<Arc<ServeState>>) -> Json<Value> {
    Json(json!({
        "status": "ok",
        "model": state.model_name,
        "slots": state.parallel,
        "in_flight": state.in_flight.load(Ordering::Relaxed),
    }))
}

async fn models(State(state): State<Arc<ServeState>>, headers: HeaderMap) -> Response {
    if let Err(e) = authorize(&state, &headers) {
        return e.into_response();
    }
    Json(json!({
        "object": "list",
        "data": [{
            "id": state.model_name,
            "object": "model",
            "created": state.started,
            "owned_by": "tenets",
        }],
    }))
    .into_response()
}

async fn not_found() -> ApiError {
    ApiError::invalid(
        None,
        "no such route: tenets serve answers POST /v1/chat/completions, GET /v1/models and \
         GET /health",
    )
    .with_status(StatusCode::NOT_FOUND)
    .with_code("unknown_url")
}

fn authorize(state: &ServeState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(key) = &state.api_key else {
        return Ok(());
    };
    let sent = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    if sent == Some(key.as_str()) {
        Ok(())
    } else {
        Err(ApiError::unauthorized())
    }
}

/// Sets its flag when dropped: a handler future dropped by a client that hung up tells the
/// engine to free the request's slot.
struct GoneOnDrop(Arc<AtomicBool>);

impl Drop for GoneOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Counts a request in flight while it lives (`/health` reports the count).
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn new(count: &'a AtomicUsize) -> InFlight<'a> {
        count.fetch_add(1, Ordering::Relaxed);
        InFlight(count)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What the engine made of a request: its outcome, its failure, or nothing (it was dropped).
type Ended = Option<Result<Outcome, TurnFailure>>;

/// The parts of a response every form shares.
#[derive(Clone)]
struct Reply {
    id: String,
    created: u64,
    model: String,
    json: bool,
    include_usage: bool,
}

async fn chat(
    State(state): State<Arc<ServeState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let _in_flight = InFlight::new(&state.in_flight);
    let started = Instant::now();
    if let Err(e) = authorize(&state, &headers) {
        return e.into_response();
    }
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            return ApiError::invalid(None, rejection.body_text())
                .with_status(rejection.status())
                .into_response()
        }
    };
    let turn =
        match ChatRequest::parse(&body).and_then(|r| r.check(&state.model_name, state.sampling)) {
            Ok(turn) => turn,
            Err(e) => return e.into_response(),
        };
    let id = format!("chatcmpl-{:024x}", rand::random::<u128>() >> 32);
    let reply = Reply {
        id: id.clone(),
        created: unix_now(),
        model: state.model_name.clone(),
        json: turn.format != Format::Text,
        include_usage: turn.include_usage,
    };

    // The input screen: a flagged user turn gets its principled refusal; nothing is generated.
    let flag = match input_flag(&state, crate::chat::last_user(&turn.messages)).await {
        Ok(flag) => flag,
        Err(e) => return e.into_response(),
    };
    if let Some(flag) = flag {
        let outcome = Outcome {
            text: refusal(&state.guards.constitution, &flag),
            finish: "stop".into(),
            outcome: "refused",
            flag: Some(flag),
            guard: Some("input"),
            revise_rounds: 0,
            prompt_tokens: 0,
            completion_tokens: 0,
        };
        let ended: Ended = Some(Ok(outcome.clone()));
        if let Err(e) = log(&state, &reply, &turn, &ended, started).await {
            return e.into_response();
        }
        return if turn.stream {
            stream_outcome(reply, outcome)
        } else {
            completion(&reply, &outcome).into_response()
        };
    }

    let grammar = match grammar_for(&turn.format) {
        Ok(g) => g,
        Err(e) => return e.into_response(),
    };
    let max_tokens = turn
        .max_tokens
        .unwrap_or(state.max_tokens)
        .min(state.ctx_per_sequence.saturating_sub(1).max(1));
    let seed = turn.seed.unwrap_or_else(|| {
        (crate::hash::hex_to_u64(&crate::hash::of_parts(&[&id])) & 0xFFFF_FFFF) as u32
    });
    // Text streams as it is generated only when no output screen has to pass it first.
    let (delta_tx, delta_rx) = if turn.stream && !state.guards.screens_output() {
        let (tx, rx) = mpsc::unbounded_channel();
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    let gone = Arc::new(AtomicBool::new(false));
    let options = TurnOptions {
        sampling: Some(turn.sampling),
        grammar,
        ban: Some(state.ban.clone()),
        stream: delta_tx,
    };
    let (exchange, result_rx) = Exchange::new(
        state.guards.clone(),
        turn.messages.clone(),
        max_tokens,
        seed,
        options,
        gone.clone(),
    );
    if state.jobs.send(Box::new(exchange)).await.is_err() {
        return ApiError::server(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is shutting down",
        )
        .into_response();
    }

    // The decision is logged whatever becomes of the client, before the response ends.
    let (logged_tx, logged_rx) = oneshot::channel::<Result<Ended, ApiError>>();
    {
        let state = state.clone();
        let turn = turn.clone();
        let reply = reply.clone();
        tokio::spawn(async move {
            let ended: Ended = result_rx.await.ok();
            let logged = log(&state, &reply, &turn, &ended, started).await;
            let _ = logged_tx.send(logged.map(|()| ended));
        });
    }

    let gone_on_drop = GoneOnDrop(gone);
    match delta_rx {
        None => {
            let _gone = gone_on_drop;
            let ended = match logged_rx.await {
                Ok(Ok(ended)) => ended,
                Ok(Err(e)) => return e.into_response(),
                Err(_) => {
                    return ApiError::server(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "the request was lost",
                    )
                    .into_response()
                }
            };
            match ended {
                Some(Ok(outcome)) => {
                    if turn.stream {
                        stream_outcome(reply, outcome)
                    } else {
                        completion(&reply, &outcome).into_response()
                    }
                }
                Some(Err(failure)) => failure_error(&failure).into_response(),
                None => ApiError::server(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the engine dropped the request",
                )
                .into_response(),
            }
        }
        Some(mut deltas) => {
            // Wait for the first text, or for an outcome that came first (an empty answer, a
            // failure before the first token, or a whole answer whose pieces are still queued:
            // the outcome holds all of its text, so none of them has to be sent).
            let mut logged_rx = logged_rx;
            let first = tokio::select! {
                delta = deltas.recv() => delta,
                logged = &mut logged_rx => {
                    return match logged {
                        Ok(Ok(Some(Ok(outcome)))) => stream_outcome(reply, outcome),
                        Ok(Ok(Some(Err(failure)))) => failure_error(&failure).into_response(),
                        Ok(Err(e)) => e.into_response(),
                        Ok(Ok(None)) | Err(_) => ApiError::server(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "the engine dropped the request",
                        )
                        .into_response(),
                    };
                }
            };
            stream_live(reply, first, deltas, logged_rx, gone_on_drop)
        }
    }
}

/// The input screen's verdict on the user's turn: the rules first (exact, and they say why),
/// then the classifier, off the async threads (a forward pass of the model), for what they pass.
async fn input_flag(state: &Arc<ServeState>, user_turn: &str) -> Result<Option<Flag>, ApiError> {
    let flag = state.guards.check_input(user_turn);
    if flag.is_some() || state.guards.classifier.is_none() {
        return Ok(flag);
    }
    let guards = state.guards.clone();
    let text = user_turn.to_string();
    tokio::task::spawn_blocking(move || guards.classify_input(&text))
        .await
        .map_err(|e| e.to_string())
        .and_then(|verdict| verdict)
        .map_err(|e| {
            ApiError::server(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the input classifier failed: {e}"),
            )
        })
}

/// The grammar a response format asks for, from llama.cpp's JSON-schema converter.
fn grammar_for(format: &Format) -> Result<Option<String>, ApiError> {
    let schema = match format {
        Format::Text => return Ok(None),
        Format::JsonObject => json!({"type": "object"}),
        Format::JsonSchema(schema) => schema.clone(),
    };
    llama_cpp_2::json_schema_to_grammar(&schema.to_string())
        .map(Some)
        .map_err(|e| {
            ApiError::invalid(
                Some("response_format"),
                format!("llama.cpp cannot turn this JSON schema into a grammar ({e})"),
            )
        })
}

fn failure_error(failure: &TurnFailure) -> ApiError {
    match failure {
        TurnFailure::PromptTooLong { .. } => {
            ApiError::invalid(Some("messages"), failure.to_string())
                .with_code("context_length_exceeded")
        }
        TurnFailure::Grammar(_) => ApiError::invalid(Some("response_format"), failure.to_string()),
        TurnFailure::Template(_) => ApiError::invalid(Some("messages"), failure.to_string()),
        TurnFailure::Remote(_) => {
            ApiError::server(StatusCode::INTERNAL_SERVER_ERROR, failure.to_string())
        }
    }
}

fn decision(outcome: &Outcome) -> Decision {
    let flag = outcome.flag.as_ref();
    Decision {
        outcome: outcome.outcome.to_string(),
        guard: outcome.guard.map(str::to_string),
        rule: flag.map(|f| f.rule.clone()),
        principle: flag.map(|f| f.principle.clone()),
        topic: flag.and_then(|f| f.topic.clone()),
        revise_rounds: outcome.revise_rounds,
    }
}

fn completion(reply: &Reply, outcome: &Outcome) -> Json<Value> {
    let refused = outcome.outcome == "refused";
    Json(json!({
        "id": reply.id,
        "object": "chat.completion",
        "created": reply.created,
        "model": reply.model,
        "system_fingerprint": "tenets",
        "choices": [{
            "index": 0,
            "message": message_json(&outcome.text, refused, reply.json),
            "finish_reason": finish_reason(&outcome.finish, refused),
            "logprobs": null,
        }],
        "usage": Usage::new(outcome.prompt_tokens, outcome.completion_tokens),
        "tenets": decision(outcome),
    }))
}

fn chunk(reply: &Reply, delta: Value, finish: Option<&str>) -> Value {
    json!({
        "id": reply.id,
        "object": "chat.completion.chunk",
        "created": reply.created,
        "model": reply.model,
        "system_fingerprint": "tenets",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": null}],
    })
}

fn event(value: &Value) -> Event {
    Event::default().data(value.to_string())
}

/// The closing events of a stream: any text not yet sent, the finish, the usage when asked
/// for, and `[DONE]`.
fn closing_events(reply: &Reply, outcome: &Outcome, sent: bool) -> Vec<Event> {
    let refused = outcome.outcome == "refused";
    let mut events = Vec::new();
    if !sent && !outcome.text.is_empty() {
        let delta = message_json(&outcome.text, refused, reply.json);
        events.push(event(&chunk(reply, delta, None)));
    }
    let mut last = chunk(
        reply,
        json!({}),
        Some(finish_reason(&outcome.finish, refused)),
    );
    last["tenets"] = serde_json::to_value(decision(outcome)).unwrap_or(Value::Null);
    events.push(event(&last));
    if reply.include_usage {
        let mut usage = chunk(reply, json!({}), None);
        usage["choices"] = json!([]);
        usage["usage"] =
            serde_json::to_value(Usage::new(outcome.prompt_tokens, outcome.completion_tokens))
                .unwrap_or(Value::Null);
        events.push(event(&usage));
    }
    events.push(Event::default().data("[DONE]"));
    events
}

type EventSender = mpsc::UnboundedSender<Result<Event, std::convert::Infallible>>;

fn sse(rx: mpsc::UnboundedReceiver<Result<Event, std::convert::Infallible>>) -> Response {
    Sse::new(UnboundedReceiverStream::new(rx)).into_response()
}

/// A stream whose whole outcome is known (a refusal, or a screened answer).
fn stream_outcome(reply: Reply, outcome: Outcome) -> Response {
    let (tx, rx) = mpsc::unbounded_channel();
    let _ = tx.send(Ok(event(&chunk(
        &reply,
        json!({"role": "assistant", "content": ""}),
        None,
    ))));
    for e in closing_events(&reply, &outcome, false) {
        let _ = tx.send(Ok(e));
    }
    sse(rx)
}

/// A stream of text as the engine generates it, closed by the logged outcome.
fn stream_live(
    reply: Reply,
    first: Option<String>,
    mut deltas: mpsc::UnboundedReceiver<String>,
    logged: oneshot::Receiver<Result<Ended, ApiError>>,
    gone: GoneOnDrop,
) -> Response {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        // The flag is set when this task ends: early (the client hung up) or after [DONE].
        let _gone = gone;
        let send = |tx: &EventSender, e: Event| tx.send(Ok(e)).is_ok();
        if !send(
            &tx,
            event(&chunk(
                &reply,
                json!({"role": "assistant", "content": ""}),
                None,
            )),
        ) {
            return;
        }
        let mut sent = false;
        if let Some(text) = first {
            sent = true;
            if !send(&tx, event(&chunk(&reply, json!({"content": text}), None))) {
                return;
            }
        }
        loop {
            tokio::select! {
                delta = deltas.recv() => match delta {
                    Some(text) => {
                        sent = true;
                        if !send(&tx, event(&chunk(&reply, json!({"content": text}), None))) {
                            return;
                        }
                    }
                    None => break,
                },
                () = tx.closed() => return,
            }
        }
        let ended = tokio::select! {
            logged = logged => logged,
            () = tx.closed() => return,
        };
        match ended {
            Ok(Ok(Some(Ok(outcome)))) => {
                for e in closing_events(&reply, &outcome, sent) {
                    if !send(&tx, e) {
                        return;
                    }
                }
            }
            Ok(Ok(Some(Err(failure)))) => {
                let _ = send(&tx, event(&failure_error(&failure).body()));
            }
            Ok(Err(e)) => {
                let _ = send(&tx, event(&e.body()));
            }
            Ok(Ok(None)) | Err(_) => {
                let e = ApiError::server(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the engine dropped the request",
                );
                let _ = send(&tx, event(&e.body()));
            }
        }
    });
    sse(rx)
}

/// Commits the request's decision to the log; a log that cannot be written fails the request
/// (a decision that was not recorded is not returned).
async fn log(
    state: &ServeState,
    reply: &Reply,
    turn: &ChatTurn,
    ended: &Ended,
    started: Instant,
) -> Result<(), ApiError> {
    // A failed or cancelled request has no answer: its row says why, or nothing.
    let unanswered = |outcome: &'static str, text: String| Outcome {
        text,
        finish: String::new(),
        outcome,
        flag: None,
        guard: None,
        revise_rounds: 0,
        prompt_tokens: 0,
        completion_tokens: 0,
    };
    let o = match ended {
        Some(Ok(o)) => o.clone(),
        Some(Err(failure)) => unanswered("failed", failure.to_string()),
        None => unanswered("cancelled", String::new()),
    };
    let flag = o.flag.as_ref();
    let record = GuardDecisionRecord {
        id: reply.id.clone(),
        model: reply.model.clone(),
        model_sha256: state.model_sha256.clone(),
        constitution: state.guards.constitution.name.clone(),
        constitution_sha256: state.constitution_sha256.clone(),
        outcome: o.outcome.to_string(),
        guard: o.guard.map(str::to_string),
        rule: flag.map(|f| f.rule.clone()),
        principle: flag.map(|f| f.principle.clone()),
        topic: flag.and_then(|f| f.topic.clone()),
        matched: flag.map(|f| f.matched.clone()),
        score: flag.and_then(|f| f.score),
        revise_rounds: i64::from(o.revise_rounds),
        constrained: turn.format.label().map(str::to_string),
        stream: turn.stream,
        prompt_tokens: o.prompt_tokens as i64,
        completion_tokens: o.completion_tokens as i64,
        finish: (!o.finish.is_empty()).then(|| o.finish.clone()),
        latency_ms: started.elapsed().as_millis() as i64,
        prompt: serde_json::to_string(&turn.messages).unwrap_or_default(),
        answer: o.text,
    };
    state.store.put_guard_decision(&record).await.map_err(|e| {
        tracing::error!("decision log: {e}");
        ApiError::server(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the decision log could not be written: {e}"),
        )
    })
}
