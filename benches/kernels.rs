//! Quantized matmul kernels: GFLOP/s of `y = x · Wᵀ` and `dx = dy · W` per block type, scalar
//! AVX2 and AVX-512, on the threads given — against an f32 anchor measured in the same run (the same
//! product with W already decoded to f32, through the same kernels).
//!
//! Run: `cargo bench --bench kernels` (env: BENCH_THREADS=2, BENCH_TOKENS=128).

mod common;

use common::{best, env_usize};

use tenets::quant::matmul::{Compute, Kernel, Matrix};
use tenets::quant::{random_blocks, QuantType};

fn main() {
    let threads = env_usize("BENCH_THREADS", 2);
    let tokens = env_usize("BENCH_TOKENS", 128);
    let (rows, cols) = (1536, 1024);
    let flops = 2.0 * (tokens * rows * cols) as f64;
    let x: Vec<f32> = (0..tokens * cols)
        .map(|i| ((i % 97) as f32 - 48.0) / 97.0)
        .collect();
    let dy: Vec<f32> = (0..tokens * rows)
        .map(|i| ((i % 89) as f32 - 44.0) / 89.0)
        .collect();
    let mut y = vec![0.0; tokens * rows];
    let mut dx = vec![0.0; tokens * cols];
    println!("{tokens} tokens × W {rows}×{cols}, {threads} threads; GFLOP/s (× the f32 anchor)");
    for kernel in [Kernel::Avx512, Kernel::Avx2, Kernel::Scalar] {
        if !kernel.available() {
            continue;
        }
        let compute = Compute::new(threads, kernel).expect("threads");
        let runs = if kernel == Kernel::Scalar { 1 } else { 5 };
        let anchor: Vec<f32> = (0..rows * cols)
            .map(|i| ((i % 13) as f32 - 6.0) / 64.0)
            .collect();
        let dense = Matrix::f32(rows, cols, &anchor).expect("shape");
        let anchor_t = best(runs, || compute.matmul_t(&x, &dense, &mut y).unwrap());
        let anchor_dx = best(runs, || compute.matmul_dx(&dy, &dense, &mut dx).unwrap());
        println!(
            "{kernel:?}: f32 anchor  forward {:6.1}  backward {:6.1}",
            flops / anchor_t / 1e9,
            flops / anchor_dx / 1e9
        );
        // Every quantized type, then the half-precision floats.
        for kind in QuantType::ALL
            .into_iter()
            .skip(3)
            .chain([QuantType::F16, QuantType::BF16])
        {
            let bytes = random_blocks(kind, rows * cols, 1);
            let w = Matrix::blocks(kind, rows, cols, &bytes).expect("shape");
            let t = best(runs, || compute.matmul_t(&x, &w, &mut y).unwrap());
            let d = best(runs, || compute.matmul_dx(&dy, &w, &mut dx).unwrap());
            println!(
                "{kernel:?}: {:10} forward {:6.1} ({:.2}×)  backward {:6.1} ({:.2}×)",
                format!("{kind:?}"),
                flops / t / 1e9,
                anchor_t / t,
                flops / d / 1e9,
                anchor_dx / d,
            );
        }
    }
}
