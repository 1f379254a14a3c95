//! Q4_K: 256 weights in 8 sub-blocks of 32, 4-bit values; each sub-block has a 6-bit scale and
//! a 6-bit minimum, themselves scaled by the super-block's f16 `d` and `dmin`.
//! Layout: `d: f16`, `dmin: f16`, `scales: [u8; 12]` (8 scales + 8 minimums, 6 bits each,
//! packed), `qs: [u8; 128]`. Each 64 weights use 32 bytes of `qs`: low nibbles for the first 32,
//! high nibbles for the next 32. Weight = d · scale · q − dmin · min.

pub const BLOCK_ELEMENTS: usize = 256;
pub const BLOCK_BYTES: usize = 2 + 2 + 12 + 128;
const _: () = assert!(BLOCK_BYTES == 144);

/// The 6-bit scale and minimum of sub-block `j` (0..8) from the packed 12 bytes. Sub-blocks
/// 0..4 keep theirs in the low 6 bits of bytes 0..4 (scales) and 4..8 (minimums); sub-blocks
/// 4..8 split theirs between a nibble of bytes 8..12 and the top 2 bits of bytes 0..8.
pub fn scale_min(j: usize, scales: &[u8]) -> (u8, u8) {
    if j < 4 {
        (scales[j] & 63, scales[j + 4] & 63)
    } else {
        (
            (scales[j + 4] & 0x0F) | ((scales[j - 4] >> 6) << 4),
            (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4),
        )
    }
}

/// For 64-weight chunk `chunk` (0..4) of a Q4_K/Q5_K block (which share the `d`, `dmin`,
/// `scales` header): the effective (scale, minimum) of its first and second 32 weights.
pub fn chunk_scales(block: &[u8], chunk: usize) -> [(f32, f32); 2] {
    let d = super::f16_at(block, 0);
    let dmin = super::f16_at(block, 2);
    let scales = &block[4..16];
    [2 * chunk, 2 * chunk + 1].map(|j| {
        let (sc, m) = scale_min(j, scales);
        (d * f32::from(sc), dmin * f32::from(m))
    })
}

pub fn dequantize(block: &[u8], out: &mut [f32]) {
    let qs = &block[16..144];
    for chunk in 0..4 {
        let q = &qs[32 * chunk..32 * chunk + 32];
        let [(d0, min0), (d1, min1)] = chunk_scales(block, chunk);
        let y = &mut out[64 * chunk..64 * chunk + 64];
        for l in 0..32 {
            y[l] = d0 * f32::from(q[l] & 0x0F) - min0;
            y[l + 32] = d1 * f32::from(q[l] >> 4) - min1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_scales_unpack() {
        let mut scales = [0u8; 12];
        scales[0] = 0b11_000101; // sub-block 0 scale 5; top bits feed sub-block 4's scale
        scales[4] = 0b01_000111; // sub-block 0 min 7; top bits feed sub-block 4's min
        scales[8] = 0x92; // sub-block 4: scale low nibble 2, min low nibble 9
        assert_eq!(scale_min(0, &scales), (5, 7));
        assert_eq!(scale_min(4, &scales), (2 | (3 << 4), 9 | (1 << 4)));
    }

    #[test]
    fn weights_use_scale_and_minimum() {
        let mut block = [0u8; BLOCK_BYTES];
        block[..2].copy_from_slice(&0x3C00u16.to_le_bytes()); // d = 1
        block[2..4].copy_from_slice(&0x3800u16.to_le_bytes()); // dmin = 0.5
        block[4] = 3; // sub-block 0 scale 3
        block[5] = 2; // sub-block 1 scale 2
        block[8] = 4; // sub-block 0 min 4
        block[16] = 0x52; // weight 0: 2; weight 32: 5
        let mut out = [0.0; 256];
        dequantize(&block, &mut out);
        assert_eq!(out[0], 3.0 * 2.0 - 0.5 * 4.0);
        assert_eq!(out[32], 2.0 * 5.0);
    }
}
