//! Our JSON body extractor: axum's own answers a bad body with plain text, but an OpenAI
//! client expects `{"error": …}`, and a user wants to know which field was wrong. A type
//! error names the field by its path (`messages[0].content`).
//!
//! A body is read only when it says it is JSON (`Content-Type: application/json`, or any
//! `…/…+json`): a web page on another site may send `text/plain` or a form to this server
//! without asking first (no CORS preflight), but not `application/json`, so the rule keeps
//! other sites' pages from creating, importing or sending here. Anything else is 415.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderMap, StatusCode};
use serde::de::DeserializeOwned;

use super::error::{ApiError, ErrorKind};

/// The JSON Lines types the import also takes, besides JSON's own.
pub const JSON_LINES: &[&str] = &[
    "application/jsonl",
    "application/x-ndjson",
    "application/jsonlines",
    "application/x-jsonlines",
];

/// Refuses a body whose `Content-Type` is not JSON (or one of `also`) with 415 naming the
/// type sent and the one expected.
pub fn require_json(headers: &HeaderMap, also: &[&str]) -> Result<(), ApiError> {
    let given = headers
        .get(header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let essence = given
        .as_deref()
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase());
    let json = essence.as_deref().is_some_and(|essence| {
        essence == "application/json"
            || (essence.contains('/') && essence.ends_with("+json"))
            || also.contains(&essence)
    });
    if json {
        return Ok(());
    }
    let sent = match given {
        Some(given) => format!("this request says `Content-Type: {given}`"),
        None => "this request has no Content-Type".into(),
    };
    Err(ApiError {
        status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
        kind: ErrorKind::InvalidRequest,
        message: format!(
            "the body must be JSON sent with `Content-Type: application/json`; {sent}"
        ),
        param: None,
        code: Some("unsupported_media_type"),
    })
}

/// A JSON request body of type `T`, or an OpenAI-shaped 400.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        require_json(req.headers(), &[])?;
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|rejection| ApiError {
                status: rejection.status(),
                kind: ErrorKind::InvalidRequest,
                message: format!("cannot read the request body: {}", rejection.body_text()),
                param: None,
                code: None,
            })?;
        parse_body(&bytes).map(ApiJson)
    }
}

/// Parses `bytes` as `T`, naming the field at fault on error.
pub fn parse_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        if inner.is_data() && path != "." {
            ApiError::invalid(path.clone(), format!("`{path}`: {inner}"))
        } else if inner.is_data() {
            ApiError::bad_request(format!("the request body is not valid: {inner}"))
        } else {
            ApiError::bad_request(format!("the request body is not valid JSON: {inner}"))
        }
    })?;
    deserializer.end().map_err(|err| {
        ApiError::bad_request(format!("the request body is not valid JSON: {err}"))
    })?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    struct Body {
        #[allow(dead_code)]
        items: Vec<Item>,
    }

    #[derive(Debug, Deserialize)]
    struct Item {
        #[allow(dead_code)]
        n: u32,
    }

    #[test]
    fn only_json_content_types_are_read() {
        let with = |value: Option<&'static str>, also: &[&str]| {
            let mut headers = HeaderMap::new();
            if let Some(value) = value {
                headers.insert(header::CONTENT_TYPE, value.parse().unwrap());
            }
            require_json(&headers, also)
        };
        for ok in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/vnd.api+json",
        ] {
            assert!(with(Some(ok), &[]).is_ok(), "{ok}");
        }
        assert!(with(Some("application/x-ndjson"), JSON_LINES).is_ok());
        for refused in [
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
            Some("multipart/form-data; boundary=x"),
            Some("application/x-ndjson"),
            Some("json"),
            None,
        ] {
            let err = with(refused, &[]).unwrap_err();
            assert_eq!(
                err.status,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "{refused:?}"
            );
            assert!(err.message.contains("application/json"), "{}", err.message);
        }
        let err = with(Some("text/plain"), &[]).unwrap_err();
        assert!(err.message.contains("says `Content-Type: text/plain`"));
    }

    #[test]
    fn errors_name_the_field_or_say_the_json_is_malformed() {
        let cases: [(&str, &str, &str); 4] = [
            (
                r#"{"items": [{"n": 1}, {"n": "x"}]}"#,
                "items[1].n",
                "invalid type",
            ),
            (r#"{"items": [{"n": 1}"#, "", "not valid JSON"),
            (r#"{}"#, "", "missing field `items`"),
            (r#"{"items": []} trailing"#, "", "not valid JSON"),
        ];
        for (body, param, message) in cases {
            let err = parse_body::<Body>(body.as_bytes()).unwrap_err();
            let param = (!param.is_empty()).then(|| param.to_string());
            assert_eq!(err.param, param, "{body}");
            assert!(err.message.contains(message), "{body}: {}", err.message);
            assert_eq!(err.status.as_u16(), 400);
        }
    }
}
