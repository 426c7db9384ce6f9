//! Asking the model in a stored conversation: the one use case under every front end.
//!
//! The chat page, the conversations API and the terminal chat all send a message, regenerate
//! the last answer, edit the last question or stop an answer through [`Conversations`];
//! they only translate their input into an [`Ask`] and the returned [`Started`] run into
//! their output. Everything between lives here once: holding the conversation (one answer
//! at a time), building the model's request from the stored settings and history
//! ([`chat_request`]), offering the built-in tools, queueing the generation, and the one save
//! policy:
//!
//! - the request is queued before anything is saved, so a busy server refuses without
//!   leaving a question nobody answers;
//! - then the user turn is committed with the answer's `generating` draft row right after
//!   it, in one transaction ([`SessionStore::commit_turn`]; with several servers on one
//!   PostgreSQL database, also the place that refuses a conversation another server is
//!   answering in); the run keeps the draft up to date as the answer grows (see
//!   [`super::runs`]) and marks it `complete`, `stopped` or `failed` at the end;
//! - a server that dies mid-answer leaves the draft `generating`; the next start marks it
//!   `interrupted` with its text ([`SessionStore::open`]).

use std::sync::Arc;

use super::agent::{self, ToolLoop};
use super::chat::{ChatMessage, ChatRequest, Role, TokenLimit};
use super::elsewhere::Elsewhere;
use super::engine::Engine;
use super::error::ServiceError;
use super::runs::{Prefill, Run, RunError, Runs};
use super::sessions::{
    Conversation, ConversationSettings, MessageStatus, MessageUpdate, SessionStore, StoredMessage,
    Turn,
};

/// Why a conversation could not take a message.
#[derive(Debug, thiserror::Error)]
pub enum ConversationError {
    /// The conversation is busy, or the answer to stop is gone.
    #[error(transparent)]
    Run(#[from] RunError),
    /// Regenerate or edit in a conversation without a user message.
    #[error("this conversation has no {0} yet")]
    Nothing(&'static str),
    /// An edit of a question that is no longer the last one: a newer question was asked
    /// since the edit began (in another tab, say), and only the last question is edited.
    #[error(
        "this question is no longer the last one: a newer question was asked since the edit \
         began; reload the chat to edit the last question"
    )]
    NotLastQuestion,
    /// The store, the request's checks or the engine refused.
    #[error(transparent)]
    Service(#[from] ServiceError),
}

/// What a front end asks: the user's text. The tools offered are the conversation's own
/// (its built-in tools setting), whichever front end asks.
#[derive(Debug, Clone, Default)]
pub struct Ask {
    pub text: String,
}

impl Ask {
    /// A message.
    pub fn text(text: impl Into<String>) -> Self {
        Self { text: text.into() }
    }
}

/// An answer that started: its run, and what was stored for it.
pub struct Started {
    pub run: Arc<Run>,
    /// The conversation as it was when the answer started (settings included).
    pub conversation: Conversation,
    /// The messages the answer follows, its question included (a regenerated answer's
    /// question is the last of them; a new one is `question`).
    pub history: Vec<StoredMessage>,
    /// The user message stored for this answer; `None` when regenerating.
    pub question: Option<StoredMessage>,
    /// The answer's draft row, `generating` while the run writes it.
    pub draft: StoredMessage,
}

/// The prompt the next answer of a conversation would be sent, as the context meter shows
/// it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NextPrompt {
    /// Its tokens, exactly as the request would be rendered (tools and truncation
    /// included); more than the context when it is too long to send.
    pub tokens: usize,
    /// The first stored message still sent, when truncation leaves older ones out.
    pub first_sent: Option<i64>,
}

/// The conversation service: the engine and the runs writing into the store. Cheap to
/// clone; clones share the runs, so a conversation has one answer at a time whichever
/// front end sent it.
#[derive(Clone)]
pub struct Conversations {
    engine: Engine,
    runs: Runs,
}

impl Conversations {
    /// The service over `engine`; its runs count reasoning tokens with its tokenizer.
    pub fn new(engine: Engine, runs: Runs) -> Self {
        let runs = runs.counting_with(Arc::clone(engine.codec()));
        Self { engine, runs }
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn runs(&self) -> &Runs {
        &self.runs
    }

    pub fn store(&self) -> &SessionStore {
        self.runs.store()
    }

    /// An answer is being prepared or written in `conversation`: the one meaning of busy.
    pub fn is_busy(&self, conversation: &str) -> bool {
        self.runs.is_busy(conversation)
    }

    /// The answer another server sharing the database is writing in `conversation`, to
    /// follow as it grows; `None` when this server writes it (its run streams it) or when
    /// none is being written.
    pub async fn follow_elsewhere(
        &self,
        conversation: &str,
    ) -> Result<Option<Elsewhere>, ServiceError> {
        if self.runs.is_busy(conversation) {
            return Ok(None);
        }
        Elsewhere::find(self.store(), conversation).await
    }

    /// Sends `ask` as the next user message of `conversation` and starts its answer.
    pub async fn send(&self, conversation: &str, ask: Ask) -> Result<Started, ConversationError> {
        let reservation = self.runs.reserve(conversation)?;
        let stored = self.store().get(conversation.to_owned()).await?;
        let history = self.store().messages(conversation.to_owned()).await?;
        let request = chat_request(&stored.settings, &history, Some(&ask.text));
        let commit = Turn {
            replace_from: None,
            new_version: false,
            question: Some(ask.text),
        };
        self.begin(reservation, stored, history, request, commit)
            .await
    }

    /// Answers the last user message again. The answer shown until now is kept as a
    /// version of it ([`SessionStore::select_version`] shows it again); the new one is shown
    /// and goes to the model from then on.
    pub async fn regenerate(&self, conversation: &str) -> Result<Started, ConversationError> {
        let reservation = self.runs.reserve(conversation)?;
        let stored = self.store().get(conversation.to_owned()).await?;
        let (mut history, last) = self.last_question(conversation).await?;
        history.truncate(last + 1);
        let request = chat_request(&stored.settings, &history, None);
        let commit = Turn {
            replace_from: None,
            new_version: true,
            question: None,
        };
        self.begin(reservation, stored, history, request, commit)
            .await
    }

    /// Replaces the last user message (and what followed it) by `ask` and answers it.
    /// `question` is the stored id of the message the user set out to edit: when it is no
    /// longer the last question, [`ConversationError::NotLastQuestion`] rather than an edit
    /// of a message the user never saw in the box.
    pub async fn edit(
        &self,
        conversation: &str,
        question: i64,
        ask: Ask,
    ) -> Result<Started, ConversationError> {
        let reservation = self.runs.reserve(conversation)?;
        let stored = self.store().get(conversation.to_owned()).await?;
        let (mut history, last) = self.last_question(conversation).await?;
        if history[last].id != question {
            return Err(ConversationError::NotLastQuestion);
        }
        let replace_from = Some(history[last].id);
        history.truncate(last);
        let request = chat_request(&stored.settings, &history, Some(&ask.text));
        let commit = Turn {
            replace_from,
            new_version: false,
            question: Some(ask.text),
        };
        self.begin(reservation, stored, history, request, commit)
            .await
    }

    /// Goes on with the last answer of `conversation`, which was cut off by its token limit,
    /// stopped or interrupted: the model gets the conversation with that answer as an open
    /// turn (without its end-of-turn markup, see [`ChatRequest::continue_final`]) and what it
    /// writes is added to the same stored message, which is `generating` again meanwhile and
    /// saved as any answer is.
    pub async fn continue_answer(&self, conversation: &str) -> Result<Started, ConversationError> {
        let reservation = self.runs.reserve(conversation)?;
        let stored = self.store().get(conversation.to_owned()).await?;
        let mut history = self.store().messages(conversation.to_owned()).await?;
        let mut answer = history
            .pop()
            .filter(continuable)
            .ok_or(ConversationError::Nothing("cut-off answer to continue"))?;
        // A cut inside a character left a replacement character: the model writes it again.
        answer.content = answer.content.trim_end_matches('\u{FFFD}').to_owned();
        if let Some(reasoning) = answer.reasoning.as_mut() {
            *reasoning = reasoning.trim_end_matches('\u{FFFD}').to_owned();
        }
        let thinking = thinking(&stored.settings);
        let mut request = chat_request(&stored.settings, &history, None);
        request.messages.push(ChatMessage::new(
            Role::Assistant,
            continued_text(&answer, thinking),
        ));
        request.continue_final = true;
        let request = offered_tools(&stored.settings, request);
        let generation = self.engine.generate(request).await?;
        let draft = self
            .store()
            .resume(
                conversation.to_owned(),
                answer.id,
                MessageUpdate {
                    content: answer.content.clone(),
                    reasoning: answer.reasoning.clone(),
                    tool_calls: Vec::new(),
                    status: MessageStatus::Generating,
                    finish_reason: None,
                    stats: answer.stats,
                },
            )
            .await?;
        let prefill = Prefill {
            content: answer.content,
            reasoning: answer.reasoning.unwrap_or_default(),
        };
        let run = reservation.start_continuing(generation, draft.id, thinking, prefill);
        Ok(Started {
            run,
            conversation: stored,
            history,
            question: None,
            draft,
        })
    }

    /// The prompt the next answer of a conversation with `settings` and `history` would be
    /// sent: its size and where truncation cuts it. Rendered as [`Self::send`] renders it
    /// (built-in tools included), so the meter shows what the model will read.
    pub async fn next_prompt(
        &self,
        settings: &ConversationSettings,
        history: &[StoredMessage],
    ) -> Result<NextPrompt, ConversationError> {
        let request = offered_tools(settings, chat_request(settings, history, None));
        if request.messages.is_empty() {
            return Ok(NextPrompt {
                tokens: 0,
                first_sent: None,
            });
        }
        let size = self
            .engine
            .off_runtime(move |codec| codec.measure(&request))
            .await?;
        let first_sent = match size.dropped {
            0 => None,
            dropped => history
                .iter()
                .filter(|m| usable(m))
                .nth(dropped)
                .map(|m| m.id),
        };
        Ok(NextPrompt {
            tokens: size.tokens,
            first_sent,
        })
    }

    /// Stops the answer being written in `conversation` and waits until it is saved as
    /// `stopped`. [`RunError::Unknown`] when none is being written.
    pub async fn stop(&self, conversation: &str) -> Result<(), ConversationError> {
        let run = self
            .runs
            .live(conversation)
            .ok_or_else(|| RunError::Unknown(conversation.to_owned()))?;
        // Finished between the lookup and here: nothing left to stop, and it is saved.
        let _ = run.stop();
        run.finished().await;
        Ok(())
    }

    /// The conversation's messages and the index of its last user message.
    pub async fn last_question(
        &self,
        conversation: &str,
    ) -> Result<(Vec<StoredMessage>, usize), ConversationError> {
        let history = self.store().messages(conversation.to_owned()).await?;
        let last = history
            .iter()
            .rposition(|m| m.role == Role::User)
            .ok_or(ConversationError::Nothing("message to answer again"))?;
        Ok((history, last))
    }

    /// Queues `request`, then commits the conversation's change, the question and the
    /// answer's draft, and starts the run over the draft.
    async fn begin(
        &self,
        reservation: super::runs::Reservation,
        conversation: Conversation,
        history: Vec<StoredMessage>,
        request: ChatRequest,
        commit: Turn,
    ) -> Result<Started, ConversationError> {
        let request = offered_tools(&conversation.settings, request);
        let tools = agent::builtin_tools_on(&conversation.settings)
            .then(|| ToolLoop::new(self.engine.clone(), request.clone()));
        let thinking = request.enable_thinking.unwrap_or(true);
        let generation = self.engine.generate(request).await?;
        let (question, draft) = self
            .store()
            .commit_turn(conversation.id.clone(), commit)
            .await?;
        let run = reservation.start_with_tools(generation, draft.id, thinking, tools);
        Ok(Started {
            run,
            conversation,
            history,
            question,
            draft,
        })
    }
}

/// `request` offering the built-in tools when the conversation has them on: what every
/// answer of it is sent, and what the meter measures.
fn offered_tools(settings: &ConversationSettings, request: ChatRequest) -> ChatRequest {
    if agent::builtin_tools_on(settings) {
        agent::with_builtin_tools(request)
    } else {
        request
    }
}

/// Whether `message` is an answer the model can go on with: the assistant's, without tool
/// calls, with text or reasoning, and ended early (the token limit, a stop, a server that
/// went down).
pub fn continuable(message: &StoredMessage) -> bool {
    let cut = match message.status {
        MessageStatus::Stopped | MessageStatus::Interrupted => true,
        MessageStatus::Complete => message.finish_reason.as_deref() == Some("length"),
        MessageStatus::Failed | MessageStatus::Generating => false,
    };
    let written = !message.content.trim().is_empty()
        || message
            .reasoning
            .as_deref()
            .is_some_and(|r| !r.trim().is_empty());
    cut && written && message.role == Role::Assistant && message.tool_calls.is_empty()
}

/// The text of a cut-off answer as the model wrote it, for it to go on from: with thinking
/// on, its reasoning in a think block first (left open when the answer had not begun).
fn continued_text(answer: &StoredMessage, thinking: bool) -> String {
    let reasoning = answer.reasoning.as_deref().unwrap_or("").trim();
    let content = answer.content.trim();
    match (thinking && !reasoning.is_empty(), content.is_empty()) {
        (false, _) => content.to_owned(),
        (true, true) => format!("<think>\n{reasoning}"),
        (true, false) => format!("<think>\n{reasoning}\n</think>\n{content}"),
    }
}

/// Whether a stored message goes back to the model: failed answers and empty leftovers
/// would only confuse it; a stopped or interrupted answer is what the user saw.
fn usable(message: &StoredMessage) -> bool {
    let finished = matches!(
        message.status,
        MessageStatus::Complete | MessageStatus::Stopped | MessageStatus::Interrupted
    );
    finished && !(message.content.is_empty() && message.tool_calls.is_empty())
}

/// The request for the model: the conversation's settings, its usable history, and `next`
/// (a new user message) when there is one; a regenerated answer has none, as its question is
/// already the last message of `history`. The one place a stored conversation becomes a
/// request, for every front end and for the page's context meter.
pub fn chat_request(
    settings: &ConversationSettings,
    history: &[StoredMessage],
    next: Option<&str>,
) -> ChatRequest {
    let mut messages = Vec::with_capacity(history.len() + 2);
    if let Some(system) = settings
        .system_prompt
        .as_deref()
        .filter(|s| !s.trim().is_empty())
    {
        messages.push(ChatMessage::new(Role::System, system));
    }
    for message in history.iter().filter(|m| usable(m)) {
        messages.push(ChatMessage {
            role: message.role,
            content: message.content.clone(),
            tool_calls: message.calls(),
        });
    }
    if let Some(text) = next {
        messages.push(ChatMessage::new(Role::User, text));
    }
    ChatRequest {
        messages,
        enable_thinking: Some(thinking(settings)),
        max_tokens: settings.max_tokens.map(|value| TokenLimit {
            field: "settings.max_tokens",
            value,
        }),
        sampling: settings.sampling(),
        thinking_budget: settings.thinking_budget,
        truncation: settings.truncation.unwrap_or_default(),
        ..ChatRequest::default()
    }
}

/// The conversation's thinking switch; SmolLM3 thinks unless told not to.
pub fn thinking(settings: &ConversationSettings) -> bool {
    settings.thinking.unwrap_or(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::events::GenerationEvent;
    use crate::services::runs::RunEvent;

    fn stored(role: Role, content: &str, status: MessageStatus) -> StoredMessage {
        StoredMessage::for_test(role, content, status)
    }

    #[test]
    fn requests_carry_settings_and_skip_failed_answers() {
        let settings = ConversationSettings {
            system_prompt: Some("Be brief.".into()),
            temperature: Some(0.2),
            thinking: Some(false),
            max_tokens: Some(9),
            ..ConversationSettings::default()
        };
        let history = [
            stored(Role::User, "hi", MessageStatus::Complete),
            stored(Role::Assistant, "broken", MessageStatus::Failed),
            stored(Role::Assistant, "", MessageStatus::Stopped),
            stored(Role::Assistant, "hello", MessageStatus::Interrupted),
            stored(Role::Assistant, "writing", MessageStatus::Generating),
        ];
        let request = chat_request(&settings, &history, Some("again"));
        let texts: Vec<&str> = request
            .messages
            .iter()
            .map(|m| m.content.as_str())
            .collect();
        assert_eq!(texts, ["Be brief.", "hi", "hello", "again"]);
        assert_eq!(request.enable_thinking, Some(false));
        assert_eq!(request.sampling.temperature, Some(0.2));
        assert_eq!(
            request.max_tokens,
            Some(TokenLimit {
                field: "settings.max_tokens",
                value: 9
            })
        );
    }

    async fn service(tokens_per_second: f64) -> (Conversations, String) {
        let (engine, runs, conversation) =
            crate::services::runs::tests::setup(tokens_per_second).await;
        (Conversations::new(engine, runs), conversation)
    }

    #[tokio::test]
    async fn the_question_and_a_draft_are_stored_before_the_answer_is_written() {
        let (service, conversation) = service(20.0).await;
        let started = service
            .send(&conversation, Ask::text("Hello"))
            .await
            .expect("started");
        let messages = service
            .store()
            .messages(conversation.clone())
            .await
            .expect("messages");
        assert_eq!(messages.len(), 2, "{messages:#?}");
        assert_eq!(Some(&messages[0]), started.question.as_ref());
        assert_eq!(messages[0].content, "Hello");
        assert_eq!(messages[1].id, started.draft.id);
        assert_eq!(messages[1].status, MessageStatus::Generating);
        assert!(matches!(
            service.send(&conversation, Ask::text("again")).await,
            Err(ConversationError::Run(RunError::Busy(_)))
        ));
        service.stop(&conversation).await.expect("stopped");
        let messages = service
            .store()
            .messages(conversation.clone())
            .await
            .expect("messages");
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[1].status, MessageStatus::Stopped);
        assert!(!service.is_busy(&conversation));
    }

    #[tokio::test]
    async fn regenerate_keeps_the_answer_as_a_version_and_edit_replaces_the_question() {
        let (service, conversation) = service(0.0).await;
        let first = service
            .send(&conversation, Ask::text("First"))
            .await
            .expect("sent");
        first.run.finished().await;
        let again = service
            .regenerate(&conversation)
            .await
            .expect("regenerated");
        assert!(again.question.is_none());
        assert_eq!(again.history.len(), 1, "the question only");
        again.run.finished().await;
        let messages = service.store().messages(conversation.clone()).await;
        let messages = messages.expect("messages");
        assert_eq!(messages.len(), 2, "{messages:#?}");
        assert_ne!(messages[1].id, first.draft.id, "the new answer is shown");
        assert_eq!(messages[1].status, MessageStatus::Complete);
        let versions = messages[0].versions.clone().expect("two versions");
        assert_eq!((versions.all, versions.selected), (vec![1, 2], 2));

        // The earlier version, selected, is what the model reads back.
        let store = service.store();
        store
            .select_version(conversation.clone(), messages[0].id, 1)
            .await
            .expect("selected");
        let shown = store
            .messages(conversation.clone())
            .await
            .expect("messages");
        assert_eq!(shown[1].id, first.draft.id, "the first answer again");
        let request = chat_request(&ConversationSettings::default(), &shown, Some("Next"));
        let sent: Vec<&str> = request
            .messages
            .iter()
            .map(|m| m.content.as_str())
            .collect();
        assert_eq!(sent, ["First", shown[1].content.as_str(), "Next"]);

        let stale = service
            .edit(&conversation, first.draft.id, Ask::text("Second"))
            .await;
        assert!(
            matches!(stale, Err(ConversationError::NotLastQuestion)),
            "an id that is not the last question's is refused"
        );
        assert!(!service.is_busy(&conversation), "the reservation is freed");
        let question = messages[0].id;
        let edited = service
            .edit(&conversation, question, Ask::text("Second"))
            .await
            .expect("edited");
        let mut log = edited.run.subscribe(0);
        let mut content = String::new();
        while let Some(entry) = log.next().await {
            if let RunEvent::Generation(GenerationEvent::Content(text)) = &entry.event {
                content.push_str(text);
            }
        }
        let messages = service.store().messages(conversation.clone()).await;
        let messages = messages.expect("messages");
        let texts: Vec<&str> = messages.iter().map(|m| m.content.as_str()).collect();
        assert_eq!(texts, ["Second", content.trim()]);
    }

    /// The stub's whole reply to "Hello", or with a thinking budget of `budget` tokens.
    async fn reply(service: &Conversations, budget: Option<usize>) -> crate::services::Reply {
        let request = ChatRequest {
            messages: vec![ChatMessage::new(Role::User, "Hello")],
            thinking_budget: budget,
            ..ChatRequest::default()
        };
        let generation = service.engine().generate(request).await.expect("queued");
        generation.collect().await.expect("a reply")
    }

    #[tokio::test]
    async fn a_spent_thinking_budget_closes_the_reasoning_and_the_answer_follows() {
        let (service, _) = service(0.0).await;
        let free = reply(&service, None).await;
        let budgeted = reply(&service, Some(3)).await;
        let free_reasoning = free.reasoning.unwrap_or_default();
        let reasoning = budgeted.reasoning.unwrap_or_default();
        assert!(!reasoning.trim().is_empty(), "three tokens of reasoning");
        assert!(
            reasoning.len() < free_reasoning.len() / 2,
            "{reasoning:?} / {free_reasoning:?}"
        );
        assert!(free_reasoning.starts_with(reasoning.trim_end()));
        assert_eq!(budgeted.content, free.content, "the answer is whole");
        assert!(
            budgeted.completion.usage.completion_tokens < free.completion.usage.completion_tokens
        );
        let none = reply(&service, Some(0)).await;
        assert!(none.reasoning.unwrap_or_default().trim().is_empty());
        assert_eq!(none.content, free.content);
    }

    #[tokio::test]
    async fn nothing_to_regenerate_in_an_empty_conversation() {
        let (service, conversation) = service(0.0).await;
        assert!(matches!(
            service.regenerate(&conversation).await,
            Err(ConversationError::Nothing(_))
        ));
        assert!(!service.is_busy(&conversation), "the reservation is freed");
        assert!(matches!(
            service.stop(&conversation).await,
            Err(ConversationError::Run(RunError::Unknown(_)))
        ));
    }

    async fn set(service: &Conversations, conversation: &str, settings: ConversationSettings) {
        let patch = crate::services::sessions::ConversationPatch {
            title: None,
            settings: Some(settings),
        };
        service
            .store()
            .update(conversation.to_owned(), patch)
            .await
            .expect("settings saved");
    }

    #[tokio::test]
    async fn the_next_prompt_counts_the_built_in_tools_as_sent() {
        let (service, conversation) = service(0.0).await;
        let started = service
            .send(&conversation, Ask::text("Hello"))
            .await
            .expect("sent");
        started.run.finished().await;
        let history = service.store().messages(conversation.clone()).await;
        let history = history.expect("messages");
        let plain = ConversationSettings::default();
        let tools = ConversationSettings {
            builtin_tools: Some(true),
            ..ConversationSettings::default()
        };
        let without = service
            .next_prompt(&plain, &history)
            .await
            .expect("measured");
        let with = service
            .next_prompt(&tools, &history)
            .await
            .expect("measured");
        let request = agent::with_builtin_tools(chat_request(&tools, &history, None));
        let sent = service
            .engine()
            .codec()
            .prepare(&request)
            .expect("prepared");
        assert_eq!(
            with.tokens,
            sent.prompt.len(),
            "the meter is the prompt sent"
        );
        assert!(with.tokens > without.tokens + 50, "{with:?} / {without:?}");
        assert_eq!(with.first_sent, None);
    }

    #[tokio::test]
    async fn continue_goes_on_with_the_same_stored_answer() {
        let (service, conversation) = service(0.0).await;
        set(
            &service,
            &conversation,
            ConversationSettings {
                thinking: Some(false),
                max_tokens: Some(12),
                ..ConversationSettings::default()
            },
        )
        .await;
        let first = service
            .send(&conversation, Ask::text("Hello"))
            .await
            .expect("sent");
        first.run.finished().await;
        let cut = service.store().messages(conversation.clone()).await;
        let cut = cut.expect("messages").pop().expect("the answer");
        assert_eq!(cut.finish_reason.as_deref(), Some("length"));
        assert!(continuable(&cut));
        let mut answer = cut.clone();
        for _ in 0..100 {
            let more = service
                .continue_answer(&conversation)
                .await
                .expect("continued");
            assert_eq!(more.draft.id, cut.id, "the same stored answer");
            more.run.finished().await;
            let messages = service.store().messages(conversation.clone()).await;
            let mut messages = messages.expect("messages");
            assert_eq!(messages.len(), 2, "{messages:#?}");
            let grown = messages.pop().expect("the answer");
            assert!(
                grown.content.len() > answer.content.len(),
                "{grown:?} after {answer:?}"
            );
            assert!(grown
                .content
                .starts_with(answer.content.trim_end_matches('\u{FFFD}')));
            answer = grown;
            if answer.finish_reason.as_deref() == Some("stop") {
                break;
            }
        }
        let whole = crate::services::stub::compose_reply(
            "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n",
        );
        assert_eq!(
            answer.content,
            whole.trim(),
            "the pieces make the whole answer"
        );
        assert!(!continuable(&answer), "a finished answer is not continued");
        assert!(matches!(
            service.continue_answer(&conversation).await,
            Err(ConversationError::Nothing(_))
        ));
    }

    #[tokio::test]
    async fn a_conversation_that_outgrew_the_context_is_cut_only_when_asked() {
        let context = 500;
        let engine = Engine::start(
            crate::services::BackendSpec::Stub(crate::services::stub::StubConfig {
                tokens_per_second: 0.0,
                context_length: context,
            }),
            4,
        )
        .await
        .expect("stub engine");
        let store = SessionStore::in_memory().expect("store");
        let settings = ConversationSettings {
            thinking: Some(false),
            max_tokens: Some(20),
            ..ConversationSettings::default()
        };
        let conversation = store.create(None, settings.clone()).await;
        let conversation = conversation.expect("conversation").id;
        let service = Conversations::new(engine, Runs::new(store));
        // Each exchange takes about a third of the context: the third one does not fit.
        let long = "a ".repeat(110);
        for n in 0..2 {
            let started = service
                .send(&conversation, Ask::text(format!("{n} {long}")))
                .await
                .expect("sent");
            started.run.finished().await;
        }
        let refused = service
            .send(&conversation, Ask::text(format!("2 {long}")))
            .await;
        assert!(
            matches!(
                refused,
                Err(ConversationError::Service(
                    ServiceError::PromptTooLong { .. }
                ))
            ),
            "{:?}",
            refused.err()
        );
        set(
            &service,
            &conversation,
            ConversationSettings {
                truncation: Some(super::super::truncation::Truncation::Auto),
                ..settings
            },
        )
        .await;
        let started = service
            .send(&conversation, Ask::text(format!("2 {long}")))
            .await
            .expect("sent with the oldest exchange left out");
        started.run.finished().await;
        let settings = service.store().get(conversation.clone()).await;
        let settings = settings.expect("conversation").settings;
        let history = service.store().messages(conversation.clone()).await;
        let history = history.expect("messages");
        let next = service
            .next_prompt(&settings, &history)
            .await
            .expect("measured");
        assert!(next.tokens < context, "{next:?}");
        let first = next.first_sent.expect("a cut");
        let at = history
            .iter()
            .position(|m| m.id == first)
            .expect("a stored id");
        assert_eq!(history[at].role, Role::User, "cut before a question");
        assert!(at >= 2, "at least the first exchange is left out");
    }
}
