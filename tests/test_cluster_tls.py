"""TLS and certificate login on the cluster started with the shipped configuration.

THREATS.md A5 (on the wire) reads credentials and metadata from plain AMQP: the port is
closed. A1 (an enrolled agency) holds its own certificate only: no certificate, a
certificate from another CA, or its own certificate used to act as another agency gets it
nowhere, and RabbitMQ still validates ``user_id`` against the certificate's login.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import socket
import ssl

import pika
import pytest

from broker.connection import BrokerConfig, BrokerError, TlsFiles, connect_blocking
from broker.topology import SUBMIT_EXCHANGE
from envelopes.header import MAX_HEADER_BYTES, MAX_SEGMENT_SIZE
from keys import tls
from keys.codes import AgencyCode
from keys.levels import Level, Urgency
from tests.exchange import BASIC, A, B, broker_config, make_world
from tests.sync import receive_until

pytestmark = [pytest.mark.cluster, pytest.mark.broker]


@pytest.fixture(scope="module")
def cworld(cluster, tmp_path_factory):
    w = make_world(tmp_path_factory.mktemp("tls-world"), BASIC, site=cluster.site())
    yield w
    w.cleanup()


def _with_tls(config: BrokerConfig, files: TlsFiles | None, password: str = "") -> BrokerConfig:
    return BrokerConfig(
        config.login, password, config.host, config.port, config.vhost,
        nodes=config.nodes, tls=files,
    )  # fmt: skip


def _refused(config: BrokerConfig) -> str:
    """Connect and expect a refusal; the refusal's text."""
    with pytest.raises(BrokerError) as e:
        connect_blocking(config).close()
    return str(e.value)


def test_the_credentials_file_names_every_node_tls_and_no_password(cluster, cworld):
    config = broker_config(cworld, A)
    assert config.endpoints == tuple(cluster.endpoints)
    assert config.certificate_login and config.password == ""
    assert config.tls is not None and config.tls.ca == cluster.ca_file
    assert config.describe().startswith(f"amqps://{cworld.login(A)}@")


def test_plain_amqp_is_closed_on_every_node(cluster):
    for node in cluster.nodes:
        listeners = cluster.ctl(node, "eval", "rabbit_networking:active_listeners().")
        protocols = set(re.findall(r"\{listener,[^,]+,'?([\w/]+)'?,", listeners))
        assert "amqp/ssl" in protocols and "https" in protocols
        assert not protocols & {"amqp", "http", "stomp", "mqtt"}, protocols
        # The TLS port does not speak plain AMQP either: the handshake never completes.
        with socket.create_connection(("127.0.0.1", node.amqp_port), timeout=10) as s:
            s.sendall(b"AMQP\x00\x00\x09\x01")
            s.settimeout(10)
            try:
                answer = s.recv(8)
            except (TimeoutError, ConnectionResetError):
                answer = b""
            assert not answer.startswith(b"AMQP") and b"\x01\x00\x00" not in answer[:3]
    plain = BrokerConfig("cp-admin", cluster.admin_password, *cluster.endpoints[0], "/")
    _refused(plain)


def test_the_machine_node_port_is_not_a_cluster_port(cluster):
    assert 5672 not in {n.amqp_port for n in cluster.nodes}


def test_a_login_without_a_certificate_is_refused(cworld):
    config = broker_config(cworld, A)
    assert config.tls is not None
    no_cert = TlsFiles(config.tls.ca)
    _refused(_with_tls(config, no_cert))
    # Not with a password either: PLAIN is not offered on AMQP.
    _refused(_with_tls(config, no_cert, password="anything"))


def test_a_certificate_from_another_ca_is_refused(cworld, tmp_path):
    config = broker_config(cworld, A)
    assert config.tls is not None
    now = dt.datetime.now(dt.UTC)
    rogue_ca, rogue_key = tls.make_ca("cipherpost TLS CA", now)  # same name, another key
    key = tls.new_key()
    cert = tls.issue_client(rogue_ca, rogue_key, tls.make_request(cworld.login(A), key), now)
    tls.write_key_and_cert(key, cert, tmp_path / "a.key", tmp_path / "a.crt")
    _refused(_with_tls(config, TlsFiles(config.tls.ca, tmp_path / "a.crt", tmp_path / "a.key")))


def test_a_certificate_for_a_login_the_broker_does_not_know_is_refused(cluster, cworld, tmp_path):
    config = broker_config(cworld, A)
    assert config.tls is not None
    cluster.site().issue_client("cp-nobody", tmp_path, dt.datetime.now(dt.UTC))
    files = TlsFiles(config.tls.ca, tmp_path / "cp-nobody.tls.crt", tmp_path / "cp-nobody.tls.key")
    _refused(_with_tls(config, files))


def test_another_agencys_certificate_acts_as_that_agency_only(cworld):
    """A holding B's certificate is B to the broker: it cannot publish as A or read A's inbox."""
    b = broker_config(cworld, B)
    conn = connect_blocking(b)
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
            ch.basic_publish(
                SUBMIT_EXCHANGE, B, b"x", pika.BasicProperties(user_id=cworld.login(A))
            )
        assert e.value.reply_code == 406
        ch = conn.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
            ch.basic_get(broker_config(cworld, A).inbox)
        assert e.value.reply_code == 403
    finally:
        if conn.is_open:
            conn.close()


def test_a_forged_user_id_is_refused(cworld):
    conn = connect_blocking(broker_config(cworld, A))
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
            ch.basic_publish(
                SUBMIT_EXCHANGE, A, b"x", pika.BasicProperties(user_id=cworld.login(B))
            )
        assert e.value.reply_code == 406
    finally:
        if conn.is_open:
            conn.close()


def test_the_node_certificate_is_checked_by_the_client(cworld, tmp_path):
    """A client that pins another CA does not talk to the nodes (a node impersonator)."""
    config = broker_config(cworld, A)
    assert config.tls is not None
    other, _ = tls.make_ca("someone else", dt.datetime.now(dt.UTC))
    (tmp_path / "other-ca.crt").write_bytes(tls.cert_pem(other))
    files = TlsFiles(tmp_path / "other-ca.crt", config.tls.cert, config.tls.key)
    with pytest.raises(BrokerError):
        connect_blocking(_with_tls(config, files)).close()
    assert isinstance(files.context(), ssl.SSLContext)


def test_the_broker_refuses_a_submission_larger_than_any_legal_part(cworld):
    """A1 breaks invariant 5 (bounded memory per input): moved here from
    tests/test_redteam_broker.py, because it holds on a node started with the shipped
    configuration (max_message_size = the largest legal part, compose/rabbitmq/rabbitmq.conf),
    not on a node left at RabbitMQ's 128 MiB default."""
    legal_max = MAX_HEADER_BYTES + MAX_SEGMENT_SIZE + 1024
    body = b"\x00" * (8 * 1024 * 1024)
    assert len(body) > legal_max
    conn = connect_blocking(broker_config(cworld, A))
    refused = False
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        try:
            ch.basic_publish(
                SUBMIT_EXCHANGE,
                A,
                body,
                pika.BasicProperties(type="part", user_id=cworld.login(A)),
                mandatory=True,
            )
        except (pika.exceptions.NackError, pika.exceptions.AMQPError):
            refused = True
    finally:
        if conn.is_open:
            conn.close()
    assert refused, "the broker accepted an 8 MiB submission (max legal part ~4.3 MiB)"
    # A legal-size part still goes through.
    conn = connect_blocking(broker_config(cworld, A))
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.basic_publish(
            SUBMIT_EXCHANGE,
            A,
            b"\x00" * legal_max,
            pika.BasicProperties(type="part", user_id=cworld.login(A)),
            mandatory=True,
        )
    finally:
        if conn.is_open:
            conn.close()


def test_a_document_travels_over_tls_with_certificate_login(cworld, tmp_path):
    cworld.start_gateway()
    try:
        doc = tmp_path / "cong-van.pdf"
        doc.write_bytes(b"%PDF-1.7 over TLS\n" * 300)
        with cworld.client(A) as a:
            eid = a.send(doc, to=[AgencyCode.parse(B)], level=Level.MAT, urgency=Urgency.KHAN)
        with cworld.client(B) as b:
            got = receive_until(b, [eid])
        assert [g.envelope_id for g in got] == [eid]
        assert (
            hashlib.sha256(got[0].path.read_bytes()).digest()
            == hashlib.sha256(doc.read_bytes()).digest()
        )
    finally:
        cworld.stop_gateways()


def test_provisioning_creates_certificate_only_users_for_every_node(
    cluster, cworld, tmp_path, monkeypatch
):
    """``broker provision --node ... --tls-ca ... --certificate-login``: users without any
    password, credentials files naming every node, the TLS CA and the holder's own key."""
    from agents.cli import main
    from compose.cluster import ADMIN_USER

    monkeypatch.setenv("CIPHERPOST_ADMIN_PASSWORD", cluster.admin_password)
    creds = tmp_path / "creds"
    vhost = cworld.vhost + "-cli"
    prefix = cworld.prefix + "cli-"
    admin = cluster.management(cluster.nodes[1])  # any node's API will do
    args = ["broker", "provision", "--directory", str(cworld.directory_path),
            "--ca-cert", str(cworld.ca_dir / "ca.crt"),
            "--admin-url", f"https://{ADMIN_USER}@127.0.0.1:{cluster.nodes[1].management_port}",
            "--tls-ca", str(cluster.ca_file), "--certificate-login", "--vhost", vhost,
            "--login-prefix", prefix, "--credentials-dir", str(creds)]  # fmt: skip
    for host, port in cluster.endpoints:
        args += ["--node", f"{host}:{port}"]
    try:
        assert main(args) == 0
        files = sorted(creds.glob("*.broker.json"))
        # every directory entry (the gateway's code too), the gateway, witness and publisher logins
        assert len(files) == len(cworld.directory.entries) + 3
        login = prefix + A
        config = BrokerConfig.load(creds / f"{login}.broker.json")
        assert config.password == "" and config.certificate_login
        assert config.endpoints == tuple(cluster.endpoints)
        assert config.tls is not None and config.tls.cert == creds / f"{login}.tls.crt"
        user = admin.get(f"/api/users/{admin.q(login)}")
        assert user["password_hash"] == ""
        # No password logs in: PLAIN is not even offered.
        _refused(_with_tls(config, TlsFiles(cluster.ca_file), password="guessed"))
        # The holder's own key and a certificate from the TLS CA make it work.
        cluster.site().issue_client(login, creds, dt.datetime.now(dt.UTC))
        connect_blocking(config).close()
        assert "directory publish" in capsys_free_usage(main, args)
    finally:
        admin.delete(f"/api/vhosts/{admin.q(vhost)}")
        for f in creds.glob("*.broker.json"):
            admin.delete(f"/api/users/{admin.q(f.name.removesuffix('.broker.json'))}")


def capsys_free_usage(main, args) -> str:
    """--publish with certificate login is a usage error (exit 2) naming the way to publish."""
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main([*args, "--publish"])
    assert code == 2
    return err.getvalue()


def test_the_demo_runs_over_tls_with_certificate_login(cluster, capsys):
    """``cipherpost demo --cluster-dir DIR`` (README): the whole story on the cluster."""
    from agents.cli import main

    assert main(["demo", "--cluster-dir", str(cluster.root)]) == 0
    out = capsys.readouterr().out
    assert "demo complete: every step ended as expected" in out
