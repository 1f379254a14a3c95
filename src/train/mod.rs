//! The embedded trainer's native side, independent of llama.cpp: GGUF files in and out
//! ([`gguf`]), the quantized weights in them and the kernels that multiply by them ([`quant`]),
//! and the transformer forward and backward over those weights ([`model`]). On these: LoRA
//! ([`lora`]), the preference losses ([`dpo`]), AdamW and its schedule ([`optim`]), a training
//! step and its checkpoint state ([`trainer`]), and adapters out for llama.cpp ([`adapter`]) and
//! PEFT ([`peft`]).

pub mod adapter;
pub mod dpo;
pub mod gguf;
pub mod lora;
pub mod model;
pub mod optim;
pub mod peft;
pub mod quant;
pub mod trainer;
