//! The token loop: prefill the prompt, then sample one token per forward step until an
//! end token, the token limit, the context limit, or the caller says stop.
//!
//! The caller may also inject tokens after any sampled one (a thinking budget closing the
//! reasoning, say): they are fed to the model and join the history like sampled ones, but
//! nothing samples them, so the engine stays ignorant of why they were chosen.

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use super::error::{InferenceError, Result};
use super::model::{SequenceCache, Transformer};
use super::sampling::{Sampler, SamplingParams};

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
#[derive(Debug, Clone)]
pub struct GenerationRequest {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stop_tokens: Vec<u32>,
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
    mut on_token: impl FnMut(u32) -> TokenAction,
) -> Result<GenerationStats> {
    let mut sampler = Sampler::new(request.sampling.clone())?;
    let limit = model.config().context_length;
    if cache.len() + prompt.len() >= limit {
        return Err(InferenceError::ContextFull {
            needed: cache.len() + prompt.len() + 1,
            limit,
        });
    }
    let started = Instant::now();
    let mut logits = model.forward(prompt, cache, false)?;
    let prompt_time = started.elapsed();
    let mut history: Vec<u32> = prompt.to_vec();
    let started = Instant::now();
    let mut generated = 0;
    let stop = loop {
        if generated >= request.max_tokens {
            break StopReason::MaxTokens;
        }
        let row: Vec<f32> = logits.squeeze(0)?.to_vec1()?;
        let next = sampler.sample(&row, &history);
        if request.stop_tokens.contains(&next) {
            break StopReason::EndToken;
        }
        generated += 1;
        history.push(next);
        let mut feed = vec![next];
        match on_token(next) {
            TokenAction::Continue => {}
            TokenAction::Stop => break StopReason::Cancelled,
            TokenAction::Inject(tokens) => feed.extend(tokens),
        }
        if cache.len() + feed.len() > limit {
            break StopReason::ContextFull;
        }
        history.extend_from_slice(&feed[1..]);
        logits = model.forward(&feed, cache, false)?;
    };
    Ok(GenerationStats {
        prompt_tokens: prompt.len(),
        prompt_time,
        generated_tokens: generated,
        generation_time: started.elapsed(),
        stop,
    })
}
