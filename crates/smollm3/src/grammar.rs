//! Grammar-constrained decoding on SmolLM3's vocabulary, with `llguidance`.
//!
//! llguidance compiles a JSON schema or a Lark grammar against a token trie and, at each
//! step, says which tokens may come next (a bit mask over the vocabulary); the sampler
//! drops the rest, so the output matches by construction. This module is the bridge: it
//! builds the trie from the GGUF tokenizer (byte-level BPE, each token's bytes recovered
//! through GPT-2's byte → character table; control tokens marked as llguidance's special
//! tokens, so a grammar names them as `<tool_call>`), compiles requests into [`Grammar`]s and
//! drives one per generation as a [`GrammarState`]. It also writes the grammar of SmolLM3's
//! own tool-call format, since that format is this layer's business.
//!
//! The model's end-of-generation tokens are the trie's EOS set: llguidance allows them only
//! where the grammar may end, and only them once it has ended.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use serde_json::{json, Map, Value as Json};

use super::error::Smollm3Error;
use super::tokenizer::GgufTokenizer;

/// How JSON is laid out under a constraint: no free whitespace (a model could otherwise
/// fill its budget with spaces), and the separators SmolLM3 writes its tool calls with.
fn layout() -> Json {
    json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "})
}

/// What the output must match.
#[derive(Debug, Clone, PartialEq)]
pub enum GrammarSpec {
    /// A JSON Schema (draft 2020-12 subset that llguidance supports).
    JsonSchema(Json),
    /// A grammar in llguidance's Lark dialect (which also takes `%json {…}` schemas and
    /// control tokens written as `<name>`).
    Lark(String),
    /// One SmolLM3 tool call after an opened `<tool_call>`: the call's JSON (`name` one of
    /// the tools', `arguments` matching its `parameters`), then `</tool_call>`.
    ToolCall {
        /// Function schemas: `name`, optional `parameters`.
        tools: Vec<Json>,
        /// How much of the call the output already holds.
        written: ToolCallOpening,
    },
    /// Either a JSON value matching `schema` or one tool call (`<tool_call>`, the call, and
    /// `</tool_call>`): a format-constrained answer that may still call a tool.
    JsonOrToolCall { schema: Json, tools: Vec<Json> },
}

/// How much of a tool call's opening is already in the output (see [`GrammarSpec::ToolCall`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolCallOpening {
    /// Just `<tool_call>`.
    Tag,
    /// `<tool_call>` and its newline.
    TagAndNewline,
    /// The whole opening up to `"arguments": ` of the function with this name: only its
    /// arguments and the closing `}` are left.
    Arguments(String),
}

/// The llguidance side of one tokenizer: its token trie and the grammar compiler over it.
/// Built once per model (about a second for a 128k vocabulary) and shared by requests.
pub struct GrammarCompiler {
    factory: ParserFactory,
    vocab: usize,
}

impl std::fmt::Debug for GrammarCompiler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrammarCompiler")
            .field("vocab", &self.vocab)
            .finish()
    }
}

/// The tokenizer as llguidance sees it: the trie, and tokenizing for forced text.
struct GgufTokEnv {
    trie: TokTrie,
    tokenizer: GgufTokenizer,
}

impl TokenizerEnv for GgufTokEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        match std::str::from_utf8(s) {
            Ok(text) => self
                .tokenizer
                .encode(text, false)
                .unwrap_or_else(|_| self.trie.greedy_tokenize(s)),
            Err(_) => self.trie.greedy_tokenize(s),
        }
    }
}

/// GPT-2's printable character for each byte, reversed: what byte-level BPE pieces decode to.
fn byte_level_decoder() -> HashMap<char, u8> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut map = HashMap::new();
    let mut next = 256u32;
    for b in 0..=255u8 {
        if printable(b) {
            map.insert(b as char, b);
        } else {
            map.insert(char::from_u32(next).unwrap_or('\u{0}'), b);
            next += 1;
        }
    }
    map
}

/// The bytes each token stands for: control tokens as llguidance's special tokens
/// (`0xFF` then their text), the rest through the byte-level table (a character outside it,
/// as in a user-defined token stored as plain text, stands for its own UTF-8 bytes).
pub fn token_bytes(tokenizer: &GgufTokenizer) -> Vec<Vec<u8>> {
    let control: HashMap<u32, String> = tokenizer
        .control_tokens()
        .into_iter()
        .map(|(text, id)| (id, text))
        .collect();
    let table = byte_level_decoder();
    (0..tokenizer.vocab_size() as u32)
        .map(|id| {
            if let Some(text) = control.get(&id) {
                let mut bytes = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                bytes.extend_from_slice(text.as_bytes());
                return bytes;
            }
            let piece = tokenizer.piece(id).unwrap_or_default();
            let mut bytes = Vec::with_capacity(piece.len());
            for c in piece.chars() {
                match table.get(&c) {
                    Some(&b) => bytes.push(b),
                    None => bytes.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
                }
            }
            bytes
        })
        .collect()
}

fn grammar_error(err: impl std::fmt::Display) -> Smollm3Error {
    Smollm3Error::Grammar(err.to_string())
}

impl GrammarCompiler {
    /// The trie of `tokenizer`'s vocabulary, its end-of-generation tokens as EOS.
    pub fn new(tokenizer: &GgufTokenizer) -> Result<Self, Smollm3Error> {
        let words = token_bytes(tokenizer);
        let vocab = words.len();
        let eos = tokenizer.end_of_generation();
        let Some(&first) = eos.first() else {
            return Err(grammar_error(
                "the tokenizer has no end-of-generation token, so no grammar can end",
            ));
        };
        let trie = TokTrie::from(&TokRxInfo::new(vocab as u32, first), &words).with_eos_tokens(eos);
        let env: TokEnv = Arc::new(GgufTokEnv {
            trie,
            tokenizer: tokenizer.clone(),
        });
        let mut factory = ParserFactory::new_simple(&env).map_err(grammar_error)?;
        factory.quiet();
        Ok(Self { factory, vocab })
    }

    /// Compiles `spec`; an unsupported schema keyword or a grammar syntax error comes back
    /// as [`Smollm3Error::Grammar`] with llguidance's explanation.
    pub fn compile(&self, spec: &GrammarSpec) -> Result<Grammar, Smollm3Error> {
        let grammar = match spec {
            GrammarSpec::JsonSchema(schema) => {
                TopLevelGrammar::from_json_schema(with_layout(schema.clone()))
            }
            GrammarSpec::Lark(text) => TopLevelGrammar::from_lark(text.clone()),
            GrammarSpec::ToolCall { tools, written } => {
                TopLevelGrammar::from_lark(self.tool_call_lark(tools, written)?)
            }
            GrammarSpec::JsonOrToolCall { schema, tools } => TopLevelGrammar::from_lark(format!(
                "start: answer | {} \"\\n\" call \"\\n\" {}\nanswer: %json {}\ncall: %json {}\n",
                self.tag("<tool_call>"),
                self.tag("</tool_call>"),
                with_layout(schema.clone()),
                calls_schema(tools)?,
            )),
        };
        let parser = self.factory.create_parser(grammar).map_err(grammar_error)?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(err) = matcher.get_error() {
            return Err(grammar_error(err));
        }
        Ok(Grammar {
            matcher,
            vocab: self.vocab,
        })
    }

    /// `tag` as a Lark grammar names it: `<name>` when it is one control token of this
    /// vocabulary, a quoted string otherwise.
    fn tag(&self, tag: &str) -> String {
        if self
            .factory
            .tok_env()
            .tok_trie()
            .get_special_token(tag)
            .is_some()
        {
            tag.to_owned()
        } else {
            format!("\"{tag}\"")
        }
    }

    /// The Lark grammar of one tool call (see [`GrammarSpec::ToolCall`]).
    fn tool_call_lark(
        &self,
        tools: &[Json],
        written: &ToolCallOpening,
    ) -> Result<String, Smollm3Error> {
        let close = self.tag("</tool_call>");
        match written {
            ToolCallOpening::Arguments(name) => {
                let tool = tools
                    .iter()
                    .find(|t| t.get("name").and_then(Json::as_str) == Some(name))
                    .ok_or_else(|| grammar_error(format!("no tool is named `{name}`")))?;
                Ok(format!(
                    "start: args \"}}\\n\" {close}\nargs: %json {}\n",
                    parameters(tool)
                ))
            }
            ToolCallOpening::Tag | ToolCallOpening::TagAndNewline => {
                let lead = if *written == ToolCallOpening::Tag {
                    "\"\\n\" "
                } else {
                    ""
                };
                Ok(format!(
                    "start: {lead}call \"\\n\" {close}\ncall: %json {}\n",
                    calls_schema(tools)?
                ))
            }
        }
    }
}

/// The JSON of a call of one of `tools`: its `name`, then `arguments` matching its
/// `parameters` (any object when it has none).
fn calls_schema(tools: &[Json]) -> Result<Json, Smollm3Error> {
    let calls: Vec<Json> = tools
        .iter()
        .filter_map(|tool| {
            let name = tool.get("name").and_then(Json::as_str)?;
            Some(json!({
                "type": "object",
                "properties": {
                    "name": {"const": name},
                    "arguments": parameters(tool),
                },
                "required": ["name", "arguments"],
                "additionalProperties": false,
            }))
        })
        .collect();
    if calls.is_empty() {
        return Err(grammar_error("no tool has a name"));
    }
    Ok(with_layout(json!({"anyOf": calls})))
}

/// A tool's `parameters` schema, with the constrained layout.
fn parameters(tool: &Json) -> Json {
    with_layout(
        tool.get("parameters")
            .cloned()
            .unwrap_or_else(|| json!({"type": "object"})),
    )
}

/// `schema` with the constrained layout, unless it sets its own (`x-guidance`).
fn with_layout(schema: Json) -> Json {
    match schema {
        Json::Object(mut fields) => {
            fields
                .entry("x-guidance")
                .or_insert_with(|| Json::Object(Map::new()));
            if let Some(Json::Object(options)) = fields.get_mut("x-guidance") {
                if let Json::Object(defaults) = layout() {
                    for (key, value) in defaults {
                        options.entry(key).or_insert(value);
                    }
                }
            }
            Json::Object(fields)
        }
        // `true` accepts any JSON value; anything else is llguidance's to refuse.
        other => other,
    }
}

/// A compiled grammar, ready to start any number of generations.
#[derive(Clone)]
pub struct Grammar {
    matcher: Matcher,
    vocab: usize,
}

impl std::fmt::Debug for Grammar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grammar")
            .field("vocab", &self.vocab)
            .finish()
    }
}

impl Grammar {
    /// A fresh parser at the grammar's start.
    pub fn start(&self) -> GrammarState {
        GrammarState {
            matcher: self.matcher.deep_clone(),
            vocab: self.vocab,
            mask_time: Duration::ZERO,
            masks: 0,
        }
    }
}

/// One generation's place in its grammar.
pub struct GrammarState {
    matcher: Matcher,
    vocab: usize,
    /// Time spent computing masks, and how many (for `smolbot bench`).
    mask_time: Duration,
    masks: usize,
}

impl GrammarState {
    /// Sets the logits of every token the grammar does not allow next to −∞ (ids past the
    /// tokenizer's vocabulary, which a model may pad its output with, included).
    pub fn mask(&mut self, logits: &mut [f32]) -> Result<(), Smollm3Error> {
        let started = Instant::now();
        let allowed = self.matcher.compute_mask_or_eos().map_err(grammar_error)?;
        self.mask_time += started.elapsed();
        self.masks += 1;
        let words = allowed.as_slice();
        for (start, chunk) in logits.chunks_mut(32).enumerate() {
            let word = words.get(start).copied().unwrap_or(0);
            if word == u32::MAX {
                continue;
            }
            for (bit, logit) in chunk.iter_mut().enumerate() {
                if word & (1 << bit) == 0 || start * 32 + bit >= self.vocab {
                    *logit = f32::NEG_INFINITY;
                }
            }
        }
        Ok(())
    }

    /// Moves past `id`, which must be one the last mask allowed.
    pub fn advance(&mut self, id: u32) -> Result<(), Smollm3Error> {
        self.matcher.consume_token(id).map_err(grammar_error)
    }

    /// The grammar has matched completely: only an end token may follow.
    pub fn is_finished(&self) -> bool {
        self.matcher.is_stopped()
    }

    /// The grammar may end here (an end token is allowed).
    pub fn is_accepting(&mut self) -> bool {
        self.matcher.is_accepting().unwrap_or(false)
    }

    /// Masks computed so far and the time they took.
    pub fn mask_stats(&self) -> (usize, Duration) {
        (self.masks, self.mask_time)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synthetic::{write_gguf, SyntheticSpec};
    use smolbot_inference::GgufFile;

    fn tokenizer() -> GgufTokenizer {
        static PATH: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
        let path = PATH.get_or_init(|| {
            let dir = std::env::temp_dir().join(format!("smolbot-grammar-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join("tiny.gguf");
            write_gguf(&SyntheticSpec::tiny(), &path).unwrap();
            path
        });
        GgufTokenizer::from_gguf(&GgufFile::open(path).unwrap()).unwrap()
    }

    /// Greedy decoding under `grammar` with logits that always prefer the same arbitrary
    /// order of tokens: what the grammar leaves is all that can come out.
    fn drive(tok: &GgufTokenizer, grammar: &Grammar, prefer: impl Fn(u32) -> f32) -> String {
        let mut state = grammar.start();
        let mut out = Vec::new();
        for _ in 0..200 {
            let mut logits: Vec<f32> = (0..tok.vocab_size() as u32).map(&prefer).collect();
            state.mask(&mut logits).unwrap();
            let next = smolbot_inference::sampling::argmax(&logits);
            if tok.end_of_generation().contains(&next) {
                assert!(
                    state.is_accepting(),
                    "an end token while the grammar cannot end"
                );
                return tok.decode(&out).unwrap();
            }
            state.advance(next).unwrap();
            out.push(next);
        }
        panic!("no end within 200 tokens: {:?}", tok.decode(&out));
    }

    #[test]
    fn token_bytes_undo_the_byte_level_table_and_mark_control_tokens() {
        let tok = tokenizer();
        let bytes = token_bytes(&tok);
        for text in ["hello", " world", "\n", "é"] {
            let ids = tok.encode(text, false).unwrap();
            let joined: Vec<u8> = ids
                .iter()
                .flat_map(|&id| bytes[id as usize].clone())
                .collect();
            assert_eq!(joined, text.as_bytes(), "{text:?}");
        }
        let [close] = tok.encode("</tool_call>", true).unwrap()[..] else {
            panic!("</tool_call> is one token");
        };
        assert_eq!(bytes[close as usize], b"\xff</tool_call>");
    }

    #[test]
    fn a_schema_holds_whatever_the_logits_prefer() {
        let tok = tokenizer();
        let compiler = GrammarCompiler::new(&tok).unwrap();
        let schema = json!({
            "type": "object",
            "properties": {
                "n": {"type": "integer", "minimum": 3, "maximum": 7},
                "tag": {"enum": ["a", "b"]},
                "list": {"type": "array", "items": {"type": "boolean"}, "minItems": 1, "maxItems": 2},
            },
            "required": ["n", "tag", "list"],
            "additionalProperties": false,
        });
        let grammar = compiler.compile(&GrammarSpec::JsonSchema(schema)).unwrap();
        for seed in 0..5u32 {
            let text = drive(&tok, &grammar, |id| {
                (id.wrapping_mul(2654435761).wrapping_add(seed * 97) % 1000) as f32
            });
            let value: Json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
            let n = value["n"].as_i64().unwrap();
            assert!((3..=7).contains(&n), "{text}");
            assert!(
                ["a", "b"].contains(&value["tag"].as_str().unwrap()),
                "{text}"
            );
            let len = value["list"].as_array().unwrap().len();
            assert!((1..=2).contains(&len), "{text}");
        }
    }

    #[test]
    fn unsupported_schemas_and_bad_grammars_are_refused_with_the_reason() {
        let tok = tokenizer();
        let compiler = GrammarCompiler::new(&tok).unwrap();
        let err = compiler
            .compile(&GrammarSpec::JsonSchema(json!({"type": "nonsense"})))
            .unwrap_err()
            .to_string();
        assert!(err.contains("nonsense"), "{err}");
        let err = compiler
            .compile(&GrammarSpec::Lark("start: missing_rule".into()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing_rule"), "{err}");
    }

    #[test]
    fn a_tool_call_grammar_writes_a_call_and_closes_it() {
        let tok = tokenizer();
        let compiler = GrammarCompiler::new(&tok).unwrap();
        let tools = vec![json!({
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"unit": {"enum": ["c", "f"]}},
                "required": ["unit"],
                "additionalProperties": false,
            }
        })];
        let grammar = compiler
            .compile(&GrammarSpec::ToolCall {
                tools,
                written: ToolCallOpening::Tag,
            })
            .unwrap();
        let text = drive(&tok, &grammar, |id| ((id * 7919) % 613) as f32);
        let body = text
            .strip_prefix('\n')
            .and_then(|t| t.strip_suffix("\n</tool_call>"))
            .unwrap_or_else(|| panic!("{text:?}"));
        let call = crate::tool_calls::ToolCall::parse(body).unwrap();
        assert_eq!(call.name, "get_weather");
        assert!(["c", "f"].contains(&call.arguments["unit"].as_str().unwrap()));
    }
}
