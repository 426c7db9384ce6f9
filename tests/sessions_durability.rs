//! Nothing completed is lost when the server is killed: the real `smolbot serve --stub`
//! binary over HTTP on 127.0.0.1, SIGKILLed in the middle of a generation, then started
//! again on the same data directory. Every earlier message must be there unchanged, and the
//! answer that was cut off must be kept as `stopped` (or be absent).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// A running server, killed (SIGKILL) when dropped so a failing test leaves nothing behind.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(data_dir: &Path, log_name: &str) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let log = std::fs::File::create(data_dir.join(log_name)).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_smolbot"))
            .args(["serve", "--stub", "--host", "127.0.0.1", "--port"])
            .arg(port.to_string())
            .arg("--data-dir")
            .arg(data_dir)
            // Slow enough that a full answer takes seconds, so the kill lands mid-answer.
            .args(["--stub-tokens-per-second", "25"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start smolbot serve");
        let server = Self { child, port };
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

#[test]
fn sigkill_mid_generation_loses_no_earlier_message() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(dir.path(), "first.log");

    // A short completed exchange (the answer capped at a few tokens, so it is quick).
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
    let before = messages(&server, &id);
    assert_eq!(before.len(), 2);

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
    // Long enough for the growing answer to be saved at least once (every second).
    std::thread::sleep(Duration::from_millis(2500));
    server.kill();
    drop(stream);

    let server = Server::start(dir.path(), "second.log");
    let after = messages(&server, &id);
    assert!(after.len() >= 3, "{after:?}");
    assert_eq!(after[..2], before[..], "earlier messages are unchanged");
    assert_eq!(after[2]["role"], "user");
    assert_eq!(after[2]["content"], "Second question, with a long answer");
    assert_eq!(after[2]["status"], "complete");
    if let Some(cut) = after.get(3) {
        assert_eq!(cut["role"], "assistant");
        assert_eq!(cut["status"], "stopped", "{cut}");
        let reasoning = cut["reasoning"].as_str().unwrap_or_default();
        assert!(!reasoning.is_empty(), "the partial answer is kept: {cut}");
    }
    assert!(after.len() <= 4, "{after:?}");

    // The conversation still works after the restart.
    let (status, reply) = server.json(
        "POST",
        &format!("/api/conversations/{id}/messages"),
        Some(json!({"content": "Third"})),
    );
    assert_eq!(status, 200, "{reply}");
    server.kill();
}
