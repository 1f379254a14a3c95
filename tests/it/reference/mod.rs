//! An exact reference forward for the tests: the file's weights decoded by the scalar reference
//! decoders (checked against gguf-py), every operation in f64, written as plainly as possible and
//! apart from `src/model` — the same architectures read off the GGUF metadata again.
//! Slow by design; it proves the model code, it is not meant to be fast.

use rayon::prelude::*;
use tenets::gguf::{Gguf, Value};
use tenets::quant::dequantize_row;

struct Spec {
    gemma: bool,
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
        gemma: arch == "gemma3",
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

/// RoPE on one head at position `p`: Llama files pair (2i, 2i+1), Gemma pairs (i, i + d/2).
fn rope(head: &mut [f64], p: usize, base: f64, gemma: bool) {
    let d = head.len();
    for i in 0..d / 2 {
        let theta = p as f64 * base.powf(-2.0 * i as f64 / d as f64);
        let (a, b) = if gemma {
            (i, i + d / 2)
        } else {
            (2 * i, 2 * i + 1)
        };
        let (x0, x1) = (head[a], head[b]);
        head[a] = x0 * theta.cos() - x1 * theta.sin();
        head[b] = x0 * theta.sin() + x1 * theta.cos();
    }
}

fn gelu_tanh(x: f64) -> f64 {
    0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh())
}

fn silu(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

/// Log-probabilities of `tokens[1..]`, each after the tokens before it.
pub fn logprobs(path: &std::path::Path, tokens: &[u32]) -> Vec<f64> {
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
        // global layer.
        let sliding = s.gemma && l % 6 != 5;
        let base = if sliding { 10_000.0 } else { s.rope_base };
        let window = if sliding {
            meta(&g, "gemma3.attention.sliding_window") as usize
        } else {
            usize::MAX
        };
        let normed: Vec<Vec<f64>> = x
            .iter()
            .map(|r| rms_norm(r, &vector(&g, &name("attn_norm")), s.eps))
            .collect();
        let mut q = linear(&g, &name("attn_q"), &normed);
        let mut k = linear(&g, &name("attn_k"), &normed);
        let v = linear(&g, &name("attn_v"), &normed);
        for (p, (qt, kt)) in q.iter_mut().zip(k.iter_mut()).enumerate() {
            for head in qt.chunks_mut(d) {
                if s.gemma {
                    let w = vector(&g, &name("attn_q_norm"));
                    let normed = rms_norm(head, &w, s.eps);
                    head.copy_from_slice(&normed);
                }
                rope(head, p, base, s.gemma);
            }
            for head in kt.chunks_mut(d) {
                if s.gemma {
                    let w = vector(&g, &name("attn_k_norm"));
                    let normed = rms_norm(head, &w, s.eps);
                    head.copy_from_slice(&normed);
                }
                rope(head, p, base, s.gemma);
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
                        .map(|&s| dot(qh, &k[s][kv * d..(kv + 1) * d]) * scale)
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
        let gate = linear(&g, &name("ffn_gate"), &normed);
        let up = linear(&g, &name("ffn_up"), &normed);
        let act: Vec<Vec<f64>> = gate
            .iter()
            .zip(&up)
            .map(|(gt, ut)| {
                gt.iter()
                    .zip(ut)
                    .map(|(&a, &b)| if s.gemma { gelu_tanh(a) } else { silu(a) } * b)
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
                let v = column[t];
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
