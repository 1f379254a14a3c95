//! An exact reference forward for the tests: the file's weights decoded by the scalar reference
//! decoders (checked against gguf-py), every operation in f64, written as plainly as possible and
//! apart from `src/model` — the same architectures read off the GGUF metadata again.
//! Slow by design; it proves the model code, it is not meant to be fast.

use rayon::prelude::*;
use tenets::gguf::{Gguf, Value};
use tenets::quant::dequantize_row;

struct Spec {
    /// Gemma 2 or 3: scaled embeddings, post-norms, GeGLU, sliding layers.
    gemma: bool,
    gemma2: bool,
    /// RoPE on halves (llama.cpp's NeoX: Gemma, Qwen) rather than adjacent pairs (Llama).
    neox: bool,
    /// A per-head RMSNorm on q and k before RoPE (Gemma 3, Qwen3).
    qk_norm: bool,
    /// SmolLM3: every fourth layer attends without RoPE.
    no_rope_every_fourth: bool,
    /// Phi-3: fused q/k/v and gate/up weights, LongRoPE.
    phi3: bool,
    embd: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    eps: f64,
    rope_base: f64,
    vocab: usize,
}

fn meta(g: &Gguf, key: &str) -> f64 {
    g.get(key)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("{key} missing"))
}

fn spec(g: &Gguf) -> Spec {
    let arch = g.architecture().unwrap().to_string();
    let k = |s: &str| format!("{arch}.{s}");
    let embd = meta(g, &k("embedding_length")) as usize;
    let heads = meta(g, &k("attention.head_count")) as usize;
    Spec {
        gemma: arch.starts_with("gemma"),
        gemma2: arch == "gemma2",
        neox: matches!(
            arch.as_str(),
            "gemma2" | "gemma3" | "qwen2" | "qwen3" | "phi3"
        ),
        qk_norm: matches!(arch.as_str(), "gemma3" | "qwen3"),
        no_rope_every_fourth: arch == "smollm3",
        phi3: arch == "phi3",
        embd,
        layers: meta(g, &k("block_count")) as usize,
        heads,
        kv_heads: meta(g, &k("attention.head_count_kv")) as usize,
        head_dim: g
            .get(&k("attention.key_length"))
            .and_then(Value::as_f64)
            .map_or(embd / heads, |v| v as usize),
        eps: meta(g, &k("attention.layer_norm_rms_epsilon")),
        rope_base: meta(g, &k("rope.freq_base")),
        vocab: g.tensor("token_embd.weight").unwrap().dims[1] as usize,
    }
}

/// Row `r` of a 2-D tensor, as f64.
fn row(g: &Gguf, name: &str, r: usize) -> Vec<f64> {
    let t = g.tensor(name).unwrap_or_else(|| panic!("{name} missing"));
    let cols = t.dims[0] as usize;
    let bytes = t.kind.row_bytes(cols);
    let mut out = vec![0f32; cols];
    dequantize_row(t.kind, &g.data(t)[r * bytes..(r + 1) * bytes], &mut out).unwrap();
    out.into_iter().map(f64::from).collect()
}

fn vector(g: &Gguf, name: &str) -> Vec<f64> {
    row(g, name, 0)
}

/// A dot product in f64 (eight running sums, so the CPU can overlap them).
fn dot(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0.0; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f64 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f64>() + tail
}

/// `x · Wᵀ` for every token row of `x`.
fn linear(g: &Gguf, name: &str, x: &[Vec<f64>]) -> Vec<Vec<f64>> {
    let rows = g.tensor(name).unwrap().dims[1] as usize;
    let columns: Vec<Vec<f64>> = (0..rows)
        .into_par_iter()
        .map(|r| {
            let w = row(g, name, r);
            x.iter().map(|xt| dot(xt, &w)).collect()
        })
        .collect();
    (0..x.len())
        .map(|t| columns.iter().map(|c| c[t]).collect())
        .collect()
}

fn rms_norm(x: &[f64], w: &[f64], eps: f64) -> Vec<f64> {
    let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
    let inv = 1.0 / (ms + eps).sqrt();
    x.iter().zip(w).map(|(v, w)| v * inv * w).collect()
}

/// RoPE on one head at position `p`: Llama files pair (2i, 2i+1), Gemma, Qwen and Phi-3 pair
/// (i, i + d/2). Llama 3's and LongRoPE's factors divide pair `i`'s frequency; LongRoPE's
/// magnitude `m` multiplies the rotated pair.
fn rope(head: &mut [f64], p: usize, base: f64, neox: bool, factors: Option<&[f64]>, m: f64) {
    let d = head.len();
    for i in 0..d / 2 {
        let factor = factors.map_or(1.0, |f| f[i]);
        let theta = p as f64 * base.powf(-2.0 * i as f64 / d as f64) / factor;
        let (a, b) = if neox {
            (i, i + d / 2)
        } else {
            (2 * i, 2 * i + 1)
        };
        let (x0, x1) = (head[a], head[b]);
        head[a] = m * (x0 * theta.cos() - x1 * theta.sin());
        head[b] = m * (x0 * theta.sin() + x1 * theta.cos());
    }
}

fn gelu_tanh(x: f64) -> f64 {
    0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh())
}

fn silu(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

/// Through f16 and back, as f32.
fn f16_round(x: f64) -> f64 {
    use tenets::quant::float::{f16_to_f32, f32_to_f16};
    f64::from(f16_to_f32(f32_to_f16(x as f32)))
}

/// llama.cpp's CPU GELU: the input rounded to f16 and the result read from a table of f16s
/// (`GGML_GELU_FP16`), exact beyond ±10.
fn gelu_f16_table(x: f64) -> f64 {
    if x <= -10.0 {
        0.0
    } else if x >= 10.0 {
        x
    } else {
        // The table holds f32 GELUs rounded to f16; computed in f32 as ggml does, so that a
        // value on a rounding boundary lands where llama.cpp's does.
        let x = f16_round(x) as f32;
        let gelu = 0.5
            * x
            * (1.0
                + ((2.0f32 / std::f32::consts::PI).sqrt() * x * (1.0 + 0.044715 * x * x)).tanh());
        f16_round(f64::from(gelu))
    }
}

/// How the reference computes GELU.
#[derive(Clone, Copy, PartialEq)]
pub enum Gelu {
    /// In f64: the model's arithmetic.
    Exact,
    /// As llama.cpp's CPU backend does, through f16: what llama.cpp's Gemma log-probs carry.
    F16Table,
}

/// Log-probabilities of `tokens[1..]`, each after the tokens before it.
pub fn logprobs(path: &std::path::Path, tokens: &[u32]) -> Vec<f64> {
    logprobs_with(path, tokens, Gelu::Exact)
}

/// [`logprobs`] with GELU computed as `gelu` says.
pub fn logprobs_with(path: &std::path::Path, tokens: &[u32], gelu: Gelu) -> Vec<f64> {
    let g = Gguf::open(path).unwrap();
    let s = spec(&g);
    let n = tokens.len() - 1;
    let (h, kvh, d) = (s.heads, s.kv_heads, s.head_dim);
    let mut x: Vec<Vec<f64>> = tokens[..n]
        .iter()
        .map(|&t| {
            let e = row(&g, "token_embd.weight", t as usize);
            let scale = if s.gemma { (s.embd as f64).sqrt() } else { 1.0 };
            e.into_iter().map(|v| v * scale).collect()
        })
        .collect();
    for l in 0..s.layers {
        let name = |t: &str| format!("blk.{l}.{t}.weight");
        // Gemma 3: five sliding-window layers (RoPE base 10 000, window from the file), then one
        // global layer. Gemma 2: every other layer slides, at the global base.
        let sliding = (s.gemma2 && l % 2 == 0) || (s.gemma && !s.gemma2 && l % 6 != 5);
        let base = if sliding && !s.gemma2 {
            10_000.0
        } else {
            s.rope_base
        };
        let window = if sliding {
            let arch = if s.gemma2 { "gemma2" } else { "gemma3" };
            meta(&g, &format!("{arch}.attention.sliding_window")) as usize
        } else {
            usize::MAX
        };
        // Gemma 2 caps every scaled score at c·tanh(score/c).
        let cap = |score: f64| match s.gemma2 {
            true => {
                let c = meta(&g, "gemma2.attn_logit_softcapping");
                c * (score / c).tanh()
            }
            false => score,
        };
        let normed: Vec<Vec<f64>> = x
            .iter()
            .map(|r| rms_norm(r, &vector(&g, &name("attn_norm")), s.eps))
            .collect();
        // Projections, each plus its bias where the file has one (Qwen2).
        let project = |t: &str| {
            let mut y = linear(&g, &name(t), &normed);
            let bias = format!("blk.{l}.{t}.bias");
            if g.tensor(&bias).is_some() {
                let b = vector(&g, &bias);
                y.iter_mut()
                    .for_each(|r| r.iter_mut().zip(&b).for_each(|(v, b)| *v += b));
            }
            y
        };
        // Phi-3: q, k and v are the rows of one fused weight.
        let (mut q, mut k, v) = if s.phi3 {
            let qkv = linear(&g, &name("attn_qkv"), &normed);
            let (qd, kvd) = (h * d, kvh * d);
            let part = |from: usize, len: usize| -> Vec<Vec<f64>> {
                qkv.iter().map(|r| r[from..from + len].to_vec()).collect()
            };
            (part(0, qd), part(qd, kvd), part(qd + kvd, kvd))
        } else {
            (project("attn_q"), project("attn_k"), project("attn_v"))
        };
        // Llama 3's factors, or (Phi-3) LongRoPE's short ones with its magnitude.
        let factors = ["rope_freqs.weight", "rope_factors_short.weight"]
            .iter()
            .find(|t| g.tensor(t).is_some())
            .map(|t| vector(&g, t));
        let magnitude = g
            .get("phi3.rope.scaling.attn_factor")
            .and_then(Value::as_f64)
            .unwrap_or(1.0);
        for (p, (qt, kt)) in q.iter_mut().zip(k.iter_mut()).enumerate() {
            for (rows, norm) in [(qt, "attn_q_norm"), (kt, "attn_k_norm")] {
                for head in rows.chunks_mut(d) {
                    if s.qk_norm {
                        let normed = rms_norm(head, &vector(&g, &name(norm)), s.eps);
                        head.copy_from_slice(&normed);
                    }
                    if !(s.no_rope_every_fourth && (l + 1) % 4 == 0) {
                        rope(head, p, base, s.neox, factors.as_deref(), magnitude);
                    }
                }
            }
        }
        let scale = 1.0 / (d as f64).sqrt();
        let att: Vec<Vec<f64>> = (0..n)
            .into_par_iter()
            .map(|t| {
                let mut out = vec![0.0; h * d];
                for head in 0..h {
                    let kv = head / (h / kvh);
                    let qh = &q[t][head * d..(head + 1) * d];
                    let seen: Vec<usize> = (0..=t).filter(|&s| t - s < window).collect();
                    let scores: Vec<f64> = seen
                        .iter()
                        .map(|&s| cap(dot(qh, &k[s][kv * d..(kv + 1) * d]) * scale))
                        .collect();
                    let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let z: f64 = scores.iter().map(|v| (v - max).exp()).sum();
                    for (&s, score) in seen.iter().zip(&scores) {
                        let p = (score - max).exp() / z;
                        for i in 0..d {
                            out[head * d + i] += p * v[s][kv * d + i];
                        }
                    }
                }
                out
            })
            .collect();
        let mut o = linear(&g, &name("attn_output"), &att);
        if s.gemma {
            let w = vector(&g, &name("post_attention_norm"));
            o = o.iter().map(|r| rms_norm(r, &w, s.eps)).collect();
        }
        for (xt, ot) in x.iter_mut().zip(&o) {
            xt.iter_mut().zip(ot).for_each(|(a, b)| *a += b);
        }
        let normed: Vec<Vec<f64>> = x
            .iter()
            .map(|r| rms_norm(r, &vector(&g, &name("ffn_norm")), s.eps))
            .collect();
        // Phi-3: gate and up are the halves of one fused weight, gate first.
        let (gate, up) = if s.phi3 {
            let both = linear(&g, &name("ffn_up"), &normed);
            let half = both[0].len() / 2;
            let part = |from: usize| -> Vec<Vec<f64>> {
                both.iter().map(|r| r[from..from + half].to_vec()).collect()
            };
            (part(0), part(half))
        } else {
            (
                linear(&g, &name("ffn_gate"), &normed),
                linear(&g, &name("ffn_up"), &normed),
            )
        };
        let act: Vec<Vec<f64>> = gate
            .iter()
            .zip(&up)
            .map(|(gt, ut)| {
                gt.iter()
                    .zip(ut)
                    .map(|(&a, &b)| {
                        let act = match (s.gemma, gelu) {
                            (false, _) => silu(a),
                            (true, Gelu::Exact) => gelu_tanh(a),
                            (true, Gelu::F16Table) => gelu_f16_table(a),
                        };
                        act * b
                    })
                    .collect()
            })
            .collect();
        let mut down = linear(&g, &name("ffn_down"), &act);
        if s.gemma {
            let w = vector(&g, &name("post_ffw_norm"));
            down = down.iter().map(|r| rms_norm(r, &w, s.eps)).collect();
        }
        for (xt, dt) in x.iter_mut().zip(&down) {
            xt.iter_mut().zip(dt).for_each(|(a, b)| *a += b);
        }
    }
    let w = vector(&g, "output_norm.weight");
    let x: Vec<Vec<f64>> = x.iter().map(|r| rms_norm(r, &w, s.eps)).collect();
    // The tied output head, streamed over the vocabulary: a running log-sum-exp per position.
    let head = if g.tensor("output.weight").is_some() {
        "output.weight"
    } else {
        "token_embd.weight"
    };
    // Gemma's final softcap, where the file gives one.
    let arch = g.architecture().unwrap().to_string();
    let final_cap = g
        .get(&format!("{arch}.final_logit_softcapping"))
        .and_then(Value::as_f64);
    let mut max = vec![f64::NEG_INFINITY; n];
    let mut sum = vec![0.0; n];
    let mut target = vec![0.0; n];
    for start in (0..s.vocab).step_by(4096) {
        let end = (start + 4096).min(s.vocab);
        let logits: Vec<Vec<f64>> = (start..end)
            .into_par_iter()
            .map(|r| {
                let w = row(&g, head, r);
                x.iter().map(|xt| dot(xt, &w)).collect()
            })
            .collect();
        for (i, column) in logits.iter().enumerate() {
            for t in 0..n {
                let v = final_cap.map_or(column[t], |c| c * (column[t] / c).tanh());
                if v > max[t] {
                    sum[t] = sum[t] * (max[t] - v).exp() + 1.0;
                    max[t] = v;
                } else {
                    sum[t] += (v - max[t]).exp();
                }
                if tokens[t + 1] as usize == start + i {
                    target[t] = v;
                }
            }
        }
    }
    (0..n).map(|t| target[t] - max[t] - sum[t].ln()).collect()
}
