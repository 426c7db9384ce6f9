//! Getting a model file from the Hugging Face Hub into the standard HF cache.
//!
//! This is its own top-level module, beside the `web → services → smollm3 → inference` stack
//! rather than inside it: fetching a file over HTTP and laying it out in
//! `$HF_HOME/hub/models--{org}--{name}/{blobs,snapshots,refs}` is neither transformer
//! machinery (`inference`) nor anything SmolLM3's own (`smollm3`); it only hands a path to
//! whoever loads the model, and it uses `inference` solely to check that the file it fetched
//! opens as a GGUF file.
//!
//! The cache layout is the one `huggingface_hub` and the `hf-hub` crate share, so a model
//! pulled here is found by Python tools and the other way round. The environment variables are
//! theirs too: `HF_HOME`, `HF_HUB_CACHE`, `HF_ENDPOINT`, `HF_TOKEN`, `HF_HUB_OFFLINE`.

mod cache;
mod download;

use std::path::PathBuf;

pub use cache::{cached, list_cached, CachedModel, HubCache};
pub use download::{download, resolve_url, DownloadOptions};

/// The repository `smolbot serve` downloads from when no model is given.
pub const DEFAULT_REPO: &str = "ggml-org/SmolLM3-3B-GGUF";
/// The file in [`DEFAULT_REPO`]: SmolLM3-3B quantized to Q4_K_M (1,915,305,312 bytes).
pub const DEFAULT_FILE: &str = "SmolLM3-Q4_K_M.gguf";
/// The commit of [`DEFAULT_REPO`] the default download is pinned to, so every first run gets
/// the same bytes (SHA-256 `8334b850…05761863e`, checked against the Hub's header). Taken from
/// a public project that pins the same file; not re-checked against the Hub from this
/// machine, which has no internet. Override with `--hf-revision main` to follow the branch.
pub const DEFAULT_REVISION: &str = "4965cb60b150737b68a0408c36aeefb65078f894";
/// Where the Hub lives unless `HF_ENDPOINT` says otherwise.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// What can go wrong finding or fetching a model; each message names the URL or path involved
/// and, where there is one, the fix.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// The repository, file or revision does not exist (HTTP 404).
    #[error("not found on the Hub: repository {repo}, file {file}, revision {revision} ({url} answered 404); check the names, or the revision")]
    NotFound {
        repo: String,
        file: String,
        revision: String,
        url: String,
    },
    /// The repository is private or gated (HTTP 401/403).
    #[error("{url} answered {status}: the repository is private or gated; accept its terms on the Hub and set HF_TOKEN")]
    Unauthorized { url: String, status: u16 },
    /// Any other unexpected HTTP status.
    #[error("{url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    /// The Hub could not be reached at all (offline, DNS, refused, timed out).
    #[error("cannot reach {url}: {source}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// `HF_HUB_OFFLINE` forbids the network and the file is not cached.
    #[error("HF_HUB_OFFLINE is set and {url} is not in the cache")]
    Offline { url: String },
    /// The connection dropped mid-file; the part already fetched is kept for the next run.
    #[error("download of {url} interrupted after {got} of {total} bytes ({reason}); run the same command again to resume from {partial}")]
    Interrupted {
        url: String,
        got: u64,
        total: u64,
        reason: String,
        partial: PathBuf,
    },
    /// The finished file's SHA-256 is not the one the Hub publishes; the file was deleted.
    #[error("{url}: the downloaded file is corrupted: SHA-256 {actual}, the Hub publishes {expected}; the file was removed, run again to download it afresh")]
    Corrupt {
        url: String,
        expected: String,
        actual: String,
    },
    /// The Hub's answer lacked what a download needs (the file's ETag).
    #[error("{url}: unexpected answer from the Hub: {problem}")]
    Protocol { url: String, problem: String },
    /// The fetched file is not a usable GGUF file.
    #[error("{path} is not a valid GGUF file: {source}")]
    InvalidGguf {
        path: PathBuf,
        #[source]
        source: crate::inference::InferenceError,
    },
    /// A `REPO[:FILE]` argument that is not `org/name`.
    #[error("{0:?} is not a Hub repository: expected ORG/NAME[:FILE.gguf]")]
    BadRepo(String),
    /// Reading or writing the cache failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Shorthand for results of this module.
pub type Result<T> = std::result::Result<T, HubError>;

/// One file of one repository at one revision: what to fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelRef {
    /// `org/name`.
    pub repo: String,
    /// Path of the file inside the repository.
    pub file: String,
    /// Branch, tag or commit hash.
    pub revision: String,
}

impl ModelRef {
    /// The default model at its pinned revision.
    pub fn default_model() -> Self {
        Self {
            repo: DEFAULT_REPO.into(),
            file: DEFAULT_FILE.into(),
            revision: DEFAULT_REVISION.into(),
        }
    }

    /// Parses `ORG/NAME[:FILE]`; without a file, the default file name, since GGUF repositories
    /// hold several quantizations and Q4_K_M is the one this server is tuned for.
    pub fn parse(spec: &str, revision: Option<&str>) -> Result<Self> {
        let (repo, file) = match spec.split_once(':') {
            Some((r, f)) => (r, f),
            None => (spec, DEFAULT_FILE),
        };
        let valid = |s: &str| {
            !s.is_empty()
                && s != "."
                && s != ".."
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        let ok = match repo.split_once('/') {
            Some((org, name)) => valid(org) && valid(name),
            None => false,
        };
        if !ok || file.is_empty() || file.split('/').any(|p| !valid(p)) {
            return Err(HubError::BadRepo(spec.into()));
        }
        let revision = match revision {
            Some(r) => r.to_string(),
            None if repo == DEFAULT_REPO => DEFAULT_REVISION.into(),
            None => "main".into(),
        };
        Ok(Self {
            repo: repo.into(),
            file: file.into(),
            revision,
        })
    }
}

impl std::fmt::Display for ModelRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}@{}", self.repo, self.file, self.revision)
    }
}

/// The Hub's base URL: `HF_ENDPOINT` or huggingface.co, without a trailing slash.
pub fn endpoint() -> String {
    std::env::var("HF_ENDPOINT")
        .ok()
        .filter(|e| !e.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_ENDPOINT.into())
        .trim_end_matches('/')
        .to_string()
}

/// The access token: `HF_TOKEN`, else the file `huggingface-cli login` writes.
pub fn token(cache: &HubCache) -> Option<String> {
    std::env::var("HF_TOKEN")
        .ok()
        .or_else(|| std::fs::read_to_string(cache.home().join("token")).ok())
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
}

/// Whether `HF_HUB_OFFLINE` forbids network access, as huggingface_hub reads it.
pub fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .map(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            )
        })
        .unwrap_or(false)
}

/// Opens `path` as GGUF (header, metadata and tensor bounds) before anything uses it.
pub fn validate(path: &std::path::Path) -> Result<()> {
    crate::inference::GgufFile::open(path)
        .map(|_| ())
        .map_err(|source| HubError::InvalidGguf {
            path: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_repo_and_file() {
        let m = ModelRef::parse("org/name:dir/f.gguf", Some("v1")).unwrap();
        assert_eq!(
            (m.repo.as_str(), m.file.as_str()),
            ("org/name", "dir/f.gguf")
        );
        assert_eq!(m.revision, "v1");
        assert_eq!(
            ModelRef::parse("org/name", None).unwrap().file,
            DEFAULT_FILE
        );
        assert_eq!(ModelRef::parse("org/name", None).unwrap().revision, "main");
        assert_eq!(
            ModelRef::parse(DEFAULT_REPO, None).unwrap(),
            ModelRef::default_model()
        );
        for bad in ["noslash", "a/b/c", "../x", "a/b:../f", "a/b:", "/b"] {
            assert!(ModelRef::parse(bad, None).is_err(), "{bad}");
        }
    }
}
