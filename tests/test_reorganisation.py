"""Merged communes: a retired code is refused with a notice naming its successor, the
sender's agent proposes the successor, and the audit records it."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from agents.world import PASSPHRASE
from envelopes.errors import EnvelopeRefused
from keys import ca
from keys.codes import AgencyCode
from keys.directory import build_directory
from keys.levels import Level
from tests.exchange import PROVINCE, A, B, make_world, publish_raw, sealed_by, submit, wait_for
from tests.helpers import cli
from tests.sync import receive_until

pytestmark = pytest.mark.broker


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CIPHERPOST_PASSPHRASE", PASSPHRASE.decode())
    w = make_world(tmp_path / "w")
    yield w
    w.cleanup()


def test_a_retired_code_is_refused_naming_its_successor(world, tmp_path):
    gateway = world.start_gateway()
    early = sealed_by(world, PROVINCE, B)  # sealed before the merger
    assert cli("ca", "retire", B, "--successor", A, "--ca", world.ca_dir) == 0
    authority = ca.open_ca(world.ca_dir, PASSPHRASE)
    publish_raw(world, build_directory(authority, world.root / "certs", dt.datetime.now(dt.UTC)))
    assert wait_for(lambda: gateway.directory.successor(AgencyCode.parse(B)) == A, 60)

    doc = tmp_path / "d.txt"
    doc.write_text("sau sáp nhập\n")
    with world.client(PROVINCE) as province:
        with pytest.raises(EnvelopeRefused, match=f"merged into {A}\\): send to {A}"):
            province.send(doc, to=[AgencyCode.parse(B)], level=Level.MAT, progress=False)
        # The successor is reachable as usual.
        province.send(doc, to=[AgencyCode.parse(A)], level=Level.MAT, progress=False)

    submit(world, PROVINCE, early)  # an old agent that missed the new directory
    assert wait_for(
        lambda: any(r["rule_id"] == "invariant:retired" for r in gateway.audit_records()), 15
    )
    record = next(r for r in gateway.audit_records() if r["rule_id"] == "invariant:retired")
    assert record["decision"] == "refused" and A in str(record["reason"])
    with world.client(PROVINCE) as province:
        eid = record["envelope_id"]
        receive_until(
            province, until=lambda: bool(province.status(eid)["gateway"]), what="the rejection"
        )
        notices = province.status(eid)["gateway"]
    assert notices and notices[0]["verified"] and f"send to {A}" in notices[0]["reason"]


def test_during_a_transition_both_codes_work(world, tmp_path):
    """The cipher department lets the merged commune keep its old code for 30 days."""
    gateway = world.start_gateway()
    assert cli("ca", "retire", B, "--successor", A, "--after", "30d", "--ca", world.ca_dir) == 0
    authority = ca.open_ca(world.ca_dir, PASSPHRASE)
    now = dt.datetime.now(dt.UTC)
    publish_raw(world, build_directory(authority, world.root / "certs", now))
    assert wait_for(lambda: gateway.directory.successor(AgencyCode.parse(B)) == A, 60)
    assert gateway.directory.successor(AgencyCode.parse(B), now) is None  # not yet
    doc = tmp_path / "d.txt"
    doc.write_text("trong thời gian chuyển tiếp\n")
    with world.client(PROVINCE) as province:
        eid = province.send(doc, to=[AgencyCode.parse(B)], level=Level.MAT, progress=False)
    with world.client(B) as old_code:
        assert [d.envelope_id for d in receive_until(old_code, [eid])] == [eid]
    later = now + dt.timedelta(days=31)
    assert gateway.directory.successor(AgencyCode.parse(B), later) == A
