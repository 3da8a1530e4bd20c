#!/usr/bin/env bash
# Make sure the machine's RabbitMQ answers on 127.0.0.1:5672 and the management
# plugin (HTTP on 15672, used for provisioning) is enabled. Starts the node only if
# it is down; never restarts or stops a running one.
set -euo pipefail
if ! command -v rabbitmqctl >/dev/null 2>&1; then
  echo "ensure-rabbitmq: rabbitmqctl not found; install rabbitmq-server (apt-get install rabbitmq-server)" >&2
  exit 1
fi
if ! rabbitmq-diagnostics -q ping >/dev/null 2>&1; then
  echo "ensure-rabbitmq: starting RabbitMQ (rabbitmq-server -detached)" >&2
  (cd "${TMPDIR:-/tmp}" && rabbitmq-server -detached >/dev/null 2>&1) || true  # a failed start dumps erl_crash.dump in its folder
  sleep 3
  rabbitmqctl -q await_startup --timeout 120 >/dev/null
fi
if ! rabbitmq-plugins -q is_enabled rabbitmq_management >/dev/null 2>&1; then
  rabbitmq-plugins -q enable rabbitmq_management >/dev/null
fi
for _ in $(seq 1 60); do
  if (exec 3<>/dev/tcp/127.0.0.1/15672) 2>/dev/null; then exit 0; fi
  sleep 1
done
echo "ensure-rabbitmq: management plugin did not open 127.0.0.1:15672" >&2
exit 1
