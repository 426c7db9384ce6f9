//! Several servers on one PostgreSQL database (`smolbot serve --database-url`): two real
//! `smolbot serve --stub` processes on 127.0.0.1 over a database of this test process's
//! private PostgreSQL server (`common::postgres`). What one server is writing, the other
//! shows as it grows (its history, its chat page as far as saved, and its conversation
//! stream, which follows the saves) and refuses to answer over (409, naming the server
//! writing); two sends at once, one to each, give one answer and one 409; a server SIGKILLed
//! mid-answer leaves the answer with the text saved before, marked `interrupted` once the
//! server is back, which ends the other server's stream of it.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::postgres;

/// A running server, killed (SIGKILL) when dropped so a failing test leaves nothing behind.
struct Server {
    child: Child,
    port: u16,
    log: std::path::PathBuf,
}

impl Server {
    /// `smolbot serve --stub` as node `node` of `database`, its stub writing 30 tokens a
    /// second: an answer of a few hundred tokens takes seconds, time to watch it elsewhere.
    fn start(database: &str, node: &str, dir: &Path) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let log = dir.join(format!("{node}-{port}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_smolbot"))
            .args(["serve", "--stub", "--host", "127.0.0.1", "--port"])
            .arg(port.to_string())
            .args(["--stub-tokens-per-second", "30", "--node-id", node])
            .arg("--database-url")
            .arg(database)
            .arg("--data-dir")
            .arg(dir)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start smolbot serve");
        let server = Self { child, port, log };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !matches!(server.try_request("GET", "/health", None), Ok((200, _))) {
            assert!(
                Instant::now() < deadline,
                "server {node} did not answer /health within 60 s: {}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn try_request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> std::io::Result<(u16, String)> {
        request(self.port, method, path, body)
    }

    /// The conversation's stream from this server, read to its end: status and
    /// `(event, data)` pairs.
    fn stream(&self, id: &str) -> (u16, Vec<(String, Value)>) {
        finish_stream(open_stream(self.port, id))
    }

    fn json(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let (status, text) = self
            .try_request(method, path, body.as_ref())
            .unwrap_or_else(|err| panic!("{method} {path}: {err}"));
        let value = serde_json::from_str(&text)
            .unwrap_or_else(|err| panic!("{method} {path}: {err}: {text}"));
        (status, value)
    }

    fn messages(&self, id: &str) -> Vec<Value> {
        let (status, list) = self.json("GET", &format!("/api/conversations/{id}/messages"), None);
        assert_eq!(status, 200, "{list}");
        list["data"].as_array().expect("messages").clone()
    }

    /// A new conversation without reasoning, so answers are plain text.
    fn conversation(&self) -> String {
        let (status, conversation) = self.json(
            "POST",
            "/api/conversations",
            Some(json!({"settings": {"thinking": false}})),
        );
        assert_eq!(status, 201, "{conversation}");
        conversation["id"].as_str().expect("id").to_owned()
    }

    fn kill(mut self) {
        self.child.kill().expect("SIGKILL the server");
        self.child.wait().expect("reap the server");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request to the server on `port`, read to its end: status and body.
fn request(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    let body = body.map(Value::to_string).unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw)?;
    let (status, body) = status_and_body(&raw);
    Ok((status, body.to_owned()))
}

/// A raw HTTP response's status and body.
fn status_and_body(raw: &str) -> (u16, &str) {
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, body)
}

/// The conversation's stream from the server on `port`, open: the connection and what it
/// brought until the first event (or the whole response, when there was no event).
fn open_stream(port: u16, id: &str) -> (TcpStream, Vec<u8>) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .expect("timeout");
    write!(
        stream,
        "GET /api/conversations/{id}/stream HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .expect("request the stream");
    let mut raw = Vec::new();
    let mut chunk = [0u8; 4096];
    while !String::from_utf8_lossy(&raw).contains("\nevent: ") {
        let read = stream.read(&mut chunk).expect("read the stream");
        if read == 0 {
            break;
        }
        raw.extend_from_slice(&chunk[..read]);
    }
    (stream, raw)
}

/// An open stream read to its end: status and `(event, data)` pairs.
fn finish_stream((mut stream, mut raw): (TcpStream, Vec<u8>)) -> (u16, Vec<(String, Value)>) {
    stream.read_to_end(&mut raw).expect("read the stream");
    let raw = String::from_utf8(raw).expect("UTF-8");
    let (status, body) = status_and_body(&raw);
    let mut events = Vec::new();
    for block in dechunk(body).split("\n\n") {
        let field = |name: &str| {
            block
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .map(str::to_owned)
        };
        if let (Some(event), Some(data)) = (field("event: "), field("data: ")) {
            let data = serde_json::from_str(&data)
                .unwrap_or_else(|err| panic!("event data {data}: {err}"));
            events.push((event, data));
        }
    }
    (status, events)
}

/// A chunked HTTP/1.1 body put together; a body that is not chunked is returned whole.
fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            return body.to_owned();
        };
        if size == 0 || after.len() < size {
            break;
        }
        out.push_str(&after[..size]);
        rest = after[size..].strip_prefix("\r\n").unwrap_or(&after[size..]);
    }
    out
}

/// The text of a stream's `content` events, and how many there were.
fn streamed_text(events: &[(String, Value)]) -> (String, usize) {
    let pieces: Vec<&str> = events
        .iter()
        .filter(|(event, _)| event == "content")
        .filter_map(|(_, data)| data["text"].as_str())
        .collect();
    (pieces.concat(), pieces.len())
}

/// Servers `a` and `b` on a new database, their logs in a temporary folder, and a new
/// conversation: `(folder, database URL, a, b, conversation id)`.
fn two_servers() -> (tempfile::TempDir, String, Server, Server, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let database = postgres::database();
    let a = Server::start(&database, "a", dir.path());
    let b = Server::start(&database, "b", dir.path());
    let id = a.conversation();
    (dir, database, a, b, id)
}

/// A question the stub answers with its text after `Echo:`: long enough to take seconds.
fn long_question() -> Value {
    let words = "the quick brown fox jumps over the lazy dog ".repeat(12);
    json!({"content": format!("Echo: {words}")})
}

fn send(server: &Server, id: &str, body: &Value) -> (u16, Value) {
    server.json(
        "POST",
        &format!("/api/conversations/{id}/messages"),
        Some(body.clone()),
    )
}

/// Polls `server` until the conversation's last message is an answer `generating` with
/// some text; that message.
fn growing_answer(server: &Server, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let messages = server.messages(id);
        if let Some(last) = messages.last() {
            let text = last["content"].as_str().unwrap_or_default();
            if last["role"] == "assistant" && last["status"] == "generating" && !text.is_empty() {
                return last.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "no growing answer seen within 60 s: {messages:?}; log: {}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn an_answer_written_on_one_server_is_seen_growing_on_the_other_which_refuses_to_send() {
    let (_dir, _database, a, b, id) = two_servers();

    std::thread::scope(|scope| {
        let on_a = scope.spawn(|| send(&a, &id, &long_question()));
        let seen = growing_answer(&b, &id);
        // b's chat page shows it as far as it is saved, and says where it is written.
        let (status, page) = b
            .try_request("GET", &format!("/c/{id}"), None)
            .expect("b's page");
        assert_eq!(status, 200, "{page}");
        assert!(
            page.contains("Being written on another server"),
            "b's page says the answer is written elsewhere: {page}"
        );
        assert!(
            page.contains(&format!(
                r##"hx-get="/c/{id}" hx-select="#messages" hx-target="#messages" hx-swap="outerHTML" hx-trigger="every 2s""##
            )),
            "b's page fetches the transcript again while it is written elsewhere: {page}"
        );
        let (status, refused) = send(&b, &id, &json!({"content": "Meanwhile"}));
        assert_eq!(status, 409, "{refused}");
        assert_eq!(refused["error"]["code"], "conversation_busy", "{refused}");
        let message = refused["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("`a`"), "says where it runs: {message}");

        let (status, reply) = on_a.join().expect("send on a");
        assert_eq!(status, 200, "{reply}");
        let answer = &reply["assistant_message"];
        assert_eq!(answer["status"], "complete");
        let full = answer["content"].as_str().expect("content");
        let partial = seen["content"].as_str().expect("content");
        assert!(
            full.starts_with(partial) && full.len() > partial.len(),
            "b saw a part of the answer: {partial:?} / {full:?}"
        );
        let on_b = b.messages(&id);
        assert_eq!(on_b.len(), 2, "the refused send stored nothing: {on_b:?}");
        assert_eq!(on_b[1]["content"], full);
        assert_eq!(on_b[1]["status"], "complete");
    });

    // Free again: b answers in it.
    let (status, reply) = send(&b, &id, &json!({"content": "Echo: and now b"}));
    assert_eq!(status, 200, "{reply}");
}

#[test]
fn an_answer_written_on_one_server_streams_from_the_other() {
    let (_dir, _database, a, b, id) = two_servers();
    let (status, nothing) = b.stream(&id);
    assert_eq!(status, 404, "nothing is being written yet: {nothing:?}");

    std::thread::scope(|scope| {
        let on_a = scope.spawn(|| send(&a, &id, &long_question()));
        growing_answer(&b, &id);
        let (status, events) = b.stream(&id);
        assert_eq!(status, 200, "{events:?}");
        let (status, reply) = on_a.join().expect("send on a");
        assert_eq!(status, 200, "{reply}");
        let full = reply["assistant_message"]["content"]
            .as_str()
            .expect("content");

        let (text, pieces) = streamed_text(&events);
        assert_eq!(text, full, "b streamed the whole answer: {events:?}");
        assert!(
            pieces >= 2,
            "the text came in pieces as a saved it, not at once: {events:?}"
        );
        let (last, done) = events.last().expect("events");
        assert_eq!(last, "done", "{events:?}");
        assert_eq!(done["message"]["status"], "complete", "{done}");
        assert_eq!(done["message"]["content"], full);
    });
}

#[test]
fn two_sends_at_once_to_two_servers_give_one_answer_and_one_409() {
    let (_dir, _database, a, b, id) = two_servers();
    let question = long_question();
    let ((status_a, reply_a), (status_b, reply_b)) = std::thread::scope(|scope| {
        let on_a = scope.spawn(|| send(&a, &id, &question));
        let on_b = scope.spawn(|| send(&b, &id, &question));
        (
            on_a.join().expect("send on a"),
            on_b.join().expect("send on b"),
        )
    });
    let mut statuses = [status_a, status_b];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 409], "{reply_a} / {reply_b}");
    let messages = a.messages(&id);
    assert_eq!(messages.len(), 2, "one question, one answer: {messages:?}");
    assert_eq!(messages[1]["status"], "complete");
}

#[test]
fn a_server_killed_mid_answer_leaves_its_text_marked_interrupted() {
    let (dir, database, a, b, id) = two_servers();

    let mut stream = TcpStream::connect(("127.0.0.1", a.port)).expect("connect");
    let body = long_question().to_string();
    write!(
        stream,
        "POST /api/conversations/{id}/messages HTTP/1.1\r\nHost: 127.0.0.1\r\n\
         Connection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send on a");
    let seen = growing_answer(&b, &id);
    let partial = seen["content"].as_str().expect("content").to_owned();
    a.kill();
    drop(stream);

    // While `a` is down its claim holds: `b` still shows the answer as being written, and
    // follows it until it is marked.
    assert_eq!(b.messages(&id)[1]["status"], "generating");
    let following = open_stream(b.port, &id);
    // `a` back under its name: it marks what it was writing interrupted at once.
    let a = Server::start(&database, "a", dir.path());
    let (status, events) = finish_stream(following);
    assert_eq!(status, 200, "{events:?}");
    let (last, done) = events.last().expect("events");
    assert_eq!(last, "done", "{events:?}");
    assert_eq!(done["message"]["status"], "interrupted", "{done}");
    let (text, _) = streamed_text(&events);
    assert_eq!(done["message"]["content"], text, "{events:?}");
    for server in [&a, &b] {
        let messages = server.messages(&id);
        assert_eq!(messages.len(), 2, "{messages:?}");
        assert_eq!(messages[0]["role"], "user");
        let cut = &messages[1];
        assert_eq!(cut["status"], "interrupted", "{cut}");
        let kept = cut["content"].as_str().expect("content");
        assert!(
            kept.starts_with(&partial)
                && long_question()["content"]
                    .as_str()
                    .is_some_and(|q| q.contains(kept.trim())),
            "the text saved before the kill is kept: {partial:?} / {kept:?}"
        );
    }
    let (status, reply) = send(&b, &id, &json!({"content": "Echo: still works"}));
    assert_eq!(status, 200, "{reply}");
}
