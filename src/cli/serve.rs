//! `smolbot serve`: the chat server — the OpenAI-compatible API over the real model or the
//! stub. Glue only: parse the flags, start the engine, bind, serve until Ctrl-C or SIGTERM.
//!
//! Shutting down: on the first signal the server stops accepting connections and lets the
//! requests in flight finish (an answer being streamed runs to its end) for at most
//! [`SHUTDOWN_GRACE`]; a second signal, or the grace running out, stops waiting. Chat runs,
//! which outlive their connections (a closed tab), get the rest of the grace and are then
//! stopped, each saving its partial answer. Then the conversation store is flushed: answers still being written are stored as `stopped` with
//! their text so far, and the write-ahead log is folded into the database file. The exit
//! status is 0.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use smolbot::services::engine::{
    DEFAULT_GENERATION_TIME, DEFAULT_PARALLEL, DEFAULT_QUEUE_CAPACITY,
};
use smolbot::services::kv_budget::ContextRequest;
use smolbot::services::remote::balancer::BreakerPolicy;
use smolbot::services::remote::{RemoteConfig, DEFAULT_HEALTH_INTERVAL, DEFAULT_REMOTE_TIMEOUT};
use smolbot::services::stub::{StubConfig, STUB_CONTEXT_LENGTH};
use smolbot::services::{BackendSpec, Engine, EngineLimits};
use smolbot::web::app::{loading_gate, LoadingShell};
use smolbot::web::hosts::AllowedHosts;
use smolbot::web::server::ServerLimits;
use smolbot::web::{app, AppState};
use tokio::sync::watch;

/// How long requests in flight at a shutdown signal get to finish: enough for most answers
/// to end, and well inside a service manager's stop timeout (systemd's default is 90 s).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// How long the runtime waits at exit for blocking work (a query, a tokenization) to end.
const RUNTIME_SHUTDOWN: Duration = Duration::from_secs(2);

/// Which model to run and how; `serve` and `chat` share them.
#[derive(Args)]
pub struct ModelArgs {
    /// Path to the GGUF model file.
    #[arg(long, short = 'm', env = "SMOLBOT_MODEL", conflicts_with = "stub")]
    pub model: Option<PathBuf>,
    /// Without --model: the model from the Hub's cache, downloaded on first use.
    #[command(flatten)]
    pub hub: super::pull::HubArgs,
    /// Use the deterministic stub model (no weights) instead of a real one.
    #[arg(long, env = "SMOLBOT_STUB")]
    pub stub: bool,
    /// Pace of the stub's output in tokens per second (0: as fast as possible).
    #[arg(long, env = "SMOLBOT_STUB_TOKENS_PER_SECOND", default_value_t = 60.0)]
    pub stub_tokens_per_second: f64,
    /// CPU threads for the matrix kernels (default: all cores).
    #[arg(long, env = "SMOLBOT_THREADS")]
    pub threads: Option<usize>,
    /// KV cache element type: f16 (half the memory and the bytes read at long context,
    /// llama.cpp's default), q8_0 (a quarter of f32, for long context) or f32 (exact; what
    /// the golden tests compare).
    #[arg(long, env = "SMOLBOT_CACHE_TYPE", value_parser = ["f32", "f16", "q8_0"])]
    pub cache_type: Option<String>,
    /// Positions each conversation's context holds, prompt and answer (llama.cpp's `-c`; 0:
    /// the model's). Default: the most that lets the KV caches of --parallel sequences fit
    /// --kv-budget, up to the model's.
    #[arg(long, env = "SMOLBOT_CTX_SIZE")]
    pub ctx_size: Option<usize>,
    /// Memory the KV caches may take in all (running sequences and kept turns), e.g. 4G or
    /// 512M. Default: three quarters of the memory available once the model is loaded.
    #[arg(long, env = "SMOLBOT_KV_BUDGET", value_parser = smolbot::services::kv_budget::parse_size)]
    pub kv_budget: Option<u64>,
    #[command(flatten)]
    pub rope: super::RopeArgs,
    /// Run on the CPU even when built with CUDA.
    #[arg(long, env = "SMOLBOT_CPU")]
    pub cpu: bool,
}

impl ModelArgs {
    /// Applies `--threads` and finds the model file, downloading it if needed. Call it on the
    /// main thread before the async runtime starts: candle sizes its pools from
    /// `RAYON_NUM_THREADS` at first use, and the download uses a blocking HTTP client.
    pub fn prepare(&mut self) -> anyhow::Result<()> {
        if let Some(n) = self.threads {
            // Safe: no other thread exists yet.
            unsafe { std::env::set_var("RAYON_NUM_THREADS", n.max(1).to_string()) };
        }
        super::apply_cache_type(self.cache_type.as_deref());
        self.rope.apply();
        if self.model.is_none() && !self.stub {
            self.model = Some(super::pull::resolve_for_serve(&self.hub)?);
        }
        Ok(())
    }

    /// What the engine loads; `alias` renames a real model in `/v1/models`.
    pub fn spec(&self, alias: Option<String>) -> anyhow::Result<BackendSpec> {
        Ok(match (&self.model, self.stub) {
            // `--ctx-size` gives the stub a small context too, to see a full one.
            (_, true) => BackendSpec::Stub(StubConfig {
                tokens_per_second: self.stub_tokens_per_second,
                context_length: self
                    .ctx_size
                    .filter(|&n| n > 0)
                    .unwrap_or(STUB_CONTEXT_LENGTH),
            }),
            (Some(path), false) => BackendSpec::Gguf {
                path: path.clone(),
                force_cpu: self.cpu,
                alias,
                context: ContextRequest {
                    ctx_size: self.ctx_size,
                    kv_budget: self.kv_budget,
                },
            },
            (None, false) => anyhow::bail!("give a model with --model FILE, or --stub"),
        })
    }
}

/// Starts the engine, with a spinner on a terminal: loading a 1.9 GB file takes a while and
/// the engine reports no finer progress than "ready".
pub async fn load_engine(spec: BackendSpec, limits: EngineLimits) -> anyhow::Result<Engine> {
    let what = match &spec {
        BackendSpec::Gguf { path, .. } => {
            let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
            format!("{} ({})", path.display(), indicatif::HumanBytes(size))
        }
        _ => "the stub model".to_owned(),
    };
    tracing::info!("loading {what}");
    let spinner = indicatif::ProgressBar::new_spinner().with_message(format!("loading {what}"));
    if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} {msg} [{elapsed}]") {
        spinner.set_style(style);
    }
    spinner.enable_steady_tick(std::time::Duration::from_millis(120));
    let started = std::time::Instant::now();
    let engine = Engine::start_with(spec, limits).await;
    spinner.finish_and_clear();
    let engine = engine.context("cannot start the model")?;
    tracing::info!(
        "loaded {} in {:.1} s",
        engine.info().id,
        started.elapsed().as_secs_f64()
    );
    Ok(engine)
}

/// Where the model runs: here (`local`, the default) or on OpenAI-compatible servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EngineKind {
    Local,
    Openai,
}

/// `--engine openai` and its remotes.
#[derive(Args)]
pub struct EngineArgs {
    /// Where the model runs: `local` (this process loads --model) or `openai` (the servers
    /// of --engine-url run it; this one only reads --model's tokenizer and chat template).
    #[arg(long, env = "SMOLBOT_ENGINE", value_enum, default_value_t = EngineKind::Local)]
    pub(super) engine: EngineKind,
    /// Base URL of an OpenAI-compatible server (vLLM, TGI, llama.cpp's server, another
    /// smolbot), e.g. http://gpu1:8000; repeat it, or separate with commas, for several.
    #[arg(long, env = "SMOLBOT_ENGINE_URL", value_delimiter = ',')]
    pub(super) engine_url: Vec<String>,
    /// Sent to the servers as `Authorization: Bearer KEY`.
    #[arg(long, env = "SMOLBOT_ENGINE_KEY", hide_env_values = true)]
    pub(super) engine_key: Option<String>,
    /// The `model` to ask the servers for (default: the first one their /v1/models lists).
    #[arg(long, env = "SMOLBOT_ENGINE_MODEL")]
    pub(super) engine_model: Option<String>,
    /// Seconds a server may take to start answering, or between two pieces of an answer,
    /// before the request goes to another server (or fails, once text was sent).
    #[arg(long, env = "SMOLBOT_ENGINE_TIMEOUT", default_value_t = DEFAULT_REMOTE_TIMEOUT.as_secs_f64())]
    pub(super) engine_timeout: f64,
    /// Seconds between two health checks of each server.
    #[arg(long, env = "SMOLBOT_ENGINE_HEALTH_INTERVAL", default_value_t = DEFAULT_HEALTH_INTERVAL.as_secs_f64())]
    pub(super) engine_health_interval: f64,
    /// Failed requests in a row after which a server gets no requests for
    /// --engine-cool-down seconds (its circuit breaker opens); then one trial request
    /// decides whether it is back.
    #[arg(long, env = "SMOLBOT_ENGINE_BREAKER_FAILURES", default_value_t = BreakerPolicy::default().failures)]
    pub(super) engine_breaker_failures: u32,
    #[arg(long, env = "SMOLBOT_ENGINE_COOL_DOWN", default_value_t = BreakerPolicy::default().cool_down.as_secs_f64())]
    pub(super) engine_cool_down: f64,
}

impl EngineArgs {
    /// The remotes, when the model runs on them.
    fn remote(&self) -> anyhow::Result<Option<RemoteConfig>> {
        if self.engine == EngineKind::Local {
            if !self.engine_url.is_empty() {
                anyhow::bail!("--engine-url needs --engine openai");
            }
            return Ok(None);
        }
        let urls: Vec<String> = self
            .engine_url
            .iter()
            .map(|u| u.trim().to_owned())
            .filter(|u| !u.is_empty())
            .collect();
        if urls.is_empty() {
            anyhow::bail!("--engine openai needs at least one --engine-url");
        }
        let seconds = |flag: &str, value: f64| {
            Duration::try_from_secs_f64(value)
                .ok()
                .filter(|d| !d.is_zero())
                .with_context(|| format!("--{flag} must be a positive number of seconds"))
        };
        Ok(Some(RemoteConfig {
            urls,
            api_key: self.engine_key.clone(),
            model: self.engine_model.clone(),
            timeout: seconds("engine-timeout", self.engine_timeout)?,
            health_interval: seconds("engine-health-interval", self.engine_health_interval)?,
            breaker: BreakerPolicy {
                failures: self.engine_breaker_failures.max(1),
                cool_down: seconds("engine-cool-down", self.engine_cool_down)?,
            },
        }))
    }
}

/// The local model, or the remote engine over `remote`'s servers.
async fn start_engine(
    spec: BackendSpec,
    remote: Option<RemoteConfig>,
    limits: EngineLimits,
) -> anyhow::Result<Engine> {
    let Some(remote) = remote else {
        return load_engine(spec, limits).await;
    };
    let urls = remote.urls.join(", ");
    let engine = Engine::start_remote(spec, remote, limits)
        .await
        .context("cannot start the remote engine")?;
    tracing::info!("the model runs on {urls}");
    Ok(engine)
}

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub(super) model: ModelArgs,
    #[command(flatten)]
    pub(super) remote: EngineArgs,
    /// Address to listen on; 127.0.0.1 keeps the server to this machine.
    #[arg(long, env = "SMOLBOT_HOST", default_value = "127.0.0.1")]
    pub(super) host: String,
    /// Port to listen on (0 picks a free one).
    #[arg(long, env = "SMOLBOT_PORT", default_value_t = 3000)]
    pub(super) port: u16,
    /// Require the key on every route but `/health`: `Authorization: Bearer KEY` for the APIs,
    /// a login (the key once, then a session cookie) for the chat page.
    #[arg(long, env = "SMOLBOT_API_KEY", hide_env_values = true)]
    pub(super) api_key: Option<String>,
    /// Host names the server answers besides localhost, 127.0.0.1 and [::1], comma-separated
    /// (`chat.example,box.lan`; `*`: any). On a loopback address only those are answered, so a
    /// web page cannot reach the server by re-pointing its own name at 127.0.0.1 (DNS
    /// rebinding); beyond loopback every host is answered unless names are given here.
    #[arg(long, env = "SMOLBOT_ALLOWED_HOSTS", value_delimiter = ',')]
    pub(super) allowed_hosts: Vec<String>,
    /// Connections kept open at once; one more is answered 503 and closed (default: half the
    /// open-file limit, between 32 and 1024). Headers must arrive within 30 s (which also
    /// closes keep-alive connections idle that long) and bodies within 60 s.
    #[arg(long, env = "SMOLBOT_MAX_CONNECTIONS")]
    pub(super) max_connections: Option<usize>,
    /// Name the model answers to in `/v1/models` (default: the file name without `.gguf`).
    #[arg(long, env = "SMOLBOT_MODEL_ALIAS")]
    pub(super) alias: Option<String>,
    /// Requests that may wait for the model; more are refused with 503 and Retry-After.
    #[arg(long, env = "SMOLBOT_QUEUE_SIZE", default_value_t = DEFAULT_QUEUE_CAPACITY)]
    pub(super) queue_size: usize,
    /// Generations run together; their decode steps share one forward pass, so the total
    /// speed grows with each one up to what the machine's cores give (1: one at a time).
    #[arg(long, env = "SMOLBOT_PARALLEL", default_value_t = DEFAULT_PARALLEL)]
    pub(super) parallel: usize,
    /// Longest one answer may be generated for, in seconds, prompt included; then it ends as
    /// at max_tokens (finish_reason "length"). 0: no limit.
    #[arg(long, env = "SMOLBOT_MAX_GENERATION_TIME", default_value_t = DEFAULT_GENERATION_TIME.as_secs())]
    pub(super) max_generation_time: u64,
    /// Folder of the conversation database (default: $XDG_DATA_HOME/smolbot or
    /// ~/.local/share/smolbot).
    #[arg(long, env = "SMOLBOT_DATA_DIR")]
    pub(super) data_dir: Option<PathBuf>,
    /// Keep the conversations in this PostgreSQL database (`postgres://user:password@host/db`)
    /// instead of the SQLite file in --data-dir, so several servers share them.
    #[arg(long, env = "SMOLBOT_DATABASE_URL", hide_env_values = true)]
    pub(super) database_url: Option<String>,
    /// This server's name among those sharing --database-url, unique to each (default:
    /// host name and port). A server started again under its name marks the answers it was
    /// writing interrupted at once; others wait until its claim runs out.
    #[arg(long, env = "SMOLBOT_NODE_ID")]
    pub(super) node_id: Option<String>,
}

impl ServeArgs {
    /// `--allowed-hosts` as names, however they came: a config file's
    /// `allowed_hosts = "a,b"` arrives as one value, the flag and variable already split.
    pub(super) fn allowed_host_names(&self) -> Vec<String> {
        self.allowed_hosts
            .iter()
            .flat_map(|names| names.split(','))
            .map(|name| name.trim().to_owned())
            .filter(|name| !name.is_empty())
            .collect()
    }
}

pub fn run(mut args: ServeArgs) -> anyhow::Result<ExitCode> {
    init_logging();
    args.model.prepare()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let code = runtime.block_on(serve(args));
    // Tasks still running (a detached answer past the grace) are dropped here; their
    // answers were already marked stopped by the store's flush.
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
    code
}

/// Logs to stderr, `info` unless `RUST_LOG` says otherwise.
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .try_init();
}

/// Binds first and loads the model behind a [`loading_gate`], so `/health` and the page
/// answer "loading" while a large file loads instead of leaving the port closed.
async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let spec = args.model.spec(args.alias.clone())?;
    let remote = args.remote.remote()?;
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(smolbot::services::sessions::default_data_dir);
    let sessions = match args.database_url.as_deref().filter(|url| !url.is_empty()) {
        Some(url) => {
            let node = args
                .node_id
                .clone()
                .unwrap_or_else(|| format!("{}:{}", host_name(), args.port));
            let store = smolbot::services::SessionStore::connect(url, node.clone())
                .await
                .context("cannot open the conversation database")?;
            tracing::info!("serving as node `{node}` of the servers sharing the database");
            store
        }
        None => smolbot::services::SessionStore::open(&data_dir)
            .await
            .context("cannot open the conversation store")?,
    };
    tracing::info!("conversations are kept in {}", sessions.location());
    let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
        .await
        .with_context(|| {
            format!(
                "cannot listen on {}:{} (is another server using the port? pick another \
                 with --port)",
                args.host, args.port
            )
        })?;
    let address = listener.local_addr()?;
    let allowed_hosts = args.allowed_host_names();
    let api_key = args.api_key.filter(|key| !key.is_empty());
    if let Some(warning) = exposure_warning(address.ip(), api_key.is_some()) {
        eprintln!("{warning}");
    }
    let ready = Arc::new(OnceLock::new());
    // Set once by the first Ctrl-C or SIGTERM; the server and this function both watch it.
    let (signalled, stop) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!(
            "shutting down: no new connections; requests in flight get {} s to finish",
            SHUTDOWN_GRACE.as_secs()
        );
        let _ = signalled.send(true);
    });
    let limits = ServerLimits {
        max_connections: args
            .max_connections
            .unwrap_or_else(smolbot::web::server::default_max_connections),
        ..ServerLimits::default()
    };
    let mut server = tokio::spawn(smolbot::web::server::serve(
        listener,
        loading_gate(
            Arc::clone(&ready),
            LoadingShell {
                // Behind a key the list waits for the login, which waits for the model.
                store: api_key.is_none().then(|| sessions.clone()),
                hosts: AllowedHosts::for_bind(address.ip(), &allowed_hosts),
            },
        ),
        limits,
        stopped(stop.clone()),
    ));
    // Not "on http://…": scripts wait for that line of the ready server.
    tracing::info!("listening at {address} while the model loads");
    let limits = EngineLimits {
        queue_capacity: args.queue_size,
        parallel: args.parallel,
        generation_time: (args.max_generation_time > 0)
            .then(|| Duration::from_secs(args.max_generation_time)),
    };
    let engine = tokio::select! {
        engine = start_engine(spec, remote, limits) => engine?,
        stopped = &mut server => {
            stopped.context("the server failed")?;
            return Ok(ExitCode::SUCCESS);
        }
    };
    let (id, context_length) = (engine.info().id.clone(), engine.info().context_length);
    let state = AppState::new(engine, sessions.clone(), api_key)
        .with_allowed_hosts(AllowedHosts::for_bind(address.ip(), &allowed_hosts));
    let runs = state.runs().clone();
    let _ = ready.set(app(state));
    // Only once the full app answers: scripts start their requests on this line.
    tracing::info!("serving {id} ({context_length} tokens of context) on http://{address}");
    // Until when running work may go on; set by the signal.
    let mut deadline = None;
    let served = tokio::select! {
        served = &mut server => Some(served),
        () = stopped(stop) => {
            deadline = Some(Instant::now() + SHUTDOWN_GRACE);
            None
        }
    };
    let served = match served {
        Some(served) => Some(served),
        None => tokio::select! {
            served = &mut server => Some(served),
            () = tokio::time::sleep(SHUTDOWN_GRACE) => {
                tracing::warn!(
                    "requests still running after {} s; stopping them",
                    SHUTDOWN_GRACE.as_secs()
                );
                None
            }
            () = shutdown_signal() => {
                tracing::warn!("second signal: stopping the requests still running");
                deadline = Some(Instant::now());
                None
            }
        },
    };
    if served.is_none() {
        server.abort();
    }
    // Chat runs outlive their connections: give them what is left of the grace, then stop
    // them so their partial answers are saved before the store closes.
    let left = deadline.map_or(Duration::ZERO, |at: Instant| {
        at.saturating_duration_since(Instant::now())
    });
    let stopped = runs.finish_all(left).await;
    if stopped > 0 {
        tracing::warn!("{stopped} chat answer(s) still running were stopped and saved");
    }
    match sessions.close().await {
        Ok(0) => tracing::info!("conversation store flushed"),
        Ok(n) => {
            tracing::warn!("conversation store flushed; {n} unfinished answer(s) kept as stopped")
        }
        Err(err) => tracing::error!("flushing the conversation store failed: {err}"),
    }
    if let Some(served) = served {
        served.context("the server failed")?;
    }
    Ok(ExitCode::SUCCESS)
}

/// This machine's name, for the default node id.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "smolbot".to_owned())
}

/// Resolves once `stop` says a shutdown signal came (or its sender is gone).
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|signalled| *signalled).await;
}

/// The warning for a server listening beyond loopback: without a key anyone who can reach
/// it can use it; with one, the key (and the page's session cookie) still cross the network in
/// clear text unless a TLS proxy is in front, which this server cannot tell from here.
fn exposure_warning(ip: IpAddr, has_key: bool) -> Option<String> {
    if ip.is_loopback() {
        return None;
    }
    Some(if has_key {
        format!(
            "warning: listening on {ip} without TLS: the API key and the chat page's session \
             cookie cross the network in clear text. Put a TLS proxy in front (sending \
             X-Forwarded-Proto: https, which also marks the cookie Secure), or listen on \
             127.0.0.1."
        )
    } else {
        format!(
            "warning: listening on {ip} without --api-key: anyone who can reach this machine \
             can use the model and read every conversation. Set --api-key (or \
             SMOLBOT_API_KEY), or listen on 127.0.0.1."
        )
    })
}

/// Resolves on Ctrl-C or SIGTERM.
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
}

#[cfg(test)]
mod tests {
    use super::exposure_warning;

    #[test]
    fn warns_beyond_loopback_of_no_key_or_no_tls() {
        let warning = exposure_warning("0.0.0.0".parse().unwrap(), false).expect("a warning");
        assert!(warning.contains("0.0.0.0") && warning.contains("--api-key"));
        let keyed = exposure_warning("0.0.0.0".parse().unwrap(), true).expect("a warning");
        assert!(keyed.contains("without TLS") && !keyed.contains("--api-key"));
        assert!(exposure_warning("127.0.0.1".parse().unwrap(), false).is_none());
        assert!(exposure_warning("::1".parse().unwrap(), false).is_none());
        assert!(exposure_warning("192.168.1.5".parse().unwrap(), false).is_some());
    }
}
