//! Portable reference kernels: plain integer arithmetic over the decoded block values, the
//! yardstick every SIMD tier is tested against (integer parts exact, float epilogue within
//! float rounding). Also the tier used where no SIMD tier applies.

use super::blocks::{
    f16_at, q4k_scales_mins, q4k_values, q6k_scales, q6k_values, BlockQ8K, Q4K_BYTES, Q6K_BYTES,
};

/// `out[r] = w · acts[r]` for one row of Q4_K blocks.
pub fn q4k_rows(w: &[u8], acts: &[&[BlockQ8K]], out: &mut [f32]) {
    for (a, o) in acts.iter().zip(out.iter_mut()) {
        *o = q4k_dot(w, a);
    }
}

/// `out[r] = w · acts[r]` for one row of Q6_K blocks.
pub fn q6k_rows(w: &[u8], acts: &[&[BlockQ8K]], out: &mut [f32]) {
    for (a, o) in acts.iter().zip(out.iter_mut()) {
        *o = q6k_dot(w, a);
    }
}

fn q4k_dot(w: &[u8], acts: &[BlockQ8K]) -> f32 {
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

fn q6k_dot(w: &[u8], acts: &[BlockQ8K]) -> f32 {
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
