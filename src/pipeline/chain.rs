//! One prompt's chain of turns: answer (or several sampled answers), then per round a critique
//! and a revision of the first answer.
//!
//! A [`Chain`] is an engine [`Session`]: it says which turn comes next, renders the whole
//! conversation for it, and hands each finished turn to the store writer, waiting for the commit
//! before it asks for the next turn. Steps already in the store (a resumed run) are replayed into
//! the conversation, not generated again.

use std::sync::Arc;

use tokio::sync::oneshot;

use super::writer::Writer;
use crate::chat::Message;
use crate::constitution::Constitution;
use crate::engine::session::{self, Next};
use crate::engine::{Session, TurnFailure, TurnOutput, TurnRequest};
use crate::hash;
use crate::prompt::PromptItem;
use crate::store::{sampled_strategy, step_id, PairLink, StepRecord};
use crate::turns::{Turn, TurnTemplates};

/// What the chain asks the store writer to make durable.
pub enum Write {
    Step {
        step: StepRecord,
        /// The chain's candidate pairs, when this step completes it (else empty).
        pairs: Vec<PairLink>,
    },
    Failure {
        prompt_id: String,
        stage: String,
        round: i64,
        reason: String,
    },
}

/// What every chain of a run shares.
pub struct RunContext {
    pub run_id: String,
    pub constitution: Constitution,
    pub templates: TurnTemplates,
    pub rounds: usize,
    /// Answers sampled per prompt (their `round` is the sample index).
    pub samples: usize,
    pub max_tokens: usize,
    pub seed: u64,
    pub writer: Writer<Write>,
}

impl RunContext {
    /// The (stage, round) steps of a complete chain, in order: the answers (sample 0 …), then
    /// the critique and revision rounds, which work on answer 0.
    pub fn plan(&self) -> Vec<(&'static str, i64)> {
        let mut plan: Vec<(&'static str, i64)> = (0..self.samples.max(1) as i64)
            .map(|i| ("answer", i))
            .collect();
        for r in 1..=self.rounds as i64 {
            plan.push(("critique", r));
            plan.push(("revision", r));
        }
        plan
    }
}

pub struct Chain {
    run: Arc<RunContext>,
    prompt: PromptItem,
    principles: Vec<String>,
    /// Completed steps in plan order.
    done: Vec<StepRecord>,
    /// The step being generated.
    current: Option<Pending>,
}

/// What a turn in flight will be recorded as.
struct Pending {
    stage: String,
    round: i64,
    principle_id: Option<String>,
    request: Option<String>,
    seed: u32,
}

impl Chain {
    pub fn new(run: Arc<RunContext>, prompt: PromptItem, mut stored: Vec<StepRecord>) -> Self {
        let principles = run
            .constitution
            .sample_principles(run.seed, &prompt.id, run.rounds)
            .into_iter()
            .map(|p| p.id.clone())
            .collect();
        let plan = run.plan();
        // Keep the stored steps that form an unbroken prefix of the plan.
        let mut done = Vec::new();
        for (stage, round) in &plan {
            match stored
                .iter()
                .position(|s| s.stage == *stage && s.round == *round)
            {
                Some(i) => done.push(stored.swap_remove(i)),
                None => break,
            }
        }
        Chain {
            run,
            prompt,
            principles,
            done,
            current: None,
        }
    }

    /// Steps of this chain already in the store.
    pub fn done_len(&self) -> usize {
        self.done.len()
    }

    pub fn is_complete(&self) -> bool {
        self.done.len() == self.run.plan().len()
    }

    fn turn_seed(&self, stage: &str, round: i64) -> u32 {
        let h = hash::of_parts(&[
            &self.run.seed.to_string(),
            &self.prompt.id,
            stage,
            &round.to_string(),
        ]);
        (hash::hex_to_u64(&h) & 0xFFFF_FFFF) as u32
    }

    /// The conversation so far: the prompt, then each completed turn (of the answers, only the
    /// first: the other samples are alternatives to it, not turns after it).
    fn conversation(&self) -> Vec<Message> {
        let mut messages = self.prompt.messages.clone();
        for step in self
            .done
            .iter()
            .filter(|s| s.stage != "answer" || s.round == 0)
        {
            if let Some(request) = &step.request {
                messages.push(Message::user(request.clone()));
            }
            messages.push(Message::assistant(step.output.clone()));
        }
        messages
    }

    fn send(&self, write: Write) -> oneshot::Receiver<bool> {
        self.run.writer.send(write)
    }

    /// Records a failure; the writer answers `false`, which ends the chain.
    fn fail(&mut self, stage: &str, round: i64, reason: String) -> oneshot::Receiver<bool> {
        self.current = None;
        self.send(Write::Failure {
            prompt_id: self.prompt.id.clone(),
            stage: stage.to_string(),
            round,
            reason,
        })
    }
}

impl Session for Chain {
    fn next_turn(&mut self) -> Next {
        let plan = self.run.plan();
        let Some(&(stage, round)) = plan.get(self.done.len()) else {
            return Next::Done;
        };
        let principle_id = (stage != "answer" && round > 0)
            .then(|| self.principles.get(round as usize - 1).cloned())
            .flatten();
        // Every sampled answer starts from the prompt alone.
        let mut messages = if stage == "answer" {
            self.prompt.messages.clone()
        } else {
            self.conversation()
        };
        let mut request = None;
        if let Some(id) = &principle_id {
            let turn = if stage == "critique" {
                Turn::Critique
            } else {
                Turn::Revision
            };
            let Some(principle) = self.run.constitution.principle(id) else {
                return Next::Wait(self.fail(stage, round, format!("unknown principle {id}")));
            };
            match self.run.templates.request(
                turn,
                &self.run.constitution,
                principle,
                (round as usize, self.run.rounds),
                self.refusal(),
            ) {
                Ok(text) => {
                    messages.push(Message::user(text.clone()));
                    request = Some(text);
                }
                Err(e) => return Next::Wait(self.fail(stage, round, e.to_string())),
            }
        }
        let seed = self.turn_seed(stage, round);
        self.current = Some(Pending {
            stage: stage.to_string(),
            round,
            principle_id,
            request,
            seed,
        });
        Next::Turn(TurnRequest {
            messages,
            reply_prefix: String::new(),
            max_tokens: self.run.max_tokens,
            seed,
            probe: None,
            options: crate::engine::TurnOptions::default(),
        })
    }

    fn finish_turn(&mut self, outcome: Result<TurnOutput, TurnFailure>) -> oneshot::Receiver<bool> {
        let Some(Pending {
            stage,
            round,
            principle_id,
            request,
            seed,
        }) = self.current.take()
        else {
            return session::resolved(false);
        };
        let output = match outcome {
            Ok(output) => output,
            Err(failure) => return self.fail(&stage, round, failure.to_string()),
        };
        // A revision that opens with "Here is a revised response:" keeps only the response; the
        // opening is recorded beside it.
        let (text, preamble) = match stage.as_str() {
            "revision" => crate::filters::strip_preamble(output.text.trim()),
            _ => (output.text.trim().to_string(), None),
        };
        let step = StepRecord {
            run_id: self.run.run_id.clone(),
            prompt_id: self.prompt.id.clone(),
            stage,
            round,
            principle_id,
            request,
            output: text,
            finish: output.finish.as_str().to_string(),
            prompt_tokens: output.prompt_tokens as i64,
            prefill_tokens: output.prefill_tokens as i64,
            generated_tokens: output.generated_tokens as i64,
            seed: i64::from(seed),
            template_sha256: self.run.templates.hash().to_string(),
            preamble,
        };
        let last = self.done.len() + 1 == self.run.plan().len();
        let pairs = if last {
            self.pairs(&step.id())
        } else {
            Vec::new()
        };
        self.done.push(step.clone());
        self.send(Write::Step { step, pairs })
    }
}

impl Chain {
    /// For a prompt marked harmful, the refusal guidance its revisions are asked to follow: the
    /// constitution's refusal for its topic tag, else for the closest topic by wording. The
    /// revision becomes a principled refusal in the constitution's terms, which is what safety
    /// SFT rows need (`export --kind sft` checks that it refuses and names the principle).
    fn refusal(&self) -> Option<&crate::constitution::Refusal> {
        if self.prompt.kind.as_deref() != Some("harmful") {
            return None;
        }
        self.run
            .constitution
            .refusal_for_prompt(self.prompt.topic.as_deref(), &self.prompt.messages)
    }

    /// The candidate pairs of a complete chain whose last step is `last_step`: the final
    /// revision against answer 0 (with rounds), and every two sampled answers (with samples).
    fn pairs(&self, last_step: &str) -> Vec<PairLink> {
        let run = &self.run;
        let answer = |i: i64| step_id(&run.run_id, &self.prompt.id, "answer", i);
        let mut pairs = Vec::new();
        if run.rounds > 0 {
            pairs.push(PairLink {
                strategy: "revision".into(),
                chosen_step: last_step.to_string(),
                rejected_step: answer(0),
            });
        }
        let samples = run.samples as i64;
        for i in 0..samples {
            for j in i + 1..samples {
                pairs.push(PairLink {
                    strategy: sampled_strategy(i, j),
                    chosen_step: answer(i),
                    rejected_step: answer(j),
                });
            }
        }
        pairs
    }
}
