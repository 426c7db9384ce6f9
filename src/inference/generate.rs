//! The token loop: prefill the prompt, then sample one token per forward step until an
//! end token, the token limit, the context limit, or the caller says stop.
//!
//! The caller may also inject tokens after any sampled one (a thinking budget closing the
//! reasoning, say): they are fed to the model and join the history like sampled ones, but
//! nothing samples them, so the engine stays ignorant of why they were chosen.
//!
//! The prompt is run in steps of [`PREFILL_STEP`] tokens; after each the caller learns the
//! progress and may cancel, so a long prompt neither hides its progress nor holds the engine
//! after its client has gone.

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use super::error::{InferenceError, Result};
use super::logprobs::{row_logprobs, score_prompt, TokenLogprobs};
use super::model::{SequenceCache, Transformer};
use super::sampling::{Sampler, SamplingParams};

/// Prompt tokens run between two progress reports (and chances to cancel). At 2 threads the
/// 3B model prefills about 20 tokens/s, so 128 tokens bound a cancel's delay to about 6 s.
/// `smolbot bench` with 128-token steps: 0.84× llama.cpp's prompt speed in the same run
/// (0.91× with one 512-token pass last session, on a quieter machine) — worth re-measuring.
pub const PREFILL_STEP: usize = 128;

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The model produced one of the stop tokens (not passed to the callback).
    EndToken,
    MaxTokens,
    /// The model's context window is full.
    ContextFull,
    /// The callback asked to stop.
    Cancelled,
}

/// Counts and wall times of one generation.
#[derive(Debug, Clone)]
pub struct GenerationStats {
    pub prompt_tokens: usize,
    pub prompt_time: Duration,
    pub generated_tokens: usize,
    pub generation_time: Duration,
    pub stop: StopReason,
    /// Scores of the prompt's tokens after the first, when the request asked for them.
    pub prompt_logprobs: Vec<TokenLogprobs>,
    /// Prompt tokens the cache already held, so not run again.
    pub cached_tokens: usize,
    /// What the cache holds afterwards: the prompt and every token fed after it. The next
    /// prompt that starts with these can reuse the cache.
    pub tokens: Vec<u32>,
}

impl GenerationStats {
    pub fn prompt_tok_per_s(&self) -> f64 {
        rate(self.prompt_tokens, self.prompt_time)
    }

    pub fn generation_tok_per_s(&self) -> f64 {
        rate(self.generated_tokens, self.generation_time)
    }
}

fn rate(n: usize, t: Duration) -> f64 {
    if t.is_zero() {
        0.0
    } else {
        n as f64 / t.as_secs_f64()
    }
}

/// What to generate: the limits and the tokens that end a turn.
#[derive(Debug, Clone, Default)]
pub struct GenerationRequest {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stop_tokens: Vec<u32>,
    /// Report each sampled token's log-probability with this many alternatives.
    pub logprobs: Option<usize>,
    /// Score the prompt's tokens too, with this many alternatives each.
    pub prompt_logprobs: Option<usize>,
}

/// How much of the prompt is in the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefillProgress {
    /// Prompt tokens in the cache, the reused ones included.
    pub done: usize,
    pub total: usize,
    /// Prompt tokens a kept cache held before this request started.
    pub cached: usize,
}

/// A sampled token, with its log-probabilities when the request asked for them.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampled {
    pub id: u32,
    pub logprobs: Option<TokenLogprobs>,
}

/// Whoever watches a generation: sees the prefill's progress and every sampled token, and
/// steers it with the return values.
pub trait TokenSink {
    /// How far the prompt is (reported before the first step and after each); `Break`
    /// cancels the generation.
    fn prefilled(&mut self, progress: PrefillProgress) -> ControlFlow<()> {
        let _ = progress;
        ControlFlow::Continue(())
    }

    fn token(&mut self, token: Sampled) -> TokenAction;
}

/// A closure that only wants token ids, as a [`TokenSink`].
struct IdSink<F>(F);

impl<F: FnMut(u32) -> TokenAction> TokenSink for IdSink<F> {
    fn token(&mut self, token: Sampled) -> TokenAction {
        (self.0)(token.id)
    }
}

/// What the caller wants after seeing a sampled token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenAction {
    /// Go on sampling.
    Continue,
    /// End the generation ([`StopReason::Cancelled`]).
    Stop,
    /// Feed these tokens to the model after the sampled one, then go on sampling. They are
    /// not passed back to the callback and do not count toward `max_tokens`.
    Inject(Vec<u32>),
}

/// Generates after `prompt`, calling `on_token` with each new token id.
pub fn generate(
    model: &Transformer,
    cache: &mut SequenceCache,
    prompt: &[u32],
    request: &GenerationRequest,
    mut on_token: impl FnMut(u32) -> ControlFlow<()>,
) -> Result<GenerationStats> {
    generate_with(model, cache, prompt, request, |id| match on_token(id) {
        ControlFlow::Continue(()) => TokenAction::Continue,
        ControlFlow::Break(()) => TokenAction::Stop,
    })
}

/// [`generate`] whose callback may also inject tokens (see [`TokenAction::Inject`]).
pub fn generate_with(
    model: &Transformer,
    cache: &mut SequenceCache,
    prompt: &[u32],
    request: &GenerationRequest,
    on_token: impl FnMut(u32) -> TokenAction,
) -> Result<GenerationStats> {
    generate_observed(model, cache, prompt, request, &mut IdSink(on_token))
}

/// The token loop with everything it can report: prefill progress, log-probabilities.
///
/// `cache` may already hold the first `cache.len()` tokens of `prompt` (a conversation's
/// earlier turns); only the rest is run. At least one prompt token must be left to run, as its
/// logits choose the first new token.
pub fn generate_observed(
    model: &Transformer,
    cache: &mut SequenceCache,
    prompt: &[u32],
    request: &GenerationRequest,
    sink: &mut dyn TokenSink,
) -> Result<GenerationStats> {
    let mut sampler = Sampler::new(request.sampling.clone())?;
    let limit = model.config().context_length;
    if prompt.len() >= limit {
        return Err(InferenceError::ContextFull {
            needed: prompt.len() + 1,
            limit,
        });
    }
    let cached = cache.len();
    if cached >= prompt.len() || (cached > 0 && request.prompt_logprobs.is_some()) {
        return Err(InferenceError::CacheMismatch {
            cached,
            prompt: prompt.len(),
        });
    }
    let started = Instant::now();
    let mut stats = GenerationStats {
        prompt_tokens: prompt.len(),
        prompt_time: Duration::ZERO,
        generated_tokens: 0,
        generation_time: Duration::ZERO,
        stop: StopReason::Cancelled,
        prompt_logprobs: Vec::new(),
        cached_tokens: cached,
        tokens: Vec::new(),
    };
    let progress = |done| PrefillProgress {
        done,
        total: prompt.len(),
        cached,
    };
    if sink.prefilled(progress(cached)).is_break() {
        stats.tokens = prompt[..cached].to_vec();
        return Ok(stats);
    }
    let prefilled = match request.prompt_logprobs {
        Some(top_n) => score_prompt(model, cache, prompt, top_n, |done| {
            sink.prefilled(progress(done))
        })?,
        None => prefill(model, cache, prompt, sink)?.map(|last| (Vec::new(), last)),
    };
    stats.prompt_time = started.elapsed();
    let Some((prompt_logprobs, mut row)) = prefilled else {
        stats.tokens = prompt[..cache.len()].to_vec();
        return Ok(stats);
    };
    stats.prompt_logprobs = prompt_logprobs;
    let mut history: Vec<u32> = prompt.to_vec();
    let started = Instant::now();
    let mut generated = 0;
    let stop = loop {
        if generated >= request.max_tokens {
            break StopReason::MaxTokens;
        }
        let next = sampler.sample(&row, &history);
        if request.stop_tokens.contains(&next) {
            break StopReason::EndToken;
        }
        generated += 1;
        history.push(next);
        let logprobs = request.logprobs.map(|n| row_logprobs(&row, next, n));
        let mut feed = vec![next];
        match sink.token(Sampled { id: next, logprobs }) {
            TokenAction::Continue => {}
            TokenAction::Stop => break StopReason::Cancelled,
            TokenAction::Inject(tokens) => feed.extend(tokens),
        }
        if cache.len() + feed.len() > limit {
            break StopReason::ContextFull;
        }
        history.extend_from_slice(&feed[1..]);
        row = model.forward(&feed, cache, false)?.squeeze(0)?.to_vec1()?;
    };
    stats.generated_tokens = generated;
    stats.generation_time = started.elapsed();
    stats.stop = stop;
    history.truncate(cache.len());
    stats.tokens = history;
    Ok(stats)
}

/// Runs what `cache` lacks of `prompt` step by step; the last position's logits, or `None`
/// when the sink cancelled.
fn prefill(
    model: &Transformer,
    cache: &mut SequenceCache,
    prompt: &[u32],
    sink: &mut dyn TokenSink,
) -> Result<Option<Vec<f32>>> {
    let mut last = None;
    let cached = cache.len();
    let mut done = cached;
    for step in prompt[done..].chunks(PREFILL_STEP) {
        last = Some(model.forward(step, cache, false)?);
        done += step.len();
        let progress = PrefillProgress {
            done,
            total: prompt.len(),
            cached,
        };
        if sink.prefilled(progress).is_break() {
            return Ok(None);
        }
    }
    match last {
        Some(logits) => Ok(Some(logits.squeeze(0)?.to_vec1()?)),
        None => Err(InferenceError::EmptyPrompt),
    }
}
