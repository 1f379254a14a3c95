//! The embedded trainer's native side: reading GGUF files and the quantized weights in them,
//! independent of llama.cpp. Model code, LoRA, DPO and the optimiser build on these.

pub mod gguf;
pub mod model;
pub mod quant;
