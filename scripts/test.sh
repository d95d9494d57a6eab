#!/usr/bin/env bash
# The test command: install, lint (ruff), type-check (mypy), then the whole test suite (pytest), and the protocol's
# tests once more against its pure-Python sources (the build compiles its hot modules with mypyc: setup.py).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
. .venv/bin/activate
ruff check src tests bench setup.py
mypy
# The install compiled the protocol's hot modules (unless HEADWATER_NO_COMPILE=1), and they are what is imported.
python -c 'import os, headwater.protocol as p; assert p.COMPILED or os.environ.get("HEADWATER_NO_COMPILE") == "1", "the compiled protocol modules are not in use"'
# The scale-out tests use this machine's PostgreSQL (127.0.0.1:5432) and Redis (127.0.0.1:6379); nothing is
# started here. In CI (CI=true) a missing one fails the run; elsewhere those tests skip and say what to start.
python tests/services.py
pytest -q "$@"
# The same protocol tests on the pure-Python path (what a build without a compiler runs): HEADWATER_NO_COMPILE=1
# makes headwater.protocol import the .py sources instead of the compiled modules.
if [ $# -eq 0 ]; then
  HEADWATER_NO_COMPILE=1 pytest -q -p no:cacheprovider tests/test_sse.py tests/test_stream.py tests/test_accumulate.py \
    tests/test_codec.py tests/test_conformance.py tests/test_conformance_resumed.py tests/test_writer.py \
    tests/test_relay_hot_path.py tests/test_relay_fidelity.py
fi
