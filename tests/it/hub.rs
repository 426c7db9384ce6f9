//! Getting the model from the Hub, end to end: the real `smolbot` binary against a local HTTP
//! server on 127.0.0.1 that mimics the Hub's `resolve` endpoint (HEAD with ETag /
//! X-Linked-Etag / X-Linked-Size / X-Repo-Commit and a redirect, GET with Range), with
//! `HF_ENDPOINT` and `HF_HOME` set on the child process only.

use crate::common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};

const REPO: &str = "test-org/Tiny-GGUF";
const FILE: &str = "tiny.gguf";
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
/// Connections the fake Hub serves before its thread ends.
const MAX_CONNECTIONS: usize = 32;

/// How the fake Hub behaves.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// Serves the file faithfully.
    Good,
    /// Closes the connection halfway through the body of the first GET.
    CutFirst,
    /// Serves different bytes from the ones whose hash it advertises.
    Corrupt,
}

/// One request the fake Hub saw: method, path, Range header.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    range: Option<String>,
}

struct FakeHub {
    endpoint: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn start_hub(body: Vec<u8>, mode: Mode) -> FakeHub {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        let hash = sha256_hex(&body);
        let mut gets = 0usize;
        for stream in listener.incoming().take(MAX_CONNECTIONS) {
            let Ok(stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            if let Some(req) = read_request(&stream) {
                log.lock().unwrap().push(req.clone());
                if req.method == "GET" && req.path.starts_with("/cdn/") {
                    gets += 1;
                }
                respond(stream, &req, &body, &hash, mode, gets);
            }
        }
    });
    FakeHub { endpoint, seen }
}

fn read_request(stream: &TcpStream) -> Option<Seen> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut range = None;
    for _ in 0..100 {
        let mut h = String::new();
        if reader.read_line(&mut h).ok()? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.trim().eq_ignore_ascii_case("range") {
                range = Some(v.trim().to_string());
            }
        }
    }
    Some(Seen {
        method,
        path,
        range,
    })
}

fn respond(mut s: TcpStream, req: &Seen, body: &[u8], hash: &str, mode: Mode, gets: usize) {
    let resolve = format!("/{REPO}/resolve/");
    let blob = format!("/cdn/{hash}");
    if req.path.starts_with(&resolve) && req.path.ends_with(&format!("/{FILE}")) {
        // The Hub's answer for an LFS file: a redirect to the CDN carrying the blob's identity.
        let head = format!(
            "HTTP/1.1 302 Found\r\nLocation: {blob}\r\nX-Linked-Etag: \"{hash}\"\r\n\
             X-Linked-Size: {}\r\nX-Repo-Commit: {COMMIT}\r\nETag: \"0000\"\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let _ = s.write_all(head.as_bytes());
    } else if req.path == blob && req.method == "GET" {
        let mut served = body.to_vec();
        if mode == Mode::Corrupt {
            served[body.len() / 2] ^= 0xff;
        }
        let start = req
            .range
            .as_deref()
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.trim_end_matches('-').parse::<usize>().ok())
            .unwrap_or(0)
            .min(served.len());
        let part = &served[start..];
        let status = if req.range.is_some() {
            format!(
                "206 Partial Content\r\nContent-Range: bytes {start}-{}/{}",
                served.len() - 1,
                served.len()
            )
        } else {
            "200 OK".to_string()
        };
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\n\
             Connection: close\r\n\r\n",
            part.len()
        );
        let _ = s.write_all(head.as_bytes());
        if mode == Mode::CutFirst && gets == 1 {
            let _ = s.write_all(&part[..part.len() / 2]);
            let _ = s.flush();
            let _ = s.shutdown(std::net::Shutdown::Both);
            return;
        }
        let _ = s.write_all(part);
    } else {
        let msg = "Entry not found";
        let head = format!(
            "HTTP/1.1 404 Not Found\r\nX-Error-Code: EntryNotFound\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{msg}",
            msg.len()
        );
        let _ = s.write_all(head.as_bytes());
    }
    let _ = s.flush();
    // Let the client read everything before the socket goes away.
    let mut rest = [0u8; 64];
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    let _ = s.read(&mut rest);
}

fn scratch(name: &str) -> PathBuf {
    let dir = common::root()
        .join("target")
        .join("test-scratch")
        .join(format!("hub-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn smolbot(endpoint: &str, home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_smolbot"))
        .args(args)
        .env("HF_ENDPOINT", endpoint)
        .env("HF_HOME", home)
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
        .env_remove("HF_HUB_CACHE")
        .env_remove("HF_TOKEN")
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("SMOLBOT_MODEL")
        .env_remove("SMOLBOT_STUB")
        .env_remove("SMOLBOT_HF_REPO")
        .env_remove("SMOLBOT_HF_FILE")
        .env_remove("SMOLBOT_HF_REVISION")
        .output()
        .expect("run smolbot")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn tiny_bytes() -> Vec<u8> {
    std::fs::read(common::tiny_model()).unwrap()
}

fn blob_dir(home: &Path) -> PathBuf {
    home.join("hub/models--test-org--Tiny-GGUF/blobs")
}

const SPEC: &str = "test-org/Tiny-GGUF:tiny.gguf";

#[test]
fn fresh_download_lands_in_the_cache_layout_and_is_listed() {
    let body = tiny_bytes();
    let hub = start_hub(body.clone(), Mode::Good);
    let home = scratch("fresh");
    let out = smolbot(&hub.endpoint, &home, &["pull", SPEC]);
    assert!(out.status.success(), "pull failed: {}", text(&out.stderr));

    let hash = sha256_hex(&body);
    let repo = home.join("hub/models--test-org--Tiny-GGUF");
    let blob = repo.join("blobs").join(&hash);
    let snapshot = repo.join("snapshots").join(COMMIT).join(FILE);
    assert_eq!(std::fs::read(&blob).unwrap(), body);
    assert_eq!(std::fs::read(&snapshot).unwrap(), body);
    assert!(std::fs::symlink_metadata(&snapshot)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(
        std::fs::read_to_string(repo.join("refs/main")).unwrap(),
        COMMIT
    );
    assert_eq!(text(&out.stdout).trim(), snapshot.display().to_string());

    let list = smolbot(&hub.endpoint, &home, &["list"]);
    assert!(list.status.success(), "{}", text(&list.stderr));
    let shown = text(&list.stdout);
    assert!(shown.contains(SPEC), "{shown}");
    assert!(shown.contains(&snapshot.display().to_string()), "{shown}");
    assert!(shown.contains("01234567"), "{shown}");

    // A pinned commit that is cached is served without asking the Hub again.
    let before = hub.seen.lock().unwrap().len();
    let again = smolbot(&hub.endpoint, &home, &["pull", SPEC, "--revision", COMMIT]);
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert_eq!(hub.seen.lock().unwrap().len(), before);
}

#[test]
fn cut_connection_resumes_with_range_to_identical_bytes() {
    let body = tiny_bytes();
    let hub = start_hub(body.clone(), Mode::CutFirst);
    let home = scratch("resume");
    let first = smolbot(&hub.endpoint, &home, &["pull", SPEC]);
    assert!(!first.status.success(), "the cut download should fail");
    let err = text(&first.stderr);
    assert!(
        err.contains("interrupted") && err.contains("resume"),
        "{err}"
    );
    let partial = blob_dir(&home).join(format!("{}.incomplete", sha256_hex(&body)));
    let kept = std::fs::metadata(&partial)
        .expect("partial file kept")
        .len();
    assert!(kept > 0 && kept < body.len() as u64, "kept {kept} bytes");

    let second = smolbot(&hub.endpoint, &home, &["pull", SPEC]);
    assert!(second.status.success(), "{}", text(&second.stderr));
    let ranges: Vec<Option<String>> = hub
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.method == "GET" && s.path.starts_with("/cdn/"))
        .map(|s| s.range.clone())
        .collect();
    assert_eq!(ranges, vec![None, Some(format!("bytes={kept}-"))]);
    let path = PathBuf::from(text(&second.stdout).trim());
    assert_eq!(std::fs::read(path).unwrap(), body);
    assert!(!partial.exists());
}

#[test]
fn corrupted_file_is_rejected_and_removed() {
    let body = tiny_bytes();
    let hub = start_hub(body.clone(), Mode::Corrupt);
    let home = scratch("corrupt");
    let out = smolbot(&hub.endpoint, &home, &["pull", SPEC]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("corrupted"), "{err}");
    assert!(err.contains(&sha256_hex(&body)), "{err}");
    let left: Vec<_> = std::fs::read_dir(blob_dir(&home))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "corrupt bytes left behind: {left:?}");
    assert!(!home
        .join("hub/models--test-org--Tiny-GGUF/snapshots")
        .exists());
}

#[test]
fn missing_file_is_explained() {
    let hub = start_hub(tiny_bytes(), Mode::Good);
    let home = scratch("missing");
    let out = smolbot(
        &hub.endpoint,
        &home,
        &["pull", "test-org/Tiny-GGUF:nope.gguf", "--revision", "v9"],
    );
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("not found"), "{err}");
    for part in ["test-org/Tiny-GGUF", "nope.gguf", "v9", "404"] {
        assert!(err.contains(part), "{part} missing from: {err}");
    }
}

#[test]
fn serve_offline_without_a_model_says_how_to_fix_it() {
    // Nothing listens on a port we bound and released.
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let home = scratch("offline");
    let out = smolbot(&dead, &home, &["serve", "--port", "0"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    let url = format!("{dead}/ggml-org/SmolLM3-3B-GGUF/resolve/");
    for part in [
        url.as_str(),
        "SmolLM3-Q4_K_M.gguf",
        "--model",
        "smolbot pull",
        "--stub",
    ] {
        assert!(err.contains(part), "{part} missing from: {err}");
    }
}

#[test]
fn serve_uses_a_cached_model_without_the_network() {
    let body = tiny_bytes();
    let hub = start_hub(body, Mode::Good);
    let home = scratch("serve-cached");
    let pulled = smolbot(&hub.endpoint, &home, &["pull", SPEC, "--revision", COMMIT]);
    assert!(pulled.status.success(), "{}", text(&pulled.stderr));
    // The cached file is found offline; the bad port then stops serve before it runs.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_smolbot"));
    let out = cmd
        .args([
            "serve",
            "--hf-repo",
            REPO,
            "--hf-file",
            FILE,
            "--hf-revision",
            COMMIT,
            "--host",
            "256.0.0.1",
        ])
        .env("HF_HOME", &home)
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_ENDPOINT", "http://127.0.0.1:9")
        .env_remove("SMOLBOT_MODEL")
        .env_remove("SMOLBOT_STUB")
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert!(!err.contains("no model to serve"), "{err}");
    assert!(err.contains("cannot listen on 256.0.0.1"), "{err}");
}
