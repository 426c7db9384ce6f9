//! `POST /v1/completions`: OpenAI's legacy text completion, with what evaluation harnesses
//! need from it — a prompt given as text or as token ids (or a batch of either), `echo`,
//! `logprobs` with the prompt's own scores, and `max_tokens` 0 to score without generating.
//! This is the request lm-evaluation-harness's `local-completions` model sends for
//! loglikelihood tasks: `echo: true, logprobs: 1, max_tokens: 1, temperature: 0`.
//!
//! No chat template and no reply parsing: the text is the model's, stop strings aside.

use std::convert::Infallible;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::{self, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::ApiError;
use super::json::ApiJson;
use super::openai::{
    body_with_sampling, random_id, response_format, stop_strings, StreamOptions, WireUsage,
};
use super::state::{check_model, AppState};
use crate::services::chat::{
    ChatCodec, CompletionPrompt, CompletionRequest, PreparedChat, TokenLimit,
};
use crate::services::events::{Completion, GenerationEvent, Progress, TokenLogprobs, Usage};
use crate::services::ServiceError;

/// OpenAI's default for `max_tokens` on this endpoint.
pub const DEFAULT_MAX_TOKENS: i64 = 16;

/// Prompts one request may hold; each runs as its own generation, one after the other.
pub const MAX_BATCH: usize = 64;

body_with_sampling! {
    /// The request body, with llama.cpp's sampling extensions.
    #[derive(Debug, Deserialize)]
    pub struct CompletionBody {
        pub model: Option<String>,
        pub prompt: Value,
        pub max_tokens: Option<i64>,
        pub stop: Option<Value>,
        /// How many alternatives to list per token (0 lists only the token's own score).
        pub logprobs: Option<usize>,
        pub echo: Option<bool>,
        pub stream: Option<bool>,
        pub n: Option<u32>,
        pub best_of: Option<u32>,
        pub suffix: Option<String>,
        /// What the completion must match, as on `/v1/chat/completions`.
        pub response_format: Option<Value>,
        /// llama-server extension: a JSON schema the completion must match.
        pub json_schema: Option<Value>,
        /// llama-server extension: a grammar (llguidance's Lark dialect).
        pub grammar: Option<String>,
        /// Streaming: `include_usage` adds a last chunk with the token counts.
        pub stream_options: Option<StreamOptions>,
        /// llama-server extension, streaming: chunks without text tell the prompt's
        /// progress (`prompt_progress`) and, smolbot's own, the place in line (`queued`), so
        /// a smolbot in front of this one (`--engine openai`) can show them.
        pub return_progress: Option<bool>,
    }
}

impl CompletionBody {
    fn prompts(&self) -> Result<Vec<CompletionPrompt>, ApiError> {
        let bad = || {
            ApiError::invalid(
                "prompt",
                "`prompt` must be a string, a list of strings, a list of token ids or a list \
                 of lists of token ids",
            )
        };
        let ids =
            |items: &[Value]| -> Option<Vec<i64>> { items.iter().map(Value::as_i64).collect() };
        let prompts = match &self.prompt {
            Value::String(text) => vec![CompletionPrompt::Text(text.clone())],
            Value::Array(items) if items.is_empty() => return Err(bad()),
            Value::Array(items) if items.iter().all(Value::is_number) => {
                vec![CompletionPrompt::Ids(ids(items).ok_or_else(bad)?)]
            }
            Value::Array(items) => items
                .iter()
                .map(|item| match item {
                    Value::String(text) => Ok(CompletionPrompt::Text(text.clone())),
                    Value::Array(inner) => ids(inner).map(CompletionPrompt::Ids).ok_or_else(bad),
                    _ => Err(bad()),
                })
                .collect::<Result<_, _>>()?,
            _ => return Err(bad()),
        };
        if prompts.len() > MAX_BATCH {
            return Err(ApiError::invalid(
                "prompt",
                format!(
                    "holds {} prompts; at most {MAX_BATCH} are allowed",
                    prompts.len()
                ),
            ));
        }
        Ok(prompts)
    }

    fn refuse_unsupported(&self, batch: usize) -> Result<(), ApiError> {
        for (field, value) in [("n", self.n), ("best_of", self.best_of)] {
            if value.is_some_and(|v| v != 1) {
                return Err(ApiError::invalid(
                    field,
                    format!("only `{field}` = 1 is supported"),
                ));
            }
        }
        if self.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
            return Err(ApiError::invalid(
                "suffix",
                "`suffix` (insertion) is not supported",
            ));
        }
        if self.stream == Some(true) {
            if batch > 1 {
                return Err(ApiError::invalid(
                    "prompt",
                    "streaming takes one prompt; send a batch without `stream`",
                ));
            }
            if self.logprobs.is_some() || self.echo == Some(true) {
                return Err(ApiError::invalid(
                    if self.logprobs.is_some() {
                        "logprobs"
                    } else {
                        "echo"
                    },
                    "`logprobs` and `echo` are supported without streaming only",
                ));
            }
        }
        Ok(())
    }

    /// The request for one prompt, in the services' terms.
    fn request(&self, prompt: CompletionPrompt) -> Result<CompletionRequest, ApiError> {
        Ok(CompletionRequest {
            prompt,
            max_tokens: Some(TokenLimit {
                field: "max_tokens",
                value: self.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
            }),
            sampling: self.sampling(),
            stop: stop_strings(self.stop.as_ref())?,
            logprobs: self.logprobs,
            score_prompt: self.echo == Some(true) && self.logprobs.is_some(),
            thinking_budget: None,
            response_format: response_format(
                self.response_format.as_ref(),
                self.json_schema.as_ref(),
                self.grammar.as_deref(),
            )?,
        })
    }
}

#[derive(Debug, Serialize)]
struct TextCompletion {
    id: String,
    object: &'static str,
    created: u64,
    model: String,
    choices: Vec<TextChoice>,
    usage: WireUsage,
}

#[derive(Debug, Serialize)]
struct TextChoice {
    index: usize,
    text: String,
    logprobs: Option<WireLogprobs>,
    finish_reason: Option<&'static str>,
}

/// OpenAI's legacy `logprobs` object: parallel lists, one entry per token; the first
/// prompt token has no score (`null`).
#[derive(Debug, Default, Serialize, PartialEq)]
struct WireLogprobs {
    tokens: Vec<String>,
    token_logprobs: Vec<Option<f32>>,
    top_logprobs: Vec<Option<TopLogprobs>>,
    text_offset: Vec<usize>,
}

/// `{token text: logprob}`, most likely first. Written as f32 like `token_logprobs`, so a
/// client comparing the two (lm-eval's greedy check) sees equal numbers for the same token.
#[derive(Debug, Default, PartialEq)]
struct TopLogprobs(Vec<(String, f32)>);

impl Serialize for TopLogprobs {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (token, logprob) in &self.0 {
            map.serialize_entry(token, logprob)?;
        }
        map.end()
    }
}

impl WireLogprobs {
    fn push(&mut self, piece: String, score: Option<&TokenLogprobs>, codec: &ChatCodec) {
        let offset = self.text_offset.last().copied().unwrap_or(0)
            + self.tokens.last().map_or(0, |t| t.chars().count());
        self.text_offset.push(offset);
        self.tokens.push(piece);
        self.token_logprobs.push(score.map(|s| s.logprob));
        self.top_logprobs.push(score.map(|s| {
            let mut top = TopLogprobs::default();
            for &(id, logprob) in &s.top {
                let piece = codec.piece(id);
                if !top.0.iter().any(|(seen, _)| *seen == piece) {
                    top.0.push((piece, logprob));
                }
            }
            top
        }));
    }
}

/// One prompt's finished generation.
struct Finished {
    text: String,
    done: Completion,
}

async fn run_one(state: &AppState, chat: PreparedChat) -> Result<Finished, ApiError> {
    let reply = state.engine().submit(chat)?.collect().await?;
    // Raw completions parse nothing: the whole text comes as content.
    let mut text = reply.reasoning.unwrap_or_default();
    text.push_str(&reply.content);
    Ok(Finished {
        text,
        done: reply.completion,
    })
}

/// `POST /v1/completions`.
pub async fn completions(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CompletionBody>,
) -> Result<Response, ApiError> {
    check_model(&state, body.model.as_deref())?;
    let prompts = body.prompts()?;
    body.refuse_unsupported(prompts.len())?;
    let codec = state.engine().codec().clone();
    let mut prepared = Vec::with_capacity(prompts.len());
    for prompt in prompts {
        let chat = state
            .engine()
            .prepare_completion(body.request(prompt)?)
            .await?;
        prepared.push(chat);
    }
    let id = random_id("cmpl-");
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let model = state.engine().info().id.clone();
    if body.stream == Some(true) {
        let chat = prepared
            .pop()
            .ok_or_else(|| ApiError::bad_request("no prompt"))?;
        let generation = state.engine().submit(chat)?;
        let extras = StreamExtras {
            usage: body
                .stream_options
                .as_ref()
                .and_then(|o| o.include_usage)
                .unwrap_or(false),
            progress: body.return_progress == Some(true),
        };
        return Ok(stream_one(generation, id, created, model, extras).into_response());
    }
    let echo = body.echo == Some(true);
    let mut choices = Vec::with_capacity(prepared.len());
    let mut usage = Usage::default();
    for (index, chat) in prepared.into_iter().enumerate() {
        let ids = chat.prompt.clone();
        let finished = run_one(&state, chat).await?;
        let done = &finished.done;
        usage.prompt_tokens += done.usage.prompt_tokens;
        usage.completion_tokens += done.usage.completion_tokens;
        let prompt_text = if echo {
            codec.detokenize(&ids.iter().map(|&i| i64::from(i)).collect::<Vec<_>>())?
        } else {
            String::new()
        };
        let logprobs = body.logprobs.map(|_| {
            let mut wire = WireLogprobs::default();
            let scores = done.logprobs.clone().unwrap_or_default();
            if echo {
                wire.push(codec.piece(ids[0]), None, &codec);
                for (&id, score) in ids[1..].iter().zip(&scores.prompt) {
                    wire.push(codec.piece(id), Some(score), &codec);
                }
            }
            for score in &scores.generated {
                wire.push(codec.piece(score.id), Some(score), &codec);
            }
            wire
        });
        choices.push(TextChoice {
            index,
            text: prompt_text + &finished.text,
            logprobs,
            finish_reason: Some(done.finish_reason.as_str()),
        });
    }
    Ok(Json(TextCompletion {
        id,
        object: "text_completion",
        created,
        model,
        choices,
        usage: usage.into(),
    })
    .into_response())
}

/// What a stream sends besides the text, when asked.
#[derive(Debug, Clone, Copy)]
struct StreamExtras {
    usage: bool,
    progress: bool,
}

/// Streams one prompt's text as `text_completion` chunks, the last with its
/// `finish_reason`, then `[DONE]`; a failure mid-way is sent as `{"error": …}`.
fn stream_one(
    generation: crate::services::GenerationStream,
    id: String,
    created: u64,
    model: String,
    extras: StreamExtras,
) -> Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>> {
    let head = serde_json::json!({
        "id": id, "object": "text_completion", "created": created, "model": model,
    });
    let chunk = move |text: String, finish: Option<&'static str>| {
        let mut chunk = head.clone();
        chunk["choices"] = serde_json::json!([{"index": 0, "text": text, "logprobs": null, "finish_reason": finish}]);
        chunk
    };
    // A chunk without choices that carries `key` (progress, usage), as OpenAI sends usage.
    let extra = {
        let chunk = chunk.clone();
        move |key: &str, value: Value| {
            let mut chunk = chunk(String::new(), None);
            chunk["choices"] = serde_json::json!([]);
            chunk[key] = value;
            chunk.to_string()
        }
    };
    let chunk = move |text: String, finish: Option<&'static str>| chunk(text, finish).to_string();
    let events = stream::unfold(Some(generation), move |state| {
        let chunk = chunk.clone();
        let extra = extra.clone();
        async move {
            let mut generation = state?;
            let payloads = match generation.next().await {
                Some(GenerationEvent::Content(text) | GenerationEvent::Reasoning(text)) => {
                    vec![chunk(text, None)]
                }
                Some(GenerationEvent::Progress(progress)) if extras.progress => {
                    vec![match progress {
                        Progress::Queued { ahead } => {
                            extra("queued", serde_json::json!({ "ahead": ahead }))
                        }
                        Progress::Prefill {
                            done,
                            total,
                            cached,
                        } => extra(
                            "prompt_progress",
                            serde_json::json!({ "total": total, "cache": cached, "processed": done }),
                        ),
                    }]
                }
                Some(GenerationEvent::ToolCall(_) | GenerationEvent::Progress(_)) => Vec::new(),
                Some(GenerationEvent::Done(done)) => {
                    let mut last = vec![chunk(String::new(), Some(done.finish_reason.as_str()))];
                    if extras.usage {
                        let usage = serde_json::to_value(WireUsage::from(done.usage))
                            .unwrap_or_default();
                        last.push(extra("usage", usage));
                    }
                    last.push("[DONE]".to_owned());
                    return Some((last, None));
                }
                Some(GenerationEvent::Failed(message)) => {
                    let err = ApiError::from(ServiceError::Generation(message));
                    return Some((vec![err.body().to_string()], None));
                }
                None => {
                    let err = ApiError::from(ServiceError::EngineStopped);
                    return Some((vec![err.body().to_string()], None));
                }
            };
            Some((payloads, Some(generation)))
        }
    })
    .flat_map(stream::iter)
    .map(|data| Ok(Event::default().data(data)));
    Sse::new(events).keep_alive(KeepAlive::default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(value: Value) -> CompletionBody {
        serde_json::from_value(value).expect("body")
    }

    #[test]
    fn every_prompt_shape_is_read() {
        let cases = [
            (json!("hi"), vec![CompletionPrompt::Text("hi".into())]),
            (
                json!(["a", "b"]),
                vec![
                    CompletionPrompt::Text("a".into()),
                    CompletionPrompt::Text("b".into()),
                ],
            ),
            (json!([1, 2, 3]), vec![CompletionPrompt::Ids(vec![1, 2, 3])]),
            (
                json!([[1], [2, 3]]),
                vec![
                    CompletionPrompt::Ids(vec![1]),
                    CompletionPrompt::Ids(vec![2, 3]),
                ],
            ),
        ];
        for (prompt, want) in cases {
            assert_eq!(body(json!({ "prompt": prompt })).prompts().unwrap(), want);
        }
    }

    #[test]
    fn sampling_fields_reach_the_services_and_a_negative_seed_draws_one() {
        let given = body(json!({"prompt": "x", "temperature": 0.5, "top_k": 3, "seed": 7}));
        let sampling = given.sampling();
        assert_eq!(
            (sampling.temperature, sampling.top_k, sampling.seed),
            (Some(0.5), Some(3), Some(7))
        );
        assert_eq!(
            body(json!({"prompt": "x", "seed": -1})).sampling().seed,
            None
        );
    }

    #[test]
    fn bad_prompts_name_the_field() {
        for prompt in [
            json!([]),
            json!(5),
            json!([1, "a"]),
            json!([[1.5]]),
            json!({}),
        ] {
            let err = body(json!({ "prompt": prompt })).prompts().unwrap_err();
            assert_eq!(err.param.as_deref(), Some("prompt"), "{prompt}");
        }
    }

    #[test]
    fn streaming_refuses_what_it_cannot_send() {
        let b = body(json!({"prompt": "x", "stream": true, "logprobs": 1}));
        assert_eq!(
            b.refuse_unsupported(1).unwrap_err().param.as_deref(),
            Some("logprobs")
        );
        let b = body(json!({"prompt": ["x", "y"], "stream": true}));
        assert_eq!(
            b.refuse_unsupported(2).unwrap_err().param.as_deref(),
            Some("prompt")
        );
        let b = body(json!({"prompt": "x", "n": 2}));
        assert_eq!(
            b.refuse_unsupported(1).unwrap_err().param.as_deref(),
            Some("n")
        );
    }
}
