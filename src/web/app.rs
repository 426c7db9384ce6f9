//! The whole HTTP application as one [`Router`], built apart from `main` so tests can drive it
//! with `tower::ServiceExt::oneshot` or serve it on a real socket.

use std::sync::{Arc, OnceLock};

use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{header, Method, StatusCode, Uri};
use axum::middleware;
use axum::response::{Html, IntoResponse, Response};
use axum::Router;
use tower::ServiceExt;

use super::api;
use super::assets;
use super::auth;
use super::conversations;
use super::error::{ApiError, ErrorKind};
use super::hosts::{self, AllowedHosts};
use super::login;
use super::origin;
use super::page;
use super::state::AppState;
use super::transcripts::ConversationId;
use crate::services::SessionStore;

/// Largest request body accepted. A full 65,536-token conversation is about 300 kB of text;
/// 8 MiB leaves room for JSON escaping and tool schemas while refusing abuse early.
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// The application: the OpenAI-compatible API, the utility routes, the conversations API
/// and the chat page, all behind the API key when one is set (see [`auth`]) and answering
/// only the hosts allowed (see [`hosts`]), and taking no changes from other sites' pages (see
/// [`origin`]).
pub fn app(state: AppState) -> Router {
    Router::new()
        .merge(api::v1_routes())
        .merge(api::utility_routes())
        .merge(conversations::routes())
        .merge(login::routes())
        .merge(page::routes())
        .fallback(no_route)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_key,
        ))
        .layer(middleware::from_fn(origin::same_site_writes))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            hosts::check_host,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// What the page shows while the model loads besides its shell: the conversation list,
/// from the store, when the server is open to whoever reaches it. Behind an API key the
/// list waits for the login, which waits for the model.
#[derive(Clone, Default)]
pub struct LoadingShell {
    /// The store to list, `None` behind a key.
    pub store: Option<SessionStore>,
    /// The hosts the full app answers; the list is shown only to them (DNS rebinding).
    pub hosts: AllowedHosts,
}

/// The application while the model loads, so a large file does not leave clients facing a
/// closed port: `/health` answers llama.cpp server's 503 "Loading model", the page (`/` and
/// `/c/{id}`) shows its usual shell with the conversation list, a "loading" badge and a
/// disabled composer and reloads itself, and every other route answers 503 with
/// `Retry-After`. Once `ready` holds the full [`app`], every request goes there.
pub fn loading_gate(ready: Arc<OnceLock<Router>>, shell: LoadingShell) -> Router {
    Router::new().fallback(move |request: Request| {
        let ready = Arc::clone(&ready);
        let shell = shell.clone();
        async move {
            match ready.get() {
                Some(app) => match app.clone().oneshot(request).await {
                    Ok(response) => response,
                    Err(never) => match never {},
                },
                None => while_loading(&shell, request).await,
            }
        }
    })
}

/// The loading page for a request to `host` (at `/` or `/c/{current}`).
async fn loading_page(shell: &LoadingShell, host: Option<&str>, current: &str) -> String {
    // No `Host` is a test calling the router, as `hosts::check_host` lets through.
    let host_allowed = host.is_none_or(|host| shell.hosts.allows(host));
    let store = shell.store.as_ref().filter(|_| host_allowed);
    let conversations = match store {
        Some(store) => store.list(None).await.unwrap_or_else(|err| {
            tracing::warn!("the loading page could not list the conversations: {err}");
            Vec::new()
        }),
        None => Vec::new(),
    };
    let html = page::render_template(
        "loading.html",
        minijinja::context! {
            conversations => minijinja::value::Serde(&conversations),
            listed => store.is_some(),
            current => current,
        },
    );
    html.unwrap_or_else(|err| {
        tracing::error!("the loading page does not render: {err:#}");
        FALLBACK_LOADING_PAGE.to_owned()
    })
}

/// What a request gets before the model is ready.
async fn while_loading(shell: &LoadingShell, request: Request) -> Response {
    let path = request.uri().path().to_owned();
    let current = path.strip_prefix("/c/").and_then(ConversationId::parse);
    if path == "/" || current.is_some() {
        let host = request
            .headers()
            .get(header::HOST)
            .map(|value| value.to_str().unwrap_or("(not text)").to_owned());
        let current = current.as_ref().map_or("", ConversationId::as_str);
        let html = loading_page(shell, host.as_deref(), current).await;
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [
                (header::RETRY_AFTER, "1"),
                (header::REFRESH, "2"),
                (
                    header::CONTENT_SECURITY_POLICY,
                    assets::CONTENT_SECURITY_POLICY,
                ),
            ],
            Html(html),
        )
            .into_response();
    }
    match path.as_str() {
        "/health" => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            axum::Json(serde_json::json!({
                "error": { "code": 503, "message": "Loading model", "type": "unavailable_error" }
            })),
        )
            .into_response(),
        path if path.starts_with("/static/") => {
            match assets::routes::<()>().oneshot(request).await {
                Ok(response) => response,
                Err(never) => match never {},
            }
        }
        _ => ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            kind: ErrorKind::Unavailable,
            message: "the model is loading; retry in a moment".into(),
            param: None,
            code: None,
        }
        .into_response(),
    }
}

/// The page while the model loads should its template fail (it is compiled in and tested,
/// so this is a last resort); the `Refresh` header still brings the chat page once the
/// model is ready.
const FALLBACK_LOADING_PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>smolbot · loading</title>
<link rel="stylesheet" href="/static/chat.css">
</head>
<body class="plain">
<main class="lost"><p>Loading the model; this page reloads when it is ready.</p></main>
</body>
</html>
"#;

async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(format!("there is no route for {method} {}", uri.path()))
}
