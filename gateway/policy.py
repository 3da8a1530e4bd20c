"""The classification policy: ordered allow/deny rules, signed by the cipher department.

See ``docs/policy.md``. The invariants (sender and every recipient cleared
for the level, certificates valid, not revoked) are checked before any rule
by :func:`envelopes.check_header`; no rule can switch them off. A policy
with no matching rule denies (rule id ``default-deny``).
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import hashlib
import json
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import msgpack
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from envelopes.checking import CheckedHeader
from envelopes.signatures import SIGNED_CAVEAT
from keys import container
from keys.ca import CertificateAuthority
from keys.errors import CipherpostError, Refused, UsageError
from keys.keystore import write_private_file
from keys.levels import Level, Urgency

MAGIC = "cipherpost.policy/1"
CONTEXT = b"cipherpost policy v1\x00"
DEFAULT_DENY = "default-deny"
MAX_POLICY_BYTES = 1024 * 1024
_RULE_ID = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_CODE_GLOB = re.compile(r"[0-9A-Z.*?\[\]!-]{1,32}")
_KEYS = {
    "id",
    "action",
    "reason",
    "sender",
    "recipients",
    "level_min",
    "level_max",
    "urgency",
    "size_at_most",
    "size_above",
    "official_signature",
}


class PolicyError(CipherpostError):
    """The policy text is not valid (exit 1 for the CLI; the gateway refuses to start)."""


@dataclass(frozen=True)
class Rule:
    """One ordered rule. All its conditions must hold for it to apply."""

    id: str
    allow: bool
    reason: str
    sender: str = "*"
    recipients: str = "*"
    level_min: Level = Level.THUONG
    level_max: Level = Level.TUYET_MAT
    urgency: tuple[Urgency, ...] = ()
    # Conditions, not limits: the rule applies to payloads of at most / more than N bytes.
    size_at_most: int | None = None
    size_above: int | None = None
    # True: the rule applies only to documents an official signed; False: only to unsigned
    # ones. The gateway sees the sender's signed flag; every recipient checks it against the
    # signatures inside (a flag without a signature is refused there).
    official_signature: bool | None = None

    def applies(self, checked: CheckedHeader) -> bool:
        """True if every condition of the rule holds for this envelope."""
        h = checked.header
        return (
            fnmatch.fnmatchcase(h.sender.text, self.sender)
            and all(fnmatch.fnmatchcase(r.code.text, self.recipients) for r in h.recipients)
            and self.level_min <= h.level <= self.level_max
            and (not self.urgency or h.urgency in self.urgency)
            and (self.size_at_most is None or h.payload_size <= self.size_at_most)
            and (self.size_above is None or h.payload_size > self.size_above)
            and (
                self.official_signature is None
                or (SIGNED_CAVEAT in h.caveats) == self.official_signature
            )
        )


@dataclass(frozen=True)
class Decision:
    """The outcome for one envelope, naming the rule that made it."""

    allow: bool
    rule_id: str
    reason: str


@dataclass(frozen=True)
class Policy:
    """A parsed policy. Build with :meth:`parse` or :meth:`load_signed`."""

    name: str
    version: int
    rules: tuple[Rule, ...]
    expires: dt.datetime | None = None
    digest: str = ""  # SHA-256 of the policy text: one text per version

    def expired(self, now: dt.datetime) -> bool:
        """True once the signed validity is over: no decision may be made on it."""
        return self.expires is not None and now > self.expires

    def decide(self, checked: CheckedHeader) -> Decision:
        """The first rule that applies decides; none applies: deny."""
        for rule in self.rules:
            if rule.applies(checked):
                return Decision(rule.allow, rule.id, rule.reason)
        return Decision(False, DEFAULT_DENY, "no policy rule allows this exchange")

    @classmethod
    def parse(cls, text: str) -> Policy:
        """Parse the TOML text; every mistake is a :class:`PolicyError` naming the rule."""
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise PolicyError(f"policy is not valid TOML: {e}") from e
        head = doc.get("policy", {})
        if not isinstance(head, dict) or set(doc) - {"policy", "rule"}:
            raise PolicyError("policy has unknown top-level keys (expected [policy] and [[rule]])")
        version = head.get("version", 1)
        if not isinstance(version, int) or version < 1:
            raise PolicyError("policy.version must be a positive integer")
        rules = []
        seen: set[str] = set()
        for i, raw in enumerate(doc.get("rule", []), start=1):
            rule = _rule(raw, i)
            if rule.id in seen:
                raise PolicyError(f"rule id {rule.id!r} is used twice")
            seen.add(rule.id)
            rules.append(rule)
        return cls(name=str(head.get("name", "")), version=version, rules=tuple(rules))

    @classmethod
    def load_signed(cls, data: bytes, ca_public: Ed25519PublicKey, now: dt.datetime) -> Policy:
        """Verify a signed policy file; refuse (exit 3) unsigned, tampered or expired ones."""
        if len(data) > MAX_POLICY_BYTES:
            raise Refused("policy file is too large")
        try:
            body, sig = container.unpack(data, MAGIC)
        except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError) as e:
            raise Refused("policy file is not a signed cipherpost policy") from e
        try:
            ca_public.verify(sig, CONTEXT + body)
        except InvalidSignature:
            raise Refused(
                "policy signature is not valid (tampered, or not signed by this CA)"
            ) from None
        _issued, expires, text = msgpack.unpackb(body, raw=False, use_list=False)
        expires_at = dt.datetime.fromtimestamp(expires, dt.UTC)
        if now > expires_at:
            raise Refused(f"policy expired at {expires_at:%Y-%m-%d %H:%M}Z")
        policy = cls.parse(text)
        digest = hashlib.sha256(text.encode()).hexdigest()
        return cls(policy.name, policy.version, policy.rules, expires_at, digest)


class PolicyTrust:
    """The highest policy version a gateway accepted, kept in a file (mode 0600).

    A gateway restarted on an older signed policy (a laxer one, still within its
    validity) refuses it: versions only go up. One version has one text: the
    same version re-signed with a later expiry is a renewal and is accepted,
    another text under an accepted version is refused.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.version = 0
        self.digest = ""
        if path.exists():
            try:
                raw = json.loads(path.read_text())
                self.version, self.digest = int(raw["version"]), str(raw["digest"])
            except (ValueError, KeyError, TypeError) as e:
                raise CipherpostError(f"{path}: damaged policy trust state") from e

    def check(self, policy: Policy) -> None:
        """Refuse (exit 3) a policy older than, or different from, the accepted one."""
        if policy.version < self.version:
            raise Refused(
                f"policy version {policy.version} is older than version {self.version}"
                " already accepted (rollback refused)"
            )
        if policy.version == self.version and policy.digest != self.digest:
            raise Refused(
                f"policy version {policy.version} has other rules than the version"
                f" {self.version} already accepted: sign changed rules under a new version"
            )

    def accept(self, policy: Policy) -> None:
        """Check, then remember ``policy`` as the one in force."""
        self.check(policy)
        if (policy.version, policy.digest) != (self.version, self.digest):
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_private_file(
                self.path,
                json.dumps({"version": policy.version, "digest": policy.digest}).encode(),
            )
            self.version, self.digest = policy.version, policy.digest


def sign_policy(text: str, ca: CertificateAuthority, now: dt.datetime, valid_days: int) -> bytes:
    """Check the policy parses, then sign it with the CA key."""
    Policy.parse(text)
    if not 1 <= valid_days <= 3650:
        raise UsageError("--valid-days must be 1..3650")
    body = msgpack.packb(
        [int(now.timestamp()), int((now + dt.timedelta(days=valid_days)).timestamp()), text],
        use_bin_type=True,
    )
    return container.pack(MAGIC, CONTEXT, body, ca.private_key)[0]


def _rule(raw: object, n: int) -> Rule:
    if not isinstance(raw, dict):
        raise PolicyError(f"rule {n} is not a table")
    unknown = set(raw) - _KEYS
    where = f"rule {n} ({raw.get('id', '?')})"
    if "max_bytes" in unknown:
        raise PolicyError(
            f"{where}: max_bytes is gone (it read as a limit but was a condition); write"
            " size_at_most = N (the rule applies up to N bytes) or size_above = N"
        )
    if unknown:
        raise PolicyError(f"{where}: unknown keys {sorted(unknown)}")
    rule_id = raw.get("id")
    if not isinstance(rule_id, str) or not _RULE_ID.fullmatch(rule_id):
        raise PolicyError(f"{where}: id must be lower-case letters, digits, . _ -")
    if raw.get("action") not in ("allow", "deny"):
        raise PolicyError(f"{where}: action must be allow or deny")
    reason = raw.get("reason", "")
    if not isinstance(reason, str) or not reason:
        raise PolicyError(f"{where}: a reason is required")
    patterns = {}
    for key in ("sender", "recipients"):
        value = raw.get(key, "*")
        if not isinstance(value, str) or not _CODE_GLOB.fullmatch(value):
            raise PolicyError(f"{where}: {key} must be a code pattern like *.H41 or 000.00.12.H41")
        patterns[key] = value
    try:
        level_min = Level.parse(raw.get("level_min", "thuong"))
        level_max = Level.parse(raw.get("level_max", "tuyet-mat"))
        urgency = tuple(Urgency.parse(u) for u in raw.get("urgency", []))
    except (UsageError, TypeError) as e:
        raise PolicyError(f"{where}: {e}") from e
    if level_min > level_max:
        raise PolicyError(f"{where}: level_min is above level_max")
    sizes = {}
    for key in ("size_at_most", "size_above"):
        value = raw.get(key)
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or value < 0
        ):
            raise PolicyError(f"{where}: {key} must be a non-negative integer (bytes)")
        sizes[key] = value
    signed = raw.get("official_signature")
    if signed is not None and not isinstance(signed, bool):
        raise PolicyError(f"{where}: official_signature must be true or false")
    at_most, above = sizes["size_at_most"], sizes["size_above"]
    if at_most is not None and above is not None and above >= at_most:
        raise PolicyError(f"{where}: size_above {above} >= size_at_most {at_most}: never applies")
    return Rule(
        rule_id,
        raw["action"] == "allow",
        reason,
        patterns["sender"],
        patterns["recipients"],
        level_min,
        level_max,
        urgency,
        at_most,
        above,
        signed,
    )
