"""Red team: the audit verifier and the state tables beside the leaves (THREATS.md A4; invariant 7).

docs/audit.md: the ``decisions`` and ``relayed`` tables "are exactly
derivable from the leaves", and "an operator who edits the table that drives
forwarding and replay protection is caught like one who edits a leaf".
``state_problems`` checks one direction only (every row has its leaf), never
that every leaf has its row, and checks nothing of a ``forwarded`` mark but
that its header was accepted. A store edited so, with every leaf covered by
a signed checkpoint, verifies as OK. Each test FAILS on the current code.
"""

from __future__ import annotations

import hashlib
import sqlite3

import pytest

from gateway.audit import AuditStore
from gateway.auditlog import verify_store
from gateway.checkpoint import verify_checkpoint
from keys.errors import CipherpostError
from tests.gateway_kit import A, B, delivery, make_gateway, make_kit, parts
from tests.redteam_helpers import raw_notice, resigned_part


@pytest.fixture
def kit(tmp_path):
    return make_kit(tmp_path / "kit")


def exchange(kit, root):
    """A's envelope to B accepted and forwarded, B's status relayed, all checkpointed."""
    gw = make_gateway(kit, root)
    cpe = kit.seal(A, [B])
    gw.handle(delivery(parts(cpe)[0], A))
    gw.commit_batch()
    status = raw_notice(kit, B, A, cpe, status="03")
    gw.handle(delivery(status, B, kind="notice"))
    gw.commit_batch()
    gw.commit_batch()  # the forwarded mark is written with the next commit
    gw._checkpoint(force=True)
    cert = gw.checkpointer.certificate
    gw.close()
    return cpe, status, cert


def verify(db, cert):
    store = AuditStore(db, readonly=True)
    try:
        checkpoints = [(verify_checkpoint(n, cert), cert) for n in store.checkpoints()]
        return verify_store(store, checkpoints)
    finally:
        store.close()


def edit(db, *statements: str) -> None:
    conn = sqlite3.connect(db)
    try:
        for sql in statements:
            assert conn.execute(sql).rowcount == 1, sql
        conn.commit()
    finally:
        conn.close()


def test_a_deleted_relayed_row_is_reported_and_does_not_reopen_a_replay(kit, tmp_path):
    """A4 (the gateway operator, or anyone with the store file) breaks invariant 7.

    Deleting the one ``relayed`` row of a relayed status leaves every leaf
    and checkpoint intact: ``audit verify`` says OK (no problem, nothing
    unwitnessed). The gateway restarted on that store then relays the very
    same notice bytes a second time (a replay the table existed to stop),
    and writes a second leaf for it.

    Observed: verify OK; the replayed notice relayed again. Expected:
    ``state: notice leaf ... has no relayed row`` (or similar), exit 3.
    """
    _, status, cert = exchange(kit, tmp_path)
    db = tmp_path / "audit.db"
    assert verify(db, cert).ok
    edit(db, "DELETE FROM relayed")
    report = verify(db, cert)
    assert not report.ok, "a deleted relayed row verifies as OK"
    # The gateway refuses to start on it, so the replay cannot be relayed again.
    with pytest.raises(CipherpostError, match="relayed notice .* has no row; refusing to run"):
        make_gateway(kit, tmp_path)


def test_an_edited_forwarded_mark_is_reported(kit, tmp_path):
    """A4 breaks invariant 7: the digest of a forwarded part, edited, verifies as OK.

    After the edit the gateway takes A's genuine republish for a conflict
    (a false ``invariant:part-conflict`` refusal) and would forward a
    different part whose digest the operator wrote in.
    """
    cpe, _, cert = exchange(kit, tmp_path)
    db = tmp_path / "audit.db"
    other = resigned_part(kit, A, cpe, 0)
    edit(db, f"UPDATE forwarded SET digest='{hashlib.sha256(other).hexdigest()}'")
    assert not verify(db, cert).ok, "an edited forwarded mark verifies as OK"


def test_a_deleted_forwarded_mark_is_reported(kit, tmp_path):
    """A4 breaks invariant 7: a deleted forwarded mark verifies as OK, and the gateway then
    forwards a second, different part at a position it already forwarded."""
    cpe, _, cert = exchange(kit, tmp_path)
    db = tmp_path / "audit.db"
    edit(db, "DELETE FROM forwarded")
    report = verify(db, cert)
    assert not report.ok, "a deleted forwarded mark verifies as OK"
    # The gateway refuses to start on it: no second, different part 0 can be forwarded.
    with pytest.raises(CipherpostError, match="forwarded part .* has no row; refusing to run"):
        make_gateway(kit, tmp_path)


def test_an_edited_decision_is_reported(kit, tmp_path):
    """Control (resisted): a decision row edited to another rule is reported."""
    _, _, cert = exchange(kit, tmp_path)
    db = tmp_path / "audit.db"
    edit(db, "UPDATE decisions SET rule_id='forged'")
    assert any("differs from its leaf" in p for p in verify(db, cert).problems)
