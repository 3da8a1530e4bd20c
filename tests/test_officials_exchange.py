"""Officials' signatures, recall and replacement over the real RabbitMQ, in a vhost of its own.

The chairman signs, the clerk sends; recipients verify each signature against the
directory and refuse, with the reason, a revoked official, another agency's
official, other bytes; the gateway refuses an unsigned Tối mật document by the
policy rule; a recall goes to every recipient, only from the sender (else
refused and audited), and 15 moves the document; a replacement is shown on both
sides.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import secrets
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import envelopes
from agents.config import AgentConfig
from agents.world import DEFAULT_POLICY, PASSPHRASE, World
from envelopes.notices import KIND_RECALL, sign_notice
from envelopes.signatures import sign_document
from keys import ca
from keys.codes import AgencyCode
from keys.directory import build_directory
from keys.errors import CipherpostError
from keys.levels import Level
from keys.officials import OfficialKeys, OfficialRequest, build_request
from tests.exchange import PROVINCE, A, B, make_world, submit
from tests.sync import consume_until, receive_until

pytestmark = pytest.mark.broker

POLICY = DEFAULT_POLICY.replace(
    '[[rule]]\nid = "h41-internal"',
    '[[rule]]\nid = "toi-mat-needs-signature"\naction = "deny"\n'
    'reason = "a Tối mật document leaves only signed by an official"\n'
    'level_min = "toi-mat"\nofficial_signature = false\n\n[[rule]]\nid = "h41-internal"',
)
SUBJECT = "Quyết định sáp nhập thôn"
NUMBER = "12/QĐ-UBND"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    w = make_world(tmp_path_factory.mktemp("officials"), policy_text=POLICY)
    w.start_gateway()
    yield w
    w.cleanup()


def official(world: World, code: str, name: str, title: str) -> OfficialKeys:
    authority = ca.open_ca(world.ca_dir, PASSPHRASE)
    key = Ed25519PrivateKey.generate()
    now = dt.datetime.now(dt.UTC)
    request = OfficialRequest.parse(
        build_request(key, AgencyCode.parse(code), name, title, "", now)
    )
    path = ca.issue_official(authority, request, world.root / "officials", now)
    der = x509.load_pem_x509_certificate(path.read_bytes()).public_bytes(serialization.Encoding.DER)
    return OfficialKeys(request.code, name, title, "", key, der)


def sign(o: OfficialKeys, doc: Path, subject: str = SUBJECT, number: str = NUMBER) -> bytes:
    with doc.open("rb") as f:
        return sign_document(o, f, subject=subject, notation=number)


def document(tmp_path: Path, text: str = "Quyết định (demo)\n") -> Path:
    doc = tmp_path / f"qd-{secrets.token_hex(3)}.txt"
    doc.write_bytes(text.encode() * 400)
    return doc


def new_directory(world: World) -> None:
    """The cipher department publishes a new directory version (the file agents load)."""
    authority = ca.open_ca(world.ca_dir, PASSPHRASE)
    data = build_directory(authority, world.root / "certs", dt.datetime.now(dt.UTC), 7)
    world.directory_path.write_bytes(data)


def submit_signed(world: World, sender: str, to: str, doc: Path, sigs: tuple[bytes, ...]) -> str:
    """Seal with the sender's keys without the agent's own check of the signatures (what a
    sender with a stale directory, or a rogue one, puts on the wire)."""
    with world.client(sender) as c:
        data = doc.read_bytes()
        out = io.BytesIO()
        sealed = envelopes.seal(
            io.BytesIO(data), out, keys=c.keys, directory=c.directory,
            to=[AgencyCode.parse(to)], level=Level.MAT, size=len(data),
            metadata=envelopes.Metadata(
                subject=SUBJECT, filename=doc.name, fields={"notation": NUMBER}, signatures=sigs
            ),
        )  # fmt: skip
        out.seek(0)
        c.submit_sealed(out)
    return sealed.envelope_id


def refused_here(world: World, code: str, eid: str) -> dict[str, object]:
    with world.client(code) as c:
        events: list[dict[str, object]] = []
        c.on_event = events.append
        consume_until(
            c, lambda: (c.state.received(eid) or {}).get("outcome") == "refused", what="refusal"
        )
        got = c.state.received(eid)
        assert got is not None
        assert not any(p.name.startswith("qd-") for p in c.config.inbox.glob("*"))
    return {"reason": got["reason"], "events": [e for e in events if e["envelope_id"] == eid]}


def test_signed_by_the_chairman_sent_by_the_clerk_arrives_verified(world, tmp_path):
    chairman = official(world, PROVINCE, "Nguyễn Văn A", "Chủ tịch UBND tỉnh H41")
    doc = document(tmp_path)
    with world.client(PROVINCE) as clerk:
        eid = clerk.send(
            doc, to=[A], level=Level.TOI_MAT, subject=SUBJECT, fields={"notation": NUMBER},
            signatures=[sign(chairman, doc)],
        )  # fmt: skip
    with world.client(A) as a:
        (got,) = receive_until(a, [eid])
        sidecar = json.loads(got.sidecar.read_text(encoding="utf-8"))
    (sig,) = sidecar["signatures"]
    assert sig["display"] == "signed by Nguyễn Văn A, Chủ tịch UBND tỉnh H41 [verified]"
    assert (sig["name"], sig["title"], sig["agency"]) == (
        "Nguyễn Văn A", "Chủ tịch UBND tỉnh H41", PROVINCE,
    )  # fmt: skip
    assert got.metadata["signatures"][0]["verified"] is True  # the SDK's view
    assert sig["directory_version"] >= 1  # what "valid when signed" is checked against later
    # A Tối mật document: the gateway let it through only because it is signed.
    records = [r for r in world.gateways[0][0].audit_records() if r["envelope_id"] == eid]
    assert records[0]["rule_id"] == "h41-internal"


def test_the_gateway_refuses_an_unsigned_toi_mat_document(world, tmp_path):
    doc = document(tmp_path)
    with world.client(PROVINCE) as clerk:
        eid = clerk.send(doc, to=[A], level=Level.TOI_MAT, subject=SUBJECT)
        consume_until(clerk, lambda: bool(clerk.status(eid)["gateway"]), what="the rejection")
        (rejection,) = clerk.status(eid)["gateway"]
    assert rejection["rule_id"] == "toi-mat-needs-signature" and rejection["verified"]
    records = [r for r in world.gateways[0][0].audit_records() if r["envelope_id"] == eid]
    assert [(r["decision"], r["rule_id"]) for r in records] == [
        ("refused", "toi-mat-needs-signature")
    ]


def test_a_revoked_officials_signature_is_refused_with_the_reason(world, tmp_path):
    vice = official(world, PROVINCE, "Trần Thị B", "Phó Chủ tịch UBND tỉnh H41")
    doc = document(tmp_path)
    sig = sign(vice, doc)
    authority = ca.open_ca(world.ca_dir, PASSPHRASE)
    ca.revoke_official(
        authority, vice.key_id.hex(), "left office (merger)", dt.datetime.now(dt.UTC)
    )
    new_directory(world)
    with world.client(PROVINCE) as clerk:
        with pytest.raises(envelopes.EnvelopeRefused, match="revoked"):
            clerk.send(doc, to=[A], level=Level.MAT, subject=SUBJECT,
                       fields={"notation": NUMBER}, signatures=[sig])  # fmt: skip
    # A sender that skips its own check (a stale or rogue agent): the recipient refuses.
    eid = submit_signed(world, PROVINCE, B, doc, (sig,))
    seen = refused_here(world, B, eid)
    assert "Trần Thị B, Phó Chủ tịch UBND tỉnh H41, whose certificate was revoked" in str(
        seen["reason"]
    )
    (event,) = seen["events"]
    assert event["rule_id"] == "invariant:revoked-official"
    # The sender is told too: a signed 02 naming the rule.
    with world.client(PROVINCE) as clerk:
        consume_until(clerk, lambda: bool(clerk.status(eid)["recipients"].get(B)), what="02")
        (rejected,) = [h for h in clerk.status(eid)["recipients"][B] if h["status"] == "02"]
    assert "invariant:revoked-official" in rejected["note"] and rejected["verified"]
    assert "Trần Thị B" not in rejected["note"]  # the official's name is payload metadata


def test_a_signature_over_other_bytes_is_refused(world, tmp_path):
    chairman = official(world, PROVINCE, "Lê Văn C", "Chủ tịch UBND tỉnh H41")
    draft, final = document(tmp_path, "bản dự thảo\n"), document(tmp_path, "bản chính thức\n")
    eid = submit_signed(world, PROVINCE, A, final, (sign(chairman, draft),))
    seen = refused_here(world, A, eid)
    assert "over other bytes than this document" in str(seen["reason"])
    assert seen["events"][0]["rule_id"] == "invariant:official-signature"


def test_another_agencys_official_posing_as_the_senders_is_refused(world, tmp_path):
    theirs = official(world, A, "Phạm Văn D", "Chủ tịch UBND xã An Bình")
    doc = document(tmp_path)
    with world.client(PROVINCE) as clerk, pytest.raises(envelopes.EnvelopeRefused):
        clerk.send(doc, to=[B], level=Level.MAT, subject=SUBJECT, fields={"notation": NUMBER},
                   signatures=[sign(theirs, doc)])  # fmt: skip
    eid = submit_signed(world, PROVINCE, B, doc, (sign(theirs, doc),))
    seen = refused_here(world, B, eid)
    assert f"an official of {A}, not of the sending agency {PROVINCE}" in str(seen["reason"])
    assert seen["events"][0]["rule_id"] == "invariant:official-agency"


def test_recall_agreed_moves_the_document_and_the_sender_sees_each_answer(world, tmp_path):
    doc = document(tmp_path)
    with world.client(PROVINCE) as clerk:
        eid = clerk.send(doc, to=[A, B], level=Level.MAT, subject=SUBJECT)
    for code in (A, B):
        with world.client(code) as c:
            receive_until(c, [eid])
    with world.client(PROVINCE) as clerk:
        assert clerk.recall(eid, "sai số liệu, sẽ gửi bản thay thế") == [A, B]
    with world.client(A) as a:
        events: list[dict[str, object]] = []
        a.on_event = events.append
        consume_until(a, lambda: "recall_requested" in a.state.marks(eid), what="the recall")
        (recall,) = [e for e in events if e["kind"] == "recall"]
        assert recall["reason"] == "sai số liệu, sẽ gửi bản thay thế" and recall["verified"]
        a.reply_status(eid, "15", "đã thu hồi")
        path = Path(a.state.received(eid)["path"])
        assert path.parent == a.config.inbox / "recalled" and path.read_bytes() == doc.read_bytes()
        assert not any(p.name.startswith(eid[:12]) for p in a.config.inbox.glob("*"))
        sidecar = json.loads(path.with_name(path.name + ".json").read_text(encoding="utf-8"))
        assert sidecar["recalled"]["how"].startswith("agreed (15)")
        with pytest.raises(CipherpostError, match="answered already"):
            a.reply_status(eid, "16")
    with world.client(B) as b:
        consume_until(b, lambda: "recall_requested" in b.state.marks(eid), what="the recall")
        b.reply_status(eid, "16", "đã xử lý xong")
        assert Path(b.state.received(eid)["path"]).parent == b.config.inbox
    with world.client(PROVINCE) as clerk:

        def answered() -> bool:
            history = clerk.status(eid)["recipients"]
            return all(any(h["status"] in ("15", "16") for h in history[c]) for c in (A, B))

        consume_until(clerk, answered, what="both answers")
        (row,) = [r for r in clerk.outbox() if r["envelope_id"] == eid]
    assert row["by_recipient"][A] == "15 recall agreed"
    assert row["by_recipient"][B] == "16 recall refused"
    relayed = [
        r for r in world.gateways[0][0].audit_records()
        if r["envelope_id"] == eid and r["event"] == "recall"
    ]  # fmt: skip
    assert sorted(r["recipients"][0] for r in relayed) == [A, B]  # audited, one each


def test_a_recall_by_anyone_but_the_sender_is_refused_and_audited(world, tmp_path):
    doc = document(tmp_path)
    with world.client(PROVINCE) as clerk:
        eid = clerk.send(doc, to=[A, B], level=Level.MAT, subject=SUBJECT)
    with world.client(A) as a:
        receive_until(a, [eid])
        with pytest.raises(CipherpostError, match="only its sender may recall"):
            a.recall(eid, "not mine to recall")
        # A co-recipient signs a recall of it to the other recipient anyway.
        header_hash = bytes.fromhex(a.state.received(eid)["header_hash"])
        forged = sign_notice(
            a.keys.signing_key, kind=KIND_RECALL, envelope_id=bytes.fromhex(eid),
            header_hash=header_hash, signer=a.keys.code, addressee=AgencyCode.parse(B),
            status="13", now=dt.datetime.now(dt.UTC), reason="thu hồi giả",
        )  # fmt: skip
    submit(world, A, forged.raw, kind="notice")
    with world.client(A) as a:  # told: a rejection notice from the gateway, naming the rule
        events: list[dict[str, object]] = []
        a.on_event = events.append

        def told() -> bool:
            return any(e["rule_id"] == "invariant:notice-edge" for e in events)

        consume_until(a, told, what="the gateway's rejection of the recall")
    refused = [
        r for r in world.gateways[0][0].audit_records()
        if r["envelope_id"] == eid and r["event"] == "notice-refused"
    ]  # fmt: skip
    assert [(r["sender"], r["rule_id"]) for r in refused] == [(A, "invariant:notice-edge")]
    with world.client(B) as b:
        receive_until(b, [eid])
        assert "recall_requested" not in b.state.marks(eid)


def test_a_replacement_is_shown_on_both_sides(world, tmp_path):
    first, corrected = document(tmp_path, "bản cũ\n"), document(tmp_path, "bản đã sửa\n")
    with world.client(PROVINCE) as clerk:
        old = clerk.send(first, to=[A], level=Level.MAT, subject=SUBJECT)
        with pytest.raises(CipherpostError):
            clerk.send(corrected, to=[A], level=Level.MAT, replaces="0" * 32)
        new = clerk.send(corrected, to=[A], level=Level.MAT, subject=SUBJECT, replaces=old[:10])
        (row,) = [r for r in clerk.outbox() if r["envelope_id"] == old]
        assert row["replaced_by"] == new
        assert clerk.status(new)["marks"]["replaces"] == old
    with world.client(A) as a:
        got = {d.envelope_id: d for d in receive_until(a, [old, new])}
        assert got[new].metadata["replaces"] == old
        old_sidecar = json.loads(got[old].sidecar.read_text(encoding="utf-8"))
        assert old_sidecar["replaced_by"] == new
        assert a.status(old)["marks"]["replaced_by"] == new


def test_a_replacement_of_another_senders_document_is_refused(world, tmp_path):
    doc = document(tmp_path)
    with world.client(PROVINCE) as clerk:
        theirs = clerk.send(doc, to=[A], level=Level.MAT, subject=SUBJECT)
    with world.client(A) as a:
        receive_until(a, [theirs])
    with world.client(B) as b:  # B forges a "correction" of the province's document
        data = doc.read_bytes()
        out = io.BytesIO()
        sealed = envelopes.seal(
            io.BytesIO(data), out, keys=b.keys, directory=b.directory, to=[AgencyCode.parse(A)],
            level=Level.MAT, size=len(data),
            metadata=envelopes.Metadata(subject="x", filename="x.txt", replaces=theirs),
        )  # fmt: skip
        out.seek(0)
        b.submit_sealed(out)
    seen = refused_here(world, A, sealed.envelope_id)
    assert "only the sender of a document may replace it" in str(seen["reason"])
    with world.client(A) as a:
        assert "replaced_by" not in a.state.marks(theirs)


def test_a_recall_of_an_unanswered_document_applies_itself_when_configured(world, tmp_path):
    config = world.agent_config(B)
    text = config.read_text()
    config.write_text(
        text.replace('inbox = "inbox"', 'inbox = "inbox"\nauto_recall_unopened = true')
    )
    try:
        assert AgentConfig.load(config).auto_recall_unopened
        doc = document(tmp_path)
        with world.client(PROVINCE) as clerk:
            eid = clerk.send(doc, to=[B], level=Level.MAT, subject=SUBJECT)
        with world.client(B) as b:
            receive_until(b, [eid])
        with world.client(PROVINCE) as clerk:
            clerk.recall(eid, "gửi nhầm")
        with world.client(B) as b:
            consume_until(b, lambda: b.state.marks(eid).get("recall_answer") == "15", what="15")
            assert Path(b.state.received(eid)["path"]).parent.name == "recalled"
        with world.client(PROVINCE) as clerk:
            consume_until(
                clerk, lambda: any(h["status"] == "15" for h in clerk.status(eid)["recipients"][B]),
                what="the automatic 15",
            )  # fmt: skip
    finally:
        config.write_text(text)


def test_the_clerks_day_on_the_command_line(world, tmp_path):
    """enroll, issue, sign, send --signature, receive (shows the signer), recall, 15, outbox."""
    from tests.test_exchange_cli import run, until_printed  # the same way to run a command

    official_dir = tmp_path / "pho-chu-tich"
    run("official", "enroll", "--agency", PROVINCE, "--name", "Võ Thị E",
        "--title", "Phó Chủ tịch UBND tỉnh H41", "--dir", official_dir)  # fmt: skip
    issued = json.loads(
        run("official", "issue", official_dir / "official.req", "--ca", world.ca_dir,
            "--out", tmp_path / "certs", "--json").stdout
    )  # fmt: skip
    (official_dir / "official.crt").write_bytes(Path(issued["certificate"]).read_bytes())
    doc = document(tmp_path)
    run("sign", doc, "--as", official_dir, "--subject", SUBJECT, "--number", NUMBER,
        "--ca-cert", world.ca_dir / "ca.crt")  # fmt: skip
    province, a = world.agent_config(PROVINCE), world.agent_config(A)
    eid = run("send", doc, "--to", A, "--level", "toi-mat", "--subject", SUBJECT, "--number",
              NUMBER, "--signature", f"{doc}.sig", "--config", province).stdout.strip()  # fmt: skip
    out = until_printed(eid, "receive", "--once", "--idle", "0.3", "--config", a)
    assert "signed by Võ Thị E, Phó Chủ tịch UBND tỉnh H41 [verified]" in out
    recalled = run("recall", eid[:10], "--reason", "gửi nhầm", "--config", province)
    assert f"recall (13) of {eid} sent to 1 recipient(s): {A}" in recalled.stdout
    out = until_printed("13 recall requested", "receive", "--once", "--idle", "0.3", "--config", a)
    assert "reason: gửi nhầm" in out
    run("reply-status", eid[:10], "--code", "15", "--config", a)
    assert (a.parent / "inbox" / "recalled" / f"{eid[:12]}-{doc.name}").is_file()
    out = until_printed("15 recall agreed", "outbox", "--idle", "0.3", "--config", province)
    assert f"{A}  15 recall agreed" in out
