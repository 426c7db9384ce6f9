//! What every handler can reach ([`AppState`]) and the checks they share, apart from the
//! router ([`super::app`]) and the handlers, so that handlers depend on it and the router on
//! them, without a circle.

use super::auth::{ApiKey, LoginSessions};
use super::error::ApiError;
use super::hosts::AllowedHosts;
use crate::services::{Conversations, Engine, Runs, ServiceError, SessionStore};

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    engine: Engine,
    /// When set, every route but `/health` (and the login and static files) needs it.
    api_key: Option<ApiKey>,
    /// The page's logins, when there is a key.
    logins: LoginSessions,
    /// The `Host` headers answered: loopback names only unless told otherwise.
    allowed_hosts: AllowedHosts,
    /// The conversation store; `None` serves no `/api/conversations` (503).
    sessions: Option<SessionStore>,
    /// The conversation service over `sessions`, shared by the page and the API so a
    /// conversation has one answer being written at a time, whoever sent the message.
    conversations: Option<Conversations>,
}

impl AppState {
    /// `api_key`: when set (and not empty), every route but `/health` requires
    /// `Authorization: Bearer <key>` or a session from the page's login.
    pub fn new(engine: Engine, api_key: Option<String>) -> Self {
        Self {
            engine,
            api_key: api_key.filter(|k| !k.is_empty()).map(|k| ApiKey::new(&k)),
            logins: LoginSessions::default(),
            allowed_hosts: AllowedHosts::default(),
            sessions: None,
            conversations: None,
        }
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn api_key(&self) -> Option<&ApiKey> {
        self.api_key.as_ref()
    }

    pub fn logins(&self) -> &LoginSessions {
        &self.logins
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

    /// Keeps conversations in `store` and serves them under `/api/conversations`.
    pub fn with_sessions(mut self, store: SessionStore) -> Self {
        let runs = Runs::new(store.clone());
        self.conversations = Some(Conversations::new(self.engine.clone(), runs));
        self.sessions = Some(store);
        self
    }

    pub fn sessions(&self) -> Option<&SessionStore> {
        self.sessions.as_ref()
    }

    /// The conversation service; there is one exactly when there is a store.
    pub fn conversations(&self) -> Option<&Conversations> {
        self.conversations.as_ref()
    }

    pub fn runs(&self) -> Option<&Runs> {
        self.conversations.as_ref().map(Conversations::runs)
    }
}

/// Runs blocking work (template, tokenizer) on tokio's blocking pool.
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ServiceError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| ApiError::from(ServiceError::Generation(format!("worker failed: {err}"))))?
        .map_err(ApiError::from)
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
