//! Where the model's time goes: wall time summed per part of the work, so that `tenets train`
//! can say how a step splits (the frozen weights' quantized products, the output head with its
//! softmax, attention, the rest) — at a 151k-token vocabulary the head is where a naive
//! trainer loses, and this is how one sees whether it does. Cheap enough to be always on (two
//! clock reads per product).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// The parts a step is split into.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Part {
    /// Products with the frozen (quantized) weights of the layers, forward and backward.
    Kernels,
    /// The output head: logits, softmax and log-probs, and their backward to the last hidden
    /// state.
    Head,
    /// Attention, forward and backward.
    Attention,
}

/// Nanoseconds per [`Part`], summed over calls (the model's own calls are sequential: each
/// call's time is wall time of the step, its threads inside it).
#[derive(Debug, Default)]
pub struct Profile {
    nanos: [AtomicU64; 3],
}

/// Seconds per part, since the model was loaded (see [`Profile::seconds`]).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PartSeconds {
    pub kernels: f64,
    pub head: f64,
    pub attention: f64,
}

impl PartSeconds {
    /// The time spent between two readings.
    pub fn since(self, earlier: PartSeconds) -> PartSeconds {
        PartSeconds {
            kernels: self.kernels - earlier.kernels,
            head: self.head - earlier.head,
            attention: self.attention - earlier.attention,
        }
    }

    /// Two stretches together.
    pub fn plus(self, other: PartSeconds) -> PartSeconds {
        PartSeconds {
            kernels: self.kernels + other.kernels,
            head: self.head + other.head,
            attention: self.attention + other.attention,
        }
    }

    pub fn total(self) -> f64 {
        self.kernels + self.head + self.attention
    }
}

impl Profile {
    /// Runs `f`, adding its wall time to `part`.
    pub(crate) fn time<T>(&self, part: Part, f: impl FnOnce() -> T) -> T {
        let started = Instant::now();
        let out = f();
        let nanos = started.elapsed().as_nanos() as u64;
        self.nanos[part as usize].fetch_add(nanos, Ordering::Relaxed);
        out
    }

    /// The seconds spent in each part so far.
    pub fn seconds(&self) -> PartSeconds {
        let s = |p: Part| self.nanos[p as usize].load(Ordering::Relaxed) as f64 * 1e-9;
        PartSeconds {
            kernels: s(Part::Kernels),
            head: s(Part::Head),
            attention: s(Part::Attention),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_add_up_apart() {
        let p = Profile::default();
        let before = p.seconds();
        p.time(Part::Head, || {
            std::thread::sleep(std::time::Duration::from_millis(20))
        });
        p.time(Part::Kernels, || ());
        let spent = p.seconds().since(before);
        assert!(spent.head >= 0.02, "{spent:?}");
        assert!(spent.kernels < 0.02 && spent.attention == 0.0, "{spent:?}");
        assert!((spent.total() - spent.head - spent.kernels).abs() < 1e-12);
    }
}
