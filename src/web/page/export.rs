//! `GET /c/{id}/export`: a conversation as a Markdown or JSON download (the `/export`
//! command links to it).

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::{load, PageError, PageState};
use crate::services::sessions::to_markdown;

#[derive(Debug, Deserialize)]
pub(super) struct ExportQuery {
    format: Option<String>,
}

pub(super) async fn export(
    State(state): State<PageState>,
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
    let messages = state.store().messages(id.as_str().to_owned()).await?;
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
