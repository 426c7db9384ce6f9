#!/usr/bin/env bash
# The whole test suite: what `.ci/run` runs and what a developer runs before pushing.
set -euo pipefail
cd "$(dirname "$0")/.."
# What the suite needs beyond Rust, checked first so a fresh machine gets one message naming
# what is missing and the command that installs it, not a failure twenty minutes in.
missing=()
python3 -c "import pytest, openai, jsonschema, pydantic" 2>/dev/null ||
  missing+=("Python test packages: python3 -m pip install -r scripts/requirements-test.txt")
[ -x "${CHROMIUM:-/usr/bin/chromium}" ] ||
  missing+=("chromium (the browser tests): sudo apt-get install chromium, or set CHROMIUM")
command -v tmux >/dev/null || missing+=("tmux (the terminal chat test): sudo apt-get install tmux")
command -v node >/dev/null || missing+=("node and npm (the browser tests): sudo apt-get install nodejs npm")
if [ ${#missing[@]} -gt 0 ]; then
  printf 'scripts/test.sh needs:\n' >&2
  printf '  - %s\n' "${missing[@]}" >&2
  exit 1
fi
# playwright-core, pinned by tests/browser/package-lock.json.
[ -d tests/browser/node_modules/playwright-core ] ||
  (cd tests/browser && npm ci --no-audit --no-fund)
# Servers started by the tests keep their conversations in a throwaway data dir.
SMOLBOT_DATA_DIR=$(mktemp -d)
export SMOLBOT_DATA_DIR
trap 'rm -rf "$SMOLBOT_DATA_DIR"' EXIT
scripts/fetch_models.sh
cargo test --all-targets 2>&1
# The OpenAI-compatible API through the official `openai` client against `smolbot serve`
# (stub and tiny synthetic model); `cargo test` above built target/debug/smolbot for the
# integration tests (a separate `cargo build` would recompile dependencies with other features).
PYTHONDONTWRITEBYTECODE=1 python3 -m pytest -q -p no:cacheprovider tests/api 2>&1
# The chat page in headless Debian chromium via playwright-core (set up by .ci/run);
# screenshots land in target/screenshots/.
(cd tests/browser && node --test --test-concurrency=1 2>&1)
