//! One generation as a state machine, so that several can share the model: each
//! [`Sequence`] owns its KV cache, sampler and history, and [`step`] advances a set of them
//! by one round — every decoding sequence by one token, their forward passes run as one
//! batch, and at most one prefilling sequence by one prompt step. A long prompt thus delays
//! the others' next tokens by one [`PREFILL_STEP`] at a time, never by its whole length.
//!
//! The single-sequence token loop (`generate::generate_observed`) is this machine
//! with one sequence, so batched and solo generation share every rule (limits, stop tokens,
//! injected tokens, cancellation).

use std::time::Instant;

use super::error::{InferenceError, Result};
use super::generation::{
    GenerationRequest, GenerationStats, PrefillProgress, Sampled, StopReason, TokenAction,
    TokenSink, PREFILL_STEP,
};
use super::kv_cache::SequenceCache;
use super::logprobs::{row_logprobs, score_prompt};
use super::model::Transformer;
use super::sampling::Sampler;

/// Where a sequence stands.
enum State {
    /// Prompt tokens are left to run; `reported` once the starting progress went out.
    Prefill {
        reported: bool,
    },
    /// The logits that choose the next token.
    Ready(Vec<f32>),
    /// A token was sampled; these tokens await the forward pass.
    Feeding(Vec<u32>),
    Finished,
}

/// One generation in progress (see the module doc).
pub struct Sequence {
    request: GenerationRequest,
    sampler: Sampler,
    cache: SequenceCache,
    /// The prompt, then every token fed after it.
    history: Vec<u32>,
    prompt_len: usize,
    state: State,
    stats: GenerationStats,
    /// When the prompt started to run, then when the first token was sampled.
    clock: Option<Instant>,
}

impl Sequence {
    /// Checks the request against the model and the cache, which may already hold the first
    /// `cache.len()` tokens of `prompt` (at least one must be left to run, as its logits
    /// choose the first new token).
    pub fn new(
        model: &Transformer,
        cache: SequenceCache,
        prompt: &[u32],
        request: &GenerationRequest,
    ) -> Result<Self> {
        let sampler = Sampler::new(request.sampling.clone())?;
        let limit = model.config().context_length;
        if prompt.len() >= limit {
            return Err(InferenceError::ContextFull {
                needed: prompt.len() + 1,
                limit,
            });
        }
        if prompt.is_empty() {
            return Err(InferenceError::EmptyPrompt);
        }
        let cached = cache.len();
        if cached >= prompt.len() || (cached > 0 && request.prompt_logprobs.is_some()) {
            return Err(InferenceError::CacheMismatch {
                cached,
                prompt: prompt.len(),
            });
        }
        Ok(Self {
            request: request.clone(),
            sampler,
            cache,
            history: prompt.to_vec(),
            prompt_len: prompt.len(),
            state: State::Prefill { reported: false },
            stats: GenerationStats::starting(prompt.len(), cached),
            clock: None,
        })
    }

    pub fn is_prefilling(&self) -> bool {
        matches!(self.state, State::Prefill { .. })
    }

    /// The request asked for the prompt's log-probabilities (so its cache started empty).
    pub fn scores_prompt(&self) -> bool {
        self.request.prompt_logprobs.is_some()
    }

    pub fn is_finished(&self) -> bool {
        matches!(self.state, State::Finished)
    }

    /// The counts and the cache, which holds `stats.tokens`; for a finished sequence (an
    /// unfinished one ends as cancelled).
    pub fn finish(mut self) -> (GenerationStats, SequenceCache) {
        if !self.is_finished() {
            self.end(StopReason::Cancelled);
        }
        self.history.truncate(self.cache.len());
        self.stats.tokens = self.history;
        (self.stats, self.cache)
    }

    fn end(&mut self, stop: StopReason) {
        if let (Some(clock), false) = (self.clock, self.is_prefilling()) {
            self.stats.generation_time = clock.elapsed();
        } else if let Some(clock) = self.clock {
            self.stats.prompt_time = clock.elapsed();
        }
        self.stats.stop = stop;
        self.state = State::Finished;
    }

    fn progress(&self, done: usize) -> PrefillProgress {
        PrefillProgress {
            done,
            total: self.prompt_len,
            cached: self.stats.cached_tokens,
        }
    }

    /// Runs the next prompt step (the whole prompt when it is to be scored, since scoring
    /// needs every row), telling `sink` the progress.
    fn prefill_step(&mut self, model: &Transformer, sink: &mut dyn TokenSink) -> Result<()> {
        let State::Prefill { reported } = self.state else {
            return Ok(());
        };
        if !reported {
            self.clock = Some(Instant::now());
            self.state = State::Prefill { reported: true };
            if sink.prefilled(self.progress(self.cache.len())).is_break() {
                self.end(StopReason::Cancelled);
                return Ok(());
            }
        }
        if let Some(top_n) = self.request.prompt_logprobs {
            let prompt = &self.history[..self.prompt_len];
            let total = self.prompt_len;
            let cached = self.stats.cached_tokens;
            let scored = score_prompt(model, &mut self.cache, prompt, top_n, |done| {
                sink.prefilled(PrefillProgress {
                    done,
                    total,
                    cached,
                })
            })?;
            match scored {
                Some((logprobs, last)) => {
                    self.stats.prompt_logprobs = logprobs;
                    self.prefilled(last);
                }
                None => self.end(StopReason::Cancelled),
            }
            return Ok(());
        }
        let done = self.cache.len();
        let end = self.prompt_len.min(done + PREFILL_STEP);
        let logits = model.forward(&self.history[done..end], &mut self.cache, false)?;
        let cancelled = sink.prefilled(self.progress(end)).is_break();
        if cancelled {
            self.end(StopReason::Cancelled);
        } else if end == self.prompt_len {
            self.prefilled(logits.squeeze(0)?.to_vec1()?);
        }
        Ok(())
    }

    fn prefilled(&mut self, row: Vec<f32>) {
        if let Some(clock) = self.clock {
            self.stats.prompt_time = clock.elapsed();
        }
        self.clock = Some(Instant::now());
        self.state = State::Ready(row);
    }

    /// Samples the next token from the ready logits and shows it to `sink`; afterwards the
    /// sequence is either finished or feeding.
    fn sample(&mut self, model: &Transformer, sink: &mut dyn TokenSink) {
        let row = match std::mem::replace(&mut self.state, State::Finished) {
            State::Ready(row) => row,
            other => {
                self.state = other;
                return;
            }
        };
        let request = &self.request;
        if self.stats.generated_tokens >= request.max_tokens {
            return self.end(StopReason::MaxTokens);
        }
        // The scores a client asked for are the model's own, before any constraint.
        let unconstrained = request.logprobs.map(|_| row.clone());
        let mut row = row;
        if sink.constrain(&mut row).is_break() {
            return self.end(StopReason::Cancelled);
        }
        let next = self.sampler.sample(&row, &self.history);
        if request.stop_tokens.contains(&next) {
            return self.end(StopReason::EndToken);
        }
        self.stats.generated_tokens += 1;
        self.history.push(next);
        let logprobs = request
            .logprobs
            .map(|n| row_logprobs(unconstrained.as_deref().unwrap_or(&row), next, n));
        let mut feed = vec![next];
        match sink.token(Sampled { id: next, logprobs }) {
            TokenAction::Continue => {}
            TokenAction::Stop => return self.end(StopReason::Cancelled),
            TokenAction::Inject(tokens) => feed.extend(tokens),
        }
        if self.cache.len() + feed.len() > model.config().context_length {
            return self.end(StopReason::ContextFull);
        }
        self.history.extend_from_slice(&feed[1..]);
        self.state = State::Feeding(feed);
    }

    /// The single token this sequence feeds next, if it feeds exactly one (batchable).
    fn single_feed(&self) -> Option<u32> {
        match &self.state {
            State::Feeding(feed) if feed.len() == 1 => Some(feed[0]),
            _ => None,
        }
    }
}

/// One scheduling round over `running` (each sequence with the sink that watches it):
/// every ready sequence samples a token, the single-token feeds run as one batched forward
/// pass (a feed with injected tokens runs on its own), then the first sequence still
/// prefilling runs one prompt step. Finished sequences are skipped. An error fails the
/// whole round; the caller decides which sequences to give up.
pub fn step(
    model: &Transformer,
    running: &mut [(&mut Sequence, &mut dyn TokenSink)],
) -> Result<()> {
    for (seq, sink) in running.iter_mut() {
        seq.sample(model, &mut **sink);
    }
    let mut batch_tokens = Vec::new();
    let mut batch: Vec<&mut Sequence> = Vec::new();
    for (seq, _) in running.iter_mut() {
        if let Some(id) = seq.single_feed() {
            batch_tokens.push(id);
            batch.push(&mut **seq);
        } else if let State::Feeding(feed) = &seq.state {
            let row = model.forward(feed, &mut seq.cache, false)?;
            seq.state = State::Ready(row.squeeze(0)?.to_vec1()?);
        }
    }
    if batch.len() == 1 {
        let seq = &mut batch[0];
        let row = model.forward(&batch_tokens, &mut seq.cache, false)?;
        seq.state = State::Ready(row.squeeze(0)?.to_vec1()?);
    } else if !batch.is_empty() {
        let mut caches: Vec<&mut SequenceCache> =
            batch.iter_mut().map(|seq| &mut seq.cache).collect();
        let rows: Vec<Vec<f32>> = model.forward_batch(&batch_tokens, &mut caches)?.to_vec2()?;
        for (seq, row) in batch.into_iter().zip(rows) {
            seq.state = State::Ready(row);
        }
    }
    if let Some((seq, sink)) = running.iter_mut().find(|(seq, _)| seq.is_prefilling()) {
        seq.prefill_step(model, &mut **sink)?;
    }
    Ok(())
}

/// Steps `seqs` together, `seqs[i]` watched by `sinks[i]`, until every one is finished.
pub fn run_all<S: TokenSink>(
    model: &Transformer,
    seqs: &mut [Sequence],
    sinks: &mut [S],
) -> Result<()> {
    while seqs.iter().any(|s| !s.is_finished()) {
        let mut running: Vec<(&mut Sequence, &mut dyn TokenSink)> = seqs
            .iter_mut()
            .zip(sinks.iter_mut())
            .map(|(s, k)| (s, k as &mut dyn TokenSink))
            .collect();
        step(model, &mut running)?;
    }
    Ok(())
}
