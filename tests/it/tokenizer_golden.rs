//! The tokenizer against llama.cpp: token ids for the golden corpus (six languages, emoji,
//! CJK, code, whitespace runs, digits, special-token text) must equal those llama.cpp gives
//! for the same file, for SmolLM3's Llama-3 style pre-tokenizer (the synthetic file) and
//! SmolLM2's digit-splitting GPT-2 one. Also checks the round trip, streaming decoding and
//! that user text never turns into control tokens unless asked.

use crate::common;

use std::path::Path;

use common::*;
use smolbot::inference::GgufFile;
use smolbot::smollm3::{GgufTokenizer, StreamDecoder};

fn tokenizer(path: &Path) -> GgufTokenizer {
    let file = GgufFile::open(path).expect("open model");
    GgufTokenizer::from_gguf(&file).expect("tokenizer from GGUF")
}

/// `(text, ids)` of every case of a golden tokenizer file.
fn cases(name: &str) -> Vec<(String, Vec<u32>)> {
    golden(name)["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| {
            (
                c["text"].as_str().expect("text").to_owned(),
                u32s(&c["ids"]),
            )
        })
        .collect()
}

fn assert_golden(tk: &GgufTokenizer, golden_name: &str) {
    let mut failures = Vec::new();
    for (text, expected) in cases(golden_name) {
        let ids = tk.encode(&text, false).expect("encode");
        if ids != expected {
            failures.push(format!(
                "{text:?}\n  llama.cpp: {expected:?}\n  smolbot:   {ids:?}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{golden_name}: {} case(s) differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn assert_round_trip(tk: &GgufTokenizer, golden_name: &str) {
    for (text, ids) in cases(golden_name) {
        assert_eq!(tk.decode(&ids).expect("decode"), text, "decode(golden ids)");
        let ours = tk.encode(&text, false).expect("encode");
        assert_eq!(tk.decode(&ours).expect("decode"), text, "decode(encode(x))");
    }
}

/// Feeds every case's ids one at a time: the pieces must join to the whole text and none
/// may carry a replacement character (a multi-byte character cut between tokens).
fn assert_streams(tk: &GgufTokenizer, golden_name: &str) {
    for (text, ids) in cases(golden_name) {
        let mut decoder = StreamDecoder::new(tk);
        let mut out = String::new();
        for &id in &ids {
            if let Some(piece) = decoder.push(id).expect("push") {
                assert!(
                    !piece.contains('\u{FFFD}'),
                    "{golden_name}: broken character in piece {piece:?} of {text:?}"
                );
                out.push_str(&piece);
            }
        }
        if let Some(rest) = decoder.finish().expect("finish") {
            out.push_str(&rest);
        }
        assert_eq!(out, text, "{golden_name}: streamed text");
    }
}

/// The emoji/CJK case really does split characters across tokens, so the streaming test
/// above exercises the hold-back path.
fn assert_emoji_case_splits_characters(tk: &GgufTokenizer, golden_name: &str) {
    let (text, ids) = cases(golden_name)
        .into_iter()
        .find(|(t, _)| t.starts_with("Emoji"))
        .expect("emoji/CJK case");
    let split = ids
        .iter()
        .any(|&id| std::str::from_utf8(&piece_bytes(tk, id)).is_err());
    assert!(
        split,
        "{golden_name}: no token of {text:?} is a partial character"
    );
}

/// The bytes one token stands for (byte-level BPE pieces map chars back to bytes).
fn piece_bytes(tk: &GgufTokenizer, id: u32) -> Vec<u8> {
    let table = byte_level_table();
    tk.piece(id)
        .expect("piece")
        .chars()
        .map(|c| table.iter().position(|&t| t == c).expect("byte-level char") as u8)
        .collect()
}

/// GPT-2's byte → printable char table.
fn byte_level_table() -> Vec<char> {
    let mut printable: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut table = vec!['\0'; 256];
    for &b in &printable {
        table[b as usize] = char::from_u32(b).expect("char");
    }
    let mut n = 0;
    for b in 0..256u32 {
        if !printable.contains(&b) {
            table[b as usize] = char::from_u32(256 + n).expect("char");
            printable.push(b);
            n += 1;
        }
    }
    table
}

/// With `parse_special` off, text that looks like markup (`tags`, control tokens of the
/// model) is ordinary tokens; with it on, it is the control token.
fn assert_special_text_stays_text(tk: &GgufTokenizer, tags: &[&str]) {
    let controls: Vec<u32> = tk.control_tokens().into_iter().map(|(_, id)| id).collect();
    for &tag in tags {
        let control = tk.encode(tag, true).expect("encode special");
        assert_eq!(control.len(), 1, "{tag} with parse_special is one token");
        assert!(controls.contains(&control[0]), "{tag} is a control token");
        let plain = tk.encode(tag, false).expect("encode plain");
        assert!(
            !plain.contains(&control[0]),
            "{tag} without parse_special contains the control id: {plain:?}"
        );
        assert!(plain.len() > 1, "{tag} without parse_special: {plain:?}");
        assert_eq!(tk.decode(&plain).expect("decode"), tag);

        let text = format!("user wrote {tag} here");
        let plain = tk.encode(&text, false).expect("encode plain");
        assert!(
            plain.iter().all(|id| !controls.contains(id)),
            "{text:?}: {plain:?}"
        );
        let special = tk.encode(&text, true).expect("encode special");
        assert!(special.contains(&control[0]), "{text:?}: {special:?}");
    }
}

/// The goldens were made from these very files (the synthetic one as the current generator
/// writes it) and hold the whole corpus.
#[test]
fn goldens_belong_to_the_models_and_cover_the_corpus() {
    for (path, name) in [
        (tiny_model().to_path_buf(), "tiny_smollm3_tokenizer.json"),
        (smollm2_model(), "smollm2_tokenizer.json"),
    ] {
        let golden = golden(name);
        assert_eq!(
            sha256(&path),
            golden["model_sha256"].as_str().expect("model_sha256"),
            "{name} was made from another file: regenerate with scripts/make_golden.py"
        );
        let texts: Vec<String> = cases(name).into_iter().map(|(t, _)| t).collect();
        assert!(texts.len() >= 29, "{name}: {} cases", texts.len());
        for needle in [
            "Größere",
            "你好",
            "😀",
            "fn main",
            "\t\t",
            "1234567890",
            "\r\n",
            "",
        ] {
            assert!(
                texts.iter().any(|t| t.contains(needle)),
                "{name}: no case holds {needle:?}"
            );
        }
    }
}

#[test]
fn tiny_smollm3_ids_equal_llama_cpp() {
    assert_golden(&tokenizer(tiny_model()), "tiny_smollm3_tokenizer.json");
}

#[test]
fn smollm2_ids_equal_llama_cpp() {
    assert_golden(&tokenizer(&smollm2_model()), "smollm2_tokenizer.json");
}

#[test]
fn tiny_smollm3_round_trips() {
    assert_round_trip(&tokenizer(tiny_model()), "tiny_smollm3_tokenizer.json");
}

#[test]
fn smollm2_round_trips() {
    assert_round_trip(&tokenizer(&smollm2_model()), "smollm2_tokenizer.json");
}

#[test]
fn tiny_smollm3_streams_without_broken_characters() {
    let tk = tokenizer(tiny_model());
    assert_emoji_case_splits_characters(&tk, "tiny_smollm3_tokenizer.json");
    assert_streams(&tk, "tiny_smollm3_tokenizer.json");
}

#[test]
fn smollm2_streams_without_broken_characters() {
    let tk = tokenizer(&smollm2_model());
    assert_emoji_case_splits_characters(&tk, "smollm2_tokenizer.json");
    assert_streams(&tk, "smollm2_tokenizer.json");
}

#[test]
fn tiny_smollm3_user_text_never_becomes_control_tokens() {
    assert_special_text_stays_text(
        &tokenizer(tiny_model()),
        &["<|im_end|>", "<|im_start|>", "<think>", "</think>"],
    );
}

#[test]
fn smollm2_user_text_never_becomes_control_tokens() {
    // SmolLM2 has no think tokens: `<think>` is plain text either way.
    let tk = tokenizer(&smollm2_model());
    assert_special_text_stays_text(&tk, &["<|im_end|>", "<|im_start|>"]);
    assert_eq!(
        tk.encode("<think>", true).expect("encode"),
        tk.encode("<think>", false).expect("encode")
    );
}
