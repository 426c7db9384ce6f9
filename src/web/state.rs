//! What every handler can reach ([`AppState`]) and the checks they share, apart from the
//! router (`app`) and the handlers, so that handlers depend on it and the router on
//! them, without a circle.

use axum::extract::FromRef;

use super::auth::{ApiKey, KeyAttempts, LoginSessions};
use super::error::ApiError;
use super::hosts::AllowedHosts;
use super::page::PageState;
use crate::services::{Conversations, Engine, Runs, SessionStore};

/// What every handler can reach: the conversation service (and through it the engine, the
/// store and the answers being written), the API key, the page's logins and the hosts served.
#[derive(Clone)]
pub struct AppState {
    /// When set, every route but `/health` (and the login and static files) needs it.
    api_key: Option<ApiKey>,
    /// The page's logins, when there is a key.
    logins: LoginSessions,
    /// Wrong keys lately, by client, to slow down guessing.
    key_attempts: KeyAttempts,
    /// The `Host` headers answered: loopback names only unless told otherwise.
    allowed_hosts: AllowedHosts,
    /// Shared by the page, the conversations API and the OpenAI API, so a conversation has
    /// one answer being written at a time, whoever sent the message.
    conversations: Conversations,
}

impl AppState {
    /// The app over `engine`, keeping conversations in `store` (a server's on disk; a test's
    /// may be [`SessionStore::in_memory`]). `api_key`: when set (and not empty), every route
    /// but `/health` requires `Authorization: Bearer <key>` or a session from the page's login.
    pub fn new(engine: Engine, store: SessionStore, api_key: Option<String>) -> Self {
        Self {
            api_key: api_key.filter(|k| !k.is_empty()).map(|k| ApiKey::new(&k)),
            logins: LoginSessions::default(),
            key_attempts: KeyAttempts::default(),
            allowed_hosts: AllowedHosts::default(),
            conversations: Conversations::new(engine, Runs::new(store)),
        }
    }

    pub fn engine(&self) -> &Engine {
        self.conversations.engine()
    }

    pub fn api_key(&self) -> Option<&ApiKey> {
        self.api_key.as_ref()
    }

    pub fn logins(&self) -> &LoginSessions {
        &self.logins
    }

    pub fn key_attempts(&self) -> &KeyAttempts {
        &self.key_attempts
    }

    /// Answers the hosts `allowed` names rather than loopback names only (see
    /// [`super::hosts`]).
    pub fn with_allowed_hosts(mut self, allowed: AllowedHosts) -> Self {
        self.allowed_hosts = allowed;
        self
    }

    pub fn allowed_hosts(&self) -> &AllowedHosts {
        &self.allowed_hosts
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
        PageState::new(state.conversations.clone()).with_login(state.api_key.is_some())
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
