"""Fixtures for the OpenAI-client tests: `smolbot serve` started as a real process on a free
local port (the stub, the stub behind an API key, and the tiny synthetic model), stopped
when the test session ends.

The binary is `target/debug/smolbot` unless `SMOLBOT_BIN` names another; scripts/test.sh
builds it first.
"""

import os
import pathlib
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
BINARY = pathlib.Path(os.environ.get("SMOLBOT_BIN", ROOT / "target" / "debug" / "smolbot"))
API_KEY = "test-key-123"
# Long enough for a debug build to load the tiny model on a slow CI machine.
STARTUP_SECONDS = 60


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A running `smolbot serve`, its base URL and its log."""

    def __init__(self, args, log_path):
        if not BINARY.exists():
            pytest.fail(f"{BINARY} is missing: run `cargo build` first")
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.process = subprocess.Popen(
            [str(BINARY), "serve", "--host", "127.0.0.1", "--port", str(self.port), *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "RUST_LOG": "warn"},
        )
        self._wait_ready()

    def _wait_ready(self):
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"smolbot serve exited:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.base_url + "/health", timeout=1) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.1)
        self.stop()
        pytest.fail(f"smolbot serve did not become ready:\n{self.log()}")

    def log(self):
        self._log.flush()
        return pathlib.Path(self.log_path).read_text()

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


@pytest.fixture(scope="session")
def stub_server(tmp_path_factory):
    server = Server(["--stub", "--stub-tokens-per-second", "0"],
                    tmp_path_factory.mktemp("logs") / "stub.log")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def keyed_server(tmp_path_factory):
    server = Server(["--stub", "--stub-tokens-per-second", "0", "--api-key", API_KEY],
                    tmp_path_factory.mktemp("logs") / "keyed.log")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tiny_server(tmp_path_factory):
    directory = tmp_path_factory.mktemp("model")
    model = directory / "tiny-smollm3.gguf"
    subprocess.run([str(BINARY), "synth", "--out", str(model)], check=True,
                   capture_output=True)
    server = Server(["--model", str(model), "--cpu"], directory / "tiny.log")
    yield server
    server.stop()
