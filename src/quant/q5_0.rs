//! Q5_0: 32 weights as 5-bit integers around 16, one f16 scale.
//! Layout: `d: f16`, `qh: u32` (bit j = 5th bit of weight j), `qs: [u8; 16]` (low 4 bits:
//! low nibbles weights 0..16, high nibbles 16..32). Weight = (q − 16) · d.

pub const BLOCK_ELEMENTS: usize = 32;
pub const BLOCK_BYTES: usize = 2 + 4 + 16;
const _: () = assert!(BLOCK_BYTES == 22);

pub fn dequantize(block: &[u8], out: &mut [f32]) {
    let d = super::f16_at(block, 0);
    let qh = u32::from_le_bytes([block[2], block[3], block[4], block[5]]);
    let qs = &block[6..22];
    for (j, q) in qs.iter().enumerate() {
        let hi0 = ((qh >> j) & 1) << 4;
        let hi1 = ((qh >> (j + 16)) & 1) << 4;
        out[j] = (i32::from(q & 0x0F) | hi0 as i32) as f32 * d - 16.0 * d;
        out[j + 16] = (i32::from(q >> 4) | hi1 as i32) as f32 * d - 16.0 * d;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn fifth_bit_comes_from_qh() {
        let mut block = [0u8; super::BLOCK_BYTES];
        block[..2].copy_from_slice(&0x3C00u16.to_le_bytes()); // d = 1
        block[2..6].copy_from_slice(&((1u32 << 0) | (1u32 << 17)).to_le_bytes());
        block[6] = 0x21; // weight 0: 1 | 16; weight 16: 2
        block[7] = 0x30; // weight 1: 0; weight 17: 3 | 16
        let mut out = [0.0; 32];
        super::dequantize(&block, &mut out);
        assert_eq!(out[0], 1.0);
        assert_eq!(out[16], -14.0);
        assert_eq!(out[1], -16.0);
        assert_eq!(out[17], 3.0);
    }
}
