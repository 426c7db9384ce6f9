//! AVX2 + FMA + F16C kernels (Zen 3 and every x86 host this project has seen). One weight row
//! against up to four activation rows: the weight's nibbles are unpacked once and reused for
//! each activation row, so a prompt's rows cost one weight read per four tokens.
//!
//! Integer work stays in 16/32-bit lanes (`maddubs` → `madd` with the block's integer
//! scales); floats appear once per 256-value superblock, as in llama.cpp's AVX2 `vec_dot`.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::blocks::{BlockQ8K, Q4K_BYTES, Q6K_BYTES};
use super::x86::{f16_one, f16_pair, hsum8, prefetch, q4k_mins_term, q4k_scales_mins};

/// `out[r] = w · acts[r]` for one row of Q4_K blocks and 1–8 activation rows.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; every `acts[r]` holds `w.len() / 144` blocks.
pub unsafe fn q4k_rows(w: &[u8], acts: &[&[BlockQ8K]], out: &mut [f32]) {
    by_rows!(rows4, q4k, w, acts, out)
}

/// `out[r] = w · acts[r]` for one row of Q6_K blocks and 1–8 activation rows.
///
/// # Safety
/// As [`q4k_rows`], with 210-byte blocks.
pub unsafe fn q6k_rows(w: &[u8], acts: &[&[BlockQ8K]], out: &mut [f32]) {
    by_rows!(rows4, q6k, w, acts, out)
}

/// `pshufb` controls: entry `k` copies 16-bit lane `k` of each 128-bit half to all 8 lanes.
const SPREAD: [[u8; 32]; 8] = {
    let mut t = [[0u8; 32]; 8];
    let mut k = 0;
    while k < 8 {
        let mut i = 0;
        while i < 32 {
            t[k][i] = (2 * k + i % 2) as u8;
            i += 1;
        }
        k += 1;
    }
    t
};

#[target_feature(enable = "avx2,fma,f16c")]
fn spread(k: usize) -> __m256i {
    // SAFETY: 32 bytes of a constant table.
    unsafe { _mm256_loadu_si256(SPREAD[k].as_ptr() as *const __m256i) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q4k<const R: usize>(w: &[u8], acts: [&[BlockQ8K]; R]) -> [f32; R] {
    let nb = w.len() / Q4K_BYTES;
    for a in &acts {
        assert!(a.len() >= nb);
    }
    let m4 = _mm256_set1_epi8(0x0F);
    let mut acc = [_mm256_setzero_ps(); R];
    for i in 0..nb {
        let block = &w[i * Q4K_BYTES..(i + 1) * Q4K_BYTES];
        prefetch(block.as_ptr(), Q4K_BYTES);
        let (d, dmin) = f16_pair(block, 0);
        let (scales, mins) = q4k_scales_mins(&block[4..16]);
        let scales = _mm256_broadcastsi128_si256(scales);
        let mut sumi = [_mm256_setzero_si256(); R];
        for j in 0..4 {
            // SAFETY: 32 bytes at 16 + 32j lie inside the 144-byte block.
            let q =
                unsafe { _mm256_loadu_si256(block.as_ptr().add(16 + 32 * j) as *const __m256i) };
            let lo = _mm256_and_si256(q, m4);
            let hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
            let s_lo = _mm256_shuffle_epi8(scales, spread(2 * j));
            let s_hi = _mm256_shuffle_epi8(scales, spread(2 * j + 1));
            for r in 0..R {
                let qs = acts[r][i].qs.as_ptr();
                // SAFETY: 64j + 64 ≤ 256 values of the activation block.
                let (a_lo, a_hi) = unsafe {
                    (
                        _mm256_loadu_si256(qs.add(64 * j) as *const __m256i),
                        _mm256_loadu_si256(qs.add(64 * j + 32) as *const __m256i),
                    )
                };
                let p_lo = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, a_lo), s_lo);
                let p_hi = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, a_hi), s_hi);
                sumi[r] = _mm256_add_epi32(sumi[r], _mm256_add_epi32(p_lo, p_hi));
            }
        }
        // As the AVX-512 tiers: the mins term in the low lanes of the one accumulator, the
        // block's scales as vectors, only the activation scale broadcast per row.
        let (d, dmin) = (_mm256_set1_ps(d), _mm256_set1_ps(dmin));
        for r in 0..R {
            let a = &acts[r][i];
            let prod = _mm256_zextps128_ps256(q4k_mins_term(mins, a));
            let block = _mm256_fnmadd_ps(dmin, prod, _mm256_mul_ps(d, _mm256_cvtepi32_ps(sumi[r])));
            acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(a.d), block, acc[r]);
        }
    }
    std::array::from_fn(|r| hsum8(acc[r]))
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q6k<const R: usize>(w: &[u8], acts: [&[BlockQ8K]; R]) -> [f32; R] {
    let nb = w.len() / Q6K_BYTES;
    for a in &acts {
        assert!(a.len() >= nb);
    }
    let m4 = _mm256_set1_epi8(0x0F);
    let m2 = _mm256_set1_epi8(0x03);
    let mut acc = [_mm256_setzero_ps(); R];
    for i in 0..nb {
        let block = &w[i * Q6K_BYTES..(i + 1) * Q6K_BYTES];
        prefetch(block.as_ptr(), Q6K_BYTES);
        let p = block.as_ptr();
        let d = f16_one(block, 208);
        let sc = &block[192..208];
        // SAFETY: the 16 scale bytes lie inside the block.
        let scales16 =
            _mm256_cvtepi8_epi16(unsafe { _mm_loadu_si128(p.add(192) as *const __m128i) });
        let mut sumi = [_mm256_setzero_si256(); R];
        for h in 0..2 {
            // SAFETY: ql spans bytes 0..128 and qh 128..192 of the block.
            let (ql0, ql1, bits) = unsafe {
                (
                    _mm256_loadu_si256(p.add(64 * h) as *const __m256i),
                    _mm256_loadu_si256(p.add(64 * h + 32) as *const __m256i),
                    _mm256_loadu_si256(p.add(128 + 32 * h) as *const __m256i),
                )
            };
            let high = |shift: i32| -> __m256i {
                let b = match shift {
                    0 => bits,
                    2 => _mm256_srli_epi16(bits, 2),
                    4 => _mm256_srli_epi16(bits, 4),
                    _ => _mm256_srli_epi16(bits, 6),
                };
                _mm256_slli_epi16(_mm256_and_si256(b, m2), 4)
            };
            let q = [
                _mm256_or_si256(_mm256_and_si256(ql0, m4), high(0)),
                _mm256_or_si256(_mm256_and_si256(ql1, m4), high(2)),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4), high(4)),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4), high(6)),
            ];
            for (k, qk) in q.iter().enumerate() {
                let g = 8 * h + 2 * k;
                let s = _mm256_set_m128i(
                    _mm_set1_epi16(sc[g + 1] as i8 as i16),
                    _mm_set1_epi16(sc[g] as i8 as i16),
                );
                for r in 0..R {
                    // SAFETY: 128h + 32k + 32 ≤ 256 values.
                    let a = unsafe {
                        _mm256_loadu_si256(
                            acts[r][i].qs.as_ptr().add(128 * h + 32 * k) as *const __m256i
                        )
                    };
                    let prod = _mm256_madd_epi16(_mm256_maddubs_epi16(*qk, a), s);
                    sumi[r] = _mm256_add_epi32(sumi[r], prod);
                }
            }
        }
        for r in 0..R {
            let a = &acts[r][i];
            // SAFETY: bsums holds 16 i16.
            let bsums = unsafe { _mm256_loadu_si256(a.bsums.as_ptr() as *const __m256i) };
            // The stored values are q + 32: take 32 · Σ scale · bsum back out.
            let offset = _mm256_slli_epi32(_mm256_madd_epi16(bsums, scales16), 5);
            let total = _mm256_sub_epi32(sumi[r], offset);
            acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(d * a.d), _mm256_cvtepi32_ps(total), acc[r]);
        }
    }
    std::array::from_fn(|r| hsum8(acc[r]))
}
