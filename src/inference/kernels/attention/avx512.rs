//! AVX-512 F attention primitives: 16 floats per vector; `head_dim` a multiple of 16.

use std::arch::x86_64::*;

use half::f16;

use super::{Block, BlockQ8_0, Scratch, EXP_POLY, LN2_HI, LN2_LO, LOG2E, MIN_EXP_ARG};

#[inline]
#[target_feature(enable = "avx512f")]
fn load_f32(p: &[f32], i: usize) -> __m512 {
    debug_assert!(i + 16 <= p.len());
    // SAFETY: callers stay within `p` (a multiple of 16 long, or masked tails).
    unsafe { _mm512_loadu_ps(p.as_ptr().add(i)) }
}

#[inline]
#[target_feature(enable = "avx512f")]
fn load_f16(p: &[f16], i: usize) -> __m512 {
    debug_assert!(i + 16 <= p.len());
    // SAFETY: as for `load_f32`.
    unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(p.as_ptr().add(i) as *const __m256i)) }
}

/// `e^x` for `x ≤ 0`, to about 2 ulp (range reduction by ln 2, degree-6 polynomial).
#[inline]
#[target_feature(enable = "avx512f")]
fn exp(x: __m512) -> __m512 {
    let x = _mm512_max_ps(x, _mm512_set1_ps(MIN_EXP_ARG));
    let n = _mm512_roundscale_ps::<0x08>(_mm512_mul_ps(x, _mm512_set1_ps(LOG2E)));
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
    let mut p = _mm512_set1_ps(EXP_POLY[0]);
    for c in &EXP_POLY[1..] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(*c));
    }
    _mm512_scalef_ps(p, n)
}

/// A Q8_0 row as floats in `out`: per block two 16-value halves widened, converted and scaled.
#[inline]
#[target_feature(enable = "avx512f,f16c")]
fn dequantize<'a>(row: &[BlockQ8_0], out: &'a mut Vec<f32>) -> &'a [f32] {
    out.clear();
    out.reserve(row.len() * 32);
    let dst = out.as_mut_ptr();
    for (i, b) in row.iter().enumerate() {
        // SAFETY: `reserve` made room for 32 floats per block; each block's 32 bytes are read
        // as two 16-byte halves.
        unsafe {
            let d = _mm512_set1_ps(_mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(
                u16::from_le_bytes(b.d),
            )))));
            for h in 0..2 {
                let q = _mm_loadu_si128(b.qs.as_ptr().add(16 * h) as *const __m128i);
                let x = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q));
                _mm512_storeu_ps(dst.add(32 * i + 16 * h), _mm512_mul_ps(d, x));
            }
        }
    }
    // SAFETY: every one of the `32 · row.len()` floats was written above.
    unsafe { out.set_len(row.len() * 32) };
    out
}

macro_rules! products {
    ($dot:ident, $axpy:ident, $elem:ty, $load:ident) => {
        #[inline]
        #[target_feature(enable = "avx512f")]
        fn $dot(q: &[f32], k: &[$elem]) -> f32 {
            let (mut a0, mut a1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
            let mut i = 0;
            while i + 32 <= q.len() {
                a0 = _mm512_fmadd_ps(load_f32(q, i), $load(k, i), a0);
                a1 = _mm512_fmadd_ps(load_f32(q, i + 16), $load(k, i + 16), a1);
                i += 32;
            }
            if i < q.len() {
                a0 = _mm512_fmadd_ps(load_f32(q, i), $load(k, i), a0);
            }
            _mm512_reduce_add_ps(_mm512_add_ps(a0, a1))
        }

        #[inline]
        #[target_feature(enable = "avx512f")]
        fn $axpy(acc: &mut [f32], p: f32, v: &[$elem]) {
            let p = _mm512_set1_ps(p);
            for i in (0..acc.len()).step_by(16) {
                let sum = _mm512_fmadd_ps(p, $load(v, i), load_f32(acc, i));
                // SAFETY: `load_f32` checked the same 16 floats.
                unsafe { _mm512_storeu_ps(acc.as_mut_ptr().add(i), sum) };
            }
        }
    };
}

products!(dot_f32, axpy_f32, f32, load_f32);
products!(dot_f16, axpy_f16, f16, load_f16);

/// The lanes of a tail of `rest` (< 16) values.
fn tail_mask(rest: usize) -> __mmask16 {
    ((1u32 << rest) - 1) as __mmask16
}

#[inline]
#[target_feature(enable = "avx512f")]
fn max(row: &[f32]) -> f32 {
    let mut m = _mm512_set1_ps(f32::NEG_INFINITY);
    let full = row.len() / 16 * 16;
    for i in (0..full).step_by(16) {
        m = _mm512_max_ps(m, load_f32(row, i));
    }
    if full < row.len() {
        let mask = tail_mask(row.len() - full);
        // SAFETY: masked lanes are neither read nor faulted on.
        let x = unsafe { _mm512_maskz_loadu_ps(mask, row.as_ptr().add(full)) };
        m = _mm512_mask_max_ps(m, mask, m, x);
    }
    _mm512_reduce_max_ps(m)
}

#[inline]
#[target_feature(enable = "avx512f")]
fn exp_sum(row: &mut [f32], max: f32) -> f32 {
    let max = _mm512_set1_ps(max);
    let mut sum = _mm512_setzero_ps();
    let full = row.len() / 16 * 16;
    for i in (0..full).step_by(16) {
        let e = exp(_mm512_sub_ps(load_f32(row, i), max));
        // SAFETY: as `load_f32` checked.
        unsafe { _mm512_storeu_ps(row.as_mut_ptr().add(i), e) };
        sum = _mm512_add_ps(sum, e);
    }
    if full < row.len() {
        let mask = tail_mask(row.len() - full);
        // SAFETY: masked lanes are neither read nor written.
        unsafe {
            let p = row.as_mut_ptr().add(full);
            let e = exp(_mm512_sub_ps(_mm512_maskz_loadu_ps(mask, p), max));
            _mm512_mask_storeu_ps(p, mask, e);
            sum = _mm512_mask_add_ps(sum, mask, sum, e);
        }
    }
    _mm512_reduce_add_ps(sum)
}

#[target_feature(enable = "avx512f")]
pub(super) fn attend_f32(b: &Block<'_, f32>, s: &mut Scratch) {
    super::attend_body!(b, s, dot_f32, axpy_f32, max, exp_sum, super::same)
}

#[target_feature(enable = "avx512f")]
pub(super) fn attend_f16(b: &Block<'_, f16>, s: &mut Scratch) {
    super::attend_body!(b, s, dot_f16, axpy_f16, max, exp_sum, super::same)
}

#[target_feature(enable = "avx512f,f16c")]
pub(super) fn attend_q8(b: &Block<'_, BlockQ8_0>, s: &mut Scratch) {
    super::attend_body!(b, s, dot_f32, axpy_f32, max, exp_sum, dequantize)
}
