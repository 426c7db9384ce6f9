//! The sidebar's conversation list: listing and searching it, and renaming and deleting a
//! conversation from it. Each route answers with the fragment it replaces.

use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{Html, IntoResponse, Response};
use axum::Form;
use minijinja::context;
use minijinja::value::Serde;
use serde::Deserialize;

use super::templates::render;
use super::{form, from_page, load, redirect, CurrentForm, PageError, PageState, MAX_TITLE_BYTES};
use crate::services::sessions::ConversationPatch;

/// The sidebar's items, newest first; with `query`, only the matching conversations.
async fn sidebar_items(
    state: &PageState,
    query: Option<&str>,
    current: &str,
) -> Result<String, PageError> {
    let conversations = state
        .store()
        .list(query.map(str::to_owned))
        .await
        .map_err(PageError::from_store)?;
    Ok(render(
        "sidebar.html",
        context! { conversations => Serde(&conversations), current => current, query => query },
    )?)
}

/// The sidebar's list as an out-of-band swap, for responses that change it in passing.
pub(super) async fn sidebar_oob(state: &PageState, current: &str) -> Result<String, PageError> {
    let items = sidebar_items(state, None, current).await?;
    Ok(format!(
        "<ul id=\"conversation-list\" class=\"conversations\" hx-swap-oob=\"true\">{items}</ul>"
    ))
}

#[derive(Debug, Deserialize)]
pub(super) struct SidebarQuery {
    q: Option<String>,
    conversation: Option<String>,
}

pub(super) async fn sidebar(
    State(state): State<PageState>,
    params: Result<Query<SidebarQuery>, QueryRejection>,
) -> Result<Html<String>, PageError> {
    let Query(params) = params.map_err(|err| PageError::Query(err.body_text()))?;
    let query = params.q.as_deref().map(str::trim).filter(|q| !q.is_empty());
    if let Some(q) = query {
        if q.len() > MAX_TITLE_BYTES {
            return Err(PageError::TitleTooLong(q.len()));
        }
    }
    let current = params.conversation.unwrap_or_default();
    Ok(Html(sidebar_items(&state, query, &current).await?))
}

pub(super) async fn rename_form(
    State(state): State<PageState>,
    Path(id): Path<String>,
) -> Result<Html<String>, PageError> {
    let (_, conversation) = load(&state, &id).await?;
    Ok(Html(render(
        "rename.html",
        context! { c => Serde(&conversation) },
    )?))
}

#[derive(Debug, Deserialize)]
pub(super) struct RenameForm {
    title: String,
    #[serde(default)]
    conversation: String,
}

pub(super) async fn rename(
    State(state): State<PageState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Form<RenameForm>, FormRejection>,
) -> Result<Html<String>, PageError> {
    from_page(&headers)?;
    let body = form(body)?;
    let title = body.title.trim();
    if title.is_empty() {
        return Err(PageError::EmptyTitle);
    }
    if title.len() > MAX_TITLE_BYTES {
        return Err(PageError::TitleTooLong(title.len()));
    }
    let (id, _) = load(&state, &id).await?;
    let patch = ConversationPatch {
        title: Some(title.to_owned()),
        settings: None,
    };
    let conversation = state
        .store()
        .update(id.as_str().to_owned(), patch)
        .await
        .map_err(PageError::from_store)?;
    Ok(Html(render(
        "conversation_item.html",
        context! { c => Serde(&conversation), current => body.conversation },
    )?))
}

pub(super) async fn delete(
    State(state): State<PageState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Form<CurrentForm>, FormRejection>,
) -> Result<Response, PageError> {
    from_page(&headers)?;
    let body = form(body)?;
    let (id, _) = load(&state, &id).await?;
    if state.busy(&id) {
        return Err(PageError::Busy);
    }
    state
        .store()
        .delete(id.as_str().to_owned())
        .await
        .map_err(PageError::from_store)?;
    if body.conversation == id.as_str() {
        return Ok(redirect("/"));
    }
    Ok(Html(sidebar_items(&state, None, &body.conversation).await?).into_response())
}
