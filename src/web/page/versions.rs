//! Switching between the versions of an answer (`POST /chat/version`): regenerating keeps
//! the earlier answer, and the `‹ 1/2 ›` under an answer shows another one, which is then
//! also the one the model reads back. Apart from sending, as it starts no answer.

use axum::extract::rejection::FormRejection;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Html;
use axum::Form;
use minijinja::context;
use minijinja::value::Serde;
use serde::Deserialize;

use super::templates::render;
use super::{form, from_page, load, PageError, PageState};
use crate::services::chat::Role;
use crate::services::sessions::StoredMessage;
use crate::web::transcripts::{self, versions_view, VersionsView};

#[derive(Debug, Deserialize)]
pub(super) struct VersionForm {
    conversation: String,
    /// The user message whose answer is switched.
    question: i64,
    version: i64,
}

/// The switcher for the answer to the last user message of `messages`, if it has versions:
/// what a streaming answer shows under it.
pub(super) fn last_versions(messages: &[StoredMessage]) -> Option<VersionsView> {
    messages
        .iter()
        .rev()
        .find(|m| m.role == Role::User)
        .and_then(versions_view)
}

/// `POST /chat/version`: shows the chosen version and answers with the conversation's
/// messages. Refused while an answer is being written in the conversation.
pub(super) async fn select(
    State(state): State<PageState>,
    headers: HeaderMap,
    body: Result<Form<VersionForm>, FormRejection>,
) -> Result<Html<String>, PageError> {
    from_page(&headers)?;
    let body = form(body)?;
    let (id, _) = load(&state, &body.conversation).await?;
    if state.busy(&id) {
        return Err(PageError::Busy);
    }
    state
        .store()
        .select_version(id.as_str().to_owned(), body.question, body.version)
        .await
        .map_err(PageError::from_store)?;
    let messages = state
        .store()
        .messages(id.as_str().to_owned())
        .await
        .map_err(PageError::from_store)?;
    let views = transcripts::views(&messages, state.context_length());
    Ok(Html(render(
        "messages.html",
        context! { messages => Serde(&views), model => state.engine().info().id.as_str() },
    )?))
}
