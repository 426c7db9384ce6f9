//! The whole pages: a new chat (`GET /`), a stored conversation (`GET /c/{id}`) or its
//! "not found", and the status badge the page polls (`GET /chat/status`).

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use minijinja::context;
use minijinja::value::Serde;
use serde::Deserialize;

use super::commands::commands;
use super::meter::{measure, Meter};
use super::settings::SettingsView;
use super::templates::render;
use super::{load, PageError, PageState, MAX_MESSAGE_BYTES};
use crate::services::chat::Sampling;
use crate::services::sessions::{Conversation, ConversationSettings};
use crate::web::transcripts;

/// `GET /chat/status`: the status badge, which the page polls so "busy" shows while the
/// model works for anyone.
pub(super) async fn badge(State(state): State<PageState>) -> Result<Html<String>, PageError> {
    let info = state.engine().info();
    Ok(Html(render(
        "badge.html",
        context! { model => info.id.as_str(), state => state.badge_state() },
    )?))
}

/// `GET /`'s query: `draft` fills the composer (a message carried over from a chat whose
/// context is full, to be sent in this new one).
#[derive(Debug, Deserialize)]
pub(super) struct NewChatQuery {
    draft: Option<String>,
}

pub(super) async fn new_chat(
    State(state): State<PageState>,
    query: Result<Query<NewChatQuery>, QueryRejection>,
) -> Result<Html<String>, PageError> {
    let Query(query) = query.map_err(|err| PageError::Query(err.body_text()))?;
    let draft = query.draft.filter(|d| d.len() <= MAX_MESSAGE_BYTES);
    render_page(&state, None, draft).await.map(Html)
}

pub(super) async fn conversation_page(
    State(state): State<PageState>,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let loaded = match load(&state, &id).await {
        Ok(loaded) => loaded,
        Err(PageError::UnknownConversation(_) | PageError::BadConversation) => {
            let message =
                format!("There is no conversation “{id}”: it was deleted, or the link is wrong.");
            let html = render("not_found.html", context! { message => message })?;
            return Ok((StatusCode::NOT_FOUND, Html(html)).into_response());
        }
        Err(other) => return Err(other),
    };
    Ok(Html(render_page(&state, Some(loaded.1), None).await?).into_response())
}

/// The whole page, for a new chat (`None`) or a stored conversation.
async fn render_page(
    state: &PageState,
    conversation: Option<Conversation>,
    draft: Option<String>,
) -> Result<String, PageError> {
    let info = state.engine().info();
    let (id, title, settings, history) = match conversation {
        Some(c) => {
            let history = state.store().messages(c.id.clone()).await?;
            (c.id, c.title, c.settings, history)
        }
        None => (
            String::new(),
            None,
            ConversationSettings::default(),
            Vec::new(),
        ),
    };
    let next = measure(state, &settings, &history).await;
    let conversations = state.store().list(None).await?;
    // An answer still being written shows streaming, from the start of its run.
    let live = state.runs().live(&id).map(|run| {
        context! {
            id => run.id(),
            thinking => run.thinking(),
            versions => Serde(super::versions::last_versions(&history)),
        }
    });
    // A draft no run of this server holds is written by another server on the database.
    let elsewhere = state.store().node().is_some() && !state.runs().is_busy(&id);
    let html = render(
        "page.html",
        context! {
            model => info.id.as_str(),
            state => state.badge_state(),
            conversation => id.as_str(),
            title => title,
            persistent => state.persistent(),
            login => state.login,
            conversations => Serde(&conversations),
            current => id.as_str(),
            query => Option::<String>::None,
            messages => Serde(transcripts::views_with(
                &history,
                state.context_length(),
                elsewhere,
            )),
            live => live,
            thinking => crate::services::conversation::thinking(&settings),
            settings => Serde(SettingsView::new(&settings)),
            defaults => context! {
                temperature => Sampling::defaults().temperature.to_string(),
                top_p => Sampling::defaults().top_p.to_string(),
                context_length => state.context_length(),
            },
            meter => Serde(Meter::new(next.map(|n| n.tokens), state.context_length())),
            cut => next.and_then(|n| n.first_sent),
            draft => draft,
            commands => commands(),
            saved => Option::<String>::None,
            oob => false,
        },
    )?;
    Ok(html)
}
