//! Our JSON body extractor: axum's own answers a bad body with plain text, but an OpenAI
//! client expects `{"error": …}`, and a user wants to know which field was wrong. Bodies
//! are parsed whatever their `Content-Type` (curl users forget it), and a type error names
//! the field by its path (`messages[0].content`).

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use serde::de::DeserializeOwned;

use super::error::{ApiError, ErrorKind};

/// A JSON request body of type `T`, or an OpenAI-shaped 400.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
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
