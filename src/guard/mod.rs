//! Guardrails made from the same data as the training, for the places a fine-tuned model alone
//! is not enough: screens that score a prompt or an answer against the constitution at run time
//! (`tenets classify`, and `tenets serve`'s input and output guards). The linear probe on a
//! frozen model's hidden states ([`probe`]); the constitution's pattern rules ([`rules`]); and
//! what any screen's scores are worth on tagged texts plus the topic a flagged text is nearest
//! ([`screen`]). The scorers that need other rooms (the reward model's) are joined in
//! `pipeline::classify`.

pub mod probe;
pub mod rules;
pub mod screen;
