//! Nothing said is lost when the server is killed: the real `smolbot serve --stub` binary
//! over HTTP on 127.0.0.1, SIGKILLed in the middle of a generation (sent by the
//! conversations API or by the chat page's form post), then started again on the same data
//! directory. Every earlier message must be there unchanged, the question too, and the
//! answer that was cut off kept as `interrupted` with at least the text streamed more than
//! a second before the kill; the database file passes SQLite's integrity check.
//!
//! SIGTERM is the graceful path: the server stops accepting, lets the answer in flight
//! finish or stops it within its grace period, flushes the store and exits with status 0;
//! the answer is then stored, complete or stopped, never lost and never left `generating`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// A running server, killed (SIGKILL) when dropped so a failing test leaves nothing behind.
struct Server {
    child: Child,
    port: u16,
    log: std::path::PathBuf,
}

impl Server {
    fn start(data_dir: &Path, log_name: &str) -> Self {
        Self::start_paced(data_dir, log_name, 25)
    }

    /// A server whose stub writes `tokens_per_second`.
    fn start_paced(data_dir: &Path, log_name: &str, tokens_per_second: u32) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let log_path = data_dir.join(log_name);
        let log = std::fs::File::create(&log_path).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_smolbot"))
            .args(["serve", "--stub", "--host", "127.0.0.1", "--port"])
            .arg(port.to_string())
            .arg("--data-dir")
            .arg(data_dir)
            // At 25, slow enough that a full answer takes seconds, so the kill lands
            // mid-answer.
            .arg("--stub-tokens-per-second")
            .arg(tokens_per_second.to_string())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start smolbot serve");
        let server = Self {
            child,
            port,
            log: log_path,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok((200, _)) = server.try_request("GET", "/health", None) {
                return server;
            }
            assert!(
                Instant::now() < deadline,
                "the server did not answer /health within 60 s; log: {}",
                std::fs::read_to_string(data_dir.join(log_name)).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn connect(&self) -> std::io::Result<TcpStream> {
        let stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        stream.set_write_timeout(Some(Duration::from_secs(10)))?;
        Ok(stream)
    }

    fn send_head(
        stream: &mut TcpStream,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> std::io::Result<()> {
        let body = body.map(Value::to_string).unwrap_or_default();
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    /// One request with a complete (non-chunked) response: status and body.
    fn try_request(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> std::io::Result<(u16, String)> {
        let mut stream = self.connect()?;
        Self::send_head(&mut stream, method, path, body.as_ref())?;
        let mut raw = String::new();
        stream.read_to_string(&mut raw)?;
        let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        Ok((status, body.to_owned()))
    }

    fn json(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let (status, text) = self
            .try_request(method, path, body)
            .unwrap_or_else(|err| panic!("{method} {path}: {err}"));
        let value = serde_json::from_str(&text)
            .unwrap_or_else(|err| panic!("{method} {path}: {err}: {text}"));
        (status, value)
    }

    fn sigterm(&self) {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM failed: {sent}");
    }

    /// Waits at most `bound` for the process to exit; its exit status.
    fn wait_exit(mut self, bound: Duration) -> ExitStatus {
        let deadline = Instant::now() + bound;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the server") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the server did not exit within {bound:?}; log: {}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
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

fn messages(server: &Server, id: &str) -> Vec<Value> {
    let (status, list) = server.json("GET", &format!("/api/conversations/{id}/messages"), None);
    assert_eq!(status, 200, "{list}");
    list["data"].as_array().expect("messages").clone()
}

/// A new conversation with one short completed exchange (the answer capped at a few
/// tokens, so it is quick), its settings then cleared for the long answer to come; its id
/// and its two messages.
fn one_short_exchange(server: &Server) -> (String, Vec<Value>) {
    let (status, conversation) = server.json(
        "POST",
        "/api/conversations",
        Some(json!({"settings": {"max_tokens": 8}})),
    );
    assert_eq!(status, 201, "{conversation}");
    let id = conversation["id"].as_str().expect("id").to_owned();
    let (status, reply) = server.json(
        "POST",
        &format!("/api/conversations/{id}/messages"),
        Some(json!({"content": "First question"})),
    );
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["assistant_message"]["status"], "complete");
    let (status, _) = server.json(
        "PATCH",
        &format!("/api/conversations/{id}"),
        Some(json!({"settings": {}})),
    );
    assert_eq!(status, 200);
    let before = messages(server, &id);
    assert_eq!(before.len(), 2);
    (id, before)
}

#[test]
fn sigkill_mid_generation_loses_no_earlier_message() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(dir.path(), "first.log");

    let (id, before) = one_short_exchange(&server);

    // A long answer, streamed; kill the server once it has been writing for a while.
    let mut stream = server.connect().expect("connect");
    Server::send_head(
        &mut stream,
        "POST",
        &format!("/api/conversations/{id}/messages"),
        Some(&json!({"content": "Second question, with a long answer", "stream": true})),
    )
    .expect("send");
    let mut seen = Vec::new();
    let mut buffer = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(30);
    while !String::from_utf8_lossy(&seen).contains("event: reasoning") {
        assert!(
            Instant::now() < deadline,
            "no delta within 30 s: {}",
            String::from_utf8_lossy(&seen)
        );
        let n = stream.read(&mut buffer).expect("read the stream");
        assert!(
            n > 0,
            "the stream ended early: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buffer[..n]);
    }
    let streamed = String::from_utf8_lossy(&seen).into_owned();
    let early = kill_a_second_after(server, stream, streamed);
    assert_integrity(dir.path());

    let server = Server::start(dir.path(), "second.log");
    let after = messages(&server, &id);
    assert_eq!(after.len(), 4, "the question and the cut answer: {after:?}");
    assert_eq!(after[..2], before[..], "earlier messages are unchanged");
    assert_eq!(after[2]["role"], "user");
    assert_eq!(after[2]["content"], "Second question, with a long answer");
    assert_eq!(after[2]["status"], "complete");
    let cut = &after[3];
    assert_eq!(cut["role"], "assistant");
    assert_eq!(cut["status"], "interrupted", "{cut}");
    let reasoning = cut["reasoning"].as_str().unwrap_or_default();
    assert!(
        reasoning.starts_with(early.trim()),
        "the text streamed a second before the kill is kept: {early:?} / {cut}"
    );

    // The conversation still works after the restart.
    let (status, reply) = server.json(
        "POST",
        &format!("/api/conversations/{id}/messages"),
        Some(json!({"content": "Third"})),
    );
    assert_eq!(status, 200, "{reply}");
    server.kill();
}

/// The body of a raw HTTP/1.1 response read so far, its chunked encoding removed (a chunk
/// still arriving is left out).
fn body_so_far(raw: &str) -> String {
    let Some((head, mut rest)) = raw.split_once("\r\n\r\n") else {
        return String::new();
    };
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return rest.to_owned();
    }
    let mut body = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || after.len() < size {
            break;
        }
        body.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    body
}

/// The reasoning text in a conversation stream's body so far: its `reasoning` events'
/// `text`, in order.
fn reasoning_in(body: &str) -> String {
    body.split("\n\n")
        .filter(|event| event.lines().any(|line| line == "event: reasoning"))
        .filter_map(|event| {
            let data = event.lines().find_map(|line| line.strip_prefix("data: "))?;
            let data: Value = serde_json::from_str(data).ok()?;
            Some(data["text"].as_str()?.to_owned())
        })
        .collect()
}

/// Reads the conversation stream `stream` (whose first bytes are `seen`) until its
/// reasoning has grown for a while, notes the reasoning so far, reads on for two seconds
/// more (the draft is saved at least every second) and SIGKILLs the server. Returns the
/// reasoning noted: text streamed well over a second before the kill.
fn kill_a_second_after(server: Server, mut stream: TcpStream, seen: String) -> String {
    let mut raw = seen;
    let mut buffer = [0u8; 4096];
    let mut read_for = |raw: &mut String, how_long: Duration| {
        let until = Instant::now() + how_long;
        while Instant::now() < until {
            let n = stream.read(&mut buffer).expect("read the stream");
            assert!(n > 0, "the stream ended early: {raw}");
            raw.push_str(&String::from_utf8_lossy(&buffer[..n]));
        }
    };
    read_for(&mut raw, Duration::from_millis(1500));
    let early = reasoning_in(&body_so_far(&raw));
    assert!(!early.trim().is_empty(), "no reasoning streamed: {raw}");
    read_for(&mut raw, Duration::from_secs(2));
    server.kill();
    early
}

/// SQLite's own check of the database file, as the kill left it.
fn assert_integrity(data_dir: &Path) {
    let path = data_dir.join(smolbot::services::sessions::DATABASE_FILE);
    let connection = rusqlite::Connection::open(&path).expect("open the database");
    let verdict: String = connection
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .expect("integrity check");
    assert_eq!(verdict, "ok");
}

#[test]
fn sigkill_while_the_page_answers_keeps_the_question_and_the_partial_answer() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(dir.path(), "first.log");
    let (status, conversation) = server.json("POST", "/api/conversations", Some(json!({})));
    assert_eq!(status, 201, "{conversation}");
    let id = conversation["id"].as_str().expect("id").to_owned();
    // The page's own form post, as `chat.js` sends it.
    let form = format!("conversation={id}&message=A+long+question&thinking=on");
    let mut post = server.connect().expect("connect");
    write!(
        post,
        "POST /chat/send HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nHX-Request: true\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
        form.len()
    )
    .expect("send");
    let mut reply = String::new();
    post.read_to_string(&mut reply).expect("the send's reply");
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    // Follow the answer the page's post started, from its start.
    let mut stream = server.connect().expect("connect");
    Server::send_head(
        &mut stream,
        "GET",
        &format!("/api/conversations/{id}/stream"),
        None,
    )
    .expect("follow the answer");
    let early = kill_a_second_after(server, stream, String::new());
    assert_integrity(dir.path());

    let server = Server::start(dir.path(), "second.log");
    let after = messages(&server, &id);
    assert_eq!(after.len(), 2, "the question and the cut answer: {after:?}");
    assert_eq!(after[0]["role"], "user");
    assert_eq!(after[0]["content"], "A long question");
    assert_eq!(after[0]["status"], "complete");
    assert_eq!(after[1]["role"], "assistant");
    assert_eq!(after[1]["status"], "interrupted", "{}", after[1]);
    let reasoning = after[1]["reasoning"].as_str().unwrap_or_default();
    assert!(
        reasoning.starts_with(early.trim()),
        "the text streamed a second before the kill is kept: {early:?} / {}",
        after[1]
    );
    let log = std::fs::read_to_string(dir.path().join("second.log")).unwrap_or_default();
    assert!(log.contains("kept as interrupted"), "{log}");
    // The page shows it so.
    let (status, page) = server
        .try_request("GET", &format!("/c/{id}"), None)
        .expect("the page");
    assert_eq!(status, 200);
    assert!(
        page.contains("Interrupted: the server stopped while writing it."),
        "{page}"
    );
    server.kill();
}

/// Reads `stream` until `needle` has arrived, for at most 30 s.
fn read_until(stream: &mut TcpStream, needle: &str) -> String {
    let mut seen = Vec::new();
    let mut buffer = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(30);
    while !String::from_utf8_lossy(&seen).contains(needle) {
        assert!(
            Instant::now() < deadline,
            "no {needle:?} within 30 s: {}",
            String::from_utf8_lossy(&seen)
        );
        let n = stream.read(&mut buffer).expect("read the stream");
        assert!(
            n > 0,
            "the stream ended early: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buffer[..n]);
    }
    String::from_utf8_lossy(&seen).into_owned()
}

/// Starts a long streamed answer on a server whose stub writes `tokens_per_second`, sends
/// SIGTERM a moment into it, and checks what the issue asks of a graceful shutdown: no new
/// connections, exit status 0 within the grace period, every earlier message kept and the
/// answer stored (complete or stopped, with its text; never lost, never left
/// `generating`). Returns the answer's stored status.
fn sigterm_mid_answer(tokens_per_second: u32) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start_paced(dir.path(), "first.log", tokens_per_second);
    let (id, before) = one_short_exchange(&server);

    // A long answer, streamed by a client that keeps listening through the shutdown.
    let mut stream = server.connect().expect("connect");
    Server::send_head(
        &mut stream,
        "POST",
        &format!("/api/conversations/{id}/messages"),
        Some(&json!({"content": "Second question, with a long answer", "stream": true})),
    )
    .expect("send");
    read_until(&mut stream, "event: reasoning");
    std::thread::sleep(Duration::from_millis(500));
    let listener = std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = stream.read_to_string(&mut rest);
        rest
    });

    let signalled = Instant::now();
    server.sigterm();
    // While the answer may still be finishing, nobody new gets in.
    std::thread::sleep(Duration::from_millis(300));
    let refused = server.try_request("GET", "/health", None);
    assert!(
        !matches!(refused, Ok((200, _))),
        "a new request was served after SIGTERM: {refused:?}"
    );
    // The grace period is 10 s; the flush and the exit take well under the rest.
    let status = server.wait_exit(Duration::from_secs(25));
    assert!(status.success(), "exit status after SIGTERM: {status}");
    let took = signalled.elapsed();
    let rest = listener.join().expect("the stream reader");
    let log = std::fs::read_to_string(dir.path().join("first.log")).unwrap_or_default();
    assert!(log.contains("shutting down"), "{log}");
    assert!(log.contains("conversation store flushed"), "{log}");

    let server = Server::start(dir.path(), "second.log");
    let after = messages(&server, &id);
    assert_eq!(
        after.len(),
        4,
        "the interrupted answer is stored: {after:?}"
    );
    assert_eq!(after[..2], before[..], "earlier messages are unchanged");
    assert_eq!(after[2]["content"], "Second question, with a long answer");
    assert_eq!(after[2]["status"], "complete");
    let answer = &after[3];
    assert_eq!(answer["role"], "assistant");
    let reasoning = answer["reasoning"].as_str().unwrap_or_default();
    assert!(!reasoning.is_empty(), "the answer's text is kept: {answer}");
    let answer_status = answer["status"].as_str().unwrap_or_default().to_owned();
    eprintln!("exited {took:?} after SIGTERM; the answer is {answer_status}");
    match answer_status.as_str() {
        // Finished within the grace period: the client saw it to the end.
        "complete" => assert!(rest.contains("event: done"), "{rest}"),
        "stopped" => assert!(took >= Duration::from_secs(9), "stopped after {took:?}"),
        other => panic!("the answer is {other:?}, not complete or stopped: {answer}"),
    }
    let second_log = std::fs::read_to_string(dir.path().join("second.log")).unwrap_or_default();
    assert!(
        !second_log.contains("cut off by the last shutdown"),
        "the shutdown left nothing for the restart to repair: {second_log}"
    );
    server.kill();
    answer_status
}

#[test]
fn sigterm_lets_a_short_answer_finish_and_exits_cleanly() {
    // At 100 tokens a second the answer takes a few seconds: it is still being written at
    // the signal and ends well within the grace period.
    assert_eq!(sigterm_mid_answer(100), "complete");
}

#[test]
fn sigterm_stops_a_long_answer_at_the_grace_period_and_keeps_it() {
    // At 10 tokens a second the answer outlasts the 10 s grace period many times over.
    assert_eq!(sigterm_mid_answer(10), "stopped");
}

#[test]
fn sigterm_saves_a_page_answer_whose_tab_was_closed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start_paced(dir.path(), "first.log", 10);
    let (status, conversation) = server.json("POST", "/api/conversations", Some(json!({})));
    assert_eq!(status, 201, "{conversation}");
    let id = conversation["id"].as_str().expect("id").to_owned();
    // The page's send, and no stream opened for it: the tab is gone.
    let form = format!("conversation={id}&message=A+long+question&thinking=on");
    let mut stream = server.connect().expect("connect");
    write!(
        stream,
        "POST /chat/send HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nHX-Request: true\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
        form.len()
    )
    .expect("send");
    let mut reply = String::new();
    stream.read_to_string(&mut reply).expect("the send's reply");
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    std::thread::sleep(Duration::from_millis(1500));

    server.sigterm();
    let status = server.wait_exit(Duration::from_secs(25));
    assert!(status.success(), "exit status after SIGTERM: {status}");
    let log = std::fs::read_to_string(dir.path().join("first.log")).unwrap_or_default();
    assert!(log.contains("were stopped and saved"), "{log}");

    let server = Server::start(dir.path(), "second.log");
    let after = messages(&server, &id);
    assert_eq!(after.len(), 2, "the question and the cut answer: {after:?}");
    assert_eq!(after[0]["content"], "A long question");
    assert_eq!(after[1]["role"], "assistant");
    assert_eq!(after[1]["status"], "stopped", "{}", after[1]);
    let reasoning = after[1]["reasoning"].as_str().unwrap_or_default();
    assert!(
        !reasoning.is_empty(),
        "what was written is kept: {}",
        after[1]
    );
    server.kill();
}
