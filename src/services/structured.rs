//! Structured outputs: a reply that matches a JSON schema or a grammar, and tool calls whose
//! arguments match the tool's `parameters`, by construction.
//!
//! A request's wish ([`ResponseFormat`], `tool_choice`) becomes an [`OutputConstraint`] when it
//! is prepared (compiling is where an unsupported schema is refused, before the request takes
//! a place in the queue); the engine runs it as a [`ConstraintGate`], which masks the logits
//! of each step and follows the sampled tokens. The gate decides *when* a grammar applies,
//! from SmolLM3's output format:
//!
//! - reasoning stays free text: with thinking on, the first token may also open `<think>`,
//!   and the answer's grammar starts after `</think>` (the model's or a thinking budget's);
//! - a forced tool call (`tool_choice` `"required"` or a named function) is constrained from
//!   the server-written opening to its `</tool_call>`;
//! - with `tool_choice` `"auto"` (and no response format), each `<tool_call>` the model opens
//!   switches the call's grammar on until its `</tool_call>` (a lazy trigger), then the text
//!   is free again.

use std::time::Duration;

use serde_json::{json, Value as Json};

use crate::smollm3::grammar::{Grammar, GrammarSpec, GrammarState};
use crate::smollm3::Smollm3Error;

/// What a request asks the reply to match.
#[derive(Debug, Clone, PartialEq)]
pub enum ResponseFormat {
    /// Any JSON object (OpenAI's `{"type": "json_object"}`).
    JsonObject,
    /// A JSON value matching this schema (OpenAI's `json_schema`, llama-server's `json_schema`).
    JsonSchema(Json),
    /// Text matching a grammar in llguidance's Lark dialect (llama-server's `grammar`).
    Grammar(String),
}

impl ResponseFormat {
    /// The grammar this format compiles to.
    pub fn spec(&self) -> GrammarSpec {
        match self {
            Self::JsonObject => GrammarSpec::JsonSchema(json!({"type": "object"})),
            Self::JsonSchema(schema) => GrammarSpec::JsonSchema(schema.clone()),
            Self::Grammar(text) => GrammarSpec::Lark(text.clone()),
        }
    }
}

/// The compiled constraints of one request (see the module doc for when each applies).
#[derive(Debug, Clone, Default)]
pub struct OutputConstraint {
    /// The answer's grammar, from its first token after any reasoning.
    pub answer: Option<Grammar>,
    /// A tool call's grammar, switched on by this token (`<tool_call>`) each time the model
    /// writes it.
    pub tool_call: Option<(u32, Grammar)>,
    /// `<think>` and `</think>`, when the answer may reason before the grammar starts.
    pub think: Option<(u32, u32)>,
    /// The prompt left a think block open, so the output starts inside the reasoning.
    pub starts_reasoning: bool,
}

impl OutputConstraint {
    /// Whether anything is constrained at all.
    pub fn is_empty(&self) -> bool {
        self.answer.is_none() && self.tool_call.is_none()
    }

    /// The gate that runs this constraint over one generation.
    pub fn gate(&self) -> ConstraintGate {
        let phase = if self.starts_reasoning && self.think.is_some() {
            Phase::Reasoning
        } else {
            Phase::Start
        };
        ConstraintGate {
            constraint: self.clone(),
            phase,
            pending: None,
            mask_time: Duration::ZERO,
            masks: 0,
        }
    }
}

/// Where the output stands.
enum Phase {
    /// Nothing generated yet.
    Start,
    /// Inside `<think>…</think>`: free text.
    Reasoning,
    /// The answer, under its grammar.
    Answer(GrammarState),
    /// Free text, watching for `<tool_call>`.
    Free,
    /// Inside a tool call the model opened, under the call's grammar.
    Call(GrammarState),
}

/// One generation's constraint at work: masks each step's logits and follows each token.
pub struct ConstraintGate {
    constraint: OutputConstraint,
    phase: Phase,
    /// The answer's state whose first mask was computed at the start, before it was known
    /// whether the model reasons first.
    pending: Option<GrammarState>,
    /// Time spent in finished grammar states' masks, and how many (the running state keeps
    /// its own until it ends).
    mask_time: Duration,
    masks: usize,
}

impl ConstraintGate {
    /// Sets the logits of tokens that may not come next to −∞.
    pub fn mask(&mut self, logits: &mut [f32]) -> Result<(), Smollm3Error> {
        match &mut self.phase {
            Phase::Start => {
                let Some(answer) = &self.constraint.answer else {
                    return Ok(());
                };
                // The answer's first tokens, or `<think>` to reason first; the state is kept
                // for the answer if that is what comes.
                let state = self.pending.get_or_insert_with(|| answer.start());
                let open = self.constraint.think.map(|(open, _)| open);
                let kept = open.and_then(|id| logits.get(id as usize).copied());
                state.mask(logits)?;
                if let (Some(id), Some(logit)) = (open, kept) {
                    logits[id as usize] = logit;
                }
                Ok(())
            }
            Phase::Answer(state) | Phase::Call(state) => state.mask(logits),
            Phase::Reasoning | Phase::Free => Ok(()),
        }
    }

    /// Follows the sampled (or injected) token `id`.
    pub fn observe(&mut self, id: u32) -> Result<(), Smollm3Error> {
        let think = self.constraint.think;
        match &mut self.phase {
            Phase::Start => {
                if think.is_some_and(|(open, _)| open == id) {
                    self.pending = None;
                    self.phase = Phase::Reasoning;
                    return Ok(());
                }
                self.phase = self.after_reasoning();
                self.observe(id)
            }
            Phase::Reasoning => {
                if think.is_some_and(|(_, close)| close == id) {
                    self.phase = self.after_reasoning();
                }
                Ok(())
            }
            Phase::Answer(state) => state.advance(id),
            Phase::Free => {
                if let Some((trigger, grammar)) = &self.constraint.tool_call {
                    if *trigger == id {
                        self.phase = Phase::Call(grammar.start());
                    }
                }
                Ok(())
            }
            Phase::Call(state) => {
                state.advance(id)?;
                if state.is_finished() {
                    let (n, t) = state.mask_stats();
                    self.masks += n;
                    self.mask_time += t;
                    self.phase = Phase::Free;
                }
                Ok(())
            }
        }
    }

    /// The phase after the reasoning (or in place of it): the answer's grammar, or free text.
    fn after_reasoning(&mut self) -> Phase {
        match (self.pending.take(), &self.constraint.answer) {
            (Some(state), _) => Phase::Answer(state),
            (None, Some(answer)) => Phase::Answer(answer.start()),
            (None, None) => Phase::Free,
        }
    }

    /// Masks computed so far and the time they took.
    pub fn mask_stats(&self) -> (usize, Duration) {
        let (n, t) = match &self.phase {
            Phase::Answer(state) | Phase::Call(state) => state.mask_stats(),
            _ => (0, Duration::ZERO),
        };
        (self.masks + n, self.mask_time + t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::stub::stub_tokenizer;
    use crate::smollm3::grammar::{GrammarCompiler, ToolCallOpening};
    use crate::smollm3::GgufTokenizer;

    fn one(tok: &GgufTokenizer, text: &str) -> u32 {
        let ids = tok.encode(text, true).unwrap();
        assert_eq!(ids.len(), 1, "{text} is one token");
        ids[0]
    }

    /// Ids of `text` that the gate's mask leaves (finite) at this step.
    fn allowed(gate: &mut ConstraintGate, vocab: usize) -> Vec<u32> {
        let mut logits = vec![0.0f32; vocab];
        gate.mask(&mut logits).unwrap();
        (0..vocab as u32)
            .filter(|&id| logits[id as usize].is_finite())
            .collect()
    }

    fn feed(gate: &mut ConstraintGate, tok: &GgufTokenizer, text: &str) {
        for id in tok.encode(text, true).unwrap() {
            gate.observe(id)
                .unwrap_or_else(|e| panic!("{text:?} at {id}: {e}"));
        }
    }

    #[test]
    fn reasoning_is_free_and_the_answer_starts_after_it() {
        let tok = stub_tokenizer().unwrap();
        let compiler = GrammarCompiler::new(&tok).unwrap();
        let grammar = compiler
            .compile(&GrammarSpec::JsonSchema(json!({"enum": ["yes", "no"]})))
            .unwrap();
        let (open, close) = (one(&tok, "<think>"), one(&tok, "</think>"));
        let constraint = OutputConstraint {
            answer: Some(grammar),
            think: Some((open, close)),
            ..OutputConstraint::default()
        };
        let vocab = tok.vocab_size();
        let mut gate = constraint.gate();
        let first = allowed(&mut gate, vocab);
        assert!(first.contains(&open), "the answer may reason first");
        assert!(first.contains(&one(&tok, "\"")));
        assert!(!first.contains(&one(&tok, "a")));
        gate.observe(open).unwrap();
        assert_eq!(allowed(&mut gate, vocab).len(), vocab, "reasoning is free");
        feed(&mut gate, &tok, "hmm, any text");
        gate.observe(close).unwrap();
        let after = allowed(&mut gate, vocab);
        assert!(!after.contains(&open) && after.contains(&one(&tok, "\"")));
        feed(&mut gate, &tok, "\"no\"");
        let end = allowed(&mut gate, vocab);
        assert!(!end.is_empty() && end.iter().all(|id| tok.end_of_generation().contains(id)));
        assert!(
            gate.observe(one(&tok, "a")).is_err(),
            "a token past the grammar fails"
        );
    }

    #[test]
    fn without_thinking_the_grammar_holds_from_the_first_token() {
        let tok = stub_tokenizer().unwrap();
        let compiler = GrammarCompiler::new(&tok).unwrap();
        let constraint = OutputConstraint {
            answer: Some(
                compiler
                    .compile(&GrammarSpec::JsonSchema(json!({"type": "boolean"})))
                    .unwrap(),
            ),
            ..OutputConstraint::default()
        };
        let mut gate = constraint.gate();
        let first = allowed(&mut gate, tok.vocab_size());
        assert!(!first.contains(&one(&tok, "<think>")));
        assert!(gate.observe(one(&tok, "<think>")).is_err());
    }

    #[test]
    fn a_tool_call_the_model_opens_is_constrained_until_it_closes() {
        let tok = stub_tokenizer().unwrap();
        let compiler = GrammarCompiler::new(&tok).unwrap();
        let tools = vec![json!({"name": "get_weather", "parameters": {
            "type": "object", "properties": {"unit": {"enum": ["c", "f"]}},
            "required": ["unit"], "additionalProperties": false}})];
        let trigger = one(&tok, "<tool_call>");
        let grammar = compiler
            .compile(&GrammarSpec::ToolCall {
                tools,
                written: ToolCallOpening::Tag,
            })
            .unwrap();
        let constraint = OutputConstraint {
            tool_call: Some((trigger, grammar)),
            ..OutputConstraint::default()
        };
        let vocab = tok.vocab_size();
        let mut gate = constraint.gate();
        feed(&mut gate, &tok, "Let me check.");
        assert_eq!(allowed(&mut gate, vocab).len(), vocab, "text is free");
        gate.observe(trigger).unwrap();
        let in_call = allowed(&mut gate, vocab);
        assert!(!in_call.is_empty());
        for id in in_call {
            let text = tok.decode(&[id]).unwrap();
            assert!(
                text.starts_with('\n'),
                "only the call's newline, got {text:?}"
            );
        }
        feed(
            &mut gate,
            &tok,
            "\n{\"name\": \"get_weather\", \"arguments\": {\"unit\": \"f\"}}\n</tool_call>",
        );
        assert_eq!(
            allowed(&mut gate, vocab).len(),
            vocab,
            "free again after the call"
        );
        gate.observe(trigger).unwrap();
        assert!(
            gate.observe(one(&tok, "a")).is_err(),
            "a second call is held too"
        );
    }
}
