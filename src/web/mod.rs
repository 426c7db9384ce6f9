//! Layer 1: HTTP — the OpenAI-compatible API, the chat page (MiniJinja templates, vendored
//! HTMX, SSE), the conversations API, and the one table that maps service errors to status
//! codes. Handlers translate between the wire and `services`; they hold no model logic.

pub mod api;
pub mod app;
pub mod assets;
pub mod auth;
pub mod completions;
pub mod conversations;
pub mod error;
pub mod hosts;
pub mod json;
pub mod login;
pub mod markdown;
pub mod openai;
pub mod origin;
pub mod page;
pub mod refusal;
pub mod server;
pub mod sse;
pub mod state;
pub mod transcripts;

pub use app::app;
pub use state::AppState;
