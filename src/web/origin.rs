//! The guard against cross-site writes: a web page anywhere can make the victim's browser
//! `POST` to this server (a form, or `fetch` with `mode: "no-cors"`), and without a key the
//! server cannot tell that request from its own page's. Browsers say where a request comes
//! from, so every state-changing request (any method but `GET`, `HEAD` and `OPTIONS`) whose
//! browser says it came from another site is refused with 403, page forms included:
//!
//! - `Sec-Fetch-Site` (every current browser): only `same-origin` and `none` (typed by the
//!   user) pass; `same-site` fails too, since another port on `localhost` is the same site;
//! - else `Origin`: it must name this server (the `Host`, or the `X-Forwarded-Host` a proxy
//!   sets); `Origin: null` (a sandboxed frame, a redirect chain) fails.
//!
//! A request with neither header (curl, the `openai` client, scripts) comes from no browser
//! and passes: it could send any header it liked anyway.

use axum::extract::Request;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;

use super::error::{ApiError, ErrorKind};
use super::refusal::refuse;

/// Why a request was taken for another site's.
#[derive(Debug, PartialEq)]
enum CrossSite {
    /// `Sec-Fetch-Site` said so.
    FetchSite(String),
    /// `Origin` names another server than this one.
    Origin(String),
}

/// Whether `method` can change something, so that a cross-site request must not run it.
fn changes_state(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

fn text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// `Some` when a browser says the request came from another site.
fn cross_site(headers: &HeaderMap) -> Option<CrossSite> {
    if let Some(site) = text(headers, "sec-fetch-site") {
        let site = site.to_ascii_lowercase();
        return (site != "same-origin" && site != "none").then_some(CrossSite::FetchSite(site));
    }
    let origin = text(headers, header::ORIGIN.as_str())?;
    let ours = [
        text(headers, header::HOST.as_str()),
        text(headers, "x-forwarded-host").and_then(|v| v.split(',').next()),
    ];
    let same = ours
        .into_iter()
        .flatten()
        .any(|host| origin_names_host(origin, host));
    (!same).then(|| CrossSite::Origin(origin.to_owned()))
}

/// Whether `origin` (`scheme://host[:port]`) names `host` (`host[:port]`), a default port
/// written or not.
fn origin_names_host(origin: &str, host: &str) -> bool {
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "http" => ":80",
        "https" => ":443",
        _ => return false,
    };
    let bare = |text: &str| {
        let text = text.trim().to_ascii_lowercase();
        text.strip_suffix(default_port)
            .map(str::to_owned)
            .unwrap_or(text)
    };
    bare(authority) == bare(host)
}

/// Refuses a state-changing request that a browser says came from another site.
pub async fn same_site_writes(request: Request, next: Next) -> Response {
    if !changes_state(request.method()) {
        return next.run(request).await;
    }
    let Some(why) = cross_site(request.headers()) else {
        return next.run(request).await;
    };
    let because = match why {
        CrossSite::FetchSite(site) => format!("the browser says it is {site} (Sec-Fetch-Site)"),
        CrossSite::Origin(origin) => format!("it comes from {origin} (Origin)"),
    };
    let error = ApiError {
        status: StatusCode::FORBIDDEN,
        kind: ErrorKind::InvalidRequest,
        message: format!(
            "cross-site request refused: {because}; this server takes changes only from its \
             own pages and from clients that are not browsers"
        ),
        param: None,
        code: Some("cross_site_request"),
    };
    refuse(request.headers(), request.uri().path(), error)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.insert(*name, value.parse().unwrap());
        }
        headers
    }

    #[test]
    fn browsers_saying_another_site_are_refused() {
        let host = ("host", "127.0.0.1:3000");
        let refused = [
            vec![("sec-fetch-site", "cross-site")],
            vec![("sec-fetch-site", "same-site")],
            vec![
                ("sec-fetch-site", "cross-site"),
                ("origin", "http://127.0.0.1:3000"),
            ],
            vec![host, ("origin", "https://evil.example")],
            vec![host, ("origin", "http://127.0.0.1:8080")],
            vec![host, ("origin", "null")],
            vec![("origin", "http://evil.example")],
        ];
        for case in refused {
            assert!(cross_site(&headers(&case)).is_some(), "{case:?}");
        }
        let passed = [
            vec![],
            vec![host],
            vec![("sec-fetch-site", "same-origin")],
            vec![("sec-fetch-site", "none")],
            vec![host, ("origin", "http://127.0.0.1:3000")],
            vec![
                ("host", "chat.example"),
                ("origin", "https://chat.example:443"),
            ],
            vec![
                ("host", "Chat.Example:80"),
                ("origin", "http://chat.example"),
            ],
            vec![
                host,
                ("x-forwarded-host", "chat.example"),
                ("origin", "https://chat.example"),
            ],
        ];
        for case in passed {
            assert_eq!(cross_site(&headers(&case)), None, "{case:?}");
        }
    }

    #[test]
    fn only_writes_are_checked() {
        assert!(!changes_state(&Method::GET) && !changes_state(&Method::HEAD));
        assert!(changes_state(&Method::POST) && changes_state(&Method::DELETE));
        assert!(changes_state(&Method::PATCH) && changes_state(&Method::PUT));
    }
}
