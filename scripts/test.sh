#!/usr/bin/env bash
# The whole test suite: what `.ci/run` runs and what a developer runs before pushing.
set -euo pipefail
cd "$(dirname "$0")/.."
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
