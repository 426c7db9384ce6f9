//! `--api-key` guards everything but `/health` (issue 14, finding 3): over a real socket, every
//! API and page route refuses a request without the key, the APIs take
//! `Authorization: Bearer KEY`, and the page logs in once and then rides an `HttpOnly`,
//! `SameSite=Strict` session cookie (`Secure` behind a TLS proxy). Wrong keys are limited per
//! client address (429 with `Retry-After`), and the page logs out.

use crate::common;

use std::net::{IpAddr, Ipv4Addr};

use common::wire::{request, request_from, serve, Raw, Served};
use smolbot::web::{app, AppState};

const KEY: &str = "sesame-123";

/// A stub server with a conversation store, keyed with `key`.
async fn server(key: Option<&str>) -> (Served, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = smolbot::services::SessionStore::open(dir.path())
        .await
        .expect("store opens");
    let engine = common::stub_engine(0.0).await;
    let state = AppState::new(engine, store, key.map(str::to_owned));
    (serve(app(state)).await, dir)
}

fn bearer() -> String {
    format!("Authorization: Bearer {KEY}")
}

/// Creates a conversation with the key and returns its id.
async fn conversation(served: &Served) -> String {
    let reply = request(
        served.addr,
        "POST",
        "/api/conversations",
        &[&bearer(), "Content-Type: application/json"],
        r#"{"title": "secret plans"}"#,
    )
    .await;
    assert_eq!(reply.status, 201, "{reply:?}");
    let value: serde_json::Value = serde_json::from_str(&reply.body).expect("json");
    value["id"].as_str().expect("id").to_owned()
}

#[tokio::test]
async fn every_route_but_health_needs_the_key() {
    let (served, _dir) = server(Some(KEY)).await;
    let id = conversation(&served).await;
    let json = "Content-Type: application/json";
    let form = "Content-Type: application/x-www-form-urlencoded";
    let chat = r#"{"messages": [{"role": "user", "content": "hi"}]}"#;
    let api: Vec<(&str, String, &str, String)> = vec![
        ("GET", "/v1/models".into(), json, String::new()),
        ("POST", "/v1/chat/completions".into(), json, chat.into()),
        ("GET", "/api/conversations".into(), json, String::new()),
        ("POST", "/api/conversations".into(), json, "{}".into()),
        (
            "GET",
            format!("/api/conversations/{id}"),
            json,
            String::new(),
        ),
        (
            "PATCH",
            format!("/api/conversations/{id}"),
            json,
            r#"{"title":"x"}"#.into(),
        ),
        (
            "DELETE",
            format!("/api/conversations/{id}"),
            json,
            String::new(),
        ),
        (
            "GET",
            format!("/api/conversations/{id}/messages"),
            json,
            String::new(),
        ),
        (
            "POST",
            format!("/api/conversations/{id}/messages"),
            json,
            r#"{"content":"hi"}"#.into(),
        ),
        (
            "GET",
            format!("/api/conversations/{id}/export"),
            json,
            String::new(),
        ),
        (
            "POST",
            "/api/conversations/import".into(),
            json,
            r#"{"role":"user","content":"hi"}"#.into(),
        ),
        ("GET", "/metrics".into(), json, String::new()),
        ("GET", "/api/status".into(), json, String::new()),
        (
            "POST",
            "/tokenize".into(),
            json,
            r#"{"content":"hi"}"#.into(),
        ),
        ("GET", "/tokenizer_info".into(), json, String::new()),
        ("POST", "/apply-template".into(), json, chat.into()),
    ];
    // Each wrong key from an address of its own, so none reaches the limit on wrong keys.
    let mut clients = (1..=u8::MAX).map(|n| Some(IpAddr::V4(Ipv4Addr::new(127, 0, 1, n))));
    for (method, path, content_type, body) in &api {
        for auth in [
            "",
            "Authorization: Bearer wrong",
            "Authorization: sesame-123",
        ] {
            let headers: Vec<&str> = [*content_type, auth]
                .into_iter()
                .filter(|h| !h.is_empty())
                .collect();
            let from = clients.next().expect("an address");
            let reply = request_from(from, served.addr, method, path, &headers, body).await;
            assert_eq!(
                reply.status, 401,
                "{method} {path} with {auth:?}: {reply:?}"
            );
            assert!(
                reply.body.contains("invalid_api_key"),
                "{method} {path}: {}",
                reply.body
            );
        }
    }
    let page: Vec<(&str, String, String)> = vec![
        ("GET", "/chat/conversations".into(), String::new()),
        ("GET", format!("/c/{id}/export?format=json"), String::new()),
        ("GET", "/chat/status".into(), String::new()),
        (
            "POST",
            "/chat/send".into(),
            format!("conversation={id}&message=hi"),
        ),
        (
            "POST",
            format!("/c/{id}/rename"),
            format!("conversation={id}&title=x"),
        ),
        (
            "POST",
            format!("/c/{id}/delete"),
            format!("conversation={id}"),
        ),
        (
            "POST",
            "/chat/settings".into(),
            format!("conversation={id}&temperature=1"),
        ),
    ];
    for (method, path, body) in &page {
        let reply = request(served.addr, method, path, &[form, "HX-Request: true"], body).await;
        assert_eq!(reply.status, 401, "{method} {path}: {reply:?}");
        assert_eq!(
            reply.header("hx-redirect"),
            Some("/login"),
            "{method} {path}"
        );
        assert!(
            !reply.body.contains("secret plans"),
            "{method} {path}: {}",
            reply.body
        );
    }
    for path in ["/".to_owned(), format!("/c/{id}")] {
        let reply = request(served.addr, "GET", &path, &[], "").await;
        assert_eq!(reply.status, 303, "{path}: {reply:?}");
        assert!(
            reply.header("location").unwrap().starts_with("/login"),
            "{path}"
        );
    }

    // Nothing was changed or leaked: the one conversation is there, untouched.
    let list = request(served.addr, "GET", "/api/conversations", &[&bearer()], "").await;
    assert_eq!(list.status, 200, "{list:?}");
    let list: serde_json::Value = serde_json::from_str(&list.body).expect("json");
    let list = list
        .as_array()
        .or_else(|| list["data"].as_array())
        .expect("a list");
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["title"], "secret plans");

    let health = request(served.addr, "GET", "/health", &[], "").await;
    assert_eq!(health.status, 200, "{health:?}");
    for (method, path, content_type, body) in api.iter().filter(|(m, ..)| *m == "GET") {
        let reply = request(served.addr, method, path, &[*content_type, &bearer()], body).await;
        assert_eq!(reply.status, 200, "{method} {path} with the key: {reply:?}");
    }
}

fn cookie_of(reply: &Raw) -> String {
    let set = reply
        .header("set-cookie")
        .unwrap_or_else(|| panic!("no cookie: {reply:?}"));
    set.split(';').next().expect("name=value").to_owned()
}

#[tokio::test]
async fn the_page_logs_in_once_then_rides_a_session_cookie() {
    let (served, _dir) = server(Some(KEY)).await;
    let id = conversation(&served).await;
    let form = "Content-Type: application/x-www-form-urlencoded";

    let asked = request(served.addr, "GET", &format!("/c/{id}"), &[], "").await;
    assert_eq!(asked.status, 303);
    let login = asked.header("location").expect("location").to_owned();
    assert_eq!(login, format!("/login?next=/c/{id}"));
    let page = request(served.addr, "GET", &login, &[], "").await;
    assert_eq!(page.status, 200, "{page:?}");
    assert!(page.body.contains("type=\"password\""), "{}", page.body);
    assert!(
        page.body.contains("name=\"next\"") && page.body.contains(&id),
        "{}",
        page.body
    );

    let wrong = request(served.addr, "POST", "/login", &[form], "key=nope&next=%2F").await;
    assert_eq!(wrong.status, 401);
    assert!(wrong.body.contains("not right"), "{}", wrong.body);
    assert!(wrong.header("set-cookie").is_none());

    let body = format!("key={KEY}&next=%2Fc%2F{id}");
    let ok = request(served.addr, "POST", "/login", &[form], &body).await;
    assert_eq!(ok.status, 303, "{ok:?}");
    assert_eq!(ok.header("location"), Some(format!("/c/{id}").as_str()));
    let set = ok.header("set-cookie").expect("a cookie");
    assert!(set.starts_with("smolbot_session="), "{set}");
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set.contains(flag), "{flag} missing: {set}");
    }
    assert!(
        !set.contains("Secure"),
        "plain HTTP cannot keep a Secure cookie: {set}"
    );
    let cookie = format!("Cookie: {}", cookie_of(&ok));

    let chat = request(served.addr, "GET", &format!("/c/{id}"), &[&cookie], "").await;
    assert_eq!(chat.status, 200, "{chat:?}");
    assert!(chat.body.contains("secret plans"));
    let list = request(
        served.addr,
        "GET",
        "/chat/conversations",
        &[&cookie, "HX-Request: true"],
        "",
    )
    .await;
    assert_eq!(list.status, 200, "{list:?}");
    let forged = request(
        served.addr,
        "GET",
        "/",
        &["Cookie: smolbot_session=0000"],
        "",
    )
    .await;
    assert_eq!(forged.status, 303, "a made-up session is no session");

    let proxied = request(
        served.addr,
        "POST",
        "/login",
        &[form, "X-Forwarded-Proto: https"],
        &format!("key={KEY}&next=%2F%2Fevil.example"),
    )
    .await;
    assert_eq!(proxied.status, 303);
    assert_eq!(
        proxied.header("location"),
        Some("/"),
        "no redirect off the server"
    );
    assert!(proxied
        .header("set-cookie")
        .expect("cookie")
        .contains("; Secure"));
}

#[tokio::test]
async fn without_a_key_nothing_asks_for_one() {
    let (served, _dir) = server(None).await;
    let list = request(served.addr, "GET", "/api/conversations", &[], "").await;
    assert_eq!(list.status, 200, "{list:?}");
    let page = request(served.addr, "GET", "/", &[], "").await;
    assert_eq!(page.status, 200);
    let login = request(served.addr, "GET", "/login", &[], "").await;
    assert_eq!((login.status, login.header("location")), (303, Some("/")));
}

#[tokio::test]
async fn wrong_keys_are_limited_per_client_address() {
    let (served, _dir) = server(Some(KEY)).await;
    let addr = served.addr;
    let guesser = Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
    let other = Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)));
    let form = "Content-Type: application/x-www-form-urlencoded";
    let body = format!("key={KEY}&next=%2F");
    // A session from before the guessing keeps working.
    let login = request_from(guesser, addr, "POST", "/login", &[form], &body).await;
    assert_eq!(login.status, 303, "{login:?}");
    let cookie = format!("Cookie: {}", cookie_of(&login));

    for i in 0..smolbot::web::auth::MAX_FAILED_KEYS {
        let wrong = if i % 2 == 0 {
            request_from(
                guesser,
                addr,
                "GET",
                "/v1/models",
                &["Authorization: Bearer nope"],
                "",
            )
            .await
        } else {
            request_from(
                guesser,
                addr,
                "POST",
                "/login",
                &[form],
                "key=nope&next=%2F",
            )
            .await
        };
        assert_eq!(wrong.status, 401, "wrong key {i}: {wrong:?}");
    }
    let right = format!("Authorization: Bearer {KEY}");
    let limited = request_from(guesser, addr, "GET", "/v1/models", &[&right], "").await;
    assert_eq!(limited.status, 429, "{limited:?}");
    let wait: u64 = limited
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("seconds");
    assert!((1..=60).contains(&wait), "{wait}");
    assert!(
        limited.body.contains("too_many_key_attempts"),
        "{}",
        limited.body
    );
    let form_limited = request_from(guesser, addr, "POST", "/login", &[form], &body).await;
    assert_eq!(form_limited.status, 429, "{form_limited:?}");
    assert!(form_limited.header("retry-after").is_some());
    assert!(form_limited.header("set-cookie").is_none());

    let with_session = request_from(guesser, addr, "GET", "/", &[&cookie], "").await;
    assert_eq!(with_session.status, 200, "{with_session:?}");
    let elsewhere = request_from(other, addr, "GET", "/v1/models", &[&right], "").await;
    assert_eq!(elsewhere.status, 200, "another address is not held back");
}

#[tokio::test]
async fn logging_out_ends_the_session_and_clears_the_cookie() {
    let (served, _dir) = server(Some(KEY)).await;
    let form = "Content-Type: application/x-www-form-urlencoded";
    let login = request(
        served.addr,
        "POST",
        "/login",
        &[form],
        &format!("key={KEY}&next=%2F"),
    )
    .await;
    let cookie = format!("Cookie: {}", cookie_of(&login));
    let page = request(served.addr, "GET", "/", &[&cookie], "").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("action=\"/logout\""), "a logout button");

    let out = request(served.addr, "POST", "/logout", &[&cookie], "").await;
    assert_eq!(out.status, 303, "{out:?}");
    assert_eq!(out.header("location"), Some("/login"));
    let cleared = out.header("set-cookie").expect("the cookie is cleared");
    assert!(
        cleared.starts_with("smolbot_session=;") && cleared.contains("Max-Age=0"),
        "{cleared}"
    );
    let after = request(served.addr, "GET", "/", &[&cookie], "").await;
    assert_eq!(after.status, 303, "the old cookie is no session any more");

    let (open, _dir) = server(None).await;
    let page = request(open.addr, "GET", "/", &[], "").await;
    assert!(
        !page.body.contains("/logout"),
        "no key, nothing to log out of"
    );
}
