//! The engine against llama.cpp: per-token NLL on the synthetic SmolLM3 file and on the real
//! SmolLM2-135M, compared with golden files made by `scripts/make_golden.py`.

use crate::common;

use candle_core::Device;
use common::*;
use smolbot::inference::kernels::{Kernels, Tier};
use smolbot::inference::perplexity::{perplexity, token_nll};
use smolbot::inference::{CacheType, GgufFile, Transformer, WeightFormat};
use smolbot::smollm3::config::{RopeKind, RopeOverride};
use smolbot::smollm3::ModelConfig;

/// Bounds from the engine issue: mean |ΔNLL| and relative perplexity difference.
const MAX_MEAN_ABS_NLL: f64 = 0.01;

/// The tiny synthetic model's random weights amplify float summation order: our scalar and
/// AVX2 kernels, whose matmuls agree to 1e-6 relative (integer parts identical), score its
/// golden text 0.0078 nats apart in mean |ΔNLL|, and candle's path sits 0.0085 from llama.cpp
/// where ours sit 0.0102. The engine issue's 0.01 is that noise floor, so each path gets
/// twice it; a wrong NoPE plan still moves NLL by 0.14 (see below).
const MAX_MEAN_ABS_NLL_TINY: f64 = 2.0 * MAX_MEAN_ABS_NLL;
const MAX_PPL_REL: f64 = 0.005;

/// SmolLM2-135M in Q4_1 amplifies the rounding of quantized activations: llama.cpp's own
/// batch-1 and batch-128 kernels differ by 0.022 nats mean on this text, and candle's
/// quantized vs f32 paths by 0.045. With F32 weights both engines agree to 5e-6 (see
/// `smollm2_dequantized_matches_llama_cpp_exactly`), so this looser bound only covers kernels.
const MAX_MEAN_ABS_NLL_Q4_1: f64 = 0.08;

/// With no quantized arithmetic on either side the forward passes must agree to float noise.
const MAX_MEAN_ABS_NLL_F32: f64 = 1e-4;

fn score(
    path: &std::path::Path,
    golden: &serde_json::Value,
    edit: impl FnOnce(&mut ModelConfig),
) -> Vec<f32> {
    score_as(path, golden, WeightFormat::Quantized, CacheType::F32, edit)
}

fn score_as(
    path: &std::path::Path,
    golden: &serde_json::Value,
    format: WeightFormat,
    cache: CacheType,
    edit: impl FnOnce(&mut ModelConfig),
) -> Vec<f32> {
    let file = GgufFile::open(path).unwrap();
    let mut config = ModelConfig::from_gguf(&file).unwrap();
    edit(&mut config);
    let model = Transformer::load_with(&file, config.transformer, &Device::Cpu, format)
        .unwrap()
        .with_cache_type(cache);
    assert_eq!(model.cache_type(), cache, "{} kernels", model.kernels());
    let tokens = u32s(&golden["tokens"]);
    token_nll(&model, &tokens, golden["window"].as_u64().unwrap() as usize).unwrap()
}

fn assert_matches(name: &str, ours: &[f32], golden: &serde_json::Value, max_mean_abs: f64) {
    let theirs = f32s(&golden["nll"]);
    let diff = mean_abs_diff(ours, &theirs);
    let (p_ours, p_theirs) = (perplexity(ours), golden["ppl"].as_f64().unwrap());
    let rel = (p_ours - p_theirs).abs() / p_theirs;
    eprintln!(
        "{name}: mean |ΔNLL| {diff:.5}, ppl {p_ours:.4} vs llama.cpp {p_theirs:.4} ({:.3}%)",
        rel * 100.0
    );
    assert!(
        diff < max_mean_abs,
        "{name}: mean |ΔNLL| {diff} ≥ {max_mean_abs}"
    );
    assert!(
        rel < MAX_PPL_REL,
        "{name}: perplexity {p_ours} vs {p_theirs}: {:.3}% apart",
        rel * 100.0
    );
}

#[test]
fn tiny_smollm3_matches_llama_cpp() {
    let golden = golden("tiny_smollm3_nll.json");
    assert_eq!(
        sha256(tiny_model()),
        golden["model_sha256"].as_str().unwrap(),
        "the synthetic generator changed: regenerate tests/golden with scripts/make_golden.py"
    );
    // candle's QMatMul (the reference path) and each of our kernel tiers this CPU runs.
    let mut paths = vec![Kernels::Candle];
    paths.extend(
        Tier::ALL
            .into_iter()
            .filter(|t| t.supported())
            .map(Kernels::Own),
    );
    // An f16 KV cache (the server's default), and a Q8_0 one, where our attention reads it. Rounding K and V
    // to f16 moves this random model's NLL by itself: llama.cpp's own f16 cache lands 0.047
    // from its f32 one. So the bound is that shift plus the kernels' allowance.
    let shift =
        |file: &str| mean_abs_diff(&f32s(&self::golden(file)["nll"]), &f32s(&golden["nll"]));
    let f16_shift = shift("tiny_smollm3_f16kv_nll.json");
    // The same for a Q8_0 cache: llama.cpp's own lands 0.067 from its f32 one.
    let q8_shift = shift("tiny_smollm3_q8kv_nll.json");
    for kernels in paths {
        let caches: &[(CacheType, f64)] = match kernels {
            Kernels::Candle => &[(CacheType::F32, MAX_MEAN_ABS_NLL_TINY)],
            Kernels::Own(_) => &[
                (CacheType::F32, MAX_MEAN_ABS_NLL_TINY),
                (CacheType::F16, MAX_MEAN_ABS_NLL_TINY + f16_shift),
                (CacheType::Q8_0, MAX_MEAN_ABS_NLL_TINY + q8_shift),
            ],
        };
        for &(cache, bound) in caches {
            let format = WeightFormat::QuantizedOn(kernels);
            let ours = score_as(tiny_model(), &golden, format, cache, |_| {});
            let name = format!(
                "tiny smollm3 on {} kernels, {} cache",
                kernels.name(),
                cache.name()
            );
            assert_matches(&name, &ours, &golden, bound);
        }
    }
}

#[test]
fn a_wrong_nope_plan_fails_the_golden_bound() {
    let golden = golden("tiny_smollm3_nll.json");
    let theirs = f32s(&golden["nll"]);
    // RoPE on every layer, as a plain Llama would do it.
    let all_rope = score(tiny_model(), &golden, |c| {
        c.transformer.rope_layers.iter_mut().for_each(|r| *r = true)
    });
    let diff = mean_abs_diff(&all_rope, &theirs);
    eprintln!("RoPE on every layer: mean |ΔNLL| {diff:.4}");
    assert!(
        diff > 10.0 * MAX_MEAN_ABS_NLL,
        "a wrong NoPE plan moved NLL by only {diff}"
    );
    // NoPE shifted by one layer (2, 6 instead of 3, 7).
    let shifted = score(tiny_model(), &golden, |c| {
        let n = c.transformer.n_layer;
        c.transformer.rope_layers = (0..n).map(|i| (i + 2) % 4 != 0).collect();
    });
    let diff = mean_abs_diff(&shifted, &theirs);
    eprintln!("NoPE one layer early: mean |ΔNLL| {diff:.4}");
    assert!(
        diff > 10.0 * MAX_MEAN_ABS_NLL,
        "a shifted NoPE plan moved NLL by only {diff}"
    );
}

#[test]
fn yarn_from_the_command_line_matches_llama_cpp() {
    // `--rope-scaling yarn --rope-scale 2 --yarn-orig-ctx 4096` on the tiny model, against
    // llama.cpp with the same settings: YaRN's frequencies and attention scale moved its NLL
    // by 0.10 from the plain run, so a wrong table cannot hide in the bound.
    let golden = golden("tiny_smollm3_yarn_nll.json");
    let yarn = RopeOverride {
        kind: Some(RopeKind::Yarn),
        scale: Some(2.0),
        original_context: Some(4096),
    };
    let ours = score(tiny_model(), &golden, |c| {
        yarn.apply(&mut c.transformer).unwrap();
        assert_eq!(c.transformer.context_length, 8192);
    });
    assert_matches(
        "tiny smollm3 with YaRN ×2",
        &ours,
        &golden,
        MAX_MEAN_ABS_NLL_TINY,
    );
    let plain = score(tiny_model(), &golden, |_| {});
    let diff = mean_abs_diff(&plain, &f32s(&golden["nll"]));
    assert!(
        diff > 2.0 * MAX_MEAN_ABS_NLL_TINY,
        "YaRN moved NLL by only {diff}"
    );
}

#[test]
fn smollm2_matches_llama_cpp() {
    let golden = golden("smollm2_nll.json");
    let path = smollm2_model();
    assert_eq!(
        sha256(&path),
        golden["model_sha256"].as_str().unwrap(),
        "a different SmolLM2 file"
    );
    let ours = score(&path, &golden, |_| {});
    assert_matches("smollm2-135m", &ours, &golden, MAX_MEAN_ABS_NLL_Q4_1);
}

#[test]
fn smollm2_dequantized_matches_llama_cpp_exactly() {
    let golden = golden("smollm2_f32_nll.json");
    let path = smollm2_model();
    assert_eq!(
        sha256(&path),
        golden["model_sha256"].as_str().unwrap(),
        "a different SmolLM2 file"
    );
    let ours = score_as(
        &path,
        &golden,
        WeightFormat::Dequantized,
        CacheType::F32,
        |_| {},
    );
    assert_matches("smollm2-135m f32", &ours, &golden, MAX_MEAN_ABS_NLL_F32);
}
