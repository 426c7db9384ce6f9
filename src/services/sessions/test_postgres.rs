//! A private PostgreSQL server for tests: Debian's `postgresql` binaries
//! (`/usr/lib/postgresql/*/bin`), a cluster made by `initdb` in a temporary folder, started
//! on a free 127.0.0.1 port once per test process; each test asks for a fresh database on
//! it. As root (CI), where `initdb` refuses to run, everything runs as the `postgres` user
//! the package creates.
//!
//! The server goes with the test process: it runs under a small shell that holds a pipe
//! from the test process and, when that closes at the process's exit, stops the server and
//! removes its folder. Shared by the store's unit tests and the end-to-end tests
//! (`tests/it/common`), which include this file.

use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The running server of this test process.
pub struct TestServer {
    port: u16,
    bin: PathBuf,
    /// As root: run the tools as `postgres`.
    as_postgres: bool,
    /// Closing it (the process exiting) stops the server.
    _lifeline: Mutex<(Child, ChildStdin)>,
}

/// The newest `/usr/lib/postgresql/<version>/bin` holding `initdb`.
fn binaries() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin).unwrap_or_else(|| {
        panic!(
            "the PostgreSQL tests need a PostgreSQL server: no /usr/lib/postgresql/*/bin/initdb \
             here; install it with `apt install postgresql`"
        )
    })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
        .unwrap_or(false)
}

impl TestServer {
    /// `tool` of the server's binaries, as the user that owns the cluster.
    fn command(&self, tool: &str) -> Command {
        command(&self.bin, self.as_postgres, tool)
    }

    /// A new empty database on the server; its connection URL.
    pub fn database(&self) -> String {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "smolbot_test_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let out = self
            .command("createdb")
            .args(["-h", "127.0.0.1", "-U", "postgres", "-p"])
            .arg(self.port.to_string())
            .arg(&name)
            .output()
            .expect("run createdb");
        assert!(
            out.status.success(),
            "createdb {name} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }
}

fn command(bin: &Path, as_postgres: bool, tool: &str) -> Command {
    if as_postgres {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(bin.join(tool));
        command
    } else {
        Command::new(bin.join(tool))
    }
}

/// The server of this test process, started at the first call.
pub fn server() -> &'static TestServer {
    static SERVER: OnceLock<TestServer> = OnceLock::new();
    SERVER.get_or_init(start)
}

/// A new empty database on this process's server; its connection URL.
pub fn database() -> String {
    server().database()
}

fn start() -> TestServer {
    let bin = binaries();
    let as_postgres = is_root();
    let dir = tempfile::Builder::new()
        .prefix("smolbot-pg-")
        .tempdir()
        .expect("temp dir")
        .keep();
    if as_postgres {
        let chowned = Command::new("chown")
            .args(["-R", "postgres:"])
            .arg(&dir)
            .status()
            .expect("run chown");
        assert!(chowned.success(), "chown postgres {}", dir.display());
    }
    let data = dir.join("data");
    let out = command(&bin, as_postgres, "initdb")
        .arg("-D")
        .arg(&data)
        .args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-locale",
        ])
        .output()
        .expect("run initdb");
    assert!(
        out.status.success(),
        "initdb failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    // The shell starts the server, waits for its stdin to close (this process exiting),
    // then stops the server fast and removes the cluster.
    let script = format!(
        "'{postgres}' -D '{data}' -p {port} -k '{dir}' -c listen_addresses=127.0.0.1 \
         -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
         -c max_connections=300 2>'{dir}/log' & pid=$!; \
         read _ignored; kill -INT $pid; wait $pid; rm -rf '{dir}'",
        postgres = bin.join("postgres").display(),
        data = data.display(),
        dir = dir.display(),
    );
    let mut shell = if as_postgres {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", "sh", "-c", &script]);
        c
    } else {
        let mut c = Command::new("sh");
        c.args(["-c", &script]);
        c
    };
    let mut child = shell
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start postgres");
    let stdin = child.stdin.take().expect("piped stdin");
    let server = TestServer {
        port,
        bin,
        as_postgres,
        _lifeline: Mutex::new((child, stdin)),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = server
            .command("pg_isready")
            .args(["-q", "-h", "127.0.0.1", "-p"])
            .arg(port.to_string())
            .status()
            .is_ok_and(|s| s.success());
        if ready {
            return server;
        }
        assert!(
            Instant::now() < deadline,
            "the test PostgreSQL server did not start within 60 s: {}",
            std::fs::read_to_string(dir.join("log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
