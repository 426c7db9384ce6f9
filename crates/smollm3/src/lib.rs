//! Layer 3: what is SmolLM3's own — its configuration as GGUF metadata states it (including
//! which layers skip RoPE), its tokenizer, and synthetic test models with its true layout.

pub mod chat_template;
pub mod config;
pub mod error;
pub mod grammar;
pub mod loader;
pub mod prompt;
pub mod pyformat;
pub mod synthetic;
pub mod thinking;
pub mod thinking_budget;
pub mod tokenizer;
pub mod tool_calls;

pub use config::{Architecture, ModelConfig};
pub use error::Smollm3Error;
pub use loader::LoadedModel;
pub use tokenizer::{GgufTokenizer, StreamDecoder};
