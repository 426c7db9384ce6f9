//! Errors of the SmolLM3 layer.

use crate::inference::InferenceError;

#[derive(Debug, thiserror::Error)]
pub enum Smollm3Error {
    #[error(transparent)]
    Inference(#[from] InferenceError),
    #[error("{path}: tokenizer: {problem}")]
    Tokenizer { path: String, problem: String },
    #[error("tokenizing failed: {0}")]
    Encode(String),
}
