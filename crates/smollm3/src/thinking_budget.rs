//! A thinking budget: an upper bound on how many tokens SmolLM3 may spend reasoning.
//!
//! In thinking mode the model may reason for thousands of tokens before it answers. With a
//! budget, once the reasoning has reached it the engine writes `</think>` itself, as if the
//! model had closed its reasoning, and the model goes on to the answer. The decision is made
//! on token ids: SmolLM3's `<think>` and `</think>` are single control tokens, so counting
//! the ids between them is exact, with no text decoding involved. The generation loop only
//! offers the hook ([`smolbot_inference::generate::TokenAction::Inject`]); when to use it is
//! this module's business, since it is a fact of SmolLM3's output format.

use super::error::Smollm3Error;
use super::tokenizer::GgufTokenizer;

/// Where the output stands with respect to the think block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Nothing generated yet; the output may open with `<think>`.
    Start,
    /// Inside the think block, counting.
    Reasoning,
    /// The block was closed (by the model or by the budget), or never opened.
    Done,
}

/// Counts reasoning tokens as they are generated and says when to close the think block.
#[derive(Debug, Clone)]
pub struct ThinkingBudget {
    max: usize,
    used: usize,
    open: u32,
    close: u32,
    phase: Phase,
}

/// The ids of `<think>` and `</think>`, which must each be one token of the vocabulary
/// (SmolLM3's are control tokens).
pub fn think_tag_ids(tokenizer: &GgufTokenizer) -> Result<(u32, u32), Smollm3Error> {
    let single = |tag: &str| -> Result<u32, Smollm3Error> {
        match tokenizer.encode(tag, true)?.as_slice() {
            [id] => Ok(*id),
            ids => Err(Smollm3Error::ThinkingBudget(format!(
                "`{tag}` is not a single token of this model (it encodes to {ids:?}), \
                 so the model has no thinking mode to budget"
            ))),
        }
    };
    Ok((single("<think>")?, single("</think>")?))
}

/// Whether `prompt` leaves a think block open (its last `<think>` comes after its last
/// `</think>`), so that the output starts inside the reasoning.
pub fn prompt_opens_reasoning(prompt: &[u32], open: u32, close: u32) -> bool {
    let last = |tag: u32| prompt.iter().rposition(|&id| id == tag);
    match (last(open), last(close)) {
        (Some(o), Some(c)) => o > c,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

impl ThinkingBudget {
    /// A budget of `max` reasoning tokens for the output that follows `prompt`.
    pub fn new(
        tokenizer: &GgufTokenizer,
        max: usize,
        prompt: &[u32],
    ) -> Result<Self, Smollm3Error> {
        let (open, close) = think_tag_ids(tokenizer)?;
        Ok(Self::with_tags(max, open, close, prompt))
    }

    /// As [`Self::new`], with the tag ids given.
    pub fn with_tags(max: usize, open: u32, close: u32, prompt: &[u32]) -> Self {
        let phase = if prompt_opens_reasoning(prompt, open, close) {
            Phase::Reasoning
        } else {
            Phase::Start
        };
        Self {
            max,
            used: 0,
            open,
            close,
            phase,
        }
    }

    /// Tokens to append to the prompt before generating: `</think>` when the prompt itself
    /// opened the reasoning and the budget is zero, nothing otherwise.
    pub fn prompt_suffix(&mut self) -> Vec<u32> {
        if self.phase == Phase::Reasoning && self.max == 0 {
            self.phase = Phase::Done;
            vec![self.close]
        } else {
            Vec::new()
        }
    }

    /// Takes the next generated id; returns the tokens to inject after it when the budget
    /// has just run out (`</think>`), `None` otherwise.
    pub fn observe(&mut self, id: u32) -> Option<Vec<u32>> {
        match self.phase {
            Phase::Start if id == self.open => {
                self.phase = Phase::Reasoning;
                self.spent_check()
            }
            Phase::Start => {
                self.phase = Phase::Done;
                None
            }
            Phase::Reasoning if id == self.close => {
                self.phase = Phase::Done;
                None
            }
            Phase::Reasoning => {
                self.used += 1;
                self.spent_check()
            }
            Phase::Done => None,
        }
    }

    /// Reasoning tokens counted so far.
    pub fn used(&self) -> usize {
        self.used
    }

    /// Whether the output is inside the think block.
    pub fn is_reasoning(&self) -> bool {
        self.phase == Phase::Reasoning
    }

    /// The id of `</think>`, which the budget injects.
    pub fn close_id(&self) -> u32 {
        self.close
    }

    fn spent_check(&mut self) -> Option<Vec<u32>> {
        (self.used >= self.max).then(|| {
            self.phase = Phase::Done;
            vec![self.close]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPEN: u32 = 100;
    const CLOSE: u32 = 101;

    /// Feeds `ids` and returns the stream as the model sees it, injections included.
    fn run(budget: &mut ThinkingBudget, ids: &[u32]) -> Vec<u32> {
        let mut out = Vec::new();
        for &id in ids {
            out.push(id);
            if let Some(extra) = budget.observe(id) {
                out.extend(extra);
            }
        }
        out
    }

    #[test]
    fn closes_after_exactly_max_reasoning_tokens() {
        let mut b = ThinkingBudget::with_tags(3, OPEN, CLOSE, &[1, 2]);
        let out = run(&mut b, &[OPEN, 5, 6, 7, 8, 9]);
        assert_eq!(out, vec![OPEN, 5, 6, 7, CLOSE, 8, 9]);
        assert_eq!(b.used(), 3);
        assert!(!b.is_reasoning());
    }

    #[test]
    fn model_closing_in_time_gets_no_injection() {
        let mut b = ThinkingBudget::with_tags(5, OPEN, CLOSE, &[]);
        let out = run(&mut b, &[OPEN, 5, CLOSE, 6, 7, 8, 9, 10, 11]);
        assert_eq!(out, vec![OPEN, 5, CLOSE, 6, 7, 8, 9, 10, 11]);
    }

    #[test]
    fn output_without_think_block_is_not_counted() {
        let mut b = ThinkingBudget::with_tags(1, OPEN, CLOSE, &[]);
        let out = run(&mut b, &[5, OPEN, 6, 7]);
        assert_eq!(out, vec![5, OPEN, 6, 7]);
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn prompt_that_opened_the_block_starts_counting_at_once() {
        let mut b = ThinkingBudget::with_tags(2, OPEN, CLOSE, &[OPEN, CLOSE, 3, OPEN, 4]);
        assert!(b.is_reasoning());
        assert!(b.prompt_suffix().is_empty());
        assert_eq!(run(&mut b, &[5, 6, 7]), vec![5, 6, CLOSE, 7]);
    }

    #[test]
    fn closed_block_in_prompt_is_not_reasoning() {
        assert!(!prompt_opens_reasoning(&[OPEN, 5, CLOSE, 6], OPEN, CLOSE));
        assert!(prompt_opens_reasoning(&[OPEN, 5], OPEN, CLOSE));
        assert!(!prompt_opens_reasoning(&[5, 6], OPEN, CLOSE));
    }

    #[test]
    fn zero_budget_closes_immediately() {
        let mut b = ThinkingBudget::with_tags(0, OPEN, CLOSE, &[]);
        assert!(b.prompt_suffix().is_empty());
        assert_eq!(run(&mut b, &[OPEN, 5]), vec![OPEN, CLOSE, 5]);

        let mut b = ThinkingBudget::with_tags(0, OPEN, CLOSE, &[OPEN]);
        assert_eq!(b.prompt_suffix(), vec![CLOSE]);
        assert_eq!(run(&mut b, &[5, 6]), vec![5, 6]);
    }
}
