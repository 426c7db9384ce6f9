//! The token loop's interface, apart from the backends that implement it (`backend`
//! for the GGUF model, `stub` for the stub), so that neither needs the other.

use super::error::ServiceError;
use crate::inference::generate::{GenerationRequest, GenerationStats, TokenSink};

/// A model as the engine thread sees it: runs several generations a step at a time.
pub trait TokenModel {
    /// One generation in progress.
    type Sequence;

    /// Starts a generation after `prompt` (checked here; nothing runs yet).
    fn begin(
        &mut self,
        prompt: &[u32],
        request: &GenerationRequest,
    ) -> Result<Self::Sequence, ServiceError>;

    /// Advances every unfinished sequence by one step, telling its sink the prefill's
    /// progress or its new token; the sink may stop it at either.
    fn step(
        &mut self,
        running: &mut [(&mut Self::Sequence, &mut dyn TokenSink)],
    ) -> Result<(), ServiceError>;

    fn is_finished(&self, seq: &Self::Sequence) -> bool;

    /// Ends a sequence (an unfinished one as cancelled) and returns its counts.
    fn finish(&mut self, seq: Self::Sequence) -> GenerationStats;

    /// Bytes of KV cache kept between requests (for the metrics).
    fn kept_cache_bytes(&self) -> usize {
        0
    }
}
