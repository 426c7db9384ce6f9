//! Reusing a conversation's KV cache: the second turn runs only its new tokens, answers as a
//! fresh run does, and the kept caches stay within their memory budget.

use crate::common;

use axum::Router;
use candle_core::Device;
use common::http::*;
use common::*;
use serde_json::{json, Value};
use smolbot::inference::generate::{generate_with, GenerationRequest, TokenAction};
use smolbot::inference::prefix_cache::PrefixCache;
use smolbot::inference::sampling::SamplingParams;
use smolbot::smollm3::LoadedModel;
use smolbot::web::{app, AppState};

async fn smollm2_app() -> Router {
    let engine = common::gguf_engine(&smollm2_model()).await;
    app(AppState::new(
        engine,
        smolbot::services::SessionStore::in_memory().expect("in-memory store"),
        None,
    ))
}

async fn chat(app: &Router, messages: &Value) -> Value {
    let reply = post_json(
        app,
        "/v1/chat/completions",
        json!({"messages": messages, "max_tokens": 12, "temperature": 0}),
    )
    .await;
    assert_eq!(reply.status.as_u16(), 200, "{}", reply.text);
    reply.json()
}

#[tokio::test]
async fn second_turn_reuses_the_first_and_answers_as_a_fresh_run() {
    let warm = smollm2_app().await;
    let mut messages = json!([{"role": "user", "content": "What is the capital of France?"}]);
    let first = chat(&warm, &messages).await;
    assert_eq!(first["timings"]["cache_n"], 0);
    let answer = first["choices"][0]["message"]["content"].clone();
    let messages_2 = messages.as_array_mut().unwrap();
    messages_2.push(json!({"role": "assistant", "content": answer}));
    messages_2.push(json!({"role": "user", "content": "And of Germany?"}));
    let second = chat(&warm, &messages).await;

    let fresh = chat(&smollm2_app().await, &messages).await;
    let prompt = second["usage"]["prompt_tokens"].as_u64().unwrap();
    let cached = second["timings"]["cache_n"].as_u64().unwrap();
    let run = second["timings"]["prompt_n"].as_u64().unwrap();
    eprintln!("turn 2: {prompt} prompt tokens, {cached} reused, {run} run");
    assert!(cached > 10, "the first turn's tokens are reused: {second}");
    assert_eq!(cached + run, prompt);
    assert_eq!(fresh["timings"]["cache_n"], 0);
    assert_eq!(fresh["usage"], second["usage"]);
    assert_eq!(
        fresh["choices"][0]["message"]["content"],
        second["choices"][0]["message"]["content"]
    );
}

#[test]
fn kept_caches_are_cut_to_the_shared_prefix_and_bounded() {
    let model = LoadedModel::load(tiny_model(), &Device::Cpu).unwrap();
    let transformer = &model.transformer;
    let request = GenerationRequest {
        max_tokens: 3,
        sampling: SamplingParams::greedy(),
        ..GenerationRequest::default()
    };
    let run = |cache: &mut smolbot::inference::SequenceCache, prompt: &[u32]| {
        generate_with(transformer, cache, prompt, &request, |_| {
            TokenAction::Continue
        })
        .unwrap()
    };
    let prompt: Vec<u32> = (100..140).collect();
    let mut kept = PrefixCache::new(usize::MAX);
    let mut cache = kept.take(transformer, &prompt).unwrap();
    assert!(cache.is_empty());
    let stats = run(&mut cache, &prompt);
    assert_eq!(stats.tokens.len(), cache.len());
    assert_eq!(&stats.tokens[..prompt.len()], &prompt[..]);
    let one_cache = cache.allocated_bytes();
    kept.put(stats.tokens, cache);

    let mut other: Vec<u32> = (100..120).collect();
    other.extend(200..210);
    let cache = kept.take(transformer, &other).unwrap();
    assert_eq!(cache.len(), 20, "cut to the 20 shared tokens");
    assert!(kept.is_empty());
    let cache = {
        let mut cache = cache;
        let stats = run(&mut cache, &other);
        assert_eq!(stats.cached_tokens, 20);
        kept.put(stats.tokens, cache);
        kept.take(transformer, &other).unwrap()
    };
    assert_eq!(
        cache.len(),
        other.len() - 1,
        "one token is always left to run"
    );

    let mut small = PrefixCache::new(one_cache);
    small.put(vec![1], cache);
    let mut second = transformer.new_cache();
    run(&mut second, &prompt);
    small.put(prompt.clone(), second);
    assert_eq!(
        small.len(),
        1,
        "the older cache was dropped to stay in budget"
    );
    assert!(small.bytes() <= one_cache);
    assert_eq!(
        small.take(transformer, &prompt).unwrap().len(),
        prompt.len() - 1
    );
}
