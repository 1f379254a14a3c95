//! Quantized block formats of GGUF tensors: one module per family, each with its block layout,
//! a size assertion and a plain scalar dequantizer that the fast kernels are tested against.
//!
//! A row of `n` weights is `n / block_elements` consecutive blocks of `block_bytes` bytes.

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
pub mod float;
pub mod matmul;
pub mod q4_0;
pub mod q4_1;
pub mod q4_k;
pub mod q5_0;
pub mod q5_1;
pub mod q5_k;
pub mod q6_k;
pub mod q8_0;

/// Element types of GGUF tensors that tenets reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuantType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q4K,
    Q5K,
    Q6K,
}

impl QuantType {
    /// Every type tenets reads.
    pub const ALL: [QuantType; 11] = [
        QuantType::F32,
        QuantType::F16,
        QuantType::BF16,
        QuantType::Q4_0,
        QuantType::Q4_1,
        QuantType::Q5_0,
        QuantType::Q5_1,
        QuantType::Q8_0,
        QuantType::Q4K,
        QuantType::Q5K,
        QuantType::Q6K,
    ];

    /// From ggml's `ggml_type` number.
    pub fn from_ggml(id: u32) -> Option<Self> {
        Some(match id {
            0 => QuantType::F32,
            1 => QuantType::F16,
            2 => QuantType::Q4_0,
            3 => QuantType::Q4_1,
            6 => QuantType::Q5_0,
            7 => QuantType::Q5_1,
            8 => QuantType::Q8_0,
            12 => QuantType::Q4K,
            13 => QuantType::Q5K,
            14 => QuantType::Q6K,
            30 => QuantType::BF16,
            _ => return None,
        })
    }

    /// ggml's `ggml_type` number.
    pub fn ggml_id(self) -> u32 {
        match self {
            QuantType::F32 => 0,
            QuantType::F16 => 1,
            QuantType::Q4_0 => 2,
            QuantType::Q4_1 => 3,
            QuantType::Q5_0 => 6,
            QuantType::Q5_1 => 7,
            QuantType::Q8_0 => 8,
            QuantType::Q4K => 12,
            QuantType::Q5K => 13,
            QuantType::Q6K => 14,
            QuantType::BF16 => 30,
        }
    }

    /// Weights per block.
    pub fn block_elements(self) -> usize {
        match self {
            QuantType::F32 | QuantType::F16 | QuantType::BF16 => 1,
            QuantType::Q4_0 => q4_0::BLOCK_ELEMENTS,
            QuantType::Q4_1 => q4_1::BLOCK_ELEMENTS,
            QuantType::Q5_0 => q5_0::BLOCK_ELEMENTS,
            QuantType::Q5_1 => q5_1::BLOCK_ELEMENTS,
            QuantType::Q8_0 => q8_0::BLOCK_ELEMENTS,
            QuantType::Q4K => q4_k::BLOCK_ELEMENTS,
            QuantType::Q5K => q5_k::BLOCK_ELEMENTS,
            QuantType::Q6K => q6_k::BLOCK_ELEMENTS,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            QuantType::F32 => 4,
            QuantType::F16 | QuantType::BF16 => 2,
            QuantType::Q4_0 => q4_0::BLOCK_BYTES,
            QuantType::Q4_1 => q4_1::BLOCK_BYTES,
            QuantType::Q5_0 => q5_0::BLOCK_BYTES,
            QuantType::Q5_1 => q5_1::BLOCK_BYTES,
            QuantType::Q8_0 => q8_0::BLOCK_BYTES,
            QuantType::Q4K => q4_k::BLOCK_BYTES,
            QuantType::Q5K => q5_k::BLOCK_BYTES,
            QuantType::Q6K => q6_k::BLOCK_BYTES,
        }
    }

    /// Bytes taken by a row of `n` weights (`n` a multiple of the block size).
    pub fn row_bytes(self, n: usize) -> usize {
        n / self.block_elements() * self.block_bytes()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{kind:?} row: {bytes} bytes cannot hold {elements} weights ({expected} bytes needed)")]
pub struct RowSizeError {
    pub kind: QuantType,
    pub bytes: usize,
    pub elements: usize,
    pub expected: usize,
}

/// Dequantizes one row: `out.len()` weights from `bytes` — the scalar reference path.
pub fn dequantize_row(kind: QuantType, bytes: &[u8], out: &mut [f32]) -> Result<(), RowSizeError> {
    let n = out.len();
    let expected = if n.is_multiple_of(kind.block_elements()) {
        kind.row_bytes(n)
    } else {
        usize::MAX
    };
    if bytes.len() != expected {
        return Err(RowSizeError {
            kind,
            bytes: bytes.len(),
            elements: n,
            expected,
        });
    }
    let (e, b) = (kind.block_elements(), kind.block_bytes());
    let blocks = bytes.chunks_exact(b).zip(out.chunks_exact_mut(e));
    match kind {
        QuantType::F32 => {
            blocks.for_each(|(x, y)| y[0] = f32::from_le_bytes([x[0], x[1], x[2], x[3]]))
        }
        QuantType::F16 => {
            blocks.for_each(|(x, y)| y[0] = float::f16_to_f32(u16::from_le_bytes([x[0], x[1]])))
        }
        QuantType::BF16 => {
            blocks.for_each(|(x, y)| y[0] = float::bf16_to_f32(u16::from_le_bytes([x[0], x[1]])))
        }
        QuantType::Q4_0 => blocks.for_each(|(x, y)| q4_0::dequantize(x, y)),
        QuantType::Q4_1 => blocks.for_each(|(x, y)| q4_1::dequantize(x, y)),
        QuantType::Q5_0 => blocks.for_each(|(x, y)| q5_0::dequantize(x, y)),
        QuantType::Q5_1 => blocks.for_each(|(x, y)| q5_1::dequantize(x, y)),
        QuantType::Q8_0 => blocks.for_each(|(x, y)| q8_0::dequantize(x, y)),
        QuantType::Q4K => blocks.for_each(|(x, y)| q4_k::dequantize(x, y)),
        QuantType::Q5K => blocks.for_each(|(x, y)| q5_k::dequantize(x, y)),
        QuantType::Q6K => blocks.for_each(|(x, y)| q6_k::dequantize(x, y)),
    }
    Ok(())
}

/// [`dequantize_row`] for the matmul kernels: the same values, bit for bit, through AVX2
/// decoders where `avx2` is set and the format has one (Q4_1, Q8_0: the two the default model
/// is made of), the scalar decoder otherwise. Sizes must already be checked.
pub(crate) fn decode_row(kind: QuantType, bytes: &[u8], out: &mut [f32], avx2: bool) {
    #[cfg(target_arch = "x86_64")]
    if avx2 && matches!(kind, QuantType::Q4_1 | QuantType::Q8_0) {
        // SAFETY: callers set `avx2` only when the CPU has AVX2 and F16C (`Kernel::Avx2`).
        return unsafe { decode_row_avx2(kind, bytes, out) };
    }
    let _ = avx2;
    let _ = dequantize_row(kind, bytes, out);
}

/// The AVX2 half of [`decode_row`]: one loop over the blocks, so each block's decoder inlines.
///
/// # Safety
/// AVX2 and F16C must be available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
unsafe fn decode_row_avx2(kind: QuantType, bytes: &[u8], out: &mut [f32]) {
    let blocks = bytes
        .chunks_exact(kind.block_bytes())
        .zip(out.chunks_exact_mut(kind.block_elements()));
    // Plain loops (no closures), so the decoders inline with this function's features.
    if kind == QuantType::Q4_1 {
        for (x, y) in blocks {
            // SAFETY: AVX2 and F16C are available (this function's contract).
            unsafe { q4_1::dequantize_avx2(x, y) }
        }
    } else {
        for (x, y) in blocks {
            // SAFETY: as above.
            unsafe { q8_0::dequantize_avx2(x, y) }
        }
    }
}

/// [`f16_at`] through F16C's conversion (exact, as the scalar one is, for every finite value).
///
/// # Safety
/// F16C must be available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "f16c")]
#[inline]
unsafe fn avx2_f16_at(bytes: &[u8], at: usize) -> f32 {
    use std::arch::x86_64::*;
    let h = u16::from_le_bytes([bytes[at], bytes[at + 1]]);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(h))))
}

/// Reads the little-endian f16 at `at` as f32.
pub(crate) fn f16_at(bytes: &[u8], at: usize) -> f32 {
    float::f16_to_f32(u16::from_le_bytes([bytes[at], bytes[at + 1]]))
}

/// Random but well-formed blocks for `n` weights (finite scales of a realistic size), for tests and
/// benchmarks of the kernels.
pub fn random_blocks(kind: QuantType, n: usize, seed: u64) -> Vec<u8> {
    random_blocks_with(kind, n, seed, 0.05, 1.0)
}

/// Random blocks for `n` weights of a synthetic model: the block scales are chosen so that the
/// decoded weights spread about as far as `spread` whatever the kind (a Q6_K block multiplies its
/// scale by an 8-bit sub-scale and a 6-bit quant, a Q8_0 block by one 8-bit quant), so that a
/// model written in a mix of kinds keeps its activations in a realistic range.
pub fn random_weights(kind: QuantType, n: usize, seed: u64, spread: f32) -> Vec<u8> {
    // The typical size of what multiplies each kind's f16 scale.
    let multiplier = match kind {
        QuantType::F32 | QuantType::F16 | QuantType::BF16 => 1.0,
        QuantType::Q4_0 | QuantType::Q4_1 => 8.0,
        QuantType::Q5_0 | QuantType::Q5_1 => 16.0,
        QuantType::Q8_0 => 64.0,
        QuantType::Q4K => 32.0 * 8.0,
        QuantType::Q5K => 32.0 * 16.0,
        QuantType::Q6K => 64.0 * 16.0,
    };
    random_blocks_with(kind, n, seed, spread / multiplier, spread)
}

/// [`random_blocks`] with each f16 scale in ±[scale/2, scale) and plain floats in ±`float`.
fn random_blocks_with(kind: QuantType, n: usize, seed: u64, scale: f32, float: f32) -> Vec<u8> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut bytes = vec![0u8; kind.row_bytes(n)];
    rng.fill(bytes.as_mut_slice());
    let half = |rng: &mut rand_chacha::ChaCha8Rng, scale: f32| {
        // An f16 in ±[scale/2, scale): sign, exponent near scale's, random mantissa.
        let e = (scale.log2().floor() as i32 + 14).clamp(1, 30) as u16;
        let sign = if rng.gen::<bool>() { 0x8000 } else { 0 };
        (sign | (e << 10) | rng.gen_range(0..0x400u16)).to_le_bytes()
    };
    // Offsets of the f16 fields in each block.
    let fields: &[usize] = match kind {
        QuantType::F32 => {
            for v in bytes.chunks_exact_mut(4) {
                v.copy_from_slice(&rng.gen_range(-float..float).to_le_bytes());
            }
            &[]
        }
        QuantType::F16 => &[0],
        QuantType::BF16 => {
            for v in bytes.chunks_exact_mut(2) {
                let x = rng.gen_range(-float..float).to_bits();
                v.copy_from_slice(&((x >> 16) as u16).to_le_bytes());
            }
            &[]
        }
        QuantType::Q4_0 | QuantType::Q5_0 | QuantType::Q8_0 => &[0],
        QuantType::Q4_1 | QuantType::Q5_1 | QuantType::Q4K | QuantType::Q5K => &[0, 2],
        QuantType::Q6K => &[208],
    };
    for block in bytes.chunks_exact_mut(kind.block_bytes()) {
        for &at in fields {
            block[at..at + 2].copy_from_slice(&half(&mut rng, scale));
        }
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_decoders_give_the_scalar_values_to_the_bit() {
        #[cfg(target_arch = "x86_64")]
        if matmul::Kernel::Avx2.available() {
            for kind in QuantType::ALL {
                let n = kind.block_elements() * 7;
                let bytes = random_blocks(kind, n, 3);
                let (mut want, mut got) = (vec![0.0; n], vec![1.0; n]);
                dequantize_row(kind, &bytes, &mut want).unwrap();
                decode_row(kind, &bytes, &mut got, true);
                let same = want
                    .iter()
                    .zip(&got)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{kind:?}");
            }
        }
    }

    #[test]
    fn wrong_row_sizes_are_errors() {
        let mut out = vec![0.0; 32];
        assert!(dequantize_row(QuantType::Q8_0, &[0; 33], &mut out).is_err());
        let mut odd = vec![0.0; 31];
        assert!(dequantize_row(QuantType::Q8_0, &[0; 34], &mut odd).is_err());
        assert!(dequantize_row(QuantType::Q8_0, &[0; 34], &mut out).is_ok());
    }
}
