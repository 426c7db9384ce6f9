//! The HF cache layout on disk: where a repository's blobs, snapshots and refs live, finding
//! a file already fetched without touching the network, and listing the GGUF files held.
//!
//! `models--{org}--{name}/blobs/{etag}` holds the bytes, `snapshots/{commit}/{file}` is a
//! relative symlink to the blob, `refs/{branch}` holds the commit a branch pointed at when last
//! fetched — the layout of `huggingface_hub`, so both tools share one cache.

use std::path::{Path, PathBuf};

use super::{HubError, ModelRef, Result};

/// How deep `list_cached` looks inside a snapshot for GGUF files (repositories keep
/// quantizations in at most a folder or two).
const MAX_LIST_DEPTH: usize = 4;

/// The root of the Hub cache, from the environment.
#[derive(Debug, Clone)]
pub struct HubCache {
    home: PathBuf,
    hub: PathBuf,
}

impl HubCache {
    /// `HF_HOME` (else `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface`), with the
    /// hub cache at `HF_HUB_CACHE` or `$HF_HOME/hub`, as huggingface_hub resolves them.
    pub fn from_env() -> Self {
        let var = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let home = var("HF_HOME").unwrap_or_else(|| {
            var("XDG_CACHE_HOME")
                .or_else(|| var("HOME").map(|h| h.join(".cache")))
                .unwrap_or_else(|| PathBuf::from(".cache"))
                .join("huggingface")
        });
        let hub = var("HF_HUB_CACHE").unwrap_or_else(|| home.join("hub"));
        Self { home, hub }
    }

    /// A cache rooted at `home` (`home/hub`), for tests and explicit paths.
    pub fn at(home: impl Into<PathBuf>) -> Self {
        let home = home.into();
        let hub = home.join("hub");
        Self { home, hub }
    }

    /// `HF_HOME`: where the token file lives.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// The hub cache folder holding the `models--*` folders.
    pub fn hub(&self) -> &Path {
        &self.hub
    }

    /// `models--{org}--{name}` for a repository.
    pub fn repo_dir(&self, repo: &str) -> PathBuf {
        self.hub
            .join(format!("models--{}", repo.replace('/', "--")))
    }

    /// Where the bytes of the blob with this ETag live.
    pub fn blob_path(&self, repo: &str, etag: &str) -> PathBuf {
        self.repo_dir(repo).join("blobs").join(etag)
    }

    /// Where a file appears in a commit's snapshot.
    pub fn snapshot_path(&self, repo: &str, commit: &str, file: &str) -> PathBuf {
        self.repo_dir(repo)
            .join("snapshots")
            .join(commit)
            .join(file)
    }

    /// The commit a revision names: itself when it looks like a commit hash, else what
    /// `refs/{revision}` recorded at the last download.
    pub fn commit_for(&self, repo: &str, revision: &str) -> Option<String> {
        if is_commit_hash(revision) {
            return Some(revision.to_string());
        }
        let text = std::fs::read_to_string(self.repo_dir(repo).join("refs").join(revision)).ok()?;
        Some(text.trim().to_string()).filter(|c| !c.is_empty())
    }

    /// Records the blob under the commit's snapshot and points `refs/{revision}` at the commit.
    pub(crate) fn link(&self, model: &ModelRef, commit: &str, etag: &str) -> Result<PathBuf> {
        let snapshot = self.snapshot_path(&model.repo, commit, &model.file);
        let parent = snapshot.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
        if std::fs::symlink_metadata(&snapshot).is_ok() {
            std::fs::remove_file(&snapshot).map_err(|e| io(&snapshot, e))?;
        }
        let blob = self.blob_path(&model.repo, etag);
        place(&blob, &snapshot, model.file.matches('/').count())?;
        if model.revision != commit {
            let refs = self.repo_dir(&model.repo).join("refs");
            std::fs::create_dir_all(&refs).map_err(|e| io(&refs, e))?;
            let r = refs.join(&model.revision);
            if let Some(p) = r.parent() {
                std::fs::create_dir_all(p).map_err(|e| io(p, e))?;
            }
            std::fs::write(&r, commit).map_err(|e| io(&r, e))?;
        }
        Ok(snapshot)
    }
}

/// A relative symlink from the snapshot to the blob, as huggingface_hub makes
/// (`../../blobs/ETAG`, one more `..` per folder in the file's path).
#[cfg(unix)]
fn place(blob: &Path, snapshot: &Path, depth: usize) -> Result<()> {
    let name = blob.file_name().unwrap_or_default();
    let mut target = PathBuf::new();
    for _ in 0..depth + 2 {
        target.push("..");
    }
    target.push("blobs");
    target.push(name);
    std::os::unix::fs::symlink(&target, snapshot).map_err(|e| io(snapshot, e))
}

/// Without symlinks (Windows without developer mode) huggingface_hub moves the blob into the
/// snapshot; so do we.
#[cfg(not(unix))]
fn place(blob: &Path, snapshot: &Path, _depth: usize) -> Result<()> {
    std::fs::rename(blob, snapshot).map_err(|e| io(snapshot, e))
}

/// A 40-hex-digit git commit id.
pub(crate) fn is_commit_hash(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

pub(crate) fn io(path: &Path, source: std::io::Error) -> HubError {
    HubError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The path of the model's file if the cache already holds it at that revision (no network).
pub fn cached(cache: &HubCache, model: &ModelRef) -> Option<PathBuf> {
    let commit = cache.commit_for(&model.repo, &model.revision)?;
    let path = cache.snapshot_path(&model.repo, &commit, &model.file);
    // `is_file` follows the symlink: a dangling link (blob deleted) is not a hit.
    path.is_file().then_some(path)
}

/// One GGUF file found in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedModel {
    /// `org/name`.
    pub repo: String,
    /// Path inside the repository.
    pub file: String,
    /// The snapshot's commit.
    pub commit: String,
    /// Size in bytes of the blob.
    pub size: u64,
    /// The snapshot path, ready for `--model`.
    pub path: PathBuf,
}

/// Every GGUF file in every model snapshot of the cache, sorted by repository and file.
pub fn list_cached(cache: &HubCache) -> Result<Vec<CachedModel>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(cache.hub()) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io(cache.hub(), e)),
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("models--") else {
            continue;
        };
        let repo = rest.replacen("--", "/", 1);
        let Ok(snapshots) = std::fs::read_dir(entry.path().join("snapshots")) else {
            continue;
        };
        for snap in snapshots.flatten() {
            let commit = snap.file_name().to_string_lossy().into_owned();
            let root = snap.path();
            let mut files = Vec::new();
            collect_gguf(&root, &root, 0, &mut files);
            for (file, path) in files {
                let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                out.push(CachedModel {
                    repo: repo.clone(),
                    file,
                    commit: commit.clone(),
                    size,
                    path,
                });
            }
        }
    }
    out.sort_by(|a, b| (&a.repo, &a.file, &a.commit).cmp(&(&b.repo, &b.file, &b.commit)));
    Ok(out)
}

fn collect_gguf(root: &Path, dir: &Path, depth: usize, out: &mut Vec<(String, PathBuf)>) {
    if depth > MAX_LIST_DEPTH {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        if is_dir {
            collect_gguf(root, &path, depth + 1, out);
        } else if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
            && path.is_file()
        {
            let rel = path.strip_prefix(root).unwrap_or(&path);
            let file = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            out.push((file, path));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_then_find_and_list() {
        let dir = tempfile::tempdir().unwrap();
        let cache = HubCache::at(dir.path());
        let model = ModelRef::parse("org/name:sub/m.gguf", Some("main")).unwrap();
        let commit = "a".repeat(40);
        let blob = cache.blob_path(&model.repo, "e1");
        std::fs::create_dir_all(blob.parent().unwrap()).unwrap();
        std::fs::write(&blob, b"GGUF").unwrap();
        assert_eq!(cached(&cache, &model), None);
        let path = cache.link(&model, &commit, "e1").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"GGUF");
        assert_eq!(cached(&cache, &model), Some(path.clone()));
        assert_eq!(cache.commit_for(&model.repo, "main"), Some(commit.clone()));
        let listed = list_cached(&cache).unwrap();
        assert_eq!(
            listed,
            vec![CachedModel {
                repo: "org/name".into(),
                file: "sub/m.gguf".into(),
                commit,
                size: 4,
                path,
            }]
        );
        std::fs::remove_file(&blob).unwrap();
        assert_eq!(cached(&cache, &model), None, "a dangling link is no hit");
    }
}
