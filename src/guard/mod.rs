//! Guardrails made from the same data as the training, for the places a fine-tuned model alone
//! is not enough: screens that score a prompt or an answer against the constitution at run time
//! (issue 21's safety classifier, `tenets serve`'s input and output guards). Today the linear
//! probe on a frozen model's hidden states ([`probe`]) and the ranking figure its calibration is
//! read by.

pub mod probe;
