//! Training through the frozen model: the forward with the activations the backward needs kept
//! ([`Trace`]), and the backward from per-token log-probability weights to the gradients of the
//! LoRA factors — through the output head, the final norm and every layer in reverse, each op's
//! backward from [`super::ops`], each frozen weight's through `dx = dy·W` on its stored blocks.

use super::adapters::{AdapterGrads, Adapters, Target, TARGETS};

use super::profile::Part;
use super::{ops, rope_table, Layout, Model, ModelError, Segment, Weight};
use rayon::prelude::*;

use crate::quant::matmul::Compute;

/// Rows the forward must run for `predictions` (through the last row read), with every
/// prediction's row and token checked.
fn rows_needed(
    model: &Model,
    tokens: &[u32],
    layout: &Layout,
    predictions: &[Prediction],
) -> Result<Layout, ModelError> {
    let predicted: Vec<u32> = predictions.iter().map(|p| p.token).collect();
    model.check_tokens(&predicted)?;
    let rows: Vec<usize> = predictions.iter().map(|p| p.row).collect();
    rows_through(tokens, layout, &rows)
}

/// `layout` cut after the last of `rows` (each checked to lie within `tokens`).
fn rows_through(tokens: &[u32], layout: &Layout, rows: &[usize]) -> Result<Layout, ModelError> {
    if layout.rows() != tokens.len() {
        return Err(ModelError::Layout {
            rows: layout.rows(),
            tokens: tokens.len(),
        });
    }
    let last = rows.iter().copied().max().unwrap_or(0);
    if last >= tokens.len() {
        return Err(ModelError::Layout {
            rows: last + 1,
            tokens: tokens.len(),
        });
    }
    // Rows after the last one read change nothing before them (attention is causal): cut them.
    let mut segments = Vec::new();
    let mut left = last + 1;
    for s in &layout.segments {
        if left == 0 {
            break;
        }
        segments.push(Segment {
            len: s.len.min(left),
            branch: s.branch,
        });
        left -= s.len.min(left);
    }
    Ok(Layout { segments })
}

/// Backward of an optional post-norm (Gemma's after attention and after the feed-forward
/// block): through the norm where the layer has one, else `dy` unchanged.
fn post_norm_backward(
    norm: &Option<Vec<f32>>,
    pre: &Option<Vec<f32>>,
    eps: f32,
    dy: &[f32],
) -> Vec<f32> {
    match (norm, pre) {
        (Some(w), Some(pre)) => ops::rms_norm_backward(pre, w, eps, dy, &mut vec![0.0; w.len()]),
        _ => dy.to_vec(),
    }
}

/// What the forward keeps for the backward.
#[derive(Debug, Default)]
pub struct Trace {
    pub(crate) layers: Vec<LayerTrace>,
    /// The residual stream before the final norm.
    pub(crate) x_final: Vec<f32>,
}

/// One layer's kept activations.
#[derive(Debug)]
pub(crate) struct LayerTrace {
    /// The layer's input.
    pub x: Vec<f32>,
    /// q and k before their norms (Gemma), for the norms' backward.
    pub q_pre: Option<Vec<f32>>,
    pub k_pre: Option<Vec<f32>>,
    /// Attention's inputs (after norm and RoPE) and output.
    pub q: Vec<f32>,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    pub att: Vec<f32>,
    /// The output projection before its post-norm (Gemma).
    pub o_pre: Option<Vec<f32>>,
    /// The residual stream between the attention and feed-forward blocks.
    pub x_mid: Vec<f32>,
    pub gate: Vec<f32>,
    pub up: Vec<f32>,
    pub act: Vec<f32>,
    /// The down projection before its post-norm (Gemma).
    pub down_pre: Option<Vec<f32>>,
    /// Each adapter's `z = x·Aᵀ`.
    pub z: [Option<Vec<f32>>; TARGETS],
}

/// Per-position log-probabilities of a sequence and their gradient with respect to the adapters.
#[derive(Debug, Clone)]
pub struct LogprobGradients {
    /// `log p(tokens[i+1] | tokens[..=i])` for every position `i` (or, from
    /// [`Model::packed_gradients`], one per prediction).
    pub logps: Vec<f64>,
    pub grads: AdapterGrads,
}

/// A next-token prediction read at the output head: the hidden state of row `row` predicts
/// `token`; `weight` is its share of its group's objective (`Σ weight · log p`). Groups (the
/// chosen and the rejected answer of a pair) get their gradients apart, so a loss that needs
/// every log-prob first can weigh them after one forward: see [`Model::forward_traced`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prediction {
    pub row: usize,
    pub token: u32,
    pub weight: f64,
    pub group: usize,
}

/// A forward kept for its backward: the activations, and per prediction group the gradient
/// of that group's objective with respect to the final hidden states.
pub struct Traced {
    trace: Trace,
    layout: Layout,
    head_grads: Vec<Vec<f32>>,
}

/// Rows of logits computed together when only some rows are read (training): as wide as a
/// forward chunk (`trainer::FORWARD_ROWS`), so the head's weights are decoded once per forward
/// and once per backward (the logits of 256 rows of a 49 152-token vocabulary are 50 MB).
const PREDICTION_CHUNK: usize = 256;

impl Model {
    /// `(in, out)` of the projection `target` of `layer`.
    pub fn projection_shape(&self, layer: usize, target: Target) -> (usize, usize) {
        let w = self.layers[layer].weight(target);
        (w.cols, w.rows)
    }

    /// The log-probability of each next token of `tokens` under the model with `adapters`, and
    /// the gradient of `Σ_i weights[i] · logp_i` with respect to every adapter factor (positions
    /// with weight 0 — the prompt, padding — contribute nothing).
    pub fn logprob_gradients(
        &self,
        compute: &Compute,
        tokens: &[u32],
        adapters: &Adapters,
        weights: &[f64],
    ) -> Result<LogprobGradients, ModelError> {
        let predictions: Vec<Prediction> = (0..tokens.len().saturating_sub(1))
            .map(|i| Prediction {
                row: i,
                token: tokens[i + 1],
                weight: weights.get(i).copied().unwrap_or(0.0),
                group: 0,
            })
            .collect();
        if predictions.is_empty() {
            // Nothing is predicted; still check the tokens, as `score` does.
            self.score(compute, tokens)?;
            return Ok(LogprobGradients {
                logps: Vec::new(),
                grads: AdapterGrads::default(),
            });
        }
        let layout = Layout::single(tokens.len());
        self.packed_gradients(compute, tokens, &layout, adapters, &predictions)
    }

    /// The log-probability of each prediction under the model with `adapters` (forward only;
    /// the same arithmetic as [`Model::packed_gradients`], so the two agree to the bit).
    pub fn packed_logps(
        &self,
        compute: &Compute,
        tokens: &[u32],
        layout: &Layout,
        adapters: Option<&Adapters>,
        predictions: &[Prediction],
    ) -> Result<Vec<f64>, ModelError> {
        // On the compute threads: the many small parallel products inside then share work
        // in the pool instead of each waking it from outside.
        compute.install(|| {
            let layout = rows_needed(self, tokens, layout, predictions)?;
            let n = layout.rows();
            let hidden = self.run_packed(compute, &tokens[..n], &layout, adapters, None)?;
            let head = || self.head(compute, &hidden, predictions, 0);
            Ok(self.profile.time(Part::Head, head)?.0)
        })
    }

    /// Log-probabilities of `predictions` over `tokens` (rows laid out by `layout`: several
    /// sequences, each maybe a packed pair, see [`super::Branch`]) and the gradient of
    /// `Σ weight · logp` with respect to every adapter factor. Only the rows predictions read go
    /// through the output head.
    pub fn packed_gradients(
        &self,
        compute: &Compute,
        tokens: &[u32],
        layout: &Layout,
        adapters: &Adapters,
        predictions: &[Prediction],
    ) -> Result<LogprobGradients, ModelError> {
        let groups = predictions.iter().map(|p| p.group + 1).max().unwrap_or(1);
        // On the compute threads (see `packed_logps`).
        compute.install(|| {
            let (logps, traced) =
                self.forward_traced(compute, tokens, layout, adapters, predictions)?;
            let grads = self.backward_traced(compute, traced, adapters, &vec![1.0; groups])?;
            Ok(LogprobGradients { logps, grads })
        })
    }

    /// The forward half of [`Model::packed_gradients`]: each prediction's log-prob, and what
    /// [`Model::backward_traced`] needs. Call both halves inside [`Compute::install`] (as
    /// `packed_gradients` and the trainer's step do): their many small products then share
    /// work in the pool instead of each waking it from outside.
    pub fn forward_traced(
        &self,
        compute: &Compute,
        tokens: &[u32],
        layout: &Layout,
        adapters: &Adapters,
        predictions: &[Prediction],
    ) -> Result<(Vec<f64>, Traced), ModelError> {
        let groups = predictions.iter().map(|p| p.group + 1).max().unwrap_or(1);
        let layout = rows_needed(self, tokens, layout, predictions)?;
        let (hidden, trace) = self.run_traced(compute, tokens, &layout, adapters)?;
        let (logps, head_grads) = self.profile.time(Part::Head, || {
            self.head(compute, &hidden, predictions, groups)
        })?;
        Ok((
            logps,
            Traced {
                trace,
                layout,
                head_grads,
            },
        ))
    }

    /// The forward with its trace over the rows of `layout` (already cut to the rows read):
    /// the final hidden states and the trace.
    fn run_traced(
        &self,
        compute: &Compute,
        tokens: &[u32],
        layout: &Layout,
        adapters: &Adapters,
    ) -> Result<(Vec<f32>, Trace), ModelError> {
        let n = layout.rows();
        let mut trace = Trace::default();
        let hidden = self.run_packed(
            compute,
            &tokens[..n],
            layout,
            Some(adapters),
            Some(&mut trace),
        )?;
        Ok((hidden, trace))
    }

    /// The forward for a head of the caller's own on the final hidden state (a reward model's
    /// scalar head): the hidden state after the final norm at each of `rows`
    /// (`rows.len() × embedding`, in that order), and what [`Model::backward_from_hidden`]
    /// needs. The output head is never run.
    pub fn forward_hidden_traced(
        &self,
        compute: &Compute,
        tokens: &[u32],
        layout: &Layout,
        adapters: &Adapters,
        rows: &[usize],
    ) -> Result<(Vec<f32>, Traced), ModelError> {
        let layout = rows_through(tokens, layout, rows)?;
        let (hidden, trace) = self.run_traced(compute, tokens, &layout, adapters)?;
        let e = self.config.embedding;
        let picked = rows
            .iter()
            .flat_map(|&r| hidden[r * e..(r + 1) * e].iter().copied())
            .collect();
        let traced = Traced {
            trace,
            layout,
            head_grads: Vec::new(),
        };
        Ok((picked, traced))
    }

    /// [`Model::forward_hidden_traced`] without the trace (scoring: no backward follows), the
    /// base alone when `adapters` is `None`. The same arithmetic, so the two agree to the bit.
    pub fn forward_hidden(
        &self,
        compute: &Compute,
        tokens: &[u32],
        layout: &Layout,
        adapters: Option<&Adapters>,
        rows: &[usize],
    ) -> Result<Vec<f32>, ModelError> {
        compute.install(|| {
            let layout = rows_through(tokens, layout, rows)?;
            let n = layout.rows();
            let hidden = self.run_packed(compute, &tokens[..n], &layout, adapters, None)?;
            let e = self.config.embedding;
            Ok(rows
                .iter()
                .flat_map(|&r| hidden[r * e..(r + 1) * e].iter().copied())
                .collect())
        })
    }

    /// The backward of [`Model::forward_hidden_traced`] from `∂loss/∂hidden` at each of its
    /// `rows` (`rows.len() × embedding`, in the same order): every adapter factor's gradient.
    pub fn backward_from_hidden(
        &self,
        compute: &Compute,
        mut traced: Traced,
        adapters: &Adapters,
        rows: &[usize],
        d_hidden: &[f32],
    ) -> Result<AdapterGrads, ModelError> {
        let e = self.config.embedding;
        let mut dh = vec![0.0f32; traced.layout.rows() * e];
        for (&r, d) in rows.iter().zip(d_hidden.chunks_exact(e)) {
            ops::add_assign(&mut dh[r * e..(r + 1) * e], d);
        }
        traced.head_grads = vec![dh];
        self.backward_traced(compute, traced, adapters, &[1.0])
    }

    /// The backward half: the gradient of `Σ_g coefficients[g] · (group g's objective)` with
    /// respect to every adapter factor.
    pub fn backward_traced(
        &self,
        compute: &Compute,
        traced: Traced,
        adapters: &Adapters,
        coefficients: &[f64],
    ) -> Result<AdapterGrads, ModelError> {
        let c = &self.config;
        let e = c.embedding;
        let Traced {
            trace,
            layout,
            head_grads,
        } = traced;
        let n = layout.rows();
        let mut dh = vec![0.0f32; n * e];
        for (g, &k) in head_grads.iter().zip(coefficients) {
            let k = k as f32;
            dh.iter_mut().zip(g).for_each(|(d, v)| *d += k * v);
        }

        // Final norm (its weight is frozen: its gradient is dropped).
        let mut scratch = vec![0.0; e];
        let mut dx = ops::rms_norm_backward(
            &trace.x_final,
            &self.output_norm,
            c.norm_eps,
            &dh,
            &mut scratch,
        );
        let tables = self.rope_tables(&layout.positions());
        let mut grads = AdapterGrads {
            layers: (0..self.layers.len()).map(|_| Default::default()).collect(),
        };
        for (l, (layer, t)) in self.layers.iter().zip(&trace.layers).enumerate().rev() {
            let slots = &mut grads.layers[l];
            // The adapter's gradients and its share of dx, if `target` has one.
            let mut lora_back = |target: Target,
                                 input: &[f32],
                                 dy: &[f32],
                                 dx: &mut [f32]|
             -> Result<(), ModelError> {
                if let (Some((_, lora)), Some(z)) =
                    (adapters.get(l, target), t.z[target as usize].as_ref())
                {
                    let dropout = adapters.dropout_of(l, target);
                    slots[target as usize] =
                        Some(lora.backward_with(compute, input, z, dy, dx, dropout)?);
                }
                Ok(())
            };

            // Feed-forward block: x_out = x_mid + post_ffn(down(glu(gate(h2), up(h2)))).
            let d_down = post_norm_backward(&layer.post_ffn_norm, &t.down_pre, c.norm_eps, &dx);
            let mut d_act = self.linear_backward(compute, &d_down, &layer.down)?;
            lora_back(Target::Down, &t.act, &d_down, &mut d_act)?;
            let (d_gate, d_up) = ops::glu_backward(compute, &t.gate, &t.up, c.activation, &d_act);
            let mut h2 = vec![0.0; t.x_mid.len()];
            ops::rms_norm(&t.x_mid, &layer.ffn_norm, c.norm_eps, &mut h2);
            let mut d_h2 = self.linear_backward(compute, &d_gate, &layer.gate)?;
            self.linear_backward_add(compute, &d_up, &layer.up, &mut d_h2)?;
            lora_back(Target::Gate, &h2, &d_gate, &mut d_h2)?;
            lora_back(Target::Up, &h2, &d_up, &mut d_h2)?;
            let mut d_mid = dx;
            ops::add_assign(
                &mut d_mid,
                &ops::rms_norm_backward(
                    &t.x_mid,
                    &layer.ffn_norm,
                    c.norm_eps,
                    &d_h2,
                    &mut vec![0.0; e],
                ),
            );

            // Attention block: x_mid = x + post_attn(o(attention(q, k, v))).
            let d_o = post_norm_backward(&layer.post_attn_norm, &t.o_pre, c.norm_eps, &d_mid);
            let mut d_att = self.linear_backward(compute, &d_o, &layer.o)?;
            lora_back(Target::O, &t.att, &d_o, &mut d_att)?;
            let ops::AttentionGrads { mut dq, mut dk, dv } =
                self.profile.time(Part::Attention, || {
                    self.attend_backward(compute, l, t, &d_att, &layout)
                })?;
            if c.uses_rope(l) {
                let table = rope_table(&tables, c.rope_of(l));
                ops::rope_backward(&mut dq, c.heads, c.head_dim, table, c.rope_layout);
                ops::rope_backward(&mut dk, c.kv_heads, c.head_dim, table, c.rope_layout);
            }
            if let (Some(qn), Some(kn), Some(q_pre), Some(k_pre)) =
                (&layer.q_norm, &layer.k_norm, &t.q_pre, &t.k_pre)
            {
                let mut unused = vec![0.0; c.head_dim];
                dq = ops::rms_norm_backward(q_pre, qn, c.norm_eps, &dq, &mut unused);
                dk = ops::rms_norm_backward(k_pre, kn, c.norm_eps, &dk, &mut unused);
            }
            let mut h = vec![0.0; t.x.len()];
            ops::rms_norm(&t.x, &layer.attn_norm, c.norm_eps, &mut h);
            let mut d_h = self.linear_backward(compute, &dq, &layer.q)?;
            self.linear_backward_add(compute, &dk, &layer.k, &mut d_h)?;
            self.linear_backward_add(compute, &dv, &layer.v, &mut d_h)?;
            lora_back(Target::Q, &h, &dq, &mut d_h)?;
            lora_back(Target::K, &h, &dk, &mut d_h)?;
            lora_back(Target::V, &h, &dv, &mut d_h)?;
            dx = d_mid;
            ops::add_assign(
                &mut dx,
                &ops::rms_norm_backward(
                    &t.x,
                    &layer.attn_norm,
                    c.norm_eps,
                    &d_h,
                    &mut vec![0.0; e],
                ),
            );
        }
        Ok(grads)
    }

    /// Logits of the rows `predictions` read (a chunk of rows at a time) and each prediction's
    /// log-probability; with `groups` > 0, also each group's `∂(Σ weight · logp)/∂hidden`
    /// (`rows × embedding`, zero on rows the group does not read).
    fn head(
        &self,
        compute: &Compute,
        hidden: &[f32],
        predictions: &[Prediction],
        groups: usize,
    ) -> Result<(Vec<f64>, Vec<Vec<f32>>), ModelError> {
        let c = &self.config;
        let (e, vocab) = (c.embedding, c.vocab);
        let mut rows: Vec<usize> = predictions.iter().map(|p| p.row).collect();
        rows.sort_unstable();
        rows.dedup();
        let mut logps = vec![0.0; predictions.len()];
        let mut dh = vec![vec![0.0f32; hidden.len()]; groups];
        let head = self.matrix(&self.output)?;
        let mut x = Vec::new();
        for chunk in rows.chunks(PREDICTION_CHUNK) {
            x.clear();
            for &r in chunk {
                x.extend_from_slice(&hidden[r * e..(r + 1) * e]);
            }
            let raw = self.product(compute, &x, &self.output)?;
            // Each row apart, on the compute threads: its predictions' log-probs, and one
            // gradient row per group with a weighted prediction on it.
            type RowOut = (Vec<(usize, f64)>, Vec<(usize, Vec<f32>)>);
            let per_row: Vec<RowOut> = compute.install(|| {
                chunk
                    .par_iter()
                    .enumerate()
                    .map(|(i, &r)| {
                        let row = &raw[i * vocab..(i + 1) * vocab];
                        self.head_row(row, r, predictions, groups > 0)
                    })
                    .collect()
            });
            let mut slots: Vec<(usize, usize)> = Vec::new();
            let mut dlogits: Vec<f32> = Vec::new();
            for (&r, (row_logps, row_grads)) in chunk.iter().zip(per_row) {
                for (k, l) in row_logps {
                    logps[k] = l;
                }
                for (g, grad) in row_grads {
                    slots.push((r, g));
                    dlogits.extend_from_slice(&grad);
                }
            }
            if !slots.is_empty() {
                let mut block = vec![0.0f32; slots.len() * e];
                compute.matmul_dx(&dlogits, &head, &mut block)?;
                for (&(r, g), grad) in slots.iter().zip(block.chunks_exact(e)) {
                    ops::add_assign(&mut dh[g][r * e..(r + 1) * e], grad);
                }
            }
        }
        Ok((logps, dh))
    }

    /// One row of logits: the log-prob of each prediction on row `r` (by index), and with
    /// `grad`, per group with weighted predictions there, `∂(Σ weight · logp)/∂logits`.
    #[allow(clippy::type_complexity)]
    fn head_row(
        &self,
        row: &[f32],
        r: usize,
        predictions: &[Prediction],
        grad: bool,
    ) -> (Vec<(usize, f64)>, Vec<(usize, Vec<f32>)>) {
        let c = &self.config;
        let logits: std::borrow::Cow<[f32]> = match c.final_softcap {
            Some(cap) => row.iter().map(|v| cap * (v / cap).tanh()).collect(),
            None => row.into(),
        };
        let mine = || predictions.iter().enumerate().filter(|(_, p)| p.row == r);
        let mut logps = Vec::new();
        let mut grads: Vec<(usize, Vec<f32>)> = Vec::new();
        if !grad || mine().all(|(_, p)| p.weight == 0.0) {
            for (k, p) in mine() {
                logps.push((k, super::score_row(&logits, p.token).logprob));
            }
            return (logps, grads);
        }
        // The softmax once for the row: `score_row`'s arithmetic (the same maximum, the same f64
        // sum in the same order), so log-probs agree with it to the bit.
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let exps: Vec<f64> = logits.iter().map(|&l| f64::from(l - max).exp()).collect();
        let z: f64 = exps.iter().sum();
        let log_z = f64::from(max) + z.ln();
        for (k, p) in mine() {
            logps.push((k, f64::from(logits[p.token as usize]) - log_z));
            if p.weight == 0.0 {
                continue;
            }
            let at = match grads.iter().position(|(g, _)| *g == p.group) {
                Some(at) => at,
                None => {
                    grads.push((p.group, vec![0.0; logits.len()]));
                    grads.len() - 1
                }
            };
            // ∂(w·logp)/∂logits = w·(onehot − softmax), through the softcap.
            for (j, (d, e)) in grads[at].1.iter_mut().zip(&exps).enumerate() {
                let onehot = if j == p.token as usize { 1.0 } else { 0.0 };
                let mut g = p.weight * (onehot - e / z);
                if let Some(cap) = c.final_softcap {
                    let th = (f64::from(row[j]) / f64::from(cap)).tanh();
                    g *= 1.0 - th * th;
                }
                *d += g as f32;
            }
        }
        (logps, grads)
    }

    /// Backward of [`Model::attend`]: each sequence of `layout` apart.
    fn attend_backward(
        &self,
        compute: &Compute,
        layer: usize,
        t: &LayerTrace,
        d_att: &[f32],
        layout: &Layout,
    ) -> Result<ops::AttentionGrads, ModelError> {
        let c = &self.config;
        let (qw, kw) = (c.heads * c.head_dim, c.kv_heads * c.head_dim);
        let mut all = ops::AttentionGrads {
            dq: Vec::with_capacity(t.q.len()),
            dk: Vec::with_capacity(t.k.len()),
            dv: Vec::with_capacity(t.v.len()),
        };
        for (start, seg) in layout.spans() {
            let end = start + seg.len;
            let g = ops::attention_backward(
                compute,
                &t.q[start * qw..end * qw],
                &t.k[start * kw..end * kw],
                &t.v[start * kw..end * kw],
                &d_att[start * qw..end * qw],
                self.attention_shape(layer, seg.len, seg.branch),
            )?;
            all.dq.extend(g.dq);
            all.dk.extend(g.dk);
            all.dv.extend(g.dv);
        }
        Ok(all)
    }

    /// `dx = dy · W` through a frozen weight.
    fn linear_backward(
        &self,
        compute: &Compute,
        dy: &[f32],
        w: &Weight,
    ) -> Result<Vec<f32>, ModelError> {
        let mut dx = vec![0.0; dy.len() / w.rows * w.cols];
        self.linear_backward_add(compute, dy, w, &mut dx)?;
        Ok(dx)
    }

    /// `dx += dy · W` through a frozen weight.
    fn linear_backward_add(
        &self,
        compute: &Compute,
        dy: &[f32],
        w: &Weight,
        dx: &mut [f32],
    ) -> Result<(), ModelError> {
        self.profile.time(Part::Kernels, || {
            compute.matmul_dx_add(dy, &self.matrix(w)?, dx)?;
            Ok(())
        })
    }
}
