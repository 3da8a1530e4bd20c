#!/usr/bin/env bash
# The main job: install into .venv if needed, make sure RabbitMQ (with its management
# plugin) answers, then run the exchange demo. Extra arguments go to `cipherpost demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh
if ! bash scripts/ensure-rabbitmq.sh; then
  echo "demo: RabbitMQ is needed (apt-get install rabbitmq-server); the offline part alone:" \
       ".venv/bin/cipherpost tour" >&2
  exit 1
fi
exec .venv/bin/cipherpost demo "$@"
