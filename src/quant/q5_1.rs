//! Q5_1: 32 weights as 5-bit integers with an f16 scale and an f16 minimum.
//! Layout: `d: f16`, `m: f16`, `qh: u32`, `qs: [u8; 16]`, bits as in Q5_0. Weight = q · d + m.

pub const BLOCK_ELEMENTS: usize = 32;
pub const BLOCK_BYTES: usize = 2 + 2 + 4 + 16;
const _: () = assert!(BLOCK_BYTES == 24);

pub fn dequantize(block: &[u8], out: &mut [f32]) {
    let d = super::f16_at(block, 0);
    let m = super::f16_at(block, 2);
    let qh = u32::from_le_bytes([block[4], block[5], block[6], block[7]]);
    let qs = &block[8..24];
    for (j, q) in qs.iter().enumerate() {
        let hi0 = (((qh >> j) & 1) << 4) as u8;
        let hi1 = (((qh >> (j + 16)) & 1) << 4) as u8;
        out[j] = f32::from((q & 0x0F) | hi0) * d + m;
        out[j + 16] = f32::from((q >> 4) | hi1) * d + m;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn fifth_bit_scale_and_minimum() {
        let mut block = [0u8; super::BLOCK_BYTES];
        block[..2].copy_from_slice(&0x3C00u16.to_le_bytes()); // d = 1
        block[2..4].copy_from_slice(&0x4000u16.to_le_bytes()); // m = 2
        block[4..8].copy_from_slice(&(1u32 << 31).to_le_bytes()); // weight 31 gets 16
        block[8 + 15] = 0xF0; // weight 15: 0; weight 31: 15 | 16
        let mut out = [0.0; 32];
        super::dequantize(&block, &mut out);
        assert_eq!(out[15], 2.0);
        assert_eq!(out[31], 33.0);
    }
}
