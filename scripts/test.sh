#!/usr/bin/env bash
# The whole test suite: what `.ci/run` runs and what a developer runs before pushing.
set -euo pipefail
cd "$(dirname "$0")/.."
# What the suite needs from the system, checked first so a fresh machine gets one message
# naming what is missing and the command that installs it, not a failure twenty minutes in.
missing=()
python3 -c "import ensurepip, venv" 2>/dev/null ||
  missing+=("python3-venv (the Python tests' virtual environment): sudo apt-get install python3-venv")
[ -x "${CHROMIUM:-/usr/bin/chromium}" ] ||
  missing+=("chromium (the browser tests): sudo apt-get install chromium, or set CHROMIUM")
command -v tmux >/dev/null || missing+=("tmux (the terminal chat test): sudo apt-get install tmux")
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null ||
  missing+=("postgresql (the tests start private PostgreSQL servers): sudo apt-get install postgresql")
{ command -v node && command -v npm; } >/dev/null ||
  missing+=("node and npm (the browser tests): sudo apt-get install nodejs npm")
if [ ${#missing[@]} -gt 0 ]; then
  printf 'scripts/test.sh needs:\n' >&2
  printf '  - %s\n' "${missing[@]}" >&2
  exit 1
fi
# The Python test packages live in the repository's own virtual environment, .venv-test:
# Debian's python3 refuses `pip install` outside one (PEP 668). Created on the first run,
# installed into again whenever scripts/requirements-test.txt changes.
venv=.venv-test
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
if ! cmp -s scripts/requirements-test.txt "$venv/requirements-test.txt"; then
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    -r scripts/requirements-test.txt
  cp scripts/requirements-test.txt "$venv/requirements-test.txt"
fi
# playwright-core, pinned by tests/browser/package-lock.json.
[ -d tests/browser/node_modules/playwright-core ] ||
  (cd tests/browser && npm ci --no-audit --no-fund)
# Servers started by the tests keep their conversations in a throwaway data dir.
SMOLBOT_DATA_DIR=$(mktemp -d)
export SMOLBOT_DATA_DIR
trap 'rm -rf "$SMOLBOT_DATA_DIR"' EXIT
PYTHON="$venv/bin/python" scripts/fetch_models.sh
# --workspace: the engine's and the model's unit tests live in crates/inference and
# crates/smollm3, which a plain `cargo test` in the root package leaves out.
cargo test --workspace --all-targets 2>&1
# The OpenAI-compatible API through the official `openai` client against `smolbot serve`
# (stub and tiny synthetic model); `cargo test` above built target/debug/smolbot for the
# integration tests (a separate `cargo build` would recompile dependencies with other features).
PYTHONDONTWRITEBYTECODE=1 "$venv/bin/python" -m pytest -q -p no:cacheprovider tests/api 2>&1
# The chat page in headless Debian chromium via playwright-core; screenshots land in
# target/screenshots/.
(cd tests/browser && node --test --test-concurrency=1 2>&1)
