//! What a generation is asked and what it reports — the request, the prefill's progress,
//! each sampled token, why it stopped, its statistics — and the [`TokenSink`] that watches
//! it. Apart from both token loops (the single-sequence one in `generate` and the batched one
//! in `sequence`) so that each depends on these types and neither on the other.

use std::ops::ControlFlow;
use std::time::Duration;

use super::logprobs::TokenLogprobs;
use super::sampling::SamplingParams;

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
