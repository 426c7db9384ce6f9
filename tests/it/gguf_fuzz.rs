//! Mutation fuzzing of the GGUF open + validate path on stable Rust (no `cargo fuzz`, which
//! needs a nightly toolchain): random byte edits, overwrites with extreme integers and
//! truncations of the tiny synthetic model, each opened, configured, validated and tokenized.
//! Every outcome must be a value or an error, never a panic. A short run is part of the suite;
//! a long one is `SMOLBOT_FUZZ_ITERATIONS=20000 cargo test --release --test gguf_fuzz`; the
//! libFuzzer target of the same path is `fuzz/` (`cargo +nightly fuzz run gguf_open`, see
//! fuzz/README.md).
//! A failing case prints its seed; keep the file it names under `tests/fixtures/gguf_crashers/`
//! (every file there is replayed below).

use crate::common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use common::*;
use rand::{Rng, SeedableRng};
use smolbot::inference::GgufFile;
use smolbot::smollm3::tokenizer::GgufTokenizer;
use smolbot::smollm3::ModelConfig;

/// How far a case got: 0 not opened, 1 opened, 2 configured too.
fn open_and_validate(path: &Path) -> usize {
    let Ok(file) = GgufFile::open(path) else {
        return 0;
    };
    let _ = GgufTokenizer::from_gguf(&file);
    match ModelConfig::from_gguf(&file) {
        Ok(config) => {
            let _ = config.transformer.validate(&file);
            2
        }
        Err(_) => 1,
    }
}

/// Integers that break careless arithmetic when written over a count or a length.
const EXTREMES: [u64; 6] = [0, 1, u32::MAX as u64, 1 << 40, i64::MAX as u64, u64::MAX];

fn mutate(bytes: &mut Vec<u8>, rng: &mut impl Rng) {
    // Many edits land in the first KBs (the header, counts and the first keys), the rest
    // anywhere (metadata arrays, tensor infos, data); truncations are rare (they end at open).
    let pick = |rng: &mut dyn rand::RngCore, len: usize| -> usize {
        if rng.random_bool(0.3) {
            rng.random_range(0..len.min(4096))
        } else {
            rng.random_range(0..len)
        }
    };
    for _ in 0..rng.random_range(1..=3) {
        let len = bytes.len();
        match rng.random_range(0..20) {
            1..=7 => {
                let at = pick(rng, len);
                bytes[at] = rng.random();
            }
            8..=13 if len >= 8 => {
                let at = pick(rng, len - 8);
                let value = EXTREMES[rng.random_range(0..EXTREMES.len())];
                bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
            }
            14..=19 if len >= 4 => {
                let at = pick(rng, len - 4);
                bytes[at..at + 4].copy_from_slice(&rng.random::<u32>().to_le_bytes());
            }
            _ => {
                let keep = pick(rng, len);
                bytes.truncate(keep.max(1));
            }
        }
    }
}

#[test]
fn mutated_files_give_errors_never_panics() {
    let original = std::fs::read(tiny_model()).unwrap();
    let iterations: u64 = std::env::var("SMOLBOT_FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(150);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("case.gguf");
    let mut reached = [0u64; 3];
    for seed in 0..iterations {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut bytes = original.clone();
        mutate(&mut bytes, &mut rng);
        std::fs::write(&path, &bytes).unwrap();
        let outcome = catch_unwind(AssertUnwindSafe(|| open_and_validate(&path)));
        let Ok(stage) = outcome else {
            let keep = root()
                .join("target")
                .join(format!("gguf-crasher-{seed}.gguf"));
            std::fs::write(&keep, &bytes).unwrap();
            panic!("seed {seed} panicked; the file is {}", keep.display());
        };
        reached[stage] += 1;
    }
    eprintln!("{iterations} cases: {reached:?} (not opened, opened, configured)");
    // The mutations must reach past the header parser, or the run proves little.
    assert!(reached[1] + reached[2] >= iterations / 5, "{reached:?}");
    assert!(reached[2] >= iterations / 10, "{reached:?}");
}

#[test]
fn every_recorded_crasher_is_an_error() {
    let dir = root().join("tests").join("fixtures").join("gguf_crashers");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        let outcome = catch_unwind(AssertUnwindSafe(|| open_and_validate(&path)));
        assert!(outcome.is_ok(), "{} panics again", path.display());
    }
}
