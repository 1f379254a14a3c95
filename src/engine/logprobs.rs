//! Log-probabilities of a given token sequence under llama.cpp: the whole sequence decoded in
//! one batch with logits at every position — the reference the native forward is checked
//! against, and `tenets score --engine llama`.

use std::num::NonZeroU32;
use std::path::Path;

use llama_cpp_2::context::params::{KvCacheType, LlamaContextParams};
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;

use super::{backend, EngineConfig, EngineError};
use crate::model::{score_row, TokenScore};

/// llama.cpp's `LLAMA_FLASH_ATTN_TYPE_DISABLED`.
const FLASH_ATTENTION_DISABLED: i32 = 0;

/// For each position `i ≥ 1`, the log-probability llama.cpp gives `tokens[i]` after
/// `tokens[..i]` and its top choice there.
pub fn score_tokens(
    model: &LlamaModel,
    config: &EngineConfig,
    tokens: &[LlamaToken],
) -> Result<Vec<TokenScore>, EngineError> {
    if tokens.len() < 2 {
        return Ok(Vec::new());
    }
    let mut ctx = scoring_context(model, config, tokens.len())?;
    decode_scores(&mut ctx, tokens)
}

/// [`score_tokens`] with a LoRA adapter file applied at `scale`.
pub fn score_tokens_with_lora(
    model: &mut LlamaModel,
    config: &EngineConfig,
    tokens: &[LlamaToken],
    lora: &Path,
    scale: f32,
) -> Result<Vec<TokenScore>, EngineError> {
    super::check_adapter_file(lora)?;
    let mut adapter = model
        .lora_adapter_init(lora)
        .map_err(|e| EngineError::Model {
            path: lora.to_path_buf(),
            message: format!("llama.cpp could not load the adapter ({e})"),
        })?;
    if tokens.len() < 2 {
        return Ok(Vec::new());
    }
    let mut ctx = scoring_context(model, config, tokens.len())?;
    ctx.lora_adapter_set(&mut adapter, scale).map_err(|e| {
        EngineError::Context(format!("cannot apply adapter {}: {e}", lora.display()))
    })?;
    decode_scores(&mut ctx, tokens)
}

fn scoring_context<'m>(
    model: &'m LlamaModel,
    config: &EngineConfig,
    n: usize,
) -> Result<LlamaContext<'m>, EngineError> {
    let threads = i32::try_from(config.threads.max(1)).unwrap_or(1);
    let batch_len = u32::try_from(n).unwrap_or(u32::MAX);
    // The most exact llama.cpp there is: an f32 KV cache and no flash attention (whose f16
    // accumulators would add their own error), so what remains is its weight arithmetic.
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(batch_len.next_multiple_of(256)))
        .with_n_batch(batch_len)
        .with_n_ubatch(batch_len)
        .with_n_seq_max(1)
        .with_n_threads(threads)
        .with_n_threads_batch(threads)
        .with_type_k(KvCacheType::F32)
        .with_type_v(KvCacheType::F32)
        .with_flash_attention_policy(FLASH_ATTENTION_DISABLED);
    let ctx = model
        .new_context(backend()?, params)
        .map_err(|e| EngineError::Context(format!("{e} (n_ctx for {n} tokens)")))?;
    if let Some(setting) = &config.control {
        let vector = super::control::read(setting, &config.model_path)?;
        super::control::apply(&ctx, model, &vector)?;
    }
    Ok(ctx)
}

fn decode_scores(
    ctx: &mut LlamaContext<'_>,
    tokens: &[LlamaToken],
) -> Result<Vec<TokenScore>, EngineError> {
    let n = tokens.len();
    let mut batch = LlamaBatch::new(n, 1);
    for (i, &t) in tokens.iter().enumerate() {
        batch
            .add(t, i as i32, &[0], i + 1 < n)
            .map_err(|e| EngineError::Decode(e.to_string()))?;
    }
    ctx.decode(&mut batch)
        .map_err(|e| EngineError::Decode(e.to_string()))?;
    (0..n - 1)
        .map(|i| {
            let row = ctx.get_logits_ith(i as i32);
            let next = tokens[i + 1].0 as u32;
            if next as usize >= row.len() {
                return Err(EngineError::Decode(format!(
                    "token {next} is outside the model's {} logits",
                    row.len()
                )));
            }
            Ok(score_row(row, next))
        })
        .collect()
}
