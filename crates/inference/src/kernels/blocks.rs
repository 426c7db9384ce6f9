//! The byte layouts of the GGML blocks the kernels read: Q4_K and Q6_K weights exactly as a
//! GGUF file stores them, Q8_K, the form activations are quantized to before a matmul, and
//! Q8_0, the form a `--cache-type q8_0` KV cache keeps keys and values in.
//!
//! The kernels read weights interleaved (`groups`), packed from these blocks once at load
//! with their integer parts unchanged; the scalar yardstick reads these blocks directly.

use half::f16;

/// Values per superblock in every K-quant.
pub const QK_K: usize = 256;
/// Bytes of one Q4_K block: f16 d, f16 dmin, 12 bytes of 6-bit scales and mins, 128 of nibbles.
pub const Q4K_BYTES: usize = 144;
/// Bytes of one Q6_K block: 128 low nibbles, 64 of high 2-bit pairs, 16 i8 scales, f16 d.
pub const Q6K_BYTES: usize = 210;

/// One superblock of activations: `x ≈ d · qs`, with the sum of every 16 `qs` precomputed so
/// the weights' offsets (Q4_K mins, Q6_K's −32) cost one multiply per 16 values, and of every
/// 32 (`pairs`, Q4_K's sub-block) so the Q4_K mins take one load and one multiply-add.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct BlockQ8K {
    pub d: f32,
    pub qs: [i8; QK_K],
    pub bsums: [i16; QK_K / 16],
    pub pairs: [i16; QK_K / 32],
}

impl Default for BlockQ8K {
    fn default() -> Self {
        Self {
            d: 0.0,
            qs: [0; QK_K],
            bsums: [0; QK_K / 16],
            pairs: [0; QK_K / 32],
        }
    }
}

/// Quantizes `x` (a multiple of 256 values) into `out`, as llama.cpp's `quantize_row_q8_K`:
/// the value of largest magnitude maps to −127 and rounding is to nearest, ties to even.
pub fn quantize_q8k(x: &[f32], out: &mut [BlockQ8K]) {
    debug_assert_eq!(x.len(), out.len() * QK_K);
    for (xs, y) in x.chunks_exact(QK_K).zip(out.iter_mut()) {
        let mut max = 0f32;
        let mut amax = 0f32;
        for &v in xs {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        if amax == 0.0 {
            *y = BlockQ8K::default();
            continue;
        }
        let iscale = -127.0 / max;
        for (q, &v) in y.qs.iter_mut().zip(xs) {
            *q = nearest_int(iscale * v).min(127) as i8;
        }
        for (s, group) in y.bsums.iter_mut().zip(y.qs.chunks_exact(16)) {
            *s = group.iter().map(|&q| q as i16).sum();
        }
        for (p, two) in y.pairs.iter_mut().zip(y.bsums.chunks_exact(2)) {
            *p = two[0] + two[1];
        }
        y.d = 1.0 / iscale;
    }
}

/// Rounds to nearest, ties to even, for |v| < 2²²: llama.cpp's `nearest_int`, exact like
/// `round_ties_even` in that range but inlined and vectorisable where that one is a libm
/// call (4% of a prompt's time).
/// Values per Q8_0 block.
pub const Q8_0_VALUES: usize = 32;
/// Bytes of one Q8_0 block: f16 scale, 32 signed values.
pub const Q8_0_BYTES: usize = 34;

/// One Q8_0 block as GGML lays it out (`x ≈ d · qs`). Byte-aligned, so a KV cache's `u8`
/// buffer can be read as blocks in place.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct BlockQ8_0 {
    /// The scale's f16 bits, little-endian.
    pub d: [u8; 2],
    pub qs: [i8; Q8_0_VALUES],
}

impl BlockQ8_0 {
    pub fn scale(&self) -> f32 {
        f16::from_le_bytes(self.d).to_f32()
    }
}

/// `bytes` (a whole number of 34-byte blocks) read as Q8_0 blocks.
pub fn q8_0_blocks(bytes: &[u8]) -> &[BlockQ8_0] {
    assert!(
        bytes.len().is_multiple_of(Q8_0_BYTES),
        "Q8_0 data is whole blocks"
    );
    const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == Q8_0_BYTES);
    const _: () = assert!(std::mem::align_of::<BlockQ8_0>() == 1);
    // SAFETY: `BlockQ8_0` is `repr(C)` plain bytes of size 34 and alignment 1, so any 34 bytes
    // are a valid block and the slice covers exactly `bytes`.
    unsafe {
        std::slice::from_raw_parts(bytes.as_ptr() as *const BlockQ8_0, bytes.len() / Q8_0_BYTES)
    }
}

/// Appends `x` (a multiple of 32 values) to `out` as Q8_0 blocks, as llama.cpp's
/// `quantize_row_q8_0`: the value of largest magnitude maps to ±127, rounding to nearest.
pub fn quantize_q8_0(x: &[f32], out: &mut Vec<u8>) {
    debug_assert!(x.len().is_multiple_of(Q8_0_VALUES));
    out.reserve(x.len() / Q8_0_VALUES * Q8_0_BYTES);
    for xs in x.chunks_exact(Q8_0_VALUES) {
        let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d == 0.0 { 0.0 } else { 1.0 / d };
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        out.extend(xs.iter().map(|v| (v * id).round() as i8 as u8));
    }
}

#[inline(always)]
fn nearest_int(v: f32) -> i32 {
    let shifted = v + 12_582_912.0;
    (shifted.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

#[inline(always)]
pub fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

/// The eight 6-bit scales and eight 6-bit mins of a Q4_K block from their 12 packed bytes.
pub fn q4k_scales_mins(packed: &[u8]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut mn = [0u8; 8];
    for j in 0..8 {
        if j < 4 {
            sc[j] = packed[j] & 63;
            mn[j] = packed[j + 4] & 63;
        } else {
            sc[j] = (packed[j + 4] & 0xF) | ((packed[j - 4] >> 6) << 4);
            mn[j] = (packed[j + 4] >> 4) | ((packed[j] >> 6) << 4);
        }
    }
    (sc, mn)
}

/// The 256 unsigned 4-bit values of a Q4_K block in order (0..=15).
pub fn q4k_values(block: &[u8]) -> [u8; QK_K] {
    let qs = &block[16..16 + QK_K / 2];
    let mut v = [0u8; QK_K];
    for j in 0..4 {
        for l in 0..32 {
            v[64 * j + l] = qs[32 * j + l] & 0xF;
            v[64 * j + 32 + l] = qs[32 * j + l] >> 4;
        }
    }
    v
}

/// The 256 signed 6-bit values of a Q6_K block in order (−32..=31).
pub fn q6k_values(block: &[u8]) -> [i8; QK_K] {
    let (ql, qh) = (&block[..128], &block[128..192]);
    let mut v = [0i8; QK_K];
    for h in 0..2 {
        for l in 0..32 {
            let (lo, hi, bits) = (ql[64 * h + l], ql[64 * h + 32 + l], qh[32 * h + l]);
            let at = 128 * h + l;
            v[at] = ((lo & 0xF) | ((bits & 3) << 4)) as i8 - 32;
            v[at + 32] = ((hi & 0xF) | (((bits >> 2) & 3) << 4)) as i8 - 32;
            v[at + 64] = ((lo >> 4) | (((bits >> 4) & 3) << 4)) as i8 - 32;
            v[at + 96] = ((hi >> 4) | (((bits >> 6) & 3) << 4)) as i8 - 32;
        }
    }
    v
}

pub fn q6k_scales(block: &[u8]) -> [i8; 16] {
    std::array::from_fn(|i| block[192 + i] as i8)
}

/// Expands one row of Q4_K blocks to f32 (the embedding lookup of a quantized table).
pub fn dequantize_q4k(row: &[u8], out: &mut [f32]) {
    for (block, y) in row.chunks_exact(Q4K_BYTES).zip(out.chunks_exact_mut(QK_K)) {
        let (d, dmin) = (f16_at(block, 0), f16_at(block, 2));
        let (sc, mn) = q4k_scales_mins(&block[4..16]);
        for (i, (&q, y)) in q4k_values(block).iter().zip(y.iter_mut()).enumerate() {
            let s = i / 32;
            *y = d * sc[s] as f32 * q as f32 - dmin * mn[s] as f32;
        }
    }
}

/// Expands one row of Q6_K blocks to f32.
pub fn dequantize_q6k(row: &[u8], out: &mut [f32]) {
    for (block, y) in row.chunks_exact(Q6K_BYTES).zip(out.chunks_exact_mut(QK_K)) {
        let d = f16_at(block, 208);
        let sc = q6k_scales(block);
        for (i, (&q, y)) in q6k_values(block).iter().zip(y.iter_mut()).enumerate() {
            *y = d * sc[i / 16] as f32 * q as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn nearest_int_equals_round_ties_even_on_the_quantized_range() {
        let mut v = -130.0f32;
        while v <= 130.0 {
            for x in [v, v + 0.5, f32::from_bits(v.to_bits() + 1)] {
                assert_eq!(super::nearest_int(x), x.round_ties_even() as i32, "{x}");
            }
            v += 0.0625 + 1e-3;
        }
    }
}
