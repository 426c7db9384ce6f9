//! Pieces every x86 SIMD tier shares: reading a block's header (f16 scales, Q4_K's packed
//! 6-bit scales and mins), the Q4_K mins term, horizontal sums and the weight prefetch.
//! They need AVX2, FMA and F16C, a subset of each tier's features, so they inline into it
//! (`#[inline]` lets them cross codegen units: without it the scale unpack alone was 9% of a
//! prompt's time, called rather than inlined).

use std::arch::x86_64::*;

use super::blocks::{q4k_scale_words, BlockQ8K};
use super::PREFETCH;

/// Asks for the weight bytes `PREFETCH` ahead of `p` (the next rows when near a row's
/// end: rows are contiguous), so two cores keep enough reads in flight to stream memory.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub fn prefetch(p: *const u8, bytes: usize) {
    let mut at = 0;
    while at < bytes {
        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH + at) as *const i8);
        at += 64;
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub fn hsum4(s: __m128) -> f32 {
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub fn hsum8(v: __m256) -> f32 {
    hsum4(_mm_add_ps(
        _mm256_castps256_ps128(v),
        _mm256_extractf128_ps(v, 1),
    ))
}

/// The block's f16 at `at` as f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub fn f16_one(block: &[u8], at: usize) -> f32 {
    let bits = u16::from_le_bytes([block[at], block[at + 1]]);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

/// The block's two f16 at `at` (Q4_K's d and dmin) as f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub fn f16_pair(block: &[u8], at: usize) -> (f32, f32) {
    let bits = u32::from_le_bytes([block[at], block[at + 1], block[at + 2], block[at + 3]]);
    let v = _mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32));
    (_mm_cvtss_f32(v), _mm_cvtss_f32(_mm_movehdup_ps(v)))
}

/// A Q4_K block's eight scales and eight mins, each as eight i16 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub fn q4k_scales_mins(packed: &[u8]) -> (__m128i, __m128i) {
    let words = q4k_scale_words(packed);
    // SAFETY: `words` is 16 bytes: 8 scales, then 8 mins.
    let all = unsafe { _mm_loadu_si128(words.as_ptr() as *const __m128i) };
    (
        _mm_cvtepu8_epi16(all),
        _mm_cvtepu8_epi16(_mm_srli_si128(all, 8)),
    )
}

/// `Σ min[s] · (bsum[2s] + bsum[2s + 1])` in four float lanes: what Q4_K's mins take back
/// from the products of one activation block.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub fn q4k_mins_term(mins: __m128i, a: &BlockQ8K) -> __m128 {
    // SAFETY: `pairs` holds 8 i16, one 128-bit load.
    let pairs = unsafe { _mm_loadu_si128(a.pairs.as_ptr() as *const __m128i) };
    _mm_cvtepi32_ps(_mm_madd_epi16(mins, pairs))
}
