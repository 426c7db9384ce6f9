//! Streaming a chat completion as server-sent events, in llama.cpp server's chunk order:
//! a first delta `{"role": "assistant"}`; then `reasoning_content` and `content` deltas (never
//! empty); each tool call as two fragments (`id`, `type`, `name` and empty `arguments`, then
//! the arguments); a last empty delta with `finish_reason`; the usage chunk if asked for;
//! `timings` on the very last chunk; and `data: [DONE]`. A failure after the stream began is
//! sent as `data: {"error": …}` and ends the stream.
//!
//! The SSE body owns the generation's receiver: when the client goes away, axum drops the
//! body, the receiver goes with it, and the engine stops at the next token.

use std::convert::Infallible;

use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::stream::{self, Stream, StreamExt};

use super::error::{ApiError, ErrorKind};
use super::openai::{
    ChatCompletionChunk, ChunkChoice, Delta, ResponseMeta, WireFunctionOut, WireTimings,
    WireToolCallOut, WireUsage,
};
use crate::services::events::{Completion, GenerationEvent};
use crate::services::sessions::StoredToolCall;
use crate::services::GenerationStream;

/// Turns generation events into the `data:` payloads of the stream, in order.
pub struct ChunkWriter {
    meta: ResponseMeta,
    include_usage: bool,
    tool_calls: usize,
}

impl ChunkWriter {
    pub fn new(meta: ResponseMeta, include_usage: bool) -> Self {
        Self {
            meta,
            include_usage,
            tool_calls: 0,
        }
    }

    /// The first chunk: who is speaking.
    pub fn start(&self) -> String {
        self.chunk(
            Delta {
                role: Some("assistant"),
                ..Delta::default()
            },
            None,
        )
    }

    /// The payloads for one event, and whether the stream is over after them.
    pub fn event(&mut self, event: GenerationEvent) -> (Vec<String>, bool) {
        match event {
            GenerationEvent::Reasoning(text) => (
                vec![self.chunk(
                    Delta {
                        reasoning_content: Some(text),
                        ..Delta::default()
                    },
                    None,
                )],
                false,
            ),
            GenerationEvent::Content(text) => (
                vec![self.chunk(
                    Delta {
                        content: Some(text),
                        ..Delta::default()
                    },
                    None,
                )],
                false,
            ),
            GenerationEvent::ToolCall(call) => {
                let index = Some(self.tool_calls);
                self.tool_calls += 1;
                let call = StoredToolCall::new(call);
                let arguments = WireToolCallOut {
                    index,
                    id: None,
                    kind: None,
                    function: WireFunctionOut {
                        name: None,
                        arguments: call.wire_arguments(),
                    },
                };
                let head = WireToolCallOut {
                    index,
                    id: Some(call.id),
                    kind: Some("function"),
                    function: WireFunctionOut {
                        name: Some(call.name),
                        arguments: String::new(),
                    },
                };
                let chunks = [head, arguments]
                    .into_iter()
                    .map(|fragment| {
                        self.chunk(
                            Delta {
                                tool_calls: vec![fragment],
                                ..Delta::default()
                            },
                            None,
                        )
                    })
                    .collect();
                (chunks, false)
            }
            GenerationEvent::Progress(_) => (Vec::new(), false),
            GenerationEvent::Done(done) => (self.finish(done), true),
            GenerationEvent::Failed(message) => (
                vec![Self::error(ApiError {
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                    kind: ErrorKind::Server,
                    message,
                    param: None,
                    code: None,
                })],
                true,
            ),
        }
    }

    /// An error payload, ending the stream.
    pub fn error(err: ApiError) -> String {
        err.body().to_string()
    }

    fn finish(&self, done: Completion) -> Vec<String> {
        let timings = WireTimings::from(done.timings);
        let mut out = Vec::with_capacity(3);
        let last = ChatCompletionChunk {
            id: &self.meta.id,
            object: "chat.completion.chunk",
            created: self.meta.created,
            model: &self.meta.model,
            choices: vec![ChunkChoice {
                index: 0,
                delta: Delta::default(),
                finish_reason: Some(done.finish_reason.as_str()),
            }],
            usage: None,
            timings: (!self.include_usage).then_some(timings),
        };
        out.push(to_json(&last));
        if self.include_usage {
            let usage = ChatCompletionChunk {
                choices: Vec::new(),
                usage: Some(WireUsage::from(done.usage)),
                timings: Some(timings),
                ..last
            };
            out.push(to_json(&usage));
        }
        out.push("[DONE]".to_owned());
        out
    }

    fn chunk(&self, delta: Delta, finish_reason: Option<&'static str>) -> String {
        to_json(&ChatCompletionChunk {
            id: &self.meta.id,
            object: "chat.completion.chunk",
            created: self.meta.created,
            model: &self.meta.model,
            choices: vec![ChunkChoice {
                index: 0,
                delta,
                finish_reason,
            }],
            usage: None,
            timings: None,
        })
    }
}

fn to_json(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).unwrap_or_else(|err| {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            kind: ErrorKind::Server,
            message: format!("cannot encode a chunk: {err}"),
            param: None,
            code: None,
        }
        .body()
        .to_string()
    })
}

/// The SSE response for one streaming chat completion.
pub fn chat_stream(
    generation: GenerationStream,
    writer: ChunkWriter,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let first = writer.start();
    let rest = stream::unfold(
        (generation, writer, false),
        |(mut generation, mut writer, over)| async move {
            if over {
                return None;
            }
            let (payloads, over) = match generation.next().await {
                Some(event) => writer.event(event),
                None => (
                    vec![ChunkWriter::error(ApiError::from(
                        crate::services::ServiceError::EngineStopped,
                    ))],
                    true,
                ),
            };
            Some((stream::iter(payloads), (generation, writer, over)))
        },
    )
    .flatten();
    let events = stream::once(async move { first })
        .chain(rest)
        .map(|data| Ok(Event::default().data(data)));
    Sse::new(events).keep_alive(KeepAlive::default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::events::{FinishReason, Timings, Usage};
    use serde_json::{json, Value};

    fn parse(payload: &str) -> Value {
        serde_json::from_str(payload).expect("json payload")
    }

    fn done() -> GenerationEvent {
        GenerationEvent::Done(Completion {
            finish_reason: FinishReason::Length,
            usage: Usage {
                prompt_tokens: 7,
                completion_tokens: 3,
                ..Usage::default()
            },
            timings: Timings::default(),
            logprobs: None,
        })
    }

    #[test]
    fn without_usage_the_finish_chunk_carries_the_timings() {
        let mut writer = ChunkWriter::new(ResponseMeta::new("m"), false);
        let (payloads, over) = writer.event(done());
        assert!(over);
        assert_eq!(payloads.len(), 2);
        let finish = parse(&payloads[0]);
        assert_eq!(finish["choices"][0]["finish_reason"], "length");
        assert_eq!(finish["choices"][0]["delta"], json!({}));
        assert!(finish.get("usage").is_none());
        assert_eq!(finish["timings"]["predicted_n"], 0);
        assert_eq!(payloads[1], "[DONE]");
    }

    #[test]
    fn with_usage_a_choiceless_chunk_carries_usage_and_timings() {
        let mut writer = ChunkWriter::new(ResponseMeta::new("m"), true);
        let (payloads, _) = writer.event(done());
        assert_eq!(payloads.len(), 3);
        assert!(parse(&payloads[0]).get("timings").is_none());
        let usage = parse(&payloads[1]);
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(
            usage["usage"],
            json!({"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10})
        );
        assert!(usage.get("timings").is_some());
    }

    #[test]
    fn a_failure_mid_stream_is_an_error_payload_that_ends_it() {
        let mut writer = ChunkWriter::new(ResponseMeta::new("m"), false);
        let (payloads, over) = writer.event(GenerationEvent::Failed("out of memory".into()));
        assert!(over);
        assert_eq!(payloads.len(), 1, "no [DONE] after an error");
        let error = parse(&payloads[0]);
        assert_eq!(error["error"]["message"], "out of memory");
        assert_eq!(error["error"]["type"], "server_error");
    }

    #[test]
    fn second_tool_call_gets_the_next_index() {
        let mut writer = ChunkWriter::new(ResponseMeta::new("m"), false);
        let call = crate::smollm3::tool_calls::ToolCall {
            name: "f".into(),
            arguments: json!({}),
        };
        writer.event(GenerationEvent::ToolCall(call.clone()));
        let (payloads, over) = writer.event(GenerationEvent::ToolCall(call));
        assert!(!over);
        for payload in payloads {
            assert_eq!(
                parse(&payload)["choices"][0]["delta"]["tool_calls"][0]["index"],
                1
            );
        }
    }
}
