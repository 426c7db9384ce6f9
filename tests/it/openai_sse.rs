//! Streaming over a real socket: the server runs on 127.0.0.1 and a plain HTTP/1.1 client
//! reads the SSE stream as it arrives, so chunked framing, incremental delivery, and the
//! engine's reaction to a client that hangs up are tested as a user's client meets them.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use smolbot::services::stub::{StubConfig, STUB_CONTEXT_LENGTH};
use smolbot::services::{BackendSpec, Engine};
use smolbot::web::{app, AppState};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Serves the stub at `tokens_per_second` on a free port.
async fn serve_stub(tokens_per_second: f64) -> SocketAddr {
    let engine = Engine::start(
        BackendSpec::Stub(StubConfig {
            tokens_per_second,
            context_length: STUB_CONTEXT_LENGTH,
        }),
        4,
    )
    .await
    .expect("stub engine starts");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        axum::serve(
            listener,
            app(AppState::new(
                engine,
                smolbot::services::SessionStore::in_memory().expect("in-memory store"),
                None,
            )),
        )
        .await
        .expect("serve");
    });
    address
}

/// Sends a POST and returns the open connection, positioned after the response headers,
/// with the status line and headers.
async fn open(address: SocketAddr, path: &str, body: &Value) -> (TcpStream, String, Vec<u8>) {
    let mut stream = TcpStream::connect(address).await.expect("connect");
    let body = body.to_string();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut buffer = Vec::new();
    loop {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.expect("read");
        assert!(n > 0, "connection closed before the headers");
        buffer.extend_from_slice(&chunk[..n]);
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
            let rest = buffer[end + 4..].to_vec();
            return (stream, head, rest);
        }
    }
}

/// Undoes HTTP/1.1 chunked framing of a complete body.
fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line_end) = body.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&body[..line_end]).trim(), 16)
            .expect("chunk size");
        if size == 0 {
            break;
        }
        let start = line_end + 2;
        out.extend_from_slice(&body[start..start + size]);
        body = &body[start + size + 2..];
    }
    out
}

/// The whole streamed body's `data:` payloads.
async fn stream_payloads(address: SocketAddr, body: &Value) -> (String, Vec<String>) {
    let (mut stream, head, mut rest) = open(address, "/v1/chat/completions", body).await;
    stream.read_to_end(&mut rest).await.expect("read body");
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(&rest)
    } else {
        rest
    };
    let text = String::from_utf8(body).expect("utf-8");
    let payloads = text
        .lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .map(str::to_owned)
        .collect();
    (head, payloads)
}

async fn post_json(address: SocketAddr, path: &str, body: &Value) -> Value {
    let (mut stream, head, mut rest) = open(address, path, body).await;
    stream.read_to_end(&mut rest).await.expect("read body");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(&rest)
    } else {
        rest
    };
    serde_json::from_slice(&body).expect("json body")
}

#[tokio::test]
async fn streamed_deltas_join_to_the_non_streaming_answer() {
    let address = serve_stub(0.0).await;
    let messages = json!([{"role": "user", "content": "Same answer twice?"}]);
    let (head, payloads) =
        stream_payloads(address, &json!({"messages": messages, "stream": true})).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head
        .to_ascii_lowercase()
        .contains("content-type: text/event-stream"));
    assert_eq!(payloads.last().map(String::as_str), Some("[DONE]"));
    let mut reasoning = String::new();
    let mut content = String::new();
    let mut finish = None;
    let mut timings = None;
    for payload in &payloads[..payloads.len() - 1] {
        let chunk: Value = serde_json::from_str(payload).expect("chunk");
        let choice = &chunk["choices"][0];
        if let Some(text) = choice["delta"]["reasoning_content"].as_str() {
            reasoning.push_str(text);
        }
        if let Some(text) = choice["delta"]["content"].as_str() {
            content.push_str(text);
        }
        if let Some(reason) = choice["finish_reason"].as_str() {
            finish = Some(reason.to_owned());
            timings = chunk.get("timings").cloned();
        }
    }
    assert_eq!(finish.as_deref(), Some("stop"));
    assert!(timings.is_some(), "timings ride on the last chunk");

    let whole = post_json(
        address,
        "/v1/chat/completions",
        &json!({"messages": messages}),
    )
    .await;
    let message = &whole["choices"][0]["message"];
    assert_eq!(
        message["reasoning_content"].as_str(),
        Some(reasoning.as_str())
    );
    assert_eq!(message["content"].as_str(), Some(content.as_str()));
}

#[tokio::test]
async fn streamed_tool_call_comes_in_two_fragments() {
    let address = serve_stub(0.0).await;
    let tools = json!([{"type": "function", "function": {"name": "calculate",
        "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}}}}]);
    let (_, payloads) = stream_payloads(
        address,
        &json!({"messages": [{"role": "user", "content": "What is 6*7?"}],
                "tools": tools, "stream": true, "enable_thinking": false}),
    )
    .await;
    let fragments: Vec<Value> = payloads
        .iter()
        .filter(|p| p.contains("tool_calls"))
        .map(|p| serde_json::from_str::<Value>(p).expect("chunk"))
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].get(0).cloned())
        .collect();
    assert_eq!(fragments.len(), 2, "{payloads:?}");
    assert_eq!(fragments[0]["index"], 0);
    assert_eq!(fragments[0]["type"], "function");
    assert_eq!(fragments[0]["function"]["name"], "calculate");
    assert!(fragments[0]["id"].as_str().unwrap().starts_with("call_"));
    assert!(fragments[1].get("id").is_none());
    let arguments: Value =
        serde_json::from_str(fragments[1]["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(arguments, json!({"expression": "6*7"}));
    let finish: Value = serde_json::from_str(&payloads[payloads.len() - 2]).expect("chunk");
    assert_eq!(finish["choices"][0]["finish_reason"], "tool_calls");
}

#[tokio::test]
async fn hanging_up_frees_the_engine_within_a_token_or_two() {
    // 20 tokens/s: the stub's answer (~450 tokens) would hold the engine for over 20 s.
    let address = serve_stub(20.0).await;
    let body = json!({"messages": [{"role": "user", "content": "A long answer"}], "stream": true});
    let (mut stream, head, mut seen) = open(address, "/v1/chat/completions", &body).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    while !String::from_utf8_lossy(&seen).contains("reasoning_content") {
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).await.expect("read");
        assert!(n > 0, "stream ended early");
        seen.extend_from_slice(&chunk[..n]);
    }
    drop(stream);

    let started = Instant::now();
    let reply = tokio::time::timeout(
        Duration::from_secs(10),
        post_json(
            address,
            "/v1/chat/completions",
            &json!({"messages": [{"role": "user", "content": "quick"}], "max_tokens": 3}),
        ),
    )
    .await
    .expect("the engine was freed");
    assert_eq!(reply["usage"]["completion_tokens"], 3);
    // 3 tokens at 20/s take 0.15 s; the cancelled answer would have needed 20 s more.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}
