//! Rotary position embedding tables, including YaRN context extension as llama.cpp's
//! `ggml_rope_ext` computes it (same frequency ramp and attention-magnitude factor).
//!
//! Tables are made per forward call for just the positions in it, so there is no
//! precomputed table that would cap the context.

use std::f64::consts::PI;

use candle_core::{DType, Device, Tensor};

use super::config::{RopeScaling, TransformerConfig};

/// Per-pair rotation frequencies and the magnitude factor applied to cos/sin.
#[derive(Debug, Clone)]
pub struct RopeFrequencies {
    inv_freq: Vec<f64>,
    mscale: f64,
}

impl RopeFrequencies {
    pub fn new(cfg: &TransformerConfig) -> Self {
        let n_dims = cfg.rope_dim;
        let base = cfg.rope_theta;
        let plain: Vec<f64> = (0..n_dims / 2)
            .map(|i| base.powf(-((2 * i) as f64) / n_dims as f64))
            .collect();
        match cfg.rope_scaling {
            RopeScaling::None => Self {
                inv_freq: plain,
                mscale: 1.0,
            },
            RopeScaling::Linear { factor } => Self {
                inv_freq: plain.iter().map(|f| f / factor).collect(),
                mscale: 1.0,
            },
            RopeScaling::Yarn {
                factor,
                original_context,
                beta_fast,
                beta_slow,
                ext_factor,
                attn_factor,
            } => {
                let freq_scale = 1.0 / factor;
                let (low, high) =
                    yarn_corr_dims(n_dims, original_context, base, beta_fast, beta_slow);
                let inv_freq = plain
                    .iter()
                    .enumerate()
                    .map(|(i, f)| {
                        let ramp = yarn_ramp(low, high, 2 * i) * ext_factor;
                        f * (freq_scale * (1.0 - ramp) + ramp)
                    })
                    .collect();
                let mscale = if ext_factor != 0.0 {
                    attn_factor * (1.0 + 0.1 * (1.0 / freq_scale).ln())
                } else {
                    attn_factor
                };
                Self { inv_freq, mscale }
            }
        }
    }

    /// `(cos, sin)`, each `(len, rope_dim / 2)` f32, for positions `start..start + len`.
    pub fn tables(
        &self,
        start: usize,
        len: usize,
        device: &Device,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(len * half);
        let mut sin = Vec::with_capacity(len * half);
        for p in start..start + len {
            for f in &self.inv_freq {
                let theta = p as f64 * f;
                cos.push((theta.cos() * self.mscale) as f32);
                sin.push((theta.sin() * self.mscale) as f32);
            }
        }
        let cos = Tensor::from_vec(cos, (len, half), device)?.to_dtype(DType::F32)?;
        let sin = Tensor::from_vec(sin, (len, half), device)?.to_dtype(DType::F32)?;
        Ok((cos, sin))
    }
}

fn yarn_corr_dim(n_dims: usize, n_ctx_orig: usize, n_rot: f64, base: f64) -> f64 {
    n_dims as f64 * (n_ctx_orig as f64 / (n_rot * 2.0 * PI)).ln() / (2.0 * base.ln())
}

fn yarn_corr_dims(
    n_dims: usize,
    n_ctx_orig: usize,
    base: f64,
    beta_fast: f64,
    beta_slow: f64,
) -> (f64, f64) {
    let start = yarn_corr_dim(n_dims, n_ctx_orig, beta_fast, base).floor();
    let end = yarn_corr_dim(n_dims, n_ctx_orig, beta_slow, base).ceil();
    (start.max(0.0), end.min(n_dims as f64 - 1.0))
}

fn yarn_ramp(low: f64, high: f64, i0: usize) -> f64 {
    let y = (i0 as f64 / 2.0 - low) / (high - low).max(0.001);
    1.0 - y.clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(scaling: RopeScaling) -> TransformerConfig {
        TransformerConfig {
            n_layer: 1,
            n_embd: 64,
            n_head: 1,
            n_head_kv: 1,
            head_dim: 64,
            n_ff: 64,
            vocab_size: 8,
            context_length: 1024,
            rms_eps: 1e-5,
            rope_theta: 10000.0,
            rope_dim: 64,
            rope_scaling: scaling,
            rope_layers: vec![true],
        }
    }

    #[test]
    fn plain_frequencies_follow_theta() {
        let f = RopeFrequencies::new(&cfg(RopeScaling::None));
        assert_eq!(f.inv_freq[0], 1.0);
        assert!((f.inv_freq[1] - 10000f64.powf(-2.0 / 64.0)).abs() < 1e-12);
        assert_eq!(f.mscale, 1.0);
    }

    #[test]
    fn yarn_keeps_high_frequencies_and_scales_low_ones() {
        let plain = RopeFrequencies::new(&cfg(RopeScaling::None));
        let yarn = RopeFrequencies::new(&cfg(RopeScaling::Yarn {
            factor: 4.0,
            original_context: 256,
            beta_fast: 32.0,
            beta_slow: 1.0,
            ext_factor: 1.0,
            attn_factor: 1.0,
        }));
        // Fastest-rotating pair is extrapolated unchanged, the slowest interpolated by 1/factor.
        assert!((yarn.inv_freq[0] - plain.inv_freq[0]).abs() < 1e-12);
        let last = plain.inv_freq.len() - 1;
        assert!((yarn.inv_freq[last] - plain.inv_freq[last] / 4.0).abs() < 1e-12);
        assert!((yarn.mscale - (1.0 + 0.1 * 4f64.ln())).abs() < 1e-12);
    }

    #[test]
    fn tables_start_at_the_given_position() {
        let f = RopeFrequencies::new(&cfg(RopeScaling::None));
        let (cos, sin) = f.tables(3, 2, &Device::Cpu).unwrap();
        assert_eq!(cos.dims(), &[2, 32]);
        let s = sin.to_vec2::<f32>().unwrap();
        assert!((s[0][0] - 3f32.sin()).abs() < 1e-6);
        assert!((s[1][0] - 4f32.sin()).abs() < 1e-6);
    }
}
