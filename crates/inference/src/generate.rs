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

use super::error::Result;
pub use super::generation::{
    GenerationRequest, GenerationStats, PrefillProgress, Sampled, StopReason, TokenAction,
    TokenSink, PREFILL_STEP,
};
use super::kv_cache::SequenceCache;
use super::model::Transformer;
use super::sequence::{step, Sequence};

/// A closure that only wants token ids, as a [`TokenSink`].
struct IdSink<F>(F);

impl<F: FnMut(u32) -> TokenAction> TokenSink for IdSink<F> {
    fn token(&mut self, token: Sampled) -> TokenAction {
        (self.0)(token.id)
    }
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
