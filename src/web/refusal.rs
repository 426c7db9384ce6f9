//! How the checks that run before any handler (the API key, the `Host`, cross-site writes)
//! say no, in the form the asker reads: the API's JSON error shape on API routes, plain text
//! for the page's HTMX requests (`chat.js` shows it as is), and a small HTML page for a
//! browser that navigated to a page route. Apart from the checks so each reads as its rule.

use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{Html, IntoResponse, Response};
use minijinja::context;

use super::assets::CONTENT_SECURITY_POLICY;
use super::error::ApiError;

/// Whether `path` belongs to the chat page (HTML, forms) rather than to an API (JSON).
pub fn is_page_path(path: &str) -> bool {
    path == "/"
        || path == "/login"
        || path == "/logout"
        || path.starts_with("/c/")
        || path.starts_with("/chat/")
        || path.starts_with("/static/")
}

/// Whether the request came from the page's HTMX, which shows a refusal's text as is.
pub fn is_htmx(headers: &HeaderMap) -> bool {
    headers.contains_key("hx-request")
}

/// `error` as the asker of `path` reads it.
pub fn refuse(headers: &HeaderMap, path: &str, error: ApiError) -> Response {
    if !is_page_path(path) {
        return error.into_response();
    }
    if is_htmx(headers) {
        return (error.status, error.message).into_response();
    }
    let html = super::page::render_template(
        "refused.html",
        context! { title => error.status.canonical_reason(), message => error.message },
    )
    .unwrap_or_else(|err| {
        tracing::error!("refusal page failed: {err:#}");
        "request refused".into()
    });
    let mut response = (error.status, Html(html)).into_response();
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    #[tokio::test]
    async fn each_asker_gets_its_form() {
        let error = ApiError {
            status: StatusCode::FORBIDDEN,
            ..ApiError::bad_request("no <b>thanks</b>")
        };
        let api = refuse(&HeaderMap::new(), "/v1/models", error.clone());
        assert!(api.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("application/json"));

        let mut htmx = HeaderMap::new();
        htmx.insert("hx-request", HeaderValue::from_static("true"));
        let text = refuse(&htmx, "/chat/send", error.clone());
        assert!(text.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/plain"));

        let page = refuse(&HeaderMap::new(), "/", error);
        assert_eq!(page.status(), StatusCode::FORBIDDEN);
        let body = axum::body::to_bytes(page.into_body(), usize::MAX)
            .await
            .unwrap();
        let body = String::from_utf8_lossy(&body);
        assert!(
            body.contains("no &lt;b&gt;thanks") && !body.contains("<b>"),
            "{body}"
        );
    }
}
