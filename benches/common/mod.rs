//! Helpers shared by the benchmarks.
#![allow(dead_code)]

use std::time::Instant;

/// An unsigned setting from the environment, or `default`.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The best wall time of `runs` calls of `f`, in seconds.
pub fn best(runs: usize, mut f: impl FnMut()) -> f64 {
    (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

/// Peak resident set size of this process (VmHWM), in MiB.
pub fn peak_rss_mib() -> f64 {
    tenets::pipeline::train::peak_rss_mib().unwrap_or(f64::NAN)
}
pub mod synthetic;
