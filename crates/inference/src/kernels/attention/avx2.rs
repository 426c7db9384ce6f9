//! AVX2 + FMA + F16C attention primitives: 8 floats per vector; `head_dim` a multiple of 8.

use std::arch::x86_64::*;

use half::f16;

use super::{Block, BlockQ8_0, Scratch, EXP_POLY, LN2_HI, LN2_LO, LOG2E, MIN_EXP_ARG};
use crate::kernels::x86::hsum8;

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load_f32(p: &[f32], i: usize) -> __m256 {
    debug_assert!(i + 8 <= p.len());
    // SAFETY: callers stay within `p` (full vectors only; tails are scalar).
    unsafe { _mm256_loadu_ps(p.as_ptr().add(i)) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load_f16(p: &[f16], i: usize) -> __m256 {
    debug_assert!(i + 8 <= p.len());
    // SAFETY: as for `load_f32`.
    unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.as_ptr().add(i) as *const __m128i)) }
}

/// `e^x` for `x ≤ 0`, as the AVX-512 tier's, with `2^n` built in the exponent bits.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn exp(x: __m256) -> __m256 {
    let x = _mm256_max_ps(x, _mm256_set1_ps(MIN_EXP_ARG));
    let n = _mm256_round_ps::<0x08>(_mm256_mul_ps(x, _mm256_set1_ps(LOG2E)));
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
    let mut p = _mm256_set1_ps(EXP_POLY[0]);
    for c in &EXP_POLY[1..] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(*c));
    }
    let bits = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
    _mm256_mul_ps(p, _mm256_castsi256_ps(_mm256_slli_epi32::<23>(bits)))
}

/// A Q8_0 row as floats in `out`: per block four 8-value quarters widened, converted and scaled.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dequantize<'a>(row: &[BlockQ8_0], out: &'a mut Vec<f32>) -> &'a [f32] {
    out.clear();
    out.reserve(row.len() * 32);
    let dst = out.as_mut_ptr();
    for (i, b) in row.iter().enumerate() {
        // SAFETY: `reserve` made room for 32 floats per block; each block's 32 bytes are read
        // as four 8-byte quarters.
        unsafe {
            let d = _mm256_set1_ps(_mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(
                u16::from_le_bytes(b.d),
            )))));
            for h in 0..4 {
                let q = _mm_loadl_epi64(b.qs.as_ptr().add(8 * h) as *const __m128i);
                let x = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q));
                _mm256_storeu_ps(dst.add(32 * i + 8 * h), _mm256_mul_ps(d, x));
            }
        }
    }
    // SAFETY: every one of the `32 · row.len()` floats was written above.
    unsafe { out.set_len(row.len() * 32) };
    out
}

/// `x ← x · sigmoid(x)` (SiLU), with `e^-|x|` so the exponential never overflows.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn silu(xs: &mut [f32]) {
    let one = _mm256_set1_ps(1.0);
    let sign = _mm256_set1_ps(-0.0);
    let full = xs.len() / 8 * 8;
    for i in (0..full).step_by(8) {
        let x = load_f32(xs, i);
        let e = exp(_mm256_or_ps(x, sign));
        let r = _mm256_div_ps(one, _mm256_add_ps(one, e));
        let negative = _mm256_cmp_ps::<_CMP_LT_OQ>(x, _mm256_setzero_ps());
        let sigmoid = _mm256_blendv_ps(r, _mm256_mul_ps(r, e), negative);
        // SAFETY: as `load_f32` checked.
        unsafe { _mm256_storeu_ps(xs.as_mut_ptr().add(i), _mm256_mul_ps(x, sigmoid)) };
    }
    super::scalar::silu(&mut xs[full..]);
}

macro_rules! products {
    ($dot:ident, $axpy:ident, $elem:ty, $load:ident) => {
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c")]
        fn $dot(q: &[f32], k: &[$elem]) -> f32 {
            let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            let mut i = 0;
            while i + 16 <= q.len() {
                a0 = _mm256_fmadd_ps(load_f32(q, i), $load(k, i), a0);
                a1 = _mm256_fmadd_ps(load_f32(q, i + 8), $load(k, i + 8), a1);
                i += 16;
            }
            if i < q.len() {
                a0 = _mm256_fmadd_ps(load_f32(q, i), $load(k, i), a0);
            }
            hsum8(_mm256_add_ps(a0, a1))
        }

        #[inline]
        #[target_feature(enable = "avx2,fma,f16c")]
        fn $axpy(acc: &mut [f32], p: f32, v: &[$elem]) {
            let p = _mm256_set1_ps(p);
            for i in (0..acc.len()).step_by(8) {
                let sum = _mm256_fmadd_ps(p, $load(v, i), load_f32(acc, i));
                // SAFETY: `load_f32` checked the same 8 floats.
                unsafe { _mm256_storeu_ps(acc.as_mut_ptr().add(i), sum) };
            }
        }
    };
}

products!(dot_f32, axpy_f32, f32, load_f32);
products!(dot_f16, axpy_f16, f16, load_f16);

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn max(row: &[f32]) -> f32 {
    let mut m = _mm256_set1_ps(f32::NEG_INFINITY);
    let full = row.len() / 8 * 8;
    for i in (0..full).step_by(8) {
        m = _mm256_max_ps(m, load_f32(row, i));
    }
    let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    let m = _mm_max_ss(m, _mm_movehdup_ps(m));
    row[full..].iter().copied().fold(_mm_cvtss_f32(m), f32::max)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn exp_sum(row: &mut [f32], max: f32) -> f32 {
    let m = _mm256_set1_ps(max);
    let mut sum = _mm256_setzero_ps();
    let full = row.len() / 8 * 8;
    for i in (0..full).step_by(8) {
        let e = exp(_mm256_sub_ps(load_f32(row, i), m));
        // SAFETY: as `load_f32` checked.
        unsafe { _mm256_storeu_ps(row.as_mut_ptr().add(i), e) };
        sum = _mm256_add_ps(sum, e);
    }
    let mut total = hsum8(sum);
    for s in &mut row[full..] {
        *s = (*s - max).exp();
        total += *s;
    }
    total
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn attend_f32(b: &Block<'_, f32>, s: &mut Scratch) {
    super::attend_body!(b, s, dot_f32, axpy_f32, max, exp_sum, super::same)
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn attend_f16(b: &Block<'_, f16>, s: &mut Scratch) {
    super::attend_body!(b, s, dot_f16, axpy_f16, max, exp_sum, super::same)
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn attend_q8(b: &Block<'_, BlockQ8_0>, s: &mut Scratch) {
    super::attend_body!(b, s, dot_f32, axpy_f32, max, exp_sum, dequantize)
}
