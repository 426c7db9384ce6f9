//! The conversations API under `/api/conversations`: list, search, create, rename, change
//! settings, delete, read messages, export (Markdown or JSONL), import, and send a message
//! that the model answers.
//!
//! Handlers translate only; the [`SessionStore`] keeps the data and the engine writes the
//! answer. Sending runs the generation in a task of its own that saves the answer as it
//! grows and once more when it ends — complete, failed, or stopped because the client went
//! away (its receiver was dropped) — so the stored conversation never depends on the client
//! staying to the end.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::{self, Stream};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;

use super::app::AppState;
use super::error::{ApiError, ErrorKind};
use super::json::ApiJson;
use crate::services::chat::{ChatMessage, ChatRequest, Role, TokenLimit};
use crate::services::events::{GenerationEvent, Progress};
use crate::services::sessions::{
    from_jsonl, to_jsonl, to_markdown, tool_calls_json, ConversationPatch, ConversationSettings,
    MessageStats, MessageStatus, MessageUpdate, NewMessage, StoredMessage,
};
use crate::services::{GenerationStream, ServiceError, SessionStore};
use crate::smollm3::tool_calls::ToolCall;

/// How often a growing answer is saved: a crash loses at most about a second of text, and a
/// generation writes at most one row a second.
const SAVE_INTERVAL: Duration = Duration::from_secs(1);

/// The routes of the conversations API.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/conversations", get(list).post(create))
        .route("/api/conversations/import", post(import))
        .route(
            "/api/conversations/{id}",
            get(show).patch(update).delete(remove),
        )
        .route("/api/conversations/{id}/messages", get(messages).post(send))
        .route("/api/conversations/{id}/export", get(export))
}

/// The store, or a 503 when the server runs without one.
fn store(state: &AppState) -> Result<SessionStore, ApiError> {
    state.sessions().cloned().ok_or_else(|| ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        kind: ErrorKind::Unavailable,
        message: "this server keeps no conversations; start it with --data-dir".into(),
        param: None,
        code: None,
    })
}

/// A query string of type `T`, or a 400 in our error shape.
fn query<T>(query: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    query.map(|Query(q)| q).map_err(|rejection| {
        ApiError::bad_request(format!("bad query string: {}", rejection.body_text()))
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// Search text: conversations whose title or messages hold it.
    q: Option<String>,
}

async fn list(
    State(state): State<AppState>,
    params: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let params = query(params)?;
    let conversations = store(&state)?.list(params.q).await?;
    Ok(Json(json!({ "object": "list", "data": conversations })))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct ConversationBody {
    title: Option<String>,
    settings: Option<ConversationSettings>,
}

async fn create(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    // An empty body creates an untitled conversation with default settings.
    let body: ConversationBody = if body.iter().all(u8::is_ascii_whitespace) {
        ConversationBody::default()
    } else {
        super::json::parse_body(&body)?
    };
    let conversation = store(&state)?
        .create(body.title, body.settings.unwrap_or_default())
        .await?;
    Ok((StatusCode::CREATED, Json(conversation)).into_response())
}

async fn show(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    Ok(Json(store(&state)?.get(id).await?).into_response())
}

async fn update(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ConversationBody>,
) -> Result<Response, ApiError> {
    let patch = ConversationPatch {
        title: body.title,
        settings: body.settings,
    };
    Ok(Json(store(&state)?.update(id, patch).await?).into_response())
}

async fn remove(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    store(&state)?.delete(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn messages(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let messages = store(&state)?.messages(id).await?;
    Ok(Json(json!({ "object": "list", "data": messages })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExportQuery {
    /// `md` (the default) or `jsonl`.
    format: Option<String>,
}

async fn export(
    State(state): State<AppState>,
    Path(id): Path<String>,
    params: Result<Query<ExportQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let params = query(params)?;
    let jsonl = match params.format.as_deref() {
        None | Some("md") | Some("markdown") => false,
        Some("jsonl") => true,
        Some(other) => {
            return Err(ApiError::invalid(
                "format",
                format!("`format` must be `md` or `jsonl`, got {other:?}"),
            ))
        }
    };
    let store = store(&state)?;
    let conversation = store.get(id.clone()).await?;
    let messages = store.messages(id.clone()).await?;
    let (body, content_type, extension) = if jsonl {
        (
            to_jsonl(&messages),
            "application/jsonl; charset=utf-8",
            "jsonl",
        )
    } else {
        (
            to_markdown(&conversation, &messages),
            "text/markdown; charset=utf-8",
            "md",
        )
    };
    let disposition = format!("attachment; filename=\"{id}.{extension}\"");
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(value) = HeaderValue::from_str(&disposition) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    Ok(response)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ImportQuery {
    /// The new conversation's title; the first user message gives one otherwise.
    title: Option<String>,
}

async fn import(
    State(state): State<AppState>,
    params: Result<Query<ImportQuery>, QueryRejection>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let params = query(params)?;
    let text = std::str::from_utf8(&body)
        .map_err(|err| ApiError::invalid("file", format!("the file is not UTF-8 text: {err}")))?;
    let messages = from_jsonl(text)?;
    let conversation = store(&state)?.import(params.title, messages).await?;
    Ok((StatusCode::CREATED, Json(conversation)).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SendBody {
    content: String,
    /// Answer as server-sent events (`message`, `reasoning`, `content`, `tool_call`, `done`,
    /// `error`) rather than one JSON object at the end.
    #[serde(default)]
    stream: bool,
}

/// The request for the model: the conversation's settings, its usable history (complete and
/// stopped messages) and the new user message.
fn chat_request(
    settings: &ConversationSettings,
    history: &[StoredMessage],
    content: &str,
) -> ChatRequest {
    let mut messages = Vec::with_capacity(history.len() + 2);
    if let Some(system) = settings
        .system_prompt
        .as_deref()
        .filter(|s| !s.trim().is_empty())
    {
        messages.push(ChatMessage::new(Role::System, system));
    }
    for message in history {
        let usable = matches!(
            message.status,
            MessageStatus::Complete | MessageStatus::Stopped
        );
        let empty = message.content.is_empty() && message.tool_calls.is_none();
        if usable && !empty {
            messages.push(ChatMessage {
                role: message.role,
                content: message.content.clone(),
                tool_calls: message.calls(),
            });
        }
    }
    messages.push(ChatMessage::new(Role::User, content));
    ChatRequest {
        messages,
        enable_thinking: settings.thinking,
        max_tokens: settings.max_tokens.map(|value| TokenLimit {
            field: "settings.max_tokens",
            value,
        }),
        sampling: settings.sampling(),
        ..ChatRequest::default()
    }
}

async fn send(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<SendBody>,
) -> Result<Response, ApiError> {
    if body.content.trim().is_empty() {
        return Err(ApiError::invalid("content", "`content` must not be empty"));
    }
    let store = store(&state)?;
    let conversation = store.get(id.clone()).await?;
    let history = store.messages(id.clone()).await?;
    let request = chat_request(&conversation.settings, &history, &body.content);
    let codec = state.engine().codec().clone();
    let chat = tokio::task::spawn_blocking(move || codec.prepare(&request))
        .await
        .map_err(|err| {
            ApiError::from(ServiceError::Generation(format!("worker failed: {err}")))
        })??;
    // Queued before anything is saved: a busy server refuses without leaving a question
    // that nobody answers.
    let generation = state.engine().submit(chat)?;
    let user = store
        .append(id.clone(), NewMessage::text(Role::User, body.content))
        .await?;
    let draft = store
        .append(
            id,
            NewMessage {
                status: MessageStatus::Generating,
                ..NewMessage::text(Role::Assistant, "")
            },
        )
        .await?;
    let (client, updates) = mpsc::unbounded_channel();
    tokio::spawn(record(store, draft.id, generation, client));
    if body.stream {
        let start = json!({ "user_message": user, "assistant_message_id": draft.id });
        return Ok(sse(start, updates).into_response());
    }
    collect(user, updates).await
}

/// What the recording task tells the client.
enum Update {
    Event(GenerationEvent),
    /// The answer as finally stored; the last update.
    Saved(StoredMessage),
    /// Saving failed; the last update.
    Error(ApiError),
}

/// An answer as it grows.
#[derive(Default)]
struct Answer {
    content: String,
    reasoning: String,
    calls: Vec<ToolCall>,
    tool_calls: Option<serde_json::Value>,
}

impl Answer {
    fn update(
        &self,
        status: MessageStatus,
        finish_reason: Option<String>,
        stats: MessageStats,
    ) -> MessageUpdate {
        MessageUpdate {
            content: self.content.clone(),
            reasoning: (!self.reasoning.is_empty()).then(|| self.reasoning.clone()),
            tool_calls: self.tool_calls.clone(),
            status,
            finish_reason,
            stats,
        }
    }
}

/// Drives one generation to its end, saving the answer as it grows and when it ends, and
/// passing each event on while the client listens. The client going away stops the
/// generation (the stream is dropped) and the answer is kept as `stopped`.
async fn record(
    store: SessionStore,
    message: i64,
    mut generation: GenerationStream,
    client: mpsc::UnboundedSender<Update>,
) {
    let mut answer = Answer::default();
    let mut last_save = Instant::now();
    let (status, finish_reason, stats) = loop {
        let event = tokio::select! {
            () = client.closed() => break (MessageStatus::Stopped, None, MessageStats::default()),
            event = generation.next() => event,
        };
        let Some(event) = event else {
            let _ = client.send(Update::Event(GenerationEvent::Failed(
                ServiceError::EngineStopped.to_string(),
            )));
            break (MessageStatus::Failed, None, MessageStats::default());
        };
        let end = match &event {
            GenerationEvent::Progress(_) => None,
            GenerationEvent::Reasoning(text) => {
                answer.reasoning.push_str(text);
                None
            }
            GenerationEvent::Content(text) => {
                answer.content.push_str(text);
                None
            }
            GenerationEvent::ToolCall(call) => {
                answer.calls.push(call.clone());
                answer.tool_calls = tool_calls_json(&answer.calls);
                None
            }
            GenerationEvent::Done(done) => Some((
                MessageStatus::Complete,
                Some(done.finish_reason.as_str().to_owned()),
                MessageStats::from(done),
            )),
            GenerationEvent::Failed(_) => {
                Some((MessageStatus::Failed, None, MessageStats::default()))
            }
        };
        let _ = client.send(Update::Event(event));
        if let Some(end) = end {
            break end;
        }
        if last_save.elapsed() >= SAVE_INTERVAL {
            last_save = Instant::now();
            let partial = answer.update(MessageStatus::Generating, None, MessageStats::default());
            if let Err(err) = store.update_message(message, partial).await {
                tracing::warn!("saving a partial answer failed: {err}");
            }
        }
    };
    drop(generation);
    let saved = store
        .update_message(message, answer.update(status, finish_reason, stats))
        .await;
    let _ = client.send(match saved {
        Ok(message) => Update::Saved(message),
        Err(err) => Update::Error(err.into()),
    });
}

/// Waits for the end of the answer and returns both messages as one JSON object.
async fn collect(
    user: StoredMessage,
    mut updates: mpsc::UnboundedReceiver<Update>,
) -> Result<Response, ApiError> {
    let mut failure = None;
    while let Some(update) = updates.recv().await {
        match update {
            Update::Event(GenerationEvent::Failed(message)) => failure = Some(message),
            Update::Event(_) => {}
            Update::Error(err) => return Err(err),
            Update::Saved(message) => {
                if let Some(failure) = failure {
                    return Err(ServiceError::Generation(failure).into());
                }
                return Ok(
                    Json(json!({ "user_message": user, "assistant_message": message }))
                        .into_response(),
                );
            }
        }
    }
    Err(ServiceError::EngineStopped.into())
}

/// The answer as server-sent events: `message` first (the stored user message), then
/// `reasoning`, `content` and `tool_call` deltas, and `done` with the stored answer — or
/// `error`.
fn sse(
    start: serde_json::Value,
    updates: mpsc::UnboundedReceiver<Update>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let first = Event::default().event("message").data(start.to_string());
    let rest = stream::unfold(Some(updates), |updates| async move {
        let mut updates = updates?;
        loop {
            let (event, last) = match updates.recv().await? {
                Update::Event(GenerationEvent::Reasoning(text)) => {
                    (("reasoning", json!({ "text": text })), false)
                }
                Update::Event(GenerationEvent::Content(text)) => {
                    (("content", json!({ "text": text })), false)
                }
                Update::Event(GenerationEvent::ToolCall(call)) => (
                    (
                        "tool_call",
                        json!({ "name": call.name, "arguments": call.arguments }),
                    ),
                    false,
                ),
                Update::Event(GenerationEvent::Progress(progress)) => {
                    (("progress", progress_json(progress)), false)
                }
                Update::Event(GenerationEvent::Done(_)) => continue,
                Update::Event(GenerationEvent::Failed(message)) => {
                    let err = ApiError::from(ServiceError::Generation(message));
                    (("error", err.body()), false)
                }
                Update::Saved(message) => (("done", json!({ "message": message })), true),
                Update::Error(err) => (("error", err.body()), true),
            };
            let (name, data) = event;
            let event = Event::default().event(name).data(data.to_string());
            return Some((Ok(event), (!last).then_some(updates)));
        }
    });
    let events = futures_util::StreamExt::chain(stream::once(async move { Ok(first) }), rest);
    Sse::new(events).keep_alive(KeepAlive::default())
}

/// A progress event as the conversation stream sends it.
fn progress_json(progress: Progress) -> serde_json::Value {
    match progress {
        Progress::Queued { ahead } => json!({ "queued": { "ahead": ahead } }),
        Progress::Prefill {
            done,
            total,
            cached,
        } => json!({ "prefill": { "done": done, "total": total, "cached": cached } }),
    }
}
