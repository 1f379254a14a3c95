//! Q5_K: 256 weights in 8 sub-blocks of 32, 5-bit values, scales and minimums as in Q4_K.
//! Layout: `d: f16`, `dmin: f16`, `scales: [u8; 12]`, `qh: [u8; 32]`, `qs: [u8; 128]`. The low 4
//! bits come from `qs` as in Q4_K; bit `2c` / `2c + 1` of `qh[l]` is the 5th bit of weight `l`
//! of the first / second half of 64-weight chunk `c`. Weight = d · scale · q − dmin · min.

use super::q4_k::chunk_scales;

pub const BLOCK_ELEMENTS: usize = 256;
pub const BLOCK_BYTES: usize = 2 + 2 + 12 + 32 + 128;
const _: () = assert!(BLOCK_BYTES == 176);

pub fn dequantize(block: &[u8], out: &mut [f32]) {
    let qh = &block[16..48];
    let qs = &block[48..176];
    for chunk in 0..4 {
        let q = &qs[32 * chunk..32 * chunk + 32];
        let [(d0, min0), (d1, min1)] = chunk_scales(block, chunk);
        let (bit0, bit1) = (1u8 << (2 * chunk), 2u8 << (2 * chunk));
        let y = &mut out[64 * chunk..64 * chunk + 64];
        for l in 0..32 {
            let hi0 = if qh[l] & bit0 != 0 { 16 } else { 0 };
            let hi1 = if qh[l] & bit1 != 0 { 16 } else { 0 };
            y[l] = d0 * f32::from((q[l] & 0x0F) + hi0) - min0;
            y[l + 32] = d1 * f32::from((q[l] >> 4) + hi1) - min1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifth_bits_by_chunk() {
        let mut block = [0u8; BLOCK_BYTES];
        block[..2].copy_from_slice(&0x3C00u16.to_le_bytes()); // d = 1
        block[4..8].fill(1); // scales of sub-blocks 0..4 = 1
        block[12] = 0x11; // sub-blocks 4 and 5: scale low nibble 1
        block[13] = 0x11; // sub-blocks 6 and 7
        block[16] = 0b0000_0110; // weight 0: chunk 0 second half, chunk 1 first half
        let mut out = [0.0; 256];
        dequantize(&block, &mut out);
        assert_eq!(out[0], 0.0);
        assert_eq!(out[32], 16.0);
        assert_eq!(out[64], 16.0);
        assert_eq!(out[96], 0.0);
    }
}
