#!/usr/bin/env bash
# Install Headwater and everything it needs into ./.venv, exactly as uv.lock pins it (idempotent).
# uv itself is installed with pip (pinned) when missing. The first run compiles llama.cpp (llama-cpp-python has
# no prebuilt wheel here): about 6 minutes on 2 cores; later runs reuse uv's cache. Update the lock: `uv lock`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
UV_VERSION=0.13.9
if ! command -v uv >/dev/null 2>&1 || [ "$(uv --version | cut -d' ' -f2)" != "$UV_VERSION" ]; then
  "$PY" -m pip install -q "uv==$UV_VERSION"
fi
# The interpreter is the machine's own (no managed-Python download); --frozen: the lock as committed, never
# re-resolved. GGML_NATIVE=OFF: a llama.cpp wheel built here runs on any x86-64 machine that reuses the cache.
export UV_PYTHON_DOWNLOADS=never
CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF}" uv sync --frozen --python "$PY" --all-extras --quiet
# Node packages for the interop tests (the Vercel AI SDK), from tests/interop/node/package-lock.json.
bash scripts/install-node.sh
# The inspector's browser tests drive the system Chromium (installed with apt-get when missing, as root).
bash scripts/install-browser.sh
