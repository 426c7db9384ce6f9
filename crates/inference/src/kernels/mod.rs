//! Our own CPU kernels for the quantized matmuls of the forward pass (Q4_K and Q6_K, the
//! types of a Q4_K_M file), behind the same call as candle's `QMatMul`.
//!
//! Why the project's rule ("candle's `QMatMul`, no custom ML") bends here, measured on the
//! full-size synthetic SmolLM3-3B Q4_K_M file, 2 threads, AMD EPYC Zen 3 (AVX2): candle
//! 0.11 decoded at 5.19 tok/s and read 512-token prompts at 15.1 tok/s where llama.cpp did
//! 9.41 and 23.9, with 4.56 GB peak RSS against 3.40. Its Q4_K path repacks every weight into
//! tiles with f32 scales (~6.0 bits per weight, kept beside the original blocks), sends Q6_K
//! through a generic dot product, quantizes the same input once per projection, and runs on
//! two thread pools. Here weights are the file's integer blocks interleaved 16 rows at a time
//! (`groups`: one copy, 4.63 bits per weight for Q4_K, packed at load in parallel without a
//! copy of the tensor), the input is quantized to Q8_K once per matmul group (Q, K and V
//! together; gate and up together with SiLU·mul fused), and one spinning pool splits each
//! matmul's row groups statically.
//!
//! candle's `QMatMul` stays as the reference path (`SMOLBOT_KERNELS=candle`), and is the
//! path on CUDA, on CPUs without AVX2 and for every other quantization type.
//!
//! Tiers are chosen at run time (`is_x86_feature_detected!`), never by `target-cpu`: the
//! same binary runs on every host. `SMOLBOT_KERNELS=candle|scalar|avx2|avx512|avx512vnni|auto` forces one.

/// Calls `$kernel::<R>` (a const-generic kernel over one weight group and R activation rows)
/// for `$acts`, writing `$out`, in calls of up to 4 activation rows: the one dispatch every
/// SIMD tier shares. Four keeps each tier's accumulators (3 per row) in registers.
macro_rules! by_acts {
    ($kernel:ident, $w:expr, $acts:expr, $out:expr) => {{
        let w = $w;
        for (a, out) in $acts.chunks(4).zip($out.chunks_mut(4)) {
            match a.len() {
                1 => out.copy_from_slice(&$kernel::<1>(w, [a[0]])),
                2 => out.copy_from_slice(&$kernel::<2>(w, [a[0], a[1]])),
                3 => out.copy_from_slice(&$kernel::<3>(w, [a[0], a[1], a[2]])),
                _ => out.copy_from_slice(&$kernel::<4>(w, [a[0], a[1], a[2], a[3]])),
            }
        }
    }};
}

pub mod attention;
pub mod blocks;
pub mod groups;
pub mod op;
pub mod pool;
pub mod scalar;

#[cfg(target_arch = "x86_64")]
pub mod avx2;
#[cfg(target_arch = "x86_64")]
pub mod avx512;
#[cfg(target_arch = "x86_64")]
mod x86;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use candle_core::quantized::GgmlDType;

use blocks::{quantize_q8k, BlockQ8K, Q4K_BYTES, Q6K_BYTES, QK_K};
use groups::LANES;

/// An instruction-set level our kernels are written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// Portable Rust: the reference, and the fallback a test forces.
    Scalar,
    /// AVX2 + FMA + F16C (x86-64-v3).
    Avx2,
    /// AVX-512 F + BW (Intel Xeon since Skylake-SP, AMD Zen 4 and later).
    Avx512,
    /// AVX-512 with VNNI (Intel Xeon since Cascade Lake, AMD Zen 4 and later).
    Avx512Vnni,
}

impl Tier {
    /// Every tier, slowest first.
    pub const ALL: [Tier; 4] = [Tier::Scalar, Tier::Avx2, Tier::Avx512, Tier::Avx512Vnni];

    pub fn name(self) -> &'static str {
        match self {
            Tier::Scalar => "scalar",
            Tier::Avx2 => "avx2",
            Tier::Avx512 => "avx512",
            Tier::Avx512Vnni => "avx512vnni",
        }
    }

    /// Whether this CPU can run the tier.
    pub fn supported(self) -> bool {
        match self {
            Tier::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Tier::Avx2 => {
                is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Tier::Avx512 => {
                Tier::Avx2.supported()
                    && is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
            }
            #[cfg(target_arch = "x86_64")]
            Tier::Avx512Vnni => Tier::Avx512.supported() && is_x86_feature_detected!("avx512vnni"),
            #[cfg(not(target_arch = "x86_64"))]
            Tier::Avx2 | Tier::Avx512 | Tier::Avx512Vnni => false,
        }
    }

    /// The fastest SIMD tier this CPU supports; `None` leaves the matmuls to candle.
    pub fn best() -> Option<Tier> {
        Tier::ALL
            .into_iter()
            .rev()
            .find(|t| *t != Tier::Scalar && t.supported())
    }
}

/// Which code runs the quantized matmuls on the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernels {
    /// candle's `QMatMul`: the reference path.
    Candle,
    /// Ours, at this tier.
    Own(Tier),
}

impl Kernels {
    /// The environment's choice (`SMOLBOT_KERNELS`), else the best this CPU supports.
    pub fn from_env() -> Result<Kernels, String> {
        match std::env::var("SMOLBOT_KERNELS") {
            Ok(v) if !v.is_empty() => Kernels::parse(&v),
            _ => Ok(Kernels::auto()),
        }
    }

    pub fn auto() -> Kernels {
        Tier::best().map_or(Kernels::Candle, Kernels::Own)
    }

    /// `candle`, `auto` or a tier name; a tier this CPU lacks is an error, not a crash.
    pub fn parse(v: &str) -> Result<Kernels, String> {
        let choice = match v {
            "candle" => Kernels::Candle,
            "auto" => Kernels::auto(),
            name => {
                let tier = Tier::ALL
                    .into_iter()
                    .find(|t| t.name() == name)
                    .ok_or_else(|| {
                        format!("unknown kernels {name:?}: expected candle, auto, scalar, avx2, avx512 or avx512vnni")
                    })?;
                if !tier.supported() {
                    return Err(format!("this CPU cannot run the {name} kernels"));
                }
                Kernels::Own(tier)
            }
        };
        Ok(choice)
    }

    pub fn name(self) -> &'static str {
        match self {
            Kernels::Candle => "candle",
            Kernels::Own(t) => t.name(),
        }
    }
}

/// A weight type our kernels read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quant {
    Q4K,
    Q6K,
}

impl Quant {
    pub fn of(dtype: GgmlDType) -> Option<Quant> {
        match dtype {
            GgmlDType::Q4K => Some(Quant::Q4K),
            GgmlDType::Q6K => Some(Quant::Q6K),
            _ => None,
        }
    }

    /// Bytes of one of the file's blocks (256 values) of this type.
    pub fn block_bytes(self) -> usize {
        match self {
            Quant::Q4K => Q4K_BYTES,
            Quant::Q6K => Q6K_BYTES,
        }
    }
}

/// `out[r][lane] = row lane · acts[r]` for one group of 16 interleaved weight rows.
type GroupKernel = fn(&[u8], &[&[BlockQ8K]], &mut [[f32; LANES]]);

/// 64 bytes on a 64-byte boundary: group blocks (whole lines) never straddle cache lines.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// A weight matrix `(rows, cols)` in groups of 16 interleaved rows (see `groups`), built
/// once from the file's blocks.
pub struct PackedMatrix {
    quant: Quant,
    rows: usize,
    cols: usize,
    /// Bytes of one group: its `cols / 256` group blocks back to back.
    group_bytes: usize,
    lines: Vec<Line>,
    kernel: GroupKernel,
    tier: Tier,
}

impl PackedMatrix {
    /// Packs `data`, the file's blocks of `rows` rows. `None` when the shape does not fit
    /// the type (columns not a whole number of superblocks, or the wrong byte count).
    pub fn new(quant: Quant, rows: usize, cols: usize, data: Vec<u8>, tier: Tier) -> Option<Self> {
        let row_bytes = cols.checked_div(QK_K)? * quant.block_bytes();
        if data.len() != rows.checked_mul(row_bytes)? {
            return None;
        }
        let read = |at: usize, buf: &mut [u8]| {
            buf.copy_from_slice(&data[at..at + buf.len()]);
            Ok::<(), ()>(())
        };
        Self::load(quant, rows, cols, tier, read).ok().flatten()
    }

    /// Packs the matrix whose file blocks (row after row) `read(at, buf)` fills, 16 rows
    /// at a time on every pool thread, straight into the packed buffer: the load keeps no
    /// copy of the tensor and reads in parallel. `Ok(None)` when the columns are not a
    /// whole number of superblocks.
    pub fn load<E: Send>(
        quant: Quant,
        rows: usize,
        cols: usize,
        tier: Tier,
        read: impl Fn(usize, &mut [u8]) -> Result<(), E> + Sync,
    ) -> Result<Option<Self>, E> {
        if cols == 0 || !cols.is_multiple_of(QK_K) {
            return Ok(None);
        }
        let nb = cols / QK_K;
        let row_bytes = nb * quant.block_bytes();
        let group_bytes = nb * quant.group_bytes();
        let groups = rows.div_ceil(LANES);
        let mut lines = zeroed_lines(groups * group_bytes / 64);
        let dst = Out(lines.as_mut_ptr() as *mut f32);
        let failure = std::sync::Mutex::new(None);
        let pool = pool::global();
        let threads = pool.threads();
        pool.run(|t| {
            let mut raw = vec![0u8; LANES * row_bytes];
            for gi in share(groups, t, threads) {
                let first = gi * LANES;
                let members = rows.min(first + LANES) - first;
                let raw = &mut raw[..members * row_bytes];
                if let Err(e) = read(first * row_bytes, raw) {
                    failure
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get_or_insert(e);
                    return;
                }
                let members: Vec<&[u8]> = raw.chunks_exact(row_bytes).collect();
                // SAFETY: group gi's bytes, written by this worker alone, inside `lines`.
                let group = unsafe {
                    std::slice::from_raw_parts_mut(
                        (dst.at(0) as *mut u8).add(gi * group_bytes),
                        group_bytes,
                    )
                };
                for (b, block) in group.chunks_exact_mut(quant.group_bytes()).enumerate() {
                    groups::pack(quant, &members, b, block);
                }
            }
        });
        if let Some(e) = failure.into_inner().unwrap_or_else(|e| e.into_inner()) {
            return Err(e);
        }
        Ok(Some(Self {
            quant,
            rows,
            cols,
            group_bytes,
            lines,
            kernel: group_kernel(quant, tier),
            tier,
        }))
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn tier(&self) -> Tier {
        self.tier
    }

    pub fn quant(&self) -> Quant {
        self.quant
    }

    /// Bytes of weights held (and read per decoded token).
    pub fn bytes(&self) -> usize {
        self.lines.len() * 64
    }

    fn groups(&self) -> usize {
        self.rows.div_ceil(LANES)
    }

    fn group(&self, g: usize) -> &[u8] {
        // SAFETY: `Line` is 64 plain bytes, so the lines are `bytes()` initialized bytes.
        let all =
            unsafe { std::slice::from_raw_parts(self.lines.as_ptr() as *const u8, self.bytes()) };
        &all[g * self.group_bytes..(g + 1) * self.group_bytes]
    }

    /// Row `i` as f32 (an embedding lookup).
    pub fn dequantize_row(&self, i: usize, out: &mut [f32]) {
        groups::dequantize(self.quant, self.group(i / LANES), i % LANES, out);
    }
}

/// `n` zeroed lines from the allocator's zeroed pages: no pass writing zeros over memory
/// that packing writes again (the pages fault in where each pool thread packs).
fn zeroed_lines(n: usize) -> Vec<Line> {
    if n == 0 {
        return Vec::new();
    }
    let layout =
        std::alloc::Layout::array::<Line>(n).expect("a packed matrix fits the address space");
    // SAFETY: a non-zero layout; all-zero bytes are a valid `Line`, and the pointer, length
    // and capacity describe exactly the allocation made with `Line`'s layout.
    unsafe {
        let ptr = std::alloc::alloc_zeroed(layout) as *mut Line;
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        Vec::from_raw_parts(ptr, n, n)
    }
}

fn group_kernel(quant: Quant, tier: Tier) -> GroupKernel {
    match (tier, quant) {
        (Tier::Scalar, Quant::Q4K) => scalar::q4k_group,
        (Tier::Scalar, Quant::Q6K) => scalar::q6k_group,
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a matrix gets this tier only after `Tier::supported` said yes.
        (Tier::Avx2, Quant::Q4K) => |w, a, o| unsafe { avx2::q4k_group(w, a, o) },
        #[cfg(target_arch = "x86_64")]
        (Tier::Avx2, Quant::Q6K) => |w, a, o| unsafe { avx2::q6k_group(w, a, o) },
        #[cfg(target_arch = "x86_64")]
        (Tier::Avx512, Quant::Q4K) => |w, a, o| unsafe { avx512::bw::q4k_group(w, a, o) },
        #[cfg(target_arch = "x86_64")]
        (Tier::Avx512, Quant::Q6K) => |w, a, o| unsafe { avx512::bw::q6k_group(w, a, o) },
        #[cfg(target_arch = "x86_64")]
        (Tier::Avx512Vnni, Quant::Q4K) => |w, a, o| unsafe { avx512::vnni::q4k_group(w, a, o) },
        #[cfg(target_arch = "x86_64")]
        (Tier::Avx512Vnni, Quant::Q6K) => |w, a, o| unsafe { avx512::vnni::q6k_group(w, a, o) },
        #[cfg(not(target_arch = "x86_64"))]
        (Tier::Avx2 | Tier::Avx512 | Tier::Avx512Vnni, _) => {
            unreachable!("SIMD tiers are never supported off x86_64")
        }
    }
}

/// Activation rows quantized to Q8_K once, shared by every matrix that reads them.
pub struct Activations {
    blocks: Vec<BlockQ8K>,
    rows: usize,
    per_row: usize,
}

impl Activations {
    /// `x` is `rows` rows of `cols` values (a multiple of 256).
    pub fn quantize(x: &[f32], rows: usize, cols: usize) -> Self {
        let per_row = cols / QK_K;
        let mut blocks = vec![BlockQ8K::default(); rows * per_row];
        quantize_q8k(&x[..rows * cols], &mut blocks);
        Self {
            blocks,
            rows,
            per_row,
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    fn row(&self, r: usize) -> &[BlockQ8K] {
        &self.blocks[r * self.per_row..(r + 1) * self.per_row]
    }
}

/// How far ahead of the block being read the SIMD kernels prefetch weights, in bytes.
const PREFETCH: usize = 4096;

/// Weight groups handled together while a set of activation rows stays in L1.
const GROUP_TILE: usize = 4;
/// Activation rows per pass over a tile (each group block is unpacked once per kernel call).
const ACT_GROUP: usize = 8;

/// A raw output pointer shared by the pool's workers, each writing its own indices.
#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: workers write disjoint elements (their own weight rows) and the pool joins them
// before the buffer is read.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    /// Element `at` (a method, so closures capture the whole `Sync` wrapper).
    fn at(self, at: usize) -> *mut f32 {
        self.0.wrapping_add(at)
    }
}

/// Calls `emit(act_row, weight_row, value)` for every product of the rows of `m`'s groups
/// `range` with every activation row, tiled so a set of activation rows is reused across
/// `GROUP_TILE` groups.
fn products(
    m: &PackedMatrix,
    acts: &Activations,
    range: std::ops::Range<usize>,
    mut emit: impl FnMut(usize, usize, f32),
) {
    let mut tile = range.start;
    while tile < range.end {
        let tile_end = (tile + GROUP_TILE).min(range.end);
        let mut r0 = 0;
        while r0 < acts.rows {
            let n = ACT_GROUP.min(acts.rows - r0);
            let set: [&[BlockQ8K]; ACT_GROUP] =
                std::array::from_fn(|k| acts.row(r0 + k.min(n - 1)));
            let mut out = [[0f32; LANES]; ACT_GROUP];
            for g in tile..tile_end {
                (m.kernel)(m.group(g), &set[..n], &mut out[..n]);
                let rows = (m.rows - g * LANES).min(LANES);
                for (k, lanes) in out[..n].iter().enumerate() {
                    for (lane, &v) in lanes[..rows].iter().enumerate() {
                        emit(r0 + k, g * LANES + lane, v);
                    }
                }
            }
            r0 += n;
        }
        tile = tile_end;
    }
}

/// The share of `total` rows that worker `index` of `threads` computes.
fn share(total: usize, index: usize, threads: usize) -> std::ops::Range<usize> {
    total * index / threads..total * (index + 1) / threads
}

/// Groups per piece of work that a pool thread claims at a time.
const CHUNK: usize = 8;

/// The group ranges of one job (matrix `i`'s groups in pieces of up to `CHUNK`), each
/// claimed by one thread. Thread `t` first walks its own share of the pieces front to back
/// (one long stream of weights, as with a static split), then takes what is left of the
/// others' shares from the back. A static split alone left one thread waiting for the other
/// whenever the host took a core away for a moment: measured on AMD EPYC Zen 5 (2 threads),
/// threads spent 16% of their decode samples waiting at the join.
struct Chunks {
    /// `(matrix, groups)` for every piece, in matrix order.
    pieces: Vec<(usize, std::ops::Range<usize>)>,
    taken: Vec<AtomicBool>,
}

impl Chunks {
    fn new(groups: impl IntoIterator<Item = usize>) -> Self {
        let mut pieces = Vec::new();
        for (i, n) in groups.into_iter().enumerate() {
            let mut start = 0;
            while start < n {
                let end = (start + CHUNK).min(n);
                pieces.push((i, start..end));
                start = end;
            }
        }
        let taken = pieces.iter().map(|_| AtomicBool::new(false)).collect();
        Self { pieces, taken }
    }

    /// Calls `work(matrix, groups)` for every piece thread `t` of `threads` claims.
    fn drain(&self, t: usize, threads: usize, mut work: impl FnMut(usize, std::ops::Range<usize>)) {
        let mine = share(self.pieces.len(), t, threads);
        let order = mine
            .clone()
            .chain((mine.end..self.pieces.len()).rev())
            .chain((0..mine.start).rev());
        for c in order {
            if !self.taken[c].swap(true, Ordering::Relaxed) {
                let (i, range) = &self.pieces[c];
                work(*i, range.clone());
            }
        }
    }
}

/// `acts · mᵀ` for several matrices reading the same input, side by side: the result has
/// `acts.rows()` rows of `Σ m.rows()` values (e.g. Q, K and V of one layer in one call).
pub fn matmul(mats: &[&PackedMatrix], acts: &Activations) -> Vec<f32> {
    let width: usize = mats.iter().map(|m| m.rows).sum();
    let mut out = vec![0f32; acts.rows * width];
    let dst = Out(out.as_mut_ptr());
    let offsets: Vec<usize> = mats
        .iter()
        .scan(0, |at, m| {
            let start = *at;
            *at += m.rows;
            Some(start)
        })
        .collect();
    let chunks = Chunks::new(mats.iter().map(|m| m.groups()));
    let pool = pool::global();
    let threads = pool.threads();
    pool.run(|t| {
        chunks.drain(t, threads, |k, range| {
            let offset = offsets[k];
            products(mats[k], acts, range, |r, i, v| {
                // SAFETY: `r * width + offset + i` is inside `out`, and row `i` of this
                // matrix is in a piece that this worker alone claimed.
                unsafe { *dst.at(r * width + offset + i) = v };
            });
        })
    });
    out
}

/// `silu(acts · gateᵀ) ⊙ (acts · upᵀ)`, the feed-forward's first half, in one pass: each
/// worker computes the same rows of both and combines them.
pub fn swiglu(gate: &PackedMatrix, up: &PackedMatrix, acts: &Activations) -> Vec<f32> {
    let width = gate.rows;
    let mut out = vec![0f32; acts.rows * width];
    let dst = Out(out.as_mut_ptr());
    let chunks = Chunks::new([gate.groups()]);
    let pool = pool::global();
    let threads = pool.threads();
    pool.run(|t| {
        chunks.drain(t, threads, |_, range| {
            let columns = (range.start * LANES).min(width)..(range.end * LANES).min(width);
            products(gate, acts, range.clone(), |r, i, v| {
                // SAFETY: as in `matmul`; the gate value is parked in the output first.
                unsafe { *dst.at(r * width + i) = v };
            });
            for r in 0..acts.rows {
                // SAFETY: this worker's columns of row r, written above and by no one else.
                let gates = unsafe {
                    std::slice::from_raw_parts_mut(dst.at(r * width + columns.start), columns.len())
                };
                attention::silu(gate.tier, gates);
            }
            products(up, acts, range, |r, i, u| {
                // SAFETY: the same element this worker wrote above.
                unsafe { *dst.at(r * width + i) *= u };
            });
        })
    });
    out
}

/// Weights behind one shared handle (a tied embedding and output head share one).
pub type SharedMatrix = Arc<PackedMatrix>;

#[cfg(test)]
mod tests;
