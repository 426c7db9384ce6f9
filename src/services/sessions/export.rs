//! A conversation out of the store and back: Markdown for people to read, and JSONL in
//! OpenAI's message format (`role`, `content`, `reasoning_content`, `tool_calls`,
//! `tool_call_id`, one message a line) for tools and for importing again.
//!
//! Separate from the store because it is pure text work, testable without a database. The
//! JSONL form carries exactly what the store keeps of a message's text, so exporting an
//! imported file gives the same file back. A message that did not complete carries a
//! `status` field (`stopped`, `interrupted` or `failed`), which other OpenAI readers ignore.

use serde_json::{Map, Value as Json};

use super::tool_calls::{wire_list, StoredToolCall};
use super::{parse_role, Conversation, MessageStats, MessageStatus, NewMessage, StoredMessage};
use crate::services::chat::Role;
use crate::services::error::ServiceError;

/// One OpenAI message object per line, each line ending in `\n`.
pub fn to_jsonl(messages: &[StoredMessage]) -> String {
    let mut out = String::new();
    for message in messages {
        let mut line = Map::new();
        line.insert("role".into(), Json::from(message.role.as_str()));
        line.insert("content".into(), Json::from(message.content.as_str()));
        if let Some(reasoning) = &message.reasoning {
            line.insert("reasoning_content".into(), Json::from(reasoning.as_str()));
        }
        if !message.tool_calls.is_empty() {
            line.insert("tool_calls".into(), wire_list(&message.tool_calls));
        }
        if let Some(id) = &message.tool_call_id {
            line.insert("tool_call_id".into(), Json::from(id.as_str()));
        }
        if message.status != MessageStatus::Complete {
            line.insert("status".into(), Json::from(message.status.as_str()));
        }
        out.push_str(&Json::Object(line).to_string());
        out.push('\n');
    }
    out
}

/// Reads JSONL written by [`to_jsonl`] (or any OpenAI message list, one per line); blank
/// lines are skipped. Errors name the line and the field.
pub fn from_jsonl(text: &str) -> Result<Vec<NewMessage>, ServiceError> {
    let mut messages = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = index + 1;
        let problem = |problem: String| ServiceError::InvalidImport {
            problem: format!("line {at}: {problem}"),
        };
        let value: Json =
            serde_json::from_str(line).map_err(|err| problem(format!("not valid JSON: {err}")))?;
        let Json::Object(object) = value else {
            return Err(problem("expected a message object".into()));
        };
        messages.push(message_from(&object).map_err(problem)?);
    }
    if messages.is_empty() {
        return Err(ServiceError::InvalidImport {
            problem: "it holds no message".into(),
        });
    }
    Ok(messages)
}

fn optional_string(object: &Map<String, Json>, field: &str) -> Result<Option<String>, String> {
    match object.get(field) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(text)) => Ok(Some(text.clone())),
        Some(other) => Err(format!("`{field}` must be a string, got {other}")),
    }
}

fn message_from(object: &Map<String, Json>) -> Result<NewMessage, String> {
    let role = optional_string(object, "role")?.ok_or("`role` is missing")?;
    let role = parse_role(&role)
        .ok_or_else(|| format!("`role` must be system, user, assistant or tool, got {role:?}"))?;
    let content = optional_string(object, "content")?.unwrap_or_default();
    let reasoning = match optional_string(object, "reasoning_content")? {
        Some(text) => Some(text),
        None => optional_string(object, "reasoning")?,
    };
    let tool_calls = match object.get("tool_calls") {
        None | Some(Json::Null) => Vec::new(),
        Some(Json::Array(calls)) => calls
            .iter()
            .enumerate()
            .map(|(i, call)| {
                StoredToolCall::from_wire(call)
                    .map_err(|problem| problem.replacen('`', &format!("`tool_calls[{i}]."), 1))
            })
            .collect::<Result<_, _>>()?,
        Some(other) => return Err(format!("`tool_calls` must be an array, got {other}")),
    };
    let status = match optional_string(object, "status")?.as_deref() {
        None | Some("complete") => MessageStatus::Complete,
        Some("stopped") => MessageStatus::Stopped,
        Some("failed") => MessageStatus::Failed,
        Some("interrupted") => MessageStatus::Interrupted,
        Some(other) => {
            return Err(format!(
                "`status` must be complete, stopped, interrupted or failed, got {other:?}"
            ))
        }
    };
    Ok(NewMessage {
        role,
        content,
        reasoning,
        tool_calls,
        tool_call_id: optional_string(object, "tool_call_id")?,
        status,
        finish_reason: None,
        stats: MessageStats::default(),
    })
}

/// The conversation as a Markdown document: a heading per message, reasoning as a quote,
/// tool calls as JSON code blocks.
pub fn to_markdown(conversation: &Conversation, messages: &[StoredMessage]) -> String {
    let title = conversation
        .title
        .as_deref()
        .unwrap_or("Untitled conversation");
    let mut out = format!("# {title}\n");
    if let Some(system) = conversation
        .settings
        .system_prompt
        .as_deref()
        .filter(|s| !s.is_empty())
    {
        out.push_str("\n## System prompt\n\n");
        out.push_str(system);
        out.push('\n');
    }
    for message in messages {
        let heading = match message.role {
            Role::System => "System".to_owned(),
            Role::User => "User".to_owned(),
            Role::Assistant => "Assistant".to_owned(),
            Role::Tool => match &message.tool_call_id {
                Some(id) => format!("Tool result (`{id}`)"),
                None => "Tool result".to_owned(),
            },
        };
        out.push_str(&format!("\n## {heading}\n"));
        if let Some(reasoning) = message.reasoning.as_deref().filter(|r| !r.is_empty()) {
            out.push_str("\n> **Reasoning**\n>\n");
            for line in reasoning.lines() {
                out.push_str(if line.is_empty() { ">" } else { "> " });
                out.push_str(line);
                out.push('\n');
            }
        }
        if !message.content.is_empty() {
            out.push('\n');
            out.push_str(&message.content);
            out.push('\n');
        }
        for call in &message.tool_calls {
            let arguments = serde_json::to_string_pretty(&call.arguments)
                .unwrap_or_else(|_| call.arguments.to_string());
            out.push_str(&format!(
                "\n**Tool call** `{}`\n\n```json\n{arguments}\n```\n",
                call.name
            ));
        }
        match message.status {
            MessageStatus::Complete => {}
            MessageStatus::Stopped | MessageStatus::Generating => {
                out.push_str("\n_(stopped before the answer was complete)_\n");
            }
            MessageStatus::Interrupted => {
                out.push_str("\n_(cut off when the server stopped unexpectedly)_\n");
            }
            MessageStatus::Failed => out.push_str("\n_(the generation failed here)_\n"),
        }
    }
    out
}
