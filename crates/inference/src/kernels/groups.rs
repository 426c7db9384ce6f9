//! The packed weight layout every tier reads: 16 weight rows interleaved, one superblock
//! (256 columns) of all 16 at a time, so one 64-byte vector holds 4 consecutive values of
//! each of the 16 rows and a vector instruction computes 16 rows' dot products in its 16
//! lanes. The per-block scale work (converting, scaling, the Q4_K mins and Q6_K's −32) then
//! happens once per 16 rows instead of once per row, which is what the row-at-a-time layout
//! spent half its prompt instructions on (measured below), and no horizontal sum is left.
//!
//! Both layouts are the file's own integer data, moved and not re-quantized: Q4_K groups keep
//! the nibbles, the 6-bit scales and mins as bytes and the f16 `d`/`dmin` (2,368 bytes per 16
//! rows × 256 values, 4.63 bits per weight against the file's 4.5); Q6_K groups keep the low
//! nibbles, the high bit pairs, the i8 scales and the f16 `d` (3,360 bytes, the file's own
//! size, padded to 3,392 so every group block starts on a 64-byte line).
//!
//! Measured on AMD EPYC Zen 5 (AVX-512 VNNI), 2 threads, SmolLM3-3B's matmul shapes, 512
//! activation rows: the row-at-a-time layout did ~215 G multiply-adds/s, this one ~440;
//! `smolbot bench` on the full-size synthetic Q4_K_M file read 512-token prompts at 133 tok/s
//! against 68 (same run), decode unchanged (it reads memory at the same rate).
//!
//! Q4_K group block (offsets in bytes):
//! - `0..32`    `d` of rows 0..16 (f16)
//! - `32..64`   `dmin` of rows 0..16 (f16)
//! - `64..192`  scales: `[sub-block 0..8][row 0..16]` u8
//! - `192..320` mins: `[pair 0..4][row 0..16][2]` u8, sub-blocks `2p` and `2p + 1`
//! - `320..2368` values: 32 vectors `v = 8j + g` of `[row 0..16][4]` bytes, byte `t` holding
//!   value `64j + 4g + t` in its low nibble and `64j + 32 + 4g + t` in its high nibble (the
//!   file's `qs[32j + 4g + t]`, so packing is a 4-byte gather).
//!
//! Q6_K group block:
//! - `0..2048`    low nibbles: 32 vectors `v = 16h + 8c + g` of `[row][4]` bytes, the file's
//!   `ql[64h + 32c + 4g + t]`: low nibble value `128h + 32c + 4g + t`, high nibble that + 64
//! - `2048..3072` high bit pairs: 16 vectors `k = 8h + g` of `[row][4]` bytes, the file's
//!   `qh[32h + 4g + t]`: bits `2c..2c + 2` for the low-nibble value of vector `(h, c, g)`,
//!   bits `2c + 4..2c + 6` for its high-nibble value
//! - `3072..3104` `d` of rows 0..16 (f16)
//! - `3104..3360` scales: `[pair 0..8][row 0..16][2]` i8, sub-blocks (16 values) `2p`, `2p + 1`

use super::blocks::{q4k_scales_mins, Q4K_BYTES, Q6K_BYTES, QK_K};
use super::Quant;

/// Weight rows interleaved in one group (one AVX-512 vector of f32 outputs).
pub const LANES: usize = 16;

/// Bytes of one Q4_K group block (16 rows × 256 values).
pub const Q4K_GROUP: usize = 2368;
pub const Q4K_D: usize = 0;
pub const Q4K_DMIN: usize = 32;
pub const Q4K_SCALES: usize = 64;
pub const Q4K_MINS: usize = 192;
pub const Q4K_QS: usize = 320;

/// Bytes of one Q6_K group block, padded to whole 64-byte lines.
pub const Q6K_GROUP: usize = 3392;
pub const Q6K_QL: usize = 0;
pub const Q6K_QH: usize = 2048;
pub const Q6K_D: usize = 3072;
pub const Q6K_SCALES: usize = 3104;

impl Quant {
    /// Bytes of one group block of this type.
    pub fn group_bytes(self) -> usize {
        match self {
            Quant::Q4K => Q4K_GROUP,
            Quant::Q6K => Q6K_GROUP,
        }
    }
}

/// Writes the group block of superblock `b` for `rows` (1–16 rows of the file's blocks; missing
/// rows stay zero, which dequantizes to 0 and adds nothing) into `out`.
pub fn pack(quant: Quant, rows: &[&[u8]], b: usize, out: &mut [u8]) {
    match quant {
        Quant::Q4K => pack_q4k(rows, b, out),
        Quant::Q6K => pack_q6k(rows, b, out),
    }
}

/// Moves 4-byte pieces: vector `v` of `dst` gets, for each row, the 4 bytes at
/// `src_of(v)` of that row's block.
fn gather(rows: &[&[u8]], vectors: usize, src_of: impl Fn(usize) -> usize, dst: &mut [u8]) {
    for v in 0..vectors {
        let from = src_of(v);
        for (lane, block) in rows.iter().enumerate() {
            let at = 64 * v + 4 * lane;
            dst[at..at + 4].copy_from_slice(&block[from..from + 4]);
        }
    }
}

fn pack_q4k(rows: &[&[u8]], b: usize, out: &mut [u8]) {
    let blocks: Vec<&[u8]> = rows
        .iter()
        .map(|r| &r[b * Q4K_BYTES..(b + 1) * Q4K_BYTES])
        .collect();
    for (lane, block) in blocks.iter().enumerate() {
        out[Q4K_D + 2 * lane..Q4K_D + 2 * lane + 2].copy_from_slice(&block[0..2]);
        out[Q4K_DMIN + 2 * lane..Q4K_DMIN + 2 * lane + 2].copy_from_slice(&block[2..4]);
        let (sc, mn) = q4k_scales_mins(&block[4..16]);
        for s in 0..8 {
            out[Q4K_SCALES + 16 * s + lane] = sc[s];
            out[Q4K_MINS + 32 * (s / 2) + 2 * lane + s % 2] = mn[s];
        }
    }
    gather(
        &blocks,
        32,
        |v| 16 + 32 * (v / 8) + 4 * (v % 8),
        &mut out[Q4K_QS..],
    );
}

fn pack_q6k(rows: &[&[u8]], b: usize, out: &mut [u8]) {
    let blocks: Vec<&[u8]> = rows
        .iter()
        .map(|r| &r[b * Q6K_BYTES..(b + 1) * Q6K_BYTES])
        .collect();
    for (lane, block) in blocks.iter().enumerate() {
        out[Q6K_D + 2 * lane..Q6K_D + 2 * lane + 2].copy_from_slice(&block[208..210]);
        for s in 0..16 {
            out[Q6K_SCALES + 32 * (s / 2) + 2 * lane + s % 2] = block[192 + s];
        }
    }
    // v = 16h + 8c + g reads ql[64h + 32c + 4g]: the same as 4v, since 64h + 32c + 4g = 4v.
    gather(&blocks, 32, |v| 4 * v, &mut out[Q6K_QL..]);
    // k = 8h + g reads qh[32h + 4g] = qh[4k].
    gather(&blocks, 16, |k| 128 + 4 * k, &mut out[Q6K_QH..]);
}

fn f16_of(block: &[u8], at: usize) -> f32 {
    half::f16::from_le_bytes([block[at], block[at + 1]]).to_f32()
}

/// Value `p` (0..256) of row `lane` of a Q4_K group block: 0..=15.
pub fn q4k_value(g: &[u8], lane: usize, p: usize) -> u8 {
    let (j, within) = (p / 64, p % 64);
    let (high, i) = (within / 32, within % 32);
    let byte = g[Q4K_QS + 64 * (8 * j + i / 4) + 4 * lane + i % 4];
    if high == 1 {
        byte >> 4
    } else {
        byte & 0xF
    }
}

/// Value `p` of row `lane` of a Q6_K group block, with the file's +32 offset: 0..=63.
pub fn q6k_value(g: &[u8], lane: usize, p: usize) -> u8 {
    let (h, within) = (p / 128, p % 128);
    let (high, c, i) = (within / 64, (within % 64) / 32, within % 32);
    let at = 4 * lane + i % 4;
    let low = g[Q6K_QL + 64 * (16 * h + 8 * c + i / 4) + at];
    let bits = g[Q6K_QH + 64 * (8 * h + i / 4) + at];
    let nibble = if high == 1 { low >> 4 } else { low & 0xF };
    nibble | (((bits >> (2 * c + 4 * high)) & 3) << 4)
}

/// Q4_K row `lane`'s `d`, `dmin`, scale of sub-block `s` and min of sub-block `s`.
pub fn q4k_header(g: &[u8], lane: usize, s: usize) -> (f32, f32, u8, u8) {
    (
        f16_of(g, Q4K_D + 2 * lane),
        f16_of(g, Q4K_DMIN + 2 * lane),
        g[Q4K_SCALES + 16 * s + lane],
        g[Q4K_MINS + 32 * (s / 2) + 2 * lane + s % 2],
    )
}

/// Q6_K row `lane`'s `d` and the scale of 16-value sub-block `s`.
pub fn q6k_header(g: &[u8], lane: usize, s: usize) -> (f32, i8) {
    (
        f16_of(g, Q6K_D + 2 * lane),
        g[Q6K_SCALES + 32 * (s / 2) + 2 * lane + s % 2] as i8,
    )
}

/// Expands row `lane` of a group (its `nb` group blocks back to back) to f32, with the same
/// arithmetic as GGML's dequantization (the embedding lookup of a quantized table).
pub fn dequantize(quant: Quant, group: &[u8], lane: usize, out: &mut [f32]) {
    let bytes = quant.group_bytes();
    for (g, y) in group.chunks_exact(bytes).zip(out.chunks_exact_mut(QK_K)) {
        for (p, y) in y.iter_mut().enumerate() {
            *y = match quant {
                Quant::Q4K => {
                    let (d, dmin, sc, mn) = q4k_header(g, lane, p / 32);
                    d * sc as f32 * q4k_value(g, lane, p) as f32 - dmin * mn as f32
                }
                Quant::Q6K => {
                    let (d, sc) = q6k_header(g, lane, p / 16);
                    d * sc as f32 * (q6k_value(g, lane, p) as i8 - 32) as f32
                }
            };
        }
    }
}
