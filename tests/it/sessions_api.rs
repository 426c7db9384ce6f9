//! The conversations API driven through the router with `oneshot`, on the stub model and a
//! conversation store in a temporary data directory: create, list, search, rename, settings,
//! messages answered by the engine (JSON and SSE), export and import, delete, and the error
//! statuses.

use crate::common;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use common::{stored_app, StoredApp};
use serde_json::{json, Value};
use tower::ServiceExt;

async fn harness() -> StoredApp {
    stored_app(0.0).await
}

/// Sends a request; returns the status, the content type and the body text.
async fn call(
    app: &Router,
    method: Method,
    uri: &str,
    body: Option<&str>,
) -> (StatusCode, String, String) {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_owned())))
        .expect("request");
    let response = app.clone().oneshot(request).await.expect("response");
    let status = response.status();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    (
        status,
        content_type,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

async fn call_json(
    app: &Router,
    method: Method,
    uri: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let body = body.map(|b| b.to_string());
    let (status, _, text) = call(app, method, uri, body.as_deref()).await;
    let value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|err| panic!("{err}: {text}"))
    };
    (status, value)
}

fn ids(list: &Value) -> Vec<String> {
    list["data"]
        .as_array()
        .expect("data array")
        .iter()
        .map(|c| c["id"].as_str().expect("id").to_owned())
        .collect()
}

#[tokio::test]
async fn conversation_lifecycle() {
    let h = harness().await;
    let (status, first) = call_json(&h.app, Method::POST, "/api/conversations", None).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    assert_eq!(first["title"], Value::Null);
    let id = first["id"].as_str().expect("id").to_owned();

    let (status, second) = call_json(
        &h.app,
        Method::POST,
        "/api/conversations",
        Some(
            json!({"title": "Holiday plans", "settings": {"thinking": false, "temperature": 0.0}}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{second}");
    let second_id = second["id"].as_str().expect("id").to_owned();

    let (_, list) = call_json(&h.app, Method::GET, "/api/conversations", None).await;
    assert_eq!(ids(&list), vec![second_id.clone(), id.clone()]);

    // A message answered by the stub, as one JSON object.
    let (status, reply) = call_json(
        &h.app,
        Method::POST,
        &format!("/api/conversations/{id}/messages"),
        Some(json!({"content": "What is a borrow checker?"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["user_message"]["role"], "user");
    let answer = &reply["assistant_message"];
    assert_eq!(answer["status"], "complete");
    assert_eq!(answer["finish_reason"], "stop");
    assert!(
        answer["content"]
            .as_str()
            .expect("content")
            .contains("stub answer"),
        "{answer}"
    );
    assert!(
        !answer["reasoning"].as_str().expect("reasoning").is_empty(),
        "thinking is on by default"
    );
    assert!(
        answer["stats"]["completion_tokens"]
            .as_i64()
            .expect("tokens")
            > 0
    );

    let (_, conversation) = call_json(
        &h.app,
        Method::GET,
        &format!("/api/conversations/{id}"),
        None,
    )
    .await;
    assert_eq!(conversation["title"], "What is a borrow checker?");
    let (_, list) = call_json(&h.app, Method::GET, "/api/conversations", None).await;
    assert_eq!(ids(&list)[0], id, "the answered conversation comes first");

    // Search over titles and message text.
    let (_, found) = call_json(
        &h.app,
        Method::GET,
        "/api/conversations?q=borrow%20checker",
        None,
    )
    .await;
    assert_eq!(ids(&found), vec![id.clone()]);
    let (_, found) = call_json(&h.app, Method::GET, "/api/conversations?q=holiday", None).await;
    assert_eq!(ids(&found), vec![second_id.clone()]);

    // Settings apply to the next answer: thinking off means no reasoning.
    let (status, reply) = call_json(
        &h.app,
        Method::POST,
        &format!("/api/conversations/{second_id}/messages"),
        Some(json!({"content": "Plan a trip"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["assistant_message"]["reasoning"], Value::Null);

    // Rename and change settings.
    let (status, renamed) = call_json(
        &h.app,
        Method::PATCH,
        &format!("/api/conversations/{id}"),
        Some(json!({"title": "Rust questions", "settings": {"system_prompt": "Be brief."}})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{renamed}");
    assert_eq!(renamed["title"], "Rust questions");
    assert_eq!(renamed["settings"]["system_prompt"], "Be brief.");

    // Streaming: a `message` event, deltas, then `done` with the stored answer.
    let (status, content_type, text) = call(
        &h.app,
        Method::POST,
        &format!("/api/conversations/{id}/messages"),
        Some(r#"{"content": "And lifetimes?", "stream": true}"#),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert!(
        content_type.starts_with("text/event-stream"),
        "{content_type}"
    );
    let events: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    assert_eq!(events.first(), Some(&"message"), "{text}");
    assert_eq!(events.last(), Some(&"done"), "{text}");
    assert!(
        events.contains(&"content") && events.contains(&"reasoning"),
        "{text}"
    );
    let streamed: String = text
        .lines()
        .zip(text.lines().skip(1))
        .filter(|(e, _)| *e == "event: content")
        .filter_map(|(_, d)| d.strip_prefix("data: "))
        .map(|d| {
            serde_json::from_str::<Value>(d).expect("json")["text"]
                .as_str()
                .expect("text")
                .to_owned()
        })
        .collect();

    let (_, messages) = call_json(
        &h.app,
        Method::GET,
        &format!("/api/conversations/{id}/messages"),
        None,
    )
    .await;
    let messages = messages["data"].as_array().expect("messages").clone();
    assert_eq!(messages.len(), 4);
    assert_eq!(
        messages
            .iter()
            .map(|m| m["role"].as_str().expect("role"))
            .collect::<Vec<_>>(),
        ["user", "assistant", "user", "assistant"]
    );
    assert_eq!(messages[3]["content"].as_str(), Some(streamed.as_str()));
    assert!(messages.iter().all(|m| m["status"] == "complete"));

    // Export as Markdown and JSONL; the JSONL imports back unchanged.
    let (status, content_type, markdown) = call(
        &h.app,
        Method::GET,
        &format!("/api/conversations/{id}/export?format=md"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(content_type.starts_with("text/markdown"), "{content_type}");
    assert!(markdown.starts_with("# Rust questions\n"), "{markdown}");
    assert!(
        markdown.contains("## System prompt\n\nBe brief."),
        "{markdown}"
    );
    let (status, content_type, jsonl) = call(
        &h.app,
        Method::GET,
        &format!("/api/conversations/{id}/export?format=jsonl"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        content_type.starts_with("application/jsonl"),
        "{content_type}"
    );
    assert_eq!(jsonl.lines().count(), 4);
    let line: Value = serde_json::from_str(jsonl.lines().nth(1).expect("line")).expect("json");
    assert!(line["reasoning_content"].is_string(), "{line}");
    let (status, _, imported) = call(
        &h.app,
        Method::POST,
        "/api/conversations/import?title=Copy",
        Some(&jsonl),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{imported}");
    let imported: Value = serde_json::from_str(&imported).expect("json");
    assert_eq!(imported["title"], "Copy");
    let copy = imported["id"].as_str().expect("id");
    let (_, _, again) = call(
        &h.app,
        Method::GET,
        &format!("/api/conversations/{copy}/export?format=jsonl"),
        None,
    )
    .await;
    assert_eq!(again, jsonl);

    // Delete really deletes.
    let (status, _) = call_json(
        &h.app,
        Method::DELETE,
        &format!("/api/conversations/{id}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, err) = call_json(
        &h.app,
        Method::GET,
        &format!("/api/conversations/{id}/messages"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        err["error"]["message"]
            .as_str()
            .expect("message")
            .contains(&id),
        "{err}"
    );
    let (_, found) = call_json(&h.app, Method::GET, "/api/conversations?q=borrow", None).await;
    assert_eq!(
        ids(&found),
        vec![copy.to_owned()],
        "only the copy still holds the text"
    );
}

#[tokio::test]
async fn oversized_titles_and_searches_are_refused_with_400() {
    let h = harness().await;
    // SQLite refuses LIKE patterns over 50,000 bytes: this search was a 500.
    let long = "a".repeat(50_000);
    let (status, _, body) = call(
        &h.app,
        Method::GET,
        &format!("/api/conversations?q={long}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("`q` has 50000 bytes; at most 200"), "{body}");
    // A 7 MB title was stored as given.
    let title = serde_json::json!({ "title": "t".repeat(7 << 20) }).to_string();
    let (status, _, body) = call(&h.app, Method::POST, "/api/conversations", Some(&title)).await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "{}",
        &body[..body.len().min(300)]
    );
    assert!(
        body.contains("`title` has 7340032 bytes"),
        "{}",
        &body[..body.len().min(300)]
    );
    let (_, created) = call_json(&h.app, Method::POST, "/api/conversations", None).await;
    let id = created["id"].as_str().expect("id");
    let rename = serde_json::json!({ "title": "r".repeat(201) }).to_string();
    let uri = format!("/api/conversations/{id}");
    let (status, _, body) = call(&h.app, Method::PATCH, &uri, Some(&rename)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, _, _) = call(
        &h.app,
        Method::GET,
        &format!("/api/conversations?q={}", "a".repeat(200)),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn errors_are_clear_and_have_the_right_status() {
    let h = harness().await;
    let (_, created) = call_json(&h.app, Method::POST, "/api/conversations", None).await;
    let id = created["id"].as_str().expect("id").to_owned();
    let cases: Vec<(Method, String, Option<&str>, StatusCode, &str)> = vec![
        (
            Method::GET,
            "/api/conversations/conv_nope".into(),
            None,
            StatusCode::NOT_FOUND,
            "no conversation with id `conv_nope`",
        ),
        (
            Method::DELETE,
            "/api/conversations/conv_nope".into(),
            None,
            StatusCode::NOT_FOUND,
            "conv_nope",
        ),
        (
            Method::PATCH,
            "/api/conversations/conv_nope".into(),
            Some("{}"),
            StatusCode::NOT_FOUND,
            "conv_nope",
        ),
        (
            Method::POST,
            "/api/conversations/conv_nope/messages".into(),
            Some(r#"{"content": "hi"}"#),
            StatusCode::NOT_FOUND,
            "conv_nope",
        ),
        (
            Method::GET,
            "/api/conversations/conv_nope/export".into(),
            None,
            StatusCode::NOT_FOUND,
            "conv_nope",
        ),
        (
            Method::POST,
            format!("/api/conversations/{id}/messages"),
            Some(r#"{"content": "  "}"#),
            StatusCode::BAD_REQUEST,
            "`content` must not be empty",
        ),
        (
            Method::POST,
            format!("/api/conversations/{id}/messages"),
            Some(r#"{"text": "hi"}"#),
            StatusCode::BAD_REQUEST,
            "unknown field `text`",
        ),
        (
            Method::POST,
            format!("/api/conversations/{id}/messages"),
            Some("{"),
            StatusCode::BAD_REQUEST,
            "not valid JSON",
        ),
        (
            Method::PATCH,
            format!("/api/conversations/{id}"),
            Some(r#"{"settings": {"temperature": -1}}"#),
            StatusCode::BAD_REQUEST,
            "settings.temperature",
        ),
        (
            Method::PATCH,
            format!("/api/conversations/{id}"),
            Some(r#"{"settings": {"colour": "red"}}"#),
            StatusCode::BAD_REQUEST,
            "unknown field `colour`",
        ),
        (
            Method::GET,
            format!("/api/conversations/{id}/export?format=pdf"),
            None,
            StatusCode::BAD_REQUEST,
            "`format` must be `md` or `jsonl`",
        ),
        (
            Method::POST,
            "/api/conversations/import".into(),
            Some("{\"role\": \"user\"}\n{oops"),
            StatusCode::BAD_REQUEST,
            "line 2",
        ),
        (
            Method::POST,
            "/api/conversations/import".into(),
            Some(""),
            StatusCode::BAD_REQUEST,
            "no message",
        ),
    ];
    for (method, uri, body, status, needle) in cases {
        let (got, _, text) = call(&h.app, method.clone(), &uri, body).await;
        assert_eq!(got, status, "{method} {uri}: {text}");
        let value: Value = serde_json::from_str(&text)
            .unwrap_or_else(|err| panic!("{method} {uri}: {err}: {text}"));
        let message = value["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(needle),
            "{method} {uri}: {message:?} lacks {needle:?}"
        );
    }
    // A refused message leaves nothing behind.
    let (_, messages) = call_json(
        &h.app,
        Method::GET,
        &format!("/api/conversations/{id}/messages"),
        None,
    )
    .await;
    assert_eq!(messages["data"], json!([]));
}
