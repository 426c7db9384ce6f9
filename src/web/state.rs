//! What every handler can reach ([`AppState`]) and the checks they share, apart from the
//! router (`app`) and the handlers, so that handlers depend on it and the router on
//! them, without a circle.

use std::sync::Arc;

use axum::extract::FromRef;

use super::error::ApiError;
use super::page::PageState;
use crate::services::{Conversations, Engine, Runs, SessionStore};

/// What every handler can reach: the conversation service (and through it the engine, the
/// store and the answers being written) and the API key.
#[derive(Clone)]
pub struct AppState {
    api_key: Option<Arc<str>>,
    /// Shared by the page, the conversations API and the OpenAI API, so a conversation has
    /// one answer being written at a time, whoever sent the message.
    conversations: Conversations,
}

impl AppState {
    /// The app over `engine`, keeping conversations in `store` (a server's on disk; a test's
    /// may be [`SessionStore::in_memory`]). `api_key`: when set, `/v1/*` requires
    /// `Authorization: Bearer <key>`.
    pub fn new(engine: Engine, store: SessionStore, api_key: Option<String>) -> Self {
        Self {
            api_key: api_key.filter(|k| !k.is_empty()).map(Arc::from),
            conversations: Conversations::new(engine, Runs::new(store)),
        }
    }

    pub fn engine(&self) -> &Engine {
        self.conversations.engine()
    }

    pub fn api_key(&self) -> Option<&str> {
        self.api_key.as_deref()
    }

    pub fn sessions(&self) -> &SessionStore {
        self.conversations.store()
    }

    /// The conversation service every front end asks through.
    pub fn conversations(&self) -> &Conversations {
        &self.conversations
    }

    pub fn runs(&self) -> &Runs {
        self.conversations.runs()
    }
}

/// The page's handlers see the same conversation service, as their own substate.
impl FromRef<AppState> for PageState {
    fn from_ref(state: &AppState) -> Self {
        PageState::new(state.conversations.clone())
    }
}

/// Refuses a `model` other than the one loaded; an absent or empty one means "the model".
pub fn check_model(state: &AppState, model: Option<&str>) -> Result<(), ApiError> {
    let id = &state.engine().info().id;
    match model {
        None | Some("") => Ok(()),
        Some(name) if name == id => Ok(()),
        Some(name) => Err(ApiError {
            param: Some("model".into()),
            code: Some("model_not_found"),
            ..ApiError::not_found(format!(
                "the model `{name}` does not exist; this server runs `{id}`"
            ))
        }),
    }
}
