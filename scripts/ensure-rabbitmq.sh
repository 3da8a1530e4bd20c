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
# Open files: a 75-agency test world holds ~710 of the node's file handles at once (three
# quorum queues per agency). A node started under the default limit of 1024 open files
# (RabbitMQ keeps 927 of them) then stops accepting connections in the middle of such a
# test. A running node's limit is raised in place, never by a restart: the process's
# soft open-file limit (prlimit, as the node's owner, up to its hard limit) and
# RabbitMQ's own budget for file handles.
want=8192
budget=$(rabbitmqctl -q eval 'proplists:get_value(total_limit, file_handle_cache:info()).' 2>/dev/null || echo 0)
if [ "${budget:-0}" -lt $((want - 200)) ] 2>/dev/null; then
  pid=$(rabbitmqctl -q eval 'list_to_integer(os:getpid()).' 2>/dev/null || echo "")
  owner=$(stat -c %U "/proc/$pid" 2>/dev/null || echo "")
  as_owner=()  # prlimit on another user's process is refused even to root here: ask as its owner
  if [ -n "$owner" ] && [ "$owner" != "$(id -un)" ] && [ "$(id -u)" = 0 ]; then
    as_owner=(runuser -u "$owner" --)
  fi
  if [ -n "$pid" ] && "${as_owner[@]}" prlimit --pid "$pid" --nofile="$want:" 2>/dev/null \
    && rabbitmqctl -q eval "file_handle_cache:set_limit($((want - 100)))." >/dev/null 2>&1; then
    echo "ensure-rabbitmq: raised the node's file handles from $budget to $((want - 100)) (tests with 75 agencies need ~710)" >&2
  else
    echo "ensure-rabbitmq: warning: the node has $budget file handles and this user cannot raise them; the 75-agency tests need ~710 at once and may time out connecting" >&2
  fi
fi
for _ in $(seq 1 60); do
  if (exec 3<>/dev/tcp/127.0.0.1/15672) 2>/dev/null; then exit 0; fi
  sleep 1
done
echo "ensure-rabbitmq: management plugin did not open 127.0.0.1:15672" >&2
exit 1
