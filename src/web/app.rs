//! The whole HTTP application as one [`Router`], built apart from `main` so tests can drive it
//! with `tower::ServiceExt::oneshot` or serve it on a real socket.

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::{Method, Uri};
use axum::middleware;
use axum::Router;

use super::api;
use super::conversations;
use super::error::ApiError;
use super::page;
use crate::services::Engine;
use crate::services::SessionStore;

/// Largest request body accepted. A full 65,536-token conversation is about 300 kB of text;
/// 8 MiB leaves room for JSON escaping and tool schemas while refusing abuse early.
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    engine: Engine,
    api_key: Option<Arc<str>>,
    /// The conversation store; `None` serves no `/api/conversations` (503).
    sessions: Option<SessionStore>,
}

impl AppState {
    /// `api_key`: when set, `/v1/*` requires `Authorization: Bearer <key>`.
    pub fn new(engine: Engine, api_key: Option<String>) -> Self {
        Self {
            engine,
            api_key: api_key.filter(|k| !k.is_empty()).map(Arc::from),
            sessions: None,
        }
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn api_key(&self) -> Option<&str> {
        self.api_key.as_deref()
    }

    /// Keeps conversations in `store` and serves them under `/api/conversations`.
    pub fn with_sessions(mut self, store: SessionStore) -> Self {
        self.sessions = Some(store);
        self
    }

    pub fn sessions(&self) -> Option<&SessionStore> {
        self.sessions.as_ref()
    }
}

/// The application: the API under `/v1` (behind the key, if any) and the utility routes.
pub fn app(state: AppState) -> Router {
    let v1 = api::v1_routes().route_layer(middleware::from_fn_with_state(
        state.clone(),
        api::require_api_key,
    ));
    Router::new()
        .merge(v1)
        .merge(api::utility_routes())
        .merge(conversations::routes())
        .merge(page::routes(state.engine().clone()))
        .fallback(no_route)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(format!("there is no route for {method} {}", uri.path()))
}
