"""The signed agency directory: every agency's certificates and the CRL.

Wire form: ``msgpack([MAGIC, body, signature])`` where ``signature`` is the
CA's Ed25519 signature over ``CONTEXT ‖ body`` and ``body`` is
``msgpack([version, issued_at, expires_at, ca_cert_der, crl_der,
[[sign_cert_der, enc_cert_der], ...], [[retired_code, successor_code, from], ...]])``
(the last list, retired codes of merged agencies and the Unix time their
retirement takes effect, may be absent; until then the old code still works:
the transition during which an agency holds both codes). The signed bytes are kept as they
came; nothing is re-encoded before checking.

A holder remembers, per trusted CA, the highest version it accepted
(:class:`TrustState`) and refuses anything older (rollback).
"""
# Oversized: Directory.load() makes every check of a directory in order, in one place to audit

from __future__ import annotations

import datetime as dt
import difflib
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from keys import container
from keys.ca import CRL_FILE, CertificateAuthority
from keys.certs import ROLE_ENCRYPT, ROLE_SIGN, AgencyCertificate
from keys.codes import AgencyCode
from keys.errors import CipherpostError, Refused, UsageError
from keys.keystore import write_private_file
from keys.levels import Level

MAGIC = "cipherpost.directory/1"
CONTEXT = b"cipherpost directory v1\x00"
MAX_DIRECTORY_BYTES = 64 * 1024 * 1024
MAX_AGENCIES = 100_000
STATE_DIR_ENV = "CIPHERPOST_STATE_DIR"


@dataclass(frozen=True)
class DirectoryEntry:
    """One agency as the directory knows it."""

    code: AgencyCode
    name: str
    clearance: Level
    sign: AgencyCertificate
    enc: AgencyCertificate
    revoked: bool

    def check_usable(self, now: dt.datetime, role: str) -> None:
        """Raise :class:`Refused` if the agency may not take part now."""
        if self.revoked:
            raise Refused(f"{role} {self.code} is revoked")
        if not (self.sign.valid_at(now) and self.enc.valid_at(now)):
            raise Refused(f"{role} {self.code} has no currently valid certificate")


@dataclass(frozen=True)
class Directory:
    """A verified directory. Build with :meth:`load` or :func:`build_directory`."""

    version: int
    issued_at: dt.datetime
    expires_at: dt.datetime
    ca_fingerprint: str
    entries: Mapping[str, DirectoryEntry] = field(repr=False)
    raw: bytes = field(repr=False)
    retired: Mapping[str, str] = field(default_factory=dict)  # retired code -> successor
    retired_from: Mapping[str, dt.datetime] = field(default_factory=dict)
    # Every serial the CRL revokes and since when: officials' certificates travel with their
    # signatures (envelopes.signatures), their revocations only here.
    revoked_since: Mapping[int, dt.datetime] = field(default_factory=dict, repr=False)
    ca_certificate: x509.Certificate | None = field(default=None, repr=False)

    def successor(self, code: AgencyCode, now: dt.datetime | None = None) -> str | None:
        """The successor of a code retired at ``now`` (None if it is not, or not yet)."""
        successor = self.retired.get(code.text)
        if successor is None or (now is not None and now < self.retired_from[code.text]):
            return None
        return successor

    def get(self, code: AgencyCode, role: str = "agency") -> DirectoryEntry:
        """The entry for ``code``; :class:`Refused` if unknown."""
        entry = self.entries.get(code.text)
        if entry is None:
            raise Refused(f"{role} {code} is not in the directory{self._did_you_mean(code)}")
        return entry

    def _did_you_mean(self, code: AgencyCode) -> str:
        """`` (did you mean X (name)?)`` for the closest codes in this directory, or ``""``."""
        close = difflib.get_close_matches(code.text, list(self.entries), n=2, cutoff=0.75)
        if not close:
            return ""
        named = " or ".join(f"{c} ({self.entries[c].name})" for c in close)
        return f" (did you mean {named}?)"

    def by_sign_key_id(self, kid: bytes) -> DirectoryEntry | None:
        """The entry whose signing certificate has key id ``kid``."""
        for entry in self.entries.values():
            if entry.sign.key_id == kid:
                return entry
        return None

    @classmethod
    def load(
        cls,
        data: bytes,
        trust: TrustState,
        *,
        now: dt.datetime,
        ca_certificate: x509.Certificate | None = None,
    ) -> Directory:
        """Verify ``data`` against ``trust`` and return the directory.

        Refuses (exit 3) a directory that is malformed, signed by an untrusted
        CA, expired, or older than one this holder already accepted. On
        success the holder's highest accepted version is raised.
        """
        if not data:
            raise Refused("directory file is empty")
        if len(data) > MAX_DIRECTORY_BYTES:
            raise Refused("directory file too large")
        try:
            body, sig = container.unpack(data, MAGIC)
            fields = msgpack.unpackb(body, raw=False, use_list=False)
            if not isinstance(fields, tuple) or len(fields) not in (6, 7):
                raise ValueError("bad field count")
            version, issued, expires, ca_der, crl_der, pairs = fields[:6]
            retired_pairs = fields[6] if len(fields) == 7 else ()
            if not isinstance(retired_pairs, tuple) or not all(
                isinstance(p, tuple)
                and len(p) == 3
                and isinstance(p[0], str)
                and isinstance(p[1], str)
                and isinstance(p[2], int)
                for p in retired_pairs
            ):
                raise ValueError("bad retired list")
            for n in (version, issued, expires):
                if not isinstance(n, int) or isinstance(n, bool):
                    raise ValueError("bad integer field")
            if not isinstance(ca_der, bytes) or not isinstance(crl_der, bytes):
                raise ValueError("bad certificate field")
            if not isinstance(pairs, tuple) or len(pairs) > MAX_AGENCIES:
                raise ValueError("bad agency list")
            ca = x509.load_der_x509_certificate(ca_der)
        except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError) as e:
            raise Refused("directory file is malformed") from e
        fingerprint = hashlib.sha256(ca_der).hexdigest()
        if ca_certificate is not None:
            pinned = ca_certificate.public_bytes(serialization.Encoding.DER)
            if hashlib.sha256(pinned).hexdigest() != fingerprint:
                raise Refused("directory is signed by a different CA than the one given")
        elif not trust.trusts(fingerprint) and not trust.empty:
            raise Refused(f"directory is signed by an untrusted CA (SHA256:{fingerprint[:16]}…)")
        ca_key = ca.public_key()
        if not isinstance(ca_key, Ed25519PublicKey):
            raise Refused("directory CA key is not Ed25519")
        try:
            ca_key.verify(sig, CONTEXT + body)
            ca.verify_directly_issued_by(ca)
        except (InvalidSignature, ValueError, TypeError) as e:
            raise Refused("directory signature is not valid") from e
        issued_at = dt.datetime.fromtimestamp(issued, dt.UTC)
        expires_at = dt.datetime.fromtimestamp(expires, dt.UTC)
        if now > expires_at:
            raise Refused(f"directory version {version} expired at {expires_at:%Y-%m-%d %H:%M}Z")
        seen = trust.highest_version(fingerprint)
        if version < seen:
            raise Refused(
                f"directory version {version} is older than version {seen} already trusted"
                " (rollback refused)"
            )
        try:
            crl = x509.load_der_x509_crl(crl_der)
            if not crl.is_signature_valid(ca_key):
                raise ValueError("CRL signature")
        except ValueError as e:
            raise Refused("directory CRL is not valid") from e
        revoked_since = {r.serial_number: r.revocation_date_utc for r in crl}
        revoked = set(revoked_since)
        entries: dict[str, DirectoryEntry] = {}
        for pair in pairs:
            if not isinstance(pair, tuple) or len(pair) != 2:
                raise Refused("directory file is malformed")
            sign = AgencyCertificate.parse(pair[0], ca)
            enc = AgencyCertificate.parse(pair[1], ca)
            if sign.role != ROLE_SIGN or enc.role != ROLE_ENCRYPT or sign.code != enc.code:
                raise Refused(f"directory entry for {sign.code} is inconsistent")
            if sign.code.text in entries:
                raise Refused(f"directory lists {sign.code} twice")
            entries[sign.code.text] = DirectoryEntry(
                code=sign.code,
                name=sign.name,
                clearance=min(sign.clearance, enc.clearance),
                sign=sign,
                enc=enc,
                revoked=sign.serial in revoked or enc.serial in revoked,
            )
        retired: dict[str, str] = {}
        retired_from: dict[str, dt.datetime] = {}
        olds = {p[0] for p in retired_pairs}
        for old, new, effective in retired_pairs:
            try:
                old_code, new_code = AgencyCode.parse(old), AgencyCode.parse(new)
            except UsageError as e:
                raise Refused(f"directory retired list: {e}") from None
            if new_code.text not in entries or new_code.text in olds:
                raise Refused(f"directory retires {old_code} into {new_code}, not a live agency")
            retired[old_code.text] = new_code.text
            retired_from[old_code.text] = dt.datetime.fromtimestamp(effective, dt.UTC)
        trust.accept(fingerprint, version)
        return cls(
            version=version,
            issued_at=issued_at,
            expires_at=expires_at,
            ca_fingerprint=fingerprint,
            entries=entries,
            raw=data,
            retired=retired,
            retired_from=retired_from,
            revoked_since=revoked_since,
            ca_certificate=ca,
        )


def build_directory(
    ca: CertificateAuthority, certs_dir: Path, now: dt.datetime, valid_days: int = 7
) -> bytes:
    """Sign a new directory version of every certificate pair in ``certs_dir``."""
    if not 1 <= valid_days <= 3650:
        raise UsageError("--valid-days must be 1..3650")
    if not certs_dir.is_dir():
        raise CipherpostError(f"certificates folder {certs_dir} does not exist")
    pairs = []
    for sign_path in sorted(certs_dir.glob("*.sign.crt")):
        enc_path = sign_path.with_name(sign_path.name.replace(".sign.crt", ".enc.crt"))
        if not enc_path.exists():
            raise CipherpostError(f"{sign_path} has no matching {enc_path.name}")
        ders = []
        for path in (sign_path, enc_path):
            cert = x509.load_pem_x509_certificate(path.read_bytes())
            ders.append(cert.public_bytes(serialization.Encoding.DER))
            try:
                AgencyCertificate.parse(ders[-1], ca.certificate)
            except Refused as e:
                raise CipherpostError(f"{path}: {e}") from e
        pairs.append(ders)
    if not pairs:
        # An empty directory would use up a version and lock holders out of the real one.
        raise CipherpostError(f"no agency certificates (*.sign.crt) in {certs_dir}")
    state = ca.load_state()
    state["directory_version"] += 1
    ca.save_state(state)
    body = msgpack.packb(
        [
            state["directory_version"],
            int(now.timestamp()),
            int((now + dt.timedelta(days=valid_days)).timestamp()),
            ca.certificate.public_bytes(serialization.Encoding.DER),
            (ca.directory / CRL_FILE).read_bytes(),
            pairs,
            sorted([old, r["successor"], r["from"]] for old, r in state.get("retired", {}).items()),
        ],
        use_bin_type=True,
    )
    return container.pack(MAGIC, CONTEXT, body, ca.private_key)[0]


class TrustState:
    """Which CA a holder trusts and the highest directory version it accepted.

    Persisted as JSON in ``path``. An empty state trusts the first CA it sees
    (trust on first use, reported to the caller through :attr:`pinned_now`);
    pin explicitly with a CA certificate to avoid that.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.pinned_now: str | None = None
        self._anchors: dict[str, int] = {}
        if path is not None and path.exists():
            try:
                raw = json.loads(path.read_text())
                self._anchors = {str(k): int(v) for k, v in raw["anchors"].items()}
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                raise CipherpostError(f"{path}: damaged trust state") from e

    @classmethod
    def default(cls, env: Mapping[str, str] | None = None) -> TrustState:
        """The trust state of a holder with no agency folder (e.g. the gateway host)."""
        environ = os.environ if env is None else env
        base = environ.get(STATE_DIR_ENV) or os.path.join(
            environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state"), "cipherpost"
        )
        return cls(Path(base) / "trust.json")

    @property
    def empty(self) -> bool:
        """True if no CA has been trusted yet."""
        return not self._anchors

    def trusts(self, fingerprint: str) -> bool:
        """True if the CA with this certificate fingerprint is trusted."""
        return fingerprint in self._anchors

    def highest_version(self, fingerprint: str) -> int:
        """The highest directory version accepted from this CA (0 if none)."""
        return self._anchors.get(fingerprint, 0)

    def accept(self, fingerprint: str, version: int) -> None:
        """Record an accepted directory version and persist it."""
        if fingerprint not in self._anchors:
            self.pinned_now = fingerprint
        if self._anchors.get(fingerprint, 0) >= version and fingerprint in self._anchors:
            return
        self._anchors[fingerprint] = version
        self._save()

    def _save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # 0600 whatever the umask: whoever can rewrite this file chooses which CA we trust.
        write_private_file(
            self.path, (json.dumps({"anchors": self._anchors}, indent=2) + "\n").encode()
        )


def entries_for(directory: Directory, codes: Iterable[AgencyCode]) -> list[DirectoryEntry]:
    """Look up several codes, refusing unknown ones."""
    return [directory.get(code, "recipient") for code in codes]
