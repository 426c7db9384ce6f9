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
use super::hosts;
use super::login;
use super::origin;
use super::page;
use super::state::AppState;

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

/// The application while the model loads, so a large file does not leave clients facing a
/// closed port: `/health` answers llama.cpp server's 503 "Loading model", the page shows a
/// "loading" badge and reloads itself, and every other route answers 503 with `Retry-After`.
/// Once `ready` holds the full [`app`], every request goes there.
pub fn loading_gate(ready: Arc<OnceLock<Router>>) -> Router {
    Router::new().fallback(move |request: Request| {
        let ready = Arc::clone(&ready);
        async move {
            match ready.get() {
                Some(app) => match app.clone().oneshot(request).await {
                    Ok(response) => response,
                    Err(never) => match never {},
                },
                None => while_loading(request).await,
            }
        }
    })
}

/// What a request gets before the model is ready.
async fn while_loading(request: Request) -> Response {
    match request.uri().path() {
        "/health" => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            axum::Json(serde_json::json!({
                "error": { "code": 503, "message": "Loading model", "type": "unavailable_error" }
            })),
        )
            .into_response(),
        "/" => (
            StatusCode::SERVICE_UNAVAILABLE,
            [
                (header::RETRY_AFTER, "1"),
                (header::REFRESH, "2"),
                (
                    header::CONTENT_SECURITY_POLICY,
                    assets::CONTENT_SECURITY_POLICY,
                ),
            ],
            Html(LOADING_PAGE),
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

/// The page while the model loads: the same stylesheet and badge as the chat page; the
/// `Refresh` header brings the chat page once the model is ready (no script needed).
const LOADING_PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark">
<title>smolbot · loading</title>
<link rel="stylesheet" href="/static/chat.css">
</head>
<body>
<header class="top">
  <h1>smolbot</h1>
  <span id="status" class="badge loading" role="status" aria-label="Model loading">model · loading</span>
</header>
<main class="messages"><p class="empty">Loading the model; this page reloads when it is ready.</p></main>
</body>
</html>
"#;

async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(format!("there is no route for {method} {}", uri.path()))
}
