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
use crate::services::sessions::{MessageStats, MessageStatus, StoredMessage};

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

/// A Thinking block once its reasoning ended (`thinking.html`), live and reloaded alike.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ThinkingView {
    pub reasoning: String,
    /// Seconds of reasoning, one decimal; `None` for answers stored before it was kept.
    pub seconds: Option<String>,
    pub tokens: Option<i64>,
}

impl ThinkingView {
    /// The block for `reasoning` that took `ms` and `tokens`; `None` without reasoning.
    pub fn new(reasoning: &str, ms: Option<f64>, tokens: Option<i64>) -> Option<Self> {
        let reasoning = reasoning.trim();
        (!reasoning.is_empty()).then(|| Self {
            reasoning: reasoning.to_owned(),
            seconds: ms.map(|ms| format!("{:.1}", ms / 1000.0)),
            tokens,
        })
    }
}

/// One model round of an answer: its reasoning, the calls it made and their results. An
/// answer without tool calls has one; each round of built-in tool calls adds one.
#[derive(Debug, Clone, Serialize)]
pub struct RoundView {
    pub thinking: Option<ThinkingView>,
    pub tools: Vec<ToolView>,
    /// The tool messages that answer `tools` (the server's built-in tools ran them).
    pub results: Vec<ToolResultView>,
}

/// The version switcher under an answer generated more than once (`‹ 2/3 ›`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VersionsView {
    /// The user message the versions answer.
    pub question: i64,
    /// The shown version's place, from 1.
    pub position: usize,
    pub count: usize,
    pub previous: Option<i64>,
    pub next: Option<i64>,
}

/// The switcher for the answer to `question`; `None` unless it has several versions.
pub fn versions_view(question: &StoredMessage) -> Option<VersionsView> {
    let versions = question.versions.as_ref()?;
    let at = versions.all.iter().position(|v| *v == versions.selected)?;
    Some(VersionsView {
        question: question.id,
        position: at + 1,
        count: versions.all.len(),
        previous: at.checked_sub(1).map(|i| versions.all[i]),
        next: versions.all.get(at + 1).copied(),
    })
}

/// A stored message as the page shows it: a user message, or the whole answer to one (every
/// round of a tool turn in one). `html` is sanitised Markdown; everything else is text that
/// the templates escape.
#[derive(Debug, Clone, Serialize)]
pub struct MessageView {
    /// The stored message's id (the page marks where truncation cut the history by it).
    pub id: i64,
    pub role: &'static str,
    pub text: String,
    pub html: String,
    pub rounds: Vec<RoundView>,
    pub note: Option<EndNote>,
    pub stats: Option<String>,
    pub versions: Option<VersionsView>,
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

/// The line under an answer from the stats of its rounds (one, or one per round of tool
/// calls), live and reloaded alike: the first round's time to first token, and the tokens
/// and speed of all rounds together. Answers stored before the time to first token was kept
/// show without it; `None` when no round finished.
pub fn stats_line(rounds: &[MessageStats]) -> Option<String> {
    let finished: Vec<&MessageStats> = rounds
        .iter()
        .filter(|s| s.completion_tokens.is_some())
        .collect();
    if finished.is_empty() {
        return None;
    }
    let tokens: i64 = finished.iter().filter_map(|s| s.completion_tokens).sum();
    let ms: f64 = finished.iter().filter_map(|s| s.generation_ms).sum();
    let mut parts = Vec::with_capacity(3);
    if let Some(first) = rounds.first().and_then(|s| s.first_token_ms) {
        parts.push(format!("first token {:.2} s", first / 1000.0));
    }
    if ms > 0.0 {
        parts.push(format!("{:.1} tokens/s", tokens as f64 * 1000.0 / ms));
    }
    parts.push(format!("{tokens} tokens"));
    Some(parts.join(" · "))
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

/// The messages the page shows: user messages, and after each the whole answer to it in one
/// view (every assistant round of a tool turn, tool messages as results under the call they
/// answer). System messages, which only an API client can add, are left out. An answer with
/// a round still `generating` is left out too: its run streams it, from its start.
pub fn views(messages: &[StoredMessage], context_length: usize) -> Vec<MessageView> {
    views_with(messages, context_length, false)
}

/// [`views`], where `elsewhere` says an answer still `generating` is written by another
/// server sharing the database (no run of this one streams it): it is shown as far as it
/// was saved, with a note saying so, instead of being left out.
pub fn views_with(
    messages: &[StoredMessage],
    context_length: usize,
    elsewhere: bool,
) -> Vec<MessageView> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < messages.len() {
        let message = &messages[at];
        match message.role {
            Role::User => {
                out.push(MessageView {
                    id: message.id,
                    role: "user",
                    text: message.content.clone(),
                    html: String::new(),
                    rounds: Vec::new(),
                    note: None,
                    stats: None,
                    versions: None,
                    continuable: false,
                });
                at += 1;
            }
            Role::System => at += 1,
            Role::Assistant | Role::Tool => {
                let end = messages[at..]
                    .iter()
                    .position(|m| m.role == Role::User)
                    .map_or(messages.len(), |n| at + n);
                let question = at
                    .checked_sub(1)
                    .map(|q| &messages[q])
                    .filter(|q| q.role == Role::User);
                let turn = &messages[at..end];
                let generating = turn.iter().any(|m| m.status == MessageStatus::Generating);
                if !generating || elsewhere {
                    let mut view = answer_view(
                        turn,
                        question.and_then(versions_view),
                        context_length,
                        end == messages.len(),
                    );
                    if let Some(view) = view.as_mut().filter(|_| generating) {
                        view.note = Some(EndNote {
                            kind: "elsewhere",
                            text: "Being written on another server; shown as it is saved."
                                .to_owned(),
                        });
                        view.continuable = false;
                    }
                    out.extend(view);
                }
                at = end;
            }
        }
    }
    out
}

/// The view of one answer: the assistant and tool messages after a question.
fn answer_view(
    turn: &[StoredMessage],
    versions: Option<VersionsView>,
    context_length: usize,
    last_turn: bool,
) -> Option<MessageView> {
    let answers: Vec<(usize, &StoredMessage)> = turn
        .iter()
        .enumerate()
        .filter(|(_, m)| m.role == Role::Assistant)
        .collect();
    let (_, last) = *answers.last()?;
    let rounds = answers
        .iter()
        .map(|&(index, message)| RoundView {
            thinking: ThinkingView::new(
                message.reasoning.as_deref().unwrap_or_default(),
                message.stats.reasoning_ms,
                message.stats.reasoning_tokens,
            ),
            tools: message
                .tool_calls
                .iter()
                .map(|call| ToolView {
                    arguments: serde_json::to_string_pretty(&call.arguments)
                        .unwrap_or_else(|_| call.arguments.to_string()),
                    name: call.name.clone(),
                })
                .collect(),
            results: results_after(turn, index),
        })
        .collect::<Vec<_>>();
    let text = answers
        .iter()
        .map(|(_, m)| m.content.trim())
        .filter(|t| !t.is_empty())
        .collect::<Vec<_>>()
        .join("\n\n");
    let called = rounds.iter().any(|r| !r.tools.is_empty());
    let reasoned = rounds.iter().any(|r| r.thinking.is_some());
    let stats: Vec<MessageStats> = answers.iter().map(|(_, m)| m.stats).collect();
    let continuable = last_turn
        && turn.last().is_some_and(|m| m.id == last.id)
        && crate::services::conversation::continuable(last);
    Some(MessageView {
        id: last.id,
        role: "assistant",
        html: render_markdown(&text),
        note: end_note(Ending {
            status: last.status,
            finish_reason: last.finish_reason.as_deref(),
            context_full: used_tokens(last).is_some_and(|used| used >= context_length),
            empty: text.is_empty() && !called,
            reasoned,
        }),
        text,
        rounds,
        stats: stats_line(&stats),
        versions,
        continuable,
    })
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
        assert_eq!(
            views.len(),
            2,
            "the call, its result and the answer are one turn"
        );
        let rounds = &views[1].rounds;
        assert_eq!(rounds.len(), 2, "one round per model turn");
        assert_eq!(rounds[0].tools[1].name, "calculator");
        assert_eq!(rounds[0].results.len(), 1);
        assert_eq!(
            rounds[0].results[0].name, "calculator",
            "by its id, not its position"
        );
        assert_eq!(rounds[0].results[0].content, "<119>");
        assert!(rounds[1].results.is_empty());
        assert_eq!(views[1].text, "It is 119.");
    }

    fn timed(reasoning: &str, tokens: i64, ms: f64, first: f64) -> StoredMessage {
        let mut message = answer("", reasoning, "tool_calls", (10, tokens));
        message.stats.generation_ms = Some(ms);
        message.stats.first_token_ms = Some(first);
        message.stats.reasoning_ms = Some(ms / 2.0);
        message.stats.reasoning_tokens = Some(tokens / 2);
        message
    }

    #[test]
    fn a_tool_turn_has_a_thinking_block_per_round_and_one_stats_line() {
        let mut call = timed("Use the calculator.", 40, 2000.0, 310.0);
        call.tool_calls = vec![StoredToolCall {
            id: "call_1".into(),
            name: "calculator".into(),
            arguments: serde_json::json!({"expression": "6*7"}),
        }];
        let mut result = stored(Role::Tool, "42", MessageStatus::Complete);
        result.tool_call_id = Some("call_1".into());
        let mut last = timed("It said 42.", 20, 1000.0, 90.0);
        last.content = "42.".into();
        last.finish_reason = Some("stop".into());
        let views = views(
            &[
                stored(Role::User, "6*7?", MessageStatus::Complete),
                call,
                result,
                last,
            ],
            CONTEXT,
        );
        let thinking: Vec<_> = views[1]
            .rounds
            .iter()
            .map(|r| r.thinking.clone().expect("reasoned"))
            .collect();
        assert_eq!(
            (thinking[0].seconds.as_deref(), thinking[0].tokens),
            (Some("1.0"), Some(20))
        );
        assert_eq!(
            (thinking[1].seconds.as_deref(), thinking[1].tokens),
            (Some("0.5"), Some(10))
        );
        assert_eq!(
            views[1].stats.as_deref(),
            Some("first token 0.31 s · 20.0 tokens/s · 60 tokens"),
            "the first round's first token, all rounds' tokens"
        );
    }

    #[test]
    fn answers_stored_without_timings_show_without_them() {
        let mut old = answer("Hi.", "hmm", "stop", (10, 8));
        old.stats.generation_ms = Some(400.0);
        let view = views(&[old], CONTEXT).pop().expect("view");
        let thinking = view.rounds[0].thinking.clone().expect("reasoned");
        assert_eq!((thinking.seconds, thinking.tokens), (None, None));
        assert_eq!(view.stats.as_deref(), Some("20.0 tokens/s · 8 tokens"));
        let none = views(&[answer("Hi.", "  ", "stop", (10, 8))], CONTEXT);
        assert!(
            none[0].rounds[0].thinking.is_none(),
            "no reasoning, no block"
        );
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

    #[test]
    fn an_answer_written_on_another_server_shows_as_far_as_saved() {
        let messages = [
            StoredMessage::for_test(Role::User, "Hi", MessageStatus::Complete),
            StoredMessage::for_test(Role::Assistant, "Hel", MessageStatus::Generating),
        ];
        assert_eq!(
            views(&messages, CONTEXT).len(),
            1,
            "its run streams it here"
        );
        let shown = views_with(&messages, CONTEXT, true);
        assert_eq!(shown.len(), 2);
        assert_eq!(shown[1].text, "Hel");
        let note = shown[1].note.as_ref().expect("a note");
        assert_eq!(note.kind, "elsewhere");
        assert!(note.text.contains("another server"), "{}", note.text);
        assert!(!shown[1].continuable);
    }
}
