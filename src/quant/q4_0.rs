//! Q4_0: 32 weights as 4-bit integers around 8, one f16 scale.
//! Layout: `d: f16`, `qs: [u8; 16]` — low nibbles are weights 0..16, high nibbles 16..32.
//! Weight = (nibble − 8) · d.

pub const BLOCK_ELEMENTS: usize = 32;
pub const BLOCK_BYTES: usize = 2 + 16;
const _: () = assert!(BLOCK_BYTES == 18);

pub fn dequantize(block: &[u8], out: &mut [f32]) {
    let d = super::f16_at(block, 0);
    let qs = &block[2..18];
    for (j, q) in qs.iter().enumerate() {
        out[j] = (i32::from(q & 0x0F) - 8) as f32 * d;
        out[j + 16] = (i32::from(q >> 4) - 8) as f32 * d;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn nibbles_map_to_weights() {
        let mut block = [0u8; super::BLOCK_BYTES];
        block[..2].copy_from_slice(&0x4000u16.to_le_bytes()); // d = 2
        block[2] = 0xF0; // weight 0: 0 − 8; weight 16: 15 − 8
        let mut out = [0.0; 32];
        super::dequantize(&block, &mut out);
        assert_eq!(out[0], -16.0);
        assert_eq!(out[16], 14.0);
        assert_eq!(out[1], -16.0);
    }
}
