"""Red team on the real RabbitMQ: the inbox, the delivery side, message sizes.

THREATS.md A1 (an enrolled agency with its own keys and broker login) and A2
(a co-recipient: it also sees the envelope ids of what it receives), against
a gateway and real agents in a throwaway vhost. Each test FAILS on the
current code.
"""

from __future__ import annotations

import datetime as dt
import io
import os

import msgpack
import pika
import pytest

import envelopes
from broker.topology import (
    SUBMIT_EXCHANGE,
    directory_prefix,
    inbox_prefix,
    is_private_name,
)
from envelopes import _crypto
from envelopes.notices import CONTEXT as NOTICE_CONTEXT
from envelopes.notices import MAGIC as NOTICE_MAGIC
from keys.codes import AgencyCode
from keys.levels import Level
from tests.exchange import (
    BASIC,
    MAT_ONLY,
    PROVINCE,
    A,
    B,
    broker_config,
    make_world,
    parts_of,
    queue_depth,
    submit,
    wait_for,
)
from tests.sync import receive_until

X = MAT_ONLY  # a co-recipient


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = make_world(tmp_path_factory.mktemp("redteam"), BASIC)
    w.start_gateway()
    yield w
    w.cleanup()


def records(world):
    return world.gateways[0][0].audit_records()


def test_a_co_recipient_cannot_overwrite_another_senders_document_in_the_inbox(world, tmp_path):
    """A2 (X, a co-recipient of A's envelope to B) breaks invariant 9 (and 8).

    The agent names a received document ``<first 12 hex digits of the
    envelope id>-<sender's file name>`` (made unique against existing files)
    and its sidecar ``<that name>.json``, written with ``O_TRUNC`` through a
    rename, without checking that the sidecar name is free. A sends B and X
    ``data.json``: B's inbox holds ``E12-data.json`` and its sidecar. X read
    E's id in its own inbox; it seals its own envelope to B under an id with
    the same first 6 bytes (ids are the sender's choice; the rest differs, so
    the gateway sees no id reuse) and the file name ``data``: B's agent
    writes X's document as ``E12-data`` and X's sidecar as ``E12-data.json``,
    replacing A's document. B's agent has already recorded A's document as
    received, acked it and sent A a receipt: it is lost.

    Observed: A's document at B is replaced by the JSON sidecar of X's
    envelope. Expected: every received document and sidecar gets a name of
    its own (O_EXCL), nothing in the inbox is ever overwritten.
    """
    original = b'{"so": "1234/UBND-VP", "noi_dung": "genuine"}\n'
    path = tmp_path / "data.json"
    path.write_bytes(original)
    with world.client(A) as a:
        eid = a.send(path, to=[AgencyCode.parse(B), AgencyCode.parse(X)], level=Level.MAT)
    with world.client(B) as b:
        [doc] = receive_until(b, {eid})
    assert doc.path.name == f"{eid[:12]}-data.json" and doc.path.read_bytes() == original

    # X, having received E too, knows its id; it picks an id sharing the first 6 bytes.
    with world.client(X) as x:
        forged_id = bytes.fromhex(eid)[:6] + os.urandom(10)
        out = io.BytesIO()
        body = b"X's own, perfectly valid document\n"
        envelopes.seal(
            io.BytesIO(body),
            out,
            keys=x.keys,
            directory=x.directory,
            to=[AgencyCode.parse(B)],
            level=Level.MAT,
            size=len(body),
            metadata=envelopes.Metadata(subject="", filename="data"),
            envelope_id=forged_id,
        )
    for part in parts_of(out.getvalue()):
        submit(world, X, part)
    with world.client(B) as b:
        receive_until(b, {forged_id.hex()})
    assert doc.path.read_bytes() == original, "A's document in B's inbox was overwritten"


def test_a_notice_flood_does_not_bury_other_documents_in_an_inbox(world):
    """A2 (B, a recipient of one envelope from the province) breaks invariant 5.

    Fairness holds on the way in (one lane per agency) but not on the way
    out: every agency's inbox is one FIFO queue without a length limit, and
    the gateway relays any number of distinct, validly signed notices along
    one accepted edge. B signs 300 statuses "03" about the one envelope it
    received from the province (each with another note) and publishes them;
    the gateway relays all of them into the province's inbox. Whatever any
    other agency sends the province next is delivered behind those 300
    (behind millions, with a longer flood, and the broker's disk fills: an
    alarm there blocks every publisher on the node).

    Observed: ~300 of B's notices queued in the province's inbox. Expected:
    a handful at most (one relay per status along an edge, or a per-edge
    limit).
    """
    path = world.root / "for-b.txt"
    path.write_bytes(b"to B\n")
    with world.client(PROVINCE) as p:
        eid = p.send(path, to=[AgencyCode.parse(B)], level=Level.MAT)
    with world.client(B) as b:
        receive_until(b, {eid})  # B's agent sends its receipt (01) as usual
        header_hash = bytes.fromhex(b.state.received(eid)["header_hash"])
        signing_key = b.keys.signing_key

    def status(note: str, code: str = "03") -> bytes:
        body = msgpack.packb(
            [
                "status",
                bytes.fromhex(eid),
                header_hash,
                B,
                PROVINCE,
                code,
                "",
                "",
                int(dt.datetime.now(dt.UTC).timestamp()),
                note,
            ],
            use_bin_type=True,
        )
        sig = _crypto.sign(signing_key, NOTICE_CONTEXT, body)
        return bytes(msgpack.packb([NOTICE_MAGIC, body, sig], use_bin_type=True))

    conn = pika.BlockingConnection(broker_config(world, B).parameters())
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        props = pika.BasicProperties(type="notice", user_id=world.login(B))
        for i in range(300):
            ch.basic_publish(SUBMIT_EXCHANGE, B, status(f"again {i}"), props)
        ch.basic_publish(SUBMIT_EXCHANGE, B, status("the end", "06"), props)  # lane marker
    finally:
        conn.close()
    # The gateway decides one lane in order: once the marker is decided, the flood is too.
    assert wait_for(
        lambda: any(
            r["envelope_id"] == eid and r["sender"] == B and r["reason"] == "status 06"
            for r in records(world)
        ),
        120,
    ), "the flood's marker was not decided"
    depth = queue_depth(world, world.inbox(PROVINCE))
    assert depth <= 20, f"{depth} messages of B queued ahead of anything sent to the province"


# test_the_broker_refuses_a_submission_larger_than_any_legal_part runs on the cluster started
# with the shipped configuration: tests/test_cluster_tls.py.


def test_the_agent_writes_no_file_through_a_link_in_the_inbox(world, tmp_path):
    """A local attacker with write access to the inbox folder breaks invariant 8.

    THREATS.md invariant 8: "files written without following links". The
    document itself goes through an O_EXCL quarantine file, but the sidecar
    (subject, file name, edXML fields: the private metadata) is written to
    ``<name>.json.tmp`` with ``O_CREAT | O_TRUNC`` and no ``O_NOFOLLOW``: a
    symlink planted under that predictable name (the id is in the broker
    headers and the file name is the sender's) sends the decrypted metadata
    wherever it points, and the rename then leaves the link in place as the
    sidecar.

    Observed: the file outside the inbox now holds the document's subject.
    Expected: the write refuses to follow the link (O_NOFOLLOW / O_EXCL), the
    outside file is untouched.
    """
    inbox = world.root / "agents" / B / "inbox"
    inbox.mkdir(parents=True, exist_ok=True, mode=0o700)
    eid = os.urandom(16)
    outside = tmp_path / "outside-the-inbox.txt"
    outside.write_bytes(b"not the agent's to write\n")
    (inbox / f"{eid.hex()[:12]}-memo.txt.json.tmp").symlink_to(outside)
    with world.client(A) as a:
        out = io.BytesIO()
        body = b"a memo\n"
        envelopes.seal(
            io.BytesIO(body),
            out,
            keys=a.keys,
            directory=a.directory,
            to=[AgencyCode.parse(B)],
            level=Level.MAT,
            size=len(body),
            metadata=envelopes.Metadata(subject="Subject: secret meeting", filename="memo.txt"),
            envelope_id=eid,
        )
    for part in parts_of(out.getvalue()):
        submit(world, A, part)
    with world.client(B) as b:
        receive_until(b, {eid.hex()})
    assert outside.read_bytes() == b"not the agent's to write\n", "written through the link"


def test_a_file_name_too_long_in_bytes_is_received_and_leaves_no_plaintext(world, tmp_path):
    """A1 (any sender the policy lets reach B) breaks invariant 9 at B's agent.

    ``_safe_filename`` keeps at most 120 *characters* of the sender's file
    name, but a file name is limited to 255 *bytes*: 120 four-byte letters
    (or a long name in a script of three-byte letters) make the final
    ``os.replace`` fail with ENAMETOOLONG, after the document was decrypted
    and linked as ``.<id>.opened``. That is not an ``EnvelopeRefused``: the
    agent logs an internal error and requeues, five times, then the broker
    dead-letters the part. The document never reaches the inbox, no receipt
    or refusal is recorded, and the decrypted plaintext stays in the inbox
    folder as a hidden ``.opened`` file.

    Observed: nothing received; ``.<id>.opened`` (plaintext) left in B's
    inbox. Expected: the document received under a name cut to fit in
    bytes, no hidden plaintext file left behind.
    """
    name = "\U0001d518" * 200 + ".txt"  # MATHEMATICAL FRAKTUR CAPITAL U: a letter, 4 bytes
    path = tmp_path / "short.txt"
    path.write_bytes(b"a document with a long name\n")
    eid = os.urandom(16)
    with world.client(A) as a:
        out = io.BytesIO()
        body = path.read_bytes()
        envelopes.seal(
            io.BytesIO(body),
            out,
            keys=a.keys,
            directory=a.directory,
            to=[AgencyCode.parse(B)],
            level=Level.MAT,
            size=len(body),
            metadata=envelopes.Metadata(subject="", filename=name),
            envelope_id=eid,
        )
    for part in parts_of(out.getvalue()):
        submit(world, A, part)
    inbox = world.root / "agents" / B / "inbox"
    with world.client(B) as b:
        b.receive(idle=4)
        received = b.state.received(eid.hex())
    leftovers = sorted(p.name for p in inbox.glob(f".{eid.hex()}*"))
    assert leftovers == [], f"plaintext left in the inbox: {leftovers}"
    assert received is not None and received["outcome"] == "ok"


def test_an_agency_cannot_watch_another_agencys_inbox(world):
    """A1 observes other agencies' traffic (metadata; outside the ten invariants, Low).

    RabbitMQ checks no permission on a *passive* ``queue.declare``: were inbox
    names derived from the (public) agency code, any enrolled agency could poll
    how many documents wait in another's inbox and whether its agent is
    connected (``consumer_count``): who receives how much and when, and who is
    online. Inbox and directory-feed names carry a 128-bit random suffix that
    only provisioning and the agency's own credentials file hold.

    Tried: every name A could derive for B's inbox and feed (the code alone, the
    code with A's own suffix) must be unknown to the broker (404); A's
    credentials name only its own queues; B's names differ from A's in their
    random part. (Submit lanes keep code names: see docs/operations.md.)
    """
    a, b = broker_config(world, A), broker_config(world, B)
    a_inbox, a_feed = a.agency_queues()
    b_inbox, b_feed = b.agency_queues()
    assert is_private_name(b_inbox, inbox_prefix(AgencyCode.parse(B)))
    assert is_private_name(b_feed, directory_prefix(AgencyCode.parse(B)))
    assert b_inbox.rsplit(".", 1)[1] not in (a_inbox.rsplit(".", 1)[1], a_feed.rsplit(".", 1)[1])
    credentials_a = (
        world.root / "broker-credentials" / f"{world.login(A)}.broker.json"
    ).read_text()
    assert b_inbox not in credentials_a and b_feed not in credentials_a
    guesses = [
        f"cp.inbox.{B}",
        f"cp.directory.{B}",
        inbox_prefix(AgencyCode.parse(B)) + a_inbox.rsplit(".", 1)[1],
        directory_prefix(AgencyCode.parse(B)) + a_feed.rsplit(".", 1)[1],
    ]
    conn = pika.BlockingConnection(a.parameters())
    try:
        for guess in guesses:
            ch = conn.channel()
            with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
                ok = ch.queue_declare(guess, passive=True)
                pytest.fail(
                    f"A sees {guess}: {ok.method.message_count} messages, "
                    f"{ok.method.consumer_count} consumers"
                )
            assert refused.value.reply_code == 404, (guess, refused.value)
        # The real name, were it leaked, still cannot be read: only the passive look works.
        ch = conn.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as denied:
            ch.basic_consume(b_inbox, lambda *args: None)
        assert denied.value.reply_code == 403
    finally:
        if conn.is_open:
            conn.close()
