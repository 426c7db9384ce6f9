//! smolbot: a self-hosted chat server for SmolLM3-3B.
//!
//! The layers point one way: `web` → `services` → `smollm3` → `inference`.
//! `inference` is generic transformer machinery on candle and knows nothing of SmolLM3's
//! template or of HTTP; `smollm3` holds what is the model's own (config, tokenizer, template);
//! `services` and `web` sit on top.

pub mod hub;
pub mod services;
pub mod web;

/// The bottom layers are crates of their own (`crates/inference`, `crates/smollm3`), so the
/// direction is a compile-time fact; re-exported here so the app and its tests keep naming
/// them `smolbot::inference` and `smolbot::smollm3`.
pub use smolbot_inference as inference;
pub use smolbot_smollm3 as smollm3;
