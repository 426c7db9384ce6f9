//! A chat run belongs to its conversation, not to the tab: on the stub model at a pace slow
//! enough to leave mid-answer, two readers of one answer get the same events, a reader that
//! leaves does not stop the answer (it is stored complete and reopening the chat streams
//! it on), a reconnect with `Last-Event-ID` gets exactly the rest, and Stop still cancels
//! and stores the partial answer as stopped. The conversations API streams its runs the same
//! way, and resumes them at `GET /api/conversations/{id}/stream`.

use crate::common;

use std::time::Duration;

use axum::body::{Body, BodyDataStream};
use axum::http::{header, Request, StatusCode};
use axum::Router;
use common::{stored_app, StoredApp};
use futures_util::StreamExt;
use serde_json::Value;
use tower::ServiceExt;

/// Slow enough that a reader can leave after a few pieces of reasoning, fast enough that
/// the whole answer takes a couple of seconds.
const PACE: f64 = 150.0;

/// Longest a test waits for an answer to end.
const ANSWER_WAIT: Duration = Duration::from_secs(60);

async fn harness() -> StoredApp {
    stored_app(PACE).await
}

async fn respond(app: &Router, request: Request<Body>) -> axum::response::Response {
    app.clone().oneshot(request).await.expect("infallible")
}

async fn text(app: &Router, request: Request<Body>) -> (StatusCode, axum::http::HeaderMap, String) {
    let response = respond(app, request).await;
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    (
        status,
        headers,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
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

/// A new chat with a thinking answer on its way: its conversation id and stream URL.
async fn start_chat(app: &Router, conversation: &str) -> (String, String) {
    let body = format!("conversation={conversation}&message=Tell+me+something&thinking=on");
    let (status, headers, html) = text(app, form("/chat/send", body)).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    let conversation = match headers.get("hx-push-url") {
        Some(url) => url.to_str().expect("ascii")["/c/".len()..].to_owned(),
        None => conversation.to_owned(),
    };
    (
        conversation,
        stream_url(&html).expect("an exchange streams"),
    )
}

fn stream_url(html: &str) -> Option<String> {
    let start = html.find("sse-connect=\"")? + "sse-connect=\"".len();
    let end = html[start..].find('"')?;
    Some(html[start..start + end].to_owned())
}

/// One SSE event of the page's stream.
#[derive(Debug, Clone, PartialEq)]
struct SseEvent {
    id: Option<u64>,
    event: String,
    data: String,
}

/// Reads an SSE body event by event; dropping it is the client going away.
struct Reader {
    body: BodyDataStream,
    buffer: String,
}

impl Reader {
    async fn open(app: &Router, url: &str, last_event_id: Option<u64>) -> Self {
        let mut request = Request::get(url);
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id.to_string());
        }
        let response = respond(app, request.body(Body::empty()).expect("request")).await;
        assert_eq!(response.status(), StatusCode::OK);
        Self {
            body: response.into_body().into_data_stream(),
            buffer: String::new(),
        }
    }

    /// The next event (keep-alive comments skipped); `None` at the end of the body.
    async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = SseEvent {
                    id: None,
                    event: String::new(),
                    data: String::new(),
                };
                let mut data = Vec::new();
                for line in block.lines() {
                    if let Some(name) = line.strip_prefix("event: ") {
                        event.event = name.to_owned();
                    } else if let Some(id) = line.strip_prefix("id: ") {
                        event.id = Some(id.parse().expect("numeric id"));
                    } else if let Some(text) = line.strip_prefix("data: ") {
                        data.push(text);
                    } else if line == "data:" {
                        data.push("");
                    }
                }
                if event.event.is_empty() {
                    continue;
                }
                event.data = data.join("\n");
                return Some(event);
            }
            let chunk = tokio::time::timeout(ANSWER_WAIT, self.body.next())
                .await
                .expect("the stream goes on")?
                .expect("body chunk");
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    async fn rest(mut self) -> Vec<SseEvent> {
        let mut out = Vec::new();
        while let Some(event) = self.next().await {
            out.push(event);
        }
        out
    }

    /// Events until `count` reasoning pieces have come; the last one read carries an id.
    async fn until_reasoning(&mut self, count: usize) -> Vec<SseEvent> {
        let mut out = Vec::new();
        while out
            .iter()
            .filter(|e: &&SseEvent| e.event == "reasoning")
            .count()
            < count
        {
            out.push(self.next().await.expect("more reasoning before the end"));
        }
        out
    }
}

fn reasoning(events: &[SseEvent]) -> String {
    events
        .iter()
        .filter(|e| e.event == "reasoning")
        .map(|e| e.data.as_str())
        .collect()
}

/// The answer's HTML as the page shows it last.
fn last_answer(events: &[SseEvent]) -> Option<&str> {
    events
        .iter()
        .rev()
        .find(|e| e.event == "answer")
        .map(|e| e.data.as_str())
}

/// Everything but the answer's Markdown renders, which come once per batch of text and so
/// depend on how fast each reader reads.
fn without_answer_renders(events: &[SseEvent]) -> Vec<SseEvent> {
    events
        .iter()
        .filter(|e| !e.event.starts_with("answer"))
        .cloned()
        .collect()
}

fn assert_ids_increase(events: &[SseEvent], after: u64) {
    let mut last = after;
    for event in events.iter().filter(|e| e.id.is_some()) {
        let id = event.id.expect("id");
        assert!(id > last, "id {id} after {last}: {events:#?}");
        last = id;
    }
}

/// The conversation's stored messages, through the API.
async fn messages(app: &Router, conversation: &str) -> Vec<Value> {
    let url = format!("/api/conversations/{conversation}/messages");
    let (status, _, body) = text(app, get(&url)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let value: Value = serde_json::from_str(&body).expect("json");
    value["data"].as_array().expect("list").clone()
}

/// Waits until the conversation holds an answer, and returns it.
async fn stored_answer(app: &Router, conversation: &str) -> Value {
    let deadline = tokio::time::Instant::now() + ANSWER_WAIT;
    loop {
        let stored = messages(app, conversation).await;
        if let Some(answer) = stored.iter().find(|m| m["role"] == "assistant") {
            return answer.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no answer was stored"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn two_readers_of_one_answer_get_the_same_events() {
    let h = harness().await;
    let (_, url) = start_chat(&h.app, "").await;
    let first = Reader::open(&h.app, &url, None).await;
    let second = Reader::open(&h.app, &url, None).await;
    let (first, second) = tokio::join!(first.rest(), second.rest());
    assert!(first.iter().any(|e| e.event == "done"), "{first:#?}");
    assert!(!reasoning(&first).is_empty(), "the stub thinks first");
    assert_eq!(
        without_answer_renders(&first),
        without_answer_renders(&second)
    );
    assert_eq!(last_answer(&first), last_answer(&second));
    assert!(last_answer(&first).is_some_and(|a| !a.is_empty()));
    assert_ids_increase(&first, 0);
    assert_ids_increase(&second, 0);
}

#[tokio::test]
async fn a_reader_leaving_mid_answer_does_not_stop_it() {
    let h = harness().await;
    let (conversation, url) = start_chat(&h.app, "").await;
    let mut reader = Reader::open(&h.app, &url, None).await;
    reader.until_reasoning(2).await;
    drop(reader);

    // Reopening the chat shows the answer streaming on, from its start.
    let (status, _, page) = text(&h.app, get(&format!("/c/{conversation}"))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(stream_url(&page).as_deref(), Some(url.as_str()), "{page}");
    assert!(page.contains("msg assistant streaming"));
    let resumed = Reader::open(&h.app, &url, None).await.rest().await;
    assert!(resumed.iter().any(|e| e.event == "done"));
    assert!(
        !resumed.iter().any(|e| e.data.contains("Stopped.")),
        "{resumed:#?}"
    );

    let answer = stored_answer(&h.app, &conversation).await;
    assert_eq!(answer["status"], "complete", "{answer}");
    assert_eq!(answer["finish_reason"], "stop");
    assert!(!answer["content"].as_str().unwrap_or_default().is_empty());
    assert!(!answer["reasoning"].as_str().unwrap_or_default().is_empty());

    // Once stored, the chat shows it as a finished answer, not a stream.
    let (_, _, page) = text(&h.app, get(&format!("/c/{conversation}"))).await;
    assert_eq!(stream_url(&page), None);
}

#[tokio::test]
async fn a_reconnect_with_last_event_id_gets_exactly_the_rest() {
    let h = harness().await;
    let (_, url) = start_chat(&h.app, "").await;
    let whole = tokio::spawn({
        let (app, url) = (h.app.clone(), url.clone());
        async move { Reader::open(&app, &url, None).await.rest().await }
    });
    let mut reader = Reader::open(&h.app, &url, None).await;
    let before = reader.until_reasoning(3).await;
    drop(reader);
    let last = before
        .last()
        .and_then(|e| e.id)
        .expect("a reasoning piece has an id");
    let after = Reader::open(&h.app, &url, Some(last)).await.rest().await;
    let whole = whole.await.expect("reader task");

    assert_ids_increase(&before, 0);
    assert_ids_increase(&after, last);
    let mut joined = before.clone();
    joined.extend(after.iter().cloned());
    assert_eq!(
        reasoning(&joined),
        reasoning(&whole),
        "no piece repeated or lost"
    );
    assert_eq!(
        without_answer_renders(&joined),
        without_answer_renders(&whole)
    );
    assert_eq!(last_answer(&after), last_answer(&whole));
    assert_eq!(after.iter().filter(|e| e.event == "done").count(), 1);

    // A reader that saw the end and reconnects gets nothing more.
    let end = whole.iter().filter_map(|e| e.id).max().expect("ids");
    assert_eq!(
        Reader::open(&h.app, &url, Some(end)).await.rest().await,
        vec![]
    );
}

/// The page's answer as a browser builds it from the updates before the whole answer comes:
/// settled blocks appended, the block being written replaced.
fn pieced_answer(events: &[SseEvent]) -> String {
    let (mut settled, mut tail) = (String::new(), String::new());
    for event in events.iter().take_while(|e| e.event != "answer") {
        match event.event.as_str() {
            "answer-settled" => settled.push_str(&event.data),
            "answer-tail" => tail = event.data.clone(),
            _ => {}
        }
    }
    settled + &tail
}

/// The text of `html`, without tags or whitespace, to compare renders made in pieces with
/// one made whole.
fn visible_text(html: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag && !c.is_whitespace() => out.push(c),
            _ => {}
        }
    }
    out
}

/// Issue 14, finding 10: the answer streams as what changed (settled blocks once, the block
/// being written again), not whole on every update; a reconnect mid-answer gets the rest of
/// the pieces with nothing repeated, and the end sends the answer whole.
#[tokio::test]
async fn the_answer_streams_as_changes_and_resumes_without_repeats() {
    let h = harness().await;
    let (_, url) = start_chat(&h.app, "").await;
    let whole = tokio::spawn({
        let (app, url) = (h.app.clone(), url.clone());
        async move { Reader::open(&app, &url, None).await.rest().await }
    });
    let mut reader = Reader::open(&h.app, &url, None).await;
    let mut before = Vec::new();
    while before
        .iter()
        .filter(|e: &&SseEvent| e.event == "answer-tail")
        .count()
        < 3
        || !before
            .iter()
            .any(|e: &SseEvent| e.event == "answer-settled")
    {
        before.push(
            reader
                .next()
                .await
                .expect("more of the answer before its end"),
        );
    }
    drop(reader);
    let last = before
        .iter()
        .rev()
        .find_map(|e| e.id)
        .expect("an update has an id");
    let after = Reader::open(&h.app, &url, Some(last)).await.rest().await;
    let whole = whole.await.expect("reader task");
    assert_ids_increase(&after, last);

    let full = last_answer(&whole).expect("the whole answer at the end");
    let mut joined = before.clone();
    joined.extend(after.iter().cloned());
    assert_eq!(last_answer(&joined), Some(full));
    assert_eq!(visible_text(&pieced_answer(&whole)), visible_text(full));
    assert_eq!(
        visible_text(&pieced_answer(&joined)),
        visible_text(full),
        "resumed pieces: nothing repeated, nothing lost"
    );

    // What was sent: each settled block once, and the block being written, never the whole
    // answer again and again.
    let bytes = |name: &str| -> Vec<usize> {
        whole
            .iter()
            .filter(|e| e.event == name)
            .map(|e| e.data.len())
            .collect()
    };
    let (settled, tails) = (bytes("answer-settled"), bytes("answer-tail"));
    assert!(
        settled.len() > 1 && tails.len() > 3,
        "{settled:?} {tails:?}"
    );
    assert!(
        settled.iter().sum::<usize>() <= full.len() + 256,
        "{settled:?} of {}",
        full.len()
    );
    assert!(
        tails.iter().sum::<usize>() < tails.len() * full.len() / 2,
        "{tails:?} of {}",
        full.len()
    );
    assert_eq!(whole.iter().filter(|e| e.event == "answer").count(), 1);
}

#[tokio::test]
async fn stop_cancels_and_stores_the_partial_answer_as_stopped() {
    let h = harness().await;
    let (conversation, url) = start_chat(&h.app, "").await;
    let mut reader = Reader::open(&h.app, &url, None).await;
    reader.until_reasoning(2).await;
    let id = url.trim_start_matches("/chat/stream/");
    let (status, _, body) = text(&h.app, form(&format!("/chat/stop/{id}"), String::new())).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    // Stop answers once the answer is stored: it is there, and the chat takes a new message.
    let stored = messages(&h.app, &conversation).await;
    let answer = stored
        .iter()
        .find(|m| m["role"] == "assistant")
        .expect("the partial answer is stored");
    assert_eq!(answer["status"], "stopped", "{answer}");
    assert!(!answer["reasoning"].as_str().unwrap_or_default().is_empty());
    let rest = reader.rest().await;
    let done = rest.iter().find(|e| e.event == "done").expect("done");
    assert!(done.data.contains("Stopped."), "{rest:#?}");
    assert!(!done.data.contains("tokens/s"));
    let (_, next_url) = start_chat(&h.app, &conversation).await;
    assert_ne!(next_url, url);
}

/// A new conversation made through the conversations API; its id.
async fn api_conversation(app: &Router) -> String {
    let request = Request::post("/api/conversations")
        .body(Body::empty())
        .expect("request");
    let (status, _, created) = text(app, request).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let created: Value = serde_json::from_str(&created).expect("json");
    created["id"].as_str().expect("id").to_owned()
}

/// Sends a message through the conversations API and reads its SSE answer.
async fn api_send(app: &Router, conversation: &str) -> Reader {
    let request = Request::post(format!("/api/conversations/{conversation}/messages"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(
            r#"{"content": "Tell me something", "stream": true}"#,
        ))
        .expect("request");
    let response = respond(app, request).await;
    assert_eq!(response.status(), StatusCode::OK);
    Reader {
        body: response.into_body().into_data_stream(),
        buffer: String::new(),
    }
}

#[tokio::test]
async fn the_api_stream_resumes_after_last_event_id_and_leaving_cancels_nothing() {
    let h = harness().await;
    let conversation = api_conversation(&h.app).await;

    let mut reader = api_send(&h.app, &conversation).await;
    let start = reader.next().await.expect("message");
    assert_eq!((start.event.as_str(), start.id), ("message", None));
    let before = reader.until_reasoning(2).await;
    drop(reader);
    let last = before.last().and_then(|e| e.id).expect("ids");
    let busy = api_send_status(&h.app, &conversation).await;
    assert_eq!(busy, StatusCode::CONFLICT, "one answer at a time");

    let url = format!("/api/conversations/{conversation}/stream");
    let after = Reader::open(&h.app, &url, Some(last)).await.rest().await;
    assert_ids_increase(&after, last);
    let done = after.last().expect("events");
    assert_eq!(done.event, "done", "{after:#?}");
    let message: Value = serde_json::from_str(&done.data).expect("json");
    assert_eq!(message["message"]["status"], "complete");
    let mut joined = before;
    joined.extend(after);
    let stored = message["message"]["reasoning"].as_str().expect("reasoning");
    let streamed: String = joined
        .iter()
        .filter(|e| e.event == "reasoning")
        .map(|e| {
            serde_json::from_str::<Value>(&e.data).expect("json")["text"]
                .as_str()
                .expect("text")
                .to_owned()
        })
        .collect();
    assert!(!stored.is_empty());
    assert_eq!(streamed.trim(), stored, "no piece repeated or lost");

    // Nothing is being written any more: the stored messages are final.
    let (status, _, _) = text(&h.app, get(&url)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

async fn api_send_status(app: &Router, conversation: &str) -> StatusCode {
    let request = Request::post(format!("/api/conversations/{conversation}/messages"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(r#"{"content": "Another"}"#))
        .expect("request");
    respond(app, request).await.status()
}

#[tokio::test]
async fn an_api_answer_is_stopped_by_its_stop_route_and_saved_as_stopped() {
    let h = harness().await;
    let conversation = api_conversation(&h.app).await;
    let stop = || {
        Request::post(format!("/api/conversations/{conversation}/stop"))
            .body(Body::empty())
            .expect("request")
    };

    let mut reader = api_send(&h.app, &conversation).await;
    reader.until_reasoning(2).await;
    let (status, _, body) = text(&h.app, stop()).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let rest = reader.rest().await;
    let done = rest.last().expect("events");
    assert_eq!(done.event, "done", "{rest:#?}");
    let message: Value = serde_json::from_str(&done.data).expect("json");
    assert_eq!(message["message"]["status"], "stopped", "{message}");

    // Stored, and nothing is running any more: another stop finds nothing.
    let (_, _, listed) = text(
        &h.app,
        get(&format!("/api/conversations/{conversation}/messages")),
    )
    .await;
    let listed: Value = serde_json::from_str(&listed).expect("json");
    let last = listed["data"].as_array().expect("messages").last().cloned();
    assert_eq!(last.expect("answer")["status"], "stopped");
    let (status, _, _) = text(&h.app, stop()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// Every text in `html` between `open` and the next `close`, in order.
fn between(html: &str, open: &str, close: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = html;
    while let Some(start) = rest.find(open) {
        let after = &rest[start + open.len()..];
        let end = after.find(close).unwrap_or(after.len());
        out.push(after[..end].to_owned());
        rest = &after[end..];
    }
    out
}

/// The finished Thinking blocks' summaries and the stats lines in `html`.
fn shown_numbers(html: &str) -> (Vec<String>, Vec<String>) {
    (
        between(html, "<details class=\"thinking\"><summary>", "</summary>"),
        between(html, "<span class=\"stats\">", "</span>"),
    )
}

/// What the page showed live for a whole answer, against what a reload shows for it.
async fn live_and_reloaded(
    app: &Router,
    conversation: &str,
    url: &str,
) -> [(Vec<String>, Vec<String>); 2] {
    let events = Reader::open(app, url, None).await.rest().await;
    let live: String = events.iter().map(|e| e.data.as_str()).collect();
    let (status, _, page) = text(app, get(&format!("/c/{conversation}"))).await;
    assert_eq!(status, StatusCode::OK);
    [shown_numbers(&live), shown_numbers(&page)]
}

/// Issue 15, bug 4: a reload shows the Thinking block's time and tokens, the time to first
/// token and the rate as the live page showed them, from the same stored numbers.
#[tokio::test]
async fn a_reload_shows_the_thinking_and_stats_the_live_page_showed() {
    let h = harness().await;
    let (conversation, url) = start_chat(&h.app, "").await;
    let [live, reloaded] = live_and_reloaded(&h.app, &conversation, &url).await;
    assert_eq!(live.0.len(), 1, "one Thinking block: {live:?}");
    assert!(live.0[0].starts_with("Thought for "), "{live:?}");
    assert_eq!(live.1.len(), 1, "{live:?}");
    assert!(live.1[0].starts_with("first token "), "{live:?}");
    assert_eq!(reloaded, live);
}

/// A tool turn shows one Thinking block per model round, each with its own numbers, and one
/// stats line for the whole answer, live and after a reload alike.
#[tokio::test]
async fn a_tool_turn_shows_a_thinking_block_per_round_live_and_reloaded() {
    let h = harness().await;
    let request = Request::post("/api/conversations")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(
            r#"{"settings": {"builtin_tools": true, "thinking": true}}"#,
        ))
        .expect("request");
    let (status, _, created) = text(&h.app, request).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let created: Value = serde_json::from_str(&created).expect("json");
    let conversation = created["id"].as_str().expect("id");
    let body = format!("conversation={conversation}&message=What+is+17+*+(3%2B4)%3F&thinking=on");
    let (status, _, html) = text(&h.app, form("/chat/send", body)).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    let url = stream_url(&html).expect("an exchange streams");
    let [live, reloaded] = live_and_reloaded(&h.app, conversation, &url).await;
    assert_eq!(
        live.0.len(),
        2,
        "the call's round and the answer's: {live:?}"
    );
    assert!(
        live.0.iter().all(|s| s.starts_with("Thought for ")),
        "{live:?}"
    );
    assert_eq!(live.1.len(), 1, "one line for the answer: {live:?}");
    assert_eq!(reloaded, live);
}

/// Issue 15, bug 4: until the model starts, the pending answer says it waits for the model
/// (then its place in line, or the prompt being read); the Thinking block opens with the
/// first piece of reasoning, not before.
#[tokio::test]
async fn a_pending_answer_waits_and_thinking_opens_with_the_reasoning() {
    let h = harness().await;
    let body = "conversation=&message=Tell+me+something&thinking=on".to_owned();
    let (status, _, html) = text(&h.app, form("/chat/send", body)).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert!(html.contains("Waiting for the model"), "{html}");
    assert!(!html.contains("Thinking…"), "{html}");
    let url = stream_url(&html).expect("an exchange streams");
    let events = Reader::open(&h.app, &url, None).await.rest().await;
    let opened = events
        .iter()
        .position(|e| e.event == "step" && e.data.contains("Thinking…"))
        .expect("the Thinking block opens");
    let first_reasoning = events.iter().position(|e| e.event == "reasoning");
    assert!(first_reasoning.is_none_or(|at| at > opened), "{events:#?}");
    let cleared = events
        .iter()
        .position(|e| e.event == "progress" && !e.data.contains("Waiting"))
        .expect("the waiting line is cleared");
    assert!(cleared < opened, "{events:#?}");
}
