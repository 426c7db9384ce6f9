//! The chat page's conversations, kept in the [`SessionStore`]: ids as the page carries them
//! and stored messages as the templates show them (the request sent to the model from a
//! stored conversation is the conversation service's,
//! [`chat_request`](crate::services::conversation::chat_request)).
//!
//! The page goes to the same store as `/api/conversations`, so a conversation started on the
//! page can be read, exported or continued through the API and the other way round. An app
//! over an in-memory store ([`SessionStore::in_memory`], as tests use) runs the same code,
//! with persistence the only difference.

use serde::Serialize;

use super::markdown::render_markdown;
use crate::services::chat::Role;
use crate::services::sessions::{MessageStatus, StoredMessage};

/// A conversation's id as the page carries it: 1 to 64 of `[A-Za-z0-9_-]`, so it is safe in
/// a URL, an HTML attribute and a log line. The store's ids (`conv_` and 16 letters) fit.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ConversationId(String);

impl ConversationId {
    /// Checks `raw`; `None` when it is empty, too long or has other characters.
    pub fn parse(raw: &str) -> Option<Self> {
        let ok = (1..=64).contains(&raw.len())
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        ok.then(|| Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A tool call as its card shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ToolView {
    pub name: String,
    pub arguments: String,
}

/// A tool message as its result block shows it: the tool it answers and the text.
#[derive(Debug, Clone, Serialize)]
pub struct ToolResultView {
    pub name: String,
    pub content: String,
}

/// A stored message as the page shows it. `html` is sanitised Markdown; everything else is
/// text that the templates escape.
#[derive(Debug, Clone, Serialize)]
pub struct MessageView {
    /// The stored message's id (the page marks where truncation cut the history by it).
    pub id: i64,
    pub role: &'static str,
    pub text: String,
    pub html: String,
    pub reasoning: Option<String>,
    pub tools: Vec<ToolView>,
    /// The tool messages that answer `tools` (the server's built-in tools ran them).
    pub results: Vec<ToolResultView>,
    pub note: Option<EndNote>,
    pub stats: Option<String>,
    /// The conversation's last answer, cut short: the page offers to continue it.
    pub continuable: bool,
}

/// The label under an answer that did not end the usual way: cut off, stopped, interrupted,
/// failed, or empty. `kind` is its CSS class, `text` what it says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EndNote {
    pub kind: &'static str,
    pub text: String,
}

/// How an answer ended, as far as its label goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ending<'a> {
    pub status: MessageStatus,
    /// The generation's `finish_reason` (`stop`, `length`, `tool_calls`), when it finished.
    pub finish_reason: Option<&'a str>,
    /// Prompt and answer together filled the model's context.
    pub context_full: bool,
    /// The answer has no text and no tool calls.
    pub empty: bool,
    /// It has reasoning (so "empty" means it only thought).
    pub reasoned: bool,
}

/// The label for an answer that ended as `ending`; `None` for one the model finished. The
/// live page and a reload both word it here.
pub fn end_note(ending: Ending<'_>) -> Option<EndNote> {
    let only_thinking = ending.empty && ending.reasoned;
    let (kind, text) = match ending.status {
        MessageStatus::Stopped | MessageStatus::Generating => ("stopped", "Stopped."),
        MessageStatus::Interrupted => (
            "interrupted",
            "Interrupted: the server stopped while writing it.",
        ),
        MessageStatus::Failed => ("failed", "Failed."),
        MessageStatus::Complete => match (ending.finish_reason, ending.context_full) {
            (Some("length"), true) => ("length", "Cut off: the context is full."),
            (Some("length"), false) => ("length", "Cut off: the token limit was reached."),
            _ if ending.empty && !ending.reasoned => ("empty", "The model gave an empty answer."),
            _ if only_thinking => ("empty", "The model only thought; it gave no answer."),
            _ => return None,
        },
    };
    let mut text = text.to_owned();
    // Cut off, stopped or interrupted before the answer began: the Thinking block is all
    // there is, which says nothing of where the answer went.
    if only_thinking && kind != "empty" && kind != "failed" {
        text.push_str(" It was still thinking: there is no answer.");
    }
    Some(EndNote { kind, text })
}

/// Whether an answer whose end note is of `kind` can be continued: it was cut off by the
/// token limit, stopped or interrupted (see
/// [`continuable`](crate::services::conversation::continuable)).
pub fn continues(kind: &str) -> bool {
    matches!(kind, "length" | "stopped" | "interrupted")
}

/// The line under an answer: time to first token is not stored, so only rate and count.
fn stats_line(message: &StoredMessage) -> Option<String> {
    let tokens = message.stats.completion_tokens?;
    let rate = message
        .stats
        .generation_ms
        .filter(|ms| *ms > 0.0)
        .map(|ms| tokens as f64 * 1000.0 / ms);
    Some(match rate {
        Some(rate) => format!("{rate:.1} tokens/s · {tokens} tokens"),
        None => format!("{tokens} tokens"),
    })
}

/// The tokens of context an answer's request used: its prompt and the answer.
fn used_tokens(message: &StoredMessage) -> Option<usize> {
    let prompt = usize::try_from(message.stats.prompt_tokens?).ok()?;
    let answer = usize::try_from(message.stats.completion_tokens?).ok()?;
    Some(prompt + answer)
}

/// The tool messages right after `messages[index]` (an assistant's call), each with the
/// name of the call it answers: by `tool_call_id`, else by position (an imported file may
/// leave out the ids).
fn results_after(messages: &[StoredMessage], index: usize) -> Vec<ToolResultView> {
    let calls = &messages[index].tool_calls;
    messages[index + 1..]
        .iter()
        .take_while(|m| m.role == Role::Tool)
        .enumerate()
        .map(|(position, result)| {
            let answered = result
                .tool_call_id
                .as_deref()
                .and_then(|id| calls.iter().find(|call| call.id == id))
                .or_else(|| calls.get(position));
            ToolResultView {
                name: answered.map_or_else(|| "tool".to_owned(), |call| call.name.clone()),
                content: result.content.clone(),
            }
        })
        .collect()
}

/// The messages the page shows: user and assistant turns, tool messages as results under
/// the call they answer (system messages, which only an API client can add, are left out).
/// An answer still `generating` is left out too: its run streams it, from its start.
pub fn views(messages: &[StoredMessage], context_length: usize) -> Vec<MessageView> {
    let last = messages.len().checked_sub(1);
    messages
        .iter()
        .enumerate()
        .filter(|(_, message)| message.status != MessageStatus::Generating)
        .filter_map(|(index, message)| match message.role {
            Role::User => Some(MessageView {
                id: message.id,
                role: "user",
                text: message.content.clone(),
                html: String::new(),
                reasoning: None,
                tools: Vec::new(),
                results: Vec::new(),
                note: None,
                stats: None,
                continuable: false,
            }),
            Role::Assistant => Some(MessageView {
                id: message.id,
                role: "assistant",
                text: message.content.clone(),
                html: render_markdown(&message.content),
                reasoning: message
                    .reasoning
                    .as_deref()
                    .map(str::trim)
                    .filter(|r| !r.is_empty())
                    .map(str::to_owned),
                tools: message
                    .tool_calls
                    .iter()
                    .map(|call| ToolView {
                        arguments: serde_json::to_string_pretty(&call.arguments)
                            .unwrap_or_else(|_| call.arguments.to_string()),
                        name: call.name.clone(),
                    })
                    .collect(),
                results: results_after(messages, index),
                note: end_note(Ending {
                    status: message.status,
                    finish_reason: message.finish_reason.as_deref(),
                    context_full: used_tokens(message).is_some_and(|used| used >= context_length),
                    empty: message.content.trim().is_empty() && message.tool_calls.is_empty(),
                    reasoned: message
                        .reasoning
                        .as_deref()
                        .is_some_and(|r| !r.trim().is_empty()),
                }),
                stats: stats_line(message),
                continuable: Some(index) == last
                    && crate::services::conversation::continuable(message),
            }),
            Role::System | Role::Tool => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::sessions::StoredToolCall;

    const CONTEXT: usize = 4096;

    fn stored(role: Role, content: &str, status: MessageStatus) -> StoredMessage {
        StoredMessage::for_test(role, content, status)
    }

    #[test]
    fn ids_are_checked() {
        assert!(ConversationId::parse("c_abc-123").is_some());
        for bad in ["", "a b", "<x>", "é", &"a".repeat(65)] {
            assert!(ConversationId::parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn tool_messages_show_under_the_call_they_answer() {
        let calls = vec![
            StoredToolCall {
                id: "call_time".into(),
                name: "current_time".into(),
                arguments: serde_json::json!({}),
            },
            StoredToolCall {
                id: "call_calc".into(),
                name: "calculator".into(),
                arguments: serde_json::json!({"expression": "17 * (3+4)"}),
            },
        ];
        let mut call = stored(Role::Assistant, "", MessageStatus::Complete);
        call.tool_calls = calls;
        let mut result = stored(Role::Tool, "<119>", MessageStatus::Complete);
        result.tool_call_id = Some("call_calc".into());
        let views = views(
            &[
                stored(Role::User, "What is 17 * (3+4)?", MessageStatus::Complete),
                call,
                result,
                stored(Role::Assistant, "It is 119.", MessageStatus::Complete),
            ],
            CONTEXT,
        );
        assert_eq!(views.len(), 3, "the tool message joins its call");
        assert_eq!(views[1].tools[1].name, "calculator");
        assert_eq!(views[1].results.len(), 1);
        assert_eq!(
            views[1].results[0].name, "calculator",
            "by its id, not its position"
        );
        assert_eq!(views[1].results[0].content, "<119>");
        assert!(views[2].results.is_empty());
    }

    #[test]
    fn views_render_answers_and_mark_unfinished_ones() {
        let views = views(
            &[
                stored(Role::System, "hidden", MessageStatus::Complete),
                stored(Role::User, "<b>hi</b>", MessageStatus::Complete),
                stored(Role::Assistant, "**bold**", MessageStatus::Stopped),
            ],
            CONTEXT,
        );
        assert_eq!(views.len(), 2);
        assert_eq!(views[0].text, "<b>hi</b>");
        assert!(views[1].html.contains("<strong>bold</strong>"));
        assert_eq!(
            views[1].note.as_ref().map(|n| n.text.as_str()),
            Some("Stopped.")
        );
    }

    fn answer(content: &str, reasoning: &str, finish: &str, used: (i64, i64)) -> StoredMessage {
        let mut message = stored(Role::Assistant, content, MessageStatus::Complete);
        message.reasoning = Some(reasoning.to_owned()).filter(|r| !r.is_empty());
        message.finish_reason = Some(finish.to_owned());
        message.stats.prompt_tokens = Some(used.0);
        message.stats.completion_tokens = Some(used.1);
        message
    }

    #[test]
    fn answers_that_did_not_end_the_usual_way_say_why() {
        let note = |message: StoredMessage| {
            views(&[message], CONTEXT)
                .pop()
                .and_then(|view| view.note)
                .map(|note| (note.kind, note.text))
        };
        assert_eq!(note(answer("Done.", "hmm", "stop", (10, 5))), None);
        assert_eq!(
            note(answer("Half an ans", "", "length", (10, 30))),
            Some(("length", "Cut off: the token limit was reached.".into()))
        );
        assert_eq!(
            note(answer("Half an ans", "", "length", (4000, 96))),
            Some(("length", "Cut off: the context is full.".into()))
        );
        assert_eq!(
            note(answer("", "Let me think", "length", (10, 30))),
            Some((
                "length",
                "Cut off: the token limit was reached. It was still thinking: there is no answer."
                    .into()
            ))
        );
        assert_eq!(
            note(answer("", "Let me think", "stop", (10, 30))).map(|n| n.0),
            Some("empty")
        );
        let mut interrupted = stored(Role::Assistant, "Par", MessageStatus::Interrupted);
        interrupted.reasoning = Some("x".into());
        assert_eq!(note(interrupted).map(|n| n.0), Some("interrupted"));
    }
}
