//! LoRA: a trainable low-rank update beside a frozen (still quantized) weight,
//! `y = x·Wᵀ + s·(x·Aᵀ)·Bᵀ` with `A: rank × in`, `B: out × rank` in f32 and `s = alpha / rank`.
//! B starts at zero, so a new adapter leaves the model exactly as it was; A starts small and
//! random (PEFT's Kaiming-uniform bound, 1/√in). Forward and backward sit side by side, through
//! the same matmul kernels as the base weights.

use rand::{Rng, SeedableRng};

use crate::quant::matmul::{transpose, Compute, MatmulError, Matrix};

/// One adapted projection's factors.
#[derive(Debug, Clone, PartialEq)]
pub struct Lora {
    pub rank: usize,
    pub input: usize,
    pub output: usize,
    /// `alpha / rank`.
    pub scale: f32,
    /// `rank × input`, row-major.
    pub a: Vec<f32>,
    /// `output × rank`, row-major.
    pub b: Vec<f32>,
}

/// Dropout on an adapter's input while training (PEFT's `lora_dropout`: `B·A·dropout(x)`): each
/// input value is kept with probability `1 − p` and scaled by `1/(1 − p)`. The mask is a pure
/// function of `seed`, so the backward — and a resumed run — draws the same one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dropout {
    pub p: f32,
    pub seed: u64,
}

impl Dropout {
    /// `x` with the mask applied (and the kept values scaled).
    pub fn apply(&self, x: &[f32]) -> Vec<f32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(self.seed);
        let keep = 1.0 / (1.0 - self.p);
        x.iter()
            .map(|&v| {
                if rng.gen::<f32>() >= self.p {
                    v * keep
                } else {
                    0.0
                }
            })
            .collect()
    }

    /// The same dropout drawn afresh for another use (another layer, projection or step).
    pub fn derive(&self, key: u64) -> Dropout {
        Dropout {
            p: self.p,
            seed: self.seed ^ key.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15),
        }
    }
}

/// Gradients of a [`Lora`]'s factors.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraGrads {
    pub a: Vec<f32>,
    pub b: Vec<f32>,
}

impl Lora {
    /// A fresh adapter: B = 0, A uniform in ±1/√input from `seed`.
    pub fn new(input: usize, output: usize, rank: usize, alpha: f32, seed: u64) -> Self {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let bound = 1.0 / (input as f32).sqrt();
        Lora {
            rank,
            input,
            output,
            scale: alpha / rank as f32,
            a: (0..rank * input)
                .map(|_| rng.gen_range(-bound..bound))
                .collect(),
            b: vec![0.0; output * rank],
        }
    }

    fn a(&self) -> Result<Matrix<'_>, MatmulError> {
        Matrix::f32(self.rank, self.input, &self.a)
    }

    fn b(&self) -> Result<Matrix<'_>, MatmulError> {
        Matrix::f32(self.output, self.rank, &self.b)
    }

    /// Adds `s·(x·Aᵀ)·Bᵀ` into `y` (`tokens × output`); returns `z = x·Aᵀ` (`tokens × rank`),
    /// which the backward needs.
    pub fn forward(
        &self,
        compute: &Compute,
        x: &[f32],
        y: &mut [f32],
    ) -> Result<Vec<f32>, MatmulError> {
        self.forward_with(compute, x, y, None)
    }

    /// [`Lora::forward`] with `dropout` on the adapter's input.
    pub fn forward_with(
        &self,
        compute: &Compute,
        x: &[f32],
        y: &mut [f32],
        dropout: Option<Dropout>,
    ) -> Result<Vec<f32>, MatmulError> {
        let dropped = dropout.map(|d| d.apply(x));
        let x = dropped.as_deref().unwrap_or(x);
        let tokens = x.len() / self.input;
        let mut z = vec![0.0; tokens * self.rank];
        compute.matmul_t(x, &self.a()?, &mut z)?;
        // y += (s·z)·Bᵀ summed in place, as `dx += dy·W` with W = Bᵀ: the kernel then runs
        // along the output's columns instead of along the rank (dot products 8 long).
        let scaled: Vec<f32> = z.iter().map(|v| self.scale * v).collect();
        let bt = transpose(&self.b, self.output, self.rank);
        compute.matmul_dx_add(&scaled, &Matrix::f32(self.rank, self.output, &bt)?, y)?;
        Ok(z)
    }

    /// From `dy`: adds the update's share of `dx` into `dx` and returns the factors' gradients.
    /// With `dz = s·dy·B`: `dB = s·dyᵀ·z`, `dA = dzᵀ·x`, `dx += dz·A`.
    pub fn backward(
        &self,
        compute: &Compute,
        x: &[f32],
        z: &[f32],
        dy: &[f32],
        dx: &mut [f32],
    ) -> Result<LoraGrads, MatmulError> {
        self.backward_with(compute, x, z, dy, dx, None)
    }

    /// [`Lora::backward`] for a forward run with `dropout` (`x` is the input before it): `dA`
    /// takes the dropped input, and `dx` the mask.
    pub fn backward_with(
        &self,
        compute: &Compute,
        x: &[f32],
        z: &[f32],
        dy: &[f32],
        dx: &mut [f32],
        dropout: Option<Dropout>,
    ) -> Result<LoraGrads, MatmulError> {
        let dropped = dropout.map(|d| d.apply(x));
        let x = dropped.as_deref().unwrap_or(x);
        let tokens = x.len() / self.input;
        let mut dz = vec![0.0; tokens * self.rank];
        compute.matmul_dx(dy, &self.b()?, &mut dz)?;
        dz.iter_mut().for_each(|v| *v *= self.scale);
        match dropout {
            None => compute.matmul_dx_add(&dz, &self.a()?, dx)?,
            Some(d) => {
                let mut dx_update = vec![0.0; tokens * self.input];
                compute.matmul_dx(&dz, &self.a()?, &mut dx_update)?;
                for (d, u) in dx.iter_mut().zip(d.apply(&dx_update)) {
                    *d += u;
                }
            }
        }
        // dBᵀ = s·zᵀ·dy (rank × output): only z (tokens × rank) is transposed, never dy.
        let mut bt = vec![0.0; self.rank * self.output];
        let z_t = transpose(z, tokens, self.rank);
        compute.matmul_dx(&z_t, &Matrix::f32(tokens, self.output, dy)?, &mut bt)?;
        let mut b = transpose(&bt, self.rank, self.output);
        b.iter_mut().for_each(|v| *v *= self.scale);
        let mut a = vec![0.0; self.rank * self.input];
        let dz_t = transpose(&dz, tokens, self.rank);
        compute.matmul_dx(&dz_t, &Matrix::f32(tokens, self.input, x)?, &mut a)?;
        Ok(LoraGrads { a, b })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::matmul::Kernel;

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect()
    }

    const DROPOUT: Option<Dropout> = Some(Dropout { p: 0.3, seed: 17 });

    fn loss(compute: &Compute, lora: &Lora, x: &[f32], r: &[f32]) -> f64 {
        let mut y = vec![0.0; r.len()];
        lora.forward_with(compute, x, &mut y, DROPOUT).unwrap();
        y.iter()
            .zip(r)
            .map(|(a, b)| f64::from(*a) * f64::from(*b))
            .sum()
    }

    #[test]
    fn a_new_adapter_changes_nothing() {
        let compute = Compute::new(1, Kernel::Scalar).unwrap();
        let lora = Lora::new(8, 5, 2, 16.0, 1);
        let x = random(3 * 8, 2);
        let mut y = vec![1.5; 15];
        lora.forward(&compute, &x, &mut y).unwrap();
        assert!(y.iter().all(|&v| v == 1.5));
        assert!(lora.a.iter().all(|v| v.abs() <= 1.0 / 8f32.sqrt()));
        assert_eq!(lora.scale, 8.0);
    }

    #[test]
    fn backward_matches_finite_differences() {
        let compute = Compute::new(1, Kernel::detect()).unwrap();
        let mut lora = Lora::new(7, 5, 3, 6.0, 3);
        lora.b = random(5 * 3, 4);
        let (x, r) = (random(4 * 7, 5), random(4 * 5, 6));
        let mut y = vec![0.0; 20];
        // With dropout on (a fixed mask): the same mask in the forward and the backward.
        let z = lora.forward_with(&compute, &x, &mut y, DROPOUT).unwrap();
        let mut dx = vec![0.0; x.len()];
        let grads = lora
            .backward_with(&compute, &x, &z, &r, &mut dx, DROPOUT)
            .unwrap();
        let dropped = DROPOUT.unwrap().apply(&x);
        let zeros = dropped.iter().filter(|v| **v == 0.0).count();
        assert!(
            zeros > 0 && zeros < x.len() / 2,
            "{zeros} of {} dropped",
            x.len()
        );
        let h = 1e-2f32;
        let check = |analytic: f32, up: f64, down: f64, what: &str| {
            let numeric = (up - down) / (2.0 * f64::from(h));
            assert!(
                (f64::from(analytic) - numeric).abs() <= 2e-3 + 1e-2 * numeric.abs(),
                "{what}: {analytic} vs {numeric}"
            );
        };
        for i in 0..lora.a.len() {
            let (mut up, mut down) = (lora.clone(), lora.clone());
            up.a[i] += h;
            down.a[i] -= h;
            let (u, d) = (loss(&compute, &up, &x, &r), loss(&compute, &down, &x, &r));
            check(grads.a[i], u, d, "dA");
        }
        for i in 0..lora.b.len() {
            let (mut up, mut down) = (lora.clone(), lora.clone());
            up.b[i] += h;
            down.b[i] -= h;
            let (u, d) = (loss(&compute, &up, &x, &r), loss(&compute, &down, &x, &r));
            check(grads.b[i], u, d, "dB");
        }
        for i in 0..x.len() {
            let (mut up, mut down) = (x.clone(), x.clone());
            up[i] += h;
            down[i] -= h;
            let (u, d) = (
                loss(&compute, &lora, &up, &r),
                loss(&compute, &lora, &down, &r),
            );
            check(dx[i], u, d, "dx");
        }
    }
}
