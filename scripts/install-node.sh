#!/usr/bin/env bash
# The Node packages the interop tests use (tests/interop/node: the Vercel AI SDK), exactly as its committed
# package-lock.json pins them, from the npm registry (`npm ci`). Without node/npm, or when npm ci fails, it says so
# and installs nothing: tests/test_interop_vercel.py then skips the node test and replays the recorded requests.
# Idempotent.
set -euo pipefail
cd "$(dirname "$0")/../tests/interop/node"
if ! command -v npm >/dev/null 2>&1 || ! command -v node >/dev/null 2>&1; then
  echo "install-node.sh: node/npm not found; the Vercel AI SDK interop test will replay its recording" >&2
  exit 0
fi
if cmp -s package-lock.json node_modules/.installed-lock.json 2>/dev/null; then
  exit 0  # already installed from this lock
fi
if ! npm ci --no-audit --no-fund --loglevel=error >/dev/null; then
  # No registry (an offline machine): the node test skips, saying why; the recorded requests still replay.
  echo "install-node.sh: WARNING: npm ci failed; the Vercel AI SDK test will be skipped (its replay still runs)" >&2
  rm -rf node_modules
  exit 0
fi
cp package-lock.json node_modules/.installed-lock.json
