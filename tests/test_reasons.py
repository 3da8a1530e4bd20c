"""Refusal reasons are a type; each maps to exactly one audit rule id (never from text)."""

from __future__ import annotations

import pytest

from envelopes.errors import EnvelopeRefused, Reason
from keys.errors import clip

# The audit rule id of every reason: permanent, signed facts in the audit log.
# Changing one is a format change (docs/policy.md lists them).
RULE_IDS = {
    Reason.FORMAT: "invariant:format",
    Reason.OVERSIZED: "invariant:oversized",
    Reason.VERSION: "invariant:version",
    Reason.SENDER_UNKNOWN: "invariant:unknown-sender",
    Reason.SENDER_REVOKED: "invariant:revoked-sender",
    Reason.SENDER_CERTIFICATE: "invariant:sender-certificate",
    Reason.SENDER_KEY: "invariant:sender-key",
    Reason.SIGNATURE: "invariant:signature",
    Reason.EXPIRED: "invariant:expired",
    Reason.CLOCK: "invariant:clock",
    Reason.SENDER_CLEARANCE: "invariant:sender-clearance",
    Reason.RECIPIENT_UNKNOWN: "invariant:unknown-recipient",
    Reason.RECIPIENT_REVOKED: "invariant:revoked-recipient",
    Reason.RECIPIENT_CERTIFICATE: "invariant:recipient-certificate",
    Reason.RECIPIENT_KEY: "invariant:recipient-key",
    Reason.RECIPIENT_CLEARANCE: "invariant:recipient-clearance",
    Reason.RETIRED: "invariant:retired",
    Reason.SEGMENT: "invariant:segment",
    Reason.SEGMENT_SIGNATURE: "invariant:segment-signature",
    Reason.NOT_RECIPIENT: "invariant:not-recipient",
    Reason.STALE_KEY: "invariant:stale-key",
    Reason.KEY_COMMITMENT: "invariant:key-commitment",
    Reason.DECRYPT: "invariant:decrypt",
    Reason.PAYLOAD: "invariant:payload",
    Reason.OFFICIAL_UNKNOWN: "invariant:unknown-official",
    Reason.OFFICIAL_REVOKED: "invariant:revoked-official",
    Reason.OFFICIAL_AGENCY: "invariant:official-agency",
    Reason.OFFICIAL_SIGNATURE: "invariant:official-signature",
    Reason.SIGNED_FLAG: "invariant:signed-flag",
    Reason.PUBLISHER_MISSING: "invariant:publisher-missing",
    Reason.PUBLISHER: "invariant:publisher",
    Reason.ID_REUSE: "invariant:id-reuse",
    Reason.PART_CONFLICT: "invariant:part-conflict",
    Reason.MISROUTED: "invariant:misrouted",
    Reason.NOTICE_KIND: "invariant:notice-kind",
    Reason.NOTICE_EDGE: "invariant:notice-edge",
    Reason.UNDELIVERABLE: "undeliverable",
}


@pytest.mark.parametrize("reason", list(Reason))
def test_each_reason_has_its_rule_id(reason: Reason) -> None:
    assert reason.rule_id == RULE_IDS[reason]
    assert reason.text and len(reason.text) <= 80


def test_rule_ids_are_distinct_and_the_table_is_complete() -> None:
    assert set(RULE_IDS) == set(Reason)
    assert len(set(RULE_IDS.values())) == len(RULE_IDS)


def test_refusal_carries_its_reason_and_a_clipped_message() -> None:
    e = EnvelopeRefused(Reason.VERSION, "unsupported envelope version " + "V" * 200_000)
    assert e.reason is Reason.VERSION
    assert len(str(e)) <= 200
    assert str(e).endswith("…")
    assert str(EnvelopeRefused(Reason.SIGNATURE)) == Reason.SIGNATURE.text


def test_clip_escapes_control_characters_into_one_line() -> None:
    assert clip("a\nb\x07c\u202ed") == "a\\nb\\x07c\\u202ed"
    assert clip("Tối mật") == "Tối mật"  # printable non-ASCII stays as it is
    assert clip("x" * 10, limit=4) == "xxx…"
    assert clip("x" * 4, limit=4) == "xxxx"


def test_only_checks_before_any_signature_are_unverified() -> None:
    before = {r for r in Reason if r.before_signature}
    assert before == {
        Reason.FORMAT,
        Reason.OVERSIZED,
        Reason.VERSION,
        Reason.SENDER_UNKNOWN,
        Reason.SENDER_REVOKED,
        Reason.SENDER_CERTIFICATE,
        Reason.SENDER_KEY,
        Reason.SIGNATURE,
        Reason.PUBLISHER_MISSING,
        Reason.PUBLISHER,
        Reason.MISROUTED,
    }
