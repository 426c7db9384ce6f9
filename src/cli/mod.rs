//! Subcommands of the `smolbot` binary; each module is the glue for one of them.

mod bench;
mod chat;
mod config;
mod generate;
mod inspect;
mod perplexity;
mod pull;
mod render;
mod serve;
mod synth;
mod tokenize;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "smolbot",
    version,
    about = "A self-hosted chat server for SmolLM3-3B"
)]
pub struct Cli {
    /// TOML file whose keys set the defaults of the serve and chat flags (`port = 8080`);
    /// default: $XDG_CONFIG_HOME/smolbot/config.toml or ~/.config/smolbot/config.toml, if it
    /// exists. Flags and environment variables win over it.
    // Read by `config::locate` before clap runs; declared so that clap accepts and documents it.
    #[allow(dead_code)]
    #[arg(long, global = true, env = config::CONFIG_ENV, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

impl Cli {
    /// Parses the command line with the configuration file's settings as defaults; clap's
    /// own errors (and `--help`) exit here as usual, a bad file is an error.
    pub fn parse_with_config() -> anyhow::Result<Self> {
        let args: Vec<OsString> = std::env::args_os().collect();
        let command = config::apply(Self::command(), &args)?;
        let matches = command.get_matches_from(args);
        Self::from_arg_matches(&matches).map_err(|err| err.exit())
    }
}

#[derive(Subcommand)]
enum Command {
    /// Show a GGUF model's architecture, RoPE/NoPE plan and quantization, and validate it.
    Inspect(inspect::InspectArgs),
    /// Generate a completion, streamed to stdout, with timings on stderr.
    Generate(generate::GenerateArgs),
    /// Perplexity of a text or token list (the fidelity yardstick against llama.cpp).
    Perplexity(perplexity::PerplexityArgs),
    /// Measure prompt and generation speed and peak memory on a model file.
    Bench(bench::BenchArgs),
    /// Write a synthetic SmolLM3 GGUF file (random weights) for tests and benchmarks.
    Synth(synth::SynthArgs),
    /// Print the token ids and pieces of a text, from a GGUF file's tokenizer alone.
    Tokenize(tokenize::TokenizeArgs),
    /// Print the prompt a chat template makes of a conversation, exactly.
    Render(render::RenderArgs),
    /// Serve the OpenAI-compatible chat API over a GGUF model or the stub.
    Serve(Box<serve::ServeArgs>),
    /// Download a GGUF model from the Hugging Face Hub into the HF cache (no server).
    Pull(pull::PullArgs),
    /// List the GGUF models in the HF cache: repository, file, revision, size, path.
    List(pull::ListArgs),
    /// Chat in the terminal, on the same engine and conversation store as the server.
    Chat(chat::ChatArgs),
}

/// Options every model-running command shares.
#[derive(Args, Clone)]
pub struct EngineArgs {
    /// Path to the GGUF model file.
    #[arg(long, short = 'm', env = "SMOLBOT_MODEL")]
    pub model: PathBuf,
    /// CPU threads for the matrix kernels (default: all cores).
    #[arg(long, env = "SMOLBOT_THREADS")]
    pub threads: Option<usize>,
    /// KV cache element type: f16 (half the memory and the bytes read at long context,
    /// llama.cpp's default), q8_0 (a quarter of f32, for long context) or f32 (exact; what
    /// the golden tests compare).
    #[arg(long, env = "SMOLBOT_CACHE_TYPE", value_parser = ["f32", "f16", "q8_0"])]
    pub cache_type: Option<String>,
    #[command(flatten)]
    pub rope: RopeArgs,
    /// Run on the CPU even when built with CUDA.
    #[arg(long, env = "SMOLBOT_CPU")]
    pub cpu: bool,
}

/// Context extension the file does not state, with llama.cpp's flags: SmolLM3's card reaches
/// 128k with `--rope-scaling yarn --rope-scale 2 --yarn-orig-ctx 65536`.
#[derive(Args, Clone, Default)]
pub struct RopeArgs {
    /// RoPE scaling scheme: none, linear or yarn (default: what the file states).
    #[arg(long, env = "SMOLBOT_ROPE_SCALING", value_parser = ["none", "linear", "yarn"])]
    pub rope_scaling: Option<String>,
    /// How many times the trained context grows under linear or YaRN scaling.
    #[arg(long, env = "SMOLBOT_ROPE_SCALE")]
    pub rope_scale: Option<f64>,
    /// The context the model was trained for, which YaRN scales (default: the file's).
    #[arg(long, env = "SMOLBOT_YARN_ORIG_CTX")]
    pub yarn_orig_ctx: Option<usize>,
}

impl RopeArgs {
    /// Hands the flags to the model loader, which reads the same environment variables.
    pub(crate) fn apply(&self) {
        let set = |name: &str, value: Option<String>| {
            if let Some(v) = value {
                // Safe: called on the main thread before any other thread exists.
                unsafe { std::env::set_var(name, v) };
            }
        };
        set("SMOLBOT_ROPE_SCALING", self.rope_scaling.clone());
        set("SMOLBOT_ROPE_SCALE", self.rope_scale.map(|f| f.to_string()));
        set(
            "SMOLBOT_YARN_ORIG_CTX",
            self.yarn_orig_ctx.map(|n| n.to_string()),
        );
    }
}

/// Hands `--cache-type` to the model loader, which reads `SMOLBOT_CACHE_TYPE`.
pub(crate) fn apply_cache_type(cache_type: Option<&str>) {
    if let Some(t) = cache_type {
        // Safe: called on the main thread before any other thread exists.
        unsafe { std::env::set_var("SMOLBOT_CACHE_TYPE", t) };
    }
}

impl EngineArgs {
    /// Applies `--threads` before any kernel runs: candle sizes its pools from
    /// `RAYON_NUM_THREADS` at first use.
    pub fn device(&self) -> candle_core::Device {
        self.apply_env();
        smolbot::inference::device::select(self.cpu)
    }

    /// Hands `--threads`, `--cache-type` and the RoPE flags to the loader, for commands whose model is
    /// loaded by the engine thread. Call it on the main thread before any other starts.
    pub fn apply_env(&self) {
        if let Some(n) = self.threads {
            // Safe: called on the main thread before any other thread exists.
            unsafe { std::env::set_var("RAYON_NUM_THREADS", n.max(1).to_string()) };
        }
        apply_cache_type(self.cache_type.as_deref());
        self.rope.apply();
    }
}

/// Warnings (a file's odd metadata, say) reach stderr for the one-shot commands; `serve` and
/// `chat` set up their own logging.
fn init_warnings() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .without_time()
        .try_init();
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if !matches!(cli.command, Command::Serve(_) | Command::Chat(_)) {
        init_warnings();
    }
    match cli.command {
        Command::Inspect(a) => inspect::run(a),
        Command::Generate(a) => generate::run(a),
        Command::Perplexity(a) => perplexity::run(a),
        Command::Synth(a) => synth::run(a),
        Command::Serve(a) => serve::run(*a),
        Command::Bench(a) => bench::run(a),
        Command::Tokenize(a) => tokenize::run(a),
        Command::Render(a) => render::run(a),
        Command::Pull(a) => pull::run_pull(a),
        Command::List(a) => pull::run_list(a),
        Command::Chat(a) => chat::run(a),
    }
}
