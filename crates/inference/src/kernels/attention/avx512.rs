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
    widen_q8(row, out);
    out
}

/// Appends Q8_0 rows to `out` as floats.
#[inline]
#[target_feature(enable = "avx512f,f16c")]
fn widen_q8(row: &[BlockQ8_0], out: &mut Vec<f32>) {
    let at = out.len();
    out.reserve(row.len() * 32);
    // SAFETY: `reserve` made room past `at`.
    let dst = unsafe { out.as_mut_ptr().add(at) };
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
    // SAFETY: every one of the `32 · row.len()` floats past `at` was written above.
    unsafe { out.set_len(at + row.len() * 32) };
}

/// Appends f16 rows to `out` as floats.
#[inline]
#[target_feature(enable = "avx512f,f16c")]
fn widen_f16(rows: &[f16], out: &mut Vec<f32>) {
    let at = out.len();
    out.reserve(rows.len());
    let full = rows.len() / 16 * 16;
    // SAFETY: `reserve` made room for `rows.len()` floats past `at`; loads stay in `rows`.
    unsafe {
        let dst = out.as_mut_ptr().add(at);
        for i in (0..full).step_by(16) {
            _mm512_storeu_ps(dst.add(i), load_f16(rows, i));
        }
        for (i, x) in rows.iter().enumerate().skip(full) {
            dst.add(i).write(x.to_f32());
        }
        out.set_len(at + rows.len());
    }
}

/// Appends f32 rows to `out`.
fn widen_f32(rows: &[f32], out: &mut Vec<f32>) {
    out.extend_from_slice(rows);
}

/// `x ← x · sigmoid(x)` (SiLU), with `e^-|x|` so the exponential never overflows.
#[target_feature(enable = "avx512f")]
pub(super) fn silu(xs: &mut [f32]) {
    let one = _mm512_set1_ps(1.0);
    let full = xs.len() / 16 * 16;
    for i in (0..full).step_by(16) {
        let x = load_f32(xs, i);
        let e = exp(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_abs_ps(x)));
        let r = _mm512_div_ps(one, _mm512_add_ps(one, e));
        let negative = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, _mm512_setzero_ps());
        let sigmoid = _mm512_mask_mul_ps(r, negative, r, e);
        // SAFETY: as `load_f32` checked.
        unsafe { _mm512_storeu_ps(xs.as_mut_ptr().add(i), _mm512_mul_ps(x, sigmoid)) };
    }
    super::scalar::silu(&mut xs[full..]);
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

/// Key and value rows per tile: 64 rows of 128 floats (32 KB) stay in L1 while every query
/// vector of the block reads them.
const TILE: usize = 64;

/// Keys scored together: four keys × up to four lane groups keep 16 independent FMA chains.
const KEYS: usize = 4;

/// Query vectors per block this path takes: one to four full vectors of lanes.
pub(super) fn lanes_fit(vecs: usize) -> bool {
    (16..=64).contains(&vecs)
}

/// Scores of `KEYS` keys (rows of `hd` floats in `keys`) against every query vector:
/// `qt` holds the queries transposed (`hd` rows of `16·G` lanes); `out` gets one row of
/// `16·G` scores per key.
#[inline]
#[target_feature(enable = "avx512f")]
fn score_keys<const G: usize>(keys: &[f32], hd: usize, qt: &[f32], out: &mut [f32]) {
    let vpad = 16 * G;
    assert!(keys.len() >= KEYS * hd && qt.len() >= hd * vpad && out.len() >= KEYS * vpad);
    let mut acc = [[_mm512_setzero_ps(); G]; KEYS];
    for d in 0..hd {
        let mut q = [_mm512_setzero_ps(); G];
        for (g, q) in q.iter_mut().enumerate() {
            *q = load_f32(qt, d * vpad + 16 * g);
        }
        for (k, acc) in acc.iter_mut().enumerate() {
            let kd = _mm512_set1_ps(keys[k * hd + d]);
            for g in 0..G {
                acc[g] = _mm512_fmadd_ps(kd, q[g], acc[g]);
            }
        }
    }
    for (k, acc) in acc.iter().enumerate() {
        for (g, a) in acc.iter().enumerate() {
            // SAFETY: row k of `out` holds `vpad` floats (checked above).
            unsafe { _mm512_storeu_ps(out.as_mut_ptr().add(k * vpad + 16 * g), *a) };
        }
    }
}

/// Where [`add_values`] works: the tile's value rows and probabilities (`vpad` lanes per
/// key), and the columns `col..col + 16·C` of query vector `v` (and `v + 1`).
struct ValueSlice<'a> {
    values: &'a [f32],
    hd: usize,
    probs: &'a [f32],
    vpad: usize,
    v: usize,
    col: usize,
}

/// Adds `Σ_k p[k][v] · values[k]` into `acc` rows `v` and `v + 1` (if `PAIR`) over the
/// slice's columns.
#[inline]
#[target_feature(enable = "avx512f")]
fn add_values<const C: usize, const PAIR: bool>(w: &ValueSlice<'_>, acc: &mut [f32]) {
    let (hd, vpad, v, col) = (w.hd, w.vpad, w.v, w.col);
    let n = w.values.len() / hd;
    assert!(w.probs.len() >= n * vpad && acc.len() >= (v + 1 + PAIR as usize) * hd);
    let mut a0 = [_mm512_setzero_ps(); C];
    let mut a1 = [_mm512_setzero_ps(); C];
    for c in 0..C {
        a0[c] = load_f32(acc, v * hd + col + 16 * c);
        if PAIR {
            a1[c] = load_f32(acc, (v + 1) * hd + col + 16 * c);
        }
    }
    for k in 0..n {
        let p0 = _mm512_set1_ps(w.probs[k * vpad + v]);
        let p1 = _mm512_set1_ps(if PAIR { w.probs[k * vpad + v + 1] } else { 0.0 });
        for c in 0..C {
            let x = load_f32(w.values, k * hd + col + 16 * c);
            a0[c] = _mm512_fmadd_ps(p0, x, a0[c]);
            if PAIR {
                a1[c] = _mm512_fmadd_ps(p1, x, a1[c]);
            }
        }
    }
    // SAFETY: `load_f32` checked the same floats of `acc`.
    unsafe {
        for c in 0..C {
            _mm512_storeu_ps(acc.as_mut_ptr().add(v * hd + col + 16 * c), a0[c]);
            if PAIR {
                _mm512_storeu_ps(acc.as_mut_ptr().add((v + 1) * hd + col + 16 * c), a1[c]);
            }
        }
    }
}

/// [`add_values`] for 1–8 chunks of 16 columns.
#[inline]
#[target_feature(enable = "avx512f")]
fn add_values_cols<const PAIR: bool>(w: &ValueSlice<'_>, chunks: usize, acc: &mut [f32]) {
    match chunks {
        1 => add_values::<1, PAIR>(w, acc),
        2 => add_values::<2, PAIR>(w, acc),
        3 => add_values::<3, PAIR>(w, acc),
        4 => add_values::<4, PAIR>(w, acc),
        5 => add_values::<5, PAIR>(w, acc),
        6 => add_values::<6, PAIR>(w, acc),
        7 => add_values::<7, PAIR>(w, acc),
        _ => add_values::<8, PAIR>(w, acc),
    }
}

/// The block with query vectors in vector lanes (16–64 of them: prompt chunks): scores are
/// `key · Qᵀ` rows with no horizontal sums, the softmax runs down the key rows, and each
/// value row is read once per pair of query vectors from a tile widened to f32 once. Same
/// outputs as [`super::attend_body`] (`scratch.acc`, `scratch.sums`, `scratch.maxes`).
#[target_feature(enable = "avx512f,f16c")]
fn attend_lanes<E>(b: &Block<'_, E>, s: &mut Scratch, widen: unsafe fn(&[E], &mut Vec<f32>)) {
    let hd = b.hd;
    let vecs = b.queries.len() / hd;
    let groups = vecs.div_ceil(16);
    let vpad = groups * 16;
    let nkeys = b.keys.len() / b.row;
    let mut qt = std::mem::take(&mut s.transposed);
    qt.clear();
    qt.resize(hd * vpad, 0.0);
    for (v, q) in b.queries.chunks_exact(hd).enumerate() {
        for (d, x) in q.iter().enumerate() {
            qt[d * vpad + v] = *x;
        }
    }
    // Scores, one row of `vpad` lanes per key; tiles padded to whole groups of KEYS keys.
    let mut tile = std::mem::take(&mut s.row);
    s.scores.clear();
    s.scores.resize(nkeys.div_ceil(KEYS) * KEYS * vpad, 0.0);
    for t0 in (0..nkeys).step_by(TILE) {
        let n = TILE.min(nkeys - t0);
        tile.clear();
        // SAFETY: the caller checked this CPU's features for `widen`.
        unsafe { widen(&b.keys[t0 * b.row..(t0 + n) * b.row], &mut tile) };
        tile.resize(n.div_ceil(KEYS) * KEYS * hd, 0.0);
        for k in (0..n).step_by(KEYS) {
            let keys = &tile[k * hd..];
            let out = &mut s.scores[(t0 + k) * vpad..];
            match groups {
                1 => score_keys::<1>(keys, hd, &qt, out),
                2 => score_keys::<2>(keys, hd, &qt, out),
                3 => score_keys::<3>(keys, hd, &qt, out),
                _ => score_keys::<4>(keys, hd, &qt, out),
            }
        }
    }
    s.scores.truncate(nkeys * vpad);
    // Causal mask: key `seen + j` is seen only by the block's rows after its j-th.
    let masked = |k: usize, v: usize| k >= b.seen && v / b.n_rep <= k - b.seen;
    for k in b.seen..nkeys {
        for v in 0..vecs {
            if masked(k, v) {
                s.scores[k * vpad + v] = f32::NEG_INFINITY;
            }
        }
    }
    // Softmax down each lane.
    let mut max = [_mm512_set1_ps(f32::NEG_INFINITY); 4];
    for row in s.scores.chunks_exact(vpad) {
        for (g, m) in max.iter_mut().enumerate().take(groups) {
            *m = _mm512_max_ps(*m, load_f32(row, 16 * g));
        }
    }
    for row in s.scores.chunks_exact_mut(vpad) {
        for (g, m) in max.iter().enumerate().take(groups) {
            let e = exp(_mm512_sub_ps(load_f32(row, 16 * g), *m));
            // SAFETY: as `load_f32` checked.
            unsafe { _mm512_storeu_ps(row.as_mut_ptr().add(16 * g), e) };
        }
    }
    for k in b.seen..nkeys {
        for v in 0..vecs {
            if masked(k, v) {
                s.scores[k * vpad + v] = 0.0;
            }
        }
    }
    let mut sums = [_mm512_setzero_ps(); 4];
    for row in s.scores.chunks_exact(vpad) {
        for (g, sum) in sums.iter_mut().enumerate().take(groups) {
            *sum = _mm512_add_ps(*sum, load_f32(row, 16 * g));
        }
    }
    let mut lanes = [0f32; 64];
    for (g, sum) in sums.iter().enumerate().take(groups) {
        // SAFETY: 16 floats at 16g of 64.
        unsafe { _mm512_storeu_ps(lanes.as_mut_ptr().add(16 * g), *sum) };
    }
    s.sums.clear();
    s.sums.extend_from_slice(&lanes[..vecs]);
    for (g, m) in max.iter().enumerate().take(groups) {
        // SAFETY: as for the sums.
        unsafe { _mm512_storeu_ps(lanes.as_mut_ptr().add(16 * g), *m) };
    }
    s.maxes.clear();
    s.maxes.extend_from_slice(&lanes[..vecs]);
    // Values, a tile at a time, two query vectors per pass over it.
    s.acc.clear();
    s.acc.resize(vecs * hd, 0.0);
    let chunks = hd / 16;
    for t0 in (0..nkeys).step_by(TILE) {
        let n = TILE.min(nkeys - t0);
        tile.clear();
        // SAFETY: as for the keys.
        unsafe { widen(&b.values[t0 * b.row..(t0 + n) * b.row], &mut tile) };
        for col in (0..chunks).step_by(8) {
            let width = 8.min(chunks - col);
            let mut w = ValueSlice {
                values: &tile,
                hd,
                probs: &s.scores[t0 * vpad..(t0 + n) * vpad],
                vpad,
                v: 0,
                col: 16 * col,
            };
            while w.v + 2 <= vecs {
                add_values_cols::<true>(&w, width, &mut s.acc);
                w.v += 2;
            }
            if w.v < vecs {
                add_values_cols::<false>(&w, width, &mut s.acc);
            }
        }
    }
    s.row = tile;
    s.transposed = qt;
}

#[target_feature(enable = "avx512f,f16c")]
pub(super) fn attend_lanes_f32(b: &Block<'_, f32>, s: &mut Scratch) {
    attend_lanes(b, s, widen_f32)
}

#[target_feature(enable = "avx512f,f16c")]
pub(super) fn attend_lanes_f16(b: &Block<'_, f16>, s: &mut Scratch) {
    attend_lanes(b, s, widen_f16)
}

#[target_feature(enable = "avx512f,f16c")]
pub(super) fn attend_lanes_q8(b: &Block<'_, BlockQ8_0>, s: &mut Scratch) {
    attend_lanes(b, s, widen_q8)
}
