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
    pub role: &'static str,
    pub text: String,
    pub html: String,
    pub reasoning: Option<String>,
    pub tools: Vec<ToolView>,
    /// The tool messages that answer `tools` (the server's built-in tools ran them).
    pub results: Vec<ToolResultView>,
    pub note: Option<&'static str>,
    pub stats: Option<String>,
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
pub fn views(messages: &[StoredMessage]) -> Vec<MessageView> {
    messages
        .iter()
        .enumerate()
        .filter(|(_, message)| message.status != MessageStatus::Generating)
        .filter_map(|(index, message)| match message.role {
            Role::User => Some(MessageView {
                role: "user",
                text: message.content.clone(),
                html: String::new(),
                reasoning: None,
                tools: Vec::new(),
                results: Vec::new(),
                note: None,
                stats: None,
            }),
            Role::Assistant => Some(MessageView {
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
                note: match message.status {
                    MessageStatus::Complete => None,
                    MessageStatus::Stopped | MessageStatus::Generating => Some("Stopped."),
                    MessageStatus::Interrupted => Some("Interrupted."),
                    MessageStatus::Failed => Some("Failed."),
                },
                stats: stats_line(message),
            }),
            Role::System | Role::Tool => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::sessions::StoredToolCall;

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
        let views = views(&[
            stored(Role::User, "What is 17 * (3+4)?", MessageStatus::Complete),
            call,
            result,
            stored(Role::Assistant, "It is 119.", MessageStatus::Complete),
        ]);
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
        let views = views(&[
            stored(Role::System, "hidden", MessageStatus::Complete),
            stored(Role::User, "<b>hi</b>", MessageStatus::Complete),
            stored(Role::Assistant, "**bold**", MessageStatus::Stopped),
        ]);
        assert_eq!(views.len(), 2);
        assert_eq!(views[0].text, "<b>hi</b>");
        assert!(views[1].html.contains("<strong>bold</strong>"));
        assert_eq!(views[1].note, Some("Stopped."));
    }
}
