//! The context meter: how many of the model's context tokens the conversation fills, measured
//! by rendering the prompt the next answer would be sent (its settings, built-in tools and
//! truncation included), so the number is the one the model will read. Used by the whole page, the settings
//! responses, `/status` and the line that ends an answer.

use minijinja::context;
use minijinja::value::Serde;
use serde::Serialize;

use super::templates::render;
use super::{PageError, PageState};
use crate::services::conversation::NextPrompt;
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

/// The prompt the next answer would be sent (system prompt, tools, history, as truncation
/// leaves it): its tokens and where the history was cut. `None` only when it cannot be
/// rendered at all (a broken template), which the next send reports.
pub(super) async fn measure(
    state: &PageState,
    settings: &ConversationSettings,
    history: &[StoredMessage],
) -> Option<NextPrompt> {
    match state.conversations.next_prompt(settings, history).await {
        Ok(next) => Some(next),
        Err(err) => {
            tracing::warn!("the context meter could not measure the conversation: {err}");
            None
        }
    }
}

/// The meter of the stored conversation `id` as it now stands.
pub(super) async fn current(state: &PageState, id: &str) -> Option<Meter> {
    let conversation = state.store().get(id.to_owned()).await.ok()?;
    let history = state.store().messages(id.to_owned()).await.ok()?;
    let next = measure(state, &conversation.settings, &history).await;
    Some(Meter::new(next.map(|n| n.tokens), state.context_length()))
}

pub(super) async fn meter_html(
    state: &PageState,
    settings: &ConversationSettings,
    history: &[StoredMessage],
) -> Result<String, PageError> {
    let meter = Meter::new(
        measure(state, settings, history).await.map(|n| n.tokens),
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
