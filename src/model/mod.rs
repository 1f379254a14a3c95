//! The native transformer forward over a GGUF file's weights as they are stored — still
//! quantized, memory-mapped, decoded a panel at a time by the kernels in
//! [`crate::quant::matmul`]. Llama (SmolLM2, Llama 3), SmolLM3, Qwen2, Qwen3, Gemma 2 and 3, with f32
//! activations; it computes what llama.cpp computes for the same file, and is the base the LoRA
//! trainer builds on.

pub mod adapter_gguf;
pub mod adapters;
pub mod backward;
pub mod config;
pub mod fused;
pub mod lora;
pub mod ops;
pub mod profile;
pub mod steer;

use std::path::{Path, PathBuf};

use crate::gguf::{Gguf, GgufError, TensorInfo};
use crate::quant::dequantize_row;
use crate::quant::matmul::{Compute, MatmulError, Matrix};
use lora::{Dropout, Lora};

pub use adapters::{AdapterGrads, Adapters, Target, TARGETS};
use backward::LayerTrace;
pub use backward::{LogprobGradients, Trace};
pub use config::{Activation, Architecture, Config, RopeLayout};
use ops::{AttentionShape, RopeTable};
pub use ops::{Branch, Layout, Segment};

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("{path}: metadata key `{key}` is missing or not a number")]
    MissingKey { path: PathBuf, key: String },
    #[error("{path}: tensor `{name}` is missing")]
    MissingTensor { path: PathBuf, name: String },
    #[error("{path}: tensor `{name}` has shape {got:?}, expected {expected:?}")]
    Shape {
        path: PathBuf,
        name: String,
        got: Vec<u64>,
        expected: Vec<u64>,
    },
    #[error("{path}: unsupported {what}")]
    Unsupported { path: PathBuf, what: String },
    #[error("a layout of {rows} rows over {tokens} tokens")]
    Layout { rows: usize, tokens: usize },
    #[error("{path}: token {token} is outside the model's embedding table ({vocab} rows)")]
    Token {
        path: PathBuf,
        token: u32,
        vocab: usize,
    },
    #[error(transparent)]
    Matmul(#[from] MatmulError),
}

impl ModelError {
    fn missing_key(gguf: &Gguf, key: &str) -> Self {
        ModelError::MissingKey {
            path: gguf.path().to_path_buf(),
            key: key.to_string(),
        }
    }
}

/// A weight matrix in the file: `rows` outputs of `cols` inputs.
#[derive(Debug, Clone)]
struct Weight {
    tensor: TensorInfo,
    rows: usize,
    cols: usize,
    /// Added to every output row (Qwen2's q/k/v biases); frozen, so its backward is nothing.
    bias: Option<Vec<f32>>,
}

impl Weight {
    /// Rows `start..start + rows` of this weight, as a weight of its own: a fused projection's
    /// part (Phi-3's q, k and v in `attn_qkv`, gate and up in `ffn_up`). Rows are stored one
    /// after another, blocks never straddle two, so the part is a byte range of the tensor.
    fn rows(&self, start: usize, rows: usize) -> Weight {
        let row_bytes = self.tensor.kind.row_bytes(self.cols) as u64;
        let mut tensor = self.tensor.clone();
        tensor.offset += start as u64 * row_bytes;
        tensor.size = rows as u64 * row_bytes;
        tensor.dims = vec![self.cols as u64, rows as u64];
        Weight {
            tensor,
            rows,
            cols: self.cols,
            bias: None,
        }
    }
}

struct Layer {
    attn_norm: Vec<f32>,
    q: Weight,
    k: Weight,
    v: Weight,
    o: Weight,
    q_norm: Option<Vec<f32>>,
    k_norm: Option<Vec<f32>>,
    post_attn_norm: Option<Vec<f32>>,
    ffn_norm: Vec<f32>,
    gate: Weight,
    up: Weight,
    down: Weight,
    post_ffn_norm: Option<Vec<f32>>,
}

impl Layer {
    /// The frozen projection an adapter on `t` sits beside.
    fn weight(&self, t: Target) -> &Weight {
        match t {
            Target::Q => &self.q,
            Target::K => &self.k,
            Target::V => &self.v,
            Target::O => &self.o,
            Target::Gate => &self.gate,
            Target::Up => &self.up,
            Target::Down => &self.down,
        }
    }
}

/// The log-probability the model gives the token that actually comes next, and its own top
/// choice there.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenScore {
    pub logprob: f64,
    pub top: u32,
    pub top_logprob: f64,
}

/// A model ready to run: the mapped file, its config and where each weight lies.
pub struct Model {
    gguf: Gguf,
    config: Config,
    embed: Weight,
    output: Weight,
    output_norm: Vec<f32>,
    /// Llama 3's RoPE frequency factors (`rope_dims / 2`), shared by every layer.
    rope_factors: Option<Vec<f32>>,
    layers: Vec<Layer>,
    /// Where this model's time has gone (see [`Model::time_spent`]).
    profile: profile::Profile,
}

/// Tokens whose logits are computed together at the output head: bounds the logits buffer
/// (vocabularies reach 262 144) while keeping the matmul wide.
const HEAD_CHUNK: usize = 32;

impl Model {
    pub fn open(path: &Path) -> Result<Self, ModelError> {
        Model::load(Gguf::open(path)?)
    }

    pub fn load(gguf: Gguf) -> Result<Self, ModelError> {
        let config = Config::from_gguf(&gguf)?;
        let c = &config;
        let (e, qd, kvd) = (c.embedding, c.heads * c.head_dim, c.kv_heads * c.head_dim);
        let embed = weight(&gguf, "token_embd.weight", c.vocab, e)?;
        let output = match gguf.tensor("output.weight") {
            Some(_) => weight(&gguf, "output.weight", c.vocab, e)?,
            None => embed.clone(),
        };
        let output_norm = vector(&gguf, "output_norm.weight", e)?;
        let arch = c.architecture;
        let optional = |name: &str, len: usize| match gguf.tensor(name) {
            Some(_) => vector(&gguf, name, len).map(Some),
            None => Ok(None),
        };
        // Llama 3's factors, or LongRoPE's short ones: llama.cpp reads those while its context
        // is at most the original one, as every context tenets trains and scores in is.
        let factors = match arch {
            Architecture::Phi3 => config::ROPE_FACTORS_SHORT,
            _ => config::ROPE_FREQS,
        };
        let rope_factors = optional(factors, c.rope_dims / 2)?;
        let mut layers = Vec::with_capacity(c.layers);
        for l in 0..c.layers {
            let name = |n: &str| format!("blk.{l}.{n}.weight");
            let required_if = |wanted: bool, n: &str, len: usize| match wanted {
                true => vector(&gguf, &name(n), len).map(Some),
                false => Ok(None),
            };
            // q/k/v with their biases where the architecture applies them and the file has them.
            let biased = |n: &str, rows: usize| -> Result<Weight, ModelError> {
                let mut w = weight(&gguf, &name(n), rows, e)?;
                if arch.takes_qkv_biases() {
                    w.bias = optional(&format!("blk.{l}.{n}.bias"), rows)?;
                }
                Ok(w)
            };
            // Phi-3 fuses q, k and v (most files) and always gate and up: their parts are row
            // ranges of the fused weight.
            let (q, k, v) = match gguf.tensor(&name("attn_qkv")) {
                Some(_) if arch == Architecture::Phi3 => {
                    let qkv = weight(&gguf, &name("attn_qkv"), qd + 2 * kvd, e)?;
                    (qkv.rows(0, qd), qkv.rows(qd, kvd), qkv.rows(qd + kvd, kvd))
                }
                _ => (
                    biased("attn_q", qd)?,
                    biased("attn_k", kvd)?,
                    biased("attn_v", kvd)?,
                ),
            };
            let ff = c.feed_forward;
            let (gate, up) = match arch {
                Architecture::Phi3 => {
                    let gate_up = weight(&gguf, &name("ffn_up"), 2 * ff, e)?;
                    (gate_up.rows(0, ff), gate_up.rows(ff, ff))
                }
                _ => (
                    weight(&gguf, &name("ffn_gate"), ff, e)?,
                    weight(&gguf, &name("ffn_up"), ff, e)?,
                ),
            };
            layers.push(Layer {
                attn_norm: vector(&gguf, &name("attn_norm"), e)?,
                q,
                k,
                v,
                o: weight(&gguf, &name("attn_output"), e, qd)?,
                q_norm: required_if(arch.has_qk_norm(), "attn_q_norm", c.head_dim)?,
                k_norm: required_if(arch.has_qk_norm(), "attn_k_norm", c.head_dim)?,
                post_attn_norm: required_if(arch.has_post_norms(), "post_attention_norm", e)?,
                ffn_norm: vector(&gguf, &name("ffn_norm"), e)?,
                gate,
                up,
                down: weight(&gguf, &name("ffn_down"), e, ff)?,
                post_ffn_norm: required_if(arch.has_post_norms(), "post_ffw_norm", e)?,
            });
        }
        Ok(Model {
            gguf,
            config,
            embed,
            output,
            output_norm,
            rope_factors,
            layers,
            profile: Default::default(),
        })
    }

    /// The seconds this model has spent in each part of its work since it was loaded: take
    /// two readings and [`profile::PartSeconds::since`] for a stretch of it.
    pub fn time_spent(&self) -> profile::PartSeconds {
        self.profile.seconds()
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The weights this file fuses from several projections (Phi-3's), whose adapters
    /// llama.cpp and PEFT read as one.
    pub fn fused_weights(&self) -> Vec<fused::FusedWeight> {
        if self.config.architecture != Architecture::Phi3 {
            return Vec::new();
        }
        let mut fused = Vec::new();
        if self.gguf.tensor("blk.0.attn_qkv.weight").is_some() {
            fused.push(fused::QKV);
        }
        fused.push(fused::GATE_UP);
        fused
    }

    pub fn path(&self) -> &Path {
        self.gguf.path()
    }

    /// The file's metadata (names, tokenizer, …), for what the forward itself does not read.
    pub fn gguf(&self) -> &Gguf {
        &self.gguf
    }

    /// Bytes of the model file (what stays mapped; weights are never expanded as a whole).
    pub fn file_bytes(&self) -> u64 {
        self.gguf.tensors.iter().map(|t| t.size).sum()
    }

    fn matrix(&self, w: &Weight) -> Result<Matrix<'_>, ModelError> {
        Ok(Matrix::blocks(
            w.tensor.kind,
            w.rows,
            w.cols,
            self.gguf.data(&w.tensor),
        )?)
    }

    /// `x · Wᵀ (+ bias)` for `tokens` rows of `x`, through a layer's frozen weight.
    fn linear(&self, compute: &Compute, x: &[f32], w: &Weight) -> Result<Vec<f32>, ModelError> {
        self.profile
            .time(profile::Part::Kernels, || self.product(compute, x, w))
    }

    /// [`Model::linear`] untimed: for the output head, which counts its time as a whole.
    fn product(&self, compute: &Compute, x: &[f32], w: &Weight) -> Result<Vec<f32>, ModelError> {
        let mut y = vec![0.0; x.len() / w.cols * w.rows];
        compute.matmul_t(x, &self.matrix(w)?, &mut y)?;
        if let Some(b) = &w.bias {
            ops::add_row_bias(&mut y, b);
        }
        Ok(y)
    }

    /// The hidden state after the final norm, `tokens × embedding`, for tokens at positions
    /// `0..tokens.len()`.
    pub fn hidden(&self, compute: &Compute, tokens: &[u32]) -> Result<Vec<f32>, ModelError> {
        self.run(compute, tokens, None, None)
    }

    /// The forward pass: with `adapters`, each adapted projection adds its LoRA update; with
    /// `trace`, every activation the backward needs is kept there.
    pub(crate) fn run(
        &self,
        compute: &Compute,
        tokens: &[u32],
        adapters: Option<&Adapters>,
        trace: Option<&mut Trace>,
    ) -> Result<Vec<f32>, ModelError> {
        self.run_packed(
            compute,
            tokens,
            &Layout::single(tokens.len()),
            adapters,
            trace,
        )
    }

    /// [`Model::run`] over rows laid out as several sequences, each of which may pack two
    /// continuations of one prefix.
    pub(crate) fn run_packed(
        &self,
        compute: &Compute,
        tokens: &[u32],
        layout: &Layout,
        adapters: Option<&Adapters>,
        trace: Option<&mut Trace>,
    ) -> Result<Vec<f32>, ModelError> {
        self.run_hooked(compute, tokens, layout, adapters, trace, Hooks::default())
    }

    /// [`Model::run_packed`] with a control vector added after each block it steers, and each
    /// block's output (the residual stream, steering included) kept where `hooks` asks.
    fn run_hooked(
        &self,
        compute: &Compute,
        tokens: &[u32],
        layout: &Layout,
        adapters: Option<&Adapters>,
        mut trace: Option<&mut Trace>,
        mut hooks: Hooks<'_>,
    ) -> Result<Vec<f32>, ModelError> {
        let c = &self.config;
        let (n, e) = (tokens.len(), c.embedding);
        if layout.rows() != n {
            return Err(ModelError::Layout {
                rows: layout.rows(),
                tokens: n,
            });
        }
        let mut x = self.embed_tokens(tokens)?;
        let tables = self.rope_tables(&layout.positions());
        let mut h = vec![0.0; n * e];
        for (l, layer) in self.layers.iter().enumerate() {
            let lora = |t: Target| {
                adapters.and_then(|a| a.get(l, t).map(|(t, lora)| (t, lora, a.dropout_of(l, t))))
            };
            let mut z: [Option<Vec<f32>>; TARGETS] = Default::default();
            // Attention block.
            let x_in = trace.is_some().then(|| x.clone());
            ops::rms_norm(&x, &layer.attn_norm, c.norm_eps, &mut h);
            let mut q = self.projection(compute, &h, &layer.q, lora(Target::Q), &mut z)?;
            let mut k = self.projection(compute, &h, &layer.k, lora(Target::K), &mut z)?;
            let v = self.projection(compute, &h, &layer.v, lora(Target::V), &mut z)?;
            let (q_pre, k_pre) = match trace.is_some() && layer.q_norm.is_some() {
                true => (Some(q.clone()), Some(k.clone())),
                false => (None, None),
            };
            if let (Some(qn), Some(kn)) = (&layer.q_norm, &layer.k_norm) {
                ops::rms_norm_in_place(&mut q, qn, c.norm_eps);
                ops::rms_norm_in_place(&mut k, kn, c.norm_eps);
            }
            if c.uses_rope(l) {
                let table = rope_table(&tables, c.rope_of(l));
                ops::rope(&mut q, c.heads, c.head_dim, table, c.rope_layout);
                ops::rope(&mut k, c.kv_heads, c.head_dim, table, c.rope_layout);
            }
            let att = self.profile.time(profile::Part::Attention, || {
                self.attend(compute, l, &q, &k, &v, layout)
            })?;
            let mut o = self.projection(compute, &att, &layer.o, lora(Target::O), &mut z)?;
            let o_pre = (trace.is_some() && layer.post_attn_norm.is_some()).then(|| o.clone());
            if let Some(post) = &layer.post_attn_norm {
                ops::rms_norm_in_place(&mut o, post, c.norm_eps);
            }
            ops::add_assign(&mut x, &o);

            // Feed-forward block.
            let x_mid = trace.is_some().then(|| x.clone());
            ops::rms_norm(&x, &layer.ffn_norm, c.norm_eps, &mut h);
            let gate = self.projection(compute, &h, &layer.gate, lora(Target::Gate), &mut z)?;
            let up = self.projection(compute, &h, &layer.up, lora(Target::Up), &mut z)?;
            let mut act = vec![0.0; gate.len()];
            ops::glu(compute, &gate, &up, c.activation, &mut act);
            let mut down =
                self.projection(compute, &act, &layer.down, lora(Target::Down), &mut z)?;
            let down_pre = (trace.is_some() && layer.post_ffn_norm.is_some()).then(|| down.clone());
            if let Some(post) = &layer.post_ffn_norm {
                ops::rms_norm_in_place(&mut down, post, c.norm_eps);
            }
            ops::add_assign(&mut x, &down);
            // llama.cpp's control vector: after the block, on every row.
            if let Some(direction) = hooks.steer.and_then(|s| s.at(l)) {
                x.chunks_exact_mut(e)
                    .for_each(|row| ops::add_assign(row, direction));
            }
            if let Some(kept) = hooks.residuals.as_deref_mut() {
                kept.push(x.clone());
            }
            if let (Some(t), Some(x_in), Some(x_mid)) = (trace.as_deref_mut(), x_in, x_mid) {
                t.layers.push(LayerTrace {
                    x: x_in,
                    q_pre,
                    k_pre,
                    q,
                    k,
                    v,
                    att,
                    o_pre,
                    x_mid,
                    gate,
                    up,
                    act,
                    down_pre,
                    z,
                });
            }
        }
        if let Some(t) = trace {
            t.x_final = x.clone();
        }
        ops::rms_norm_in_place(&mut x, &self.output_norm, c.norm_eps);
        Ok(x)
    }

    /// One RoPE table per distinct (base, scale) (Gemma 3's local and global layers differ).
    fn rope_tables(&self, positions: &[usize]) -> Vec<((f32, f32), RopeTable)> {
        let c = &self.config;
        let mut tables: Vec<((f32, f32), RopeTable)> = Vec::new();
        for l in 0..c.layers {
            let (base, scale) = c.rope_of(l);
            if !tables.iter().any(|(k, _)| *k == (base, scale)) {
                let rows = positions.iter().copied();
                let factors = self.rope_factors.as_deref();
                let table = RopeTable::at(rows, c.rope_dims, base, scale, factors)
                    .with_magnitude(c.rope_magnitude);
                tables.push(((base, scale), table));
            }
        }
        tables
    }

    fn attention_shape(
        &self,
        layer: usize,
        tokens: usize,
        branch: Option<Branch>,
    ) -> AttentionShape {
        let c = &self.config;
        AttentionShape {
            tokens,
            heads: c.heads,
            kv_heads: c.kv_heads,
            head_dim: c.head_dim,
            scale: c.attention_scale,
            softcap: c.attention_softcap,
            window: c.window_of(layer),
            branch,
        }
    }

    /// Attention of layer `layer` over each sequence of `layout` apart.
    fn attend(
        &self,
        compute: &Compute,
        layer: usize,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        layout: &Layout,
    ) -> Result<Vec<f32>, ModelError> {
        let c = &self.config;
        let (qw, kw) = (c.heads * c.head_dim, c.kv_heads * c.head_dim);
        let mut out = Vec::with_capacity(q.len());
        for (start, seg) in layout.spans() {
            let end = start + seg.len;
            let shape = self.attention_shape(layer, seg.len, seg.branch);
            out.extend(ops::attention(
                compute,
                &q[start * qw..end * qw],
                &k[start * kw..end * kw],
                &v[start * kw..end * kw],
                shape,
            )?);
        }
        Ok(out)
    }

    /// `x · Wᵀ`, plus the adapter's update when there is one (its `z` kept in `z`).
    fn projection(
        &self,
        compute: &Compute,
        x: &[f32],
        w: &Weight,
        lora: Option<(Target, &Lora, Option<Dropout>)>,
        z: &mut [Option<Vec<f32>>; TARGETS],
    ) -> Result<Vec<f32>, ModelError> {
        let mut y = self.linear(compute, x, w)?;
        if let Some((target, lora, dropout)) = lora {
            z[target as usize] = Some(lora.forward_with(compute, x, &mut y, dropout)?);
        }
        Ok(y)
    }

    /// Token embeddings (scaled for Gemma), `tokens × embedding`.
    fn embed_tokens(&self, tokens: &[u32]) -> Result<Vec<f32>, ModelError> {
        let c = &self.config;
        let e = c.embedding;
        let bytes = self.gguf.data(&self.embed.tensor);
        let row_bytes = self.embed.tensor.kind.row_bytes(e);
        let mut x = vec![0.0; tokens.len() * e];
        self.check_tokens(tokens)?;
        for (&t, out) in tokens.iter().zip(x.chunks_exact_mut(e)) {
            let at = t as usize;
            dequantize_row(
                self.embed.tensor.kind,
                &bytes[at * row_bytes..(at + 1) * row_bytes],
                out,
            )
            .map_err(|err| ModelError::Unsupported {
                path: self.path().to_path_buf(),
                what: err.to_string(),
            })?;
            if c.embedding_scale != 1.0 {
                out.iter_mut().for_each(|v| *v *= c.embedding_scale);
            }
        }
        Ok(x)
    }

    /// Every token id must name a row of the embedding table (and so a logit): a tokenizer may
    /// hold more tokens than the model file has rows.
    pub(crate) fn check_tokens(&self, tokens: &[u32]) -> Result<(), ModelError> {
        match tokens.iter().find(|&&t| t as usize >= self.config.vocab) {
            Some(&token) => Err(ModelError::Token {
                path: self.path().to_path_buf(),
                token,
                vocab: self.config.vocab,
            }),
            None => Ok(()),
        }
    }

    /// Logits of `rows` hidden states (`rows × vocab`), softcapped where the model says so.
    pub fn logits(&self, compute: &Compute, hidden: &[f32]) -> Result<Vec<f32>, ModelError> {
        self.profile.time(profile::Part::Head, || {
            let mut logits = self.product(compute, hidden, &self.output)?;
            if let Some(cap) = self.config.final_softcap {
                logits.iter_mut().for_each(|v| *v = cap * (*v / cap).tanh());
            }
            Ok(logits)
        })
    }

    /// For each position `i ≥ 1`: the log-probability of `tokens[i]` after `tokens[..i]`, and
    /// the model's top choice there. `tokens.len() − 1` scores.
    pub fn score(&self, compute: &Compute, tokens: &[u32]) -> Result<Vec<TokenScore>, ModelError> {
        self.score_adapted(compute, tokens, None)
    }

    /// [`Model::score`] with LoRA adapters applied.
    pub fn score_adapted(
        &self,
        compute: &Compute,
        tokens: &[u32],
        adapters: Option<&Adapters>,
    ) -> Result<Vec<TokenScore>, ModelError> {
        self.score_steered(compute, tokens, adapters, None)
    }

    /// [`Model::score`] with LoRA adapters and a control vector applied.
    pub fn score_steered(
        &self,
        compute: &Compute,
        tokens: &[u32],
        adapters: Option<&Adapters>,
        steer: Option<&steer::ControlVector>,
    ) -> Result<Vec<TokenScore>, ModelError> {
        // On the compute threads: the many small parallel products inside then share work
        // in the pool instead of each waking it from outside.
        // Every id, the last one too: it is only ever read as a prediction, never embedded.
        self.check_tokens(tokens)?;
        compute.install(|| {
            if tokens.len() < 2 {
                return Ok(Vec::new());
            }
            let e = self.config.embedding;
            let head = &tokens[..tokens.len() - 1];
            let hooks = Hooks {
                steer,
                residuals: None,
            };
            let layout = Layout::single(head.len());
            let hidden = self.run_hooked(compute, head, &layout, adapters, None, hooks)?;
            let mut scores = Vec::with_capacity(tokens.len() - 1);
            for (chunk, next) in hidden
                .chunks(HEAD_CHUNK * e)
                .zip(tokens[1..].chunks(HEAD_CHUNK))
            {
                let logits = self.logits(compute, chunk)?;
                for (row, &next) in logits.chunks_exact(self.config.vocab).zip(next) {
                    scores.push(score_row(row, next));
                }
            }
            Ok(scores)
        })
    }
}

impl Model {
    /// The residual stream after every block (`layers` entries of `tokens × embedding`), with
    /// `adapters` where given: what steering vectors are computed from.
    pub fn residual_stream(
        &self,
        compute: &Compute,
        tokens: &[u32],
        adapters: Option<&Adapters>,
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let mut kept = Vec::with_capacity(self.config.layers);
        compute.install(|| {
            let hooks = Hooks {
                steer: None,
                residuals: Some(&mut kept),
            };
            let layout = Layout::single(tokens.len());
            self.run_hooked(compute, tokens, &layout, adapters, None, hooks)
        })?;
        Ok(kept)
    }
}

/// What a forward does besides computing: a control vector to add, a place to keep each
/// block's output.
#[derive(Default)]
struct Hooks<'a> {
    steer: Option<&'a steer::ControlVector>,
    residuals: Option<&'a mut Vec<Vec<f32>>>,
}

/// The table of `(base, scale)` among `tables`.
fn rope_table(tables: &[((f32, f32), RopeTable)], rope: (f32, f32)) -> &RopeTable {
    tables
        .iter()
        .find(|(k, _)| *k == rope)
        .map(|(_, t)| t)
        .expect("a table was made for every layer's base and scale")
}

/// Log-softmax of one row of logits, read at `next` and at its maximum.
pub fn score_row(row: &[f32], next: u32) -> TokenScore {
    let (top, max) = row
        .iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
            if v > bv {
                (i, v)
            } else {
                (bi, bv)
            }
        });
    let sum: f64 = row.iter().map(|&v| f64::from(v - max).exp()).sum();
    let log_z = f64::from(max) + sum.ln();
    TokenScore {
        logprob: f64::from(row[next as usize]) - log_z,
        top: top as u32,
        top_logprob: f64::from(max) - log_z,
    }
}

/// The tensor `name` as a weight of `rows` outputs and `cols` inputs, shape checked.
fn weight(gguf: &Gguf, name: &str, rows: usize, cols: usize) -> Result<Weight, ModelError> {
    let tensor = gguf.tensor(name).ok_or_else(|| ModelError::MissingTensor {
        path: gguf.path().to_path_buf(),
        name: name.to_string(),
    })?;
    let expected = vec![cols as u64, rows as u64];
    if tensor.dims != expected {
        return Err(ModelError::Shape {
            path: gguf.path().to_path_buf(),
            name: name.to_string(),
            got: tensor.dims.clone(),
            expected,
        });
    }
    Ok(Weight {
        tensor: tensor.clone(),
        rows,
        cols,
        bias: None,
    })
}

/// A 1-D tensor (norm weights) decoded to f32.
fn vector(gguf: &Gguf, name: &str, len: usize) -> Result<Vec<f32>, ModelError> {
    let tensor = gguf.tensor(name).ok_or_else(|| ModelError::MissingTensor {
        path: gguf.path().to_path_buf(),
        name: name.to_string(),
    })?;
    if tensor.dims != [len as u64] || tensor.kind.block_elements() != 1 {
        return Err(ModelError::Shape {
            path: gguf.path().to_path_buf(),
            name: name.to_string(),
            got: tensor.dims.clone(),
            expected: vec![len as u64],
        });
    }
    let mut out = vec![0.0; len];
    dequantize_row(tensor.kind, gguf.data(tensor), &mut out).map_err(|err| {
        ModelError::Unsupported {
            path: gguf.path().to_path_buf(),
            what: format!("tensor `{name}`: {err}"),
        }
    })?;
    Ok(out)
}
