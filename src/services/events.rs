//! What a generation sends back, and the parser that makes it from raw token ids.
//!
//! The engine thread turns each new token into events at once — text decoded without
//! splitting characters, stop strings cut, `<think>` reasoning apart from the answer, and
//! `<tool_call>` blocks parsed into calls — so every consumer (the OpenAI API, the page) gets
//! the same typed stream and no consumer re-implements SmolLM3's output format.
//!
//! Reasoning and answer text are trimmed the way a chat client shows them: leading
//! whitespace is dropped and trailing whitespace is held back until more text follows, so
//! the streamed pieces join to exactly the text a non-streaming reply holds.

use std::time::Duration;

/// A token's score and its alternatives: part of [`Logprobs`], so the front ends that show
/// scores take it from here, not from the engine.
pub use crate::inference::logprobs::TokenLogprobs;
use crate::smollm3::thinking::{ThinkingEvent, ThinkingParser};
use crate::smollm3::tool_calls::{ToolCall, ToolCallEvent, ToolCallParser};
use crate::smollm3::{GgufTokenizer, Smollm3Error, StreamDecoder};

/// One step of a generation's output.
#[derive(Debug, Clone, PartialEq)]
pub enum GenerationEvent {
    /// Text of the model's reasoning (inside `<think>…</think>`).
    Reasoning(String),
    /// Text of the answer.
    Content(String),
    /// A complete, valid tool call from the answer.
    ToolCall(ToolCall),
    /// Where the request stands before its first token: waiting in line, or reading its
    /// prompt. Informational; consumers that show no progress skip it.
    Progress(Progress),
    /// The generation ended; always the last event of a successful run.
    Done(Completion),
    /// The generation failed after it started; the last event.
    Failed(String),
}

/// Progress before the first token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Waiting for the engine with `ahead` requests before this one (the running one
    /// included).
    Queued { ahead: usize },
    /// Reading the prompt: `done` of `total` tokens are in the cache, `cached` of them were
    /// reused from an earlier turn.
    Prefill {
        done: usize,
        total: usize,
        cached: usize,
    },
}

/// Why the answer ended, in OpenAI's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An end token or a stop string.
    Stop,
    /// `max_tokens` or the context ran out.
    Length,
    /// The answer called a tool and ended.
    ToolCalls,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
            Self::ToolCalls => "tool_calls",
        }
    }
}

/// Token counts of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub prompt_tokens: usize,
    /// Generated tokens, reasoning and tool calls included, the end token not.
    pub completion_tokens: usize,
    /// Tokens spent reasoning, when the request had a thinking budget (which counts them
    /// exactly, by token id); `None` otherwise.
    pub reasoning_tokens: Option<usize>,
}

/// How long the prompt and the answer took (llama.cpp server's `timings`).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Timings {
    /// Prompt tokens run for this request (the rest came from a kept cache).
    pub prompt_tokens: usize,
    /// Prompt tokens a kept cache already held (llama.cpp's `cache_n`).
    pub cached_tokens: usize,
    pub prompt_time: Duration,
    pub predicted_tokens: usize,
    pub predicted_time: Duration,
}

/// The summary that closes a successful generation.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub finish_reason: FinishReason,
    pub usage: Usage,
    pub timings: Timings,
    /// Log-probabilities, when the request asked for them.
    pub logprobs: Option<Logprobs>,
}

/// The scores a request asked for: of its prompt's tokens (after the first) and of the
/// tokens it generated.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Logprobs {
    pub prompt: Vec<TokenLogprobs>,
    pub generated: Vec<TokenLogprobs>,
}

/// How to read one request's output.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReplyOptions {
    /// Strings that end the answer where they first appear (not included in it).
    pub stop: Vec<String>,
    /// Tools were offered: `<tool_call>` blocks in the answer are calls, not text.
    pub parse_tool_calls: bool,
    /// Plain text completion: no reasoning split, no tool calls, no trimming.
    pub raw: bool,
    /// Tokens the server wrote at the start of the answer, already at the end of the prompt
    /// (a forced `<tool_call>` opening): the parser reads them as the answer's beginning.
    pub prefix: Vec<u32>,
    /// The output goes on with an answer the prompt already holds part of, so its first
    /// whitespace is kept (it joins words) and it opens no think block of its own.
    pub resume: Option<Resume>,
}

/// Where a continued answer's output starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// Inside the reasoning, which was cut off before `</think>`.
    Reasoning,
    /// In the answer text.
    Answer,
}

/// Turns generated ids into [`GenerationEvent`]s as they arrive.
pub struct ReplyParser<'a> {
    tokenizer: &'a GgufTokenizer,
    decoder: StreamDecoder<'a>,
    stop: StopMatcher,
    thinking: ThinkingParser,
    tools: Option<ToolCallParser>,
    reasoning: Trimmer,
    content: Trimmer,
    tool_calls: usize,
    /// A `<tool_call>` block that was not a valid call: the reply fails with it.
    malformed: Option<Smollm3Error>,
    raw: bool,
}

impl<'a> ReplyParser<'a> {
    pub fn new(tokenizer: &'a GgufTokenizer, options: &ReplyOptions) -> Self {
        Self {
            tokenizer,
            decoder: StreamDecoder::new(tokenizer),
            stop: StopMatcher::new(options.stop.clone()),
            thinking: match options.resume {
                None => ThinkingParser::new(),
                Some(Resume::Reasoning) => ThinkingParser::in_reasoning(),
                Some(Resume::Answer) => ThinkingParser::in_answer(),
            },
            tools: options.parse_tool_calls.then(ToolCallParser::new),
            reasoning: Trimmer::started(options.resume == Some(Resume::Reasoning)),
            content: Trimmer::started(options.resume == Some(Resume::Answer)),
            tool_calls: 0,
            malformed: None,
            raw: options.raw,
        }
    }

    /// Takes the next generated id and returns the events it completes.
    pub fn push(&mut self, id: u32) -> Result<Vec<GenerationEvent>, Smollm3Error> {
        if self.stop.hit() {
            return Ok(Vec::new());
        }
        let Some(text) = self.decoder.push(id)? else {
            return Ok(Vec::new());
        };
        self.push_text(&text)
    }

    /// Takes the next piece of generated text, already decoded (a remote engine streams
    /// text, not ids), and returns the events it completes: the same reading as [`Self::push`].
    pub fn push_text(&mut self, text: &str) -> Result<Vec<GenerationEvent>, Smollm3Error> {
        if self.stop.hit() {
            return Ok(Vec::new());
        }
        let text = self.stop.push(text);
        let mut events = Vec::new();
        if self.raw {
            events.extend((!text.is_empty()).then_some(GenerationEvent::Content(text)));
            return Ok(events);
        }
        let thinking = self.thinking.push(&text);
        self.sort(thinking, &mut events);
        if self.stop.hit() {
            self.flush(&mut events);
        }
        self.check_malformed()?;
        Ok(events)
    }

    /// Reports the first malformed tool call as an error, so it is neither lost nor shown
    /// as answer text.
    fn check_malformed(&mut self) -> Result<(), Smollm3Error> {
        match self.malformed.take() {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }

    /// A stop string appeared: the answer is over, whatever the model would add.
    pub fn stopped(&self) -> bool {
        self.stop.hit()
    }

    /// How many tool calls the answer made so far.
    pub fn tool_calls(&self) -> usize {
        self.tool_calls
    }

    /// Ends the output: whatever was held back comes out.
    pub fn finish(mut self) -> Result<Vec<GenerationEvent>, Smollm3Error> {
        let mut events = Vec::new();
        if !self.stop.hit() {
            let decoder = std::mem::replace(&mut self.decoder, StreamDecoder::new(self.tokenizer));
            let mut text = decoder.finish()?.unwrap_or_default();
            text = self.stop.push(&text);
            text.push_str(&self.stop.finish());
            if self.raw {
                events.extend((!text.is_empty()).then_some(GenerationEvent::Content(text)));
                return Ok(events);
            }
            let thinking = self.thinking.push(&text);
            self.sort(thinking, &mut events);
        }
        self.flush(&mut events);
        self.check_malformed()?;
        Ok(events)
    }

    fn flush(&mut self, events: &mut Vec<GenerationEvent>) {
        let thinking = self.thinking.finish();
        self.sort(thinking, events);
        if let Some(tools) = &mut self.tools {
            let calls = tools.finish();
            self.answer(calls, events);
        }
    }

    fn sort(&mut self, thinking: Vec<ThinkingEvent>, events: &mut Vec<GenerationEvent>) {
        for event in thinking {
            match event {
                ThinkingEvent::Reasoning(text) => {
                    if let Some(text) = self.reasoning.push(&text) {
                        events.push(GenerationEvent::Reasoning(text));
                    }
                }
                ThinkingEvent::Answer(text) => match &mut self.tools {
                    Some(tools) => {
                        let parsed = tools.push(&text);
                        self.answer(parsed, events);
                    }
                    None => {
                        if let Some(text) = self.content.push(&text) {
                            events.push(GenerationEvent::Content(text));
                        }
                    }
                },
            }
        }
    }

    fn answer(&mut self, parsed: Vec<ToolCallEvent>, events: &mut Vec<GenerationEvent>) {
        for event in parsed {
            match event {
                ToolCallEvent::Content(text) => {
                    if let Some(text) = self.content.push(&text) {
                        events.push(GenerationEvent::Content(text));
                    }
                }
                ToolCallEvent::ToolCall(call) => {
                    self.tool_calls += 1;
                    events.push(GenerationEvent::ToolCall(call));
                }
                ToolCallEvent::Malformed { text, problem } => {
                    self.malformed
                        .get_or_insert(Smollm3Error::ToolCall { problem, text });
                }
            }
        }
    }
}

/// Cuts the output at the first stop string, holding back any end of the text that could
/// still grow into one.
#[derive(Debug, Default)]
struct StopMatcher {
    stops: Vec<String>,
    held: String,
    hit: bool,
}

impl StopMatcher {
    fn new(stops: Vec<String>) -> Self {
        Self {
            stops,
            ..Self::default()
        }
    }

    fn hit(&self) -> bool {
        self.hit
    }

    /// Returns the text that is certainly before any stop string.
    fn push(&mut self, text: &str) -> String {
        if self.hit {
            return String::new();
        }
        if self.stops.is_empty() {
            return text.to_owned();
        }
        self.held.push_str(text);
        let first = self
            .stops
            .iter()
            .filter_map(|stop| self.held.find(stop.as_str()))
            .min();
        if let Some(at) = first {
            self.hit = true;
            self.held.truncate(at);
            return std::mem::take(&mut self.held);
        }
        let keep = self
            .stops
            .iter()
            .map(|stop| partial_prefix_len(&self.held, stop))
            .max()
            .unwrap_or(0);
        let rest = self.held.split_off(self.held.len() - keep);
        std::mem::replace(&mut self.held, rest)
    }

    fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

/// Length of the longest end of `text` that is a proper start of `stop`, on a char boundary.
fn partial_prefix_len(text: &str, stop: &str) -> usize {
    (1..stop.len().min(text.len() + 1))
        .rev()
        .find(|&len| {
            stop.is_char_boundary(len)
                && text.is_char_boundary(text.len() - len)
                && text.ends_with(&stop[..len])
        })
        .unwrap_or(0)
}

/// Drops leading whitespace and holds trailing whitespace until more text follows.
#[derive(Debug, Default)]
struct Trimmer {
    started: bool,
    pending: String,
}

impl Trimmer {
    /// A trimmer that keeps leading whitespace when `started` (the text goes on from
    /// earlier text).
    fn started(started: bool) -> Self {
        Self {
            started,
            pending: String::new(),
        }
    }

    fn push(&mut self, text: &str) -> Option<String> {
        let text = if self.started {
            text
        } else {
            text.trim_start()
        };
        let body = text.trim_end().len();
        if body == 0 {
            if self.started {
                self.pending.push_str(text);
            }
            return None;
        }
        self.started = true;
        let mut out = std::mem::take(&mut self.pending);
        out.push_str(&text[..body]);
        self.pending.push_str(&text[body..]);
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn stop_run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for p in pieces {
            out.push_str(&m.push(p));
        }
        out.push_str(&m.finish());
        (out, m.hit())
    }

    #[test]
    fn stop_string_split_across_pieces_is_found() {
        assert_eq!(
            stop_run(&["END"], &["abc E", "N", "D more"]),
            ("abc ".into(), true)
        );
        assert_eq!(
            stop_run(&["END"], &["abc EN", "x"]),
            ("abc ENx".into(), false)
        );
        assert_eq!(
            stop_run(&["b", "xyz"], &["axy", "zb"]),
            ("a".into(), true),
            "the earliest stop wins"
        );
        assert_eq!(stop_run(&[], &["a", "b"]), ("ab".into(), false));
    }

    #[test]
    fn stop_prefix_never_splits_a_character() {
        assert_eq!(
            stop_run(&["éx"], &["caf", "é", "!"]),
            ("café!".into(), false)
        );
    }

    #[test]
    fn trimmer_drops_outer_whitespace_and_keeps_inner() {
        let mut t = Trimmer::default();
        let pieces = ["\n\n", " Hello", " \n", "\n", "world", "\n\n"];
        let out: String = pieces.iter().filter_map(|p| t.push(p)).collect();
        assert_eq!(out, "Hello \n\nworld");
    }

    /// Runs text through a parser built on a real tokenizer, one id at a time.
    fn parse(text: &str, options: &ReplyOptions) -> Vec<GenerationEvent> {
        let tokenizer = crate::services::stub::stub_tokenizer().expect("stub tokenizer");
        let ids = tokenizer.encode(text, true).expect("encode");
        let mut parser = ReplyParser::new(&tokenizer, options);
        let mut events = Vec::new();
        for id in ids {
            events.extend(parser.push(id).expect("push"));
        }
        events.extend(parser.finish().expect("finish"));
        merge(events)
    }

    fn merge(events: Vec<GenerationEvent>) -> Vec<GenerationEvent> {
        let mut out: Vec<GenerationEvent> = Vec::new();
        for event in events {
            match (out.last_mut(), event) {
                (Some(GenerationEvent::Reasoning(a)), GenerationEvent::Reasoning(b))
                | (Some(GenerationEvent::Content(a)), GenerationEvent::Content(b)) => {
                    a.push_str(&b)
                }
                (_, event) => out.push(event),
            }
        }
        out
    }

    #[test]
    fn reasoning_content_and_tool_calls_come_apart() {
        let text = "<think>\nI should look it up.\n</think>\nLet me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n";
        let options = ReplyOptions {
            stop: vec![],
            parse_tool_calls: true,
            ..ReplyOptions::default()
        };
        assert_eq!(
            parse(text, &options),
            vec![
                GenerationEvent::Reasoning("I should look it up.".into()),
                GenerationEvent::Content("Let me check.".into()),
                GenerationEvent::ToolCall(ToolCall {
                    name: "get_weather".into(),
                    arguments: json!({"city": "Paris"}),
                }),
            ]
        );
    }

    #[test]
    fn a_malformed_tool_call_fails_the_reply_with_its_text() {
        let tokenizer = crate::services::stub::stub_tokenizer().expect("stub tokenizer");
        let text =
            "Sure.\n<tool_call>\n{\"name\": \"f\", \"arguments\": {oops}\n</tool_call>\nmore";
        let options = ReplyOptions {
            stop: vec![],
            parse_tool_calls: true,
            ..ReplyOptions::default()
        };
        let mut parser = ReplyParser::new(&tokenizer, &options);
        let mut content = String::new();
        let mut failure = None;
        for id in tokenizer.encode(text, true).expect("encode") {
            match parser.push(id) {
                Ok(events) => content.extend(events.into_iter().filter_map(|e| match e {
                    GenerationEvent::Content(t) => Some(t),
                    _ => None,
                })),
                Err(err) => {
                    failure = Some(err.to_string());
                    break;
                }
            }
        }
        let failure = failure.expect("a malformed call must be reported");
        assert!(
            failure.contains("malformed tool call") && failure.contains("{oops}"),
            "{failure}"
        );
        assert!(
            !content.contains("oops"),
            "malformed call shown as content: {content}"
        );
    }

    #[test]
    fn without_tools_a_tool_call_block_is_plain_answer_text() {
        let text = "<tool_call>\n{\"name\": \"f\"}\n</tool_call>";
        assert_eq!(
            parse(text, &ReplyOptions::default()),
            vec![GenerationEvent::Content(text.into())]
        );
    }

    #[test]
    fn stop_string_ends_the_answer() {
        let options = ReplyOptions {
            stop: vec!["France".into()],
            parse_tool_calls: false,
            ..ReplyOptions::default()
        };
        assert_eq!(
            parse("The capital of France is Paris.", &options),
            vec![GenerationEvent::Content("The capital of".into())]
        );
    }

    #[test]
    fn a_continued_answer_keeps_its_first_space_and_opens_no_think_block() {
        let answer = ReplyOptions {
            resume: Some(Resume::Answer),
            ..ReplyOptions::default()
        };
        assert_eq!(
            parse(" world, <think> is text", &answer),
            vec![GenerationEvent::Content(" world, <think> is text".into())]
        );
        let reasoning = ReplyOptions {
            resume: Some(Resume::Reasoning),
            ..ReplyOptions::default()
        };
        assert_eq!(
            parse(" more thought</think>\nThe answer", &reasoning),
            vec![
                GenerationEvent::Reasoning(" more thought".into()),
                GenerationEvent::Content("The answer".into()),
            ]
        );
    }
}
