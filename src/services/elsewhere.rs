//! Following an answer that another server sharing the PostgreSQL database is writing.
//!
//! The server writing an answer saves its draft about once a second and every save is
//! announced (`NOTIFY`, see [`SessionStore::announcements`]); a follower reads the draft
//! again at each announcement of its conversation and hands on what grew as deltas, until
//! the draft is final. It also looks every [`LOOK_AGAIN`] without an announcement: a draft
//! whose server died is marked `interrupted` by whichever server notices the claim ran out,
//! and a listening connection that broke misses announcements.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::sync::broadcast::{self, error::RecvError};

use super::chat::Role;
use super::error::ServiceError;
use super::sessions::{MessageStatus, SessionStore, StoredMessage};

/// How long a follower waits for an announcement before it looks at the draft anyway.
const LOOK_AGAIN: Duration = Duration::from_secs(2);

/// What the followed draft did since the last look.
#[derive(Debug, Clone, PartialEq)]
pub enum DraftChange {
    /// More reasoning (the text added).
    Reasoning(String),
    /// More of the answer (the text added).
    Content(String),
    /// The answer is final (complete, stopped, interrupted or failed): the stored message.
    Done(Box<StoredMessage>),
}

/// A draft written by another server, followed from the database.
pub struct Elsewhere {
    store: SessionStore,
    conversation: String,
    draft: i64,
    reasoning: String,
    content: String,
    announcements: Option<broadcast::Receiver<String>>,
    pending: VecDeque<DraftChange>,
    finished: bool,
}

impl Elsewhere {
    /// Follows the conversation's last message when it is an answer still `generating` in a
    /// database shared with other servers; `None` otherwise (nothing is being written, or the
    /// store is this server's own SQLite file, where only this server writes). The caller
    /// has checked that this server is not writing it itself.
    pub async fn find(
        store: &SessionStore,
        conversation: &str,
    ) -> Result<Option<Self>, ServiceError> {
        if store.node().is_none() {
            return Ok(None);
        }
        // Listening starts before the first read, so no save falls between the two.
        let announcements = store.announcements().await.unwrap_or_else(|err| {
            tracing::warn!("following answers by looking every {LOOK_AGAIN:?}: {err}");
            None
        });
        let messages = store.messages(conversation.to_owned()).await?;
        let Some(draft) = messages
            .into_iter()
            .last()
            .filter(|m| m.role == Role::Assistant && m.status == MessageStatus::Generating)
        else {
            return Ok(None);
        };
        let mut follower = Self {
            store: store.clone(),
            conversation: conversation.to_owned(),
            draft: draft.id,
            reasoning: String::new(),
            content: String::new(),
            announcements,
            pending: VecDeque::new(),
            finished: false,
        };
        follower.absorb(draft);
        Ok(Some(follower))
    }

    /// The next change; `None` after [`DraftChange::Done`] or an error. The first changes
    /// hold the text saved so far.
    pub async fn next(&mut self) -> Option<Result<DraftChange, ServiceError>> {
        loop {
            if let Some(change) = self.pending.pop_front() {
                return Some(Ok(change));
            }
            if self.finished {
                return None;
            }
            self.wait().await;
            if let Err(err) = self.look().await {
                self.finished = true;
                return Some(Err(err));
            }
        }
    }

    /// Waits for the next announcement of this conversation, or [`LOOK_AGAIN`].
    async fn wait(&mut self) {
        let deadline = tokio::time::sleep(LOOK_AGAIN);
        tokio::pin!(deadline);
        loop {
            let heard = match self.announcements.as_mut() {
                None => {
                    deadline.as_mut().await;
                    return;
                }
                Some(announcements) => tokio::select! {
                    () = deadline.as_mut() => return,
                    heard = announcements.recv() => heard,
                },
            };
            match heard {
                Ok(conversation) if conversation == self.conversation => return,
                Ok(_) => {}
                // Announcements were missed: one of them may have been this one.
                Err(RecvError::Lagged(_)) => return,
                Err(RecvError::Closed) => self.announcements = None,
            }
        }
    }

    /// Reads the draft again.
    async fn look(&mut self) -> Result<(), ServiceError> {
        let messages = self.store.messages(self.conversation.clone()).await?;
        let draft = messages
            .into_iter()
            .find(|m| m.id == self.draft)
            .ok_or(ServiceError::MessageNotFound { id: self.draft })?;
        self.absorb(draft);
        Ok(())
    }

    /// Queues what grew since the last look, and the end when the draft is final.
    fn absorb(&mut self, draft: StoredMessage) {
        let reasoning = draft.reasoning.clone().unwrap_or_default();
        if let Some(more) = grown(&self.reasoning, &reasoning) {
            self.pending
                .push_back(DraftChange::Reasoning(more.to_owned()));
        }
        self.reasoning = reasoning;
        if let Some(more) = grown(&self.content, &draft.content) {
            self.pending
                .push_back(DraftChange::Content(more.to_owned()));
        }
        self.content.clone_from(&draft.content);
        if draft.status != MessageStatus::Generating {
            self.pending.push_back(DraftChange::Done(Box::new(draft)));
            self.finished = true;
        }
    }
}

/// The text `now` adds to `before`; `None` when nothing was added, or when `now` does not
/// start with `before` (a save that rewrote the text, which the final message then shows).
fn grown<'a>(before: &str, now: &'a str) -> Option<&'a str> {
    now.strip_prefix(before).filter(|more| !more.is_empty())
}

#[cfg(test)]
mod tests {
    use super::grown;

    #[test]
    fn only_appended_text_is_a_delta() {
        assert_eq!(grown("", "Hello"), Some("Hello"));
        assert_eq!(grown("Hel", "Hello"), Some("lo"));
        assert_eq!(grown("Hello", "Hello"), None);
        assert_eq!(grown("Hello", "Help"), None);
        assert_eq!(grown("é", "éè"), Some("è"));
    }
}
