//! Cross-site requests (issue 14, finding 5): JSON routes read only bodies sent as JSON (415
//! otherwise, which is what a page on another site can send without asking), and every
//! state-changing route, page forms included, refuses a request a browser says came from
//! another site (403). Over a real socket, with the headers browsers send.

use crate::common;

use common::wire::{request, serve, Served};
use smolbot::web::{app, AppState};

async fn server() -> (Served, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = smolbot::services::SessionStore::open(dir.path())
        .await
        .expect("store opens");
    let engine = common::stub_engine(0.0).await;
    let state = AppState::new(engine, store, None);
    (serve(app(state)).await, dir)
}

const JSON: &str = "Content-Type: application/json";

async fn conversation_count(served: &Served) -> usize {
    let list = request(served.addr, "GET", "/api/conversations", &[], "").await;
    let list: serde_json::Value = serde_json::from_str(&list.body).expect("json");
    list["data"].as_array().expect("a list").len()
}

async fn conversation(served: &Served) -> String {
    let reply = request(served.addr, "POST", "/api/conversations", &[JSON], "{}").await;
    assert_eq!(reply.status, 201, "{reply:?}");
    let value: serde_json::Value = serde_json::from_str(&reply.body).expect("json");
    value["id"].as_str().expect("id").to_owned()
}

#[tokio::test]
async fn json_routes_read_only_json() {
    let (served, _dir) = server().await;
    let id = conversation(&served).await;
    let chat = r#"{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}"#;
    let routes = [
        (
            "POST",
            "/api/conversations".to_owned(),
            r#"{"title": "planted"}"#,
        ),
        (
            "POST",
            format!("/api/conversations/{id}/messages"),
            r#"{"content": "hi"}"#,
        ),
        (
            "PATCH",
            format!("/api/conversations/{id}"),
            r#"{"title": "renamed"}"#,
        ),
        (
            "POST",
            "/api/conversations/import".to_owned(),
            r#"{"role": "user", "content": "hi"}"#,
        ),
        ("POST", "/v1/chat/completions".to_owned(), chat),
        (
            "POST",
            "/v1/completions".to_owned(),
            r#"{"prompt": "hi", "max_tokens": 2}"#,
        ),
        ("POST", "/tokenize".to_owned(), r#"{"content": "hi"}"#),
        ("POST", "/detokenize".to_owned(), r#"{"tokens": [1]}"#),
        ("POST", "/apply-template".to_owned(), chat),
    ];
    for (method, path, body) in &routes {
        for content_type in [
            Some("Content-Type: text/plain"),
            Some("Content-Type: application/x-www-form-urlencoded"),
            Some("Content-Type: multipart/form-data; boundary=x"),
            None,
        ] {
            let headers: Vec<&str> = content_type.into_iter().collect();
            let reply = request(served.addr, method, path, &headers, body).await;
            assert_eq!(
                reply.status, 415,
                "{method} {path} {content_type:?}: {reply:?}"
            );
            assert!(
                reply.body.contains("application/json")
                    && reply.body.contains("unsupported_media_type"),
                "{method} {path}: {}",
                reply.body
            );
        }
    }
    assert_eq!(conversation_count(&served).await, 1, "nothing was created");
    let show = request(
        served.addr,
        "GET",
        &format!("/api/conversations/{id}"),
        &[],
        "",
    )
    .await;
    assert!(!show.body.contains("renamed"), "{}", show.body);

    for (method, path, body) in &routes {
        let charset = "Content-Type: application/json; charset=utf-8";
        let reply = request(served.addr, method, path, &[charset], body).await;
        assert!(reply.status < 300, "{method} {path} as JSON: {reply:?}");
    }
    let jsonl = request(
        served.addr,
        "POST",
        "/api/conversations/import",
        &["Content-Type: application/x-ndjson"],
        "{\"role\": \"user\", \"content\": \"hi\"}\n",
    )
    .await;
    assert_eq!(jsonl.status, 201, "JSON Lines imports: {jsonl:?}");
}

#[tokio::test]
async fn other_sites_cannot_change_anything() {
    let (served, _dir) = server().await;
    let id = conversation(&served).await;
    let form = "Content-Type: application/x-www-form-urlencoded";
    let writes = [
        (
            "POST",
            "/api/conversations".to_owned(),
            JSON,
            "{}".to_owned(),
        ),
        (
            "POST",
            format!("/api/conversations/{id}/messages"),
            JSON,
            r#"{"content": "hi"}"#.to_owned(),
        ),
        (
            "POST",
            format!("/api/conversations/{id}/stop"),
            JSON,
            String::new(),
        ),
        (
            "DELETE",
            format!("/api/conversations/{id}"),
            JSON,
            String::new(),
        ),
        (
            "POST",
            "/v1/chat/completions".to_owned(),
            JSON,
            r#"{"messages": [{"role": "user", "content": "hi"}]}"#.to_owned(),
        ),
        (
            "POST",
            "/chat/send".to_owned(),
            form,
            format!("conversation={id}&message=hi"),
        ),
        (
            "POST",
            format!("/c/{id}/delete"),
            form,
            format!("conversation={id}"),
        ),
        ("POST", "/login".to_owned(), form, "key=x".to_owned()),
    ];
    let port = served.addr.port();
    let foreign = [
        vec!["Origin: https://evil.example".to_owned()],
        vec![format!("Origin: http://127.0.0.1:{}", port + 1)],
        vec!["Origin: null".to_owned()],
        vec!["Sec-Fetch-Site: cross-site".to_owned()],
        vec![
            "Sec-Fetch-Site: same-site".to_owned(),
            format!("Origin: http://localhost:{}", port + 1),
        ],
    ];
    for (method, path, content_type, body) in &writes {
        for from in &foreign {
            let mut headers: Vec<&str> = vec![content_type, "HX-Request: true"];
            headers.extend(from.iter().map(String::as_str));
            let reply = request(served.addr, method, path, &headers, body).await;
            assert_eq!(
                reply.status, 403,
                "{method} {path} from {from:?}: {reply:?}"
            );
            assert!(
                reply.body.contains("cross-site"),
                "{method} {path}: {}",
                reply.body
            );
        }
    }
    assert_eq!(
        conversation_count(&served).await,
        1,
        "nothing was created or deleted"
    );
    let messages = request(
        served.addr,
        "GET",
        &format!("/api/conversations/{id}/messages"),
        &[],
        "",
    )
    .await;
    assert!(
        !messages.body.contains("\"hi\""),
        "nothing was sent: {}",
        messages.body
    );

    // Reads stay open to links from anywhere; the page's own requests and non-browser
    // clients write.
    let read = request(
        served.addr,
        "GET",
        "/api/conversations",
        &["Origin: https://evil.example", "Sec-Fetch-Site: cross-site"],
        "",
    )
    .await;
    assert_eq!(read.status, 200);
    let own = format!("Origin: http://127.0.0.1:{port}");
    for headers in [
        vec![JSON, "Sec-Fetch-Site: same-origin"],
        vec![JSON, own.as_str()],
        vec![JSON],
    ] {
        let reply = request(served.addr, "POST", "/api/conversations", &headers, "{}").await;
        assert_eq!(reply.status, 201, "{headers:?}: {reply:?}");
    }
    let page = request(
        served.addr,
        "POST",
        "/chat/send",
        &[
            form,
            "HX-Request: true",
            "Sec-Fetch-Site: same-origin",
            &own,
        ],
        &format!("conversation={id}&message=hi"),
    )
    .await;
    assert_eq!(page.status, 200, "the page itself sends: {page:?}");
}
