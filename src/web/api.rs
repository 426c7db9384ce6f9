//! The OpenAI-compatible API and llama.cpp server's utility endpoints: `POST
//! /v1/chat/completions`, `GET /v1/models`, `GET /health`, `POST /tokenize`, `POST
//! /detokenize` and `POST /apply-template`.
//!
//! Handlers only translate: the wire format in, a services call, the wire format out.
//! Template rendering and tokenizing run on tokio's blocking pool; generation runs on the
//! engine thread; a handler itself never blocks.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::ApiError;
use super::json::ApiJson;
use super::openai::{ChatCompletionRequest, ReplyCollector, ResponseMeta};
use super::sse::{chat_stream, ChunkWriter};
use super::state::{check_model, AppState};
use crate::services::metrics::QueueState;

/// Routes under `/v1`.
pub fn v1_routes() -> Router<AppState> {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(super::completions::completions))
        .route("/v1/models", get(models))
}

/// llama.cpp server's routes outside `/v1`.
pub fn utility_routes() -> Router<AppState> {
    Router::new()
        .route("/health", get(health))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .route("/tokenizer_info", get(tokenizer_info))
        .route("/metrics", get(metrics))
        .route("/api/status", get(status))
        .route("/apply-template", post(apply_template))
}

async fn chat_completions(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<ChatCompletionRequest>,
) -> Result<Response, ApiError> {
    check_model(&state, body.model.as_deref())?;
    let request = body.to_chat_request()?;
    let generation = state.engine().generate(request).await?;
    let meta = ResponseMeta::new(&state.engine().info().id);
    if body.streaming() {
        let writer = ChunkWriter::new(meta, body.include_usage());
        return Ok(chat_stream(generation, writer).into_response());
    }
    let reply = generation.collect().await?;
    let codec = state.engine().codec();
    let body =
        ReplyCollector::from_reply(&reply).finish(meta, reply.completion, |id| codec.piece(id));
    Ok(Json(body).into_response())
}

async fn models(State(state): State<AppState>) -> Json<Value> {
    let info = state.engine().info();
    Json(json!({
        "object": "list",
        "data": [{
            "id": info.id,
            "object": "model",
            "created": info.created,
            "owned_by": "smolbot",
            "meta": { "n_ctx_train": info.context_length, "stub": info.is_stub }
        }]
    }))
}

/// Prometheus text format: the engine's counters, queue and latency histograms.
async fn metrics(State(state): State<AppState>) -> Response {
    let (waiting, running) = state.engine().queue();
    let text = state
        .engine()
        .metrics()
        .prometheus(QueueState { waiting, running });
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// What the page's status badge shows: model, device, uptime, queue, memory.
async fn status(State(state): State<AppState>) -> Json<Value> {
    let engine = state.engine();
    let info = engine.info();
    let (waiting, running) = engine.queue();
    let metrics = engine.metrics();
    // `--engine openai`: each inference server's health, breaker and load.
    let remotes = engine.remotes().map(|remotes| {
        remotes
            .into_iter()
            .map(|r| {
                json!({
                    "url": r.url,
                    "healthy": r.healthy,
                    "breaker": r.breaker,
                    "in_flight": r.in_flight,
                    "requests": r.requests,
                    "failures": r.failures,
                })
            })
            .collect::<Vec<_>>()
    });
    Json(json!({
        "remotes": remotes,
        "model": info.id,
        "stub": info.is_stub,
        "context_length": info.context_length,
        "device": info.device,
        "state": if running > 0 { "busy" } else { "ready" },
        "uptime_s": metrics.uptime().as_secs(),
        "queue": {
            "waiting": waiting,
            "running": running,
            "parallel": engine.limits().parallel,
        },
        "requests": metrics.requests(),
        "kv_cache_bytes": metrics.kv_cache_bytes(),
        "peak_rss_bytes": crate::services::metrics::peak_rss_bytes(),
    }))
}

async fn health() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// llama.cpp's `/tokenize` body; vLLM's names (`prompt`, `add_special_tokens`) are
/// accepted too, so lm-evaluation-harness's remote tokenizer works against this server.
#[derive(Debug, Deserialize)]
struct TokenizeRequest {
    #[serde(alias = "prompt")]
    content: String,
    #[serde(default, alias = "add_special_tokens")]
    add_special: bool,
    #[serde(default = "yes")]
    parse_special: bool,
    #[serde(default)]
    with_pieces: bool,
}

fn yes() -> bool {
    true
}

async fn tokenize(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<TokenizeRequest>,
) -> Result<Json<Value>, ApiError> {
    state
        .engine()
        .codec()
        .check_text_bytes("content", body.content.len())?;
    let tokens = state.engine().off_runtime(move |codec| {
        let ids = codec.tokenize(&body.content, body.add_special, body.parse_special)?;
        let tokens = if body.with_pieces {
            ids.iter()
                .map(|&id| json!({ "id": id, "piece": codec.piece(id) }))
                .collect()
        } else {
            json!(ids)
        };
        Ok(tokens)
    });
    Ok(Json(json!({ "tokens": tokens.await? })))
}

/// llama.cpp's `/detokenize` body.
#[derive(Debug, Deserialize)]
struct DetokenizeRequest {
    tokens: Vec<i64>,
}

async fn detokenize(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<DetokenizeRequest>,
) -> Result<Json<Value>, ApiError> {
    let content = state
        .engine()
        .off_runtime(move |codec| codec.detokenize(&body.tokens))
        .await?;
    // llama.cpp names the text `content`, vLLM `prompt`.
    Ok(Json(json!({ "content": content, "prompt": content })))
}

/// vLLM's `/tokenizer_info`: the special tokens' texts, which lm-evaluation-harness's remote
/// tokenizer reads before scoring.
async fn tokenizer_info(State(state): State<AppState>) -> Json<Value> {
    let codec = state.engine().codec();
    let text = |id: Option<u32>| id.map(|id| codec.piece(id));
    let eos = text(codec.tokenizer().end_of_generation().first().copied());
    Json(json!({
        "tokenizer_class": "GgufTokenizer",
        "bos_token": text(codec.tokenizer().bos),
        "eos_token": eos,
        "pad_token": eos,
        "add_bos_token": codec.tokenizer().add_bos,
        "model_max_length": codec.context_length(),
        "vocab_size": codec.tokenizer().vocab_size(),
    }))
}

async fn apply_template(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<ChatCompletionRequest>,
) -> Result<Json<Value>, ApiError> {
    let request = body.to_chat_request()?;
    let prompt = state
        .engine()
        .off_runtime(move |codec| codec.render(&request))
        .await?;
    Ok(Json(json!({ "prompt": prompt })))
}
