//! The kernels as candle ops, so the forward pass stays candle code: a `CustomOp1` whose CPU
//! forward quantizes its input once and runs one or more packed matrices on it.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};

use super::{matmul, swiglu, Activations, PackedMatrix};

/// What a packed matmul op computes from its input.
enum Product {
    /// The matrices' outputs side by side.
    Concat(Vec<Arc<PackedMatrix>>),
    /// `silu(x·gateᵀ) ⊙ (x·upᵀ)`.
    SwiGlu(Arc<PackedMatrix>, Arc<PackedMatrix>),
}

/// A candle op over packed weights; CPU only (CUDA keeps candle's `QMatMul`).
pub struct PackedOp(Product);

impl PackedOp {
    pub fn concat(mats: Vec<Arc<PackedMatrix>>) -> Self {
        Self(Product::Concat(mats))
    }

    pub fn swiglu(gate: Arc<PackedMatrix>, up: Arc<PackedMatrix>) -> Self {
        Self(Product::SwiGlu(gate, up))
    }

    fn cols(&self) -> usize {
        match &self.0 {
            Product::Concat(m) => m[0].cols(),
            Product::SwiGlu(g, _) => g.cols(),
        }
    }

    fn width(&self) -> usize {
        match &self.0 {
            Product::Concat(m) => m.iter().map(|m| m.rows()).sum(),
            Product::SwiGlu(g, _) => g.rows(),
        }
    }

    /// Applies the op to `x` (`(..., cols)`), giving `(..., width)`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.contiguous()?.apply_op1_no_bwd(self)
    }
}

impl CustomOp1 for PackedOp {
    fn name(&self) -> &'static str {
        "smolbot-packed-matmul"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("packed matmul takes f32 input");
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("packed matmul takes a contiguous input");
        };
        let dims = layout.shape().dims();
        let cols = *dims.last().unwrap_or(&0);
        if cols != self.cols() {
            candle_core::bail!(
                "packed matmul: input has {cols} columns, the weights {}",
                self.cols()
            );
        }
        let rows = (end - start) / cols;
        let acts = Activations::quantize(&data[start..end], rows, cols);
        let out = match &self.0 {
            Product::Concat(mats) => {
                let refs: Vec<&PackedMatrix> = mats.iter().map(|m| m.as_ref()).collect();
                matmul(&refs, &acts)
            }
            Product::SwiGlu(gate, up) => swiglu(gate, up, &acts),
        };
        let mut out_dims = dims.to_vec();
        *out_dims.last_mut().expect("dims checked above") = self.width();
        Ok((CpuStorage::F32(out), Shape::from(out_dims)))
    }
}
