//! The stub model (`smolbot serve --stub`): a deterministic stand-in without weights, so the
//! page and the API can be developed and tested on any machine in seconds.
//!
//! It is a [`TokenModel`] like the real one: it receives the rendered, tokenized prompt and
//! emits token ids one at a time at a set pace, which then pass through the same decoder,
//! reasoning and tool-call parsers and event stream as a real model's. What it writes it
//! decides by reading the prompt as SmolLM3 would: a `<think>` block when the prompt left
//! thinking on; a `<tool_call>` when the system turn lists tools and the last user turn
//! mentions the weather or holds an arithmetic expression; a report of the tool's result when
//! the last turn answers its call; the rest of the turn, verbatim, when it starts with
//! `Echo:`; Markdown with a list, a table and a code block otherwise.
//!
//! Its vocabulary is the synthetic tiny model's byte-level BPE (the same special tokens as
//! SmolLM3's), built once per process from a throwaway synthetic file.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{Map, Value as Json};

use super::chat::tool_call_json;
use super::error::ServiceError;
use super::token_model::TokenModel;
use crate::inference::generate::{
    GenerationRequest, GenerationStats, PrefillProgress, Sampled, StopReason, TokenAction,
    TokenSink,
};
use crate::inference::logprobs::TokenLogprobs;
use crate::inference::{GgufFile, InferenceError};
use crate::smollm3::synthetic::{write_gguf, SyntheticSpec};
use crate::smollm3::tool_calls::ToolCall;
use crate::smollm3::{GgufTokenizer, Smollm3Error};

/// The name `/v1/models` gives the stub.
pub const STUB_MODEL_ID: &str = "smolbot-stub";

/// SmolLM3's context, so the stub's limits look like the real model's.
pub const STUB_CONTEXT_LENGTH: usize = 65_536;

/// How the stub behaves.
#[derive(Debug, Clone, PartialEq)]
pub struct StubConfig {
    /// Pace of the output; 0 emits as fast as the consumer takes it (tests).
    pub tokens_per_second: f64,
    pub context_length: usize,
}

impl Default for StubConfig {
    /// 60 tokens/s: the stub's small vocabulary makes short tokens, so this shows text at
    /// about the pace SmolLM3-3B writes on a good laptop.
    fn default() -> Self {
        Self {
            tokens_per_second: 60.0,
            context_length: STUB_CONTEXT_LENGTH,
        }
    }
}

/// The synthetic tiny model's tokenizer, built once per process.
pub fn stub_tokenizer() -> Result<GgufTokenizer, Smollm3Error> {
    static CACHE: Mutex<Option<GgufTokenizer>> = Mutex::new(None);
    let mut cache = CACHE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(tokenizer) = cache.as_ref() {
        return Ok(tokenizer.clone());
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let path = std::env::temp_dir().join(format!(
        "smolbot-stub-vocab-{}-{nanos}.gguf",
        std::process::id()
    ));
    // One layer is enough: only the tokenizer metadata is read, never a tensor.
    let spec = SyntheticSpec {
        n_layer: 1,
        ..SyntheticSpec::tiny()
    };
    let built =
        write_gguf(&spec, &path).and_then(|()| GgufTokenizer::from_gguf(&GgufFile::open(&path)?));
    let _ = std::fs::remove_file(&path);
    let tokenizer = built?;
    *cache = Some(tokenizer.clone());
    Ok(tokenizer)
}

/// The stub as a token source.
pub struct StubModel {
    tokenizer: GgufTokenizer,
    /// Time between two tokens; `None` for no waiting.
    pace: Option<Duration>,
    /// When the last paced step was due.
    next_due: Option<Instant>,
    context_length: usize,
}

impl StubModel {
    pub fn new(config: StubConfig) -> Result<Self, Smollm3Error> {
        let pace = (config.tokens_per_second > 0.0 && config.tokens_per_second.is_finite())
            .then(|| Duration::from_secs_f64(1.0 / config.tokens_per_second));
        Ok(Self {
            tokenizer: stub_tokenizer()?,
            pace,
            next_due: None,
            context_length: config.context_length,
        })
    }

    pub fn tokenizer(&self) -> &GgufTokenizer {
        &self.tokenizer
    }
}

/// A stub generation: the reply it will write, token by token.
pub struct StubSequence {
    /// The reply's ids then the end token, still to write.
    reply: std::vec::IntoIter<u32>,
    request: GenerationRequest,
    prompt_len: usize,
    stats: GenerationStats,
    /// The prompt was reported as read; tokens follow.
    reading_done: bool,
    started: Instant,
    finished: bool,
}

impl StubSequence {
    fn end(&mut self, stop: StopReason) {
        self.stats.stop = stop;
        self.stats.generation_time = self.started.elapsed();
        self.finished = true;
    }

    /// One step: the prompt's (instant) reading, or the next token.
    fn advance(&mut self, limit: usize, sink: &mut dyn TokenSink) {
        if !self.reading_done {
            self.reading_done = true;
            let progress = PrefillProgress {
                done: self.prompt_len,
                total: self.prompt_len,
                cached: 0,
            };
            self.stats.prompt_time = self.started.elapsed();
            self.started = Instant::now();
            if sink.prefilled(progress).is_break() {
                self.end(StopReason::Cancelled);
            }
            return;
        }
        let request = &self.request;
        if self.stats.generated_tokens >= request.max_tokens {
            return self.end(StopReason::MaxTokens);
        }
        let Some(next) = self.reply.next() else {
            return self.end(StopReason::EndToken);
        };
        if request.stop_tokens.contains(&next) {
            return self.end(StopReason::EndToken);
        }
        self.stats.generated_tokens += 1;
        let logprobs = request.logprobs.map(|n| certain(next, n));
        match sink.token(Sampled { id: next, logprobs }) {
            TokenAction::Stop => return self.end(StopReason::Cancelled),
            // Written into the reply (a spent thinking budget's `</think>`): the stub goes on
            // from where its own reply has the last injected token, as a model would.
            TokenAction::Inject(injected) => {
                if let Some(&last) = injected.last() {
                    self.reply.by_ref().find(|&id| id == last);
                }
            }
            TokenAction::Continue => {}
        }
        if self.prompt_len + self.stats.generated_tokens >= limit {
            self.end(StopReason::ContextFull);
        }
    }
}

impl TokenModel for StubModel {
    type Sequence = StubSequence;

    fn begin(
        &mut self,
        prompt: &[u32],
        request: &GenerationRequest,
    ) -> Result<StubSequence, ServiceError> {
        let limit = self.context_length;
        if prompt.len() >= limit {
            return Err(ServiceError::Generation(
                InferenceError::ContextFull {
                    needed: prompt.len() + 1,
                    limit,
                }
                .to_string(),
            ));
        }
        let prompt_text = self
            .tokenizer
            .decode(prompt)
            .map_err(ServiceError::Tokenize)?;
        let reply = compose_reply(&prompt_text);
        let mut ids = self
            .tokenizer
            .encode(&reply, true)
            .map_err(ServiceError::Tokenize)?;
        ids.extend(request.stop_tokens.first().copied());
        let prompt_logprobs = request.prompt_logprobs.map_or_else(Vec::new, |n| {
            prompt[1..].iter().map(|&id| certain(id, n)).collect()
        });
        Ok(StubSequence {
            reply: ids.into_iter(),
            request: request.clone(),
            prompt_len: prompt.len(),
            stats: GenerationStats {
                prompt_logprobs,
                ..GenerationStats::starting(prompt.len(), 0)
            },
            reading_done: false,
            started: Instant::now(),
            finished: false,
        })
    }

    /// Writes one token for every sequence past its prompt, after waiting for the pace (one
    /// wait per step, as a batched model spends one forward pass on all of them).
    fn step(
        &mut self,
        running: &mut [(&mut StubSequence, &mut dyn TokenSink)],
    ) -> Result<(), ServiceError> {
        let writing = running
            .iter()
            .any(|(seq, _)| seq.reading_done && !seq.finished);
        if let (Some(pace), true) = (self.pace, writing) {
            let now = Instant::now();
            // Keeps the average pace across steps, without a burst after an idle spell.
            let due = match self.next_due {
                Some(due) if due + pace + pace >= now => due + pace,
                _ => now + pace,
            };
            std::thread::sleep(due.saturating_duration_since(now));
            self.next_due = Some(due);
        }
        for (seq, sink) in running.iter_mut() {
            if !seq.finished {
                seq.advance(self.context_length, &mut **sink);
            }
        }
        Ok(())
    }

    fn is_finished(&self, seq: &StubSequence) -> bool {
        seq.finished
    }

    fn finish(&mut self, mut seq: StubSequence) -> GenerationStats {
        if !seq.finished {
            seq.end(StopReason::Cancelled);
        }
        seq.stats
    }
}

/// The stub's scores: every token it reads or writes was the one it expected, with
/// probability 1.
fn certain(id: u32, top_n: usize) -> TokenLogprobs {
    TokenLogprobs {
        id,
        logprob: 0.0,
        top: std::iter::once((id, 0.0)).take(top_n).collect(),
    }
}

/// One turn of a ChatML prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Turn<'a> {
    role: &'a str,
    content: &'a str,
}

/// The turns of a rendered ChatML prompt, the open assistant turn last.
fn turns(prompt: &str) -> Vec<Turn<'_>> {
    prompt
        .split("<|im_start|>")
        .skip(1)
        .map(|segment| {
            let (role, rest) = segment.split_once('\n').unwrap_or((segment, ""));
            let content = rest.split("<|im_end|>").next().unwrap_or(rest);
            Turn { role, content }
        })
        .collect()
}

/// A tool the prompt offers: its name and its first parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
struct OfferedTool {
    name: String,
    first_parameter: Option<String>,
}

/// Tools listed in the system turn's `<tools>` block (one Python dict repr per line).
fn offered_tools(system: &str) -> Vec<OfferedTool> {
    let Some(start) = system.find("<tools>\n") else {
        return Vec::new();
    };
    let block = &system[start + "<tools>\n".len()..];
    let block = block.split("</tools>").next().unwrap_or(block);
    block
        .lines()
        .filter_map(|line| {
            let name = quoted_after(line, "'name': '")?;
            let first_parameter = quoted_after(line, "'properties': {'");
            Some(OfferedTool {
                name,
                first_parameter,
            })
        })
        .collect()
}

/// The single-quoted word that follows `marker` in `text`.
fn quoted_after(text: &str, marker: &str) -> Option<String> {
    let rest = &text[text.find(marker)? + marker.len()..];
    let end = rest.find('\'')?;
    Some(rest[..end].to_owned()).filter(|s| !s.is_empty())
}

/// The first arithmetic expression in `text`: digits and `+ - * / ^ ( ) .`, with at least
/// one operator between two numbers.
fn arithmetic_expression(text: &str) -> Option<String> {
    const ALLOWED: &str = "0123456789.+-*/^() ";
    const OPERATORS: &str = "+-*/^";
    let mut runs = Vec::new();
    let mut current = String::new();
    for c in text.chars().chain(std::iter::once('\n')) {
        if ALLOWED.contains(c) {
            current.push(c);
        } else if !current.is_empty() {
            runs.push(std::mem::take(&mut current));
        }
    }
    runs.into_iter().map(|r| r.trim().to_owned()).find(|run| {
        let compact: Vec<char> = run.chars().filter(|c| *c != ' ').collect();
        compact.windows(3).any(|w| {
            w[0].is_ascii_digit()
                && OPERATORS.contains(w[1])
                && (w[2].is_ascii_digit() || w[2] == '(')
        }) || compact.windows(4).any(|w| {
            w[0] == ')' && OPERATORS.contains(w[1]) && (w[2].is_ascii_digit() || w[2] == '(')
        })
    })
}

/// The place a weather question names ("… in New York?"), else Paris.
fn weather_place(text: &str) -> String {
    let words: Vec<&str> = text.split_whitespace().collect();
    for (i, word) in words.iter().enumerate() {
        if matches!(word.to_lowercase().as_str(), "in" | "for" | "at") {
            let place: Vec<String> = words[i + 1..]
                .iter()
                .enumerate()
                .take_while(|(j, w)| *j == 0 || w.starts_with(char::is_uppercase))
                .map(|(_, w)| {
                    w.chars()
                        .filter(|c| c.is_alphabetic() || *c == '-')
                        .collect()
                })
                .take_while(|w: &String| !w.is_empty())
                .collect();
            if let Some(first) = place.first() {
                if first.starts_with(char::is_uppercase) {
                    return place.join(" ");
                }
            }
        }
    }
    "Paris".into()
}

/// `text` on one line, without angle brackets (which could open a tag), at most `max` chars.
fn snippet(text: &str, max: usize) -> String {
    let flat: String = text
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .filter(|c| !matches!(c, '<' | '>'))
        .collect();
    if flat.chars().count() <= max {
        flat
    } else {
        let cut: String = flat.chars().take(max).collect();
        format!("{}…", cut.trim_end())
    }
}

/// What the stub writes after `prompt`: reasoning (in thinking mode) and the answer.
pub fn compose_reply(prompt: &str) -> String {
    let turns = turns(prompt);
    let thinking = turns
        .last()
        .is_some_and(|t| t.role == "assistant" && !t.content.contains("</think>"));
    let tools = turns
        .first()
        .filter(|t| t.role == "system")
        .map_or_else(Vec::new, |t| offered_tools(t.content));
    let history = &turns[..turns.len().saturating_sub(1)];
    let question = || {
        history
            .iter()
            .rev()
            .find(|t| t.role == "user")
            .map_or("", |t| t.content)
    };
    let open = turns
        .last()
        .filter(|t| t.role == "assistant")
        .map_or("", |t| t.content);
    if let Some(start) = open.find("<tool_call>") {
        return finish_forced_call(&open[start..], question(), &tools);
    }
    let reply = |thinking: bool| {
        let (reasoning, answer) = match tool_results(history) {
            Some((name, results)) => reply_to_tool_results(&name, &results),
            None => reply_to_question(question(), &tools, thinking),
        };
        if thinking {
            format!("<think>\n{reasoning}\n</think>\n{answer}")
        } else {
            answer
        }
    };
    // A continued turn: the reply goes on after what the turn already holds.
    let written = open.strip_prefix("<think>\n\n</think>\n").unwrap_or(open);
    if !written.trim().is_empty() {
        return [true, false]
            .into_iter()
            .find_map(|thinking| rest_after(&reply(thinking), written).map(str::to_owned))
            .unwrap_or_default();
    }
    reply(thinking)
}

/// What follows `written` in `full` when `full` begins with it, whitespace aside (a stored
/// answer is trimmed); `None` when it does not.
fn rest_after<'a>(full: &'a str, written: &str) -> Option<&'a str> {
    let mut chars = full.char_indices().peekable();
    for wanted in written.chars().filter(|c| !c.is_whitespace()) {
        loop {
            let (_, c) = chars.next()?;
            if c.is_whitespace() {
                continue;
            }
            if c != wanted {
                return None;
            }
            break;
        }
    }
    Some(chars.peek().map_or("", |&(at, _)| &full[at..]))
}

/// When the last turns answer an assistant's tool call (SmolLM3's template writes tool
/// results as user turns): the tool's name and the results.
fn tool_results<'a>(history: &[Turn<'a>]) -> Option<(String, Vec<&'a str>)> {
    let answers = history
        .iter()
        .rev()
        .take_while(|t| t.role == "user")
        .count();
    let caller = history.len().checked_sub(answers + 1)?;
    let call = history[caller];
    if answers == 0 || call.role != "assistant" || !call.content.contains("<tool_call>") {
        return None;
    }
    let name = crate::smollm3::tool_calls::parse_tool_calls(call.content)
        .tool_calls
        .first()
        .map_or_else(|| "tool".to_owned(), |c| c.name.clone());
    Some((
        name,
        history[caller + 1..].iter().map(|t| t.content).collect(),
    ))
}

fn reply_to_tool_results(name: &str, results: &[&str]) -> (String, String) {
    let results: Vec<String> = results.iter().map(|r| snippet(r, 200)).collect();
    (
        format!("The `{name}` tool has answered, so I can pass its result on."),
        format!(
            "The `{name}` tool returned: {}\n\nThat is the answer to your question.",
            results.join("; ")
        ),
    )
}

/// The `<tool_call>` block the stub writes for `question`, and why. Without `forced` only a
/// weather question or an arithmetic expression calls a tool; with it (`tool_choice`
/// required or named) some tool is always called, the named one if the opening names it.
fn tool_call_for(question: &str, tools: &[OfferedTool], forced: bool) -> Option<(String, String)> {
    let weather = question.to_lowercase().contains("weather");
    let expression = arithmetic_expression(question);
    if tools.is_empty() || !(forced || weather || expression.is_some()) {
        return None;
    }
    let pick = |hints: &[&str]| {
        tools
            .iter()
            .find(|t| hints.iter().any(|h| t.name.to_lowercase().contains(h)))
            .unwrap_or(&tools[0])
    };
    let (tool, default_parameter, value, why) = match (weather, expression) {
        (false, Some(expression)) => {
            let tool = pick(&["calc", "math", "eval", "arith"]);
            let why = format!("The user wants {expression} worked out.");
            (tool, "expression", expression, why)
        }
        (false, None) => {
            let why = "A tool call is required.".to_owned();
            (&tools[0], "input", snippet(question, 80), why)
        }
        (true, _) => {
            let place = weather_place(question);
            let why = format!("The user asks about the weather in {place}.");
            (pick(&["weather"]), "location", place, why)
        }
    };
    let parameter = tool
        .first_parameter
        .clone()
        .unwrap_or_else(|| default_parameter.to_owned());
    let mut arguments = Map::new();
    arguments.insert(parameter, Json::String(value));
    let call = ToolCall {
        name: tool.name.clone(),
        arguments: Json::Object(arguments),
    };
    let why = format!(
        "{why} The `{}` tool can answer that, so I will call it.",
        tool.name
    );
    Some((
        format!("<tool_call>\n{}\n</tool_call>", tool_call_json(&call)),
        why,
    ))
}

/// The rest of a tool call whose opening the server wrote (`tool_choice` required or
/// named): the named tool, or the one the question suggests.
fn finish_forced_call(opening: &str, question: &str, tools: &[OfferedTool]) -> String {
    let named = quoted_after(&opening.replace('"', "'"), "'name': '");
    let tools: Vec<OfferedTool> = match named {
        Some(name) => tools.iter().filter(|t| t.name == name).cloned().collect(),
        None => tools.to_vec(),
    };
    let (call, _) = tool_call_for(question, &tools, true).unwrap_or_default();
    call.strip_prefix(opening).unwrap_or(&call).to_owned()
}

/// A question that starts with this is answered with the rest of it, verbatim: tests make the
/// stub say exactly the Markdown they need (math, a given code block).
const ECHO: &str = "Echo:";

fn reply_to_question(question: &str, tools: &[OfferedTool], thinking: bool) -> (String, String) {
    if let Some(text) = question.strip_prefix(ECHO) {
        let reasoning = "The user asks for their text back, so I will echo it.".to_owned();
        return (reasoning, text.trim_start().to_owned());
    }
    if let Some((call, why)) = tool_call_for(question, tools, false) {
        return (why, call);
    }
    let quoted = snippet(question, 80);
    let reasoning = format!(
        "The user wrote “{quoted}”. No tool is needed, so I will answer with a short Markdown \
         sample: a list, a table and a code block."
    );
    let answer = format!(
        "Here is a stub answer to “{quoted}”.\n\n\
         ### What this shows\n\n\
         - **Streaming**: tokens arrive one by one, at a steady pace.\n\
         - **Markdown**: this list, the table below and a code block.\n\
         - **Determinism**: the same question always gets the same answer.\n\n\
         | Setting | Value |\n\
         |---------|-------|\n\
         | Model | {STUB_MODEL_ID} |\n\
         | Thinking | {} |\n\
         | Tools offered | {} |\n\n\
         ```rust\n\
         fn main() {{\n    println!(\"Hello from {STUB_MODEL_ID}!\");\n}}\n\
         ```",
        if thinking { "on" } else { "off" },
        tools.len()
    );
    (reasoning, answer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smollm3::chat_template::{ChatTemplate, RenderContext};
    use crate::smollm3::thinking::split_thinking;
    use crate::smollm3::tool_calls::parse_tool_calls;
    use serde_json::json;

    fn render(messages: Json, thinking: bool, tools: Option<Json>) -> String {
        let mut ctx = RenderContext::new(messages.as_array().cloned().unwrap_or_default());
        ctx.add_generation_prompt = true;
        ctx.enable_thinking = Some(thinking);
        ctx.xml_tools = tools;
        ctx.today = Some("1 January 2026".into());
        ChatTemplate::builtin().unwrap().render(&ctx).unwrap()
    }

    fn weather_tool() -> Json {
        json!([
            {"name": "get_weather", "description": "Weather in a city",
             "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
            {"name": "calculate", "description": "Arithmetic",
             "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}}}
        ])
    }

    #[test]
    fn markdown_answer_with_thinking() {
        let prompt = render(
            json!([{"role": "user", "content": "Tell me a story"}]),
            true,
            None,
        );
        let reply = compose_reply(&prompt);
        let (reasoning, answer) = split_thinking(&reply);
        assert!(reasoning.unwrap().contains("Tell me a story"));
        assert!(answer.contains("- **Streaming**"));
        assert!(answer.contains("| Thinking | on |"));
        assert!(answer.contains("```rust\n"));
    }

    #[test]
    fn echo_answers_with_the_text_verbatim() {
        let text = "$$\\int_0^1 x\\,dx$$ costs $5 and $10\n\n```rust\nlet a = 1;\n```";
        let prompt = render(
            json!([{"role": "user", "content": format!("Echo: {text}")}]),
            true,
            Some(weather_tool()),
        );
        let (reasoning, answer) = split_thinking(&compose_reply(&prompt));
        assert!(reasoning.is_some());
        assert_eq!(answer.trim_start(), text);
    }

    #[test]
    fn no_think_block_when_thinking_is_off() {
        let prompt = render(json!([{"role": "user", "content": "Hi"}]), false, None);
        let reply = compose_reply(&prompt);
        assert!(!reply.contains("<think>"));
        assert!(reply.contains("| Thinking | off |"));
    }

    #[test]
    fn weather_question_calls_the_weather_tool_with_the_place() {
        let prompt = render(
            json!([{"role": "user", "content": "What's the weather in New York today?"}]),
            false,
            Some(weather_tool()),
        );
        let parsed = parse_tool_calls(&compose_reply(&prompt));
        assert_eq!(
            parsed.tool_calls,
            vec![ToolCall {
                name: "get_weather".into(),
                arguments: json!({"city": "New York"})
            }]
        );
    }

    #[test]
    fn arithmetic_calls_the_calculator() {
        let prompt = render(
            json!([{"role": "user", "content": "What is 17 * (3+4)?"}]),
            true,
            Some(weather_tool()),
        );
        let (_, answer) = split_thinking(&compose_reply(&prompt));
        let parsed = parse_tool_calls(&answer);
        assert_eq!(parsed.tool_calls[0].name, "calculate");
        assert_eq!(
            parsed.tool_calls[0].arguments,
            json!({"expression": "17 * (3+4)"})
        );
    }

    #[test]
    fn weather_without_tools_is_a_markdown_answer() {
        let prompt = render(
            json!([{"role": "user", "content": "weather?"}]),
            false,
            None,
        );
        assert!(!compose_reply(&prompt).contains("<tool_call>"));
    }

    #[test]
    fn tool_result_turn_gets_a_final_answer() {
        let prompt = render(
            json!([
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>"},
                {"role": "tool", "content": "{\"temperature\": 18}"}
            ]),
            false,
            Some(weather_tool()),
        );
        let reply = compose_reply(&prompt);
        assert!(!reply.contains("<tool_call>"), "{reply}");
        assert!(reply.contains("`get_weather` tool returned: {\"temperature\": 18}"));
    }

    #[test]
    fn expressions_and_places_are_found() {
        assert_eq!(
            arithmetic_expression("what is 2+2?").as_deref(),
            Some("2+2")
        );
        assert_eq!(arithmetic_expression("in 2025 there were 3 cats"), None);
        assert_eq!(
            arithmetic_expression("(1+2) * 3").as_deref(),
            Some("(1+2) * 3")
        );
        assert_eq!(weather_place("weather in Paris?"), "Paris");
        assert_eq!(weather_place("weather for Rio de Janeiro"), "Rio");
        assert_eq!(weather_place("nice weather today"), "Paris");
    }

    #[test]
    fn user_text_cannot_open_tags_in_the_reply() {
        let prompt = render(
            json!([{"role": "user", "content": "say </think><tool_call>"}]),
            true,
            None,
        );
        let (_, answer) = split_thinking(&compose_reply(&prompt));
        assert!(answer.starts_with("\nHere is a stub answer"));
    }

    #[test]
    fn a_continued_turn_gets_the_rest_of_the_reply() {
        let question = json!([{"role": "user", "content": "Hello"}]);
        let whole = compose_reply(&render(question.clone(), false, None));
        let cut = whole.char_indices().nth(40).map(|(at, _)| at).unwrap();
        let (begun, rest) = whole.split_at(cut);
        let prompt = render(question.clone(), false, None);
        let begun = begun.trim_end();
        let continued = format!("{prompt}{begun}");
        assert_eq!(format!("{begun}{}", compose_reply(&continued)), whole);
        assert!(!rest.is_empty());
        // Cut in the reasoning: the rest of the reasoning, then the answer.
        let thought = compose_reply(&render(question.clone(), true, None));
        let prompt = render(question, true, None);
        let continued = format!("{prompt}{}", &thought[..20]);
        assert_eq!(compose_reply(&continued), &thought[20..]);
    }
}
