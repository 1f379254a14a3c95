//! Fused projections (Phi-3's `attn_qkv` holds q, k and v; its `ffn_up` holds gate and up).
//! The forward reads each part as a row range of the fused weight, so q, k, v, gate and up keep
//! adapters of their own while training — the same arithmetic as for any other model. llama.cpp
//! and PEFT see one weight: on the way out the parts' adapters become one LoRA of their summed
//! rank (A stacked, B block-diagonal, rescaled so that `alpha / rank` gives each part its own
//! scale); on the way in a fused LoRA gives each part its rows of B beside the whole A — exact
//! both ways, as `B·A·x` is row by row the parts' updates.

use super::lora::Lora;
use super::{Model, Target, TARGETS};

/// A weight that the file fuses from several projections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FusedWeight {
    /// llama.cpp's tensor base name (`blk.N.{tensor}.weight`).
    pub tensor: &'static str,
    /// Hugging Face's block and module for it (`self_attn.qkv_proj`).
    pub hf_block: &'static str,
    pub hf_module: &'static str,
    /// The projections it holds, in row order.
    pub parts: &'static [Target],
}

/// Phi-3's fused query, key and value projection.
pub const QKV: FusedWeight = FusedWeight {
    tensor: "attn_qkv",
    hf_block: "self_attn",
    hf_module: "qkv_proj",
    parts: &[Target::Q, Target::K, Target::V],
};

/// Phi-3's fused gate and up projection (gate first: llama.cpp's SwiGLU reads the first half
/// as the gate, as `Phi3MLP` does).
pub const GATE_UP: FusedWeight = FusedWeight {
    tensor: "ffn_up",
    hf_block: "mlp",
    hf_module: "gate_up_proj",
    parts: &[Target::Gate, Target::Up],
};

impl FusedWeight {
    /// Whether `target` is one of its parts.
    pub fn holds(&self, target: Target) -> bool {
        self.parts.contains(&target)
    }

    /// The one LoRA on this weight in layer `layer` of `model` that its parts' adapters in
    /// `slots` make ([`fuse`]); `None` when no part is adapted.
    pub fn lora(
        &self,
        model: &Model,
        layer: usize,
        slots: &[Option<Lora>; TARGETS],
    ) -> Option<Lora> {
        let parts: Vec<(Option<&Lora>, usize)> = self
            .parts
            .iter()
            .map(|&t| {
                (
                    slots[t as usize].as_ref(),
                    model.projection_shape(layer, t).1,
                )
            })
            .collect();
        fuse(&parts)
    }
}

/// One LoRA on a fused weight equal to its parts' adapters: `parts` gives each part's adapter
/// (or none) and its rows. The fused rank is the sum of the parts' ranks; its scale is
/// `alpha / rank` with the first adapter's alpha (what llama.cpp and PEFT compute from one
/// alpha), each part's B multiplied to keep its own scale. `None` when no part is adapted.
pub fn fuse(parts: &[(Option<&Lora>, usize)]) -> Option<Lora> {
    let present: Vec<&Lora> = parts.iter().filter_map(|(l, _)| *l).collect();
    let first = present.first()?;
    // Parts that share one A (every part adapted, as [`split`] gives them): B's rows stacked,
    // the rank unchanged — so a fused adapter read and written again keeps its rank.
    let shared = present.len() == parts.len()
        && present
            .iter()
            .all(|l| l.a == first.a && l.rank == first.rank && l.scale == first.scale);
    if shared {
        return Some(Lora {
            output: parts.iter().map(|(_, rows)| rows).sum(),
            b: present.iter().flat_map(|l| l.b.iter().copied()).collect(),
            ..(*first).clone()
        });
    }
    let (input, alpha) = (first.input, first.scale * first.rank as f32);
    let rank: usize = present.iter().map(|l| l.rank).sum();
    let output: usize = parts.iter().map(|(_, rows)| rows).sum();
    let scale = alpha / rank as f32;
    let a: Vec<f32> = present.iter().flat_map(|l| l.a.iter().copied()).collect();
    let mut b = vec![0.0; output * rank];
    let (mut row0, mut col0) = (0, 0);
    for &(lora, rows) in parts {
        if let Some(lora) = lora {
            let gain = lora.scale / scale;
            for r in 0..rows {
                let from = &lora.b[r * lora.rank..(r + 1) * lora.rank];
                let to = &mut b[(row0 + r) * rank + col0..][..lora.rank];
                to.iter_mut().zip(from).for_each(|(t, f)| *t = f * gain);
            }
            col0 += lora.rank;
        }
        row0 += rows;
    }
    Some(Lora {
        rank,
        input,
        output,
        scale,
        a,
        b,
    })
}

/// Each part's adapter from a LoRA on the fused weight: the whole A, the part's rows of B, the
/// fused scale. `rows` are the parts' row counts, in order (they must sum to `fused.output`).
pub fn split(fused: &Lora, rows: &[usize]) -> Vec<Lora> {
    let mut row0 = 0;
    rows.iter()
        .map(|&n| {
            let b = fused.b[row0 * fused.rank..(row0 + n) * fused.rank].to_vec();
            row0 += n;
            Lora {
                rank: fused.rank,
                input: fused.input,
                output: n,
                scale: fused.scale,
                a: fused.a.clone(),
                b,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `scale · B · A · x` for one input row.
    fn update(l: &Lora, x: &[f32]) -> Vec<f32> {
        let ax: Vec<f32> =
            l.a.chunks_exact(l.input)
                .map(|row| row.iter().zip(x).map(|(a, x)| a * x).sum())
                .collect();
        l.b.chunks_exact(l.rank)
            .map(|row| l.scale * row.iter().zip(&ax).map(|(b, a)| b * a).sum::<f32>())
            .collect()
    }

    fn lora(input: usize, output: usize, rank: usize, seed: u64) -> Lora {
        let mut l = Lora::new(input, output, rank, 16.0, seed);
        l.b.iter_mut()
            .enumerate()
            .for_each(|(i, v)| *v = ((i as f32 + seed as f32) * 0.37).sin());
        l
    }

    #[test]
    fn a_fused_lora_is_its_parts_and_splits_back_into_them() {
        let x: Vec<f32> = (0..6).map(|i| (i as f32 * 0.7).cos()).collect();
        let (q, v) = (lora(6, 4, 2, 1), lora(6, 3, 2, 2));
        // k (2 rows) has no adapter: its rows of the fused update are zero.
        let fused = fuse(&[(Some(&q), 4), (None, 2), (Some(&v), 3)]).unwrap();
        assert_eq!((fused.rank, fused.output, fused.input), (4, 9, 6));
        let whole = update(&fused, &x);
        let want: Vec<f32> = [update(&q, &x), vec![0.0; 2], update(&v, &x)].concat();
        for (a, b) in whole.iter().zip(&want) {
            assert!((a - b).abs() < 1e-5, "{whole:?} vs {want:?}");
        }
        let parts = split(&fused, &[4, 2, 3]);
        let again: Vec<f32> = parts.iter().flat_map(|p| update(p, &x)).collect();
        for (a, b) in again.iter().zip(&want) {
            assert!((a - b).abs() < 1e-5);
        }
        assert!(fuse(&[(None, 4), (None, 2)]).is_none());
        // Split parts fuse back into the same LoRA, rank unchanged.
        let refs: Vec<(Option<&Lora>, usize)> = parts
            .iter()
            .zip([4, 2, 3])
            .map(|(p, n)| (Some(p), n))
            .collect();
        assert_eq!(fuse(&refs).unwrap(), fused);
    }
}
