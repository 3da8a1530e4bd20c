#!/usr/bin/env bash
# Create .venv (if missing) and install cipherpost with its test extras into it.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip 2>/dev/null || true
log=$(mktemp)
if ! .venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]' >"$log" 2>&1; then
  cat "$log" >&2
  echo "setup-venv: pip install failed (output above)" >&2
  rm -f "$log"; exit 1
fi
rm -f "$log"
.venv/bin/python -c "import agents.cli, envelopes, keys" || {
  echo "setup-venv: cipherpost did not install" >&2; exit 1; }
