//! Shared services between the web layer and the engine: the conversation service every
//! front end asks through (`conversation`), the engine actor that owns the
//! model (`engine`), the chat pipeline from request to prompt tokens (`chat`), the typed
//! event stream of a generation (`events`), the real and stub backends, persistent
//! conversations (`sessions`) and following an answer another server writes in a shared
//! database (`elsewhere`), the built-in tools the server runs for the model (`tools`)
//! and the engine's counters (`metrics`). Nothing here knows HTTP.

pub mod agent;
pub mod backend;
pub mod chat;
pub mod conversation;
pub mod elsewhere;
pub mod engine;
pub mod error;
pub mod events;
pub mod kv_budget;
pub mod metrics;
pub mod remote;
pub mod runs;
pub mod sessions;
pub mod structured;
pub mod stub;
pub mod token_model;
pub mod tools;
pub mod truncation;

pub use backend::{BackendSpec, ModelInfo};
pub use conversation::{Ask, ConversationError, Conversations, Started};
pub use engine::{Engine, EngineLimits, GenerationStream, Reply};
pub use error::ServiceError;
pub use runs::Runs;
pub use sessions::SessionStore;
