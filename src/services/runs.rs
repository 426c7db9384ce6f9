//! Chat runs that belong to their conversation, not to the connection that started them.
//!
//! A [`Run`] is one answer being written into a conversation. Its task owns the engine's
//! [`GenerationStream`], so a client going away cancels nothing: the answer is written to
//! the end and saved. Every event goes into the run's log under an increasing id, and any
//! number of subscribers read that log — from the start, or after the last id they saw (SSE
//! `Last-Event-ID`) — so two tabs see the same answer and a reconnecting client misses
//! nothing and repeats nothing. Only [`Run::stop`] cancels, within a token.
//!
//! [`Runs`] is the registry: at most one live run per conversation (a second send is refused
//! with [`RunError::Busy`]), and a finished run's log is kept for [`FINISHED_RUN_KEPT`] so a
//! client that reconnects just after the end still gets it; the kept logs together hold at
//! most [`FINISHED_RUNS_MAX_BYTES`], the oldest forgotten early beyond that.
//!
//! A run writes its answer into a draft row that the caller stored (`generating`): saved
//! as it grows, at least every [`DRAFT_SAVE_INTERVAL`] or [`DRAFT_SAVE_TOKENS`], and once
//! more at the end as `complete`, `stopped` or `failed`, before the end is logged.
//!
//! The run task's body, [`drive`], loops over rounds of generation on one log: with a
//! [`ToolLoop`] (the conversation's built-in tools on), a round that ends calling only
//! built-in tools has its call stored, the tools run, one tool message stored per call and
//! logged as [`RunEvent::ToolResult`], and the next round generated on the same log — at
//! most the loop's maximum of rounds of calls (see [`super::agent`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rand::distr::{Alphanumeric, SampleString};
use tokio::sync::{watch, Notify};

use super::agent::{self, ToolLoop, ToolResult};
use super::chat::ChatCodec;
use super::engine::GenerationStream;
use super::error::ServiceError;
use super::events::{Completion, FinishReason, GenerationEvent};
use super::sessions::{
    MessageStats, MessageStatus, MessageUpdate, SessionStore, StoredMessage, StoredToolCall,
};

/// How long a finished run's log stays readable: a reconnecting browser retries within a
/// few seconds, and a minute of a finished answer's events costs little memory.
pub const FINISHED_RUN_KEPT: Duration = Duration::from_secs(60);

/// Most bytes the logs of finished runs hold together while they are kept: fast answers
/// ending many at a time (a stub, a small model, a script) would otherwise keep a minute of
/// every answer's events, unbounded. Past it the oldest finished logs are forgotten early;
/// their answers are stored, so a late reader loads them from the conversation instead.
pub const FINISHED_RUNS_MAX_BYTES: usize = 64 << 20;

/// How often a run saves its growing draft: a crash loses at most about a second of text.
pub const DRAFT_SAVE_INTERVAL: Duration = Duration::from_secs(1);

/// Pieces of text (about tokens) after which a run saves its draft even within the second:
/// a fast model loses at most this much, and a save (one UPDATE in its own transaction)
/// still comes at most every 32 tokens, far below what the store can write.
pub const DRAFT_SAVE_TOKENS: usize = 32;

/// Why a run could not be started, found or stopped.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RunError {
    #[error("an answer is still being written in conversation `{0}`; wait for it or stop it")]
    Busy(String),
    #[error("there is no answer `{0}` (finished a while ago, or never started)")]
    Unknown(String),
    #[error("the answer `{0}` is already finished")]
    Finished(String),
}

/// One entry of a run's log.
#[derive(Debug, Clone, PartialEq)]
pub enum RunEvent {
    /// An event of the generation, as the engine sent it. `Done` and `Failed` end a round;
    /// they are logged only once the answer is saved, so a client that sees the end finds
    /// the answer in the conversation.
    Generation(GenerationEvent),
    /// A built-in tool answered a call of the answer; its tool message is stored.
    ToolResult(ToolResult),
    /// A round's reasoning ended (the answer or a call began, or the round ended): how long
    /// it took and its tokens, the numbers stored with the round's answer. Logged only for
    /// a round that reasoned, before the event that ended the reasoning.
    Thought(Thought),
    /// A round's answer is saved with these stats (every round's, the last included, before
    /// the run's ending), so a reader sums a tool turn as a reload of it does.
    Round(MessageStats),
    /// The run was stopped; what was written is saved as `stopped`.
    Stopped,
    /// The answer as stored; the last entry of the log. After rounds of tool calls it is
    /// the last assistant message stored.
    Saved(Result<StoredMessage, String>),
}

/// The reasoning of one round, once it ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thought {
    /// From the round's first token to the end of its reasoning.
    pub ms: f64,
    pub tokens: i64,
}

/// A logged event with its id (from 1, consecutive) and when the run received it, so a
/// late subscriber can show the same timings as one that watched live.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub id: u64,
    pub at: Instant,
    pub event: RunEvent,
}

#[derive(Default)]
struct Log {
    entries: Vec<Arc<Entry>>,
    closed: bool,
}

/// One answer being written into a conversation.
pub struct Run {
    id: String,
    conversation: String,
    started_at: Instant,
    thinking: bool,
    log: Mutex<Log>,
    /// The number of entries, bumped on every append and on close, to wake subscribers.
    changed: watch::Sender<u64>,
    stop: Notify,
    /// Set by [`Run::stop`], so a stop between two rounds (while tools run) is seen too.
    stopping: AtomicBool,
    /// The run executes built-in tool calls (its conversation has them on).
    runs_tools: bool,
}

impl Run {
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn conversation(&self) -> &str {
        &self.conversation
    }

    /// When the run was started (the message was sent).
    pub fn started_at(&self) -> Instant {
        self.started_at
    }

    /// The prompt left thinking on, so the answer may open with reasoning.
    pub fn thinking(&self) -> bool {
        self.thinking
    }

    fn log(&self) -> MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The run executes the model's built-in tool calls, so their cards get results.
    pub fn runs_tools(&self) -> bool {
        self.runs_tools
    }

    /// The run has logged its last entry.
    pub fn is_finished(&self) -> bool {
        self.log().closed
    }

    /// Asks the run to stop; it saves what was written as `stopped`. Refused once finished.
    pub fn stop(&self) -> Result<(), RunError> {
        if self.is_finished() {
            return Err(RunError::Finished(self.id.clone()));
        }
        self.stopping.store(true, Ordering::SeqCst);
        self.stop.notify_one();
        Ok(())
    }

    /// Waits until the run has logged its last entry (its answer saved).
    pub async fn finished(&self) {
        let mut changed = self.changed.subscribe();
        while !self.is_finished() {
            if changed.changed().await.is_err() {
                return;
            }
        }
    }

    /// The log's entries after id `after` (0 for all), then each new one as it comes; the
    /// subscription ends after the last entry.
    pub fn subscribe(self: &Arc<Self>, after: u64) -> Subscription {
        Subscription {
            run: Arc::clone(self),
            changed: self.changed.subscribe(),
            next: usize::try_from(after).unwrap_or(usize::MAX),
        }
    }

    /// Logs `event`; returns when it was logged.
    fn publish(&self, event: RunEvent) -> Instant {
        let at = Instant::now();
        let count = {
            let mut log = self.log();
            if log.closed {
                return at;
            }
            let id = log.entries.len() as u64 + 1;
            log.entries.push(Arc::new(Entry { id, at, event }));
            id
        };
        self.changed.send_replace(count);
        at
    }

    /// About how much memory the log holds: its entries and the text they carry.
    fn log_bytes(&self) -> usize {
        let per_entry = std::mem::size_of::<Entry>() + 2 * std::mem::size_of::<usize>();
        let log = self.log();
        let text: usize = log.entries.iter().map(|e| event_bytes(&e.event)).sum();
        log.entries.capacity() * std::mem::size_of::<Arc<Entry>>()
            + log.entries.len() * per_entry
            + text
    }

    fn close(&self) {
        let count = {
            let mut log = self.log();
            log.closed = true;
            log.entries.len() as u64
        };
        // A distinct value, so subscribers waiting on `changed` wake even with no new entry.
        self.changed.send_replace(count + 1);
    }
}

/// The heap bytes an event carries beyond its own size.
fn event_bytes(event: &RunEvent) -> usize {
    match event {
        RunEvent::Generation(GenerationEvent::Reasoning(text))
        | RunEvent::Generation(GenerationEvent::Content(text))
        | RunEvent::Generation(GenerationEvent::Failed(text)) => text.capacity(),
        RunEvent::Generation(GenerationEvent::ToolCall(call)) => {
            call.name.len() + call.arguments.to_string().len()
        }
        RunEvent::Generation(GenerationEvent::Progress(_) | GenerationEvent::Done(_))
        | RunEvent::Stopped
        | RunEvent::Thought(_)
        | RunEvent::Round(_) => 0,
        RunEvent::ToolResult(result) => {
            result.call_id.len() + result.name.len() + result.content.len()
        }
        RunEvent::Saved(Ok(message)) => {
            message.content.len() + message.reasoning.as_ref().map_or(0, String::len)
        }
        RunEvent::Saved(Err(message)) => message.len(),
    }
}

/// One reader of a run's log.
pub struct Subscription {
    run: Arc<Run>,
    changed: watch::Receiver<u64>,
    /// Index of the next entry to return (entry ids are index + 1).
    next: usize,
}

impl Subscription {
    /// The next entry; `None` after the last one.
    pub async fn next(&mut self) -> Option<Arc<Entry>> {
        loop {
            {
                let log = self.run.log();
                if let Some(entry) = log.entries.get(self.next) {
                    self.next += 1;
                    return Some(Arc::clone(entry));
                }
                if log.closed {
                    return None;
                }
                // Marked seen under the lock: an append after this wakes `changed` below.
                self.changed.borrow_and_update();
            }
            if self.changed.changed().await.is_err() {
                return None;
            }
        }
    }
}

#[derive(Default)]
struct Registry {
    /// Every run still readable, live or kept after its end, by run id.
    runs: HashMap<String, Arc<Run>>,
    /// The run id holding each busy conversation (reserved or running).
    busy: HashMap<String, String>,
    /// The finished runs still kept, oldest first, with their logs' bytes.
    finished: std::collections::VecDeque<(String, usize)>,
    /// The sum of `finished`'s bytes.
    finished_bytes: usize,
}

/// The runs of one conversation store. Cheap to clone; clones share the registry.
#[derive(Clone)]
pub struct Runs {
    store: SessionStore,
    registry: Arc<Mutex<Registry>>,
    keep: Duration,
    /// Most bytes the kept finished logs hold together ([`FINISHED_RUNS_MAX_BYTES`]).
    kept_bytes: usize,
    /// Counts the tokens of an answer's reasoning; without it, its pieces are counted.
    codec: Option<Arc<ChatCodec>>,
}

impl Runs {
    /// Runs saving into `store`, keeping finished runs readable for [`FINISHED_RUN_KEPT`].
    pub fn new(store: SessionStore) -> Self {
        Self::keeping(store, FINISHED_RUN_KEPT)
    }

    /// Runs keeping finished runs readable for `keep` (short in tests).
    pub fn keeping(store: SessionStore, keep: Duration) -> Self {
        Self {
            store,
            registry: Arc::default(),
            keep,
            kept_bytes: FINISHED_RUNS_MAX_BYTES,
            codec: None,
        }
    }

    /// The same runs counting reasoning tokens with the model's tokenizer.
    pub fn counting_with(mut self, codec: Arc<ChatCodec>) -> Self {
        self.codec = Some(codec);
        self
    }

    /// The same runs keeping at most `bytes` of finished logs together (small in tests).
    pub fn with_kept_bytes(mut self, bytes: usize) -> Self {
        self.kept_bytes = bytes;
        self
    }

    pub fn store(&self) -> &SessionStore {
        &self.store
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Holds `conversation` for a new run, so no second one starts while the first is
    /// prepared; dropping the reservation without starting frees it.
    pub fn reserve(&self, conversation: &str) -> Result<Reservation, RunError> {
        let mut registry = self.registry();
        if registry.busy.contains_key(conversation) {
            return Err(RunError::Busy(conversation.to_owned()));
        }
        let id = format!("run_{}", Alphanumeric.sample_string(&mut rand::rng(), 24));
        registry.busy.insert(conversation.to_owned(), id.clone());
        Ok(Reservation {
            runs: self.clone(),
            id,
            conversation: conversation.to_owned(),
            started_at: Instant::now(),
            started: false,
        })
    }

    /// A readable run (live, or finished within [`FINISHED_RUN_KEPT`]).
    pub fn get(&self, id: &str) -> Result<Arc<Run>, RunError> {
        self.registry()
            .runs
            .get(id)
            .cloned()
            .ok_or_else(|| RunError::Unknown(id.to_owned()))
    }

    /// The conversation has a run being prepared or written.
    pub fn is_busy(&self, conversation: &str) -> bool {
        self.registry().busy.contains_key(conversation)
    }

    /// The run writing into `conversation` now, if any.
    pub fn live(&self, conversation: &str) -> Option<Arc<Run>> {
        let registry = self.registry();
        let id = registry.busy.get(conversation)?;
        registry
            .runs
            .get(id)
            .filter(|run| !run.is_finished())
            .cloned()
    }

    /// The runs still writing.
    pub fn unfinished(&self) -> Vec<Arc<Run>> {
        self.registry()
            .runs
            .values()
            .filter(|run| !run.is_finished())
            .cloned()
            .collect()
    }

    /// For a shutdown: lets the running answers finish for up to `grace`, then stops the
    /// rest, which saves each as `stopped`, and waits for those saves. Returns how many had
    /// to be stopped.
    pub async fn finish_all(&self, grace: Duration) -> usize {
        let all_done = async {
            for run in self.unfinished() {
                run.finished().await;
            }
        };
        if tokio::time::timeout(grace, all_done).await.is_ok() {
            return 0;
        }
        let left = self.unfinished();
        for run in &left {
            let _ = run.stop();
        }
        for run in &left {
            run.finished().await;
        }
        left.len()
    }

    /// Frees the conversation of run `id` (if it still holds it).
    fn release(&self, conversation: &str, id: &str) {
        let mut registry = self.registry();
        if registry.busy.get(conversation).map(String::as_str) == Some(id) {
            registry.busy.remove(conversation);
        }
    }

    /// Keeps the finished `run` readable, forgetting the oldest finished runs while the
    /// kept logs hold more than [`Self::with_kept_bytes`] (the newest too, if it alone does).
    fn keep_finished(&self, run: &Run) {
        let bytes = run.log_bytes();
        let mut registry = self.registry();
        registry.finished.push_back((run.id.clone(), bytes));
        registry.finished_bytes += bytes;
        while registry.finished_bytes > self.kept_bytes {
            let Some((id, bytes)) = registry.finished.pop_front() else {
                break;
            };
            registry.finished_bytes -= bytes;
            registry.runs.remove(&id);
        }
    }

    fn forget(&self, id: &str) {
        let mut registry = self.registry();
        registry.runs.remove(id);
        if let Some(at) = registry.finished.iter().position(|(kept, _)| kept == id) {
            if let Some((_, bytes)) = registry.finished.remove(at) {
                registry.finished_bytes -= bytes;
            }
        }
    }
}

/// A conversation held for a run about to start.
pub struct Reservation {
    runs: Runs,
    id: String,
    conversation: String,
    started_at: Instant,
    started: bool,
}

impl Reservation {
    /// The id the run will have.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Starts the run over `generation` in a task of its own, writing the answer into the
    /// stored message `draft` (a `generating` row); `thinking` says the prompt left
    /// thinking on.
    pub fn start(self, generation: GenerationStream, draft: i64, thinking: bool) -> Arc<Run> {
        self.start_with_tools(generation, draft, thinking, None)
    }

    /// [`Reservation::start`] for a generation that goes on with the answer already in
    /// `draft`: `prefill` (what it holds) opens the run's log, so whoever streams the run sees
    /// the whole answer, and the new text is added to it when saved.
    pub fn start_continuing(
        self,
        generation: GenerationStream,
        draft: i64,
        thinking: bool,
        prefill: Prefill,
    ) -> Arc<Run> {
        self.launch(generation, draft, thinking, None, prefill)
    }

    /// [`Reservation::start`] that, with `tools`, runs the built-in tool calls of each round
    /// and generates again (`generation` must be the loop's first request, submitted).
    pub fn start_with_tools(
        self,
        generation: GenerationStream,
        draft: i64,
        thinking: bool,
        tools: Option<ToolLoop>,
    ) -> Arc<Run> {
        self.launch(generation, draft, thinking, tools, Prefill::default())
    }

    fn launch(
        mut self,
        generation: GenerationStream,
        draft: i64,
        thinking: bool,
        tools: Option<ToolLoop>,
        prefill: Prefill,
    ) -> Arc<Run> {
        let (changed, _) = watch::channel(0);
        let run = Arc::new(Run {
            id: self.id.clone(),
            conversation: self.conversation.clone(),
            started_at: self.started_at,
            thinking,
            log: Mutex::default(),
            changed,
            stop: Notify::new(),
            stopping: AtomicBool::new(false),
            runs_tools: tools.is_some(),
        });
        self.runs
            .registry()
            .runs
            .insert(self.id.clone(), Arc::clone(&run));
        self.started = true;
        tokio::spawn(drive(
            self.runs.clone(),
            Arc::clone(&run),
            generation,
            draft,
            tools,
            prefill,
        ));
        run
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.started {
            self.runs.release(&self.conversation, &self.id);
        }
    }
}

/// The answer a continued run goes on from, as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Prefill {
    pub content: String,
    pub reasoning: String,
}

/// The answer of one round as it grows.
#[derive(Default)]
struct Answer {
    content: String,
    reasoning: String,
    /// Pieces of reasoning received: its token count when no tokenizer is at hand.
    reasoning_pieces: usize,
    /// Each call with its id, given once, so it stays the same across saves.
    calls: Vec<StoredToolCall>,
    /// When the round's first token came, and how long after the round started.
    first_token: Option<(Instant, f64)>,
    /// The reasoning is over (or there was none before the answer began).
    thought_over: bool,
    thought: Option<Thought>,
}

impl Answer {
    /// Notes the time of a token-bearing `event` received at `at`, in a round started at
    /// `started`; returns the round's [`Thought`] when `event` ends its reasoning.
    fn clock(
        &mut self,
        event: Option<&GenerationEvent>,
        started: Instant,
        at: Instant,
        codec: Option<&ChatCodec>,
    ) -> Option<Thought> {
        if matches!(event, Some(GenerationEvent::Progress(_))) {
            return None;
        }
        let first = match (self.first_token, event) {
            (Some((first, _)), _) => first,
            (None, Some(_)) => {
                let ms = at.duration_since(started).as_secs_f64() * 1000.0;
                self.first_token = Some((at, ms));
                at
            }
            // Ended before any token: nothing to time.
            (None, None) => return None,
        };
        if matches!(event, Some(GenerationEvent::Reasoning(_))) || self.thought_over {
            return None;
        }
        self.thought_over = true;
        let reasoning = self.reasoning.trim();
        if reasoning.is_empty() {
            return None;
        }
        let tokens = codec
            .and_then(|codec| codec.tokenize(reasoning, false, false).ok())
            .map_or(self.reasoning_pieces, |ids| ids.len());
        let thought = Thought {
            ms: at.duration_since(first).as_secs_f64() * 1000.0,
            tokens: i64::try_from(tokens).unwrap_or(i64::MAX),
        };
        self.thought = Some(thought);
        Some(thought)
    }

    fn take(&mut self, event: &GenerationEvent) {
        match event {
            GenerationEvent::Reasoning(text) => {
                self.reasoning.push_str(text);
                self.reasoning_pieces += 1;
            }
            GenerationEvent::Content(text) => self.content.push_str(text),
            GenerationEvent::ToolCall(call) => self.calls.push(StoredToolCall::new(call.clone())),
            GenerationEvent::Progress(_)
            | GenerationEvent::Done(_)
            | GenerationEvent::Failed(_) => {}
        }
    }

    fn update(&self, outcome: &Outcome) -> MessageUpdate {
        MessageUpdate {
            content: self.content.trim().to_owned(),
            reasoning: Some(self.reasoning.trim().to_owned()).filter(|r| !r.is_empty()),
            tool_calls: self.calls.clone(),
            status: outcome.status,
            finish_reason: outcome.finish_reason.clone(),
            stats: MessageStats {
                first_token_ms: self.first_token.map(|(_, ms)| ms),
                reasoning_ms: self.thought.map(|t| t.ms),
                reasoning_tokens: self.thought.map(|t| t.tokens),
                ..outcome.stats
            },
        }
    }
}

/// How a round ended.
enum Ending {
    Done(Completion),
    Failed(String),
    Stopped,
}

/// How an answer ended, as the store keeps it.
struct Outcome {
    status: MessageStatus,
    finish_reason: Option<String>,
    stats: MessageStats,
}

impl Outcome {
    const GENERATING: Self = Self {
        status: MessageStatus::Generating,
        finish_reason: None,
        stats: MessageStats {
            prompt_tokens: None,
            completion_tokens: None,
            prompt_ms: None,
            generation_ms: None,
            first_token_ms: None,
            reasoning_ms: None,
            reasoning_tokens: None,
        },
    };

    fn of(ending: &Ending) -> Self {
        match ending {
            Ending::Done(done) => Self {
                status: MessageStatus::Complete,
                finish_reason: Some(done.finish_reason.as_str().to_owned()),
                stats: MessageStats::from(done),
            },
            Ending::Failed(_) => Self {
                status: MessageStatus::Failed,
                ..Self::GENERATING
            },
            Ending::Stopped => Self {
                status: MessageStatus::Stopped,
                ..Self::GENERATING
            },
        }
    }
}

/// The run's task: generates, saves the answer, logs the end, frees the conversation, and
/// keeps the log readable a while. With `tools`, rounds go on while [`next_round`] says so.
async fn drive(
    runs: Runs,
    run: Arc<Run>,
    mut generation: GenerationStream,
    mut draft: i64,
    mut tools: Option<ToolLoop>,
    prefill: Prefill,
) {
    let mut started = run.started_at;
    let mut first = Some(prefill);
    let (ending, saved) = loop {
        let mut answer = Answer::default();
        let prefill = first.take().unwrap_or_default();
        for event in [
            GenerationEvent::Reasoning(prefill.reasoning),
            GenerationEvent::Content(prefill.content),
        ] {
            if !matches!(&event, GenerationEvent::Reasoning(t) | GenerationEvent::Content(t) if t.is_empty())
            {
                answer.take(&event);
                run.publish(RunEvent::Generation(event));
            }
        }
        let ending = round(&runs, &run, generation, (draft, started), &mut answer).await;
        let outcome = Outcome::of(&ending);
        let saved = save(&runs.store, draft, &answer, &outcome).await;
        run.publish(RunEvent::Round(answer.update(&outcome).stats));
        let Some(tool_loop) = tools.as_mut() else {
            break (ending, saved);
        };
        match next_round(&runs.store, &run, tool_loop, &ending, &saved, &answer).await {
            Next::End => break (ending, saved),
            Next::EndAs(ending) => break (ending, saved),
            Next::Round(next, next_draft) => {
                generation = next;
                draft = next_draft;
                started = Instant::now();
            }
        }
    };
    // Freed before the end is logged: whoever sees the end can send the next message.
    runs.release(&run.conversation, &run.id);
    run.publish(match ending {
        Ending::Done(done) => RunEvent::Generation(GenerationEvent::Done(done)),
        Ending::Failed(message) => RunEvent::Generation(GenerationEvent::Failed(message)),
        Ending::Stopped => RunEvent::Stopped,
    });
    run.publish(RunEvent::Saved(saved));
    run.close();
    runs.keep_finished(&run);
    tokio::time::sleep(runs.keep).await;
    runs.forget(&run.id);
}

/// What follows a round of a run with built-in tools.
enum Next {
    /// The round's ending is the run's.
    End,
    /// The run ends this way after the round's calls were answered (stopped, or the next
    /// round could not start); every stored call has its result.
    EndAs(Ending),
    /// The next round, and the draft it writes its answer into.
    Round(GenerationStream, i64),
}

/// After a round that ended calling only built-in tools, with tools offered and its call
/// saved: runs the calls, stores and logs one tool message per call, and submits the next
/// round. A stop while the tools run ends the run after their results are stored, so no
/// stored call lacks its result.
async fn next_round(
    store: &SessionStore,
    run: &Run,
    tools: &mut ToolLoop,
    ending: &Ending,
    saved: &Result<StoredMessage, String>,
    answer: &Answer,
) -> Next {
    let called =
        matches!(ending, Ending::Done(done) if done.finish_reason == FinishReason::ToolCalls);
    let call_saved = saved.is_ok();
    if !called || !call_saved || !tools.offered() || !agent::runs_calls(&answer.calls) {
        return Next::End;
    }
    let stored = agent::answer_calls(store, &run.conversation, &answer.calls, |result| {
        run.publish(RunEvent::ToolResult(result));
    })
    .await;
    let results = match stored {
        Ok(results) => results,
        Err(message) => return Next::EndAs(Ending::Failed(message)),
    };
    if run.stopping.load(Ordering::SeqCst) {
        return Next::EndAs(Ending::Stopped);
    }
    let generation = match tools
        .next_round(&answer.content, &answer.calls, &results)
        .await
    {
        Ok(generation) => generation,
        Err(err) => return Next::EndAs(Ending::Failed(err.to_string())),
    };
    // Each round's answer gets its own draft, after the tool messages it answers.
    match agent::next_draft(store, &run.conversation).await {
        Ok(draft) => Next::Round(generation, draft),
        Err(message) => Next::EndAs(Ending::Failed(message)),
    }
}

/// One generation, logged as it comes, until it ends or the run is stopped (the stream is
/// dropped then, which stops the engine within a token). The draft is saved as the answer
/// grows (see [`DraftSaves`]); the last of those saves is done before this returns, so the
/// final save comes after it. `(draft, started)`: the row the round writes and when the
/// round was asked for, which its time to first token counts from.
async fn round(
    runs: &Runs,
    run: &Run,
    mut generation: GenerationStream,
    (draft, started): (i64, Instant),
    answer: &mut Answer,
) -> Ending {
    let codec = runs.codec.as_deref();
    let mut saves = DraftSaves::new(runs.store.clone(), draft);
    let ending = loop {
        let event = tokio::select! {
            biased;
            () = run.stop.notified() => break Ending::Stopped,
            event = generation.next() => event,
        };
        let event = match event {
            None => break Ending::Failed(ServiceError::EngineStopped.to_string()),
            Some(GenerationEvent::Done(done)) => break Ending::Done(done),
            Some(GenerationEvent::Failed(message)) => break Ending::Failed(message),
            Some(event) => event,
        };
        if let Some(thought) = answer.clock(Some(&event), started, Instant::now(), codec) {
            run.publish(RunEvent::Thought(thought));
        }
        answer.take(&event);
        let grew = !matches!(event, GenerationEvent::Progress(_));
        run.publish(RunEvent::Generation(event));
        if grew {
            saves.grew(answer);
        }
    };
    // The round ended while the model still reasoned (stopped, cut off, failed).
    if let Some(thought) = answer.clock(None, started, Instant::now(), codec) {
        run.publish(RunEvent::Thought(thought));
    }
    saves.settle().await;
    ending
}

/// The growing answer's saves: after [`DRAFT_SAVE_INTERVAL`] or [`DRAFT_SAVE_TOKENS`]
/// pieces, whichever comes first, each one UPDATE in its own transaction. They run beside
/// the run, one at a time, so a slow disk (every commit is synced) delays the draft, never
/// the answer's events; a save that falls due while one is in flight is made at the next
/// piece after it.
struct DraftSaves {
    store: SessionStore,
    draft: i64,
    in_flight: Option<tokio::task::JoinHandle<()>>,
    last: Instant,
    unsaved: usize,
}

impl DraftSaves {
    fn new(store: SessionStore, draft: i64) -> Self {
        Self {
            store,
            draft,
            in_flight: None,
            last: Instant::now(),
            unsaved: 0,
        }
    }

    /// The answer grew by a piece; saves it when a save is due and none is in flight.
    fn grew(&mut self, answer: &Answer) {
        self.unsaved += 1;
        let due = self.unsaved >= DRAFT_SAVE_TOKENS || self.last.elapsed() >= DRAFT_SAVE_INTERVAL;
        let busy = self
            .in_flight
            .as_ref()
            .is_some_and(|save| !save.is_finished());
        if !due || busy {
            return;
        }
        self.last = Instant::now();
        self.unsaved = 0;
        let (store, draft) = (self.store.clone(), self.draft);
        let partial = answer.update(&Outcome::GENERATING);
        self.in_flight = Some(tokio::spawn(async move {
            if let Err(err) = store.update_message(draft, partial).await {
                tracing::warn!("saving a partial answer failed: {err}");
            }
        }));
    }

    /// Waits for the save in flight, if any.
    async fn settle(self) {
        if let Some(save) = self.in_flight {
            if let Err(err) = save.await {
                tracing::warn!("saving a partial answer failed: {err}");
            }
        }
    }
}

/// Saves the finished answer into its draft, with how it ended.
async fn save(
    store: &SessionStore,
    draft: i64,
    answer: &Answer,
    outcome: &Outcome,
) -> Result<StoredMessage, String> {
    let saved = store.update_message(draft, answer.update(outcome)).await;
    saved.map_err(|err| {
        tracing::error!("an answer could not be saved: {err}");
        err.to_string()
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::services::chat::{ChatMessage, ChatRequest, Role};
    use crate::services::sessions::NewMessage;
    use crate::services::stub::StubConfig;
    use crate::services::{BackendSpec, Engine};

    /// The stub engine at `tokens_per_second`, runs over an in-memory store, and an empty
    /// conversation in it (shared with the agent loop's tests).
    pub(crate) async fn setup(tokens_per_second: f64) -> (Engine, Runs, String) {
        let engine = Engine::start(
            BackendSpec::Stub(StubConfig {
                tokens_per_second,
                ..StubConfig::default()
            }),
            4,
        )
        .await
        .expect("stub engine");
        let store = SessionStore::in_memory().expect("store");
        let conversation = store
            .create(None, Default::default())
            .await
            .expect("conversation")
            .id;
        (
            engine,
            Runs::keeping(store, Duration::from_secs(5)),
            conversation,
        )
    }

    fn generation(engine: &Engine) -> GenerationStream {
        let request = ChatRequest {
            messages: vec![ChatMessage::new(Role::User, "Hello")],
            ..ChatRequest::default()
        };
        let prepared = engine.codec().prepare(&request).expect("prepare");
        engine.submit(prepared).expect("submit")
    }

    /// An empty `generating` answer in `conversation`, for a run to write into.
    /// A whole answer run to its end and filed among the finished runs.
    async fn finished_and_filed(engine: &Engine, runs: &Runs, conversation: &str) -> Arc<Run> {
        let run = runs.reserve(conversation).expect("free").start(
            generation(engine),
            draft(runs, conversation).await,
            true,
        );
        run.finished().await;
        while runs
            .registry()
            .finished
            .iter()
            .all(|(id, _)| id != run.id())
        {
            tokio::task::yield_now().await;
        }
        run
    }

    pub(crate) async fn draft(runs: &Runs, conversation: &str) -> i64 {
        let draft = NewMessage {
            status: MessageStatus::Generating,
            ..NewMessage::text(Role::Assistant, "")
        };
        let stored = runs.store().append(conversation.to_owned(), draft).await;
        stored.expect("draft").id
    }

    async fn all(mut subscription: Subscription) -> Vec<Arc<Entry>> {
        let mut out = Vec::new();
        while let Some(entry) = subscription.next().await {
            out.push(entry);
        }
        out
    }

    #[tokio::test]
    async fn subscribers_read_the_same_consecutive_log_and_resume_after_an_id() {
        let (engine, runs, conversation) = setup(400.0).await;
        let run = runs.reserve(&conversation).expect("free").start(
            generation(&engine),
            draft(&runs, &conversation).await,
            true,
        );
        let early = tokio::spawn(all(run.subscribe(0)));
        let mut partial = run.subscribe(0);
        let mut seen = Vec::new();
        for _ in 0..5 {
            seen.push(partial.next().await.expect("entry"));
        }
        drop(partial);
        let rest = all(run.subscribe(seen.last().expect("seen").id)).await;
        let full = early.await.expect("task");
        let ids: Vec<u64> = full.iter().map(|e| e.id).collect();
        assert_eq!(ids, (1..=full.len() as u64).collect::<Vec<_>>());
        seen.extend(rest);
        assert_eq!(seen, full, "resumed without gaps or repeats");
        assert!(matches!(
            full.last().map(|e| &e.event),
            Some(RunEvent::Saved(Ok(_)))
        ));
        assert!(!runs.is_busy(&conversation));
        let late = all(run.subscribe(0)).await;
        assert_eq!(late, full, "a finished run is still readable");
    }

    #[tokio::test]
    async fn the_reasoning_and_the_first_token_are_timed_and_stored_as_logged() {
        let (engine, runs, conversation) = setup(400.0).await;
        let run = runs.reserve(&conversation).expect("free").start(
            generation(&engine),
            draft(&runs, &conversation).await,
            true,
        );
        let log: Vec<RunEvent> = all(run.subscribe(0))
            .await
            .iter()
            .map(|e| e.event.clone())
            .collect();
        let at = |wanted: fn(&RunEvent) -> bool| log.iter().position(wanted).expect("logged");
        let thought = at(|e| matches!(e, RunEvent::Thought(_)));
        let reasoning = at(|e| matches!(e, RunEvent::Generation(GenerationEvent::Reasoning(_))));
        let content = at(|e| matches!(e, RunEvent::Generation(GenerationEvent::Content(_))));
        assert!(reasoning < thought && thought < content, "{log:?}");
        let thoughts = log
            .iter()
            .filter(|e| matches!(e, RunEvent::Thought(_)))
            .count();
        assert_eq!(thoughts, 1);
        let RunEvent::Thought(thought) = log[thought] else {
            unreachable!()
        };
        let Some(RunEvent::Round(round)) = log.iter().find(|e| matches!(e, RunEvent::Round(_)))
        else {
            panic!("no round stats: {log:?}");
        };
        let Some(RunEvent::Saved(Ok(saved))) = log.last() else {
            panic!("not saved: {log:?}");
        };
        assert_eq!(&saved.stats, round, "the log's numbers are the stored ones");
        assert_eq!(saved.stats.reasoning_ms, Some(thought.ms));
        assert_eq!(saved.stats.reasoning_tokens, Some(thought.tokens));
        assert!(thought.tokens > 0 && thought.ms > 0.0, "{thought:?}");
        assert!(saved.stats.first_token_ms.is_some_and(|ms| ms > 0.0));
    }

    #[tokio::test]
    async fn an_answer_without_reasoning_logs_no_thought() {
        let (engine, runs, conversation) = setup(0.0).await;
        let request = ChatRequest {
            messages: vec![ChatMessage::new(Role::User, "Hello")],
            enable_thinking: Some(false),
            ..ChatRequest::default()
        };
        let prepared = engine.codec().prepare(&request).expect("prepare");
        let run = runs.reserve(&conversation).expect("free").start(
            engine.submit(prepared).expect("submit"),
            draft(&runs, &conversation).await,
            false,
        );
        let log = all(run.subscribe(0)).await;
        assert!(!log.iter().any(|e| matches!(e.event, RunEvent::Thought(_))));
        let Some(RunEvent::Saved(Ok(saved))) = log.last().map(|e| &e.event) else {
            panic!("not saved");
        };
        assert_eq!(
            (saved.stats.reasoning_ms, saved.stats.reasoning_tokens),
            (None, None)
        );
        assert!(saved.stats.first_token_ms.is_some());
    }

    #[tokio::test]
    async fn a_stopped_run_saves_its_partial_answer_as_stopped() {
        let (engine, runs, conversation) = setup(50.0).await;
        let run = runs.reserve(&conversation).expect("free").start(
            generation(&engine),
            draft(&runs, &conversation).await,
            true,
        );
        assert_eq!(
            runs.reserve(&conversation).err(),
            Some(RunError::Busy(conversation.clone()))
        );
        let mut subscription = run.subscribe(0);
        while let Some(entry) = subscription.next().await {
            if matches!(
                entry.event,
                RunEvent::Generation(GenerationEvent::Reasoning(_))
            ) {
                break;
            }
        }
        run.stop().expect("live");
        run.finished().await;
        assert_eq!(run.stop(), Err(RunError::Finished(run.id().to_owned())));
        let messages = runs
            .store()
            .messages(conversation.clone())
            .await
            .expect("messages");
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].status, MessageStatus::Stopped);
        assert!(runs.reserve(&conversation).is_ok(), "freed");
    }

    #[tokio::test]
    async fn an_unstarted_reservation_frees_the_conversation() {
        let (_engine, runs, conversation) = setup(0.0).await;
        let reservation = runs.reserve(&conversation).expect("free");
        assert!(runs.is_busy(&conversation));
        drop(reservation);
        assert!(!runs.is_busy(&conversation));
    }

    #[tokio::test]
    async fn kept_finished_logs_are_bounded_in_bytes() {
        let (engine, runs, conversation) = setup(0.0).await;
        let runs = runs.with_kept_bytes(1);
        let mut ids = Vec::new();
        for _ in 0..3 {
            let run = runs.reserve(&conversation).expect("free").start(
                generation(&engine),
                draft(&runs, &conversation).await,
                true,
            );
            let bytes = {
                run.finished().await;
                run.log_bytes()
            };
            assert!(bytes > 1000, "a whole answer's log: {bytes} bytes");
            ids.push(run.id().to_owned());
            // Kept for 5 s by time, but each log alone is over the byte cap.
            while runs.get(run.id()).is_ok() {
                tokio::task::yield_now().await;
            }
        }
        {
            let registry = runs.registry();
            assert!(registry.finished.is_empty() && registry.finished_bytes == 0);
        }

        let (engine, runs, conversation) = setup(0.0).await;
        let mut kept = Vec::new();
        for _ in 0..3 {
            kept.push(finished_and_filed(&engine, &runs, &conversation).await);
        }
        let total: usize = kept.iter().map(|run| run.log_bytes()).sum();
        assert_eq!(runs.registry().finished_bytes, total);
        // Room for the two newest only: the oldest goes.
        let two = kept[1].log_bytes() + kept[2].log_bytes();
        let runs = runs.with_kept_bytes(two);
        let run = finished_and_filed(&engine, &runs, &conversation).await;
        assert!(runs.registry().finished_bytes <= two);
        assert!(runs.get(kept[0].id()).is_err(), "the oldest is forgotten");
        assert!(runs.get(run.id()).is_ok(), "the newest is kept");
    }
}
