//! The API key and what it guards: with `--api-key` set, every route but `/health`, the
//! login page and the page's static files needs either `Authorization: Bearer KEY` (the APIs'
//! clients) or the session cookie that logging in on the page gives (browsers). Without a
//! key, nothing here applies.
//!
//! Keys and session tokens are compared as SHA-256 digests in constant time, so neither the
//! time an answer takes nor the key's length tells a guesser anything. A client that gives a
//! wrong key [`MAX_FAILED_KEYS`] times within [`FAILED_KEY_WINDOW`] (a `Bearer` key or the
//! login form) gets 429 with `Retry-After` for any key it gives until the window has moved
//! on, so guessing costs a minute per few tries. Sessions live in memory: a restart asks the
//! page for the key again.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::refusal::{is_htmx, is_page_path, refuse};
use super::state::AppState;

/// The cookie the page's login sets.
pub const SESSION_COOKIE: &str = "smolbot_session";

/// How long a login lasts: a month of daily use without typing the key again.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(30 * 24 * 60 * 60);

/// Most logins kept at once; beyond it the one closest to expiry goes. Only someone who has
/// the key can log in, so this bounds memory against a runaway script, not an attacker.
const MAX_SESSIONS: usize = 1024;

/// Wrong keys one client may give within [`FAILED_KEY_WINDOW`] before it has to wait.
pub const MAX_FAILED_KEYS: usize = 5;

/// The window wrong keys are counted over.
pub const FAILED_KEY_WINDOW: Duration = Duration::from_secs(60);

/// Most clients whose wrong keys are remembered at once; beyond it the one that failed
/// longest ago is forgotten, so a flood of addresses cannot grow the map without bound.
const MAX_TRACKED_CLIENTS: usize = 4096;

/// A SHA-256 digest: what keys and tokens are kept and compared as.
type Digest32 = [u8; 32];

fn digest(text: &str) -> Digest32 {
    let mut out = [0u8; 32];
    out.copy_from_slice(&Sha256::digest(text.as_bytes()));
    out
}

/// The server's API key, kept only as its digest.
#[derive(Clone)]
pub struct ApiKey(Digest32);

impl ApiKey {
    pub fn new(key: &str) -> Self {
        Self(digest(key))
    }

    /// Whether `given` is the key; the same work whatever `given` is.
    pub fn matches(&self, given: &str) -> bool {
        digest(given).ct_eq(&self.0).into()
    }
}

/// The page's logins: a digest of each session token and when it expires.
#[derive(Clone, Default)]
pub struct LoginSessions(Arc<Mutex<HashMap<Digest32, Instant>>>);

impl LoginSessions {
    /// A new session; the token goes into the cookie and nowhere else.
    pub fn start(&self) -> String {
        let token: String = rand::random::<[u8; 32]>()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let now = Instant::now();
        let mut sessions = self.lock();
        sessions.retain(|_, expires| *expires > now);
        if sessions.len() >= MAX_SESSIONS {
            if let Some(oldest) = sessions.iter().min_by_key(|(_, e)| **e).map(|(k, _)| *k) {
                sessions.remove(&oldest);
            }
        }
        sessions.insert(digest(&token), now + SESSION_LIFETIME);
        token
    }

    /// Ends the session of `token`, if it is one.
    pub fn end(&self, token: &str) {
        self.lock().remove(&digest(token));
    }

    /// Whether `token` is a live session. The map is looked up by digest, so the lookup's
    /// timing depends on the digest, which a guesser cannot steer towards a real token.
    pub fn is_valid(&self, token: &str) -> bool {
        self.lock()
            .get(&digest(token))
            .is_some_and(|expires| *expires > Instant::now())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Digest32, Instant>> {
        // A panic while holding the lock cannot leave the map half-changed.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The wrong keys each client gave lately, by its address (`None`: a request that came
/// without one, as in tests that call the router directly).
#[derive(Clone, Default)]
pub struct KeyAttempts(Arc<Mutex<HashMap<Option<IpAddr>, VecDeque<Instant>>>>);

impl KeyAttempts {
    /// How long `client` must wait before a key it gives is looked at; `None` when it may
    /// try now.
    pub fn wait(&self, client: Option<IpAddr>) -> Option<Duration> {
        let now = Instant::now();
        let mut clients = self.lock();
        let failures = clients.get_mut(&client)?;
        while failures
            .front()
            .is_some_and(|at| now.duration_since(*at) >= FAILED_KEY_WINDOW)
        {
            failures.pop_front();
        }
        if failures.len() < MAX_FAILED_KEYS {
            if failures.is_empty() {
                clients.remove(&client);
            }
            return None;
        }
        let oldest = *failures.front()?;
        Some(FAILED_KEY_WINDOW.saturating_sub(now.duration_since(oldest)))
    }

    /// Counts a wrong key from `client`.
    pub fn failed(&self, client: Option<IpAddr>) {
        let now = Instant::now();
        let mut clients = self.lock();
        if !clients.contains_key(&client) && clients.len() >= MAX_TRACKED_CLIENTS {
            let stalest = clients
                .iter()
                .min_by_key(|(_, failures)| failures.back().copied())
                .map(|(client, _)| *client);
            if let Some(stalest) = stalest {
                clients.remove(&stalest);
            }
        }
        let failures = clients.entry(client).or_default();
        failures.push_back(now);
        // Only the newest few decide the wait.
        while failures.len() > MAX_FAILED_KEYS {
            failures.pop_front();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Option<IpAddr>, VecDeque<Instant>>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The address of the client that sent `request`, where the server recorded it.
pub fn client_ip(request: &Request) -> Option<IpAddr> {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip())
}

/// The refusal of a client that gave too many wrong keys, with `Retry-After` in whole
/// seconds (at least 1).
pub fn too_many_attempts(headers: &HeaderMap, path: &str, wait: Duration) -> Response {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let seconds = seconds.max(1);
    let mut response = refuse(
        headers,
        path,
        ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: format!("too many wrong API keys from this address; try again in {seconds} s"),
            code: Some("too_many_key_attempts"),
            ..ApiError::unauthorized()
        },
    );
    if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

/// Routes anyone may reach: the health check, the login page, logging out, and the page's
/// static files (the vendored scripts and stylesheet the login page itself needs; they hold
/// no data).
fn is_public(path: &str) -> bool {
    path == "/health" || path == "/login" || path == "/logout" || path.starts_with("/static/")
}

/// The token of the request's session cookie, if it has one.
pub fn session_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, token)| token)
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// Lets a request through when no key is set, when its route is public, or when it carries
/// the key or a live session. Otherwise an API client gets 401 in the API's error shape, a
/// browser opening a page is sent to the login page, and the page's own requests get 401 with
/// `HX-Redirect` there (a session that ended while the page was open). A client that gave
/// too many wrong keys lately gets 429 for any key it gives (see [`KeyAttempts`]).
pub async fn require_key(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(key) = state.api_key() else {
        return next.run(request).await;
    };
    let path = request.uri().path();
    let headers = request.headers();
    if is_public(path) || session_token(headers).is_some_and(|token| state.logins().is_valid(token))
    {
        return next.run(request).await;
    }
    if let Some(given) = bearer(headers) {
        let client = client_ip(&request);
        if let Some(wait) = state.key_attempts().wait(client) {
            return too_many_attempts(headers, path, wait);
        }
        if key.matches(given) {
            return next.run(request).await;
        }
        state.key_attempts().failed(client);
    }
    if !is_page_path(path) {
        return ApiError::unauthorized().into_response();
    }
    let login = login_url(
        request
            .uri()
            .path_and_query()
            .map_or(path, |pq| pq.as_str()),
    );
    if is_htmx(request.headers()) {
        let mut response = refuse(
            request.headers(),
            path,
            ApiError {
                status: StatusCode::UNAUTHORIZED,
                ..ApiError::unauthorized()
            },
        );
        if let Ok(url) = HeaderValue::from_str("/login") {
            response.headers_mut().insert("hx-redirect", url);
        }
        return response;
    }
    if request.method() == Method::GET || request.method() == Method::HEAD {
        return see_other(&login);
    }
    refuse(
        request.headers(),
        path,
        ApiError {
            message: "log in first: this server needs its API key".into(),
            ..ApiError::unauthorized()
        },
    )
}

/// `/login` with `next` set to where to go after it.
fn login_url(next: &str) -> String {
    if next == "/" {
        return "/login".into();
    }
    format!("/login?next={}", percent_encode(next))
}

/// Percent-encodes everything but unreserved characters and `/`, for a query value.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A 303 to `to`.
pub fn see_other(to: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(url) = HeaderValue::from_str(to) {
        response.headers_mut().insert(header::LOCATION, url);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_matches_only_itself() {
        let key = ApiKey::new("secret");
        assert!(key.matches("secret"));
        for other in ["secreT", "secret2", "", "secre"] {
            assert!(!key.matches(other), "{other}");
        }
    }

    #[test]
    fn sessions_are_random_and_checked() {
        let sessions = LoginSessions::default();
        let (a, b) = (sessions.start(), sessions.start());
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert!(sessions.is_valid(&a) && sessions.is_valid(&b));
        assert!(!sessions.is_valid("0".repeat(64).as_str()));
        assert!(!sessions.is_valid(""));
    }

    #[test]
    fn sessions_are_bounded() {
        let sessions = LoginSessions::default();
        let first = sessions.start();
        for _ in 0..MAX_SESSIONS {
            sessions.start();
        }
        assert_eq!(sessions.lock().len(), MAX_SESSIONS);
        assert!(!sessions.is_valid(&first), "the oldest login went first");
    }

    #[test]
    fn finds_the_session_cookie_among_others() {
        let mut headers = HeaderMap::new();
        headers.append(header::COOKIE, HeaderValue::from_static("theme=dark"));
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; smolbot_session=abc; b=2"),
        );
        assert_eq!(session_token(&headers), Some("abc"));
        assert_eq!(session_token(&HeaderMap::new()), None);
    }

    #[test]
    fn login_keeps_where_to_go_back() {
        assert_eq!(login_url("/"), "/login");
        assert_eq!(login_url("/c/abc?x=1&y"), "/login?next=/c/abc%3Fx%3D1%26y");
    }
}
