//! The conversations API under `/api/conversations`: list, search, create, rename, change
//! settings, delete, read messages, export (Markdown or JSONL), import, and send a message
//! that the model answers.
//!
//! Handlers translate only; the [`SessionStore`] keeps the data and sending goes through
//! the [`Conversations`] service (shared with the page and the terminal chat, so one answer
//! is written at a time): it stores the question, then a draft answer that its [`Run`]
//! keeps up to date as it grows and saves once more when it ends, so the stored
//! conversation never depends on the client staying. A client that goes away cancels
//! nothing; its SSE events carry the run's entry ids, and
//! `GET /api/conversations/{id}/stream` with `Last-Event-ID` resumes the answer being
//! written. With several servers on one PostgreSQL database, the same route on a server
//! that is not writing the answer follows it from the database as the writer saves it.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::{self, Stream};
use serde::Deserialize;
use serde_json::json;

use super::error::{ApiError, ErrorKind};
use super::json::ApiJson;
use super::state::AppState;
use crate::services::elsewhere::{DraftChange, Elsewhere};
use crate::services::events::{GenerationEvent, Progress};
use crate::services::runs::RunError;
use crate::services::runs::{Entry, Run, RunEvent, Subscription};
use crate::services::sessions::{
    from_jsonl, to_jsonl, to_markdown, ConversationPatch, ConversationSettings,
};
use crate::services::{Ask, ConversationError, ServiceError, Started};

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
        .route("/api/conversations/{id}/stream", get(resume))
        .route("/api/conversations/{id}/stop", post(stop))
        .route("/api/conversations/{id}/export", get(export))
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
    let conversations = state.sessions().list(params.q).await?;
    Ok(Json(json!({ "object": "list", "data": conversations })))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct ConversationBody {
    title: Option<String>,
    settings: Option<ConversationSettings>,
}

async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    // An empty body creates an untitled conversation with default settings.
    let body: ConversationBody = if body.iter().all(u8::is_ascii_whitespace) {
        ConversationBody::default()
    } else {
        super::json::require_json(&headers, &[])?;
        super::json::parse_body(&body)?
    };
    let conversation = state
        .sessions()
        .create(body.title, body.settings.unwrap_or_default())
        .await?;
    Ok((StatusCode::CREATED, Json(conversation)).into_response())
}

async fn show(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    Ok(Json(state.sessions().get(id).await?).into_response())
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
    Ok(Json(state.sessions().update(id, patch).await?).into_response())
}

async fn remove(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.sessions().delete(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn messages(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let messages = state.sessions().messages(id).await?;
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
    let store = state.sessions();
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
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    super::json::require_json(&headers, super::json::JSON_LINES)?;
    let params = query(params)?;
    let text = std::str::from_utf8(&body)
        .map_err(|err| ApiError::invalid("file", format!("the file is not UTF-8 text: {err}")))?;
    let messages = from_jsonl(text)?;
    let conversation = state.sessions().import(params.title, messages).await?;
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

async fn send(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<SendBody>,
) -> Result<Response, ApiError> {
    if body.content.trim().is_empty() {
        return Err(ApiError::invalid("content", "`content` must not be empty"));
    }
    let Started {
        run,
        question,
        draft,
        ..
    } = state
        .conversations()
        .send(&id, Ask::text(body.content))
        .await?;
    let user = json!(question);
    if body.stream {
        let start = json!({ "user_message": user, "assistant_message_id": draft.id });
        return Ok(sse(Some(start), &run, 0).into_response());
    }
    collect(user, run.subscribe(0)).await
}

/// `GET /api/conversations/{id}/stream`: the answer being written in the conversation, as
/// `POST …/messages` streams it (without the first `message` event), after the client's
/// `Last-Event-ID`. 404 when no answer is being written: the stored messages are final.
async fn resume(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let Some(run) = state.conversations().runs().live(&id) else {
        // With several servers on one database, the answer may be written by another.
        return match state.conversations().follow_elsewhere(&id).await? {
            Some(follower) => Ok(follow(follower).into_response()),
            None => Err(not_answering(&id)),
        };
    };
    let after = headers
        .get("last-event-id")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0);
    Ok(sse(None, &run, after).into_response())
}

/// Stops the answer being written in the conversation (a client leaving no longer does);
/// it is saved as `stopped` with what was written, and the reply comes once it is saved.
async fn stop(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state
        .conversations()
        .stop(&id)
        .await
        .map_err(|err| match err {
            ConversationError::Run(RunError::Unknown(_)) => not_answering(&id),
            other => other.into(),
        })?;
    Ok(StatusCode::NO_CONTENT)
}

/// 404 for a conversation in which no answer is being written.
fn not_answering(id: &str) -> ApiError {
    ApiError::not_found(format!(
        "no answer is being written in conversation `{id}`; its messages are final"
    ))
}

/// Saving the answer failed: the client is told, in words, that it may be incomplete.
fn save_failed(message: String) -> ApiError {
    ApiError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        kind: ErrorKind::Server,
        message,
        param: None,
        code: None,
    }
}

/// Waits for the end of the answer and returns both messages as one JSON object.
async fn collect(user: serde_json::Value, mut run: Subscription) -> Result<Response, ApiError> {
    let mut failure = None;
    while let Some(entry) = run.next().await {
        match &entry.event {
            RunEvent::Generation(GenerationEvent::Failed(message)) => {
                failure = Some(message.clone());
            }
            RunEvent::Saved(Ok(message)) => {
                if let Some(failure) = failure {
                    return Err(ServiceError::Generation(failure).into());
                }
                return Ok(
                    Json(json!({ "user_message": user, "assistant_message": message }))
                        .into_response(),
                );
            }
            RunEvent::Saved(Err(message)) => return Err(save_failed(message.clone())),
            RunEvent::Generation(_)
            | RunEvent::ToolResult(_)
            | RunEvent::Stopped
            | RunEvent::Thought(_)
            | RunEvent::Round(_) => {}
        }
    }
    Err(ServiceError::EngineStopped.into())
}

/// One log entry as a conversation stream event: name, data, and whether it is the last;
/// `None` for entries the stream does not show (the engine's `Done`, which the stored
/// answer in `done` replaces, and a stop, which its status tells).
fn stream_event(entry: &Entry) -> Option<(&'static str, serde_json::Value, bool)> {
    Some(match &entry.event {
        RunEvent::Generation(GenerationEvent::Reasoning(text)) => {
            ("reasoning", json!({ "text": text }), false)
        }
        RunEvent::Generation(GenerationEvent::Content(text)) => {
            ("content", json!({ "text": text }), false)
        }
        RunEvent::Generation(GenerationEvent::ToolCall(call)) => (
            "tool_call",
            json!({ "name": call.name, "arguments": call.arguments }),
            false,
        ),
        RunEvent::Generation(GenerationEvent::Progress(progress)) => {
            ("progress", progress_json(*progress), false)
        }
        RunEvent::ToolResult(result) => (
            "tool_result",
            json!({
                "call_id": result.call_id,
                "name": result.name,
                "content": result.content,
                "is_error": result.is_error,
            }),
            false,
        ),
        RunEvent::Generation(GenerationEvent::Failed(message)) => {
            let err = ApiError::from(ServiceError::Generation(message.clone()));
            ("error", err.body(), false)
        }
        RunEvent::Saved(Ok(message)) => ("done", json!({ "message": message }), true),
        RunEvent::Saved(Err(message)) => ("error", save_failed(message.clone()).body(), true),
        RunEvent::Generation(GenerationEvent::Done(_))
        | RunEvent::Stopped
        | RunEvent::Thought(_)
        | RunEvent::Round(_) => return None,
    })
}

/// The answer as server-sent events: `message` first when `start` is given (the stored user
/// message), then `reasoning`, `content` and `tool_call` deltas, and `done` with the stored
/// answer — or `error`. Every event after `message` carries its run entry's id.
fn sse(
    start: Option<serde_json::Value>,
    run: &Arc<Run>,
    after: u64,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let first = start.map(|start| Ok(Event::default().event("message").data(start.to_string())));
    let rest = stream::unfold(Some(run.subscribe(after)), |subscription| async move {
        let mut subscription = subscription?;
        loop {
            let entry = subscription.next().await?;
            let Some((name, data, last)) = stream_event(&entry) else {
                continue;
            };
            let event = Event::default()
                .event(name)
                .data(data.to_string())
                .id(entry.id.to_string());
            return Some((Ok(event), (!last).then_some(subscription)));
        }
    });
    let events = futures_util::StreamExt::chain(stream::iter(first), rest);
    Sse::new(events).keep_alive(KeepAlive::default())
}

/// An answer another server writes, as the same events as [`sse`] (`reasoning` and
/// `content` deltas as its saves bring them, about one a second, then `done` or `error`),
/// without ids: they are not this server's run entries, so `Last-Event-ID` cannot resume
/// them; a client that reconnects gets the text saved so far again.
fn follow(follower: Elsewhere) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let events = stream::unfold(Some(follower), |follower| async move {
        let mut follower = follower?;
        let (name, data, last) = match follower.next().await? {
            Ok(DraftChange::Reasoning(text)) => ("reasoning", json!({ "text": text }), false),
            Ok(DraftChange::Content(text)) => ("content", json!({ "text": text }), false),
            Ok(DraftChange::Done(message)) => ("done", json!({ "message": message }), true),
            Err(err) => ("error", ApiError::from(err).body(), true),
        };
        let event = Event::default().event(name).data(data.to_string());
        Some((Ok(event), (!last).then_some(follower)))
    });
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
