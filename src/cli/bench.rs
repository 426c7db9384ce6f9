//! `smolbot bench`: prompt-processing and generation speed plus peak memory, the numbers
//! the performance work is judged by (compare with llama.cpp in the same run:
//! `scripts/bench.sh`).

use std::ops::ControlFlow;
use std::process::ExitCode;
use std::time::Instant;

use clap::Args;
use smolbot::inference::generate::{generate, GenerationRequest};
use smolbot::inference::sampling::SamplingParams;
use smolbot::smollm3::LoadedModel;

use super::EngineArgs;

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    engine: EngineArgs,
    /// Prompt length in tokens (processed in one prefill).
    #[arg(long, default_value_t = 512)]
    prompt_tokens: usize,
    /// Tokens generated after the prompt (end tokens do not stop the run).
    #[arg(long, default_value_t = 128)]
    gen_tokens: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let device = args.engine.device();
    let started = Instant::now();
    let model = LoadedModel::load(&args.engine.model, &device)?;
    let load_s = started.elapsed().as_secs_f64();
    let vocab = model.config.transformer.vocab_size as u64;
    // A fixed pseudo-random prompt over the ordinary part of the vocabulary.
    let prompt: Vec<u32> = (0..args.prompt_tokens as u64)
        .map(|i| ((i * 7919 + 13) % (vocab * 3 / 4)) as u32)
        .collect();
    let request = GenerationRequest {
        max_tokens: args.gen_tokens,
        sampling: SamplingParams::greedy(),
        stop_tokens: Vec::new(),
        ..GenerationRequest::default()
    };
    let mut cache = model.transformer.new_cache();
    let stats = generate(&model.transformer, &mut cache, &prompt, &request, |_| {
        ControlFlow::Continue(())
    })?;
    let rss_mb = peak_rss_bytes().map(|b| b as f64 / 1e6);
    let file_mb = std::fs::metadata(&args.engine.model)?.len() as f64 / 1e6;
    let threads = candle_core::utils::get_num_threads();
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "engine": "smolbot",
                "threads": threads,
                "load_s": load_s,
                "prompt_tokens": stats.prompt_tokens,
                "prompt_tok_s": stats.prompt_tok_per_s(),
                "gen_tokens": stats.generated_tokens,
                "gen_tok_s": stats.generation_tok_per_s(),
                "peak_rss_mb": rss_mb,
                "file_mb": file_mb,
            })
        );
    } else {
        println!("threads:     {threads}");
        println!("load:        {load_s:.2} s");
        println!(
            "prompt:      {} tokens, {:.1} tok/s",
            stats.prompt_tokens,
            stats.prompt_tok_per_s()
        );
        println!(
            "generation:  {} tokens, {:.2} tok/s",
            stats.generated_tokens,
            stats.generation_tok_per_s()
        );
        if let Some(mb) = rss_mb {
            println!("peak RSS:    {mb:.0} MB (file {file_mb:.0} MB)");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// High-water mark of resident memory (Linux `VmHWM`); `None` elsewhere.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
