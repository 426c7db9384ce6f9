//! Errors of the inference layer. Every message names the file or tensor at fault and what
//! was expected, so a user can act on it without reading code.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum InferenceError {
    #[error("{path}: cannot open: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a valid GGUF file: {reason}")]
    Malformed { path: PathBuf, reason: String },
    #[error("{path}: metadata key `{key}` is missing")]
    MissingKey { path: PathBuf, key: String },
    #[error("{path}: metadata key `{key}` {problem}")]
    BadKey {
        path: PathBuf,
        key: String,
        problem: String,
    },
    #[error("{path}: tensor `{tensor}`: {problem}")]
    BadTensor {
        path: PathBuf,
        tensor: String,
        problem: String,
    },
    #[error("{path}: architecture `{arch}` is not supported (supported: {supported})")]
    UnsupportedArchitecture {
        path: PathBuf,
        arch: String,
        supported: String,
    },
    #[error("the context is full: {needed} tokens needed, the model's context holds {limit}")]
    ContextFull { needed: usize, limit: usize },
    #[error("token id {id} is outside the vocabulary of {vocab} tokens")]
    TokenOutOfRange { id: u32, vocab: usize },
    #[error(
        "the cache holds {cached} tokens but the prompt has {prompt}: at least one prompt token \
         must be left to run (and scoring the prompt needs an empty cache)"
    )]
    CacheMismatch { cached: usize, prompt: usize },
    #[error("the prompt is empty: at least one token is needed to generate from")]
    EmptyPrompt,
    #[error("a batched step needs one token per sequence: {tokens} tokens for {caches} caches")]
    BatchShape { tokens: usize, caches: usize },
    #[error("SMOLBOT_KERNELS: {0}")]
    Kernels(String),
    #[error("SMOLBOT_CACHE_TYPE: {0}")]
    CacheType(String),
    #[error("invalid sampling setting: {0}")]
    Sampling(String),
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, InferenceError>;
