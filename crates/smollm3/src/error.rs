//! Errors of the SmolLM3 layer.

use smolbot_inference::InferenceError;

#[derive(Debug, thiserror::Error)]
pub enum Smollm3Error {
    #[error(transparent)]
    Inference(#[from] InferenceError),
    #[error("{path}: tokenizer: {problem}")]
    Tokenizer { path: String, problem: String },
    #[error("tokenizing failed: {0}")]
    Encode(String),
    #[error("chat template does not compile: {0}")]
    TemplateCompile(String),
    #[error("chat template failed to render: {0}")]
    TemplateRender(String),
    #[error("chat template input: {0}")]
    TemplateInput(String),
    #[error("malformed tool call ({problem}): {text}")]
    ToolCall { problem: String, text: String },
    /// A schema or grammar llguidance cannot compile (the message names the keyword or
    /// the line), or a constrained generation that left its grammar.
    #[error("{0}")]
    Grammar(String),
    #[error("thinking budget: {0}")]
    ThinkingBudget(String),
    #[error("rope scaling: {0}")]
    RopeOverride(String),
}
