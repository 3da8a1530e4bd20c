"""The exchange end to end, against the real RabbitMQ, in a vhost of its own."""

from __future__ import annotations

import hashlib
import io
import json

import pika
import pytest

import envelopes
from broker.topology import DELIVER_EXCHANGE, SUBMIT_EXCHANGE
from keys.codes import AgencyCode
from keys.errors import Refused
from keys.levels import Level, Urgency
from tests.exchange import (
    MAT_ONLY,
    OTHER_PROVINCE,
    PROVINCE,
    A,
    B,
    make_world,
    raw_connection,
    wait_for,
)
from tests.sync import receive_until

pytestmark = pytest.mark.broker


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = make_world(tmp_path_factory.mktemp("exchange"))
    w.start_gateway()
    yield w
    w.cleanup()


def codes(*texts: str) -> list[AgencyCode]:
    return [AgencyCode.parse(t) for t in texts]


def test_one_recipient_receipt_and_statuses(world, tmp_path):
    doc = tmp_path / "cong-van.pdf"
    doc.write_bytes(b"%PDF-1.7 test\n" * 500)
    with world.client(PROVINCE) as province:
        eid = province.send(
            doc, to=codes(A), level=Level.MAT, urgency=Urgency.HOA_TOC, subject="Công văn 123"
        )
    with world.client(A) as a:
        got = receive_until(a, [eid])
        assert [g.envelope_id for g in got] == [eid]
        assert got[0].path.read_bytes() == doc.read_bytes()
        sidecar = json.loads(got[0].sidecar.read_text())
        assert sidecar["sender"]["code"] == PROVINCE
        assert (sidecar["level"], sidecar["urgency"], sidecar["subject"]) == (
            "mat",
            "hoa-toc",
            "Công văn 123",
        )
        a.reply_status(eid, "03", "accepted for processing")
        a.reply_status(eid, "06")
    with world.client(PROVINCE) as province:
        receive_until(
            province,
            until=lambda: len(province.status(eid)["recipients"][A]) >= 3,
            what="the receipt and two statuses from A",
        )
        report = province.status(eid)
    history = report["recipients"][A]
    assert [h["status"] for h in history] == ["01", "03", "06"]
    assert all(h["verified"] for h in history)
    assert history[1]["note"] == "accepted for processing"


def test_duplicate_delivery_is_not_written_twice(world, tmp_path):
    """The same part reaches the inbox twice (as after a gateway crash): one document."""
    with world.client(PROVINCE) as province:
        buf = io.BytesIO()
        sealed = envelopes.seal(
            io.BytesIO(b"once only"),
            buf,
            keys=province.keys,
            directory=province.directory,
            to=codes(B),
            level=Level.THUONG,
            size=9,
        )
        buf.seek(0)
        province.submit_sealed(buf)
    body = buf.getvalue()  # one segment: the part is the whole .cpe
    gateway_conn = pika.BlockingConnection(world.gateways[0][0].broker.parameters())
    try:
        ch = gateway_conn.channel()
        ch.confirm_delivery()
        ch.basic_publish(
            DELIVER_EXCHANGE, B, body, pika.BasicProperties(type="part"), mandatory=True
        )
    finally:
        gateway_conn.close()
    with world.client(B) as b:
        got = receive_until(b, [sealed.envelope_id])  # both copies were queued before this
        assert [g.envelope_id for g in got] == [sealed.envelope_id]
        assert b.receive(idle=0.5) == []
        named = [p for p in b.config.inbox.iterdir() if p.name.startswith(sealed.envelope_id[:12])]
        assert len(named) == 2  # the document and its sidecar, once


def test_large_document_in_many_segments(world, tmp_path):
    doc = tmp_path / "big.bin"
    with doc.open("wb") as f:
        for i in range(50):
            f.write(hashlib.sha256(bytes([i])).digest() * 32768)  # 50 MiB
    with world.client(PROVINCE) as province:
        eid = province.send(doc, to=codes(A, B), level=Level.MAT, progress=False)
    for code in (A, B):
        with world.client(code) as c:
            got = receive_until(c, [eid])
            assert [g.envelope_id for g in got] == [eid]
            assert got[0].metadata["bytes"] == 50 * 1024 * 1024
            with got[0].path.open("rb") as f, doc.open("rb") as g:
                assert hashlib.sha256(f.read()).digest() == hashlib.sha256(g.read()).digest()
    records = [r for r in world.gateways[0][0].audit_records() if r["envelope_id"] == eid]
    assert [r["decision"] for r in records if r["event"] == "submission"] == ["accepted"]


def test_agent_refuses_locally(world, tmp_path):
    doc = tmp_path / "s.txt"
    doc.write_bytes(b"secret")
    with world.client(PROVINCE) as province:
        with pytest.raises(Refused, match="above the clearance of recipient 000.03.12.H41"):
            province.send(doc, to=codes(MAT_ONLY), level=Level.TOI_MAT)
        with pytest.raises(Refused, match="not in the directory"):
            province.send(doc, to=codes("000.77.77.H41"), level=Level.MAT)


# --- RabbitMQ itself refuses ------------------------------------------------------------------


def test_broker_refuses_reading_another_inbox(world):
    conn = raw_connection(world, A)
    try:
        ch = conn.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
            ch.basic_consume(world.inbox(B), lambda *a: None)
            conn.process_data_events(time_limit=1)
        assert e.value.reply_code == 403
    finally:
        if conn.is_open:
            conn.close()


def test_broker_refuses_publishing_to_deliver(world):
    conn = raw_connection(world, A)
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
            ch.basic_publish(
                DELIVER_EXCHANGE,
                B,
                b"forged delivery",
                pika.BasicProperties(user_id=world.login(A)),
            )
        assert e.value.reply_code == 403
    finally:
        if conn.is_open:
            conn.close()


def test_broker_refuses_a_forged_user_id(world):
    conn = raw_connection(world, A)
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
            ch.basic_publish(
                SUBMIT_EXCHANGE,
                A,
                b"x",
                pika.BasicProperties(user_id=world.login(B)),
            )
        assert e.value.reply_code == 406  # PRECONDITION_FAILED: user_id mismatch
    finally:
        if conn.is_open:
            conn.close()


def test_broker_refuses_publishing_into_another_agencys_lane(world):
    conn = raw_connection(world, A)
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
            ch.basic_publish(SUBMIT_EXCHANGE, B, b"x", pika.BasicProperties(user_id=world.login(A)))
        assert e.value.reply_code == 403  # topic permission: its own code only
        assert "access to topic" in e.value.reply_text
    finally:
        if conn.is_open:
            conn.close()


def test_provisioning_is_idempotent(world):
    from broker.provision import provision

    result = provision(world.mgmt, world.vhost, world.directory, login_prefix=world.prefix)
    assert result.changes == []
    assert result.new_credentials == {}


def test_policy_deny_is_audited_and_notified(world, tmp_path):
    """H41 to another province matches no rule: default deny, signed notice to the sender."""
    from agents.world import GATEWAY_CODE

    doc = tmp_path / "out.txt"
    doc.write_bytes(b"to another province")
    with world.client(PROVINCE) as province:
        eid = province.send(doc, to=codes(OTHER_PROVINCE), level=Level.MAT)
        assert wait_for(lambda: bool(_gateway_records(world, eid)), 60)
        receive_until(
            province, until=lambda: bool(province.status(eid)["gateway"]), what="the rejection"
        )
        report = province.status(eid)
    assert len(report["gateway"]) == 1
    rejection = report["gateway"][0]
    assert rejection["verified"] and rejection["signer"] == GATEWAY_CODE
    assert rejection["rule_id"] == "default-deny"
    records = _gateway_records(world, eid)
    assert [(r["event"], r["decision"], r["rule_id"]) for r in records] == [
        ("submission", "refused", "default-deny")
    ]
    with world.client(OTHER_PROVINCE) as other:  # refused, recorded: it can never arrive
        assert other.receive(idle=0.5) == []


def _gateway_records(world, eid):
    return [r for r in world.gateways[0][0].audit_records() if r["envelope_id"] == eid]
