#!/usr/bin/env bash
# The test command: install, lint (ruff), type-check (mypy), then the whole test suite (pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
. .venv/bin/activate
ruff check src tests bench
mypy
pytest -q "$@"
