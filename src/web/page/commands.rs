//! The slash commands typed in the composer (`/new`, `/clear`, `/think`, `/temp`, `/system`,
//! `/export`, `/help`, `/status`): the list the menu and `/help` show, and running one. A
//! command's answer is a notice in the conversation's view, not a stored message.

use axum::response::{Html, IntoResponse, Response};
use minijinja::{context, Value};

use super::meter::{grouped, measure};
use super::settings::{apply_settings, thinking_html};
use super::templates::render;
use super::{load, redirect, PageError, PageState, MAX_MESSAGE_BYTES};
use crate::services::chat::Sampling;
use crate::services::sessions::ConversationSettings;

/// The slash commands: name, what it inserts when picked in the menu, usage, and help.
const COMMANDS: &[(&str, &str, &str, &str)] = &[
    ("/new", "/new", "/new", "start a new chat"),
    (
        "/clear",
        "/clear",
        "/clear",
        "delete every message of this chat",
    ),
    (
        "/think",
        "/think",
        "/think [N]",
        "turn thinking on (with N: at most N tokens of it)",
    ),
    ("/no_think", "/no_think", "/no_think", "turn thinking off"),
    (
        "/temp",
        "/temp ",
        "/temp N",
        "set the temperature (0 is greedy)",
    ),
    (
        "/system",
        "/system ",
        "/system TEXT",
        "set the system prompt (empty clears it)",
    ),
    (
        "/export",
        "/export",
        "/export",
        "download this chat as Markdown or JSON",
    ),
    ("/help", "/help", "/help", "list the commands"),
    (
        "/status",
        "/status",
        "/status",
        "model, context use and settings",
    ),
];

pub(super) fn commands() -> Vec<Value> {
    COMMANDS
        .iter()
        .map(|(name, insert, usage, help)| {
            context! { name => *name, insert => *insert, usage => *usage, help => *help }
        })
        .collect()
}

fn notice(
    kind: &str,
    text: &str,
    conversation: &str,
    lines: &[String],
) -> Result<String, PageError> {
    Ok(render(
        "notice.html",
        context! {
            kind => kind,
            text => text,
            conversation => conversation,
            lines => lines.to_vec(),
            commands => commands(),
            extras => Vec::<String>::new(),
        },
    )?)
}

/// Runs a slash command typed in the composer; its answer is a notice added to the
/// conversation's view (not stored), or a move to another page.
pub(super) async fn command(
    state: &PageState,
    raw: &str,
    text: &str,
    thinking_box: bool,
) -> Result<Response, PageError> {
    let (name, argument) = match text.split_once(char::is_whitespace) {
        Some((name, rest)) => (name, rest.trim()),
        None => (text, ""),
    };
    match name {
        "/new" => Ok(redirect("/")),
        "/help" => Ok(Html(notice("help", "", raw, &[])?).into_response()),
        "/think" | "/no_think" => {
            let on = name == "/think";
            let budget = match argument {
                "" => None,
                n if on => Some(n.parse::<usize>().map_err(|_| PageError::NotANumber {
                    field: "the thinking budget",
                    value: n.to_owned(),
                })?),
                _ => None,
            };
            let said = match (on, budget) {
                (true, None) => "Thinking is on.".to_owned(),
                (true, Some(n)) => format!("Thinking is on, at most {n} tokens of it."),
                (false, _) => "Thinking is off.".to_owned(),
            };
            let said = said.as_str();
            if raw.is_empty() && budget.is_some() {
                // The budget is a setting of the conversation, which the first message makes.
                return Err(PageError::Nothing("message to set a thinking budget for"));
            }
            if raw.is_empty() {
                // A new chat: the box carries the setting to the first message.
                let mut html = notice("text", said, raw, &[])?;
                html.push_str(&thinking_html(on)?);
                return Ok(Html(html).into_response());
            }
            let main = notice("text", said, raw, &[])?;
            apply_settings(
                state,
                raw,
                move |old| ConversationSettings {
                    thinking: Some(on),
                    // `/think` alone lifts a budget; `/no_think` keeps it for later.
                    thinking_budget: if on { budget } else { old.thinking_budget },
                    ..old.clone()
                },
                said,
                Some(main),
            )
            .await
        }
        "/temp" => {
            let temperature: f32 = argument.parse().map_err(|_| PageError::TempNeedsNumber)?;
            let changed = ConversationSettings {
                temperature: Some(temperature),
                ..ConversationSettings::default()
            };
            changed.check()?;
            let said = format!("Temperature set to {temperature}.");
            let main = notice("text", &said, raw, &[])?;
            apply_settings(
                state,
                raw,
                move |old| ConversationSettings {
                    temperature: Some(temperature),
                    thinking: old.thinking.or(Some(thinking_box)),
                    ..old.clone()
                },
                &said,
                Some(main),
            )
            .await
        }
        "/system" => {
            if argument.len() > MAX_MESSAGE_BYTES {
                return Err(PageError::MessageTooLong(argument.len()));
            }
            let prompt = (!argument.is_empty()).then(|| argument.to_owned());
            let said = if prompt.is_some() {
                "System prompt set."
            } else {
                "System prompt cleared."
            };
            let main = notice("text", said, raw, &[])?;
            apply_settings(
                state,
                raw,
                move |old| ConversationSettings {
                    system_prompt: prompt,
                    thinking: old.thinking.or(Some(thinking_box)),
                    ..old.clone()
                },
                said,
                Some(main),
            )
            .await
        }
        "/clear" => {
            if raw.is_empty() {
                return Ok(Html(notice("text", "Nothing to clear yet.", raw, &[])?).into_response());
            }
            let (id, _) = load(state, raw).await?;
            if state.busy(&id) {
                return Err(PageError::Busy);
            }
            state.store().truncate(id.as_str().to_owned(), 0).await?;
            Ok(redirect(&format!("/c/{}", id.as_str())))
        }
        "/export" => {
            if raw.is_empty() {
                return Err(PageError::Nothing("messages to export"));
            }
            let (id, _) = load(state, raw).await?;
            Ok(Html(notice("export", "", id.as_str(), &[])?).into_response())
        }
        "/status" => {
            let info = state.engine().info();
            let mut lines = vec![format!(
                "Model: {} ({})",
                info.id,
                if info.is_stub { "stub" } else { "ready" }
            )];
            let (settings, history) = if raw.is_empty() {
                lines.push("Conversation: new, not saved yet".into());
                (
                    ConversationSettings {
                        thinking: Some(thinking_box),
                        ..ConversationSettings::default()
                    },
                    Vec::new(),
                )
            } else {
                let (id, conversation) = load(state, raw).await?;
                let history = state.store().messages(id.as_str().to_owned()).await?;
                lines.push(format!(
                    "Conversation: {} ({} messages{})",
                    conversation.title.as_deref().unwrap_or("New chat"),
                    history.len(),
                    if state.persistent() {
                        ""
                    } else {
                        ", in memory only"
                    }
                ));
                (conversation.settings, history)
            };
            let next = measure(state, &settings, &history).await;
            lines.push(format!(
                "Context: {} of {} tokens{}",
                next.map_or_else(|| "?".to_owned(), |n| grouped(n.tokens)),
                grouped(state.context_length()),
                if next.is_some_and(|n| n.first_sent.is_some()) {
                    " (the oldest messages are left out)"
                } else {
                    ""
                }
            ));
            let defaults = Sampling::defaults();
            lines.push(format!(
                "Thinking {}, temperature {}, top-p {}, max tokens {}",
                if crate::services::conversation::thinking(&settings) {
                    "on"
                } else {
                    "off"
                },
                settings.temperature.unwrap_or(defaults.temperature),
                settings.top_p.unwrap_or(defaults.top_p),
                settings
                    .max_tokens
                    .map_or_else(|| "until done".to_owned(), |m| m.to_string()),
            ));
            lines.push(format!(
                "System prompt: {}",
                settings.system_prompt.as_deref().unwrap_or("none")
            ));
            Ok(Html(notice("status", "", raw, &lines)?).into_response())
        }
        other => Err(PageError::UnknownCommand(other.to_owned())),
    }
}
