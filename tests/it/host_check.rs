//! DNS rebinding (issue 14, finding 4): a server on loopback answers only requests addressed to
//! a loopback name, plus the names `--allowed-hosts` adds; a page on `evil.example` that
//! re-points its name at 127.0.0.1 gets 421 and nothing of the conversations. Over a real
//! socket, with the `Host` header a browser would send.

use crate::common;

use common::wire::{request, serve, Served};
use smolbot::web::hosts::AllowedHosts;
use smolbot::web::{app, AppState};

/// A stub server with one stored conversation, answering `allowed`.
async fn server(allowed: Option<AllowedHosts>) -> (Served, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = smolbot::services::SessionStore::open(dir.path())
        .await
        .expect("store opens");
    store
        .create(Some("secret plans".into()), Default::default())
        .await
        .expect("a conversation");
    let engine = common::stub_engine(0.0).await;
    let mut state = AppState::new(engine, store, None);
    if let Some(allowed) = allowed {
        state = state.with_allowed_hosts(allowed);
    }
    (serve(app(state)).await, dir)
}

#[tokio::test]
async fn a_loopback_server_refuses_foreign_hosts() {
    let (served, _dir) = server(None).await;
    for path in [
        "/api/conversations",
        "/",
        "/v1/models",
        "/chat/conversations",
    ] {
        for host in [
            "evil.example",
            "evil.example:3000",
            "10.0.0.1",
            "localhost.evil.example",
        ] {
            let reply = request(served.addr, "GET", path, &[&format!("Host: {host}")], "").await;
            assert_eq!(reply.status, 421, "{path} for {host}: {reply:?}");
            assert!(!reply.body.contains("secret plans"), "{path} for {host}");
            assert!(
                reply.body.contains(host) && reply.body.contains("--allowed-hosts"),
                "{path}: the refusal says what was wrong: {}",
                reply.body
            );
        }
    }
    let api = request(
        served.addr,
        "GET",
        "/api/conversations",
        &["Host: evil.example"],
        "",
    )
    .await;
    assert!(api
        .header("content-type")
        .unwrap()
        .starts_with("application/json"));
    assert!(api.body.contains("host_not_allowed"), "{}", api.body);
    let page = request(served.addr, "GET", "/", &["Host: evil.example"], "").await;
    assert!(page
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));

    let port = served.addr.port();
    for host in [
        format!("localhost:{port}"),
        "localhost".into(),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
    ] {
        let reply = request(
            served.addr,
            "GET",
            "/api/conversations",
            &[&format!("Host: {host}")],
            "",
        )
        .await;
        assert_eq!(reply.status, 200, "{host}: {reply:?}");
        assert!(reply.body.contains("secret plans"));
    }
}

#[tokio::test]
async fn allowed_hosts_add_names() {
    let extra = vec!["chat.example".to_owned()];
    let allowed = AllowedHosts::for_bind("127.0.0.1".parse().unwrap(), &extra);
    let (served, _dir) = server(Some(allowed)).await;
    let ok = request(
        served.addr,
        "GET",
        "/api/conversations",
        &["Host: chat.example"],
        "",
    )
    .await;
    assert_eq!(ok.status, 200, "{ok:?}");
    let local = request(
        served.addr,
        "GET",
        "/api/conversations",
        &["Host: localhost"],
        "",
    )
    .await;
    assert_eq!(local.status, 200, "{local:?}");
    let other = request(
        served.addr,
        "GET",
        "/api/conversations",
        &["Host: evil.example"],
        "",
    )
    .await;
    assert_eq!(other.status, 421, "{other:?}");
}
