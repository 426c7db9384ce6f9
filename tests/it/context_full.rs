//! A conversation that outgrows the context, and answers cut short, through the router on the
//! stub: the page's offer to drop the oldest messages (and its mark where the history is
//! cut) or to go on in a new chat, `truncation` on `/v1/chat/completions` and the
//! conversations API, the context meter counting exactly what the next request sends
//! (built-in tools and tool rounds included), and Continue writing on into the same stored
//! answer.

use crate::common;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use common::http::{get, post_json, send as call, Reply};
use serde_json::{json, Value};
use smolbot::services::agent::with_builtin_tools;
use smolbot::services::conversation::chat_request;
use smolbot::services::stub::StubConfig;
use smolbot::services::{BackendSpec, Engine, SessionStore};
use smolbot::web::{app, AppState};

/// A context small enough to fill in three exchanges of [`long_question`].
const SMALL_CONTEXT: usize = 500;

/// The stub with a context of `context` tokens, the app over it, and the store behind it.
async fn small_app(context: usize) -> (Router, Engine, SessionStore) {
    let engine = Engine::start(
        BackendSpec::Stub(StubConfig {
            tokens_per_second: 0.0,
            context_length: context,
        }),
        4,
    )
    .await
    .expect("stub engine");
    let store = SessionStore::in_memory().expect("store");
    let app = app(AppState::new(engine.clone(), store.clone(), None));
    (app, engine, store)
}

/// About a third of [`SMALL_CONTEXT`].
fn long_question(n: usize) -> String {
    format!("question {n} {}", "a ".repeat(110).trim_end())
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

async fn page_post(app: &Router, uri: &str, body: &str) -> Reply {
    let request = Request::post(uri)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header("HX-Request", "true")
        .body(Body::from(body.to_owned()))
        .expect("request");
    call(app, request).await
}

async fn api(app: &Router, method: Method, uri: &str, body: Value) -> Reply {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .expect("request");
    call(app, request).await
}

/// A conversation created over the API with `settings`.
async fn conversation(app: &Router, settings: Value) -> String {
    let created = post_json(app, "/api/conversations", json!({ "settings": settings })).await;
    assert!(created.status.is_success(), "{}", created.text);
    created.json()["id"].as_str().expect("id").to_owned()
}

/// The stream URL in an exchange fragment.
fn stream_url(fragment: &str) -> String {
    let start = fragment.find("sse-connect=\"").expect("sse-connect") + "sse-connect=\"".len();
    let end = fragment[start..].find('"').expect("closing quote");
    fragment[start..start + end].to_owned()
}

/// Sends `message` from the page and reads its answer to the end; returns the send's reply.
async fn page_send(app: &Router, id: &str, message: &str, extra: &str) -> Reply {
    let body = format!("conversation={id}&message={}{extra}", encode(message));
    let sent = page_post(app, "/chat/send", &body).await;
    assert_eq!(sent.status, StatusCode::OK, "{}", sent.text);
    if sent.text.contains("sse-connect") {
        let streamed = get(app, &stream_url(&sent.text)).await;
        assert!(streamed.text.contains("event: done"), "{}", streamed.text);
    }
    sent
}

/// The number the context meter of `html` shows.
fn meter(html: &str) -> usize {
    let start = html.find(r#"id="context-meter""#).expect("a meter");
    let text = &html[start..];
    let end = text.find(" / ").expect("N / LIMIT");
    let digits: String = text[..end]
        .chars()
        .rev()
        .take_while(|c| c.is_ascii_digit() || *c == ',')
        .filter(char::is_ascii_digit)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("a number: {text}"))
}

const CUT_MARK: &str = "Earlier messages are not sent to the model";

#[tokio::test]
async fn a_full_context_offers_to_drop_the_oldest_messages_and_marks_the_cut() {
    let (app, _, _) = small_app(SMALL_CONTEXT).await;
    let id = conversation(&app, json!({ "thinking": false, "max_tokens": 20 })).await;
    for n in 0..2 {
        let sent = page_send(&app, &id, &long_question(n), "").await;
        assert!(sent.text.contains("sse-connect"), "{}", sent.text);
    }
    let page = get(&app, &format!("/c/{id}")).await;
    assert!(!page.text.contains(CUT_MARK));
    let before = meter(&page.text);

    // The third question does not fit: the page offers the ways on, not a dead end.
    let refused = page_send(&app, &id, &long_question(2), "").await;
    assert!(!refused.text.contains("sse-connect"), "{}", refused.text);
    assert!(
        refused.text.contains("the context holds 500"),
        "{}",
        refused.text
    );
    assert!(refused.text.contains("Drop the oldest messages and send"));
    assert!(refused.text.contains(r#"name="truncation" value="auto""#));
    assert!(refused.text.contains(r#"<form method="get" action="/">"#));
    assert!(refused
        .text
        .contains(r#"name="draft" value="question 2 a a"#));
    let stored = get(&app, &format!("/api/conversations/{id}/messages")).await;
    assert_eq!(
        stored.json()["data"].as_array().map(Vec::len),
        Some(4),
        "nothing stored"
    );

    // Dropping the oldest: the setting goes on, the answer streams, the transcript is marked.
    let sent = page_send(&app, &id, &long_question(2), "&truncation=auto").await;
    assert!(sent.text.contains("sse-connect"), "{}", sent.text);
    assert!(sent.text.contains(CUT_MARK), "{}", sent.text);
    let mark = sent.text.find(CUT_MARK).expect("mark");
    assert!(
        sent.text[..mark].contains("question 0"),
        "the dropped exchange is above it"
    );
    // (The sidebar after the answer is titled by the first question.)
    let answer = sent.text.find("sse-connect").expect("the answer");
    assert!(!sent.text[mark..answer].contains("question 0"));
    let settings = get(&app, &format!("/api/conversations/{id}")).await.json();
    assert_eq!(settings["settings"]["truncation"], "auto", "{settings}");

    // A reload shows the mark, the setting ticked, and a meter inside the context.
    let page = get(&app, &format!("/c/{id}")).await;
    assert!(page.text.contains(CUT_MARK));
    assert!(page
        .text
        .contains(r#"name="drop_oldest" value="on" checked"#));
    let after = meter(&page.text);
    assert!(after < SMALL_CONTEXT, "{after} (was {before})");

    // "Continue in a new chat" opens a new chat with the message in the composer.
    let new_chat = get(&app, "/?draft=question+2+word").await;
    assert!(
        new_chat.text.contains(">question 2 word</textarea>"),
        "{}",
        new_chat.text
    );
}

#[tokio::test]
async fn the_last_question_alone_too_long_is_refused_in_words() {
    let (app, _, _) = small_app(SMALL_CONTEXT).await;
    let id = conversation(&app, json!({ "thinking": false, "truncation": "auto" })).await;
    let huge = "word ".repeat(SMALL_CONTEXT);
    let body = format!("conversation={id}&message={}", encode(&huge));
    let refused = page_post(&app, "/chat/send", &body).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{}", refused.text);
    assert!(
        refused.text.contains("even without the earlier messages"),
        "{}",
        refused.text
    );
}

#[tokio::test]
async fn truncation_on_the_openai_api_is_opt_in() {
    let (app, _, _) = small_app(SMALL_CONTEXT).await;
    let mut messages = vec![json!({"role": "system", "content": "Be brief."})];
    for n in 0..3 {
        messages.push(json!({"role": "user", "content": long_question(n)}));
        messages.push(json!({"role": "assistant", "content": format!("answer {n}")}));
    }
    messages.push(json!({"role": "user", "content": "And now?"}));
    let body = json!({ "messages": messages, "max_tokens": 20 });
    let refused = post_json(&app, "/v1/chat/completions", body.clone()).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{}", refused.text);
    assert_eq!(refused.json()["error"]["code"], "context_length_exceeded");
    let mut auto = body.clone();
    auto["truncation"] = json!("auto");
    let answered = post_json(&app, "/v1/chat/completions", auto).await;
    assert_eq!(answered.status, StatusCode::OK, "{}", answered.text);
    let usage = &answered.json()["usage"];
    let prompt = usage["prompt_tokens"].as_u64().expect("prompt tokens") as usize;
    assert!(prompt + 20 <= SMALL_CONTEXT, "{usage}");
    let mut disabled = body.clone();
    disabled["truncation"] = json!("disabled");
    let again = post_json(&app, "/v1/chat/completions", disabled).await;
    assert_eq!(again.status, StatusCode::BAD_REQUEST);
    let mut bogus = body;
    bogus["truncation"] = json!("sometimes");
    let bad = post_json(&app, "/v1/chat/completions", bogus).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", bad.text);
    assert!(bad.text.contains("truncation"), "{}", bad.text);

    // The conversations API takes the same value as a setting.
    let id = conversation(&app, json!({})).await;
    let patched = api(
        &app,
        Method::PATCH,
        &format!("/api/conversations/{id}"),
        json!({ "settings": { "truncation": "auto" } }),
    )
    .await;
    assert!(patched.status.is_success(), "{}", patched.text);
    assert_eq!(patched.json()["settings"]["truncation"], "auto");
}

#[tokio::test]
async fn the_meter_counts_what_the_next_request_sends_tools_included() {
    let engine = common::stub_engine(0.0).await;
    let store = SessionStore::in_memory().expect("store");
    let app = app(AppState::new(engine.clone(), store.clone(), None));
    let id = conversation(&app, json!({ "builtin_tools": true, "thinking": false })).await;
    let sent = api(
        &app,
        Method::POST,
        &format!("/api/conversations/{id}/messages"),
        json!({ "content": "What is 17 * (3+4)?" }),
    )
    .await;
    assert!(sent.status.is_success(), "{}", sent.text);
    let history = store.messages(id.clone()).await.expect("messages");
    assert_eq!(
        history.len(),
        4,
        "question, call, result, answer: {history:#?}"
    );
    let settings = store.get(id.clone()).await.expect("conversation").settings;
    let request = with_builtin_tools(chat_request(&settings, &history, None));
    let next = engine
        .codec()
        .prepare(&request)
        .expect("prepared")
        .prompt
        .len();

    let page = get(&app, &format!("/c/{id}")).await;
    assert_eq!(
        meter(&page.text),
        next,
        "the meter is the next prompt's tokens"
    );
    let last = history.last().expect("the answer");
    let used =
        last.stats.prompt_tokens.expect("prompt") + last.stats.completion_tokens.expect("answer");
    assert!(
        next as i64 >= used,
        "the next prompt holds all the last round read and wrote: {next} < {used}"
    );
    let status = page_post(
        &app,
        "/chat/send",
        &format!("conversation={id}&message=%2Fstatus"),
    )
    .await;
    let grouped = |n: usize| {
        let digits = n.to_string();
        let mut out = String::new();
        for (i, ch) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(ch);
        }
        out
    };
    assert!(
        status
            .text
            .contains(&format!("Context: {} of 65,536 tokens", grouped(next))),
        "{}",
        status.text
    );
}

#[tokio::test]
async fn continue_writes_on_into_the_same_answer() {
    let (app, _, store) = small_app(65_536).await;
    let id = conversation(&app, json!({ "thinking": false, "max_tokens": 12 })).await;
    page_send(&app, &id, "Hello", "").await;
    let cut = store.messages(id.clone()).await.expect("messages");
    let cut = cut.last().expect("the answer").clone();
    assert_eq!(cut.finish_reason.as_deref(), Some("length"));
    let page = get(&app, &format!("/c/{id}")).await;
    assert_eq!(
        page.text.matches(r#"class="continue""#).count(),
        1,
        "{}",
        page.text
    );

    let continued = page_post(&app, "/chat/continue", &format!("conversation={id}")).await;
    assert_eq!(continued.status, StatusCode::OK, "{}", continued.text);
    assert!(
        !continued.text.contains(r#"class="msg user""#),
        "no new question"
    );
    let streamed = get(&app, &stream_url(&continued.text)).await;
    assert!(streamed.text.contains("event: done"), "{}", streamed.text);
    let messages = store.messages(id.clone()).await.expect("messages");
    assert_eq!(messages.len(), 2, "{messages:#?}");
    let grown = &messages[1];
    assert_eq!(grown.id, cut.id, "the same stored answer");
    assert!(
        grown
            .content
            .starts_with(cut.content.trim_end_matches('\u{FFFD}')),
        "{grown:?}"
    );
    assert!(grown.content.len() > cut.content.len());
    // The stream shows the whole answer, what was there first included.
    let first_words: String = cut.content.chars().take(12).collect();
    assert!(streamed.text.contains(&first_words), "{}", streamed.text);

    // A finished answer is not continued.
    page_post(
        &app,
        "/chat/settings",
        &format!("conversation={id}&max_tokens="),
    )
    .await;
    loop {
        let last = store.messages(id.clone()).await.expect("messages");
        if last[1].finish_reason.as_deref() == Some("stop") {
            break;
        }
        let more = page_post(&app, "/chat/continue", &format!("conversation={id}")).await;
        assert_eq!(more.status, StatusCode::OK, "{}", more.text);
        get(&app, &stream_url(&more.text)).await;
    }
    let refused = page_post(&app, "/chat/continue", &format!("conversation={id}")).await;
    assert_eq!(refused.status, StatusCode::CONFLICT, "{}", refused.text);
    let page = get(&app, &format!("/c/{id}")).await;
    assert!(!page.text.contains(r#"class="continue""#));
}
