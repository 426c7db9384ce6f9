//! Causal attention of a sequence's new rows over its KV cache (f32, f16 or Q8_0), on the
//! kernels' pool, for prompt chunks and decode alike.
//!
//! Through candle, each layer's attention is two gemm calls and a softmax on rayon's threads,
//! which then compete with this pool's spinning workers for the same cores; and candle's
//! softmax takes a scalar `exp` per score. Measured on SmolLM3-3B, 2 threads, AMD EPYC Zen 5:
//! decode after a 512-token prompt ran 15–20% slower than after a 4-token one, a 4,096-token
//! prompt was read at 28 tok/s against 53 for llama.cpp, and decode at 4k context ran at
//! 0.91× llama.cpp's (SSE-width dot products over the cache).
//!
//! Work is split in blocks of up to [`BLOCK_ROWS`] query rows of one KV head: every query head
//! sharing that KV head (grouped-query attention) and every row of the block read each cached
//! key and value row once, with no copy of the cache. Blocks are handed out largest first
//! (causal rows see more keys the later they are), from a shared counter.
//!
//! On AVX-512, a block of 16–64 query vectors (prompt chunks) puts the vectors in the lanes:
//! each key row is broadcast against the transposed queries, so no score needs a horizontal
//! sum, the softmax runs down whole vectors, and key and value tiles are widened to f32 once
//! for every vector of the block. That took a 4,096-token prompt from 53.7 to 63.2 tok/s
//! (attention from about a third of the time to 12%; Zen 5, 2 threads, f16 cache). Decode
//! (one row, 4 vectors) keeps the per-vector dot products.

use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::{CpuStorage, CustomOp3, Layout, Shape};
use half::f16;

use super::blocks::{q8_0_blocks, BlockQ8_0, Q8_0_BYTES, Q8_0_VALUES};
use super::{pool, Out, Tier};

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;

/// Query rows per block: 8 rows × 4 query heads of SmolLM3 is 32 query vectors (16 KB), which
/// stay in L1 while each key and value row is read once for all of them.
const BLOCK_ROWS: usize = 8;

/// `softmax(q·Kᵀ · scale + causal mask) · V`. Inputs: `q` `(1, n_head, t, head_dim)`
/// contiguous; the cache views `(1, n_kv, len, head_dim)` with any stride between heads, holding
/// the `t` new rows last (row `i` is position `len - t + i` and sees keys `0..=len - t + i`).
/// Output `(1, t, n_head · head_dim)`, rows by position then head, as the output projection reads.
pub struct Attention {
    pub n_head: usize,
    pub n_kv: usize,
    pub head_dim: usize,
    pub scale: f32,
    /// Which SIMD code runs it; tiers whose vectors do not divide `head_dim` run the scalar code.
    pub tier: Tier,
}

/// One block's inputs: its query vectors (row-major by block row, then query head, already
/// scaled), its KV head's keys and values for every position any of its rows sees, and how
/// many keys its first row sees (each later row sees one more).
struct Block<'a, E> {
    queries: &'a [f32],
    keys: &'a [E],
    values: &'a [E],
    hd: usize,
    /// Elements of `E` per cached key or value row (`hd`, or `hd / 32` Q8_0 blocks).
    row: usize,
    n_rep: usize,
    seen: usize,
}

/// A worker's buffers, reused across its blocks.
#[derive(Default)]
struct Scratch {
    queries: Vec<f32>,
    scores: Vec<f32>,
    sums: Vec<f32>,
    /// Each query vector's largest score in the block (`sums` and `acc` are relative to it).
    maxes: Vec<f32>,
    acc: Vec<f32>,
    /// The running `acc`, `sums` and `maxes` over the key tiles of a long context.
    total: Tiles,
    /// A dequantized key or value row, or a tile of them widened to f32.
    row: Vec<f32>,
    /// The block's queries transposed (`head_dim` rows of query vectors), for the AVX-512
    /// path that puts query vectors in vector lanes.
    transposed: Vec<f32>,
}

/// Keys per pass of a block over the cache. Longer contexts are read a tile at a time with the
/// softmax carried from tile to tile (each tile's sums and values rescaled to the running
/// maximum, as flash attention does), so a block's scores take at most 32 query vectors ×
/// 4,096 keys × 4 bytes = 512 KB (inside L2) however long the context: at 64k keys one pass
/// over all of them took 8 MB per thread, at 128k 16 MB. Contexts up to one tile run exactly
/// as before. Small in unit tests, so their shapes cross tiles.
const KEY_TILE: usize = if cfg!(test) { 64 } else { 4096 };

/// The softmax state carried across key tiles for each query vector of a block.
#[derive(Default)]
struct Tiles {
    acc: Vec<f32>,
    sums: Vec<f32>,
    maxes: Vec<f32>,
}

impl Tiles {
    fn start(&mut self, vecs: usize, hd: usize) {
        self.acc.clear();
        self.acc.resize(vecs * hd, 0.0);
        self.sums.clear();
        self.sums.resize(vecs, 0.0);
        self.maxes.clear();
        self.maxes.resize(vecs, f32::NEG_INFINITY);
    }

    /// Folds one tile's results (relative to its own maxima) into the running ones.
    fn add(&mut self, acc: &[f32], sums: &[f32], maxes: &[f32], hd: usize) {
        let tile = acc.chunks_exact(hd).zip(sums).zip(maxes);
        let total = self
            .acc
            .chunks_exact_mut(hd)
            .zip(&mut self.sums)
            .zip(&mut self.maxes);
        for (((acc, &sum), &max), ((total, total_sum), total_max)) in tile.zip(total) {
            let new = total_max.max(max);
            // The first tile: nothing to rescale (and −∞ − −∞ would be NaN).
            let old = if *total_max == f32::NEG_INFINITY {
                0.0
            } else {
                (*total_max - new).exp()
            };
            let this = (max - new).exp();
            for (t, a) in total.iter_mut().zip(acc) {
                *t = *t * old + a * this;
            }
            *total_sum = *total_sum * old + sum * this;
            *total_max = new;
        }
    }
}

/// A cached row as stored, for element types the primitives read directly.
#[inline(always)]
fn same<'a, E>(row: &'a [E], _: &mut Vec<f32>) -> &'a [E] {
    row
}

/// The body every tier shares: scores of every query vector against every key, a softmax per
/// vector over the keys its row sees, and the unnormalised weighted sum of values into
/// `scratch.acc` with `scratch.sums` the softmax denominators and `scratch.maxes` the scores
/// they are relative to. Expanded in each tier's module,
/// where `dot`, `axpy`, `max` and `exp_sum` are that tier's primitives and `row(stored, buf)`
/// gives a cached row as they read it: itself ([`same`]), or dequantized into `buf` once for
/// every query vector of the block (Q8_0).
macro_rules! attend_body {
    ($block:expr, $scratch:expr, $dot:ident, $axpy:ident, $max:ident, $exp_sum:ident, $row:path) => {{
        let (b, s) = ($block, $scratch);
        let hd = b.hd;
        let vecs = b.queries.len() / hd;
        let nkeys = b.keys.len() / b.row;
        let mut buf = std::mem::take(&mut s.row);
        s.scores.clear();
        s.scores.resize(vecs * nkeys, 0.0);
        for (j, key) in b.keys.chunks_exact(b.row).enumerate() {
            let key = $row(key, &mut buf);
            for (v, q) in b.queries.chunks_exact(hd).enumerate() {
                s.scores[v * nkeys + j] = $dot(q, key);
            }
        }
        s.sums.clear();
        s.maxes.clear();
        for (v, row) in s.scores.chunks_exact_mut(nkeys).enumerate() {
            let (seen, masked) = row.split_at_mut((b.seen + v / b.n_rep).min(nkeys));
            let max = $max(seen);
            s.maxes.push(max);
            s.sums.push($exp_sum(seen, max));
            masked.fill(0.0);
        }
        s.acc.clear();
        s.acc.resize(vecs * hd, 0.0);
        for (j, value) in b.values.chunks_exact(b.row).enumerate() {
            let value = $row(value, &mut buf);
            for (v, acc) in s.acc.chunks_exact_mut(hd).enumerate() {
                let p = s.scores[v * nkeys + j];
                if p != 0.0 {
                    $axpy(acc, p, value);
                }
            }
        }
        s.row = buf;
    }};
}
pub(super) use attend_body;

/// Range reduction for `e^x = 2^n · e^r`, `r = x − n·ln 2` in two parts (Cephes' split), and
/// the Taylor coefficients of `e^r` for `|r| ≤ ln 2 / 2`, highest first (error below 2⁻²³).
#[cfg(target_arch = "x86_64")]
const LOG2E: f32 = std::f32::consts::LOG2_E;
#[cfg(target_arch = "x86_64")]
const LN2_HI: f32 = 0.693_359_4;
#[cfg(target_arch = "x86_64")]
const LN2_LO: f32 = -2.121_944_4e-4;
#[cfg(target_arch = "x86_64")]
const EXP_POLY: [f32; 7] = [
    1.0 / 720.0,
    1.0 / 120.0,
    1.0 / 24.0,
    1.0 / 6.0,
    0.5,
    1.0,
    1.0,
];
/// Below this `e^x` is under f32's smallest normal; clamping keeps `2^n` a normal float.
#[cfg(target_arch = "x86_64")]
const MIN_EXP_ARG: f32 = -87.336_55;

/// An f32 or f16 cache element, as the scalar code reads it.
trait Element: Copy + Send + Sync {
    fn f32(self) -> f32;
}

impl Element for f32 {
    fn f32(self) -> f32 {
        self
    }
}

impl Element for f16 {
    fn f32(self) -> f32 {
        self.to_f32()
    }
}

/// The portable primitives: the reference each SIMD tier is tested against.
mod scalar {
    use super::{BlockQ8_0, Element};

    pub fn dot<E: Element>(q: &[f32], k: &[E]) -> f32 {
        let mut lanes = [0f32; 8];
        for (x, y) in q.chunks_exact(8).zip(k.chunks_exact(8)) {
            for i in 0..8 {
                lanes[i] += x[i] * y[i].f32();
            }
        }
        let tail = q.chunks_exact(8).remainder().iter();
        let tail: f32 = tail
            .zip(k.chunks_exact(8).remainder())
            .map(|(x, y)| x * y.f32())
            .sum();
        lanes.iter().sum::<f32>() + tail
    }

    pub fn axpy<E: Element>(acc: &mut [f32], p: f32, v: &[E]) {
        for (a, x) in acc.iter_mut().zip(v) {
            *a += p * x.f32();
        }
    }

    pub fn max(row: &[f32]) -> f32 {
        row.iter().copied().fold(f32::NEG_INFINITY, f32::max)
    }

    pub fn exp_sum(row: &mut [f32], max: f32) -> f32 {
        let mut sum = 0f32;
        for s in row.iter_mut() {
            *s = (*s - max).exp();
            sum += *s;
        }
        sum
    }

    pub fn attend<E: Element>(b: &super::Block<'_, E>, s: &mut super::Scratch) {
        super::attend_body!(b, s, dot, axpy, max, exp_sum, super::same)
    }

    pub fn silu(xs: &mut [f32]) {
        for x in xs {
            *x /= 1.0 + (-*x).exp();
        }
    }

    pub fn dequantize<'a>(row: &[BlockQ8_0], out: &'a mut Vec<f32>) -> &'a [f32] {
        out.clear();
        for b in row {
            let d = b.scale();
            out.extend(b.qs.iter().map(|&q| d * f32::from(q)));
        }
        out
    }

    pub fn attend_q8(b: &super::Block<'_, BlockQ8_0>, s: &mut super::Scratch) {
        super::attend_body!(b, s, dot, axpy, max, exp_sum, dequantize)
    }
}

/// The element types the cache may hold, and the kernel of each tier for them.
trait Kernel: Copy + Send + Sync {
    /// Elements per cached row of `head_dim` values.
    fn row(head_dim: usize) -> usize {
        head_dim
    }

    fn attend(tier: Tier, b: &Block<'_, Self>, s: &mut Scratch);
}

impl Kernel for f32 {
    fn attend(tier: Tier, b: &Block<'_, f32>, s: &mut Scratch) {
        match tier {
            // SAFETY: `usable_tier` returned the tier only if this CPU runs it.
            #[cfg(target_arch = "x86_64")]
            Tier::Avx512 | Tier::Avx512Vnni if avx512::lanes_fit(b.queries.len() / b.hd) => unsafe {
                avx512::attend_lanes_f32(b, s)
            },
            #[cfg(target_arch = "x86_64")]
            Tier::Avx512 | Tier::Avx512Vnni => unsafe { avx512::attend_f32(b, s) },
            #[cfg(target_arch = "x86_64")]
            Tier::Avx2 => unsafe { avx2::attend_f32(b, s) },
            _ => scalar::attend(b, s),
        }
    }
}

impl Kernel for f16 {
    fn attend(tier: Tier, b: &Block<'_, f16>, s: &mut Scratch) {
        match tier {
            // SAFETY: as for f32.
            #[cfg(target_arch = "x86_64")]
            Tier::Avx512 | Tier::Avx512Vnni if avx512::lanes_fit(b.queries.len() / b.hd) => unsafe {
                avx512::attend_lanes_f16(b, s)
            },
            #[cfg(target_arch = "x86_64")]
            Tier::Avx512 | Tier::Avx512Vnni => unsafe { avx512::attend_f16(b, s) },
            #[cfg(target_arch = "x86_64")]
            Tier::Avx2 => unsafe { avx2::attend_f16(b, s) },
            _ => scalar::attend(b, s),
        }
    }
}

impl Kernel for BlockQ8_0 {
    fn row(head_dim: usize) -> usize {
        head_dim / Q8_0_VALUES
    }

    fn attend(tier: Tier, b: &Block<'_, BlockQ8_0>, s: &mut Scratch) {
        match tier {
            // SAFETY: as for f32.
            #[cfg(target_arch = "x86_64")]
            Tier::Avx512 | Tier::Avx512Vnni if avx512::lanes_fit(b.queries.len() / b.hd) => unsafe {
                avx512::attend_lanes_q8(b, s)
            },
            #[cfg(target_arch = "x86_64")]
            Tier::Avx512 | Tier::Avx512Vnni => unsafe { avx512::attend_q8(b, s) },
            #[cfg(target_arch = "x86_64")]
            Tier::Avx2 => unsafe { avx2::attend_q8(b, s) },
            _ => scalar::attend_q8(b, s),
        }
    }
}

/// `x ← x · sigmoid(x)` for the feed-forward gate, on `tier`'s vectors: the SIMD `exp` lives
/// here. Scalar `expf` per value was 3.5% of a 4,096-token prompt on Zen 5.
pub fn silu(tier: Tier, xs: &mut [f32]) {
    match usable_tier(tier, 16) {
        // SAFETY: `usable_tier` returned the tier only if this CPU runs it.
        #[cfg(target_arch = "x86_64")]
        Tier::Avx512 | Tier::Avx512Vnni => unsafe { avx512::silu(xs) },
        #[cfg(target_arch = "x86_64")]
        Tier::Avx2 => unsafe { avx2::silu(xs) },
        _ => scalar::silu(xs),
    }
}

/// The tier to run: the asked one where this CPU supports it and its vector width divides
/// `head_dim` (16 floats for AVX-512, 8 for AVX2), else scalar.
fn usable_tier(tier: Tier, head_dim: usize) -> Tier {
    let width = match tier {
        Tier::Scalar => 1,
        Tier::Avx2 => 8,
        Tier::Avx512 | Tier::Avx512Vnni => 16,
    };
    if tier.supported() && head_dim.is_multiple_of(width) {
        tier
    } else {
        Tier::Scalar
    }
}

/// Start offset and distance between KV heads of a `(1, n_kv, len, row)` cache view whose
/// positions are contiguous within a head (`row`: storage elements per position and head).
fn head_stride(layout: &Layout, row: usize) -> candle_core::Result<(usize, usize, usize)> {
    let (dims, strides) = (layout.dims(), layout.stride());
    if dims.len() != 4 || dims[3] != row || strides[3] != 1 || strides[2] != row {
        candle_core::bail!("attention: cache view {dims:?} strides {strides:?}");
    }
    Ok((layout.start_offset(), strides[1], dims[2]))
}

impl Attention {
    /// Runs every block on the pool; `k`/`v` are whole cache buffers, `(start, stride)` where
    /// each view's heads begin.
    fn run<E: Kernel>(
        &self,
        q: &[f32],
        t: usize,
        (k, k_start, k_stride): (&[E], usize, usize),
        (v, v_start, v_stride): (&[E], usize, usize),
        len: usize,
    ) -> Vec<f32> {
        let (hd, n_head, n_kv) = (self.head_dim, self.n_head, self.n_kv);
        let n_rep = n_head / n_kv;
        let row = E::row(hd);
        let offset = len - t;
        let tier = usable_tier(self.tier, hd);
        let blocks = t.div_ceil(BLOCK_ROWS);
        let units = blocks * n_kv;
        let next = AtomicUsize::new(0);
        let mut out = vec![0f32; t * n_head * hd];
        let dst = Out(out.as_mut_ptr());
        pool::global().run(|_| {
            let mut s = Scratch::default();
            loop {
                let unit = next.fetch_add(1, Ordering::Relaxed);
                if unit >= units {
                    break;
                }
                let (block, g) = (blocks - 1 - unit / n_kv, unit % n_kv);
                let first = block * BLOCK_ROWS;
                let rows = BLOCK_ROWS.min(t - first);
                let mut queries = std::mem::take(&mut s.queries);
                queries.clear();
                for i in first..first + rows {
                    for r in 0..n_rep {
                        let head = g * n_rep + r;
                        let at = (head * t + i) * hd;
                        queries.extend(q[at..at + hd].iter().map(|x| x * self.scale));
                    }
                }
                let nkeys = offset + first + rows;
                let seen = offset + first + 1;
                // Whole tiles that every row of the block sees, then the rest, where the
                // first row sees at least one key (so every row has a key in every tile).
                let last = (seen - 1) / KEY_TILE * KEY_TILE;
                let (keys, values) = (&k[k_start + g * k_stride..], &v[v_start + g * v_stride..]);
                let mut total = std::mem::take(&mut s.total);
                if last > 0 {
                    total.start(queries.len() / hd, hd);
                }
                let mut k0 = 0;
                loop {
                    let k1 = if k0 < last { k0 + KEY_TILE } else { nkeys };
                    let b = Block {
                        queries: &queries,
                        keys: &keys[k0 * row..k1 * row],
                        values: &values[k0 * row..k1 * row],
                        hd,
                        row,
                        n_rep,
                        seen: if k1 == nkeys { seen - k0 } else { k1 - k0 },
                    };
                    E::attend(tier, &b, &mut s);
                    if last > 0 {
                        total.add(&s.acc, &s.sums, &s.maxes, hd);
                    }
                    if k1 == nkeys {
                        break;
                    }
                    k0 = k1;
                }
                let (acc, sums) = if last > 0 {
                    (&total.acc, &total.sums)
                } else {
                    (&s.acc, &s.sums)
                };
                for (vec, (acc, sum)) in acc.chunks_exact(hd).zip(sums).enumerate() {
                    let (i, r) = (first + vec / n_rep, vec % n_rep);
                    let at = (i * n_head + g * n_rep + r) * hd;
                    // SAFETY: row i, head g·n_rep + r of `out` is written by this block only.
                    let row = unsafe { std::slice::from_raw_parts_mut(dst.at(at), hd) };
                    let inv = 1.0 / sum;
                    for (o, a) in row.iter_mut().zip(acc) {
                        *o = a * inv;
                    }
                }
                s.total = total;
                s.queries = queries;
            }
        });
        out
    }
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "smolbot-attention"
    }

    fn cpu_fwd(
        &self,
        q: &CpuStorage,
        q_layout: &Layout,
        k: &CpuStorage,
        k_layout: &Layout,
        v: &CpuStorage,
        v_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let hd = self.head_dim;
        let (Some((q_start, q_end)), CpuStorage::F32(q)) = (q_layout.contiguous_offsets(), q)
        else {
            candle_core::bail!("attention takes contiguous f32 queries");
        };
        let q = &q[q_start..q_end];
        let t = q_layout.dims().get(2).copied().unwrap_or(0);
        if t == 0 || q.len() != self.n_head * t * hd || !self.n_head.is_multiple_of(self.n_kv) {
            candle_core::bail!("attention: {} query values for {t} rows", q.len());
        }
        // Q8_0 caches are `u8` tensors of whole blocks: `hd / 32 · 34` bytes per row.
        let quantized = matches!(k, CpuStorage::U8(_));
        if quantized && !hd.is_multiple_of(Q8_0_VALUES) {
            candle_core::bail!(
                "attention: a Q8_0 cache needs a head dim divisible by 32, not {hd}"
            );
        }
        let row = if quantized {
            hd / Q8_0_VALUES * Q8_0_BYTES
        } else {
            hd
        };
        let (k_start, k_stride, len) = head_stride(k_layout, row)?;
        let (v_start, v_stride, v_len) = head_stride(v_layout, row)?;
        if len != v_len || len < t {
            candle_core::bail!("attention: {len} keys, {v_len} values for {t} rows");
        }
        let out = match (k, v) {
            (CpuStorage::F32(k), CpuStorage::F32(v)) => {
                self.run(q, t, (k, k_start, k_stride), (v, v_start, v_stride), len)
            }
            (CpuStorage::F16(k), CpuStorage::F16(v)) => {
                self.run(q, t, (k, k_start, k_stride), (v, v_start, v_stride), len)
            }
            (CpuStorage::U8(k), CpuStorage::U8(v)) => {
                // Offsets and strides are whole rows of whole blocks, so they divide evenly.
                fn blocks(
                    bytes: &[u8],
                    start: usize,
                    stride: usize,
                ) -> (&[BlockQ8_0], usize, usize) {
                    let whole = bytes.len() / Q8_0_BYTES * Q8_0_BYTES;
                    let blocks = q8_0_blocks(&bytes[..whole]);
                    (blocks, start / Q8_0_BYTES, stride / Q8_0_BYTES)
                }
                self.run(
                    q,
                    t,
                    blocks(k, k_start, k_stride),
                    blocks(v, v_start, v_stride),
                    len,
                )
            }
            _ => candle_core::bail!("attention takes an f32, f16 or Q8_0 (u8) cache"),
        };
        Ok((CpuStorage::F32(out), Shape::from((1, t, self.n_head * hd))))
    }
}
