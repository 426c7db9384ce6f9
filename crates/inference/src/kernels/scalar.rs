//! Portable reference kernels: plain integer arithmetic over the decoded block values, the
//! yardstick every SIMD tier is tested against (integer parts exact, float epilogue within
//! float rounding). Also the tier used where no SIMD tier applies.

use super::blocks::{
    f16_at, q4k_scales_mins, q4k_values, q6k_scales, q6k_values, BlockQ8K, Q4K_BYTES, Q6K_BYTES,
};
use super::groups::{self, LANES, Q4K_GROUP, Q6K_GROUP};

/// `out[r][lane] = row lane · acts[r]` for one group of Q4_K rows (see `groups`).
pub fn q4k_group(w: &[u8], acts: &[&[BlockQ8K]], out: &mut [[f32; LANES]]) {
    for (a, o) in acts.iter().zip(out.iter_mut()) {
        for (lane, o) in o.iter_mut().enumerate() {
            let mut sum = 0f32;
            for (g, a) in w.chunks_exact(Q4K_GROUP).zip(a.iter()) {
                let mut sumi = 0i32;
                let mut summ = 0i32;
                let (d, dmin, _, _) = groups::q4k_header(g, lane, 0);
                for s in 0..8 {
                    let (_, _, sc, mn) = groups::q4k_header(g, lane, s);
                    let dot: i32 = (32 * s..32 * s + 32)
                        .map(|p| groups::q4k_value(g, lane, p) as i32 * a.qs[p] as i32)
                        .sum();
                    sumi += sc as i32 * dot;
                    summ += mn as i32 * (a.bsums[2 * s] as i32 + a.bsums[2 * s + 1] as i32);
                }
                sum += a.d * (d * sumi as f32 - dmin * summ as f32);
            }
            *o = sum;
        }
    }
}

/// `out[r][lane] = row lane · acts[r]` for one group of Q6_K rows.
pub fn q6k_group(w: &[u8], acts: &[&[BlockQ8K]], out: &mut [[f32; LANES]]) {
    for (a, o) in acts.iter().zip(out.iter_mut()) {
        for (lane, o) in o.iter_mut().enumerate() {
            let mut sum = 0f32;
            for (g, a) in w.chunks_exact(Q6K_GROUP).zip(a.iter()) {
                let sumi: i32 = (0..16)
                    .map(|s| {
                        let dot: i32 = (16 * s..16 * s + 16)
                            .map(|p| (groups::q6k_value(g, lane, p) as i32 - 32) * a.qs[p] as i32)
                            .sum();
                        groups::q6k_header(g, lane, s).1 as i32 * dot
                    })
                    .sum();
                sum += a.d * groups::q6k_header(g, lane, 0).0 * sumi as f32;
            }
            *o = sum;
        }
    }
}

/// `w · acts` for one row in the file's own Q4_K blocks: the yardstick for the group
/// kernels, written straight from GGML's block format.
pub fn q4k_dot(w: &[u8], acts: &[BlockQ8K]) -> f32 {
    let mut sum = 0f32;
    for (block, a) in w.chunks_exact(Q4K_BYTES).zip(acts) {
        let (sc, mn) = q4k_scales_mins(&block[4..16]);
        let values = q4k_values(block);
        let mut sumi = 0i32;
        for s in 0..8 {
            let dot: i32 = (0..32)
                .map(|i| values[32 * s + i] as i32 * a.qs[32 * s + i] as i32)
                .sum();
            sumi += sc[s] as i32 * dot;
        }
        let summ: i32 = (0..8)
            .map(|s| mn[s] as i32 * (a.bsums[2 * s] as i32 + a.bsums[2 * s + 1] as i32))
            .sum();
        sum += a.d * (f16_at(block, 0) * sumi as f32 - f16_at(block, 2) * summ as f32);
    }
    sum
}

/// `w · acts` for one row in the file's own Q6_K blocks (the yardstick, as [`q4k_dot`]).
pub fn q6k_dot(w: &[u8], acts: &[BlockQ8K]) -> f32 {
    let mut sum = 0f32;
    for (block, a) in w.chunks_exact(Q6K_BYTES).zip(acts) {
        let sc = q6k_scales(block);
        let values = q6k_values(block);
        let sumi: i32 = (0..16)
            .map(|g| {
                let dot: i32 = (0..16)
                    .map(|i| values[16 * g + i] as i32 * a.qs[16 * g + i] as i32)
                    .sum();
                sc[g] as i32 * dot
            })
            .sum();
        sum += a.d * f16_at(block, 208) * sumi as f32;
    }
    sum
}
