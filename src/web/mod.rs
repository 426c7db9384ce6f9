//! Layer 1: HTTP (Axum routes, SSE streaming, MiniJinja pages).
//!
//! Empty until the web issue lands; the folder exists so the architecture stays visible.

pub mod api;
pub mod app;
pub mod assets;
pub mod conversations;
pub mod error;
pub mod json;
pub mod markdown;
pub mod openai;
pub mod page;
pub mod sse;
pub mod transcripts;

pub use app::{app, AppState};
