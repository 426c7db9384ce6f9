//! Configuration and startup of `smolbot serve`, through the real binary: the TOML config
//! file and its precedence (flag > environment > file > default), its errors, the warning for
//! a server open to the network without an API key; and, in process, the loading gate that
//! answers `/health` while the model loads.
//!
//! Each child gets a fresh `XDG_CONFIG_HOME` and no `SMOLBOT_*` variables from the caller, so
//! a developer's own configuration cannot leak into the results.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::routing::get;
use axum::Router;
use smolbot::services::sessions::ConversationSettings;
use smolbot::services::SessionStore;
use smolbot::web::app::LoadingShell;
use smolbot::web::hosts::AllowedHosts;
use tower::ServiceExt;

/// Bounds a wait so a hang fails the test instead of blocking CI; never a measurement.
const DEADLINE: Duration = Duration::from_secs(120);

/// `smolbot` with a clean environment for configuration: no `SMOLBOT_*` from the caller and
/// an empty config home, plus `env`.
fn smolbot(config_home: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_smolbot"));
    for (name, _) in std::env::vars() {
        if name.starts_with("SMOLBOT_") {
            command.env_remove(name);
        }
    }
    command
        .args(args)
        .env("XDG_CONFIG_HOME", config_home)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .envs(env.iter().copied());
    command
}

/// A running server killed when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `serve` and returns its stderr up to the line saying where it serves, or panics
/// with what it wrote if it ends first.
fn serve_until_ready(command: &mut Command) -> String {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start smolbot serve");
    let stderr = child.stderr.take().expect("stderr");
    let server = Server(child);
    let (lines, received) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let mut log = String::new();
    loop {
        match received.recv_timeout(DEADLINE) {
            Ok(line) => {
                log.push_str(&line);
                log.push('\n');
                if line.contains("on http://") {
                    drop(server);
                    return log;
                }
            }
            Err(_) => panic!("the server never said where it serves; it wrote:\n{log}"),
        }
    }
}

/// The host in the "serving … on http://HOST:PORT" line.
fn served_host(log: &str) -> String {
    let line = log
        .lines()
        .find(|l| l.contains("on http://"))
        .expect("the serving line");
    let address = line.split("on http://").nth(1).expect("an address");
    address.rsplit_once(':').expect("host:port").0.to_owned()
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

#[test]
fn config_file_env_and_flag_precedence() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("config-home");
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let file = dir.path().join("smolbot.toml");
    // Every 127.x.y.z address is loopback on Linux: the host shows which layer won.
    write(&file, "host = \"127.0.0.3\"\nstub = true\nport = 0\n");
    let file = file.to_str().unwrap();

    let base = ["serve", "--config", file, "--data-dir", data];
    let log = serve_until_ready(&mut smolbot(&home, &base, &[]));
    assert_eq!(served_host(&log), "127.0.0.3", "the file's host: {log}");
    assert!(
        log.contains("smolbot-stub"),
        "the file's stub = true: {log}"
    );

    let env = [("SMOLBOT_HOST", "127.0.0.4")];
    let log = serve_until_ready(&mut smolbot(&home, &base, &env));
    assert_eq!(served_host(&log), "127.0.0.4", "env beats the file: {log}");

    let flagged = [&base[..], &["--host", "127.0.0.5"]].concat();
    let log = serve_until_ready(&mut smolbot(&home, &flagged, &env));
    assert_eq!(served_host(&log), "127.0.0.5", "the flag beats env: {log}");

    let by_env = [("SMOLBOT_CONFIG", file)];
    let log = serve_until_ready(&mut smolbot(&home, &["serve", "--data-dir", data], &by_env));
    assert_eq!(
        served_host(&log),
        "127.0.0.3",
        "SMOLBOT_CONFIG names it: {log}"
    );
}

#[test]
fn default_config_file_is_read_when_present() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("config-home");
    write(
        &home.join("smolbot").join("config.toml"),
        "host = \"127.0.0.6\"\nport = 0\nstub = true\n",
    );
    let data = dir.path().join("data");
    let args = ["serve", "--data-dir", data.to_str().unwrap()];
    let log = serve_until_ready(&mut smolbot(&home, &args, &[]));
    assert_eq!(served_host(&log), "127.0.0.6", "{log}");
}

#[test]
fn bad_config_files_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("config-home");
    let cases = [
        ("unknown.toml", "stub = true\nprot = 8080\n", "`prot`"),
        ("type.toml", "port = \"eighty\"\n", "`port`"),
        ("range.toml", "port = 70000\n", "`port`"),
        ("syntax.toml", "port = \n", "TOML"),
    ];
    for (name, text, expected) in cases {
        let file = dir.path().join(name);
        write(&file, text);
        let out = smolbot(&home, &["serve", "--config", file.to_str().unwrap()], &[])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name} was accepted: {stderr}");
        assert!(
            stderr.contains(name) && stderr.contains(expected),
            "{name}: the error must name the file and {expected}: {stderr}"
        );
    }
    let missing = dir.path().join("missing.toml");
    let out = smolbot(
        &home,
        &["serve", "--config", missing.to_str().unwrap()],
        &[],
    )
    .output()
    .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));
}

#[test]
fn listening_beyond_loopback_warns_of_no_key_or_no_tls() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("config-home");
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let open = ["serve", "--stub", "--host", "0.0.0.0", "--port", "0"];
    let args = [&open[..], &["--data-dir", data]].concat();
    let log = serve_until_ready(&mut smolbot(&home, &args, &[]));
    let warning = log
        .lines()
        .find(|l| l.starts_with("warning:"))
        .unwrap_or_else(|| panic!("no warning: {log}"));
    assert!(
        warning.contains("0.0.0.0") && warning.contains("--api-key"),
        "{warning}"
    );

    let keyed = [&args[..], &["--api-key", "k"]].concat();
    let log = serve_until_ready(&mut smolbot(&home, &keyed, &[]));
    let warning = log
        .lines()
        .find(|l| l.starts_with("warning:"))
        .unwrap_or_else(|| panic!("a key without TLS still warns: {log}"));
    assert!(warning.contains("without TLS"), "{warning}");

    let local = ["serve", "--stub", "--port", "0", "--data-dir", data];
    let log = serve_until_ready(&mut smolbot(&home, &local, &[]));
    assert!(!log.contains("warning:"), "loopback is safe: {log}");
}

async fn call(app: &Router, path: &str) -> (StatusCode, String, Option<String>) {
    let response = app
        .clone()
        .oneshot(Request::get(path).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let retry = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, String::from_utf8_lossy(&body).into_owned(), retry)
}

#[tokio::test]
async fn loading_gate_answers_while_the_model_loads_then_hands_over() {
    let ready = Arc::new(OnceLock::new());
    let gate = smolbot::web::app::loading_gate(Arc::clone(&ready), LoadingShell::default());

    let (status, body, retry) = call(&gate, "/health").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(retry.is_some());
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}})
    );

    let (status, body, retry) = call(&gate, "/v1/models").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(retry.is_some());
    assert!(body.contains("loading"), "{body}");

    let (status, body, _) = call(&gate, "/").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("badge loading"), "{body}");
    assert!(
        body.contains("Conversations show once the model is loaded."),
        "no store, no list: {body}"
    );
    let (status, _, _) = call(&gate, "/static/chat.css").await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the loading page has its stylesheet"
    );

    let app = Router::new().route("/health", get(|| async { "ready" }));
    assert!(ready.set(app).is_ok());
    let (status, body, _) = call(&gate, "/health").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ready"));
}

/// The page while the model loads is the chat page's shell: the sidebar with the
/// conversations (to the hosts the app answers), the header with a loading badge, and a
/// composer that cannot send yet; `/c/{id}` too, so a reload of a chat lands back in it.
#[tokio::test]
async fn the_loading_page_is_the_chat_shell_with_the_list_and_a_disabled_composer() {
    let store = SessionStore::in_memory().expect("in-memory store");
    let kept = store
        .create(Some("Otters <3".into()), ConversationSettings::default())
        .await
        .expect("created");
    let ready = Arc::new(OnceLock::new());
    let shell = LoadingShell {
        store: Some(store),
        hosts: AllowedHosts::default(),
    };
    let gate = smolbot::web::app::loading_gate(Arc::clone(&ready), shell);

    for path in ["/".to_owned(), format!("/c/{}", kept.id)] {
        let (status, body, retry) = call(&gate, &path).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{path}");
        assert!(retry.is_some());
        assert!(
            body.contains(r#"<aside id="sidebar" class="sidebar""#),
            "{body}"
        );
        assert!(body.contains(r#"<div class="column">"#), "{body}");
        assert!(body.contains("Otters &lt;3"), "the list, escaped: {body}");
        assert!(!body.contains("Otters <3"), "{body}");
        assert!(
            body.contains(&format!(r#"href="/c/{}""#, kept.id)),
            "{body}"
        );
        assert!(
            body.contains(r#"<textarea id="message" name="message" rows="2" placeholder="The model is loading…" disabled>"#),
            "{body}"
        );
        assert!(
            body.contains(r#"<button type="submit" class="send" disabled>"#),
            "{body}"
        );
        assert!(body.contains("badge loading"), "{body}");
        assert!(!body.contains("model · loading"), "{body}");
        assert!(!body.contains("<script>"), "no inline script: {body}");
    }
    let (_, body, _) = call(&gate, &format!("/c/{}", kept.id)).await;
    assert!(body.contains(r#"aria-current="page""#), "{body}");

    // A host the app does not answer (DNS rebinding) sees no titles.
    let response = gate
        .clone()
        .oneshot(
            Request::get("/")
                .header("host", "attacker.example")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    let body = String::from_utf8_lossy(&body);
    assert!(!body.contains("Otters"), "{body}");
}
