//! `smolbot pull` and `smolbot list`: fetch a GGUF file from the Hugging Face Hub into the HF
//! cache, and show what the cache holds; plus the model resolution `serve` uses when no
//! `--model` is given.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use smolbot::hub::{self, DownloadOptions, HubCache, ModelRef};

#[derive(Args)]
pub struct PullArgs {
    /// Repository and file: ORG/NAME[:FILE.gguf] (default: the pinned SmolLM3-3B Q4_K_M).
    #[arg(value_name = "REPO[:FILE]")]
    model: Option<String>,
    /// Branch, tag or commit (default: the pinned commit for the default repository, else main).
    #[arg(long)]
    revision: Option<String>,
}

#[derive(Args)]
pub struct ListArgs {}

/// Where `serve` gets its model when `--model` is absent.
#[derive(Args, Clone)]
pub struct HubArgs {
    /// Hub repository to download the model from when no --model is given.
    #[arg(long, env = "SMOLBOT_HF_REPO", default_value = hub::DEFAULT_REPO)]
    pub hf_repo: String,
    /// File in --hf-repo to download.
    #[arg(long, env = "SMOLBOT_HF_FILE", default_value = hub::DEFAULT_FILE)]
    pub hf_file: String,
    /// Revision of --hf-repo (default: the pinned commit for the default repository, else main).
    #[arg(long, env = "SMOLBOT_HF_REVISION")]
    pub hf_revision: Option<String>,
}

pub fn run_pull(args: PullArgs) -> anyhow::Result<ExitCode> {
    let model = match &args.model {
        Some(spec) => ModelRef::parse(spec, args.revision.as_deref())?,
        None => ModelRef::parse(hub::DEFAULT_REPO, args.revision.as_deref())?,
    };
    let cache = HubCache::from_env();
    let path = hub::download(&cache, &model, DownloadOptions { progress: true })
        .with_context(|| format!("cannot pull {model}"))?;
    println!("{}", path.display());
    Ok(ExitCode::SUCCESS)
}

pub fn run_list(_args: ListArgs) -> anyhow::Result<ExitCode> {
    let cache = HubCache::from_env();
    let models = hub::list_cached(&cache)?;
    if models.is_empty() {
        eprintln!(
            "no GGUF models in {}; `smolbot pull` fetches the default one",
            cache.hub().display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let width = models
        .iter()
        .map(|m| m.repo.len() + 1 + m.file.len())
        .max()
        .unwrap_or(0);
    println!("{:width$}  {:>8}  {:>9}  PATH", "MODEL", "REVISION", "SIZE");
    for m in &models {
        let name = format!("{}:{}", m.repo, m.file);
        let short: String = m.commit.chars().take(8).collect();
        println!(
            "{name:width$}  {short:>8}  {:>9}  {}",
            human_size(m.size),
            m.path.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn human_size(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.1} kB", b / 1e3)
    } else {
        format!("{bytes} B")
    }
}

/// The model for `serve` without `--model`: the cached copy, else a download; on failure an
/// error that says what was tried and the three ways out.
pub fn resolve_for_serve(args: &HubArgs) -> anyhow::Result<PathBuf> {
    let model = ModelRef::parse(
        &format!("{}:{}", args.hf_repo, args.hf_file),
        args.hf_revision.as_deref(),
    )?;
    let cache = HubCache::from_env();
    if let Some(path) = hub::cached(&cache, &model) {
        hub::validate(&path)?;
        return Ok(path);
    }
    let url = hub::resolve_url(&hub::endpoint(), &model);
    eprintln!(
        "no --model given and {model} is not in {}; downloading it",
        cache.hub().display()
    );
    hub::download(&cache, &model, DownloadOptions { progress: true }).map_err(|e| {
        anyhow::anyhow!(
            "no model to serve: --model was not given, {model} is not cached in {}, and \
             downloading it from {url} failed: {e}\n\
             fix it with one of:\n  \
             smolbot serve --model PATH/TO/MODEL.gguf   (a GGUF file you already have)\n  \
             smolbot pull {}:{}   (download it first, where there is internet; \
             HF_ENDPOINT sets a mirror)\n  \
             smolbot serve --stub   (the full app with a fake model, no weights)",
            cache.hub().display(),
            model.repo,
            model.file
        )
    })
}
