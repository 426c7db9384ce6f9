//! The chat page. `GET /` is a new chat and `GET /c/{id}` a stored one; `POST /chat/send`
//! queues a message (or runs a slash command) and answers with the HTML of the exchange,
//! `GET /chat/stream/{id}` streams the answer as server-sent events of HTML fragments that
//! the HTMX SSE extension swaps in, and `POST /chat/stop/{id}` cancels it. Regenerate, edit,
//! settings, the sidebar (list, search, rename, delete) and export are small HTMX routes
//! beside them, each answering with the fragment it replaces.
//!
//! Conversations live in the [`SessionStore`] (see [`super::transcripts`]), so a reload or a
//! restart finds them. The page asks through the same [`Conversations`] service as the API
//! and the terminal chat (send, regenerate, edit, stop); only the output differs: HTML
//! instead of JSON. Answers are rendered from Markdown on the server
//! ([`render_markdown`](crate::web::markdown::render_markdown)); every template is `*.html`, so MiniJinja escapes what model or user
//! wrote.
//!
//! A conversation is created by its first message (or first setting), not by opening the
//! page, so reloading `/` leaves no empty conversations behind.
//!
//! An answer is a [`Run`](crate::services::runs::Run) of the conversation (see [`crate::services::runs`]), not of the
//! tab: closing the tab cancels nothing, the answer is written to the end and saved, and
//! reopening the chat (`/c/{id}`) shows it streaming on. Every tab on the chat reads the
//! same run; each SSE event carries the id of the run's log entry it renders, so a browser
//! that reconnects with `Last-Event-ID` gets the rest without repeats (`chat.js` lets a
//! dropped stream reconnect by itself a few times before it reports it lost). Only Stop
//! cancels.
//! The answer is saved before its last event is sent, so a page that saw it end finds it
//! after a reload.

mod commands;
mod error;
mod export;
mod meter;
mod pages;
mod send;
mod settings;
mod sidebar;
mod stream;
mod templates;
mod versions;

use axum::extract::rejection::FormRejection;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{middleware, Form, Router};
use serde::Deserialize;

pub use error::PageError;
pub(crate) use templates::render as render_template;

use super::assets;
use super::state::AppState;
use super::transcripts::ConversationId;
use crate::services::sessions::{Conversation, ConversationSettings};
use crate::services::{Conversations, Engine, Runs, SessionStore};

/// Longest message the page accepts, in bytes: a long paste fits, a runaway one is refused
/// before it is tokenized.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;

/// Longest title or search text, in bytes: far more than a sidebar line, far less than abuse.
pub const MAX_TITLE_BYTES: usize = crate::services::sessions::MAX_TITLE_BYTES;

/// What the page handlers share: the conversation service (engine, store and the answers
/// in flight). A substate of [`AppState`], made from it for each request.
#[derive(Clone)]
pub struct PageState {
    conversations: Conversations,
    /// A key guards the server, so the page offers to log out.
    login: bool,
}

impl PageState {
    /// The badge's word: "stub" for the fake model, else "busy" while a generation runs or
    /// waits, else "ready".
    fn badge_state(&self) -> &'static str {
        let (waiting, running) = self.engine().queue();
        match (self.engine().info().is_stub, running + waiting > 0) {
            (true, _) => "stub",
            (false, true) => "busy",
            (false, false) => "ready",
        }
    }

    /// A page asking through `conversations`.
    pub fn new(conversations: Conversations) -> Self {
        Self {
            conversations,
            login: false,
        }
    }

    /// The page of a server guarded by a key (`login`), which offers to log out.
    pub fn with_login(mut self, login: bool) -> Self {
        self.login = login;
        self
    }

    fn engine(&self) -> &Engine {
        self.conversations.engine()
    }

    fn store(&self) -> &SessionStore {
        self.conversations.store()
    }

    /// The store is on disk (not in memory); the sidebar says so otherwise.
    fn persistent(&self) -> bool {
        self.store().is_on_disk()
    }

    fn runs(&self) -> &Runs {
        self.conversations.runs()
    }

    fn busy(&self, conversation: &ConversationId) -> bool {
        self.conversations.is_busy(conversation.as_str())
    }

    fn context_length(&self) -> usize {
        self.engine().info().context_length
    }
}

/// The page's routes; merge into the app, whose state gives each handler its [`PageState`].
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(pages::new_chat))
        .route("/c/{id}", get(pages::conversation_page))
        .route("/c/{id}/export", get(export::export))
        .route(
            "/c/{id}/rename",
            get(sidebar::rename_form).post(sidebar::rename),
        )
        .route("/c/{id}/delete", post(sidebar::delete))
        .route("/chat/conversations", get(sidebar::sidebar))
        .route("/chat/send", post(send::send))
        .route("/chat/regenerate", post(send::regenerate))
        .route("/chat/version", post(versions::select))
        .route("/chat/continue", post(send::continue_answer))
        .route("/chat/edit", get(send::edit_form).post(send::edit))
        .route("/chat/settings", post(settings::save_settings))
        .route("/chat/settings/reset", post(settings::reset_settings))
        .route("/chat/stream/{id}", get(stream::stream))
        .route("/chat/stop/{id}", post(stream::stop))
        .route("/chat/status", get(pages::badge))
        .merge(assets::routes())
        .layer(middleware::from_fn(assets::security_headers))
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

/// Parses a conversation id from a path or form and loads it.
async fn load(state: &PageState, raw: &str) -> Result<(ConversationId, Conversation), PageError> {
    let id = ConversationId::parse(raw).ok_or(PageError::BadConversation)?;
    let conversation = state
        .store()
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
        let conversation = state.store().create(None, settings).await?;
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

#[derive(Debug, Deserialize)]
struct CurrentForm {
    /// The conversation the page shows, to mark it in the list.
    #[serde(default)]
    conversation: String,
}
