//! smolbot: a self-hosted chat server for SmolLM3-3B.
//!
//! The layers point one way: `web` → `services` → `smollm3` → `inference`.
//! `inference` is generic transformer machinery on candle and knows nothing of SmolLM3's
//! template or of HTTP; `smollm3` holds what is the model's own (config, tokenizer, template);
//! `services` and `web` sit on top.

pub mod hub;
pub mod inference;
pub mod services;
pub mod smollm3;
pub mod web;
