//! The forward pass of a Llama-family decoder on quantized weights, with a per-sequence KV
//! cache so each new token costs one step.
//!
//! Written on candle ops rather than taken from candle-transformers: its
//! `quantized_smollm3` fixes the NoPE interval and caps the context at 4,096 tokens, and
//! `quantized_llama` knows no NoPE layers. Q/K weights in GGUF files are laid out for
//! interleaved ("normal") RoPE, so `rope_i` is used directly, with no re-permutation.

use candle_core::{DType, Device, Tensor, D};
use candle_nn::kv_cache::KvCache;

use super::config::TransformerConfig;
use super::error::{InferenceError, Result};
use super::gguf::GgufFile;
use super::kernels::attention::Attention;
use super::kernels::{Kernels, Tier};
use super::kv_cache::{CacheType, SequenceCache};
use super::linear::{self, Embedding, Linear, Loading};
use super::rope::RopeFrequencies;

/// Longest run of tokens pushed through attention at once: bounds the score matrix of a long
/// prompt to `heads × 512 × context` floats instead of `heads × context²`.
pub const PREFILL_CHUNK: usize = 512;

struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    fn load(file: &GgufFile, name: &str, eps: f64, device: &Device) -> Result<Self> {
        let weight = file.tensor(name, device)?.dequantize(device)?;
        Ok(Self { weight, eps })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::rms_norm(x, &self.weight, self.eps as f32)?)
    }
}

struct Layer {
    attn_norm: RmsNorm,
    wq: Linear,
    wk: Linear,
    wv: Linear,
    wo: Linear,
    ffn_norm: RmsNorm,
    gate: Linear,
    up: Linear,
    down: Linear,
    use_rope: bool,
}

/// A loaded model: quantized weights plus the configuration they were validated against.
pub struct Transformer {
    cfg: TransformerConfig,
    embed: Embedding,
    layers: Vec<Layer>,
    norm: RmsNorm,
    lm_head: Linear,
    rope: RopeFrequencies,
    device: Device,
    /// Attention runs on our kernels' pool at this tier (where our kernels run the matmuls).
    own_attention: Option<Tier>,
    cache_type: CacheType,
}

/// How weight matrices are held in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightFormat {
    /// As stored in the file; matmuls quantize activations like llama.cpp (the normal mode),
    /// on the kernels `SMOLBOT_KERNELS` names, else the best this CPU runs.
    #[default]
    Quantized,
    /// As stored in the file, on these kernels (tests compare the paths).
    QuantizedOn(Kernels),
    /// Expanded to f32 (about 4× the memory of Q4): exact arithmetic, for fidelity checks.
    Dequantized,
}

impl WeightFormat {
    fn loading(self) -> Result<Loading> {
        Ok(match self {
            WeightFormat::Quantized => {
                Loading::Quantized(Kernels::from_env().map_err(InferenceError::Kernels)?)
            }
            WeightFormat::QuantizedOn(k) => Loading::Quantized(k),
            WeightFormat::Dequantized => Loading::Dequantized,
        })
    }
}

impl Transformer {
    /// Loads every tensor of `file` that `cfg` names, after validating them all.
    pub fn load(file: &GgufFile, cfg: TransformerConfig, device: &Device) -> Result<Self> {
        Self::load_with(file, cfg, device, WeightFormat::Quantized)
    }

    pub fn load_with(
        file: &GgufFile,
        cfg: TransformerConfig,
        device: &Device,
        format: WeightFormat,
    ) -> Result<Self> {
        if let Some(problem) = cfg.validate(file).into_iter().next() {
            return Err(InferenceError::Malformed {
                path: file.path().to_path_buf(),
                reason: problem,
            });
        }
        let loading = format.loading()?;
        let qmm = |name: &str| Linear::load(file, name, device, loading);
        let embed = Embedding::load(file, "token_embd.weight", device, loading)?;
        let lm_head = if file.tensor_info("output.weight").is_some() {
            qmm("output.weight")?
        } else {
            embed.as_head(device, loading)?
        };
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for (i, &use_rope) in cfg.rope_layers.iter().enumerate() {
            let n = |s: &str| format!("blk.{i}.{s}.weight");
            layers.push(Layer {
                attn_norm: RmsNorm::load(file, &n("attn_norm"), cfg.rms_eps, device)?,
                wq: qmm(&n("attn_q"))?,
                wk: qmm(&n("attn_k"))?,
                wv: qmm(&n("attn_v"))?,
                wo: qmm(&n("attn_output"))?,
                ffn_norm: RmsNorm::load(file, &n("ffn_norm"), cfg.rms_eps, device)?,
                gate: qmm(&n("ffn_gate"))?,
                up: qmm(&n("ffn_up"))?,
                down: qmm(&n("ffn_down"))?,
                use_rope,
            });
        }
        // Only beside our matmuls: a model whose matrices stay candle's (Q4_1 and other types
        // our kernels do not read) keeps candle's attention too, one path throughout.
        let own_attention = layers
            .iter()
            .all(|l| l.wq.is_packed() && l.down.is_packed())
            .then(|| layers.first().and_then(|l| l.wq.tier()))
            .flatten();
        Ok(Self {
            norm: RmsNorm::load(file, "output_norm.weight", cfg.rms_eps, device)?,
            rope: RopeFrequencies::new(&cfg),
            cfg,
            embed,
            layers,
            lm_head,
            device: device.clone(),
            own_attention,
            cache_type: CacheType::F32,
        })
    }

    pub fn config(&self) -> &TransformerConfig {
        &self.cfg
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Which kernels run the layers' matmuls ("candle" or our tier's name).
    pub fn kernels(&self) -> &'static str {
        self.layers.first().map_or("candle", |l| l.gate.kernels())
    }

    /// Bytes of weights our packed kernels read per decoded token (0 on candle's path).
    pub fn packed_bytes(&self) -> usize {
        let layers: usize = self
            .layers
            .iter()
            .map(|l| {
                [&l.wq, &l.wk, &l.wv, &l.wo, &l.gate, &l.up, &l.down]
                    .iter()
                    .map(|m| m.packed_bytes())
                    .sum::<usize>()
            })
            .sum();
        layers + self.lm_head.packed_bytes()
    }

    pub fn new_cache(&self) -> SequenceCache {
        SequenceCache::new(self.cfg.n_layer)
    }

    /// Keeps keys and values as `requested` where our attention reads them; candle's path
    /// (other quantization types, CUDA) keeps f32, and Q8_0 needs head dims in whole blocks
    /// (f16 otherwise).
    pub fn with_cache_type(mut self, requested: CacheType) -> Self {
        self.cache_type = match (self.own_attention, requested) {
            (None, _) => CacheType::F32,
            (Some(_), CacheType::Q8_0) if !self.cfg.head_dim.is_multiple_of(32) => {
                tracing::warn!(
                    head_dim = self.cfg.head_dim,
                    "a q8_0 KV cache needs head dims divisible by 32; keeping f16"
                );
                CacheType::F16
            }
            (Some(_), requested) => requested,
        };
        self
    }

    /// The element type of this model's KV caches.
    pub fn cache_type(&self) -> CacheType {
        self.cache_type
    }

    /// Runs `tokens` after what `cache` holds and appends them to it. Returns logits as a
    /// `(rows, vocab)` f32 tensor: one row per token when `all_logits`, else the last only.
    pub fn forward(
        &self,
        tokens: &[u32],
        cache: &mut SequenceCache,
        all_logits: bool,
    ) -> Result<Tensor> {
        self.check(tokens, cache.len)?;
        let mut rows = Vec::new();
        let chunks: Vec<&[u32]> = tokens.chunks(PREFILL_CHUNK).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let last = i + 1 == chunks.len();
            if let Some(logits) =
                self.forward_chunk(chunk, cache, all_logits || last, all_logits)?
            {
                rows.push(logits);
            }
        }
        Ok(Tensor::cat(&rows, 0)?)
    }

    /// Caps every sequence at `positions` (prompt and answer), e.g. so the KV caches of
    /// several sequences fit a memory budget.
    pub fn set_context_length(&mut self, positions: usize) {
        self.cfg.context_length = positions;
    }

    /// Bytes one position takes in a sequence's KV cache (keys and values of every layer).
    pub fn kv_bytes_per_position(&self) -> usize {
        self.cfg.n_layer * 2 * self.cfg.n_head_kv * self.cache_type.row_bytes(self.cfg.head_dim)
    }

    /// `tokens` fit after `cached` positions and are all in the vocabulary.
    fn check(&self, tokens: &[u32], cached: usize) -> Result<()> {
        let needed = cached + tokens.len();
        if needed > self.cfg.context_length {
            return Err(InferenceError::ContextFull {
                needed,
                limit: self.cfg.context_length,
            });
        }
        if let Some(&id) = tokens.iter().find(|&&t| t as usize >= self.cfg.vocab_size) {
            return Err(InferenceError::TokenOutOfRange {
                id,
                vocab: self.cfg.vocab_size,
            });
        }
        Ok(())
    }

    /// The feed-forward half of a layer, residual included.
    fn feed_forward(&self, layer: &Layer, x: Tensor) -> Result<Tensor> {
        let h = layer.ffn_norm.forward(&x)?;
        let ffn = layer
            .down
            .forward(&linear::swiglu(&h, &layer.gate, &layer.up)?)?;
        Ok((x + ffn)?)
    }

    /// One decode step of several sequences at once: `tokens[i]` is run after what
    /// `caches[i]` holds. The weight matmuls see all rows together, so each weight block is
    /// read once per step instead of once per sequence (candle tiles the rows); attention
    /// runs per sequence over its own cache. Returns `(sequences, vocab)` f32 logits, row `i`
    /// the same as `forward(&[tokens[i]], caches[i], false)` would give.
    pub fn forward_batch(
        &self,
        tokens: &[u32],
        caches: &mut [&mut SequenceCache],
    ) -> Result<Tensor> {
        let b = tokens.len();
        if b != caches.len() || b == 0 {
            return Err(InferenceError::BatchShape {
                tokens: b,
                caches: caches.len(),
            });
        }
        for (token, cache) in tokens.iter().zip(caches.iter()) {
            self.check(std::slice::from_ref(token), cache.len)?;
        }
        let mut x = self.embed.forward(tokens, &self.device)?.unsqueeze(0)?;
        let tables = caches
            .iter()
            .map(|cache| self.rope.tables(cache.len, 1, &self.device))
            .collect::<candle_core::Result<Vec<_>>>()?;
        for (l, layer) in self.layers.iter().enumerate() {
            let h = layer.attn_norm.forward(&x)?;
            let (q, k, v) = self.project(layer, &h)?;
            let mut outs = Vec::with_capacity(b);
            for (i, cache) in caches.iter_mut().enumerate() {
                let row = |t: &Tensor| -> Result<Tensor> { Ok(t.narrow(2, i, 1)?.contiguous()?) };
                let (cos, sin) = &tables[i];
                let kv = &mut cache.layers[l];
                outs.push(self.attend(layer, row(&q)?, row(&k)?, &row(&v)?, kv, cos, sin, None)?);
            }
            let attn = layer.wo.forward(&Tensor::cat(&outs, 1)?)?;
            x = self.feed_forward(layer, (x + attn)?)?;
        }
        for cache in caches.iter_mut() {
            cache.len += 1;
        }
        let x = self.norm.forward(&x)?;
        Ok(self.lm_head.forward(&x)?.squeeze(0)?.to_dtype(DType::F32)?)
    }

    fn forward_chunk(
        &self,
        tokens: &[u32],
        cache: &mut SequenceCache,
        want_logits: bool,
        all_rows: bool,
    ) -> Result<Option<Tensor>> {
        let t = tokens.len();
        let offset = cache.len;
        let mut x = self.embed.forward(tokens, &self.device)?.unsqueeze(0)?;
        let (cos, sin) = self.rope.tables(offset, t, &self.device)?;
        let mask = causal_mask(t, offset, &self.device)?;
        for (layer, kv) in self.layers.iter().zip(cache.layers.iter_mut()) {
            let h = layer.attn_norm.forward(&x)?;
            let attn = self.attention(layer, &h, kv, &cos, &sin, mask.as_ref())?;
            x = self.feed_forward(layer, (x + attn)?)?;
        }
        cache.len += t;
        if !want_logits {
            return Ok(None);
        }
        let x = if all_rows { x } else { x.narrow(1, t - 1, 1)? };
        let x = self.norm.forward(&x)?;
        let logits = self.lm_head.forward(&x)?.squeeze(0)?.to_dtype(DType::F32)?;
        Ok(Some(logits))
    }

    /// Q, K and V of every row of `h`, as `(1, heads, rows, head_dim)`.
    fn project(&self, layer: &Layer, h: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let cfg = &self.cfg;
        let (_, t, _) = h.dims3()?;
        let heads = |y: &Tensor, n: usize| -> Result<Tensor> {
            Ok(y.reshape((1, t, n, cfg.head_dim))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let qkv = linear::forward_all(h, &[&layer.wq, &layer.wk, &layer.wv])?;
        Ok((
            heads(&qkv[0], cfg.n_head)?,
            heads(&qkv[1], cfg.n_head_kv)?,
            heads(&qkv[2], cfg.n_head_kv)?,
        ))
    }

    fn attention(
        &self,
        layer: &Layer,
        h: &Tensor,
        kv: &mut KvCache,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (q, k, v) = self.project(layer, h)?;
        let out = self.attend(layer, q, k, &v, kv, cos, sin, mask)?;
        layer.wo.forward(&out)
    }

    /// Attention of one sequence's new rows (`q`, `k`, `v` as `(1, heads, t, head_dim)`)
    /// over its cache, which takes the new keys and values; `(1, t, q_dim)` before the output
    /// projection.
    #[allow(clippy::too_many_arguments)]
    fn attend(
        &self,
        layer: &Layer,
        mut q: Tensor,
        mut k: Tensor,
        v: &Tensor,
        kv: &mut KvCache,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let cfg = &self.cfg;
        let t = q.dim(2)?;
        if layer.use_rope {
            q = self.apply_rope(&q, cos, sin)?;
            k = self.apply_rope(&k, cos, sin)?;
        }
        let (k, v) = kv.append(&self.cache_type.store(&k)?, &self.cache_type.store(v)?)?;
        if let Some(tier) = self.own_attention {
            let op = Attention {
                n_head: cfg.n_head,
                n_kv: cfg.n_head_kv,
                head_dim: cfg.head_dim,
                scale: 1.0 / (cfg.head_dim as f32).sqrt(),
                tier,
            };
            return Ok(q.contiguous()?.apply_op3_no_bwd(&k, &v, &op)?);
        }
        let n_rep = cfg.n_head / cfg.n_head_kv;
        // Query heads sharing a KV head are stacked as extra rows, so K and V are never copied.
        let q = q.reshape((1, cfg.n_head_kv, n_rep * t, cfg.head_dim))?;
        let scale = 1.0 / (cfg.head_dim as f64).sqrt();
        let mut scores = (q.matmul(&k.t()?)? * scale)?;
        if let Some(mask) = mask {
            let total = k.dim(2)?;
            let mask = mask
                .unsqueeze(0)?
                .broadcast_as((n_rep, t, total))?
                .reshape((n_rep * t, total))?;
            scores = scores.broadcast_add(&mask)?;
        }
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        Ok(probs
            .matmul(&v)?
            .reshape((1, cfg.n_head, t, cfg.head_dim))?
            .transpose(1, 2)?
            .reshape((1, t, cfg.q_dim()))?)
    }

    fn apply_rope(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let rope_dim = self.cfg.rope_dim;
        if rope_dim == self.cfg.head_dim {
            return Ok(candle_nn::rotary_emb::rope_i(x, cos, sin)?);
        }
        let rotated =
            candle_nn::rotary_emb::rope_i(&x.narrow(3, 0, rope_dim)?.contiguous()?, cos, sin)?;
        let rest = x.narrow(3, rope_dim, self.cfg.head_dim - rope_dim)?;
        Ok(Tensor::cat(&[&rotated, &rest], 3)?.contiguous()?)
    }
}

/// `(t, offset + t)` additive mask: query `i` sees keys `0..=offset + i`. `None` for one token.
fn causal_mask(t: usize, offset: usize, device: &Device) -> candle_core::Result<Option<Tensor>> {
    if t == 1 {
        return Ok(None);
    }
    let total = offset + t;
    let data: Vec<f32> = (0..t)
        .flat_map(|i| {
            (0..total).map(move |j| {
                if j > offset + i {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    Ok(Some(Tensor::from_vec(data, (t, total), device)?))
}

/// Natural-log softmax of each row, for scoring (perplexity).
pub fn log_softmax_rows(logits: &Tensor) -> Result<Tensor> {
    Ok(candle_nn::ops::log_softmax(logits, D::Minus1)?)
}
