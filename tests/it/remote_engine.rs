//! `--engine openai`: a front `smolbot serve` whose model runs on other servers, all real
//! processes over HTTP on 127.0.0.1. The remotes are `smolbot serve --stub` processes (and,
//! once, the real SmolLM2 file), plus tiny fake servers written here that answer 500 or
//! never answer. The front must answer exactly what the remote's model writes, parsed by
//! the front (reasoning, tool calls); spread requests over its remotes; carry on when one
//! is killed, cutting off clearly the answer it was streaming; leave failing ones behind
//! (failover, circuit breaker); and say at once, with a 503, when none is left.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Hang guard for every request: far beyond what any of them takes.
const REQUEST_GUARD: Duration = Duration::from_secs(120);

/// A `smolbot serve`, killed (SIGKILL) when dropped.
struct Server {
    child: Child,
    port: u16,
    log: PathBuf,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl Server {
    /// `smolbot serve` with `args`, its data and log under `dir/name`; waits for `/health`.
    fn start(dir: &Path, name: &str, args: &[&str]) -> Self {
        let port = free_port();
        let data = dir.join(name);
        std::fs::create_dir_all(&data).expect("data dir");
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_smolbot"))
            .arg("serve")
            .args(args)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .arg("--data-dir")
            .arg(&data)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start smolbot serve");
        let mut server = Self { child, port, log };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            // `/v1/models` answers only once the engine is up (`/health` does while loading).
            if let Ok(reply) = client()
                .get(server.url("/v1/models"))
                .timeout(Duration::from_secs(5))
                .send()
            {
                if reply.status() == 200 {
                    return server;
                }
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("{name} exited with {status}: {}", server.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "{name} was not ready within 120 s: {}",
                server.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A stub remote writing `tokens_per_second` (0: as fast as possible).
    fn stub(dir: &Path, name: &str, tokens_per_second: u32) -> Self {
        Self::start(
            dir,
            name,
            &[
                "--stub",
                "--stub-tokens-per-second",
                &tokens_per_second.to_string(),
            ],
        )
    }

    /// A front over `remotes` (base URLs), reading the stub's template, with `extra` flags.
    fn front(dir: &Path, remotes: &[String], extra: &[&str]) -> Self {
        let mut args = vec!["--stub", "--engine", "openai"];
        for url in remotes {
            args.extend(["--engine-url", url.as_str()]);
        }
        args.extend(extra);
        Self::start(dir, "front", &args)
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base())
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let reply = client()
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .unwrap_or_else(|err| panic!("POST {path}: {err}"));
        let status = reply.status().as_u16();
        let text = reply.text().expect("body");
        let value = serde_json::from_str(&text).unwrap_or_else(|_| json!({ "text": text }));
        (status, value)
    }

    fn get(&self, path: &str) -> Value {
        let reply = client().get(self.url(path)).send().expect("GET");
        assert_eq!(reply.status(), 200, "GET {path}");
        serde_json::from_str(&reply.text().expect("body")).expect("JSON")
    }

    /// The front's view of its remotes (`/api/status`).
    fn remotes(&self) -> Vec<Value> {
        self.get("/api/status")["remotes"]
            .as_array()
            .expect("remotes listed")
            .clone()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(REQUEST_GUARD)
        .build()
        .expect("client")
}

fn chat(content: &str) -> Value {
    json!({"messages": [{"role": "user", "content": content}], "temperature": 0})
}

fn weather_tools() -> Value {
    json!([{"type": "function", "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]}}}])
}

/// The parts of a chat completion the model decides (ids and timings differ).
fn answer(reply: &Value) -> Value {
    let choice = &reply["choices"][0];
    json!({
        "message": choice["message"],
        "finish_reason": choice["finish_reason"],
        "usage": reply["usage"],
    })
}

#[test]
fn front_answers_what_the_remote_model_writes_parsed_by_the_front() {
    let dir = tempfile::tempdir().expect("temp dir");
    let remote = Server::stub(dir.path(), "remote", 0);
    let front = Server::front(dir.path(), &[remote.base()], &[]);

    // Reasoning apart from the answer, as the stub's own server splits it.
    let (status, direct) = remote.post("/v1/chat/completions", chat("Hello there"));
    assert_eq!(status, 200, "{direct}");
    let (status, relayed) = front.post("/v1/chat/completions", chat("Hello there"));
    assert_eq!(status, 200, "{relayed}");
    assert_eq!(answer(&relayed), answer(&direct));
    assert!(relayed["choices"][0]["message"]["reasoning_content"]
        .as_str()
        .is_some_and(|r| !r.is_empty()));

    // A tool call, parsed by the front from the remote's raw text.
    let mut ask = chat("What is the weather in Paris?");
    ask["tools"] = weather_tools();
    let (_, direct) = remote.post("/v1/chat/completions", ask.clone());
    let (status, relayed) = front.post("/v1/chat/completions", ask);
    assert_eq!(status, 200, "{relayed}");
    assert_eq!(relayed["choices"][0]["finish_reason"], "tool_calls");
    let calls = &relayed["choices"][0]["message"]["tool_calls"];
    assert_eq!(calls[0]["function"]["name"], "get_weather", "{relayed}");
    assert_eq!(
        calls[0]["function"]["arguments"],
        direct["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]
    );

    // Streaming through the front ends as a stream should.
    let mut streamed = chat("Hello there");
    streamed["stream"] = json!(true);
    let text = client()
        .post(front.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(streamed.to_string())
        .send()
        .expect("stream")
        .text()
        .expect("body");
    assert!(text.contains("reasoning_content"), "{text}");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");

    // The conversations API (the page's path) stores what the remote wrote.
    let (status, conversation) = front.post("/api/conversations", json!({}));
    assert_eq!(status, 201, "{conversation}");
    let id = conversation["id"].as_str().expect("id");
    let (status, reply) = front.post(
        &format!("/api/conversations/{id}/messages"),
        json!({"content": "Hello there"}),
    );
    assert_eq!(status, 200, "{reply}");
    let stored = &reply["assistant_message"];
    assert_eq!(stored["status"], "complete", "{reply}");
    let (_, direct) = remote.post(
        "/v1/chat/completions",
        json!({"messages": [{"role": "user", "content": "Hello there"}]}),
    );
    assert_eq!(
        stored["content"],
        direct["choices"][0]["message"]["content"]
    );

    // The front counts what ran through it.
    assert!(front.get("/api/status")["requests"].as_u64().unwrap() >= 4);
    let remotes = front.remotes();
    assert_eq!(remotes.len(), 1);
    assert_eq!(remotes[0]["healthy"], true);
    assert_eq!(remotes[0]["requests"], 4, "{remotes:?}");
}

#[test]
fn a_gguf_front_renders_the_real_template_and_refuses_what_it_cannot_enforce() {
    let dir = tempfile::tempdir().expect("temp dir");
    let model = crate::common::smollm2_model();
    let model = model.to_str().expect("path");
    let remote = Server::start(dir.path(), "remote", &["--model", model, "--parallel", "1"]);
    let front = Server::start(
        dir.path(),
        "front",
        &[
            "--model",
            model,
            "--engine",
            "openai",
            "--engine-url",
            &format!("{}/v1", remote.base()),
        ],
    );
    let mut ask = chat("Name a colour.");
    ask["max_tokens"] = json!(12);
    let (status, direct) = remote.post("/v1/chat/completions", ask.clone());
    assert_eq!(status, 200, "{direct}");
    let (status, relayed) = front.post("/v1/chat/completions", ask);
    assert_eq!(status, 200, "{relayed}");
    assert_eq!(answer(&relayed), answer(&direct));
    assert_eq!(front.get("/api/status")["device"], "remote");

    let mut constrained = chat("Hello");
    constrained["response_format"] = json!({"type": "json_object"});
    let (status, refused) = front.post("/v1/chat/completions", constrained);
    assert_eq!(status, 400, "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("remote inference server"),
        "{refused}"
    );
}

/// Reads the SSE body until `needle` shows up; what was read.
fn read_until(reader: &mut impl BufRead, needle: &str) -> String {
    let mut seen = String::new();
    let mut line = String::new();
    while !seen.contains(needle) {
        line.clear();
        let n = reader.read_line(&mut line).expect("read the stream");
        assert!(n > 0, "the stream ended before {needle:?}: {seen}");
        seen.push_str(&line);
    }
    seen
}

#[test]
fn two_remotes_share_the_load_and_a_killed_one_is_left_behind() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut first = Server::stub(dir.path(), "first", 40);
    let mut second = Server::stub(dir.path(), "second", 40);
    let front = Server::front(dir.path(), &[first.base(), second.base()], &[]);

    // The first request goes to the first remote (both idle, the first in turn): stream a
    // long answer, kill that remote mid-way.
    let mut long = chat("Tell me a long story");
    long["stream"] = json!(true);
    let reply = client()
        .post(front.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(long.to_string())
        .send()
        .expect("stream");
    assert_eq!(reply.status(), 200);
    let mut reader = BufReader::new(reply);
    read_until(&mut reader, "reasoning_content");
    first.kill();
    let mut rest = String::new();
    reader
        .read_to_string(&mut rest)
        .expect("the cut stream ends");
    assert!(
        rest.contains("\"error\"") && rest.contains("broke off"),
        "the cut answer ends with a clear error: {rest}"
    );

    // Every later request is answered, by the second remote.
    for i in 0..4 {
        let mut ask = chat(&format!("Question {i}"));
        ask["max_tokens"] = json!(8);
        let (status, reply) = front.post("/v1/chat/completions", ask);
        assert_eq!(status, 200, "request {i}: {reply}");
    }
    let remotes = front.remotes();
    assert_eq!(remotes[0]["healthy"], false, "{remotes:?}");
    assert!(remotes[1]["requests"].as_u64().unwrap() >= 4, "{remotes:?}");

    // Both down: a quick, clear 503.
    second.kill();
    for _ in 0..2 {
        let (status, reply) = front.post("/v1/chat/completions", chat("Anyone there?"));
        let message = reply["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("no inference server can take the request"),
            "{status}: {reply}"
        );
    }
    let (status, reply) = front.post("/v1/chat/completions", chat("Anyone there?"));
    assert_eq!(status, 503, "{reply}");
}

#[test]
fn the_remotes_queue_position_and_prompt_progress_reach_the_front() {
    let dir = tempfile::tempdir().expect("temp dir");
    let remote = Server::start(
        dir.path(),
        "remote",
        &[
            "--stub",
            "--stub-tokens-per-second",
            "20",
            "--parallel",
            "1",
        ],
    );
    let front = Server::front(dir.path(), &[remote.base()], &[]);

    // A long answer keeps the remote's one place busy.
    let mut long = chat("Tell me a long story");
    long["stream"] = json!(true);
    let busy = client()
        .post(front.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(long.to_string())
        .send()
        .expect("stream");
    let mut busy = BufReader::new(busy);
    read_until(&mut busy, "reasoning_content");

    // A question through the conversations API waits behind it, and is told so.
    let (_, conversation) = front.post("/api/conversations", json!({}));
    let id = conversation["id"].as_str().expect("id");
    let waiting = client()
        .post(front.url(&format!("/api/conversations/{id}/messages")))
        .header("content-type", "application/json")
        .body(json!({"content": "Hello", "stream": true}).to_string())
        .send()
        .expect("stream");
    assert_eq!(waiting.status(), 200);
    let mut waiting = BufReader::new(waiting);
    read_until(&mut waiting, r#""queued":{"ahead":1}"#);

    // Once the long answer is dropped, the waiting one's prompt is read, and said to be.
    drop(busy);
    let seen = read_until(&mut waiting, r#""prefill""#);
    assert!(seen.contains(r#""total":"#), "{seen}");
}

#[test]
fn requests_alternate_between_idle_remotes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let first = Server::stub(dir.path(), "first", 0);
    let second = Server::stub(dir.path(), "second", 0);
    let front = Server::front(dir.path(), &[first.base(), second.base()], &[]);
    for i in 0..4 {
        let (status, reply) = front.post("/v1/chat/completions", chat(&format!("Q{i}")));
        assert_eq!(status, 200, "{reply}");
    }
    // Each remote's own count of requests it served.
    for remote in [&first, &second] {
        let served = remote.get("/api/status")["requests"].as_u64().unwrap();
        assert_eq!(served, 2, "each remote takes every other request");
    }
}

/// Reads one HTTP/1.1 request off `stream`: its head and body.
fn read_request(stream: &mut TcpStream) -> (String, Vec<u8>) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let length = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    let _ = stream.read_exact(&mut body);
    (head, body)
}

/// A remote without `/v1/completions` (404, as some chat-only servers): its
/// `/v1/chat/completions` is `upstream`'s, relayed byte for byte; every other path 200.
fn chat_only_remote(upstream: u16) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let (head, body) = read_request(&mut stream);
                if head.starts_with("POST /v1/chat/completions") {
                    let mut up = TcpStream::connect(("127.0.0.1", upstream)).expect("upstream");
                    let _ = write!(
                        up,
                        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n\
                         Content-Type: application/json\r\nContent-Length: {}\r\n\
                         Connection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = up.write_all(&body);
                    let _ = std::io::copy(&mut up, &mut stream);
                    return;
                }
                let (status, text) = if head.starts_with("POST /v1/completions") {
                    (
                        "404 Not Found",
                        r#"{"error": {"message": "no such route"}}"#,
                    )
                } else {
                    ("200 OK", r#"{"status": "ok"}"#)
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{text}",
                    text.len()
                );
            });
        }
    });
    format!("http://{addr}")
}

#[test]
fn a_remote_without_text_completions_gets_chat_completions() {
    let dir = tempfile::tempdir().expect("temp dir");
    let stub = Server::stub(dir.path(), "stub", 0);
    let front = Server::front(dir.path(), &[chat_only_remote(stub.port)], &[]);

    let (_, direct) = stub.post("/v1/chat/completions", chat("Hello there"));
    let (status, relayed) = front.post("/v1/chat/completions", chat("Hello there"));
    assert_eq!(status, 200, "{relayed}");
    assert_eq!(
        relayed["choices"][0]["message"],
        direct["choices"][0]["message"]
    );

    let mut ask = chat("What is the weather in Paris?");
    ask["tools"] = weather_tools();
    let (_, direct) = stub.post("/v1/chat/completions", ask.clone());
    let (status, relayed) = front.post("/v1/chat/completions", ask);
    assert_eq!(status, 200, "{relayed}");
    assert_eq!(relayed["choices"][0]["finish_reason"], "tool_calls");
    let call = &relayed["choices"][0]["message"]["tool_calls"][0]["function"];
    let expected = &direct["choices"][0]["message"]["tool_calls"][0]["function"];
    assert_eq!(call["name"], expected["name"]);
    assert_eq!(
        serde_json::from_str::<Value>(call["arguments"].as_str().unwrap()).unwrap(),
        serde_json::from_str::<Value>(expected["arguments"].as_str().unwrap()).unwrap()
    );
    let remotes = front.remotes();
    assert_eq!(
        remotes[0]["failures"], 0,
        "a missing route is no failure: {remotes:?}"
    );
}

/// A fake remote: `/health` answers 200; `/v1/completions` gets `completions`' answer (or
/// none at all, the connection held open, when it is `None`). Runs until the test ends.
fn fake_remote(completions: Option<&'static str>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let (head, _) = read_request(&mut stream);
            let respond = |stream: &mut TcpStream, status: &str, body: &str| {
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            };
            if head.starts_with("POST /v1/completions") {
                match completions {
                    Some(answer) => {
                        respond(&mut stream, answer, r#"{"error": {"message": "boom"}}"#)
                    }
                    None => held.push(stream),
                }
            } else {
                respond(&mut stream, "200 OK", r#"{"status": "ok"}"#);
            }
        }
    });
    format!("http://{addr}")
}

#[test]
fn failing_and_silent_remotes_fail_over_and_trip_their_breakers() {
    let dir = tempfile::tempdir().expect("temp dir");
    let failing = fake_remote(Some("500 Internal Server Error"));
    let silent = fake_remote(None);
    let good = Server::stub(dir.path(), "good", 0);
    let front = Server::front(
        dir.path(),
        &[failing, silent, good.base()],
        &[
            "--engine-timeout",
            "2",
            "--engine-breaker-failures",
            "2",
            "--engine-cool-down",
            "600",
        ],
    );
    let (_, direct) = good.post("/v1/chat/completions", chat("Hello"));
    for i in 0..4 {
        let (status, reply) = front.post("/v1/chat/completions", chat("Hello"));
        assert_eq!(
            status, 200,
            "request {i} fails over to the good remote: {reply}"
        );
        assert_eq!(answer(&reply), answer(&direct));
    }
    let remotes = front.remotes();
    for broken in &remotes[..2] {
        assert_eq!(broken["breaker"], "open", "{remotes:?}");
        assert_eq!(
            broken["failures"], 2,
            "no request after the breaker opened: {remotes:?}"
        );
        assert_eq!(
            broken["healthy"], true,
            "its health checks pass: {remotes:?}"
        );
    }
    assert_eq!(remotes[2]["breaker"], "closed");
    assert_eq!(remotes[2]["requests"], 4, "{remotes:?}");
}

#[test]
fn a_front_whose_remotes_are_all_down_says_so_at_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let nobody = format!("http://127.0.0.1:{}", free_port());
    let front = Server::front(dir.path(), std::slice::from_ref(&nobody), &[]);
    let (status, reply) = front.post("/v1/chat/completions", chat("Hello"));
    assert_eq!(status, 503, "{reply}");
    let message = reply["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("no inference server") && message.contains(&nobody),
        "{message}"
    );
    let (status, conversation) = front.post("/api/conversations", json!({}));
    assert_eq!(status, 201);
    let id = conversation["id"].as_str().expect("id");
    let (status, reply) = front.post(
        &format!("/api/conversations/{id}/messages"),
        json!({"content": "Hello"}),
    );
    assert_eq!(status, 503, "{reply}");
    assert_eq!(front.remotes()[0]["healthy"], false);
}
