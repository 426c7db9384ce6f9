//! AVX-512 kernels, for the Intel Xeon and AMD Zen 4/5 hosts: the AVX2 scheme at twice the
//! width. A Q4_K chunk of 32 weight bytes becomes one 64-value vector (low nibbles, then high
//! nibbles: 64 consecutive positions), so activations are read in their natural order with
//! one 64-byte load; a Q6_K half-block gives two such vectors.
//!
//! Two tiers from one body: `bw` (AVX-512 F + BW: `vpmaddwd` then `vpaddd` per product) and
//! `vnni` (AVX-512 VNNI: `vpdpwssd` does both), one instruction fewer in the inner loop.

use std::arch::x86_64::*;

/// `vpermw` indices that spread 16-bit lanes `first..first + 32 / per` each over `per` lanes.
const fn spread(first: i16, per: usize) -> [i16; 32] {
    let mut idx = [0i16; 32];
    let mut i = 0;
    while i < 32 {
        idx[i] = first + (i / per) as i16;
        i += 1;
    }
    idx
}

const Q4K_SPREAD: [[i16; 32]; 4] = [spread(0, 16), spread(2, 16), spread(4, 16), spread(6, 16)];
const Q6K_SPREAD: [[i16; 32]; 4] = [spread(0, 8), spread(4, 8), spread(8, 8), spread(12, 8)];

#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn load_idx(idx: &[i16; 32]) -> __m512i {
    // SAFETY: 64 bytes.
    unsafe { _mm512_loadu_si512(idx.as_ptr() as *const _) }
}

/// One tier's kernels: `$features` to compile them for, and `dot(acc, pairs, scales)`,
/// which adds the 16-bit `pairs` times the block's 16-bit `scales` into `acc`'s 32-bit lanes.
macro_rules! avx512_tier {
    ($(#[$doc:meta])* $name:ident, $features:literal, $dot:path) => {
        $(#[$doc])*
        pub mod $name {
            use std::arch::x86_64::*;

            use super::super::blocks::{BlockQ8K, Q4K_BYTES, Q6K_BYTES};
            use super::super::x86::{
                f16_one, f16_pair, prefetch, q4k_mins_term, q4k_scales_mins,
            };
            use super::{load_idx, Q4K_SPREAD, Q6K_SPREAD};

            #[inline]
            #[target_feature(enable = $features)]
            fn dot(acc: __m512i, pairs: __m512i, scales: __m512i) -> __m512i {
                $dot(acc, pairs, scales)
            }

        /// `out[r] = w · acts[r]` for one row of Q4_K blocks and 1–8 activation rows.
        ///
        /// # Safety
        /// The CPU must support this tier's features; every `acts[r]` holds
        /// `w.len() / 144` blocks.
        pub unsafe fn q4k_rows(w: &[u8], acts: &[&[BlockQ8K]], out: &mut [f32]) {
            by_rows!(rows8, q4k, w, acts, out)
        }

        /// `out[r] = w · acts[r]` for one row of Q6_K blocks and 1–8 activation rows.
        ///
        /// # Safety
        /// As [`q4k_rows`], with 210-byte blocks.
        pub unsafe fn q6k_rows(w: &[u8], acts: &[&[BlockQ8K]], out: &mut [f32]) {
            by_rows!(rows8, q6k, w, acts, out)
        }

        #[target_feature(enable = $features)]
        fn q4k<const R: usize>(w: &[u8], acts: [&[BlockQ8K]; R]) -> [f32; R] {
            let nb = w.len() / Q4K_BYTES;
            for a in &acts {
                assert!(a.len() >= nb);
            }
            let m4 = _mm512_set1_epi8(0x0F);
            let spreads = [
                load_idx(&Q4K_SPREAD[0]),
                load_idx(&Q4K_SPREAD[1]),
                load_idx(&Q4K_SPREAD[2]),
                load_idx(&Q4K_SPREAD[3]),
            ];
            let mut acc = [_mm512_setzero_ps(); R];
            for i in 0..nb {
                let block = &w[i * Q4K_BYTES..(i + 1) * Q4K_BYTES];
                prefetch(block.as_ptr(), Q4K_BYTES);
                let p = block.as_ptr();
                let (d, dmin) = f16_pair(block, 0);
                let (scales, mins) = q4k_scales_mins(&block[4..16]);
                let scales = _mm512_castsi128_si512(scales);
                let mut sumi = [_mm512_setzero_si512(); R];
                for (j, spread) in spreads.iter().enumerate() {
                    // SAFETY: 32 bytes at 16 + 32j lie inside the 144-byte block.
                    let q = unsafe { _mm256_loadu_si256(p.add(16 + 32 * j) as *const __m256i) };
                    let q = _mm512_inserti64x4(_mm512_castsi256_si512(q), _mm256_srli_epi16(q, 4), 1);
                    let q = _mm512_and_si512(q, m4);
                    let s = _mm512_permutexvar_epi16(*spread, scales);
                    for r in 0..R {
                        // SAFETY: values 64j..64j + 64 of the activation block.
                        let a =
                            unsafe { _mm512_loadu_si512(acts[r][i].qs.as_ptr().add(64 * j) as *const _) };
                        sumi[r] = dot(sumi[r], _mm512_maddubs_epi16(q, a), s);
                    }
                }
                let (d, dmin) = (_mm512_set1_ps(d), _mm512_set1_ps(dmin));
                for r in 0..R {
                    // The mins term joins the products in their low four lanes, and the
                    // block's scales are vectors shared by every row: per row only the
                    // activation scale is broadcast (no second accumulator, no scalar math).
                    let a = &acts[r][i];
                    let prod = _mm512_zextps128_ps512(q4k_mins_term(mins, a));
                    let block = _mm512_fnmadd_ps(dmin, prod, _mm512_mul_ps(d, _mm512_cvtepi32_ps(sumi[r])));
                    acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(a.d), block, acc[r]);
                }
            }
            let mut out = [0f32; R];
            for r in 0..R {
                out[r] = _mm512_reduce_add_ps(acc[r]);
            }
            out
        }

        #[target_feature(enable = $features)]
        fn q6k<const R: usize>(w: &[u8], acts: [&[BlockQ8K]; R]) -> [f32; R] {
            let nb = w.len() / Q6K_BYTES;
            for a in &acts {
                assert!(a.len() >= nb);
            }
            let m4 = _mm512_set1_epi8(0x0F);
            let m2 = _mm512_set1_epi8(0x03);
            let spreads = [
                load_idx(&Q6K_SPREAD[0]),
                load_idx(&Q6K_SPREAD[1]),
                load_idx(&Q6K_SPREAD[2]),
                load_idx(&Q6K_SPREAD[3]),
            ];
            let mut acc = [_mm512_setzero_ps(); R];
            for i in 0..nb {
                let block = &w[i * Q6K_BYTES..(i + 1) * Q6K_BYTES];
                prefetch(block.as_ptr(), Q6K_BYTES);
                let p = block.as_ptr();
                let d = f16_one(block, 208);
                // SAFETY: the 16 scale bytes lie inside the block.
                let scales16 =
                    _mm256_cvtepi8_epi16(unsafe { _mm_loadu_si128(p.add(192) as *const __m128i) });
                let scales = _mm512_castsi256_si512(scales16);
                let mut sumi = [_mm512_setzero_si512(); R];
                for h in 0..2 {
                    // SAFETY: ql spans bytes 0..128 and qh 128..192 of the block.
                    let (ql, bits) = unsafe {
                        (
                            _mm512_loadu_si512(p.add(64 * h) as *const _),
                            _mm256_loadu_si256(p.add(128 + 32 * h) as *const __m256i),
                        )
                    };
                    // Positions 128h..128h + 64 take bits 0–1 then 2–3 of qh; the next 64 bits 4–5, 6–7.
                    let bits =
                        _mm512_inserti64x4(_mm512_castsi256_si512(bits), _mm256_srli_epi16(bits, 2), 1);
                    let high_lo = _mm512_slli_epi16(_mm512_and_si512(bits, m2), 4);
                    let high_hi = _mm512_slli_epi16(_mm512_and_si512(_mm512_srli_epi16(bits, 4), m2), 4);
                    let q = [
                        _mm512_or_si512(_mm512_and_si512(ql, m4), high_lo),
                        _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(ql, 4), m4), high_hi),
                    ];
                    for (k, qk) in q.iter().enumerate() {
                        let m = 2 * h + k;
                        let s = _mm512_permutexvar_epi16(spreads[m], scales);
                        for r in 0..R {
                            // SAFETY: values 64m..64m + 64 of the activation block.
                            let a = unsafe {
                                _mm512_loadu_si512(acts[r][i].qs.as_ptr().add(64 * m) as *const _)
                            };
                            sumi[r] = dot(sumi[r], _mm512_maddubs_epi16(*qk, a), s);
                        }
                    }
                }
                let d = _mm512_set1_ps(d);
                for r in 0..R {
                    let a = &acts[r][i];
                    // SAFETY: bsums holds 16 i16.
                    let bsums = unsafe { _mm256_loadu_si256(a.bsums.as_ptr() as *const __m256i) };
                    // The stored values are q + 32: take 32 · Σ scale · bsum back out.
                    let offset = _mm256_slli_epi32(_mm256_madd_epi16(bsums, scales16), 5);
                    let total = _mm512_sub_epi32(sumi[r], _mm512_zextsi256_si512(offset));
                    let block = _mm512_mul_ps(d, _mm512_cvtepi32_ps(total));
                    acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(a.d), block, acc[r]);
                }
            }
            let mut out = [0f32; R];
            for r in 0..R {
                out[r] = _mm512_reduce_add_ps(acc[r]);
            }
            out
        }
        }
    };
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn madd_add(acc: __m512i, pairs: __m512i, scales: __m512i) -> __m512i {
    _mm512_add_epi32(acc, _mm512_madd_epi16(pairs, scales))
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
    super::madd_add
);
avx512_tier!(
    /// AVX-512 F + BW + VNNI (Intel Xeon since Cascade Lake, AMD Zen 4 and later).
    vnni,
    "avx512f,avx512bw,avx512vnni,avx2,fma,f16c",
    super::dpwssd
);
