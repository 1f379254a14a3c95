//! The integration tests, one crate: twenty test binaries each linked llama.cpp and polars (and
//! once filled a CI disk); one links them once. Most drive the real default model end to end
//! and take every core, so the tests of this crate run one at a time (`RUST_TEST_THREADS=1`,
//! set in `.cargo/config.toml`).
//!
//! Shared helpers are in [`common`]; [`reference`] is the f64 forward the native one is checked
//! against. Each other module is one area, its opening comment says what it proves.

mod common;
mod reference;

mod bad_input;
mod chat;
mod cli;
mod crash;
mod eval;
mod forward;
mod generate;
mod gguf;
mod guard;
mod installed;
mod label;
mod llama_ops;
mod prompt_files;
mod redteam;
mod remote;
mod safer;
mod scale;
mod score;
mod serve;
mod train;
mod validate;
