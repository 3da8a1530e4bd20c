"""The AMQP wire has one joint: broker/wire.py builds and reads it, docs/wire.md describes it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from broker import wire

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("keys", "envelopes", "broker", "gateway", "agents", "compose")
CONTENT_TYPES = (wire.CONTENT_PART, wire.CONTENT_NOTICE, wire.CONTENT_DIRECTORY, wire.CONTENT_JSON)


@pytest.mark.parametrize("name", [*wire.KINDS, *wire.HEADERS, *CONTENT_TYPES])
def test_every_kind_header_and_content_type_is_documented(name):
    assert f"`{name}`" in (ROOT / "docs" / "wire.md").read_text()


def test_properties_are_built_in_broker_wire_only():
    """No other module builds a property set or names an x-cp-* header."""
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path == ROOT / "broker" / "wire.py":
                continue
            text = path.read_text()
            # An empty ``BasicProperties()`` (a publisher's default) builds nothing.
            if re.search(r"BasicProperties\((?!\))", text) or "x-cp-" in text:
                found.append(str(path.relative_to(ROOT)))
    assert found == []


def test_each_kind_is_persistent_with_its_type_and_content_type():
    for props, kind, content in [
        (wire.submitted_part("cp-A", "ab" * 16, 0, 2), wire.MESSAGE_PART, wire.CONTENT_PART),
        (wire.forwarded_part(["B"], "ab" * 16, 1, 2, "A"), wire.MESSAGE_PART, wire.CONTENT_PART),
        (wire.notice("cp-A"), wire.MESSAGE_NOTICE, wire.CONTENT_NOTICE),
        (wire.notice(), wire.MESSAGE_NOTICE, wire.CONTENT_NOTICE),
        (wire.audit_proof(), wire.MESSAGE_AUDIT_PROOF, wire.CONTENT_JSON),
        (wire.checkpoint(), wire.MESSAGE_CHECKPOINT, wire.CONTENT_JSON),
        (wire.directory(), wire.MESSAGE_DIRECTORY, wire.CONTENT_DIRECTORY),
    ]:
        assert (wire.kind_of(props), props.content_type) == (kind, content)
        assert props.delivery_mode == wire.PERSISTENT


def test_only_an_agents_submissions_carry_its_login():
    assert wire.user_id_of(wire.submitted_part("cp-A", "ab" * 16, 0, 1)) == "cp-A"
    assert wire.user_id_of(wire.notice("cp-A")) == "cp-A"
    for props in (wire.forwarded_part([], "ab", 0, 1, "A"), wire.notice(), wire.checkpoint()):
        assert wire.user_id_of(props) is None


def test_part_headers():
    submitted = wire.submitted_part("cp-A", "ab" * 16, 2, 3)
    assert submitted.headers == {"x-cp-envelope-id": "ab" * 16, "x-cp-part": 2, "x-cp-parts": 3}
    forwarded = wire.forwarded_part(["C", "D"], "ab" * 16, 2, 3, "A")
    assert forwarded.headers == {
        "CC": ["C", "D"],
        "x-cp-envelope-id": "ab" * 16,
        "x-cp-part": 2,
        "x-cp-parts": 3,
        "x-cp-sender": "A",
    }
    assert wire.header_of(forwarded, wire.HEADER_SENDER) == "A"
    assert wire.header_of(wire.notice(), wire.HEADER_SENDER) is None
