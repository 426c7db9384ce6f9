//! OpenAI's chat completion wire format: the request as clients send it (with llama.cpp
//! server's extensions), its translation into the services' [`ChatRequest`], and the
//! response and chunk objects.
//!
//! Fields whose JSON type varies (`content`, `stop`, `tool_choice`) are read as raw JSON and
//! checked here, so a wrong one gets a message naming it instead of serde's "did not match
//! any variant". Parameters the server cannot honour yet are refused with a 400 rather than
//! silently ignored.

use rand::distr::{Alphanumeric, SampleString};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value as Json};

use super::error::ApiError;
use crate::services::chat::{json_kind, ChatMessage, ChatRequest, Role, TokenLimit, ToolChoice};
use crate::services::events::{Completion, Timings, TokenLogprobs, Usage};
use crate::services::sessions::{arguments_from_wire, StoredToolCall};
use crate::services::structured::ResponseFormat;
use crate::services::Reply;
use crate::smollm3::tool_calls::ToolCall;

/// Declares an OpenAI request body that takes llama.cpp's sampling fields (`temperature`,
/// `top_p`, `top_k`, `min_p`, `repeat_penalty`, `presence_penalty`, `frequency_penalty`,
/// `seed`), as both completion endpoints do, with its `sampling()`: the one place these
/// fields become the services' [`Sampling`]. A macro rather than a `#[serde(flatten)]`
/// struct: fields read through `flatten` lose their name in error messages.
macro_rules! body_with_sampling {
    ($(#[$meta:meta])* pub struct $name:ident { $($fields:tt)* }) => {
        $(#[$meta])*
        pub struct $name {
            pub temperature: Option<f32>,
            pub top_p: Option<f32>,
            /// llama.cpp extension.
            pub top_k: Option<usize>,
            /// llama.cpp extension.
            pub min_p: Option<f32>,
            /// llama.cpp extension.
            pub repeat_penalty: Option<f32>,
            pub presence_penalty: Option<f32>,
            pub frequency_penalty: Option<f32>,
            pub seed: Option<i64>,
            $($fields)*
        }

        impl $name {
            /// The sampling values given, in the services' terms.
            pub fn sampling(&self) -> $crate::services::chat::Sampling {
                $crate::services::chat::Sampling {
                    temperature: self.temperature,
                    top_k: self.top_k,
                    top_p: self.top_p,
                    min_p: self.min_p,
                    repeat_penalty: self.repeat_penalty,
                    frequency_penalty: self.frequency_penalty,
                    presence_penalty: self.presence_penalty,
                    // A negative seed asks for a fresh one, as llama.cpp's -1 does.
                    seed: self.seed.and_then(|seed| u64::try_from(seed).ok()),
                }
            }
        }
    };
}
pub(crate) use body_with_sampling;

body_with_sampling! {
    /// `POST /v1/chat/completions` (also the body of `/apply-template`).
    #[derive(Debug, Deserialize)]
    pub struct ChatCompletionRequest {
        pub model: Option<String>,
        pub messages: Vec<WireMessage>,
        pub stream: Option<bool>,
        pub stream_options: Option<StreamOptions>,
        pub max_tokens: Option<i64>,
        pub max_completion_tokens: Option<i64>,
        pub stop: Option<Json>,
        pub tools: Option<Vec<WireTool>>,
        pub tool_choice: Option<Json>,
        pub chat_template_kwargs: Option<Map<String, Json>>,
        /// SmolLM3's switch, also accepted outside `chat_template_kwargs`.
        pub enable_thinking: Option<bool>,
        /// At most this many reasoning tokens (also accepted in `chat_template_kwargs`).
        pub thinking_budget: Option<usize>,
        pub n: Option<u32>,
        /// `{"type": "text" | "json_object" | "json_schema", …}`.
        pub response_format: Option<Json>,
        /// llama-server extension: a JSON schema the answer must match.
        pub json_schema: Option<Json>,
        /// llama-server extension: a grammar (llguidance's Lark dialect) the answer must match.
        pub grammar: Option<String>,
        pub logprobs: Option<bool>,
        pub top_logprobs: Option<usize>,
        /// `"auto"` drops the oldest exchanges when the messages outgrow the context (OpenAI's
        /// Responses API field); `"disabled"` (the default) refuses them.
        pub truncation: Option<crate::services::truncation::Truncation>,
    }
}

#[derive(Debug, Deserialize)]
pub struct StreamOptions {
    pub include_usage: Option<bool>,
}

#[derive(Debug, Deserialize)]
pub struct WireMessage {
    pub role: String,
    pub content: Option<Json>,
    #[serde(alias = "reasoning")]
    pub reasoning_content: Option<String>,
    pub tool_calls: Option<Vec<WireToolCall>>,
    pub tool_call_id: Option<String>,
    pub name: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct WireToolCall {
    pub id: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub function: WireFunctionCall,
}

#[derive(Debug, Deserialize)]
pub struct WireFunctionCall {
    pub name: String,
    /// A JSON string as OpenAI sends it; an object is accepted too.
    pub arguments: Option<Json>,
}

#[derive(Debug, Deserialize)]
pub struct WireTool {
    #[serde(rename = "type")]
    pub kind: String,
    pub function: WireFunction,
}

#[derive(Debug, Deserialize)]
pub struct WireFunction {
    pub name: String,
    pub description: Option<String>,
    pub parameters: Option<Json>,
}

impl ChatCompletionRequest {
    pub fn streaming(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    pub fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false)
    }

    /// The request in the services' terms, or a 400 naming the field that cannot be used.
    pub fn to_chat_request(&self) -> Result<ChatRequest, ApiError> {
        self.refuse_unsupported()?;
        let messages = self
            .messages
            .iter()
            .enumerate()
            .map(|(i, m)| message(i, m))
            .collect::<Result<Vec<_>, _>>()?;
        let tools = self
            .tools
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, t)| tool(i, t))
            .collect::<Result<Vec<_>, _>>()?;
        let mut template_kwargs = self.chat_template_kwargs.clone().unwrap_or_default();
        let kwarg_thinking = match template_kwargs.remove("enable_thinking") {
            None | Some(Json::Null) => None,
            Some(Json::Bool(flag)) => Some(flag),
            Some(other) => {
                return Err(ApiError::invalid(
                    "chat_template_kwargs.enable_thinking",
                    format!(
                        "`chat_template_kwargs.enable_thinking` must be a boolean, got {other}"
                    ),
                ))
            }
        };
        let kwarg_budget = match template_kwargs.remove("thinking_budget") {
            None | Some(Json::Null) => None,
            Some(Json::Number(n)) if n.as_u64().is_some() => {
                n.as_u64().and_then(|n| usize::try_from(n).ok())
            }
            Some(other) => {
                return Err(ApiError::invalid(
                    "chat_template_kwargs.thinking_budget",
                    format!(
                        "`chat_template_kwargs.thinking_budget` must be a whole number ≥ 0, \
                         got {other}"
                    ),
                ))
            }
        };
        let max_tokens = match (self.max_completion_tokens, self.max_tokens) {
            (Some(value), _) => Some(TokenLimit {
                field: "max_completion_tokens",
                value,
            }),
            (None, Some(value)) => Some(TokenLimit {
                field: "max_tokens",
                value,
            }),
            (None, None) => None,
        };
        Ok(ChatRequest {
            messages,
            tools,
            tool_choice: tool_choice(self.tool_choice.as_ref())?,
            enable_thinking: self.enable_thinking.or(kwarg_thinking),
            template_kwargs,
            max_tokens,
            sampling: self.sampling(),
            stop: stop_strings(self.stop.as_ref())?,
            logprobs: self.logprobs().then_some(self.top_logprobs.unwrap_or(0)),
            thinking_budget: self.thinking_budget.or(kwarg_budget),
            response_format: response_format(
                self.response_format.as_ref(),
                self.json_schema.as_ref(),
                self.grammar.as_deref(),
            )?,
            truncation: self.truncation.unwrap_or_default(),
            continue_final: false,
        })
    }

    /// OpenAI's `logprobs: true`, or `top_logprobs` alone.
    fn logprobs(&self) -> bool {
        self.logprobs.unwrap_or(self.top_logprobs.is_some())
    }

    fn refuse_unsupported(&self) -> Result<(), ApiError> {
        if self.n.is_some_and(|n| n != 1) {
            return Err(ApiError::invalid("n", "only `n` = 1 is supported"));
        }
        if self.logprobs() && self.streaming() {
            return Err(ApiError::invalid(
                "logprobs",
                "`logprobs` is supported without streaming only; set `stream` to false",
            ));
        }
        Ok(())
    }
}

/// The output format a request asks for: OpenAI's `response_format` (`text`, `json_object`,
/// or `json_schema` with `{name, schema, strict}`; llama-server's `schema` beside the type is
/// read too), or llama-server's `json_schema` or `grammar` — at most one of the three.
/// Whether the schema or grammar compiles is the services' check.
pub fn response_format(
    response_format: Option<&Json>,
    json_schema: Option<&Json>,
    grammar: Option<&str>,
) -> Result<Option<ResponseFormat>, ApiError> {
    let from_format = match response_format {
        None | Some(Json::Null) => None,
        Some(Json::Object(format)) => {
            let schema = |path: &str, value: Option<&Json>| match value {
                Some(schema @ (Json::Object(_) | Json::Bool(_))) => {
                    Ok(ResponseFormat::JsonSchema(schema.clone()))
                }
                Some(other) => Err(ApiError::invalid(
                    path.to_owned(),
                    format!(
                        "`{path}` must be a JSON schema object, got {}",
                        json_kind(other)
                    ),
                )),
                None => Err(ApiError::invalid(
                    path.to_owned(),
                    format!("`{path}` is required with type `json_schema`"),
                )),
            };
            match format.get("type").and_then(Json::as_str) {
                Some("text") => None,
                Some("json_object") => Some(match format.get("schema") {
                    None | Some(Json::Null) => ResponseFormat::JsonObject,
                    value => schema("response_format.schema", value)?,
                }),
                Some("json_schema") => Some(match format.get("json_schema") {
                    Some(Json::Object(inner)) => {
                        schema("response_format.json_schema.schema", inner.get("schema"))?
                    }
                    _ => schema("response_format.schema", format.get("schema"))?,
                }),
                _ => {
                    return Err(ApiError::invalid(
                        "response_format.type",
                        "`response_format.type` must be `text`, `json_object` or `json_schema`",
                    ))
                }
            }
        }
        Some(other) => {
            return Err(ApiError::invalid(
                "response_format",
                format!(
                    "`response_format` must be an object, got {}",
                    json_kind(other)
                ),
            ))
        }
    };
    let from_schema = match json_schema {
        None | Some(Json::Null) => None,
        Some(schema @ (Json::Object(_) | Json::Bool(_))) => {
            Some(ResponseFormat::JsonSchema(schema.clone()))
        }
        Some(other) => {
            return Err(ApiError::invalid(
                "json_schema",
                format!(
                    "`json_schema` must be a JSON schema object, got {}",
                    json_kind(other)
                ),
            ))
        }
    };
    let from_grammar = grammar
        .filter(|g| !g.trim().is_empty())
        .map(|g| ResponseFormat::Grammar(g.to_owned()));
    let mut given = [from_format, from_schema, from_grammar]
        .into_iter()
        .flatten();
    let first = given.next();
    if given.next().is_some() {
        return Err(ApiError::invalid(
            "response_format",
            "give at most one of `response_format`, `json_schema` and `grammar`",
        ));
    }
    Ok(first)
}

fn message(i: usize, m: &WireMessage) -> Result<ChatMessage, ApiError> {
    let role = match m.role.as_str() {
        "system" | "developer" => Role::System,
        "user" => Role::User,
        "assistant" => Role::Assistant,
        "tool" => Role::Tool,
        other => {
            return Err(ApiError::invalid(
                format!("messages[{i}].role"),
                format!(
                    "`messages[{i}].role` must be system, developer, user, assistant or tool, got `{other}`"
                ),
            ))
        }
    };
    let content = match &m.content {
        None | Some(Json::Null) => String::new(),
        Some(Json::String(text)) => text.clone(),
        Some(Json::Array(parts)) => parts
            .iter()
            .enumerate()
            .map(|(j, part)| text_part(i, j, part))
            .collect::<Result<Vec<_>, _>>()?
            .join("\n"),
        Some(other) => {
            return Err(ApiError::invalid(
                format!("messages[{i}].content"),
                format!(
                    "`messages[{i}].content` must be a string or a list of text parts, got {}",
                    json_kind(other)
                ),
            ))
        }
    };
    let tool_calls = m
        .tool_calls
        .iter()
        .flatten()
        .enumerate()
        .map(|(j, call)| {
            let field = || format!("messages[{i}].tool_calls[{j}].function.arguments");
            let arguments =
                arguments_from_wire(call.function.arguments.as_ref()).map_err(|err| {
                    ApiError::invalid(field(), format!("`{}` is not JSON: {err}", field()))
                })?;
            Ok(ToolCall {
                name: call.function.name.clone(),
                arguments,
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    Ok(ChatMessage {
        role,
        content,
        tool_calls,
    })
}

fn text_part(i: usize, j: usize, part: &Json) -> Result<String, ApiError> {
    let field = format!("messages[{i}].content[{j}]");
    match (part.get("type").and_then(Json::as_str), part.get("text")) {
        (Some("text"), Some(Json::String(text))) => Ok(text.clone()),
        (Some("text"), _) => Err(ApiError::invalid(
            format!("{field}.text"),
            format!("`{field}.text` must be a string"),
        )),
        (Some(other), _) => Err(ApiError::invalid(
            format!("{field}.type"),
            format!("only `text` content parts are supported, got `{other}` at `{field}`"),
        )),
        (None, _) => Err(ApiError::invalid(
            field.clone(),
            format!("`{field}` must be an object with a `type`"),
        )),
    }
}

fn tool(i: usize, t: &WireTool) -> Result<Json, ApiError> {
    if t.kind != "function" {
        return Err(ApiError::invalid(
            format!("tools[{i}].type"),
            format!("`tools[{i}].type` must be `function`, got `{}`", t.kind),
        ));
    }
    let mut schema = Map::new();
    schema.insert("name".into(), json!(t.function.name));
    if let Some(description) = &t.function.description {
        schema.insert("description".into(), json!(description));
    }
    if let Some(parameters) = &t.function.parameters {
        schema.insert("parameters".into(), parameters.clone());
    }
    Ok(Json::Object(schema))
}

fn tool_choice(choice: Option<&Json>) -> Result<ToolChoice, ApiError> {
    match choice {
        None | Some(Json::Null) => Ok(ToolChoice::Auto),
        Some(Json::String(s)) if s == "auto" => Ok(ToolChoice::Auto),
        Some(Json::String(s)) if s == "none" => Ok(ToolChoice::None),
        Some(Json::String(s)) if s == "required" => Ok(ToolChoice::Required),
        Some(object @ Json::Object(_)) => match object.pointer("/function/name") {
            Some(Json::String(name)) if object.get("type") == Some(&json!("function")) => {
                Ok(ToolChoice::Named(name.clone()))
            }
            _ => Err(ApiError::invalid(
                "tool_choice",
                format!(
                    "`tool_choice` as an object must be {{\"type\": \"function\", \"function\": {{\"name\": …}}}}, got {object}"
                ),
            )),
        },
        Some(other) => Err(ApiError::invalid(
            "tool_choice",
            format!("`tool_choice` must be \"auto\", \"none\", \"required\" or an object, got {other}"),
        )),
    }
}

pub(super) fn stop_strings(stop: Option<&Json>) -> Result<Vec<String>, ApiError> {
    let bad = || ApiError::invalid("stop", "`stop` must be a string or a list of strings");
    match stop {
        None | Some(Json::Null) => Ok(Vec::new()),
        Some(Json::String(s)) => Ok(vec![s.clone()]),
        Some(Json::Array(items)) => items
            .iter()
            .map(|item| item.as_str().map(str::to_owned).ok_or_else(bad))
            .collect(),
        Some(_) => Err(bad()),
    }
}

/// `chatcmpl-…` / `call_…`: random, so clients can tell responses apart.
pub fn random_id(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        Alphanumeric.sample_string(&mut rand::rng(), 24)
    )
}

/// What every response and chunk of one completion repeats.
#[derive(Debug, Clone)]
pub struct ResponseMeta {
    pub id: String,
    pub created: u64,
    pub model: String,
}

impl ResponseMeta {
    pub fn new(model: &str) -> Self {
        Self {
            id: random_id("chatcmpl-"),
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            model: model.to_owned(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ChatCompletion {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<Choice>,
    pub usage: WireUsage,
    pub timings: WireTimings,
}

#[derive(Debug, Serialize)]
pub struct Choice {
    pub index: usize,
    pub message: ResponseMessage,
    pub finish_reason: &'static str,
    pub logprobs: Option<ChatLogprobs>,
}

/// OpenAI's `choices[].logprobs` of a chat completion.
#[derive(Debug, Serialize)]
pub struct ChatLogprobs {
    pub content: Vec<WireTokenLogprob>,
}

/// One token's entry in [`ChatLogprobs`].
#[derive(Debug, Serialize)]
pub struct WireTokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_logprobs: Option<Vec<WireTokenLogprob>>,
}

impl ChatLogprobs {
    /// `piece` gives a token's text.
    pub fn new(scores: &[TokenLogprobs], piece: impl Fn(u32) -> String) -> Self {
        let entry = |id: u32, logprob: f32| {
            let token = piece(id);
            WireTokenLogprob {
                bytes: token.as_bytes().to_vec(),
                token,
                logprob,
                top_logprobs: None,
            }
        };
        Self {
            content: scores
                .iter()
                .map(|s| WireTokenLogprob {
                    top_logprobs: Some(s.top.iter().map(|&(id, lp)| entry(id, lp)).collect()),
                    ..entry(s.id, s.logprob)
                })
                .collect(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ResponseMessage {
    pub role: &'static str,
    /// `null` when the answer is only tool calls, as OpenAI sends it.
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<WireToolCallOut>,
}

/// A tool call (or, streamed, a fragment of one).
#[derive(Debug, Clone, Serialize)]
pub struct WireToolCallOut {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    pub function: WireFunctionOut,
}

#[derive(Debug, Clone, Serialize)]
pub struct WireFunctionOut {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub arguments: String,
}

impl WireToolCallOut {
    /// A whole call, for a non-streaming answer.
    pub fn whole(call: &ToolCall) -> Self {
        let call = StoredToolCall::new(call.clone());
        Self {
            index: None,
            kind: Some("function"),
            function: WireFunctionOut {
                arguments: call.wire_arguments(),
                name: Some(call.name),
            },
            id: Some(call.id),
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct WireUsage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

impl From<Usage> for WireUsage {
    fn from(u: Usage) -> Self {
        Self {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.prompt_tokens + u.completion_tokens,
        }
    }
}

/// llama.cpp server's `timings` object.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct WireTimings {
    /// Prompt tokens reused from the kept cache.
    pub cache_n: usize,
    pub prompt_n: usize,
    pub prompt_ms: f64,
    pub prompt_per_token_ms: f64,
    pub prompt_per_second: f64,
    pub predicted_n: usize,
    pub predicted_ms: f64,
    pub predicted_per_token_ms: f64,
    pub predicted_per_second: f64,
}

impl From<Timings> for WireTimings {
    fn from(t: Timings) -> Self {
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
        let per_token = |ms: f64, n: usize| if n == 0 { 0.0 } else { ms / n as f64 };
        let per_second = |ms: f64, n: usize| {
            if ms <= 0.0 {
                0.0
            } else {
                n as f64 * 1000.0 / ms
            }
        };
        let (prompt_ms, predicted_ms) = (ms(t.prompt_time), ms(t.predicted_time));
        Self {
            cache_n: t.cached_tokens,
            prompt_n: t.prompt_tokens,
            prompt_ms,
            prompt_per_token_ms: per_token(prompt_ms, t.prompt_tokens),
            prompt_per_second: per_second(prompt_ms, t.prompt_tokens),
            predicted_n: t.predicted_tokens,
            predicted_ms,
            predicted_per_token_ms: per_token(predicted_ms, t.predicted_tokens),
            predicted_per_second: per_second(predicted_ms, t.predicted_tokens),
        }
    }
}

/// One streamed chunk.
#[derive(Debug, Serialize)]
pub struct ChatCompletionChunk<'a> {
    pub id: &'a str,
    pub object: &'static str,
    pub created: u64,
    pub model: &'a str,
    pub choices: Vec<ChunkChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<WireUsage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timings: Option<WireTimings>,
}

#[derive(Debug, Serialize)]
pub struct ChunkChoice {
    pub index: usize,
    pub delta: Delta,
    pub finish_reason: Option<&'static str>,
}

/// What a chunk adds to the message; only the fields it sets are sent.
#[derive(Debug, Default, Serialize)]
pub struct Delta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<WireToolCallOut>,
}

/// A non-streaming answer, gathered from the generation's events.
#[derive(Debug, Default)]
pub struct ReplyCollector {
    reasoning: Option<String>,
    content: String,
    tool_calls: Vec<WireToolCallOut>,
}

impl ReplyCollector {
    /// The wire form of a reply collected by the engine.
    pub fn from_reply(reply: &Reply) -> Self {
        let mut collector = Self::default();
        if let Some(reasoning) = &reply.reasoning {
            collector.reasoning(reasoning);
        }
        collector.content(&reply.content);
        for call in &reply.calls {
            collector.tool_call(call);
        }
        collector
    }

    pub fn reasoning(&mut self, text: &str) {
        self.reasoning
            .get_or_insert_with(String::new)
            .push_str(text);
    }

    pub fn content(&mut self, text: &str) {
        self.content.push_str(text);
    }

    pub fn tool_call(&mut self, call: &ToolCall) {
        self.tool_calls.push(WireToolCallOut::whole(call));
    }

    /// The whole answer; `piece` gives a token's text for the log-probabilities.
    pub fn finish(
        self,
        meta: ResponseMeta,
        done: Completion,
        piece: impl Fn(u32) -> String,
    ) -> ChatCompletion {
        let content =
            (!self.content.is_empty() || self.tool_calls.is_empty()).then_some(self.content);
        ChatCompletion {
            id: meta.id,
            object: "chat.completion",
            created: meta.created,
            model: meta.model,
            choices: vec![Choice {
                index: 0,
                message: ResponseMessage {
                    role: "assistant",
                    content,
                    reasoning_content: self.reasoning,
                    tool_calls: self.tool_calls,
                },
                finish_reason: done.finish_reason.as_str(),
                logprobs: done
                    .logprobs
                    .as_ref()
                    .map(|l| ChatLogprobs::new(&l.generated, piece)),
            }],
            usage: done.usage.into(),
            timings: done.timings.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::web::json::parse_body;

    fn request(body: Json) -> Result<ChatRequest, ApiError> {
        parse_body::<ChatCompletionRequest>(body.to_string().as_bytes())?.to_chat_request()
    }

    fn param_of(body: Json) -> Option<String> {
        request(body).err().and_then(|e| e.param)
    }

    #[test]
    fn the_thinking_budget_is_read_in_either_place_and_leaves_the_template_alone() {
        let ask = json!([{"role": "user", "content": "hi"}]);
        let top = request(json!({"messages": ask, "thinking_budget": 7})).unwrap();
        assert_eq!(top.thinking_budget, Some(7));
        let kwarg = request(json!({
            "messages": ask,
            "chat_template_kwargs": {"thinking_budget": 5, "enable_thinking": true}
        }))
        .unwrap();
        assert_eq!(kwarg.thinking_budget, Some(5));
        assert!(
            kwarg.template_kwargs.is_empty(),
            "{:?}",
            kwarg.template_kwargs
        );
        assert_eq!(
            request(json!({"messages": ask})).unwrap().thinking_budget,
            None
        );
        assert_eq!(
            param_of(json!({"messages": ask, "chat_template_kwargs": {"thinking_budget": -1}}))
                .as_deref(),
            Some("chat_template_kwargs.thinking_budget")
        );
    }

    #[test]
    fn fields_of_every_kind_are_read() {
        let r = request(json!({
            "model": "x",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function",
                     "function": {"name": "f", "arguments": "{\"x\": 1}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "2"}
            ],
            "temperature": 0.2, "top_p": 0.5, "seed": 7, "max_tokens": 12,
            "stop": "END",
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
            "chat_template_kwargs": {"enable_thinking": false}
        }))
        .unwrap();
        assert_eq!(r.messages.len(), 4);
        assert_eq!(r.messages[1].content, "a\nb");
        assert_eq!(r.messages[2].tool_calls[0].arguments, json!({"x": 1}));
        assert_eq!(r.messages[3].role, Role::Tool);
        assert_eq!(r.sampling.temperature, Some(0.2));
        assert_eq!(r.sampling.seed, Some(7));
        assert_eq!(
            r.max_tokens.map(|m| (m.field, m.value)),
            Some(("max_tokens", 12))
        );
        assert_eq!(r.stop, vec!["END".to_string()]);
        assert_eq!(
            r.tools,
            vec![json!({"name": "f", "parameters": {"type": "object"}})]
        );
        assert_eq!(r.enable_thinking, Some(false));
        assert!(r.template_kwargs.is_empty());
    }

    #[test]
    fn top_level_enable_thinking_wins_and_max_completion_tokens_is_preferred() {
        let r = request(json!({
            "messages": [{"role": "user", "content": "hi"}],
            "enable_thinking": true,
            "chat_template_kwargs": {"enable_thinking": false},
            "max_tokens": 5, "max_completion_tokens": 9
        }))
        .unwrap();
        assert_eq!(r.enable_thinking, Some(true));
        assert_eq!(
            r.max_tokens.map(|m| (m.field, m.value)),
            Some(("max_completion_tokens", 9))
        );
    }

    #[test]
    fn tool_choice_required_and_named_and_penalties_are_read() {
        let user = json!({"role": "user", "content": "hi"});
        let r = request(json!({"messages": [user], "tool_choice": "required",
                               "presence_penalty": 0.5, "frequency_penalty": -0.25}))
        .unwrap();
        assert_eq!(r.tool_choice, ToolChoice::Required);
        assert_eq!(r.sampling.presence_penalty, Some(0.5));
        assert_eq!(r.sampling.frequency_penalty, Some(-0.25));
        let r = request(json!({"messages": [user],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}))
        .unwrap();
        assert_eq!(r.tool_choice, ToolChoice::Named("get_weather".into()));
        let r = request(json!({"messages": [user], "logprobs": true, "top_logprobs": 3})).unwrap();
        assert_eq!(r.logprobs, Some(3));
    }

    #[test]
    fn bad_fields_are_named() {
        let user = json!({"role": "user", "content": "hi"});
        let cases = [
            (
                json!({"messages": [{"role": "robot", "content": "x"}]}),
                "messages[0].role",
            ),
            (
                json!({"messages": [{"role": "user", "content": 5}]}),
                "messages[0].content",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
                "messages[0].content[0].type",
            ),
            (json!({"messages": [user], "stop": 3}), "stop"),
            (
                json!({"messages": [user], "tool_choice": {"type": "function"}}),
                "tool_choice",
            ),
            (json!({"messages": [user], "tool_choice": 1}), "tool_choice"),
            (
                json!({"messages": [user], "temperature": "hot"}),
                "temperature",
            ),
            (json!({"messages": [user], "n": 2}), "n"),
            (
                json!({"messages": [user], "logprobs": true, "stream": true}),
                "logprobs",
            ),
            (
                json!({"messages": [user], "tools": [{"type": "code", "function": {"name": "f"}}]}),
                "tools[0].type",
            ),
            (
                json!({"messages": [user], "chat_template_kwargs": {"enable_thinking": "yes"}}),
                "chat_template_kwargs.enable_thinking",
            ),
            (
                json!({"messages": [{"role": "assistant", "tool_calls": [
                    {"function": {"name": "f", "arguments": "{oops"}}]}]}),
                "messages[0].tool_calls[0].function.arguments",
            ),
        ];
        for (body, param) in cases {
            assert_eq!(param_of(body.clone()).as_deref(), Some(param), "{body}");
        }
    }

    #[test]
    fn tool_only_answer_has_null_content() {
        let mut c = ReplyCollector::default();
        c.tool_call(&ToolCall {
            name: "f".into(),
            arguments: json!({"a": 1}),
        });
        let done = Completion {
            finish_reason: crate::services::events::FinishReason::ToolCalls,
            usage: Usage::default(),
            timings: Timings::default(),
            logprobs: None,
        };
        let body = serde_json::to_value(c.finish(ResponseMeta::new("m"), done, |_| String::new()))
            .unwrap();
        let message = &body["choices"][0]["message"];
        assert_eq!(message["content"], Json::Null);
        assert_eq!(
            message["tool_calls"][0]["function"]["arguments"],
            "{\"a\":1}"
        );
        assert_eq!(message["tool_calls"][0]["type"], "function");
        assert_eq!(body["choices"][0]["finish_reason"], "tool_calls");
    }
}
