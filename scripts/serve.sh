#!/usr/bin/env bash
# The main job: install, then run `headwater serve` on its embedded defaults (local model, SQLite store).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/headwater serve "$@"
