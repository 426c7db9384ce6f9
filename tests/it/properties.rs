//! Property tests: the tokenizer round-trips any UTF-8 text, streaming decoding equals whole
//! decoding, and the output parsers never panic and do not depend on how text is split.

use crate::common;

use proptest::prelude::*;
use smolbot::inference::GgufFile;
use smolbot::smollm3::thinking::{ThinkingEvent, ThinkingParser};
use smolbot::smollm3::tool_calls::{ToolCallEvent, ToolCallParser};
use smolbot::smollm3::{GgufTokenizer, StreamDecoder};

fn tokenizer() -> &'static GgufTokenizer {
    static T: std::sync::OnceLock<GgufTokenizer> = std::sync::OnceLock::new();
    T.get_or_init(|| {
        GgufTokenizer::from_gguf(&GgufFile::open(common::tiny_model()).unwrap()).unwrap()
    })
}

/// Text biased towards what trips tokenizers and parsers: tags, multi-byte characters,
/// whitespace runs, digits, plus arbitrary Unicode.
fn tricky_text() -> impl Strategy<Value = String> {
    let atom = prop_oneof![
        Just("<think>".to_string()),
        Just("</think>".to_string()),
        Just("<tool_call>".to_string()),
        Just("</tool_call>".to_string()),
        Just("<|im_end|>".to_string()),
        Just("<".to_string()),
        Just("{\"name\": \"f\", \"arguments\": {}}".to_string()),
        Just("é😀你".to_string()),
        Just("  \n\t".to_string()),
        Just("12345".to_string()),
        any::<String>(),
    ];
    prop::collection::vec(atom, 0..8).prop_map(|v| v.concat())
}

/// Splits `text` at the given char positions.
fn split(text: &str, cuts: &[usize]) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (chars.len() + 1)).collect();
    points.sort_unstable();
    points.dedup();
    let mut pieces = Vec::new();
    let mut last = 0;
    for p in points.into_iter().chain([chars.len()]) {
        pieces.push(chars[last..p].iter().collect());
        last = p;
    }
    pieces
}

fn thinking_events(pieces: &[String]) -> (String, String) {
    let mut parser = ThinkingParser::new();
    let (mut reasoning, mut answer) = (String::new(), String::new());
    let events = pieces
        .iter()
        .flat_map(|p| parser.push(p))
        .collect::<Vec<_>>();
    for e in events.into_iter().chain(parser.finish()) {
        match e {
            ThinkingEvent::Reasoning(t) => reasoning.push_str(&t),
            ThinkingEvent::Answer(t) => answer.push_str(&t),
        }
    }
    (reasoning, answer)
}

fn tool_events(pieces: &[String]) -> (String, usize, usize) {
    let mut parser = ToolCallParser::new();
    let (mut content, mut calls, mut malformed) = (String::new(), 0, 0);
    let events = pieces
        .iter()
        .flat_map(|p| parser.push(p))
        .collect::<Vec<_>>();
    for e in events.into_iter().chain(parser.finish()) {
        match e {
            ToolCallEvent::Content(t) => content.push_str(&t),
            ToolCallEvent::ToolCall(_) => calls += 1,
            ToolCallEvent::Malformed { .. } => malformed += 1,
        }
    }
    (content, calls, malformed)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn tokenizer_round_trips_any_text(text in tricky_text()) {
        let tk = tokenizer();
        let ids = tk.encode(&text, false).unwrap();
        prop_assert_eq!(tk.decode(&ids).unwrap(), text.clone());
        let mut stream = StreamDecoder::new(tk);
        let mut out = String::new();
        for id in &ids {
            if let Some(piece) = stream.push(*id).unwrap() {
                out.push_str(&piece);
            }
        }
        out.push_str(&stream.finish().unwrap().unwrap_or_default());
        prop_assert_eq!(out, text);
    }

    #[test]
    fn thinking_parser_is_split_independent(text in tricky_text(), cuts in prop::collection::vec(any::<usize>(), 0..6)) {
        let whole = thinking_events(std::slice::from_ref(&text));
        let pieces = split(&text, &cuts);
        prop_assert_eq!(thinking_events(&pieces), whole);
        let by_char: Vec<String> = text.chars().map(String::from).collect();
        prop_assert_eq!(thinking_events(&by_char), thinking_events(&[text]));
    }

    #[test]
    fn tool_call_parser_is_split_independent(text in tricky_text(), cuts in prop::collection::vec(any::<usize>(), 0..6)) {
        let whole = tool_events(std::slice::from_ref(&text));
        prop_assert_eq!(tool_events(&split(&text, &cuts)), whole.clone());
        let by_char: Vec<String> = text.chars().map(String::from).collect();
        prop_assert_eq!(tool_events(&by_char), whole);
    }
}
