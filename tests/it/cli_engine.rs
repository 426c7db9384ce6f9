//! The engine's command line end to end: `inspect` on good and broken files, `generate` on
//! the real SmolLM2 model, `perplexity --json`. Runs the real binary.

use crate::common;

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use common::*;
use smolbot::inference::GgufFile;

fn scratch(name: &str) -> PathBuf {
    let dir = root().join("target").join("test-scratch");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(format!("{}-cli_engine-{name}", std::process::id()))
}

/// Rewrites the tiny model with `edit` applied to its metadata and tensors.
fn rewrite(
    name: &str,
    edit: impl FnOnce(&mut Vec<(String, Value)>, &mut Vec<(String, QTensor)>),
) -> PathBuf {
    let src = GgufFile::open(tiny_model()).unwrap();
    let mut meta: Vec<(String, Value)> = src
        .metadata()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    meta.sort_by(|a, b| a.0.cmp(&b.0));
    let mut tensors: Vec<(String, QTensor)> = src
        .tensor_infos()
        .keys()
        .map(|n| (n.to_string(), src.tensor(n, &Device::Cpu).unwrap()))
        .collect();
    edit(&mut meta, &mut tensors);
    let path = scratch(name);
    let mut f = std::fs::File::create(&path).unwrap();
    let m: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut f, &m, &t).unwrap();
    path
}

/// `inspect` must fail with a message naming the file and each of `needles`.
fn assert_rejected(path: &Path, needles: &[&str]) {
    let out = smolbot(&["inspect", "--model", path.to_str().unwrap()]);
    let err = text(&out.stderr);
    assert!(
        !out.status.success(),
        "accepted {}: {}",
        path.display(),
        text(&out.stdout)
    );
    assert!(
        !err.contains("panicked"),
        "panic instead of an error: {err}"
    );
    assert!(
        err.contains(&path.display().to_string()),
        "error does not name the file: {err}"
    );
    for n in needles {
        assert!(err.contains(n), "error lacks `{n}`: {err}");
    }
}

#[test]
fn inspect_reports_the_smollm3_plan_and_q4_k_m_mix() {
    let out = smolbot(&["inspect", "--model", tiny_model().to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    for expected in [
        "architecture:  smollm3",
        "8 layers, hidden 256, 4 heads (2 KV heads, head dim 64), FFN 768",
        "context:       4096 tokens",
        "NoPE layers:   2 of 8: 3, 7",
        "Q4_K ×48, Q6_K ×9",
        "validation:    OK",
    ] {
        assert!(
            stdout.contains(expected),
            "missing `{expected}` in:\n{stdout}"
        );
    }
}

#[test]
fn inspect_reports_smollm2_as_llama_with_rope_everywhere() {
    let out = smolbot(&["inspect", "--model", smollm2_model().to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert!(out.status.success());
    assert!(stdout.contains("architecture:  llama"), "{stdout}");
    assert!(stdout.contains("NoPE layers:   none"), "{stdout}");
    assert!(stdout.contains("Q4_1 ×210"), "{stdout}");
}

#[test]
fn truncated_file_names_the_tensor_past_the_end() {
    let bytes = std::fs::read(tiny_model()).unwrap();
    let path = scratch("truncated.gguf");
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    assert_rejected(&path, &["tensor `", "truncated"]);
}

#[test]
fn lying_header_counts_are_rejected_without_allocating() {
    let bytes = std::fs::read(tiny_model()).unwrap();
    // Offsets 8 and 16: tensor count and metadata count (u64, little-endian).
    let mut lie = bytes.clone();
    lie[16..24].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let path = scratch("lying-count.gguf");
    std::fs::write(&path, &lie).unwrap();
    assert_rejected(&path, &["not a valid GGUF file"]);
    // Offset 24: the first key's length.
    let mut lie = bytes;
    lie[24..32].copy_from_slice(&(1u64 << 62).to_le_bytes());
    let path = scratch("lying-string.gguf");
    std::fs::write(&path, &lie).unwrap();
    assert_rejected(&path, &["not a valid GGUF file", "string length"]);
}

#[test]
fn not_a_gguf_file_and_missing_file_are_explained() {
    let path = scratch("text.gguf");
    std::fs::write(
        &path,
        b"this is not a model, just some text that is long enough",
    )
    .unwrap();
    assert_rejected(&path, &["not a valid GGUF file"]);
    assert_rejected(&scratch("does-not-exist.gguf"), &["cannot open"]);
}

#[test]
fn zero_alignment_is_an_error_not_a_panic() {
    let path = rewrite("align0.gguf", |meta, _| {
        meta.push(("general.alignment".into(), Value::U32(0)))
    });
    assert_rejected(&path, &["not a valid GGUF file"]);
}

#[test]
fn missing_tensor_is_named_with_its_expected_shape() {
    let path = rewrite("missing.gguf", |_, tensors| {
        tensors.retain(|(n, _)| n != "blk.5.ffn_up.weight")
    });
    assert_rejected(&path, &["blk.5.ffn_up.weight", "missing", "[768, 256]"]);
}

#[test]
fn wrong_shape_names_the_tensor_and_both_shapes() {
    let path = rewrite("shape.gguf", |_, tensors| {
        let t = Tensor::zeros((256, 256), candle_core::DType::F32, &Device::Cpu).unwrap();
        let q = QTensor::quantize(&t, GgmlDType::Q4K).unwrap();
        tensors
            .iter_mut()
            .find(|(n, _)| n == "blk.2.attn_k.weight")
            .unwrap()
            .1 = q;
    });
    assert_rejected(
        &path,
        &["blk.2.attn_k.weight", "[256, 256]", "expected [128, 256]"],
    );
}

#[test]
fn unsupported_architecture_and_missing_key_are_named() {
    let path = rewrite("arch.gguf", |meta, _| {
        meta.iter_mut()
            .find(|(k, _)| k == "general.architecture")
            .unwrap()
            .1 = Value::String("gpt2".into());
    });
    assert_rejected(&path, &["architecture `gpt2` is not supported", "smollm3"]);
    let path = rewrite("nokey.gguf", |meta, _| {
        meta.retain(|(k, _)| k != "smollm3.block_count")
    });
    assert_rejected(&path, &["smollm3.block_count", "missing"]);
}

/// The tiny model with metadata key `key` set to `value` (as a u64).
fn with_count(name: &str, key: &str, value: u64) -> PathBuf {
    rewrite(name, |meta, _| {
        meta.retain(|(k, _)| k != key);
        meta.push((key.into(), Value::U64(value)));
    })
}

#[test]
fn counts_beyond_what_the_file_holds_are_rejected_before_allocating() {
    // 10^9 layers once cost 16.7 GB and a minute; the file holds 8 layers' tensors.
    let path = with_count("layers.gguf", "smollm3.block_count", 1_000_000_000);
    assert_rejected(
        &path,
        &[
            "smollm3.block_count",
            "1000000000 layers",
            "at most 8 layers",
        ],
    );
    assert_rejected(
        &with_count("nolayers.gguf", "smollm3.block_count", 0),
        &["smollm3.block_count", "0 layers"],
    );
    assert_rejected(
        &with_count("context.gguf", "smollm3.context_length", (1 << 31) - 1),
        &["smollm3.context_length", "2147483647 is outside"],
    );
    assert_rejected(
        &with_count("headdim.gguf", "smollm3.attention.key_length", 1 << 40),
        &["smollm3.attention.key_length", "beyond"],
    );
    assert_rejected(
        &with_count("ffn.gguf", "smollm3.feed_forward_length", u64::MAX),
        &["smollm3.feed_forward_length"],
    );
}

#[test]
fn a_special_token_id_outside_the_vocabulary_is_ignored_with_a_warning() {
    let path = with_count("bos.gguf", "tokenizer.ggml.bos_token_id", 1 << 40);
    let out = smolbot(&[
        "tokenize",
        "--model",
        path.to_str().unwrap(),
        "--text",
        "hello",
    ]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("tokenizer.ggml.bos_token_id") && err.contains("ignored"),
        "no warning: {err}"
    );
}

/// `generate` continuing the golden prompt greedily on SmolLM2 (at most 30 tokens), with
/// `extra` flags; returns the golden file, stdout and stderr of a successful run.
fn greedy_after_the_golden_prompt(extra: &[&str]) -> (serde_json::Value, String, String) {
    let golden = golden("smollm2_greedy.json");
    let (model, prompt) = (
        smollm2_model(),
        golden["prompt"].as_str().unwrap().to_owned(),
    );
    let mut args = vec![
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--raw",
        "--prompt",
        &prompt,
        "--temperature",
        "0",
        "--max-tokens",
        "30",
    ];
    args.extend_from_slice(extra);
    let out = smolbot(&args);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    (golden, stdout, stderr)
}

#[test]
fn greedy_smollm2_answers_paris_with_llama_cpp_tokens() {
    let (golden, stdout, stderr) = greedy_after_the_golden_prompt(&[]);
    assert!(stdout.contains("Paris"), "{stdout}");
    assert_eq!(
        stdout.trim_end(),
        golden["text"].as_str().unwrap().trim_end()
    );
    assert!(stderr.contains("tok/s"), "no timings on stderr: {stderr}");
}

#[test]
fn a_stop_string_ends_the_output_before_it() {
    let (golden, stdout, stderr) = greedy_after_the_golden_prompt(&["--stop", " Paris"]);
    assert!(golden["text"].as_str().unwrap().contains(" Paris"));
    assert_eq!(stdout.trim_end(), "The capital of France is");
    assert!(!stderr.contains("stopped:"), "{stderr}");
}

#[test]
fn same_seed_same_output_and_max_tokens_is_reported() {
    let run = |seed: &str| {
        let out = smolbot(&[
            "generate",
            "--model",
            smollm2_model().to_str().unwrap(),
            "--raw",
            "--prompt",
            "Once upon a time",
            "--temperature",
            "1.0",
            "--seed",
            seed,
            "--max-tokens",
            "12",
        ]);
        assert!(out.status.success());
        (text(&out.stdout), text(&out.stderr))
    };
    let (a, err) = run("7");
    let (b, _) = run("7");
    let (c, _) = run("8");
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert!(err.contains("reached --max-tokens 12"), "{err}");
}

#[test]
fn a_prompt_file_reads_as_the_same_prompt_and_ctx_size_bounds_the_context() {
    let model = tiny_model().to_str().unwrap();
    let prompt = "a b c ".repeat(40);
    let file = scratch("prompt.txt");
    std::fs::write(&file, &prompt).unwrap();
    let base = ["generate", "--model", model, "--raw", "--max-tokens", "6"];
    let given = smolbot(&[&base[..], &["--temperature", "0", "--prompt", &prompt]].concat());
    let read = smolbot(
        &[
            &base[..],
            &["--temperature", "0", "-f", file.to_str().unwrap()],
        ]
        .concat(),
    );
    assert!(read.status.success(), "{}", text(&read.stderr));
    assert_eq!(text(&given.stdout), text(&read.stdout));
    assert!(
        text(&read.stderr).contains("peak memory: "),
        "{}",
        text(&read.stderr)
    );
    // 120 prompt tokens in a 64-position context: refused, naming both numbers.
    let small = smolbot(
        &[
            &base[..],
            &["--ctx-size", "64", "-f", file.to_str().unwrap()],
        ]
        .concat(),
    );
    let err = text(&small.stderr);
    assert!(!small.status.success(), "{err}");
    assert!(err.contains("64"), "{err}");
    let missing = smolbot(&[&base[..], &["-f", "/nonexistent/prompt.txt"]].concat());
    assert!(!missing.status.success());
    assert!(text(&missing.stderr).contains("/nonexistent/prompt.txt"));
    std::fs::remove_file(file).unwrap();
}

#[test]
fn a_full_context_stops_generation_and_says_so() {
    // The tiny model's context is 4,096 tokens; a 4,090-token prompt leaves room for 6.
    let prompt = "a ".repeat(4090);
    let out = smolbot(&[
        "generate",
        "--model",
        tiny_model().to_str().unwrap(),
        "--raw",
        "--prompt",
        prompt.trim_end(),
        "--max-tokens",
        "100",
    ]);
    let stderr = text(&out.stderr);
    assert!(stderr.contains("context"), "{stderr}");
}

#[test]
fn rope_flags_reach_the_loader() {
    // YaRN ×2 over the tiny model's 4,096 positions serves 8,192: the same 4,090-token
    // prompt that fills the plain context now leaves room; without a factor YaRN is refused.
    let prompt = "a ".repeat(4090);
    let model = tiny_model().to_str().unwrap();
    let base = ["generate", "--model", model, "--raw", "--max-tokens", "8"];
    let yarn = [
        &base[..],
        &["--rope-scaling", "yarn", "--rope-scale", "2", "--prompt"],
    ]
    .concat();
    let out = smolbot(&[&yarn[..], &[prompt.trim_end()]].concat());
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("reached --max-tokens 8"), "{stderr}");
    let bare = [&base[..], &["--rope-scaling", "yarn", "--prompt", "hi"]].concat();
    let out = smolbot(&bare);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--rope-scale"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_long_prompt_past_the_trained_context_is_read_within_a_stated_memory_bound() {
    // YaRN ×16 stretches the tiny model's 4,096 positions to a 65,536-token context; a
    // 40,000-token prompt (ten times the trained context) is read and answered, and the
    // process stays under its weights and load state, twice the KV cache (a growing cache is
    // copied once per step) and 48 MB of working memory.
    let (prompt, gen) = (40_000u64, 8u64);
    let out = smolbot(&[
        "bench",
        "--model",
        tiny_model().to_str().unwrap(),
        "--rope-scaling",
        "yarn",
        "--rope-scale",
        "16",
        "--prompt-tokens",
        &prompt.to_string(),
        "--gen-tokens",
        &gen.to_string(),
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["prompt_tokens"], prompt);
    assert_eq!(report["gen_tokens"], gen);
    // 8 layers × K and V × 2 KV heads × 64 values × 2 bytes (f16).
    let kv_mb = ((prompt + gen) * 8 * 2 * 2 * 64 * 2) as f64 / 1e6;
    let (peak, load) = (
        report["peak_rss_mb"].as_f64().unwrap(),
        report["load_peak_rss_mb"].as_f64().unwrap(),
    );
    let bound = load + 2.0 * kv_mb + 48.0;
    assert!(peak < bound, "peak RSS {peak:.0} MB over {bound:.0} MB");
}

#[test]
fn perplexity_json_matches_its_own_summary() {
    let golden = golden("tiny_smollm3_nll.json");
    let ids = scratch("ids.json");
    std::fs::write(&ids, golden["tokens"].to_string()).unwrap();
    let out = smolbot(&[
        "perplexity",
        "--model",
        tiny_model().to_str().unwrap(),
        "--tokens-file",
        ids.to_str().unwrap(),
        "--ctx",
        "64",
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let last: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let nll = f32s(&last["nll"]);
    // 200 tokens in windows of 64: 63 + 63 + 63 + 7 scored.
    assert_eq!(last["tokens"].as_u64().unwrap(), 196);
    assert_eq!(nll.len(), 196);
    let mean = nll.iter().map(|&x| x as f64).sum::<f64>() / nll.len() as f64;
    assert!((mean.exp() - last["ppl"].as_f64().unwrap()).abs() < 1e-3 * mean.exp());
}

#[test]
fn perplexity_of_a_text_file_tokenizes_it_as_plain_text() {
    let out = smolbot(&[
        "perplexity",
        "--model",
        smollm2_model().to_str().unwrap(),
        "--file",
        root()
            .join("tests/fixtures/smollm2_text.txt")
            .to_str()
            .unwrap(),
        "--ctx",
        "128",
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let last: serde_json::Value =
        serde_json::from_str(text(&out.stdout).lines().last().unwrap()).unwrap();
    let golden = golden("smollm2_nll.json");
    assert_eq!(last["tokens"], golden["nll"].as_array().unwrap().len());
    let rel = (last["ppl"].as_f64().unwrap() - golden["ppl"].as_f64().unwrap()).abs()
        / golden["ppl"].as_f64().unwrap();
    assert!(
        rel < 0.005,
        "perplexity {} vs llama.cpp {}",
        last["ppl"],
        golden["ppl"]
    );
}
