//! From a chat request to the tokens the engine runs: the model's chat template, its
//! tokenizer and its context size, held together as a [`ChatCodec`].
//!
//! This sits apart from the engine thread so that rendering and tokenizing (milliseconds for a
//! long conversation) can run on a blocking pool while the engine keeps generating, and so
//! that every limit is checked before a request takes a place in the queue. It knows nothing
//! of HTTP: the web layer turns its wire format into a [`ChatRequest`] first.

use serde_json::{json, Map, Value as Json};

use super::error::ServiceError;
use super::events::ReplyOptions;
use crate::inference::generate::GenerationRequest;
use crate::inference::sampling::SamplingParams;
use crate::smollm3::chat_template::{ChatTemplate, RenderContext};
use crate::smollm3::prompt::render_prompt;
use crate::smollm3::pyformat::{python_json, JsonOptions};
use crate::smollm3::tool_calls::ToolCall;
use crate::smollm3::{GgufTokenizer, Smollm3Error};

/// Stop strings a request may set: each one is checked against the output after every token.
pub const MAX_STOP_STRINGS: usize = 16;

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
    /// A tool's result, fed back to the model after its call.
    Tool,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::System => "system",
            Self::User => "user",
            Self::Assistant => "assistant",
            Self::Tool => "tool",
        }
    }
}

/// One message of the conversation, as the template needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
    /// Calls an earlier assistant turn made; written back into its text the way SmolLM3
    /// writes them, so the model sees its own format.
    pub tool_calls: Vec<ToolCall>,
}

impl ChatMessage {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
            tool_calls: Vec::new(),
        }
    }
}

/// Whether the model may call the offered tools.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ToolChoice {
    /// Offer the tools; the model decides.
    #[default]
    Auto,
    /// Leave the tools out of the prompt and read no calls from the answer.
    None,
}

/// A limit on the answer's length, with the name the client gave it (OpenAI has two).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenLimit {
    pub field: &'static str,
    pub value: i64,
}

/// A chat completion request in the model's terms.
#[derive(Debug, Clone, Default)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    /// Function schemas (`name`, `description`, `parameters`), as SmolLM3's `xml_tools`.
    pub tools: Vec<Json>,
    pub tool_choice: ToolChoice,
    /// SmolLM3's reasoning switch; `None` keeps the template's default (on).
    pub enable_thinking: Option<bool>,
    /// Further keyword arguments for the template.
    pub template_kwargs: Map<String, Json>,
    /// `None` generates until an end token or the context is full.
    pub max_tokens: Option<TokenLimit>,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
}

/// A request ready for the engine: its prompt tokens and how to generate and read the reply.
#[derive(Debug, Clone)]
pub struct PreparedChat {
    pub prompt: Vec<u32>,
    pub generation: GenerationRequest,
    pub reply: ReplyOptions,
}

/// The model's text side: chat template, tokenizer and context size.
pub struct ChatCodec {
    tokenizer: GgufTokenizer,
    template: ChatTemplate,
    /// Keyword arguments every render gets (the special tokens' texts, as transformers
    /// passes them).
    template_defaults: Map<String, Json>,
    context_length: usize,
}

impl ChatCodec {
    pub fn new(
        tokenizer: GgufTokenizer,
        template: ChatTemplate,
        template_defaults: Map<String, Json>,
        context_length: usize,
    ) -> Self {
        Self {
            tokenizer,
            template,
            template_defaults,
            context_length,
        }
    }

    pub fn tokenizer(&self) -> &GgufTokenizer {
        &self.tokenizer
    }

    /// Tokens the model can hold, prompt and answer together.
    pub fn context_length(&self) -> usize {
        self.context_length
    }

    /// The prompt text for `request`, ending with the opening of the assistant's turn.
    pub fn render(&self, request: &ChatRequest) -> Result<String, ServiceError> {
        let ctx = self.render_context(request)?;
        self.template.render(&ctx).map_err(ServiceError::Template)
    }

    fn render_context(&self, request: &ChatRequest) -> Result<RenderContext, ServiceError> {
        if request.messages.is_empty() {
            return Err(ServiceError::EmptyMessages);
        }
        let mut ctx = RenderContext::new(request.messages.iter().map(template_message).collect());
        ctx.add_generation_prompt = true;
        ctx.enable_thinking = request.enable_thinking;
        if request.tool_choice == ToolChoice::Auto && !request.tools.is_empty() {
            // Older SmolLM3 templates read `xml_tools` (bare schemas), newer ones `tools`
            // (OpenAI's `{"type": "function", "function": …}` as transformers passes it).
            ctx.xml_tools = Some(Json::Array(request.tools.clone()));
            ctx.tools = Some(Json::Array(
                request
                    .tools
                    .iter()
                    .map(|f| serde_json::json!({"type": "function", "function": f}))
                    .collect(),
            ));
        }
        ctx.extra = self.template_defaults.clone();
        ctx.extra.extend(request.template_kwargs.clone());
        Ok(ctx)
    }

    /// Token ids of `text`; `add_special` puts BOS first where the model wants it,
    /// `parse_special` reads special-token texts as control tokens.
    pub fn tokenize(
        &self,
        text: &str,
        add_special: bool,
        parse_special: bool,
    ) -> Result<Vec<u32>, ServiceError> {
        let mut ids = Vec::new();
        if add_special && self.tokenizer.add_bos {
            ids.extend(self.tokenizer.bos);
        }
        ids.extend(
            self.tokenizer
                .encode(text, parse_special)
                .map_err(ServiceError::Tokenize)?,
        );
        Ok(ids)
    }

    /// Text of `ids`, rejecting ids outside the vocabulary (as a client may send any number).
    pub fn detokenize(&self, ids: &[i64]) -> Result<String, ServiceError> {
        let vocab = self.tokenizer.vocab_size();
        let ids = ids
            .iter()
            .map(|&id| match u32::try_from(id) {
                Ok(ok) if (ok as usize) < vocab => Ok(ok),
                _ => Err(ServiceError::TokenOutOfRange { id, vocab }),
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.tokenizer.decode(&ids).map_err(ServiceError::Tokenize)
    }

    /// The text one token stands for on its own (may be part of a UTF-8 character, shown
    /// with replacement characters then).
    pub fn piece(&self, id: u32) -> String {
        self.tokenizer.decode(&[id]).unwrap_or_default()
    }

    /// Renders, tokenizes and checks `request` against the model's limits. Only the template's
    /// markup becomes control tokens: a user who types `<|im_end|>` cannot close their turn.
    pub fn prepare(&self, request: &ChatRequest) -> Result<PreparedChat, ServiceError> {
        let sampling = checked_sampling(&request.sampling)?;
        let stop = checked_stop(&request.stop)?;
        let limit = self.context_length;
        if let Some(TokenLimit { field, value }) = request.max_tokens {
            if value < 1 || value as u64 > limit as u64 {
                return Err(ServiceError::MaxTokensOutOfRange {
                    field,
                    value,
                    limit,
                });
            }
        }
        let ctx = self.render_context(request)?;
        let prompt = render_prompt(&self.template, &ctx, &self.tokenizer)
            .map_err(|err| match err {
                Smollm3Error::TemplateRender(_) | Smollm3Error::TemplateInput(_) => {
                    ServiceError::Template(err)
                }
                other => ServiceError::Tokenize(other),
            })?
            .ids;
        if prompt.len() >= limit {
            return Err(ServiceError::PromptTooLong {
                prompt_tokens: prompt.len(),
                limit,
            });
        }
        let max_tokens = request
            .max_tokens
            .map_or(limit - prompt.len(), |m| m.value as usize);
        Ok(PreparedChat {
            prompt,
            generation: GenerationRequest {
                max_tokens,
                sampling,
                stop_tokens: self.tokenizer.end_of_generation().to_vec(),
            },
            reply: ReplyOptions {
                stop,
                parse_tool_calls: request.tool_choice == ToolChoice::Auto
                    && !request.tools.is_empty(),
            },
        })
    }
}

/// The sampling settings, each checked under the name the API gives it.
fn checked_sampling(p: &SamplingParams) -> Result<SamplingParams, ServiceError> {
    let bad = |field, problem: String| Err(ServiceError::InvalidParameter { field, problem });
    if !(p.temperature.is_finite() && p.temperature >= 0.0) {
        return bad("temperature", format!("must be ≥ 0, got {}", p.temperature));
    }
    if !(p.top_p > 0.0 && p.top_p <= 1.0) {
        return bad("top_p", format!("must be in (0, 1], got {}", p.top_p));
    }
    if !(0.0..=1.0).contains(&p.min_p) {
        return bad("min_p", format!("must be in [0, 1], got {}", p.min_p));
    }
    if !(p.repeat_penalty.is_finite() && p.repeat_penalty > 0.0) {
        return bad(
            "repeat_penalty",
            format!("must be > 0, got {}", p.repeat_penalty),
        );
    }
    Ok(p.clone())
}

fn checked_stop(stop: &[String]) -> Result<Vec<String>, ServiceError> {
    let stop: Vec<String> = stop.iter().filter(|s| !s.is_empty()).cloned().collect();
    if stop.len() > MAX_STOP_STRINGS {
        return Err(ServiceError::InvalidParameter {
            field: "stop",
            problem: format!(
                "may hold at most {MAX_STOP_STRINGS} strings, got {}",
                stop.len()
            ),
        });
    }
    Ok(stop)
}

/// A message as the template reads it; an assistant turn's tool calls are appended to its
/// text in SmolLM3's own `<tool_call>` format.
fn template_message(message: &ChatMessage) -> Json {
    let mut content = message.content.clone();
    for call in &message.tool_calls {
        if !content.is_empty() {
            content.push('\n');
        }
        content.push_str("<tool_call>\n");
        content.push_str(&tool_call_json(call));
        content.push_str("\n</tool_call>");
    }
    json!({ "role": message.role.as_str(), "content": content })
}

/// `{"name": …, "arguments": …}` as Python's `json.dumps` writes it, the form the template's
/// instructions show the model.
pub fn tool_call_json(call: &ToolCall) -> String {
    let value = json!({ "name": call.name, "arguments": call.arguments });
    python_json(
        &minijinja::Value::from(minijinja::value::Serde(&value)),
        &JsonOptions::default(),
    )
    .unwrap_or_else(|_| value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_calls_are_written_back_in_smollm3_format() {
        let mut message = ChatMessage::new(Role::Assistant, "");
        message.tool_calls.push(ToolCall {
            name: "get_weather".into(),
            arguments: json!({"city": "Paris"}),
        });
        assert_eq!(
            template_message(&message),
            json!({
                "role": "assistant",
                "content": "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>"
            })
        );
    }

    #[test]
    fn tools_reach_templates_that_read_xml_tools_and_those_that_read_tools() {
        let template = ChatTemplate::new(
            "{% for t in xml_tools %}xml:{{ t.name }} {% endfor %}{% for t in tools %}{{ t.type }}:{{ t.function.name }}{% endfor %}",
        )
        .expect("template");
        let tokenizer = crate::services::stub::stub_tokenizer().expect("tokenizer");
        let codec = ChatCodec::new(tokenizer, template, Map::new(), 4096);
        let request = ChatRequest {
            messages: vec![ChatMessage::new(Role::User, "weather?")],
            tools: vec![json!({"name": "get_weather", "parameters": {}})],
            tool_choice: ToolChoice::Auto,
            enable_thinking: None,
            template_kwargs: Map::new(),
            max_tokens: None,
            sampling: SamplingParams::default(),
            stop: vec![],
        };
        assert_eq!(
            codec.render(&request).expect("render"),
            "xml:get_weather function:get_weather"
        );
    }

    #[test]
    fn sampling_errors_name_the_api_field() {
        type Change = fn(&mut SamplingParams);
        let cases: [(Change, &str); 4] = [
            (|p| p.temperature = -0.5, "temperature"),
            (|p| p.top_p = 0.0, "top_p"),
            (|p| p.min_p = 2.0, "min_p"),
            (|p| p.repeat_penalty = 0.0, "repeat_penalty"),
        ];
        for (change, field) in cases {
            let mut p = SamplingParams::default();
            change(&mut p);
            match checked_sampling(&p) {
                Err(ServiceError::InvalidParameter { field: got, .. }) => assert_eq!(got, field),
                other => panic!("{field}: {other:?}"),
            }
        }
        assert!(checked_sampling(&SamplingParams::default()).is_ok());
    }

    #[test]
    fn stop_list_drops_empty_strings_and_has_a_limit() {
        assert_eq!(
            checked_stop(&["".into(), "END".into()]).ok(),
            Some(vec!["END".to_string()])
        );
        let many: Vec<String> = (0..=MAX_STOP_STRINGS).map(|i| i.to_string()).collect();
        assert!(matches!(
            checked_stop(&many),
            Err(ServiceError::InvalidParameter { field: "stop", .. })
        ));
    }
}
