//! Choosing the next token from logits, in llama.cpp's default order: penalties (repeat,
//! frequency, presence), top-k, top-p, min-p, temperature, then a seeded draw. Temperature 0
//! means argmax.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::error::{InferenceError, Result};

/// Sampling settings of one request; defaults match llama.cpp's CLI.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    pub temperature: f32,
    /// 0 disables top-k.
    pub top_k: usize,
    /// 1.0 disables top-p.
    pub top_p: f32,
    /// 0.0 disables min-p.
    pub min_p: f32,
    /// 1.0 disables the penalty.
    pub repeat_penalty: f32,
    /// How many of the most recent tokens the penalties look at.
    pub repeat_last_n: usize,
    /// Subtracted from a token's logit once per time it occurs in the window (OpenAI's
    /// `frequency_penalty`); 0.0 disables it.
    pub frequency_penalty: f32,
    /// Subtracted once from the logit of every token that occurs in the window (OpenAI's
    /// `presence_penalty`); 0.0 disables it.
    pub presence_penalty: f32,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            seed: 42,
        }
    }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            ..Self::default()
        }
    }

    /// Rejects settings that have no meaning, naming the setting and its range.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(InferenceError::Sampling(what));
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return bad(format!("temperature must be ≥ 0, got {}", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("top-p must be in (0, 1], got {}", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad(format!("min-p must be in [0, 1], got {}", self.min_p));
        }
        if !(self.repeat_penalty > 0.0 && self.repeat_penalty.is_finite()) {
            return bad(format!(
                "repeat penalty must be > 0, got {}",
                self.repeat_penalty
            ));
        }
        for (name, value) in [
            ("frequency", self.frequency_penalty),
            ("presence", self.presence_penalty),
        ] {
            if !(-2.0..=2.0).contains(&value) {
                return bad(format!("{name} penalty must be in [-2, 2], got {value}"));
            }
        }
        Ok(())
    }
}

/// Stateful sampler: owns the RNG so a fixed seed gives a fixed sequence.
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Result<Self> {
        params.validate()?;
        let rng = StdRng::seed_from_u64(params.seed);
        Ok(Self { params, rng })
    }

    /// Picks a token id from `logits`, penalising tokens seen in `history`.
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        let mut logits = logits.to_vec();
        self.apply_penalties(&mut logits, history);
        if self.params.temperature <= 0.0 {
            return argmax(&logits);
        }
        let candidates = self.candidates(&logits);
        if candidates.is_empty() {
            return argmax(&logits);
        }
        let weights: Vec<f64> = {
            let t = self.params.temperature as f64;
            let max = candidates[0].1 as f64;
            candidates
                .iter()
                .map(|(_, l)| ((*l as f64 - max) / t).exp())
                .collect()
        };
        let total: f64 = weights.iter().sum();
        let mut r = self.rng.random::<f64>() * total;
        for ((id, _), w) in candidates.iter().zip(&weights) {
            if r < *w {
                return *id;
            }
            r -= w;
        }
        candidates.last().map(|c| c.0).unwrap_or(0)
    }

    /// llama.cpp's penalties over the last `repeat_last_n` tokens: the repeat penalty scales
    /// a seen token's logit toward zero, then frequency and presence subtract.
    fn apply_penalties(&self, logits: &mut [f32], history: &[u32]) {
        let p = &self.params;
        let off =
            p.repeat_penalty == 1.0 && p.frequency_penalty == 0.0 && p.presence_penalty == 0.0;
        if off || p.repeat_last_n == 0 {
            return;
        }
        let start = history.len().saturating_sub(p.repeat_last_n);
        let mut counts = std::collections::HashMap::<u32, u32>::new();
        for &id in &history[start..] {
            *counts.entry(id).or_default() += 1;
        }
        for (id, count) in counts {
            let Some(l) = logits.get_mut(id as usize) else {
                continue;
            };
            *l = if *l > 0.0 {
                *l / p.repeat_penalty
            } else {
                *l * p.repeat_penalty
            };
            *l -= count as f32 * p.frequency_penalty + p.presence_penalty;
        }
    }

    /// Tokens that survive top-k, top-p and min-p, sorted by logit, highest first; tokens a
    /// constraint masked out (−∞) never do.
    fn candidates(&self, logits: &[f32]) -> Vec<(u32, f32)> {
        let mut c: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, l)| **l > f32::NEG_INFINITY)
            .map(|(i, &l)| (i as u32, l))
            .collect();
        c.sort_by(|a, b| b.1.total_cmp(&a.1));
        if self.params.top_k > 0 {
            c.truncate(self.params.top_k.max(1));
        }
        let probs = softmax(&c);
        if self.params.top_p < 1.0 {
            let mut cum = 0.0;
            let mut keep = c.len();
            for (i, p) in probs.iter().enumerate() {
                cum += p;
                if cum >= self.params.top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
            c.truncate(keep);
        }
        if self.params.min_p > 0.0 {
            let probs = softmax(&c);
            let floor = probs[0] * self.params.min_p as f64;
            let keep = probs.iter().take_while(|&&p| p >= floor).count().max(1);
            c.truncate(keep);
        }
        c
    }
}

fn softmax(sorted: &[(u32, f32)]) -> Vec<f64> {
    let max = sorted.first().map(|c| c.1 as f64).unwrap_or(0.0);
    let e: Vec<f64> = sorted
        .iter()
        .map(|(_, l)| (*l as f64 - max).exp())
        .collect();
    let sum: f64 = e.iter().sum();
    e.into_iter().map(|x| x / sum).collect()
}

/// Index of the largest logit; the lowest index wins ties, as in llama.cpp.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(f: impl FnOnce(&mut SamplingParams)) -> SamplingParams {
        let mut p = SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            seed: 7,
        };
        f(&mut p);
        p
    }

    fn draws(p: SamplingParams, logits: &[f32], n: usize) -> Vec<u32> {
        let mut s = Sampler::new(p).unwrap();
        (0..n).map(|_| s.sample(logits, &[])).collect()
    }

    #[test]
    fn temperature_zero_is_argmax() {
        let logits = [0.1, 3.0, 2.9, -1.0];
        let got = draws(params(|p| p.temperature = 0.0), &logits, 20);
        assert!(got.iter().all(|&t| t == 1));
    }

    #[test]
    fn top_k_keeps_only_the_k_best() {
        let logits = [1.0, 1.1, 1.2, 1.3, 1.4];
        let got = draws(params(|p| p.top_k = 2), &logits, 300);
        assert!(got.iter().all(|&t| t == 3 || t == 4), "{got:?}");
        assert!(got.contains(&3) && got.contains(&4));
    }

    #[test]
    fn top_p_cuts_the_tail() {
        // probabilities ≈ 0.64, 0.24, 0.09, 0.03: top-p 0.8 keeps the first two.
        let logits = [3.0, 2.0, 1.0, 0.0];
        let got = draws(params(|p| p.top_p = 0.8), &logits, 500);
        assert!(got.iter().all(|&t| t <= 1), "{got:?}");
        assert!(got.contains(&1));
    }

    #[test]
    fn min_p_drops_tokens_far_below_the_best() {
        // p(1)/p(0) = e^-1 ≈ 0.37 survives min-p 0.3, p(2)/p(0) = e^-2 ≈ 0.14 does not.
        let logits = [2.0, 1.0, 0.0];
        let got = draws(params(|p| p.min_p = 0.3), &logits, 500);
        assert!(got.iter().all(|&t| t <= 1), "{got:?}");
        assert!(got.contains(&1));
    }

    #[test]
    fn repeat_penalty_divides_positive_and_multiplies_negative_logits() {
        let s = Sampler::new(params(|p| p.repeat_penalty = 2.0)).unwrap();
        let mut logits = vec![4.0, -1.0, 3.0];
        s.apply_penalties(&mut logits, &[0, 1, 0]);
        assert_eq!(logits, vec![2.0, -2.0, 3.0]);
    }

    #[test]
    fn frequency_penalty_counts_occurrences_and_presence_penalty_does_not() {
        let s = Sampler::new(params(|p| {
            p.frequency_penalty = 0.5;
            p.presence_penalty = 0.25;
        }))
        .unwrap();
        let mut logits = vec![4.0, -1.0, 3.0];
        s.apply_penalties(&mut logits, &[0, 1, 0, 0]);
        assert_eq!(logits, vec![4.0 - 1.5 - 0.25, -1.0 - 0.5 - 0.25, 3.0]);
    }

    #[test]
    fn penalties_only_look_at_the_last_n_tokens() {
        let s = Sampler::new(params(|p| {
            p.presence_penalty = 1.0;
            p.repeat_last_n = 2;
        }))
        .unwrap();
        let mut logits = vec![1.0, 1.0, 1.0];
        s.apply_penalties(&mut logits, &[0, 1, 2]);
        assert_eq!(logits, vec![1.0, 0.0, 0.0]);
    }

    #[test]
    fn repeat_penalty_changes_the_greedy_choice() {
        let mut s = Sampler::new(params(|p| {
            p.temperature = 0.0;
            p.repeat_penalty = 1.5;
        }))
        .unwrap();
        assert_eq!(s.sample(&[3.0, 2.5], &[]), 0);
        assert_eq!(s.sample(&[3.0, 2.5], &[0]), 1);
    }

    #[test]
    fn same_seed_same_draws_and_other_seed_differs() {
        let logits: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.3).collect();
        let a = draws(params(|_| {}), &logits, 64);
        let b = draws(params(|_| {}), &logits, 64);
        let c = draws(params(|p| p.seed = 8), &logits, 64);
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn masked_tokens_are_never_drawn_even_with_every_filter_off() {
        let mut logits = vec![f32::NEG_INFINITY; 64];
        logits[5] = -30.0;
        logits[9] = -31.0;
        let got = draws(params(|_| {}), &logits, 300);
        assert!(got.iter().all(|&t| t == 5 || t == 9), "{got:?}");
        let penalised = draws(params(|p| p.presence_penalty = 2.0), &logits, 50);
        assert!(penalised.iter().all(|&t| t == 5 || t == 9));
    }

    #[test]
    fn nonsense_settings_are_rejected() {
        assert!(Sampler::new(params(|p| p.temperature = -1.0)).is_err());
        assert!(Sampler::new(params(|p| p.top_p = 0.0)).is_err());
        assert!(Sampler::new(params(|p| p.min_p = 1.5)).is_err());
        assert!(Sampler::new(params(|p| p.repeat_penalty = 0.0)).is_err());
        assert!(Sampler::new(params(|p| p.frequency_penalty = 2.5)).is_err());
        assert!(Sampler::new(params(|p| p.presence_penalty = f32::NAN)).is_err());
    }
}
