//! From a chat request to the tokens the engine runs: the model's chat template, its
//! tokenizer and its context size, held together as a [`ChatCodec`].
//!
//! This sits apart from the engine thread so that rendering and tokenizing (milliseconds for a
//! long conversation) can run on a blocking pool while the engine keeps generating, and so
//! that every limit is checked before a request takes a place in the queue. It knows nothing
//! of HTTP: the web layer turns its wire format into a [`ChatRequest`] first.

use std::sync::{Arc, OnceLock};

use serde_json::{json, Map, Value as Json};

use super::error::ServiceError;
use super::events::{ReplyOptions, Resume};
use super::structured::{OutputConstraint, ResponseFormat};
use super::truncation::{self, Truncation};
use crate::inference::generate::GenerationRequest;
use crate::inference::sampling::SamplingParams;
use crate::smollm3::chat_template::{ChatTemplate, RenderContext};
use crate::smollm3::grammar::{GrammarCompiler, GrammarSpec, ToolCallOpening};
use crate::smollm3::prompt::{render_prompt, ChatPrompt};
use crate::smollm3::pyformat::{python_json, JsonOptions};
use crate::smollm3::thinking_budget::{prompt_opens_reasoning, think_tag_ids, ThinkingBudget};
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

/// Bytes of text `request` brings for the template: messages, their tool calls, and tools.
fn request_text_bytes(request: &ChatRequest) -> usize {
    let json_bytes = |value: &Json| serde_json::to_vec(value).map_or(0, |v| v.len());
    let messages: usize = request
        .messages
        .iter()
        .map(|m| {
            m.content.len()
                + m.tool_calls
                    .iter()
                    .map(|call| call.name.len() + json_bytes(&call.arguments))
                    .sum::<usize>()
        })
        .sum();
    messages + request.tools.iter().map(json_bytes).sum::<usize>()
}

/// Whether the model may call the offered tools.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ToolChoice {
    /// Offer the tools; the model decides.
    #[default]
    Auto,
    /// Leave the tools out of the prompt and read no calls from the answer.
    None,
    /// The answer must call one of the tools: the server writes its `<tool_call>` opening.
    Required,
    /// The answer must call this tool: the server writes the opening up to its arguments.
    Named(String),
}

impl ToolChoice {
    /// The tools are in the prompt and calls are read from the answer.
    fn offers_tools(&self) -> bool {
        !matches!(self, Self::None)
    }
}

/// Sampling as a request asks for it: every value optional. [`ChatCodec::prepare`] (and
/// [`ChatCodec::prepare_completion`]) is the one place that fills in the defaults
/// (llama.cpp's), draws a seed when none is given and checks the ranges, so no front end
/// repeats them or needs the engine's own sampling type.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sampling {
    pub temperature: Option<f32>,
    /// 0 disables top-k.
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    pub min_p: Option<f32>,
    pub repeat_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    /// `None` draws a fresh seed, so asking again gives another answer.
    pub seed: Option<u64>,
}

/// The values a request gets for what it leaves out, for front ends that show them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingDefaults {
    pub temperature: f32,
    pub top_p: f32,
}

impl Sampling {
    /// Always the most likely token: the same prompt gives the same answer.
    pub fn greedy() -> Self {
        Self {
            temperature: Some(0.0),
            seed: Some(SamplingParams::default().seed),
            ..Self::default()
        }
    }

    /// The defaults of the values a front end lets people change.
    pub fn defaults() -> SamplingDefaults {
        let defaults = SamplingParams::default();
        SamplingDefaults {
            temperature: defaults.temperature,
            top_p: defaults.top_p,
        }
    }

    /// Checks the values given, naming the field of any out of its range; a stored setting
    /// is checked so before any request uses it.
    pub fn check(&self) -> Result<(), ServiceError> {
        self.resolve().map(drop)
    }

    /// Every value filled in (the defaults, a fresh seed) and checked.
    fn resolve(&self) -> Result<SamplingParams, ServiceError> {
        let defaults = SamplingParams::default();
        checked_sampling(&SamplingParams {
            temperature: self.temperature.unwrap_or(defaults.temperature),
            top_k: self.top_k.unwrap_or(defaults.top_k),
            top_p: self.top_p.unwrap_or(defaults.top_p),
            min_p: self.min_p.unwrap_or(defaults.min_p),
            repeat_penalty: self.repeat_penalty.unwrap_or(defaults.repeat_penalty),
            frequency_penalty: self.frequency_penalty.unwrap_or(defaults.frequency_penalty),
            presence_penalty: self.presence_penalty.unwrap_or(defaults.presence_penalty),
            seed: self.seed.unwrap_or_else(rand::random),
            ..defaults
        })
    }
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
    pub sampling: Sampling,
    pub stop: Vec<String>,
    /// Score each generated token with this many alternatives (OpenAI's `top_logprobs`).
    pub logprobs: Option<usize>,
    /// At most this many reasoning tokens: then the engine writes `</think>` itself and
    /// the model goes on to the answer (the same [`ThinkingBudget`] as
    /// `smolbot generate --thinking-budget`). Ignored with thinking off.
    pub thinking_budget: Option<usize>,
    /// What the answer (after any reasoning) must match.
    pub response_format: Option<ResponseFormat>,
    /// Whether the oldest exchanges are dropped when the conversation outgrows the context
    /// (see [`super::truncation`]).
    pub truncation: Truncation,
    /// The last message is an assistant answer to go on with: it is rendered as an open
    /// turn, without its end-of-turn markup, and the output continues its text (HF's
    /// `continue_final_message`).
    pub continue_final: bool,
}

/// The prompt of a text completion, as a client gives it.
#[derive(Debug, Clone, PartialEq)]
pub enum CompletionPrompt {
    /// Text, tokenized as llama.cpp's server does: BOS first where the model wants it, and
    /// special-token texts read as control tokens (the caller writes the markup itself).
    Text(String),
    /// Token ids as given, checked against the vocabulary.
    Ids(Vec<i64>),
}

impl Default for CompletionPrompt {
    fn default() -> Self {
        Self::Ids(Vec::new())
    }
}

/// A plain text completion (`/v1/completions`, `smolbot generate --raw`): no template, no
/// reply parsing.
#[derive(Debug, Clone, Default)]
pub struct CompletionRequest {
    pub prompt: CompletionPrompt,
    /// 0 only scores the prompt.
    pub max_tokens: Option<TokenLimit>,
    pub sampling: Sampling,
    pub stop: Vec<String>,
    /// Score each token with this many alternatives.
    pub logprobs: Option<usize>,
    /// Score the prompt's tokens as well (OpenAI's `echo` with `logprobs`).
    pub score_prompt: bool,
    /// At most this many reasoning tokens after a prompt that opened `<think>` (see
    /// [`ChatRequest::thinking_budget`]).
    pub thinking_budget: Option<usize>,
    /// What the completion must match, from its first token.
    pub response_format: Option<ResponseFormat>,
}

/// Alternatives a request may ask for per token; as OpenAI's legacy completions allow.
pub const MAX_TOP_LOGPROBS: usize = 20;

/// A request ready for the engine: its prompt tokens and how to generate and read the reply.
#[derive(Debug, Clone)]
pub struct PreparedChat {
    pub prompt: Vec<u32>,
    pub generation: GenerationRequest,
    pub reply: ReplyOptions,
    /// Counts the reasoning as it is generated and says when to close it.
    pub thinking_budget: Option<ThinkingBudget>,
    /// The grammars the output must follow, when the request asked for any.
    pub constraint: Option<OutputConstraint>,
    /// Messages left out after the leading system messages, oldest first, to fit the
    /// context (only with [`Truncation::Auto`]).
    pub dropped: usize,
}

/// What the prompt of a request takes, measured without refusing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PromptSize {
    /// Tokens of the prompt that would be sent (after any truncation).
    pub tokens: usize,
    /// Messages truncation would leave out (see [`PreparedChat::dropped`]).
    pub dropped: usize,
}

/// Most bytes of text a request may bring for each token of context. Real text averages 3–5
/// bytes a token (English about 4.5, code 3–4, Chinese 2–3), so text beyond 16 a token
/// cannot fit the context; refusing it before the tokenizer runs is what bounds a request's
/// memory (an 8 MB body cost 1.7 GB to tokenize).
pub const MAX_TEXT_BYTES_PER_TOKEN: usize = 16;

/// The model's text side: chat template, tokenizer and context size.
pub struct ChatCodec {
    tokenizer: GgufTokenizer,
    template: ChatTemplate,
    /// Keyword arguments every render gets (the special tokens' texts, as transformers
    /// passes them).
    template_defaults: Map<String, Json>,
    context_length: usize,
    /// The grammar compiler over this tokenizer, built at the first request that needs it
    /// (its token trie takes a moment for a large vocabulary); `None` inside when this
    /// backend does not constrain its output (the stub, which writes a script).
    grammars: OnceLock<Option<Result<Arc<GrammarCompiler>, String>>>,
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
            grammars: OnceLock::new(),
        }
    }

    /// A codec whose requests are never constrained: for a backend that does not sample
    /// from logits (the stub), where `response_format` and tool schemas have no effect.
    pub fn without_grammars(self) -> Self {
        let grammars = OnceLock::new();
        let _ = grammars.set(None);
        Self { grammars, ..self }
    }

    /// Compiles `spec`, reporting what llguidance cannot use under `field`; `None` when this
    /// backend does not constrain output.
    fn compile(
        &self,
        spec: &GrammarSpec,
        field: &'static str,
    ) -> Result<Option<crate::smollm3::grammar::Grammar>, ServiceError> {
        let compiler = self.grammars.get_or_init(|| {
            Some(
                GrammarCompiler::new(&self.tokenizer)
                    .map(Arc::new)
                    .map_err(|err| err.to_string()),
            )
        });
        let compiler = match compiler {
            None => return Ok(None),
            Some(Ok(compiler)) => compiler,
            Some(Err(err)) => {
                return Err(ServiceError::InvalidParameter {
                    field,
                    problem: format!("cannot be honoured with this model's tokenizer: {err}"),
                })
            }
        };
        compiler
            .compile(spec)
            .map(Some)
            .map_err(|err| ServiceError::InvalidParameter {
                field,
                problem: format!("cannot be used: {err}"),
            })
    }

    /// The constraints of a chat request over its final `prompt`: the answer's format or a
    /// forced call's schema, else a lazy grammar for the calls the model may open itself.
    fn chat_constraint(
        &self,
        request: &ChatRequest,
        prompt: &[u32],
        forced: bool,
    ) -> Result<Option<OutputConstraint>, ServiceError> {
        let offers = request.tool_choice.offers_tools() && !request.tools.is_empty();
        let answer = match &request.tool_choice {
            ToolChoice::Required if offers => Some(GrammarSpec::ToolCall {
                tools: request.tools.clone(),
                written: ToolCallOpening::TagAndNewline,
            }),
            ToolChoice::Named(name) if offers => Some(GrammarSpec::ToolCall {
                tools: request.tools.clone(),
                written: ToolCallOpening::Arguments(name.clone()),
            }),
            // A format under `"auto"` still lets the model call a tool instead.
            ToolChoice::Auto if offers => {
                request.response_format.as_ref().map(|f| match f.spec() {
                    GrammarSpec::JsonSchema(schema) => GrammarSpec::JsonOrToolCall {
                        schema,
                        tools: request.tools.clone(),
                    },
                    other => other,
                })
            }
            _ => request.response_format.as_ref().map(ResponseFormat::spec),
        };
        let field = if forced { "tools" } else { "response_format" };
        let mut constraint = OutputConstraint::default();
        if let Some(spec) = answer {
            constraint.answer = self.compile(&spec, field)?;
        } else if offers && request.tool_choice == ToolChoice::Auto {
            // Only where `<tool_call>` is one token can its appearance switch a grammar on.
            if let Ok([trigger]) = self.tokenizer.encode("<tool_call>", true).as_deref() {
                let spec = GrammarSpec::ToolCall {
                    tools: request.tools.clone(),
                    written: ToolCallOpening::Tag,
                };
                constraint.tool_call = self.compile(&spec, "tools")?.map(|g| (*trigger, g));
            }
        }
        if constraint.is_empty() {
            return Ok(None);
        }
        if !forced && request.enable_thinking != Some(false) {
            if let Ok((open, close)) = think_tag_ids(&self.tokenizer) {
                constraint.think = Some((open, close));
                constraint.starts_reasoning = prompt_opens_reasoning(prompt, open, close);
            }
        }
        Ok(Some(constraint))
    }

    pub fn tokenizer(&self) -> &GgufTokenizer {
        &self.tokenizer
    }

    /// Tokens the model can hold, prompt and answer together.
    pub fn context_length(&self) -> usize {
        self.context_length
    }

    /// Most bytes of text one request may bring ([`MAX_TEXT_BYTES_PER_TOKEN`] per token of
    /// context): more cannot fit, and is refused before tokenizing.
    pub fn max_text_bytes(&self) -> usize {
        self.context_length.saturating_mul(MAX_TEXT_BYTES_PER_TOKEN)
    }

    /// Refuses `bytes` of text in `field` beyond [`Self::max_text_bytes`].
    pub fn check_text_bytes(&self, field: &'static str, bytes: usize) -> Result<(), ServiceError> {
        let limit = self.max_text_bytes();
        if bytes > limit {
            return Err(ServiceError::TextTooLong {
                field,
                bytes,
                limit,
                context: self.context_length,
            });
        }
        Ok(())
    }

    /// The prompt text for `request`, ending with the opening of the assistant's turn.
    pub fn render(&self, request: &ChatRequest) -> Result<String, ServiceError> {
        let ctx = self.render_context(request)?;
        self.template.render(&ctx).map_err(ServiceError::Template)
    }

    /// The prompt's ids as the template renders `request` (no server-written opening, no
    /// limits checked); a continued final message ends open ([`Self::opened`]).
    fn prompt_ids(&self, request: &ChatRequest) -> Result<Vec<u32>, ServiceError> {
        let ctx = self.render_context(request)?;
        let prompt =
            render_prompt(&self.template, &ctx, &self.tokenizer).map_err(|err| match err {
                Smollm3Error::TemplateRender(_) | Smollm3Error::TemplateInput(_) => {
                    ServiceError::Template(err)
                }
                other => ServiceError::Tokenize(other),
            })?;
        if request.continue_final {
            self.opened(request, prompt)
        } else {
            Ok(prompt.ids)
        }
    }

    /// `prompt`, the whole conversation rendered, without the markup the template closes the
    /// final message with (`<|im_end|>` and its newline for SmolLM3): the turn is left open
    /// for the model to go on writing, as transformers' `continue_final_message` does.
    fn opened(&self, request: &ChatRequest, prompt: ChatPrompt) -> Result<Vec<u32>, ServiceError> {
        let cannot = |problem: &str| ServiceError::InvalidParameter {
            field: "messages",
            problem: format!("cannot be continued: {problem}"),
        };
        let last = request
            .messages
            .last()
            .filter(|m| m.role == Role::Assistant)
            .ok_or_else(|| cannot("the last message is not the assistant's"))?;
        let content = template_message(last)["content"]
            .as_str()
            .unwrap_or_default()
            .trim_end()
            .to_owned();
        if content.trim().is_empty() {
            return Err(cannot("the last message is empty"));
        }
        let at = prompt
            .text
            .rfind(&content)
            .ok_or_else(|| cannot("the template does not write the last message as it is"))?;
        let closing = &prompt.text[at + content.len()..];
        let closing = self
            .tokenizer
            .encode(closing, true)
            .map_err(ServiceError::Tokenize)?;
        prompt
            .ids
            .strip_suffix(closing.as_slice())
            .map(<[u32]>::to_vec)
            .ok_or_else(|| cannot("its closing markup does not come apart from its text"))
    }

    fn render_context(&self, request: &ChatRequest) -> Result<RenderContext, ServiceError> {
        if request.messages.is_empty() {
            return Err(ServiceError::EmptyMessages);
        }
        let mut ctx = RenderContext::new(request.messages.iter().map(template_message).collect());
        ctx.add_generation_prompt = !request.continue_final;
        ctx.enable_thinking = request.enable_thinking;
        if request.tool_choice.offers_tools() && !request.tools.is_empty() {
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
        self.check_text_bytes("prompt", text.len())?;
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
        self.check_text_bytes("messages", request_text_bytes(request))?;
        let sampling = request.sampling.resolve()?;
        let stop = checked_stop(&request.stop)?;
        let forced = self.forced_opening(request)?;
        let forced_call = !forced.is_empty();
        let fitted = self.truncated(request, forced.len())?;
        let (request, dropped) = match &fitted {
            Some((_, fit)) if !fit.fits => {
                return Err(ServiceError::LastTurnTooLong {
                    prompt_tokens: fit.prompt_tokens,
                    limit: self.context_length,
                    dropped: fit.dropped,
                })
            }
            Some((kept, fit)) => (kept, fit.dropped),
            None => (request, 0),
        };
        let mut prompt = self.prompt_ids(request)?;
        prompt.extend(&forced);
        let mut prefix = forced;
        let thinking_budget = self.thinking_budget(request, &prefix, &prompt)?;
        let suffix = Self::budget_suffix(&thinking_budget);
        prompt.extend(&suffix);
        prefix.extend(suffix);
        let max_tokens = self.checked_limits(prompt.len(), request.max_tokens, 1)?;
        let constraint = self.chat_constraint(request, &prompt, forced_call)?;
        Ok(PreparedChat {
            prompt,
            thinking_budget,
            constraint,
            generation: GenerationRequest {
                max_tokens,
                sampling,
                stop_tokens: self.tokenizer.end_of_generation().to_vec(),
                logprobs: checked_top_logprobs(request.logprobs)?,
                prompt_logprobs: None,
            },
            reply: ReplyOptions {
                stop,
                parse_tool_calls: request.tool_choice.offers_tools() && !request.tools.is_empty(),
                raw: false,
                prefix,
                resume: resume_of(request),
            },
            dropped,
        })
    }

    /// `request` cut to fit the context when it asks for truncation ([`Truncation::Auto`]),
    /// with where it was cut; `None` when it does not ask. `extra` tokens follow the
    /// rendered prompt (a server-written opening).
    fn truncated(
        &self,
        request: &ChatRequest,
        extra: usize,
    ) -> Result<Option<(ChatRequest, truncation::Fit)>, ServiceError> {
        if request.truncation != Truncation::Auto {
            return Ok(None);
        }
        let reserve = truncation::answer_reserve(
            self.context_length,
            request
                .max_tokens
                .and_then(|limit| usize::try_from(limit.value).ok()),
        );
        let mut trial = request.clone();
        let fit = truncation::fit(
            &request.messages,
            self.context_length,
            reserve,
            |messages| {
                trial.messages = messages.to_vec();
                Ok::<_, ServiceError>(self.prompt_ids(&trial)?.len() + extra)
            },
        )?;
        trial.messages = truncation::kept(&request.messages, fit.dropped);
        Ok(Some((trial, fit)))
    }

    /// The tokens `request`'s prompt would take, counted even when it is too long to send
    /// (so a meter can show by how much), after any truncation it asks for.
    pub fn measure(&self, request: &ChatRequest) -> Result<PromptSize, ServiceError> {
        match self.prepare(request) {
            Ok(prepared) => Ok(PromptSize {
                tokens: prepared.prompt.len(),
                dropped: prepared.dropped,
            }),
            Err(ServiceError::PromptTooLong { prompt_tokens, .. }) => Ok(PromptSize {
                tokens: prompt_tokens,
                dropped: 0,
            }),
            Err(ServiceError::LastTurnTooLong {
                prompt_tokens,
                dropped,
                ..
            }) => Ok(PromptSize {
                tokens: prompt_tokens,
                dropped,
            }),
            Err(other) => Err(other),
        }
    }

    /// The request's thinking budget over `prompt`, when it has one and the answer may
    /// reason (thinking on, and no tool call forced, which opens the answer without any).
    fn thinking_budget(
        &self,
        request: &ChatRequest,
        forced: &[u32],
        prompt: &[u32],
    ) -> Result<Option<ThinkingBudget>, ServiceError> {
        if request.enable_thinking == Some(false) || !forced.is_empty() {
            return Ok(None);
        }
        self.budget_over(request.thinking_budget, prompt)
    }

    /// A budget of `max` reasoning tokens for the output after `prompt`; an error names the
    /// field when the model has no single-token `<think>` tags to count between.
    fn budget_over(
        &self,
        max: Option<usize>,
        prompt: &[u32],
    ) -> Result<Option<ThinkingBudget>, ServiceError> {
        let Some(max) = max else {
            return Ok(None);
        };
        ThinkingBudget::new(&self.tokenizer, max, prompt)
            .map(Some)
            .map_err(|err| ServiceError::InvalidParameter {
                field: "thinking_budget",
                problem: err.to_string(),
            })
    }

    /// The closing `</think>` a spent budget of 0 writes right after the prompt.
    fn budget_suffix(budget: &Option<ThinkingBudget>) -> Vec<u32> {
        budget
            .clone()
            .map_or_else(Vec::new, |mut budget| budget.prompt_suffix())
    }

    /// The ids of a completion's prompt: text tokenized as llama.cpp's server does, ids
    /// checked against the vocabulary.
    pub fn completion_prompt(&self, prompt: &CompletionPrompt) -> Result<Vec<u32>, ServiceError> {
        let vocab = self.tokenizer.vocab_size();
        let ids = match prompt {
            CompletionPrompt::Text(text) => self.tokenize(text, true, true)?,
            CompletionPrompt::Ids(ids) => ids
                .iter()
                .map(|&id| match u32::try_from(id) {
                    Ok(ok) if (ok as usize) < vocab => Ok(ok),
                    _ => Err(ServiceError::TokenOutOfRange { id, vocab }),
                })
                .collect::<Result<_, _>>()?,
        };
        if ids.is_empty() {
            return Err(ServiceError::InvalidParameter {
                field: "prompt",
                problem: "must hold at least one token".into(),
            });
        }
        Ok(ids)
    }

    /// Tokenizes a text completion and checks it against the model's limits; its text is
    /// not parsed.
    pub fn prepare_completion(
        &self,
        request: &CompletionRequest,
    ) -> Result<PreparedChat, ServiceError> {
        let mut prompt = self.completion_prompt(&request.prompt)?;
        let top = checked_top_logprobs(request.logprobs)?;
        let thinking_budget = self.budget_over(request.thinking_budget, &prompt)?;
        // A `</think>` a spent budget writes after the prompt is part of the prompt here, as
        // the prompt is not echoed either.
        prompt.extend(Self::budget_suffix(&thinking_budget));
        let max_tokens = self.checked_limits(prompt.len(), request.max_tokens, 0)?;
        let constraint = match &request.response_format {
            Some(format) => self
                .compile(&format.spec(), "response_format")?
                .map(|answer| OutputConstraint {
                    answer: Some(answer),
                    ..OutputConstraint::default()
                }),
            None => None,
        };
        Ok(PreparedChat {
            constraint,
            prompt,
            generation: GenerationRequest {
                max_tokens,
                sampling: request.sampling.resolve()?,
                stop_tokens: self.tokenizer.end_of_generation().to_vec(),
                logprobs: top,
                prompt_logprobs: request.score_prompt.then_some(top.unwrap_or(0)),
            },
            reply: ReplyOptions {
                stop: checked_stop(&request.stop)?,
                raw: true,
                ..ReplyOptions::default()
            },
            thinking_budget,
            dropped: 0,
        })
    }

    /// The prompt must leave room for an answer, and `max_tokens` (at least `min`) must fit
    /// the context; returns the answer's token budget.
    fn checked_limits(
        &self,
        prompt_tokens: usize,
        max_tokens: Option<TokenLimit>,
        min: i64,
    ) -> Result<usize, ServiceError> {
        let limit = self.context_length;
        if let Some(TokenLimit { field, value }) = max_tokens {
            if value < min || value as u64 > limit as u64 {
                return Err(ServiceError::MaxTokensOutOfRange {
                    field,
                    value,
                    min,
                    limit,
                });
            }
        }
        if prompt_tokens >= limit {
            return Err(ServiceError::PromptTooLong {
                prompt_tokens,
                limit,
            });
        }
        Ok(max_tokens.map_or(limit - prompt_tokens, |m| m.value as usize))
    }

    /// The tokens the server writes at the start of the answer when `tool_choice` demands a
    /// call: `<tool_call>` and, for a named tool, the JSON up to its arguments — the way
    /// SmolLM3 writes calls, so the model only fills in the rest. Without a grammar this is
    /// how llama.cpp-style servers force a call; the reply then has no reasoning block.
    fn forced_opening(&self, request: &ChatRequest) -> Result<Vec<u32>, ServiceError> {
        let name_of = |tool: &Json| tool.get("name").and_then(Json::as_str).map(str::to_owned);
        let text =
            match &request.tool_choice {
                ToolChoice::Auto | ToolChoice::None => return Ok(Vec::new()),
                ToolChoice::Required if request.tools.is_empty() => {
                    return Err(ServiceError::InvalidParameter {
                        field: "tool_choice",
                        problem: "is \"required\" but `tools` is empty".into(),
                    })
                }
                ToolChoice::Required => "<tool_call>\n".to_owned(),
                ToolChoice::Named(name) => {
                    if !request
                        .tools
                        .iter()
                        .any(|t| name_of(t).as_ref() == Some(name))
                    {
                        let offered: Vec<String> =
                            request.tools.iter().filter_map(name_of).collect();
                        return Err(ServiceError::InvalidParameter {
                            field: "tool_choice",
                            problem: format!(
                            "names the function `{name}`, which is not in `tools` (offered: {})",
                            if offered.is_empty() { "none".into() } else { offered.join(", ") }
                        ),
                        });
                    }
                    let call = tool_call_json(&ToolCall {
                        name: name.clone(),
                        arguments: Json::Null,
                    });
                    let opening = call.strip_suffix("null}").unwrap_or(&call);
                    format!("<tool_call>\n{opening}")
                }
            };
        self.tokenizer
            .encode(&text, true)
            .map_err(ServiceError::Tokenize)
    }
}

fn checked_top_logprobs(top: Option<usize>) -> Result<Option<usize>, ServiceError> {
    match top {
        Some(n) if n > MAX_TOP_LOGPROBS => Err(ServiceError::InvalidParameter {
            field: "top_logprobs",
            problem: format!("must be between 0 and {MAX_TOP_LOGPROBS}, got {n}"),
        }),
        other => Ok(other),
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
    for (field, value) in [
        ("frequency_penalty", p.frequency_penalty),
        ("presence_penalty", p.presence_penalty),
    ] {
        if !(-2.0..=2.0).contains(&value) {
            return bad(field, format!("must be between -2 and 2, got {value}"));
        }
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

/// Where the output of a request that continues its final message starts: inside the
/// reasoning when that message's think block is still open.
fn resume_of(request: &ChatRequest) -> Option<Resume> {
    if !request.continue_final {
        return None;
    }
    let content = request.messages.last().map_or("", |m| m.content.as_str());
    let open = content
        .rfind("<think>")
        .is_some_and(|at| !content[at..].contains("</think>"));
    Some(if open {
        Resume::Reasoning
    } else {
        Resume::Answer
    })
}

/// How a JSON value's kind is named in error messages ("got a number"), for the API's
/// request checks and the built-in tools' argument checks alike.
pub fn json_kind(value: &Json) -> &'static str {
    match value {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
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
            sampling: Sampling::default(),
            stop: vec![],
            logprobs: None,
            thinking_budget: None,
            response_format: None,
            truncation: Truncation::Disabled,
            continue_final: false,
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
    fn requests_leave_out_what_the_defaults_fill_in() {
        let defaults = SamplingParams::default();
        let given = Sampling {
            temperature: Some(0.3),
            seed: Some(7),
            ..Sampling::default()
        };
        let resolved = given.resolve().expect("in range");
        assert_eq!(resolved.temperature, 0.3);
        assert_eq!(resolved.seed, 7);
        assert_eq!(resolved.top_k, defaults.top_k);
        assert_eq!(resolved.top_p, Sampling::defaults().top_p);
        let seeds: std::collections::HashSet<u64> = (0..4)
            .map(|_| Sampling::default().resolve().expect("defaults").seed)
            .collect();
        assert!(
            seeds.len() > 1,
            "no seed given draws a fresh one: {seeds:?}"
        );
        let bad = Sampling {
            min_p: Some(1.5),
            ..Sampling::default()
        };
        assert!(matches!(
            bad.check(),
            Err(ServiceError::InvalidParameter { field: "min_p", .. })
        ));
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

    fn stub_codec() -> ChatCodec {
        let tokenizer = crate::services::stub::stub_tokenizer().expect("tokenizer");
        ChatCodec::new(
            tokenizer,
            ChatTemplate::builtin().expect("template"),
            Map::new(),
            4096,
        )
    }

    fn weather_request(choice: ToolChoice) -> ChatRequest {
        ChatRequest {
            messages: vec![ChatMessage::new(Role::User, "hello")],
            tools: vec![
                json!({"name": "get_weather", "parameters": {}}),
                json!({"name": "calculator", "parameters": {}}),
            ],
            tool_choice: choice,
            ..ChatRequest::default()
        }
    }

    #[test]
    fn a_required_or_named_call_is_opened_by_the_server() {
        let codec = stub_codec();
        let text = |ids: &[u32]| codec.tokenizer().decode(ids).unwrap();
        let auto = codec.prepare(&weather_request(ToolChoice::Auto)).unwrap();
        assert!(auto.reply.prefix.is_empty());
        let required = codec
            .prepare(&weather_request(ToolChoice::Required))
            .unwrap();
        assert_eq!(text(&required.reply.prefix), "<tool_call>\n");
        assert!(required.prompt.ends_with(&required.reply.prefix));
        assert!(required.reply.parse_tool_calls);
        let named = codec
            .prepare(&weather_request(ToolChoice::Named("calculator".into())))
            .unwrap();
        assert_eq!(
            text(&named.reply.prefix),
            "<tool_call>\n{\"name\": \"calculator\", \"arguments\": "
        );
    }

    #[test]
    fn a_forced_call_needs_a_tool_to_call() {
        let codec = stub_codec();
        let err = codec
            .prepare(&weather_request(ToolChoice::Named("search".into())))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`search`") && err.contains("get_weather, calculator"),
            "{err}"
        );
        let mut request = weather_request(ToolChoice::Required);
        request.tools.clear();
        let err = codec.prepare(&request).unwrap_err().to_string();
        assert!(err.contains("`tools` is empty"), "{err}");
    }

    #[test]
    fn completions_may_score_without_generating() {
        let codec = stub_codec();
        let request = CompletionRequest {
            prompt: CompletionPrompt::Ids(vec![1, 2, 3]),
            max_tokens: Some(TokenLimit {
                field: "max_tokens",
                value: 0,
            }),
            logprobs: Some(2),
            score_prompt: true,
            ..CompletionRequest::default()
        };
        let prepared = codec.prepare_completion(&request).unwrap();
        assert_eq!(prepared.generation.max_tokens, 0);
        assert_eq!(prepared.generation.prompt_logprobs, Some(2));
        assert!(prepared.reply.raw);
        let too_many = CompletionRequest {
            logprobs: Some(MAX_TOP_LOGPROBS + 1),
            ..request.clone()
        };
        assert!(codec.prepare_completion(&too_many).is_err());
        let empty = CompletionRequest {
            prompt: CompletionPrompt::Ids(vec![]),
            ..request.clone()
        };
        assert!(codec.prepare_completion(&empty).is_err());
        let outside = CompletionRequest {
            prompt: CompletionPrompt::Ids(vec![1, -1]),
            ..request
        };
        assert!(matches!(
            codec.prepare_completion(&outside),
            Err(ServiceError::TokenOutOfRange { id: -1, .. })
        ));
    }

    fn conversation(turns: usize, words: usize) -> Vec<ChatMessage> {
        let mut messages = vec![ChatMessage::new(Role::System, "Be brief.")];
        for n in 0..turns {
            messages.push(ChatMessage::new(
                Role::User,
                format!("question {n} {}", "word ".repeat(words)),
            ));
            messages.push(ChatMessage::new(Role::Assistant, format!("answer {n}")));
        }
        messages.push(ChatMessage::new(Role::User, "the last question"));
        messages
    }

    #[test]
    fn truncation_drops_the_oldest_exchanges_only_when_asked() {
        let tokenizer = crate::services::stub::stub_tokenizer().expect("tokenizer");
        let context = 300;
        let codec = ChatCodec::new(
            tokenizer,
            ChatTemplate::builtin().expect("template"),
            Map::new(),
            context,
        );
        let request = ChatRequest {
            messages: conversation(6, 30),
            enable_thinking: Some(false),
            max_tokens: Some(TokenLimit {
                field: "max_tokens",
                value: 50,
            }),
            ..ChatRequest::default()
        };
        let whole = codec.measure(&request).expect("measured");
        assert!(whole.tokens > context, "{whole:?}");
        assert_eq!(whole.dropped, 0);
        assert!(matches!(
            codec.prepare(&request),
            Err(ServiceError::PromptTooLong { .. })
        ));
        let auto = ChatRequest {
            truncation: Truncation::Auto,
            ..request.clone()
        };
        let prepared = codec.prepare(&auto).expect("fits once cut");
        assert!(
            prepared.dropped > 0 && prepared.dropped.is_multiple_of(2),
            "whole exchanges"
        );
        assert!(prepared.prompt.len() + 50 <= context);
        assert_eq!(
            codec.measure(&auto).expect("measured").tokens,
            prepared.prompt.len()
        );
        let text = codec.tokenizer().decode(&prepared.prompt).expect("text");
        assert!(
            text.contains("Be brief."),
            "the system prompt stays: {text}"
        );
        assert!(!text.contains("question 0"), "{text}");
        assert!(text.contains("the last question"));
        // The exchange just before the cut would not have fit.
        let one_more = ChatRequest {
            messages: truncation::kept(&auto.messages, prepared.dropped - 2),
            ..request.clone()
        };
        let more = codec.measure(&one_more).expect("measured");
        assert!(more.tokens + 50 > context, "{more:?}");
        // Nothing is dropped from a conversation that fits.
        let short = ChatRequest {
            messages: conversation(1, 3),
            ..auto.clone()
        };
        assert_eq!(codec.prepare(&short).expect("fits").dropped, 0);
        // A last question that alone fills the context is refused, and says so.
        let mut huge = auto.clone();
        huge.messages.push(ChatMessage::new(Role::Assistant, "ok"));
        huge.messages
            .push(ChatMessage::new(Role::User, "word ".repeat(400)));
        let err = codec.prepare(&huge).unwrap_err();
        assert!(
            matches!(err, ServiceError::LastTurnTooLong { .. }),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .contains("even without the earlier messages"),
            "{err}"
        );
    }

    #[test]
    fn a_continued_answer_is_the_conversation_without_its_closing_markup() {
        let codec = stub_codec();
        for thinking in [true, false] {
            for last in [
                "Here is half an ans",
                "<think>\nLet me see",
                "<think>\nSo.\n</think>\nIt is",
            ] {
                let request = ChatRequest {
                    messages: vec![
                        ChatMessage::new(Role::System, "Be brief."),
                        ChatMessage::new(Role::User, "Hello <|im_end|>"),
                        ChatMessage::new(Role::Assistant, last),
                    ],
                    enable_thinking: Some(thinking),
                    continue_final: true,
                    ..ChatRequest::default()
                };
                let prepared = codec.prepare(&request).expect("prepared");
                let mut closed = request.clone();
                closed.continue_final = false;
                let mut ctx = codec.render_context(&closed).expect("context");
                ctx.add_generation_prompt = false;
                let whole = render_prompt(&codec.template, &ctx, codec.tokenizer()).expect("ids");
                let closing = codec.tokenizer().encode("<|im_end|>\n", true).expect("ids");
                assert_eq!(
                    whole.ids.strip_suffix(closing.as_slice()),
                    Some(prepared.prompt.as_slice()),
                    "{last:?}, thinking {thinking}"
                );
                let open = last
                    .rfind("<think>")
                    .is_some_and(|at| !last[at..].contains("</think>"));
                let resume = if open {
                    Resume::Reasoning
                } else {
                    Resume::Answer
                };
                assert_eq!(prepared.reply.resume, Some(resume));
            }
        }
        let not_the_assistant = ChatRequest {
            messages: vec![ChatMessage::new(Role::User, "Hello")],
            continue_final: true,
            ..ChatRequest::default()
        };
        let err = codec.prepare(&not_the_assistant).unwrap_err().to_string();
        assert!(err.contains("cannot be continued"), "{err}");
    }
}
