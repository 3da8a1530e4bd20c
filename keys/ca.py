"""The cipher department CA: root key, certificate issuance, revocation (CRL).

``CA_DIR`` holds ``ca.crt`` (PEM), ``ca.key.sec`` (the Ed25519 root seed,
encrypted, 0600), ``state.json`` (what was issued and revoked, CRL number,
directory version) and ``crl.der``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from keys.agency import EnrollmentRequest, raw_private
from keys.auditkey import AuditKeyRequest
from keys.certs import (
    AGENCY_EXTENSION_OID,
    POSITION_OID,
    ROLE_AUDIT,
    ROLE_ENCRYPT,
    ROLE_OFFICIAL,
    ROLE_SIGN,
    ROLE_WITNESS,
    encode_agency_extension,
)
from keys.codes import AgencyCode
from keys.errors import CipherpostError, UsageError
from keys.keystore import read_secret, write_private_file, write_secret
from keys.levels import Level
from keys.officials import OfficialRequest

CA_CERT_FILE = "ca.crt"
CA_KEY_FILE = "ca.key.sec"
STATE_FILE = "state.json"
CRL_FILE = "crl.der"
CA_VALID_DAYS = 3650
CLOCK_SKEW = dt.timedelta(minutes=5)
MAX_VALID_DAYS = 3650


@dataclass(frozen=True)
class CertificateAuthority:
    """An opened CA: its certificate, its private key and where it lives."""

    directory: Path
    certificate: x509.Certificate
    private_key: Ed25519PrivateKey

    @property
    def name(self) -> x509.Name:
        """The CA's subject name."""
        return self.certificate.subject

    def load_state(self) -> dict[str, Any]:
        """The CA bookkeeping (issued, revoked, counters)."""
        return load_ca_state(self.directory)

    def save_state(self, state: dict[str, Any]) -> None:
        """Persist the bookkeeping atomically."""
        write_private_file(
            self.directory / STATE_FILE, (json.dumps(state, indent=2) + "\n").encode()
        )


def fingerprint(cert: x509.Certificate) -> str:
    """``SHA256:<hex>`` of the certificate's DER bytes: what ``ca init`` prints and holders
    compare. From a PEM file: ``openssl x509 -in ca.crt -outform DER | sha256sum``."""
    return "SHA256:" + hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def load_ca_certificate(path: Path) -> x509.Certificate:
    """Read a CA certificate (PEM or DER) and check it is a self-signed Ed25519 CA."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CipherpostError(f"cannot read CA certificate {path}: {e.strerror}") from e
    try:
        cert = (
            x509.load_pem_x509_certificate(data)
            if data.startswith(b"-----")
            else x509.load_der_x509_certificate(data)
        )
        cert.verify_directly_issued_by(cert)
        if not isinstance(cert.public_key(), Ed25519PublicKey):
            raise ValueError("not Ed25519")
    except Exception as e:  # any parse/verify failure: it is not our CA certificate
        raise CipherpostError(f"{path}: not a cipherpost CA certificate") from e
    return cert


def load_ca_state(directory: Path) -> dict[str, Any]:
    """The CA bookkeeping file as a dict."""
    try:
        state: dict[str, Any] = json.loads((directory / STATE_FILE).read_text())
    except FileNotFoundError:
        raise CipherpostError(f"{directory} is not a CA folder (run: cipherpost ca init)") from None
    return state


def init_ca(directory: Path, passphrase: bytes, now: dt.datetime, name: str) -> x509.Certificate:
    """Create a new root: Ed25519 key and self-signed certificate. Never overwrites."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    if (directory / CA_KEY_FILE).exists():
        raise CipherpostError(f"{directory} already holds a CA; refusing to overwrite it")
    key = Ed25519PrivateKey.generate()
    subject = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=CA_VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, None)
    )
    write_secret(directory / CA_KEY_FILE, raw_private(key), passphrase)
    (directory / CA_CERT_FILE).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    ca = CertificateAuthority(directory, cert, key)
    ca.save_state({"issued": {}, "revoked": [], "crl_number": 0, "directory_version": 0})
    write_crl(ca, now)
    return cert


def open_ca(directory: Path, passphrase: bytes) -> CertificateAuthority:
    """Decrypt the CA key in ``directory``."""
    if not (directory / CA_KEY_FILE).exists():
        raise CipherpostError(f"{directory} is not a CA folder (run: cipherpost ca init)")
    cert = load_ca_certificate(directory / CA_CERT_FILE)
    key = Ed25519PrivateKey.from_private_bytes(read_secret(directory / CA_KEY_FILE, passphrase))
    if key.public_key() != cert.public_key():
        raise CipherpostError(f"{directory}: CA key and certificate do not match")
    return CertificateAuthority(directory, cert, key)


def _agency_cert(
    ca: CertificateAuthority,
    request: EnrollmentRequest,
    clearance: Level,
    role: str,
    now: dt.datetime,
    valid_days: int,
) -> x509.Certificate:
    public_key: Ed25519PublicKey | X25519PublicKey
    if role == ROLE_SIGN:
        public_key = Ed25519PublicKey.from_public_bytes(request.sign_public)
    else:
        public_key = X25519PublicKey.from_public_bytes(request.enc_public)
    return _certificate(
        ca, request.name, request.code, clearance, role, public_key, now, valid_days
    )


def _certificate(
    ca: CertificateAuthority,
    name: str,
    code: AgencyCode,
    clearance: Level,
    role: str,
    public_key: Ed25519PublicKey | X25519PublicKey,
    now: dt.datetime,
    valid_days: int,
    extra: tuple[x509.NameAttribute[str], ...] = (),
) -> x509.Certificate:
    if role == ROLE_ENCRYPT:
        usage = {"digital_signature": False, "key_agreement": True}
    else:
        usage = {"digital_signature": True, "key_agreement": False}
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, name), *extra]))
        .issuer_name(ca.name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
                **usage,
            ),
            critical=True,
        )
        .add_extension(
            x509.UnrecognizedExtension(
                AGENCY_EXTENSION_OID, encode_agency_extension(code, clearance, role)
            ),
            critical=True,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.private_key.public_key()),
            critical=False,
        )
        .sign(ca.private_key, None)
    )


def issue(
    ca: CertificateAuthority,
    request: EnrollmentRequest,
    clearance: Level,
    out_dir: Path,
    now: dt.datetime,
    valid_days: int = 365,
    *,
    replace: bool = False,
) -> tuple[Path, Path]:
    """Issue the signing and encryption certificates for a checked request.

    An agency that already holds certificates is only re-issued with
    ``replace=True`` (key rotation, new clearance): never by accident.
    """
    if not 1 <= valid_days <= MAX_VALID_DAYS:
        raise UsageError(f"--valid-days must be 1..{MAX_VALID_DAYS}")
    state = ca.load_state()
    previous = state["issued"].get(request.code.text)
    if previous is not None and previous.get("revoked"):
        raise CipherpostError(
            f"{request.code} was revoked; a revoked code is not re-issued (enroll a new code)"
        )
    if previous is not None and not replace:
        raise CipherpostError(
            f"{request.code} already holds certificates; use --replace to re-issue them"
        )
    sign = _agency_cert(ca, request, clearance, ROLE_SIGN, now, valid_days)
    enc = _agency_cert(ca, request, clearance, ROLE_ENCRYPT, now, valid_days)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = (out_dir / f"{request.code}.sign.crt", out_dir / f"{request.code}.enc.crt")
    for path, cert in zip(paths, (sign, enc), strict=True):
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    history = previous["history"] if previous else []
    if previous:
        history.append(previous["serials"])
    state["issued"][request.code.text] = {
        "name": request.name,
        "clearance": clearance.value,
        "serials": [str(sign.serial_number), str(enc.serial_number)],
        "not_after": sign.not_valid_after_utc.isoformat(),
        "history": history,
        "revoked": False,
    }
    ca.save_state(state)
    return paths


def issue_audit(
    ca: CertificateAuthority,
    request: AuditKeyRequest,
    out_dir: Path,
    now: dt.datetime,
    valid_days: int = 365,
    role: str = ROLE_AUDIT,
) -> Path:
    """Certify a gateway's audit key (role ``audit``: it may sign checkpoints, nothing else)
    or the witness's key (role ``witness``: it may cosign checkpoints it checked).

    Only for a code the CA has issued agency certificates to and not revoked.
    """
    if role not in (ROLE_AUDIT, ROLE_WITNESS):
        raise UsageError(f"--role must be {ROLE_AUDIT} or {ROLE_WITNESS}")
    if not 1 <= valid_days <= MAX_VALID_DAYS:
        raise UsageError(f"--valid-days must be 1..{MAX_VALID_DAYS}")
    issued = ca.load_state()["issued"].get(request.code.text)
    if issued is None or issued.get("revoked"):
        raise CipherpostError(
            f"{request.code} holds no valid certificates from this CA; issue those first"
        )
    cert = _certificate(
        ca,
        f"{issued['name']} ({'audit log' if role == ROLE_AUDIT else 'witness'})",
        request.code,
        Level.THUONG,
        role,
        Ed25519PublicKey.from_public_bytes(request.public_key),
        now,
        valid_days,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{request.code}.{role}.crt"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def issue_official(
    ca: CertificateAuthority,
    request: OfficialRequest,
    out_dir: Path,
    now: dt.datetime,
    valid_days: int = 365,
) -> Path:
    """Certify an official's key under its agency (role ``official``: name, title, position).

    Only under an agency the CA certified and did not revoke; the same key is certified
    once. Written to ``out_dir/<code>.<key id>.official.crt``.
    """
    return issue_officials(ca, [(request, out_dir)], now, valid_days)[0]


def issue_officials(
    ca: CertificateAuthority,
    requests: list[tuple[OfficialRequest, Path]],
    now: dt.datetime,
    valid_days: int = 365,
) -> list[Path]:
    """:func:`issue_official` for many (a commune's whole staff at once): the bookkeeping is
    read and written once, and nothing is recorded if one request is refused."""
    if not 1 <= valid_days <= MAX_VALID_DAYS:
        raise UsageError(f"--valid-days must be 1..{MAX_VALID_DAYS}")
    state = ca.load_state()
    officials = state.setdefault("officials", {})
    issued: list[tuple[Path, bytes]] = []
    for request, out_dir in requests:
        agency = state["issued"].get(request.code.text)
        if agency is None or agency.get("revoked"):
            raise CipherpostError(
                f"{request.code} holds no valid certificates from this CA: certify the agency first"
            )
        kid = request.key_id.hex()
        if kid in officials:
            raise CipherpostError(f"this key is already certified (official {kid[:12]})")
        extra: list[x509.NameAttribute[str]] = [
            x509.NameAttribute(x509.NameOID.TITLE, request.title)
        ]
        if request.position:
            extra.append(x509.NameAttribute(POSITION_OID, request.position))
        cert = _certificate(
            ca,
            request.name,
            request.code,
            Level(agency["clearance"]),
            ROLE_OFFICIAL,
            Ed25519PublicKey.from_public_bytes(request.public_key),
            now,
            valid_days,
            tuple(extra),
        )
        officials[kid] = {
            "code": request.code.text,
            "name": request.name,
            "title": request.title,
            "position": request.position,
            "serial": str(cert.serial_number),
            "not_after": cert.not_valid_after_utc.isoformat(),
            "revoked": False,
        }
        path = out_dir / f"{request.code}.{kid[:16]}.official.crt"
        issued.append((path, cert.public_bytes(serialization.Encoding.PEM)))
    for path, pem in issued:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(pem)
    ca.save_state(state)
    return [path for path, _ in issued]


def find_official(ca: CertificateAuthority, key_id_prefix: str) -> str:
    """The full key id of the official whose id starts with ``key_id_prefix``."""
    prefix = key_id_prefix.strip().lower()
    found = [k for k in ca.load_state().get("officials", {}) if k.startswith(prefix)]
    if not prefix or not found:
        raise CipherpostError(f"no official's key {key_id_prefix!r} was certified by this CA")
    if len(found) > 1:
        raise UsageError(f"{key_id_prefix!r} is the start of {len(found)} officials' keys")
    return str(found[0])


def revoke_official(
    ca: CertificateAuthority, key_id_hex: str, reason: str, now: dt.datetime
) -> bool:
    """Revoke an official's certificate (left office, merged commune); False if it already
    was. The CRL, and so the next directory, lists it from ``now``: signatures made before
    stay verifiable against the directory version of that time."""
    state = ca.load_state()
    official = state.get("officials", {}).get(key_id_hex)
    if official is None:
        raise CipherpostError(f"no official's key {key_id_hex} was certified by this CA")
    if official["revoked"]:
        return False
    state["revoked"].append(
        {"serial": official["serial"], "code": official["code"], "reason": reason,
         "time": now.isoformat(), "official": key_id_hex}
    )  # fmt: skip
    official["revoked"] = True
    ca.save_state(state)
    write_crl(ca, now)
    return True


def retire(
    ca: CertificateAuthority,
    code: AgencyCode,
    successor: AgencyCode,
    effective: dt.datetime,
) -> None:
    """Mark ``code`` retired (merged into ``successor``) from ``effective`` on, for the next
    directory version; until then both codes work (the transition)."""
    state = ca.load_state()
    issued = state["issued"]
    if code == successor:
        raise UsageError("a code cannot be its own successor")
    for c in (code, successor):
        if c.text not in issued:
            raise CipherpostError(f"{c} holds no certificates from this CA")
    retired = state.setdefault("retired", {})
    if successor.text in retired:
        raise CipherpostError(
            f"{successor} is itself retired (into {retired[successor.text]['successor']})"
        )
    if issued[successor.text].get("revoked"):
        raise CipherpostError(f"{successor} is revoked; choose a successor in good standing")
    for r in retired.values():
        if r["successor"] == code.text:
            r["successor"] = successor.text  # keep chains short: A->B, B->C gives A->C
    retired[code.text] = {"successor": successor.text, "from": int(effective.timestamp())}
    ca.save_state(state)


def revoke(ca: CertificateAuthority, code: AgencyCode, reason: str, now: dt.datetime) -> bool:
    """Revoke every certificate ever issued to ``code``; False if it already was."""
    state = ca.load_state()
    entry = state["issued"].get(code.text)
    if entry is None:
        raise CipherpostError(f"no certificate was issued to {code}")
    if entry.get("revoked"):
        return False
    serials = list(entry["serials"]) + [s for pair in entry["history"] for s in pair]
    for serial in serials:
        state["revoked"].append(
            {"serial": serial, "code": code.text, "reason": reason, "time": now.isoformat()}
        )
    entry["revoked"] = True
    ca.save_state(state)
    write_crl(ca, now)
    return True


def write_crl(ca: CertificateAuthority, now: dt.datetime) -> x509.CertificateRevocationList:
    """Sign a fresh CRL with the next CRL number and write it to ``crl.der``."""
    state = ca.load_state()
    state["crl_number"] += 1
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.name)
        .last_update(now - CLOCK_SKEW)
        .next_update(now + dt.timedelta(days=CA_VALID_DAYS))
        .add_extension(x509.CRLNumber(state["crl_number"]), critical=False)
    )
    for r in state["revoked"]:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(int(r["serial"]))
            .revocation_date(dt.datetime.fromisoformat(r["time"]))
            .build()
        )
    crl = builder.sign(ca.private_key, None)
    (ca.directory / CRL_FILE).write_bytes(crl.public_bytes(serialization.Encoding.DER))
    ca.save_state(state)
    return crl
