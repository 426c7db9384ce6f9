//! Asking: sending a message (`POST /chat/send`, which hands slash commands to
//! [`super::commands`]), regenerating the last answer and editing the last question. Each
//! queues an answer as a run of the conversation and answers with the HTML that streams it.

use std::sync::Arc;

use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{Html, Response};
use axum::Form;
use minijinja::context;
use minijinja::value::Serde;
use serde::Deserialize;
use serde_json::{json, Value as Json};

use super::commands::command;
use super::sidebar::sidebar_oob;
use super::templates::render;
use super::{
    form, fragment_response, from_page, load, target, PageError, PageState, Target,
    MAX_MESSAGE_BYTES,
};
use crate::services::agent::{self, ToolLoop};
use crate::services::chat::{ChatRequest, Role};
use crate::services::runs::{Reservation, Saving};
use crate::services::sessions::{
    ConversationPatch, ConversationSettings, NewMessage, StoredMessage,
};
use crate::services::{GenerationStream, ServiceError};
use crate::web::transcripts::{self, ConversationId, MessageView};

/// The composer's fields.
#[derive(Debug, Deserialize)]
pub(super) struct SendForm {
    /// Empty for a new chat.
    conversation: String,
    message: String,
    /// Present (`on`) when the Thinking box is ticked.
    thinking: Option<String>,
    /// Present (`on`) when the Demo tools box is ticked.
    tools: Option<String>,
}

/// The tools the page offers when "Demo tools" is ticked, so tool calls can be seen; the
/// page shows the calls but does not run them.
fn demo_tools() -> Vec<Json> {
    vec![
        json!({
            "name": "get_weather",
            "description": "Current weather for a place",
            "parameters": {"type": "object", "properties": {"location": {"type": "string"}},
                           "required": ["location"]}
        }),
        json!({
            "name": "calculate",
            "description": "Evaluate an arithmetic expression",
            "parameters": {"type": "object", "properties": {"expression": {"type": "string"}},
                           "required": ["expression"]}
        }),
    ]
}

fn tools(on: bool) -> Vec<Json> {
    if on {
        demo_tools()
    } else {
        Vec::new()
    }
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

/// An answer about to start: its conversation held and its generation queued.
struct Queued {
    reservation: Reservation,
    generation: GenerationStream,
    thinking: bool,
    /// The built-in tools loop, when the conversation has them on.
    tools: Option<ToolLoop>,
}

impl Queued {
    /// The run id, for the stream URL.
    fn id(&self) -> &str {
        self.reservation.id()
    }

    /// Starts the run; called once the question is stored, so the answer lands after it.
    fn start(self) {
        self.reservation.start_with_tools(
            self.generation,
            Saving::Append,
            self.thinking,
            self.tools,
        );
    }
}

/// Holds `conversation` and queues an answer to `request`. Queued before anything is saved,
/// so a busy server refuses without leaving a question nobody answers; dropping the result
/// unstarted cancels the generation and frees the conversation. With the conversation's
/// built-in tools on, they replace the request's tools (the demo tools) and the run
/// executes their calls.
async fn queue_answer(
    state: &Arc<PageState>,
    conversation: &ConversationId,
    settings: &ConversationSettings,
    request: ChatRequest,
) -> Result<Queued, PageError> {
    let reservation = state
        .runs
        .reserve(conversation.as_str())
        .map_err(PageError::from_run)?;
    let (request, tools) = if agent::builtin_tools_on(settings) {
        let request = agent::with_builtin_tools(request);
        let tools = ToolLoop::new(state.engine.clone(), request.clone());
        (request, Some(tools))
    } else {
        (request, None)
    };
    let thinking = request.enable_thinking.unwrap_or(true);
    let codec = state.engine.codec().clone();
    let prepared = tokio::task::spawn_blocking(move || codec.prepare(&request))
        .await
        .map_err(|err| ServiceError::Generation(format!("worker failed: {err}")))??;
    let generation = state.engine.submit(prepared)?;
    Ok(Queued {
        reservation,
        generation,
        thinking,
        tools,
    })
}

pub(super) async fn send(
    State(state): State<Arc<PageState>>,
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
        mut conversation,
        created,
    } = target(&state, &body.conversation, settings).await?;
    if state.busy(&id) {
        return Err(PageError::Busy);
    }
    // The Thinking box is the conversation's thinking setting.
    if transcripts::thinking(&conversation.settings) != thinking {
        let settings = ConversationSettings {
            thinking: Some(thinking),
            ..conversation.settings.clone()
        };
        let patch = ConversationPatch {
            title: None,
            settings: Some(settings),
        };
        conversation = state
            .store
            .update(id.as_str().to_owned(), patch)
            .await
            .map_err(PageError::from_store)?;
    }
    let history = state.store.messages(id.as_str().to_owned()).await?;
    let request = transcripts::chat_request(
        &conversation.settings,
        &history,
        Some(&text),
        tools(body.tools.is_some()),
    );
    let answer = match queue_answer(&state, &id, &conversation.settings, request).await {
        Ok(answer) => answer,
        Err(err) => {
            // A refused first message leaves no empty conversation in the sidebar.
            if created {
                if let Err(cleanup) = state.store.delete(id.as_str().to_owned()).await {
                    tracing::warn!("could not remove an unused conversation: {cleanup}");
                }
            }
            return Err(err);
        }
    };
    state
        .store
        .append(
            id.as_str().to_owned(),
            NewMessage::text(Role::User, text.clone()),
        )
        .await?;
    let mut html = render(
        "exchange.html",
        context! { message => text, id => answer.id(), thinking => thinking },
    )?;
    answer.start();
    html.push_str(&sidebar_oob(&state, id.as_str()).await?);
    Ok(fragment_response(html, created.then_some(&id)))
}

#[derive(Debug, Deserialize)]
pub(super) struct RegenerateForm {
    conversation: String,
    tools: Option<String>,
}

/// The conversation's messages and the index of its last user message.
async fn last_question(
    state: &PageState,
    id: &ConversationId,
) -> Result<(Vec<StoredMessage>, usize), PageError> {
    let history = state.store.messages(id.as_str().to_owned()).await?;
    let last = history
        .iter()
        .rposition(|m| m.role == Role::User)
        .ok_or(PageError::Nothing("message to answer again"))?;
    Ok((history, last))
}

/// The page's messages for `history` followed by a new streaming answer.
fn transcript_with_answer(
    history: &[StoredMessage],
    model: &str,
    message: Option<&str>,
    answer: &str,
    thinking: bool,
) -> Result<String, minijinja::Error> {
    let views: Vec<MessageView> = transcripts::views(history);
    let mut html = render(
        "messages.html",
        context! { messages => Serde(&views), model => model },
    )?;
    html.push_str(&render(
        "exchange.html",
        context! { message => message, id => answer, thinking => thinking },
    )?);
    Ok(html)
}

pub(super) async fn regenerate(
    State(state): State<Arc<PageState>>,
    headers: HeaderMap,
    body: Result<Form<RegenerateForm>, FormRejection>,
) -> Result<Html<String>, PageError> {
    from_page(&headers)?;
    let body = form(body)?;
    let (id, conversation) = load(&state, &body.conversation).await?;
    if state.busy(&id) {
        return Err(PageError::Busy);
    }
    let (mut history, last) = last_question(&state, &id).await?;
    let replaced = history.get(last + 1).map(|m| m.id);
    history.truncate(last + 1);
    let request = transcripts::chat_request(
        &conversation.settings,
        &history,
        None,
        tools(body.tools.is_some()),
    );
    let thinking = transcripts::thinking(&conversation.settings);
    let answer = queue_answer(&state, &id, &conversation.settings, request).await?;
    if let Some(from) = replaced {
        state.store.truncate(id.as_str().to_owned(), from).await?;
    }
    let html = transcript_with_answer(
        &history,
        &state.engine.info().id,
        None,
        answer.id(),
        thinking,
    )?;
    answer.start();
    Ok(Html(html))
}

#[derive(Debug, Deserialize)]
pub(super) struct EditQuery {
    conversation: String,
}

pub(super) async fn edit_form(
    State(state): State<Arc<PageState>>,
    params: Result<Query<EditQuery>, QueryRejection>,
) -> Result<Html<String>, PageError> {
    let Query(params) = params.map_err(|err| PageError::Query(err.body_text()))?;
    let (id, _) = load(&state, &params.conversation).await?;
    let (history, last) = last_question(&state, &id).await?;
    Ok(Html(render(
        "edit.html",
        context! { text => history[last].content.as_str(), conversation => id.as_str() },
    )?))
}

pub(super) async fn edit(
    State(state): State<Arc<PageState>>,
    headers: HeaderMap,
    body: Result<Form<SendForm>, FormRejection>,
) -> Result<Html<String>, PageError> {
    from_page(&headers)?;
    let body = form(body)?;
    let text = checked_message(&body.message)?;
    let (id, conversation) = load(&state, &body.conversation).await?;
    if state.busy(&id) {
        return Err(PageError::Busy);
    }
    let (mut history, last) = last_question(&state, &id).await?;
    let from = history[last].id;
    history.truncate(last);
    let request = transcripts::chat_request(
        &conversation.settings,
        &history,
        Some(&text),
        tools(body.tools.is_some()),
    );
    let thinking = transcripts::thinking(&conversation.settings);
    let answer = queue_answer(&state, &id, &conversation.settings, request).await?;
    state.store.truncate(id.as_str().to_owned(), from).await?;
    state
        .store
        .append(
            id.as_str().to_owned(),
            NewMessage::text(Role::User, text.clone()),
        )
        .await?;
    let html = transcript_with_answer(
        &history,
        &state.engine.info().id,
        Some(&text),
        answer.id(),
        thinking,
    )?;
    answer.start();
    Ok(Html(html))
}
