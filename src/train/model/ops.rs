//! The forward ops of the transformer, one small function each, on row-major f32 activations
//! (`tokens × width`). Each is written so that its backward can sit beside it.

use rayon::prelude::*;

use crate::train::quant::matmul::{Compute, MatmulError, Matrix};

use super::config::{Activation, RopeLayout};

/// RMSNorm of each row: `y = x / √(mean(x²) + eps) · weight`.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, y: &mut [f32]) {
    let width = weight.len();
    for (xr, yr) in x.chunks_exact(width).zip(y.chunks_exact_mut(width)) {
        // The mean square in f64 (as ggml does): rows are long and values vary widely.
        let ms = xr.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / width as f64;
        let inv = 1.0 / (ms as f32 + eps).sqrt();
        for ((y, &x), &w) in yr.iter_mut().zip(xr).zip(weight) {
            *y = x * inv * w;
        }
    }
}

/// [`rms_norm`] in place.
pub fn rms_norm_in_place(x: &mut [f32], weight: &[f32], eps: f32) {
    let width = weight.len();
    for row in x.chunks_exact_mut(width) {
        let ms = row
            .iter()
            .map(|&v| f64::from(v) * f64::from(v))
            .sum::<f64>()
            / width as f64;
        let inv = 1.0 / (ms as f32 + eps).sqrt();
        for (v, &w) in row.iter_mut().zip(weight) {
            *v = *v * inv * w;
        }
    }
}

/// cos and sin of the RoPE angles `θ(p, i) = p · scale · base^(−2i/dims)` for positions
/// `0..positions` and pairs `i < dims/2`.
pub struct RopeTable {
    pairs: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl RopeTable {
    pub fn new(positions: usize, dims: usize, base: f32, scale: f32) -> Self {
        let pairs = dims / 2;
        let mut cos = Vec::with_capacity(positions * pairs);
        let mut sin = Vec::with_capacity(positions * pairs);
        for p in 0..positions {
            for i in 0..pairs {
                let freq = f64::from(base).powf(-2.0 * i as f64 / dims as f64);
                let theta = p as f64 * f64::from(scale) * freq;
                cos.push(theta.cos() as f32);
                sin.push(theta.sin() as f32);
            }
        }
        RopeTable { pairs, cos, sin }
    }
}

/// Rotates the first `2 · pairs` dimensions of every head of every token (row `t` is at
/// position `t`).
pub fn rope(x: &mut [f32], heads: usize, head_dim: usize, table: &RopeTable, layout: RopeLayout) {
    let pairs = table.pairs;
    for (t, row) in x.chunks_exact_mut(heads * head_dim).enumerate() {
        let (cos, sin) = (
            &table.cos[t * pairs..(t + 1) * pairs],
            &table.sin[t * pairs..(t + 1) * pairs],
        );
        for head in row.chunks_exact_mut(head_dim) {
            for i in 0..pairs {
                let (a, b) = match layout {
                    RopeLayout::Adjacent => (2 * i, 2 * i + 1),
                    RopeLayout::Halves => (i, i + pairs),
                };
                let (x0, x1) = (head[a], head[b]);
                head[a] = x0 * cos[i] - x1 * sin[i];
                head[b] = x0 * sin[i] + x1 * cos[i];
            }
        }
    }
}

pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// GELU, tanh approximation (what Gemma was trained with and llama.cpp computes):
/// `½x(1 + tanh u) = x · sigmoid(2u)` with `u = √(2/π)(x + 0.044715x³)` — one `exp`.
pub fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    let u = SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x);
    x / (1.0 + (-2.0 * u).exp())
}

/// Values per parallel task in element-wise ops.
const ELEMENTWISE_CHUNK: usize = 1 << 14;

/// Gated unit: `out = act(gate) · up`, spread over the compute threads.
pub fn glu(compute: &Compute, gate: &[f32], up: &[f32], activation: Activation, out: &mut [f32]) {
    let act = match activation {
        Activation::Silu => silu,
        Activation::GeluTanh => gelu_tanh,
    };
    compute.install(|| {
        out.par_chunks_mut(ELEMENTWISE_CHUNK)
            .zip(gate.par_chunks(ELEMENTWISE_CHUNK))
            .zip(up.par_chunks(ELEMENTWISE_CHUNK))
            .for_each(|((out, gate), up)| {
                for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
                    *o = act(g) * u;
                }
            })
    });
}

/// Softmax of one row in place, over its first `len` values; the rest become 0.
pub fn softmax_prefix(row: &mut [f32], start: usize, len: usize) {
    let seen = &mut row[start..len];
    let max = seen.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f64;
    for v in seen.iter_mut() {
        *v = (*v - max).exp();
        sum += f64::from(*v);
    }
    let inv = (1.0 / sum) as f32;
    for v in seen.iter_mut() {
        *v *= inv;
    }
    row[..start].fill(0.0);
    row[len..].fill(0.0);
}

/// Shapes of one attention call.
#[derive(Debug, Clone, Copy)]
pub struct AttentionShape {
    pub tokens: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Multiplies `q · k`.
    pub scale: f32,
    /// Sliding window: query `t` sees keys `s` with `t − s < window`.
    pub window: Option<usize>,
}

/// Queries handled together: bounds the score block, and lets each block skip the keys none of
/// its queries can see (later ones, and those behind a sliding window).
const QUERY_BLOCK: usize = 64;

/// Causal grouped-query attention: query head `h` reads key/value head `h / (heads / kv_heads)`.
/// `q` is `tokens × heads·head_dim`, `k` and `v` are `tokens × kv_heads·head_dim`; returns
/// `tokens × heads·head_dim`. Scores and the weighted sum go through the matmul kernels.
pub fn attention(
    compute: &Compute,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    shape: AttentionShape,
) -> Result<Vec<f32>, MatmulError> {
    let AttentionShape {
        tokens: n,
        heads,
        kv_heads,
        head_dim: d,
        scale,
        window,
    } = shape;
    let group = heads / kv_heads;
    let first_key = |t: usize| window.map_or(0, |w| (t + 1).saturating_sub(w));
    let mut out = vec![0.0; n * heads * d];
    let mut qh = vec![0.0; n * d];
    let mut kh = vec![0.0; n * d];
    let mut vh = vec![0.0; n * d];
    let mut scores = Vec::new();
    let mut oh = Vec::new();
    for kv in 0..kv_heads {
        gather_head(k, kv_heads, d, kv, &mut kh);
        gather_head(v, kv_heads, d, kv, &mut vh);
        for h in kv * group..(kv + 1) * group {
            gather_head(q, heads, d, h, &mut qh);
            for q0 in (0..n).step_by(QUERY_BLOCK) {
                let q1 = (q0 + QUERY_BLOCK).min(n);
                // Keys k0..q1 are all any query of this block sees.
                let k0 = first_key(q0);
                let width = q1 - k0;
                let keys = Matrix::f32(width, d, &kh[k0 * d..q1 * d])?;
                let values = Matrix::f32(width, d, &vh[k0 * d..q1 * d])?;
                scores.resize((q1 - q0) * width, 0.0);
                compute.matmul_t(&qh[q0 * d..q1 * d], &keys, &mut scores)?;
                compute.install(|| {
                    scores
                        .par_chunks_mut(width)
                        .enumerate()
                        .for_each(|(i, row)| {
                            let t = q0 + i;
                            let (start, end) = (first_key(t) - k0, t + 1 - k0);
                            for s in &mut row[start..end] {
                                *s *= scale;
                            }
                            softmax_prefix(row, start, end);
                        })
                });
                oh.resize((q1 - q0) * d, 0.0);
                compute.matmul_dx(&scores, &values, &mut oh)?;
                for (t, o) in (q0..q1).zip(oh.chunks_exact(d)) {
                    out[t * heads * d + h * d..t * heads * d + (h + 1) * d].copy_from_slice(o);
                }
            }
        }
    }
    Ok(out)
}

/// Head `h` of every token, contiguous: `out[t] = x[t][h·d .. (h+1)·d]`.
fn gather_head(x: &[f32], heads: usize, d: usize, h: usize, out: &mut [f32]) {
    for (row, o) in x.chunks_exact(heads * d).zip(out.chunks_exact_mut(d)) {
        o.copy_from_slice(&row[h * d..(h + 1) * d]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_norm_gives_unit_rms() {
        let x = [3.0, -4.0, 0.0, 0.0];
        let mut y = [0.0; 4];
        rms_norm(&x, &[1.0, 1.0, 2.0, 1.0], 0.0, &mut y);
        assert!((y[0] - 1.2).abs() < 1e-6 && (y[1] + 1.6).abs() < 1e-6);
    }

    #[test]
    fn rope_rotates_pairs_by_position() {
        let table = RopeTable::new(2, 4, 10_000.0, 1.0);
        let mut x = vec![1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0];
        rope(&mut x, 1, 4, &table, RopeLayout::Adjacent);
        assert_eq!(&x[..4], &[1.0, 0.0, 1.0, 0.0]); // position 0: no rotation
        assert!((x[4] - 1f32.cos()).abs() < 1e-6 && (x[5] - 1f32.sin()).abs() < 1e-6);
        let mut h = vec![0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0];
        rope(&mut h, 1, 4, &table, RopeLayout::Halves);
        assert!((h[4] - 1f32.cos()).abs() < 1e-6 && (h[6] - 1f32.sin()).abs() < 1e-6);
    }

    #[test]
    fn activations() {
        assert!((silu(1.0) - 0.731_058_6).abs() < 1e-6);
        assert!((gelu_tanh(1.0) - 0.841_192).abs() < 1e-5);
        assert_eq!(gelu_tanh(0.0), 0.0);
    }

    #[test]
    fn attention_is_causal_and_windowed() {
        let compute = Compute::new(1, crate::train::quant::matmul::Kernel::Scalar).unwrap();
        // One head of size 1; equal scores, so each output is the mean of the values it sees.
        let q = vec![0.0; 4];
        let k = vec![0.0; 4];
        let v = vec![1.0, 2.0, 3.0, 4.0];
        let shape = AttentionShape {
            tokens: 4,
            heads: 1,
            kv_heads: 1,
            head_dim: 1,
            scale: 1.0,
            window: None,
        };
        let out = attention(&compute, &q, &k, &v, shape).unwrap();
        assert_eq!(out, vec![1.0, 1.5, 2.0, 2.5]);
        let windowed = AttentionShape {
            window: Some(2),
            ..shape
        };
        let out = attention(&compute, &q, &k, &v, windowed).unwrap();
        assert_eq!(out, vec![1.0, 1.5, 2.5, 3.5]);
    }
}
