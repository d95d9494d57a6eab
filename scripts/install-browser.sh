#!/usr/bin/env bash
# The browser the inspector's end-to-end tests drive: Debian's Chromium at /usr/bin/chromium, run by Playwright
# with executable_path (Playwright's own browser download is never used). Idempotent: installs only when missing,
# and only as root (CI runs as root, with no stdin); otherwise it says how and leaves the tests to skip.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
if [ "$(id -u)" != "0" ]; then
  echo "install-browser: /usr/bin/chromium is missing; the browser tests need it: sudo apt-get install -y chromium" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q </dev/null >/dev/null
apt-get install -y -q chromium </dev/null >/dev/null
/usr/bin/chromium --version
