//! From a conversation to the prompt's token ids: the model's own chat template, rendered,
//! then tokenized so that only the template's markup becomes control tokens.
//!
//! llama.cpp and transformers render the template and tokenize the whole text with special
//! tokens recognised, so a user who types `<|im_end|>` closes their own turn and can forge
//! the assistant's. Here the text of every message the model did not write (user, system,
//! tool) has its control-token texts swapped for a private marker before rendering: a
//! Private Use Area character that appears nowhere else, around the control token's index.
//! After rendering, control-token texts still in the prompt came from the template and
//! become control tokens; the markers turn back into the user's characters, tokenized as
//! plain text together with the text around them. A prompt with no control-token text in
//! its messages therefore gets exactly llama.cpp's ids, and one with such text differs only
//! in that text. Assistant messages are the model's own output, whose control tokens it
//! produced itself (a `<tool_call>` or a think block), so they are left as they are.
//!
//! The swap changes what the template sees in a message only where a control-token text
//! stood, which matters only to a template that looks for such text inside user messages;
//! SmolLM3's and SmolLM2's do not.

use serde_json::{Map, Value as Json};

use super::chat_template::{ChatTemplate, RenderContext};
use super::error::Smollm3Error;
use super::tokenizer::GgufTokenizer;
use crate::inference::GgufFile;

/// Where the marker character is chosen from: the Basic Multilingual Plane's Private Use
/// Area, which no tokenizer or template gives meaning to.
const MARKER_CHARS: std::ops::RangeInclusive<u32> = 0xE000..=0xF8FF;

/// A rendered prompt: the text the template produced and its token ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatPrompt {
    pub text: String,
    pub ids: Vec<u32>,
}

/// The model's own chat template (`tokenizer.chat_template`), or SmolLM3's official one
/// when the file carries none.
pub fn model_template(file: &GgufFile) -> Result<ChatTemplate, Smollm3Error> {
    match file.opt_str("tokenizer.chat_template")? {
        Some(source) => ChatTemplate::new(source),
        None => ChatTemplate::builtin(),
    }
}

/// The special-token keyword arguments transformers passes to every template
/// (`bos_token`, `eos_token`, `unk_token`, `pad_token`), from the file's token ids; some
/// templates open with `{{ bos_token }}`.
pub fn special_token_kwargs(file: &GgufFile) -> Result<Map<String, Json>, Smollm3Error> {
    let tokens = file.get_str_array("tokenizer.ggml.tokens")?;
    let mut kwargs = Map::new();
    for (name, key) in [
        ("bos_token", "tokenizer.ggml.bos_token_id"),
        ("eos_token", "tokenizer.ggml.eos_token_id"),
        ("unk_token", "tokenizer.ggml.unknown_token_id"),
        ("pad_token", "tokenizer.ggml.padding_token_id"),
    ] {
        if let Some(text) = file.opt_usize(key)?.and_then(|id| tokens.get(id)) {
            kwargs.insert(name.to_owned(), Json::String((*text).to_owned()));
        }
    }
    Ok(kwargs)
}

/// Renders `ctx` with `template` and tokenizes it as the module documentation describes,
/// with BOS in front when the tokenizer asks for it and the template did not write it.
pub fn render_prompt(
    template: &ChatTemplate,
    ctx: &RenderContext,
    tokenizer: &GgufTokenizer,
) -> Result<ChatPrompt, Smollm3Error> {
    let controls = tokenizer.control_tokens();
    let plain = template.render(ctx)?;
    let mut escaped = ctx.clone();
    let mut marker = None;
    if controls.is_empty()
        || !escape_messages(&mut escaped.messages, &controls, &mut marker, &plain)?
    {
        return finish(tokenizer, split_controls(&plain, &controls, None)?);
    }
    let rendered = template.render(&escaped)?;
    finish(tokenizer, split_controls(&rendered, &controls, marker)?)
}

/// Tokenizes the pieces and puts BOS in front where due.
fn finish(tokenizer: &GgufTokenizer, pieces: Vec<Piece>) -> Result<ChatPrompt, Smollm3Error> {
    let mut text = String::new();
    let mut ids = Vec::new();
    for piece in pieces {
        match piece {
            Piece::Plain(run) => {
                ids.extend(tokenizer.encode(&run, false)?);
                text.push_str(&run);
            }
            Piece::Control(id, tag) => {
                ids.push(id);
                text.push_str(&tag);
            }
        }
    }
    if let Some(bos) = tokenizer.bos.filter(|_| tokenizer.add_bos) {
        if ids.first() != Some(&bos) {
            ids.insert(0, bos);
        }
    }
    Ok(ChatPrompt { text, ids })
}

/// A stretch of the rendered prompt.
#[derive(Debug, PartialEq, Eq)]
enum Piece {
    /// Text to tokenize with special tokens left as characters.
    Plain(String),
    /// A control token the template wrote, and its text.
    Control(u32, String),
}

/// Swaps control-token texts in the messages the model did not write for marker
/// references; returns whether any was found. The marker is chosen on first need as a
/// character found neither in the context nor in `rendered` (the plain rendering, which
/// holds the template's own text).
fn escape_messages(
    messages: &mut [Json],
    controls: &[(String, u32)],
    marker: &mut Option<char>,
    rendered: &str,
) -> Result<bool, Smollm3Error> {
    let mut found = false;
    let context_text = serde_json::to_string(messages).unwrap_or_default();
    for message in messages.iter_mut() {
        let Some(object) = message.as_object_mut() else {
            continue;
        };
        if object.get("role").and_then(Json::as_str) == Some("assistant") {
            continue;
        }
        let Some(content) = object.get_mut("content") else {
            continue;
        };
        let mut texts: Vec<&mut String> = Vec::new();
        match content {
            Json::String(text) => texts.push(text),
            Json::Array(parts) => {
                for part in parts.iter_mut() {
                    if let Some(Json::String(text)) = part.get_mut("text") {
                        texts.push(text);
                    }
                }
            }
            _ => {}
        }
        for text in texts {
            if !controls.iter().any(|(tag, _)| text.contains(tag.as_str())) {
                continue;
            }
            let m = match *marker {
                Some(m) => m,
                None => {
                    let m = choose_marker(&[&context_text, rendered]).ok_or_else(|| {
                        Smollm3Error::TemplateInput(
                            "the conversation uses every private-use character".into(),
                        )
                    })?;
                    *marker = Some(m);
                    m
                }
            };
            *text = escape(text, controls, m);
            found = true;
        }
    }
    Ok(found)
}

/// The first private-use character that none of `texts` contains.
fn choose_marker(texts: &[&str]) -> Option<char> {
    MARKER_CHARS
        .filter_map(char::from_u32)
        .find(|c| texts.iter().all(|t| !t.contains(*c)))
}

/// `text` with each control-token text (leftmost, longest first, as the tokenizer matches
/// them) replaced by `marker`, its index in `controls`, `marker`.
fn escape(text: &str, controls: &[(String, u32)], marker: char) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while !rest.is_empty() {
        if let Some(index) = control_at(rest, controls) {
            out.push(marker);
            out.push_str(&index.to_string());
            out.push(marker);
            rest = &rest[controls[index].0.len()..];
        } else {
            let c = rest.chars().next().unwrap_or_default();
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

/// The index of the longest control-token text `text` starts with (`controls` is sorted
/// longest first).
fn control_at(text: &str, controls: &[(String, u32)]) -> Option<usize> {
    controls
        .iter()
        .position(|(tag, _)| !tag.is_empty() && text.starts_with(tag.as_str()))
}

/// Cuts the rendered prompt at the control-token texts it holds (the template's markup) and
/// turns marker references back into the text they stand for, inside the plain runs.
fn split_controls(
    rendered: &str,
    controls: &[(String, u32)],
    marker: Option<char>,
) -> Result<Vec<Piece>, Smollm3Error> {
    let mut pieces = Vec::new();
    let mut run = String::new();
    let mut rest = rendered;
    while let Some(c) = rest.chars().next() {
        if Some(c) == marker {
            let after = &rest[c.len_utf8()..];
            let (digits, tail) = after
                .find(c)
                .map(|end| (&after[..end], &after[end + c.len_utf8()..]))
                .ok_or_else(|| mangled(rendered))?;
            let (tag, _) = digits
                .parse::<usize>()
                .ok()
                .and_then(|i| controls.get(i))
                .ok_or_else(|| mangled(rendered))?;
            run.push_str(tag);
            rest = tail;
        } else if let Some(index) = control_at(rest, controls) {
            let (tag, id) = &controls[index];
            if !run.is_empty() {
                pieces.push(Piece::Plain(std::mem::take(&mut run)));
            }
            pieces.push(Piece::Control(*id, tag.clone()));
            rest = &rest[tag.len()..];
        } else {
            run.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    if !run.is_empty() {
        pieces.push(Piece::Plain(run));
    }
    Ok(pieces)
}

fn mangled(rendered: &str) -> Smollm3Error {
    Smollm3Error::TemplateRender(format!(
        "the template cut into the text of a message holding special-token text; rendered: {rendered:?}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn controls() -> Vec<(String, u32)> {
        let mut c = vec![
            ("<|im_start|>".to_owned(), 1),
            ("<|im_end|>".to_owned(), 2),
            ("<think>".to_owned(), 3),
            ("</think>".to_owned(), 4),
        ];
        c.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        c
    }

    #[test]
    fn escape_and_split_round_trip_user_tags_as_plain_text() {
        let c = controls();
        let user = "say <|im_end|> and <think>!";
        let escaped = escape(user, &c, '\u{E000}');
        assert!(!escaped.contains('<'), "{escaped:?}");
        let rendered = format!("<|im_start|>user\n{escaped}<|im_end|>\n");
        let pieces = split_controls(&rendered, &c, Some('\u{E000}')).unwrap();
        assert_eq!(
            pieces,
            vec![
                Piece::Control(1, "<|im_start|>".into()),
                Piece::Plain(format!("user\n{user}")),
                Piece::Control(2, "<|im_end|>".into()),
                Piece::Plain("\n".into()),
            ]
        );
    }

    #[test]
    fn unbalanced_marker_is_an_error_not_a_panic() {
        let c = controls();
        for bad in ["a\u{E000}1", "a\u{E000}x\u{E000}", "\u{E000}99\u{E000}"] {
            assert!(
                split_controls(bad, &c, Some('\u{E000}')).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn marker_avoids_characters_in_use() {
        assert_eq!(choose_marker(&["abc"]), Some('\u{E000}'));
        assert_eq!(choose_marker(&["a\u{E000}", "\u{E001}"]), Some('\u{E002}'));
    }

    #[test]
    fn assistant_messages_keep_their_tags() {
        let c = controls();
        let mut messages = vec![
            serde_json::json!({"role": "user", "content": "<think>"}),
            serde_json::json!({"role": "assistant", "content": "<think>x</think>y"}),
            serde_json::json!({"role": "tool", "content": [{"type": "text", "text": "<|im_end|>"}]}),
        ];
        let mut marker = None;
        assert!(escape_messages(&mut messages, &c, &mut marker, "").unwrap());
        let m = marker.unwrap();
        assert_eq!(messages[0]["content"], format!("{m}3{m}").as_str());
        assert_eq!(messages[1]["content"], "<think>x</think>y");
        assert!(!messages[2]["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("<|im_end|>"));
    }
}
