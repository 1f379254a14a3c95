//! A model's shape and arithmetic choices, read from GGUF metadata: what the forward needs to know
//! to compute what llama.cpp computes for the same file (which RoPE layout, which layers slide,
//! which scales).

use super::ModelError;
use crate::train::gguf::{Gguf, Value};

/// Architectures the native forward implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// Llama and its close relatives (SmolLM2): RMSNorm, RoPE, GQA, SwiGLU.
    Llama,
    /// Gemma 3: scaled embeddings, q/k norms, post-norms, GeGLU, sliding-window layers.
    Gemma3,
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
    pub activation: Activation,
}

impl Config {
    pub fn from_gguf(gguf: &Gguf) -> Result<Self, ModelError> {
        let arch_name = gguf
            .architecture()
            .ok_or_else(|| ModelError::missing_key(gguf, "general.architecture"))?;
        let architecture = match arch_name {
            "llama" => Architecture::Llama,
            "gemma3" => Architecture::Gemma3,
            other => {
                return Err(ModelError::Unsupported {
                    path: gguf.path().to_path_buf(),
                    what: format!(
                        "architecture `{other}` (the native engine runs llama and gemma3)"
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
        let rope_scale = match gguf.get(&key("rope.scaling.type")).and_then(Value::as_str) {
            None | Some("none") => 1.0,
            Some("linear") => 1.0 / opt_float("rope.scaling.factor").unwrap_or(1.0),
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
            sliding_window: None,
            sliding_pattern: 0,
            attention_scale: 1.0 / (head_dim as f32).sqrt(),
            embedding_scale: 1.0,
            final_softcap: None,
            activation: Activation::Silu,
        };
        let config = match architecture {
            Architecture::Llama => llama,
            Architecture::Gemma3 => {
                let window = opt_int("attention.sliding_window").filter(|&w| w > 0);
                Config {
                    norm_eps: opt_float("attention.layer_norm_rms_epsilon").unwrap_or(1e-6),
                    rope_layout: RopeLayout::Halves,
                    // llama.cpp's fixed choice for Gemma 3's local layers.
                    rope_base_local: if window.is_some() {
                        10_000.0
                    } else {
                        rope_base
                    },
                    sliding_window: window,
                    sliding_pattern: if window.is_some() { 6 } else { 0 },
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
        Ok(config)
    }

    /// Whether `layer` attends through a sliding window.
    pub fn is_sliding(&self, layer: usize) -> bool {
        self.sliding_window.is_some()
            && self.sliding_pattern > 0
            && layer % self.sliding_pattern < self.sliding_pattern - 1
    }

    /// The RoPE base of `layer`.
    pub fn rope_base_of(&self, layer: usize) -> f32 {
        if self.is_sliding(layer) {
            self.rope_base_local
        } else {
            self.rope_base
        }
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
