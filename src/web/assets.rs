//! The page's static files, compiled into the binary so `smolbot` stays one file with nothing
//! to install beside it, and the security headers every page response carries.
//!
//! Vendored from the npm registry (`npm pack`), unmodified:
//! - `static/htmx.min.js`: htmx.org 2.0.11 (`dist/htmx.min.js`)
//! - `static/sse.min.js`: htmx-ext-sse 2.2.4 (`dist/sse.min.js`)
//! - `static/katex/`: KaTeX 0.19.1 (MIT, `LICENSE` beside it): `dist/katex.min.js`, the
//!   `dist/fonts/*.woff2` fonts, and `dist/katex.min.css` with one change: each font's
//!   `.woff` and `.ttf` fallbacks are dropped from its `src`, as only the woff2 files are
//!   served (every browser that runs the page reads woff2). `chat.js` loads KaTeX on the
//!   first formula, so pages without math do not fetch it.
//!
//! `chat.js`, `theme.js` and `chat.css` are ours. `theme.js` is tiny and loaded without
//! `defer`, so a theme chosen earlier applies before the first paint (no flash of the other).

use axum::extract::{Path, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// Scripts and styles only from this server, no inline script, no `eval`, no plugins, no
/// framing: a string that slips past the sanitiser still cannot run.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; font-src 'self'; \
     base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

const JAVASCRIPT: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const WOFF2: &str = "font/woff2";

/// KaTeX's fonts by file name, as `katex.min.css` asks for them (`fonts/NAME.woff2`).
macro_rules! katex_fonts {
    ($($name:literal),* $(,)?) => {
        &[$(
            (
                concat!($name, ".woff2"),
                include_bytes!(concat!("static/katex/fonts/", $name, ".woff2")),
            ),
        )*]
    };
}

static KATEX_FONTS: &[(&str, &[u8])] = katex_fonts![
    "KaTeX_AMS-Regular",
    "KaTeX_Caligraphic-Bold",
    "KaTeX_Caligraphic-Regular",
    "KaTeX_Fraktur-Bold",
    "KaTeX_Fraktur-Regular",
    "KaTeX_Main-Bold",
    "KaTeX_Main-BoldItalic",
    "KaTeX_Main-Italic",
    "KaTeX_Main-Regular",
    "KaTeX_Math-BoldItalic",
    "KaTeX_Math-Italic",
    "KaTeX_SansSerif-Bold",
    "KaTeX_SansSerif-Italic",
    "KaTeX_SansSerif-Regular",
    "KaTeX_Script-Regular",
    "KaTeX_Size1-Regular",
    "KaTeX_Size2-Regular",
    "KaTeX_Size3-Regular",
    "KaTeX_Size4-Regular",
    "KaTeX_Typewriter-Regular",
];

/// The static routes under `/static/`.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            "/static/htmx.min.js",
            get(|| asset(JAVASCRIPT, include_str!("static/htmx.min.js"))),
        )
        .route(
            "/static/sse.min.js",
            get(|| asset(JAVASCRIPT, include_str!("static/sse.min.js"))),
        )
        .route(
            "/static/chat.js",
            get(|| asset(JAVASCRIPT, include_str!("static/chat.js"))),
        )
        .route(
            "/static/theme.js",
            get(|| asset(JAVASCRIPT, include_str!("static/theme.js"))),
        )
        .route(
            "/static/chat.css",
            get(|| asset(CSS, include_str!("static/chat.css"))),
        )
        .route(
            "/static/katex/katex.min.js",
            get(|| asset(JAVASCRIPT, include_str!("static/katex/katex.min.js"))),
        )
        .route(
            "/static/katex/katex.min.css",
            get(|| asset(CSS, include_str!("static/katex/katex.min.css"))),
        )
        .route("/static/katex/fonts/{file}", get(katex_font))
}

async fn katex_font(Path(file): Path<String>) -> Response {
    match KATEX_FONTS.iter().find(|(name, _)| *name == file) {
        Some((_, bytes)) => asset(WOFF2, *bytes).await,
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn asset(content_type: &'static str, body: impl IntoResponse) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // The files change only with the binary; revalidating keeps an upgrade visible.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// Adds the Content-Security-Policy and related headers to a page response.
pub async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}
