//! Fitting a conversation that outgrew the context: the system prompt stays, whole exchanges
//! are dropped oldest first until the prompt and a reserve for the answer fit.
//!
//! Apart from the codec so the rule is a plain function over messages and a token counter,
//! tested without a tokenizer, and so the page's meter, the page's marker and the engine's
//! request all cut at the same place. It is opt-in (OpenAI's Responses API calls it
//! `truncation: "auto"`), since a model that silently forgets the start of a conversation
//! surprises whoever did not ask for it.

use serde::{Deserialize, Serialize};

use super::chat::{ChatMessage, Role};

/// What to do with a conversation longer than the context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Truncation {
    /// Refuse it: the client decides what to leave out.
    #[default]
    Disabled,
    /// Drop the oldest exchanges until it fits.
    Auto,
}

/// Most tokens kept free for the answer when the request sets no `max_tokens`: enough for a
/// reasoned answer of a page or two, and at most a quarter of the context, so a small
/// context still keeps most of its history.
pub const DEFAULT_ANSWER_RESERVE: usize = 1024;

/// Tokens to keep free for the answer: the request's `max_tokens`, else
/// [`DEFAULT_ANSWER_RESERVE`] or a quarter of the context, whichever is less; never the whole
/// context, so the prompt always has room for a question.
pub fn answer_reserve(context: usize, max_tokens: Option<usize>) -> usize {
    let wanted = max_tokens.unwrap_or((context / 4).min(DEFAULT_ANSWER_RESERVE));
    wanted.min(context.saturating_sub(1) / 2)
}

/// Where the conversation was cut and what the rest takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fit {
    /// Messages dropped after the leading system messages (0 when all fit).
    pub dropped: usize,
    /// Tokens of the prompt that is left.
    pub prompt_tokens: usize,
    /// The prompt is shorter than the context: there is room for an answer, if not the
    /// whole reserve. `false` when even the last exchange alone does not fit.
    pub fits: bool,
}

/// The messages kept by a [`Fit`] of `messages`: the leading system messages and the rest
/// from the cut on.
pub fn kept(messages: &[ChatMessage], dropped: usize) -> Vec<ChatMessage> {
    let head = leading_system(messages);
    let mut out = messages[..head].to_vec();
    out.extend_from_slice(&messages[head + dropped..]);
    out
}

fn leading_system(messages: &[ChatMessage]) -> usize {
    messages
        .iter()
        .take_while(|m| m.role == Role::System)
        .count()
}

/// Drops the oldest whole exchanges of `messages` (an exchange starts at a user message and
/// runs to the next one, tool calls and their results included) until `count` of what is
/// left plus `reserve` is at most `context`. The leading system messages and the last
/// exchange are never dropped; when even they leave no room for the reserve, they are what
/// is sent, and [`Fit::fits`] says whether that leaves room for any answer at all.
///
/// `count` gives the prompt tokens of a list of messages; it is called O(log n) times, as
/// fewer messages never take more tokens.
pub fn fit<E>(
    messages: &[ChatMessage],
    context: usize,
    reserve: usize,
    mut count: impl FnMut(&[ChatMessage]) -> Result<usize, E>,
) -> Result<Fit, E> {
    let head = leading_system(messages);
    // Where the kept part may start: right after the system messages, or at a user message.
    let mut cuts = vec![head];
    cuts.extend((head + 1..messages.len()).filter(|&i| messages[i].role == Role::User));
    let mut measure = |cut: usize| -> Result<Fit, E> {
        let prompt_tokens = count(&kept(messages, cut - head))?;
        Ok(Fit {
            dropped: cut - head,
            prompt_tokens,
            fits: prompt_tokens < context,
        })
    };
    let room = |fit: &Fit| fit.prompt_tokens + reserve <= context;
    let whole = measure(cuts[0])?;
    if room(&whole) || cuts.len() == 1 {
        return Ok(whole);
    }
    let last = measure(cuts[cuts.len() - 1])?;
    if !room(&last) {
        return Ok(last);
    }
    // cuts[lo] leaves no room, cuts[hi] does: the first cut with room is in (lo, hi].
    let (mut lo, mut hi, mut best) = (0, cuts.len() - 1, last);
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        let at = measure(cuts[mid])?;
        if room(&at) {
            hi = mid;
            best = at;
        } else {
            lo = mid;
        }
    }
    Ok(best)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smollm3::tool_calls::ToolCall;

    fn msg(role: Role, text: &str) -> ChatMessage {
        ChatMessage::new(role, text)
    }

    /// One token per byte of text, and 2 per message for its markup.
    fn bytes(messages: &[ChatMessage]) -> Result<usize, ()> {
        Ok(messages.iter().map(|m| m.content.len() + 2).sum())
    }

    fn texts(messages: &[ChatMessage]) -> Vec<&str> {
        messages.iter().map(|m| m.content.as_str()).collect()
    }

    fn conversation() -> Vec<ChatMessage> {
        let mut call = msg(Role::Assistant, "");
        call.tool_calls.push(ToolCall {
            name: "calculator".into(),
            arguments: serde_json::json!({"expression": "1+1"}),
        });
        vec![
            msg(Role::System, "sys"),        // 5
            msg(Role::User, "q1"),           // 4
            msg(Role::Assistant, "a1"),      // 4
            msg(Role::User, "q2"),           // 4
            call,                            // 2
            msg(Role::Tool, "2"),            // 3
            msg(Role::Assistant, "a2"),      // 4
            msg(Role::User, "q3 is longer"), // 14
        ]
    }

    #[test]
    fn nothing_is_dropped_when_it_fits() {
        let messages = conversation();
        let fit = fit(&messages, 100, 60, bytes).unwrap();
        assert_eq!(
            fit,
            Fit {
                dropped: 0,
                prompt_tokens: 40,
                fits: true
            }
        );
        assert_eq!(kept(&messages, 0), messages);
    }

    #[test]
    fn the_system_prompt_stays_and_oldest_exchanges_go_whole() {
        let messages = conversation();
        // 40 tokens in all; 36 of room drops the first exchange (8 tokens) only.
        let first = fit(&messages, 46, 10, bytes).unwrap();
        assert_eq!(first.dropped, 2);
        assert_eq!(first.prompt_tokens, 32);
        assert_eq!(
            texts(&kept(&messages, first.dropped)),
            ["sys", "q2", "", "2", "a2", "q3 is longer"]
        );
        // Less room: the second exchange goes whole, its tool call and result with it.
        let second = fit(&messages, 30, 10, bytes).unwrap();
        assert_eq!(second.dropped, 6);
        assert_eq!(
            texts(&kept(&messages, second.dropped)),
            ["sys", "q3 is longer"]
        );
        assert!(second.fits);
    }

    #[test]
    fn tool_rounds_are_never_cut_from_their_call() {
        let messages = conversation();
        for context in 1..60 {
            let fit = fit(&messages, context, 0, bytes).unwrap();
            let rest = kept(&messages, fit.dropped);
            assert_eq!(rest[0].role, Role::System);
            if rest.len() > 1 {
                assert_eq!(rest[1].role, Role::User, "context {context}: {rest:?}");
            }
        }
    }

    #[test]
    fn the_last_question_is_sent_even_without_room_for_the_reserve() {
        let messages = conversation();
        let tight = fit(&messages, 20, 10, bytes).unwrap();
        assert_eq!(
            texts(&kept(&messages, tight.dropped)),
            ["sys", "q3 is longer"]
        );
        assert!(tight.fits, "19 tokens of prompt leave one for the answer");
        let none = fit(&messages, 19, 0, bytes).unwrap();
        assert_eq!(none.prompt_tokens, 19);
        assert!(!none.fits, "even the last question alone does not fit");
    }

    #[test]
    fn the_reserve_is_the_answer_limit_or_a_share_of_the_context() {
        assert_eq!(answer_reserve(65_536, None), DEFAULT_ANSWER_RESERVE);
        assert_eq!(answer_reserve(512, None), 128);
        assert_eq!(answer_reserve(4096, Some(100)), 100);
        assert_eq!(answer_reserve(4096, Some(4096)), 2047);
    }
}
