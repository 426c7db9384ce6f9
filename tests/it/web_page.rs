//! The chat page driven through the router with `oneshot`: the page and its security headers,
//! the static files, sending a message and reading its SSE stream of HTML fragments, stop,
//! tool-call cards, the error paths, and that model or user text cannot inject markup; then
//! the conversations behind it: their URLs, the sidebar (list, search, rename, delete),
//! regenerate and edit, settings, slash commands, export, the context meter, and a
//! conversation surviving a new server over the same data directory.

use crate::common;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use common::http::{get, send as call, Reply};
use common::stub_engine;
use smolbot::services::SessionStore;
use smolbot::web::{app, AppState};

/// The app over an in-memory store: the page says its conversations are not kept.
async fn stub_app() -> Router {
    app(AppState::new(
        stub_engine(0.0).await,
        smolbot::services::SessionStore::in_memory().expect("in-memory store"),
        None,
    ))
}

/// The app over a store in `dir`, as `smolbot serve --data-dir dir` builds it.
async fn stored_app(dir: &std::path::Path) -> Router {
    let store = SessionStore::open(dir).await.expect("store opens");
    app(AppState::new(stub_engine(0.0).await, store, None))
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

async fn post(app: &Router, uri: &str, body: &str) -> Reply {
    call(app, form_request(uri, body, true)).await
}

/// Starts a conversation with `message`, reads the answer to its end, and returns the
/// conversation's id.
async fn conversation_with(app: &Router, message: &str, extra: &str) -> String {
    let sent = send_message(app, "", message, extra).await;
    assert_eq!(sent.status, StatusCode::OK, "{}", sent.text);
    let url = sent
        .hx("hx-push-url")
        .expect("a new conversation moves to its URL");
    let id = url.strip_prefix("/c/").expect("/c/{id}").to_owned();
    assert!(sent.text.contains(&format!(
        r#"id="conversation-id" name="conversation" value="{id}" hx-swap-oob="true""#
    )));
    let streamed = get(app, &stream_url(&sent.text)).await;
    assert!(streamed.text.contains("event: done"), "{}", streamed.text);
    id
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
    // A new chat has no conversation until its first message.
    assert!(page
        .text
        .contains(r#"id="conversation-id" name="conversation" value="""#));
    assert!(page.text.contains("0 / 65,536 tokens"), "the context meter");
    assert!(page.text.contains(r#"id="theme-toggle""#));
    assert!(page
        .text
        .contains(r#"<script src="/static/theme.js"></script>"#));
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
        (
            "/static/chat.css",
            "text/css",
            r#":root[data-theme="dark"]"#,
        ),
        ("/static/theme.js", "text/javascript", "localStorage"),
        (
            "/static/katex/katex.min.js",
            "text/javascript",
            "renderToString",
        ),
        (
            "/static/katex/katex.min.css",
            "text/css",
            "url(fonts/KaTeX_Main-Regular.woff2)",
        ),
        (
            "/static/katex/fonts/KaTeX_Main-Regular.woff2",
            "font/woff2",
            "wOF2",
        ),
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
    assert_eq!(
        get(&app, "/static/katex/fonts/KaTeX_Nope.woff2")
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    // Only the woff2 fonts are served, so the stylesheet names no other.
    let css = get(&app, "/static/katex/katex.min.css").await.text;
    assert_eq!(css.matches("url(").count(), 20, "{css}");
    assert!(!css.contains(".woff)") && !css.contains(".ttf"), "{css}");
}

#[tokio::test]
async fn send_returns_the_exchange_and_the_stream_brings_the_answer() {
    let app = stub_app().await;
    let sent = send_message(&app, "", "Hello there", "&thinking=on").await;
    assert_eq!(sent.status, StatusCode::OK, "{}", sent.text);
    let id = sent
        .hx("hx-push-url")
        .and_then(|url| url.strip_prefix("/c/"))
        .expect("the new conversation's URL")
        .to_owned();
    assert!(sent
        .header(header::CONTENT_SECURITY_POLICY)
        .contains("'self'"));
    assert!(sent
        .text
        .contains(r#"<div class="bubble">Hello there</div>"#));
    // Until the model starts the answer waits; the Thinking block opens with the reasoning.
    assert!(sent.text.contains("Waiting for the model"), "{}", sent.text);
    assert!(!sent.text.contains("Thinking…"), "{}", sent.text);
    let url = stream_url(&sent.text);
    assert!(url.starts_with("/chat/stream/run_"), "{url}");

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
    // "Copy as Markdown" carries the answer's source, escaped for its attribute.
    assert!(
        stats.contains(r#"class="copy-md" data-markdown="Here is a stub answer"#)
            && stats.contains("```rust\nfn main()"),
        "{stats}"
    );

    // The answer is over: its stream still reads the same for a while (for a browser that
    // reconnects late), and the conversation takes the next message.
    let replayed = get(&app, &url).await;
    assert_eq!(replayed.status, StatusCode::OK);
    let replay = sse_events(&replayed.text);
    let not_answer = |events: &[(String, String)]| -> Vec<(String, String)> {
        events
            .iter()
            .filter(|(e, _)| !e.starts_with("answer"))
            .cloned()
            .collect()
    };
    assert_eq!(not_answer(&replay), not_answer(&events));
    assert_eq!(
        replay
            .iter()
            .rev()
            .find(|(e, _)| e == "answer")
            .map(|(_, a)| a),
        Some(last_answer)
    );
    let again = send_message(&app, &id, "And again", "").await;
    assert_eq!(
        again.hx("hx-push-url"),
        None,
        "the conversation already has its URL"
    );
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
    let sent = send_message(&app, "", payload, "&thinking=on").await;
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
    // The built-in tools are a setting of the conversation; the composer offers none.
    let settings = post(&app, "/chat/settings", "conversation=&builtin_tools=on").await;
    assert_eq!(settings.status, StatusCode::OK, "{}", settings.text);
    let id = settings.hx("hx-push-url").expect("created")["/c/".len()..].to_owned();
    let sent = send_message(&app, &id, "What is 17 * (3+4)?", "&thinking=on").await;
    assert_eq!(sent.status, StatusCode::OK);
    let streamed = get(&app, &stream_url(&sent.text)).await;
    let events = sse_events(&streamed.text);
    let (_, card) = events
        .iter()
        .find(|(e, _)| e == "tool")
        .expect("a tool event");
    assert!(
        card.contains("tool-card") && card.contains("calculator"),
        "{card}"
    );
    assert!(card.contains("&quot;expression&quot;"), "{card}");
    assert!(!streamed.text.contains("tool_call&gt;") && !streamed.text.contains("<tool_call>"));
}

#[tokio::test]
async fn the_composer_offers_no_tools_of_its_own() {
    let app = stub_app().await;
    let page = get(&app, "/").await;
    assert!(!page.text.contains(r#"name="tools""#), "{}", page.text);
    assert!(
        page.text.contains(r#"name="builtin_tools""#),
        "one switch, in the settings"
    );
}

#[tokio::test]
async fn stop_cancels_an_answer_and_frees_the_conversation() {
    // Paced, so the answer is still being written when Stop comes: nobody reads its stream,
    // and the run writes on without a reader.
    let app = app(AppState::new(
        stub_engine(100.0).await,
        smolbot::services::SessionStore::in_memory().expect("in-memory store"),
        None,
    ));
    let sent = send_message(&app, "", "Hello", "").await;
    let conversation = sent.hx("hx-push-url").expect("url")["/c/".len()..].to_owned();
    let url = stream_url(&sent.text);
    let id = url.trim_start_matches("/chat/stream/");
    let busy = send_message(&app, &conversation, "Another", "").await;
    assert_eq!(busy.status, StatusCode::CONFLICT, "{}", busy.text);
    assert!(busy.text.contains("still being written"));
    let stopped = call(&app, form_request(&format!("/chat/stop/{id}"), "", true)).await;
    assert_eq!(stopped.status, StatusCode::NO_CONTENT);
    // The stopped run's stream still reads to its end, which says it was stopped.
    let streamed = get(&app, &url).await;
    assert_eq!(streamed.status, StatusCode::OK);
    assert!(streamed.text.contains("Stopped."), "{}", streamed.text);
    // Stopping it again is no error; an answer that never was is.
    let again = call(&app, form_request(&format!("/chat/stop/{id}"), "", true)).await;
    assert_eq!(again.status, StatusCode::NO_CONTENT);
    let unknown = call(&app, form_request("/chat/stop/run_nothing", "", true)).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(
        send_message(&app, &conversation, "Another", "")
            .await
            .status,
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
        (
            "conversation=conv_missing&message=hi",
            true,
            StatusCode::NOT_FOUND,
            "no conversation `conv_missing`",
        ),
        (
            "conversation=&message=%2Fbogus",
            true,
            StatusCode::BAD_REQUEST,
            "unknown command `/bogus`",
        ),
        (
            "conversation=&message=%2Ftemp+warm",
            true,
            StatusCode::BAD_REQUEST,
            "/temp needs a number",
        ),
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

#[tokio::test]
async fn a_conversation_has_its_own_url_with_its_messages() {
    let app = stub_app().await;
    let id = conversation_with(&app, "What is <b>NoPE</b>?", "&thinking=on").await;
    let page = get(&app, &format!("/c/{id}")).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text);
    assert!(page
        .text
        .contains(&format!(r#"name="conversation" value="{id}""#)));
    assert!(page
        .text
        .contains(r#"<div class="bubble">What is &lt;b&gt;NoPE&lt;&#x2f;b&gt;?</div>"#));
    // The stored answer: its thoughts collapsed with their time and tokens, its Markdown
    // rendered, its line of stats.
    assert!(page
        .text
        .contains(r#"<details class="thinking"><summary>Thought for "#));
    assert!(page.text.contains("<table>"), "{}", page.text);
    assert!(page.text.contains(r#"class="stats""#));
    assert!(page.text.contains(r#"class="regen""#));
    // In the sidebar, titled from the first message and marked as the one shown.
    assert!(page.text.contains(&format!(
        r#"<a href="/c/{id}" aria-current="page">What is &lt;b&gt;NoPE&lt;&#x2f;b&gt;?</a>"#
    )));
    // The meter counts the conversation's tokens.
    assert!(!page.text.contains("0 / 65,536 tokens"));
    assert!(page.text.contains("/ 65,536 tokens"));
    // The page tells that nothing is kept on disk.
    assert!(page.text.contains("Kept in memory only"));
}

#[tokio::test]
async fn unknown_conversations_are_404_pages_and_404_fragments() {
    let app = stub_app().await;
    for path in ["/c/conv_missing", "/c/bad%20id", "/c/conv_missing/export"] {
        let reply = get(&app, path).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{path}");
    }
    let page = get(&app, "/c/conv_missing").await;
    assert!(page.header(header::CONTENT_TYPE).starts_with("text/html"));
    assert!(page.text.contains("Conversation not found"));
    assert!(page.text.contains("conv_missing"));
    assert!(page
        .header(header::CONTENT_SECURITY_POLICY)
        .contains("'self'"));
    for (uri, body) in [
        ("/c/conv_missing/rename", "title=x"),
        ("/c/conv_missing/delete", "conversation="),
        ("/chat/regenerate", "conversation=conv_missing"),
        (
            "/chat/edit",
            "conversation=conv_missing&question=1&message=hi",
        ),
        ("/chat/settings", "conversation=conv_missing&temperature=1"),
        ("/chat/send", "conversation=conv_missing&message=%2Fexport"),
    ] {
        let reply = post(&app, uri, body).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{uri}: {}", reply.text);
        assert!(
            reply.text.contains("no conversation"),
            "{uri}: {}",
            reply.text
        );
    }
    let edit = get(&app, "/chat/edit?conversation=conv_missing").await;
    assert_eq!(edit.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_sidebar_lists_newest_first_and_searches_messages() {
    let app = stub_app().await;
    let first = conversation_with(&app, "Tell me about otters", "").await;
    let second = conversation_with(&app, "Weather on Mars", "").await;
    let list = get(&app, &format!("/chat/conversations?conversation={first}")).await;
    assert_eq!(list.status, StatusCode::OK);
    let otters = list
        .text
        .find("Tell me about otters")
        .expect("first listed");
    let mars = list.text.find("Weather on Mars").expect("second listed");
    assert!(mars < otters, "newest first: {}", list.text);
    assert!(list
        .text
        .contains(&format!(r#"<a href="/c/{first}" aria-current="page">"#)));
    assert!(list.text.contains(&format!(r#"<a href="/c/{second}">"#)));
    // Search finds titles and message text, case-insensitively.
    let found = get(&app, "/chat/conversations?q=OTTERS").await;
    assert!(found.text.contains("Tell me about otters"));
    assert!(!found.text.contains("Weather on Mars"));
    let none = get(&app, "/chat/conversations?q=zebra").await;
    assert!(none.text.contains("No conversation matches “zebra”"));
    let long = get(&app, &format!("/chat/conversations?q={}", "a".repeat(300))).await;
    assert_eq!(long.status, StatusCode::BAD_REQUEST);
    assert!(long.text.contains("at most 200"));
}

#[tokio::test]
async fn rename_and_delete_from_the_sidebar() {
    let app = stub_app().await;
    let keep = conversation_with(&app, "Keep me", "").await;
    let gone = conversation_with(&app, "Delete me", "").await;

    let form = get(&app, &format!("/c/{keep}/rename")).await;
    assert_eq!(form.status, StatusCode::OK);
    assert!(form.text.contains(r#"name="title" value="Keep me""#));
    let renamed = post(
        &app,
        &format!("/c/{keep}/rename"),
        &format!("title=My+%3Cfavourite%3E&conversation={keep}"),
    )
    .await;
    assert_eq!(renamed.status, StatusCode::OK, "{}", renamed.text);
    assert!(
        renamed.text.contains("My &lt;favourite&gt;"),
        "{}",
        renamed.text
    );
    assert!(renamed.text.contains("aria-current=\"page\""));
    let empty = post(&app, &format!("/c/{keep}/rename"), "title=+++").await;
    assert_eq!(empty.status, StatusCode::BAD_REQUEST);
    assert!(empty.text.contains("title is empty"));
    let forged = call(
        &app,
        form_request(&format!("/c/{keep}/rename"), "title=x", false),
    )
    .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);

    // Deleting another conversation answers with the list; deleting the one shown moves
    // the page to a new chat.
    let other = post(
        &app,
        &format!("/c/{gone}/delete"),
        &format!("conversation={keep}"),
    )
    .await;
    assert_eq!(other.status, StatusCode::OK);
    assert!(!other.text.contains("Delete me"));
    assert!(other.text.contains("My &lt;favourite&gt;"));
    assert_eq!(
        get(&app, &format!("/c/{gone}")).await.status,
        StatusCode::NOT_FOUND
    );
    let current = post(
        &app,
        &format!("/c/{keep}/delete"),
        &format!("conversation={keep}"),
    )
    .await;
    assert_eq!(current.hx("hx-redirect"), Some("/"));
    let again = post(&app, &format!("/c/{keep}/delete"), "").await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn regenerate_keeps_the_last_answer_as_a_version() {
    // Paced, so the new answer is still being written when the second regenerate comes
    // (an unpaced stub can finish it first, and that one would rightly be accepted).
    let app = app(AppState::new(
        stub_engine(100.0).await,
        smolbot::services::SessionStore::in_memory().expect("in-memory store"),
        None,
    ));
    let id = conversation_with(&app, "Hello", "").await;
    let regenerated = post(&app, "/chat/regenerate", &format!("conversation={id}")).await;
    assert_eq!(regenerated.status, StatusCode::OK, "{}", regenerated.text);
    // The transcript up to the question, then a new answer streaming.
    assert_eq!(regenerated.text.matches(r#"class="msg user""#).count(), 1);
    assert_eq!(
        regenerated.text.matches(r#"class="msg assistant"#).count(),
        1
    );
    assert!(regenerated.text.contains("msg assistant streaming"));
    assert!(
        regenerated
            .text
            .contains(r#"<span class="version-count">2/2</span>"#),
        "{}",
        regenerated.text
    );
    let busy = post(&app, "/chat/regenerate", &format!("conversation={id}")).await;
    assert_eq!(busy.status, StatusCode::CONFLICT);
    let streamed = get(&app, &stream_url(&regenerated.text)).await;
    assert!(streamed.text.contains("event: done"));
    let page = get(&app, &format!("/c/{id}")).await;
    assert_eq!(
        page.text
            .matches(r#"<article class="msg assistant""#)
            .count(),
        1
    );
    assert_eq!(page.text.matches(r#"<article class="msg user""#).count(), 1);
    assert!(page
        .text
        .contains(r#"<span class="version-count">2/2</span>"#));

    // The earlier version is shown again, and stays chosen.
    let question = page
        .text
        .split(r#""question": "#)
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .expect("the switcher names the question")
        .to_owned();
    let bad = post(
        &app,
        "/chat/version",
        &format!("conversation={id}&question={question}&version=9"),
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", bad.text);
    let switched = post(
        &app,
        "/chat/version",
        &format!("conversation={id}&question={question}&version=1"),
    )
    .await;
    assert_eq!(switched.status, StatusCode::OK, "{}", switched.text);
    assert!(switched
        .text
        .contains(r#"<span class="version-count">1/2</span>"#));
    let page = get(&app, &format!("/c/{id}")).await;
    assert!(page
        .text
        .contains(r#"<span class="version-count">1/2</span>"#));

    // A conversation with no question has nothing to regenerate.
    let settings = post(&app, "/chat/settings", "conversation=&temperature=0.5").await;
    let empty = settings.hx("hx-push-url").expect("created")["/c/".len()..].to_owned();
    let nothing = post(&app, "/chat/regenerate", &format!("conversation={empty}")).await;
    assert_eq!(nothing.status, StatusCode::CONFLICT);
    assert!(nothing.text.contains("no message to answer again"));
}

#[tokio::test]
async fn edit_replaces_the_last_question_and_its_answer() {
    let app = stub_app().await;
    let id = conversation_with(&app, "Frist question", "").await;
    let form = get(&app, &format!("/chat/edit?conversation={id}")).await;
    assert_eq!(form.status, StatusCode::OK);
    assert!(
        form.text.contains(">Frist question</textarea>"),
        "{}",
        form.text
    );
    let question = question_of(&form.text);
    let empty = post(
        &app,
        "/chat/edit",
        &format!("conversation={id}&question={question}&message=+"),
    )
    .await;
    assert_eq!(empty.status, StatusCode::BAD_REQUEST);
    let edited = post(
        &app,
        "/chat/edit",
        &format!("conversation={id}&question={question}&message=First+question"),
    )
    .await;
    assert_eq!(edited.status, StatusCode::OK, "{}", edited.text);
    assert!(!edited.text.contains("Frist"));
    assert!(edited
        .text
        .contains(r#"<div class="bubble">First question</div>"#));
    get(&app, &stream_url(&edited.text)).await;
    let page = get(&app, &format!("/c/{id}")).await;
    assert!(!page.text.contains("Frist question</div>"));
    assert_eq!(page.text.matches(r#"<article class="msg user""#).count(), 1);
    assert_eq!(
        page.text
            .matches(r#"<article class="msg assistant""#)
            .count(),
        1
    );
}

/// The stored id of the question an edit form was opened on.
fn question_of(form: &str) -> String {
    let start =
        form.find(r#"name="question" value=""#).expect(form) + r#"name="question" value=""#.len();
    let end = form[start..].find('"').expect("closing quote");
    form[start..start + end].to_owned()
}

#[tokio::test]
async fn an_edit_form_left_open_while_a_newer_question_came_is_refused() {
    let app = stub_app().await;
    let id = conversation_with(&app, "The first question", "").await;
    let form = get(&app, &format!("/chat/edit?conversation={id}")).await;
    let first = question_of(&form.text);
    // Another tab asks the next question while the form is open.
    let sent = send_message(&app, &id, "The second question", "").await;
    assert_eq!(sent.status, StatusCode::OK);
    get(&app, &stream_url(&sent.text)).await;
    let stale = post(
        &app,
        "/chat/edit",
        &format!("conversation={id}&question={first}&message=Edited+too+late"),
    )
    .await;
    assert_eq!(stale.status, StatusCode::CONFLICT, "{}", stale.text);
    assert!(
        stale.text.contains("no longer the last one"),
        "{}",
        stale.text
    );
    // Neither question was replaced.
    let page = get(&app, &format!("/c/{id}")).await;
    assert!(page.text.contains("The first question</div>"));
    assert!(page.text.contains("The second question</div>"));
    assert!(!page.text.contains("Edited too late"));
    assert_eq!(page.text.matches(r#"<article class="msg user""#).count(), 2);
    // A form opened now edits the second question.
    let form = get(&app, &format!("/chat/edit?conversation={id}")).await;
    assert!(form.text.contains(">The second question</textarea>"));
    assert_ne!(question_of(&form.text), first);
}

#[tokio::test]
async fn settings_are_checked_saved_and_reset() {
    let app = stub_app().await;
    let id = conversation_with(&app, "Hi", "").await;
    for (body, words) in [
        ("temperature=warm", "temperature must be a number"),
        ("temperature=-1", "must be ≥ 0"),
        ("top_p=2", "must be in (0, 1]"),
        ("max_tokens=1.5", "max tokens must be a number"),
        ("max_tokens=999999", "at most the model's context, 65536"),
    ] {
        let reply = post(&app, "/chat/settings", &format!("conversation={id}&{body}")).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{body}: {}",
            reply.text
        );
        assert!(reply.text.contains(words), "{body}: {}", reply.text);
    }
    let saved = post(
        &app,
        "/chat/settings",
        &format!(
            "conversation={id}&system_prompt=Answer+in+French.&temperature=0.3&top_p=0.9&max_tokens=64"
        ),
    )
    .await;
    assert_eq!(saved.status, StatusCode::OK, "{}", saved.text);
    assert!(saved.text.contains("Saved."));
    assert!(
        saved.text.contains(r#"id="context-meter""#),
        "the meter follows"
    );
    let page = get(&app, &format!("/c/{id}")).await;
    assert!(page.text.contains(">Answer in French.</textarea>"));
    assert!(page.text.contains(r#"value="0.3""#));
    assert!(page.text.contains(r#"value="0.9""#));
    assert!(page.text.contains(r#"value="64""#));
    // The settings reach the model: max tokens caps the answer.
    let sent = send_message(&app, &id, "Write a lot", "").await;
    let streamed = get(&app, &stream_url(&sent.text)).await;
    assert!(streamed.text.contains("· 64 tokens"), "{}", streamed.text);

    let reset = post(&app, "/chat/settings/reset", &format!("conversation={id}")).await;
    assert_eq!(reset.status, StatusCode::OK);
    assert!(reset.text.contains("Back to the defaults."));
    assert!(reset.text.contains(r#"name="thinking" value="on" checked"#));
    let page = get(&app, &format!("/c/{id}")).await;
    assert!(!page.text.contains("Answer in French."));
    assert!(page.text.contains(r#"name="temperature" type="number""#));
    assert!(!page.text.contains(r#"value="0.3""#));
    let forged = call(
        &app,
        form_request("/chat/settings", &format!("conversation={id}"), false),
    )
    .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn the_thinking_budget_is_a_field_of_the_settings_form() {
    let app = stub_app().await;
    let id = conversation_with(&app, "Hi", "").await;
    let settings = |body: &str| {
        let body = format!("conversation={id}&{body}");
        let app = app.clone();
        async move { post(&app, "/chat/settings", &body).await }
    };
    let bad = settings("thinking_budget=lots").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", bad.text);
    assert!(
        bad.text.contains("thinking budget must be a number"),
        "{}",
        bad.text
    );
    let saved = settings("thinking_budget=12").await;
    assert_eq!(saved.status, StatusCode::OK, "{}", saved.text);
    let page = get(&app, &format!("/c/{id}")).await;
    let field = |budget: &str| format!(r#"placeholder="no limit" value="{budget}""#);
    assert!(page.text.contains(&field("12")), "{}", page.text);
    // `/think N` sets the same setting, and the form shows it.
    let think = send_message(&app, &id, "/think 7", "&thinking=on").await;
    assert!(think.text.contains(&field("7")), "{}", think.text);
    let cleared = settings("thinking_budget=").await;
    assert!(cleared.text.contains(&field("")), "{}", cleared.text);
}

#[tokio::test]
async fn slash_commands_change_the_conversation() {
    let app = stub_app().await;
    let id = conversation_with(&app, "Hello", "&thinking=on").await;

    let help = send_message(&app, &id, "/help", "&thinking=on").await;
    assert_eq!(help.status, StatusCode::OK);
    // MiniJinja writes `/` as `&#x2f;`, which the browser shows as `/`.
    let help_text = help.text.replace("&#x2f;", "/");
    for command in [
        "/new",
        "/clear",
        "/think",
        "/no_think",
        "/temp N",
        "/system TEXT",
        "/export",
        "/status",
    ] {
        assert!(help_text.contains(command), "{command}: {help_text}");
    }

    let off = send_message(&app, &id, "/no_think", "&thinking=on").await;
    assert!(off.text.contains("Thinking is off."));
    assert!(off.text.contains(
        r#"<input type="checkbox" id="thinking" name="thinking" value="on" hx-swap-oob="true">"#
    ));
    // The next message (sent with the box as the page now shows it) has no thinking.
    let sent = send_message(&app, &id, "Next", "").await;
    assert!(!sent.text.contains("Thinking…"));
    let streamed = get(&app, &stream_url(&sent.text)).await;
    assert!(!streamed.text.contains("event: reasoning"));
    let on = send_message(&app, &id, "/think", "").await;
    assert!(on.text.contains("Thinking is on."));
    assert!(on.text.contains(r#"value="on" checked hx-swap-oob="true""#));

    let temp = send_message(&app, &id, "/temp 0.25", "&thinking=on").await;
    assert!(
        temp.text.contains("Temperature set to 0.25."),
        "{}",
        temp.text
    );
    let system = send_message(&app, &id, "/system Be terse.", "&thinking=on").await;
    assert!(system.text.contains("System prompt set."));
    let status = send_message(&app, &id, "/status", "&thinking=on").await;
    assert!(
        status.text.contains("Model: smolbot-stub (stub)"),
        "{}",
        status.text
    );
    assert!(status.text.contains("of 65,536 tokens"));
    assert!(status.text.contains("temperature 0.25"));
    assert!(status.text.contains("System prompt: Be terse."));

    let export = send_message(&app, &id, "/export", "").await;
    assert!(export
        .text
        .contains(&format!(r#"href="/c/{id}/export?format=md" download"#)));
    assert!(export
        .text
        .contains(&format!(r#"href="/c/{id}/export?format=json" download"#)));
    let nothing = send_message(&app, "", "/export", "").await;
    assert_eq!(nothing.status, StatusCode::CONFLICT);

    let new = send_message(&app, &id, "/new", "").await;
    assert_eq!(new.hx("hx-redirect"), Some("/"));
    let clear = send_message(&app, &id, "/clear", "").await;
    assert_eq!(clear.hx("hx-redirect"), Some(format!("/c/{id}").as_str()));
    let page = get(&app, &format!("/c/{id}")).await;
    assert!(!page.text.contains(r#"<article class="msg"#), "cleared");
    assert!(page.text.contains("Be terse."), "settings stay");
}

#[tokio::test]
async fn export_downloads_markdown_and_json() {
    let app = stub_app().await;
    let id = conversation_with(&app, "Export me", "").await;
    let md = get(&app, &format!("/c/{id}/export?format=md")).await;
    assert_eq!(md.status, StatusCode::OK);
    assert!(md.header(header::CONTENT_TYPE).starts_with("text/markdown"));
    assert_eq!(
        md.header(header::CONTENT_DISPOSITION),
        format!("attachment; filename=\"{id}.md\"")
    );
    assert!(md.text.contains("Export me"));
    let json = get(&app, &format!("/c/{id}/export?format=json")).await;
    assert!(json
        .header(header::CONTENT_TYPE)
        .starts_with("application/json"));
    let document: serde_json::Value = serde_json::from_str(&json.text).expect("JSON");
    assert_eq!(document["conversation"]["id"], id.as_str());
    assert_eq!(document["messages"][0]["role"], "user");
    assert_eq!(document["messages"][0]["content"], "Export me");
    assert_eq!(document["messages"][1]["role"], "assistant");
    let bad = get(&app, &format!("/c/{id}/export?format=pdf")).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.text.contains("`format` must be `md` or `json`"));
}

#[tokio::test]
async fn the_done_event_updates_the_context_meter() {
    let app = stub_app().await;
    let sent = send_message(&app, "", "Hello", "").await;
    let streamed = get(&app, &stream_url(&sent.text)).await;
    let events = sse_events(&streamed.text);
    let (_, done) = events.iter().find(|(e, _)| e == "done").expect("done");
    assert!(
        done.contains(r#"<span id="context-meter" class="meter" hx-swap-oob="true""#),
        "{done}"
    );
    assert!(done.contains("/ 65,536 tokens"), "{done}");
}

#[tokio::test]
async fn conversations_survive_a_new_server_on_the_same_data_dir() {
    let dir = tempfile::tempdir().expect("temp dir");
    let id = {
        let app = stored_app(dir.path()).await;
        let id = conversation_with(&app, "Remember the otters", "").await;
        let page = get(&app, &format!("/c/{id}")).await;
        assert!(!page.text.contains("Kept in memory only"));
        id
    };
    let app = stored_app(dir.path()).await;
    let page = get(&app, &format!("/c/{id}")).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page
        .text
        .contains(r#"<div class="bubble">Remember the otters</div>"#));
    assert!(page.text.contains("<table>"), "the answer was stored");
    let home = get(&app, "/").await;
    assert!(home
        .text
        .contains(&format!(r#"<a href="/c/{id}">Remember the otters</a>"#)));
    // The page and the API share the store.
    let api = get(&app, &format!("/api/conversations/{id}/messages")).await;
    assert_eq!(api.status, StatusCode::OK);
    assert!(api.text.contains("Remember the otters"));
}

#[tokio::test]
async fn the_badge_polls_its_state_and_thinking_counts_its_tokens() {
    let app = stub_app().await;
    let badge = get(&app, "/chat/status").await;
    assert_eq!(badge.status, StatusCode::OK);
    assert!(badge.text.contains("smolbot-stub · stub"), "{}", badge.text);
    assert!(badge.text.contains(r#"hx-get="/chat/status""#));
    let sent = send_message(&app, "", "Hello there", "&thinking=on").await;
    let streamed = get(&app, &stream_url(&sent.text)).await;
    let summary = streamed
        .text
        .split("Thought for ")
        .nth(1)
        .and_then(|rest| rest.split("</summary>").next())
        .expect("a closed thinking block");
    let tokens: usize = summary
        .split(" · ")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no token count in {summary:?}"));
    assert!(tokens > 5, "{summary}");
}

#[tokio::test]
async fn think_with_a_number_sets_a_thinking_budget_that_cuts_the_reasoning() {
    let dir = tempfile::tempdir().expect("temp dir");
    let app = stored_app(dir.path()).await;
    let id = conversation_with(&app, "Hello", "&thinking=on").await;
    let full = get(&app, &format!("/api/conversations/{id}/messages")).await;
    let full: serde_json::Value = serde_json::from_str(&full.text).expect("json");
    let free = full["data"][1]["reasoning"]
        .as_str()
        .expect("reasoning")
        .len();

    let set = send_message(&app, &id, "/think 3", "&thinking=on").await;
    assert_eq!(set.status, StatusCode::OK, "{}", set.text);
    assert!(set.text.contains("at most 3 tokens"), "{}", set.text);
    let bad = send_message(&app, &id, "/think lots", "&thinking=on").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", bad.text);

    let sent = send_message(&app, &id, "Hello", "&thinking=on").await;
    let streamed = get(&app, &stream_url(&sent.text)).await;
    assert!(streamed.text.contains("event: done"), "{}", streamed.text);
    let after = get(&app, &format!("/api/conversations/{id}/messages")).await;
    let after: serde_json::Value = serde_json::from_str(&after.text).expect("json");
    let cut = &after["data"][3];
    assert_eq!(cut["status"], "complete", "{cut}");
    let reasoning = cut["reasoning"].as_str().expect("some reasoning").len();
    assert!(
        reasoning > 0 && reasoning < free / 2,
        "{reasoning} of {free}: {cut}"
    );

    // `/think` alone lifts the budget again.
    let lifted = send_message(&app, &id, "/think", "&thinking=on").await;
    assert!(lifted.text.contains("Thinking is on."), "{}", lifted.text);
    let conversation = get(&app, &format!("/api/conversations/{id}")).await;
    assert!(
        conversation.text.contains("\"thinking_budget\":null"),
        "{}",
        conversation.text
    );
}

/// An answer cut off by max tokens says so under it, in the same words live (the stream's
/// `done` event) and stored (the conversation's page); one cut off while still thinking
/// says there is no answer.
#[tokio::test]
async fn an_answer_cut_off_by_max_tokens_says_so_live_and_reloaded() {
    let app = stub_app().await;
    let id = conversation_with(&app, "Hi", "").await;
    let saved = post(
        &app,
        "/chat/settings",
        &format!("conversation={id}&max_tokens=8"),
    )
    .await;
    assert_eq!(saved.status, StatusCode::OK, "{}", saved.text);
    let mut labels = Vec::new();
    for (message, extra, label) in [
        (
            "Tell me everything",
            "&thinking=on",
            "Cut off: the token limit was reached. It was still thinking: there is no answer.",
        ),
        (
            "And without thinking",
            "",
            "Cut off: the token limit was reached.",
        ),
    ] {
        let sent = send_message(&app, &id, message, extra).await;
        assert_eq!(sent.status, StatusCode::OK, "{}", sent.text);
        let streamed = get(&app, &stream_url(&sent.text)).await;
        let done = sse_events(&streamed.text)
            .into_iter()
            .find(|(event, _)| event == "done")
            .expect("a done event")
            .1;
        let span = format!(r#"<span class="note length">{label}</span>"#);
        assert!(done.contains(&span), "{done}");
        labels.push(span);
    }
    let page = get(&app, &format!("/c/{id}")).await;
    for span in &labels {
        assert_eq!(page.text.matches(span.as_str()).count(), 1, "{span}");
    }
    assert_eq!(
        page.text.matches(r#"class="note"#).count(),
        2,
        "the first, finished answer has no label"
    );
}
