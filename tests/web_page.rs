//! The chat page driven through the router with `oneshot`: the page and its security headers,
//! the static files, sending a message and reading its SSE stream of HTML fragments, stop,
//! tool-call cards, the error paths, and that model or user text cannot inject markup.

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use smolbot::services::stub::{StubConfig, STUB_CONTEXT_LENGTH};
use smolbot::services::{BackendSpec, Engine};
use smolbot::web::{app, AppState};
use tower::ServiceExt;

async fn stub_app() -> Router {
    let engine = Engine::start(
        BackendSpec::Stub(StubConfig {
            tokens_per_second: 0.0,
            context_length: STUB_CONTEXT_LENGTH,
        }),
        4,
    )
    .await
    .expect("stub engine starts");
    app(AppState::new(engine, None))
}

struct Reply {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    text: String,
}

impl Reply {
    fn header(&self, name: header::HeaderName) -> &str {
        self.headers
            .get(&name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("no {name} header"))
    }
}

async fn call(app: &Router, request: Request<Body>) -> Reply {
    let response = app.clone().oneshot(request).await.expect("infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    Reply {
        status,
        headers,
        text: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

async fn get(app: &Router, uri: &str) -> Reply {
    call(app, Request::get(uri).body(Body::empty()).expect("request")).await
}

fn form_request(uri: &str, body: &str, from_page: bool) -> Request<Body> {
    let mut request =
        Request::post(uri).header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    if from_page {
        request = request.header("HX-Request", "true");
    }
    request.body(Body::from(body.to_owned())).expect("request")
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            b' ' => "+".to_owned(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

async fn send_message(app: &Router, conversation: &str, message: &str, extra: &str) -> Reply {
    let body = format!(
        "conversation={conversation}&message={}{extra}",
        encode(message)
    );
    call(app, form_request("/chat/send", &body, true)).await
}

/// The stream URL in an exchange fragment.
fn stream_url(fragment: &str) -> String {
    let start = fragment.find("sse-connect=\"").expect("sse-connect") + "sse-connect=\"".len();
    let end = fragment[start..].find('"').expect("closing quote");
    fragment[start..start + end].to_owned()
}

/// `(event, data)` pairs of an SSE body.
fn sse_events(body: &str) -> Vec<(String, String)> {
    body.split("\n\n")
        .filter_map(|block| {
            let mut event = None;
            let mut data = Vec::new();
            for line in block.lines() {
                if let Some(name) = line.strip_prefix("event: ") {
                    event = Some(name.to_owned());
                } else if let Some(text) = line.strip_prefix("data: ") {
                    data.push(text);
                } else if line == "data:" {
                    data.push("");
                }
            }
            event.map(|e| (e, data.join("\n")))
        })
        .collect()
}

#[tokio::test]
async fn page_renders_with_a_strict_csp_and_no_inline_script() {
    let app = stub_app().await;
    let page = get(&app, "/").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.header(header::CONTENT_TYPE).starts_with("text/html"));
    let csp = page.header(header::CONTENT_SECURITY_POLICY);
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
        "{csp}"
    );
    assert_eq!(page.header(header::X_CONTENT_TYPE_OPTIONS), "nosniff");
    for script in page.text.split("<script").skip(1) {
        assert!(
            script.trim_start().starts_with("src=\"/static/"),
            "{script}"
        );
    }
    assert!(page.text.contains("smolbot-stub · stub"));
    assert!(page.text.contains(r#"name="thinking" value="on" checked"#));
    assert!(page.text.contains(r#"<label for="message""#));
    assert!(page.text.contains(r#"name="conversation" value="c_"#));
}

#[tokio::test]
async fn static_files_are_served_with_their_content_type() {
    let app = stub_app().await;
    for (path, content_type, needle) in [
        ("/static/htmx.min.js", "text/javascript", "htmx"),
        (
            "/static/sse.min.js",
            "text/javascript",
            "defineExtension(\"sse\"",
        ),
        ("/static/chat.js", "text/javascript", "requestSubmit"),
        ("/static/chat.css", "text/css", "prefers-color-scheme: dark"),
    ] {
        let reply = get(&app, path).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}");
        assert!(
            reply.header(header::CONTENT_TYPE).starts_with(content_type),
            "{path}"
        );
        assert!(reply.text.contains(needle), "{path}");
    }
    assert_eq!(
        get(&app, "/static/nope.js").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn send_returns_the_exchange_and_the_stream_brings_the_answer() {
    let app = stub_app().await;
    let sent = send_message(&app, "c_one", "Hello there", "&thinking=on").await;
    assert_eq!(sent.status, StatusCode::OK, "{}", sent.text);
    assert!(sent
        .header(header::CONTENT_SECURITY_POLICY)
        .contains("'self'"));
    assert!(sent
        .text
        .contains(r#"<div class="bubble">Hello there</div>"#));
    assert!(sent.text.contains("Thinking…"));
    let url = stream_url(&sent.text);
    assert!(url.starts_with("/chat/stream/a_"), "{url}");

    let streamed = get(&app, &url).await;
    assert_eq!(streamed.status, StatusCode::OK);
    assert!(streamed
        .header(header::CONTENT_TYPE)
        .starts_with("text/event-stream"));
    let events = sse_events(&streamed.text);
    let names: Vec<&str> = events.iter().map(|(e, _)| e.as_str()).collect();
    let first = |name: &str| names.iter().position(|n| *n == name);
    let (reasoning, thinking, answer, done) = (
        first("reasoning").expect("reasoning"),
        first("thinking").expect("thinking block closes"),
        first("answer").expect("answer"),
        first("done").expect("done"),
    );
    assert!(
        reasoning < thinking && thinking < answer && answer < done,
        "{names:?}"
    );
    assert_eq!(names.last(), Some(&"done"));
    let closed = &events[thinking].1;
    assert!(
        closed.starts_with("<details class=\"thinking\">"),
        "{closed}"
    );
    assert!(!closed.contains(" open"), "{closed}");
    let (_, last_answer) = events
        .iter()
        .rev()
        .find(|(e, _)| e == "answer")
        .expect("answer");
    assert!(last_answer.contains("<table>"), "{last_answer}");
    assert!(last_answer.contains("class=\"copy\""), "{last_answer}");
    let stats = &events[done].1;
    // MiniJinja escapes `/` as `&#x2f;`.
    assert!(
        stats.contains("tokens&#x2f;s") && stats.contains("first token"),
        "{stats}"
    );

    // The answer is over: the stream is gone, and the conversation takes the next message.
    assert_eq!(get(&app, &url).await.status, StatusCode::NOT_FOUND);
    let again = send_message(&app, "c_one", "And again", "").await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text);
    assert!(!again.text.contains("Thinking…"), "thinking off: no block");
    let second = get(&app, &stream_url(&again.text)).await;
    assert!(!second.text.contains("event: reasoning"));
    assert!(second.text.contains("And again"));
}

#[tokio::test]
async fn user_and_model_markup_is_inert() {
    let app = stub_app().await;
    let payload = "<img src=x onerror=alert(1)> <script>alert(2)</script>";
    let sent = send_message(&app, "c_xss", payload, "&thinking=on").await;
    assert_eq!(sent.status, StatusCode::OK);
    assert!(!sent.text.contains("<img"), "{}", sent.text);
    assert!(!sent.text.contains("<script"), "{}", sent.text);
    assert!(sent.text.contains("&lt;img src=x onerror=alert(1)&gt;"));
    let streamed = get(&app, &stream_url(&sent.text)).await;
    assert!(!streamed.text.contains("<img"), "{}", streamed.text);
    assert!(!streamed.text.contains("<script"), "{}", streamed.text);
}

#[tokio::test]
async fn tool_calls_arrive_as_cards() {
    let app = stub_app().await;
    let sent = send_message(
        &app,
        "c_tools",
        "What is the weather in Lyon?",
        "&thinking=on&tools=on",
    )
    .await;
    assert_eq!(sent.status, StatusCode::OK);
    let streamed = get(&app, &stream_url(&sent.text)).await;
    let events = sse_events(&streamed.text);
    let (_, card) = events
        .iter()
        .find(|(e, _)| e == "tool")
        .expect("a tool event");
    assert!(
        card.contains("tool-card") && card.contains("get_weather"),
        "{card}"
    );
    assert!(
        card.contains("&quot;location&quot;: &quot;Lyon&quot;"),
        "{card}"
    );
    assert!(!streamed.text.contains("tool_call&gt;") && !streamed.text.contains("<tool_call>"));
}

#[tokio::test]
async fn stop_cancels_an_answer_and_frees_the_conversation() {
    let app = stub_app().await;
    let sent = send_message(&app, "c_stop", "Hello", "").await;
    let url = stream_url(&sent.text);
    let id = url.trim_start_matches("/chat/stream/");
    let busy = send_message(&app, "c_stop", "Another", "").await;
    assert_eq!(busy.status, StatusCode::CONFLICT, "{}", busy.text);
    assert!(busy.text.contains("still being written"));
    let stopped = call(&app, form_request(&format!("/chat/stop/{id}"), "", true)).await;
    assert_eq!(stopped.status, StatusCode::NO_CONTENT);
    assert_eq!(get(&app, &url).await.status, StatusCode::NOT_FOUND);
    let unknown = call(&app, form_request(&format!("/chat/stop/{id}"), "", true)).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(
        send_message(&app, "c_stop", "Another", "").await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn bad_sends_are_refused_in_words() {
    let app = stub_app().await;
    let cases = [
        (
            "conversation=c_x&message=hi",
            false,
            StatusCode::FORBIDDEN,
            "HX-Request",
        ),
        (
            "conversation=c_x&message=+++",
            true,
            StatusCode::BAD_REQUEST,
            "empty",
        ),
        (
            "conversation=a%20b&message=hi",
            true,
            StatusCode::BAD_REQUEST,
            "conversation id",
        ),
        ("message=hi", true, StatusCode::BAD_REQUEST, "conversation"),
    ];
    for (body, from_page, status, words) in cases {
        let reply = call(&app, form_request("/chat/send", body, from_page)).await;
        assert_eq!(reply.status, status, "{body}: {}", reply.text);
        assert!(reply.text.contains(words), "{body}: {}", reply.text);
        assert!(reply.header(header::CONTENT_TYPE).starts_with("text/plain"));
    }
    assert_eq!(
        get(&app, "/chat/stream/a_missing").await.status,
        StatusCode::NOT_FOUND
    );
}
