//! Slow and idle clients (issue 14, finding 6), over real sockets held open: a client that
//! sends half its headers, or half its body, or leaves a keep-alive connection idle, is cut
//! off after the server's limit, and connections beyond the cap get a clear 503 instead of
//! starving `/health`. The limits here are short so the tests are quick; the waits are
//! bounded by a deadline that only turns a hang into a failure, never a measurement.

use crate::common;

use std::net::SocketAddr;
use std::time::Duration;

use smolbot::web::server::{serve, ServerLimits};
use smolbot::web::{app, AppState};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A hang fails the test after this long.
const DEADLINE: Duration = Duration::from_secs(60);

async fn server(limits: ServerLimits) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let store = smolbot::services::SessionStore::in_memory().expect("in-memory store");
    let state = AppState::new(common::stub_engine(0.0).await, store, None);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(listener, app(state), limits, async {
        let _ = stopped.await;
    }));
    (addr, stop)
}

fn limits(header_read_ms: u64, body_read_ms: u64, max_connections: usize) -> ServerLimits {
    ServerLimits {
        header_read: Duration::from_millis(header_read_ms),
        body_read: Duration::from_millis(body_read_ms),
        max_connections,
    }
}

/// Everything the server sends until it closes the connection.
async fn until_closed(stream: &mut TcpStream) -> String {
    let mut bytes = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut bytes))
        .await
        .expect("the server closed the connection")
        .expect("read");
    String::from_utf8_lossy(&bytes).into_owned()
}

async fn health(addr: SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    until_closed(&mut stream).await
}

#[tokio::test]
async fn half_sent_headers_are_cut_off() {
    let (addr, _stop) = server(limits(300, 60_000, 64)).await;
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: loc")
        .await
        .expect("write");
    let answer = until_closed(&mut stream).await;
    assert!(!answer.contains("200 OK"), "{answer}");
    assert!(health(addr).await.starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed() {
    let (addr, _stop) = server(limits(300, 60_000, 64)).await;
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("write");
    let answer = until_closed(&mut stream).await;
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "answered, then closed when idle: {answer}"
    );
}

#[tokio::test]
async fn half_sent_bodies_get_408() {
    let (addr, _stop) = server(limits(60_000, 300, 64)).await;
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(
            b"POST /tokenize HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
              Content-Length: 100\r\nConnection: close\r\n\r\n{\"content\":",
        )
        .await
        .expect("write");
    let answer = until_closed(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("did not arrive"), "{answer}");
}

#[tokio::test]
async fn connections_beyond_the_cap_are_refused_clearly() {
    let (addr, _stop) = server(limits(60_000, 60_000, 4)).await;
    let mut idle = Vec::new();
    for _ in 0..4 {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(b"GET /health HTTP/1.1\r\n")
            .await
            .expect("write");
        idle.push(stream);
    }
    // The server may not have taken all four yet: a refusal says so, an answer means a slot
    // was still free, so ask until refused (bounded by the deadline).
    let refused = tokio::time::timeout(DEADLINE, async {
        loop {
            let answer = health(addr).await;
            if answer.starts_with("HTTP/1.1 503") {
                return answer;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("a fifth connection is refused");
    assert!(
        refused.contains("Retry-After: 1") || refused.contains("retry-after: 1"),
        "{refused}"
    );
    assert!(
        refused.contains("too_many_connections") && refused.contains("4 connections"),
        "{refused}"
    );

    drop(idle);
    let answered = tokio::time::timeout(DEADLINE, async {
        loop {
            let answer = health(addr).await;
            if answer.starts_with("HTTP/1.1 200") {
                return answer;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("closed connections free their slots");
    assert!(answered.contains("\"ok\""), "{answered}");
}
