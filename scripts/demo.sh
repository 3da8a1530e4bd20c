#!/usr/bin/env bash
# The main job: install into .venv if needed, then run the cipherpost demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh
exec .venv/bin/cipherpost tour "$@"
