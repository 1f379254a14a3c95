//! A model's shape and arithmetic choices, read from GGUF metadata: what the forward needs to know
//! to compute what llama.cpp computes for the same file (which RoPE layout, which layers slide,
//! which scales).

use super::ModelError;
use crate::gguf::{Gguf, Value};

/// Architectures the native forward implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// Llama and its close relatives (SmolLM2, Llama 3.x, Mistral-style files): RMSNorm, RoPE
    /// on adjacent pairs (the converter permutes q/k rows for it), GQA, SwiGLU; optional q/k/v
    /// biases and Llama 3's RoPE frequency factors.
    Llama,
    /// SmolLM3: Llama's block with no RoPE in every fourth layer.
    SmolLm3,
    /// Qwen2 / Qwen2.5: Llama's block with q/k/v biases and NeoX RoPE (halves).
    Qwen2,
    /// Qwen3: Llama's block with a per-head RMSNorm on queries and keys before NeoX RoPE.
    Qwen3,
    /// Phi-3 / Phi-3.5 / Phi-4-mini: Llama's block with q/k/v fused in `attn_qkv` (or apart),
    /// gate and up fused in `ffn_up`, NeoX RoPE with LongRoPE's per-pair factors and magnitude.
    Phi3,
    /// Gemma 2: scaled embeddings, post-norms, GeGLU, every other layer sliding, and
    /// softcapped attention scores and logits.
    Gemma2,
    /// Gemma 3: scaled embeddings, q/k norms, post-norms, GeGLU, sliding-window layers.
    Gemma3,
}

impl Architecture {
    /// The name GGUF's `general.architecture` gives it (and llama.cpp's adapters carry).
    pub fn name(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::SmolLm3 => "smollm3",
            Architecture::Qwen2 => "qwen2",
            Architecture::Qwen3 => "qwen3",
            Architecture::Phi3 => "phi3",
            Architecture::Gemma2 => "gemma2",
            Architecture::Gemma3 => "gemma3",
        }
    }

    /// Queries and keys go through a per-head RMSNorm before RoPE.
    pub fn has_qk_norm(self) -> bool {
        matches!(self, Architecture::Qwen3 | Architecture::Gemma3)
    }

    /// Each block's attention and feed-forward outputs are normed before the residual add.
    pub fn has_post_norms(self) -> bool {
        self.is_gemma()
    }

    /// q/k/v biases are applied where the file has them (Qwen2 always does).
    pub fn takes_qkv_biases(self) -> bool {
        !self.is_gemma()
    }

    fn is_gemma(self) -> bool {
        matches!(self, Architecture::Gemma2 | Architecture::Gemma3)
    }
}

/// How RoPE pairs up the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeLayout {
    /// Adjacent pairs `(2i, 2i+1)`: llama.cpp's "normal" RoPE. GGUF converters permute the rows
    /// of Llama q/k weights so that this layout gives the original model's rotation.
    Adjacent,
    /// Halves `(i, i + d/2)`: llama.cpp's "NeoX" RoPE, used by Gemma.
    Halves,
}

/// The gate's activation in the feed-forward block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// SwiGLU: silu(gate) · up.
    Silu,
    /// GeGLU with the tanh approximation of GELU: gelu(gate) · up.
    GeluTanh,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub architecture: Architecture,
    pub vocab: usize,
    pub embedding: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub feed_forward: usize,
    pub norm_eps: f32,
    pub rope_layout: RopeLayout,
    /// Dimensions of each head that RoPE rotates (the first `rope_dims`).
    pub rope_dims: usize,
    pub rope_base: f32,
    /// RoPE base of sliding-window layers (Gemma 3 uses 10 000 there, the global base elsewhere).
    pub rope_base_local: f32,
    /// Positions are multiplied by this (linear RoPE scaling: 1 / factor).
    pub rope_scale: f32,
    /// The same for sliding-window layers (Gemma 3 scales only its global layers).
    pub rope_scale_local: f32,
    /// Keys a query may see in a sliding-window layer: positions `p` with `q − p < window`.
    pub sliding_window: Option<usize>,
    /// Every `n`-th layer (the last of each group) is global, the others slide (llama.cpp's
    /// swa pattern); 0 = no sliding layers.
    pub sliding_pattern: usize,
    /// Queries are multiplied by this before `q·k`.
    pub attention_scale: f32,
    /// Token embeddings are multiplied by this (Gemma: √embedding).
    pub embedding_scale: f32,
    /// Logits become `c · tanh(logits / c)` when set.
    pub final_softcap: Option<f32>,
    /// Scaled attention scores become `c · tanh(score / c)` when set (Gemma 2).
    pub attention_softcap: Option<f32>,
    /// Every `n`-th layer (the last of each group of `n`) applies no RoPE (SmolLM3: 4); 0 = all
    /// layers rotate.
    pub no_rope_every: usize,
    /// RoPE's cos and sin are multiplied by this (LongRoPE's `rope.scaling.attn_factor`), so
    /// every score by its square.
    pub rope_magnitude: f32,
    pub activation: Activation,
}

impl Config {
    pub fn from_gguf(gguf: &Gguf) -> Result<Self, ModelError> {
        let arch_name = gguf
            .architecture()
            .ok_or_else(|| ModelError::missing_key(gguf, "general.architecture"))?;
        let architecture = match arch_name {
            "llama" => Architecture::Llama,
            "smollm3" => Architecture::SmolLm3,
            "qwen2" => Architecture::Qwen2,
            "qwen3" => Architecture::Qwen3,
            "phi3" => Architecture::Phi3,
            "gemma2" => Architecture::Gemma2,
            "gemma3" => Architecture::Gemma3,
            other => {
                return Err(ModelError::Unsupported {
                    path: gguf.path().to_path_buf(),
                    what: format!(
                        "architecture `{other}` (the native engine runs llama, smollm3, qwen2, \
                         qwen3, phi3, gemma2 and gemma3)"
                    ),
                })
            }
        };
        let key = |k: &str| format!("{arch_name}.{k}");
        let int = |k: &str| -> Result<usize, ModelError> {
            gguf.get(&key(k))
                .and_then(Value::as_u64)
                .map(|v| v as usize)
                .ok_or_else(|| ModelError::missing_key(gguf, &key(k)))
        };
        let opt_int = |k: &str| {
            gguf.get(&key(k))
                .and_then(Value::as_u64)
                .map(|v| v as usize)
        };
        let opt_float = |k: &str| gguf.get(&key(k)).and_then(Value::as_f64).map(|v| v as f32);

        let embedding = int("embedding_length")?;
        let heads = int("attention.head_count")?;
        let kv_heads = opt_int("attention.head_count_kv").unwrap_or(heads);
        let head_dim = match opt_int("attention.key_length") {
            Some(d) => d,
            None if heads > 0 => embedding / heads,
            None => 0,
        };
        let layers = int("block_count")?;
        let feed_forward = int("feed_forward_length")?;
        let vocab = gguf
            .tensor("token_embd.weight")
            .and_then(|t| t.dims.get(1).copied())
            .ok_or_else(|| ModelError::MissingTensor {
                path: gguf.path().to_path_buf(),
                name: "token_embd.weight".into(),
            })? as usize;
        if heads == 0 || kv_heads == 0 || heads % kv_heads != 0 || head_dim == 0 || embedding == 0 {
            return Err(ModelError::Unsupported {
                path: gguf.path().to_path_buf(),
                what: format!(
                    "attention shape: {heads} heads, {kv_heads} key/value heads, head size {head_dim}"
                ),
            });
        }
        if let Some(v) = opt_int("attention.value_length") {
            if v != head_dim {
                return Err(ModelError::Unsupported {
                    path: gguf.path().to_path_buf(),
                    what: format!("value heads of {v} beside key heads of {head_dim}"),
                });
            }
        }
        let rope_dims = opt_int("rope.dimension_count").unwrap_or(head_dim);
        if rope_dims > head_dim || rope_dims % 2 != 0 {
            return Err(ModelError::Unsupported {
                path: gguf.path().to_path_buf(),
                what: format!("RoPE over {rope_dims} of {head_dim} head dimensions"),
            });
        }
        // As llama.cpp reads it: no type means linear, and a factor (or the older
        // `rope.scale_linear`) then scales positions; "none" never does.
        let factor = opt_float("rope.scaling.factor")
            .or_else(|| opt_float("rope.scale_linear"))
            .filter(|&f| f != 0.0);
        let rope_scale = match gguf.get(&key("rope.scaling.type")).and_then(Value::as_str) {
            Some("none") => 1.0,
            None | Some("linear") => factor.map_or(1.0, |f| 1.0 / f),
            // LongRoPE (Phi-3): its per-pair factors are tensors; llama.cpp scales positions by
            // a factor here as for linear.
            Some("longrope") if architecture == Architecture::Phi3 => {
                factor.map_or(1.0, |f| 1.0 / f)
            }
            Some(other) => {
                return Err(ModelError::Unsupported {
                    path: gguf.path().to_path_buf(),
                    what: format!("RoPE scaling `{other}`"),
                })
            }
        };
        let rope_base = opt_float("rope.freq_base").unwrap_or(10_000.0);
        let norm_eps = opt_float("attention.layer_norm_rms_epsilon").unwrap_or(1e-5);
        let llama = Config {
            architecture,
            vocab,
            embedding,
            layers,
            heads,
            kv_heads,
            head_dim,
            feed_forward,
            norm_eps,
            rope_layout: RopeLayout::Adjacent,
            rope_dims,
            rope_base,
            rope_base_local: rope_base,
            rope_scale,
            rope_scale_local: rope_scale,
            sliding_window: None,
            sliding_pattern: 0,
            attention_scale: 1.0 / (head_dim as f32).sqrt(),
            embedding_scale: 1.0,
            final_softcap: None,
            attention_softcap: None,
            no_rope_every: 0,
            rope_magnitude: 1.0,
            activation: Activation::Silu,
        };
        let config = match architecture {
            Architecture::Llama => llama,
            // llama.cpp's SmolLM3: layers `l` with (l + 1) % 4 = 0 attend without positions.
            Architecture::SmolLm3 => Config {
                no_rope_every: 4,
                ..llama
            },
            // llama.cpp's NeoX RoPE over the whole head (it asserts rot = head size).
            Architecture::Qwen2 | Architecture::Qwen3 => Config {
                rope_layout: RopeLayout::Halves,
                ..llama
            },
            // llama.cpp's Phi-3: NeoX RoPE, LongRoPE's magnitude where the file gives one (its
            // sliding window is read and ignored, as llama.cpp ignores it).
            Architecture::Phi3 => Config {
                rope_layout: RopeLayout::Halves,
                rope_magnitude: opt_float("rope.scaling.attn_factor").unwrap_or(1.0),
                ..llama
            },
            Architecture::Gemma2 => Config {
                // As llama.cpp loads Gemma 2: every other layer slides (4096 unless the file
                // says), its RoPE as the global layers' unless the file gives one, both caps
                // at their published values unless the file gives them.
                norm_eps: opt_float("attention.layer_norm_rms_epsilon").unwrap_or(1e-6),
                rope_layout: RopeLayout::Halves,
                rope_base_local: opt_float("rope.freq_base_swa").unwrap_or(rope_base),
                sliding_window: Some(opt_int("attention.sliding_window").unwrap_or(4096)),
                sliding_pattern: 2,
                // Gemma 2 27B scales by embedding/heads; the others by the head size.
                attention_scale: if layers == 46 {
                    1.0 / ((embedding / heads) as f32).sqrt()
                } else {
                    1.0 / (head_dim as f32).sqrt()
                },
                embedding_scale: (embedding as f32).sqrt(),
                final_softcap: Some(opt_float("final_logit_softcapping").unwrap_or(30.0)),
                attention_softcap: Some(opt_float("attn_logit_softcapping").unwrap_or(50.0)),
                activation: Activation::GeluTanh,
                ..llama
            },
            Architecture::Gemma3 => {
                let window = opt_int("attention.sliding_window").filter(|&w| w > 0);
                let pattern = match gguf.get(&key("attention.sliding_window_pattern")) {
                    None => 6,
                    Some(v) => match v.as_u64() {
                        Some(n) => n as usize,
                        None => {
                            return Err(ModelError::Unsupported {
                                path: gguf.path().to_path_buf(),
                                what: format!(
                                    "metadata `{}` = {}: a per-layer pattern of sliding layers",
                                    key("attention.sliding_window_pattern"),
                                    describe(v)
                                ),
                            })
                        }
                    },
                };
                Config {
                    norm_eps: opt_float("attention.layer_norm_rms_epsilon").unwrap_or(1e-6),
                    rope_layout: RopeLayout::Halves,
                    // Local layers: llama.cpp's base for them (10 000 unless the file says),
                    // and no position scaling (Gemma 3 scales only its global layers).
                    rope_base_local: if window.is_some() {
                        opt_float("rope.freq_base_swa").unwrap_or(10_000.0)
                    } else {
                        rope_base
                    },
                    rope_scale_local: if window.is_some() { 1.0 } else { rope_scale },
                    sliding_window: window,
                    sliding_pattern: if window.is_some() { pattern } else { 0 },
                    // Gemma 3 27B scales by embedding/heads; the others by the head size.
                    attention_scale: if layers == 62 {
                        1.0 / ((embedding / heads) as f32).sqrt()
                    } else {
                        1.0 / (head_dim as f32).sqrt()
                    },
                    embedding_scale: (embedding as f32).sqrt(),
                    final_softcap: opt_float("final_logit_softcapping").filter(|&c| c > 0.0),
                    activation: Activation::GeluTanh,
                    ..llama
                }
            }
        };
        check_metadata(gguf, arch_name, &config)?;
        check_tensors(gguf, &config)?;
        Ok(config)
    }

    /// Every tensor name the forward reads, the optional ones included: `output.weight` (when
    /// absent, the embedding is tied to the head), q/k/v biases, Llama 3's RoPE factors.
    pub fn tensor_names(&self) -> Vec<String> {
        let mut names: Vec<String> = vec!["token_embd.weight".into(), "output_norm.weight".into()];
        // llama.cpp's Gemma 2 always ties its head to the embedding (and refuses a file with a
        // head of its own).
        if self.architecture != Architecture::Gemma2 {
            names.push("output.weight".into());
        }
        let mut per_layer = vec![
            "attn_norm.weight",
            "attn_q.weight",
            "attn_k.weight",
            "attn_v.weight",
            "attn_output.weight",
            "ffn_norm.weight",
            "ffn_gate.weight",
            "ffn_up.weight",
            "ffn_down.weight",
        ];
        let a = self.architecture;
        if a == Architecture::Phi3 {
            // q/k/v fused (or apart), gate and up always fused in `ffn_up`; LongRoPE's factors.
            per_layer.retain(|n| *n != "ffn_gate.weight");
            per_layer.push("attn_qkv.weight");
            names.extend([ROPE_FACTORS_SHORT, ROPE_FACTORS_LONG].map(String::from));
        }
        if a.has_qk_norm() {
            per_layer.extend(["attn_q_norm.weight", "attn_k_norm.weight"]);
        }
        if a.has_post_norms() {
            per_layer.extend(["post_attention_norm.weight", "post_ffw_norm.weight"]);
        }
        if a.takes_qkv_biases() {
            per_layer.extend(["attn_q.bias", "attn_k.bias", "attn_v.bias"]);
        }
        if a == Architecture::Llama {
            // Llama 3's frequency factors (one tensor for every layer).
            names.push(ROPE_FREQS.to_string());
        }
        for l in 0..self.layers {
            names.extend(per_layer.iter().map(|n| format!("blk.{l}.{n}")));
        }
        names
    }

    /// Whether `layer` attends through a sliding window.
    pub fn is_sliding(&self, layer: usize) -> bool {
        self.sliding_window.is_some()
            && self.sliding_pattern > 0
            && layer % self.sliding_pattern < self.sliding_pattern - 1
    }

    /// The RoPE base and position scale of `layer`.
    pub fn rope_of(&self, layer: usize) -> (f32, f32) {
        if self.is_sliding(layer) {
            (self.rope_base_local, self.rope_scale_local)
        } else {
            (self.rope_base, self.rope_scale)
        }
    }

    /// Whether `layer` rotates its queries and keys.
    pub fn uses_rope(&self, layer: usize) -> bool {
        self.no_rope_every == 0 || !(layer + 1).is_multiple_of(self.no_rope_every)
    }

    /// The attention window of `layer`: keys at most this far back (exclusive) are seen.
    pub fn window_of(&self, layer: usize) -> Option<usize> {
        if self.is_sliding(layer) {
            self.sliding_window
        } else {
            None
        }
    }
}

/// Metadata keys of an architecture (after `{arch}.`) that the forward reads, or that change
/// nothing it computes: sizes, limits and descriptions.
const KNOWN_KEYS: &[&str] = &[
    "context_length",
    "vocab_size",
    "embedding_length",
    "block_count",
    "feed_forward_length",
    "attention.head_count",
    "attention.head_count_kv",
    "attention.key_length",
    "attention.value_length",
    "attention.layer_norm_rms_epsilon",
    "rope.dimension_count",
    "rope.freq_base",
    "rope.scaling.type",
    "rope.scaling.factor",
    "rope.scale_linear",
    // Where the model was fine-tuned to its context: a description under linear scaling (the
    // only scaling read; any other type is refused by name).
    "rope.scaling.original_context_length",
    "rope.scaling.finetuned",
];

/// Llama 3's RoPE frequency factors: position angles of pair `i` are divided by entry `i`.
pub const ROPE_FREQS: &str = "rope_freqs.weight";

/// LongRoPE's factors (Phi-3), the same kind as [`ROPE_FREQS`]: llama.cpp reads the short ones
/// while its context is at most the original context length, the long ones beyond.
pub const ROPE_FACTORS_SHORT: &str = "rope_factors_short.weight";
pub const ROPE_FACTORS_LONG: &str = "rope_factors_long.weight";

/// Keys the forward reads only for Phi-3 (its sliding window is one llama.cpp ignores).
const PHI3_KEYS: &[&str] = &["rope.scaling.attn_factor", "attention.sliding_window"];

/// Keys the forward reads only for Gemma 2.
const GEMMA2_KEYS: &[&str] = &[
    "attention.sliding_window",
    "rope.freq_base_swa",
    "final_logit_softcapping",
    "attn_logit_softcapping",
];

/// Keys the forward reads only for Gemma 3.
const GEMMA3_KEYS: &[&str] = &[
    "attention.sliding_window",
    "attention.sliding_window_pattern",
    "rope.freq_base_swa",
    "final_logit_softcapping",
];

/// Keys that are harmless at one value (the arithmetic the forward does anyway) and change the
/// model at any other: mixture-of-experts counts, causal attention, and the scales and caps of
/// relatives that share an architecture name.
const NEUTRAL_KEYS: &[(&str, f64)] = &[
    ("expert_count", 0.0),
    ("expert_used_count", 0.0),
    ("attention.causal", 1.0),
    ("logit_scale", 1.0),
    ("embedding_scale", 1.0),
    ("residual_scale", 1.0),
    ("attn_logit_softcapping", 0.0),
    ("attention.clamp_kqv", 0.0),
    ("use_parallel_residual", 0.0),
    ("rope.scaling.attn_factor", 1.0),
];

/// The value of a metadata entry as a number, booleans as 0 and 1.
fn number(value: &Value) -> Option<f64> {
    match value {
        Value::Bool(b) => Some(f64::from(u8::from(*b))),
        other => other.as_f64(),
    }
}

/// Every `{arch}.` key of the file must be one the forward implements (or one that changes
/// nothing): a key it does not know could change the arithmetic — RoPE scaling, softcapping,
/// sliding windows, attention or logit scales — and ignoring it would compute a model other
/// than the one llama.cpp runs from the same file.
fn check_metadata(gguf: &Gguf, arch: &str, config: &Config) -> Result<(), ModelError> {
    let prefix = format!("{arch}.");
    for (key, value) in &gguf.metadata {
        let Some(name) = key.strip_prefix(&prefix) else {
            continue;
        };
        let own = match config.architecture {
            Architecture::Gemma2 => GEMMA2_KEYS,
            Architecture::Gemma3 => GEMMA3_KEYS,
            Architecture::Phi3 => PHI3_KEYS,
            _ => &[],
        };
        if KNOWN_KEYS.contains(&name) || own.contains(&name) {
            continue;
        }
        let neutral = NEUTRAL_KEYS
            .iter()
            .find(|(k, _)| *k == name)
            .is_some_and(|(_, v)| number(value) == Some(*v));
        if neutral {
            continue;
        }
        return Err(ModelError::Unsupported {
            path: gguf.path().to_path_buf(),
            what: format!(
                "metadata `{key}` = {}: the native forward does not implement it, and would \
                 compute a different model from the one llama.cpp runs (it implements {})",
                describe(value),
                implemented()
            ),
        });
    }
    Ok(())
}

/// Every tensor of the file must be one the forward reads: an extra tensor is a feature —
/// Llama 3's RoPE frequency factors, biases, LongRoPE factors, fused projections — whose
/// absence from the arithmetic would silently change the model.
fn check_tensors(gguf: &Gguf, config: &Config) -> Result<(), ModelError> {
    let names: std::collections::HashSet<String> = config.tensor_names().into_iter().collect();
    let Some(extra) = gguf.tensors.iter().find(|t| !names.contains(&t.name)) else {
        return Ok(());
    };
    let name = extra.name.as_str();
    let what = if name == "rope_freqs.weight" {
        " (Llama 3 RoPE scaling's frequency factors)"
    } else if name.starts_with("rope_factors") {
        " (LongRoPE scaling factors)"
    } else if name.ends_with(".bias") {
        " (a bias the native forward does not apply)"
    } else if name.contains("attn_qkv") {
        " (fused query/key/value projections)"
    } else {
        ""
    };
    Err(ModelError::Unsupported {
        path: gguf.path().to_path_buf(),
        what: format!(
            "tensor `{name}`{what}: the native forward does not implement it, and would compute a \
             different model from the one llama.cpp runs (it implements {})",
            implemented()
        ),
    })
}

/// What the native forward runs, for messages about what it does not.
fn implemented() -> &'static str {
    "llama (linear RoPE scaling, Llama 3 frequency factors, q/k/v biases), smollm3, qwen2, \
     qwen3, phi3 (fused projections, LongRoPE at the original context), gemma2 and gemma3"
}

/// A metadata value for a message: short values whole, arrays by length.
fn describe(value: &Value) -> String {
    match value {
        Value::Array(items) => format!("an array of {} items", items.len()),
        Value::String(text) => format!("{text:?}"),
        other => match number(other) {
            Some(v) => v.to_string(),
            None => format!("{other:?}"),
        },
    }
}
