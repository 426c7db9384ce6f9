//! Golden test of the chat template renderer: every case in
//! `fixtures/chat_template_cases.json` (prompts produced by Hugging Face transformers'
//! `apply_chat_template` with SmolLM3's template and a fixed date) must come out byte for
//! byte the same from the repository's own template file.

use serde_json::Value;
use smolbot::smollm3::chat_template::{ChatTemplate, RenderContext};

const TEMPLATE: &str = include_str!("../../crates/smollm3/src/chat_template.jinja");
const CASES: &str = include_str!("../fixtures/chat_template_cases.json");

/// The first difference between `expected` and `actual`, with a few lines around it,
/// each shown escaped so that whitespace and newlines are visible.
fn describe_difference(expected: &str, actual: &str) -> String {
    let offset = expected
        .bytes()
        .zip(actual.bytes())
        .position(|(a, b)| a != b)
        .unwrap_or(expected.len().min(actual.len()));
    let expected_lines: Vec<&str> = expected.split_inclusive('\n').collect();
    let actual_lines: Vec<&str> = actual.split_inclusive('\n').collect();
    let first = expected_lines
        .iter()
        .zip(&actual_lines)
        .position(|(a, b)| a != b)
        .unwrap_or(expected_lines.len().min(actual_lines.len()));
    let from = first.saturating_sub(2);
    let mut text = format!(
        "first difference at byte {offset} (expected {} bytes, got {}), line {}:\n",
        expected.len(),
        actual.len(),
        first + 1
    );
    for (sign, lines) in [("-", &expected_lines), ("+", &actual_lines)] {
        for (number, line) in lines.iter().enumerate().skip(from).take(first - from + 3) {
            text.push_str(&format!("{sign}{:>4} {line:?}\n", number + 1));
        }
    }
    text
}

#[test]
fn renders_every_golden_case_byte_for_byte() {
    let cases: Vec<Value> = serde_json::from_str(CASES).expect("fixture parses");
    assert_eq!(cases.len(), 15, "fixture holds the 15 reference cases");
    let template = ChatTemplate::new(TEMPLATE).expect("template compiles");
    let mut failures = Vec::new();
    for case in &cases {
        let name = case["name"].as_str().expect("case has a name");
        let kwargs = case["context"]
            .as_object()
            .expect("case context is an object");
        let mut ctx = RenderContext::from_kwargs(kwargs).expect("case context is valid");
        ctx.today = Some(case["today"].as_str().expect("case has a date").to_owned());
        let expected = case["expected"].as_str().expect("case has expected text");
        match template.render(&ctx) {
            Ok(actual) if actual == expected => {}
            Ok(actual) => failures.push(format!(
                "{name}: {}",
                describe_difference(expected, &actual)
            )),
            Err(err) => failures.push(format!("{name}: render failed: {err}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn builtin_template_is_the_repository_file() {
    let cases: Vec<Value> = serde_json::from_str(CASES).expect("fixture parses");
    let builtin = ChatTemplate::builtin().expect("builtin compiles");
    let file = ChatTemplate::new(TEMPLATE).expect("template compiles");
    for case in &cases {
        let kwargs = case["context"]
            .as_object()
            .expect("case context is an object");
        let mut ctx = RenderContext::from_kwargs(kwargs).expect("case context is valid");
        ctx.today = Some("01 January 2030".into());
        assert_eq!(
            builtin.render(&ctx).expect("builtin renders"),
            file.render(&ctx).expect("file renders")
        );
    }
}

#[test]
fn difference_report_points_at_the_first_differing_line() {
    let report = describe_difference("a\nb\nc\n", "a\nB\nc\n");
    assert!(report.contains("byte 2"), "{report}");
    assert!(report.contains("line 2"), "{report}");
    assert!(report.contains("-   2 \"b\\n\""), "{report}");
    assert!(report.contains("+   2 \"B\\n\""), "{report}");
}
