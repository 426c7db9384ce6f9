//! AVX2 + FMA + F16C kernels (Zen 3 and every x86 host this project has seen), over the same
//! 16-row groups as the AVX-512 tiers, one half (8 rows, 32 bytes of each vector) at a time:
//! 4 values of 8 rows per register, each activation row's 4 values broadcast, their products
//! summed per lane with `vpmaddubsw` + `vpmaddwd` (ones) and scaled per sub-block with
//! `vpmulld`; floats once per 256-value superblock for 8 rows at a time.

use std::arch::x86_64::*;

use super::blocks::BlockQ8K;
use super::groups::{
    LANES, Q4K_D, Q4K_DMIN, Q4K_GROUP, Q4K_MINS, Q4K_QS, Q4K_SCALES, Q6K_D, Q6K_GROUP, Q6K_QH,
    Q6K_QL, Q6K_SCALES,
};
use super::x86::{prefetch, prefetch_line};

/// `out[r][lane] = row lane · acts[r]` for one group of Q4_K rows.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; every `acts[r]` holds `w.len() / Q4K_GROUP` blocks.
pub unsafe fn q4k_group(w: &[u8], acts: &[&[BlockQ8K]], out: &mut [[f32; LANES]]) {
    by_acts!(q4k, w, acts, out)
}

/// `out[r][lane] = row lane · acts[r]` for one group of Q6_K rows.
///
/// # Safety
/// As [`q4k_group`], with `Q6K_GROUP`-byte group blocks.
pub unsafe fn q6k_group(w: &[u8], acts: &[&[BlockQ8K]], out: &mut [[f32; LANES]]) {
    by_acts!(q6k, w, acts, out)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot4(acc: __m256i, w: __m256i, a: __m256i) -> __m256i {
    let ones = _mm256_set1_epi16(1);
    _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(w, a), ones))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn pairs(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
    _mm256_add_epi32(acc, _mm256_madd_epi16(a, b))
}

/// 4 bytes (or 2 i16) at `p` in every 32-bit lane.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn bcast(p: *const u8) -> __m256i {
    // SAFETY: callers pass a pointer with 4 readable bytes.
    _mm256_set1_epi32(unsafe { (p as *const i32).read_unaligned() })
}

/// 32 bytes at `p`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load(p: *const u8) -> __m256i {
    // SAFETY: callers pass a pointer with 32 readable bytes.
    unsafe { _mm256_loadu_si256(p as *const __m256i) }
}

/// 16 bytes at `p`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load16(p: *const u8) -> __m128i {
    // SAFETY: callers pass a pointer with 16 readable bytes.
    unsafe { _mm_loadu_si128(p as *const __m128i) }
}

// `b` indexes the weights' group blocks and every activation row alike.
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "avx2,fma,f16c")]
fn q4k<const R: usize>(w: &[u8], acts: [&[BlockQ8K]; R]) -> [[f32; LANES]; R] {
    let nb = w.len() / Q4K_GROUP;
    for a in &acts {
        assert!(a.len() >= nb);
    }
    let m4 = _mm256_set1_epi8(0x0F);
    // Both halves of a block one after the other: the second reads the lines the first
    // brought into L1.
    let mut acc = [[_mm256_setzero_ps(); R]; 2];
    for b in 0..nb {
        for (half, acc) in acc.iter_mut().enumerate() {
            let at = 32 * half;
            // SAFETY (every pointer below): offsets inside group block b of `w`.
            let g = unsafe { w.as_ptr().add(b * Q4K_GROUP) };
            // The first half brings in every line (each holds both halves).
            if half == 0 {
                prefetch(g, Q4K_QS);
            }
            let a: [&BlockQ8K; R] = std::array::from_fn(|r| &acts[r][b]);
            let mut blk = [_mm256_setzero_si256(); R];
            for j in 0..4 {
                let mut lo = [_mm256_setzero_si256(); R];
                let mut hi = [_mm256_setzero_si256(); R];
                for v in 0..8 {
                    let line = unsafe { g.add(Q4K_QS + 64 * (8 * j + v)) };
                    if half == 0 {
                        prefetch_line(line);
                    }
                    let q = load(unsafe { line.add(at) });
                    let ql = _mm256_and_si256(q, m4);
                    let qh = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
                    for r in 0..R {
                        let x = a[r].qs.as_ptr() as *const u8;
                        // SAFETY: 64j + 32 + 4v + 4 ≤ 256 activation values.
                        let (xl, xh) = unsafe {
                            (
                                bcast(x.add(64 * j + 4 * v)),
                                bcast(x.add(64 * j + 32 + 4 * v)),
                            )
                        };
                        // A sub-block's pair sums stay in i16: 8 vectors of
                        // 2 · 15 · 127 add up to 30,480, inside i16.
                        lo[r] = _mm256_add_epi16(lo[r], _mm256_maddubs_epi16(ql, xl));
                        hi[r] = _mm256_add_epi16(hi[r], _mm256_maddubs_epi16(qh, xh));
                    }
                }
                // Each 32-bit lane's scale in both of its i16 halves: `vpmaddwd` then scales
                // and sums the pairs in one.
                let scale = |s: usize| {
                    // SAFETY: 8 of the 16 scale bytes of sub-block s.
                    let bytes = unsafe {
                        _mm_loadl_epi64(g.add(Q4K_SCALES + 16 * s + 8 * half) as *const _)
                    };
                    let s = _mm256_cvtepu8_epi32(bytes);
                    _mm256_or_si256(s, _mm256_slli_epi32(s, 16))
                };
                let (sl, sh) = (scale(2 * j), scale(2 * j + 1));
                for r in 0..R {
                    blk[r] = pairs(pairs(blk[r], lo[r], sl), hi[r], sh);
                }
            }
            let mut mins = [_mm256_setzero_si256(); R];
            for p in 0..4 {
                let m =
                    _mm256_cvtepu8_epi16(load16(unsafe { g.add(Q4K_MINS + 32 * p + 16 * half) }));
                for r in 0..R {
                    // SAFETY: pairs holds 8 i16; 2p + 2 ≤ 8.
                    let x = unsafe { bcast(a[r].pairs.as_ptr().add(2 * p) as *const u8) };
                    mins[r] = pairs(mins[r], m, x);
                }
            }
            let d = _mm256_cvtph_ps(load16(unsafe { g.add(Q4K_D + 16 * half) }));
            let dmin = _mm256_cvtph_ps(load16(unsafe { g.add(Q4K_DMIN + 16 * half) }));
            for r in 0..R {
                let taken = _mm256_mul_ps(_mm256_cvtepi32_ps(mins[r]), dmin);
                let block = _mm256_fmsub_ps(_mm256_cvtepi32_ps(blk[r]), d, taken);
                acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(a[r].d), block, acc[r]);
            }
        }
    }
    store(acc)
}

// `b` indexes the weights' group blocks and every activation row alike.
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "avx2,fma,f16c")]
fn q6k<const R: usize>(w: &[u8], acts: [&[BlockQ8K]; R]) -> [[f32; LANES]; R] {
    let nb = w.len() / Q6K_GROUP;
    for a in &acts {
        assert!(a.len() >= nb);
    }
    let m4 = _mm256_set1_epi8(0x0F);
    let m30 = _mm256_set1_epi8(0x30);
    let minus32 = _mm256_set1_epi16(-32);
    // Both halves of a block one after the other: the second reads the lines the first
    // brought into L1.
    let mut acc = [[_mm256_setzero_ps(); R]; 2];
    for b in 0..nb {
        for (half, acc) in acc.iter_mut().enumerate() {
            let at = 32 * half;
            // SAFETY (every pointer below): offsets inside group block b of `w`.
            let g = unsafe { w.as_ptr().add(b * Q6K_GROUP) };
            if half == 0 {
                prefetch(unsafe { g.add(Q6K_D) }, Q6K_GROUP - Q6K_D);
            }
            let a: [&BlockQ8K; R] = std::array::from_fn(|r| &acts[r][b]);
            let mut blk = [_mm256_setzero_si256(); R];
            for h in 0..2 {
                for c in 0..2 {
                    let pair = |p: usize| {
                        _mm256_cvtepi8_epi16(load16(unsafe {
                            g.add(Q6K_SCALES + 32 * p + 16 * half)
                        }))
                    };
                    let (pl, ph) = (pair(4 * h + c), pair(4 * h + 2 + c));
                    // The stored values are q + 32: −32 · scale · bsum takes the offset back
                    // out (|32 · scale| ≤ 4,064 fits the i16 pairs).
                    let (nl, nh) = (
                        _mm256_mullo_epi16(pl, minus32),
                        _mm256_mullo_epi16(ph, minus32),
                    );
                    for r in 0..R {
                        let bs = a[r].bsums.as_ptr();
                        // SAFETY: bsums holds 16 i16; the pairs read end at 16.
                        let (xl, xh) = unsafe {
                            (
                                bcast(bs.add(2 * (4 * h + c)) as *const u8),
                                bcast(bs.add(2 * (4 * h + 2 + c)) as *const u8),
                            )
                        };
                        blk[r] = pairs(pairs(blk[r], nl, xl), nh, xh);
                    }
                    let firsts = |p: __m256i| _mm256_srai_epi32(_mm256_slli_epi32(p, 16), 16);
                    let scales = [
                        (firsts(pl), firsts(ph)),
                        (_mm256_srai_epi32(pl, 16), _mm256_srai_epi32(ph, 16)),
                    ];
                    for (sub, (sl, sh)) in scales.into_iter().enumerate() {
                        let mut lo = [_mm256_setzero_si256(); R];
                        let mut hi = [_mm256_setzero_si256(); R];
                        for v in 4 * sub..4 * sub + 4 {
                            let (line, bits_line) = unsafe {
                                (
                                    g.add(Q6K_QL + 64 * (16 * h + 8 * c + v)),
                                    g.add(Q6K_QH + 64 * (8 * h + v)),
                                )
                            };
                            if half == 0 {
                                prefetch_line(line);
                                if c == 0 {
                                    prefetch_line(bits_line);
                                }
                            }
                            let q = load(unsafe { line.add(at) });
                            let bits = load(unsafe { bits_line.add(at) });
                            let (bl, bh) = if c == 0 {
                                (_mm256_slli_epi16(bits, 4), bits)
                            } else {
                                (_mm256_slli_epi16(bits, 2), _mm256_srli_epi16(bits, 2))
                            };
                            let ql =
                                _mm256_or_si256(_mm256_and_si256(q, m4), _mm256_and_si256(bl, m30));
                            let qh = _mm256_or_si256(
                                _mm256_and_si256(_mm256_srli_epi16(q, 4), m4),
                                _mm256_and_si256(bh, m30),
                            );
                            for r in 0..R {
                                let x = a[r].qs.as_ptr() as *const u8;
                                // SAFETY: 128h + 64 + 32c + 4v + 4 ≤ 256.
                                let (xl, xh) = unsafe {
                                    (
                                        bcast(x.add(128 * h + 32 * c + 4 * v)),
                                        bcast(x.add(128 * h + 64 + 32 * c + 4 * v)),
                                    )
                                };
                                lo[r] = dot4(lo[r], ql, xl);
                                hi[r] = dot4(hi[r], qh, xh);
                            }
                        }
                        for r in 0..R {
                            let both = _mm256_add_epi32(
                                _mm256_mullo_epi32(lo[r], sl),
                                _mm256_mullo_epi32(hi[r], sh),
                            );
                            blk[r] = _mm256_add_epi32(blk[r], both);
                        }
                    }
                }
            }
            let d = _mm256_cvtph_ps(load16(unsafe { g.add(Q6K_D + 16 * half) }));
            for r in 0..R {
                let block = _mm256_mul_ps(d, _mm256_cvtepi32_ps(blk[r]));
                acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(a[r].d), block, acc[r]);
            }
        }
    }
    store(acc)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn store<const R: usize>(acc: [[__m256; R]; 2]) -> [[f32; LANES]; R] {
    let mut out = [[0f32; LANES]; R];
    for (half, acc) in acc.iter().enumerate() {
        for r in 0..R {
            // SAFETY: 8 floats at 8 · half inside a 16-float row.
            unsafe { _mm256_storeu_ps(out[r].as_mut_ptr().add(8 * half), acc[r]) };
        }
    }
    out
}
