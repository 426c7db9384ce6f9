//! `smolbot serve`: the chat server — the OpenAI-compatible API over the real model or the
//! stub. Glue only: parse the flags, start the engine, bind, serve until Ctrl-C or SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use smolbot::services::engine::DEFAULT_QUEUE_CAPACITY;
use smolbot::services::stub::{StubConfig, STUB_CONTEXT_LENGTH};
use smolbot::services::{BackendSpec, Engine};
use smolbot::web::{app, AppState};

#[derive(Args)]
pub struct ServeArgs {
    /// Path to the GGUF model file to serve.
    #[arg(long, short = 'm', env = "SMOLBOT_MODEL", conflicts_with = "stub")]
    model: Option<PathBuf>,
    /// Without --model: the model from the Hub's cache, downloaded on first use.
    #[command(flatten)]
    hub: super::pull::HubArgs,
    /// Serve the deterministic stub model (no weights) instead of a real one.
    #[arg(long, env = "SMOLBOT_STUB")]
    stub: bool,
    /// Address to listen on; 127.0.0.1 keeps the server to this machine.
    #[arg(long, env = "SMOLBOT_HOST", default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0 picks a free one).
    #[arg(long, env = "SMOLBOT_PORT", default_value_t = 3000)]
    port: u16,
    /// Require `Authorization: Bearer KEY` on `/v1/*`.
    #[arg(long, env = "SMOLBOT_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Name the model answers to in `/v1/models` (default: the file name without `.gguf`).
    #[arg(long, env = "SMOLBOT_MODEL_ALIAS")]
    alias: Option<String>,
    /// CPU threads for the matrix kernels (default: all cores).
    #[arg(long, env = "SMOLBOT_THREADS")]
    threads: Option<usize>,
    /// Run on the CPU even when built with CUDA.
    #[arg(long, env = "SMOLBOT_CPU")]
    cpu: bool,
    /// Requests that may wait for the model; more are refused with 503 and Retry-After.
    #[arg(long, env = "SMOLBOT_QUEUE_SIZE", default_value_t = DEFAULT_QUEUE_CAPACITY)]
    queue_size: usize,
    /// Pace of the stub's output in tokens per second (0: as fast as possible).
    #[arg(long, env = "SMOLBOT_STUB_TOKENS_PER_SECOND", default_value_t = 60.0)]
    stub_tokens_per_second: f64,
    /// Folder of the conversation database (default: $XDG_DATA_HOME/smolbot or
    /// ~/.local/share/smolbot).
    #[arg(long, env = "SMOLBOT_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

pub fn run(mut args: ServeArgs) -> anyhow::Result<ExitCode> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    if let Some(n) = args.threads {
        // Safe: called on the main thread before any other thread exists; candle sizes its
        // pools from this variable at first use.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", n.max(1).to_string()) };
    }
    // Before the async runtime: the download uses a blocking HTTP client.
    if args.model.is_none() && !args.stub {
        args.model = Some(super::pull::resolve_for_serve(&args.hub)?);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(args))
}

async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let spec = match (&args.model, args.stub) {
        (_, true) => BackendSpec::Stub(StubConfig {
            tokens_per_second: args.stub_tokens_per_second,
            context_length: STUB_CONTEXT_LENGTH,
        }),
        (Some(path), false) => BackendSpec::Gguf {
            path: path.clone(),
            force_cpu: args.cpu,
            alias: args.alias.clone(),
        },
        (None, false) => anyhow::bail!("give a model with --model FILE, or --stub"),
    };
    let engine = Engine::start(spec, args.queue_size)
        .await
        .context("cannot start the model")?;
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(smolbot::services::sessions::default_data_dir);
    let sessions = smolbot::services::SessionStore::open(&data_dir)
        .await
        .context("cannot open the conversation store")?;
    tracing::info!("conversations are kept in {}", sessions.path().display());
    let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
        .await
        .with_context(|| format!("cannot listen on {}:{}", args.host, args.port))?;
    let address = listener.local_addr()?;
    let info = engine.info();
    tracing::info!(
        "serving {} ({} tokens of context) on http://{address}",
        info.id,
        info.context_length
    );
    axum::serve(
        listener,
        app(AppState::new(engine, args.api_key).with_sessions(sessions)),
    )
    .with_graceful_shutdown(shutdown_signal())
    .await
    .context("the server failed")?;
    Ok(ExitCode::SUCCESS)
}

/// Resolves on Ctrl-C or SIGTERM, so the server stops accepting and finishes what it sends.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down");
}
