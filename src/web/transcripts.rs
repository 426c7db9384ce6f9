//! Where the chat page keeps each conversation's messages between turns, so a follow-up
//! question is sent with what came before.
//!
//! The page reaches its conversations only through [`Transcripts`], so the in-memory store
//! here (lost on restart, enough for one browser tab's conversation) can be swapped for the
//! persistent session store without touching the page handlers.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use crate::services::chat::ChatMessage;

/// Conversations the in-memory store keeps; the oldest is forgotten first. 256 open tabs is
/// far beyond one person's use and bounds memory if a script opens pages in a loop.
pub const MAX_CONVERSATIONS: usize = 256;

/// A conversation's id as the page carries it: 1 to 64 of `[A-Za-z0-9_-]`, so it is safe in
/// a URL, an HTML attribute and a log line.
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

/// The page's view of conversation storage.
pub trait Transcripts: Send + Sync {
    /// The messages of `conversation`, oldest first; empty for one never seen.
    fn history(&self, conversation: &ConversationId) -> Vec<ChatMessage>;
    /// Adds `message` at the end of `conversation`, starting it if new.
    fn append(&self, conversation: &ConversationId, message: ChatMessage);
}

/// Conversations in memory, at most [`MAX_CONVERSATIONS`] of them.
#[derive(Default)]
pub struct MemoryTranscripts {
    inner: Mutex<MemoryInner>,
}

#[derive(Default)]
struct MemoryInner {
    messages: HashMap<ConversationId, Vec<ChatMessage>>,
    /// Conversations in the order they started, to forget the oldest.
    order: VecDeque<ConversationId>,
}

impl Transcripts for MemoryTranscripts {
    fn history(&self, conversation: &ConversationId) -> Vec<ChatMessage> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner
            .messages
            .get(conversation)
            .cloned()
            .unwrap_or_default()
    }

    fn append(&self, conversation: &ConversationId, message: ChatMessage) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if !inner.messages.contains_key(conversation) {
            while inner.order.len() >= MAX_CONVERSATIONS {
                if let Some(oldest) = inner.order.pop_front() {
                    inner.messages.remove(&oldest);
                }
            }
            inner.order.push_back(conversation.clone());
        }
        inner
            .messages
            .entry(conversation.clone())
            .or_default()
            .push(message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::chat::Role;

    #[test]
    fn ids_are_checked() {
        assert!(ConversationId::parse("c_abc-123").is_some());
        for bad in ["", "a b", "<x>", "é", &"a".repeat(65)] {
            assert!(ConversationId::parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn messages_come_back_in_order_and_old_conversations_go() {
        let store = MemoryTranscripts::default();
        let first = ConversationId::parse("first").expect("id");
        store.append(&first, ChatMessage::new(Role::User, "hi"));
        store.append(&first, ChatMessage::new(Role::Assistant, "hello"));
        let history = store.history(&first);
        assert_eq!(history.len(), 2);
        assert_eq!(history[1].content, "hello");
        for i in 0..MAX_CONVERSATIONS {
            let id = ConversationId::parse(&format!("c{i}")).expect("id");
            store.append(&id, ChatMessage::new(Role::User, "x"));
        }
        assert!(store.history(&first).is_empty());
    }
}
