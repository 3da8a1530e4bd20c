"""The shipped RabbitMQ node configuration (compose/rabbitmq), read as the cluster renders it."""

from __future__ import annotations

from pathlib import Path

from envelopes.header import MAX_HEADER_BYTES, MAX_SEGMENT_SIZE

RABBITMQ = Path(__file__).resolve().parent.parent / "compose" / "rabbitmq"
RABBITMQ_DEFAULT_MAX_MESSAGE = 128 * 1024 * 1024


def settings() -> dict[str, str]:
    out = {}
    for line in (RABBITMQ / "rabbitmq.conf").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def test_max_message_size_admits_the_largest_legal_part_and_little_more():
    limit = int(settings()["max_message_size"])
    largest_part = MAX_HEADER_BYTES + MAX_SEGMENT_SIZE + 1024  # two frames and their framing
    assert limit >= largest_part
    assert limit <= largest_part + 512 * 1024
    assert limit < RABBITMQ_DEFAULT_MAX_MESSAGE


def test_amqp_is_tls_only_with_certificate_login():
    conf = settings()
    assert conf["listeners.tcp"] == "none"
    assert conf["ssl_options.verify"] == "verify_peer"
    assert conf["ssl_options.fail_if_no_peer_cert"] == "true"
    mechanisms = [v for k, v in conf.items() if k.startswith("auth_mechanisms.")]
    assert mechanisms == ["EXTERNAL"]
    assert conf["ssl_cert_login_from"] == "common_name"
    assert "management.tcp.port" not in conf


def test_the_plugins_are_certificate_login_management_and_prometheus():
    plugins = (RABBITMQ / "enabled_plugins").read_text().strip()
    assert plugins == "[rabbitmq_management,rabbitmq_auth_mechanism_ssl,rabbitmq_prometheus]."


def test_the_cluster_renderer_fills_every_placeholder_and_refuses_a_missing_one():
    import re

    import pytest

    from compose.cluster import ClusterError, render_config

    text = (RABBITMQ / "rabbitmq.conf").read_text()
    names = set(re.findall(r"\$\{(\w+)\}", text))
    assert {"AMQPS_PORT", "TLS_CA", "CLUSTER_NODE_3", "LISTEN_IP"} <= names
    rendered = render_config(text, {name: "x" for name in names})
    assert not any("${" in ln for ln in rendered.splitlines() if not ln.startswith("#"))
    with pytest.raises(ClusterError, match="no value"):
        render_config(text, {name: "x" for name in names - {"TLS_KEY"}})


def test_a_node_that_did_not_start_is_explained_by_the_end_of_its_log(tmp_path):
    from compose.cluster import _log_tail

    log = tmp_path / "node.log"
    assert _log_tail(log) == "(unreadable: No such file or directory)"
    log.write_text("")
    assert _log_tail(log) == "(empty)"
    log.write_text("\n".join(f"line {i}" for i in range(20)) + "\n")
    assert _log_tail(log, lines=3) == "line 17 | line 18 | line 19"
    log.write_text("x" * 5000)
    assert _log_tail(log, chars=100) == "x" * 100


def test_a_failed_boot_is_found_after_the_start_and_named_by_rabbitmqs_reason(tmp_path):
    """What a fresh CI run met after a whole-cluster restart (RabbitMQ 3.10): one node asked a
    peer for its feature flags before that peer had loaded them, and its boot failed."""
    from compose.cluster import boot_failure

    log = tmp_path / "node.log"
    assert boot_failure(log, 0) is None  # no log yet: nothing failed
    earlier = "2026-11-30 08:20:01.1+00:00 [error] <0.223.0> BOOT FAILED\n"
    log.write_text(earlier + "2026-11-30 08:23:23.6+00:00 [info] <0.223.0> Starting RabbitMQ\n")
    assert boot_failure(log, 0) == "BOOT FAILED"  # no reason line: the marker itself
    assert boot_failure(log, len(earlier)) is None  # an earlier boot's failure is not this one
    with log.open("a") as f:
        f.write(
            "2026-11-30 08:23:24.054606+00:00 [error] <0.223.0> BOOT FAILED\n"
            "2026-11-30 08:23:25.058204+00:00 [notice] <0.44.0> Application rabbit exited with"
            " reason: {{incompatible_feature_flags,{badrpc,{'EXIT',{{badmap,undefined}\n"
        )
    assert boot_failure(log, len(earlier)) == (
        "Application rabbit exited with reason:"
        " {{incompatible_feature_flags,{badrpc,{'EXIT',{{badmap,undefined}"
    )
