//! Why a page request fails, and the status and plain text each reason is answered with
//! (`chat.js` shows the text as is). Apart from the handlers so they read as the happy path.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::{MAX_MESSAGE_BYTES, MAX_TITLE_BYTES};
use crate::services::runs::RunError;
use crate::services::{ConversationError, ServiceError};
use crate::web::error::ApiError;

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
    #[error("{0}")]
    NotLastQuestion(ConversationError),
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
            Self::Busy | Self::Nothing(_) | Self::NotLastQuestion(_) => StatusCode::CONFLICT,
            Self::UnknownAnswer(_) | Self::UnknownConversation(_) => StatusCode::NOT_FOUND,
            Self::Render(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Service(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A run's refusal in the page's words.
    pub(super) fn from_run(err: RunError) -> Self {
        match err {
            RunError::Busy(_) => Self::Busy,
            RunError::Unknown(id) | RunError::Finished(id) => Self::UnknownAnswer(id),
        }
    }

    /// A refusal of the conversation service in the page's words.
    pub(super) fn from_conversation(err: ConversationError) -> Self {
        match err {
            ConversationError::Run(err) => Self::from_run(err),
            ConversationError::Nothing(what) => Self::Nothing(what),
            stale @ ConversationError::NotLastQuestion => Self::NotLastQuestion(stale),
            ConversationError::Service(err) => Self::from_store(err),
        }
    }

    /// Turns the store's "no such conversation" into the page's own, worded for people.
    pub(super) fn from_store(err: ServiceError) -> Self {
        match err {
            ServiceError::ConversationNotFound { id } => Self::UnknownConversation(id),
            other => Self::Service(other),
        }
    }
}

impl From<ConversationError> for PageError {
    fn from(err: ConversationError) -> Self {
        Self::from_conversation(err)
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
