//! The agent loop with the built-in tools, through the router on the stub model: with a
//! conversation's `builtin_tools` on, "What is 17 * (3+4)?" makes the stub call the
//! calculator, the server runs it, stores the call and a tool message holding "119", and
//! the stub's next round reports it — over the conversations API (JSON and SSE) and the
//! chat page (its stream and the stored view). With the setting off, no tools are offered.

use crate::common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use common::{stored_app, StoredApp};
use serde_json::{json, Value};
use tower::ServiceExt;

/// Longest a test waits for a response body (a whole answer of several rounds).
const ANSWER_WAIT: Duration = Duration::from_secs(60);

const QUESTION: &str = "What is 17 * (3+4)?";

async fn harness() -> StoredApp {
    stored_app(0.0).await
}

/// Sends `request`; returns the status, the headers and the whole body as text.
async fn send(app: &Router, request: Request<Body>) -> (StatusCode, header::HeaderMap, String) {
    let response = app.clone().oneshot(request).await.expect("infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = tokio::time::timeout(
        ANSWER_WAIT,
        axum::body::to_bytes(response.into_body(), usize::MAX),
    )
    .await
    .expect("the body ends")
    .expect("body");
    (
        status,
        headers,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

async fn api(app: &Router, method: Method, uri: &str, body: Option<Value>) -> (StatusCode, String) {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .expect("request");
    let (status, _, text) = send(app, request).await;
    (status, text)
}

async fn api_json(app: &Router, method: Method, uri: &str, body: Option<Value>) -> Value {
    let (status, text) = api(app, method, uri, body).await;
    assert!(status.is_success(), "{status}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|err| panic!("{err}: {text}"))
}

fn form(uri: &str, body: String) -> Request<Body> {
    Request::post(uri)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header("HX-Request", "true")
        .body(Body::from(body))
        .expect("request")
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).expect("request")
}

/// A conversation created through the API with `settings`.
async fn conversation(app: &Router, settings: Value) -> String {
    let created = api_json(
        app,
        Method::POST,
        "/api/conversations",
        Some(json!({ "settings": settings })),
    )
    .await;
    created["id"].as_str().expect("id").to_owned()
}

async fn messages(app: &Router, id: &str) -> Vec<Value> {
    let list = api_json(
        app,
        Method::GET,
        &format!("/api/conversations/{id}/messages"),
        None,
    )
    .await;
    list["data"]
        .as_array()
        .unwrap_or_else(|| panic!("a message list: {list}"))
        .clone()
}

/// `(event, data)` of each SSE event in `text`.
fn sse_events(text: &str) -> Vec<(String, String)> {
    text.split("\n\n")
        .filter_map(|block| {
            let mut name = None;
            let mut data = Vec::new();
            for line in block.lines() {
                if let Some(value) = line.strip_prefix("event: ") {
                    name = Some(value.to_owned());
                } else if let Some(value) = line.strip_prefix("data: ") {
                    data.push(value);
                } else if line == "data:" {
                    data.push("");
                }
            }
            Some((name?, data.join("\n")))
        })
        .collect()
}

/// The stored turn of one question: user, the assistant's calculator call, the tool
/// message answering it with "119", and the final answer reporting it.
fn assert_tool_turn(stored: &[Value]) {
    let roles: Vec<&str> = stored.iter().filter_map(|m| m["role"].as_str()).collect();
    assert_eq!(
        roles,
        ["user", "assistant", "tool", "assistant"],
        "{stored:#?}"
    );
    assert_eq!(stored[0]["content"], QUESTION);
    let call = &stored[1];
    assert_eq!(call["status"], "complete", "{call}");
    assert_eq!(call["finish_reason"], "tool_calls", "{call}");
    let function = &call["tool_calls"][0]["function"];
    assert_eq!(function["name"], "calculator", "{call}");
    let arguments: Value =
        serde_json::from_str(function["arguments"].as_str().expect("arguments text"))
            .expect("arguments JSON");
    assert!(
        arguments["expression"]
            .as_str()
            .is_some_and(|e| e.contains("17")),
        "{arguments}"
    );
    let result = &stored[2];
    assert_eq!(result["content"], "119", "{result}");
    assert_eq!(
        result["tool_call_id"], call["tool_calls"][0]["id"],
        "{result}"
    );
    let answer = &stored[3];
    assert_eq!(answer["status"], "complete", "{answer}");
    assert!(answer["tool_calls"].is_null(), "{answer}");
    assert!(
        answer["content"]
            .as_str()
            .is_some_and(|c| c.contains("119")),
        "{answer}"
    );
}

#[tokio::test]
async fn the_api_runs_the_calculator_and_streams_its_result() {
    let h = harness().await;
    let id = conversation(&h.app, json!({ "builtin_tools": true, "thinking": false })).await;
    let (status, text) = api(
        &h.app,
        Method::POST,
        &format!("/api/conversations/{id}/messages"),
        Some(json!({ "content": QUESTION, "stream": true })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let events = sse_events(&text);
    let names: Vec<&str> = events.iter().map(|(name, _)| name.as_str()).collect();
    let call_at = names.iter().position(|n| *n == "tool_call").expect(&text);
    let result_at = names.iter().position(|n| *n == "tool_result").expect(&text);
    assert!(call_at < result_at, "{names:?}");
    assert_eq!(names.last(), Some(&"done"), "{names:?}");
    let result: Value = serde_json::from_str(&events[result_at].1).expect("JSON");
    assert_eq!(result["name"], "calculator");
    assert_eq!(result["content"], "119");
    assert_eq!(result["is_error"], false);
    let done: Value = serde_json::from_str(&events.last().expect("done").1).expect("JSON");
    assert!(
        done["message"]["content"]
            .as_str()
            .is_some_and(|c| c.contains("119")),
        "the done event carries the final answer: {done}"
    );

    let stored = messages(&h.app, &id).await;
    assert_tool_turn(&stored);
    assert_eq!(result["call_id"], stored[1]["tool_calls"][0]["id"]);
    assert_eq!(done["message"]["id"], stored[3]["id"]);

    // The JSON form answers with the final message, after the same loop.
    let reply = api_json(
        &h.app,
        Method::POST,
        &format!("/api/conversations/{id}/messages"),
        Some(json!({ "content": QUESTION })),
    )
    .await;
    assert!(
        reply["assistant_message"]["content"]
            .as_str()
            .is_some_and(|c| c.contains("119")),
        "{reply}"
    );
    assert_tool_turn(&messages(&h.app, &id).await[4..]);

    // The tool message goes out and back through JSONL unchanged.
    let (status, jsonl) = api(
        &h.app,
        Method::GET,
        &format!("/api/conversations/{id}/export?format=jsonl"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{jsonl}");
    let tool_line: Value =
        serde_json::from_str(jsonl.lines().nth(2).expect("line 3")).expect("JSON");
    assert_eq!(tool_line["role"], "tool");
    assert_eq!(tool_line["content"], "119");
    assert_eq!(tool_line["tool_call_id"], stored[1]["tool_calls"][0]["id"]);
}

#[tokio::test]
async fn without_the_setting_the_api_offers_no_tools() {
    let h = harness().await;
    let id = conversation(&h.app, json!({ "thinking": false })).await;
    let reply = api_json(
        &h.app,
        Method::POST,
        &format!("/api/conversations/{id}/messages"),
        Some(json!({ "content": QUESTION })),
    )
    .await;
    assert!(
        reply["assistant_message"]["tool_calls"].is_null(),
        "{reply}"
    );
    let stored = messages(&h.app, &id).await;
    let roles: Vec<&str> = stored.iter().filter_map(|m| m["role"].as_str()).collect();
    assert_eq!(roles, ["user", "assistant"]);
}

/// The exchange's stream URL in the HTML `/chat/send` answers with.
fn stream_url(html: &str) -> String {
    let start = html.find("sse-connect=\"").expect(html) + "sse-connect=\"".len();
    let end = html[start..].find('"').expect("closing quote");
    html[start..start + end].to_owned()
}

#[tokio::test]
async fn the_page_shows_the_result_live_and_stored() {
    let h = harness().await;
    // The settings form turns the tools on (and creates the conversation).
    let (status, headers, html) = send(
        &h.app,
        form(
            "/chat/settings",
            "conversation=&system_prompt=&builtin_tools=on".to_owned(),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert!(
        html.contains("name=\"builtin_tools\" value=\"on\" checked"),
        "{html}"
    );
    let id = headers
        .get("hx-push-url")
        .and_then(|url| url.to_str().ok())
        .and_then(|url| url.strip_prefix("/c/"))
        .expect("a new conversation")
        .to_owned();
    let settings = api_json(
        &h.app,
        Method::GET,
        &format!("/api/conversations/{id}"),
        None,
    )
    .await;
    assert_eq!(settings["settings"]["builtin_tools"], true, "{settings}");

    let body = format!("conversation={id}&message=What+is+17+*+(3%2B4)%3F");
    let (status, _, html) = send(&h.app, form("/chat/send", body)).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    let (status, _, stream) = send(&h.app, get(&stream_url(&html))).await;
    assert_eq!(status, StatusCode::OK);
    let tool_events: Vec<String> = sse_events(&stream)
        .into_iter()
        .filter(|(name, _)| name == "tool")
        .map(|(_, data)| data)
        .collect();
    assert_eq!(tool_events.len(), 2, "a call and its result: {stream}");
    assert!(tool_events[0].contains("tool-card") && tool_events[0].contains("calculator"));
    assert!(!tool_events[0].contains("Not run"), "{}", tool_events[0]);
    assert!(
        tool_events[1].contains("tool-output") && tool_events[1].contains("119"),
        "{}",
        tool_events[1]
    );
    assert_tool_turn(&messages(&h.app, &id).await);

    let (status, _, page) = send(&h.app, get(&format!("/c/{id}"))).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("tool-output"), "the stored result is shown");
    assert!(page.contains("class=\"tool-value\">119</span>"), "{page}");
    assert!(!page.contains("Not run"));

    // Unticking the box stores the setting off.
    let (status, _, html) = send(
        &h.app,
        form(
            "/chat/settings",
            format!("conversation={id}&system_prompt="),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{html}");
    let settings = api_json(
        &h.app,
        Method::GET,
        &format!("/api/conversations/{id}"),
        None,
    )
    .await;
    assert!(
        settings["settings"]["builtin_tools"].is_null(),
        "{settings}"
    );
}

#[tokio::test]
async fn without_the_setting_the_page_offers_no_tools() {
    let h = harness().await;
    let id = conversation(&h.app, json!({ "thinking": false })).await;
    // `tools=on`, the field of the composer's former "Demo tools" box, is ignored.
    let body = format!("conversation={id}&message=What+is+17+*+(3%2B4)%3F&tools=on");
    let (status, _, html) = send(&h.app, form("/chat/send", body)).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    let (_, _, stream) = send(&h.app, get(&stream_url(&html))).await;
    assert!(
        !sse_events(&stream).iter().any(|(name, _)| name == "tool"),
        "no call: {stream}"
    );
    let stored = messages(&h.app, &id).await;
    let roles: Vec<&str> = stored.iter().filter_map(|m| m["role"].as_str()).collect();
    assert_eq!(roles, ["user", "assistant"], "{stored:#?}");
    assert!(stored[1]["tool_calls"].is_null(), "{stored:#?}");
}
