//! Q6_K: 256 weights as 6-bit integers around 32, in 16 sub-blocks of 16 with signed 8-bit
//! scales and one f16 `d`.
//! Layout: `ql: [u8; 128]` (low 4 bits), `qh: [u8; 64]` (high 2 bits), `scales: [i8; 16]`,
//! `d: f16`. Each half (128 weights) uses 64 bytes of `ql` and 32 of `qh`: weight `l + 32k`
//! (k = 0..4) takes a nibble of `ql[l]` or `ql[l + 32]` and bits `2k..2k+2` of `qh[l]`.
//! Weight = d · scale · (q − 32).

pub const BLOCK_ELEMENTS: usize = 256;
pub const BLOCK_BYTES: usize = 128 + 64 + 16 + 2;
const _: () = assert!(BLOCK_BYTES == 210);

pub fn dequantize(block: &[u8], out: &mut [f32]) {
    let d = super::f16_at(block, 208);
    for half in 0..2 {
        let ql = &block[64 * half..64 * half + 64];
        let qh = &block[128 + 32 * half..128 + 32 * half + 32];
        let sc = &block[192 + 8 * half..192 + 8 * half + 8];
        let y = &mut out[128 * half..128 * half + 128];
        for l in 0..32 {
            let is = l / 16;
            let q = [
                (ql[l] & 0x0F) | ((qh[l] & 0x03) << 4),
                (ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 0x03) << 4),
                (ql[l] >> 4) | (((qh[l] >> 4) & 0x03) << 4),
                (ql[l + 32] >> 4) | (((qh[l] >> 6) & 0x03) << 4),
            ];
            for (k, q) in q.iter().enumerate() {
                let scale = f32::from(sc[is + 2 * k] as i8);
                y[l + 32 * k] = d * scale * (i32::from(*q) - 32) as f32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn six_bits_and_signed_scales() {
        let mut block = [0u8; BLOCK_BYTES];
        block[208..210].copy_from_slice(&0x3C00u16.to_le_bytes()); // d = 1
        block[192] = 2; // scale of weights 0..16
        block[194] = (-1i8) as u8; // scale of weights 32..48
        block[0] = 0x0F; // weight 0 low bits 15
        block[128] = 0b0000_1011; // weight 0 high bits 3; weight 32 high bits 2
        block[32] = 0x01; // weight 32 low bits 1
        let mut out = [0.0; 256];
        dequantize(&block, &mut out);
        assert_eq!(out[0], 2.0 * (63 - 32) as f32);
        assert_eq!(out[32], -((33 - 32) as f32));
        assert_eq!(out[1], 2.0 * -32.0);
    }
}
