//! The engine actor: one OS thread owns the model and runs one generation at a time.
//!
//! Requests arrive on a bounded queue, each with its own event sender. A full queue is
//! refused at once ([`ServiceError::QueueFull`]) rather than left to hang. A request whose
//! receiver was dropped (the client went away) is skipped if still queued and stopped within
//! one token if running. Loading happens on the engine thread too; its outcome comes back on
//! a oneshot before [`Engine::start`] returns. Nothing here blocks a tokio worker: the
//! thread is a plain OS thread and the only async parts are channel ends.

use std::ops::ControlFlow;
use std::panic::AssertUnwindSafe;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::backend::{BackendSpec, ModelInfo, TokenModel};
use super::chat::{ChatCodec, PreparedChat};
use super::error::ServiceError;
use super::events::{
    Completion, FinishReason, GenerationEvent, Logprobs, ReplyParser, Timings, Usage,
};
use crate::inference::generate::{Sampled, StopReason, TokenAction, TokenSink};
use crate::inference::logprobs::TokenLogprobs;
use crate::smollm3::{GgufTokenizer, Smollm3Error};

/// Requests that may wait for the model by default.
/// 16 keeps the wait of the last one in line under a few minutes at SmolLM3-3B's CPU speed.
pub const DEFAULT_QUEUE_CAPACITY: usize = 16;

/// One request for the engine thread.
struct Job {
    chat: PreparedChat,
    events: mpsc::UnboundedSender<GenerationEvent>,
}

/// A handle to the engine: cheap to clone, one per handler.
#[derive(Clone)]
pub struct Engine {
    jobs: SyncSender<Job>,
    capacity: usize,
    info: Arc<ModelInfo>,
    codec: Arc<ChatCodec>,
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
        std::thread::Builder::new()
            .name("smolbot-engine".into())
            .spawn(move || match spec.load() {
                Ok(backend) => {
                    let codec = Arc::new(backend.codec);
                    let ready = (Arc::new(backend.info), Arc::clone(&codec));
                    if ready_tx.send(Ok(ready)).is_ok() {
                        run(backend.model, codec.tokenizer(), queue);
                    }
                }
                Err(err) => {
                    let _ = ready_tx.send(Err(ServiceError::Load(err)));
                }
            })
            .map_err(|err| ServiceError::Generation(format!("cannot start the engine: {err}")))?;
        let (info, codec) = ready_rx.await.map_err(|_| ServiceError::EngineStopped)??;
        Ok(Self {
            jobs,
            capacity,
            info,
            codec,
        })
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
        match self.jobs.try_send(Job { chat, events }) {
            Ok(()) => Ok(GenerationStream { events: receiver }),
            Err(TrySendError::Full(_)) => Err(ServiceError::QueueFull {
                capacity: self.capacity,
            }),
            Err(TrySendError::Disconnected(_)) => Err(ServiceError::EngineStopped),
        }
    }
}

/// The engine thread's loop: one job after the other until every handle is gone.
fn run(mut model: Box<dyn TokenModel>, tokenizer: &GgufTokenizer, queue: Receiver<Job>) {
    while let Ok(job) = queue.recv() {
        if job.events.is_closed() {
            continue;
        }
        let events = job.events.clone();
        let outcome =
            std::panic::catch_unwind(AssertUnwindSafe(|| run_job(model.as_mut(), tokenizer, job)));
        let failure = match outcome {
            Ok(Ok(())) => continue,
            Ok(Err(err)) => err.to_string(),
            Err(_) => "the model crashed while generating; see the server log".to_owned(),
        };
        tracing::error!("generation failed: {failure}");
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
    fn prefilled(&mut self, _done: usize, _total: usize) -> ControlFlow<()> {
        if self.events.is_closed() {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }

    fn token(&mut self, token: Sampled) -> TokenAction {
        if self.events.is_closed() {
            return TokenAction::Stop;
        }
        self.logprobs.extend(token.logprobs);
        match self.read(token.id) {
            ControlFlow::Continue(()) => TokenAction::Continue,
            ControlFlow::Break(()) => TokenAction::Stop,
        }
    }
}

fn run_job(
    model: &mut dyn TokenModel,
    tokenizer: &GgufTokenizer,
    job: Job,
) -> Result<(), ServiceError> {
    let Job { chat, events } = job;
    let mut sink = JobSink {
        events: &events,
        parser: ReplyParser::new(tokenizer, &chat.reply),
        failure: None,
        logprobs: Vec::new(),
    };
    for &id in &chat.reply.prefix {
        if sink.read(id).is_break() {
            break;
        }
    }
    let stats = model.generate(&chat.prompt, &chat.generation, &mut sink)?;
    if let Some(err) = sink.failure {
        return Err(ServiceError::Output(err));
    }
    if stats.stop == StopReason::Cancelled && !sink.parser.stopped() {
        return Ok(());
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
    let _ = events.send(GenerationEvent::Done(Completion {
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
    }));
    Ok(())
}
