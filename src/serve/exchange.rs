//! One served request as an engine [`Session`]: the answer, then — when the output screen
//! flags it and the constitution says `revise` — critique and revision turns against the
//! flagged principle (the frames `generate` uses, with the topic's refusal guidance), each
//! revision screened again; an answer still flagged after the last round is refused. The
//! screens are the constitution's pattern rules: microseconds, so they run on the engine thread
//! between turns.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::oneshot;

use crate::chat::Message;
use crate::constitution::guard::OutputAction;
use crate::constitution::Constitution;
use crate::engine::session::{resolved, Next, Session, TurnFailure, TurnOptions, TurnOutput};
use crate::engine::TurnRequest;
use crate::guard::rules::{refusal, Flag, PatternScreen, Side};
use crate::pipeline::classify::ProbeScreen;
use crate::turns::{Turn, TurnTemplates};

/// What every exchange shares: the constitution and its compiled screens.
pub struct Guards {
    pub constitution: Constitution,
    pub screen: PatternScreen,
    /// The learned input screen, when one is on.
    pub classifier: Option<InputClassifier>,
    pub templates: TurnTemplates,
    pub input: bool,
    pub output: OutputAction,
    pub revise_rounds: u32,
}

impl Guards {
    /// Whether answers are screened (then a stream's text waits for the screen's verdict).
    pub fn screens_output(&self) -> bool {
        self.output != OutputAction::Off && self.screen.screens(Side::Output)
    }

    /// The input rules' verdict on the user's turn.
    pub fn check_input(&self, user_turn: &str) -> Option<Flag> {
        self.input
            .then(|| self.screen.check(user_turn, Side::Input))
            .flatten()
    }

    /// The learned screen's verdict on the user's turn: one forward pass of the model, so it
    /// blocks (the handler runs it off the async threads). The principle is that of the
    /// refusal for the topic the turn is nearest (by the probe's centroids, else by wording).
    pub fn classify_input(&self, user_turn: &str) -> Result<Option<Flag>, String> {
        let Some(classifier) = self.classifier.as_ref().filter(|_| self.input) else {
            return Ok(None);
        };
        let scored = {
            let screen = classifier
                .screen
                .lock()
                .map_err(|_| "the classifier failed on an earlier request".to_string())?;
            screen.score(&[Message::user(user_turn)])
        };
        let (p, topic) = scored.map_err(|e| e.to_string())?;
        if p < classifier.threshold {
            return Ok(None);
        }
        let c = &self.constitution;
        let refusal = topic
            .as_deref()
            .and_then(|t| c.refusal_for(t))
            .or_else(|| c.closest_refusal(user_turn))
            .or_else(|| c.refusals.first());
        Ok(refusal.map(|r| Flag {
            rule: "classifier".into(),
            principle: r.principle.clone(),
            topic: Some(r.topic.clone()),
            matched: format!("p_unsafe {p:.3}"),
            score: Some(p),
        }))
    }
}

/// A probe on the served model's hidden states, fitted at start, and where it flags.
pub struct InputClassifier {
    pub screen: std::sync::Mutex<ProbeScreen>,
    pub threshold: f64,
}

/// How an exchange ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub text: String,
    /// The engine's finish of the returned turn (`stop`, `length`, `context`).
    pub finish: String,
    /// `answered`, `refused` or `revised`.
    pub outcome: &'static str,
    /// The flag of the screen that fired (for the output screen: of the last answer it
    /// screened), and which screen that was: `input` or `output`.
    pub flag: Option<Flag>,
    pub guard: Option<&'static str>,
    pub revise_rounds: u32,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

enum Stage {
    Answer,
    Critique,
    Revision,
    Done,
}

pub struct Exchange {
    guards: Arc<Guards>,
    messages: Vec<Message>,
    max_tokens: usize,
    seed: u32,
    /// The answer's own settings (grammar, banned phrases, sampling, stream).
    options: TurnOptions,
    stage: Stage,
    answer: String,
    critique: String,
    critique_request: String,
    flag: Option<Flag>,
    rounds: u32,
    prompt_tokens: usize,
    completion_tokens: usize,
    finish: String,
    result: Option<oneshot::Sender<Result<Outcome, TurnFailure>>>,
    client_gone: Arc<AtomicBool>,
}

impl Exchange {
    /// An exchange for `messages`; its outcome (or the turn's failure) arrives on the returned
    /// receiver. `client_gone` set → the engine drops it and frees its slot.
    pub fn new(
        guards: Arc<Guards>,
        messages: Vec<Message>,
        max_tokens: usize,
        seed: u32,
        options: TurnOptions,
        client_gone: Arc<AtomicBool>,
    ) -> (Exchange, oneshot::Receiver<Result<Outcome, TurnFailure>>) {
        let (tx, rx) = oneshot::channel();
        let exchange = Exchange {
            guards,
            messages,
            max_tokens,
            seed,
            options,
            stage: Stage::Answer,
            answer: String::new(),
            critique: String::new(),
            critique_request: String::new(),
            flag: None,
            rounds: 0,
            prompt_tokens: 0,
            completion_tokens: 0,
            finish: "stop".into(),
            result: Some(tx),
            client_gone,
        };
        (exchange, rx)
    }

    fn end(&mut self, outcome: Result<Outcome, TurnFailure>) -> oneshot::Receiver<bool> {
        self.stage = Stage::Done;
        if let Some(tx) = self.result.take() {
            let _ = tx.send(outcome);
        }
        resolved(false)
    }

    fn outcome(&self, text: String, outcome: &'static str) -> Outcome {
        Outcome {
            text,
            finish: self.finish.clone(),
            outcome,
            flag: self.flag.clone(),
            guard: self.flag.as_ref().map(|_| "output"),
            revise_rounds: self.rounds,
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
        }
    }

    /// The critique or revision request for the flagged principle.
    fn followup(&self, turn: Turn) -> Result<String, TurnFailure> {
        let guards = &self.guards;
        let flag = self.flag.as_ref().ok_or_else(|| {
            TurnFailure::Template("a revision round without a flagged answer".into())
        })?;
        let principle = guards
            .constitution
            .principle(&flag.principle)
            .ok_or_else(|| TurnFailure::Template(format!("no principle `{}`", flag.principle)))?;
        let refusal = flag
            .topic
            .as_deref()
            .and_then(|t| guards.constitution.refusal_for(t));
        let text = guards
            .templates
            .request(
                turn,
                &guards.constitution,
                principle,
                (self.rounds as usize, guards.revise_rounds as usize),
                refusal,
            )
            .map_err(|e| TurnFailure::Template(e.to_string()))?;
        Ok(text)
    }

    fn turn(&self, messages: Vec<Message>, options: TurnOptions) -> Next {
        Next::Turn(TurnRequest {
            messages,
            reply_prefix: String::new(),
            max_tokens: self.max_tokens,
            seed: self.seed.wrapping_add(self.rounds),
            probe: None,
            options,
        })
    }
}

impl Session for Exchange {
    fn next_turn(&mut self) -> Next {
        match self.stage {
            Stage::Answer => self.turn(self.messages.clone(), self.options.clone()),
            Stage::Critique => match self.followup(Turn::Critique) {
                Ok(request) => {
                    let mut messages = self.messages.clone();
                    messages.push(Message::assistant(self.answer.clone()));
                    messages.push(Message::user(request.clone()));
                    self.critique_request = request;
                    // The critique is never returned: no grammar, no stream.
                    let options = TurnOptions {
                        sampling: self.options.sampling,
                        ..TurnOptions::default()
                    };
                    self.turn(messages, options)
                }
                Err(e) => Next::Wait(self.end(Err(e))),
            },
            Stage::Revision => match self.followup(Turn::Revision) {
                Ok(request) => {
                    let mut messages = self.messages.clone();
                    messages.push(Message::assistant(self.answer.clone()));
                    messages.push(Message::user(self.critique_request.clone()));
                    messages.push(Message::assistant(self.critique.clone()));
                    messages.push(Message::user(request));
                    // The revision is what the client gets: the answer's grammar and banned
                    // phrases hold for it too.
                    let options = TurnOptions {
                        stream: None,
                        ..self.options.clone()
                    };
                    self.turn(messages, options)
                }
                Err(e) => Next::Wait(self.end(Err(e))),
            },
            Stage::Done => Next::Done,
        }
    }

    fn finish_turn(&mut self, outcome: Result<TurnOutput, TurnFailure>) -> oneshot::Receiver<bool> {
        let output = match outcome {
            Ok(output) => output,
            // A critique or revision that cannot run (the conversation outgrew the context):
            // the flagged answer still may not go out, so the request is refused.
            Err(failure) => {
                let refused = match (&self.stage, &self.flag) {
                    (Stage::Critique | Stage::Revision, Some(flag)) => {
                        tracing::warn!("a revision round failed ({failure}): refused instead");
                        Some(refusal(&self.guards.constitution, flag))
                    }
                    _ => None,
                };
                return match refused {
                    Some(text) => {
                        let outcome = self.outcome(text, "refused");
                        self.end(Ok(outcome))
                    }
                    None => self.end(Err(failure)),
                };
            }
        };
        self.completion_tokens += output.generated_tokens;
        match self.stage {
            Stage::Answer | Stage::Revision => {
                if matches!(self.stage, Stage::Answer) {
                    self.prompt_tokens = output.prompt_tokens;
                }
                self.finish = output.finish.as_str().to_string();
                self.answer = output.text;
                let flag = if self.guards.screens_output() {
                    self.guards.screen.check(&self.answer, Side::Output)
                } else {
                    None
                };
                match flag {
                    None => {
                        let kind = if self.rounds > 0 {
                            "revised"
                        } else {
                            "answered"
                        };
                        let outcome = self.outcome(self.answer.clone(), kind);
                        self.end(Ok(outcome))
                    }
                    Some(flag) => {
                        let revise = self.guards.output == OutputAction::Revise
                            && self.rounds < self.guards.revise_rounds;
                        let refused = (!revise).then(|| refusal(&self.guards.constitution, &flag));
                        self.flag = Some(flag);
                        match refused {
                            None => {
                                self.rounds += 1;
                                self.stage = Stage::Critique;
                                resolved(true)
                            }
                            Some(text) => {
                                let outcome = self.outcome(text, "refused");
                                self.end(Ok(outcome))
                            }
                        }
                    }
                }
            }
            Stage::Critique => {
                self.critique = output.text;
                self.stage = Stage::Revision;
                resolved(true)
            }
            Stage::Done => resolved(false),
        }
    }

    fn abandoned(&self) -> bool {
        self.client_gone.load(Ordering::Relaxed)
    }
}
