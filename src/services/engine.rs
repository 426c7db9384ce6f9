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
use super::events::{Completion, FinishReason, GenerationEvent, ReplyParser, Timings, Usage};
use crate::inference::generate::StopReason;
use crate::smollm3::GgufTokenizer;

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

fn run_job(
    model: &mut dyn TokenModel,
    tokenizer: &GgufTokenizer,
    job: Job,
) -> Result<(), ServiceError> {
    let Job { chat, events } = job;
    let mut parser = ReplyParser::new(tokenizer, &chat.reply);
    let mut failure = None;
    let stats = model.generate(&chat.prompt, &chat.generation, &mut |id| {
        if events.is_closed() {
            return ControlFlow::Break(());
        }
        match parser.push(id) {
            Ok(new) => {
                for event in new {
                    let _ = events.send(event);
                }
            }
            Err(err) => {
                failure = Some(err);
                return ControlFlow::Break(());
            }
        }
        if parser.stopped() {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })?;
    if let Some(err) = failure {
        return Err(ServiceError::Output(err));
    }
    if stats.stop == StopReason::Cancelled && !parser.stopped() {
        return Ok(());
    }
    let mut tool_calls = parser.tool_calls();
    for event in parser.finish().map_err(ServiceError::Output)? {
        tool_calls += usize::from(matches!(event, GenerationEvent::ToolCall(_)));
        let _ = events.send(event);
    }
    let finish_reason = match stats.stop {
        StopReason::MaxTokens | StopReason::ContextFull => FinishReason::Length,
        StopReason::EndToken | StopReason::Cancelled if tool_calls > 0 => FinishReason::ToolCalls,
        StopReason::EndToken | StopReason::Cancelled => FinishReason::Stop,
    };
    let _ = events.send(GenerationEvent::Done(Completion {
        finish_reason,
        usage: Usage {
            prompt_tokens: stats.prompt_tokens,
            completion_tokens: stats.generated_tokens,
        },
        timings: Timings {
            prompt_tokens: stats.prompt_tokens,
            prompt_time: stats.prompt_time,
            predicted_tokens: stats.generated_tokens,
            predicted_time: stats.generation_time,
        },
    }));
    Ok(())
}
