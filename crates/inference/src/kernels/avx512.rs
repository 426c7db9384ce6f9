//! AVX-512 kernels, for the Intel Xeon and AMD Zen 4/5 hosts, over 16 interleaved weight rows
//! (`groups`): one 64-byte vector is 4 values of each of the 16 rows, each activation row is
//! 4 values broadcast to every lane, and one `vpdpbusd` adds 16 rows' 4-value dot products
//! into their own 32-bit lanes. A sub-block's sum is multiplied by the 16 rows' scales in one
//! `vpmulld`; the block's floats (d, dmin, the mins, Q6_K's −32) are done once per 16 rows.
//!
//! Two tiers from one body: `vnni` (AVX-512 VNNI: `vpdpbusd`) and `bw` (AVX-512 F + BW only,
//! Intel Skylake-SP: `vpmaddubsw`, `vpmaddwd` with ones, `vpaddd`, the same sum in three).

use std::arch::x86_64::*;

/// One tier's kernels: `$features` to compile them for, `dot4(acc, weights, acts)` adding
/// the u8 × i8 products of each 4-byte lane into `acc`'s 32-bit lanes, and `pairs(acc, a, b)`
/// adding the products of i16 pairs.
macro_rules! avx512_tier {
    ($(#[$doc:meta])* $name:ident, $features:literal, $dot4:path, $pairs:path) => {
        $(#[$doc])*
        pub mod $name {
            use std::arch::x86_64::*;

            use super::super::blocks::BlockQ8K;
            use super::super::groups::{
                LANES, Q4K_D, Q4K_DMIN, Q4K_GROUP, Q4K_MINS, Q4K_QS, Q4K_SCALES, Q6K_D, Q6K_GROUP,
                Q6K_QH, Q6K_QL, Q6K_SCALES,
            };
            use super::super::x86::{prefetch, prefetch_line};

            #[inline]
            #[target_feature(enable = $features)]
            fn dot4(acc: __m512i, w: __m512i, a: __m512i) -> __m512i {
                $dot4(acc, w, a)
            }

            #[inline]
            #[target_feature(enable = $features)]
            fn pairs(acc: __m512i, a: __m512i, b: __m512i) -> __m512i {
                $pairs(acc, a, b)
            }

            /// 4 activation bytes (or 2 i16) at `p`, in every 32-bit lane.
            #[inline]
            #[target_feature(enable = $features)]
            fn bcast(p: *const u8) -> __m512i {
                // SAFETY: callers pass a pointer with 4 readable bytes.
                _mm512_set1_epi32(unsafe { (p as *const i32).read_unaligned() })
            }

            /// `out[r][lane] = row lane · acts[r]` for one group of Q4_K rows.
            ///
            /// # Safety
            /// The CPU must support this tier's features; every `acts[r]` holds
            /// `w.len() / Q4K_GROUP` blocks.
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

            #[target_feature(enable = $features)]
            fn q4k<const R: usize>(w: &[u8], acts: [&[BlockQ8K]; R]) -> [[f32; LANES]; R] {
                let nb = w.len() / Q4K_GROUP;
                for a in &acts {
                    assert!(a.len() >= nb);
                }
                let m4 = _mm512_set1_epi8(0x0F);
                let mut acc = [_mm512_setzero_ps(); R];
                for b in 0..nb {
                    // SAFETY (every load below): offsets inside group block b, whose
                    // Q4K_GROUP bytes lie inside `w`.
                    let g = unsafe { w.as_ptr().add(b * Q4K_GROUP) };
                    prefetch(g, Q4K_QS);
                    let a: [&BlockQ8K; R] = std::array::from_fn(|r| &acts[r][b]);
                    let mut blk = [_mm512_setzero_si512(); R];
                    for j in 0..4 {
                        let mut lo = [_mm512_setzero_si512(); R];
                        let mut hi = [_mm512_setzero_si512(); R];
                        let mut lo2 = [_mm512_setzero_si512(); R];
                        let mut hi2 = [_mm512_setzero_si512(); R];
                        for v in 0..8 {
                            let at = unsafe { g.add(Q4K_QS + 64 * (8 * j + v)) };
                            prefetch_line(at);
                            let q = unsafe { _mm512_loadu_si512(at as *const _) };
                            let ql = _mm512_and_si512(q, m4);
                            let qh = _mm512_and_si512(_mm512_srli_epi16(q, 4), m4);
                            for r in 0..R {
                                let x = a[r].qs.as_ptr() as *const u8;
                                // SAFETY: 64j + 32 + 4v + 4 ≤ 256 activation values.
                                let (xl, xh) = unsafe {
                                    (bcast(x.add(64 * j + 4 * v)), bcast(x.add(64 * j + 32 + 4 * v)))
                                };
                                // One activation row alternates between two sets of sums
                                // (two chains of `vpdpbusd`, not one long one); several
                                // rows are independent chains already.
                                if R > 1 || v % 2 == 0 {
                                    lo[r] = dot4(lo[r], ql, xl);
                                    hi[r] = dot4(hi[r], qh, xh);
                                } else {
                                    lo2[r] = dot4(lo2[r], ql, xl);
                                    hi2[r] = dot4(hi2[r], qh, xh);
                                }
                            }
                        }
                        for r in 0..R {
                            lo[r] = _mm512_add_epi32(lo[r], lo2[r]);
                            hi[r] = _mm512_add_epi32(hi[r], hi2[r]);
                        }
                        let (sl, sh) = unsafe {
                            (
                                _mm512_cvtepu8_epi32(_mm_loadu_si128(g.add(Q4K_SCALES + 32 * j) as *const _)),
                                _mm512_cvtepu8_epi32(_mm_loadu_si128(g.add(Q4K_SCALES + 32 * j + 16) as *const _)),
                            )
                        };
                        for r in 0..R {
                            let both = _mm512_add_epi32(_mm512_mullo_epi32(lo[r], sl), _mm512_mullo_epi32(hi[r], sh));
                            blk[r] = _mm512_add_epi32(blk[r], both);
                        }
                    }
                    let mut mins = [_mm512_setzero_si512(); R];
                    for p in 0..4 {
                        let m = unsafe { _mm512_cvtepu8_epi16(_mm256_loadu_si256(g.add(Q4K_MINS + 32 * p) as *const _)) };
                        for r in 0..R {
                            // SAFETY: pairs holds 8 i16; 2p + 2 ≤ 8.
                            let x = unsafe { bcast(a[r].pairs.as_ptr().add(2 * p) as *const u8) };
                            mins[r] = pairs(mins[r], m, x);
                        }
                    }
                    let (d, dmin) = unsafe {
                        (
                            _mm512_cvtph_ps(_mm256_loadu_si256(g.add(Q4K_D) as *const _)),
                            _mm512_cvtph_ps(_mm256_loadu_si256(g.add(Q4K_DMIN) as *const _)),
                        )
                    };
                    for r in 0..R {
                        let taken = _mm512_mul_ps(_mm512_cvtepi32_ps(mins[r]), dmin);
                        let block = _mm512_fmsub_ps(_mm512_cvtepi32_ps(blk[r]), d, taken);
                        acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(a[r].d), block, acc[r]);
                    }
                }
                store(acc)
            }

            #[target_feature(enable = $features)]
            fn q6k<const R: usize>(w: &[u8], acts: [&[BlockQ8K]; R]) -> [[f32; LANES]; R] {
                let nb = w.len() / Q6K_GROUP;
                for a in &acts {
                    assert!(a.len() >= nb);
                }
                let m4 = _mm512_set1_epi8(0x0F);
                let m30 = _mm512_set1_epi8(0x30);
                let minus32 = _mm512_set1_epi16(-32);
                let mut acc = [_mm512_setzero_ps(); R];
                for b in 0..nb {
                    // SAFETY (every load below): offsets inside group block b.
                    let g = unsafe { w.as_ptr().add(b * Q6K_GROUP) };
                    prefetch(unsafe { g.add(Q6K_QH + 1024) }, Q6K_GROUP - Q6K_QH - 1024);
                    let a: [&BlockQ8K; R] = std::array::from_fn(|r| &acts[r][b]);
                    let mut blk = [_mm512_setzero_si512(); R];
                    for h in 0..2 {
                        for c in 0..2 {
                            // Scale pairs of the low-nibble values' sub-blocks (8h + 2c, +1)
                            // and of the high-nibble values' (8h + 4 + 2c, +1).
                            let (pl, ph) = unsafe {
                                (
                                    _mm512_cvtepi8_epi16(_mm256_loadu_si256(g.add(Q6K_SCALES + 32 * (4 * h + c)) as *const _)),
                                    _mm512_cvtepi8_epi16(_mm256_loadu_si256(g.add(Q6K_SCALES + 32 * (4 * h + 2 + c)) as *const _)),
                                )
                            };
                            // The stored values are q + 32: −32 · scale · bsum takes the
                            // offset back out (|32 · scale| ≤ 4,064 fits the i16 pairs).
                            let (nl, nh) = (_mm512_mullo_epi16(pl, minus32), _mm512_mullo_epi16(ph, minus32));
                            for r in 0..R {
                                let bs = a[r].bsums.as_ptr();
                                // SAFETY: bsums holds 16 i16; the pairs read end at 16.
                                let (xl, xh) = unsafe {
                                    (bcast(bs.add(2 * (4 * h + c)) as *const u8), bcast(bs.add(2 * (4 * h + 2 + c)) as *const u8))
                                };
                                blk[r] = pairs(pairs(blk[r], nl, xl), nh, xh);
                            }
                            let firsts = |p: __m512i| _mm512_srai_epi32(_mm512_slli_epi32(p, 16), 16);
                            let scales = [
                                (firsts(pl), firsts(ph)),
                                (_mm512_srai_epi32(pl, 16), _mm512_srai_epi32(ph, 16)),
                            ];
                            for (half, (sl, sh)) in scales.into_iter().enumerate() {
                                let mut lo = [_mm512_setzero_si512(); R];
                                let mut hi = [_mm512_setzero_si512(); R];
                                let mut lo2 = [_mm512_setzero_si512(); R];
                                let mut hi2 = [_mm512_setzero_si512(); R];
                                for v in 4 * half..4 * half + 4 {
                                    prefetch_line(unsafe { g.add(Q6K_QL + 64 * (16 * h + 8 * c + v)) });
                                    if c == 0 {
                                        prefetch_line(unsafe { g.add(Q6K_QH + 64 * (8 * h + v)) });
                                    }
                                    let (q, bits) = unsafe {
                                        (
                                            _mm512_loadu_si512(g.add(Q6K_QL + 64 * (16 * h + 8 * c + v)) as *const _),
                                            _mm512_loadu_si512(g.add(Q6K_QH + 64 * (8 * h + v)) as *const _),
                                        )
                                    };
                                    // Bits 2c, 2c + 1 of each byte go to 4, 5 (low-nibble
                                    // values); bits 2c + 4, 2c + 5 likewise (high-nibble).
                                    let (bl, bh) = if c == 0 {
                                        (_mm512_slli_epi16(bits, 4), bits)
                                    } else {
                                        (_mm512_slli_epi16(bits, 2), _mm512_srli_epi16(bits, 2))
                                    };
                                    let ql = _mm512_or_si512(_mm512_and_si512(q, m4), _mm512_and_si512(bl, m30));
                                    let qh = _mm512_or_si512(
                                        _mm512_and_si512(_mm512_srli_epi16(q, 4), m4),
                                        _mm512_and_si512(bh, m30),
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
                                        if R > 1 || v % 2 == 0 {
                                            lo[r] = dot4(lo[r], ql, xl);
                                            hi[r] = dot4(hi[r], qh, xh);
                                        } else {
                                            lo2[r] = dot4(lo2[r], ql, xl);
                                            hi2[r] = dot4(hi2[r], qh, xh);
                                        }
                                    }
                                }
                                for r in 0..R {
                                    lo[r] = _mm512_add_epi32(lo[r], lo2[r]);
                                    hi[r] = _mm512_add_epi32(hi[r], hi2[r]);
                                }
                                for r in 0..R {
                                    let both = _mm512_add_epi32(_mm512_mullo_epi32(lo[r], sl), _mm512_mullo_epi32(hi[r], sh));
                                    blk[r] = _mm512_add_epi32(blk[r], both);
                                }
                            }
                        }
                    }
                    let d = unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(g.add(Q6K_D) as *const _)) };
                    for r in 0..R {
                        let block = _mm512_mul_ps(d, _mm512_cvtepi32_ps(blk[r]));
                        acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(a[r].d), block, acc[r]);
                    }
                }
                store(acc)
            }

            #[inline]
            #[target_feature(enable = $features)]
            fn store<const R: usize>(acc: [__m512; R]) -> [[f32; LANES]; R] {
                let mut out = [[0f32; LANES]; R];
                for r in 0..R {
                    // SAFETY: 16 floats.
                    unsafe { _mm512_storeu_ps(out[r].as_mut_ptr(), acc[r]) };
                }
                out
            }
        }
    };
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn maddubs_add(acc: __m512i, w: __m512i, a: __m512i) -> __m512i {
    let ones = _mm512_set1_epi16(1);
    _mm512_add_epi32(acc, _mm512_madd_epi16(_mm512_maddubs_epi16(w, a), ones))
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn madd_add(acc: __m512i, pairs: __m512i, scales: __m512i) -> __m512i {
    _mm512_add_epi32(acc, _mm512_madd_epi16(pairs, scales))
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn dpbusd(acc: __m512i, w: __m512i, a: __m512i) -> __m512i {
    _mm512_dpbusd_epi32(acc, w, a)
}

/// `vpdpwssd` written out: LLVM (no `target-cpu`) splits the intrinsic back into
/// `vpmaddwd` + `vpaddd`, two instructions where VNNI has one; measured on AMD EPYC Zen 5 with
/// a 512-row Q4_K matmul, the split took 41% of the kernel's samples.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn dpwssd(mut acc: __m512i, pairs: __m512i, scales: __m512i) -> __m512i {
    // SAFETY: register-only instruction; the feature is enabled on this function.
    unsafe {
        std::arch::asm!(
            "vpdpwssd {acc}, {pairs}, {scales}",
            acc = inout(zmm_reg) acc,
            pairs = in(zmm_reg) pairs,
            scales = in(zmm_reg) scales,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    acc
}

avx512_tier!(
    /// AVX-512 F + BW (Intel Xeon since Skylake-SP).
    bw,
    "avx512f,avx512bw,avx2,fma,f16c",
    super::maddubs_add,
    super::madd_add
);
avx512_tier!(
    /// AVX-512 F + BW + VNNI (Intel Xeon since Cascade Lake, AMD Zen 4 and later).
    vnni,
    "avx512f,avx512bw,avx512vnni,avx2,fma,f16c",
    super::dpbusd,
    super::dpwssd
);
