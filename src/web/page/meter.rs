//! The context meter: how many of the model's context tokens the conversation fills, measured
//! by rendering the prompt the next answer would see. Used by the whole page, the settings
//! responses, `/status` and the line that ends an answer.

use minijinja::context;
use minijinja::value::Serde;
use serde::Serialize;

use super::templates::render;
use super::{PageError, PageState};
use crate::services::sessions::{ConversationSettings, StoredMessage};

/// `123456` as `123,456`.
pub(super) fn grouped(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// What the context meter shows: tokens the conversation fills of the model's context.
#[derive(Debug, Serialize)]
pub(super) struct Meter {
    used: Option<usize>,
    used_text: String,
    limit: usize,
    limit_text: String,
    /// Where the meter turns to a warning colour: 90 % of the context.
    high: usize,
}

impl Meter {
    pub(super) fn new(used: Option<usize>, limit: usize) -> Self {
        Self {
            used,
            used_text: used.map(grouped).unwrap_or_default(),
            limit,
            limit_text: grouped(limit),
            high: limit / 10 * 9,
        }
    }
}

/// Tokens the conversation's prompt takes now (system prompt and history, as the next
/// answer would see them); `None` when it cannot be measured (a history too long to render
/// is reported by the next send).
pub(super) async fn measure(
    state: &PageState,
    settings: &ConversationSettings,
    history: &[StoredMessage],
) -> Option<usize> {
    if history.is_empty() && settings.system_prompt.is_none() {
        return Some(0);
    }
    let request = crate::services::conversation::chat_request(settings, history, None);
    let prepared = state
        .engine()
        .off_runtime(move |codec| codec.prepare(&request))
        .await;
    prepared.ok().map(|p| p.prompt.len())
}

pub(super) async fn meter_html(
    state: &PageState,
    settings: &ConversationSettings,
    history: &[StoredMessage],
) -> Result<String, PageError> {
    let meter = Meter::new(
        measure(state, settings, history).await,
        state.context_length(),
    );
    Ok(render(
        "meter.html",
        context! { meter => Serde(&meter), oob => true },
    )?)
}

#[cfg(test)]
mod tests {
    use super::grouped;

    #[test]
    fn token_counts_are_grouped_by_thousands() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(65_536), "65,536");
        assert_eq!(grouped(1_234_567), "1,234,567");
    }
}
