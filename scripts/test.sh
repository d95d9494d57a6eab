#!/usr/bin/env bash
# The test command: install, lint (ruff), type-check (mypy), then the whole test suite (pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
. .venv/bin/activate
ruff check src tests bench
mypy
# The scale-out tests use this machine's PostgreSQL (127.0.0.1:5432) and Redis (127.0.0.1:6379); nothing is
# started here. In CI (CI=true) a missing one fails the run; elsewhere those tests skip and say what to start.
python tests/services.py
pytest -q "$@"
