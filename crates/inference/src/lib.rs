//! Layer 2: standard transformer inference on candle — GGUF loading and validation, the
//! quantized forward pass with its KV cache, sampling and the generation loop.
//!
//! Nothing here knows SmolLM3's chat template or HTTP; the model's own facts arrive as a
//! [`TransformerConfig`] built by the `smollm3` layer.

pub mod config;
pub mod device;
pub mod error;
pub mod generate;
pub mod generation;
pub mod gguf;
pub mod kernels;
pub mod kv_cache;
pub mod linear;
pub mod logprobs;
pub mod model;
pub mod perplexity;
pub mod prefix_cache;
pub mod rope;
pub mod sampling;
pub mod sequence;

pub use config::{RopeScaling, TransformerConfig};
pub use error::InferenceError;
pub use gguf::GgufFile;
pub use kv_cache::{CacheType, SequenceCache};
pub use model::{Transformer, WeightFormat};
