"""The classification policy (docs/policy.md) as tables: which rule decides, every field,
every ``policy sign`` validation, and the signed file's load (tampered, unsigned, other CA,
expired, too large)."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets

import msgpack
import pytest

from envelopes.checking import CheckedHeader
from envelopes.header import Header, Recipient
from envelopes.signatures import SIGNED_CAVEAT
from gateway.policy import DEFAULT_DENY, MAX_POLICY_BYTES, Policy, PolicyError, sign_policy
from keys import ca
from keys.codes import AgencyCode
from keys.errors import Refused, UsageError
from keys.levels import Level, Urgency
from tests.helpers import NOW, PASSPHRASE


def envelope(
    sender: str = "000.00.00.H41",
    to: tuple[str, ...] = ("000.01.12.H41",),
    level: Level = Level.MAT,
    urgency: Urgency = Urgency.THUONG,
    size: int = 100,
    caveats: tuple[str, ...] = (),
) -> CheckedHeader:
    """The verified facts a rule reads (a policy never looks past the checked header)."""
    header = Header.build(
        envelope_id=secrets.token_bytes(16),
        created=NOW,
        expires=NOW + dt.timedelta(days=1),
        sender=AgencyCode.parse(sender),
        sender_key_id=bytes(16),
        level=level,
        caveats=caveats,
        urgency=urgency,
        payload_size=size,
        segment_size=1024,
        recipients=tuple(Recipient(AgencyCode.parse(c), bytes(16), bytes(80)) for c in to),
        key_commitment=bytes(32),
        stream_header=bytes(24),
    )
    return CheckedHeader(header, None, ())  # type: ignore[arg-type]


DOCS_POLICY = """
[policy]
name = "Province H41"
version = 3

[[rule]]
id = "no-tuyet-mat-online"
action = "deny"
reason = "Tuyệt mật documents never travel over this network"
level_min = "tuyet-mat"

[[rule]]
id = "h41-internal"
action = "allow"
reason = "exchanges inside province H41"
sender = "*.H41"
recipients = "*.H41"
level_min = "thuong"
level_max = "toi-mat"
urgency = ["thuong", "khan"]
size_at_most = 1000
"""

H41, H41B, H42 = "000.00.00.H41", "000.02.12.H41", "000.00.00.H42"


@pytest.mark.parametrize(
    ("facts", "rule_id"),
    [
        ({}, "h41-internal"),
        ({"to": (H41B, "000.03.12.H41")}, "h41-internal"),
        # the first rule that applies decides
        ({"level": Level.TUYET_MAT}, "no-tuyet-mat-online"),
        ({"level": Level.TUYET_MAT, "sender": H42, "to": (H42,)}, "no-tuyet-mat-online"),
        # sender pattern
        ({"sender": H42}, DEFAULT_DENY),
        # every recipient must match, wherever it stands
        ({"to": (H42,)}, DEFAULT_DENY),
        ({"to": (H41B, H42)}, DEFAULT_DENY),
        ({"to": (H42, H41B)}, DEFAULT_DENY),
        # level range, inclusive
        ({"level": Level.THUONG}, "h41-internal"),
        ({"level": Level.TOI_MAT}, "h41-internal"),
        # urgency list
        ({"urgency": Urgency.KHAN}, "h41-internal"),
        ({"urgency": Urgency.HOA_TOC}, DEFAULT_DENY),
        # size_at_most, inclusive
        ({"size": 1000}, "h41-internal"),
        ({"size": 1001}, DEFAULT_DENY),
    ],
)
def test_the_documented_policy(facts, rule_id):
    decision = Policy.parse(DOCS_POLICY).decide(envelope(**facts))
    assert decision.rule_id == rule_id
    assert decision.allow is (rule_id == "h41-internal")
    reasons = {
        "h41-internal": "exchanges inside province H41",
        "no-tuyet-mat-online": "Tuyệt mật documents never travel over this network",
        DEFAULT_DENY: "no policy rule allows this exchange",
    }
    assert decision.reason == reasons[rule_id]


def one_rule(**fields: object) -> Policy:
    lines = ['id = "r"', 'action = "allow"', 'reason = "x"']
    for key, value in fields.items():
        if isinstance(value, str):
            lines.append(f'{key} = "{value}"')
        elif isinstance(value, bool):
            lines.append(f"{key} = {str(value).lower()}")
        elif isinstance(value, list):
            lines.append(f"{key} = [{', '.join(repr(v).replace(chr(39), chr(34)) for v in value)}]")
        else:
            lines.append(f"{key} = {value}")
    return Policy.parse("[[rule]]\n" + "\n".join(lines) + "\n")


LEVELS = list(Level)


@pytest.mark.parametrize("low", LEVELS)
@pytest.mark.parametrize("high", LEVELS)
@pytest.mark.parametrize("level", LEVELS)
def test_level_range(low, high, level):
    if low > high:
        with pytest.raises(PolicyError, match=r"rule 1 \(r\): level_min is above level_max"):
            one_rule(level_min=low.value, level_max=high.value)
        return
    policy = one_rule(level_min=low.value, level_max=high.value)
    assert policy.decide(envelope(level=level)).allow is (low <= level <= high)


@pytest.mark.parametrize("urgency", list(Urgency))
def test_urgency_list(urgency):
    policy = one_rule(urgency=["hoa-toc", "hoa-toc-hen-gio"])
    allowed = urgency in (Urgency.HOA_TOC, Urgency.HOA_TOC_HEN_GIO)
    assert policy.decide(envelope(urgency=urgency)).allow is allowed


@pytest.mark.parametrize(
    ("pattern", "code", "matches"),
    [
        ("*.H41", "000.01.12.H41", True),
        ("*.H41", "000.01.12.H42", False),
        ("???.??.12.H41", "000.07.12.H41", True),
        ("???.??.12.H41", "000.07.13.H41", False),
        ("000.00.00.H41", "000.00.00.H41", True),
        ("000.00.00.H41", "000.00.01.H41", False),
        ("000.0[12].*", "000.02.12.H41", True),
        ("000.0[!12].*", "000.02.12.H41", False),
    ],
)
def test_code_patterns(pattern, code, matches):
    as_sender = one_rule(sender=pattern).decide(envelope(sender=code))
    as_recipient = one_rule(recipients=pattern).decide(envelope(to=(code,)))
    assert (as_sender.allow, as_recipient.allow) == (matches, matches)


def test_a_rule_without_conditions_matches_everything():
    policy = one_rule()
    for level in Level:
        for urgency in Urgency:
            facts = envelope(sender=H42, to=(H41, H42), level=level, urgency=urgency, size=1 << 40)
            assert policy.decide(facts).allow


def test_size_conditions_zero_and_absent():
    assert not one_rule(size_at_most=0).decide(envelope(size=4)).allow
    assert one_rule(size_at_most=4).decide(envelope(size=4)).allow
    assert one_rule(size_above=3).decide(envelope(size=4)).allow
    assert not one_rule(size_above=4).decide(envelope(size=4)).allow
    assert one_rule().decide(envelope(size=1 << 40)).allow


def test_a_deny_rule_on_large_documents_reads_as_it_acts():
    """The seen mistake: a deny rule meant for large files (max_bytes = 1 MiB) refused a 6-byte
    one. size_above says which envelopes the rule applies to."""
    policy = Policy.parse(
        '[[rule]]\nid = "no-large"\naction = "deny"\nreason = "over 1 MiB"\nsize_above = 1048576\n'
        '[[rule]]\nid = "rest"\naction = "allow"\nreason = "the rest"\n'
    )
    assert policy.decide(envelope(size=6)).rule_id == "rest"
    assert policy.decide(envelope(size=1048576)).rule_id == "rest"
    assert policy.decide(envelope(size=1048577)).rule_id == "no-large"


def test_toi_mat_needs_an_officials_signature():
    """The rule agencies ask for: a Tối mật document leaves only signed by an official. The
    gateway reads the sender's signed flag (recipients check it against the signatures)."""
    policy = Policy.parse(
        '[[rule]]\nid = "toi-mat-needs-signature"\naction = "deny"\n'
        'reason = "Tối mật needs an official\'s signature"\nlevel_min = "toi-mat"\n'
        "official_signature = false\n"
        '[[rule]]\nid = "rest"\naction = "allow"\nreason = "the rest"\n'
    )
    signed = (SIGNED_CAVEAT,)
    assert policy.decide(envelope(level=Level.TOI_MAT)).rule_id == "toi-mat-needs-signature"
    assert policy.decide(envelope(level=Level.TOI_MAT, caveats=signed)).rule_id == "rest"
    assert policy.decide(envelope(level=Level.MAT)).rule_id == "rest"
    assert one_rule(official_signature=True).decide(envelope(caveats=signed)).allow
    assert not one_rule(official_signature=True).decide(envelope()).allow
    assert one_rule().decide(envelope(caveats=signed)).allow  # absent: either
    # Another caveat is not a signature.
    assert not one_rule(official_signature=True).decide(envelope(caveats=("x",))).allow


def test_the_old_max_bytes_key_is_refused_with_what_to_write():
    with pytest.raises(
        PolicyError,
        match=re.escape(
            "max_bytes is gone (it read as a limit but was a condition); write"
            " size_at_most = N (the rule applies up to N bytes) or size_above = N"
        )
        + "$",
    ):
        Policy.parse(GOOD_RULE + "max_bytes = 1000\n")


def rules(*specs: tuple[str, str]) -> Policy:
    """A policy of catch-all rules ``(id, action)`` in this order."""
    return Policy.parse(
        "".join(f'[[rule]]\nid = "{i}"\naction = "{a}"\nreason = "{i} {a}"\n' for i, a in specs)
    )


def test_rule_order_decides_not_the_action():
    first = rules(("a", "allow"), ("d", "deny")).decide(envelope())
    second = rules(("d", "deny"), ("a", "allow")).decide(envelope())
    assert (first.allow, first.rule_id, first.reason) == (True, "a", "a allow")
    assert (second.allow, second.rule_id, second.reason) == (False, "d", "d deny")


def test_a_rule_that_does_not_apply_passes_to_the_next():
    policy = Policy.parse(
        '[[rule]]\nid = "h42"\naction = "deny"\nreason = "x"\nsender = "*.H42"\n'
        '[[rule]]\nid = "all"\naction = "allow"\nreason = "y"\n'
    )
    assert policy.decide(envelope()).rule_id == "all"
    assert policy.decide(envelope(sender=H42)).rule_id == "h42"


def test_no_rules_refuse_everything():
    for text in ("", '[policy]\nname = "empty"\n'):
        decision = Policy.parse(text).decide(envelope())
        assert (decision.allow, decision.rule_id) == (False, DEFAULT_DENY)


def test_a_deny_rule_that_applies_denies():
    decision = Policy.parse(
        '[[rule]]\nid = "no"\naction = "deny"\nreason = "never"\nsender = "*.H41"\n'
    ).decide(envelope())
    assert (decision.allow, decision.rule_id, decision.reason) == (False, "no", "never")


def test_header_fields_are_parsed():
    policy = Policy.parse(DOCS_POLICY)
    assert (policy.name, policy.version, len(policy.rules)) == ("Province H41", 3, 2)
    rule = policy.rules[1]
    assert (rule.sender, rule.recipients, rule.level_min, rule.level_max) == (
        "*.H41",
        "*.H41",
        Level.THUONG,
        Level.TOI_MAT,
    )
    assert (rule.urgency, rule.size_at_most) == ((Urgency.THUONG, Urgency.KHAN), 1000)
    assert (Policy.parse("").version, Policy.parse("").name) == (1, "")


# --- every validation of `policy sign` ------------------------------------------------------

GOOD_RULE = '[[rule]]\nid = "ok"\naction = "allow"\nreason = "fine"\n'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[rule]\n", "policy is not valid TOML"),
        (
            "[other]\nx = 1\n",
            r"^policy has unknown top-level keys \(expected \[policy\] and \[\[rule\]\]\)$",
        ),
        ('policy = "x"\n', "unknown top-level keys"),
        ("[policy]\nversion = 0\n", "^policy.version must be a positive integer$"),
        ('[policy]\nversion = "3"\n', "^policy.version must be a positive integer$"),
        ("rule = [1]\n", "rule 1 is not a table"),
        (GOOD_RULE + "colour = 'red'\n", r"rule 1 \(ok\): unknown keys \['colour'\]"),
        ('[[rule]]\nid = "Bad Id"\naction = "allow"\nreason = "x"\n', "id must be lower-case"),
        ('[[rule]]\naction = "allow"\nreason = "x"\n', r"rule 1 \(\?\): id must be"),
        ('[[rule]]\nid = "r"\naction = "permit"\nreason = "x"\n', "action must be allow or deny"),
        ('[[rule]]\nid = "r"\nreason = "x"\n', "action must be allow or deny"),
        ('[[rule]]\nid = "r"\naction = "allow"\n', r"rule 1 \(r\): a reason is required"),
        ('[[rule]]\nid = "r"\naction = "allow"\nreason = ""\n', "a reason is required"),
        ('[[rule]]\nid = "r"\naction = "allow"\nreason = 5\n', "a reason is required"),
        (GOOD_RULE + 'sender = "*.h41; rm"\n', "sender must be a code pattern"),
        (GOOD_RULE + "sender = 41\n", "sender must be a code pattern"),
        (GOOD_RULE + 'recipients = ""\n', "recipients must be a code pattern"),
        (GOOD_RULE + 'recipients = "' + "?" * 33 + '"\n', "recipients must be a code pattern"),
        (GOOD_RULE + 'level_min = "secret"\n', "unknown level 'secret'"),
        (GOOD_RULE + 'level_max = "top"\n', "unknown level 'top'"),
        (GOOD_RULE + "level_min = 1\n", r"rule 1 \(ok\): unknown level"),
        (GOOD_RULE + 'urgency = ["now"]\n', "unknown urgency 'now'"),
        (GOOD_RULE + 'urgency = "khan"\n', "unknown urgency"),
        (GOOD_RULE + "urgency = 3\n", r"rule 1 \(ok\): "),
        (GOOD_RULE + 'level_min = "toi-mat"\nlevel_max = "mat"\n', "level_min is above level_max"),
        (GOOD_RULE + "size_at_most = -1\n", "size_at_most must be a non-negative integer"),
        (GOOD_RULE + 'size_at_most = "1 GB"\n', "size_at_most must be a non-negative integer"),
        (GOOD_RULE + "size_above = 1.5\n", "size_above must be a non-negative integer"),
        (GOOD_RULE + "size_above = true\n", "size_above must be a non-negative integer"),
        (GOOD_RULE + "size_above = 10\nsize_at_most = 10\n", "never applies"),
        (GOOD_RULE + GOOD_RULE, "rule id 'ok' is used twice"),
        (GOOD_RULE + 'official_signature = "yes"\n', "official_signature must be true or false"),
        (GOOD_RULE + "official_signature = 1\n", "official_signature must be true or false"),
    ],
)
def test_policy_sign_refuses(text, message, authority):
    with pytest.raises(PolicyError, match=message):
        Policy.parse(text)
    with pytest.raises(PolicyError, match=message):
        sign_policy(text, authority, NOW, 30)


def test_the_second_rule_is_named():
    with pytest.raises(PolicyError, match=r"rule 2 \(bad\): action"):
        Policy.parse(GOOD_RULE + '[[rule]]\nid = "bad"\naction = "maybe"\nreason = "x"\n')


def test_policy_sign_refuses_validity_out_of_range(authority):
    for days in (0, 3651):
        with pytest.raises(UsageError, match=r"^--valid-days must be 1\.\.3650$"):
            sign_policy(GOOD_RULE, authority, NOW, days)
    for days in (1, 3650):
        sign_policy(GOOD_RULE, authority, NOW, days)


def test_policy_sign_on_the_command_line(tmp_path, state_env, capsys):
    from tests.helpers import cli

    ca.init_ca(tmp_path / "ca", b"test-passphrase", NOW, "CA")
    good, bad = tmp_path / "good.toml", tmp_path / "bad.toml"
    good.write_text(DOCS_POLICY)
    bad.write_text(DOCS_POLICY.replace('level_max = "toi-mat"', 'level_max = "mat"\nx = 1'))
    assert cli("policy", "sign", bad, "--ca", tmp_path / "ca", "--out", tmp_path / "b.cpp") == 1
    err = capsys.readouterr().err.strip()
    assert err == "cipherpost: rule 2 (h41-internal): unknown keys ['x']"
    assert not (tmp_path / "b.cpp").exists()
    assert cli("policy", "sign", good, "--ca", tmp_path / "ca", "--out", tmp_path / "p.cpp") == 0
    authority = ca.open_ca(tmp_path / "ca", b"test-passphrase")
    loaded = Policy.load_signed(
        (tmp_path / "p.cpp").read_bytes(), authority.certificate.public_key(), NOW
    )
    assert loaded.version == 3


# --- the signed policy file -----------------------------------------------------------------


@pytest.fixture(scope="module")
def authority(tmp_path_factory: pytest.TempPathFactory) -> ca.CertificateAuthority:
    folder = tmp_path_factory.mktemp("policy-ca") / "ca"
    ca.init_ca(folder, PASSPHRASE, NOW, "CA")
    return ca.open_ca(folder, PASSPHRASE)


@pytest.fixture
def signed(authority) -> tuple[bytes, ca.CertificateAuthority]:
    return sign_policy(DOCS_POLICY, authority, NOW, 30), authority


def test_signed_policy_loads_until_it_expires(signed):
    data, authority = signed
    key = authority.certificate.public_key()
    expires = NOW + dt.timedelta(days=30)
    policy = Policy.load_signed(data, key, expires)  # the last second is still valid
    assert (policy.name, policy.version, policy.expires, len(policy.rules)) == (
        "Province H41",
        3,
        expires,
        2,
    )
    # The digest names the exact text (the rollback guard tells two texts of one version
    # apart by it).
    assert policy.digest == hashlib.sha256(DOCS_POLICY.encode()).hexdigest()
    with pytest.raises(Refused, match="^policy expired at 2026-12-01 12:00Z$"):
        Policy.load_signed(data, key, expires + dt.timedelta(seconds=1))


def test_tampered_policy_refused(signed):
    data, authority = signed
    magic, body, sig = msgpack.unpackb(data, raw=False)
    issued, expires, text = msgpack.unpackb(body, raw=False)
    for changed in (
        [issued, expires + 86400 * 365, text],  # a longer life
        [issued, expires, text.replace('"deny"', '"allow"')],  # a rule switched
    ):
        forged = msgpack.packb([magic, msgpack.packb(changed), sig], use_bin_type=True)
        with pytest.raises(
            Refused, match=r"^policy signature is not valid \(tampered, or not signed by this CA\)$"
        ):
            Policy.load_signed(forged, authority.certificate.public_key(), NOW)
    flipped = msgpack.packb([magic, body, bytes([sig[0] ^ 1]) + sig[1:]], use_bin_type=True)
    with pytest.raises(Refused, match="policy signature is not valid"):
        Policy.load_signed(flipped, authority.certificate.public_key(), NOW)


def test_policy_of_another_ca_refused(signed, tmp_path):
    data, _ = signed
    ca.init_ca(tmp_path / "other", PASSPHRASE, NOW, "Another CA")
    other = ca.open_ca(tmp_path / "other", PASSPHRASE)
    with pytest.raises(Refused, match="policy signature is not valid"):
        Policy.load_signed(data, other.certificate.public_key(), NOW)


@pytest.mark.parametrize(
    "data",
    [
        DOCS_POLICY.encode(),  # the TOML itself, unsigned
        b"",
        msgpack.packb(["cipherpost.policy/2", b"body", b"sig"]),
        msgpack.packb(["cipherpost.policy/1", "body", b"sig"]),
        msgpack.packb(["cipherpost.policy/1", b"body", "sig"]),
        msgpack.packb(["cipherpost.policy/1", b"body"]),
        msgpack.packb(["cipherpost.policy/1", b"body", b"sig"]) + b"\x00",
    ],
)
def test_unsigned_or_malformed_policy_refused(signed, data):
    _, authority = signed
    with pytest.raises(Refused, match="^policy file is not a signed cipherpost policy$"):
        Policy.load_signed(data, authority.certificate.public_key(), NOW)


def test_oversized_policy_refused_before_parsing(signed):
    data, authority = signed
    key = authority.certificate.public_key()
    with pytest.raises(Refused, match="^policy file is too large$"):
        Policy.load_signed(data + b"\0" * (MAX_POLICY_BYTES + 1 - len(data)), key, NOW)
    big = sign_policy(DOCS_POLICY + "#" * (MAX_POLICY_BYTES - 2000), authority, NOW, 30)
    assert len(big) <= MAX_POLICY_BYTES
    Policy.load_signed(big, key, NOW)


@pytest.mark.parametrize(
    ("rule_id", "ok"),
    [("a" * 64, True), ("a" * 65, False), ("0.a_b-c", True), ("-a", False), (".a", False)],
)
def test_rule_id_form(rule_id, ok):
    text = f'[[rule]]\nid = "{rule_id}"\naction = "allow"\nreason = "x"\n'
    if ok:
        assert Policy.parse(text).rules[0].id == rule_id
    else:
        with pytest.raises(PolicyError, match="id must be lower-case letters, digits, . _ -$"):
            Policy.parse(text)


def test_code_pattern_length_and_alphabet():
    assert one_rule(sender="?" * 32).rules[0].sender == "?" * 32
    assert one_rule(recipients="[!0]*.H4?").rules[0].recipients == "[!0]*.H4?"
    for bad in ("?" * 33, "*.h41", "* .H41", "*/H41"):
        with pytest.raises(PolicyError, match="sender must be a code pattern"):
            one_rule(sender=bad)


def test_policy_size_limit_is_inclusive(signed):
    data, authority = signed
    key = authority.certificate.public_key()
    text = DOCS_POLICY + "#" * MAX_POLICY_BYTES
    while (size := len(sign_policy(text, authority, NOW, 30))) != MAX_POLICY_BYTES:
        text = text[: len(text) - (size - MAX_POLICY_BYTES)]  # msgpack headers are fixed here
    exactly = sign_policy(text, authority, NOW, 30)
    assert len(exactly) == MAX_POLICY_BYTES
    assert Policy.load_signed(exactly, key, NOW).version == 3


# --- the highest policy version accepted (rollback refused) and expiry ---------------------


def test_policy_trust_refuses_an_older_version_and_other_rules_under_one_version(tmp_path):
    import json
    import stat

    from gateway.policy import PolicyTrust
    from keys.errors import CipherpostError

    path = tmp_path / "gw" / "state" / "policy-trust.json"  # nor do its folders
    trust = PolicyTrust(path)
    assert (trust.version, trust.digest) == (0, "")
    v2 = Policy("p", 2, (), None, "d2")
    trust.accept(v2)
    assert json.loads(path.read_text()) == {"version": 2, "digest": "d2"}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    again = PolicyTrust(path)  # a restart reads what was accepted
    assert (again.version, again.digest) == (2, "d2")
    again.check(v2)  # the same version and text: fine (a renewal re-signs the same text)
    with pytest.raises(Refused) as e:
        again.accept(Policy("p", 1, (), None, "d1"))
    assert (
        str(e.value)
        == "policy version 1 is older than version 2 already accepted (rollback refused)"
    )
    with pytest.raises(Refused) as e:
        again.check(Policy("p", 2, (), None, "other"))
    assert str(e.value) == (
        "policy version 2 has other rules than the version 2 already accepted:"
        " sign changed rules under a new version"
    )
    again.accept(Policy("p", 3, (), None, "d3"))
    assert (PolicyTrust(path).version, PolicyTrust(path).digest) == (3, "d3")
    path.write_text("{not json")
    with pytest.raises(CipherpostError) as e:
        PolicyTrust(path)
    assert str(e.value) == f"{path}: damaged policy trust state"


def test_a_policy_is_expired_only_after_its_expiry():
    p = Policy("p", 1, (), NOW)
    assert not p.expired(NOW) and p.expired(NOW + dt.timedelta(seconds=1))
    assert not Policy("p", 1, ()).expired(NOW + dt.timedelta(days=9999))
