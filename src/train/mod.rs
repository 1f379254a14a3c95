//! The embedded trainer, on the native runtime ([`crate::model`] over [`crate::quant`] and
//! [`crate::gguf`]): the preference losses ([`dpo`]), a reward model's scalar head and
//! Bradley–Terry loss ([`reward`]), AdamW and its schedule ([`optim`]), a
//! training step and its checkpoint state ([`trainer`]), and adapters out for Hugging Face
//! ([`peft`]; llama.cpp's own adapter files are the runtime's, [`crate::model::adapter_gguf`]).

pub mod dpo;
pub mod optim;
pub mod peft;
pub mod reward;
pub mod trainer;
