//! The embedded trainer's native side, independent of llama.cpp: GGUF files in and out
//! ([`gguf`]), the quantized weights in them and the kernels that multiply by them ([`quant`]),
//! and the transformer forward over those weights ([`model`]). LoRA, DPO and the optimiser build
//! on these.

pub mod adapter;
pub mod dpo;
pub mod gguf;
pub mod lora;
pub mod model;
pub mod optim;
pub mod peft;
pub mod quant;
pub mod trainer;
