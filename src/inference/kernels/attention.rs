//! Attention of one new token over a sequence's f32 KV cache, on the kernels' pool.
//!
//! Decode otherwise sends each layer's two small attention matmuls and its softmax through
//! candle's gemm and rayon's pool, whose threads then compete with this pool's for the same
//! cores: on SmolLM3-3B, 2 threads, decode after a 512-token prompt ran 15–20% slower than
//! after a 4-token one, where attention is a rounding error. Here each worker takes whole KV
//! heads: it reads every cached key and value of its heads once for all the query heads that
//! share them (grouped-query attention), with no copy of the cache.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape};

use super::{pool, share, Out};

/// `softmax(q·Kᵀ · scale) · V` for one query row per head; `q` is `(1, n_head, 1, head_dim)`,
/// the cache views `(1, n_kv, len, head_dim)` with any stride between heads.
pub struct DecodeAttention {
    pub n_head: usize,
    pub n_kv: usize,
    pub head_dim: usize,
    pub scale: f32,
}

/// An f32 slice and layout from a candle op's input, or an error naming which.
fn f32_input<'a>(storage: &'a CpuStorage, what: &str) -> candle_core::Result<&'a [f32]> {
    match storage {
        CpuStorage::F32(data) => Ok(data),
        _ => candle_core::bail!("decode attention takes f32 {what}"),
    }
}

/// Start offset and distance between KV heads of a `(1, n_kv, len, head_dim)` cache view whose
/// positions are contiguous within a head.
fn head_stride(layout: &Layout, head_dim: usize) -> candle_core::Result<(usize, usize, usize)> {
    let (dims, strides) = (layout.dims(), layout.stride());
    if dims.len() != 4 || dims[3] != head_dim || strides[3] != 1 || strides[2] != head_dim {
        candle_core::bail!("decode attention: cache view {dims:?} strides {strides:?}");
    }
    Ok((layout.start_offset(), strides[1], dims[2]))
}

impl CustomOp3 for DecodeAttention {
    fn name(&self) -> &'static str {
        "smolbot-decode-attention"
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
        let Some((q_start, q_end)) = q_layout.contiguous_offsets() else {
            candle_core::bail!("decode attention takes a contiguous query");
        };
        let q = &f32_input(q, "queries")?[q_start..q_end];
        if q.len() != self.n_head * hd || !self.n_head.is_multiple_of(self.n_kv) {
            candle_core::bail!("decode attention: {} query values", q.len());
        }
        let (k_start, k_stride, len) = head_stride(k_layout, hd)?;
        let (v_start, v_stride, v_len) = head_stride(v_layout, hd)?;
        if len != v_len || len == 0 {
            candle_core::bail!("decode attention: {len} keys, {v_len} values");
        }
        let (k, v) = (f32_input(k, "keys")?, f32_input(v, "values")?);
        let n_rep = self.n_head / self.n_kv;
        let mut out = vec![0f32; self.n_head * hd];
        let dst = Out(out.as_mut_ptr());
        let pool = pool::global();
        let threads = pool.threads();
        pool.run(|t| {
            let mut scores = vec![0f32; n_rep * len];
            for g in share(self.n_kv, t, threads) {
                let keys = &k[k_start + g * k_stride..][..len * hd];
                let values = &v[v_start + g * v_stride..][..len * hd];
                let queries = &q[g * n_rep * hd..(g + 1) * n_rep * hd];
                // SAFETY: query heads g·n_rep.. of `out` belong to this worker's KV head g.
                let out =
                    unsafe { std::slice::from_raw_parts_mut(dst.at(g * n_rep * hd), n_rep * hd) };
                attend_group(queries, keys, values, hd, self.scale, &mut scores, out);
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((1, 1, self.n_head * hd))))
    }
}

/// The query heads sharing one KV head: scores for every cached position, softmax, and the
/// weighted sum of values, each key and value row read once for all of them.
fn attend_group(
    queries: &[f32],
    keys: &[f32],
    values: &[f32],
    hd: usize,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let n_rep = queries.len() / hd;
    let len = keys.len() / hd;
    for (j, key) in keys.chunks_exact(hd).enumerate() {
        for (r, query) in queries.chunks_exact(hd).enumerate() {
            scores[r * len + j] = dot(query, key) * scale;
        }
    }
    for r in 0..n_rep {
        let row = &mut scores[r * len..(r + 1) * len];
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0f32;
        for s in row.iter_mut() {
            *s = (*s - max).exp();
            sum += *s;
        }
        let o = &mut out[r * hd..(r + 1) * hd];
        o.fill(0.0);
        for (p, value) in row.iter().zip(values.chunks_exact(hd)) {
            let w = p / sum;
            for (o, x) in o.iter_mut().zip(value) {
                *o += w * x;
            }
        }
    }
}

/// Dot product in eight independent lanes, so it vectorises.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    for (x, y) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        for i in 0..8 {
            lanes[i] += x[i] * y[i];
        }
    }
    let tail: f32 = a
        .chunks_exact(8)
        .remainder()
        .iter()
        .zip(b.chunks_exact(8).remainder())
        .map(|(x, y)| x * y)
        .sum();
    lanes.iter().sum::<f32>() + tail
}
