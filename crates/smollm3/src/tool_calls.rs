//! SmolLM3's tool calls, parsed out of its answer.
//!
//! Given `xml_tools`, the chat template teaches the model to call a tool by writing
//!
//! ```text
//! <tool_call>
//! {"name": <function-name>, "arguments": <args-json-object>}
//! </tool_call>
//! ```
//!
//! in its answer, as many times as it wants. A chat API returns those as structured calls
//! and the rest as content, so this module splits them apart: [`parse_tool_calls`] for a
//! complete answer, [`ToolCallParser`] for one arriving piece by piece (content streams at
//! once, a call comes out whole when its `</tool_call>` arrives).
//!
//! A block whose body is not a valid call (bad JSON, no name), or one left open when the
//! output ends, is reported as [`ToolCallEvent::Malformed`] with the model's text and the
//! reason: it is neither dropped nor passed off as answer text, so the caller can tell the
//! user the model tried to call a tool and failed. Content is returned exactly as written
//! (including the newlines around calls), for the caller to trim.

use serde_json::{Map, Value as Json};

use super::error::Smollm3Error;
use super::thinking::partial_tag_len;

const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";

/// One call of a tool by the model.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    /// The function's name.
    pub name: String,
    /// Its arguments, a JSON object as the model wrote it.
    pub arguments: Json,
}

impl ToolCall {
    /// Parses the body of a `<tool_call>` block: a JSON object with a string `name` and
    /// `arguments` (an object; also accepted under `parameters`, or as a string holding
    /// JSON, as models sometimes write; missing means no arguments).
    pub fn parse(body: &str) -> Result<Self, Smollm3Error> {
        let problem = |problem: String| Smollm3Error::ToolCall {
            problem,
            text: body.to_owned(),
        };
        let value: Json = serde_json::from_str(body.trim())
            .map_err(|err| problem(format!("invalid JSON: {err}")))?;
        let Json::Object(mut fields) = value else {
            return Err(problem("not a JSON object".into()));
        };
        let name = match fields.remove("name") {
            Some(Json::String(name)) if !name.trim().is_empty() => name,
            Some(_) => return Err(problem("`name` is not a non-empty string".into())),
            None => return Err(problem("no `name`".into())),
        };
        let arguments = match fields
            .remove("arguments")
            .or_else(|| fields.remove("parameters"))
        {
            None | Some(Json::Null) => Json::Object(Map::new()),
            Some(Json::String(text)) => serde_json::from_str(&text)
                .map_err(|err| problem(format!("`arguments` string is not JSON: {err}")))?,
            Some(arguments) => arguments,
        };
        Ok(Self { name, arguments })
    }
}

/// A piece of the answer, sorted by what it is.
#[derive(Debug, Clone, PartialEq)]
pub enum ToolCallEvent {
    /// Answer text for the user.
    Content(String),
    /// A complete, valid tool call.
    ToolCall(ToolCall),
    /// A `<tool_call>` block that is not a valid call: its whole text, tags included, and why.
    Malformed { text: String, problem: String },
}

/// A complete answer split into its content and its tool calls.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ParsedAnswer {
    /// Everything outside valid tool call blocks, in order, untrimmed.
    pub content: String,
    /// The calls, in the order written.
    pub tool_calls: Vec<ToolCall>,
    /// Blocks that were not valid calls: `(text, problem)`, in the order written.
    pub malformed: Vec<(String, String)>,
}

/// Splits a complete answer into content and tool calls.
pub fn parse_tool_calls(answer: &str) -> ParsedAnswer {
    let mut parser = ToolCallParser::new();
    let mut events = parser.push(answer);
    events.extend(parser.finish());
    let mut parsed = ParsedAnswer::default();
    for event in events {
        match event {
            ToolCallEvent::Content(text) => parsed.content.push_str(&text),
            ToolCallEvent::ToolCall(call) => parsed.tool_calls.push(call),
            ToolCallEvent::Malformed { text, problem } => parsed.malformed.push((text, problem)),
        }
    }
    parsed
}

/// A streaming splitter of answer text into [`ToolCallEvent`]s; feed it every answer piece
/// with [`push`](Self::push), then call [`finish`](Self::finish) once.
#[derive(Debug, Clone, Default)]
pub struct ToolCallParser {
    /// Inside a `<tool_call>` block whose end has not come yet.
    in_call: bool,
    /// Outside a call: at most a proper prefix of `<tool_call>` not yet emitted.
    /// Inside one: the body so far.
    held: String,
}

impl ToolCallParser {
    /// A parser at the start of an answer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether a tool call block is open, so its text is being held until it closes.
    pub fn in_tool_call(&self) -> bool {
        self.in_call
    }

    /// Takes the next answer piece and returns what can now be told apart, content runs
    /// merged and no empty events.
    pub fn push(&mut self, piece: &str) -> Vec<ToolCallEvent> {
        let mut events = Vec::new();
        // A call body already held was searched before; only its last bytes can start a
        // `</tool_call>` that the new piece completes, so long calls are not rescanned.
        let mut search_from = self.held.len().saturating_sub(CLOSE.len() - 1);
        while !self.held.is_char_boundary(search_from) {
            search_from -= 1;
        }
        self.held.push_str(piece);
        loop {
            if self.in_call {
                let Some(at) = self.held[search_from..]
                    .find(CLOSE)
                    .map(|at| at + search_from)
                else {
                    return events;
                };
                search_from = 0;
                let rest = self.held.split_off(at + CLOSE.len());
                let block = std::mem::replace(&mut self.held, rest);
                let body = &block[..at];
                match ToolCall::parse(body) {
                    Ok(call) => events.push(ToolCallEvent::ToolCall(call)),
                    Err(err) => events.push(ToolCallEvent::Malformed {
                        text: format!("{OPEN}{block}"),
                        problem: match err {
                            Smollm3Error::ToolCall { problem, .. } => problem,
                            other => other.to_string(),
                        },
                    }),
                }
                self.in_call = false;
            } else if let Some(at) = self.held.find(OPEN) {
                let rest = self.held.split_off(at + OPEN.len());
                self.held.truncate(at);
                emit(&mut events, std::mem::replace(&mut self.held, rest));
                self.in_call = true;
                search_from = 0;
            } else {
                let keep = partial_tag_len(&self.held, OPEN);
                let held = self.held.split_off(self.held.len() - keep);
                emit(&mut events, std::mem::replace(&mut self.held, held));
                return events;
            }
        }
    }

    /// Ends the answer: held text is content, a call block that never closed is malformed.
    pub fn finish(&mut self) -> Vec<ToolCallEvent> {
        let held = std::mem::take(&mut self.held);
        let mut events = Vec::new();
        if std::mem::take(&mut self.in_call) {
            events.push(ToolCallEvent::Malformed {
                text: format!("{OPEN}{held}"),
                problem: format!("the output ended before `{CLOSE}`"),
            });
        } else {
            emit(&mut events, held);
        }
        events
    }
}

/// Appends `text` as content unless empty, merging it into a content event just before.
fn emit(events: &mut Vec<ToolCallEvent>, text: String) {
    if text.is_empty() {
        return;
    }
    if let Some(ToolCallEvent::Content(last)) = events.last_mut() {
        last.push_str(&text);
    } else {
        events.push(ToolCallEvent::Content(text));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn call(name: &str, arguments: Json) -> ToolCallEvent {
        ToolCallEvent::ToolCall(ToolCall {
            name: name.into(),
            arguments,
        })
    }

    fn content(text: &str) -> ToolCallEvent {
        ToolCallEvent::Content(text.into())
    }

    /// Feeds `pieces` one by one and returns every event, content merged.
    fn run(pieces: &[&str]) -> Vec<ToolCallEvent> {
        let mut parser = ToolCallParser::new();
        let mut events = Vec::new();
        for piece in pieces.iter().copied() {
            for event in parser.push(piece) {
                match event {
                    ToolCallEvent::Content(text) => emit(&mut events, text),
                    other => events.push(other),
                }
            }
        }
        for event in parser.finish() {
            match event {
                ToolCallEvent::Content(text) => emit(&mut events, text),
                other => events.push(other),
            }
        }
        events
    }

    #[test]
    fn parses_the_format_the_template_teaches() {
        let answer = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>";
        assert_eq!(
            parse_tool_calls(answer),
            ParsedAnswer {
                content: String::new(),
                tool_calls: vec![ToolCall {
                    name: "get_weather".into(),
                    arguments: json!({"city": "Paris"})
                }],
                malformed: vec![],
            }
        );
    }

    #[test]
    fn keeps_content_around_several_calls() {
        let answer = "Checking both.\n<tool_call>\n{\"name\": \"a\", \"arguments\": {}}\n</tool_call>\n\
                      <tool_call>{\"name\": \"b\", \"arguments\": {\"x\": [1, 2]}}</tool_call>\nDone.";
        let parsed = parse_tool_calls(answer);
        assert_eq!(parsed.content, "Checking both.\n\n\nDone.");
        assert_eq!(parsed.tool_calls.len(), 2);
        assert_eq!(parsed.tool_calls[0].name, "a");
        assert_eq!(parsed.tool_calls[1].arguments, json!({"x": [1, 2]}));
    }

    #[test]
    fn answer_without_calls_is_all_content() {
        assert_eq!(
            parse_tool_calls("Just 4. Use <tool> tags?"),
            ParsedAnswer {
                content: "Just 4. Use <tool> tags?".into(),
                tool_calls: vec![],
                malformed: vec![],
            }
        );
    }

    #[test]
    fn malformed_call_is_reported_not_shown_as_content() {
        let answer = "a<tool_call>{\"name\": \"f\", \"arguments\": {</tool_call>b";
        let parsed = parse_tool_calls(answer);
        assert_eq!(parsed.content, "ab");
        assert!(parsed.tool_calls.is_empty());
        assert_eq!(parsed.malformed.len(), 1);
        assert_eq!(
            parsed.malformed[0].0,
            "<tool_call>{\"name\": \"f\", \"arguments\": {</tool_call>"
        );
        assert!(
            parsed.malformed[0].1.contains("invalid JSON"),
            "{:?}",
            parsed.malformed
        );
        let nameless = parse_tool_calls("<tool_call>{\"arguments\": {}}</tool_call>");
        assert_eq!(nameless.content, "");
        assert!(nameless.malformed[0].1.contains("no `name`"));
    }

    #[test]
    fn unclosed_call_is_reported_at_the_end() {
        let parsed = parse_tool_calls("ok <tool_call>{\"name\": \"f\"");
        assert_eq!(parsed.content, "ok ");
        assert_eq!(parsed.malformed.len(), 1);
        assert!(parsed.malformed[0].1.contains("ended before"));
    }

    #[test]
    fn parse_reports_why_a_call_is_malformed() {
        for (body, problem) in [
            ("{\"name\": ", "invalid JSON"),
            ("[1]", "not a JSON object"),
            ("{\"arguments\": {}}", "no `name`"),
            ("{\"name\": 3}", "`name`"),
            (
                "{\"name\": \"f\", \"arguments\": \"{oops\"}",
                "`arguments` string",
            ),
        ] {
            match ToolCall::parse(body) {
                Err(Smollm3Error::ToolCall { problem: got, text }) => {
                    assert!(got.contains(problem), "{body}: {got}");
                    assert_eq!(text, body);
                }
                other => panic!("{body}: expected an error, got {other:?}"),
            }
        }
    }

    #[test]
    fn parse_accepts_common_variants() {
        let parse = |body: &str| ToolCall::parse(body).expect("valid call");
        assert_eq!(parse(" {\"name\": \"f\"} ").arguments, json!({}));
        assert_eq!(
            parse("{\"name\": \"f\", \"arguments\": null}").arguments,
            json!({})
        );
        assert_eq!(
            parse("{\"name\": \"f\", \"parameters\": {\"a\": 1}}").arguments,
            json!({"a": 1})
        );
        assert_eq!(
            parse("{\"name\": \"f\", \"arguments\": \"{\\\"a\\\": 1}\"}").arguments,
            json!({"a": 1})
        );
    }

    #[test]
    fn unclosed_call_at_the_end_is_malformed_but_a_partial_tag_is_content() {
        let answer = "ok <tool_call>{\"name\": \"f\"";
        assert_eq!(
            run(&[answer]),
            vec![
                content("ok "),
                ToolCallEvent::Malformed {
                    text: "<tool_call>{\"name\": \"f\"".into(),
                    problem: "the output ended before `</tool_call>`".into(),
                }
            ]
        );
        assert_eq!(run(&["ok <tool_"]), vec![content("ok <tool_")]);
    }

    #[test]
    fn streams_content_at_once_and_calls_when_closed() {
        let mut parser = ToolCallParser::new();
        assert_eq!(parser.push("Let me <"), vec![content("Let me ")]);
        assert_eq!(parser.push("tool_"), vec![]);
        assert_eq!(parser.push("call>\n{\"name\": \"f\", "), vec![]);
        assert!(parser.in_tool_call());
        assert_eq!(
            parser.push("\"arguments\": {\"q\": \"</tool\"}}\n</tool"),
            vec![]
        );
        assert_eq!(
            parser.push("_call>\nso"),
            vec![call("f", json!({"q": "</tool"})), content("\nso")]
        );
        assert!(!parser.in_tool_call());
        assert_eq!(parser.finish(), vec![]);
    }

    #[test]
    fn char_by_char_equals_whole() {
        let answers = [
            "Sure.\n<tool_call>\n{\"name\": \"calc\", \"arguments\": {\"e\": \"17*23 日本👋\"}}\n</tool_call>",
            "<tool_call>{\"name\": \"a\"}</tool_call><tool_call>{\"name\": \"b\"}</tool_call>",
            "bad <tool_call>{nope}</tool_call> then 日本 👋 <tool_call>{\"name\": \"c\"}",
            "<<tool_call<tool_call>{\"name\": \"d\"}</tool_call></tool_call>",
            "<tool_",
            "",
        ];
        for answer in answers {
            let whole = run(&[answer]);
            let chars: Vec<String> = answer.chars().map(String::from).collect();
            let pieces: Vec<&str> = chars.iter().map(String::as_str).collect();
            assert_eq!(run(&pieces), whole, "answer {answer:?}");
        }
        assert_eq!(
            run(&[answers[3]]),
            vec![
                content("<<tool_call"),
                call("d", json!({})),
                content("</tool_call>")
            ]
        );
    }
}
