//! Errors as the HTTP API reports them: OpenAI's shape
//! `{"error": {"message", "type", "param", "code"}}` with a fitting status, for failures
//! before a response starts and (as an SSE `data:` line) for failures after.
//!
//! This is the one place that decides each service error's status code, so the mapping can
//! be read and tested as a table.

use std::sync::atomic::{AtomicU64, Ordering};

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::json;

use crate::services::runs::RunError;
use crate::services::ConversationError;
use crate::services::ServiceError;

/// Seconds a client is told to wait when the queue is full: about one short answer's time.
const RETRY_AFTER_SECONDS: &str = "1";

/// "Busy" refusals are expected under load, not errors: they are counted and logged at most
/// once per [`BUSY_LOG_EVERY_S`] seconds, so a burst of 180 refusals is one line, not 180.
static BUSY_LOG: BusyLog = BusyLog::new();

/// Seconds between two "busy" log lines.
const BUSY_LOG_EVERY_S: u64 = 10;

/// Counts refusals and says when to log them.
struct BusyLog {
    refused: AtomicU64,
    /// The second of the last line, plus one (0: none yet).
    logged_at: AtomicU64,
}

impl BusyLog {
    const fn new() -> Self {
        Self {
            refused: AtomicU64::new(0),
            logged_at: AtomicU64::new(0),
        }
    }

    /// Counts one refusal at second `now`; returns how many to report when a line is due.
    fn note(&self, now: u64) -> Option<u64> {
        self.refused.fetch_add(1, Ordering::Relaxed);
        let last = self.logged_at.load(Ordering::Relaxed);
        let due = last == 0 || now + 1 >= last + BUSY_LOG_EVERY_S;
        if due
            && self
                .logged_at
                .compare_exchange(last, now + 1, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.refused.swap(0, Ordering::Relaxed));
        }
        None
    }
}

fn seconds_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// OpenAI's error categories (the `type` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidRequest,
    Authentication,
    NotFound,
    Unavailable,
    Server,
}

impl ErrorKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request_error",
            Self::Authentication => "authentication_error",
            Self::NotFound => "not_found_error",
            Self::Unavailable => "unavailable_error",
            Self::Server => "server_error",
        }
    }
}

/// An error response of the API.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{status}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: ErrorKind,
    pub message: String,
    /// The request field at fault, as a path (`messages[0].content`).
    pub param: Option<String>,
    /// A machine-readable reason (`context_length_exceeded`, `model_not_found`, …).
    pub code: Option<&'static str>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    param: Option<&'a str>,
    code: Option<&'static str>,
}

impl ApiError {
    /// A 400 naming the field at fault.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            kind: ErrorKind::InvalidRequest,
            message: message.into(),
            param: Some(param.into()),
            code: None,
        }
    }

    /// A 400 about the request as a whole.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            param: None,
            ..Self::invalid("", message)
        }
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    pub fn unauthorized() -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            kind: ErrorKind::Authentication,
            message: "a valid API key is required: send `Authorization: Bearer <key>`".into(),
            param: None,
            code: Some("invalid_api_key"),
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            kind: ErrorKind::NotFound,
            message: message.into(),
            param: None,
            code: None,
        }
    }

    /// The error as the JSON body both responses and SSE error events carry.
    pub fn body(&self) -> serde_json::Value {
        json!({
            "error": ErrorBody {
                message: &self.message,
                kind: self.kind.as_str(),
                param: self.param.as_deref(),
                code: self.code,
            }
        })
    }
}

impl From<RunError> for ApiError {
    fn from(err: RunError) -> Self {
        let message = err.to_string();
        match err {
            RunError::Busy(_) => Self {
                status: StatusCode::CONFLICT,
                kind: ErrorKind::InvalidRequest,
                message,
                param: None,
                code: Some("conversation_busy"),
            },
            RunError::Unknown(_) | RunError::Finished(_) => Self::not_found(message),
        }
    }
}

impl From<ConversationError> for ApiError {
    fn from(err: ConversationError) -> Self {
        match err {
            ConversationError::Run(err) => err.into(),
            ConversationError::Service(err) => err.into(),
            refused @ (ConversationError::Nothing(_) | ConversationError::NotLastQuestion) => {
                Self {
                    status: StatusCode::CONFLICT,
                    kind: ErrorKind::InvalidRequest,
                    message: refused.to_string(),
                    param: None,
                    code: None,
                }
            }
        }
    }
}

impl From<ServiceError> for ApiError {
    fn from(err: ServiceError) -> Self {
        let message = err.to_string();
        let (status, kind, param, code) = match &err {
            ServiceError::EmptyMessages => (
                StatusCode::BAD_REQUEST,
                ErrorKind::InvalidRequest,
                Some("messages"),
                None,
            ),
            ServiceError::MaxTokensOutOfRange { field, .. } => (
                StatusCode::BAD_REQUEST,
                ErrorKind::InvalidRequest,
                Some(*field),
                None,
            ),
            ServiceError::PromptTooLong { .. } | ServiceError::LastTurnTooLong { .. } => (
                StatusCode::BAD_REQUEST,
                ErrorKind::InvalidRequest,
                Some("messages"),
                Some("context_length_exceeded"),
            ),
            ServiceError::TextTooLong { field, .. } => (
                StatusCode::BAD_REQUEST,
                ErrorKind::InvalidRequest,
                Some(*field),
                Some("context_length_exceeded"),
            ),
            ServiceError::InvalidParameter { field, .. } => (
                StatusCode::BAD_REQUEST,
                ErrorKind::InvalidRequest,
                Some(*field),
                None,
            ),
            ServiceError::TokenOutOfRange { .. } => (
                StatusCode::BAD_REQUEST,
                ErrorKind::InvalidRequest,
                Some("tokens"),
                None,
            ),
            ServiceError::Template(_) => (
                StatusCode::BAD_REQUEST,
                ErrorKind::InvalidRequest,
                Some("messages"),
                None,
            ),
            ServiceError::QueueFull { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorKind::Unavailable,
                None,
                Some("server_busy"),
            ),
            ServiceError::EngineStopped => (
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorKind::Unavailable,
                None,
                None,
            ),
            ServiceError::RemoteUnavailable { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorKind::Unavailable,
                None,
                Some("engine_unavailable"),
            ),
            ServiceError::ConversationNotFound { .. } | ServiceError::MessageNotFound { .. } => (
                StatusCode::NOT_FOUND,
                ErrorKind::NotFound,
                None,
                Some("conversation_not_found"),
            ),
            ServiceError::AnsweringElsewhere { .. } => (
                StatusCode::CONFLICT,
                ErrorKind::InvalidRequest,
                None,
                Some("conversation_busy"),
            ),
            ServiceError::InvalidImport { .. } => (
                StatusCode::BAD_REQUEST,
                ErrorKind::InvalidRequest,
                Some("file"),
                None,
            ),
            ServiceError::DataDir { .. }
            | ServiceError::Database { .. }
            | ServiceError::KvBudget(_)
            | ServiceError::SchemaTooNew { .. }
            | ServiceError::Storage { .. } => (
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorKind::Server,
                None,
                None,
            ),
            ServiceError::Tokenize(_)
            | ServiceError::Output(_)
            | ServiceError::Load(_)
            | ServiceError::Generation(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorKind::Server,
                None,
                None,
            ),
        };
        if matches!(err, ServiceError::QueueFull { .. }) {
            if let Some(refused) = BUSY_LOG.note(seconds_now()) {
                tracing::warn!("busy: refused {refused} request(s) with 503 ({message})");
            }
        } else if status.is_server_error() {
            tracing::error!("{message}");
        }
        Self {
            status,
            kind,
            message,
            param: param.map(str::to_owned),
            code,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        let headers = response.headers_mut();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECONDS),
            );
        }
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_refusals_are_logged_once_per_interval_with_their_count() {
        let log = BusyLog::new();
        assert_eq!(log.note(100), Some(1), "the first refusal is logged");
        for second in 100..100 + BUSY_LOG_EVERY_S - 1 {
            assert_eq!(log.note(second), None, "second {second}");
        }
        let burst = BUSY_LOG_EVERY_S - 1;
        assert_eq!(log.note(100 + BUSY_LOG_EVERY_S), Some(burst + 1));
        assert_eq!(log.note(100 + BUSY_LOG_EVERY_S), None);
    }

    #[test]
    fn each_service_error_gets_its_status() {
        let cases = [
            (ServiceError::EmptyMessages, 400, Some("messages")),
            (
                ServiceError::MaxTokensOutOfRange {
                    field: "max_completion_tokens",
                    value: 0,
                    min: 1,
                    limit: 10,
                },
                400,
                Some("max_completion_tokens"),
            ),
            (
                ServiceError::PromptTooLong {
                    prompt_tokens: 11,
                    limit: 10,
                },
                400,
                Some("messages"),
            ),
            (
                ServiceError::TokenOutOfRange { id: -1, vocab: 5 },
                400,
                Some("tokens"),
            ),
            (ServiceError::QueueFull { capacity: 1 }, 503, None),
            (ServiceError::EngineStopped, 503, None),
            (
                ServiceError::RemoteUnavailable {
                    reason: "http://a: down".into(),
                },
                503,
                None,
            ),
            (ServiceError::Generation("boom".into()), 500, None),
        ];
        for (err, status, param) in cases {
            let api = ApiError::from(err);
            assert_eq!(api.status.as_u16(), status, "{api:?}");
            assert_eq!(api.param.as_deref(), param, "{api:?}");
        }
    }

    #[test]
    fn body_has_openai_shape() {
        let body = ApiError::invalid("messages[0].role", "bad role")
            .with_code("x")
            .body();
        assert_eq!(
            body,
            json!({"error": {"message": "bad role", "type": "invalid_request_error",
                             "param": "messages[0].role", "code": "x"}})
        );
    }

    #[test]
    fn busy_response_says_when_to_retry() {
        let response = ApiError::from(ServiceError::QueueFull { capacity: 2 }).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
    }
}
