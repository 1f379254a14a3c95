//! Q8_0: 32 weights as signed bytes, one f16 scale.
//! Layout: `d: f16`, `qs: [i8; 32]`. Weight = q · d.

pub const BLOCK_ELEMENTS: usize = 32;
pub const BLOCK_BYTES: usize = 2 + 32;
const _: () = assert!(BLOCK_BYTES == 34);

pub fn dequantize(block: &[u8], out: &mut [f32]) {
    let d = super::f16_at(block, 0);
    for (y, q) in out.iter_mut().zip(&block[2..34]) {
        *y = f32::from(*q as i8) * d;
    }
}

/// [`dequantize`] with AVX2, bit for bit the same values.
///
/// # Safety
/// AVX2 and F16C must be available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
#[inline]
pub(super) unsafe fn dequantize_avx2(block: &[u8], out: &mut [f32]) {
    use std::arch::x86_64::*;
    assert!(block.len() >= BLOCK_BYTES && out.len() >= BLOCK_ELEMENTS);
    let d = _mm256_set1_ps(super::avx2_f16_at(block, 0));
    for k in 0..4 {
        // SAFETY: the block holds 32 signed bytes at 2..34 and `out` 32 floats (checked above).
        unsafe {
            let bytes = _mm_loadl_epi64(block.as_ptr().add(2 + 8 * k).cast());
            let q = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes));
            _mm256_storeu_ps(out.as_mut_ptr().add(8 * k), _mm256_mul_ps(q, d));
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn signed_bytes_times_scale() {
        let mut block = [0u8; super::BLOCK_BYTES];
        block[..2].copy_from_slice(&0x3400u16.to_le_bytes()); // d = 0.25
        block[2] = 0x80; // −128
        block[33] = 0x7F; // 127
        let mut out = [0.0; 32];
        super::dequantize(&block, &mut out);
        assert_eq!(out[0], -32.0);
        assert_eq!(out[31], 31.75);
        assert_eq!(out[1], 0.0);
    }
}
