//! Log-probabilities of tokens under the model: what OpenAI's `logprobs` report and what
//! loglikelihood evaluations (lm-evaluation-harness) sum. Always taken from the raw logits,
//! before any sampling setting reshapes them, as llama.cpp and vLLM report them.

use super::error::{InferenceError, Result};
use super::kv_cache::SequenceCache;
use super::model::Transformer;

/// Rows of logits held at once while scoring a prompt: 128 rows of SmolLM3's 128k vocabulary
/// are 64 MiB of f32, where the whole of a 4,000-token prompt would be 2 GiB.
pub const SCORE_CHUNK: usize = 128;

/// The log-probability of one token at one position, and the most likely tokens there.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprobs {
    pub id: u32,
    /// Natural log of the token's probability.
    pub logprob: f32,
    /// The `n` most likely tokens with their log-probabilities, most likely first.
    pub top: Vec<(u32, f32)>,
}

/// `log softmax(row)[id]` and the `top_n` best entries of `row`.
pub fn row_logprobs(row: &[f32], id: u32, top_n: usize) -> TokenLogprobs {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = row.iter().map(|&l| ((l - max) as f64).exp()).sum();
    let log_z = max as f64 + sum.ln();
    let logprob = |i: usize| (row[i] as f64 - log_z) as f32;
    let mut best: Vec<usize> = (0..row.len()).collect();
    let n = top_n.min(row.len());
    if n > 0 && n < best.len() {
        best.select_nth_unstable_by(n - 1, |&a, &b| row[b].total_cmp(&row[a]));
    }
    best.truncate(n);
    best.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
    TokenLogprobs {
        id,
        logprob: row
            .get(id as usize)
            .map_or(f32::NEG_INFINITY, |_| logprob(id as usize)),
        top: best.into_iter().map(|i| (i as u32, logprob(i))).collect(),
    }
}

/// Runs `prompt` into `cache` and scores it: entry `i` is the log-probability of
/// `prompt[i + 1]` given `prompt[..=i]` (the first token has no prefix to be scored by).
/// Also returns the last position's logits, from which generation continues. `on_chunk` is
/// told how many prompt tokens are done after each chunk and may stop the work.
pub fn score_prompt(
    model: &Transformer,
    cache: &mut SequenceCache,
    prompt: &[u32],
    top_n: usize,
    mut on_chunk: impl FnMut(usize) -> std::ops::ControlFlow<()>,
) -> Result<Option<(Vec<TokenLogprobs>, Vec<f32>)>> {
    if prompt.is_empty() {
        return Err(InferenceError::EmptyPrompt);
    }
    let mut scored = Vec::with_capacity(prompt.len() - 1);
    let mut last = Vec::new();
    let mut done = 0;
    for chunk in prompt.chunks(SCORE_CHUNK) {
        let rows: Vec<Vec<f32>> = model.forward(chunk, cache, true)?.to_vec2()?;
        for (j, row) in rows.into_iter().enumerate() {
            if let Some(&next) = prompt.get(done + j + 1) {
                scored.push(row_logprobs(&row, next, top_n));
            } else {
                last = row;
            }
        }
        done += chunk.len();
        if on_chunk(done).is_break() {
            return Ok(None);
        }
    }
    Ok(Some((scored, last)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logprobs_are_a_log_softmax_and_top_is_sorted() {
        let row = [1.0f32, 3.0, 2.0, 3.0];
        let got = row_logprobs(&row, 2, 3);
        let z: f64 = row.iter().map(|&l| (l as f64).exp()).sum();
        assert!((got.logprob as f64 - (2.0 - z.ln())).abs() < 1e-6);
        let ids: Vec<u32> = got.top.iter().map(|t| t.0).collect();
        assert_eq!(ids, vec![1, 3, 2], "ties keep the lower id first");
        let total: f64 = row
            .iter()
            .enumerate()
            .map(|(i, _)| row_logprobs(&row, i as u32, 0).logprob as f64)
            .map(f64::exp)
            .sum();
        assert!((total - 1.0).abs() < 1e-6);
    }

    #[test]
    fn top_n_larger_than_the_vocabulary_lists_everything_once() {
        let got = row_logprobs(&[0.0, 0.5], 0, 10);
        assert_eq!(got.top.len(), 2);
        assert_eq!(got.top[0].0, 1);
    }
}
