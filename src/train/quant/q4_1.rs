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
