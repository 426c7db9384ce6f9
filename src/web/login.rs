//! The page's login, for a server started with `--api-key`: `GET /login` asks for the key
//! once, `POST /login` checks it and answers with the session cookie and a redirect back to
//! the page the browser first asked for; `POST /logout` ends the session and clears the
//! cookie. Wrong keys count towards the client's limit (see [`super::auth::KeyAttempts`]).
//!
//! The cookie is `HttpOnly` (no script reads it) and `SameSite=Strict` (no other site's page
//! sends it), and `Secure` when the request came over HTTPS, which a TLS proxy in front says
//! with `X-Forwarded-Proto: https` (or `Forwarded: proto=https`): over plain HTTP a browser
//! would refuse to store a `Secure` cookie from anywhere but `localhost`, and the login would
//! never hold.

use std::net::SocketAddr;

use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{middleware, Extension, Form, Router};
use minijinja::context;
use serde::Deserialize;

use super::assets;
use super::auth::{see_other, session_token, too_many_attempts, SESSION_COOKIE, SESSION_LIFETIME};
use super::error::ApiError;
use super::page::render_template;
use super::refusal::refuse;
use super::state::AppState;

/// The login routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
        .layer(middleware::from_fn(assets::security_headers))
}

#[derive(Debug, Default, Deserialize)]
struct Next {
    #[serde(default)]
    next: String,
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    key: String,
    #[serde(default)]
    next: String,
}

/// `next` if it is a path on this server, else `/`: the login must not send a browser to
/// another site (`//evil.example` is a URL of another host).
fn local_path(next: &str) -> &str {
    let local = next.starts_with('/') && !next.starts_with("//") && !next.starts_with("/\\");
    if local {
        next
    } else {
        "/"
    }
}

async fn login_form(
    State(state): State<AppState>,
    query: Result<Query<Next>, QueryRejection>,
) -> Response {
    let next = query.map(|Query(q)| q).unwrap_or_default().next;
    if state.api_key().is_none() {
        return see_other(local_path(&next));
    }
    form_page(StatusCode::OK, local_path(&next), false)
}

async fn login(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, FormRejection>,
) -> Response {
    let Some(key) = state.api_key() else {
        return see_other("/");
    };
    let client = peer.map(|Extension(ConnectInfo(addr))| addr.ip());
    if let Some(wait) = state.key_attempts().wait(client) {
        return too_many_attempts(&headers, "/login", wait);
    }
    let form = match form {
        Ok(Form(form)) => form,
        Err(err) => {
            let error =
                ApiError::bad_request(format!("the form is incomplete: {}", err.body_text()));
            return refuse(&headers, "/login", error);
        }
    };
    let next = local_path(&form.next);
    if !key.matches(&form.key) {
        state.key_attempts().failed(client);
        return form_page(StatusCode::UNAUTHORIZED, next, true);
    }
    let token = state.logins().start();
    let mut response = see_other(next);
    let cookie = session_cookie(&token, over_https(&headers));
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// `POST /logout`: ends the request's session, if it has one, clears the cookie and sends
/// the browser to the login page (or to the page, on a server without a key).
async fn logout(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(token) = session_token(&headers) {
        state.logins().end(token);
    }
    let mut response = see_other(if state.api_key().is_some() {
        "/login"
    } else {
        "/"
    });
    let cookie = format!(
        "{SESSION_COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict{}",
        if over_https(&headers) { "; Secure" } else { "" }
    );
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

fn form_page(status: StatusCode, next: &str, wrong: bool) -> Response {
    match render_template("login.html", context! { next => next, wrong => wrong }) {
        Ok(html) => (status, Html(html)).into_response(),
        Err(err) => {
            tracing::error!("login page failed: {err:#}");
            (StatusCode::INTERNAL_SERVER_ERROR, "the login page failed").into_response()
        }
    }
}

/// The `Set-Cookie` value of a new session.
fn session_cookie(token: &str, secure: bool) -> String {
    format!(
        "{SESSION_COOKIE}={token}; Path=/; Max-Age={}; HttpOnly; SameSite=Strict{}",
        SESSION_LIFETIME.as_secs(),
        if secure { "; Secure" } else { "" }
    )
}

/// Whether a proxy in front says the browser reached it over HTTPS. Trusting the header is
/// safe here: a client that lies only makes its own cookie `Secure`.
fn over_https(headers: &HeaderMap) -> bool {
    let text = |name| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_ascii_lowercase)
            .collect::<Vec<_>>()
    };
    text("x-forwarded-proto")
        .iter()
        .any(|v| v.split(',').next().map(str::trim) == Some("https"))
        || text("forwarded").iter().any(|v| {
            v.split([';', ','])
                .any(|pair| pair.trim().replace(' ', "") == "proto=https")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_paths_are_followed() {
        assert_eq!(local_path("/c/abc"), "/c/abc");
        for other in [
            "",
            "https://evil.example",
            "//evil.example",
            "/\\evil",
            "c/abc",
        ] {
            assert_eq!(local_path(other), "/", "{other}");
        }
    }

    #[test]
    fn cookie_flags() {
        let plain = session_cookie("t", false);
        assert!(plain.contains("HttpOnly") && plain.contains("SameSite=Strict"));
        assert!(!plain.contains("Secure"));
        assert!(session_cookie("t", true).ends_with("; Secure"));
    }

    #[test]
    fn https_as_a_proxy_says_it() {
        let with = |name: &'static str, value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(name, HeaderValue::from_static(value));
            over_https(&headers)
        };
        assert!(with("x-forwarded-proto", "https"));
        assert!(with("x-forwarded-proto", "HTTPS, http"));
        assert!(with("forwarded", "for=1.2.3.4;proto=https;host=a"));
        assert!(!with("x-forwarded-proto", "http"));
        assert!(!with("forwarded", "for=1.2.3.4"));
        assert!(!over_https(&HeaderMap::new()));
    }
}
