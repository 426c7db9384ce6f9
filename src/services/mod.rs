//! Shared services between the web layer and the engine: sessions, streaming fan-out, metrics.
//!
//! Empty until the services issue lands; the folder exists so the architecture stays visible.

pub mod backend;
pub mod chat;
pub mod engine;
pub mod error;
pub mod events;
pub mod sessions;
pub mod stub;

pub use backend::{BackendSpec, ModelInfo};
pub use engine::{Engine, GenerationStream};
pub use error::ServiceError;
pub use sessions::SessionStore;
