//! The LoRA adapters a model runs with: which projections they sit on ([`Target`]), one
//! [`Lora`] per adapted projection of every layer ([`Adapters`]), and their gradients in the same
//! slots ([`AdapterGrads`]). The forward applies them; the backward fills the gradients; the
//! trainer steps them; [`super::adapter_gguf`] reads and writes them as llama.cpp's files.

use super::lora::{Dropout, Lora, LoraGrads};
use super::Model;

/// The projections an adapter can sit on.
pub const TARGETS: usize = 7;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    Q = 0,
    K = 1,
    V = 2,
    O = 3,
    Gate = 4,
    Up = 5,
    Down = 6,
}

impl Target {
    pub const ALL: [Target; TARGETS] = [
        Target::Q,
        Target::K,
        Target::V,
        Target::O,
        Target::Gate,
        Target::Up,
        Target::Down,
    ];

    /// The name used on the command line (`--targets q,k,v,o,gate,up,down`).
    pub fn name(self) -> &'static str {
        ["q", "k", "v", "o", "gate", "up", "down"][self as usize]
    }

    pub fn parse(name: &str) -> Option<Self> {
        Target::ALL.into_iter().find(|t| t.name() == name)
    }
}

/// LoRA adapters on some projections of every layer.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Adapters {
    pub layers: Vec<[Option<Lora>; TARGETS]>,
    /// Dropout on every adapter's input, set by the trainer for one step's forward and backward
    /// (each adapter draws its own mask from it); `None` scores and evaluates.
    pub dropout: Option<Dropout>,
}

impl Adapters {
    /// Fresh adapters (B = 0) on `targets` of every layer of `model`.
    pub fn new(model: &Model, targets: &[Target], rank: usize, alpha: f32, seed: u64) -> Self {
        let layers = model
            .layers
            .iter()
            .enumerate()
            .map(|(l, layer)| {
                let mut slots: [Option<Lora>; TARGETS] = Default::default();
                for &t in targets {
                    let w = layer.weight(t);
                    let seed =
                        seed ^ ((l as u64) << 8 | t as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                    slots[t as usize] = Some(Lora::new(w.cols, w.rows, rank, alpha, seed));
                }
                slots
            })
            .collect();
        Adapters {
            layers,
            dropout: None,
        }
    }

    /// The dropout of the adapter on `target` of `layer`, if dropout is on.
    pub fn dropout_of(&self, layer: usize, target: Target) -> Option<Dropout> {
        self.dropout
            .map(|d| d.derive((layer as u64) << 8 | target as u64))
    }

    pub fn get(&self, layer: usize, target: Target) -> Option<(Target, &Lora)> {
        self.layers
            .get(layer)
            .and_then(|slots| slots[target as usize].as_ref())
            .map(|l| (target, l))
    }

    /// The rank, alpha and targets these adapters were made with (those of the first adapted
    /// projection, and every target adapted in some layer); none without any adapter.
    pub fn shape(&self) -> Option<(usize, f32, Vec<Target>)> {
        let first = self.layers.iter().flatten().flatten().next()?;
        let targets = Target::ALL
            .into_iter()
            .filter(|&t| self.layers.iter().any(|slots| slots[t as usize].is_some()))
            .collect();
        Some((first.rank, first.scale * first.rank as f32, targets))
    }

    /// Trainable values in all factors.
    pub fn parameters(&self) -> usize {
        self.layers
            .iter()
            .flatten()
            .flatten()
            .map(|l| l.a.len() + l.b.len())
            .sum()
    }
}

/// The gradients of every adapter's factors, in the same slots.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AdapterGrads {
    pub layers: Vec<[Option<LoraGrads>; TARGETS]>,
}

impl AdapterGrads {
    /// Adds `other` (same slots) into these gradients.
    pub fn add(&mut self, other: &AdapterGrads) {
        self.add_scaled(other, 1.0);
    }

    /// Adds `k · other` (same slots) into these gradients.
    pub fn add_scaled(&mut self, other: &AdapterGrads, k: f32) {
        if self.layers.len() < other.layers.len() {
            self.layers
                .resize_with(other.layers.len(), Default::default);
        }
        for (mine, theirs) in self.layers.iter_mut().zip(&other.layers) {
            for (m, t) in mine.iter_mut().zip(theirs) {
                let Some(t) = t else { continue };
                let m = m.get_or_insert_with(|| LoraGrads {
                    a: vec![0.0; t.a.len()],
                    b: vec![0.0; t.b.len()],
                });
                m.a.iter_mut().zip(&t.a).for_each(|(x, y)| *x += k * y);
                m.b.iter_mut().zip(&t.b).for_each(|(x, y)| *x += k * y);
            }
        }
    }
}
