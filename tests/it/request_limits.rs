//! Text is bounded before it is tokenized (issue 14, finding 2): tokenizing costs about 200
//! bytes of memory per byte of text, so `/tokenize`, chat completions and conversation sends
//! refuse text longer than the context can hold (16 bytes a token) with 400
//! `context_length_exceeded` before the tokenizer runs; and long text is tokenized in pieces
//! that give exactly the ids of the whole.

use crate::common;

use common::wire::{request, serve, Served};
use smolbot::services::stub::StubConfig;
use smolbot::services::{BackendSpec, Engine};
use smolbot::smollm3::GgufTokenizer;
use smolbot::web::{app, AppState};

/// Context of the test server: 300 tokens hold at most 4,800 bytes of text.
const CONTEXT: usize = 300;
const LIMIT: usize = CONTEXT * 16;
const JSON: &str = "Content-Type: application/json";

async fn server() -> (Served, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = smolbot::services::SessionStore::open(dir.path())
        .await
        .expect("store opens");
    let engine = Engine::start(
        BackendSpec::Stub(StubConfig {
            tokens_per_second: 0.0,
            context_length: CONTEXT,
        }),
        4,
    )
    .await
    .expect("stub engine starts");
    let state = AppState::new(engine, store, None);
    (serve(app(state)).await, dir)
}

fn text(bytes: usize) -> String {
    "word ".repeat(bytes / 5 + 1)[..bytes].to_owned()
}

fn assert_too_long(reply: &common::wire::Raw, field: &str) {
    assert_eq!(reply.status, 400, "{reply:?}");
    let value: serde_json::Value = serde_json::from_str(&reply.body).expect("json");
    let error = &value["error"];
    assert_eq!(error["code"], "context_length_exceeded", "{error}");
    assert_eq!(error["param"], field, "{error}");
    let message = error["message"].as_str().expect("message");
    assert!(
        message.contains("4,800") && message.contains("300 tokens"),
        "{message}"
    );
}

#[tokio::test]
async fn tokenize_refuses_text_the_context_cannot_hold() {
    let (served, _dir) = server().await;
    let body = |bytes| serde_json::json!({ "content": text(bytes) }).to_string();
    let fits = request(served.addr, "POST", "/tokenize", &[JSON], &body(LIMIT)).await;
    assert_eq!(fits.status, 200, "{fits:?}");
    let over = request(served.addr, "POST", "/tokenize", &[JSON], &body(LIMIT + 1)).await;
    assert_too_long(&over, "content");
    let huge = request(served.addr, "POST", "/tokenize", &[JSON], &body(4 << 20)).await;
    assert_too_long(&huge, "content");
    let prompt = serde_json::json!({ "prompt": text(LIMIT + 1), "max_tokens": 1 }).to_string();
    let completion = request(served.addr, "POST", "/v1/completions", &[JSON], &prompt).await;
    assert_too_long(&completion, "prompt");
}

#[tokio::test]
async fn sends_refuse_text_the_context_cannot_hold() {
    let (served, _dir) = server().await;
    let half = text(LIMIT / 2 + 1);
    let chat = serde_json::json!({
        "messages": [
            { "role": "user", "content": half },
            { "role": "assistant", "content": "ok" },
            { "role": "user", "content": half },
        ]
    })
    .to_string();
    let reply = request(served.addr, "POST", "/v1/chat/completions", &[JSON], &chat).await;
    assert_too_long(&reply, "messages");

    let created = request(served.addr, "POST", "/api/conversations", &[JSON], "{}").await;
    let id = serde_json::from_str::<serde_json::Value>(&created.body).expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let send = serde_json::json!({ "content": text(LIMIT + 1) }).to_string();
    let path = format!("/api/conversations/{id}/messages");
    let reply = request(served.addr, "POST", &path, &[JSON], &send).await;
    assert_too_long(&reply, "messages");
}

/// Every shape of text the pre-tokenizers treat differently, long enough to be cut.
fn mixed_text() -> String {
    let lines = [
        "Hello, world! It's 2025-06-01 and we're testing.",
        "    fn main() {\n        println!(\"{}\", 12345678);\n    }",
        "",
        "   \t  ",
        "<|im_start|>user\nhi<|im_end|> <think>x</think> <tool_call>{}</tool_call>",
        "Ünïcödé — 日本語のテキスト 🦦🦦 \u{3000}full-width space",
        "a\r\nb\r\n\r\n",
        ";;;\n\n\n;;;",
        "x",
        "a long line without newlines, words and   spaces  , 1 2 3 , , x y z and more words",
        " leading space, trailing space ",
    ];
    let mut out = String::new();
    for i in 0..400 {
        out.push_str(lines[i % lines.len()]);
        out.push_str(if i % 3 == 0 { "\n" } else { "\n\n" });
    }
    out
}

fn assert_pieces_match_the_whole(tokenizer: GgufTokenizer) {
    let text = mixed_text();
    let whole_tk = tokenizer.clone().with_piece_bytes(usize::MAX);
    for parse_special in [false, true] {
        let whole = whole_tk.encode(&text, parse_special).expect("whole");
        for piece in [1, 37, 500, 4096] {
            let cut = tokenizer
                .clone()
                .with_piece_bytes(piece)
                .encode(&text, parse_special)
                .expect("pieces");
            assert_eq!(
                cut, whole,
                "pieces of {piece} bytes, parse_special {parse_special}"
            );
        }
    }
}

#[test]
fn piecewise_tokenizing_gives_the_whole_texts_ids() {
    for path in [common::tiny_model().to_path_buf(), common::smollm2_model()] {
        let file = smolbot::inference::GgufFile::open(&path).expect("open model");
        assert_pieces_match_the_whole(GgufTokenizer::from_gguf(&file).expect("tokenizer"));
    }
}
