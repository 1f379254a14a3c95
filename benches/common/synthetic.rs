//! Models at the sizes people train, for benchmarks: no hub is reachable, so the bench writes a
//! file with a real model's shape, tensor names and quantization mix and seeded random weights.
//! Speed depends on shapes and quant kinds, not on what the weights learned; llama.cpp and
//! transformers load these files like the real ones.

use std::path::Path;

use tenets::gguf::writer::GgufWriter;
use tenets::gguf::{Gguf, Value};
use tenets::quant::QuantType;

/// The hyper-parameters of a Qwen2-family model.
#[derive(Debug, Clone, Copy)]
pub struct Qwen2Shape {
    pub name: &'static str,
    pub layers: u64,
    pub embedding: u64,
    pub feed_forward: u64,
    pub heads: u64,
    pub kv_heads: u64,
    pub vocab: u64,
}

/// Qwen2.5-0.5B(-Instruct): tied embedding, 14 heads of 64 over 2 key-value heads.
pub const QWEN2_5_0_5B: Qwen2Shape = Qwen2Shape {
    name: "qwen2.5-0.5b",
    layers: 24,
    embedding: 896,
    feed_forward: 4864,
    heads: 14,
    kv_heads: 2,
    vocab: 151_936,
};

/// Qwen2.5-1.5B(-Instruct): tied embedding, 12 heads of 128 over 2 key-value heads.
pub const QWEN2_5_1_5B: Qwen2Shape = Qwen2Shape {
    name: "qwen2.5-1.5b",
    layers: 28,
    embedding: 1536,
    feed_forward: 8960,
    heads: 12,
    kv_heads: 2,
    vocab: 151_936,
};

/// The kind llama.cpp's quantizer gives a tensor in a Q4_K_M file (`llama_tensor_get_type`):
/// `more_bits` tensors (the tied embedding; `attn_v` and `ffn_down` of the layers
/// [`use_more_bits`] picks) in Q6_K, the rest in Q4_K — and, where the fan-in is not a multiple
/// of the 256-weight K-quant block (896 in Qwen2.5-0.5B), its fallbacks Q8_0 and Q5_0.
fn q4_k_m_kind(fan_in: u64, more_bits: bool) -> QuantType {
    match (fan_in.is_multiple_of(256), more_bits) {
        (true, true) => QuantType::Q6K,
        (true, false) => QuantType::Q4K,
        (false, true) => QuantType::Q8_0,
        (false, false) => QuantType::Q5_0,
    }
}

/// llama.cpp's choice of the layers whose `attn_v`/`ffn_down` get more bits in Q4_K_M: the
/// first and last eighth, and every third one between.
fn use_more_bits(layer: u64, layers: u64) -> bool {
    layer < layers / 8 || layer >= 7 * layers / 8 || (layer as i64 - layers as i64 / 8) % 3 == 2
}

/// Writes a Qwen2 model of `shape` in the Q4_K_M mix to `dst`, with `tokenizer`'s vocabulary
/// (a GGUF's `tokenizer.*` entries) padded to the shape's vocabulary with unused `[PADn]`
/// tokens, as the converter pads Qwen's own 151,665 tokens to 151,936.
pub fn write_qwen2(dst: &Path, shape: Qwen2Shape, tokenizer: &Path) {
    let source = Gguf::open(tokenizer).expect("tokenizer model");
    let mut w = GgufWriter::new();
    for (key, value) in &source.metadata {
        let value = match (key.as_str(), value) {
            ("tokenizer.ggml.tokens", Value::Array(tokens)) => {
                let mut tokens = tokens.clone();
                for i in tokens.len() as u64..shape.vocab {
                    tokens.push(Value::String(format!("[PAD{i}]")));
                }
                Value::Array(tokens)
            }
            ("tokenizer.ggml.token_type", Value::Array(types)) => {
                let mut types = types.clone();
                // 5: llama.cpp's LLAMA_TOKEN_TYPE_UNUSED.
                types.resize(shape.vocab as usize, Value::I32(5));
                Value::Array(types)
            }
            ("tokenizer.ggml.scores", Value::Array(scores)) => {
                let mut scores = scores.clone();
                scores.resize(shape.vocab as usize, Value::F32(0.0));
                Value::Array(scores)
            }
            (k, v) if k.starts_with("tokenizer.") => v.clone(),
            _ => continue,
        };
        w.metadata(key, value).expect("metadata");
    }
    let head_dim = shape.embedding / shape.heads;
    let meta = |w: &mut GgufWriter, k: &str, v: Value| {
        w.metadata(&format!("qwen2.{k}"), v).expect("metadata")
    };
    w.metadata("general.architecture", Value::String("qwen2".into()))
        .expect("metadata");
    w.metadata(
        "general.name",
        Value::String(format!("synthetic {}", shape.name)),
    )
    .expect("metadata");
    meta(&mut w, "context_length", Value::U32(32_768));
    meta(
        &mut w,
        "embedding_length",
        Value::U32(shape.embedding as u32),
    );
    meta(&mut w, "block_count", Value::U32(shape.layers as u32));
    meta(
        &mut w,
        "feed_forward_length",
        Value::U32(shape.feed_forward as u32),
    );
    meta(
        &mut w,
        "attention.head_count",
        Value::U32(shape.heads as u32),
    );
    meta(
        &mut w,
        "attention.head_count_kv",
        Value::U32(shape.kv_heads as u32),
    );
    meta(&mut w, "attention.layer_norm_rms_epsilon", Value::F32(1e-6));
    meta(&mut w, "rope.freq_base", Value::F32(1e6));

    let mut seed = 1000;
    let mut matrix = |w: &mut GgufWriter, name: &str, fan_in: u64, rows: u64, more_bits: bool| {
        seed += 1;
        let kind = q4_k_m_kind(fan_in, more_bits);
        // Weights of about 1/√fan-in, so activations keep their size through the layers.
        let spread = 1.7 / (fan_in as f32).sqrt();
        let bytes = tenets::quant::random_weights(kind, (fan_in * rows) as usize, seed, spread);
        w.tensor(name, &[fan_in, rows], kind, bytes)
            .expect("tensor");
    };
    let vector = |w: &mut GgufWriter, name: &str, len: u64, value: f32| {
        let bytes = (0..len).flat_map(|_| value.to_le_bytes()).collect();
        w.tensor(name, &[len], QuantType::F32, bytes)
            .expect("tensor");
    };
    let (e, ff) = (shape.embedding, shape.feed_forward);
    let (q, kv) = (shape.heads * head_dim, shape.kv_heads * head_dim);
    matrix(&mut w, "token_embd.weight", e, shape.vocab, true);
    vector(&mut w, "output_norm.weight", e, 1.0);
    for l in 0..shape.layers {
        let n = |t: &str| format!("blk.{l}.{t}");
        let more = use_more_bits(l, shape.layers);
        vector(&mut w, &n("attn_norm.weight"), e, 1.0);
        vector(&mut w, &n("ffn_norm.weight"), e, 1.0);
        matrix(&mut w, &n("attn_q.weight"), e, q, false);
        matrix(&mut w, &n("attn_k.weight"), e, kv, false);
        matrix(&mut w, &n("attn_v.weight"), e, kv, more);
        vector(&mut w, &n("attn_q.bias"), q, 0.01);
        vector(&mut w, &n("attn_k.bias"), kv, 0.01);
        vector(&mut w, &n("attn_v.bias"), kv, 0.01);
        matrix(&mut w, &n("attn_output.weight"), q, e, false);
        matrix(&mut w, &n("ffn_gate.weight"), e, ff, false);
        matrix(&mut w, &n("ffn_up.weight"), e, ff, false);
        matrix(&mut w, &n("ffn_down.weight"), ff, e, more);
    }
    w.write(dst).expect("write model");
}
