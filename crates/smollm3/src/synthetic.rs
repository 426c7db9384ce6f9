//! Synthetic SmolLM3 GGUF files: the true `smollm3` metadata keys and tensor names, random
//! weights, llama.cpp's Q4_K_M type mix, and a small byte-level BPE tokenizer. Used for tests
//! (a tiny model) and benchmarks (a full-size 3B one); made on demand, never committed.
//!
//! Everything is deterministic from the seed (own PRNG, own BPE trainer with fixed
//! tie-breaks), so the same spec always writes the same bytes and golden files made from it
//! by llama.cpp stay valid.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{PreTokenizedString, PreTokenizer, SplitDelimiterBehavior};

use super::error::Smollm3Error;

/// SmolLM3's official chat template, written into synthetic files and used as fallback.
pub const CHAT_TEMPLATE: &str = include_str!("chat_template.jinja");

/// Special tokens of the synthetic vocabulary, at its end, as in SmolLM3's.
const SPECIAL_TOKENS: &[&str] = &[
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|im_start|>",
    "<|im_end|>",
    "<think>",
    "</think>",
    "<tool_call>",
    "</tool_call>",
    "<code>",
    "</code>",
];

/// Text the synthetic BPE merges are learnt from: SmolLM3's six languages, code, digits.
const TRAINING_TEXT: &str =
    "The quick brown fox jumps over the lazy dog. What is the capital of France? \
The capital of France is Paris, and the river that runs through it is the Seine. \
Le renard brun rapide saute par-dessus le chien paresseux. Quelle est la capitale de la France ? \
El rápido zorro marrón salta sobre el perro perezoso. ¿Cuál es la capital de España? \
Der schnelle braune Fuchs springt über den faulen Hund. Was ist die Hauptstadt von Deutschland? \
La rapida volpe marrone salta sopra il cane pigro. Qual è la capitale dell'Italia? \
A rápida raposa marrom pula sobre o cão preguiçoso. Qual é a capital de Portugal? \
fn main() { let x = 42; println!(\"{x}\"); } def add(a, b):\n    return a + b\n\
In 2025 there were 1234567 tokens in 365 days; the answer is 3.14159.\n";

/// Shape and randomness of a synthetic model.
#[derive(Debug, Clone)]
pub struct SyntheticSpec {
    pub name: &'static str,
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub n_ff: usize,
    /// Total vocabulary; BPE merges fill what bytes and specials leave, filler tokens the rest.
    pub vocab_size: usize,
    pub max_merges: usize,
    pub context_length: usize,
    pub rope_theta: f32,
    /// Standard deviation of Q/K weights: large, so attention is sharp and position matters.
    pub qk_std: f32,
    pub seed: u64,
}

impl SyntheticSpec {
    /// A few-MB model with 8 layers (NoPE at 3 and 7) and GQA, for tests.
    pub fn tiny() -> Self {
        Self {
            name: "smollm3-synthetic-tiny",
            n_layer: 8,
            n_embd: 256,
            n_head: 4,
            n_head_kv: 2,
            n_ff: 768,
            vocab_size: 512,
            max_merges: 512,
            context_length: 4096,
            rope_theta: 5_000_000.0,
            qk_std: 0.15,
            seed: 20261126,
        }
    }

    /// SmolLM3-3B's true dimensions (~1.9 GB as Q4_K_M), for benchmarks.
    pub fn full_3b() -> Self {
        Self {
            name: "smollm3-synthetic-3b",
            n_layer: 36,
            n_embd: 2048,
            n_head: 16,
            n_head_kv: 4,
            n_ff: 11008,
            vocab_size: 128_256,
            max_merges: 2000,
            context_length: 65_536,
            rope_theta: 5_000_000.0,
            qk_std: 0.05,
            seed: 3,
        }
    }

    fn head_dim(&self) -> usize {
        self.n_embd / self.n_head
    }
}

/// splitmix64: tiny, fast, and fixed forever, unlike a library RNG whose stream may change.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// `n` normal samples with the given standard deviation (Box–Muller).
    fn normals(&mut self, n: usize, std: f32) -> Vec<f32> {
        let mut out = Vec::with_capacity(n + 1);
        while out.len() < n {
            let (u1, u2) = (self.uniform(), self.uniform());
            let r = (-2.0 * u1.ln()).sqrt();
            let t = 2.0 * std::f64::consts::PI * u2;
            out.push((r * t.cos()) as f32 * std);
            out.push((r * t.sin()) as f32 * std);
        }
        out.truncate(n);
        out
    }
}

/// GPT-2's byte → printable-character table used by byte-level BPE vocabularies.
fn byte_chars() -> Vec<char> {
    let printable =
        |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let mut extra = 0;
    (0u32..256)
        .map(|b| {
            if printable(b) {
                char::from_u32(b).unwrap_or('?')
            } else {
                extra += 1;
                char::from_u32(255 + extra).unwrap_or('?')
            }
        })
        .collect()
}

/// Learns up to `max_merges` BPE merges from [`TRAINING_TEXT`], most frequent pair first,
/// ties broken by the pair's text so the result never depends on hash order.
fn train_merges(max_merges: usize) -> Result<Vec<(String, String)>, Smollm3Error> {
    let chars = byte_chars();
    let split = Split::new(
        SplitPattern::Regex(super::tokenizer::LLAMA3_SPLIT.to_string()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(|e| Smollm3Error::Encode(e.to_string()))?;
    let mut pre = PreTokenizedString::from(TRAINING_TEXT);
    split
        .pre_tokenize(&mut pre)
        .map_err(|e| Smollm3Error::Encode(e.to_string()))?;
    let mut words: BTreeMap<Vec<String>, usize> = BTreeMap::new();
    for (piece, _, _) in pre.get_splits(
        tokenizers::OffsetReferential::Original,
        tokenizers::OffsetType::Byte,
    ) {
        let symbols = piece
            .bytes()
            .map(|b| chars[b as usize].to_string())
            .collect();
        *words.entry(symbols).or_default() += 1;
    }
    let mut merges = Vec::new();
    while merges.len() < max_merges {
        let mut pairs: BTreeMap<(String, String), usize> = BTreeMap::new();
        for (w, n) in &words {
            for p in w.windows(2) {
                *pairs.entry((p[0].clone(), p[1].clone())).or_default() += n;
            }
        }
        let Some((best, count)) = pairs
            .into_iter()
            .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
        else {
            break;
        };
        if count < 2 {
            break;
        }
        let joined = format!("{}{}", best.0, best.1);
        words = words.into_iter().fold(BTreeMap::new(), |mut acc, (w, n)| {
            let mut out = Vec::with_capacity(w.len());
            let mut i = 0;
            while i < w.len() {
                if i + 1 < w.len() && w[i] == best.0 && w[i + 1] == best.1 {
                    out.push(joined.clone());
                    i += 2;
                } else {
                    out.push(w[i].clone());
                    i += 1;
                }
            }
            *acc.entry(out).or_default() += n;
            acc
        });
        merges.push(best);
    }
    Ok(merges)
}

/// llama.cpp's Q4_K_M rule for `attn_v` and `ffn_down`: Q6_K in the first and last eighth of
/// the layers and every third one between, Q4_K elsewhere.
fn use_more_bits(i: usize, n: usize) -> bool {
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

/// Writes the model described by `spec` to `path`.
pub fn write_gguf(spec: &SyntheticSpec, path: &Path) -> Result<(), Smollm3Error> {
    let err =
        |e: candle_core::Error| Smollm3Error::Encode(format!("writing {}: {e}", path.display()));
    let merges = train_merges(spec.max_merges)?;
    let chars = byte_chars();
    let mut tokens: Vec<String> = chars.iter().map(|c| c.to_string()).collect();
    let mut types: Vec<i32> = vec![1; tokens.len()];
    let room = spec.vocab_size - 256 - SPECIAL_TOKENS.len();
    let merges: Vec<_> = merges.into_iter().take(room).collect();
    for (a, b) in &merges {
        tokens.push(format!("{a}{b}"));
        types.push(1);
    }
    let mut filler = 0;
    while tokens.len() < spec.vocab_size - SPECIAL_TOKENS.len() {
        tokens.push(format!("<|reserved_{filler}|>"));
        types.push(5);
        filler += 1;
    }
    let special_base = tokens.len() as u32;
    for s in SPECIAL_TOKENS {
        tokens.push(s.to_string());
        types.push(3);
    }
    let special = |name: &str| {
        special_base + SPECIAL_TOKENS.iter().position(|s| *s == name).unwrap_or(0) as u32
    };

    let arch = "smollm3";
    let k = |s: &str| format!("{arch}.{s}");
    let head_dim = spec.head_dim();
    let meta: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(arch.into())),
        ("general.name".into(), Value::String(spec.name.into())),
        ("general.file_type".into(), Value::U32(15)),
        ("general.quantization_version".into(), Value::U32(2)),
        (k("block_count"), Value::U32(spec.n_layer as u32)),
        (k("context_length"), Value::U32(spec.context_length as u32)),
        (k("embedding_length"), Value::U32(spec.n_embd as u32)),
        (k("feed_forward_length"), Value::U32(spec.n_ff as u32)),
        (k("attention.head_count"), Value::U32(spec.n_head as u32)),
        (
            k("attention.head_count_kv"),
            Value::U32(spec.n_head_kv as u32),
        ),
        (k("rope.freq_base"), Value::F32(spec.rope_theta)),
        (k("attention.layer_norm_rms_epsilon"), Value::F32(1e-6)),
        (k("vocab_size"), Value::U32(spec.vocab_size as u32)),
        (k("rope.dimension_count"), Value::U32(head_dim as u32)),
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        (
            "tokenizer.ggml.pre".into(),
            Value::String("smaug-bpe".into()),
        ),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(tokens.into_iter().map(Value::String).collect()),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(types.into_iter().map(Value::I32).collect()),
        ),
        (
            "tokenizer.ggml.merges".into(),
            Value::Array(
                merges
                    .iter()
                    .map(|(a, b)| Value::String(format!("{a} {b}")))
                    .collect(),
            ),
        ),
        (
            "tokenizer.ggml.bos_token_id".into(),
            Value::U32(special("<|begin_of_text|>")),
        ),
        (
            "tokenizer.ggml.eos_token_id".into(),
            Value::U32(special("<|im_end|>")),
        ),
        (
            "tokenizer.ggml.padding_token_id".into(),
            Value::U32(special("<|end_of_text|>")),
        ),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)),
        (
            "tokenizer.chat_template".into(),
            Value::String(CHAT_TEMPLATE.into()),
        ),
    ];

    let mut rng = Rng(spec.seed);
    let device = Device::Cpu;
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    let mut add = |name: String,
                   shape: &[usize],
                   std: f32,
                   offset: f32,
                   dtype: GgmlDType|
     -> Result<(), Smollm3Error> {
        let n = shape.iter().product();
        let data: Vec<f32> = rng
            .normals(n, std)
            .into_iter()
            .map(|x| x + offset)
            .collect();
        let t = Tensor::from_vec(data, shape, &device).map_err(err)?;
        tensors.push((name, QTensor::quantize(&t, dtype).map_err(err)?));
        Ok(())
    };
    let (d, q, kv, ff) = (
        spec.n_embd,
        spec.n_head * head_dim,
        spec.n_head_kv * head_dim,
        spec.n_ff,
    );
    // Tied embeddings: llama.cpp's Q4_K_M stores them as Q6_K since they are also the output.
    add(
        "token_embd.weight".into(),
        &[spec.vocab_size, d],
        0.02,
        0.0,
        GgmlDType::Q6K,
    )?;
    add("output_norm.weight".into(), &[d], 0.1, 1.0, GgmlDType::F32)?;
    let mix = |i: usize| {
        if use_more_bits(i, spec.n_layer) {
            GgmlDType::Q6K
        } else {
            GgmlDType::Q4K
        }
    };
    for i in 0..spec.n_layer {
        let b = |s: &str| format!("blk.{i}.{s}.weight");
        add(b("attn_norm"), &[d], 0.1, 1.0, GgmlDType::F32)?;
        add(b("attn_q"), &[q, d], spec.qk_std, 0.0, GgmlDType::Q4K)?;
        add(b("attn_k"), &[kv, d], spec.qk_std, 0.0, GgmlDType::Q4K)?;
        add(b("attn_v"), &[kv, d], 0.05, 0.0, mix(i))?;
        add(b("attn_output"), &[d, q], 0.05, 0.0, GgmlDType::Q4K)?;
        add(b("ffn_norm"), &[d], 0.1, 1.0, GgmlDType::F32)?;
        add(b("ffn_gate"), &[ff, d], 0.05, 0.0, GgmlDType::Q4K)?;
        add(b("ffn_up"), &[ff, d], 0.05, 0.0, GgmlDType::Q4K)?;
        add(b("ffn_down"), &[d, ff], 0.05, 0.0, mix(i))?;
    }
    let file = std::fs::File::create(path)
        .map_err(|e| Smollm3Error::Encode(format!("creating {}: {e}", path.display())))?;
    let mut w = std::io::BufWriter::new(file);
    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut w, &meta_refs, &tensor_refs).map_err(err)?;
    std::io::Write::flush(&mut w)
        .map_err(|e| Smollm3Error::Encode(format!("writing {}: {e}", path.display())))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_k_m_mix_matches_llama_cpp_for_36_layers() {
        let six: Vec<usize> = (0..36).filter(|&i| use_more_bits(i, 36)).collect();
        assert_eq!(
            six,
            vec![0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 30, 31, 32, 33, 34, 35]
        );
    }

    #[test]
    fn merges_are_deterministic_and_frequent_pairs_come_first() {
        let a = train_merges(50).unwrap();
        assert_eq!(a, train_merges(50).unwrap());
        assert_eq!(a.len(), 50);
        assert!(
            a.iter().take(10).any(|(x, y)| x == "Ġ" || y == "e"),
            "{a:?}"
        );
    }

    #[test]
    fn byte_table_is_a_bijection() {
        let chars = byte_chars();
        let set: std::collections::HashSet<_> = chars.iter().collect();
        assert_eq!(set.len(), 256);
        assert_eq!(chars[b' ' as usize], 'Ġ');
        assert_eq!(chars[b'a' as usize], 'a');
    }
}
