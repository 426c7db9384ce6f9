//! The per-sequence KV cache and the element type it keeps keys and values in.

use candle_core::{DType, Tensor};
use candle_nn::kv_cache::KvCache;

use super::error::{InferenceError, Result};
use super::kernels::blocks::{quantize_q8_0, Q8_0_BYTES, Q8_0_VALUES};

/// KV cache entries are allocated in steps of this many positions, so a short chat does not
/// reserve the whole 64k context and a long one grows with few copies.
const KV_GROW_STEP: usize = 512;

/// How keys and values are stored. f16 halves the cache (SmolLM3-3B: 73.7 KB per position
/// instead of 147 KB, 4.8 GB at 64k context instead of 9.7) and the bytes decode reads at long
/// context, as llama.cpp's default does; Q8_0 (GGML's 8-bit blocks, one f16 scale per 32
/// values) takes 39.2 KB per position, 2.6 GB at 64k; f32 is exact and what the golden tests
/// compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheType {
    F32,
    F16,
    Q8_0,
}

impl CacheType {
    /// `f32`, `f16` or `q8_0` (llama.cpp's `--cache-type-k` names).
    pub fn parse(v: &str) -> Result<CacheType> {
        match v {
            "f32" => Ok(CacheType::F32),
            "f16" => Ok(CacheType::F16),
            "q8_0" => Ok(CacheType::Q8_0),
            other => Err(InferenceError::CacheType(format!(
                "unknown cache type {other:?}: use f32, f16 or q8_0"
            ))),
        }
    }

    /// `SMOLBOT_CACHE_TYPE` (what `--cache-type` sets), f16 when unset.
    pub fn from_env() -> Result<CacheType> {
        match std::env::var("SMOLBOT_CACHE_TYPE") {
            Ok(v) if !v.is_empty() => CacheType::parse(&v),
            _ => Ok(CacheType::F16),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            CacheType::F32 => "f32",
            CacheType::F16 => "f16",
            CacheType::Q8_0 => "q8_0",
        }
    }

    /// Bytes one position of one KV head's keys (or values) of `head_dim` values takes.
    pub fn row_bytes(self, head_dim: usize) -> usize {
        match self {
            CacheType::F32 => head_dim * 4,
            CacheType::F16 => head_dim * 2,
            CacheType::Q8_0 => head_dim / Q8_0_VALUES * Q8_0_BYTES,
        }
    }

    /// New keys or values `(1, n_kv, t, head_dim)` in f32 as the cache keeps them: Q8_0 as a
    /// `u8` tensor `(1, n_kv, t, head_dim / 32 · 34)` of whole blocks.
    pub fn store(self, x: &Tensor) -> Result<Tensor> {
        match self {
            CacheType::F32 => Ok(x.clone()),
            CacheType::F16 => Ok(x.to_dtype(DType::F16)?),
            CacheType::Q8_0 => {
                let (b, heads, t, hd) = x.dims4()?;
                if !hd.is_multiple_of(Q8_0_VALUES) {
                    return Err(InferenceError::CacheType(format!(
                        "a q8_0 cache needs a head dim divisible by {Q8_0_VALUES}, not {hd}"
                    )));
                }
                let values = x.flatten_all()?.to_vec1::<f32>()?;
                let mut bytes = Vec::new();
                quantize_q8_0(&values, &mut bytes);
                let row = self.row_bytes(hd);
                Ok(Tensor::from_vec(bytes, (b, heads, t, row), x.device())?)
            }
        }
    }
}

/// One sequence's attention state: keys and values of every position seen so far.
pub struct SequenceCache {
    pub(super) layers: Vec<KvCache>,
    pub(super) len: usize,
}

impl SequenceCache {
    pub(super) fn new(n_layer: usize) -> Self {
        Self {
            layers: (0..n_layer)
                .map(|_| KvCache::new(2, KV_GROW_STEP))
                .collect(),
            len: 0,
        }
    }

    /// Number of positions already in the cache.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn clear(&mut self) {
        self.layers.iter_mut().for_each(KvCache::reset);
        self.len = 0;
    }

    /// Forgets every position from `len` on, keeping the first `len` (a shared prefix of the
    /// next prompt). candle's cache cannot shrink in place, so the kept part is copied back:
    /// about 0.1 s for 2,000 positions of SmolLM3-3B.
    pub fn truncate(&mut self, len: usize) -> Result<()> {
        if len >= self.len {
            return Ok(());
        }
        if len == 0 {
            self.clear();
            return Ok(());
        }
        for kv in &mut self.layers {
            // A real copy: appending a view of the cache's own storage back into it would
            // read and write the same buffer.
            let (Some(k), Some(v)) = (kv.k()?, kv.v()?) else {
                continue;
            };
            let k = k.narrow(2, 0, len)?.contiguous()?.copy()?;
            let v = v.narrow(2, 0, len)?.contiguous()?.copy()?;
            kv.reset();
            kv.append(&k, &v)?;
        }
        self.len = len;
        Ok(())
    }

    /// Bytes the cache holds allocated (it grows in steps, so at least `len` positions).
    pub fn allocated_bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|kv| {
                [kv.k_cache(), kv.v_cache()]
                    .iter()
                    .filter_map(|c| c.all_data().as_ref())
                    .map(|t| t.elem_count() * t.dtype().size_in_bytes())
                    .sum::<usize>()
            })
            .sum()
    }
}
