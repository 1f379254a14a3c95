//! The ops of the transformer, one small function each, on row-major f32 activations
//! (`tokens × width`), each forward with its backward beside it (the trainer's; the tests
//! check every backward against finite differences of its forward).

use rayon::prelude::*;

use crate::quant::matmul::{transpose, Compute, MatmulError, Matrix};

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

/// Backward of [`rms_norm`]: the gradient of `x` from `dy`; the weight's gradient is added into
/// `dweight`. Per row, with `r = 1/√(mean(x²) + eps)`:
/// `dx_j = r·w_j·dy_j − (r³/n)·x_j·Σ_i dy_i·w_i·x_i` and `dw_i += dy_i·x_i·r`.
pub fn rms_norm_backward(
    x: &[f32],
    weight: &[f32],
    eps: f32,
    dy: &[f32],
    dweight: &mut [f32],
) -> Vec<f32> {
    let n = weight.len();
    let mut dx = vec![0.0; x.len()];
    for ((xr, dyr), dxr) in x
        .chunks_exact(n)
        .zip(dy.chunks_exact(n))
        .zip(dx.chunks_exact_mut(n))
    {
        let ms = xr.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / n as f64;
        let r = 1.0 / (ms + f64::from(eps)).sqrt();
        let dot: f64 = xr
            .iter()
            .zip(dyr)
            .zip(weight)
            .map(|((&x, &g), &w)| f64::from(g) * f64::from(w) * f64::from(x))
            .sum();
        let k = r * r * r / n as f64 * dot;
        for i in 0..n {
            dxr[i] = (r * f64::from(weight[i]) * f64::from(dyr[i]) - k * f64::from(xr[i])) as f32;
            dweight[i] += (f64::from(dyr[i]) * f64::from(xr[i]) * r) as f32;
        }
    }
    dx
}

/// cos and sin of the RoPE angles `θ(p, i) = p · scale · base^(−2i/dims)` for positions
/// `0..positions` and pairs `i < dims/2`.
pub struct RopeTable {
    pairs: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl RopeTable {
    /// Angles for rows at positions `0..positions`.
    pub fn new(positions: usize, dims: usize, base: f32, scale: f32) -> Self {
        Self::at(0..positions, dims, base, scale, None)
    }

    /// Angles for rows at the given positions (row `t` at the `t`-th of them). `factors`
    /// (Llama 3's `rope_freqs`, one per pair) divide each pair's frequency, as llama.cpp's
    /// `freq_factors` do: Llama 3.1 slows its low frequencies down for long contexts.
    pub fn at(
        positions: impl ExactSizeIterator<Item = usize>,
        dims: usize,
        base: f32,
        scale: f32,
        factors: Option<&[f32]>,
    ) -> Self {
        let pairs = dims / 2;
        let mut cos = Vec::with_capacity(positions.len() * pairs);
        let mut sin = Vec::with_capacity(positions.len() * pairs);
        let factor = |i: usize| factors.map_or(1.0, |f| f64::from(f[i]));
        for p in positions {
            for i in 0..pairs {
                let freq = f64::from(base).powf(-2.0 * i as f64 / dims as f64) / factor(i);
                let theta = p as f64 * f64::from(scale) * freq;
                cos.push(theta.cos() as f32);
                sin.push(theta.sin() as f32);
            }
        }
        RopeTable { pairs, cos, sin }
    }

    /// The same angles with cos and sin multiplied by `m` (LongRoPE's magnitude, llama.cpp's
    /// `attn_factor`): rotated q and k grow by `m`, each score by `m²`.
    pub fn with_magnitude(mut self, m: f32) -> Self {
        if m != 1.0 {
            self.cos
                .iter_mut()
                .chain(&mut self.sin)
                .for_each(|v| *v *= m);
        }
        self
    }
}

/// Rotates the first `2 · pairs` dimensions of every head of every token (row `t` is at
/// position `t`).
pub fn rope(x: &mut [f32], heads: usize, head_dim: usize, table: &RopeTable, layout: RopeLayout) {
    rotate_pairs(x, heads, head_dim, table, layout, 1.0);
}

/// Backward of [`rope`], in place: each pair is rotated back by its angle (the rotation's
/// transpose).
pub fn rope_backward(
    dx: &mut [f32],
    heads: usize,
    head_dim: usize,
    table: &RopeTable,
    layout: RopeLayout,
) {
    rotate_pairs(dx, heads, head_dim, table, layout, -1.0);
}

/// Rotates each pair by `direction · θ` (1: forward, −1: back).
fn rotate_pairs(
    x: &mut [f32],
    heads: usize,
    head_dim: usize,
    table: &RopeTable,
    layout: RopeLayout,
    direction: f32,
) {
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
                let (x0, x1, sin) = (head[a], head[b], direction * sin[i]);
                head[a] = x0 * cos[i] - x1 * sin;
                head[b] = x0 * sin + x1 * cos[i];
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

/// d silu(x) / dx = σ(x)·(1 + x·(1 − σ(x))).
pub fn silu_grad(x: f32) -> f32 {
    let s = 1.0 / (1.0 + (-x).exp());
    s * (1.0 + x * (1.0 - s))
}

/// d gelu_tanh(x) / dx, from `gelu = x·σ(2u)`, `u = c(x + 0.044715x³)`.
pub fn gelu_tanh_grad(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    let u = SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x);
    let s = 1.0 / (1.0 + (-2.0 * u).exp());
    let du = SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044_715 * x * x);
    s + x * s * (1.0 - s) * 2.0 * du
}

/// Values per parallel task in element-wise ops.
const ELEMENTWISE_CHUNK: usize = 1 << 14;

/// The gate's activation function.
fn act_of(activation: Activation) -> fn(f32) -> f32 {
    match activation {
        Activation::Silu => silu,
        Activation::GeluTanh => gelu_tanh,
    }
}

/// The derivative of the gate's activation function.
fn act_grad_of(activation: Activation) -> fn(f32) -> f32 {
    match activation {
        Activation::Silu => silu_grad,
        Activation::GeluTanh => gelu_tanh_grad,
    }
}

/// Gated unit: `out = act(gate) · up`, spread over the compute threads.
pub fn glu(compute: &Compute, gate: &[f32], up: &[f32], activation: Activation, out: &mut [f32]) {
    let act = act_of(activation);
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

/// Backward of [`glu`]: from `dout`, the gradients of `gate` and `up` (spread over the compute
/// threads like the forward).
pub fn glu_backward(
    compute: &Compute,
    gate: &[f32],
    up: &[f32],
    activation: Activation,
    dout: &[f32],
) -> (Vec<f32>, Vec<f32>) {
    let (act, grad) = (act_of(activation), act_grad_of(activation));
    let (mut dgate, mut dup) = (vec![0.0; gate.len()], vec![0.0; gate.len()]);
    compute.install(|| {
        dgate
            .par_chunks_mut(ELEMENTWISE_CHUNK)
            .zip(dup.par_chunks_mut(ELEMENTWISE_CHUNK))
            .zip(gate.par_chunks(ELEMENTWISE_CHUNK))
            .zip(
                up.par_chunks(ELEMENTWISE_CHUNK)
                    .zip(dout.par_chunks(ELEMENTWISE_CHUNK)),
            )
            .for_each(|(((dg, du), g), (u, d))| {
                for i in 0..g.len() {
                    dg[i] = d[i] * u[i] * grad(g[i]);
                    du[i] = d[i] * act(g[i]);
                }
            })
    });
    (dgate, dup)
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

/// Two continuations of one prefix packed in one sequence: tokens `0..shared` are the prefix,
/// `shared..start` the first continuation and `start..` the second, which sees the prefix and
/// itself but not the first, at positions that continue the prefix. A preference pair's prompt
/// is then computed once for both answers (forward and backward).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Branch {
    pub shared: usize,
    pub start: usize,
}

impl Branch {
    /// The position (for RoPE and windows) of row `t`.
    pub fn position(&self, t: usize) -> usize {
        if t < self.start {
            t
        } else {
            t - (self.start - self.shared)
        }
    }

    /// The row at `position` among those row `t` sees.
    fn row_seen_by(&self, t: usize, position: usize) -> usize {
        if t < self.start || position < self.shared {
            position
        } else {
            position + (self.start - self.shared)
        }
    }
}

/// One independent sequence among the rows of a forward: it attends only within itself, its
/// positions start at 0, and it may pack a pair of continuations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub len: usize,
    pub branch: Option<Branch>,
}

/// How the rows of one forward divide into sequences: several examples computed together share
/// every matmul (wider, so the weights are decoded once for all of them) and nothing else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub segments: Vec<Segment>,
}

impl Layout {
    /// One causal sequence of `len` rows.
    pub fn single(len: usize) -> Self {
        Layout {
            segments: vec![Segment { len, branch: None }],
        }
    }

    pub fn rows(&self) -> usize {
        self.segments.iter().map(|s| s.len).sum()
    }

    /// Each row's position (for RoPE).
    pub fn positions(&self) -> Vec<usize> {
        self.segments
            .iter()
            .flat_map(|s| (0..s.len).map(move |t| s.branch.map_or(t, |b| b.position(t))))
            .collect()
    }

    /// Each segment with the row it starts at.
    pub fn spans(&self) -> impl Iterator<Item = (usize, &Segment)> {
        self.segments.iter().scan(0, |start, s| {
            let at = *start;
            *start += s.len;
            Some((at, s))
        })
    }
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
    /// Scaled scores become `c · tanh(score / c)` before the softmax (Gemma 2's attention-logit
    /// softcapping).
    pub softcap: Option<f32>,
    /// Sliding window: query `t` sees keys `s` with `t − s < window` (in positions).
    pub window: Option<usize>,
    /// A packed pair of continuations (causal over one sequence when `None`).
    pub branch: Option<Branch>,
}

impl AttentionShape {
    /// Query heads per key/value head.
    fn group(&self) -> usize {
        self.heads / self.kv_heads
    }

    /// The first key the query at `t` sees.
    fn first_key(&self, t: usize) -> usize {
        let Some(w) = self.window else { return 0 };
        match self.branch {
            None => (t + 1).saturating_sub(w),
            Some(b) => b.row_seen_by(t, (b.position(t) + 1).saturating_sub(w)),
        }
    }

    /// The first key any query of `q0..q1` sees.
    fn first_key_of_block(&self, q0: usize, q1: usize) -> usize {
        (q0..q1).map(|t| self.first_key(t)).min().unwrap_or(q0)
    }

    /// Keys before `t` that the query at `t` must not see (the other continuation).
    fn hidden(&self, t: usize) -> std::ops::Range<usize> {
        match self.branch {
            Some(b) if t >= b.start => b.shared..b.start,
            _ => 0..0,
        }
    }
}

/// The attention weights of queries `q0..q0 + rows` (one head, `queries` holding their rows)
/// over keys `k0..q0 + rows`: scaled, softcapped, masked, softmaxed; `rows × width`.
fn block_weights(
    compute: &Compute,
    shape: &AttentionShape,
    queries: &[f32],
    keys: &Matrix,
    q0: usize,
    k0: usize,
) -> Result<Vec<f32>, MatmulError> {
    let width = keys.rows();
    let mut p = vec![0.0; queries.len() / shape.head_dim * width];
    compute.matmul_t(queries, keys, &mut p)?;
    compute.install(|| {
        p.par_chunks_mut(width).enumerate().for_each(|(i, row)| {
            let t = q0 + i;
            let (start, end) = (shape.first_key(t) - k0, t + 1 - k0);
            for s in &mut row[start..end] {
                *s *= shape.scale;
            }
            if let Some(c) = shape.softcap {
                for s in &mut row[start..end] {
                    *s = c * (*s / c).tanh();
                }
            }
            let hidden = shape.hidden(t);
            let (h0, h1) = (hidden.start.max(k0 + start), hidden.end.min(k0 + end));
            if h0 < h1 {
                row[h0 - k0..h1 - k0].fill(f32::NEG_INFINITY);
            }
            softmax_prefix(row, start, end);
        })
    });
    Ok(p)
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
    let (n, heads, kv_heads, d) = (shape.tokens, shape.heads, shape.kv_heads, shape.head_dim);
    let group = shape.group();
    let mut out = vec![0.0; n * heads * d];
    let (mut qh, mut kh, mut vh) = (vec![0.0; n * d], vec![0.0; n * d], vec![0.0; n * d]);
    let mut oh = Vec::new();
    for kv in 0..kv_heads {
        gather_head(k, kv_heads, d, kv, &mut kh);
        gather_head(v, kv_heads, d, kv, &mut vh);
        for h in kv * group..(kv + 1) * group {
            gather_head(q, heads, d, h, &mut qh);
            for q0 in (0..n).step_by(QUERY_BLOCK) {
                let q1 = (q0 + QUERY_BLOCK).min(n);
                // Keys k0..q1 are all any query of this block sees.
                let k0 = shape.first_key_of_block(q0, q1);
                let keys = Matrix::f32(q1 - k0, d, &kh[k0 * d..q1 * d])?;
                let values = Matrix::f32(q1 - k0, d, &vh[k0 * d..q1 * d])?;
                let weights = block_weights(compute, &shape, &qh[q0 * d..q1 * d], &keys, q0, k0)?;
                oh.resize((q1 - q0) * d, 0.0);
                compute.matmul_dx(&weights, &values, &mut oh)?;
                for (t, o) in (q0..q1).zip(oh.chunks_exact(d)) {
                    out[t * heads * d + h * d..t * heads * d + (h + 1) * d].copy_from_slice(o);
                }
            }
        }
    }
    Ok(out)
}

/// Gradients of attention's inputs.
#[derive(Debug, Clone)]
pub struct AttentionGrads {
    pub dq: Vec<f32>,
    pub dk: Vec<f32>,
    pub dv: Vec<f32>,
}

/// Backward of [`attention`]: from `dout`, the gradients of `q`, `k` and `v`. Scores are
/// recomputed block by block (nothing from the forward is kept); per block, with P the
/// attention weights: `dV += Pᵀ·dO`, `dP = dO·Vᵀ`, `dS = P ⊙ (dP − rowsum(dP ⊙ P))·scale`,
/// `dQ = dS·K`, `dK += dSᵀ·Q`.
pub fn attention_backward(
    compute: &Compute,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    dout: &[f32],
    shape: AttentionShape,
) -> Result<AttentionGrads, MatmulError> {
    let (n, heads, kv_heads, d) = (shape.tokens, shape.heads, shape.kv_heads, shape.head_dim);
    let group = shape.group();
    let (mut dq, mut dk, mut dv) = (
        vec![0.0; n * heads * d],
        vec![0.0; n * kv_heads * d],
        vec![0.0; n * kv_heads * d],
    );
    let (mut qh, mut kh, mut vh, mut doh) = (
        vec![0.0; n * d],
        vec![0.0; n * d],
        vec![0.0; n * d],
        vec![0.0; n * d],
    );
    for kv in 0..kv_heads {
        gather_head(k, kv_heads, d, kv, &mut kh);
        gather_head(v, kv_heads, d, kv, &mut vh);
        let (mut dkh, mut dvh) = (vec![0.0; n * d], vec![0.0; n * d]);
        for h in kv * group..(kv + 1) * group {
            gather_head(q, heads, d, h, &mut qh);
            gather_head(dout, heads, d, h, &mut doh);
            for q0 in (0..n).step_by(QUERY_BLOCK) {
                let q1 = (q0 + QUERY_BLOCK).min(n);
                let (k0, rows) = (shape.first_key_of_block(q0, q1), q1 - q0);
                let width = q1 - k0;
                let keys = Matrix::f32(width, d, &kh[k0 * d..q1 * d])?;
                let values = Matrix::f32(width, d, &vh[k0 * d..q1 * d])?;
                let p = block_weights(compute, &shape, &qh[q0 * d..q1 * d], &keys, q0, k0)?;
                let mut dp = vec![0.0; rows * width];
                compute.matmul_t(&doh[q0 * d..q1 * d], &values, &mut dp)?;
                // dP becomes dS = P ⊙ (dP − rowsum(dP ⊙ P)) · scale (masked entries have P = 0).
                for (pr, dpr) in p.chunks_exact(width).zip(dp.chunks_exact_mut(width)) {
                    let dot: f32 = pr.iter().zip(dpr.iter()).map(|(a, b)| a * b).sum();
                    for (g, &pv) in dpr.iter_mut().zip(pr) {
                        *g = pv * (*g - dot) * shape.scale;
                    }
                }
                // Through the softcap c·tanh(z/c): × (1 − tanh²(z/c)), z the scaled score
                // (recomputed: one more product, only for softcapped models).
                if let Some(c) = shape.softcap {
                    let mut z = vec![0.0; rows * width];
                    compute.matmul_t(&qh[q0 * d..q1 * d], &keys, &mut z)?;
                    for (g, z) in dp.iter_mut().zip(&z) {
                        let t = (z * shape.scale / c).tanh();
                        *g *= 1.0 - t * t;
                    }
                }
                let ds = dp;
                let mut dqb = vec![0.0; rows * d];
                compute.matmul_dx(&ds, &keys, &mut dqb)?;
                for (t, g) in (q0..q1).zip(dqb.chunks_exact(d)) {
                    dq[t * heads * d + h * d..t * heads * d + (h + 1) * d].copy_from_slice(g);
                }
                let (ds_t, p_t) = (transpose(&ds, rows, width), transpose(&p, rows, width));
                let queries = Matrix::f32(rows, d, &qh[q0 * d..q1 * d])?;
                let grads = Matrix::f32(rows, d, &doh[q0 * d..q1 * d])?;
                let mut block = vec![0.0; width * d];
                compute.matmul_dx(&ds_t, &queries, &mut block)?;
                add_assign(&mut dkh[k0 * d..q1 * d], &block);
                compute.matmul_dx(&p_t, &grads, &mut block)?;
                add_assign(&mut dvh[k0 * d..q1 * d], &block);
            }
        }
        scatter_head(&dkh, kv_heads, d, kv, &mut dk);
        scatter_head(&dvh, kv_heads, d, kv, &mut dv);
    }
    Ok(AttentionGrads { dq, dk, dv })
}

/// `x += y`, element-wise (residual connections, gradient accumulation).
pub fn add_assign(x: &mut [f32], y: &[f32]) {
    x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
}

/// `y[t] += bias` for every row `t` (a projection's bias). Its backward is the identity on
/// `dy`: the bias is frozen.
pub fn add_row_bias(y: &mut [f32], bias: &[f32]) {
    for row in y.chunks_exact_mut(bias.len()) {
        add_assign(row, bias);
    }
}

/// Writes a contiguous head back into its columns: `out[t][h·d .. (h+1)·d] = x[t]`.
fn scatter_head(x: &[f32], heads: usize, d: usize, h: usize, out: &mut [f32]) {
    for (row, o) in out.chunks_exact_mut(heads * d).zip(x.chunks_exact(d)) {
        row[h * d..(h + 1) * d].copy_from_slice(o);
    }
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

    use rand::{Rng, SeedableRng};

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect()
    }

    /// Checks `analytic` (the gradient of `loss` at `x`) against central differences, in f64
    /// around the f32 ops.
    fn check_gradient(x: &[f32], analytic: &[f32], loss: impl Fn(&[f32]) -> f64, what: &str) {
        let h = 1e-2f32;
        for i in 0..x.len() {
            let (mut up, mut down) = (x.to_vec(), x.to_vec());
            up[i] += h;
            down[i] -= h;
            let numeric = (loss(&up) - loss(&down)) / (2.0 * f64::from(h));
            let a = f64::from(analytic[i]);
            assert!(
                (a - numeric).abs() <= 2e-3 + 2e-2 * numeric.abs(),
                "{what}[{i}]: analytic {a}, numeric {numeric}"
            );
        }
    }

    /// `Σ out ⊙ r`: a loss whose gradient with respect to `out` is `r`.
    fn weighted(out: &[f32], r: &[f32]) -> f64 {
        out.iter()
            .zip(r)
            .map(|(a, b)| f64::from(*a) * f64::from(*b))
            .sum()
    }

    #[test]
    fn rms_norm_backward_matches_finite_differences() {
        let (x, w, r) = (random(12, 1), random(4, 2), random(12, 3));
        let mut dw = vec![0.0; 4];
        let dx = rms_norm_backward(&x, &w, 1e-5, &r, &mut dw);
        let loss_x = |x: &[f32]| {
            let mut y = vec![0.0; 12];
            rms_norm(x, &w, 1e-5, &mut y);
            weighted(&y, &r)
        };
        check_gradient(&x, &dx, loss_x, "dx");
        let loss_w = |w: &[f32]| {
            let mut y = vec![0.0; 12];
            rms_norm(&x, w, 1e-5, &mut y);
            weighted(&y, &r)
        };
        check_gradient(&w, &dw, loss_w, "dw");
    }

    #[test]
    fn rope_backward_matches_finite_differences() {
        for layout in [RopeLayout::Adjacent, RopeLayout::Halves] {
            let table = RopeTable::new(3, 4, 100.0, 1.0);
            let (x, r) = (random(3 * 2 * 6, 4), random(3 * 2 * 6, 5));
            let mut dx = r.clone();
            rope_backward(&mut dx, 2, 6, &table, layout);
            let loss = |x: &[f32]| {
                let mut y = x.to_vec();
                rope(&mut y, 2, 6, &table, layout);
                weighted(&y, &r)
            };
            check_gradient(&x, &dx, loss, "rope");
        }
    }

    #[test]
    fn glu_backward_matches_finite_differences() {
        let compute = Compute::new(1, crate::quant::matmul::Kernel::Scalar).unwrap();
        for activation in [Activation::Silu, Activation::GeluTanh] {
            let (g, u, r) = (random(10, 6), random(10, 7), random(10, 8));
            let g: Vec<f32> = g.iter().map(|v| v * 3.0).collect();
            let (dg, du) = glu_backward(&compute, &g, &u, activation, &r);
            let out = |g: &[f32], u: &[f32]| {
                let mut o = vec![0.0; 10];
                glu(&compute, g, u, activation, &mut o);
                weighted(&o, &r)
            };
            check_gradient(&g, &dg, |g| out(g, &u), "dgate");
            check_gradient(&u, &du, |u| out(&g, u), "dup");
        }
    }

    #[test]
    fn attention_backward_matches_finite_differences() {
        let compute = Compute::new(2, crate::quant::matmul::Kernel::detect()).unwrap();
        // Small shapes, and one long enough for several query blocks behind a sliding window.
        // Gemma 2's softcap, low enough that tanh bends the scores.
        for (tokens, heads, kv_heads, head_dim, window, softcap) in [
            (6, 4, 2, 3, None, None),
            (6, 4, 2, 3, Some(3), None),
            (6, 4, 2, 3, Some(3), Some(0.5)),
            (70, 2, 1, 2, Some(5), Some(1.0)),
            (70, 2, 1, 2, Some(5), None),
        ] {
            let shape = AttentionShape {
                tokens,
                heads,
                kv_heads,
                head_dim,
                scale: 0.7,
                softcap,
                window,
                branch: None,
            };
            let (qw, kw) = (heads * head_dim, kv_heads * head_dim);
            let (q, k, v) = (
                random(tokens * qw, 9),
                random(tokens * kw, 10),
                random(tokens * kw, 11),
            );
            let r = random(tokens * qw, 12);
            let AttentionGrads { dq, dk, dv } =
                attention_backward(&compute, &q, &k, &v, &r, shape).unwrap();
            let loss = |q: &[f32], k: &[f32], v: &[f32]| {
                weighted(&attention(&compute, q, k, v, shape).unwrap(), &r)
            };
            check_gradient(&q, &dq, |q| loss(q, &k, &v), "dq");
            check_gradient(&k, &dk, |k| loss(&q, k, &v), "dk");
            check_gradient(&v, &dv, |v| loss(&q, &k, v), "dv");
        }
    }

    #[test]
    fn attention_is_causal_and_windowed() {
        let compute = Compute::new(1, crate::quant::matmul::Kernel::Scalar).unwrap();
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
            softcap: None,
            window: None,
            branch: None,
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

    #[test]
    fn a_packed_continuation_sees_the_prefix_and_itself_only() {
        let compute = Compute::new(1, crate::quant::matmul::Kernel::Scalar).unwrap();
        // Prefix rows 0-1, first continuation 2-3, second 4: equal scores, so each output is
        // the mean of the values its query sees.
        let (q, k) = (vec![0.0; 5], vec![0.0; 5]);
        let v = vec![1.0, 2.0, 3.0, 4.0, 5.0];
        let shape = AttentionShape {
            tokens: 5,
            heads: 1,
            kv_heads: 1,
            head_dim: 1,
            scale: 1.0,
            softcap: None,
            window: None,
            branch: Some(Branch {
                shared: 2,
                start: 4,
            }),
        };
        let out = attention(&compute, &q, &k, &v, shape).unwrap();
        assert_eq!(out[..4], [1.0, 1.5, 2.0, 2.5]);
        assert!((out[4] - 8.0 / 3.0).abs() < 1e-6, "{out:?}");
        // Row 4 is at position 2: a window of 2 leaves positions 1 and 2 (rows 1 and 4).
        let windowed = AttentionShape {
            window: Some(2),
            ..shape
        };
        let out = attention(&compute, &q, &k, &v, windowed).unwrap();
        assert_eq!(out, vec![1.0, 1.5, 2.5, 3.5, 3.5]);
    }
}
