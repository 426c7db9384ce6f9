//! Scoring a token stream: the per-token negative log-likelihood that perplexity and the
//! golden tests against llama.cpp are built on.

use candle_core::{IndexOp, Tensor};

use super::error::Result;
use super::model::{log_softmax_rows, Transformer};

/// Per-token NLL (nats) of `tokens`, split into consecutive windows of `window` tokens (the
/// last may be shorter). Each window starts from an empty cache; its first token is context
/// only, every later token is scored given its prefix in the window.
pub fn token_nll(model: &Transformer, tokens: &[u32], window: usize) -> Result<Vec<f32>> {
    let mut nll = Vec::with_capacity(tokens.len());
    for chunk in tokens.chunks(window.max(2)) {
        if chunk.len() < 2 {
            continue;
        }
        let mut cache = model.new_cache();
        let logits = model.forward(&chunk[..chunk.len() - 1], &mut cache, true)?;
        let logp = log_softmax_rows(&logits)?;
        let targets = Tensor::new(&chunk[1..], logp.device())?.unsqueeze(1)?;
        let picked: Vec<f32> = logp.gather(&targets, 1)?.i((.., 0))?.to_vec1()?;
        nll.extend(picked.into_iter().map(|lp| -lp));
    }
    Ok(nll)
}

/// exp(mean NLL); `NaN` for an empty list.
pub fn perplexity(nll: &[f32]) -> f64 {
    let mean = nll.iter().map(|&x| x as f64).sum::<f64>() / nll.len() as f64;
    mean.exp()
}
