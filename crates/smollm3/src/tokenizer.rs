//! The tokenizer, built from a GGUF file's `tokenizer.ggml.*` metadata alone with the
//! `tokenizers` crate: byte-level BPE with the pre-tokenizer llama.cpp picks for the file's
//! `tokenizer.ggml.pre` (SmolLM3's Llama-3 style split, SmolLM2's digit-splitting GPT-2 one).

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use super::error::Smollm3Error;
use smolbot_inference::GgufFile;

/// Llama-3's split (also llama.cpp's `llama-bpe` and `smaug-bpe`): letters, 1–3 digit groups,
/// punctuation runs, newlines, spaces.
pub(crate) const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// GGUF token types (llama.cpp `llama_token_type`).
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// Token texts llama.cpp treats as end-of-generation in addition to the ids the file names.
const END_OF_GENERATION_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<end_of_turn>",
    "<EOT>",
];

/// Text longer than this is tokenized a piece at a time. The `tokenizers` crate keeps about
/// 200 bytes of bookkeeping per byte of text while it works (offsets, alignments, token
/// strings), so a 1 MB text cost 200 MB at once; 64 KiB pieces keep that near 13 MB whatever
/// the length, and give the same ids (see [`pieces`]).
pub const ENCODE_PIECE_BYTES: usize = 64 * 1024;

/// A GGUF file's tokenizer with its special ids.
#[derive(Clone)]
pub struct GgufTokenizer {
    /// Special tokens in the text are plain characters (user and tool text).
    plain: Tokenizer,
    /// Special tokens in the text become control tokens (template markup, `--raw`).
    special: Tokenizer,
    pub bos: Option<u32>,
    pub add_bos: bool,
    end_of_generation: Vec<u32>,
    /// Longest piece of text tokenized at once ([`ENCODE_PIECE_BYTES`]).
    piece_bytes: usize,
}

impl GgufTokenizer {
    pub fn from_gguf(file: &GgufFile) -> Result<Self, Smollm3Error> {
        let path = file.path().display().to_string();
        let problem = |p: String| Smollm3Error::Tokenizer {
            path: path.clone(),
            problem: p,
        };
        let model = file.get_str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(problem(format!(
                "tokenizer model `{model}` is not supported (supported: gpt2 byte-level BPE)"
            )));
        }
        let tokens = file.get_str_array("tokenizer.ggml.tokens")?;
        let types = if file.has("tokenizer.ggml.token_type") {
            file.get_i64_array("tokenizer.ggml.token_type")?
        } else {
            vec![1; tokens.len()]
        };
        if types.len() != tokens.len() {
            return Err(problem(format!(
                "{} token types for {} tokens",
                types.len(),
                tokens.len()
            )));
        }
        let merges = file
            .get_str_array("tokenizer.ggml.merges")?
            .into_iter()
            .enumerate()
            .map(|(i, m)| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| {
                        problem(format!(
                            "merge {i} `{m}` is not two tokens separated by a space"
                        ))
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let vocab: tokenizers::models::bpe::Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.to_string(), i as u32))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .ignore_merges(false)
            .build()
            .map_err(|e| problem(format!("BPE tables are inconsistent: {e}")))?;
        let mut tokenizer = Tokenizer::new(bpe);
        let pre = file.opt_str("tokenizer.ggml.pre")?.unwrap_or("default");
        tokenizer.with_pre_tokenizer(Some(pre_tokenizer(pre).ok_or_else(|| {
            problem(format!(
                "pre-tokenizer `{pre}` is not supported (supported: smollm, llama-bpe, llama3, smaug-bpe, gpt2, default)"
            ))
        })?));
        tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
        let added: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, &ty)| ty == TOKEN_TYPE_CONTROL || ty == TOKEN_TYPE_USER_DEFINED)
            .map(|(t, &ty)| AddedToken::from(t.to_string(), ty == TOKEN_TYPE_CONTROL))
            .collect();
        tokenizer
            .add_special_tokens(added)
            .map_err(|e| problem(format!("special tokens: {e}")))?;

        let id = |key: &str| -> Result<Option<u32>, Smollm3Error> {
            let id = file.opt_usize(key)?;
            if let Some(i) = id.filter(|&i| i >= tokens.len()) {
                tracing::warn!(
                    "{}: {key} = {i} is outside the {}-token vocabulary; ignored",
                    file.path().display(),
                    tokens.len()
                );
            }
            Ok(id.filter(|&i| i < tokens.len()).map(|i| i as u32))
        };
        let mut end_of_generation: Vec<u32> = [
            id("tokenizer.ggml.eos_token_id")?,
            id("tokenizer.ggml.eot_token_id")?,
            id("tokenizer.ggml.eom_token_id")?,
        ]
        .into_iter()
        .flatten()
        .collect();
        for (i, (t, &ty)) in tokens.iter().zip(&types).enumerate() {
            if ty == TOKEN_TYPE_CONTROL
                && END_OF_GENERATION_TEXTS.contains(t)
                && !end_of_generation.contains(&(i as u32))
            {
                end_of_generation.push(i as u32);
            }
        }

        let mut plain = tokenizer.clone();
        plain.set_encode_special_tokens(true);
        Ok(Self {
            plain,
            special: tokenizer,
            bos: id("tokenizer.ggml.bos_token_id")?,
            add_bos: file
                .opt_bool("tokenizer.ggml.add_bos_token")?
                .unwrap_or(false),
            end_of_generation,
            piece_bytes: ENCODE_PIECE_BYTES,
        })
    }

    /// The same tokenizer cutting text into pieces of about `bytes` (`usize::MAX`: never),
    /// so tests can compare piecewise and whole tokenization.
    pub fn with_piece_bytes(mut self, bytes: usize) -> Self {
        self.piece_bytes = bytes.max(1);
        self
    }

    /// Token ids of `text`; with `parse_special`, special-token texts become control tokens.
    /// Never adds BOS: callers that want it use [`Self::bos`].
    pub fn encode(&self, text: &str, parse_special: bool) -> Result<Vec<u32>, Smollm3Error> {
        let tk = if parse_special {
            &self.special
        } else {
            &self.plain
        };
        let mut ids = Vec::new();
        for piece in pieces(text, self.piece_bytes) {
            let encoding = tk
                .encode(piece, false)
                .map_err(|e| Smollm3Error::Encode(e.to_string()))?;
            ids.extend_from_slice(encoding.get_ids());
        }
        Ok(ids)
    }

    /// Text of `ids`, special tokens included.
    pub fn decode(&self, ids: &[u32]) -> Result<String, Smollm3Error> {
        self.special
            .decode(ids, false)
            .map_err(|e| Smollm3Error::Encode(e.to_string()))
    }

    /// The raw vocabulary entry of one id (byte-level form, as llama.cpp stores it).
    pub fn piece(&self, id: u32) -> Option<String> {
        self.special.id_to_token(id)
    }

    pub fn vocab_size(&self) -> usize {
        self.special.get_vocab_size(true)
    }

    /// Ids that end a turn or the text: generation stops on any of them.
    pub fn end_of_generation(&self) -> &[u32] {
        &self.end_of_generation
    }

    /// The control tokens (texts that become one token only with `parse_special`) and their
    /// ids, longest text first: what must be kept out of user text (see the `prompt`
    /// module).
    pub fn control_tokens(&self) -> Vec<(String, u32)> {
        let mut tokens: Vec<(String, u32)> = self
            .special
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, token)| token.special)
            .map(|(id, token)| (token.content, id))
            .collect();
        tokens.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        tokens
    }
}

/// `text` cut into pieces of about `size` bytes, each ending just before a space that follows
/// a character other than whitespace (`…x` | ` y…`), or else at a lone newline between two
/// such characters (`…x\n` | `y…`); a stretch without either place stays whole.
///
/// The split patterns of every pre-tokenizer here take a space only as the first character
/// of a match, and a newline between two other characters as a match of its own, so no
/// pre-token spans such a place, and the pre-token before it is the same whether or not text
/// follows (a run of whitespace would not do: GPT-2's `\s+(?!\S)` keeps a trailing run whole
/// at the end of the input but splits off its last character before text). BPE never merges
/// across pre-tokens and no control token holds a space or newline, so the pieces' ids, one
/// after another, are the whole text's.
fn pieces(text: &str, size: usize) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let cut = if rest.len() <= size {
            rest.len()
        } else {
            cut_point(rest, size).unwrap_or(rest.len())
        };
        let (piece, tail) = rest.split_at(cut);
        rest = tail;
        Some(piece)
    })
}

/// The place nearest before `size` (else the first after it) where [`pieces`] may cut.
fn cut_point(text: &str, size: usize) -> Option<usize> {
    let bytes = text.as_bytes();
    let solid = |c: Option<char>| c.is_some_and(|c| !c.is_whitespace());
    let fits = |at: usize| {
        let before_space = bytes[at] == b' ' && solid(text[..at].chars().next_back());
        let after_newline = at > 1
            && bytes[at - 1] == b'\n'
            && solid(text[..at - 1].chars().next_back())
            && solid(text[at..].chars().next());
        before_space || after_newline
    };
    let size = size.min(bytes.len() - 1);
    (1..=size)
        .rev()
        .find(|&at| fits(at))
        .or_else(|| (size + 1..bytes.len()).find(|&at| fits(at)))
}

fn pre_tokenizer(name: &str) -> Option<PreTokenizerWrapper> {
    let byte_level = |use_regex| ByteLevel::new(false, true, use_regex);
    Some(match name {
        "smollm" => Sequence::new(vec![Digits::new(true).into(), byte_level(true).into()]).into(),
        "llama-bpe" | "llama3" | "smaug-bpe" | "smollm3" => {
            let split = Split::new(
                SplitPattern::Regex(LLAMA3_SPLIT.to_string()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .ok()?;
            Sequence::new(vec![split.into(), byte_level(false).into()]).into()
        }
        "gpt2" | "default" => byte_level(true).into(),
        _ => return None,
    })
}

/// Turns generated ids into text piece by piece without ever emitting half a UTF-8
/// character: text is held back while the decoded tail is an incomplete sequence. Only the
/// ids since the last emitted piece are decoded, so a long answer costs linear time.
pub struct StreamDecoder<'a> {
    tokenizer: &'a GgufTokenizer,
    ids: Vec<u32>,
    /// Start of the ids whose text was emitted last (kept as context for the next decode).
    prefix: usize,
    /// End of the ids whose text has been emitted.
    read: usize,
}

impl<'a> StreamDecoder<'a> {
    pub fn new(tokenizer: &'a GgufTokenizer) -> Self {
        Self {
            tokenizer,
            ids: Vec::new(),
            prefix: 0,
            read: 0,
        }
    }

    /// Adds one id; returns the new text that is now complete, if any.
    pub fn push(&mut self, id: u32) -> Result<Option<String>, Smollm3Error> {
        self.ids.push(id);
        let before = self.tokenizer.decode(&self.ids[self.prefix..self.read])?;
        let now = self.tokenizer.decode(&self.ids[self.prefix..])?;
        if now.len() <= before.len()
            || now.ends_with('\u{FFFD}')
            || !now.is_char_boundary(before.len())
        {
            return Ok(None);
        }
        self.prefix = self.read;
        self.read = self.ids.len();
        Ok(Some(now[before.len()..].to_string()))
    }

    /// Whatever is still held back (an incomplete character at the very end).
    pub fn finish(self) -> Result<Option<String>, Smollm3Error> {
        let before = self.tokenizer.decode(&self.ids[self.prefix..self.read])?;
        let now = self.tokenizer.decode(&self.ids[self.prefix..])?;
        Ok(
            (now.len() > before.len() && now.is_char_boundary(before.len()))
                .then(|| now[before.len()..].to_string()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_end_before_a_space_or_after_a_lone_newline() {
        let text = "ab\ncd\n\nef  \ngh\nij";
        let cut: Vec<&str> = pieces(text, 4).collect();
        assert_eq!(cut.concat(), text);
        assert_eq!(cut, ["ab\n", "cd\n\nef", "  \ngh\n", "ij"]);
        let words: Vec<&str> = pieces("one two, three", 5).collect();
        assert_eq!(words, ["one", " two,", " three"]);
        let whole: Vec<&str> = pieces("no-space-at-all", 3).collect();
        assert_eq!(whole, ["no-space-at-all"]);
        assert_eq!(pieces("", 3).count(), 0);
        let unicode = "é\nü\n\u{3000}x\nß\nç";
        assert_eq!(pieces(unicode, 2).collect::<String>(), unicode);
    }
}
