//! `smolbot generate`: one completion streamed to stdout, timings to stderr.

use std::io::Write;
use std::ops::ControlFlow;
use std::process::ExitCode;

use clap::Args;
use smolbot::inference::generate::{generate, GenerationRequest, StopReason};
use smolbot::inference::sampling::SamplingParams;
use smolbot::smollm3::{LoadedModel, StreamDecoder};

use super::EngineArgs;

#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    engine: EngineArgs,
    /// The prompt: a user message, or with `--raw` the exact text to continue.
    #[arg(long, short)]
    prompt: String,
    /// Send the prompt as-is, with special tokens such as `<|im_start|>` recognised.
    #[arg(long)]
    raw: bool,
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// 0 picks the most likely token every time.
    #[arg(long, default_value_t = 0.8)]
    temperature: f32,
    /// 0 disables top-k.
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    #[arg(long, default_value_t = 0.05)]
    min_p: f32,
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

pub fn run(args: GenerateArgs) -> anyhow::Result<ExitCode> {
    let device = args.engine.device();
    let model = LoadedModel::load(&args.engine.model, &device)?;
    let tk = &model.tokenizer;
    let mut prompt = Vec::new();
    if tk.add_bos {
        prompt.extend(tk.bos);
    }
    if args.raw {
        prompt.extend(tk.encode(&args.prompt, true)?);
    } else {
        // ChatML user turn; the user's text is tokenized with special tokens left as text.
        prompt.extend(tk.encode("<|im_start|>user\n", true)?);
        prompt.extend(tk.encode(&args.prompt, false)?);
        prompt.extend(tk.encode("<|im_end|>\n<|im_start|>assistant\n", true)?);
    }
    let request = GenerationRequest {
        max_tokens: args.max_tokens,
        sampling: SamplingParams {
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            min_p: args.min_p,
            repeat_penalty: args.repeat_penalty,
            seed: args.seed,
            ..SamplingParams::default()
        },
        stop_tokens: tk.end_of_generation().to_vec(),
    };
    let mut decoder = StreamDecoder::new(tk);
    let mut out = std::io::stdout().lock();
    let mut failure = None;
    let mut cache = model.transformer.new_cache();
    let stats = generate(
        &model.transformer,
        &mut cache,
        &prompt,
        &request,
        |id| match decoder.push(id) {
            Ok(Some(text)) => {
                let _ = out.write_all(text.as_bytes());
                let _ = out.flush();
                ControlFlow::Continue(())
            }
            Ok(None) => ControlFlow::Continue(()),
            Err(e) => {
                failure = Some(e);
                ControlFlow::Break(())
            }
        },
    )?;
    if let Some(e) = failure {
        return Err(e.into());
    }
    if let Some(rest) = decoder.finish()? {
        out.write_all(rest.as_bytes())?;
    }
    writeln!(out)?;
    out.flush()?;
    eprintln!(
        "prompt: {} tokens, {:.1} tok/s | generation: {} tokens, {:.1} tok/s",
        stats.prompt_tokens,
        stats.prompt_tok_per_s(),
        stats.generated_tokens,
        stats.generation_tok_per_s()
    );
    match stats.stop {
        StopReason::ContextFull => eprintln!(
            "stopped: the context is full ({} tokens)",
            model.config.transformer.context_length
        ),
        StopReason::MaxTokens => eprintln!("stopped: reached --max-tokens {}", args.max_tokens),
        StopReason::EndToken | StopReason::Cancelled => {}
    }
    Ok(ExitCode::SUCCESS)
}
