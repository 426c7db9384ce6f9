//! Fixtures shared by the end-to-end tests: the synthetic tiny SmolLM3 file (generated once
//! per test process), the real SmolLM2 model fetched by `scripts/fetch_models.sh`, goldens.

#![allow(dead_code)]

pub mod http;
/// The private PostgreSQL server of this test process (the store's unit tests use the same).
#[path = "../../../src/services/sessions/test_postgres.rs"]
pub mod postgres;
pub mod wire;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use sha2::{Digest, Sha256};
use smolbot::smollm3::synthetic::{write_gguf, SyntheticSpec};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The tiny synthetic model, written once per test process into the target dir. Each process
/// writes its own copy and renames it over `tiny.gguf`: two test runs (a debug and a release
/// one) can run at once over the same directory, a rename is atomic (one reading the old file
/// keeps it), and one file per process would pile up a copy per run.
pub fn tiny_model() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = root().join("target").join("test-models");
        std::fs::create_dir_all(&dir).expect("create target/test-models");
        let part = dir.join(format!("tiny-{}.part", std::process::id()));
        write_gguf(&SyntheticSpec::tiny(), &part).expect("write tiny model");
        let path = dir.join("tiny.gguf");
        std::fs::rename(&part, &path).expect("move the tiny model into place");
        path
    })
}

/// SmolLM2-135M-Instruct (Q4_1), from `SMOLBOT_SMOLLM2` or `models/` where the fetch script
/// puts it. Missing model is a test failure, not a skip: CI always fetches it.
pub fn smollm2_model() -> PathBuf {
    let path = std::env::var_os("SMOLBOT_SMOLLM2")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            root()
                .join("models")
                .join("SmolLM2-135M-Instruct.Q4_1.gguf")
        });
    assert!(
        path.exists(),
        "{} is missing: run scripts/fetch_models.sh (or set SMOLBOT_SMOLLM2)",
        path.display()
    );
    path
}

pub fn golden(name: &str) -> serde_json::Value {
    let path = root().join("tests").join("golden").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn sha256(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn u32s(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

pub fn f32s(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect()
}

/// Mean absolute difference of two NLL lists of equal length.
pub fn mean_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "NLL lists differ in length");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() as f64)
        .sum::<f64>()
        / a.len() as f64
}

/// Runs the real `smolbot` binary with `args` and collects its output.
pub fn smolbot(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_smolbot"))
        .args(args)
        .output()
        .expect("run smolbot")
}

/// Process output as text, for assertions and failure messages.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The engine over a GGUF file on the CPU, with a queue of 4: what the end-to-end tests of
/// the real model start.
pub async fn gguf_engine(path: &Path) -> smolbot::services::Engine {
    smolbot::services::Engine::start(
        smolbot::services::BackendSpec::Gguf {
            path: path.to_path_buf(),
            force_cpu: true,
            alias: None,
            context: Default::default(),
        },
        4,
    )
    .await
    .unwrap_or_else(|e| panic!("{} loads: {e}", path.display()))
}

/// The stub engine writing `tokens_per_second` (0: as fast as it can) with SmolLM3's
/// context, one generation at a time and up to 4 waiting: a predictable line for tests.
pub async fn stub_engine(tokens_per_second: f64) -> smolbot::services::Engine {
    use smolbot::services::stub::{StubConfig, STUB_CONTEXT_LENGTH};
    smolbot::services::Engine::start(
        smolbot::services::BackendSpec::Stub(StubConfig {
            tokens_per_second,
            context_length: STUB_CONTEXT_LENGTH,
        }),
        4,
    )
    .await
    .expect("stub engine starts")
}

/// The app on the stub over a conversation store in a temporary data directory, as
/// `smolbot serve --stub --data-dir DIR` builds it; the directory lives as long as this.
pub struct StoredApp {
    pub app: axum::Router,
    _dir: tempfile::TempDir,
}

pub async fn stored_app(tokens_per_second: f64) -> StoredApp {
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = stub_engine(tokens_per_second).await;
    let store = smolbot::services::SessionStore::open(dir.path())
        .await
        .expect("store opens");
    StoredApp {
        app: smolbot::web::app(smolbot::web::AppState::new(engine, store, None)),
        _dir: dir,
    }
}
