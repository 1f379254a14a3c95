//! tenets: Constitutional AI and RLAIF on local GGUF models.
//!
//! A YAML [`constitution`] and a [`prompt`] set go in; the [`pipeline`] runs the model through
//! llama.cpp ([`engine`]) to answer, critique and revise, streaming every step into SQLite
//! ([`store`]); [`export`] turns the result into DPO/SFT datasets and [`stats`] summarises it.
//! The native runtime stands apart from llama.cpp: [`gguf`] files, the quantized blocks and
//! kernels of [`quant`], and the transformer forward and backward of [`model`] (with LoRA and
//! llama.cpp's adapter files). [`train`] — losses, optimiser, a step, PEFT export — runs on it,
//! and `pipeline::train` drives it over a [`dataset`] into adapters.
//! The binary (`src/main.rs`) is a thin command-line shell over this library.

pub mod atomic;
pub mod bundled;
pub mod chat;
pub mod constitution;
pub mod dataset;
#[cfg(feature = "llama")]
pub mod doctor;
#[cfg(feature = "llama")]
pub mod engine;
pub mod eval;
pub mod export;
pub mod filters;
pub mod gguf;
pub mod guard;
pub mod hash;
pub mod home;
pub mod label;
pub mod model;
pub mod parquet;
#[cfg(feature = "llama")]
pub mod pipeline;
pub mod plot;
pub mod prompt;
pub mod quant;
pub mod redteam;
pub mod report;
#[cfg(feature = "llama")]
pub mod score;
#[cfg(feature = "llama")]
pub mod serve;
#[cfg(feature = "llama")]
pub mod settings;
pub mod stats;
pub mod store;
pub mod train;
pub mod turns;
