//! Fetching one file from the Hub's `resolve` endpoint into the cache, with a progress bar,
//! resume from a `.incomplete` file and a SHA-256 check against the Hub's published hash.
//!
//! A small client of our own on `reqwest` rather than the `hf-hub` crate: hf-hub 1.0's file
//! download always starts over with a plain GET (its `.incomplete` file is never resumed with
//! a Range request), it does not check the SHA-256 the Hub publishes, and it pulls in the
//! `hf-xet` stack as a mandatory dependency. The protocol needed is two requests:
//! `HEAD {endpoint}/{repo}/resolve/{revision}/{file}` without following redirects gives the
//! blob's ETag (`X-Linked-Etag`, the SHA-256 for LFS files), its size (`X-Linked-Size`) and
//! the commit (`X-Repo-Commit`); a GET of the same URL, following the redirect to the CDN,
//! gives the bytes, from an offset with `Range: bytes=N-`.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use reqwest::blocking::{Client, RequestBuilder, Response};
use reqwest::header::{HeaderMap, CONTENT_LENGTH, ETAG, RANGE};
use reqwest::StatusCode;
use sha2::{Digest, Sha256};

use super::cache::{io, is_commit_hash};
use super::{cached, endpoint, offline, token, validate, HubCache, HubError, ModelRef, Result};

/// How long to wait for a TCP/TLS connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long any single read or write may stall before the transfer counts as interrupted.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Redirects a GET may follow (the Hub sends one, to its CDN).
const MAX_REDIRECTS: usize = 5;
/// Bytes copied per read.
const CHUNK: usize = 1 << 18;

/// How a download presents itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct DownloadOptions {
    /// Draw a progress bar and status lines on stderr.
    pub progress: bool,
}

/// `{endpoint}/{repo}/resolve/{revision}/{file}`: the URL both requests go to.
pub fn resolve_url(endpoint: &str, model: &ModelRef) -> String {
    format!(
        "{endpoint}/{}/resolve/{}/{}",
        model.repo, model.revision, model.file
    )
}

/// What the HEAD request told us about the file.
struct Remote {
    etag: String,
    size: Option<u64>,
    commit: String,
}

/// Makes sure the model's file is in the cache and opens as GGUF; returns its snapshot path.
///
/// A file already cached at a commit-hash revision is used without touching the network; for
/// a branch, the Hub is asked which commit and blob it names now.
pub fn download(cache: &HubCache, model: &ModelRef, opts: DownloadOptions) -> Result<PathBuf> {
    let url = resolve_url(&endpoint(), model);
    if let Some(path) = cached(cache, model) {
        if offline() || is_commit_hash(&model.revision) {
            validate(&path)?;
            return Ok(path);
        }
    }
    if offline() {
        return Err(HubError::Offline { url });
    }
    let say = |msg: String| {
        if opts.progress {
            eprintln!("{msg}");
        }
    };
    let auth = token(cache);
    let remote = match head(&url, model, auth.as_deref()) {
        Ok(r) => r,
        // Offline with the branch cached from an earlier run: use that, as huggingface_hub does.
        Err(HubError::Unreachable { .. }) if cached(cache, model).is_some() => {
            let path = cached(cache, model).unwrap_or_default();
            say(format!(
                "the Hub is unreachable; using the cached {}",
                path.display()
            ));
            validate(&path)?;
            return Ok(path);
        }
        Err(e) => return Err(e),
    };
    let blob = cache.blob_path(&model.repo, &remote.etag);
    if !blob.is_file() {
        let partial = PathBuf::from(format!("{}.incomplete", blob.display()));
        if let Some(parent) = partial.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
        }
        say(format!("downloading {url}"));
        fetch(&url, model, auth.as_deref(), &partial, remote.size, opts)?;
        verify(&url, &partial, &remote.etag, opts)?;
        std::fs::rename(&partial, &blob).map_err(|e| io(&blob, e))?;
    }
    let path = cache.link(model, &remote.commit, &remote.etag)?;
    validate(&path)?;
    say(format!("model ready: {}", path.display()));
    Ok(path)
}

fn client(follow_redirects: bool) -> std::result::Result<Client, reqwest::Error> {
    let policy = if follow_redirects {
        reqwest::redirect::Policy::limited(MAX_REDIRECTS)
    } else {
        reqwest::redirect::Policy::none()
    };
    Client::builder()
        .redirect(policy)
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(STALL_TIMEOUT)
        .user_agent(concat!("smolbot/", env!("CARGO_PKG_VERSION")))
        .build()
}

fn send(url: &str, request: RequestBuilder, auth: Option<&str>) -> Result<Response> {
    let request = match auth {
        Some(t) => request.bearer_auth(t),
        None => request,
    };
    request.send().map_err(|source| HubError::Unreachable {
        url: url.into(),
        source,
    })
}

/// Maps a failing status to the error that explains it; `Ok` for success and redirects.
fn check_status(url: &str, model: &ModelRef, response: &Response) -> Result<()> {
    let status = response.status();
    // The Hub answers 401 for a repository that does not exist (to hide private ones) and
    // says which in `X-Error-Code`.
    let code = header(response.headers(), "x-error-code").unwrap_or_default();
    let not_found = status == StatusCode::NOT_FOUND
        || matches!(
            code.as_str(),
            "RepoNotFound" | "RepositoryNotFound" | "RevisionNotFound" | "EntryNotFound"
        );
    if not_found {
        return Err(HubError::NotFound {
            repo: model.repo.clone(),
            file: model.file.clone(),
            revision: model.revision.clone(),
            url: url.into(),
        });
    }
    if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
        return Err(HubError::Unauthorized {
            url: url.into(),
            status: status.as_u16(),
        });
    }
    if status.is_success() || status.is_redirection() {
        Ok(())
    } else {
        Err(HubError::Status {
            url: url.into(),
            status: status.as_u16(),
        })
    }
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_string())
}

/// `scheme://host[:port]` of a URL.
fn origin(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    match url[after_scheme..].find('/') {
        Some(i) => &url[..after_scheme + i],
        None => url,
    }
}

fn head(url: &str, model: &ModelRef, auth: Option<&str>) -> Result<Remote> {
    let http = client(false).map_err(|source| HubError::Unreachable {
        url: url.into(),
        source,
    })?;
    let mut target = url.to_string();
    let mut response = send(url, http.head(url), auth)?;
    // A renamed repository answers with a relative redirect to its new name and no file
    // headers; follow those (a few hops at most), not the one to the CDN that carries them.
    for _ in 0..MAX_REDIRECTS {
        let h = response.headers();
        let identified = h.contains_key("x-linked-etag") || h.contains_key(ETAG);
        let relative = header(h, "location").filter(|l| l.starts_with('/') && !identified);
        match relative {
            Some(location) if response.status().is_redirection() => {
                target = format!("{}{location}", origin(url));
                response = send(&target, http.head(&target), auth)?;
            }
            _ => break,
        }
    }
    check_status(&target, model, &response)?;
    let h = response.headers();
    let etag = header(h, "x-linked-etag")
        .or_else(|| header(h, ETAG.as_str()))
        .map(|e| e.trim_start_matches("W/").trim_matches('"').to_string())
        .filter(|e| !e.is_empty() && !e.contains(['/', '\\']) && e != "." && e != "..")
        .ok_or_else(|| HubError::Protocol {
            url: url.into(),
            problem: "no ETag header, so the file cannot be identified".into(),
        })?;
    let size = header(h, "x-linked-size")
        .or_else(|| {
            response
                .status()
                .is_success()
                .then(|| header(h, CONTENT_LENGTH.as_str()))
                .flatten()
        })
        .and_then(|s| s.parse().ok());
    let commit = header(h, "x-repo-commit")
        .filter(|c| is_commit_hash(c))
        .unwrap_or_else(|| model.revision.clone());
    Ok(Remote { etag, size, commit })
}

/// Fills `partial` with the file's bytes, continuing after what it already holds.
fn fetch(
    url: &str,
    model: &ModelRef,
    auth: Option<&str>,
    partial: &Path,
    size: Option<u64>,
    opts: DownloadOptions,
) -> Result<()> {
    let mut offset = std::fs::metadata(partial).map(|m| m.len()).unwrap_or(0);
    if size.is_some_and(|s| offset > s) {
        std::fs::remove_file(partial).map_err(|e| io(partial, e))?;
        offset = 0;
    }
    if size == Some(offset) && offset > 0 {
        return Ok(());
    }
    let http = client(true).map_err(|source| HubError::Unreachable {
        url: url.into(),
        source,
    })?;
    let mut response = None;
    // Two tries at most: the second only when the server refused our range (416).
    for _ in 0..2 {
        let mut request = http.get(url);
        if offset > 0 {
            if opts.progress {
                eprintln!("resuming from byte {offset}");
            }
            request = request.header(RANGE, format!("bytes={offset}-"));
        }
        let r = send(url, request, auth)?;
        if r.status() == StatusCode::RANGE_NOT_SATISFIABLE && offset > 0 {
            std::fs::remove_file(partial).map_err(|e| io(partial, e))?;
            offset = 0;
            continue;
        }
        check_status(url, model, &r)?;
        response = Some(r);
        break;
    }
    let Some(mut response) = response else {
        return Err(HubError::Protocol {
            url: url.into(),
            problem: "the server refused every byte range".into(),
        });
    };
    if response.status() != StatusCode::PARTIAL_CONTENT {
        // A full answer (200): the server ignored the range, so start the file over.
        offset = 0;
    }
    let mut out = OpenOptions::new()
        .create(true)
        .write(true)
        .append(offset > 0)
        .truncate(offset == 0)
        .open(partial)
        .map_err(|e| io(partial, e))?;
    let total = size.or_else(|| response.content_length().map(|n| n + offset));
    let bar = progress_bar(total, opts, "downloading");
    bar.set_position(offset);
    let mut got = offset;
    let mut buffer = vec![0u8; CHUNK];
    let interrupted = |got: u64, reason: String| HubError::Interrupted {
        url: url.into(),
        got,
        total: total.unwrap_or(got),
        reason,
        partial: partial.to_path_buf(),
    };
    // Bounded by the body's end; each read stalls at most STALL_TIMEOUT.
    loop {
        let n = match response.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                bar.abandon();
                let _ = out.flush();
                return Err(interrupted(got, e.to_string()));
            }
        };
        out.write_all(&buffer[..n]).map_err(|e| io(partial, e))?;
        got += n as u64;
        bar.set_position(got);
    }
    out.flush().map_err(|e| io(partial, e))?;
    out.sync_all().map_err(|e| io(partial, e))?;
    bar.finish_and_clear();
    if let Some(t) = total {
        if got < t {
            return Err(interrupted(got, "the connection closed early".into()));
        }
    }
    Ok(())
}

/// Checks the finished file against the Hub's SHA-256 (an LFS file's ETag); a mismatch
/// deletes the file so the next run starts clean.
fn verify(url: &str, path: &Path, etag: &str, opts: DownloadOptions) -> Result<()> {
    let expected = etag.to_ascii_lowercase();
    if expected.len() != 64 || !expected.bytes().all(|b| b.is_ascii_hexdigit()) {
        if opts.progress {
            eprintln!(
                "note: the Hub publishes no SHA-256 for {url} (not an LFS file); size checked only"
            );
        }
        return Ok(());
    }
    let mut file = File::open(path).map_err(|e| io(path, e))?;
    let len = file.metadata().map_err(|e| io(path, e))?.len();
    let bar = progress_bar(Some(len), opts, "verifying  ");
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; CHUNK];
    loop {
        let n = file.read(&mut buffer).map_err(|e| io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    let actual: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if actual != expected {
        std::fs::remove_file(path).map_err(|e| io(path, e))?;
        return Err(HubError::Corrupt {
            url: url.into(),
            expected,
            actual,
        });
    }
    Ok(())
}

fn progress_bar(total: Option<u64>, opts: DownloadOptions, label: &'static str) -> ProgressBar {
    if !opts.progress {
        return ProgressBar::hidden();
    }
    match total {
        Some(t) => {
            let bar = ProgressBar::new(t);
            if let Ok(style) = ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_message(label);
            bar
        }
        None => {
            let bar = ProgressBar::new_spinner();
            if let Ok(style) =
                ProgressStyle::with_template("{msg} {spinner} {bytes} {binary_bytes_per_sec}")
            {
                bar.set_style(style);
            }
            bar.set_message(label);
            bar
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(origin("http://127.0.0.1:8/a/b"), "http://127.0.0.1:8");
        assert_eq!(origin("https://h.co"), "https://h.co");
        let m = ModelRef::parse("o/n:f.gguf", Some("main")).unwrap();
        assert_eq!(
            resolve_url("https://h.co", &m),
            "https://h.co/o/n/resolve/main/f.gguf"
        );
    }
}
