//! The remote engine: any OpenAI-compatible server (vLLM, llama.cpp's llama-server, TGI,
//! llama-cpp-python's server …) driving the same [`Session`]s as the llama.cpp engine.
//!
//! Each turn is one `POST {base}/chat/completions`: the session's messages, the run's sampling
//! settings and the turn's seed. A probe turn (a judge reading its answer) asks for
//! `logprobs`/`top_logprobs` and sums the probability of every returned token that spells each
//! answer ("A", " A", "(A" …) at the first position where the reply gives an answer; a server
//! that returns no log-probabilities stops the run with a clear error (labels are never guessed
//! from sampled text). `concurrency` worker threads each drive one session at a time, so at most
//! that many requests are in flight. Transient failures (connection errors, timeouts, 408, 429,
//! 5xx) are retried with exponential backoff and jitter, honouring `Retry-After`; a request that
//! still fails stops the run — nothing is recorded for it, so a rerun asks it again. A request
//! the server refuses (other 4xx) fails that prompt alone, with the server's reason stored.
//! Sessions commit every finished turn before their next (the same journal as local steps).

use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::Duration;

use rand::Rng;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::session::{
    Counters, Finish, Next, Probe, Sampling, Session, StopSignal, TurnFailure, TurnOutput,
    TurnRequest,
};
use super::{EngineError, ServedModel};
use crate::hash;

/// Where the server is and how to talk to it.
#[derive(Debug, Clone)]
pub struct RemoteConfig {
    /// The API root, e.g. `http://127.0.0.1:8000/v1` (requests go to `{base_url}/chat/completions`).
    pub base_url: String,
    /// Sent as `Authorization: Bearer …` when set.
    pub api_key: Option<String>,
    /// The server's model name [default: the first one `GET {base_url}/models` lists].
    pub model: Option<String>,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Limit on one request, from connecting to the last byte of the reply.
    pub timeout: Duration,
    /// Attempts after the first for a transient failure.
    pub retries: u32,
}

impl RemoteConfig {
    pub fn new(base_url: impl Into<String>) -> Self {
        RemoteConfig {
            base_url: base_url.into(),
            api_key: None,
            model: None,
            concurrency: 8,
            timeout: Duration::from_secs(300),
            retries: 6,
        }
    }
}

/// How a request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum CallError {
    /// The server refused this request: the turn fails, the run goes on.
    Refused(String),
    /// The server could not be reached or kept failing: the run stops.
    Unreachable(String),
    /// A probe's reply had no log-probabilities: the server cannot judge.
    NoLogprobs,
}

/// A connected OpenAI-compatible server.
pub struct RemoteEngine {
    agent: ureq::Agent,
    config: RemoteConfig,
    model: String,
}

/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Log-probabilities asked per position for a probe (the API's usual maximum).
const TOP_LOGPROBS: usize = 20;
/// Tokens a probe may generate before its answer letter (a reply may open with "(" or "The").
const PROBE_TOKENS: usize = 8;

impl RemoteEngine {
    /// Checks the server answers and picks the model: the configured one if the server lists
    /// it (or lists nothing), else the first listed.
    pub fn connect(mut config: RemoteConfig) -> Result<Self, EngineError> {
        config.base_url = config.base_url.trim_end_matches('/').to_string();
        if !(config.base_url.starts_with("http://") || config.base_url.starts_with("https://")) {
            return Err(EngineError::Remote(format!(
                "--base-url {}: expected an http:// or https:// address of the API root (…/v1)",
                config.base_url
            )));
        }
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(10).min(config.timeout))
            .timeout(config.timeout)
            .build();
        let mut engine = RemoteEngine {
            agent,
            config,
            model: String::new(),
        };
        let listed = engine.call("GET", "models", None);
        let models: Vec<String> = match listed {
            Ok(body) => body["data"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|m| m["id"].as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
            Err(CallError::Unreachable(e)) => {
                return Err(EngineError::Remote(format!(
                    "{} cannot be reached: {e}",
                    engine.config.base_url
                )))
            }
            // Some servers do not list models; then the configured name is used as is.
            Err(_) => Vec::new(),
        };
        engine.model = match (&engine.config.model, models.first()) {
            (Some(name), _) if models.is_empty() || models.contains(name) => name.clone(),
            (Some(name), _) => {
                return Err(EngineError::Remote(format!(
                    "{} does not serve model `{name}`; it lists: {}",
                    engine.config.base_url,
                    models.join(", ")
                )))
            }
            (None, Some(first)) => first.clone(),
            (None, None) => {
                return Err(EngineError::Remote(format!(
                    "{} lists no models; name one with --remote-model",
                    engine.config.base_url
                )))
            }
        };
        Ok(engine)
    }

    pub fn model(&self) -> &str {
        &self.model
    }

    /// The server's model name stands in for the file hash (the server's address is left out,
    /// so a run moved to another host resumes).
    pub fn identity(&self) -> ServedModel {
        ServedModel {
            model_path: format!("{} @ {}", self.model, self.config.base_url),
            model_sha256: hash::of_parts(&["openai-compatible model", &self.model]),
            chat_template_sha256: hash::of_parts(&["server-side chat template", &self.model]),
        }
    }

    /// Drives sessions from `jobs` with `concurrency` workers until the channel closes and
    /// every session is done, or until `stop` says otherwise. The first request that cannot
    /// get through stops the run and is the error returned.
    pub fn run(
        &self,
        sampling: &Sampling,
        jobs: mpsc::Receiver<Box<dyn Session>>,
        stop: &StopSignal,
        counters: &Counters,
    ) -> Result<(), EngineError> {
        let jobs = Mutex::new(jobs);
        let failed: Mutex<Option<EngineError>> = Mutex::new(None);
        std::thread::scope(|scope| {
            for _ in 0..self.config.concurrency.max(1) {
                scope.spawn(|| loop {
                    if stop.draining() {
                        return;
                    }
                    let next = jobs.lock().ok().and_then(|mut rx| rx.blocking_recv());
                    let Some(session) = next else { return };
                    if let Err(e) = self.drive(session, sampling, stop, counters) {
                        if let Ok(mut slot) = failed.lock() {
                            slot.get_or_insert(e);
                        }
                        stop.abort();
                        return;
                    }
                });
            }
        });
        match failed.into_inner() {
            Ok(Some(e)) => Err(e),
            _ => Ok(()),
        }
    }

    /// One session, turn by turn, each committed before the next is asked.
    fn drive(
        &self,
        mut session: Box<dyn Session>,
        sampling: &Sampling,
        stop: &StopSignal,
        counters: &Counters,
    ) -> Result<(), EngineError> {
        loop {
            if stop.draining() {
                return Ok(());
            }
            let ack = match session.next_turn() {
                Next::Done => return Ok(()),
                Next::Wait(rx) => rx,
                Next::Turn(request) => match self.turn(&request, sampling) {
                    Ok(output) => {
                        counters
                            .generated
                            .fetch_add(output.generated_tokens as u64, Ordering::Relaxed);
                        counters
                            .prefilled
                            .fetch_add(output.prefill_tokens as u64, Ordering::Relaxed);
                        session.finish_turn(Ok(output))
                    }
                    Err(CallError::Refused(reason)) => {
                        session.finish_turn(Err(TurnFailure::Remote(reason)))
                    }
                    Err(CallError::Unreachable(e)) => {
                        return Err(EngineError::Remote(format!(
                            "{} kept failing: {e}; nothing was recorded for the requests in \
                             flight — rerun the same command to resume",
                            self.config.base_url
                        )))
                    }
                    Err(CallError::NoLogprobs) => {
                        return Err(EngineError::Remote(format!(
                            "{} returned no log-probabilities for a judge request: labeling \
                             needs a server that returns `logprobs`/`top_logprobs` in chat \
                             completions (vLLM, llama.cpp's llama-server and llama-cpp-python's \
                             server do)",
                            self.config.base_url
                        )))
                    }
                },
            };
            if !ack.blocking_recv().unwrap_or(false) {
                return Ok(());
            }
        }
    }

    /// One turn as one chat completion.
    fn turn(&self, request: &TurnRequest, sampling: &Sampling) -> Result<TurnOutput, CallError> {
        let mut body = json!({
            "model": self.model,
            "messages": request.messages,
            "seed": request.seed,
            "stream": false,
        });
        if let Some(probe) = &request.probe {
            // A judge reads its answer: greedy, a few tokens, with log-probabilities. The
            // frame asks for the letter, so the reply prefix (a local model's prefill) is
            // not needed.
            body["max_tokens"] = json!(PROBE_TOKENS);
            body["temperature"] = json!(0.0);
            body["logprobs"] = json!(true);
            body["top_logprobs"] = json!(TOP_LOGPROBS);
            let reply = self.post_chat(&body)?;
            let (prompt_tokens, generated) = usage(&reply);
            let probe_mass = answer_mass(&reply, probe)?;
            return Ok(TurnOutput {
                text: reply_text(&reply),
                finish: Finish::Stop,
                prompt_tokens,
                prefill_tokens: prompt_tokens,
                generated_tokens: generated,
                probe_mass,
            });
        }
        if !request.reply_prefix.is_empty() {
            return Err(CallError::Refused(
                "a reply that continues a prefix (chain-of-thought judging) needs the local \
                 engine"
                    .into(),
            ));
        }
        let options = &request.options;
        if options.grammar.is_some() || options.ban.as_ref().is_some_and(|b| !b.is_empty()) {
            return Err(CallError::Refused(
                "a grammar or banned phrases constrain the local engine's sampler; a server \
                 applies its own"
                    .into(),
            ));
        }
        let sampling = options.sampling.as_ref().unwrap_or(sampling);
        body["max_tokens"] = json!(request.max_tokens);
        body["temperature"] = json!(sampling.temperature);
        body["top_p"] = json!(sampling.top_p);
        let reply = self.post_chat(&body)?;
        let (prompt_tokens, generated) = usage(&reply);
        let finish = match reply["choices"][0]["finish_reason"].as_str() {
            Some("length") => Finish::Length,
            _ => Finish::Stop,
        };
        let text = reply_text(&reply);
        // The server answered in one piece: a stream gets it as one.
        if let Some(stream) = &options.stream {
            let _ = stream.send(text.clone());
        }
        Ok(TurnOutput {
            text,
            finish,
            prompt_tokens,
            prefill_tokens: prompt_tokens,
            generated_tokens: generated,
            probe_mass: Vec::new(),
        })
    }

    fn post_chat(&self, body: &Value) -> Result<Value, CallError> {
        self.call("POST", "chat/completions", Some(&body.to_string()))
    }

    /// Sends `method {base_url}/{path}` (with a JSON `body`), retrying transient failures; the
    /// reply body as JSON.
    fn call(&self, method: &str, path: &str, body: Option<&str>) -> Result<Value, CallError> {
        let mut attempt = 0;
        loop {
            let mut request = self
                .agent
                .request(method, &format!("{}/{path}", self.config.base_url))
                .set("Accept", "application/json");
            if let Some(key) = &self.config.api_key {
                request = request.set("Authorization", &format!("Bearer {key}"));
            }
            let sent = match body {
                Some(body) => request
                    .set("Content-Type", "application/json")
                    .send_string(body),
                None => request.call(),
            };
            let (error, retry_after) = match sent {
                Ok(response) => {
                    let text = response
                        .into_string()
                        .map_err(|e| CallError::Unreachable(format!("reading the reply: {e}")));
                    match text {
                        Ok(text) => {
                            return serde_json::from_str(&text).map_err(|e| {
                                CallError::Refused(format!(
                                    "the reply is not JSON ({e}): {}",
                                    clip(&text)
                                ))
                            })
                        }
                        Err(e) => (e, None),
                    }
                }
                Err(ureq::Error::Status(code, response)) => {
                    let retry_after = response
                        .header("Retry-After")
                        .and_then(|v| v.trim().parse::<f64>().ok())
                        .filter(|s| s.is_finite() && *s >= 0.0)
                        .map(Duration::from_secs_f64);
                    let body = response.into_string().unwrap_or_default();
                    let message = format!("HTTP {code}: {}", clip(&body));
                    if !is_transient(code) {
                        return Err(CallError::Refused(message));
                    }
                    (CallError::Unreachable(message), retry_after)
                }
                Err(ureq::Error::Transport(t)) => (CallError::Unreachable(t.to_string()), None),
            };
            if attempt >= self.config.retries {
                return Err(error);
            }
            let wait = backoff(attempt, retry_after, rand::thread_rng().gen_range(0.5..1.0));
            tracing::warn!(
                attempt = attempt + 1,
                wait_seconds = wait.as_secs_f64(),
                "{}: {error:?}; retrying",
                self.config.base_url
            );
            std::thread::sleep(wait);
            attempt += 1;
        }
    }
}

/// Statuses worth asking again: timeouts, rate limits, server errors.
fn is_transient(code: u16) -> bool {
    matches!(code, 408 | 425 | 429) || (500..600).contains(&code)
}

/// The wait before retry `attempt` (0-based): 0.5 s doubling per attempt, scaled by `jitter`
/// (0.5–1: retries of many workers spread out), at most [`MAX_BACKOFF`]; a server's
/// `Retry-After` wins when it asks for longer.
fn backoff(attempt: u32, retry_after: Option<Duration>, jitter: f64) -> Duration {
    let base = Duration::from_millis(500).saturating_mul(1u32 << attempt.min(16));
    let wait = base.mul_f64(jitter.clamp(0.0, 1.0)).min(MAX_BACKOFF);
    match retry_after {
        Some(asked) => wait.max(asked.min(MAX_BACKOFF * 4)),
        None => wait,
    }
}

fn clip(text: &str) -> String {
    let t = text.trim();
    match t.char_indices().nth(300) {
        Some((i, _)) => format!("{}…", &t[..i]),
        None => t.to_string(),
    }
}

fn reply_text(reply: &Value) -> String {
    reply["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

/// (prompt tokens, completion tokens) from the reply's `usage`, 0 when absent.
fn usage(reply: &Value) -> (usize, usize) {
    let n = |k: &str| reply["usage"][k].as_u64().unwrap_or(0) as usize;
    (n("prompt_tokens"), n("completion_tokens"))
}

/// A token as an answer: without spaces and the brackets and stops around a letter.
fn as_answer(token: &str) -> &str {
    token.trim_matches(|c: char| c.is_whitespace() || "()[].:*".contains(c))
}

/// The probability of each of the probe's answers at the reply's answer position: the first
/// generated token that spells an answer (a reply may open with "(" or "The answer is"), or the
/// first position if none does. Each answer's mass sums every top log-probability token that
/// spells it.
fn answer_mass(reply: &Value, probe: &Probe) -> Result<Vec<f64>, CallError> {
    let Some(positions) = reply["choices"][0]["logprobs"]["content"].as_array() else {
        return Err(CallError::NoLogprobs);
    };
    let is_answer = |token: &str| probe.answers.iter().any(|a| a == as_answer(token));
    let at = positions
        .iter()
        .find(|p| p["token"].as_str().is_some_and(is_answer))
        .or_else(|| positions.first());
    let Some(top) = at.and_then(|p| p["top_logprobs"].as_array()) else {
        return Err(CallError::NoLogprobs);
    };
    Ok(probe
        .answers
        .iter()
        .map(|answer| {
            top.iter()
                .filter(|t| t["token"].as_str().map(as_answer) == Some(answer.as_str()))
                .filter_map(|t| t["logprob"].as_f64())
                .map(f64::exp)
                .sum()
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_is_capped_and_yields_to_retry_after() {
        assert_eq!(backoff(0, None, 1.0), Duration::from_millis(500));
        assert_eq!(backoff(3, None, 1.0), Duration::from_secs(4));
        assert_eq!(backoff(3, None, 0.5), Duration::from_secs(2));
        assert_eq!(backoff(30, None, 1.0), MAX_BACKOFF);
        let asked = Some(Duration::from_secs(7));
        assert_eq!(backoff(0, asked, 1.0), Duration::from_secs(7));
        assert_eq!(backoff(10, asked, 1.0), MAX_BACKOFF);
        assert_eq!(
            backoff(0, Some(Duration::from_secs(3600)), 1.0),
            MAX_BACKOFF * 4
        );
    }

    #[test]
    fn transient_statuses() {
        for code in [408, 429, 500, 502, 503, 504] {
            assert!(is_transient(code), "{code}");
        }
        for code in [400, 401, 403, 404, 413, 422] {
            assert!(!is_transient(code), "{code}");
        }
    }

    fn probe() -> Probe {
        Probe {
            answers: vec!["A".into(), "B".into()],
            tokens: Vec::new(),
        }
    }

    #[test]
    fn answer_mass_reads_the_answer_position() {
        // The reply opens with "(", then "A": the second position is read, and every form of
        // each letter in its top log-probabilities counts.
        let reply = json!({"choices": [{"logprobs": {"content": [
            {"token": "(", "logprob": -0.1, "top_logprobs": [
                {"token": "(", "logprob": -0.1}, {"token": "A", "logprob": -3.0}]},
            {"token": "A", "logprob": -0.5, "top_logprobs": [
                {"token": "A", "logprob": (0.5f64).ln()},
                {"token": " A", "logprob": (0.1f64).ln()},
                {"token": "B", "logprob": (0.2f64).ln()},
                {"token": "Because", "logprob": (0.1f64).ln()}]}
        ]}}]});
        let mass = answer_mass(&reply, &probe()).unwrap();
        assert!(
            (mass[0] - 0.6).abs() < 1e-9 && (mass[1] - 0.2).abs() < 1e-9,
            "{mass:?}"
        );
    }

    #[test]
    fn a_reply_without_logprobs_cannot_judge() {
        let reply = json!({"choices": [{"message": {"content": "(A)"}}]});
        assert_eq!(answer_mass(&reply, &probe()), Err(CallError::NoLogprobs));
        // No answer anywhere: the first position is read (little or no mass on A/B).
        let reply = json!({"choices": [{"logprobs": {"content": [
            {"token": "I", "logprob": -0.1, "top_logprobs": [{"token": "I", "logprob": -0.1}]}
        ]}}]});
        assert_eq!(answer_mass(&reply, &probe()).unwrap(), vec![0.0, 0.0]);
    }

    #[test]
    fn answers_are_read_through_brackets_and_spaces() {
        for t in ["A", " A", "(A", " (A", "A)", "A.", "A:", "**A**"] {
            assert_eq!(as_answer(t), "A", "{t:?}");
        }
        assert_eq!(as_answer("An"), "An");
    }
}
