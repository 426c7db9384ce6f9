#!/usr/bin/env bash
# The whole test suite: what `.ci/run` runs and what a developer runs before pushing.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch_models.sh
cargo test --all-targets 2>&1
