//! The model's weight matrices, held either as candle `QMatMul`s (the reference path, CUDA,
//! and types our kernels do not read) or as our packed CPU matrices, behind one call.

use std::sync::Arc;

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};

use super::error::Result;
use super::gguf::GgufFile;
use super::kernels::op::PackedOp;
use super::kernels::{Kernels, PackedMatrix, Quant, Tier};

/// One weight matrix `(out, in)` applied as `x · Wᵀ`.
#[derive(Clone)]
pub enum Linear {
    Candle(QMatMul),
    Packed(Arc<PackedMatrix>),
}

/// How a model's matrices are loaded.
#[derive(Debug, Clone, Copy)]
pub enum Loading {
    /// Quantized, on these kernels (ours only apply on the CPU).
    Quantized(Kernels),
    /// Expanded to f32 (exact arithmetic, for fidelity checks).
    Dequantized,
}

impl Linear {
    /// Reads tensor `name` of `file` into the form `loading` asks for.
    pub fn load(file: &GgufFile, name: &str, device: &Device, loading: Loading) -> Result<Self> {
        if let Some(m) = packed(file, name, device, loading)? {
            return Ok(Linear::Packed(Arc::new(m)));
        }
        Self::from_qtensor(Arc::new(file.tensor(name, device)?), device, loading)
    }

    pub fn from_qtensor(t: Arc<QTensor>, device: &Device, loading: Loading) -> Result<Self> {
        Ok(Linear::Candle(match loading {
            Loading::Dequantized => QMatMul::Tensor(t.dequantize(device)?),
            Loading::Quantized(_) => QMatMul::from_arc(t)?,
        }))
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Linear::Candle(m) => m.forward(x)?,
            Linear::Packed(m) => PackedOp::concat(vec![m.clone()]).forward(x)?,
        })
    }

    /// Whether our packed kernels run this matrix.
    pub fn is_packed(&self) -> bool {
        self.packed().is_some()
    }

    fn packed(&self) -> Option<&Arc<PackedMatrix>> {
        match self {
            Linear::Packed(m) => Some(m),
            Linear::Candle(_) => None,
        }
    }

    /// Which kernels run this matrix ("candle" or our tier's name).
    /// Our kernels' tier, where this matrix runs on them.
    pub fn tier(&self) -> Option<Tier> {
        self.packed().map(|m| m.tier())
    }

    pub fn kernels(&self) -> &'static str {
        match self {
            Linear::Candle(_) => "candle",
            Linear::Packed(m) => m.tier().name(),
        }
    }

    /// Bytes of weights this matrix holds in our packed form (0 on candle's path).
    pub fn packed_bytes(&self) -> usize {
        self.packed().map_or(0, |m| m.bytes())
    }
}

/// `x · Wᵢᵀ` for each matrix; when all are packed, `x` is quantized once and one pass
/// computes them all (Q, K and V of a layer).
pub fn forward_all(x: &Tensor, mats: &[&Linear]) -> Result<Vec<Tensor>> {
    let packed: Option<Vec<Arc<PackedMatrix>>> = mats.iter().map(|m| m.packed().cloned()).collect();
    let Some(packed) = packed else {
        return mats.iter().map(|m| m.forward(x)).collect();
    };
    let widths: Vec<usize> = packed.iter().map(|m| m.rows()).collect();
    let joint = PackedOp::concat(packed).forward(x)?;
    let last = joint.rank() - 1;
    let mut at = 0;
    let mut outs = Vec::with_capacity(widths.len());
    for w in widths {
        outs.push(joint.narrow(last, at, w)?);
        at += w;
    }
    Ok(outs)
}

/// `silu(x · gateᵀ) ⊙ (x · upᵀ)`, fused into one pass when both are packed.
pub fn swiglu(x: &Tensor, gate: &Linear, up: &Linear) -> Result<Tensor> {
    if let (Some(g), Some(u)) = (gate.packed(), up.packed()) {
        return Ok(PackedOp::swiglu(g.clone(), u.clone()).forward(x)?);
    }
    Ok((candle_nn::ops::silu(&gate.forward(x)?)? * up.forward(x)?)?)
}

/// The token embedding table: candle's quantized tensor, or the packed matrix it shares
/// with a tied output head (one copy of the weights for both).
pub enum Embedding {
    Candle(Arc<QTensor>),
    Packed(Arc<PackedMatrix>),
}

impl Embedding {
    pub fn load(file: &GgufFile, name: &str, device: &Device, loading: Loading) -> Result<Self> {
        if let Some(m) = packed(file, name, device, loading)? {
            return Ok(Embedding::Packed(Arc::new(m)));
        }
        Ok(Embedding::Candle(Arc::new(file.tensor(name, device)?)))
    }

    /// The table as an output head tied to it, sharing its weights.
    pub fn as_head(&self, device: &Device, loading: Loading) -> Result<Linear> {
        match self {
            Embedding::Packed(m) => Ok(Linear::Packed(m.clone())),
            Embedding::Candle(t) => Linear::from_qtensor(t.clone(), device, loading),
        }
    }

    /// Rows `ids` of the table as `(ids, dim)` f32.
    pub fn forward(&self, ids: &[u32], device: &Device) -> Result<Tensor> {
        match self {
            Embedding::Candle(t) => Ok(t.embedding(&Tensor::new(ids, device)?)?),
            Embedding::Packed(m) => {
                let dim = m.cols();
                let mut out = vec![0f32; ids.len() * dim];
                for (&id, row) in ids.iter().zip(out.chunks_exact_mut(dim)) {
                    m.dequantize_row(id as usize, row);
                }
                Ok(Tensor::from_vec(out, (ids.len(), dim), device)?)
            }
        }
    }
}

/// Tensor `name` as a packed matrix, when `loading` asks for our kernels, the device is the
/// CPU and the tensor is a 2-D Q4_K/Q6_K matrix our kernels read; `None` otherwise.
fn packed(
    file: &GgufFile,
    name: &str,
    device: &Device,
    loading: Loading,
) -> Result<Option<PackedMatrix>> {
    let Loading::Quantized(Kernels::Own(tier)) = loading else {
        return Ok(None);
    };
    if !device.is_cpu() {
        return Ok(None);
    }
    let Some(info) = file.tensor_info(name) else {
        return Ok(None);
    };
    let (Some(quant), [rows, cols]) = (Quant::of(info.ggml_dtype), info.shape.dims()) else {
        return Ok(None);
    };
    let (rows, cols) = (*rows, *cols);
    if cols % super::kernels::blocks::QK_K != 0 {
        return Ok(None);
    }
    let reader = file.tensor_reader(name)?;
    let bytes = reader.len();
    let expected = rows.checked_mul(cols / super::kernels::blocks::QK_K * quant.block_bytes());
    if expected != Some(bytes) {
        return Err(file.bad_tensor(
            name,
            format!("{rows}×{cols} does not match its {bytes} bytes"),
        ));
    }
    let m = PackedMatrix::load(quant, rows, cols, tier, |at, buf| reader.read_at(at, buf))
        .map_err(|e| file.bad_tensor(name, format!("cannot be read: {e}")))?;
    Ok(m)
}
