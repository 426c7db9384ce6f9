//! Errors of the services layer: what can go wrong between a parsed request and the engine's
//! last token. Each message names the field or the limit at fault, so the web layer can pass
//! it to the client as is; the web layer alone decides which HTTP status each one gets.

use crate::smollm3::Smollm3Error;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("`messages` must hold at least one message")]
    EmptyMessages,
    #[error("`{field}` must be between {min} and {limit} (the context size), got {value}")]
    MaxTokensOutOfRange {
        field: &'static str,
        value: i64,
        min: i64,
        limit: usize,
    },
    #[error(
        "the prompt has {} tokens; the context holds {} (leave at least one token for the answer)",
        thousands(*prompt_tokens),
        thousands(*limit)
    )]
    PromptTooLong { prompt_tokens: usize, limit: usize },
    /// Truncation left only the system prompt and the last exchange, and they alone fill
    /// the context.
    #[error(
        "even without the earlier messages, the prompt has {} tokens (the system prompt and \
         the last message); the context holds {}: shorten the message or the system prompt",
        thousands(*prompt_tokens),
        thousands(*limit)
    )]
    LastTurnTooLong {
        prompt_tokens: usize,
        limit: usize,
        /// Messages left out (see `PreparedChat::dropped`).
        dropped: usize,
    },
    /// Refused before tokenizing, which costs memory in proportion to the text.
    #[error(
        "`{field}` has {} bytes of text; the context of {} tokens holds at most {} ({} bytes a \
         token), so it cannot fit",
        thousands(*bytes),
        thousands(*context),
        thousands(*limit),
        limit / (*context).max(1)
    )]
    TextTooLong {
        field: &'static str,
        bytes: usize,
        limit: usize,
        context: usize,
    },
    #[error("`{field}` {problem}")]
    InvalidParameter {
        field: &'static str,
        problem: String,
    },
    #[error("token id {id} is outside the vocabulary of {vocab} tokens")]
    TokenOutOfRange { id: i64, vocab: usize },
    #[error("the chat template cannot render these messages: {0}")]
    Template(Smollm3Error),
    #[error("tokenizing the prompt failed: {0}")]
    Tokenize(Smollm3Error),
    /// The model's output could not be read: text that does not decode, or a tool call
    /// that is not valid JSON (reported, never shown as answer text).
    #[error("the model's output could not be used: {0}")]
    Output(Smollm3Error),
    #[error(
        "the server is busy: {capacity} requests are already waiting for the model; try again shortly"
    )]
    QueueFull { capacity: usize },
    #[error("the model is not running any more; restart the server")]
    EngineStopped,
    /// `--engine openai`: every inference server is down, failing or shut off by its
    /// circuit breaker; `reason` names each one and why.
    #[error("no inference server can take the request now ({reason}); try again shortly")]
    RemoteUnavailable { reason: String },
    #[error("loading the model failed: {0}")]
    Load(Smollm3Error),
    #[error(transparent)]
    KvBudget(#[from] super::kv_budget::BudgetError),
    #[error("generation failed: {0}")]
    Generation(String),
    #[error("cannot use the data directory {}: {reason}", path.display())]
    DataDir {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error(
        "the conversation database has schema version {found}, but this smolbot knows only up to {known}; use a newer smolbot or another --data-dir"
    )]
    SchemaTooNew { found: i64, known: i64 },
    #[error("the conversation store could not {action}; see the server log")]
    Storage { action: &'static str },
    #[error("there is no conversation with id `{id}`")]
    ConversationNotFound { id: String },
    /// Another server sharing the database is writing an answer in this conversation.
    #[error(
        "an answer is still being written in conversation `{id}` on server `{node}`; wait for it or stop it there"
    )]
    AnsweringElsewhere { id: String, node: String },
    #[error("cannot reach the conversation database: {reason}")]
    Database { reason: String },
    #[error("there is no message with id {id}")]
    MessageNotFound { id: i64 },
    /// `problem` names the line and the field at fault.
    #[error("cannot import the file: {problem}")]
    InvalidImport { problem: String },
}

/// `70112` as `70,112`: token counts in messages are read by people.
pub fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_groups_digits_by_three() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(65_536), "65,536");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn messages_name_the_field_and_the_limit() {
        let cases = [
            (ServiceError::EmptyMessages, "`messages`"),
            (
                ServiceError::MaxTokensOutOfRange {
                    field: "max_tokens",
                    value: 0,
                    min: 1,
                    limit: 4096,
                },
                "`max_tokens` must be between 1 and 4096 (the context size), got 0",
            ),
            (
                ServiceError::PromptTooLong {
                    prompt_tokens: 70_112,
                    limit: 65_536,
                },
                "the prompt has 70,112 tokens; the context holds 65,536",
            ),
            (
                ServiceError::TextTooLong {
                    field: "content",
                    bytes: 8_000_000,
                    limit: 1_048_576,
                    context: 65_536,
                },
                "`content` has 8,000,000 bytes of text; the context of 65,536 tokens holds at most 1,048,576 (16 bytes a token)",
            ),
            (
                ServiceError::TokenOutOfRange {
                    id: 9999,
                    vocab: 512,
                },
                "token id 9999 is outside the vocabulary of 512 tokens",
            ),
            (
                ServiceError::QueueFull { capacity: 16 },
                "16 requests are already waiting",
            ),
        ];
        for (error, expected) in cases {
            let text = error.to_string();
            assert!(text.contains(expected), "{text:?} lacks {expected:?}");
        }
    }
}
