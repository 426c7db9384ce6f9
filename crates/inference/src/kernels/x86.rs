//! Pieces every x86 SIMD tier shares: horizontal sums and the weight prefetch. They need
//! AVX2, FMA and F16C, a subset of each tier's features, so they inline into it (`#[inline]`
//! lets them cross codegen units).

use std::arch::x86_64::*;

use super::PREFETCH;

/// Asks for the weight bytes `PREFETCH` ahead of `p` (the next group blocks: a group's
/// blocks are contiguous), so two cores keep enough reads in flight to stream memory.
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

/// Asks for the one line `PREFETCH` ahead of `p`: called once per 64-byte vector a kernel
/// reads, so the requests are spread over the block instead of issued in one burst.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub fn prefetch_line(p: *const u8) {
    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH) as *const i8);
}
