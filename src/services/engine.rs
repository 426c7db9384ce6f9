//! The engine actor: one OS thread owns the model and runs up to `parallel` generations
//! together (continuous batching: a finished one's place is taken by the next in line at
//! once, and the decoding ones share each forward pass; see [`crate::inference::sequence`]).
//!
//! Requests arrive on a bounded queue, each with its own event sender. A full queue is
//! refused at once ([`ServiceError::QueueFull`]) rather than left to hang. A request whose
//! receiver was dropped (the client went away) is skipped if still queued and stopped within
//! one token (or one prompt step) if running. Loading happens on the engine thread too; its outcome comes back on
//! a oneshot before [`Engine::start`] returns. Nothing here blocks a tokio worker: the
//! thread is a plain OS thread and the only async parts are channel ends.

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::panic::AssertUnwindSafe;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::backend::{BackendSpec, ModelInfo, TokenSource};
use super::chat::{ChatCodec, ChatRequest, CompletionRequest, PreparedChat};
use super::error::ServiceError;
use super::events::{
    Completion, FinishReason, GenerationEvent, Logprobs, Progress, ReplyParser, Timings, Usage,
};
use super::metrics::{GenerationRecord, Metrics};
use super::remote::{RemoteConfig, RemotePool, RemoteStatus};
use super::structured::ConstraintGate;
use super::token_model::TokenModel;
use crate::inference::generate::{
    GenerationStats, PrefillProgress, Sampled, StopReason, TokenAction, TokenSink,
};
use crate::inference::logprobs::TokenLogprobs;
use crate::smollm3::thinking_budget::ThinkingBudget;
use crate::smollm3::tool_calls::ToolCall;
use crate::smollm3::{GgufTokenizer, Smollm3Error};

/// Requests that may wait for the model by default.
/// 16 keeps the wait of the last one in line under a few minutes at SmolLM3-3B's CPU speed.
pub const DEFAULT_QUEUE_CAPACITY: usize = 16;

/// Generations the engine runs together by default, like llama.cpp's `--parallel 4`.
/// `smolbot bench --parallel 4` measures what it buys on this machine.
pub const DEFAULT_PARALLEL: usize = 4;

/// How long one generation may run by default: far beyond a long answer on a slow CPU (a
/// 16k-token answer at 10 tokens/s), short enough that a runaway one (a loop the model never
/// leaves, a huge `max_tokens`) frees its place in the same half hour.
pub const DEFAULT_GENERATION_TIME: Duration = Duration::from_secs(30 * 60);

/// How much work the engine takes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineLimits {
    /// Requests that may wait for a free place; more are refused.
    pub queue_capacity: usize,
    /// Generations run together.
    pub parallel: usize,
    /// Longest one generation may run, prompt included, from when it gets its place; then it
    /// ends with `finish_reason: "length"`, as at `max_tokens`. `None`: no limit.
    pub generation_time: Option<Duration>,
}

impl Default for EngineLimits {
    fn default() -> Self {
        Self {
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            parallel: DEFAULT_PARALLEL,
            generation_time: Some(DEFAULT_GENERATION_TIME),
        }
    }
}

/// One request for the engine thread.
struct Job {
    ticket: u64,
    chat: PreparedChat,
    events: mpsc::UnboundedSender<GenerationEvent>,
}

/// The requests in line, in order, so each can be told how many are ahead of it.
#[derive(Default)]
struct Line {
    next_ticket: u64,
    waiting: VecDeque<(u64, mpsc::UnboundedSender<GenerationEvent>)>,
    /// Generations running now.
    running: usize,
}

impl Line {
    /// Tells every waiting request its place (dropping those whose client left).
    fn announce(&mut self) {
        self.waiting.retain(|(_, events)| !events.is_closed());
        for (i, (_, events)) in self.waiting.iter().enumerate() {
            let ahead = i + self.running;
            let _ = events.send(GenerationEvent::Progress(Progress::Queued { ahead }));
        }
    }
}

/// Where prepared requests go: the model thread here, or remote inference servers
/// (`--engine openai`). Everything before (template, limits) and after (the event stream)
/// is the same for both, so the façade and the front ends never tell them apart.
#[derive(Clone)]
enum Dispatch {
    Local(SyncSender<Job>),
    Remote(Arc<RemotePool>),
}

/// A handle to the engine: cheap to clone, one per handler.
#[derive(Clone)]
pub struct Engine {
    dispatch: Dispatch,
    limits: EngineLimits,
    info: Arc<ModelInfo>,
    codec: Arc<ChatCodec>,
    line: Arc<Mutex<Line>>,
    metrics: Arc<Metrics>,
}

/// The events of one generation, in order; dropping it cancels the generation.
pub struct GenerationStream {
    events: mpsc::UnboundedReceiver<GenerationEvent>,
}

impl GenerationStream {
    /// The next event; `None` once the generation is over (after `Done` or `Failed`).
    pub async fn next(&mut self) -> Option<GenerationEvent> {
        self.events.recv().await
    }

    /// The whole reply, for callers that do not stream: every non-streaming front end
    /// collects through this one loop, so they agree on what a failure or a lost engine is.
    pub async fn collect(mut self) -> Result<Reply, ServiceError> {
        let (mut reasoning, mut content, mut calls) = (None::<String>, String::new(), Vec::new());
        while let Some(event) = self.next().await {
            match event {
                GenerationEvent::Reasoning(text) => {
                    reasoning.get_or_insert_with(String::new).push_str(&text);
                }
                GenerationEvent::Content(text) => content.push_str(&text),
                GenerationEvent::ToolCall(call) => calls.push(call),
                GenerationEvent::Progress(_) => {}
                GenerationEvent::Done(completion) => {
                    return Ok(Reply {
                        reasoning,
                        content,
                        calls,
                        completion,
                    })
                }
                GenerationEvent::Failed(message) => return Err(ServiceError::Generation(message)),
            }
        }
        Err(ServiceError::EngineStopped)
    }
}

/// A whole reply, as [`GenerationStream::collect`] gathers it.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The reasoning, when the model wrote any (`None` differs from an empty block for
    /// OpenAI clients, which get no `reasoning_content` then).
    pub reasoning: Option<String>,
    pub content: String,
    pub calls: Vec<ToolCall>,
    pub completion: Completion,
}

impl Engine {
    /// Starts an engine that runs one generation at a time, with `queue_capacity` requests
    /// allowed to wait (what most tests want: a predictable line).
    pub async fn start(spec: BackendSpec, queue_capacity: usize) -> Result<Self, ServiceError> {
        let limits = EngineLimits {
            queue_capacity,
            parallel: 1,
            ..EngineLimits::default()
        };
        Self::start_with(spec, limits).await
    }

    /// Starts the engine thread, loads the backend there and waits until it is ready.
    pub async fn start_with(spec: BackendSpec, limits: EngineLimits) -> Result<Self, ServiceError> {
        let limits = EngineLimits {
            queue_capacity: limits.queue_capacity.max(1),
            parallel: limits.parallel.max(1),
            generation_time: limits.generation_time,
        };
        let (jobs, queue) = sync_channel::<Job>(limits.queue_capacity);
        let (ready_tx, ready_rx) = oneshot::channel();
        let line = Arc::new(Mutex::new(Line::default()));
        let metrics = Arc::new(Metrics::default());
        let (engine_line, engine_metrics) = (Arc::clone(&line), Arc::clone(&metrics));
        std::thread::Builder::new()
            .name("smolbot-engine".into())
            .spawn(move || {
                let started = Instant::now();
                match spec.load(limits.parallel) {
                    Ok(backend) => {
                        engine_metrics.set_load_time(started.elapsed());
                        let codec = Arc::new(backend.codec);
                        let ready = (Arc::new(backend.info), Arc::clone(&codec));
                        if ready_tx.send(Ok(ready)).is_ok() {
                            let shared = Shared {
                                line: &engine_line,
                                metrics: &engine_metrics,
                                tokenizer: codec.tokenizer(),
                                parallel: limits.parallel,
                                generation_time: limits.generation_time,
                            };
                            match backend.model {
                                TokenSource::Gguf(model) => run(*model, queue, shared),
                                TokenSource::Stub(model) => run(*model, queue, shared),
                            }
                        }
                    }
                    Err(err) => {
                        let _ = ready_tx.send(Err(err));
                    }
                }
            })
            .map_err(|err| ServiceError::Generation(format!("cannot start the engine: {err}")))?;
        let (info, codec) = ready_rx.await.map_err(|_| ServiceError::EngineStopped)??;
        Ok(Self {
            dispatch: Dispatch::Local(jobs),
            limits,
            info,
            codec,
            line,
            metrics,
        })
    }

    /// Starts an engine whose model runs on the OpenAI-compatible servers of `remote`:
    /// only the text side of `spec` is loaded here (see [`BackendSpec::load_text_side`]).
    /// `limits` are kept for what the API reports; the remotes keep their own queues.
    pub async fn start_remote(
        spec: BackendSpec,
        remote: RemoteConfig,
        limits: EngineLimits,
    ) -> Result<Self, ServiceError> {
        let started = Instant::now();
        let (codec, info) = tokio::task::spawn_blocking(move || spec.load_text_side())
            .await
            .map_err(|err| ServiceError::Generation(format!("worker failed: {err}")))??;
        let pool = RemotePool::start(remote).await?;
        let metrics = Arc::new(Metrics::default());
        metrics.set_load_time(started.elapsed());
        Ok(Self {
            dispatch: Dispatch::Remote(pool),
            limits,
            info: Arc::new(info),
            codec: Arc::new(codec),
            line: Arc::new(Mutex::new(Line::default())),
            metrics,
        })
    }

    /// Each remote inference server's health and load; `None` for the local model.
    pub fn remotes(&self) -> Option<Vec<RemoteStatus>> {
        match &self.dispatch {
            Dispatch::Local(_) => None,
            Dispatch::Remote(pool) => Some(pool.statuses()),
        }
    }

    /// Counters and latencies of the generations so far.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Requests waiting for the engine, and how many generations run now.
    pub fn queue(&self) -> (usize, usize) {
        if let Dispatch::Remote(pool) = &self.dispatch {
            return (0, pool.in_flight());
        }
        let line = lock(&self.line);
        (line.waiting.len(), line.running)
    }

    pub fn limits(&self) -> EngineLimits {
        self.limits
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// The template, tokenizer and limits, for work done before a request is queued.
    pub fn codec(&self) -> &Arc<ChatCodec> {
        &self.codec
    }

    /// Prepares `request` (template, tokenizer and every check) on tokio's blocking pool,
    /// then queues it: the one way a chat request reaches the model, so no front end
    /// prepares on a worker thread or words a failed worker on its own.
    pub async fn generate(&self, request: ChatRequest) -> Result<GenerationStream, ServiceError> {
        if let Dispatch::Remote(pool) = &self.dispatch {
            // The request goes along for remotes that take chat messages only.
            let (prepared, request) = self
                .off_runtime(move |codec| Ok((codec.prepare(&request)?, request)))
                .await?;
            let (events, receiver) = mpsc::unbounded_channel();
            pool.start_generation(
                Arc::clone(&self.codec),
                Arc::clone(&self.metrics),
                prepared,
                Some(request),
                events,
            )?;
            return Ok(GenerationStream { events: receiver });
        }
        let prepared = self
            .off_runtime(move |codec| codec.prepare(&request))
            .await?;
        self.submit(prepared)
    }

    /// Tokenizes and checks a text completion on tokio's blocking pool. The caller submits
    /// it: `/v1/completions` checks every prompt of a batch before it runs the first, and
    /// echoes the prompt's tokens.
    pub async fn prepare_completion(
        &self,
        request: CompletionRequest,
    ) -> Result<PreparedChat, ServiceError> {
        self.off_runtime(move |codec| codec.prepare_completion(&request))
            .await
    }

    /// Runs `work` on the codec on tokio's blocking pool: rendering and tokenizing a long
    /// conversation takes milliseconds, too long for a worker thread.
    pub async fn off_runtime<T: Send + 'static>(
        &self,
        work: impl FnOnce(&ChatCodec) -> Result<T, ServiceError> + Send + 'static,
    ) -> Result<T, ServiceError> {
        let codec = Arc::clone(&self.codec);
        tokio::task::spawn_blocking(move || work(&codec))
            .await
            .map_err(|err| ServiceError::Generation(format!("worker failed: {err}")))?
    }

    /// Queues `chat` and returns its event stream, or refuses at once when the queue is full.
    pub fn submit(&self, chat: PreparedChat) -> Result<GenerationStream, ServiceError> {
        let (events, receiver) = mpsc::unbounded_channel();
        let jobs = match &self.dispatch {
            Dispatch::Local(jobs) => jobs,
            Dispatch::Remote(pool) => {
                pool.start_generation(
                    Arc::clone(&self.codec),
                    Arc::clone(&self.metrics),
                    chat,
                    None,
                    events,
                )?;
                return Ok(GenerationStream { events: receiver });
            }
        };
        // Held across the send so that tickets enter the line in the channel's order.
        let mut line = lock(&self.line);
        let ticket = line.next_ticket;
        let job = Job {
            ticket,
            chat,
            events: events.clone(),
        };
        match jobs.try_send(job) {
            Ok(()) => {
                line.next_ticket += 1;
                line.waiting.push_back((ticket, events));
                line.announce();
                Ok(GenerationStream { events: receiver })
            }
            Err(TrySendError::Full(_)) => Err(ServiceError::QueueFull {
                capacity: self.limits.queue_capacity,
            }),
            Err(TrySendError::Disconnected(_)) => Err(ServiceError::EngineStopped),
        }
    }
}

fn lock(line: &Mutex<Line>) -> std::sync::MutexGuard<'_, Line> {
    line.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What the engine thread shares with the handles, and its settings.
#[derive(Clone, Copy)]
struct Shared<'a> {
    line: &'a Mutex<Line>,
    metrics: &'a Metrics,
    tokenizer: &'a GgufTokenizer,
    parallel: usize,
    generation_time: Option<Duration>,
}

/// A generation the engine is running.
struct Active<'t, S> {
    seq: S,
    sink: JobSink<'t>,
    /// The request asked for log-probabilities (of its prompt or its tokens).
    wants_logprobs: bool,
}

/// The engine thread's loop: takes requests while there is room, advances every running
/// generation by one step, and ends those that finished — until every handle is gone and
/// nothing runs.
fn run<M: TokenModel>(mut model: M, queue: Receiver<Job>, shared: Shared<'_>) {
    let mut active: Vec<Active<'_, M::Sequence>> = Vec::new();
    loop {
        while active.len() < shared.parallel {
            let job = if active.is_empty() {
                match queue.recv() {
                    Ok(job) => job,
                    Err(_) => return,
                }
            } else {
                match queue.try_recv() {
                    Ok(job) => job,
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
            };
            if let Some(started) = admit(&mut model, job, shared, active.len()) {
                active.push(started);
            }
        }
        let outcome = {
            let mut running: Vec<(&mut M::Sequence, &mut dyn TokenSink)> = active
                .iter_mut()
                .map(|a| (&mut a.seq, &mut a.sink as &mut dyn TokenSink))
                .collect();
            std::panic::catch_unwind(AssertUnwindSafe(|| model.step(&mut running)))
        };
        let failure = match outcome {
            Ok(Ok(())) => None,
            Ok(Err(err)) => Some(err.to_string()),
            Err(_) => Some("the model crashed while generating; see the server log".to_owned()),
        };
        if let Some(failure) = failure {
            for gone in active.drain(..) {
                let _ = model.finish(gone.seq);
                end(&model, shared, gone.sink.events, Err(failure.clone()));
            }
            continue;
        }
        let mut i = 0;
        while i < active.len() {
            if model.is_finished(&active[i].seq) {
                let done = active.swap_remove(i);
                let stats = model.finish(done.seq);
                let events = done.sink.events.clone();
                let result = complete(done.sink, stats, done.wants_logprobs, shared.metrics);
                end(
                    &model,
                    shared,
                    events,
                    result.map_err(|err| err.to_string()),
                );
            } else {
                i += 1;
            }
        }
    }
}

/// Moves `job` from the line into the running set (or drops it when its client left, or
/// fails it when the model refuses its prompt).
fn admit<'t, M: TokenModel>(
    model: &mut M,
    job: Job,
    shared: Shared<'t>,
    running: usize,
) -> Option<Active<'t, M::Sequence>> {
    let alive = !job.events.is_closed();
    {
        let mut line = lock(shared.line);
        line.waiting.retain(|(ticket, _)| *ticket != job.ticket);
        line.running = running + usize::from(alive);
        line.announce();
    }
    if !alive {
        return None;
    }
    let Job { chat, events, .. } = job;
    let mut sink = JobSink {
        events,
        parser: ReplyParser::new(shared.tokenizer, &chat.reply),
        budget: chat.thinking_budget.clone(),
        constraint: chat.constraint.as_ref().map(|c| c.gate()),
        failure: None,
        logprobs: Vec::new(),
        started: Instant::now(),
        first_token: None,
        deadline: shared.generation_time.map(|limit| Instant::now() + limit),
        timed_out: false,
    };
    for &id in &chat.reply.prefix {
        if sink.read(id).is_break() {
            break;
        }
    }
    let wants_logprobs =
        chat.generation.logprobs.is_some() || chat.generation.prompt_logprobs.is_some();
    match model.begin(&chat.prompt, &chat.generation) {
        Ok(seq) => Some(Active {
            seq,
            sink,
            wants_logprobs,
        }),
        Err(err) => {
            lock(shared.line).running = running;
            end(model, shared, sink.events, Err(err.to_string()));
            None
        }
    }
}

/// Tells a generation's client how it ended, once the engine's counts no longer include it
/// (so a client that reads `Done` finds the engine free).
fn end<M: TokenModel>(
    model: &M,
    shared: Shared<'_>,
    events: mpsc::UnboundedSender<GenerationEvent>,
    result: Result<Option<Completion>, String>,
) {
    {
        let mut line = lock(shared.line);
        line.running = line.running.saturating_sub(1);
    }
    shared.metrics.set_kv_cache_bytes(model.kept_cache_bytes());
    match result {
        Ok(Some(done)) => {
            let _ = events.send(GenerationEvent::Done(done));
        }
        Ok(None) => {}
        Err(failure) => {
            tracing::error!("generation failed: {failure}");
            shared.metrics.record(GenerationRecord {
                failed: true,
                ..GenerationRecord::default()
            });
            let _ = events.send(GenerationEvent::Failed(failure));
        }
    }
}

/// The engine's view of one running generation: parses each token into events, stops when
/// the client is gone, the answer hit a stop string or its output is malformed.
struct JobSink<'t> {
    events: mpsc::UnboundedSender<GenerationEvent>,
    parser: ReplyParser<'t>,
    /// The request's thinking budget: closes the reasoning once it is spent.
    budget: Option<ThinkingBudget>,
    /// The request's grammars: mask each step, follow each token.
    constraint: Option<ConstraintGate>,
    failure: Option<Smollm3Error>,
    logprobs: Vec<TokenLogprobs>,
    started: Instant,
    first_token: Option<Duration>,
    /// When the generation must end ([`EngineLimits::generation_time`]).
    deadline: Option<Instant>,
    /// It ended there.
    timed_out: bool,
}

impl JobSink<'_> {
    fn read(&mut self, id: u32) -> ControlFlow<()> {
        match self.parser.push(id) {
            Ok(new) => {
                for event in new {
                    let _ = self.events.send(event);
                }
            }
            Err(err) => {
                self.failure = Some(err);
                return ControlFlow::Break(());
            }
        }
        if self.parser.stopped() {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }
}

impl JobSink<'_> {
    /// Whether the generation's time is up; it is stopped then, and ends as at `max_tokens`.
    fn out_of_time(&mut self) -> bool {
        self.timed_out |= self.deadline.is_some_and(|at| Instant::now() >= at);
        self.timed_out
    }

    /// Moves the request's grammars past `id`; a token they cannot take ends the run.
    fn follow(&mut self, id: u32) -> ControlFlow<()> {
        let Some(gate) = self.constraint.as_mut() else {
            return ControlFlow::Continue(());
        };
        match gate.observe(id) {
            Ok(()) => ControlFlow::Continue(()),
            Err(err) => {
                self.failure = Some(err);
                ControlFlow::Break(())
            }
        }
    }
}

impl TokenSink for JobSink<'_> {
    fn prefilled(&mut self, p: PrefillProgress) -> ControlFlow<()> {
        if self.out_of_time() {
            return ControlFlow::Break(());
        }
        let progress = Progress::Prefill {
            done: p.done,
            total: p.total,
            cached: p.cached,
        };
        match self.events.send(GenerationEvent::Progress(progress)) {
            Ok(()) => ControlFlow::Continue(()),
            Err(_) => ControlFlow::Break(()),
        }
    }

    fn constrain(&mut self, logits: &mut [f32]) -> ControlFlow<()> {
        let Some(gate) = self.constraint.as_mut() else {
            return ControlFlow::Continue(());
        };
        match gate.mask(logits) {
            Ok(()) => ControlFlow::Continue(()),
            Err(err) => {
                self.failure = Some(err);
                ControlFlow::Break(())
            }
        }
    }

    fn token(&mut self, token: Sampled) -> TokenAction {
        if self.events.is_closed() || self.out_of_time() {
            return TokenAction::Stop;
        }
        if self.follow(token.id).is_break() {
            return TokenAction::Stop;
        }
        self.first_token
            .get_or_insert_with(|| self.started.elapsed());
        self.logprobs.extend(token.logprobs);
        if self.read(token.id).is_break() {
            return TokenAction::Stop;
        }
        let Some(inject) = self.budget.as_mut().and_then(|b| b.observe(token.id)) else {
            return TokenAction::Continue;
        };
        // The written `</think>` is read like the model's own, so the reply parser closes
        // the reasoning there (and the answer's grammar starts after it).
        for &id in &inject {
            if self.follow(id).is_break() || self.read(id).is_break() {
                return TokenAction::Stop;
            }
        }
        TokenAction::Inject(inject)
    }
}

/// Closes a finished generation: records it, sends the parser's last events and returns
/// the closing summary (`None` when the client left), which [`end`] sends.
fn complete(
    sink: JobSink<'_>,
    stats: GenerationStats,
    wants_logprobs: bool,
    metrics: &Metrics,
) -> Result<Option<Completion>, ServiceError> {
    metrics.record(GenerationRecord {
        prompt_tokens: stats.prompt_tokens,
        cached_tokens: stats.cached_tokens,
        generated_tokens: stats.generated_tokens,
        time_to_first_token: sink.first_token,
        generation_time: stats.generation_time,
        failed: sink.failure.is_some(),
    });
    if let Some(err) = sink.failure {
        return Err(ServiceError::Output(err));
    }
    if stats.stop == StopReason::Cancelled && !sink.parser.stopped() && !sink.timed_out {
        return Ok(None);
    }
    let mut tool_calls = sink.parser.tool_calls();
    for event in sink.parser.finish().map_err(ServiceError::Output)? {
        tool_calls += usize::from(matches!(event, GenerationEvent::ToolCall(_)));
        let _ = sink.events.send(event);
    }
    let finish_reason = match stats.stop {
        StopReason::Cancelled if sink.timed_out => FinishReason::Length,
        StopReason::MaxTokens | StopReason::ContextFull => FinishReason::Length,
        StopReason::EndToken | StopReason::Cancelled if tool_calls > 0 => FinishReason::ToolCalls,
        StopReason::EndToken | StopReason::Cancelled => FinishReason::Stop,
    };
    Ok(Some(Completion {
        finish_reason,
        usage: Usage {
            prompt_tokens: stats.prompt_tokens,
            completion_tokens: stats.generated_tokens,
            reasoning_tokens: sink.budget.as_ref().map(ThinkingBudget::used),
        },
        timings: Timings {
            prompt_tokens: stats.prompt_tokens - stats.cached_tokens,
            cached_tokens: stats.cached_tokens,
            prompt_time: stats.prompt_time,
            predicted_tokens: stats.generated_tokens,
            predicted_time: stats.generation_time,
        },
        logprobs: wants_logprobs.then_some(Logprobs {
            prompt: stats.prompt_logprobs,
            generated: sink.logprobs,
        }),
    }))
}
