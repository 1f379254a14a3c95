//! One optimiser step over a batch, and the state a checkpoint keeps — the training loop's
//! arithmetic, apart from where data, metrics and checkpoints are stored.
//!
//! Each example goes through the model on its own, at its own length: nothing is padded, so
//! every token computed is a real one and memory does not grow with the batch. A pair is packed
//! as one sequence — prompt, chosen answer, rejected answer, the rejected one masked from the
//! chosen one and placed at the positions after the prompt ([`Branch`]) — so the prompt is
//! computed once for both answers, and only answer rows go through the output head. One forward
//! gives both answers' log-probs and each answer's head gradient apart; the loss then weighs them
//! and one backward follows. The reference log-probs come in precomputed, through the same
//! arithmetic (so a fresh adapter's first loss is exactly ln 2).
//!
//! A run is a pure function of its inputs and its seed (kernels give the same sums whatever the
//! thread count), so a run resumed from a checkpoint retraces the uninterrupted one.

use super::dpo::{pair_loss, Objective, PairLogps};
use super::optim::{clip_global_norm, global_norm, AdamW, Moments, Schedule};
use super::reward::{bradley_terry, ScalarHead, ScalarHeadGrads};
use crate::model::backward::Prediction;
use crate::model::lora::Dropout;
use crate::model::{AdapterGrads, Adapters, Branch, Layout, Model, ModelError, Segment};
use crate::quant::matmul::Compute;

/// What the adapter is trained for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loss {
    /// A preference loss on (chosen, rejected) pairs against the reference log-probs.
    Preference(Objective),
    /// Cross-entropy on the chosen completion (SL-CAI: learn the revisions).
    Sft,
    /// A reward model: Bradley–Terry on a scalar head's rewards of the two answers
    /// ([`super::reward`]); the adapters and the head train together.
    Reward,
}

impl Loss {
    pub fn name(self) -> &'static str {
        match self {
            Loss::Preference(Objective::Dpo) => "dpo",
            Loss::Preference(Objective::Ipo) => "ipo",
            Loss::Preference(Objective::Hinge) => "hinge",
            Loss::Sft => "sft",
            Loss::Reward => "reward",
        }
    }

    /// Whether every example must be a (chosen, rejected) pair.
    pub fn needs_pairs(self) -> bool {
        !matches!(self, Loss::Sft)
    }

    /// Every loss, in the order `--objective` lists them.
    pub const ALL: [Loss; 5] = [
        Loss::Preference(Objective::Dpo),
        Loss::Preference(Objective::Ipo),
        Loss::Preference(Objective::Hinge),
        Loss::Sft,
        Loss::Reward,
    ];

    pub fn parse(name: &str) -> Option<Self> {
        Loss::ALL.into_iter().find(|l| l.name() == name)
    }
}

/// `--objective dpo|ipo|hinge|sft|reward`.
impl clap::ValueEnum for Loss {
    fn value_variants<'a>() -> &'a [Self] {
        &Loss::ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.name()))
    }
}

/// Everything that decides an update besides the data.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hyper {
    pub loss: Loss,
    pub beta: f64,
    pub schedule: Schedule,
    pub optimizer: AdamW,
    /// Global gradient-norm clip (0 turns it off).
    pub max_grad_norm: f64,
    /// LoRA dropout probability while training (0: none), and the seed its masks derive from.
    pub dropout: f32,
    pub seed: u64,
}

/// One tokenized example: the prompt shared by both sequences, the answers after it.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// Prompt then chosen answer.
    pub chosen: Vec<u32>,
    /// Prompt then rejected answer (preference data only).
    pub rejected: Option<Vec<u32>>,
    pub prompt_len: usize,
    pub label: f64,
    /// The reference model's answer log-probs `(chosen, rejected)`.
    pub reference: Option<(f64, f64)>,
}

impl Item {
    /// Tokens the step computes on (both sequences, prompt included, as TRL counts them).
    pub fn tokens(&self) -> usize {
        self.chosen.len() + self.rejected.as_ref().map_or(0, Vec::len)
    }

    /// Answer tokens of the chosen sequence.
    pub fn answer_tokens(&self) -> usize {
        self.chosen.len().saturating_sub(self.prompt_len)
    }
}

/// Rows computed together in one forward: short examples share every matmul (the weights are
/// decoded once for all of them), while the activations kept for the backward stay bounded
/// (about 0.9 MB a row for SmolLM2-135M). An example longer than this runs alone. Measured on
/// the 64-pair fixture (2 cores): 1 pair a forward 154 tokens/s, 256 rows 157, 512 rows 149 —
/// past a few hundred rows `dx = dy·W` outgrows the L2 cache.
pub const FORWARD_ROWS: usize = 256;

/// The reference model's answer log-probs for each item (the base, with `adapters` when DPO
/// starts from an earlier adapter): what [`Item::reference`] holds.
pub fn reference_logps(
    model: &Model,
    compute: &Compute,
    adapters: Option<&Adapters>,
    items: &[&Item],
) -> Result<Vec<(f64, f64)>, ModelError> {
    let mut out = Vec::with_capacity(items.len());
    for chunk in forward_chunks(items) {
        let packed = Packed::of(chunk);
        let logps = model.packed_logps(
            compute,
            &packed.tokens,
            &packed.layout,
            adapters,
            &packed.predictions,
        )?;
        out.extend(packed.sums(&logps));
    }
    Ok(out)
}

/// Consecutive runs of items of at most [`FORWARD_ROWS`] rows (one item when it alone is more).
fn forward_chunks<'a, 'b>(items: &'b [&'a Item]) -> Vec<&'b [&'a Item]> {
    let mut chunks = Vec::new();
    let (mut start, mut rows) = (0, 0);
    for (i, item) in items.iter().enumerate() {
        let r = item.packed_rows();
        if i > start && rows + r > FORWARD_ROWS {
            chunks.push(&items[start..i]);
            (start, rows) = (i, 0);
        }
        rows += r;
    }
    if start < items.len() {
        chunks.push(&items[start..]);
    }
    chunks
}

/// Items as the model sees them: one sequence per item (a pair packed around its shared
/// prompt), laid out together, and the predictions of each answer's tokens — item `i`'s chosen
/// answer is group `2i`, its rejected answer group `2i + 1`.
struct Packed {
    tokens: Vec<u32>,
    layout: Layout,
    predictions: Vec<Prediction>,
    items: usize,
    /// Each item's last row of its chosen answer, and of its rejected one (where it is packed):
    /// where a reward model reads the answer.
    ends: Vec<(usize, Option<usize>)>,
}

impl Item {
    /// Rows of the item's packed sequence.
    fn packed_rows(&self) -> usize {
        self.chosen.len()
            + self
                .rejected
                .as_ref()
                .map_or(0, |r| r.len().saturating_sub(self.prompt_len))
    }
}

impl Packed {
    fn of(items: &[&Item]) -> Self {
        Self::of_answers(items, true)
    }

    /// With `rejected` false, only the chosen answers (SFT).
    fn of_answers(items: &[&Item], rejected: bool) -> Self {
        let mut packed = Packed {
            tokens: Vec::new(),
            layout: Layout {
                segments: Vec::new(),
            },
            predictions: Vec::new(),
            items: items.len(),
            ends: Vec::new(),
        };
        for (i, item) in items.iter().enumerate() {
            packed.push(item, 2 * i, rejected);
        }
        packed
    }

    fn push(&mut self, item: &Item, group: usize, with_rejected: bool) {
        let (base, p) = (self.tokens.len(), item.prompt_len);
        self.predictions
            .extend((p.max(1)..item.chosen.len()).map(|i| Prediction {
                row: base + i - 1,
                token: item.chosen[i],
                weight: 1.0,
                group,
            }));
        self.tokens.extend_from_slice(&item.chosen);
        let chosen_end = base + item.chosen.len().max(1) - 1;
        let Some(rejected) = item.rejected.as_ref().filter(|_| with_rejected) else {
            self.layout.segments.push(Segment {
                len: item.chosen.len(),
                branch: None,
            });
            self.ends.push((chosen_end, None));
            return;
        };
        // The rejected answer follows the chosen one; its first token is predicted from the
        // prompt's last row, the rest from its own rows.
        let offset = item.chosen.len() - p;
        self.predictions
            .extend((p.max(1)..rejected.len()).map(|j| Prediction {
                row: base + if j - 1 < p { j - 1 } else { j - 1 + offset },
                token: rejected[j],
                weight: 1.0,
                group: group + 1,
            }));
        self.tokens
            .extend_from_slice(&rejected[p.min(rejected.len())..]);
        self.layout.segments.push(Segment {
            len: self.tokens.len() - base,
            branch: Some(Branch {
                shared: p,
                start: item.chosen.len(),
            }),
        });
        // An empty rejected answer ends where the prompt does.
        let rejected_end = match rejected.len() > p {
            true => self.tokens.len() - 1,
            false => base + rejected.len().max(1) - 1,
        };
        self.ends.push((chosen_end, Some(rejected_end)));
    }

    /// Each item's summed log-probs of its chosen and rejected answer, in prediction order.
    fn sums(&self, logps: &[f64]) -> Vec<(f64, f64)> {
        let mut sums = vec![(0.0, 0.0); self.items];
        for (p, l) in self.predictions.iter().zip(logps) {
            let s = &mut sums[p.group / 2];
            match p.group % 2 {
                0 => s.0 += l,
                _ => s.1 += l,
            }
        }
        sums
    }
}

/// A reward model's step on preference pairs, before any update: the mean Bradley–Terry loss,
/// how often the chosen answer scored higher, the mean reward margin, and the gradients of
/// the adapters and of the scalar head.
#[derive(Debug, Clone, PartialEq)]
pub struct RewardGradients {
    pub loss: f64,
    pub accuracy: f64,
    pub margin: f64,
    /// Mean rewards of the chosen and of the rejected answers.
    pub reward_chosen: f64,
    pub reward_rejected: f64,
    pub adapters: AdapterGrads,
    pub head: ScalarHeadGrads,
}

/// [`RewardGradients`] of `batch` (pairs: every item needs its rejected answer): each answer's
/// reward is `head` on the final hidden state of its last token, with the pair packed around
/// its prompt as DPO's are (see [`super::reward`]).
pub fn reward_gradients(
    model: &Model,
    compute: &Compute,
    adapters: &Adapters,
    head: &ScalarHead,
    batch: &[&Item],
) -> Result<RewardGradients, TrainError> {
    if let Some(index) = batch.iter().position(|i| i.rejected.is_none()) {
        return Err(TrainError::NotAPair { index });
    }
    let n = batch.len().max(1) as f64;
    let e = model.config().embedding;
    let mut out = RewardGradients {
        loss: 0.0,
        accuracy: 0.0,
        margin: 0.0,
        reward_chosen: 0.0,
        reward_rejected: 0.0,
        adapters: AdapterGrads::default(),
        head: head.zero_grads(),
    };
    let mut first = 0;
    compute.install(|| {
        for chunk in forward_chunks(batch) {
            let packed = Packed::of(chunk);
            let rows: Vec<usize> = packed
                .ends
                .iter()
                .flat_map(|&(c, r)| [c, r.unwrap_or(c)])
                .collect();
            let (hidden, traced) = model.forward_hidden_traced(
                compute,
                &packed.tokens,
                &packed.layout,
                adapters,
                &rows,
            )?;
            let mut d_hidden = vec![0.0f32; hidden.len()];
            for (i, item) in chunk.iter().enumerate() {
                let (hc, hr) = (
                    &hidden[2 * i * e..(2 * i + 1) * e],
                    &hidden[(2 * i + 1) * e..(2 * i + 2) * e],
                );
                let (rc, rr) = (head.forward(hc), head.forward(hr));
                let bt = bradley_terry(rc, rr, item.label);
                if !bt.loss.is_finite() {
                    return Err(TrainError::NonFinite {
                        index: first + i,
                        value: bt.loss,
                    });
                }
                out.loss += bt.loss / n;
                out.accuracy += f64::from(u8::from(rc > rr)) / n;
                out.margin += (rc - rr) / n;
                out.reward_chosen += rc / n;
                out.reward_rejected += rr / n;
                let d = bt.d_chosen / n;
                let dc = head.backward(hc, d, &mut out.head);
                let dr = head.backward(hr, -d, &mut out.head);
                d_hidden[2 * i * e..(2 * i + 1) * e].copy_from_slice(&dc);
                d_hidden[(2 * i + 1) * e..(2 * i + 2) * e].copy_from_slice(&dr);
            }
            out.adapters
                .add(&model.backward_from_hidden(compute, traced, adapters, &rows, &d_hidden)?);
            first += chunk.len();
        }
        Ok(out)
    })
}

/// Each item's reward under `adapters` (the base alone with `None`) and `head`: of its chosen
/// answer, and of its rejected one where it has one. Forward only, reading the same rows as
/// [`reward_gradients`] (an answer's last token, a pair packed around its prompt).
pub fn rewards(
    model: &Model,
    compute: &Compute,
    adapters: Option<&Adapters>,
    head: &ScalarHead,
    items: &[&Item],
) -> Result<Vec<(f64, Option<f64>)>, ModelError> {
    let e = model.config().embedding;
    let mut out = Vec::with_capacity(items.len());
    for chunk in forward_chunks(items) {
        let packed = Packed::of(chunk);
        let rows: Vec<usize> = packed
            .ends
            .iter()
            .flat_map(|&(c, r)| std::iter::once(c).chain(r))
            .collect();
        let hidden =
            model.forward_hidden(compute, &packed.tokens, &packed.layout, adapters, &rows)?;
        // One row per answer, in `rows`' order: each item's chosen, then its rejected.
        let mut read = hidden.chunks_exact(e).map(|h| head.forward(h));
        for &(_, rejected) in &packed.ends {
            let chosen = read.next();
            let rejected = rejected.and_then(|_| read.next());
            out.extend(chosen.map(|c| (c, rejected)));
        }
    }
    Ok(out)
}

/// Metrics of one step (means over its items); the preference ones are absent for SFT.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct StepMetrics {
    pub loss: f64,
    pub reward_chosen: Option<f64>,
    pub reward_rejected: Option<f64>,
    pub margin: Option<f64>,
    pub accuracy: Option<f64>,
    pub logp_chosen: f64,
    pub logp_rejected: Option<f64>,
    /// Before clipping.
    pub grad_norm: f64,
    pub lr: f64,
    pub tokens: usize,
}

/// One step's gradients and metrics, between [`Trainer::gradients`] and [`Trainer::apply`].
#[derive(Debug, Clone, PartialEq)]
pub struct StepGradients {
    pub metrics: StepMetrics,
    pub grads: AdapterGrads,
    /// The scalar head's (a reward model's).
    pub head: Option<ScalarHeadGrads>,
}

/// A loss that is not a number, and the batch position of the item that made it.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("the loss is {value} on item {index} of the batch")]
    NonFinite { index: usize, value: f64 },
    /// A gradient that is not a number: no weight was changed.
    #[error("the gradient norm is {norm}; no weight was changed")]
    NonFiniteGradient { norm: f64 },
    #[error("item {index} is preference data without a rejected answer or reference log-probs")]
    NotAPair { index: usize },
    #[error("checkpoint does not fit these adapters: {0}")]
    Checkpoint(String),
    #[error("the reward objective trains a scalar head, and this trainer has none")]
    NoHead,
}

/// The adapters being trained, the optimiser's moments and the steps taken.
#[derive(Debug, Clone, PartialEq)]
pub struct Trainer {
    pub adapters: Adapters,
    /// A reward model's scalar head, trained with the adapters (none for the policy losses).
    pub head: Option<ScalarHead>,
    /// One per factor, A then B of each adapter, in slot order, then the head's.
    pub moments: Vec<Moments>,
    /// Steps completed.
    pub step: u64,
}

/// How an item scored under the current adapters (no gradient).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ItemScore {
    pub loss: f64,
    /// Chosen minus rejected reward (preference data).
    pub margin: Option<f64>,
    /// A reward model's rewards of the chosen and the rejected answer.
    pub rewards: Option<(f64, f64)>,
}

impl Trainer {
    pub fn new(adapters: Adapters) -> Self {
        Trainer {
            adapters,
            head: None,
            moments: Vec::new(),
            step: 0,
        }
    }

    /// A reward model's trainer: the adapters and a scalar head.
    pub fn with_head(adapters: Adapters, head: ScalarHead) -> Self {
        Trainer {
            head: Some(head),
            ..Trainer::new(adapters)
        }
    }

    /// One optimiser step on `batch` (the mean loss over its items): [`Trainer::gradients`],
    /// then [`Trainer::apply`].
    pub fn train_step(
        &mut self,
        model: &Model,
        compute: &Compute,
        hyper: &Hyper,
        batch: &[&Item],
    ) -> Result<StepMetrics, TrainError> {
        let step = self.gradients(model, compute, hyper, batch)?;
        self.apply(hyper, step)
    }

    /// The gradients of the next step's loss on `batch`, and its metrics; nothing is updated.
    pub fn gradients(
        &mut self,
        model: &Model,
        compute: &Compute,
        hyper: &Hyper,
        batch: &[&Item],
    ) -> Result<StepGradients, TrainError> {
        let step = self.step + 1;
        let mut grads = AdapterGrads::default();
        let mut m = StepMetrics {
            lr: hyper.schedule.lr(step),
            tokens: batch.iter().map(|i| i.tokens()).sum(),
            ..StepMetrics::default()
        };
        if matches!(hyper.loss, Loss::Preference(_)) {
            if let Some(index) = batch
                .iter()
                .position(|i| i.rejected.is_none() || i.reference.is_none())
            {
                return Err(TrainError::NotAPair { index });
            }
        }
        // Dropout for this step's forwards and backwards only: a mask per step, adapter and row.
        if hyper.dropout > 0.0 {
            self.adapters.dropout = Some(
                Dropout {
                    p: hyper.dropout,
                    seed: hyper.seed,
                }
                .derive(step),
            );
        }
        if hyper.loss == Loss::Reward {
            let result = match &self.head {
                Some(head) => reward_gradients(model, compute, &self.adapters, head, batch),
                None => Err(TrainError::NoHead),
            };
            self.adapters.dropout = None;
            let r = result?;
            m.loss = r.loss;
            m.reward_chosen = Some(r.reward_chosen);
            m.reward_rejected = Some(r.reward_rejected);
            m.margin = Some(r.margin);
            m.accuracy = Some(r.accuracy);
            return Ok(StepGradients {
                metrics: m,
                grads: r.adapters,
                head: Some(r.head),
            });
        }
        // The whole step on the compute threads (see `Model::forward_traced`).
        let result = compute
            .install(|| self.step_gradients(model, compute, hyper, batch, &mut m, &mut grads));
        self.adapters.dropout = None;
        result?;
        Ok(StepGradients {
            metrics: m,
            grads,
            head: None,
        })
    }

    /// The update of one step from its gradients: clipped to the global norm, then AdamW.
    /// A gradient that is not finite (NaN or infinite anywhere) is refused before any weight or
    /// moment changes, so the adapters and the step count stay as the last checkpoint left
    /// them; clipping would not save it (a NaN norm compares false and clips nothing).
    pub fn apply(&mut self, hyper: &Hyper, step: StepGradients) -> Result<StepMetrics, TrainError> {
        let StepGradients {
            metrics: mut m,
            mut grads,
            mut head,
        } = step;
        let mut slices: Vec<&mut [f32]> = grads
            .layers
            .iter_mut()
            .flatten()
            .flatten()
            .flat_map(|g| [g.a.as_mut_slice(), g.b.as_mut_slice()])
            .chain(head.as_mut().map(|h| h.weight.as_mut_slice()))
            .collect();
        let norm = global_norm(&slices);
        if !norm.is_finite() {
            return Err(TrainError::NonFiniteGradient { norm });
        }
        let max = if hyper.max_grad_norm > 0.0 {
            hyper.max_grad_norm
        } else {
            f64::INFINITY
        };
        m.grad_norm = clip_global_norm(&mut slices, max);
        let step = self.step + 1;
        self.apply_update(&grads, head.as_ref(), &hyper.optimizer, step, m.lr);
        self.step = step;
        Ok(m)
    }

    /// One AdamW update of every adapter factor from `grads` (and of the head from
    /// `head_grads`). `moments` holds one entry per factor in adapter order (A then B of each),
    /// then the head's, the order checkpoints store them in — kept aligned even for a factor
    /// that got no gradient.
    fn apply_update(
        &mut self,
        grads: &AdapterGrads,
        head_grads: Option<&ScalarHeadGrads>,
        optimizer: &AdamW,
        step: u64,
        lr: f64,
    ) {
        let mut at = 0;
        for (l, slots) in self.adapters.layers.iter_mut().enumerate() {
            for (t, lora) in slots.iter_mut().enumerate() {
                let Some(lora) = lora.as_mut() else { continue };
                let g = grads.layers.get(l).and_then(|g| g[t].as_ref());
                for (params, grad) in [
                    (&mut lora.a, g.map(|g| &g.a)),
                    (&mut lora.b, g.map(|g| &g.b)),
                ] {
                    if self.moments.len() <= at {
                        self.moments.push(Moments::default());
                    }
                    if let Some(grad) = grad {
                        optimizer.step(params, grad, &mut self.moments[at], step, lr);
                    }
                    at += 1;
                }
            }
        }
        if let (Some(head), Some(grads)) = (self.head.as_mut(), head_grads) {
            if self.moments.len() <= at {
                self.moments.push(Moments::default());
            }
            optimizer.step(
                &mut head.weight,
                &grads.weight,
                &mut self.moments[at],
                step,
                lr,
            );
        }
    }

    /// The gradients of one step's loss (into `grads`) and its metrics (into `m`).
    fn step_gradients(
        &self,
        model: &Model,
        compute: &Compute,
        hyper: &Hyper,
        batch: &[&Item],
        m: &mut StepMetrics,
        grads: &mut AdapterGrads,
    ) -> Result<(), TrainError> {
        let n = batch.len().max(1) as f64;
        let pairs = matches!(hyper.loss, Loss::Preference(_));
        // SFT: the token-mean cross-entropy over the batch's answers.
        let answer_tokens = batch.iter().map(|i| i.answer_tokens()).sum::<usize>();
        let sft_scale = -1.0 / answer_tokens.max(1) as f64;
        let (mut rc, mut rr, mut acc, mut logp_r) = (0.0, 0.0, 0.0, 0.0);
        let mut first = 0;
        for chunk in forward_chunks(batch) {
            let packed = Packed::of_answers(chunk, pairs);
            let (logps, traced) = model.forward_traced(
                compute,
                &packed.tokens,
                &packed.layout,
                &self.adapters,
                &packed.predictions,
            )?;
            let mut coefficients = vec![0.0; 2 * chunk.len()];
            for (i, (item, (pc, pr))) in chunk.iter().zip(packed.sums(&logps)).enumerate() {
                let index = first + i;
                let loss = match (hyper.loss, item.reference) {
                    (Loss::Preference(objective), Some(reference)) => pair_loss(
                        objective,
                        hyper.beta,
                        item.label,
                        PairLogps {
                            policy_chosen: pc,
                            policy_rejected: pr,
                            reference_chosen: reference.0,
                            reference_rejected: reference.1,
                        },
                    ),
                    _ => {
                        if !pc.is_finite() {
                            return Err(TrainError::NonFinite { index, value: pc });
                        }
                        m.loss += sft_scale * pc;
                        m.logp_chosen += pc / n;
                        coefficients[2 * i] = sft_scale;
                        continue;
                    }
                };
                if !loss.loss.is_finite() {
                    return Err(TrainError::NonFinite {
                        index,
                        value: loss.loss,
                    });
                }
                m.loss += loss.loss / n;
                rc += loss.reward_chosen / n;
                rr += loss.reward_rejected / n;
                acc += f64::from(u8::from(loss.reward_chosen > loss.reward_rejected)) / n;
                m.logp_chosen += pc / n;
                logp_r += pr / n;
                coefficients[2 * i] = loss.d_chosen / n;
                coefficients[2 * i + 1] = loss.d_rejected / n;
            }
            grads.add(&model.backward_traced(compute, traced, &self.adapters, &coefficients)?);
            first += chunk.len();
        }
        if pairs {
            m.reward_chosen = Some(rc);
            m.reward_rejected = Some(rr);
            m.margin = Some(rc - rr);
            m.accuracy = Some(acc);
            m.logp_rejected = Some(logp_r);
        }
        Ok(())
    }

    /// How each item scores under the current adapters (forward only).
    pub fn score_items(
        &self,
        model: &Model,
        compute: &Compute,
        hyper: &Hyper,
        items: &[&Item],
    ) -> Result<Vec<ItemScore>, ModelError> {
        if let (Loss::Reward, Some(head)) = (hyper.loss, &self.head) {
            let rewards = rewards(model, compute, Some(&self.adapters), head, items)?;
            return Ok(items
                .iter()
                .zip(rewards)
                .map(|(item, (c, r))| {
                    let r = r.unwrap_or(c);
                    ItemScore {
                        loss: bradley_terry(c, r, item.label).loss,
                        margin: Some(c - r),
                        rewards: Some((c, r)),
                    }
                })
                .collect());
        }
        let pairs = matches!(hyper.loss, Loss::Preference(_));
        let mut out = Vec::with_capacity(items.len());
        for chunk in forward_chunks(items) {
            let packed = Packed::of_answers(chunk, pairs);
            let logps = model.packed_logps(
                compute,
                &packed.tokens,
                &packed.layout,
                Some(&self.adapters),
                &packed.predictions,
            )?;
            for (item, (chosen, rejected)) in chunk.iter().zip(packed.sums(&logps)) {
                out.push(match (hyper.loss, item.reference) {
                    (Loss::Preference(objective), Some(reference)) => {
                        let loss = pair_loss(
                            objective,
                            hyper.beta,
                            item.label,
                            PairLogps {
                                policy_chosen: chosen,
                                policy_rejected: rejected,
                                reference_chosen: reference.0,
                                reference_rejected: reference.1,
                            },
                        );
                        ItemScore {
                            loss: loss.loss,
                            margin: Some(loss.margin()),
                            rewards: None,
                        }
                    }
                    _ => ItemScore {
                        loss: -chosen / item.answer_tokens().max(1) as f64,
                        margin: None,
                        rewards: None,
                    },
                });
            }
        }
        Ok(out)
    }

    /// The state a checkpoint keeps: step, every factor and its moments, little-endian.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(CHECKPOINT_MAGIC);
        out.extend_from_slice(&self.step.to_le_bytes());
        let factors = self.factors();
        out.extend_from_slice(&(factors.len() as u64).to_le_bytes());
        for (i, params) in factors.iter().enumerate() {
            out.extend_from_slice(&(params.len() as u64).to_le_bytes());
            let moments = self.moments.get(i);
            let zeros = vec![0.0f32; params.len()];
            let m = moments.filter(|m| m.m.len() == params.len());
            for values in [
                *params,
                m.map_or(zeros.as_slice(), |m| &m.m),
                m.map_or(zeros.as_slice(), |m| &m.v),
            ] {
                for v in values {
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }
        }
        out
    }

    /// Restores a state written by [`Trainer::to_bytes`] into adapters of the same shapes.
    pub fn restore(&mut self, bytes: &[u8]) -> Result<(), TrainError> {
        let bad = |m: &str| TrainError::Checkpoint(m.to_string());
        let mut r = Reader { bytes, at: 0 };
        if r.take(CHECKPOINT_MAGIC.len())
            .ok_or_else(|| bad("truncated"))?
            != CHECKPOINT_MAGIC
        {
            return Err(bad("not a tenets checkpoint"));
        }
        let step = r.u64().ok_or_else(|| bad("truncated"))?;
        let count = r.u64().ok_or_else(|| bad("truncated"))? as usize;
        let expected: Vec<usize> = self.factors().iter().map(|f| f.len()).collect();
        if count != expected.len() {
            return Err(bad(&format!(
                "{count} factors stored, {} expected",
                expected.len()
            )));
        }
        let mut values = Vec::with_capacity(count);
        for &len in &expected {
            let stored = r.u64().ok_or_else(|| bad("truncated"))? as usize;
            if stored != len {
                return Err(bad(&format!("a factor of {stored} values, {len} expected")));
            }
            let mut three = Vec::with_capacity(3);
            for _ in 0..3 {
                three.push(r.f32s(len).ok_or_else(|| bad("truncated"))?);
            }
            values.push(three);
        }
        if r.at != bytes.len() {
            return Err(bad("trailing bytes"));
        }
        let mut moments = Vec::with_capacity(count);
        let mut it = values.into_iter();
        for lora in self.adapters.layers.iter_mut().flatten().flatten() {
            for params in [&mut lora.a, &mut lora.b] {
                let mut three = it.next().ok_or_else(|| bad("factor count"))?.into_iter();
                let (p, m, v) = (three.next(), three.next(), three.next());
                let (Some(p), Some(m), Some(v)) = (p, m, v) else {
                    return Err(bad("factor values"));
                };
                *params = p;
                moments.push(Moments { m, v });
            }
        }
        if let Some(head) = self.head.as_mut() {
            let mut three = it.next().ok_or_else(|| bad("factor count"))?.into_iter();
            let (Some(p), Some(m), Some(v)) = (three.next(), three.next(), three.next()) else {
                return Err(bad("head values"));
            };
            head.weight = p;
            moments.push(Moments { m, v });
        }
        self.moments = moments;
        self.step = step;
        Ok(())
    }

    fn factors(&self) -> Vec<&[f32]> {
        self.adapters
            .layers
            .iter()
            .flatten()
            .flatten()
            .flat_map(|l| [l.a.as_slice(), l.b.as_slice()])
            .chain(self.head.as_ref().map(|h| h.weight.as_slice()))
            .collect()
    }
}

const CHECKPOINT_MAGIC: &[u8] = b"tenets-ckpt-1\0";

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let out = self.bytes.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(out)
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn f32s(&mut self, n: usize) -> Option<Vec<f32>> {
        let raw = self.take(n.checked_mul(4)?)?;
        Some(
            raw.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        )
    }
}

/// The items of step `step` (1-based): `per_step` consecutive draws from a stream of seeded
/// shuffles of `0..len`, one shuffle per epoch — so any step's batch is known without replaying
/// the ones before it.
pub fn batch_indices(len: usize, per_step: usize, step: u64, seed: u64) -> Vec<usize> {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    if len == 0 {
        return Vec::new();
    }
    let first = (step.saturating_sub(1) as usize) * per_step;
    let mut out = Vec::with_capacity(per_step);
    let mut epoch = usize::MAX;
    let mut order: Vec<usize> = Vec::new();
    for k in first..first + per_step {
        if k / len != epoch {
            epoch = k / len;
            order = (0..len).collect();
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(
                seed ^ (epoch as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15),
            );
            order.shuffle(&mut rng);
        }
        out.push(order[k % len]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_cover_each_epoch_once_in_a_seeded_order() {
        let mut seen: Vec<usize> = (1..=5).flat_map(|s| batch_indices(10, 2, s, 7)).collect();
        assert_ne!(seen, (0..10).collect::<Vec<_>>(), "shuffled");
        seen.sort_unstable();
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
        assert_eq!(batch_indices(10, 2, 3, 7), batch_indices(10, 2, 3, 7));
        assert_ne!(
            batch_indices(10, 4, 3, 7)[..2],
            batch_indices(10, 4, 3, 8)[..2]
        );
        // A step that spans two epochs takes the end of one and the start of the next.
        let spanning = batch_indices(10, 4, 3, 7);
        assert_eq!(spanning[..2], batch_indices(10, 2, 5, 7)[..]);
        assert_eq!(spanning[2..], batch_indices(10, 2, 6, 7)[..]);
    }

    #[test]
    fn a_pair_packs_around_its_prompt() {
        let item = Item {
            chosen: vec![1, 2, 3, 4, 5],
            rejected: Some(vec![1, 2, 3, 6, 7, 8]),
            prompt_len: 3,
            label: 1.0,
            reference: None,
        };
        let sft = Item {
            rejected: None,
            ..item.clone()
        };
        let packed = Packed::of(&[&item, &sft]);
        assert_eq!(packed.tokens, vec![1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5]);
        let pair = Segment {
            len: 8,
            branch: Some(Branch {
                shared: 3,
                start: 5,
            }),
        };
        let alone = Segment {
            len: 5,
            branch: None,
        };
        assert_eq!(packed.layout.segments, vec![pair, alone]);
        let reads: Vec<(usize, u32, usize)> = packed
            .predictions
            .iter()
            .map(|p| (p.row, p.token, p.group))
            .collect();
        // Rejected token 6 is predicted from the prompt's last row, 7 and 8 from rows 5 and 6;
        // the second item's rows start at 8.
        let expected = vec![
            (2, 4, 0),
            (3, 5, 0),
            (2, 6, 1),
            (5, 7, 1),
            (6, 8, 1),
            (10, 4, 2),
            (11, 5, 2),
        ];
        assert_eq!(reads, expected);
        let logps = [-1.0, -2.0, -4.0, -8.0, -16.0, -32.0, -64.0];
        assert_eq!(packed.sums(&logps), vec![(-3.0, -28.0), (-96.0, 0.0)]);
        assert_eq!(item.packed_rows(), 8);
        // Batches split where a forward would pass its rows.
        let long = Item {
            chosen: vec![1; FORWARD_ROWS - 4],
            ..sft.clone()
        };
        let batch = [&item, &long, &sft, &sft];
        let sizes: Vec<usize> = forward_chunks(&batch).iter().map(|c| c.len()).collect();
        assert_eq!(sizes, vec![1, 1, 2]);
    }

    #[test]
    fn loss_names_round_trip() {
        for name in ["dpo", "ipo", "hinge", "sft", "reward"] {
            assert_eq!(Loss::parse(name).map(Loss::name), Some(name));
        }
        assert_eq!(Loss::parse("ppo"), None);
    }
}
