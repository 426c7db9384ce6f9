//! The engine actor: one OS thread owns the model and runs one generation at a time.
//!
//! Requests arrive on a bounded queue, each with its own event sender. A full queue is
//! refused at once ([`ServiceError::QueueFull`]) rather than left to hang. A request whose
//! receiver was dropped (the client went away) is skipped if still queued and stopped within
//! one token if running. Loading happens on the engine thread too; its outcome comes back on
//! a oneshot before [`Engine::start`] returns. Nothing here blocks a tokio worker: the
//! thread is a plain OS thread and the only async parts are channel ends.

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::panic::AssertUnwindSafe;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::backend::{BackendSpec, ModelInfo, TokenModel};
use super::chat::{ChatCodec, PreparedChat};
use super::error::ServiceError;
use super::events::{
    Completion, FinishReason, GenerationEvent, Logprobs, Progress, ReplyParser, Timings, Usage,
};
use super::metrics::{GenerationRecord, Metrics};
use crate::inference::generate::{PrefillProgress, Sampled, StopReason, TokenAction, TokenSink};
use crate::inference::logprobs::TokenLogprobs;
use crate::smollm3::{GgufTokenizer, Smollm3Error};

/// Requests that may wait for the model by default.
/// 16 keeps the wait of the last one in line under a few minutes at SmolLM3-3B's CPU speed.
pub const DEFAULT_QUEUE_CAPACITY: usize = 16;

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
    running: bool,
}

impl Line {
    /// Tells every waiting request its place (dropping those whose client left).
    fn announce(&mut self) {
        self.waiting.retain(|(_, events)| !events.is_closed());
        let running = usize::from(self.running);
        for (i, (_, events)) in self.waiting.iter().enumerate() {
            let ahead = i + running;
            let _ = events.send(GenerationEvent::Progress(Progress::Queued { ahead }));
        }
    }
}

/// A handle to the engine: cheap to clone, one per handler.
#[derive(Clone)]
pub struct Engine {
    jobs: SyncSender<Job>,
    capacity: usize,
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
}

impl Engine {
    /// Starts the engine thread, loads the backend there and waits until it is ready.
    pub async fn start(spec: BackendSpec, queue_capacity: usize) -> Result<Self, ServiceError> {
        let capacity = queue_capacity.max(1);
        let (jobs, queue) = sync_channel::<Job>(capacity);
        let (ready_tx, ready_rx) = oneshot::channel();
        let line = Arc::new(Mutex::new(Line::default()));
        let metrics = Arc::new(Metrics::default());
        let (engine_line, engine_metrics) = (Arc::clone(&line), Arc::clone(&metrics));
        std::thread::Builder::new()
            .name("smolbot-engine".into())
            .spawn(move || {
                let started = Instant::now();
                match spec.load() {
                    Ok(backend) => {
                        engine_metrics.set_load_time(started.elapsed());
                        let codec = Arc::new(backend.codec);
                        let ready = (Arc::new(backend.info), Arc::clone(&codec));
                        if ready_tx.send(Ok(ready)).is_ok() {
                            let shared = Shared {
                                line: &engine_line,
                                metrics: &engine_metrics,
                            };
                            run(backend.model, codec.tokenizer(), queue, shared);
                        }
                    }
                    Err(err) => {
                        let _ = ready_tx.send(Err(ServiceError::Load(err)));
                    }
                }
            })
            .map_err(|err| ServiceError::Generation(format!("cannot start the engine: {err}")))?;
        let (info, codec) = ready_rx.await.map_err(|_| ServiceError::EngineStopped)??;
        Ok(Self {
            jobs,
            capacity,
            info,
            codec,
            line,
            metrics,
        })
    }

    /// Counters and latencies of the generations so far.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Requests waiting for the engine, and whether it is generating now.
    pub fn load(&self) -> (usize, bool) {
        let line = lock(&self.line);
        (line.waiting.len(), line.running)
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// The template, tokenizer and limits, for work done before a request is queued.
    pub fn codec(&self) -> &Arc<ChatCodec> {
        &self.codec
    }

    /// Queues `chat` and returns its event stream, or refuses at once when the queue is full.
    pub fn submit(&self, chat: PreparedChat) -> Result<GenerationStream, ServiceError> {
        let (events, receiver) = mpsc::unbounded_channel();
        // Held across the send so that tickets enter the line in the channel's order.
        let mut line = lock(&self.line);
        let ticket = line.next_ticket;
        let job = Job {
            ticket,
            chat,
            events: events.clone(),
        };
        match self.jobs.try_send(job) {
            Ok(()) => {
                line.next_ticket += 1;
                line.waiting.push_back((ticket, events));
                line.announce();
                Ok(GenerationStream { events: receiver })
            }
            Err(TrySendError::Full(_)) => Err(ServiceError::QueueFull {
                capacity: self.capacity,
            }),
            Err(TrySendError::Disconnected(_)) => Err(ServiceError::EngineStopped),
        }
    }
}

fn lock(line: &Mutex<Line>) -> std::sync::MutexGuard<'_, Line> {
    line.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What the engine thread shares with the handles.
#[derive(Clone, Copy)]
struct Shared<'a> {
    line: &'a Mutex<Line>,
    metrics: &'a Metrics,
}

/// The engine thread's loop: one job after the other until every handle is gone.
fn run(
    mut model: Box<dyn TokenModel>,
    tokenizer: &GgufTokenizer,
    queue: Receiver<Job>,
    Shared { line, metrics }: Shared<'_>,
) {
    while let Ok(job) = queue.recv() {
        {
            let mut line = lock(line);
            line.waiting.retain(|(ticket, _)| *ticket != job.ticket);
            line.running = !job.events.is_closed();
            line.announce();
        }
        if job.events.is_closed() {
            continue;
        }
        let events = job.events.clone();
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
            run_job(model.as_mut(), tokenizer, job, metrics)
        }));
        lock(line).running = false;
        metrics.set_kv_cache_bytes(model.kept_cache_bytes());
        // `Done` goes out only now, so a client that reads it finds the engine idle.
        let failure = match outcome {
            Ok(Ok(done)) => {
                if let Some(done) = done {
                    let _ = events.send(GenerationEvent::Done(done));
                }
                continue;
            }
            Ok(Err(err)) => err.to_string(),
            Err(_) => "the model crashed while generating; see the server log".to_owned(),
        };
        tracing::error!("generation failed: {failure}");
        metrics.record(GenerationRecord {
            failed: true,
            ..GenerationRecord::default()
        });
        let _ = events.send(GenerationEvent::Failed(failure));
    }
}

/// The engine's view of one running generation: parses each token into events, stops when
/// the client is gone, the answer hit a stop string or its output is malformed.
struct JobSink<'a> {
    events: &'a mpsc::UnboundedSender<GenerationEvent>,
    parser: ReplyParser<'a>,
    failure: Option<Smollm3Error>,
    logprobs: Vec<TokenLogprobs>,
    started: Instant,
    first_token: Option<Duration>,
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

impl TokenSink for JobSink<'_> {
    fn prefilled(&mut self, p: PrefillProgress) -> ControlFlow<()> {
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

    fn token(&mut self, token: Sampled) -> TokenAction {
        if self.events.is_closed() {
            return TokenAction::Stop;
        }
        self.first_token
            .get_or_insert_with(|| self.started.elapsed());
        self.logprobs.extend(token.logprobs);
        match self.read(token.id) {
            ControlFlow::Continue(()) => TokenAction::Continue,
            ControlFlow::Break(()) => TokenAction::Stop,
        }
    }
}

/// Runs one generation, streaming its events; returns the closing summary (`None` when the
/// client left), which the caller sends once the engine is marked idle.
fn run_job(
    model: &mut dyn TokenModel,
    tokenizer: &GgufTokenizer,
    job: Job,
    metrics: &Metrics,
) -> Result<Option<Completion>, ServiceError> {
    let Job { chat, events, .. } = job;
    let mut sink = JobSink {
        events: &events,
        parser: ReplyParser::new(tokenizer, &chat.reply),
        failure: None,
        logprobs: Vec::new(),
        started: Instant::now(),
        first_token: None,
    };
    for &id in &chat.reply.prefix {
        if sink.read(id).is_break() {
            break;
        }
    }
    let stats = model.generate(&chat.prompt, &chat.generation, &mut sink)?;
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
    if stats.stop == StopReason::Cancelled && !sink.parser.stopped() {
        return Ok(None);
    }
    let mut tool_calls = sink.parser.tool_calls();
    for event in sink.parser.finish().map_err(ServiceError::Output)? {
        tool_calls += usize::from(matches!(event, GenerationEvent::ToolCall(_)));
        let _ = events.send(event);
    }
    let finish_reason = match stats.stop {
        StopReason::MaxTokens | StopReason::ContextFull => FinishReason::Length,
        StopReason::EndToken | StopReason::Cancelled if tool_calls > 0 => FinishReason::ToolCalls,
        StopReason::EndToken | StopReason::Cancelled => FinishReason::Stop,
    };
    let wants_logprobs =
        chat.generation.logprobs.is_some() || chat.generation.prompt_logprobs.is_some();
    Ok(Some(Completion {
        finish_reason,
        usage: Usage {
            prompt_tokens: stats.prompt_tokens,
            completion_tokens: stats.generated_tokens,
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
