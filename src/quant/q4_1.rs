//! Q4_1: 32 weights as 4-bit integers with an f16 scale and an f16 minimum.
//! Layout: `d: f16`, `m: f16`, `qs: [u8; 16]` — low nibbles are weights 0..16, high 16..32.
//! Weight = nibble · d + m.

pub const BLOCK_ELEMENTS: usize = 32;
pub const BLOCK_BYTES: usize = 2 + 2 + 16;
const _: () = assert!(BLOCK_BYTES == 20);

pub fn dequantize(block: &[u8], out: &mut [f32]) {
    let d = super::f16_at(block, 0);
    let m = super::f16_at(block, 2);
    let qs = &block[4..20];
    for (j, q) in qs.iter().enumerate() {
        out[j] = f32::from(q & 0x0F) * d + m;
        out[j + 16] = f32::from(q >> 4) * d + m;
    }
}

/// [`dequantize`] with AVX2, bit for bit the same values (the same multiply, then add; no
/// fused rounding).
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
    let m = _mm256_set1_ps(super::avx2_f16_at(block, 2));
    // SAFETY: the block holds 16 bytes of nibbles at 4..20 and `out` 32 floats (checked above).
    unsafe {
        let qs = _mm_loadu_si128(block.as_ptr().add(4).cast());
        let mask = _mm_set1_epi8(0x0F);
        let low = _mm_and_si128(qs, mask);
        let high = _mm_and_si128(_mm_srli_epi16(qs, 4), mask);
        for (at, nibbles) in [(0, low), (16, high)] {
            for (k, bytes) in [nibbles, _mm_srli_si128(nibbles, 8)]
                .into_iter()
                .enumerate()
            {
                let q = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(bytes));
                let w = _mm256_add_ps(_mm256_mul_ps(q, d), m);
                _mm256_storeu_ps(out.as_mut_ptr().add(at + 8 * k), w);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn scale_and_minimum() {
        let mut block = [0u8; super::BLOCK_BYTES];
        block[..2].copy_from_slice(&0x3800u16.to_le_bytes()); // d = 0.5
        block[2..4].copy_from_slice(&0xBC00u16.to_le_bytes()); // m = −1
        block[4] = 0x3A; // weight 0: 10; weight 16: 3
        let mut out = [0.0; 32];
        super::dequantize(&block, &mut out);
        assert_eq!(out[0], 4.0);
        assert_eq!(out[16], 0.5);
        assert_eq!(out[31], -1.0);
    }
}
