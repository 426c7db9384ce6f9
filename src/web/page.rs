//! The chat page. `GET /` is a new chat and `GET /c/{id}` a stored one; `POST /chat/send`
//! queues a message (or runs a slash command) and answers with the HTML of the exchange,
//! `GET /chat/stream/{id}` streams the answer as server-sent events of HTML fragments that
//! the HTMX SSE extension swaps in, and `POST /chat/stop/{id}` cancels it. Regenerate, edit,
//! settings, the sidebar (list, search, rename, delete) and export are small HTMX routes
//! beside them, each answering with the fragment it replaces.
//!
//! Conversations live in the [`SessionStore`] (see [`super::transcripts`]), so a reload or a
//! restart finds them. The page goes through the same services path as the API
//! (`ChatCodec::prepare`, then `Engine::submit` and its event stream); only the output
//! differs: HTML instead of OpenAI chunks. Answers are rendered from Markdown on the server
//! ([`render_markdown`]); every template is `*.html`, so MiniJinja escapes what model or user
//! wrote.
//!
//! A conversation is created by its first message (or first setting), not by opening the
//! page, so reloading `/` leaves no empty conversations behind.
//!
//! An answer is a [`Run`] of the conversation (see [`crate::services::runs`]), not of the
//! tab: closing the tab cancels nothing, the answer is written to the end and saved, and
//! reopening the chat (`/c/{id}`) shows it streaming on. Every tab on the chat reads the
//! same run; each SSE event carries the id of the run's log entry it renders, so a browser
//! that reconnects with `Last-Event-ID` gets the rest without repeats. Only Stop cancels.
//! The answer is saved before its last event is sent, so a page that saw it end finds it
//! after a reload.

use std::convert::Infallible;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{middleware, Form, Router};
use futures_util::stream::{self, Stream, StreamExt};
use futures_util::FutureExt;
use minijinja::value::Serde;
use minijinja::{context, Environment, Value};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value as Json};

use super::assets;
use super::error::ApiError;
use super::markdown::render_markdown;
use super::transcripts::{self, ConversationId, MessageView};
use crate::inference::sampling::SamplingParams;
use crate::services::agent::{self, ToolLoop};
use crate::services::chat::{ChatRequest, Role};
use crate::services::events::{Completion, GenerationEvent, Progress};
use crate::services::runs::{Entry, Reservation, Run, RunError, RunEvent, Saving};
use crate::services::sessions::{
    to_markdown, Conversation, ConversationPatch, ConversationSettings, NewMessage, StoredMessage,
};
use crate::services::tools::is_builtin;
use crate::services::{Engine, GenerationStream, Runs, ServiceError, SessionStore};

/// How long Stop waits for the run to save its partial answer before it answers, so the
/// page can send the next message at once; saving takes milliseconds.
const STOP_WAIT: Duration = Duration::from_secs(5);

/// Longest message the page accepts, in bytes: a long paste fits, a runaway one is refused
/// before it is tokenized.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;

/// Longest title or search text, in bytes: far more than a sidebar line, far less than abuse.
pub const MAX_TITLE_BYTES: usize = 200;

/// Run log entries taken before one Markdown render: a slow client (or one replaying a long
/// answer) gets fewer, larger updates instead of a growing backlog.
const MAX_EVENTS_PER_UPDATE: usize = 64;

/// The slash commands: name, what it inserts when picked in the menu, usage, and help.
const COMMANDS: &[(&str, &str, &str, &str)] = &[
    ("/new", "/new", "/new", "start a new chat"),
    (
        "/clear",
        "/clear",
        "/clear",
        "delete every message of this chat",
    ),
    ("/think", "/think", "/think", "turn thinking on"),
    ("/no_think", "/no_think", "/no_think", "turn thinking off"),
    (
        "/temp",
        "/temp ",
        "/temp N",
        "set the temperature (0 is greedy)",
    ),
    (
        "/system",
        "/system ",
        "/system TEXT",
        "set the system prompt (empty clears it)",
    ),
    (
        "/export",
        "/export",
        "/export",
        "download this chat as Markdown or JSON",
    ),
    ("/help", "/help", "/help", "list the commands"),
    (
        "/status",
        "/status",
        "/status",
        "model, context use and settings",
    ),
];

/// Why a page request failed; sent as plain text, which `chat.js` shows as is.
#[derive(Debug, thiserror::Error)]
pub enum PageError {
    #[error("the form is incomplete: {0}")]
    Form(String),
    #[error("the query string is wrong: {0}")]
    Query(String),
    #[error("the request did not come from the chat page (HX-Request header missing)")]
    NotFromPage,
    #[error("the conversation id must be 1 to 64 letters, digits, `_` or `-`")]
    BadConversation,
    #[error("there is no conversation `{0}` (deleted, or never created)")]
    UnknownConversation(String),
    #[error("the message is empty")]
    EmptyMessage,
    #[error("the message has {0} bytes; the page accepts at most {MAX_MESSAGE_BYTES}")]
    MessageTooLong(usize),
    #[error("the title is empty")]
    EmptyTitle,
    #[error("the text has {0} bytes; at most {MAX_TITLE_BYTES} are accepted")]
    TitleTooLong(usize),
    #[error("{field} must be a number, got {value:?}")]
    NotANumber { field: &'static str, value: String },
    #[error("max tokens must be at most the model's context, {0} tokens")]
    MaxTokensTooLarge(usize),
    #[error("unknown command `{0}`; /help lists the commands")]
    UnknownCommand(String),
    #[error("/temp needs a number, as in `/temp 0.7`")]
    TempNeedsNumber,
    #[error("this conversation has no {0} yet")]
    Nothing(&'static str),
    #[error("`format` must be `md` or `json`, got {0:?}")]
    BadFormat(String),
    #[error("an answer is still being written in this conversation; wait for it or stop it")]
    Busy,
    #[error("there is no answer `{0}` to stream (finished a while ago, or never started)")]
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
            | Self::Query(_)
            | Self::BadConversation
            | Self::EmptyMessage
            | Self::MessageTooLong(_)
            | Self::EmptyTitle
            | Self::TitleTooLong(_)
            | Self::NotANumber { .. }
            | Self::MaxTokensTooLarge(_)
            | Self::UnknownCommand(_)
            | Self::TempNeedsNumber
            | Self::BadFormat(_) => StatusCode::BAD_REQUEST,
            Self::NotFromPage => StatusCode::FORBIDDEN,
            Self::Busy | Self::Nothing(_) => StatusCode::CONFLICT,
            Self::UnknownAnswer(_) | Self::UnknownConversation(_) => StatusCode::NOT_FOUND,
            Self::Render(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Service(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A run's refusal in the page's words.
    fn from_run(err: RunError) -> Self {
        match err {
            RunError::Busy(_) => Self::Busy,
            RunError::Unknown(id) | RunError::Finished(id) => Self::UnknownAnswer(id),
        }
    }

    /// Turns the store's "no such conversation" into the page's own, worded for people.
    fn from_store(err: ServiceError) -> Self {
        match err {
            ServiceError::ConversationNotFound { id } => Self::UnknownConversation(id),
            other => Self::Service(other),
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
            ("badge.html", include_str!("templates/badge.html")),
            ("not_found.html", include_str!("templates/not_found.html")),
            ("messages.html", include_str!("templates/messages.html")),
            (
                "user_message.html",
                include_str!("templates/user_message.html"),
            ),
            ("exchange.html", include_str!("templates/exchange.html")),
            ("thinking.html", include_str!("templates/thinking.html")),
            ("tool_call.html", include_str!("templates/tool_call.html")),
            (
                "tool_result.html",
                include_str!("templates/tool_result.html"),
            ),
            ("done.html", include_str!("templates/done.html")),
            ("failed.html", include_str!("templates/failed.html")),
            ("sidebar.html", include_str!("templates/sidebar.html")),
            (
                "conversation_item.html",
                include_str!("templates/conversation_item.html"),
            ),
            ("rename.html", include_str!("templates/rename.html")),
            ("settings.html", include_str!("templates/settings.html")),
            (
                "thinking_toggle.html",
                include_str!("templates/thinking_toggle.html"),
            ),
            ("meter.html", include_str!("templates/meter.html")),
            ("edit.html", include_str!("templates/edit.html")),
            ("notice.html", include_str!("templates/notice.html")),
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

/// What the page handlers share: the engine, the conversations and the answers in flight.
pub struct PageState {
    engine: Engine,
    store: SessionStore,
    /// The store is on disk (not the in-memory fallback); the sidebar says so otherwise.
    persistent: bool,
    runs: Runs,
}

impl PageState {
    /// The badge's word: "stub" for the fake model, else "busy" while a generation runs or
    /// waits, else "ready".
    fn badge_state(&self) -> &'static str {
        let (waiting, running) = self.engine.load();
        match (self.engine.info().is_stub, running || waiting > 0) {
            (true, _) => "stub",
            (false, true) => "busy",
            (false, false) => "ready",
        }
    }

    /// A page over `engine`, writing answers with `runs` into their store.
    pub fn new(engine: Engine, runs: Runs, persistent: bool) -> Self {
        Self {
            engine,
            store: runs.store().clone(),
            persistent,
            runs,
        }
    }

    fn busy(&self, conversation: &ConversationId) -> bool {
        self.runs.is_busy(conversation.as_str())
    }

    fn context_length(&self) -> usize {
        self.engine.info().context_length
    }
}

/// The page's routes with their own state; merge into the app. Without `runs` (no
/// conversation store) the page keeps its conversations in an in-memory store, lost when
/// the server stops.
pub fn routes<S: Clone + Send + Sync + 'static>(engine: Engine, runs: Option<Runs>) -> Router<S> {
    let persistent = runs.is_some();
    let runs = match runs {
        Some(runs) => runs,
        // Opening an empty in-memory SQLite database only fails when memory is exhausted.
        None => {
            Runs::new(SessionStore::in_memory().expect("an in-memory conversation store opens"))
        }
    };
    routes_with(Arc::new(PageState::new(engine, runs, persistent)))
}

/// The page's routes over a given state (a test's, for one).
pub fn routes_with<S: Clone + Send + Sync + 'static>(state: Arc<PageState>) -> Router<S> {
    Router::new()
        .route("/", get(new_chat))
        .route("/c/{id}", get(conversation_page))
        .route("/c/{id}/export", get(export))
        .route("/c/{id}/rename", get(rename_form).post(rename))
        .route("/c/{id}/delete", post(delete))
        .route("/chat/conversations", get(sidebar))
        .route("/chat/send", post(send))
        .route("/chat/regenerate", post(regenerate))
        .route("/chat/edit", get(edit_form).post(edit))
        .route("/chat/settings", post(save_settings))
        .route("/chat/settings/reset", post(reset_settings))
        .route("/chat/stream/{id}", get(stream))
        .route("/chat/stop/{id}", post(stop))
        .route("/chat/status", get(badge))
        .merge(assets::routes())
        .layer(middleware::from_fn(assets::security_headers))
        .with_state(state)
}

/// Refuses a state-changing request that did not come from the page: a custom header cannot
/// be sent cross-site without CORS, so this also stops other sites from posting into a chat.
fn from_page(headers: &HeaderMap) -> Result<(), PageError> {
    if headers.get("hx-request").is_none() {
        return Err(PageError::NotFromPage);
    }
    Ok(())
}

fn form<T>(form: Result<Form<T>, FormRejection>) -> Result<T, PageError> {
    form.map(|Form(f)| f)
        .map_err(|err| PageError::Form(err.body_text()))
}

/// `123456` as `123,456`.
fn grouped(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// What the context meter shows: tokens the conversation fills of the model's context.
#[derive(Debug, Serialize)]
struct Meter {
    used: Option<usize>,
    used_text: String,
    limit: usize,
    limit_text: String,
    /// Where the meter turns to a warning colour: 90 % of the context.
    high: usize,
}

impl Meter {
    fn new(used: Option<usize>, limit: usize) -> Self {
        Self {
            used,
            used_text: used.map(grouped).unwrap_or_default(),
            limit,
            limit_text: grouped(limit),
            high: limit / 10 * 9,
        }
    }
}

/// Tokens the conversation's prompt takes now (system prompt and history, as the next
/// answer would see them); `None` when it cannot be measured (a history too long to render
/// is reported by the next send).
async fn measure(
    state: &PageState,
    settings: &ConversationSettings,
    history: &[StoredMessage],
) -> Option<usize> {
    if history.is_empty() && settings.system_prompt.is_none() {
        return Some(0);
    }
    let request = transcripts::chat_request(settings, history, None, Vec::new());
    let codec = state.engine.codec().clone();
    tokio::task::spawn_blocking(move || codec.prepare(&request).ok().map(|p| p.prompt.len()))
        .await
        .ok()
        .flatten()
}

async fn meter_html(
    state: &PageState,
    settings: &ConversationSettings,
    history: &[StoredMessage],
) -> Result<String, PageError> {
    let meter = Meter::new(
        measure(state, settings, history).await,
        state.context_length(),
    );
    Ok(render(
        "meter.html",
        context! { meter => Serde(&meter), oob => true },
    )?)
}

/// Settings as the form shows them: text, empty where the default applies.
#[derive(Debug, Serialize)]
struct SettingsView {
    system_prompt: String,
    temperature: String,
    top_p: String,
    max_tokens: String,
    builtin_tools: bool,
}

impl SettingsView {
    fn new(settings: &ConversationSettings) -> Self {
        let text = |v: Option<String>| v.unwrap_or_default();
        Self {
            system_prompt: settings.system_prompt.clone().unwrap_or_default(),
            temperature: text(settings.temperature.map(|t| t.to_string())),
            top_p: text(settings.top_p.map(|p| p.to_string())),
            max_tokens: text(settings.max_tokens.map(|m| m.to_string())),
            builtin_tools: agent::builtin_tools_on(settings),
        }
    }
}

fn settings_html(
    state: &PageState,
    settings: &ConversationSettings,
    saved: Option<&str>,
    oob: bool,
) -> Result<String, minijinja::Error> {
    let defaults = SamplingParams::default();
    render(
        "settings.html",
        context! {
            settings => Serde(SettingsView::new(settings)),
            defaults => context! {
                temperature => defaults.temperature.to_string(),
                top_p => defaults.top_p.to_string(),
                context_length => state.context_length(),
            },
            saved => saved,
            oob => oob,
        },
    )
}

fn thinking_html(thinking: bool) -> Result<String, minijinja::Error> {
    render(
        "thinking_toggle.html",
        context! { thinking => thinking, oob => true },
    )
}

fn commands() -> Vec<Value> {
    COMMANDS
        .iter()
        .map(|(name, insert, usage, help)| {
            context! { name => *name, insert => *insert, usage => *usage, help => *help }
        })
        .collect()
}

/// `GET /chat/status`: the status badge, which the page polls so "busy" shows while the
/// model works for anyone.
async fn badge(State(state): State<Arc<PageState>>) -> Result<Html<String>, PageError> {
    let info = state.engine.info();
    Ok(Html(render(
        "badge.html",
        context! { model => info.id.as_str(), state => state.badge_state() },
    )?))
}

/// The sidebar's items, newest first; with `query`, only the matching conversations.
async fn sidebar_items(
    state: &PageState,
    query: Option<&str>,
    current: &str,
) -> Result<String, PageError> {
    let conversations = state
        .store
        .list(query.map(str::to_owned))
        .await
        .map_err(PageError::from_store)?;
    Ok(render(
        "sidebar.html",
        context! { conversations => Serde(&conversations), current => current, query => query },
    )?)
}

/// The sidebar's list as an out-of-band swap, for responses that change it in passing.
async fn sidebar_oob(state: &PageState, current: &str) -> Result<String, PageError> {
    let items = sidebar_items(state, None, current).await?;
    Ok(format!(
        "<ul id=\"conversation-list\" class=\"conversations\" hx-swap-oob=\"true\">{items}</ul>"
    ))
}

/// Parses a conversation id from a path or form and loads it.
async fn load(state: &PageState, raw: &str) -> Result<(ConversationId, Conversation), PageError> {
    let id = ConversationId::parse(raw).ok_or(PageError::BadConversation)?;
    let conversation = state
        .store
        .get(id.as_str().to_owned())
        .await
        .map_err(PageError::from_store)?;
    Ok((id, conversation))
}

/// The conversation named by a form, or a new one when the form names none (a new chat's
/// first message or setting). `created` says which, so the response can move the page to
/// the conversation's URL.
struct Target {
    id: ConversationId,
    conversation: Conversation,
    created: bool,
}

async fn target(
    state: &PageState,
    raw: &str,
    settings: ConversationSettings,
) -> Result<Target, PageError> {
    if raw.is_empty() {
        let conversation = state.store.create(None, settings).await?;
        let id = ConversationId::parse(&conversation.id).ok_or(PageError::BadConversation)?;
        return Ok(Target {
            id,
            conversation,
            created: true,
        });
    }
    let (id, conversation) = load(state, raw).await?;
    Ok(Target {
        id,
        conversation,
        created: false,
    })
}

/// A fragment response; for a conversation just created, it also moves the page to the
/// conversation's URL and sets the page's conversation id (out of band).
fn fragment_response(mut html: String, created: Option<&ConversationId>) -> Response {
    let Some(id) = created else {
        return Html(html).into_response();
    };
    html.push_str(&format!(
        "<input type=\"hidden\" id=\"conversation-id\" name=\"conversation\" value=\"{}\" \
         hx-swap-oob=\"true\">",
        id.as_str()
    ));
    let mut response = Html(html).into_response();
    if let Ok(url) = HeaderValue::from_str(&format!("/c/{}", id.as_str())) {
        response.headers_mut().insert("hx-push-url", url);
    }
    response
}

fn redirect(to: &str) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    if let Ok(url) = HeaderValue::from_str(to) {
        response.headers_mut().insert("hx-redirect", url);
    }
    response
}

async fn new_chat(State(state): State<Arc<PageState>>) -> Result<Html<String>, PageError> {
    render_page(&state, None).await.map(Html)
}

async fn conversation_page(
    State(state): State<Arc<PageState>>,
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
    Ok(Html(render_page(&state, Some(loaded.1)).await?).into_response())
}

/// The whole page, for a new chat (`None`) or a stored conversation.
async fn render_page(
    state: &PageState,
    conversation: Option<Conversation>,
) -> Result<String, PageError> {
    let info = state.engine.info();
    let (id, title, settings, history) = match conversation {
        Some(c) => {
            let history = state.store.messages(c.id.clone()).await?;
            (c.id, c.title, c.settings, history)
        }
        None => (
            String::new(),
            None,
            ConversationSettings::default(),
            Vec::new(),
        ),
    };
    let used = measure(state, &settings, &history).await;
    let conversations = state.store.list(None).await?;
    // An answer still being written shows streaming, from the start of its run.
    let live = state
        .runs
        .live(&id)
        .map(|run| context! { id => run.id(), thinking => run.thinking() });
    let html = render(
        "page.html",
        context! {
            model => info.id.as_str(),
            state => state.badge_state(),
            conversation => id.as_str(),
            title => title,
            persistent => state.persistent,
            conversations => Serde(&conversations),
            current => id.as_str(),
            query => Option::<String>::None,
            messages => Serde(transcripts::views(&history)),
            live => live,
            thinking => transcripts::thinking(&settings),
            settings => Serde(SettingsView::new(&settings)),
            defaults => context! {
                temperature => SamplingParams::default().temperature.to_string(),
                top_p => SamplingParams::default().top_p.to_string(),
                context_length => state.context_length(),
            },
            meter => Serde(Meter::new(used, state.context_length())),
            commands => commands(),
            saved => Option::<String>::None,
            oob => false,
        },
    )?;
    Ok(html)
}

#[derive(Debug, Deserialize)]
struct SidebarQuery {
    q: Option<String>,
    conversation: Option<String>,
}

async fn sidebar(
    State(state): State<Arc<PageState>>,
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

#[derive(Debug, Deserialize)]
struct CurrentForm {
    /// The conversation the page shows, to mark it in the list.
    #[serde(default)]
    conversation: String,
}

async fn rename_form(
    State(state): State<Arc<PageState>>,
    Path(id): Path<String>,
) -> Result<Html<String>, PageError> {
    let (_, conversation) = load(&state, &id).await?;
    Ok(Html(render(
        "rename.html",
        context! { c => Serde(&conversation) },
    )?))
}

#[derive(Debug, Deserialize)]
struct RenameForm {
    title: String,
    #[serde(default)]
    conversation: String,
}

async fn rename(
    State(state): State<Arc<PageState>>,
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
        .store
        .update(id.as_str().to_owned(), patch)
        .await
        .map_err(PageError::from_store)?;
    Ok(Html(render(
        "conversation_item.html",
        context! { c => Serde(&conversation), current => body.conversation },
    )?))
}

async fn delete(
    State(state): State<Arc<PageState>>,
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
        .store
        .delete(id.as_str().to_owned())
        .await
        .map_err(PageError::from_store)?;
    if body.conversation == id.as_str() {
        return Ok(redirect("/"));
    }
    Ok(Html(sidebar_items(&state, None, &body.conversation).await?).into_response())
}

#[derive(Debug, Deserialize)]
struct ExportQuery {
    format: Option<String>,
}

async fn export(
    State(state): State<Arc<PageState>>,
    Path(id): Path<String>,
    params: Result<Query<ExportQuery>, QueryRejection>,
) -> Result<Response, PageError> {
    let Query(params) = params.map_err(|err| PageError::Query(err.body_text()))?;
    let json = match params.format.as_deref() {
        None | Some("md") => false,
        Some("json") => true,
        Some(other) => return Err(PageError::BadFormat(other.to_owned())),
    };
    let (id, conversation) = load(&state, &id).await?;
    let messages = state.store.messages(id.as_str().to_owned()).await?;
    let (body, content_type, extension) = if json {
        let document = json!({ "conversation": conversation, "messages": messages });
        let text = serde_json::to_string_pretty(&document).unwrap_or_else(|_| document.to_string());
        (text, "application/json; charset=utf-8", "json")
    } else {
        (
            to_markdown(&conversation, &messages),
            "text/markdown; charset=utf-8",
            "md",
        )
    };
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    let disposition = format!("attachment; filename=\"{}.{extension}\"", id.as_str());
    if let Ok(value) = HeaderValue::from_str(&disposition) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    Ok(response)
}

/// The composer's fields.
#[derive(Debug, Deserialize)]
struct SendForm {
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

async fn send(
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
struct RegenerateForm {
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

async fn regenerate(
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
struct EditQuery {
    conversation: String,
}

async fn edit_form(
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

async fn edit(
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

/// The settings form's fields; empty means "the default".
#[derive(Debug, Deserialize)]
struct SettingsForm {
    conversation: String,
    #[serde(default)]
    system_prompt: String,
    #[serde(default)]
    temperature: String,
    #[serde(default)]
    top_p: String,
    #[serde(default)]
    max_tokens: String,
    /// Present (`on`) when the built-in tools box is ticked.
    builtin_tools: Option<String>,
}

fn optional<T: FromStr>(field: &'static str, raw: &str) -> Result<Option<T>, PageError> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(None);
    }
    raw.parse().map(Some).map_err(|_| PageError::NotANumber {
        field,
        value: raw.to_owned(),
    })
}

/// Saves `settings` to the conversation named by `raw` (creating one for a new chat) and
/// answers with the settings form, the thinking box and the meter as they now are.
async fn apply_settings(
    state: &PageState,
    raw: &str,
    change: impl FnOnce(&ConversationSettings) -> ConversationSettings,
    saved: &str,
    extra: Option<String>,
) -> Result<Response, PageError> {
    let Target {
        id,
        conversation,
        created,
    } = target(state, raw, ConversationSettings::default()).await?;
    let settings = change(&conversation.settings);
    if let Some(max) = settings.max_tokens {
        if max > state.context_length() as i64 {
            return Err(PageError::MaxTokensTooLarge(state.context_length()));
        }
    }
    let patch = ConversationPatch {
        title: None,
        settings: Some(settings),
    };
    let conversation = state
        .store
        .update(id.as_str().to_owned(), patch)
        .await
        .map_err(PageError::from_store)?;
    let history = state.store.messages(id.as_str().to_owned()).await?;
    // A command's notice is the main content; the form then travels out of band.
    let oob = extra.is_some();
    let mut html = extra.unwrap_or_default();
    html.push_str(&settings_html(
        state,
        &conversation.settings,
        Some(saved),
        oob,
    )?);
    html.push_str(&thinking_html(transcripts::thinking(
        &conversation.settings,
    ))?);
    html.push_str(&meter_html(state, &conversation.settings, &history).await?);
    if created {
        html.push_str(&sidebar_oob(state, id.as_str()).await?);
    }
    Ok(fragment_response(html, created.then_some(&id)))
}

async fn save_settings(
    State(state): State<Arc<PageState>>,
    headers: HeaderMap,
    body: Result<Form<SettingsForm>, FormRejection>,
) -> Result<Response, PageError> {
    from_page(&headers)?;
    let body = form(body)?;
    let system = body.system_prompt.trim();
    let parsed = ConversationSettings {
        system_prompt: (!system.is_empty()).then(|| system.to_owned()),
        temperature: optional("temperature", &body.temperature)?,
        top_p: optional("top-p", &body.top_p)?,
        max_tokens: optional("max tokens", &body.max_tokens)?,
        thinking: None,
        builtin_tools: body.builtin_tools.is_some().then_some(true),
    };
    parsed.check()?;
    apply_settings(
        &state,
        &body.conversation,
        move |old| ConversationSettings {
            thinking: old.thinking,
            ..parsed
        },
        "Saved.",
        None,
    )
    .await
}

async fn reset_settings(
    State(state): State<Arc<PageState>>,
    headers: HeaderMap,
    body: Result<Form<CurrentForm>, FormRejection>,
) -> Result<Response, PageError> {
    from_page(&headers)?;
    let body = form(body)?;
    apply_settings(
        &state,
        &body.conversation,
        |_| ConversationSettings::default(),
        "Back to the defaults.",
        None,
    )
    .await
}

fn notice(
    kind: &str,
    text: &str,
    conversation: &str,
    lines: &[String],
) -> Result<String, PageError> {
    Ok(render(
        "notice.html",
        context! {
            kind => kind,
            text => text,
            conversation => conversation,
            lines => lines.to_vec(),
            commands => commands(),
            extras => Vec::<String>::new(),
        },
    )?)
}

/// Runs a slash command typed in the composer; its answer is a notice added to the
/// conversation's view (not stored), or a move to another page.
async fn command(
    state: &Arc<PageState>,
    raw: &str,
    text: &str,
    thinking_box: bool,
) -> Result<Response, PageError> {
    let (name, argument) = match text.split_once(char::is_whitespace) {
        Some((name, rest)) => (name, rest.trim()),
        None => (text, ""),
    };
    match name {
        "/new" => Ok(redirect("/")),
        "/help" => Ok(Html(notice("help", "", raw, &[])?).into_response()),
        "/think" | "/no_think" => {
            let on = name == "/think";
            let said = if on {
                "Thinking is on."
            } else {
                "Thinking is off."
            };
            if raw.is_empty() {
                // A new chat: the box carries the setting to the first message.
                let mut html = notice("text", said, raw, &[])?;
                html.push_str(&thinking_html(on)?);
                return Ok(Html(html).into_response());
            }
            let main = notice("text", said, raw, &[])?;
            apply_settings(
                state,
                raw,
                move |old| ConversationSettings {
                    thinking: Some(on),
                    ..old.clone()
                },
                said,
                Some(main),
            )
            .await
        }
        "/temp" => {
            let temperature: f32 = argument.parse().map_err(|_| PageError::TempNeedsNumber)?;
            let changed = ConversationSettings {
                temperature: Some(temperature),
                ..ConversationSettings::default()
            };
            changed.check()?;
            let said = format!("Temperature set to {temperature}.");
            let main = notice("text", &said, raw, &[])?;
            apply_settings(
                state,
                raw,
                move |old| ConversationSettings {
                    temperature: Some(temperature),
                    thinking: old.thinking.or(Some(thinking_box)),
                    ..old.clone()
                },
                &said,
                Some(main),
            )
            .await
        }
        "/system" => {
            if argument.len() > MAX_MESSAGE_BYTES {
                return Err(PageError::MessageTooLong(argument.len()));
            }
            let prompt = (!argument.is_empty()).then(|| argument.to_owned());
            let said = if prompt.is_some() {
                "System prompt set."
            } else {
                "System prompt cleared."
            };
            let main = notice("text", said, raw, &[])?;
            apply_settings(
                state,
                raw,
                move |old| ConversationSettings {
                    system_prompt: prompt,
                    thinking: old.thinking.or(Some(thinking_box)),
                    ..old.clone()
                },
                said,
                Some(main),
            )
            .await
        }
        "/clear" => {
            if raw.is_empty() {
                return Ok(Html(notice("text", "Nothing to clear yet.", raw, &[])?).into_response());
            }
            let (id, _) = load(state, raw).await?;
            if state.busy(&id) {
                return Err(PageError::Busy);
            }
            state.store.truncate(id.as_str().to_owned(), 0).await?;
            Ok(redirect(&format!("/c/{}", id.as_str())))
        }
        "/export" => {
            if raw.is_empty() {
                return Err(PageError::Nothing("messages to export"));
            }
            let (id, _) = load(state, raw).await?;
            Ok(Html(notice("export", "", id.as_str(), &[])?).into_response())
        }
        "/status" => {
            let info = state.engine.info();
            let mut lines = vec![format!(
                "Model: {} ({})",
                info.id,
                if info.is_stub { "stub" } else { "ready" }
            )];
            let (settings, history) = if raw.is_empty() {
                lines.push("Conversation: new, not saved yet".into());
                (
                    ConversationSettings {
                        thinking: Some(thinking_box),
                        ..ConversationSettings::default()
                    },
                    Vec::new(),
                )
            } else {
                let (id, conversation) = load(state, raw).await?;
                let history = state.store.messages(id.as_str().to_owned()).await?;
                lines.push(format!(
                    "Conversation: {} ({} messages{})",
                    conversation.title.as_deref().unwrap_or("New chat"),
                    history.len(),
                    if state.persistent {
                        ""
                    } else {
                        ", in memory only"
                    }
                ));
                (conversation.settings, history)
            };
            let used = measure(state, &settings, &history).await;
            lines.push(format!(
                "Context: {} of {} tokens",
                used.map_or_else(|| "?".to_owned(), grouped),
                grouped(state.context_length())
            ));
            let defaults = SamplingParams::default();
            lines.push(format!(
                "Thinking {}, temperature {}, top-p {}, max tokens {}",
                if transcripts::thinking(&settings) {
                    "on"
                } else {
                    "off"
                },
                settings.temperature.unwrap_or(defaults.temperature),
                settings.top_p.unwrap_or(defaults.top_p),
                settings
                    .max_tokens
                    .map_or_else(|| "until done".to_owned(), |m| m.to_string()),
            ));
            lines.push(format!(
                "System prompt: {}",
                settings.system_prompt.as_deref().unwrap_or("none")
            ));
            Ok(Html(notice("status", "", raw, &lines)?).into_response())
        }
        other => Err(PageError::UnknownCommand(other.to_owned())),
    }
}

/// `POST /chat/stop/{id}`: stops the run and answers once its partial answer is saved and
/// the conversation is free. Stopping a run that just finished is no error: the user
/// wanted it over, and it is.
async fn stop(
    State(state): State<Arc<PageState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, PageError> {
    from_page(&headers)?;
    let run = state.runs.get(&id).map_err(PageError::from_run)?;
    match run.stop() {
        Ok(()) | Err(RunError::Finished(_)) => {}
        Err(other) => return Err(PageError::from_run(other)),
    }
    if tokio::time::timeout(STOP_WAIT, run.finished())
        .await
        .is_err()
    {
        tracing::warn!("answer {id} did not finish within {STOP_WAIT:?} of its stop");
    }
    Ok(StatusCode::NO_CONTENT)
}

/// The entry id the browser saw last (`Last-Event-ID` on a reconnect); 0 for a new stream.
fn last_event_id(headers: &HeaderMap) -> u64 {
    headers
        .get("last-event-id")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0)
}

/// `GET /chat/stream/{id}`: the run's answer as SSE events of HTML, from its start or after
/// the browser's `Last-Event-ID`. Leaving cancels nothing; the run goes on without readers.
async fn stream(
    State(state): State<Arc<PageState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, PageError> {
    let run = state.runs.get(&id).map_err(PageError::from_run)?;
    let writer = AnswerWriter::new(Arc::clone(&state), &run, last_event_id(&headers));
    let subscription = run.subscribe(0);
    let events = stream::unfold(Some((subscription, writer)), |current| async move {
        let (mut subscription, mut writer) = current?;
        let mut batch = vec![subscription.next().await?];
        while batch.len() < MAX_EVENTS_PER_UPDATE {
            match subscription.next().now_or_never() {
                Some(Some(entry)) => batch.push(entry),
                _ => break,
            }
        }
        let (events, over) = writer.batch(batch);
        Some((events, (!over).then_some((subscription, writer))))
    })
    .flat_map(|events| stream::iter(events.into_iter().map(Ok::<Event, Infallible>)));
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

/// Turns a run's log into SSE events of HTML. Every stream replays the log from its start
/// into a fresh writer, so an answer joined midway renders whole; entries up to the
/// browser's `Last-Event-ID` update the writer but are not sent again.
///
/// Each entry's last event carries the entry's id; the answer's Markdown, rendered once per
/// batch of text, carries the id of the newest text it holds. Events without an id (the
/// Thinking block closing, a progress line cleared) are safe to repeat after a reconnect.
struct AnswerWriter {
    state: Arc<PageState>,
    started_at: Instant,
    /// The client already has every entry up to this id.
    after: u64,
    first_token_at: Option<Instant>,
    /// A queue or prefill notice is on the page, to be cleared by the first token.
    progress_shown: bool,
    reasoning: String,
    /// The Thinking block is open and still takes reasoning.
    reasoning_open: bool,
    content: String,
    /// The newest text entry not yet rendered into an `answer` event.
    unrendered: Option<u64>,
    /// The run executes built-in tool calls, so their cards say nothing of "not run".
    runs_tools: bool,
}

impl AnswerWriter {
    fn new(state: Arc<PageState>, run: &Run, after: u64) -> Self {
        Self {
            state,
            started_at: run.started_at(),
            after,
            first_token_at: None,
            progress_shown: false,
            reasoning: String::new(),
            reasoning_open: run.thinking(),
            content: String::new(),
            unrendered: None,
            runs_tools: run.runs_tools(),
        }
    }

    /// The SSE events for a batch of log entries, and whether the log is over.
    fn batch(&mut self, entries: Vec<Arc<Entry>>) -> (Vec<Event>, bool) {
        let mut out = Vec::new();
        let mut over = false;
        for entry in entries {
            let text = matches!(
                entry.event,
                RunEvent::Generation(GenerationEvent::Content(_))
            );
            if !text {
                self.render_answer(&mut out);
            }
            let mut group = Vec::new();
            over |= self.entry(&entry, &mut group);
            if entry.id <= self.after {
                continue;
            }
            if !text {
                if let Some(last) = group.pop() {
                    group.push(last.id(entry.id.to_string()));
                }
            }
            out.extend(group);
        }
        self.render_answer(&mut out);
        (out, over)
    }

    /// The answer's Markdown, when text came since it was last rendered.
    fn render_answer(&mut self, out: &mut Vec<Event>) {
        if let Some(id) = self.unrendered.take() {
            if id > self.after {
                out.push(sse("answer", render_markdown(&self.content)).id(id.to_string()));
            }
        }
    }

    /// Takes one entry into the writer's state and adds its events; true when it is the
    /// log's last.
    fn entry(&mut self, entry: &Entry, out: &mut Vec<Event>) -> bool {
        let event = match &entry.event {
            RunEvent::Saved(_) => return true,
            RunEvent::Generation(GenerationEvent::Progress(progress)) => {
                out.push(sse("progress", progress_html(*progress)));
                self.progress_shown = true;
                return false;
            }
            RunEvent::Stopped => {
                self.clear_progress(out);
                self.close_thinking(entry.at, out);
                out.push(self.done(Some("Stopped."), None));
                return false;
            }
            RunEvent::ToolResult(result) => {
                out.push(self.fragment(
                    "tool",
                    "tool_result.html",
                    context! {
                        name => result.name.as_str(),
                        content => result.content.as_str(),
                        is_error => result.is_error,
                    },
                ));
                return false;
            }
            RunEvent::Generation(event) => event,
        };
        self.first_token_at.get_or_insert(entry.at);
        self.clear_progress(out);
        match event {
            GenerationEvent::Reasoning(text) => {
                self.reasoning.push_str(text);
                if self.reasoning_open {
                    out.push(sse("reasoning", escape_span(text)));
                }
            }
            GenerationEvent::Content(text) => {
                self.close_thinking(entry.at, out);
                self.content.push_str(text);
                self.unrendered = Some(entry.id);
            }
            GenerationEvent::ToolCall(call) => {
                self.close_thinking(entry.at, out);
                let arguments = serde_json::to_string_pretty(&call.arguments)
                    .unwrap_or_else(|_| call.arguments.to_string());
                out.push(self.fragment(
                    "tool",
                    "tool_call.html",
                    context! {
                        name => call.name.as_str(),
                        arguments => arguments,
                        ran => self.runs_tools && is_builtin(&call.name),
                    },
                ));
            }
            GenerationEvent::Done(done) => {
                self.close_thinking(entry.at, out);
                out.push(self.done(None, Some(done)));
            }
            GenerationEvent::Failed(message) => {
                self.close_thinking(entry.at, out);
                out.push(self.fragment("failed", "failed.html", context! { message => message }));
                out.push(self.done(Some("Failed."), None));
            }
            GenerationEvent::Progress(_) => {}
        }
        false
    }

    fn clear_progress(&mut self, out: &mut Vec<Event>) {
        if std::mem::take(&mut self.progress_shown) {
            out.push(sse("progress", "<span></span>".to_owned()));
        }
    }

    /// Collapses the Thinking block into its finished form, once; `at` is when the
    /// reasoning ended.
    fn close_thinking(&mut self, at: Instant, out: &mut Vec<Event>) {
        if !std::mem::take(&mut self.reasoning_open) {
            return;
        }
        let seconds = self.first_token_at.map_or(0.0, |t| (at - t).as_secs_f64());
        // Re-tokenizing the reasoning (a few hundred tokens, well under a millisecond) is
        // simpler than threading a count through the event stream.
        let tokens = self
            .state
            .engine
            .codec()
            .tokenize(&self.reasoning, false, false)
            .map_or(0, |ids| ids.len());
        out.push(self.fragment(
            "thinking",
            "thinking.html",
            context! {
                seconds => format!("{seconds:.1}"),
                tokens => tokens,
                reasoning => self.reasoning.trim(),
            },
        ));
    }

    /// The line that ends the answer, with the context meter as it now stands (out of band).
    fn done(&self, note: Option<&str>, done: Option<&Completion>) -> Event {
        let stats = done.map(|done| {
            let ttft = self
                .first_token_at
                .map_or(0.0, |t| (t - self.started_at).as_secs_f64());
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
        let meter = done.map(|done| {
            Meter::new(
                Some(done.usage.prompt_tokens + done.usage.completion_tokens),
                self.state.context_length(),
            )
        });
        let html =
            render("done.html", context! { note => note, stats => stats }).and_then(|mut html| {
                if let Some(meter) = meter {
                    html.push_str(&render(
                        "meter.html",
                        context! { meter => Serde(&meter), oob => true },
                    )?);
                }
                Ok(html)
            });
        sse("done", self.html_or_note("done.html", html))
    }

    /// An SSE event carrying a rendered template.
    fn fragment(&self, event: &str, template: &str, ctx: Value) -> Event {
        sse(event, self.html_or_note(template, render(template, ctx)))
    }

    /// A template failure becomes a visible note rather than a missing piece.
    fn html_or_note(&self, template: &str, html: Result<String, minijinja::Error>) -> String {
        html.unwrap_or_else(|err| {
            tracing::error!("page template {template} failed: {err:#}");
            "<p class=\"failure-text\">This part of the answer could not be shown.</p>".into()
        })
    }
}

/// Where a waiting answer stands, for its status line.
fn progress_html(progress: Progress) -> String {
    let n = |v: usize| crate::services::error::thousands(v);
    match progress {
        Progress::Queued { ahead } => format!(
            "<span>Waiting for the model: {ahead} request{} ahead</span>",
            if ahead == 1 { "" } else { "s" }
        ),
        Progress::Prefill {
            done,
            total,
            cached,
        } => format!(
            "<span>Reading the prompt: {} / {} tokens{}</span>",
            n(done),
            n(total),
            if cached > 0 {
                format!(", {} reused", n(cached))
            } else {
                String::new()
            }
        ),
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
    use super::{escape_span, grouped};

    #[test]
    fn reasoning_pieces_are_escaped() {
        assert_eq!(
            escape_span("<b>&\"'"),
            "<span>&lt;b&gt;&amp;&quot;&#39;</span>"
        );
        assert_eq!(escape_span(" "), "<span> </span>");
    }

    #[test]
    fn token_counts_are_grouped_by_thousands() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(65_536), "65,536");
        assert_eq!(grouped(1_234_567), "1,234,567");
    }
}
