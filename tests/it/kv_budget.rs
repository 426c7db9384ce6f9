//! `--kv-budget` and `--ctx-size` on the real engine (tiny synthetic SmolLM3, trained for
//! 4,096 positions): the budget picks each sequence's context, the API reports it, a prompt
//! beyond it is refused with both numbers, and a context the budget cannot hold stops the
//! start with the numbers instead of running out of memory later.

use crate::common;

use common::http::*;
use common::tiny_model;

use axum::http::StatusCode;
use serde_json::json;
use smolbot::inference::device;
use smolbot::services::kv_budget::ContextRequest;
use smolbot::services::{BackendSpec, Engine, EngineLimits, ServiceError, SessionStore};
use smolbot::smollm3::LoadedModel;
use smolbot::web::{app, AppState};

/// Bytes one position of the tiny model's KV cache takes, as the engine will load it.
fn per_position() -> u64 {
    let model = LoadedModel::load(tiny_model(), &device::select(true)).unwrap();
    model.transformer.kv_bytes_per_position() as u64
}

async fn engine(context: ContextRequest, parallel: usize) -> Result<Engine, ServiceError> {
    let spec = BackendSpec::Gguf {
        path: tiny_model().to_path_buf(),
        force_cpu: true,
        alias: None,
        context,
    };
    let limits = EngineLimits {
        queue_capacity: 4,
        parallel,
        ..EngineLimits::default()
    };
    Engine::start_with(spec, limits).await
}

#[tokio::test]
async fn a_small_budget_caps_the_context_and_a_longer_prompt_is_refused() {
    // Room for 1,536 positions × 2 sequences once a quarter is kept for finished turns.
    let budget = per_position() * 1536 * 2 * 4 / 3 + 1;
    let context = ContextRequest {
        ctx_size: None,
        kv_budget: Some(budget),
    };
    let engine = engine(context, 2).await.unwrap();
    assert_eq!(engine.info().context_length, 1536);
    let store = SessionStore::in_memory().expect("in-memory store");
    let app = app(AppState::new(engine, store, None));

    let text = "the quick brown fox jumps over the lazy dog ".repeat(100);
    let counted = post_json(&app, "/tokenize", json!({"content": text})).await;
    let n = counted.json()["tokens"].as_array().unwrap().len();
    assert!(
        n > 1536 && n < 4000,
        "the prompt must fit the model but not the budget: {n}"
    );
    let reply = post_json(
        &app,
        "/v1/chat/completions",
        json!({"messages": [{"role": "user", "content": text}], "max_tokens": 4}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text);
    let error = &reply.json()["error"];
    assert_eq!(error["code"], "context_length_exceeded", "{error}");
    assert!(
        error["message"].as_str().unwrap().contains("1,536"),
        "{error}"
    );

    let short = post_json(
        &app,
        "/v1/chat/completions",
        json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}),
    )
    .await;
    assert_eq!(short.status, StatusCode::OK, "{}", short.text);
}

#[tokio::test]
async fn a_context_the_budget_cannot_hold_stops_the_start_with_the_numbers() {
    let context = ContextRequest {
        ctx_size: Some(4096),
        kv_budget: Some(per_position() * 4096 * 2 - 1),
    };
    let err = engine(context, 2).await.err().expect("over budget");
    let text = err.to_string();
    assert!(
        text.contains("--ctx-size 4096 × 2 sequences needs"),
        "{text}"
    );
    // One sequence fits the same budget.
    assert_eq!(
        engine(context, 1).await.unwrap().info().context_length,
        4096
    );
}
