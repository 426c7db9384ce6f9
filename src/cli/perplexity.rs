//! `smolbot perplexity`: exp(mean NLL) over consecutive windows, optionally as JSON.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use smolbot::inference::perplexity::{perplexity, token_nll};
use smolbot::smollm3::LoadedModel;

use super::EngineArgs;

#[derive(Args)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["file", "tokens_file"])))]
pub struct PerplexityArgs {
    #[command(flatten)]
    engine: EngineArgs,
    /// Text file, tokenized as plain text (no BOS, special tokens not parsed).
    #[arg(long)]
    file: Option<PathBuf>,
    /// JSON array of token ids, used as given.
    #[arg(long)]
    tokens_file: Option<PathBuf>,
    /// Window length in tokens.
    #[arg(long, default_value_t = 512)]
    ctx: usize,
    /// Print `{"ppl", "tokens", "nll"}` as one JSON object on the last line.
    #[arg(long)]
    json: bool,
}

pub fn run(args: PerplexityArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.ctx >= 2,
        "--ctx must be at least 2 tokens, got {}",
        args.ctx
    );
    let device = args.engine.device();
    let model = LoadedModel::load(&args.engine.model, &device)?;
    let tokens: Vec<u32> = match (&args.file, &args.tokens_file) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            model.tokenizer.encode(&text, false)?
        }
        (_, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            serde_json::from_str(&text).with_context(|| {
                format!("{}: expected a JSON array of token ids", path.display())
            })?
        }
        _ => unreachable!("clap requires one input"),
    };
    anyhow::ensure!(
        tokens.len() >= 2,
        "need at least 2 tokens to score, got {}",
        tokens.len()
    );
    let started = Instant::now();
    let nll = token_nll(&model.transformer, &tokens, args.ctx)?;
    let secs = started.elapsed().as_secs_f64();
    let ppl = perplexity(&nll);
    eprintln!(
        "scored {} tokens in windows of {} ({:.1} tok/s)",
        nll.len(),
        args.ctx,
        tokens.len() as f64 / secs
    );
    println!("perplexity: {ppl:.4}");
    if args.json {
        println!(
            "{}",
            serde_json::json!({ "ppl": ppl, "tokens": nll.len(), "nll": nll })
        );
    }
    Ok(ExitCode::SUCCESS)
}
