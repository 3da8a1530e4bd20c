#!/usr/bin/env bash
# The test command: venv + install, RabbitMQ up, lint and types, then the whole suite
# (slow tests included). Extra arguments go to pytest, e.g. scripts/test.sh -m "not slow".
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh
bash scripts/ensure-rabbitmq.sh
.venv/bin/ruff check --quiet .
.venv/bin/mypy --no-error-summary keys envelopes broker gateway agents compose
.venv/bin/python -m pytest "$@"
