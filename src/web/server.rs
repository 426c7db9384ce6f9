//! Serving the application on a socket with limits for slow and idle clients, which
//! `axum::serve` lacks: a client that sends half a request and waits (slowloris) held a
//! connection, and a file descriptor, for good, and a few hundred of them made the server
//! refuse `/health`.
//!
//! - headers must arrive within [`ServerLimits::header_read`] of the connection being ready
//!   for a request, which also closes a keep-alive connection left idle that long;
//! - a request body must arrive within [`ServerLimits::body_read`] (408 otherwise);
//! - at most [`ServerLimits::max_connections`] connections are open at once; one more gets a
//!   503 with `Retry-After` saying so, and is closed.
//!
//! Shutting down stops accepting, lets each connection finish the response it is writing,
//! and resolves once every connection has closed.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tower::ServiceExt;

use super::app::MAX_BODY_BYTES;
use super::error::{ApiError, ErrorKind};

/// How long a client may take to send a request's headers, or leave a keep-alive connection
/// idle: far longer than any real client needs on a slow link, far shorter than "for good".
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a client may take to send a request's body: 8 MiB (the largest accepted) at
/// about 140 kB/s.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Connections kept when the file limit cannot be read; a browser opens about six.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;

/// How long a refused connection gets to take its 503 before it is closed anyway.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// The limits the server holds clients to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ServerLimits {
    pub header_read: Duration,
    pub body_read: Duration,
    pub max_connections: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            header_read: HEADER_READ_TIMEOUT,
            body_read: BODY_READ_TIMEOUT,
            max_connections: default_max_connections(),
        }
    }
}

/// Half the process's open-file limit (the rest is for the model, the store and the
/// listener), between 32 and 1024; [`DEFAULT_MAX_CONNECTIONS`] where the limit is unknown.
pub fn default_max_connections() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|text| soft_file_limit(&text))
        .map_or(DEFAULT_MAX_CONNECTIONS, |limit| (limit / 2).clamp(32, 1024))
}

/// The soft "Max open files" of a `/proc/self/limits` text.
fn soft_file_limit(limits: &str) -> Option<usize> {
    limits
        .lines()
        .find(|line| line.starts_with("Max open files"))?
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()
}

/// Serves `app` on `listener` within `limits` until `shutdown` resolves, then until every
/// connection has finished its response.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let body_read = limits.body_read;
    let app = app.layer(middleware::from_fn(move |request: Request, next: Next| {
        read_body_within(body_read, request, next)
    }));
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let (stop, stopping) = watch::channel(false);
    // Each connection holds a sender; the channel closes when the last one ends.
    let (open, mut all_closed) = mpsc::channel::<()>(1);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors, most likely: wait for some to be freed.
                    tracing::warn!("cannot accept a connection: {err}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tokio::spawn(refuse(stream, limits.max_connections));
            continue;
        };
        // The client's address, for limits kept per client (wrong API keys).
        let app = app
            .clone()
            .map_request(move |mut request: Request<Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                request
            });
        let mut stopping = stopping.clone();
        let open = open.clone();
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read)
                .keep_alive(true);
            let connection =
                builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
            tokio::pin!(connection);
            let stop_asked = async move {
                loop {
                    let asked = *stopping.borrow_and_update();
                    if asked || stopping.changed().await.is_err() {
                        break;
                    }
                }
            };
            tokio::select! {
                _ = connection.as_mut() => {}
                () = stop_asked => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
            drop((slot, open));
        });
    }
    let _ = stop.send(true);
    drop(open);
    let _ = all_closed.recv().await;
}

/// Tells a connection beyond the cap why it is closed.
async fn refuse(mut stream: TcpStream, max: usize) {
    tracing::warn!("refused a connection: {max} are open, the most this server keeps");
    let body = ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        kind: ErrorKind::Unavailable,
        message: format!(
            "the server has {max} connections open, the most it keeps; retry in a moment"
        ),
        param: None,
        code: Some("too_many_connections"),
    }
    .body()
    .to_string();
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n\
         Retry-After: 1\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, async {
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// Reads the whole body (at most [`MAX_BODY_BYTES`]) within `limit` before the handler
/// runs; every handler reads its whole body anyway. A body that takes longer is 408, a
/// larger one 413.
async fn read_body_within(limit: Duration, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let bytes = match tokio::time::timeout(limit, axum::body::to_bytes(body, MAX_BODY_BYTES)).await
    {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(err)) => {
            return ApiError {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                ..ApiError::bad_request(format!(
                    "cannot read the request body (at most {MAX_BODY_BYTES} bytes): {err}"
                ))
            }
            .into_response()
        }
        Err(_) => {
            return ApiError {
                status: StatusCode::REQUEST_TIMEOUT,
                ..ApiError::bad_request(format!(
                    "the request body did not arrive within {} s",
                    limit.as_secs_f64()
                ))
            }
            .into_response()
        }
    };
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_soft_file_limit() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max cpu time              unlimited            unlimited            seconds\n\
                      Max open files            256                  1048576              files\n";
        assert_eq!(soft_file_limit(limits), Some(256));
        assert_eq!(soft_file_limit("nothing here"), None);
        assert!((32..=1024).contains(&default_max_connections()));
    }
}
