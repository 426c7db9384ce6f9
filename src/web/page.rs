//! The chat page: `GET /` renders it, `POST /chat/send` queues a message and answers with the
//! HTML of the exchange, `GET /chat/stream/{id}` streams the answer as server-sent events of
//! HTML fragments that the HTMX SSE extension swaps in, and `POST /chat/stop/{id}` cancels it.
//!
//! The page goes through the same services path as the API (`ChatCodec::prepare`, then
//! `Engine::submit` and its event stream); only the output differs: HTML instead of OpenAI
//! chunks. Answers are rendered from Markdown on the server ([`render_markdown`]); every
//! template is `*.html`, so MiniJinja escapes what model or user wrote.
//!
//! A queued answer waits in [`PageState`] until the browser opens its stream. The SSE body
//! owns the generation's receiver, so a closed tab or a Stop drops it and the engine stops
//! within a token; a stream the browser never opens is dropped after [`UNCLAIMED_TIMEOUT`].

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::rejection::FormRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{middleware, Form, Router};
use futures_util::stream::{self, Stream, StreamExt};
use futures_util::FutureExt;
use minijinja::{context, Environment, Value};
use serde::Deserialize;
use serde_json::{json, Value as Json};
use tokio::sync::Notify;

use super::assets;
use super::error::ApiError;
use super::markdown::render_markdown;
use super::openai::random_id;
use super::transcripts::{ConversationId, MemoryTranscripts, Transcripts};
use crate::services::chat::{ChatMessage, ChatRequest, Role};
use crate::services::events::{Completion, GenerationEvent};
use crate::services::{Engine, GenerationStream, ServiceError};
use crate::smollm3::tool_calls::ToolCall;

/// How long a queued answer waits for the browser to open its stream before it is dropped.
/// The page opens it within milliseconds; 30 s covers a slow phone without letting a
/// script fill the queue with answers nobody reads.
pub const UNCLAIMED_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest message the page accepts, in bytes: a long paste fits, a runaway one is refused
/// before it is tokenized.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;

/// Events taken from the engine before one Markdown render: a slow client gets fewer,
/// larger updates instead of a growing backlog.
const MAX_EVENTS_PER_UPDATE: usize = 64;

/// Why a page request failed; sent as plain text, which `chat.js` shows as is.
#[derive(Debug, thiserror::Error)]
pub enum PageError {
    #[error("the form is incomplete: {0}")]
    Form(String),
    #[error("the request did not come from the chat page (HX-Request header missing)")]
    NotFromPage,
    #[error("the conversation id must be 1 to 64 letters, digits, `_` or `-`")]
    BadConversation,
    #[error("the message is empty")]
    EmptyMessage,
    #[error("the message has {0} bytes; the page accepts at most {MAX_MESSAGE_BYTES}")]
    MessageTooLong(usize),
    #[error("an answer is still being written in this conversation; wait for it or stop it")]
    Busy,
    #[error("there is no answer `{0}` waiting to stream (finished, stopped or expired)")]
    UnknownAnswer(String),
    #[error("{0}")]
    Service(#[from] ServiceError),
    #[error("the page could not be rendered; see the server log")]
    Render(#[from] minijinja::Error),
}

impl PageError {
    fn status(&self) -> StatusCode {
        match self {
            Self::Form(_)
            | Self::BadConversation
            | Self::EmptyMessage
            | Self::MessageTooLong(_) => StatusCode::BAD_REQUEST,
            Self::NotFromPage => StatusCode::FORBIDDEN,
            Self::Busy => StatusCode::CONFLICT,
            Self::UnknownAnswer(_) => StatusCode::NOT_FOUND,
            Self::Render(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Service(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        match self {
            // The API's table decides the status of service errors, for the page too.
            Self::Service(err) => {
                let api = ApiError::from(err);
                (api.status, api.message).into_response()
            }
            Self::Render(err) => {
                tracing::error!("page template failed: {err:#}");
                let message = Self::Render(err).to_string();
                (StatusCode::INTERNAL_SERVER_ERROR, message).into_response()
            }
            other => (other.status(), other.to_string()).into_response(),
        }
    }
}

/// The page's templates, parsed once.
fn templates() -> &'static Environment<'static> {
    static ENV: std::sync::LazyLock<Environment<'static>> = std::sync::LazyLock::new(|| {
        let mut env = Environment::new();
        let sources = [
            ("page.html", include_str!("templates/page.html")),
            ("exchange.html", include_str!("templates/exchange.html")),
            ("thinking.html", include_str!("templates/thinking.html")),
            ("tool_call.html", include_str!("templates/tool_call.html")),
            ("done.html", include_str!("templates/done.html")),
            ("failed.html", include_str!("templates/failed.html")),
        ];
        for (name, source) in sources {
            if let Err(err) = env.add_template(name, source) {
                tracing::error!("template {name} does not parse: {err:#}");
            }
        }
        env
    });
    &ENV
}

fn render(name: &str, ctx: Value) -> Result<String, minijinja::Error> {
    templates().get_template(name)?.render(ctx)
}

/// An answer between `POST /chat/send` and the end of its stream.
struct LiveAnswer {
    conversation: ConversationId,
    /// Taken by the stream handler; `None` once the browser has opened the stream.
    generation: Option<GenerationStream>,
    stop: Arc<Notify>,
    sent_at: Instant,
    thinking: bool,
}

/// What the page handlers share: the engine, the conversations and the answers in flight.
pub struct PageState {
    engine: Engine,
    transcripts: Arc<dyn Transcripts>,
    live: Mutex<HashMap<String, LiveAnswer>>,
}

impl PageState {
    /// A page over `engine`, keeping conversations in `transcripts`.
    pub fn new(engine: Engine, transcripts: Arc<dyn Transcripts>) -> Self {
        Self {
            engine,
            transcripts,
            live: Mutex::new(HashMap::new()),
        }
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<String, LiveAnswer>> {
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The page's routes with their own state, conversations kept in memory; merge into the app.
pub fn routes<S: Clone + Send + Sync + 'static>(engine: Engine) -> Router<S> {
    routes_with(Arc::new(PageState::new(
        engine,
        Arc::new(MemoryTranscripts::default()),
    )))
}

/// The page's routes over a given state (another [`Transcripts`], or a test's).
pub fn routes_with<S: Clone + Send + Sync + 'static>(state: Arc<PageState>) -> Router<S> {
    Router::new()
        .route("/", get(page))
        .route("/chat/send", post(send))
        .route("/chat/stream/{id}", get(stream))
        .route("/chat/stop/{id}", post(stop))
        .merge(assets::routes())
        .layer(middleware::from_fn(assets::security_headers))
        .with_state(state)
}

async fn page(State(state): State<Arc<PageState>>) -> Result<Html<String>, PageError> {
    let info = state.engine.info();
    let html = render(
        "page.html",
        context! {
            model => info.id.as_str(),
            state => if info.is_stub { "stub" } else { "ready" },
            conversation => random_id("c_"),
        },
    )?;
    Ok(Html(html))
}

/// The composer's fields.
#[derive(Debug, Deserialize)]
struct SendForm {
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

async fn send(
    State(state): State<Arc<PageState>>,
    headers: HeaderMap,
    form: Result<Form<SendForm>, FormRejection>,
) -> Result<Html<String>, PageError> {
    // A custom header cannot be sent cross-site without CORS, so this also stops other
    // sites from posting into the chat.
    if headers.get("hx-request").is_none() {
        return Err(PageError::NotFromPage);
    }
    let Form(form) = form.map_err(|err| PageError::Form(err.body_text()))?;
    let conversation =
        ConversationId::parse(&form.conversation).ok_or(PageError::BadConversation)?;
    let text = form.message.trim().to_owned();
    if text.is_empty() {
        return Err(PageError::EmptyMessage);
    }
    if text.len() > MAX_MESSAGE_BYTES {
        return Err(PageError::MessageTooLong(text.len()));
    }
    let busy =
        |live: &HashMap<String, LiveAnswer>| live.values().any(|a| a.conversation == conversation);
    if busy(&state.live()) {
        return Err(PageError::Busy);
    }
    let thinking = form.thinking.is_some();
    let mut messages = state.transcripts.history(&conversation);
    messages.push(ChatMessage::new(Role::User, text.clone()));
    let request = ChatRequest {
        messages,
        tools: if form.tools.is_some() {
            demo_tools()
        } else {
            Vec::new()
        },
        enable_thinking: Some(thinking),
        ..ChatRequest::default()
    };
    let codec = state.engine.codec().clone();
    let prepared = tokio::task::spawn_blocking(move || codec.prepare(&request))
        .await
        .map_err(|err| ServiceError::Generation(format!("worker failed: {err}")))??;
    let generation = state.engine.submit(prepared)?;
    let id = random_id("a_");
    {
        let mut live = state.live();
        if busy(&live) {
            return Err(PageError::Busy);
        }
        live.insert(
            id.clone(),
            LiveAnswer {
                conversation: conversation.clone(),
                generation: Some(generation),
                stop: Arc::new(Notify::new()),
                sent_at: Instant::now(),
                thinking,
            },
        );
    }
    state
        .transcripts
        .append(&conversation, ChatMessage::new(Role::User, text.clone()));
    let reaper = Arc::clone(&state);
    let unclaimed = id.clone();
    tokio::spawn(async move {
        tokio::time::sleep(UNCLAIMED_TIMEOUT).await;
        let mut live = reaper.live();
        if live.get(&unclaimed).is_some_and(|a| a.generation.is_some()) {
            live.remove(&unclaimed);
        }
    });
    let html = render(
        "exchange.html",
        context! { message => text, id => id, thinking => thinking },
    )?;
    Ok(Html(html))
}

async fn stop(
    State(state): State<Arc<PageState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, PageError> {
    if headers.get("hx-request").is_none() {
        return Err(PageError::NotFromPage);
    }
    let mut live = state.live();
    let Some(answer) = live.get(&id) else {
        return Err(PageError::UnknownAnswer(id));
    };
    if answer.generation.is_some() {
        // Not streaming yet: dropping the receiver is the whole cancellation.
        live.remove(&id);
    } else {
        answer.stop.notify_one();
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn stream(
    State(state): State<Arc<PageState>>,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, PageError> {
    let (generation, writer) = {
        let mut live = state.live();
        let answer = live
            .get_mut(&id)
            .ok_or_else(|| PageError::UnknownAnswer(id.clone()))?;
        let generation = answer
            .generation
            .take()
            .ok_or_else(|| PageError::UnknownAnswer(id.clone()))?;
        let writer = AnswerWriter {
            state: Arc::clone(&state),
            id: id.clone(),
            conversation: answer.conversation.clone(),
            stop: Arc::clone(&answer.stop),
            sent_at: answer.sent_at,
            first_token_at: None,
            reasoning: String::new(),
            reasoning_open: answer.thinking,
            content: String::new(),
            tool_calls: Vec::new(),
        };
        (generation, writer)
    };
    let events = stream::unfold(Some((generation, writer)), |current| async move {
        let (mut generation, mut writer) = current?;
        let stop = Arc::clone(&writer.stop);
        let first = tokio::select! {
            event = generation.next() => event,
            () = stop.notified() => return Some((writer.stopped(), None)),
        };
        let mut batch = vec![first];
        while batch.len() < MAX_EVENTS_PER_UPDATE {
            match generation.next().now_or_never() {
                Some(event) => batch.push(event),
                None => break,
            }
        }
        let (events, over) = writer.events(batch);
        Some((events, (!over).then_some((generation, writer))))
    })
    .flat_map(|events| stream::iter(events.into_iter().map(Ok::<Event, Infallible>)));
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

/// Turns one answer's generation events into SSE events of HTML; when dropped (the stream
/// ended, was stopped, or the browser left) it saves what was written to the conversation.
struct AnswerWriter {
    state: Arc<PageState>,
    id: String,
    conversation: ConversationId,
    stop: Arc<Notify>,
    sent_at: Instant,
    first_token_at: Option<Instant>,
    reasoning: String,
    /// The Thinking block is open and still takes reasoning.
    reasoning_open: bool,
    content: String,
    tool_calls: Vec<ToolCall>,
}

impl AnswerWriter {
    /// The SSE events for a batch of engine events, and whether the answer is over.
    fn events(&mut self, batch: Vec<Option<GenerationEvent>>) -> (Vec<Event>, bool) {
        let mut out = Vec::new();
        let mut content_changed = false;
        for event in batch {
            if self.first_token_at.is_none() {
                self.first_token_at = Some(Instant::now());
            }
            match event {
                Some(GenerationEvent::Reasoning(text)) => {
                    self.reasoning.push_str(&text);
                    if self.reasoning_open {
                        out.push(sse("reasoning", escape_span(&text)));
                    }
                }
                Some(GenerationEvent::Content(text)) => {
                    self.close_thinking(&mut out);
                    self.content.push_str(&text);
                    content_changed = true;
                }
                Some(GenerationEvent::ToolCall(call)) => {
                    self.close_thinking(&mut out);
                    let arguments = serde_json::to_string_pretty(&call.arguments)
                        .unwrap_or_else(|_| call.arguments.to_string());
                    out.push(self.fragment(
                        "tool",
                        "tool_call.html",
                        context! { name => call.name.as_str(), arguments => arguments },
                    ));
                    self.tool_calls.push(call);
                }
                Some(GenerationEvent::Done(done)) => {
                    self.close_thinking(&mut out);
                    self.push_answer(&mut out, content_changed);
                    out.push(self.done(None, Some(&done)));
                    return (out, true);
                }
                Some(GenerationEvent::Failed(message)) => {
                    return (self.failed(out, content_changed, &message), true);
                }
                None => {
                    let message = ServiceError::EngineStopped.to_string();
                    return (self.failed(out, content_changed, &message), true);
                }
            }
        }
        self.push_answer(&mut out, content_changed);
        (out, false)
    }

    /// The events that end an answer the user stopped.
    fn stopped(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        self.close_thinking(&mut out);
        out.push(self.done(Some("Stopped."), None));
        out
    }

    fn failed(&mut self, mut out: Vec<Event>, content_changed: bool, message: &str) -> Vec<Event> {
        self.close_thinking(&mut out);
        self.push_answer(&mut out, content_changed);
        out.push(self.fragment("failed", "failed.html", context! { message => message }));
        out.push(self.done(Some("Failed."), None));
        out
    }

    fn push_answer(&self, out: &mut Vec<Event>, changed: bool) {
        if changed {
            out.push(sse("answer", render_markdown(&self.content)));
        }
    }

    /// Collapses the Thinking block into its finished form, once.
    fn close_thinking(&mut self, out: &mut Vec<Event>) {
        if !std::mem::take(&mut self.reasoning_open) {
            return;
        }
        let seconds = self
            .first_token_at
            .map_or(0.0, |t| t.elapsed().as_secs_f64());
        out.push(self.fragment(
            "thinking",
            "thinking.html",
            context! { seconds => format!("{seconds:.1}"), reasoning => self.reasoning.trim() },
        ));
    }

    fn done(&self, note: Option<&str>, done: Option<&Completion>) -> Event {
        let stats = done.map(|done| {
            let ttft = self
                .first_token_at
                .map_or(0.0, |t| (t - self.sent_at).as_secs_f64());
            let timings = done.timings;
            let seconds = timings.predicted_time.as_secs_f64();
            let rate = if seconds > 0.0 {
                timings.predicted_tokens as f64 / seconds
            } else {
                0.0
            };
            format!(
                "first token {ttft:.2} s · {rate:.1} tokens/s · {} tokens",
                done.usage.completion_tokens
            )
        });
        self.fragment(
            "done",
            "done.html",
            context! { note => note, stats => stats },
        )
    }

    /// An SSE event carrying a rendered template; a template failure becomes a visible note.
    fn fragment(&self, event: &str, template: &str, ctx: Value) -> Event {
        let html = render(template, ctx).unwrap_or_else(|err| {
            tracing::error!("page template {template} failed: {err:#}");
            "<p class=\"failure-text\">This part of the answer could not be shown.</p>".into()
        });
        sse(event, html)
    }
}

impl Drop for AnswerWriter {
    fn drop(&mut self) {
        self.state.live().remove(&self.id);
        if !self.content.is_empty() || !self.tool_calls.is_empty() {
            let mut message = ChatMessage::new(Role::Assistant, self.content.trim());
            message.tool_calls = std::mem::take(&mut self.tool_calls);
            self.state.transcripts.append(&self.conversation, message);
        }
    }
}

fn sse(event: &str, html: String) -> Event {
    Event::default().event(event).data(html)
}

/// A reasoning delta as an escaped `<span>`, so whitespace-only pieces survive the swap.
fn escape_span(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 13);
    out.push_str("<span>");
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out.push_str("</span>");
    out
}

#[cfg(test)]
mod tests {
    use super::escape_span;

    #[test]
    fn reasoning_pieces_are_escaped() {
        assert_eq!(
            escape_span("<b>&\"'"),
            "<span>&lt;b&gt;&amp;&quot;&#39;</span>"
        );
        assert_eq!(escape_span(" "), "<span> </span>");
    }
}
