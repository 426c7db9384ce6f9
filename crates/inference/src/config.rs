//! The shape of a Llama-family decoder as the forward pass needs it, and the tensors such a
//! model must have. Built by the model-specific layer from GGUF metadata; nothing here reads
//! metadata keys itself.

use candle_core::quantized::GgmlDType;

use super::gguf::{dtype_name, GgufFile};

/// Dimensions and positional-encoding plan of a decoder-only transformer.
#[derive(Debug, Clone, PartialEq)]
pub struct TransformerConfig {
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub n_ff: usize,
    pub vocab_size: usize,
    /// Longest sequence the model was trained for; the KV cache grows up to it.
    pub context_length: usize,
    pub rms_eps: f64,
    pub rope_theta: f64,
    /// Leading dimensions of each head that RoPE rotates (the rest pass through).
    pub rope_dim: usize,
    pub rope_scaling: RopeScaling,
    /// One entry per layer: `true` when the layer applies RoPE, `false` for NoPE layers.
    pub rope_layers: Vec<bool>,
}

/// Context-extension scheme for RoPE frequencies, as GGUF's `rope.scaling.*` keys state it.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    Linear {
        factor: f64,
    },
    Yarn {
        factor: f64,
        original_context: usize,
        beta_fast: f64,
        beta_slow: f64,
        ext_factor: f64,
        attn_factor: f64,
    },
}

/// A tensor the forward pass reads: its name and row-major shape (candle's order).
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub required: bool,
}

/// Tensor types the CPU and CUDA paths can multiply with.
pub const SUPPORTED_DTYPES: &[GgmlDType] = &[
    GgmlDType::F32,
    GgmlDType::F16,
    GgmlDType::BF16,
    GgmlDType::Q4_0,
    GgmlDType::Q4_1,
    GgmlDType::Q5_0,
    GgmlDType::Q5_1,
    GgmlDType::Q8_0,
    GgmlDType::Q2K,
    GgmlDType::Q3K,
    GgmlDType::Q4K,
    GgmlDType::Q5K,
    GgmlDType::Q6K,
];

impl TransformerConfig {
    pub fn q_dim(&self) -> usize {
        self.n_head * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.n_head_kv * self.head_dim
    }

    /// Indices of the layers that skip RoPE.
    pub fn nope_layers(&self) -> Vec<usize> {
        self.rope_layers
            .iter()
            .enumerate()
            .filter(|(_, r)| !**r)
            .map(|(i, _)| i)
            .collect()
    }

    /// Every tensor the forward pass reads; `output.weight` is optional (tied embeddings).
    pub fn expected_tensors(&self) -> Vec<TensorSpec> {
        let spec = |name: String, shape: Vec<usize>| TensorSpec {
            name,
            shape,
            required: true,
        };
        let (d, q, kv, ff) = (self.n_embd, self.q_dim(), self.kv_dim(), self.n_ff);
        let mut specs = vec![
            spec("token_embd.weight".into(), vec![self.vocab_size, d]),
            spec("output_norm.weight".into(), vec![d]),
            TensorSpec {
                name: "output.weight".into(),
                shape: vec![self.vocab_size, d],
                required: false,
            },
        ];
        for i in 0..self.n_layer {
            let b = |s: &str| format!("blk.{i}.{s}.weight");
            specs.extend([
                spec(b("attn_norm"), vec![d]),
                spec(b("attn_q"), vec![q, d]),
                spec(b("attn_k"), vec![kv, d]),
                spec(b("attn_v"), vec![kv, d]),
                spec(b("attn_output"), vec![d, q]),
                spec(b("ffn_norm"), vec![d]),
                spec(b("ffn_gate"), vec![ff, d]),
                spec(b("ffn_up"), vec![ff, d]),
                spec(b("ffn_down"), vec![d, ff]),
            ]);
        }
        specs
    }

    /// Checks the dimensions against each other, then every expected tensor of `file`;
    /// returns all problems found, each naming the tensor and what was expected.
    pub fn validate(&self, file: &GgufFile) -> Vec<String> {
        let mut problems = Vec::new();
        if self.n_head == 0 || self.n_head_kv == 0 || !self.n_head.is_multiple_of(self.n_head_kv) {
            problems.push(format!(
                "head counts: {} query heads must be a non-zero multiple of {} KV heads",
                self.n_head, self.n_head_kv
            ));
        }
        if self.rope_dim > self.head_dim || !self.rope_dim.is_multiple_of(2) {
            problems.push(format!(
                "rope dimension {} must be even and at most the head dimension {}",
                self.rope_dim, self.head_dim
            ));
        }
        if self.rope_layers.len() != self.n_layer {
            problems.push(format!(
                "RoPE plan covers {} layers, the model has {}",
                self.rope_layers.len(),
                self.n_layer
            ));
        }
        for spec in self.expected_tensors() {
            let Some(info) = file.tensor_info(&spec.name) else {
                if spec.required {
                    problems.push(format!(
                        "tensor `{}` is missing (expected shape {:?})",
                        spec.name, spec.shape
                    ));
                }
                continue;
            };
            if info.shape.dims() != spec.shape.as_slice() {
                problems.push(format!(
                    "tensor `{}` has shape {:?}, expected {:?}",
                    spec.name,
                    info.shape.dims(),
                    spec.shape
                ));
            }
            if !SUPPORTED_DTYPES.contains(&info.ggml_dtype) {
                problems.push(format!(
                    "tensor `{}` has unsupported type {}; supported: {}",
                    spec.name,
                    dtype_name(info.ggml_dtype),
                    SUPPORTED_DTYPES
                        .iter()
                        .map(|d| dtype_name(*d))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
        problems
    }
}
