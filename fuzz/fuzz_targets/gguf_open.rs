//! The GGUF open + validate path on arbitrary bytes, as `inspect`, `generate` and `serve`
//! take it: open, tokenizer, configuration, and the configuration checked against the
//! file's tensors. Every input must give a value or an error, never a panic, and nothing
//! may be sized by a count before the file is known to hold it (libFuzzer's `-rss_limit_mb`
//! catches that).

#![no_main]

use std::io::Write;

use libfuzzer_sys::fuzz_target;
use smolbot::inference::GgufFile;
use smolbot::smollm3::tokenizer::GgufTokenizer;
use smolbot::smollm3::ModelConfig;

fuzz_target!(|data: &[u8]| {
    // The reader takes a path (it maps the file), so each input goes through a file.
    let Ok(mut file) = tempfile::NamedTempFile::new() else {
        return;
    };
    if file.write_all(data).is_err() || file.flush().is_err() {
        return;
    }
    let Ok(gguf) = GgufFile::open(file.path()) else {
        return;
    };
    let _ = GgufTokenizer::from_gguf(&gguf);
    if let Ok(config) = ModelConfig::from_gguf(&gguf) {
        let _ = config.transformer.validate(&gguf);
    }
});
