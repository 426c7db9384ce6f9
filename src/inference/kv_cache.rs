//! The per-sequence KV cache and the element type it keeps keys and values in.

use candle_core::DType;
use candle_nn::kv_cache::KvCache;

use super::error::{InferenceError, Result};

/// KV cache entries are allocated in steps of this many positions, so a short chat does not
/// reserve the whole 64k context and a long one grows with few copies.
const KV_GROW_STEP: usize = 512;

/// How keys and values are stored. f16 halves the cache (SmolLM3-3B: 73.7 KB per position
/// instead of 147 KB, 4.8 GB at 64k context instead of 9.7) and the bytes decode reads at long
/// context, as llama.cpp's default does; f32 is exact and what the golden tests compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheType {
    F32,
    F16,
}

impl CacheType {
    /// `f32` or `f16` (llama.cpp's `--cache-type-k` names).
    pub fn parse(v: &str) -> Result<CacheType> {
        match v {
            "f32" => Ok(CacheType::F32),
            "f16" => Ok(CacheType::F16),
            other => Err(InferenceError::CacheType(format!(
                "unknown cache type {other:?}: use f32 or f16"
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
        }
    }

    pub fn dtype(self) -> DType {
        match self {
            CacheType::F32 => DType::F32,
            CacheType::F16 => DType::F16,
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
