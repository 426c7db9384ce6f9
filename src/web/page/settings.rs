//! The conversation's settings: the settings form (`POST /chat/settings`, and
//! `POST /chat/settings/reset`), the Thinking box, and the one path that saves settings,
//! which the slash commands `/think` (and `/think N`, the form's thinking budget), `/temp`
//! and `/system` take too.

use std::str::FromStr;

use axum::extract::rejection::FormRejection;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::Form;
use minijinja::context;
use minijinja::value::Serde;
use serde::{Deserialize, Serialize};

use super::meter::meter_html;
use super::sidebar::sidebar_oob;
use super::templates::render;
use super::{
    form, fragment_response, from_page, target, CurrentForm, PageError, PageState, Target,
};
use crate::services::agent;
use crate::services::chat::Sampling;
use crate::services::sessions::{ConversationPatch, ConversationSettings};
use crate::services::truncation::Truncation;

/// Settings as the form shows them: text, empty where the default applies.
#[derive(Debug, Serialize)]
pub(super) struct SettingsView {
    system_prompt: String,
    temperature: String,
    top_p: String,
    max_tokens: String,
    thinking_budget: String,
    builtin_tools: bool,
    /// The oldest messages are left out when the context is full.
    drop_oldest: bool,
}

impl SettingsView {
    pub(super) fn new(settings: &ConversationSettings) -> Self {
        let text = |v: Option<String>| v.unwrap_or_default();
        Self {
            system_prompt: settings.system_prompt.clone().unwrap_or_default(),
            temperature: text(settings.temperature.map(|t| t.to_string())),
            top_p: text(settings.top_p.map(|p| p.to_string())),
            max_tokens: text(settings.max_tokens.map(|m| m.to_string())),
            thinking_budget: text(settings.thinking_budget.map(|b| b.to_string())),
            builtin_tools: agent::builtin_tools_on(settings),
            drop_oldest: settings.truncation == Some(Truncation::Auto),
        }
    }
}

fn settings_html(
    state: &PageState,
    settings: &ConversationSettings,
    saved: Option<&str>,
    oob: bool,
) -> Result<String, minijinja::Error> {
    let defaults = Sampling::defaults();
    render(
        "settings.html",
        context! {
            settings => Serde(SettingsView::new(settings)),
            defaults => context! {
                temperature => defaults.temperature.to_string(),
                top_p => defaults.top_p.to_string(),
                context_length => state.context_length(),
            },
            saved => saved,
            oob => oob,
        },
    )
}

pub(super) fn thinking_html(thinking: bool) -> Result<String, minijinja::Error> {
    render(
        "thinking_toggle.html",
        context! { thinking => thinking, oob => true },
    )
}

/// The settings form's fields; empty means "the default".
#[derive(Debug, Deserialize)]
pub(super) struct SettingsForm {
    conversation: String,
    #[serde(default)]
    system_prompt: String,
    #[serde(default)]
    temperature: String,
    #[serde(default)]
    top_p: String,
    #[serde(default)]
    max_tokens: String,
    /// At most this many reasoning tokens per answer; empty lets the model reason freely.
    #[serde(default)]
    thinking_budget: String,
    /// Present (`on`) when the built-in tools box is ticked.
    builtin_tools: Option<String>,
    /// Present (`on`) when "drop the oldest messages" is ticked.
    drop_oldest: Option<String>,
}

fn optional<T: FromStr>(field: &'static str, raw: &str) -> Result<Option<T>, PageError> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(None);
    }
    raw.parse().map(Some).map_err(|_| PageError::NotANumber {
        field,
        value: raw.to_owned(),
    })
}

/// Saves `settings` to the conversation named by `raw` (creating one for a new chat) and
/// answers with the settings form, the thinking box and the meter as they now are.
pub(super) async fn apply_settings(
    state: &PageState,
    raw: &str,
    change: impl FnOnce(&ConversationSettings) -> ConversationSettings,
    saved: &str,
    extra: Option<String>,
) -> Result<Response, PageError> {
    let Target {
        id,
        conversation,
        created,
    } = target(state, raw, ConversationSettings::default()).await?;
    let settings = change(&conversation.settings);
    if let Some(max) = settings.max_tokens {
        if max > state.context_length() as i64 {
            return Err(PageError::MaxTokensTooLarge(state.context_length()));
        }
    }
    let patch = ConversationPatch {
        title: None,
        settings: Some(settings),
    };
    let conversation = state
        .store()
        .update(id.as_str().to_owned(), patch)
        .await
        .map_err(PageError::from_store)?;
    let history = state.store().messages(id.as_str().to_owned()).await?;
    // A command's notice is the main content; the form then travels out of band.
    let oob = extra.is_some();
    let mut html = extra.unwrap_or_default();
    html.push_str(&settings_html(
        state,
        &conversation.settings,
        Some(saved),
        oob,
    )?);
    html.push_str(&thinking_html(crate::services::conversation::thinking(
        &conversation.settings,
    ))?);
    html.push_str(&meter_html(state, &conversation.settings, &history).await?);
    if created {
        html.push_str(&sidebar_oob(state, id.as_str()).await?);
    }
    Ok(fragment_response(html, created.then_some(&id)))
}

pub(super) async fn save_settings(
    State(state): State<PageState>,
    headers: HeaderMap,
    body: Result<Form<SettingsForm>, FormRejection>,
) -> Result<Response, PageError> {
    from_page(&headers)?;
    let body = form(body)?;
    let system = body.system_prompt.trim();
    let parsed = ConversationSettings {
        system_prompt: (!system.is_empty()).then(|| system.to_owned()),
        temperature: optional("temperature", &body.temperature)?,
        top_p: optional("top-p", &body.top_p)?,
        max_tokens: optional("max tokens", &body.max_tokens)?,
        thinking: None,
        thinking_budget: optional("thinking budget", &body.thinking_budget)?,
        builtin_tools: body.builtin_tools.is_some().then_some(true),
        truncation: body.drop_oldest.is_some().then_some(Truncation::Auto),
    };
    parsed.check()?;
    apply_settings(
        &state,
        &body.conversation,
        move |old| ConversationSettings {
            thinking: old.thinking,
            ..parsed
        },
        "Saved.",
        None,
    )
    .await
}

pub(super) async fn reset_settings(
    State(state): State<PageState>,
    headers: HeaderMap,
    body: Result<Form<CurrentForm>, FormRejection>,
) -> Result<Response, PageError> {
    from_page(&headers)?;
    let body = form(body)?;
    apply_settings(
        &state,
        &body.conversation,
        |_| ConversationSettings::default(),
        "Back to the defaults.",
        None,
    )
    .await
}
