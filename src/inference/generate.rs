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
use std::time::Duration;

use super::error::Result;
use super::kv_cache::SequenceCache;
use super::logprobs::TokenLogprobs;
use super::model::Transformer;
use super::sampling::SamplingParams;
use super::sequence::{step, Sequence};

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
    /// The counts before anything ran: a prompt of `prompt_tokens`, `cached_tokens` of them
    /// already in the cache; the stop reason stays `Cancelled` until the generation ends.
    pub fn starting(prompt_tokens: usize, cached_tokens: usize) -> Self {
        Self {
            prompt_tokens,
            prompt_time: Duration::ZERO,
            generated_tokens: 0,
            generation_time: Duration::ZERO,
            stop: StopReason::Cancelled,
            prompt_logprobs: Vec::new(),
            cached_tokens,
            tokens: Vec::new(),
        }
    }

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

    /// Narrows the choice of the next token before sampling: sets the logits of tokens that
    /// may not come next to −∞ (a grammar's mask), so penalties, top-k/p and temperature
    /// only see what is allowed. `Break` ends the generation (the sink keeps why).
    fn constrain(&mut self, logits: &mut [f32]) -> ControlFlow<()> {
        let _ = logits;
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
/// logits choose the first new token. This is [`Sequence`] stepped alone; afterwards `cache`
/// holds `stats.tokens` (after an error, nothing).
pub fn generate_observed(
    model: &Transformer,
    cache: &mut SequenceCache,
    prompt: &[u32],
    request: &GenerationRequest,
    sink: &mut dyn TokenSink,
) -> Result<GenerationStats> {
    let owned = std::mem::replace(cache, model.new_cache());
    let mut seq = Sequence::new(model, owned, prompt, request)?;
    while !seq.is_finished() {
        step(model, &mut [(&mut seq, &mut *sink)])?;
    }
    let (stats, used) = seq.finish();
    *cache = used;
    Ok(stats)
}
