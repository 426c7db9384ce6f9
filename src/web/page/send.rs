//! Asking: sending a message (`POST /chat/send`, which hands slash commands to
//! [`super::commands`]), regenerating the last answer and editing the last question. Each
//! is a call of the [`Conversations`](crate::services::Conversations) service (which
//! queues the answer, stores the question and a draft and starts the run); the handlers
//! translate the form and answer with the HTML that streams the run.

use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{Html, Response};
use axum::Form;
use minijinja::context;
use minijinja::value::Serde;
use serde::Deserialize;

use super::commands::command;
use super::meter::measure;
use super::sidebar::sidebar_oob;
use super::templates::render;
use super::versions::last_versions;
use super::{
    form, fragment_response, from_page, load, target, PageError, PageState, Target,
    MAX_MESSAGE_BYTES,
};
use crate::services::conversation::thinking as thinking_of;
use crate::services::sessions::{ConversationPatch, ConversationSettings, StoredMessage};
use crate::services::truncation::Truncation;
use crate::services::{Ask, ConversationError, ServiceError};
use crate::web::transcripts::{self, ConversationId, MessageView, VersionsView};

/// The composer's fields.
#[derive(Debug, Deserialize)]
pub(super) struct SendForm {
    /// Empty for a new chat.
    conversation: String,
    message: String,
    /// Present (`on`) when the Thinking box is ticked.
    thinking: Option<String>,
    /// `auto` turns truncation on for the conversation before sending (the "drop the oldest
    /// messages" button of a full context); the answer is then the whole transcript, with
    /// the mark where the history is cut.
    truncation: Option<String>,
}

fn checked_message(raw: &str) -> Result<String, PageError> {
    let text = raw.trim();
    if text.is_empty() {
        return Err(PageError::EmptyMessage);
    }
    if text.len() > MAX_MESSAGE_BYTES {
        return Err(PageError::MessageTooLong(text.len()));
    }
    Ok(text.to_owned())
}

pub(super) async fn send(
    State(state): State<PageState>,
    headers: HeaderMap,
    body: Result<Form<SendForm>, FormRejection>,
) -> Result<Response, PageError> {
    from_page(&headers)?;
    let body = form(body)?;
    if !body.conversation.is_empty() {
        ConversationId::parse(&body.conversation).ok_or(PageError::BadConversation)?;
    }
    let text = checked_message(&body.message)?;
    let thinking = body.thinking.is_some();
    if text.starts_with('/') {
        return command(&state, &body.conversation, &text, thinking).await;
    }
    let settings = ConversationSettings {
        thinking: Some(thinking),
        ..ConversationSettings::default()
    };
    let Target {
        id,
        conversation,
        created,
    } = target(&state, &body.conversation, settings).await?;
    if state.busy(&id) {
        return Err(PageError::Busy);
    }
    let drop_oldest = body.truncation.as_deref() == Some("auto");
    // The Thinking box is the conversation's thinking setting.
    let truncation = conversation.settings.truncation;
    if thinking_of(&conversation.settings) != thinking
        || (drop_oldest && truncation != Some(Truncation::Auto))
    {
        let settings = ConversationSettings {
            thinking: Some(thinking),
            truncation: if drop_oldest {
                Some(Truncation::Auto)
            } else {
                truncation
            },
            ..conversation.settings.clone()
        };
        let patch = ConversationPatch {
            title: None,
            settings: Some(settings),
        };
        state
            .store()
            .update(id.as_str().to_owned(), patch)
            .await
            .map_err(PageError::from_store)?;
    }
    let started = match state
        .conversations
        .send(id.as_str(), Ask::text(&text))
        .await
    {
        Ok(started) => started,
        Err(ConversationError::Service(err @ ServiceError::PromptTooLong { .. })) if !created => {
            // The history filled the context: offer the ways on instead of a dead end.
            let html = render(
                "context_full.html",
                context! {
                    text => err.to_string(),
                    conversation => id.as_str(),
                    message => text,
                    thinking => thinking,
                },
            )?;
            return Ok(fragment_response(html, None));
        }
        Err(err) => {
            // A refused first message leaves no empty conversation in the sidebar.
            if created {
                if let Err(cleanup) = state.store().delete(id.as_str().to_owned()).await {
                    tracing::warn!("could not remove an unused conversation: {cleanup}");
                }
            }
            return Err(err.into());
        }
    };
    let mut html = if drop_oldest {
        // Where the prompt just sent was cut: the history with the new question.
        let sent: Vec<StoredMessage> = started
            .history
            .iter()
            .chain(started.question.as_ref())
            .cloned()
            .collect();
        let next = measure(&state, &started.conversation.settings, &sent).await;
        transcript_with_answer(
            &state,
            &started.history,
            Some(&text),
            (started.run.id(), None),
            thinking,
            next.and_then(|n| n.first_sent),
        )?
    } else {
        render(
            "exchange.html",
            context! { message => text, id => started.run.id(), thinking => thinking },
        )?
    };
    html.push_str(&sidebar_oob(&state, id.as_str()).await?);
    Ok(fragment_response(html, created.then_some(&id)))
}

#[derive(Debug, Deserialize)]
pub(super) struct RegenerateForm {
    conversation: String,
}

/// The page's messages for `history` followed by a new streaming answer (with `versions`
/// under it when it is one of several).
fn transcript_with_answer(
    state: &PageState,
    history: &[StoredMessage],
    message: Option<&str>,
    (answer, versions): (&str, Option<VersionsView>),
    thinking: bool,
    cut: Option<i64>,
) -> Result<String, minijinja::Error> {
    let mut views: Vec<MessageView> = transcripts::views(history, state.context_length());
    // A new answer follows: none of these is the last one any more.
    for view in &mut views {
        view.continuable = false;
    }
    let mut html = render(
        "messages.html",
        context! {
            messages => Serde(&views),
            model => state.engine().info().id.as_str(),
            cut => cut,
        },
    )?;
    html.push_str(&render(
        "exchange.html",
        context! {
            message => message,
            id => answer,
            thinking => thinking,
            versions => Serde(versions),
        },
    )?);
    Ok(html)
}

pub(super) async fn regenerate(
    State(state): State<PageState>,
    headers: HeaderMap,
    body: Result<Form<RegenerateForm>, FormRejection>,
) -> Result<Html<String>, PageError> {
    from_page(&headers)?;
    let body = form(body)?;
    let (id, _) = load(&state, &body.conversation).await?;
    let started = state.conversations.regenerate(id.as_str()).await?;
    // Read again: the new version is stored now, so the switcher counts it.
    let stored = state.store().messages(id.as_str().to_owned()).await?;
    let html = transcript_with_answer(
        &state,
        &started.history,
        None,
        (started.run.id(), last_versions(&stored)),
        thinking_of(&started.conversation.settings),
        None,
    )?;
    Ok(Html(html))
}

#[derive(Debug, Deserialize)]
pub(super) struct EditQuery {
    conversation: String,
}

pub(super) async fn edit_form(
    State(state): State<PageState>,
    params: Result<Query<EditQuery>, QueryRejection>,
) -> Result<Html<String>, PageError> {
    let Query(params) = params.map_err(|err| PageError::Query(err.body_text()))?;
    let (id, _) = load(&state, &params.conversation).await?;
    let (history, last) = state.conversations.last_question(id.as_str()).await?;
    let question = &history[last];
    Ok(Html(render(
        "edit.html",
        context! {
            text => question.content.as_str(),
            question => question.id,
            conversation => id.as_str(),
        },
    )?))
}

/// The edit form's fields.
#[derive(Debug, Deserialize)]
pub(super) struct EditForm {
    conversation: String,
    /// The stored id of the question the form was opened on, so a form left open while a
    /// newer question was asked is refused instead of replacing that newer one.
    question: i64,
    message: String,
}

pub(super) async fn edit(
    State(state): State<PageState>,
    headers: HeaderMap,
    body: Result<Form<EditForm>, FormRejection>,
) -> Result<Html<String>, PageError> {
    from_page(&headers)?;
    let body = form(body)?;
    let text = checked_message(&body.message)?;
    let (id, _) = load(&state, &body.conversation).await?;
    let started = state
        .conversations
        .edit(id.as_str(), body.question, Ask::text(&text))
        .await?;
    let html = transcript_with_answer(
        &state,
        &started.history,
        Some(&text),
        (started.run.id(), None),
        thinking_of(&started.conversation.settings),
        None,
    )?;
    Ok(Html(html))
}

#[derive(Debug, Deserialize)]
pub(super) struct ContinueForm {
    conversation: String,
}

/// `POST /chat/continue`: goes on with the conversation's last answer, cut off by the token
/// limit or stopped; answers with that answer streaming again (its text so far first), in
/// place of the finished one.
pub(super) async fn continue_answer(
    State(state): State<PageState>,
    headers: HeaderMap,
    body: Result<Form<ContinueForm>, FormRejection>,
) -> Result<Html<String>, PageError> {
    from_page(&headers)?;
    let body = form(body)?;
    let (id, _) = load(&state, &body.conversation).await?;
    let started = state.conversations.continue_answer(id.as_str()).await?;
    Ok(Html(render(
        "exchange.html",
        context! {
            message => Option::<String>::None,
            id => started.run.id(),
            thinking => thinking_of(&started.conversation.settings),
        },
    )?))
}
